//! TLS and API keys against the real server: a CA and a server certificate
//! for 127.0.0.1/localhost made at test time, a key file with one key of each
//! role, and every path: no key, an unknown key, each role on the calls it may
//! and may not make (and nothing changed by a refused call), health without a
//! key, reflection with one, plaintext and wrongly-trusting clients, the CLI,
//! bad settings at startup, and no key in the server's log even at trace level.

use crate::harness::{Model, Server, TempData, assert_status, batch, binary};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use visage_client::proto::visage_client::VisageClient;
use visage_client::{Against, Client, ConnectOptions, Embedding, TrainHead, proto};
use visage_engine::synth::{SynthConfig, SynthGallery};
use visage_tests::Rng;

const READ: &str = "rk-3f9a1c7e5b2d40681a";
const WRITE: &str = "wk-8e2d4b6a0c1f3579b2";
const ADMIN: &str = "ak-5c7e9a1b3d2f4068c3";
/// Not in the key file.
const WRONG: &str = "xk-0a1b2c3d4e5f67890d";

/// A test CA, a server certificate it signed, and a key file, in a tempdir.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ca("visage test CA");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "visage test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &ca).expect("sign server cert");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca");
        std::fs::write(dir.path().join("server.pem"), cert.pem()).expect("write cert");
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).expect("write key");
        std::fs::write(
            dir.path().join("keys.txt"),
            format!("# roles\nread {READ}\nwrite {WRITE}\n\nadmin {ADMIN}   # operators\n"),
        )
        .expect("write key file");
        Pki {
            ca_pem: ca.pem().into_bytes(),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// The server flags: TLS with the test certificate, and the key file.
    fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.p("server.pem"),
            "--tls-key".into(),
            self.p("server.key"),
            "--api-keys".into(),
            self.p("keys.txt"),
        ]
    }
}

/// A self-signed CA.
fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

/// A server with TLS and API keys on a fresh data directory.
fn start(t: &TempData, pki: &Pki) -> Server {
    let flags = pki.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::start_with(&t.data(), &flags)
}

fn https(server: &Server) -> String {
    format!("https://{}", server.addr)
}

/// A client trusting the test CA, with `key`.
async fn client(server: &Server, pki: &Pki, key: Option<&str>) -> Client {
    Client::connect_with(
        &https(server),
        ConnectOptions {
            ca_cert_pem: Some(pki.ca_pem.clone()),
            domain: None,
            api_key: key.map(str::to_owned),
        },
    )
    .await
    .expect("connect over TLS")
}

/// A raw TLS channel trusting the test CA.
async fn channel(server: &Server, pki: &Pki) -> Channel {
    Channel::from_shared(https(server))
        .expect("url")
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca_pem)))
        .expect("tls config")
        .connect()
        .await
        .expect("connect")
}

/// Face-like data: `subjects` people with 4 to 6 images each.
fn faces(subjects: usize, seed: u64) -> Vec<Embedding> {
    SynthGallery::generate(SynthConfig {
        subjects,
        min_images: 4,
        max_images: 6,
        seed,
        ..Default::default()
    })
    .embeddings
    .iter()
    .map(|e| Embedding {
        id: e.id,
        subject: e.subject.clone(),
        vector: e.vector.clone(),
    })
    .collect()
}

/// Assert PERMISSION_DENIED naming the method and the role it needs.
fn denied<T: std::fmt::Debug>(
    r: Result<T, visage_client::Error>,
    method: &str,
    needs: &str,
    has: &str,
) {
    let e = assert_status(
        r,
        Code::PermissionDenied,
        &[
            &format!("visage.v1.Visage/{method}"),
            &format!("needs the {needs} role"),
            &format!("has the {has} role"),
        ],
    );
    for k in [READ, WRITE, ADMIN] {
        assert!(!e.to_string().contains(k), "{e} shows a key");
    }
}

fn stream_of(rows: Vec<Embedding>) -> impl tokio_stream::Stream<Item = Vec<Embedding>> {
    tokio_stream::iter(vec![rows])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_unknown_keys_are_unauthenticated() {
    let (t, pki) = (TempData::new(), Pki::new());
    let server = start(&t, &pki);
    let admin = client(&server, &pki, Some(ADMIN)).await;
    admin.create_gallery("g").await.expect("admin creates");
    let q = vec![0.1f32; 128];

    let anonymous = client(&server, &pki, None).await;
    let g = anonymous.gallery("g");
    assert_status(
        anonymous.list_galleries().await,
        Code::Unauthenticated,
        &["missing API key", "authorization: Bearer KEY"],
    );
    assert_status(
        g.search(&[&q], 1).await,
        Code::Unauthenticated,
        &["missing API key"],
    );
    assert_status(
        g.insert(&batch(&mut Rng(1), 0, 3, 1, "s")).await,
        Code::Unauthenticated,
        &["missing API key"],
    );
    assert_status(
        anonymous.drop_gallery("g").await,
        Code::Unauthenticated,
        &["missing API key"],
    );

    let stranger = client(&server, &pki, Some(WRONG)).await;
    for r in [
        stranger.list_galleries().await.map(|_| ()),
        stranger.gallery("g").search(&[&q], 1).await.map(|_| ()),
        stranger.gallery("g").compact().await.map(|_| ()),
        stranger.create_gallery("h").await.map(|_| ()),
    ] {
        let e = assert_status(r, Code::Unauthenticated, &[]);
        assert_eq!(e.message(), Some("unknown API key"));
    }

    // `x-api-key: KEY` works as well as `authorization: Bearer KEY`.
    let ch = channel(&server, &pki).await;
    for (key, ok) in [(READ, true), (WRONG, false)] {
        let v: MetadataValue<_> = key.parse().expect("metadata");
        let mut rpc =
            VisageClient::with_interceptor(ch.clone(), move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("x-api-key", v.clone());
                Ok(req)
            });
        let r = rpc.list_galleries(proto::ListGalleriesRequest {}).await;
        match (ok, r) {
            (true, Ok(resp)) => assert_eq!(resp.into_inner().galleries.len(), 1),
            (false, Err(s)) => {
                assert_eq!(s.code(), Code::Unauthenticated);
                assert_eq!(s.message(), "unknown API key");
            }
            (ok, r) => panic!("x-api-key {key}: expected ok={ok}, got {r:?}"),
        }
    }

    // Nothing the refused calls asked for happened.
    let gs = admin.list_galleries().await.expect("list");
    assert_eq!(gs.len(), 1);
    assert_eq!((gs[0].name.as_str(), gs[0].live), ("g", 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_key_reads_and_is_denied_every_change() {
    let (t, pki) = (TempData::new(), Pki::new());
    let server = start(&t, &pki);
    let admin = client(&server, &pki, Some(ADMIN)).await;
    admin.create_gallery("g").await.expect("create");
    let rows = batch(&mut Rng(7), 0, 60, 12, "s");
    admin
        .gallery("g")
        .insert(&rows)
        .await
        .expect("admin inserts");
    let mut model = Model::default();
    model.insert(&rows);

    let reader = client(&server, &pki, Some(READ)).await;
    let g = reader.gallery("g");
    // Every read-only call.
    assert_eq!(reader.list_galleries().await.expect("list").len(), 1);
    assert_eq!(g.stats().await.expect("stats").live, 60);
    assert_eq!(g.get(&[3]).await.expect("get")[0].vector, rows[3].vector);
    let q = rows[5].vector.clone();
    let hits = g.search(&[&q], 5).await.expect("search");
    crate::harness::assert_hits(&hits[0], &model.search(&q, 5), "read key search");
    let who = g.identify(&[&q], 3).await.expect("identify");
    assert_eq!(who[0].candidates[0].subject, rows[5].subject);
    let v = g
        .verify(&[(q.clone(), Against::Id(5))])
        .await
        .expect("verify");
    assert!(v[0].distance.abs() < 1e-6);
    assert!(!g.head().await.expect("head info").trained);
    // (Identify may write the gallery's distance calibration: compare from here.)
    let before = admin.gallery("g").stats().await.expect("stats");

    // Every change: refused, naming the method and the role it needs.
    let more = batch(&mut Rng(8), 100, 5, 2, "t");
    denied(g.insert(&more).await, "Insert", "write", "read");
    denied(
        g.insert_stream(stream_of(more.clone())).await,
        "InsertStream",
        "write",
        "read",
    );
    denied(g.flush().await, "Flush", "write", "read");
    denied(
        reader.create_gallery("h").await,
        "CreateGallery",
        "admin",
        "read",
    );
    denied(
        reader.drop_gallery("g").await,
        "DropGallery",
        "admin",
        "read",
    );
    denied(
        g.delete(&[1], &["s-2".to_owned()]).await,
        "Delete",
        "admin",
        "read",
    );
    denied(g.compact().await, "Compact", "admin", "read");
    denied(
        g.train_head(&TrainHead::default()).await,
        "TrainHead",
        "admin",
        "read",
    );

    // Nothing changed.
    let names: Vec<String> = admin
        .list_galleries()
        .await
        .expect("list")
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, ["g"]);
    assert_eq!(admin.gallery("g").stats().await.expect("stats"), before);
    let all: Vec<u64> = (0..200).collect();
    assert_eq!(admin.gallery("g").get(&all).await.expect("get").len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_key_inserts_and_flushes_but_cannot_delete() {
    let (t, pki) = (TempData::new(), Pki::new());
    let server = start(&t, &pki);
    let admin = client(&server, &pki, Some(ADMIN)).await;
    admin.create_gallery("g").await.expect("create");

    let writer = client(&server, &pki, Some(WRITE)).await;
    let g = writer.gallery("g");
    let rows = batch(&mut Rng(9), 0, 40, 8, "s");
    assert_eq!(g.insert(&rows).await.expect("write inserts").inserted, 40);
    let streamed = batch(&mut Rng(10), 40, 10, 2, "t");
    assert_eq!(
        g.insert_stream(stream_of(streamed))
            .await
            .expect("stream")
            .inserted,
        10
    );
    g.flush().await.expect("write flushes");
    let q = rows[0].vector.clone();
    assert_eq!(g.search(&[&q], 1).await.expect("write reads")[0][0].id, 0);
    let before = admin.gallery("g").stats().await.expect("stats");
    assert_eq!((before.live, before.deleted), (50, 0));

    denied(
        g.delete(&[0], &["s-1".to_owned()]).await,
        "Delete",
        "admin",
        "write",
    );
    denied(g.compact().await, "Compact", "admin", "write");
    denied(
        g.train_head(&TrainHead::default()).await,
        "TrainHead",
        "admin",
        "write",
    );
    denied(
        writer.create_gallery("h").await,
        "CreateGallery",
        "admin",
        "write",
    );
    denied(
        writer.drop_gallery("g").await,
        "DropGallery",
        "admin",
        "write",
    );

    assert_eq!(admin.gallery("g").stats().await.expect("stats"), before);
    assert_eq!(admin.list_galleries().await.expect("list").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_key_does_everything() {
    let (t, pki) = (TempData::new(), Pki::new());
    let server = start(&t, &pki);
    let admin = client(&server, &pki, Some(ADMIN)).await;
    admin.create_gallery("g").await.expect("create");
    admin.create_gallery("scratch").await.expect("create");
    let g = admin.gallery("g");
    let rows = faces(40, 5);
    g.insert(&rows).await.expect("insert");
    g.insert_stream(stream_of(
        faces(2, 6)
            .into_iter()
            .map(|mut e| {
                e.id += 10_000;
                e.subject = format!("x-{}", e.subject);
                e
            })
            .collect(),
    ))
    .await
    .expect("stream");
    g.flush().await.expect("flush");
    let head = g
        .train_head(&TrainHead {
            max_pairs: Some(5_000),
            ..TrainHead::default()
        })
        .await
        .expect("train head");
    assert!(head.trained);
    let victim = rows[0].subject.clone();
    let removed = g
        .delete(&[], std::slice::from_ref(&victim))
        .await
        .expect("delete");
    assert!(removed >= 4, "removed {removed}");
    let c = g.compact().await.expect("compact");
    assert_eq!(c.after.deleted, 0);
    let q = rows[0].vector.clone();
    let who = g.identify(&[&q], 1).await.expect("identify");
    assert_ne!(who[0].candidates[0].subject, victim);
    admin.drop_gallery("scratch").await.expect("drop");
    let names: Vec<String> = admin
        .list_galleries()
        .await
        .expect("list")
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, ["g"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_open_and_reflection_needs_a_key() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let (t, pki) = (TempData::new(), Pki::new());
    let server = start(&t, &pki);
    // Load balancers probe health without a key.
    let anonymous = client(&server, &pki, None).await;
    assert!(anonymous.serving().await.expect("health without a key"));

    let ch = channel(&server, &pki).await;
    let list = || {
        tokio_stream::iter(vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };
    let e = ServerReflectionClient::new(ch.clone())
        .server_reflection_info(list())
        .await
        .expect_err("reflection without a key");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    let v: MetadataValue<_> = format!("Bearer {READ}").parse().expect("metadata");
    let mut r = ServerReflectionClient::with_interceptor(ch, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", v.clone());
        Ok(req)
    });
    let mut answers = r
        .server_reflection_info(list())
        .await
        .expect("reflection with a read key")
        .into_inner();
    let msg = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(l)) = msg.message_response else {
        panic!("unexpected answer {msg:?}");
    };
    let names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"visage.v1.Visage".to_owned()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_wrongly_trusting_clients_fail_cleanly() {
    let (t, pki) = (TempData::new(), Pki::new());
    let server = start(&t, &pki);
    let limit = Duration::from_secs(30);

    // Plaintext against the TLS port: an error (at connect or at the first
    // call), not a hang and not an answer, and one that says to use TLS. The
    // server closes on the HTTP/2 preface; depending on whether the client
    // reads its TLS alert before the close, the client reports INTERNAL,
    // CANCELLED, UNKNOWN or UNAVAILABLE: try several times to meet more than one.
    for attempt in 0..20 {
        let plain = tokio::time::timeout(limit, async {
            let c = Client::connect(&server.url()).await?;
            c.list_galleries().await
        })
        .await
        .expect("a plaintext client gets an answer in time");
        let e = plain.expect_err("plaintext against a TLS server");
        assert!(
            matches!(
                e.code(),
                None | Some(Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled)
            ),
            "attempt {attempt}: {e}"
        );
        assert!(
            e.to_string().contains("https://"),
            "attempt {attempt}: the error hints at TLS: {e}"
        );
    }

    // A CA that did not sign the server's certificate.
    let other = ca("some other CA");
    let wrong_ca = tokio::time::timeout(
        limit,
        Client::connect_with(
            &https(&server),
            ConnectOptions {
                ca_cert_pem: Some(other.pem().into_bytes()),
                api_key: Some(ADMIN.to_owned()),
                ..ConnectOptions::default()
            },
        ),
    )
    .await
    .expect("in time")
    .expect_err("a CA that did not sign the server's certificate");
    let msg = wrong_ca.to_string();
    assert!(
        matches!(wrong_ca, visage_client::Error::Connect { .. }),
        "{msg}"
    );
    assert!(msg.contains("certificate"), "{msg}");
    assert!(!msg.contains(ADMIN), "{msg}");

    // No CA at all: the system roots do not know the test CA either.
    let no_ca = Client::connect(&https(&server))
        .await
        .expect_err("untrusted certificate");
    assert!(no_ca.to_string().contains("certificate"), "{no_ca}");

    // The right CA, but a name the certificate does not carry.
    let wrong_name = Client::connect_with(
        &https(&server),
        ConnectOptions {
            ca_cert_pem: Some(pki.ca_pem.clone()),
            domain: Some("faces.example.com".into()),
            api_key: None,
        },
    )
    .await
    .expect_err("certificate not valid for the name");
    assert!(
        wrong_name.to_string().contains("certificate"),
        "{wrong_name}"
    );

    // A CA certificate with a plaintext address is a settings error.
    let e = Client::connect_with(
        &server.url(),
        ConnectOptions {
            ca_cert_pem: Some(pki.ca_pem.clone()),
            ..ConnectOptions::default()
        },
    )
    .await
    .expect_err("CA with http://");
    assert!(matches!(e, visage_client::Error::Config(_)), "{e}");

    // The server took no harm, and `localhost` (DNS name) works as well as the IP.
    let port = server.addr.rsplit(':').next().expect("port");
    let good = Client::connect_with(
        &format!("localhost:{port}"),
        ConnectOptions {
            ca_cert_pem: Some(pki.ca_pem.clone()),
            domain: Some("localhost".into()),
            api_key: Some(READ.to_owned()),
        },
    )
    .await
    .expect("host:port with a CA means https");
    assert!(good.list_galleries().await.expect("list").is_empty());
}

/// Run the CLI against `server` with `env` (the key variables cleared first).
fn cli(server: &Server, args: &[&str], env: &[(&str, &str)]) -> Output {
    cli_at(&https(server), args, env)
}

/// Run the CLI against the address `url`.
fn cli_at(url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary("visage"));
    for v in [
        "VISAGE_API_KEY",
        "VISAGE_API_KEY_FILE",
        "VISAGE_TLS_CA",
        "VISAGE_TLS_DOMAIN",
        "VISAGE_SERVER",
    ] {
        cmd.env_remove(v);
    }
    cmd.args(["--server", url])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run visage")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one stderr line of a failed run (exit code 1).
fn failed(out: &Output, what: &str) -> String {
    assert_eq!(out.status.code(), Some(1), "{what} should fail with 1");
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
    assert_eq!(err.lines().count(), 1, "{what}: one line: {err:?}");
    for k in [READ, WRITE, ADMIN, WRONG] {
        assert!(!err.contains(k), "{what}: {err} shows a key");
    }
    err
}

#[test]
fn cli_over_tls_with_api_keys() {
    let (t, pki) = (TempData::new(), Pki::new());
    let server = start(&t, &pki);
    let ca = pki.p("ca.pem");
    let tls = ["--tls-ca", ca.as_str()];
    fn join<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<&'a str> {
        a.iter().chain(b).copied().collect()
    }
    let with = |extra: &[&'static str]| join(&tls, extra);

    let out = cli(
        &server,
        &with(&["gallery", "create", "staff"]),
        &[("VISAGE_API_KEY", ADMIN)],
    );
    ok(&out, "gallery create with the admin key");

    // The CA from the environment, the key from a file.
    let key_file = pki.path("read.key");
    std::fs::write(&key_file, format!("{READ}\n")).expect("key file");
    let out = cli(
        &server,
        &[
            "--json",
            "--api-key-file",
            &key_file.display().to_string(),
            "gallery",
            "list",
        ],
        &[("VISAGE_TLS_CA", ca.as_str())],
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&out, "gallery list with a key file")).expect("JSON");
    assert!(listed.to_string().contains("staff"), "{listed}");

    // No key: UNAUTHENTICATED, exit 1.
    let err = failed(&cli(&server, &with(&["gallery", "list"]), &[]), "no key");
    assert!(
        err.starts_with("error: UNAUTHENTICATED: missing API key"),
        "{err}"
    );
    let err = failed(
        &cli(
            &server,
            &with(&["gallery", "list"]),
            &[("VISAGE_API_KEY", WRONG)],
        ),
        "wrong key",
    );
    assert_eq!(err, "error: UNAUTHENTICATED: unknown API key");
    // A read key cannot drop.
    let err = failed(
        &cli(
            &server,
            &with(&["gallery", "drop", "staff", "--yes"]),
            &[("VISAGE_API_KEY", READ)],
        ),
        "read key drops",
    );
    assert!(
        err.starts_with(
            "error: PERMISSION_DENIED: visage.v1.Visage/DropGallery needs the admin role"
        ),
        "{err}"
    );
    // Health needs no key.
    assert_eq!(
        ok(&cli(&server, &with(&["health"]), &[]), "health").trim(),
        "SERVING"
    );
    // Without the CA the certificate is not trusted.
    let err = failed(
        &cli(&server, &["gallery", "list"], &[("VISAGE_API_KEY", READ)]),
        "no CA",
    );
    assert!(err.contains("certificate"), "{err}");
    // Without TLS: one line that says to use it.
    for _ in 0..5 {
        let err = failed(
            &cli_at(
                &server.url(),
                &["gallery", "list"],
                &[("VISAGE_API_KEY", READ)],
            ),
            "plaintext",
        );
        assert!(err.contains("connect with an https:// address"), "{err}");
    }
    // The key is not shown in --help even when set in the environment.
    let help = ok(
        &cli(&server, &["--help"], &[("VISAGE_API_KEY", ADMIN)]),
        "help",
    );
    assert!(help.contains("--api-key"), "{help}");
    assert!(!help.contains(ADMIN), "--help shows the key");
    // The gallery is still there.
    let out = cli(
        &server,
        &with(&["gallery", "info", "staff"]),
        &[("VISAGE_API_KEY", READ)],
    );
    ok(&out, "gallery info");
}

#[test]
fn keys_never_reach_the_log() {
    let (t, pki) = (TempData::new(), Pki::new());
    let mut cmd = Command::new(binary("visage-server"));
    cmd.arg("--data-dir")
        .arg(t.data())
        .args(["--listen", "127.0.0.1:0"])
        .args(pki.flags())
        .env("RUST_LOG", "trace");
    std::fs::create_dir_all(t.data()).expect("data dir");
    let server = Server::spawn(cmd, t.dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let admin = client(&server, &pki, Some(ADMIN)).await;
        admin.create_gallery("g").await.expect("create");
        let writer = client(&server, &pki, Some(WRITE)).await;
        let rows = batch(&mut Rng(3), 0, 20, 4, "s");
        writer.gallery("g").insert(&rows).await.expect("insert");
        let reader = client(&server, &pki, Some(READ)).await;
        reader
            .gallery("g")
            .search(&[&rows[0].vector], 3)
            .await
            .expect("search");
        assert!(reader.gallery("g").insert(&rows).await.is_err());
        let stranger = client(&server, &pki, Some(WRONG)).await;
        assert!(stranger.list_galleries().await.is_err());
        let ch = channel(&server, &pki).await;
        let v: MetadataValue<_> = WRONG.parse().expect("metadata");
        let mut rpc = VisageClient::with_interceptor(ch, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("x-api-key", v.clone());
            Ok(req)
        });
        assert!(
            rpc.list_galleries(proto::ListGalleriesRequest {})
                .await
                .is_err()
        );
    });
    let status = server.terminate();
    assert!(status.success(), "server exit: {status:?}");
    let log = std::fs::read_dir(t.dir.path())
        .expect("tempdir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("server-"))
        .map(|e| std::fs::read_to_string(e.path()).expect("log"))
        .collect::<String>();
    // The log is a real trace log of these calls...
    assert!(log.contains("TRACE"), "RUST_LOG=trace took effect");
    assert!(log.contains("tls: on"), "startup logs TLS on");
    assert!(log.contains("api keys: on"), "startup logs keys on");
    assert!(log.contains("request refused"), "refusals are logged");
    assert!(
        log.contains("/visage.v1.Visage/Insert"),
        "method paths are logged"
    );
    // ... and holds no key.
    for k in [READ, WRITE, ADMIN, WRONG] {
        assert!(!log.contains(k), "the log holds key {k}");
        assert!(!log.contains(&k[3..]), "the log holds part of key {k}");
    }
}

/// Run the server with `flags` and expect it to stop at startup; returns stderr.
fn refuses_to_start(t: &TempData, flags: &[&str]) -> String {
    let out = Command::new(binary("visage-server"))
        .arg("--data-dir")
        .arg(t.data())
        .args(["--listen", "127.0.0.1:0"])
        .args(flags)
        .env("RUST_LOG", "info")
        .output()
        .expect("run visage-server");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{flags:?} should stop the server");
    assert!(!stdout.contains("listening"), "{flags:?}: {stdout}");
    stderr
}

#[test]
fn bad_security_settings_stop_the_server() {
    let (t, pki) = (TempData::new(), Pki::new());
    let secret = "s3cret-s3cret-s3cret-7";

    // A malformed key file: file and line, not the key.
    let bad = pki.path("bad-keys.txt");
    std::fs::write(&bad, format!("# ops\nread {READ}\nsuperuser {secret}\n")).expect("write");
    let bad_s = bad.display().to_string();
    let err = refuses_to_start(&t, &["--api-keys", &bad_s]);
    assert!(err.contains(&format!("{bad_s}:3:")), "{err}");
    assert!(err.contains("unknown role"), "{err}");
    assert!(!err.contains(secret) && !err.contains(READ), "{err}");

    // A key too short, a missing file.
    std::fs::write(&bad, "admin short\n").expect("write");
    let err = refuses_to_start(&t, &["--api-keys", &bad_s]);
    assert!(
        err.contains(&format!("{bad_s}:1:")) && err.contains("16 to 1024"),
        "{err}"
    );
    assert!(!err.contains("short\n") && !err.contains(" short"), "{err}");
    let err = refuses_to_start(&t, &["--api-keys", "/nonexistent/keys.txt"]);
    assert!(err.contains("/nonexistent/keys.txt"), "{err}");

    // TLS flags come in pairs, and the files must be usable.
    let cert = pki.p("server.pem");
    let key = pki.p("server.key");
    let err = refuses_to_start(&t, &["--tls-cert", &cert]);
    assert!(err.contains("--tls-cert needs --tls-key"), "{err}");
    let err = refuses_to_start(&t, &["--tls-key", &key]);
    assert!(err.contains("--tls-key needs --tls-cert"), "{err}");
    let err = refuses_to_start(&t, &["--tls-cert", &key, "--tls-key", &key]);
    assert!(err.contains("unusable TLS certificate or key"), "{err}");
    let err = refuses_to_start(&t, &["--tls-cert", &cert, "--tls-key", &cert]);
    assert!(err.contains("unusable TLS certificate or key"), "{err}");
    let err = refuses_to_start(&t, &["--tls-cert", "/nonexistent/c.pem", "--tls-key", &key]);
    assert!(err.contains("/nonexistent/c.pem"), "{err}");
    // No error shows the private key.
    let key_pem = std::fs::read_to_string(pki.path("server.key")).expect("key");
    let body = key_pem.lines().nth(1).expect("a base64 line");
    assert!(!err.contains(body));
}

#[test]
fn tls_without_keys_and_keys_without_tls() {
    let pki = Pki::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // TLS only: no key needed.
    let t = TempData::new();
    let (cert, key) = (pki.p("server.pem"), pki.p("server.key"));
    let server = Server::start_with(&t.data(), &["--tls-cert", &cert, "--tls-key", &key]);
    rt.block_on(async {
        let c = client(&server, &pki, None).await;
        c.create_gallery("g")
            .await
            .expect("no keys configured: open");
    });
    assert!(server.log().contains("tls: on"));
    assert!(server.log().contains("api keys: off"));
    drop(server);

    // Keys over plaintext: they work, and the server warns.
    let t = TempData::new();
    let keys = pki.p("keys.txt");
    let server = Server::start_with(&t.data(), &["--api-keys", &keys]);
    rt.block_on(async {
        let anonymous = Client::connect(&server.url()).await.expect("connect");
        assert_status(
            anonymous.list_galleries().await,
            Code::Unauthenticated,
            &["missing API key"],
        );
        let admin = Client::connect_with(
            &server.url(),
            ConnectOptions {
                api_key: Some(ADMIN.into()),
                ..ConnectOptions::default()
            },
        )
        .await
        .expect("connect");
        admin
            .create_gallery("g")
            .await
            .expect("admin over plaintext");
    });
    let log = server.log();
    assert!(log.contains("tls: off"), "{log}");
    assert!(log.contains("without TLS"), "{log}");
}

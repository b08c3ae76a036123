//! Credentials in cluster mode, on real processes: NATS with a token, etcd
//! with authentication on, and visage nodes with API keys that call each
//! other with a cluster key of the `node` role. A node given a wrong NATS
//! token or etcd password does not start and says which and why; a node
//! whose cluster key the others do not know gets its fan-out refused with
//! the reason; only the node role may address one shard directly.

use std::time::{Duration, Instant};
use tonic::transport::Channel;
use visage_client::proto;
use visage_client::proto::visage_client::VisageClient;
use visage_tests::cluster::{
    EtcdCluster, NatsCluster, NatsOptions, VisageNode, require_cluster_tools,
};

const ADMIN: &str = "admin-key-0123456789abcdef";
const NODE: &str = "node-key-0123456789abcdef0";

fn authed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r.set_timeout(Duration::from_secs(30));
    r
}

async fn client(addr: &str) -> VisageClient<Channel> {
    VisageClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy(),
    )
}

/// Wait until the node's process exits; its log.
fn exits(n: &VisageNode) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    while n.is_running() {
        assert!(
            Instant::now() < deadline,
            "{} still runs; log:\n{}",
            n.id,
            n.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    n.log()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credentials_are_checked_everywhere() {
    if !require_cluster_tools("credentials_are_checked_everywhere") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsCluster::start_with(
        &dir.path().join("nats"),
        3,
        NatsOptions {
            token: Some("nats-secret-token".into()),
        },
    );
    let etcd = EtcdCluster::start(&dir.path().join("etcd"), 3);
    etcd.enable_auth("etcd-root-password");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("admin {ADMIN}\nnode {NODE}\n")).unwrap();
    let node_key = dir.path().join("node.key");
    std::fs::write(&node_key, NODE).unwrap();
    let wrong_key = dir.path().join("wrong.key");
    std::fs::write(&wrong_key, "not-a-key-of-this-cluster-0").unwrap();
    let (urls, endpoints) = (nats.url_list(), etcd.endpoints().join(","));
    let flags = |token: &str, password: &str, key: &std::path::Path| -> Vec<String> {
        [
            "--nats-token",
            token,
            "--etcd-user",
            "root",
            "--etcd-password",
            password,
            "--api-keys",
            &keys.display().to_string(),
            "--cluster-key-file",
            &key.display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    };

    // Wrong credentials: the node stops at once and says which and why.
    let bad = VisageNode::start(
        dir.path(),
        "bad-nats",
        &urls,
        &endpoints,
        &flags("wrong-token", "etcd-root-password", &node_key),
    );
    let log = exits(&bad);
    assert!(
        log.contains("cannot join the cluster") && log.contains("nats"),
        "a wrong NATS token is reported: {log}"
    );
    assert!(
        log.to_lowercase().contains("authorization"),
        "the reason is NATS's: {log}"
    );
    let bad = VisageNode::start(
        dir.path(),
        "bad-etcd",
        &urls,
        &endpoints,
        &flags("nats-secret-token", "wrong-password", &node_key),
    );
    let log = exits(&bad);
    assert!(
        log.contains("cannot join the cluster") && log.contains("etcd"),
        "a wrong etcd password is reported: {log}"
    );
    assert!(
        log.contains("authentication failed"),
        "the reason is etcd's: {log}"
    );

    // Right credentials: two nodes that know each other's key, one with a
    // key nobody knows.
    let good = ["a", "b"].map(|id| {
        VisageNode::start(
            dir.path(),
            id,
            &urls,
            &endpoints,
            &flags("nats-secret-token", "etcd-root-password", &node_key),
        )
    });
    let stranger = VisageNode::start(
        dir.path(),
        "c",
        &urls,
        &endpoints,
        &flags("nats-secret-token", "etcd-root-password", &wrong_key),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client(&good[0].addr)
            .await
            .cluster_status(authed(proto::ClusterStatusRequest {}, ADMIN))
            .await;
        if r.is_ok_and(|r| r.get_ref().nodes.len() == 3) {
            break;
        }
        assert!(Instant::now() < deadline, "3 nodes within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut a = client(&good[0].addr).await;
    // Without a key: refused before anything.
    let e = a
        .cluster_status(proto::ClusterStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    // One shard on each node (3 shards, 1 copy): every read needs the others.
    a.create_gallery(authed(
        proto::CreateGalleryRequest {
            name: "doors".into(),
            dim: 16,
            shards: 3,
            replicas: 1,
            ..Default::default()
        },
        ADMIN,
    ))
    .await
    .unwrap();
    let seq = a
        .insert(authed(
            proto::InsertRequest {
                gallery: "doors".into(),
                embeddings: (1..=30)
                    .map(|i| proto::Embedding {
                        id: i,
                        subject: format!("p{i}"),
                        vector: (0..16).map(|j| (i * 16 + j) as f32 * 0.01).collect(),
                    })
                    .collect(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner()
        .seq;
    let search = |min_seq| proto::SearchRequest {
        gallery: "doors".into(),
        queries: vec![proto::Vector {
            values: vec![0.1; 16],
        }],
        k: 30,
        min_seq,
        ..Default::default()
    };
    // The nodes with the cluster key fan out to each other ...
    for n in &good {
        let r = client(&n.addr)
            .await
            .search(authed(search(seq), ADMIN))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", n.id))
            .into_inner();
        assert_eq!(r.results[0].hits.len(), 30, "every shard answered");
    }
    // ... the stranger's calls to them are refused, and it says why.
    let e = client(&stranger.addr)
        .await
        .search(authed(search(seq), ADMIN))
        .await
        .expect_err("a node with an unknown cluster key read the other nodes' shards");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(e.message().contains("unknown API key"), "{e}");
    // One shard directly: the node role only.
    let mut direct = authed(search(seq), ADMIN);
    direct
        .metadata_mut()
        .insert("visage-shard", "0".parse().unwrap());
    let e = a.search(direct).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("node role"), "{e}");
    let mut direct = authed(search(seq), NODE);
    direct
        .metadata_mut()
        .insert("visage-shard", "0".parse().unwrap());
    let hits = a.search(direct).await.unwrap().into_inner().results[0]
        .hits
        .len();
    assert!(
        hits < 30,
        "one shard holds part of the gallery ({hits} of 30)"
    );
}

/// A self-signed CA, and a certificate it signs for 127.0.0.1: the CA's PEM,
/// written with the certificate and key into `dir`.
fn pki(dir: &std::path::Path) -> Vec<u8> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "visage cluster test CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("node.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("node-key.pem"), key.serialize_pem()).unwrap();
    ca.pem().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_call_each_other_over_tls() {
    if !require_cluster_tools("nodes_call_each_other_over_tls") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let nats = NatsCluster::start(&dir.path().join("nats"), 3);
    let etcd = EtcdCluster::start(&dir.path().join("etcd"), 3);
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("admin {ADMIN}\nnode {NODE}\n")).unwrap();
    let node_key = dir.path().join("node.key");
    std::fs::write(&node_key, NODE).unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();
    let tls = |with_ca: bool| -> Vec<String> {
        let mut f = vec![
            "--tls-cert".to_owned(),
            p("node.pem"),
            "--tls-key".to_owned(),
            p("node-key.pem"),
            "--api-keys".to_owned(),
            keys.display().to_string(),
            "--cluster-key-file".to_owned(),
            node_key.display().to_string(),
        ];
        if with_ca {
            f.extend(["--cluster-ca".to_owned(), p("ca.pem")]);
        }
        f
    };
    let (urls, endpoints) = (nats.url_list(), etcd.endpoints().join(","));
    // TLS without the CA to check the other nodes with: refused at start.
    let out = std::process::Command::new(visage_tests::cluster::visage_server_binary())
        .args(["--data-dir", &p("no-ca"), "--listen", "127.0.0.1:0"])
        .args(["--nats", &urls, "--etcd", &endpoints, "--node-id", "no-ca"])
        .args(tls(false))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--cluster-ca"),
        "{err}"
    );
    let nodes =
        ["a", "b"].map(|id| VisageNode::start(dir.path(), id, &urls, &endpoints, &tls(true)));
    let tls_client = |addr: String| {
        let ca = ca.clone();
        async move {
            VisageClient::new(
                Channel::from_shared(format!("https://{addr}"))
                    .unwrap()
                    .tls_config(
                        tonic::transport::ClientTlsConfig::new()
                            .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
                    )
                    .unwrap()
                    .connect_lazy(),
            )
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = tls_client(nodes[0].addr.clone())
            .await
            .cluster_status(authed(proto::ClusterStatusRequest {}, ADMIN))
            .await;
        if r.is_ok_and(|r| r.get_ref().nodes.len() == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "2 nodes within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut a = tls_client(nodes[0].addr.clone()).await;
    // One shard on each node: every read crosses to the other node.
    a.create_gallery(authed(
        proto::CreateGalleryRequest {
            name: "doors".into(),
            dim: 16,
            shards: 2,
            replicas: 1,
            ..Default::default()
        },
        ADMIN,
    ))
    .await
    .unwrap();
    let seq = a
        .insert(authed(
            proto::InsertRequest {
                gallery: "doors".into(),
                embeddings: (1..=20)
                    .map(|i| proto::Embedding {
                        id: i,
                        subject: format!("p{i}"),
                        vector: (0..16).map(|j| (i * 16 + j) as f32 * 0.01).collect(),
                    })
                    .collect(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner()
        .seq;
    for n in &nodes {
        let r = tls_client(n.addr.clone())
            .await
            .search(authed(
                proto::SearchRequest {
                    gallery: "doors".into(),
                    queries: vec![proto::Vector {
                        values: vec![0.1; 16],
                    }],
                    k: 20,
                    min_seq: seq,
                    ..Default::default()
                },
                ADMIN,
            ))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", n.id))
            .into_inner();
        assert_eq!(r.results[0].hits.len(), 20, "both shards answered over TLS");
    }
}

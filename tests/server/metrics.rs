//! The Prometheus endpoint (`--metrics-listen`): counters moved by exactly
//! the calls made, gallery gauges equal to GetGallery's, scrapes during load
//! checked by `promtool check metrics`, the key check, and a real Prometheus
//! scraping the server.
//!
//! `promtool` and `prometheus` come with the Debian package `prometheus`.
//! Without them the tests that need them print a skip line and return,
//! unless `VISAGE_REQUIRE_PROMETHEUS=1` (CI), where they fail.

use crate::harness::{Server, TempData, batch, binary};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::Code;
use visage_client::{Client, ConnectOptions};
use visage_tests::Rng;

const READ: &str = "read-key-for-metrics-0123";
const ADMIN: &str = "admin-key-for-metrics-0123";

// ---------------------------------------------------------------------------
// Helpers

/// An HTTP/1.1 GET: (status, body).
fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line of {head:?}"));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("chunk size line");
        let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).expect("size");
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

/// The samples of a scrape: (metric name, labels) → value.
#[derive(Debug)]
struct Scrape {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    body: String,
}

impl Scrape {
    fn parse(body: String) -> Scrape {
        let mut samples = Vec::new();
        for line in body.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value of {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let rest = rest.strip_suffix('}').expect("closing brace");
                    let mut labels = BTreeMap::new();
                    let mut chars = rest.chars().peekable();
                    while chars.peek().is_some() {
                        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                        assert_eq!(chars.next(), Some('"'), "{line}");
                        let mut value = String::new();
                        while let Some(c) = chars.next() {
                            match c {
                                '\\' => value.push(chars.next().expect("escaped")),
                                '"' => break,
                                c => value.push(c),
                            }
                        }
                        if chars.peek() == Some(&',') {
                            chars.next();
                        }
                        labels.insert(key.trim().to_owned(), value);
                    }
                    (name.to_owned(), labels)
                }
            };
            samples.push((name, labels, value));
        }
        Scrape { samples, body }
    }

    /// The value of the one sample of `name` whose labels include `labels`
    /// (and have no others), if any.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|s| s.2)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{}", self.body))
    }

    /// Sum of every sample of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
            .sum()
    }
}

fn scrape(addr: &str) -> Scrape {
    let (status, body) = http_get(addr, "/metrics", &[]);
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body)
}

/// Whether the tools of the Debian package `prometheus` may be used: true if
/// `tool` is on PATH; false (after a skip line) if not, unless
/// `VISAGE_REQUIRE_PROMETHEUS=1`, which makes it a failure.
fn have(tool: &str, test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if found {
        return true;
    }
    if std::env::var("VISAGE_REQUIRE_PROMETHEUS").as_deref() == Ok("1") {
        panic!(
            "{tool} is not on PATH and VISAGE_REQUIRE_PROMETHEUS=1: install the Debian package \
             `prometheus` (apt-get install prometheus)"
        );
    }
    // Straight to stderr, past the test harness's capture: a skip must show.
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: {tool} is not on PATH (install the Debian package `prometheus`)"
    );
    false
}

/// `promtool check metrics` on a scrape: it must exit 0 and say nothing.
fn promtool_check(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stderr.trim().is_empty() && stdout.trim().is_empty(),
        "promtool check metrics: {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nthe scrape:\n{body}",
        out.status
    );
}

fn start(t: &TempData, extra: &[&str]) -> (Server, String) {
    let mut args = vec!["--metrics-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = Server::start_with(&t.data(), &args);
    let addr = server.metrics_addr();
    (server, addr)
}

fn rpc_count(s: &Scrape, method: &str, code: &str) -> f64 {
    s.get(
        "visage_rpc_requests_total",
        &[("method", method), ("code", code)],
    )
    .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_the_calls_made() {
    let t = TempData::new();
    let (server, maddr) = start(&t, &[]);
    let c = server.client().await;

    // Before any call: the process and no galleries; no call counted.
    let s0 = tokio::task::spawn_blocking({
        let a = maddr.clone();
        move || scrape(&a)
    })
    .await
    .unwrap();
    assert_eq!(s0.value("visage_galleries", &[]), 0.0);
    assert!(s0.value("visage_process_resident_memory_bytes", &[]) > 1e6);
    assert!(s0.value("visage_process_open_fds", &[]) >= 3.0);
    assert!(
        s0.get(
            "visage_rpc_requests_total",
            &[("method", "Search"), ("code", "Ok")]
        )
        .is_none()
    );

    c.create_gallery("g").await.unwrap();
    let g = c.gallery("g");
    let mut rng = Rng(7);
    let rows = batch(&mut rng, 1, 600, 60, "s");
    let inserts = 3;
    for chunk in rows.chunks(200) {
        g.insert(chunk).await.unwrap();
    }
    assert_eq!(g.delete(&[1, 2, 3, 4, 5], &[]).await.unwrap(), 5);

    let s1 = tokio::task::spawn_blocking({
        let a = maddr.clone();
        move || scrape(&a)
    })
    .await
    .unwrap();
    let gl = [("gallery", "g")];
    assert!(s1.value("visage_gallery_unflushed_rows", &gl) >= 595.0);
    assert_eq!(
        s1.value(
            "visage_maintenance_runs_total",
            &[("gallery", "g"), ("operation", "flush")]
        ),
        0.0
    );
    // Each sequential insert or delete is a group commit of one batch, one
    // record, synced once (durability power-loss).
    assert_eq!(
        s1.value("visage_wal_group_batches_count", &gl),
        f64::from(inserts + 1)
    );
    assert_eq!(
        s1.value("visage_wal_group_batches_sum", &gl),
        f64::from(inserts + 1)
    );
    assert_eq!(
        s1.value("visage_wal_group_records_sum", &gl),
        f64::from(inserts + 1)
    );
    assert_eq!(
        s1.value(
            "visage_wal_group_batches_bucket",
            &[("gallery", "g"), ("le", "1")]
        ),
        f64::from(inserts + 1)
    );
    assert_eq!(
        s1.value("visage_wal_fsync_duration_seconds_count", &gl),
        f64::from(inserts + 1)
    );
    assert!(s1.value("visage_wal_fsync_duration_seconds_sum", &gl) > 0.0);
    assert_eq!(rpc_count(&s1, "Insert", "Ok"), f64::from(inserts));
    assert_eq!(rpc_count(&s1, "Delete", "Ok"), 1.0);
    assert_eq!(rpc_count(&s1, "CreateGallery", "Ok"), 1.0);

    // A flush moves the flush counters.
    g.flush().await.unwrap();
    let s2 = tokio::task::spawn_blocking({
        let a = maddr.clone();
        move || scrape(&a)
    })
    .await
    .unwrap();
    let flush = [("gallery", "g"), ("operation", "flush")];
    assert_eq!(s2.value("visage_maintenance_runs_total", &flush), 1.0);
    assert_eq!(
        s2.value("visage_maintenance_duration_seconds_count", &flush),
        1.0
    );
    assert!(s2.value("visage_maintenance_written_bytes_total", &flush) > 595.0 * 512.0);
    assert_eq!(
        s2.value(
            "visage_maintenance_runs_total",
            &[("gallery", "g"), ("operation", "compaction")]
        ),
        0.0
    );
    assert_eq!(s2.value("visage_gallery_unflushed_rows", &gl), 0.0);

    // Searches: single probes (the screened scan) and batches (tiled), on
    // the flushed segment's codes; then two on a missing gallery.
    let singles = 5u32;
    let batches = [40usize, 12];
    for i in 0..singles {
        let q = rows[i as usize * 7].vector.clone();
        let hits = g.search(&[q], 3).await.unwrap();
        assert_eq!(hits[0].len(), 3);
    }
    for n in batches {
        let qs: Vec<Vec<f32>> = (0..n).map(|_| rng.vector()).collect();
        g.search(&qs, 5).await.unwrap();
    }
    let missing = c.gallery("nope");
    for _ in 0..2 {
        let e = missing.search(&[rng.vector()], 1).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    }
    let info = g.stats().await.unwrap();

    let s = tokio::task::spawn_blocking({
        let a = maddr.clone();
        move || scrape(&a)
    })
    .await
    .unwrap();
    let searches = singles as usize + batches.len();
    assert_eq!(rpc_count(&s, "Search", "Ok"), searches as f64);
    assert_eq!(rpc_count(&s, "Search", "NotFound"), 2.0);
    assert_eq!(rpc_count(&s, "Flush", "Ok"), 1.0);
    assert_eq!(rpc_count(&s, "GetGallery", "Ok"), 1.0);
    assert_eq!(rpc_count(&s, "Insert", "Ok"), f64::from(inserts));
    assert_eq!(
        s.value("visage_rpc_duration_seconds_count", &[("method", "Search")]),
        (searches + 2) as f64
    );
    assert!(s.value("visage_rpc_duration_seconds_sum", &[("method", "Search")]) > 0.0);
    // Health checks and reflection are not counted.
    assert!(!s.body.contains("grpc.health"), "{}", s.body);

    // The gallery gauges are GetGallery's numbers.
    assert_eq!(s.value("visage_galleries", &[]), 1.0);
    assert_eq!(s.value("visage_gallery_live_rows", &gl), info.live as f64);
    assert_eq!(info.live, 595);
    assert_eq!(
        s.value("visage_gallery_deleted_rows", &gl),
        info.deleted as f64
    );
    assert_eq!(
        s.value("visage_gallery_subjects", &gl),
        info.subjects as f64
    );
    assert_eq!(
        s.value("visage_gallery_segments", &gl),
        info.segments as f64
    );
    assert_eq!(info.segments, 1);
    assert_eq!(
        s.value("visage_gallery_disk_bytes", &gl),
        info.bytes_on_disk as f64
    );
    assert_eq!(
        s.value("visage_gallery_unflushed_rows", &gl),
        info.memtable_rows as f64
    );
    assert_eq!(
        s.value("visage_gallery_exception_rows", &gl),
        info.exception_rows as f64
    );

    // Every probe was settled by exactly one scan, as GetGallery counts them.
    let probes = singles as usize + batches.iter().sum::<usize>();
    let scans = info.scans.expect("scan counts");
    let scan = |name: &str| {
        s.value(
            "visage_scan_probes_total",
            &[("gallery", "g"), ("scan", name)],
        )
    };
    assert_eq!(
        s.sum("visage_scan_probes_total", &gl),
        probes as f64,
        "{}",
        s.body
    );
    assert_eq!(
        scan("screened") + scan("int_tiled"),
        scans.first_pass as f64
    );
    assert_eq!(scan("screened_widened"), scans.widened as f64);
    assert_eq!(scan("f32_tiled"), scans.f32_batch as f64);
    assert_eq!(scan("direct"), scans.direct as f64);
    // Single probes take the screened scan, and batches never do.
    assert!(
        scan("screened") + scan("screened_widened") + s.value("visage_scan_fallbacks_total", &gl)
            >= f64::from(singles),
        "{}",
        s.body
    );

    // No head yet.
    assert_eq!(s.value("visage_head_trained", &gl), 0.0);
    assert!(s.get("visage_head_target_far", &gl).is_none());

    if have("promtool", "promtool check of the scrape") {
        promtool_check(&s.body);
    }

    // A compaction after deletes in the segment moves the compaction counters
    // (and no flush: nothing was left to flush).
    let ids: Vec<u64> = (10..20).collect();
    assert_eq!(g.delete(&ids, &[]).await.unwrap(), 10);
    g.compact().await.unwrap();
    let s = tokio::task::spawn_blocking(move || scrape(&maddr))
        .await
        .unwrap();
    let compaction = [("gallery", "g"), ("operation", "compaction")];
    assert_eq!(s.value("visage_maintenance_runs_total", &compaction), 1.0);
    assert_eq!(
        s.value("visage_maintenance_duration_seconds_count", &compaction),
        1.0
    );
    assert!(s.value("visage_maintenance_written_bytes_total", &compaction) > 585.0 * 512.0);
    assert_eq!(s.value("visage_maintenance_runs_total", &flush), 1.0);
    assert_eq!(s.value("visage_gallery_live_rows", &gl), 585.0);
    assert_eq!(s.value("visage_gallery_deleted_rows", &gl), 0.0);
    assert_eq!(rpc_count(&s, "Compact", "Ok"), 1.0);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_during_load_are_valid() {
    if !have("promtool", "scrapes_during_load_are_valid") {
        return;
    }
    let t = TempData::new();
    let (server, maddr) = start(&t, &[]);
    let c = server.client().await;
    for name in ["a", "b"] {
        c.create_gallery(name).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let g = c.gallery(name);
        let (stop, done) = (stop.clone(), done.clone());
        load.push(tokio::spawn(async move {
            let mut rng = Rng(100 + i as u64);
            let mut next = 1;
            while !stop.load(Ordering::Relaxed) {
                let rows = batch(&mut rng, next, 50, 20, name);
                next += 50;
                g.insert(&rows).await.unwrap();
                g.search(&[rng.vector()], 5).await.unwrap();
                let qs: Vec<Vec<f32>> = (0..8).map(|_| rng.vector()).collect();
                g.search(&qs, 5).await.unwrap();
                if next % 500 == 1 {
                    g.flush().await.unwrap();
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut last = 0;
    for round in 0..8 {
        // Each scrape while the load has moved on since the last one.
        let deadline = Instant::now() + Duration::from_secs(60);
        while done.load(Ordering::Relaxed) <= last {
            assert!(Instant::now() < deadline, "the load made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        last = done.load(Ordering::Relaxed);
        let a = maddr.clone();
        let s = tokio::task::spawn_blocking(move || {
            let s = scrape(&a);
            promtool_check(&s.body);
            s
        })
        .await
        .unwrap();
        if round > 0 {
            assert_eq!(s.value("visage_galleries", &[]), 2.0);
            assert!(rpc_count(&s, "Insert", "Ok") >= 1.0);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    drop(server);
}

fn key_file(t: &TempData) -> String {
    let p = t.dir.path().join("keys.txt");
    std::fs::write(&p, format!("read {READ}\nadmin {ADMIN}\n")).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_need_a_read_key_when_keys_are_on() {
    let t = TempData::new();
    let keys = key_file(&t);
    let (server, maddr) = start(&t, &["--api-keys", &keys]);
    // A call without a key is counted with its code.
    let anonymous = server.client().await;
    let e = anonymous.list_galleries().await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unauthenticated));
    let admin = Client::connect_with(
        &server.url(),
        ConnectOptions {
            api_key: Some(ADMIN.into()),
            ..ConnectOptions::default()
        },
    )
    .await
    .unwrap();
    admin.create_gallery("g").await.unwrap();

    let a = maddr.clone();
    tokio::task::spawn_blocking(move || {
        let (status, body) = http_get(&a, "/metrics", &[]);
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("missing API key"), "{body}");
        assert_eq!(body.lines().count(), 1, "{body}");

        let bad = "not-a-key-of-this-server-0";
        let (status, body) = http_get(
            &a,
            "/metrics",
            &[("authorization", &format!("Bearer {bad}"))],
        );
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("unknown API key"), "{body}");
        let (status, body) = http_get(&a, "/metrics", &[("authorization", "Basic abc")]);
        assert_eq!(status, 401, "{body}");

        for headers in [
            [("authorization", format!("Bearer {READ}"))],
            [("x-api-key", READ.to_owned())],
            [("authorization", format!("bearer {ADMIN}"))],
        ] {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (status, body) = http_get(&a, "/metrics", &h);
            assert_eq!(status, 200, "{h:?}: {body}");
            let s = Scrape::parse(body);
            assert_eq!(rpc_count(&s, "ListGalleries", "Unauthenticated"), 1.0);
            assert_eq!(rpc_count(&s, "CreateGallery", "Ok"), 1.0);
            assert_eq!(s.value("visage_galleries", &[]), 1.0);
        }
        // Only /metrics is served.
        let (status, _) = http_get(&a, "/", &[("x-api-key", READ)]);
        assert_eq!(status, 404);
    })
    .await
    .unwrap();
    // The endpoint stops with the server's graceful shutdown (which waits
    // for it), and the server exits 0.
    let st = server.terminate();
    assert!(st.success(), "{st:?}");
}

#[test]
fn a_bad_metrics_address_stops_the_server() {
    let t = TempData::new();
    let out = Command::new(binary("visage-server"))
        .arg("--data-dir")
        .arg(t.data())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "localhost:nope",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics-listen"), "{err}");
    assert!(out.stdout.is_empty());
}

/// A Prometheus server on loopback, killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Start Prometheus scraping `target` every second with `key`, on a free
    /// loopback port (retrying with another if the port was taken meanwhile).
    fn start(dir: &Path, target: &str, key: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: visage\n    scrape_interval: 1s\n    \
                 authorization:\n      credentials: {key}\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        for attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = format!("127.0.0.1:{port}");
            let log = dir.join(format!("prometheus-{attempt}.log"));
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join(format!("tsdb-{attempt}")).display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("run prometheus");
            let mut p = Prometheus { child, addr, log };
            // Ready, or exited (a taken port: try another).
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(st) = p.child.try_wait().unwrap() {
                    let log = p.log();
                    assert!(
                        log.contains("address already in use"),
                        "prometheus exited ({st}):\n{log}"
                    );
                    break;
                }
                if TcpStream::connect(&p.addr).is_ok()
                    && http_get(&p.addr, "/-/ready", &[]).0 == 200
                {
                    return p;
                }
                assert!(
                    Instant::now() < deadline,
                    "prometheus not ready in 60 s:\n{}",
                    p.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("prometheus could not bind a port in 5 attempts");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The values of an instant query.
    fn query(&self, q: &str) -> Vec<f64> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = http_get(&self.addr, &format!("/api/v1/query?query={enc}"), &[]);
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        v["data"]["result"]
            .as_array()
            .expect("result")
            .iter()
            .map(|r| {
                r["value"][1]
                    .as_str()
                    .expect("value")
                    .parse()
                    .expect("number")
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_server() {
    if !have("prometheus", "a_real_prometheus_scrapes_the_server") {
        return;
    }
    let t = TempData::new();
    let keys = key_file(&t);
    let (server, maddr) = start(&t, &["--api-keys", &keys]);
    let c = Client::connect_with(
        &server.url(),
        ConnectOptions {
            api_key: Some(ADMIN.into()),
            ..ConnectOptions::default()
        },
    )
    .await
    .unwrap();
    c.create_gallery("g").await.unwrap();
    let g = c.gallery("g");
    let mut rng = Rng(9);
    g.insert(&batch(&mut rng, 1, 100, 10, "p")).await.unwrap();
    let searches = 4;
    for _ in 0..searches {
        g.search(&[rng.vector()], 2).await.unwrap();
    }

    let dir = t.dir.path().join("prom");
    std::fs::create_dir_all(&dir).unwrap();
    tokio::task::spawn_blocking(move || {
        let prom = Prometheus::start(&dir, &maddr, READ);
        let deadline = Instant::now() + Duration::from_secs(60);
        let want = [
            (
                r#"visage_rpc_requests_total{method="Search",code="Ok"}"#,
                f64::from(searches),
            ),
            (r#"visage_gallery_live_rows{gallery="g"}"#, 100.0),
            (r#"up{job="visage"}"#, 1.0),
        ];
        for (q, v) in want {
            loop {
                let got = prom.query(q);
                if got == [v] {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{q}: {got:?}, expected [{v}] within 60 s; prometheus log:\n{}",
                    prom.log()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    })
    .await
    .unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_state_and_thresholds_are_reported() {
    use visage_client::TrainHead;
    use visage_engine::synth::{SynthConfig, SynthGallery};
    let t = TempData::new();
    let (server, maddr) = start(&t, &[]);
    let c = server.client().await;
    c.create_gallery("h").await.unwrap();
    let g = c.gallery("h");
    let synth = SynthGallery::generate(SynthConfig {
        subjects: 120,
        min_images: 6,
        max_images: 8,
        seed: 5,
        ..Default::default()
    });
    let data: Vec<visage_client::Embedding> = synth
        .embeddings
        .iter()
        .map(|e| visage_client::Embedding {
            id: e.id,
            subject: e.subject.clone(),
            vector: e.vector.clone(),
        })
        .collect();
    g.insert(&data).await.unwrap();
    let head = g
        .train_head(&TrainHead {
            target_far: Some(0.01),
            max_pairs: Some(20_000),
            seed: Some(2),
            prior: None,
        })
        .await
        .unwrap();
    assert!(head.trained);
    let info = g.stats().await.unwrap();
    let s = tokio::task::spawn_blocking(move || scrape(&maddr))
        .await
        .unwrap();
    let gl = [("gallery", "h")];
    let kind = |k: &str| s.value("visage_head_threshold", &[("gallery", "h"), ("kind", k)]);
    assert_eq!(s.value("visage_head_trained", &gl), 1.0);
    assert_eq!(
        s.value("visage_head_target_far", &gl),
        f64::from(head.target_far)
    );
    assert_eq!(kind("pair_logit"), f64::from(head.logit_threshold));
    assert_eq!(kind("pair_probability"), f64::from(head.threshold));
    assert_eq!(kind("pair_distance"), f64::from(head.distance_threshold));
    assert_eq!(
        kind("open_logit"),
        f64::from(info.open_logit_threshold.expect("open logit threshold"))
    );
    assert_eq!(
        kind("open_distance"),
        f64::from(
            info.open_distance_threshold
                .expect("open distance threshold")
        )
    );
    assert_eq!(rpc_count(&s, "TrainHead", "Ok"), 1.0);
    if have("promtool", "promtool check of the scrape") {
        promtool_check(&s.body);
    }
    drop(server);
}

/// A backup running slowly (1 MiB/s) shows in the progress gauges, and they
/// go when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_backup_shows_its_progress() {
    let t = TempData::new();
    let root = t.data().parent().unwrap().join("backups");
    let server = Server::start_with(
        &t.data(),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--backup-root",
            root.to_str().unwrap(),
            "--backup-rate",
            "1",
        ],
    );
    let addr = server.metrics_addr();
    let c = server.client().await;
    c.create_gallery("g").await.unwrap();
    let mut rng = visage_tests::Rng(77);
    c.gallery("g")
        .insert(&batch(&mut rng, 1, 4000, 400, "p"))
        .await
        .unwrap();
    let backing = {
        let c = c.clone();
        tokio::spawn(async move { c.backup("g", "b").await })
    };
    let labels = [("gallery", "g"), ("operation", "backup")];
    let seen = loop {
        let a = addr.clone();
        let s = tokio::task::spawn_blocking(move || scrape(&a))
            .await
            .unwrap();
        if let Some(done) = s.get("visage_operation_bytes_done", &labels)
            && done > 0.0
        {
            break s;
        }
        assert!(
            !backing.is_finished(),
            "the backup ended before its progress was seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (done, total) = (
        seen.value("visage_operation_bytes_done", &labels),
        seen.value("visage_operation_bytes_planned", &labels),
    );
    assert!(done <= total && total > 2e6, "{done} of {total}");
    assert!(seen.value("visage_operation_rows_planned", &labels) >= 4000.0);
    if have("promtool", "a_running_backup_shows_its_progress") {
        promtool_check(&seen.body);
    }
    let rep = backing.await.unwrap().unwrap();
    assert_eq!(rep.bytes as f64, total, "the total was the backup's size");
    let after = tokio::task::spawn_blocking(move || scrape(&addr))
        .await
        .unwrap();
    assert_eq!(after.get("visage_operation_bytes_done", &labels), None);
}

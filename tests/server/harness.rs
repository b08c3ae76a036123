//! Starting the real `visage-server` binary on an ephemeral port with a
//! temporary data directory, and the reference computations the tests
//! compare its answers with.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use visage_client::proto;
use visage_client::{Client, Embedding};
use visage_tests::{Rng, l2sq_f64};

/// A binary of the workspace, next to the test executable's directory
/// (`target/<profile>/deps/server-HASH` → `target/<profile>/NAME`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p visage-server -p visage-cli`, \
         or run `cargo test --workspace`, which builds it)",
        path.display()
    );
    path
}

/// A running server process; killed (SIGKILL) when dropped if still running.
pub struct Server {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    stderr: PathBuf,
    /// The lines of stdout after the first (read to the end by a thread, so
    /// the server never writes to a closed pipe).
    more_lines: std::sync::Mutex<std::sync::mpsc::Receiver<String>>,
}

impl Server {
    /// Start on `data_dir` (created if needed) with extra flags.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Server {
        std::fs::create_dir_all(data_dir).expect("create data dir");
        let log_dir = data_dir.parent().unwrap_or(data_dir);
        let mut cmd = Command::new(binary("visage-server"));
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra);
        Server::spawn(cmd, log_dir)
    }

    /// Run `cmd` (a visage-server command line, possibly behind a wrapper
    /// that execs it) with its log in `log_dir`, and wait for its address.
    pub fn spawn(mut cmd: Command, log_dir: &Path) -> Server {
        let stderr = log_dir.join(format!(
            "server-{}-{}.log",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let err_file = std::fs::File::create(&stderr).expect("server log file");
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(err_file)
            .spawn()
            .expect("spawn visage-server");
        let stdout = child.stdout.take().expect("server stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let (more_tx, more_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok).unwrap_or_default();
            let _ = tx.send(first);
            for line in lines {
                let Ok(line) = line else { break };
                let _ = more_tx.send(line);
            }
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!(
                "visage-server printed no address within 60 s; log:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        let Some(addr) = line.trim().strip_prefix("visage-server listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "unexpected first line {line:?}; log:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        Server {
            addr: addr.to_owned(),
            child: Some(child),
            stderr,
            more_lines: std::sync::Mutex::new(more_rx),
        }
    }

    /// The metrics address the server printed after its first line
    /// (`visage-server metrics on ADDR`, with `--metrics-listen`); waits up to
    /// 60 s for it.
    pub fn metrics_addr(&self) -> String {
        let rx = self.more_lines.lock().expect("stdout lines");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.trim().strip_prefix("visage-server metrics on ") {
                        return a.to_owned();
                    }
                }
                Err(e) => panic!(
                    "no `visage-server metrics on ADDR` line ({e}); log:\n{}",
                    self.log()
                ),
            }
        }
    }

    /// Start on `data_dir` with default flags.
    pub fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[])
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        Client::connect(&self.url()).await.expect("connect")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Send SIGTERM (without waiting).
    pub fn signal_term(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM failed");
    }

    /// Wait for the process to exit (up to `limit`).
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("server still owned");
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return st;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                panic!("server did not exit within {limit:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait: the graceful shutdown.
    pub fn terminate(mut self) -> ExitStatus {
        self.signal_term();
        self.wait(Duration::from_secs(60))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A temporary directory holding `data/` for a server.
pub struct TempData {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
}

impl TempData {
    /// A fresh directory.
    pub fn new() -> TempData {
        TempData {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    /// The data directory path.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// A wire embedding with a random vector.
pub fn emb(rng: &mut Rng, id: u64, subject: &str) -> Embedding {
    Embedding {
        id,
        subject: subject.to_owned(),
        vector: rng.vector(),
    }
}

/// `n` embeddings with ids `first..first + n` over `subjects` subjects named `prefix-N`.
pub fn batch(rng: &mut Rng, first: u64, n: usize, subjects: usize, prefix: &str) -> Vec<Embedding> {
    (0..n as u64)
        .map(|i| {
            emb(
                rng,
                first + i,
                &format!("{prefix}-{}", (first + i) % subjects as u64),
            )
        })
        .collect()
}

/// The expected content of a gallery: id → (subject, vector).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Model {
    /// Live embeddings.
    pub rows: BTreeMap<u64, (String, Vec<f32>)>,
}

impl Model {
    /// Apply an acknowledged insert (upsert).
    pub fn insert(&mut self, batch: &[Embedding]) {
        for e in batch {
            self.rows
                .insert(e.id, (e.subject.clone(), e.vector.clone()));
        }
    }

    /// Apply an acknowledged delete; returns how many rows it removed.
    pub fn delete(&mut self, ids: &[u64], subjects: &[String]) -> u64 {
        let before = self.rows.len();
        for id in ids {
            self.rows.remove(id);
        }
        self.rows.retain(|_, (s, _)| !subjects.contains(s));
        (before - self.rows.len()) as u64
    }

    /// Distinct subjects.
    pub fn subjects(&self) -> usize {
        self.rows
            .values()
            .map(|(s, _)| s.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    }

    /// Brute-force top-k: (id, subject, distance) ascending by (distance, id).
    pub fn search(&self, q: &[f32], k: usize) -> Vec<(u64, String, f64)> {
        let mut all: Vec<(u64, String, f64)> = self
            .rows
            .iter()
            .map(|(id, (s, v))| (*id, s.clone(), l2sq_f64(q, v)))
            .collect();
        all.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    /// Brute-force identification: the k best subjects by their best embedding.
    pub fn identify(&self, q: &[f32], k: usize) -> Vec<(u64, String, f64)> {
        let mut best: BTreeMap<&str, (u64, f64)> = BTreeMap::new();
        for (id, (s, v)) in &self.rows {
            let d = l2sq_f64(q, v);
            let e = best.entry(s.as_str()).or_insert((*id, d));
            if d < e.1 || (d == e.1 && *id < e.0) {
                *e = (*id, d);
            }
        }
        let mut all: Vec<(u64, String, f64)> = best
            .into_iter()
            .map(|(s, (id, d))| (id, s.to_owned(), d))
            .collect();
        all.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }
}

/// Assert served hits equal the brute-force reference (ids and subjects
/// exactly, distances to f32 precision).
pub fn assert_hits(got: &[proto::Hit], want: &[(u64, String, f64)], ctx: &str) {
    let got_ids: Vec<u64> = got.iter().map(|h| h.id).collect();
    let want_ids: Vec<u64> = want.iter().map(|w| w.0).collect();
    assert_eq!(got_ids, want_ids, "{ctx}: ids");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.subject, w.1, "{ctx}: subject of {}", g.id);
        assert_close(g.distance, w.2, ctx);
    }
}

/// A served f32 distance against an f64 reference.
pub fn assert_close(got: f32, want: f64, ctx: &str) {
    let tol = 1e-4 * want.abs().max(1.0);
    assert!(
        (f64::from(got) - want).abs() <= tol,
        "{ctx}: distance {got} vs reference {want}"
    );
}

/// Assert a status code and that the message holds every fragment.
pub fn assert_status<T: std::fmt::Debug>(
    r: Result<T, visage_client::Error>,
    code: tonic::Code,
    fragments: &[&str],
) -> visage_client::Error {
    let e = r.expect_err("expected an error status");
    assert_eq!(e.code(), Some(code), "wrong code for: {e}");
    let msg = e.message().unwrap_or_default().to_owned();
    for f in fragments {
        assert!(msg.contains(f), "message {msg:?} lacks {f:?}");
    }
    e
}

/// Live and deleted counts of a gallery.
pub async fn counts(client: &Client, gallery: &str) -> (u64, u64, u64) {
    let i = client.gallery(gallery).stats().await.expect("stats");
    (i.live, i.deleted, i.subjects)
}

/// The head's logit for a pair, in f64 from the published weights:
/// `sum_k w_k |a_k - b_k| + w_d ||a - b||^2 + bias` (the reference for
/// what the server scores).
pub fn head_logit(h: &proto::HeadInfo, a: &[f32], b: &[f32]) -> f64 {
    let weighted: f64 = h
        .weights
        .iter()
        .zip(a.iter().zip(b))
        .map(|(w, (x, y))| f64::from(*w) * (f64::from(*x) - f64::from(*y)).abs())
        .sum();
    weighted + f64::from(h.distance_weight) * l2sq_f64(a, b) + f64::from(h.bias)
}

/// The probability a head reports for logit `z`, as the proto documents it:
/// `sigmoid(platt_a * z + platt_b + ln(prior / (1 - prior)))` when
/// calibrated, else `sigmoid(z)`.
pub fn calibrated_probability(h: &proto::HeadInfo, z: f64) -> f64 {
    let x = if h.probability_calibrated {
        h.platt_a * z + h.platt_b + (h.prior / (1.0 - h.prior)).ln()
    } else {
        z
    };
    1.0 / (1.0 + (-x).exp())
}

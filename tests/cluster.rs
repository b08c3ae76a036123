//! Real 3-member NATS JetStream and etcd clusters on loopback, for the
//! cluster-mode tests: free ports picked per start, a unique cluster name or
//! token per start, members killed with SIGKILL and restarted on the same
//! ports and data, and every process killed when the cluster is dropped (also
//! when a test panics).
//!
//! The binaries come from the Debian packages `nats-server` and
//! `etcd-server`, started with the flags their documentation gives for a
//! cluster on one host (members routed to each other on loopback). Tests call
//! [`require_cluster_tools`] first: without the binaries they skip, unless
//! `VISAGE_REQUIRE_CLUSTER=1` (CI), where they fail.
//!
//! Every wait is a condition polled until a deadline ([`READY_TIMEOUT`]);
//! a miss panics with the members' logs.

use serde_json::Value;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a start or a restart may take before the harness gives up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times a start is retried with new ports when a member finds its
/// port taken (another process bound it between picking and spawning).
const START_ATTEMPTS: usize = 5;

/// Between two checks of a condition.
const POLL: Duration = Duration::from_millis(50);

/// How much of each member's log a panic message shows (its end).
const LOG_TAIL: usize = 6000;

/// True if `nats-server` and `etcd` are on PATH. Otherwise panics when
/// `VISAGE_REQUIRE_CLUSTER=1` (CI), else prints a `SKIP` line straight to
/// stderr (past the test harness's capture) and returns false.
pub fn require_cluster_tools(test: &str) -> bool {
    let missing: Vec<&str> = ["nats-server", "etcd"]
        .into_iter()
        .filter(|tool| !on_path(tool))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let missing = missing.join(" and ");
    if std::env::var("VISAGE_REQUIRE_CLUSTER").as_deref() == Ok("1") {
        panic!(
            "{missing} not on PATH and VISAGE_REQUIRE_CLUSTER=1: install the Debian packages \
             `nats-server etcd-server` (apt-get install nats-server etcd-server)"
        );
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: {missing} not on PATH (install the Debian packages `nats-server etcd-server`)"
    );
    false
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// A name no other start of this or another test process uses.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `n` distinct free loopback ports: all bound at once (so no two are the
/// same), read, then released. Another process may still take one before the
/// member binds it; the starts detect that and retry.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// One HTTP/1.0 exchange (no chunked bodies, the server closes): `(status,
/// body)`, or None if the server cannot be reached or answers garbage.
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let sock: SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// An HTTP exchange whose 200 body parses as JSON.
fn http_json(addr: &str, method: &str, path: &str, body: &str) -> Option<Value> {
    match http(addr, method, path, body)? {
        (200, b) => serde_json::from_str(&b).ok(),
        _ => None,
    }
}

/// The last `n` bytes of `s` (at a character boundary).
fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

// ---------------------------------------------------------------------------
// One member process

/// A member's command line, its log files, and its process while running.
struct Member {
    name: String,
    program: String,
    args: Vec<String>,
    /// stdout and stderr, appended to across restarts.
    output: PathBuf,
    /// The server's own log file, if it writes one (nats-server `-l`).
    log_file: Option<PathBuf>,
    child: Mutex<Option<Child>>,
}

impl Member {
    fn spawn(&self) {
        let mut child = self.child.lock().expect("member lock");
        assert!(child.is_none(), "{} is already running", self.name);
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.output)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.output.display()));
        let err = out.try_clone().expect("clone log file handle");
        let spawned = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} for {}: {e}", self.program, self.name));
        *child = Some(spawned);
    }

    /// SIGKILL and wait for the exit; nothing if not running.
    fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Running: spawned, not killed, and not exited on its own.
    fn is_running(&self) -> bool {
        let mut child = self.child.lock().expect("member lock");
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                // Exited (or unknowable): reap it and forget it.
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                false
            }
            None => false,
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .expect("member lock")
            .as_ref()
            .map(Child::id)
    }

    /// The server's log file (if any) and then its stdout/stderr.
    fn log(&self) -> String {
        let mut s = String::new();
        if let Some(f) = &self.log_file {
            s.push_str(&std::fs::read_to_string(f).unwrap_or_default());
        }
        let out = std::fs::read_to_string(&self.output).unwrap_or_default();
        if !out.is_empty() {
            s.push_str("\n--- stdout/stderr ---\n");
            s.push_str(&out);
        }
        s
    }

    /// Moves the log files aside (after a failed start attempt), keeping
    /// them for a later panic message but out of the next attempt's way.
    fn retire_logs(&self, attempt: usize) {
        for f in std::iter::once(&self.output).chain(self.log_file.as_ref()) {
            let mut to = f.clone().into_os_string();
            to.push(format!(".attempt{attempt}"));
            let _ = std::fs::rename(f, to);
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

fn all_logs(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| {
            let log = m.log();
            format!(
                "\n===== {} (log end) =====\n{}",
                m.name,
                tail(&log, LOG_TAIL)
            )
        })
        .collect()
}

/// How a start attempt ended, when it did not become ready.
enum Attempt {
    /// A member could not bind one of its ports: retry with new ones.
    PortTaken(String),
}

/// Polls `ready` until it holds; a member that exits meanwhile ends the wait
/// (with [`Attempt::PortTaken`] if its log says its address was in use, else
/// a panic), and so does the deadline.
fn wait_ready(
    what: &str,
    members: &[Member],
    watched: &[usize],
    mut ready: impl FnMut() -> bool,
) -> Result<(), Attempt> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        for &i in watched {
            if !members[i].is_running() {
                let log = members[i].log();
                if log.contains("address already in use") {
                    return Err(Attempt::PortTaken(format!(
                        "{} could not bind a port",
                        members[i].name
                    )));
                }
                panic!(
                    "{what}: {} exited while starting; logs:{}",
                    members[i].name,
                    all_logs(members)
                );
            }
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: not ready within {READY_TIMEOUT:?}; logs:{}",
                all_logs(members)
            );
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------
// NATS JetStream

/// Options of a NATS cluster start.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// A client token (`--auth`): clients must present it. The monitor port
    /// (used for readiness) needs none, and neither do the routes.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct NatsPorts {
    client: u16,
    route: u16,
    monitor: u16,
}

/// A NATS cluster with JetStream: members `n1..nN` (index `i` is `n{i+1}`),
/// each with its store in `DIR/nI` and its log in `DIR/nI.log`.
pub struct NatsCluster {
    dir: PathBuf,
    name: String,
    ports: Vec<NatsPorts>,
    members: Vec<Member>,
}

impl NatsCluster {
    /// Start `members` members in `dir` and wait until each sees a
    /// JetStream meta leader.
    pub fn start(dir: &Path, members: usize) -> NatsCluster {
        NatsCluster::start_with(dir, members, NatsOptions::default())
    }

    /// [`NatsCluster::start`] with options.
    pub fn start_with(dir: &Path, members: usize, opts: NatsOptions) -> NatsCluster {
        NatsCluster::start_picking(dir, members, &opts, free_ports)
    }

    /// The start, with `pick(n)` choosing the `n` ports of each attempt.
    fn start_picking(
        dir: &Path,
        members: usize,
        opts: &NatsOptions,
        mut pick: impl FnMut(usize) -> Vec<u16>,
    ) -> NatsCluster {
        assert!(members > 0, "a cluster needs members");
        std::fs::create_dir_all(dir).expect("create cluster dir");
        let mut last = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let cluster = NatsCluster::spawn_all(dir, members, opts, pick(3 * members));
            let all: Vec<usize> = (0..members).collect();
            match wait_ready("NATS cluster start", &cluster.members, &all, || {
                all.iter().all(|&i| cluster.meta_leader(i).is_some())
            }) {
                Ok(()) => return cluster,
                Err(Attempt::PortTaken(why)) => {
                    last = why;
                    for m in &cluster.members {
                        m.kill();
                        m.retire_logs(attempt);
                    }
                    for i in 0..members {
                        let _ = std::fs::remove_dir_all(cluster.store_dir(i));
                    }
                }
            }
        }
        panic!("NATS cluster did not start in {START_ATTEMPTS} attempts: {last}");
    }

    fn spawn_all(dir: &Path, n: usize, opts: &NatsOptions, ports: Vec<u16>) -> NatsCluster {
        let name = unique("visage");
        let ports: Vec<NatsPorts> = ports
            .chunks(3)
            .map(|p| NatsPorts {
                client: p[0],
                route: p[1],
                monitor: p[2],
            })
            .collect();
        let members = (0..n)
            .map(|i| {
                let id = format!("n{}", i + 1);
                let routes: Vec<String> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| format!("nats://127.0.0.1:{}", ports[j].route))
                    .collect();
                let log_file = dir.join(format!("{id}.log"));
                let mut args = vec![
                    "-n".to_owned(),
                    id.clone(),
                    "-a".to_owned(),
                    "127.0.0.1".to_owned(),
                    "-p".to_owned(),
                    ports[i].client.to_string(),
                    "-m".to_owned(),
                    ports[i].monitor.to_string(),
                    "-js".to_owned(),
                    "-sd".to_owned(),
                    dir.join(&id).display().to_string(),
                    "--cluster_name".to_owned(),
                    name.clone(),
                    "--cluster".to_owned(),
                    format!("nats://127.0.0.1:{}", ports[i].route),
                    "-l".to_owned(),
                    log_file.display().to_string(),
                ];
                if !routes.is_empty() {
                    args.push("--routes".to_owned());
                    args.push(routes.join(","));
                }
                if let Some(token) = &opts.token {
                    args.push("--auth".to_owned());
                    args.push(token.clone());
                }
                Member {
                    output: dir.join(format!("{id}.out")),
                    log_file: Some(log_file),
                    name: id,
                    program: "nats-server".into(),
                    args,
                    child: Mutex::new(None),
                }
            })
            .collect();
        let cluster = NatsCluster {
            dir: dir.to_owned(),
            name,
            ports,
            members,
        };
        for m in &cluster.members {
            m.spawn();
        }
        cluster
    }

    /// The cluster name (unique per start).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Each member's client URL, `nats://127.0.0.1:PORT`.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{}", p.client))
            .collect()
    }

    /// The client URLs, comma-joined (what `async_nats::connect` takes).
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// Member `i`'s monitor address, `127.0.0.1:PORT`.
    pub fn monitor_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i].monitor)
    }

    /// Member `i`'s JetStream store directory (`DIR/nI`).
    pub fn store_dir(&self, i: usize) -> PathBuf {
        self.dir.join(&self.members[i].name)
    }

    /// GET `path` (e.g. `/jsz?streams=true`) on member `i`'s monitor port,
    /// parsed; None if it does not answer 200 with JSON.
    pub fn monitor_json(&self, i: usize, path: &str) -> Option<Value> {
        http_json(&self.monitor_addr(i), "GET", path, "")
    }

    /// The JetStream meta leader's name as member `i` sees it.
    fn meta_leader(&self, i: usize) -> Option<String> {
        let jsz = self.monitor_json(i, "/jsz")?;
        let leader = jsz.pointer("/meta_cluster/leader")?.as_str()?;
        (!leader.is_empty()).then(|| leader.to_owned())
    }

    /// Member `i`'s view of `stream` (its entry in `/jsz`'s
    /// `account_details[].stream_detail[]`), if it hosts a replica.
    pub fn stream_detail(&self, i: usize, stream: &str) -> Option<Value> {
        let jsz = self.monitor_json(i, "/jsz?accounts=true&streams=true")?;
        jsz.get("account_details")?
            .as_array()?
            .iter()
            .filter_map(|a| a.get("stream_detail")?.as_array())
            .flatten()
            .find(|s| s.get("name").and_then(Value::as_str) == Some(stream))
            .cloned()
    }

    /// The running member that leads `stream` by its own account (its
    /// `/jsz` names itself as the stream's leader), if any.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        (0..self.len()).find(|&i| {
            self.is_running(i)
                && self
                    .stream_detail(i, stream)
                    .and_then(|s| {
                        s.pointer("/cluster/leader")
                            .and_then(Value::as_str)
                            .map(|l| l == self.members[i].name)
                    })
                    .unwrap_or(false)
        })
    }

    /// Whether member `i`'s process is running.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].is_running()
    }

    /// Member `i`'s process id, if it was spawned and not killed.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].pid()
    }

    /// SIGKILL member `i` and wait for it to exit.
    pub fn kill(&self, i: usize) {
        self.members[i].kill();
    }

    /// Start member `i` again (after [`NatsCluster::kill`]) with the same
    /// command line, ports and store, and wait until it sees a meta leader.
    pub fn restart(&self, i: usize) {
        assert!(!self.is_running(i), "restart of running member {i}");
        self.members[i].spawn();
        let what = format!("NATS member n{} restart", i + 1);
        if let Err(Attempt::PortTaken(why)) =
            wait_ready(&what, &self.members, &[i], || self.meta_leader(i).is_some())
        {
            panic!("{what}: {why}; logs:{}", all_logs(&self.members));
        }
    }

    /// Member `i`'s log so far (all its runs).
    pub fn log(&self, i: usize) -> String {
        self.members[i].log()
    }

    /// The end of every member's log, for panic messages.
    pub fn logs(&self) -> String {
        all_logs(&self.members)
    }
}

// ---------------------------------------------------------------------------
// etcd

#[derive(Debug, Clone, Copy)]
struct EtcdPorts {
    client: u16,
    peer: u16,
}

/// An etcd cluster: members `e1..eN` (index `i` is `e{i+1}`), each with its
/// data in `DIR/eI` and its (zap) log in `DIR/eI.log`.
pub struct EtcdCluster {
    dir: PathBuf,
    token: String,
    ports: Vec<EtcdPorts>,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Start `members` members in `dir` and wait until each answers
    /// `/health` with `"health":"true"`.
    pub fn start(dir: &Path, members: usize) -> EtcdCluster {
        EtcdCluster::start_picking(dir, members, free_ports)
    }

    /// The start, with `pick(n)` choosing the `n` ports of each attempt.
    fn start_picking(
        dir: &Path,
        members: usize,
        mut pick: impl FnMut(usize) -> Vec<u16>,
    ) -> EtcdCluster {
        assert!(members > 0, "a cluster needs members");
        std::fs::create_dir_all(dir).expect("create cluster dir");
        let mut last = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let cluster = EtcdCluster::spawn_all(dir, members, pick(2 * members));
            let all: Vec<usize> = (0..members).collect();
            match wait_ready("etcd cluster start", &cluster.members, &all, || {
                all.iter().all(|&i| cluster.healthy(i))
            }) {
                Ok(()) => return cluster,
                Err(Attempt::PortTaken(why)) => {
                    last = why;
                    for m in &cluster.members {
                        m.kill();
                        m.retire_logs(attempt);
                    }
                    for i in 0..members {
                        let _ = std::fs::remove_dir_all(cluster.data_dir(i));
                    }
                }
            }
        }
        panic!("etcd cluster did not start in {START_ATTEMPTS} attempts: {last}");
    }

    fn spawn_all(dir: &Path, n: usize, ports: Vec<u16>) -> EtcdCluster {
        // Unique per start: a member of an earlier cluster on a reused peer
        // port must never be taken for one of this cluster.
        let token = unique("visage-etcd");
        let ports: Vec<EtcdPorts> = ports
            .chunks(2)
            .map(|p| EtcdPorts {
                client: p[0],
                peer: p[1],
            })
            .collect();
        let initial: Vec<String> = (0..n)
            .map(|i| format!("e{}=http://127.0.0.1:{}", i + 1, ports[i].peer))
            .collect();
        let initial = initial.join(",");
        let members = (0..n)
            .map(|i| {
                let id = format!("e{}", i + 1);
                let client = format!("http://127.0.0.1:{}", ports[i].client);
                let peer = format!("http://127.0.0.1:{}", ports[i].peer);
                let args = vec![
                    "--name".to_owned(),
                    id.clone(),
                    "--data-dir".to_owned(),
                    dir.join(&id).display().to_string(),
                    "--listen-client-urls".to_owned(),
                    client.clone(),
                    "--advertise-client-urls".to_owned(),
                    client,
                    "--listen-peer-urls".to_owned(),
                    peer.clone(),
                    "--initial-advertise-peer-urls".to_owned(),
                    peer,
                    "--initial-cluster".to_owned(),
                    initial.clone(),
                    "--initial-cluster-token".to_owned(),
                    token.clone(),
                    // Ignored once the data dir exists (restarts).
                    "--initial-cluster-state".to_owned(),
                    "new".to_owned(),
                    "--logger".to_owned(),
                    "zap".to_owned(),
                    "--log-outputs".to_owned(),
                    "stderr".to_owned(),
                ];
                Member {
                    output: dir.join(format!("{id}.log")),
                    log_file: None,
                    name: id,
                    program: "etcd".into(),
                    args,
                    child: Mutex::new(None),
                }
            })
            .collect();
        let cluster = EtcdCluster {
            dir: dir.to_owned(),
            token,
            ports,
            members,
        };
        for m in &cluster.members {
            m.spawn();
        }
        cluster
    }

    /// The `--initial-cluster-token` (unique per start).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Each member's client URL, `http://127.0.0.1:PORT`.
    pub fn endpoints(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{}", p.client))
            .collect()
    }

    /// Member `i`'s client address, `127.0.0.1:PORT`.
    pub fn client_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i].client)
    }

    /// Member `i`'s data directory (`DIR/eI`).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(&self.members[i].name)
    }

    /// Member `i` answers `/health` with `"health":"true"`.
    pub fn healthy(&self, i: usize) -> bool {
        http_json(&self.client_addr(i), "GET", "/health", "")
            .is_some_and(|h| h.get("health").and_then(Value::as_str) == Some("true"))
    }

    /// Member `i`'s `/v3/maintenance/status` (grpc-gateway, JSON; needs no
    /// credentials even with auth enabled).
    pub fn status(&self, i: usize) -> Option<Value> {
        http_json(&self.client_addr(i), "POST", "/v3/maintenance/status", "{}")
    }

    /// The running member that is the raft leader by its own account (its
    /// status names its own member id as the leader), if any.
    pub fn leader(&self) -> Option<usize> {
        (0..self.len()).find(|&i| {
            self.is_running(i)
                && self.status(i).is_some_and(|s| {
                    let me = s.pointer("/header/member_id").and_then(Value::as_str);
                    let leader = s.get("leader").and_then(Value::as_str);
                    me.is_some() && me == leader
                })
        })
    }

    /// Create the user `root` with `root_password`, grant it the root role
    /// and enable authentication (through the grpc-gateway of a running
    /// member). Afterwards clients need `root`'s credentials; `/health` and
    /// the status keep working without.
    pub fn enable_auth(&self, root_password: &str) {
        let i = (0..self.len())
            .find(|&i| self.is_running(i))
            .expect("a running member");
        let addr = self.client_addr(i);
        let user = serde_json::json!({ "name": "root", "password": root_password }).to_string();
        let calls = [
            ("/v3/auth/user/add", user),
            (
                "/v3/auth/user/grant",
                r#"{"user":"root","role":"root"}"#.to_owned(),
            ),
            ("/v3/auth/enable", "{}".to_owned()),
        ];
        for (path, body) in calls {
            match http(&addr, "POST", path, &body) {
                Some((200, _)) => {}
                other => panic!("etcd {path} on {addr}: {other:?}"),
            }
        }
    }

    /// Whether member `i`'s process is running.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].is_running()
    }

    /// Member `i`'s process id, if it was spawned and not killed.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].pid()
    }

    /// SIGKILL member `i` and wait for it to exit.
    pub fn kill(&self, i: usize) {
        self.members[i].kill();
    }

    /// Start member `i` again (after [`EtcdCluster::kill`]) with the same
    /// command line and data dir, and wait until it is healthy.
    pub fn restart(&self, i: usize) {
        assert!(!self.is_running(i), "restart of running member {i}");
        self.members[i].spawn();
        let what = format!("etcd member e{} restart", i + 1);
        if let Err(Attempt::PortTaken(why)) =
            wait_ready(&what, &self.members, &[i], || self.healthy(i))
        {
            panic!("{what}: {why}; logs:{}", all_logs(&self.members));
        }
    }

    /// Member `i`'s log so far (all its runs).
    pub fn log(&self, i: usize) -> String {
        self.members[i].log()
    }

    /// The end of every member's log, for panic messages.
    pub fn logs(&self) -> String {
        all_logs(&self.members)
    }
}

// ---------------------------------------------------------------------------
// visage nodes

/// The `visage-server` binary built beside the test executable
/// (`target/<profile>/deps/cluster-HASH` → `target/<profile>/visage-server`),
/// which must have cluster mode (`--features cluster`; `cargo test
/// --workspace` builds it so).
pub fn visage_server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory")
        .join("visage-server");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build -p visage-server --features cluster`)",
        path.display()
    );
    path
}

/// One visage node in cluster mode: its own data directory, a fixed port
/// (so a restart keeps the address the others know), its output in
/// `DIR/ID.log`; killed with SIGKILL when dropped.
pub struct VisageNode {
    /// The node's id.
    pub id: String,
    /// `127.0.0.1:PORT`, its gRPC address.
    pub addr: String,
    member: Member,
}

impl VisageNode {
    /// Start node `id` with its data in `DIR/ID`, joined to `nats` (URLs,
    /// comma-separated) and `etcd` (endpoints, comma-separated), with extra
    /// flags; returns once it prints its address (it joins the cluster
    /// right after: wait for it with a call).
    pub fn start(dir: &Path, id: &str, nats: &str, etcd: &str, extra: &[String]) -> VisageNode {
        for attempt in 0..START_ATTEMPTS {
            let port = free_ports(1)[0];
            let addr = format!("127.0.0.1:{port}");
            let mut args: Vec<String> = vec![
                "--data-dir".into(),
                dir.join(id).display().to_string(),
                "--listen".into(),
                addr.clone(),
                "--backup-root".into(),
                dir.join(format!("{id}-backups")).display().to_string(),
                "--nats".into(),
                nats.into(),
                "--etcd".into(),
                etcd.into(),
                "--node-id".into(),
                id.into(),
            ];
            args.extend(extra.iter().cloned());
            let member = Member {
                name: id.to_owned(),
                program: visage_server_binary().display().to_string(),
                args,
                output: dir.join(format!("{id}.log")),
                log_file: None,
                child: Mutex::new(None),
            };
            member.spawn();
            let node = VisageNode {
                id: id.to_owned(),
                addr,
                member,
            };
            match node.wait_listening() {
                Ok(()) => return node,
                Err(Attempt::PortTaken(_)) => node.member.retire_logs(attempt),
            }
        }
        panic!("node {id}: no free port after {START_ATTEMPTS} attempts");
    }

    fn wait_listening(&self) -> Result<(), Attempt> {
        let members = std::slice::from_ref(&self.member);
        wait_ready(&format!("node {}", self.id), members, &[0], || {
            std::fs::read_to_string(&self.member.output)
                .is_ok_and(|l| l.contains("visage-server listening on"))
        })
    }

    /// SIGKILL, and wait for the exit.
    pub fn kill(&self) {
        self.member.kill();
    }

    /// Start again on the same port and data directory.
    pub fn restart(&self) {
        assert!(!self.member.is_running(), "node {} is running", self.id);
        // The old output says "listening" already: wait for a new line.
        let before = std::fs::read_to_string(&self.member.output)
            .map(|l| l.matches("visage-server listening on").count())
            .unwrap_or(0);
        self.member.spawn();
        let members = std::slice::from_ref(&self.member);
        let ready = wait_ready(&format!("node {} restart", self.id), members, &[0], || {
            std::fs::read_to_string(&self.member.output)
                .is_ok_and(|l| l.matches("visage-server listening on").count() > before)
        });
        if ready.is_err() {
            panic!(
                "node {} could not bind its port again; log:\n{}",
                self.id,
                self.log()
            );
        }
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.member.is_running()
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        self.member.log()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A picker whose first attempt hands out, at `slot`, a port held by
    /// `held`; later attempts get free ports.
    fn one_taken(held: &TcpListener, slot: usize) -> impl FnMut(usize) -> Vec<u16> + use<> {
        let taken = held.local_addr().expect("addr").port();
        let mut first = true;
        move |n| {
            let mut ports = free_ports(n);
            if std::mem::take(&mut first) {
                ports[slot] = taken;
            }
            ports
        }
    }

    fn first_attempt_log(dir: &Path, file: &str) -> String {
        std::fs::read_to_string(dir.join(format!("{file}.attempt1"))).unwrap_or_default()
    }

    /// A member whose port was taken after picking exits; the start notices
    /// and succeeds with new ports.
    #[test]
    fn nats_start_retries_a_taken_port() {
        if !require_cluster_tools("nats_start_retries_a_taken_port") {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let held = TcpListener::bind("127.0.0.1:0").expect("bind");
        // Member n2's route port.
        let pick = one_taken(&held, 4);
        let c = NatsCluster::start_picking(dir.path(), 3, &NatsOptions::default(), pick);
        assert!(
            first_attempt_log(dir.path(), "n2.log").contains("address already in use"),
            "first attempt's n2 log:\n{}",
            first_attempt_log(dir.path(), "n2.log")
        );
        assert!((0..3).all(|i| c.is_running(i) && c.meta_leader(i).is_some()));
        drop(c);
    }

    #[test]
    fn etcd_start_retries_a_taken_port() {
        if !require_cluster_tools("etcd_start_retries_a_taken_port") {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let held = TcpListener::bind("127.0.0.1:0").expect("bind");
        // Member e3's client port.
        let pick = one_taken(&held, 4);
        let c = EtcdCluster::start_picking(dir.path(), 3, pick);
        assert!(
            first_attempt_log(dir.path(), "e3.log").contains("address already in use"),
            "first attempt's e3 log:\n{}",
            first_attempt_log(dir.path(), "e3.log")
        );
        assert!((0..3).all(|i| c.healthy(i)));
        assert!(!c.endpoints().contains(&format!(
            "http://127.0.0.1:{}",
            held.local_addr().expect("addr").port()
        )));
    }
}

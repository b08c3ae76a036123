//! A release `visage-server` on a free port with its own data directory, for
//! the benchmarks that go through gRPC (`grpc_bench`, `soak`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server; stopped with SIGTERM when dropped (killed if it hangs).
pub struct ServerProc {
    child: Option<Child>,
    addr: String,
    _dir: tempfile::TempDir,
}

impl ServerProc {
    /// `given`, or `visage-server` next to this executable; panics with the
    /// build command when it is missing.
    pub fn binary(given: Option<PathBuf>) -> PathBuf {
        let bin = given.unwrap_or_else(|| {
            std::env::current_exe()
                .expect("current exe")
                .with_file_name("visage-server")
        });
        assert!(
            bin.exists(),
            "{} missing: cargo build --release -p visage-server",
            bin.display()
        );
        bin
    }

    /// Start `bin` on a fresh temporary data directory.
    pub fn start(bin: &Path) -> ServerProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(bin)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("server address line");
        let addr = line
            .trim()
            .strip_prefix("visage-server listening on ")
            .unwrap_or_else(|| panic!("unexpected server output {line:?}"))
            .to_owned();
        ServerProc {
            child: Some(child),
            addr,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Resident memory in bytes, from `/proc/PID/status`.
    pub fn rss(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kb: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM and wait (killed after two minutes); true if it exited 0.
    pub fn stop(mut self) -> bool {
        self.terminate()
    }

    fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return st.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.terminate();
    }
}

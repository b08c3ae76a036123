//! The `visage` binary's command line. (Having an integration test also makes
//! `cargo test` build the binary that the workspace tests start.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_visage");

#[test]
fn help_lists_the_subcommands() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "gallery",
        "insert",
        "search",
        "identify",
        "verify",
        "get",
        "delete",
        "compact",
        "flush",
        "train-head",
        "head-info",
        "head",
        "health",
        "cluster",
        "synth",
        "demo",
        "--server",
        "--json",
    ] {
        assert!(text.contains(cmd), "--help lacks {cmd}:\n{text}");
    }
}

#[test]
fn usage_errors_exit_2_and_unreachable_servers_exit_1() {
    let out = Command::new(BIN).args(["search", "g"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing --probes is a usage error"
    );
    let out = Command::new(BIN)
        .args(["--server", "http://127.0.0.1:1", "gallery", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: cannot connect to http://127.0.0.1:1"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1);
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["synth", "--subjects", "3000", "--probes", "0", "--out"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end long before the tool prints (generating 30,000 embeddings first).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.status.code() == Some(141) || out.status.signal().is_some(),
        "{:?}",
        out.status
    );
}

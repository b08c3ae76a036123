//! The `visage-server` binary's command line. (Having an integration test also
//! makes `cargo test` build the binary that the workspace tests start.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_visage-server");

#[test]
fn help_lists_the_flags_and_their_environment_variables() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--data-dir",
        "VISAGE_DATA_DIR",
        "./visage-data",
        "--listen",
        "VISAGE_LISTEN",
        "127.0.0.1:50051",
        "--durability",
        "--max-message-bytes",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

#[test]
fn unknown_flags_and_bad_addresses_fail() {
    let out = Command::new(BIN).arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let dir = std::env::temp_dir().join(format!("visage-bad-listen-{}", std::process::id()));
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot listen on not-an-address"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! `--config FILE` (TOML) under the flags and the environment, and
//! `--log-format json`, on the real server binary.

use crate::harness::{Server, TempData, binary};
use std::process::Command;

fn server(
    config: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
    log_dir: &std::path::Path,
) -> Server {
    let mut cmd = Command::new(binary("visage-server"));
    cmd.arg("--config").arg(config).args(extra);
    // The test's own environment must not leak settings in.
    for var in [
        "VISAGE_DATA_DIR",
        "VISAGE_LISTEN",
        "VISAGE_LOG_FORMAT",
        "VISAGE_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Server::spawn(cmd, log_dir)
}

#[test]
fn settings_come_from_flags_then_environment_then_the_file() {
    let t = TempData::new();
    let root = t.dir.path();
    let cfg = root.join("visage.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nlog-format = \"json\"\nidle_timeout = 300\n",
            root.join("from-file").display().to_string()
        ),
    )
    .unwrap();

    // The file alone: its data directory, JSON log lines.
    let s = server(&cfg, &[], &[], root);
    assert!(
        root.join("from-file").is_dir(),
        "the file's data_dir was not used"
    );
    assert!(s.terminate().success());
    let logs: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension().is_some_and(|x| x == "log")).then(|| std::fs::read_to_string(p).unwrap())
        })
        .collect();
    let text = logs.concat();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }

    // A flag wins over the file; so does the environment.
    let flag_dir = root.join("from-flag");
    let s = server(&cfg, &["--data-dir", flag_dir.to_str().unwrap()], &[], root);
    assert!(flag_dir.is_dir());
    assert!(s.terminate().success());
    let env_dir = root.join("from-env");
    let s = server(
        &cfg,
        &[],
        &[("VISAGE_DATA_DIR", env_dir.to_str().unwrap())],
        root,
    );
    assert!(env_dir.is_dir());
    assert!(s.terminate().success());

    // An unknown key, or a value of the wrong kind, stops the server and
    // says which.
    for (body, says) in [
        ("data_dri = \"x\"\n", "unknown setting \"data_dri\""),
        (
            "listen = [1, 2]\n",
            "listen must be a string, a number or a boolean",
        ),
        ("idle_timeout = 0\n", "idle-timeout"),
        ("listen = \n", "--config"),
    ] {
        std::fs::write(&cfg, body).unwrap();
        let out = Command::new(binary("visage-server"))
            .arg("--config")
            .arg(&cfg)
            .env_remove("VISAGE_CONFIG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{body}: {err}");
        assert!(err.contains(says), "{body}: {err}");
    }
}

/// The sample file in the repository is a valid configuration.
#[test]
fn the_sample_configuration_starts_a_server() {
    let t = TempData::new();
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../server/visage-server.sample.toml");
    let data = t.data();
    let s = server(
        &sample,
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
        t.dir.path(),
    );
    assert!(data.is_dir());
    assert!(s.terminate().success());
}

//! A full disk, for real: the server's data directory is on a small tmpfs
//! mounted in a private mount namespace (`unshare -m`, which needs root or
//! user namespaces). Where mounting is not permitted the test says so on
//! stderr and returns without checking anything (it cannot pass by accident:
//! every assertion below needs the mount).
//!
//! What it shows, against the model of acknowledged writes:
//! - compaction refuses up front, with RESOURCE_EXHAUSTED and a message
//!   naming free space, when the disk cannot hold its output;
//! - inserts on a full disk fail with RESOURCE_EXHAUSTED, whole;
//! - searches and gets keep working meanwhile;
//! - once space is freed, writes and compaction work again, without a restart;
//! - after `kill -9` and a restart every acknowledged write is there.

use crate::harness::{Model, Server, assert_status, batch, binary};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::Code;
use visage_client::Client;
use visage_tests::Rng;

/// A tmpfs of `size_mb` at a fresh directory, alive as long as a holder
/// process (`sleep`) in its private mount namespace. Other processes enter
/// the namespace with `nsenter`; this process reaches the files through
/// `/proc/HOLDER/root`.
struct Tmpfs {
    holder: Child,
    mount_point: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mb: u32) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point).map_err(|e| e.to_string())?;
        let mut holder = Command::new("unshare")
            .args(["-m", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o size={size_mb}m tmpfs \"$0\" && echo mounted && exec sleep 100000"
            ))
            .arg(&mount_point)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run unshare: {e}"))?;
        let mut line = String::new();
        let stdout = holder.stdout.take().ok_or("no stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .map_err(|e| e.to_string())?;
        if line.trim() != "mounted" {
            let out = holder.wait_with_output().map_err(|e| e.to_string())?;
            return Err(format!(
                "mount failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            holder,
            mount_point,
            _dir: dir,
        })
    }

    /// `path` (inside the mount) as this process can reach it.
    fn outside(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.holder.id())).join(rel)
    }

    /// Bytes free on the tmpfs.
    fn free(&self) -> u64 {
        let out = Command::new("nsenter")
            .args(["-t", &self.holder.id().to_string(), "-m", "--"])
            .args(["stat", "-f", "-c", "%a %S"])
            .arg(&self.mount_point)
            .output()
            .expect("stat -f");
        let s = String::from_utf8_lossy(&out.stdout);
        let v: Vec<u64> = s
            .split_whitespace()
            .map(|x| x.parse().expect("stat output"))
            .collect();
        v[0] * v[1]
    }

    /// Start the server inside the namespace on `data`.
    fn server(&self, data: &Path, log_dir: &Path) -> Server {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.holder.id().to_string(), "-m", "--"])
            .arg(binary("visage-server"))
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"]);
        Server::spawn(cmd, log_dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Every id of the model has exactly its bytes; `gone` ids are absent.
async fn assert_model(client: &Client, model: &Model, gone: &[u64], ctx: &str) {
    let g = client.gallery("g");
    let ids: Vec<u64> = model.rows.keys().copied().collect();
    for chunk in ids.chunks(20_000) {
        let got = g.get(chunk).await.expect("get");
        assert_eq!(got.len(), chunk.len(), "{ctx}: acknowledged rows missing");
        for e in got {
            let (subject, vector) = &model.rows[&e.id];
            assert_eq!(&e.subject, subject, "{ctx}: id {}", e.id);
            let same = e
                .vector
                .iter()
                .zip(vector)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{ctx}: id {} has other bytes", e.id);
        }
    }
    let back = g.get(gone).await.expect("get deleted");
    assert!(back.is_empty(), "{ctx}: deleted ids came back: {back:?}");
    assert_eq!(
        g.stats().await.expect("stats").live,
        model.rows.len() as u64,
        "{ctx}: live count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_cleanly_keeps_reads_and_recovers_when_space_is_freed() {
    let fs = match Tmpfs::mount(64) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED full-disk test: cannot mount a tmpfs here ({why})");
            return;
        }
    };
    let logs = tempfile::tempdir().expect("log dir");
    let data = fs.mount_point.join("data");
    let server = fs.server(&data, logs.path());
    let client = server.client().await;
    client.create_gallery("g").await.expect("create");
    let g = client.gallery("g");
    let mut rng = Rng(0xF011);
    let mut model = Model::default();

    // Two segments with deleted rows: work for compaction.
    for first in [0u64, 8_000] {
        for b in (first..first + 8_000).step_by(1_000) {
            let rows = batch(&mut rng, b, 1_000, 400, "p");
            g.insert(&rows).await.expect("insert");
            model.insert(&rows);
        }
        g.flush().await.expect("flush");
    }
    let gone: Vec<u64> = (0..16_000).step_by(80).collect();
    g.delete(&gone, &[]).await.expect("delete");
    model.delete(&gone, &[]);

    // Leave 3 MB: far less than the 10 MB the merged segment needs.
    let filler = fs.outside(&fs.mount_point.join("filler"));
    let fill = fs.free().saturating_sub(3 << 20);
    {
        let f = std::fs::File::create(&filler).expect("filler");
        // Real blocks, not a sparse file.
        std::io::Write::write_all(&mut &f, &vec![0xA5u8; fill as usize]).expect("fill");
    }
    let free_before = fs.free();
    assert!(free_before < 4 << 20, "filler left {free_before} bytes");
    let e = assert_status(
        g.compact().await,
        Code::ResourceExhausted,
        &[
            "not enough free disk space for compaction",
            "nothing was changed",
        ],
    );
    println!("compaction on a full disk: {e}");
    assert_eq!(fs.free(), free_before, "a refused compaction wrote files");

    // Insert until the disk is full.
    let mut next = 100_000u64;
    let mut refused = None;
    for _ in 0..200 {
        let rows = batch(&mut rng, next, 500, 300, "q");
        match g.insert(&rows).await {
            Ok(_) => {
                model.insert(&rows);
                next += 500;
            }
            Err(e) => {
                refused = Some((e, rows));
                break;
            }
        }
    }
    let (err, refused_rows) = refused.expect("64 MB never filled up");
    assert!(
        matches!(
            err.code(),
            Some(Code::ResourceExhausted | Code::Unavailable)
        ),
        "full disk gave {err}"
    );
    println!(
        "insert on a full disk after {} acknowledged rows: {err}",
        model.rows.len()
    );
    let refused_ids: Vec<u64> = refused_rows.iter().map(|e| e.id).collect();
    assert!(
        g.get(&refused_ids).await.expect("get").is_empty(),
        "a refused batch was partly applied"
    );
    // The failure does not latch: the next attempt is refused the same way.
    assert_status(
        g.insert(&refused_rows).await,
        err.code().unwrap_or(Code::Unknown),
        &[],
    );

    // Reads keep working on a full disk.
    let (probe_id, (_, probe)) = model.rows.iter().next_back().expect("rows");
    let hits = g
        .search(std::slice::from_ref(probe), 3)
        .await
        .expect("search");
    assert_eq!(hits[0][0].id, *probe_id);
    assert_eq!(hits[0][0].distance, 0.0);
    assert_model(&client, &model, &gone, "on a full disk").await;

    // Free space: writes resume without a restart, and compaction runs.
    std::fs::remove_file(&filler).expect("remove filler");
    let t0 = Instant::now();
    loop {
        match g.insert(&refused_rows).await {
            Ok(_) => break,
            Err(e) if t0.elapsed() < Duration::from_secs(10) => {
                println!("waiting for space to show: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("writes did not resume after space was freed: {e}"),
        }
    }
    model.insert(&refused_rows);
    let more = batch(&mut rng, next + 500, 500, 300, "q");
    g.insert(&more).await.expect("insert after freeing space");
    model.insert(&more);
    let r = g.compact().await.expect("compaction after freeing space");
    assert_eq!(r.after.deleted, 0, "compaction left deleted rows");
    assert_model(&client, &model, &gone, "after freeing space").await;

    // Nothing acknowledged is lost across kill -9 either.
    drop(client);
    drop(server); // SIGKILL
    let server = fs.server(&data, logs.path());
    let client = server.client().await;
    assert_model(&client, &model, &gone, "after kill -9 and restart").await;
    println!(
        "full disk: {} rows acknowledged and present after restart, {} deleted ids absent",
        model.rows.len(),
        gone.len()
    );
}

//! Backup and Restore on the real server: a backup taken while four writers
//! and a reader work holds exactly the writes acknowledged before its cut
//! (for each writer a prefix of its batches, none half-applied) bit for bit;
//! a server killed (SIGKILL) during a backup leaves a partial backup that
//! restore refuses, and the live gallery intact; a subject deleted after a
//! backup stays deleted after restoring it; the CLI commands; bad names.

use crate::cli::Cli;
use crate::harness::{Server, TempData, assert_status, batch};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tonic::Code;
use visage_client::{Client, Embedding};
use visage_tests::Rng;
use visage_tests::scan::{Windows, le_bytes, read_tree};

/// Every live row of a gallery: id → (subject, vector bits).
async fn contents(c: &Client, gallery: &str) -> BTreeMap<u64, (String, Vec<u32>)> {
    let rows = c.gallery(gallery).export(4096).await.unwrap();
    let dim = rows.dim as usize;
    let ids = rows.ids.clone().unwrap();
    ids.iter()
        .enumerate()
        .map(|(i, &id)| {
            let v = rows.vectors[i * dim..(i + 1) * dim]
                .iter()
                .map(|x| x.to_bits())
                .collect();
            (id, (rows.subjects[i].clone(), v))
        })
        .collect()
}

fn bits(e: &Embedding) -> (String, Vec<u32>) {
    (
        e.subject.clone(),
        e.vector.iter().map(|x| x.to_bits()).collect(),
    )
}

const BATCH: u64 = 25;

/// A server whose backups go to `backups/` beside its data, paced at 1 MiB/s.
fn start_paced(t: &TempData) -> (Server, std::path::PathBuf) {
    let root = t.data().parent().unwrap().join("backups");
    let root_s = root.to_str().unwrap().to_owned();
    let server = Server::start_with(&t.data(), &["--backup-root", &root_s, "--backup-rate", "1"]);
    (server, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_holds_exactly_the_writes_acknowledged_before_its_cut() {
    let t = TempData::new();
    // 1 MiB/s: the backup of about 2 MB takes seconds, writes go on meanwhile.
    let (server, _root) = start_paced(&t);
    let c = server.client().await;
    c.create_gallery("g").await.unwrap();
    let g = c.gallery("g");
    let mut rng = Rng(61);
    let base = batch(&mut rng, 10_000_000, 3000, 300, "base");
    g.insert(&base).await.unwrap();
    g.flush().await.unwrap();
    g.insert(&base[..500]).await.unwrap(); // upserts, in the WAL

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (g, stop) = (g.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(100 + w);
            // (batch, acknowledged before the backup call, its rows)
            let mut done: Vec<Vec<Embedding>> = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Acquire) {
                let rows = batch(
                    &mut rng,
                    w * 1_000_000 + i * BATCH,
                    BATCH as usize,
                    7,
                    &format!("w{w}"),
                );
                g.insert(&rows).await.unwrap();
                done.push(rows);
                i += 1;
            }
            done
        }));
    }
    let reader = {
        let (g, stop, q) = (g.clone(), stop.clone(), base[0].vector.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                let hits = g.search(std::slice::from_ref(&q), 3).await.unwrap();
                assert_eq!(
                    hits[0][0].id, 10_000_000,
                    "the reader finds the probe's own row"
                );
                n += 1;
            }
            n
        })
    };
    // Flushes and compactions meanwhile: the backup's segments are unlinked
    // from the gallery under it, and the WAL it copies is rotated.
    let maintainer = {
        let (g, stop) = (g.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                g.compact().await.unwrap();
                n += 1;
            }
            n
        })
    };
    // Let every writer get going, then count what each has acknowledged.
    let started = |c: &Client| {
        let g = c.gallery("g");
        async move { g.stats().await.unwrap().live }
    };
    while started(&c).await < 3000 + 4 * 4 * BATCH {
        tokio::task::yield_now().await;
    }
    let before = c.gallery("g").stats().await.unwrap().live - 3000;
    let rep = c.backup("g", "under-load").await.unwrap();
    let after = c.gallery("g").stats().await.unwrap().live - 3000;
    // Go on writing a little after the backup, then stop.
    while started(&c).await < 3000 + after + 4 * 2 * BATCH {
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Release);
    let mut written = Vec::new();
    for w in writers {
        written.push(w.await.unwrap());
    }
    assert!(reader.await.unwrap() > 0, "the reader ran");
    assert!(maintainer.await.unwrap() > 0, "compactions ran");
    assert!(rep.linked_files >= 1, "{rep:?}");

    let r = c.restore("under-load", "restored").await.unwrap();
    assert_eq!(r.source_gallery, "g");
    let got = contents(&c, "restored").await;
    // The base rows, bit for bit (the upserts rewrote the same values).
    for e in &base {
        assert_eq!(got.get(&e.id), Some(&bits(e)), "base row {}", e.id);
    }
    // Each writer's batches in the backup: a prefix, every row of each batch.
    let mut in_backup = 0u64;
    for (w, batches) in written.iter().enumerate() {
        let mut prefix = 0;
        for (i, rows) in batches.iter().enumerate() {
            let present = rows.iter().filter(|e| got.contains_key(&e.id)).count();
            assert!(
                present == 0 || present == rows.len(),
                "writer {w} batch {i}: {present} of {} rows in the backup (half-applied)",
                rows.len()
            );
            if present > 0 {
                assert_eq!(
                    prefix, i,
                    "writer {w}: batch {i} is in the backup but not batch {prefix}"
                );
                prefix += 1;
                for e in rows {
                    assert_eq!(got.get(&e.id), Some(&bits(e)), "writer {w} row {}", e.id);
                }
            }
        }
        in_backup += prefix as u64 * BATCH;
    }
    assert_eq!(
        got.len() as u64,
        3000 + in_backup,
        "nothing else in the backup"
    );
    assert_eq!(r.gallery.unwrap().live, got.len() as u64);
    assert_eq!(rep.rows, got.len() as u64, "the backup's count at its cut");
    eprintln!(
        "writers' rows: {before} acknowledged before the backup call, {in_backup} in it, \
         {after} after it returned; backup {} bytes",
        rep.bytes
    );
    // The cut lies between what was acknowledged before the call and after it.
    assert!(
        (before..=after).contains(&in_backup),
        "cut at {in_backup} rows of the writers, not within [{before}, {after}]"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_a_backup_leaves_it_refused_and_the_gallery_intact() {
    let t = TempData::new();
    let (server, root) = start_paced(&t);
    let root_s = root.to_str().unwrap().to_owned();
    let c = server.client().await;
    c.create_gallery("g").await.unwrap();
    let g = c.gallery("g");
    let mut rng = Rng(62);
    let rows = batch(&mut rng, 1, 6000, 500, "p");
    g.insert(&rows[..3000]).await.unwrap();
    g.flush().await.unwrap();
    g.insert(&rows[3000..]).await.unwrap();
    let want = contents(&c, "g").await;
    assert_eq!(want.len(), 6000);
    // Start a backup (about 4 MB at 1 MiB/s) and kill the server mid-copy.
    let backing = {
        let c = c.clone();
        tokio::spawn(async move { c.backup("g", "cut-short").await })
    };
    loop {
        let info = g.stats().await.unwrap();
        if let Some(op) = info.operations.iter().find(|o| o.kind == "backup")
            && op.bytes_done > 0
        {
            assert!(op.bytes_done < op.bytes_total, "{op:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(server); // SIGKILL
    assert!(backing.await.unwrap().is_err(), "the backup did not finish");
    assert!(root.join("cut-short").exists() && !root.join("cut-short/BACKUP").exists());

    let server = Server::start_with(&t.data(), &["--backup-root", &root_s]);
    let c = server.client().await;
    assert_eq!(contents(&c, "g").await, want, "the live gallery is intact");
    assert_status(
        c.restore("cut-short", "from-partial").await,
        Code::DataLoss,
        &["incomplete"],
    );
    assert!(
        c.gallery("from-partial").stats().await.is_err(),
        "nothing installed"
    );
    assert_status(
        c.backup("g", "cut-short").await,
        Code::FailedPrecondition,
        &["interrupted backup"],
    );
    // Another name works, and restores the same rows.
    c.backup("g", "whole").await.unwrap();
    c.restore("whole", "from-whole").await.unwrap();
    assert_eq!(contents(&c, "from-whole").await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasures_after_a_backup_hold_after_restore_and_the_cli_backs_up_and_restores() {
    let t = TempData::new();
    let root = t.data().parent().unwrap().join("backups");
    let root_s = root.to_str().unwrap().to_owned();
    let server = Server::start_with(&t.data(), &["--backup-root", &root_s]);
    let c = server.client().await;
    let cli = Cli { url: server.url() };
    c.create_gallery("g").await.unwrap();
    let g = c.gallery("g");
    let mut rng = Rng(63);
    let rows = batch(&mut rng, 1, 400, 40, "person");
    g.insert(&rows).await.unwrap();
    let out = cli.json(&["backup", "g", "nightly"]);
    assert_eq!(out["embeddings"], 400, "{out}");
    // After the backup: erase person-7 (by subject) and row 2 (by id).
    let gone: Vec<&Embedding> = rows
        .iter()
        .filter(|e| e.subject == "person-7" || e.id == 2)
        .collect();
    assert_eq!(
        g.delete(&[2], &["person-7".into()]).await.unwrap(),
        gone.len() as u64
    );
    c.drop_gallery("g").await.unwrap();
    let out = cli.json(&["restore", "nightly", "--gallery", "g"]);
    assert_eq!(out["erasures_applied"], 2, "{out}");
    assert_eq!(out["embeddings_erased"], gone.len() as u64, "{out}");
    assert_eq!(out["source_gallery"], "g", "{out}");
    let got = contents(&c, "g").await;
    assert_eq!(got.len(), 400 - gone.len());
    for e in &rows {
        let erased = gone.iter().any(|x| x.id == e.id);
        assert_eq!(got.contains_key(&e.id), !erased, "row {}", e.id);
    }
    // The erasure scan: no file of the restored gallery holds their vectors.
    let gone_bytes: Vec<Vec<u8>> = gone.iter().map(|e| le_bytes(&e.vector)).collect();
    let w = Windows::new(&gone_bytes);
    for (p, b) in read_tree(&t.data().join("galleries/g")) {
        assert!(
            w.find(&b).is_empty(),
            "{} holds erased vectors",
            p.display()
        );
    }
    // Text output, and names that would leave the root.
    let text = cli.ok(&["backup", "g", "second"]);
    assert!(text.starts_with("backed up g as second in "), "{text}");
    for bad in ["../up", "a/b", "..", "erasures"] {
        assert_status(
            c.backup("g", bad).await,
            Code::InvalidArgument,
            &["invalid backup name"],
        );
        assert_status(
            c.restore(bad, "x").await,
            Code::InvalidArgument,
            &["invalid backup name"],
        );
    }
    assert_status(
        c.restore("nope", "x").await,
        Code::NotFound,
        &["does not exist"],
    );
    assert_status(
        c.restore("second", "g").await,
        Code::AlreadyExists,
        &["exists"],
    );
    assert!(!Path::new(&root_s).join("../up").exists());
}

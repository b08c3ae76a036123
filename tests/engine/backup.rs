//! Backups and restores: a restore gives back exactly the gallery as of the
//! backup (segments, unflushed rows, head), bit for bit; erasures made after
//! the backup are applied before the restored gallery serves, even when the
//! original gallery is gone, and leave neither vector nor name in any file;
//! a damaged, incomplete or unknown backup is refused naming the file and the
//! offset, and nothing is installed.

use crate::support::{Model, assert_contents, opts};
use std::path::{Path, PathBuf};
use visage_engine::{BackupOptions, Embedding, Engine, EngineOptions, Error, ErrorKind};
use visage_tests::faults::{Fault, FaultyFs, Op};
use visage_tests::scan::{Windows, contains, le_bytes, read_tree};
use visage_tests::{Rng, embedding};

fn engine_with_backups(dir: &Path) -> (Engine, PathBuf) {
    let root = dir.join("backups");
    let mut o: EngineOptions = opts(false, 300);
    o.gallery.backup_root = Some(root.clone());
    (Engine::open(dir.join("data"), o).unwrap(), root)
}

/// A gallery with two segments, deletes, and rows still in the memtable.
fn filled(engine: &Engine, rng: &mut Rng) -> Model {
    let g = engine.create_gallery("doors").unwrap();
    let mut model = Model::new();
    for batch in 0..5u64 {
        let rows: Vec<Embedding> = (0..130)
            .map(|i| {
                let id = batch * 1000 + i;
                embedding(rng, id, &format!("person-{:03}", (id * 7) % 90))
            })
            .collect();
        g.insert(&rows).unwrap();
        for e in rows {
            model.insert(e.id, e);
        }
        if batch == 1 || batch == 3 {
            g.flush().unwrap();
        }
    }
    g.delete(&[5, 1003], &[]).unwrap();
    model.remove(&5);
    model.remove(&1003);
    assert!(g.stats().memtable_rows > 0 && g.stats().segments >= 2);
    model
}

fn all_ids(model: &Model) -> Vec<u64> {
    model.keys().copied().chain([5, 1003, 999_999]).collect()
}

#[test]
fn a_restore_gives_back_the_gallery_at_the_backup_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, root) = engine_with_backups(dir.path());
    let mut rng = Rng(11);
    let model = filled(&engine, &mut rng);
    let report = engine
        .backup("doors", "monday", &BackupOptions::default())
        .unwrap();
    assert_eq!(report.rows, model.len() as u64);
    assert!(
        report.linked >= 2,
        "segments are hard-linked on one file system: {report:?}"
    );
    assert!(root.join("monday").join("BACKUP").exists());
    // Writes after the backup are not in it.
    let g = engine.gallery("doors").unwrap();
    g.insert(&[embedding(&mut rng, 777_777, "late")]).unwrap();
    let r = engine.restore("monday", "doors-copy").unwrap();
    assert_eq!((r.erasures_applied, r.rows_erased), (0, 0));
    assert_eq!(r.source_gallery, "doors");
    let copy = engine.gallery("doors-copy").unwrap();
    let mut ids = all_ids(&model);
    ids.push(777_777);
    assert_contents(&copy, &model, ids.clone(), "restored gallery");
    // The restored gallery takes writes, and reopens.
    copy.insert(&[embedding(&mut rng, 888_888, "new")]).unwrap();
    drop((g, copy));
    drop(engine);
    let (engine, _) = engine_with_backups(dir.path());
    let copy = engine.gallery("doors-copy").unwrap();
    assert_eq!(copy.stats().live, model.len() as u64 + 1);
    // The restore's name must be free, and the backup's must exist.
    let e = engine.restore("monday", "doors").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    let e = engine.restore("tuesday", "other").unwrap_err();
    assert!(matches!(e, Error::BackupNotFound(_)), "{e}");
    let e = engine
        .backup("doors", "monday", &BackupOptions::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    for bad in [
        "../escape",
        "a/b",
        "",
        ".hidden",
        "erasures",
        "x".repeat(65).as_str(),
    ] {
        let e = engine
            .backup("doors", bad, &BackupOptions::default())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}: {e}");
        let e = engine.restore(bad, "fresh").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}: {e}");
    }
    assert!(!dir.path().join("escape").exists());
}

#[test]
fn erasures_after_a_backup_survive_its_restore_even_without_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, root) = engine_with_backups(dir.path());
    let mut rng = Rng(12);
    let mut model = filled(&engine, &mut rng);
    engine
        .backup("doors", "before", &BackupOptions::default())
        .unwrap();
    // After the backup: one subject erased whole, one embedding by id.
    let g = engine.gallery("doors").unwrap();
    let gone_subject = "person-007";
    let gone: Vec<Embedding> = model
        .values()
        .filter(|e| e.subject == gone_subject)
        .cloned()
        .chain(model.get(&2001).cloned())
        .collect();
    assert!(gone.len() >= 3);
    g.delete(&[2001], &[gone_subject.to_owned()]).unwrap();
    for e in &gone {
        model.remove(&e.id);
    }
    // The original goes away with its disk: only the backup root remains.
    drop(g);
    engine.drop_gallery("doors").unwrap();
    let r = engine.restore("before", "doors").unwrap();
    assert_eq!(r.erasures_applied, 2, "one subject, one id");
    assert_eq!(r.rows_erased, gone.len() as u64);
    let restored = engine.gallery("doors").unwrap();
    assert_contents(&restored, &model, all_ids(&model), "restored after erasure");
    assert!(
        restored
            .subjects(None, 1000)
            .unwrap()
            .iter()
            .all(|(s, _)| s != gone_subject)
    );
    // No file of the restored gallery holds their vectors; no file of the
    // data directory or of the erasure logs holds the erased name.
    let gone_bytes: Vec<Vec<u8>> = gone.iter().map(|e| le_bytes(&e.vector)).collect();
    let w = Windows::new(&gone_bytes);
    let files = read_tree(&dir.path().join("data"));
    for (p, b) in &files {
        assert!(w.find(b).is_empty(), "{} holds erased vectors", p.display());
        assert!(
            !contains(b, gone_subject.as_bytes()),
            "{} holds the name",
            p.display()
        );
    }
    let kept: Vec<u8> = le_bytes(&model.values().next().unwrap().vector);
    assert!(
        files.iter().any(|(_, b)| contains(b, &kept)),
        "the scan finds a live vector, so it proves something"
    );
    for (p, b) in read_tree(&root.join("erasures")) {
        assert!(
            !contains(&b, gone_subject.as_bytes()),
            "{} holds the name",
            p.display()
        );
        assert!(
            !contains(&b, &2001u64.to_le_bytes()),
            "{} holds the id",
            p.display()
        );
    }
}

#[test]
fn a_restore_without_its_erasure_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, root) = engine_with_backups(dir.path());
    let mut rng = Rng(13);
    filled(&engine, &mut rng);
    engine
        .backup("doors", "b1", &BackupOptions::default())
        .unwrap();
    std::fs::remove_dir_all(root.join("erasures")).unwrap();
    let e = engine.restore("b1", "again").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("erasure log"), "{e}");
    assert!(engine.gallery("again").is_err());
    // The next backup mirrors the log again, and restores.
    engine
        .backup("doors", "b2", &BackupOptions::default())
        .unwrap();
    engine.restore("b2", "again").unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        // A copy, never a link: damaging it must not touch the gallery.
        std::fs::write(to.join(e.file_name()), std::fs::read(e.path()).unwrap()).unwrap();
    }
}

#[test]
fn damaged_backups_are_refused_naming_file_and_offset_and_nothing_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, root) = engine_with_backups(dir.path());
    let mut rng = Rng(14);
    let model = filled(&engine, &mut rng);
    engine
        .backup("doors", "good", &BackupOptions::default())
        .unwrap();
    let good = root.join("good");
    let names: Vec<String> = std::fs::read_dir(&good)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let kinds = ["BACKUP", "MANIFEST", "ERASURE-KEY", "seg-", "wal-"];
    for kind in kinds {
        assert!(
            names.iter().any(|n| n.starts_with(kind)),
            "{kind} in {names:?}"
        );
    }
    let mut case = 0;
    let mut check =
        |what: &str, damage: &dyn Fn(&Path), expect_file: &str, expect_offset: Option<u64>| {
            case += 1;
            let name = format!("damaged-{case}");
            let copy = root.join(&name);
            copy_dir(&good, &copy);
            damage(&copy);
            let e = engine.restore(&name, "victim").unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(expect_file), "{what}: {msg}");
            if let Some(off) = expect_offset {
                assert!(
                    msg.contains(&format!("offset {off}")),
                    "{what}: wants offset {off}: {msg}"
                );
            }
            assert!(
                engine.gallery("victim").is_err(),
                "{what}: a gallery was installed"
            );
            let left: Vec<_> = std::fs::read_dir(dir.path().join("data/galleries"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert_eq!(left, vec!["doors".to_owned()], "{what}: files left behind");
        };
    for n in &names {
        let size = std::fs::metadata(good.join(n)).unwrap().len();
        for at in [0, size / 2, size - 1] {
            let flip = |d: &Path| {
                let p = d.join(n);
                let mut b = std::fs::read(&p).unwrap();
                b[at as usize] ^= 0x40;
                std::fs::write(&p, b).unwrap();
            };
            // A flip in a listed file is found at its checksum block.
            let offset = (n != "BACKUP").then_some(at - at % (1 << 20));
            check(&format!("{n} byte {at} flipped"), &flip, n, offset);
        }
        if n != "BACKUP" {
            let cut = |d: &Path| {
                let p = d.join(n);
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() - 1]).unwrap();
            };
            check(&format!("{n} truncated"), &cut, n, Some(size - 1));
            let missing = |d: &Path| std::fs::remove_file(d.join(n)).unwrap();
            check(&format!("{n} missing"), &missing, n, Some(0));
        }
    }
    // An interrupted backup (no manifest yet) is refused too.
    let missing = |d: &Path| std::fs::remove_file(d.join("BACKUP")).unwrap();
    check("no BACKUP", &missing, "incomplete", None);
    // The good one still restores, bit for bit.
    engine.restore("good", "victim").unwrap();
    let v = engine.gallery("victim").unwrap();
    assert_contents(&v, &model, all_ids(&model), "the good backup");
}

/// An engine on the fault-injecting file system, which makes no hard links:
/// every file of a backup is a copy.
fn faulty_engine(dir: &Path) -> (std::sync::Arc<FaultyFs>, Engine) {
    let fs = FaultyFs::new();
    let mut o: EngineOptions = opts(false, 300);
    o.gallery.backup_root = Some(dir.join("backups"));
    let engine = Engine::open_with_fs(dir.join("data"), o, fs.clone()).unwrap();
    (fs, engine)
}

#[test]
fn without_hard_links_a_backup_copies_and_a_failed_one_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, engine) = faulty_engine(dir.path());
    let mut rng = Rng(16);
    let model = filled(&engine, &mut rng);
    // A backup whose copy fails (a sync of a backed-up segment) is removed
    // whole, and the gallery goes on.
    fs.inject(Fault::on(Op::Sync, "backups/broken/seg-"));
    let e = engine
        .backup("doors", "broken", &BackupOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("injected"), "{e}");
    assert!(!dir.path().join("backups/broken").exists());
    let g = engine.gallery("doors").unwrap();
    g.insert(&[embedding(&mut rng, 555_555, "after")]).unwrap();
    g.delete(&[555_555], &[]).unwrap();
    let r = engine
        .backup("doors", "copied", &BackupOptions::default())
        .unwrap();
    assert_eq!(r.linked, 0, "{r:?}");
    engine.restore("copied", "doors-copy").unwrap();
    let copy = engine.gallery("doors-copy").unwrap();
    assert_contents(&copy, &model, all_ids(&model), "restored from copies");
}

#[test]
fn a_compaction_reports_its_progress_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, engine) = faulty_engine(dir.path());
    let mut rng = Rng(17);
    let model = filled(&engine, &mut rng);
    let g = engine.gallery("doors").unwrap();
    // Hold the compaction when it creates its first segment (the flush of
    // the memtable): its totals are known, nothing is written yet.
    let hold = fs.hold("seg-");
    std::thread::scope(|s| {
        let h = s.spawn(|| g.compact());
        hold.wait_reached();
        let p = g.progress();
        assert_eq!(p.len(), 1, "{p:?}");
        let p = &p[0];
        assert_eq!(p.kind, "compaction");
        let memtable = g.stats().memtable_rows;
        assert!(memtable > 0);
        assert_eq!(p.rows_total, memtable, "{p:?}");
        assert_eq!(p.rows_done, 0, "{p:?}");
        assert!(p.bytes_total > 0 && p.bytes_done == 0, "{p:?}");
        hold.release();
        h.join().unwrap().unwrap();
    });
    assert!(
        g.progress().is_empty(),
        "the finished compaction is no longer listed"
    );
    assert_contents(&g, &model, all_ids(&model), "after the compaction");
}

#[test]
fn backups_report_their_progress() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _root) = engine_with_backups(dir.path());
    let mut rng = Rng(15);
    filled(&engine, &mut rng);
    let g = engine.gallery("doors").unwrap();
    assert!(g.progress().is_empty());
    // A slow backup (256 KiB/s over about 0.4 MB) is seen in progress.
    let total = std::thread::scope(|s| {
        let h = s.spawn(|| {
            engine.backup(
                "doors",
                "slow",
                &BackupOptions {
                    max_bytes_per_sec: Some(256 << 10),
                },
            )
        });
        let mut seen = None;
        while !h.is_finished() {
            if let Some(p) = g.progress().into_iter().find(|p| p.kind == "backup") {
                assert!(p.bytes_done <= p.bytes_total, "{p:?}");
                if p.bytes_done > 0 && p.bytes_done < p.bytes_total {
                    seen = Some(p);
                }
            }
            std::thread::yield_now();
        }
        let report = h.join().unwrap().unwrap();
        let p = seen.expect("the backup's progress was seen part done");
        assert_eq!(p.bytes_total, report.bytes, "{p:?} {report:?}");
        report.bytes
    });
    assert!(total > 0);
    assert!(
        g.progress().is_empty(),
        "the finished backup is no longer listed"
    );
}

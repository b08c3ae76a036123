//! Faults beyond the poisoning suite, each armed in one line through the
//! file-system seam (`visage_tests::faults`): a WAL append cut short at any
//! byte, a manifest rename that fails, a directory fsync that fails after the
//! manifest was renamed. After each, a reopened gallery holds exactly what
//! was acknowledged.

use crate::support::{Model, assert_contents, faulty_gallery, opts};
use visage_engine::{Embedding, Engine, Error};
use visage_tests::faults::{Fault, Op};
use visage_tests::{Rng, embedding};

fn batch(rng: &mut Rng, ids: std::ops::Range<u64>, tag: &str) -> Vec<Embedding> {
    ids.map(|i| embedding(rng, i, &format!("{tag}{}", i % 7)))
        .collect()
}

/// Bytes one insert of `b` adds to a fresh gallery's WAL.
fn record_len(b: &[Embedding]) -> u64 {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open(tmp.path(), opts(false, 1 << 17)).unwrap();
    let g = engine.create_gallery("g").unwrap();
    let wal_len = || {
        crate::support::files_like(g.dir(), "wal-", ".log")
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum::<u64>()
    };
    let before = wal_len();
    g.insert(b).unwrap();
    wal_len() - before
}

#[test]
fn a_wal_append_cut_short_at_any_byte_loses_only_the_unacknowledged_batch() {
    let mut rng = Rng(0x5407);
    let failed = batch(&mut rng, 1000..1003, "x");
    let len = record_len(&failed);
    assert!(len > 3 * 512, "{len}");
    let mut cuts: Vec<u64> = (0..len).step_by(97).collect();
    cuts.extend([1, 7, 8, 9, 12, 13, len - 1]);
    for cut in cuts {
        let tmp = tempfile::tempdir().unwrap();
        let mut model = Model::new();
        {
            let (fs, _engine, g) = faulty_gallery(tmp.path(), &mut rng, &mut model, 0..20, 7);
            g.delete(&[3], &[]).unwrap();
            model.remove(&3);

            fs.inject(Fault::on(Op::Write, "wal-").short(cut as usize));
            let err = g.insert(&failed).unwrap_err();
            assert!(matches!(err, Error::Poisoned { .. }), "cut at {cut}: {err}");
            assert_eq!(fs.fired(), 1, "cut at {cut}");
        }
        let engine = Engine::open(tmp.path(), opts(false, 1 << 17)).unwrap();
        let g = engine.gallery("g").unwrap();
        let ids: Vec<u64> = (0..20).chain(1000..1003).collect();
        assert_contents(
            &g,
            &model,
            ids,
            &format!("reopened after a cut at byte {cut}"),
        );
        // The torn tail is gone: the gallery takes writes and keeps them.
        let b = batch(&mut rng, 2000..2002, "q");
        g.insert(&b).unwrap();
        model.extend(b.into_iter().map(|e| (e.id, e)));
        drop(g);
        drop(engine);
        let engine = Engine::open(tmp.path(), opts(false, 1 << 17)).unwrap();
        let g = engine.gallery("g").unwrap();
        let ids: Vec<u64> = (0..20).chain(1000..1003).chain(2000..2002).collect();
        assert_contents(&g, &model, ids, &format!("second reopen, cut at {cut}"));
    }
}

#[test]
fn a_failed_manifest_rename_fails_the_flush_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x4E4A);
    let mut model = Model::new();
    let ids: Vec<u64> = (0..400).collect();
    {
        let (fs, _engine, g) = faulty_gallery(tmp.path(), &mut rng, &mut model, 0..200, 7);

        fs.inject(Fault::on(Op::Rename, "MANIFEST"));
        let err = g.flush().unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("injected rename failure"), "{err}");
        assert_eq!(fs.fired(), 1);
        // The old manifest still rules and the gallery is not poisoned: reads
        // and writes go on, and the next flush installs everything.
        assert_contents(&g, &model, ids.clone(), "after the failed flush");
        assert_eq!(g.stats().segments, 0);
        let b = batch(&mut rng, 200..300, "p");
        g.insert(&b).unwrap();
        model.extend(b.into_iter().map(|e| (e.id, e)));
        g.flush().unwrap();
        assert_eq!(g.stats().segments, 1);
        assert_contents(&g, &model, ids.clone(), "after the second flush");
    }
    let engine = Engine::open(tmp.path(), opts(false, 1 << 17)).unwrap();
    let g = engine.gallery("g").unwrap();
    assert_contents(&g, &model, ids, "reopened");
    assert!(crate::support::files_like(g.dir(), "MANIFEST", ".tmp").is_empty());
}

#[test]
fn a_failed_directory_sync_after_the_manifest_rename_poisons_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(0xD15C);
    let mut model = Model::new();
    let ids: Vec<u64> = (0..300).collect();
    {
        let (fs, _engine, g) = faulty_gallery(tmp.path(), &mut rng, &mut model, 0..200, 7);
        g.flush().unwrap();
        let b = batch(&mut rng, 150..250, "p");
        g.insert(&b).unwrap();
        model.extend(b.into_iter().map(|e| (e.id, e)));
        g.delete(&[1, 2], &[]).unwrap();
        model.remove(&1);
        model.remove(&2);

        // The rename happened, its directory entry may not be durable: the
        // gallery cannot know which manifest a crash would leave, so it
        // refuses writes until reopened.
        fs.inject(Fault::on(Op::SyncDir, "galleries/g").after(Op::Rename, "MANIFEST"));
        let err = g.flush().unwrap_err();
        assert!(matches!(err, Error::Poisoned { .. }), "{err}");
        assert!(err.to_string().contains("directory fsync"), "{err}");
        assert!(matches!(
            g.insert(&batch(&mut rng, 900..901, "z")),
            Err(Error::Poisoned { .. })
        ));
        assert_contents(&g, &model, ids.clone(), "poisoned");
    }
    let engine = Engine::open(tmp.path(), opts(false, 1 << 17)).unwrap();
    let g = engine.gallery("g").unwrap();
    assert_contents(&g, &model, ids.clone(), "reopened");
    g.insert(&batch(&mut rng, 900..901, "z")).unwrap();
}

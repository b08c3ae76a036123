//! Poisoning: a failed WAL fsync (injected through the file-system seam,
//! `visage_tests::faults`) fails that write, latches the gallery into
//! refusing writes (`Error::Poisoned`) until it is reopened, keeps reads
//! working, and never lets readers see the failed batch — not even when a
//! flush that started before the failure finishes after it. After reopening,
//! writes work again and every acknowledged write is there; the failed batch,
//! whose bytes may or may not have reached the disk, is wholly present or
//! wholly absent.

use crate::support::{
    Model, assert_contents, assert_same, check_identify, check_search, faulty_gallery, opts,
};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use visage_engine::{Embedding, Engine, Error, Gallery};
use visage_tests::faults::{Fault, FaultyFs, Op};
use visage_tests::{Rng, embedding};

fn is_poisoned(r: &Result<impl std::fmt::Debug, Error>) -> bool {
    matches!(r, Err(Error::Poisoned { gallery, .. }) if gallery == "g")
}

/// The gallery holds `model` plus either all of `failed` or none of it.
fn assert_all_or_nothing(g: &Gallery, model: &Model, failed: &[Embedding], ctx: &str) -> bool {
    let ids: Vec<u64> = failed.iter().map(|e| e.id).collect();
    let got = g.get(&ids);
    let applied = got.iter().zip(failed).all(|(a, b)| {
        a.id == b.id && crate::support::bits(&a.vector) == crate::support::bits(&b.vector)
    }) && got.len() == failed.len();
    let mut want = model.clone();
    if applied {
        want.extend(failed.iter().map(|e| (e.id, e.clone())));
    }
    let all: Vec<u64> = want.keys().chain(&ids).copied().collect();
    assert_contents(g, &want, all, ctx);
    applied
}

/// Readers see exactly `model`: get, stats, search and identify.
fn assert_readers_see(g: &Gallery, model: &Model, failed: &[Embedding], ctx: &str) {
    let ids: Vec<u64> = model
        .keys()
        .chain(failed.iter().map(|e| &e.id))
        .copied()
        .collect();
    assert_contents(g, model, ids, ctx);
    for e in failed {
        let hits = g.search(std::slice::from_ref(&e.vector), 5).unwrap();
        check_search(&hits[0], model, &e.vector, 5, false, ctx);
        let cands = g.identify(std::slice::from_ref(&e.vector), 3).unwrap();
        check_identify(&cands[0], model, &e.vector, 3, false, ctx);
    }
}

#[test]
fn a_failed_fsync_poisons_writes_until_reopen_and_hides_the_failed_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(0xBAD5);
    let mut model = Model::new();
    let failed: Vec<Embedding>;
    {
        let (fs, _engine, g) = faulty_gallery(tmp.path(), &mut rng, &mut model, 0..200, 20);
        g.flush().unwrap();
        let b: Vec<Embedding> = (150..260)
            .map(|i| embedding(&mut rng, i, &format!("p{}", i % 20)))
            .collect();
        g.insert(&b).unwrap();
        model.extend(b.into_iter().map(|e| (e.id, e)));
        g.delete(&[1, 2, 3], &["p19".to_string()]).unwrap();
        model.retain(|&id, e| ![1, 2, 3].contains(&id) && e.subject != "p19");
        let before = g.stats();

        fs.inject(Fault::on(Op::Sync, "wal-"));
        // Upserts of a segment row and a memtable row, and a new id.
        failed = [10u64, 200, 5000]
            .iter()
            .map(|&id| embedding(&mut rng, id, "intruder"))
            .collect();
        let err = g.insert(&failed).unwrap_err();
        assert!(
            matches!(err, Error::Poisoned { .. } | Error::Io { .. }),
            "the failed write reports the failure: {err}"
        );
        assert!(err.to_string().contains("injected"), "{err}");
        // Latched: every later write is refused without touching anything.
        let more = [embedding(&mut rng, 7000, "late")];
        assert!(is_poisoned(&g.insert(&more)), "insert after failure");
        assert!(is_poisoned(&g.delete(&[20], &[])), "delete after failure");
        assert!(is_poisoned(&g.flush()), "flush after failure");
        assert!(is_poisoned(&g.compact()), "compact after failure");
        // Reads work and do not show the failed batch.
        assert_readers_see(&g, &model, &failed, "poisoned");
        assert_eq!(g.stats().live, before.live);
        assert!(g.get(&[7000]).is_empty());
    }
    let engine = Engine::open(tmp.path(), opts(false, 1 << 17)).unwrap();
    let g = engine.gallery("g").unwrap();
    let applied = assert_all_or_nothing(&g, &model, &failed, "reopened");
    if applied {
        model.extend(failed.iter().map(|e| (e.id, e.clone())));
    }
    println!(
        "failed batch after reopening: {}",
        if applied { "present" } else { "absent" }
    );
    // Writes work again and survive another reopen.
    let c = [embedding(&mut rng, 8000, "after")];
    g.insert(&c).unwrap();
    g.delete(&[100], &[]).unwrap();
    model.insert(8000, c[0].clone());
    model.remove(&100);
    g.flush().unwrap();
    drop(g);
    drop(engine);
    let engine = Engine::open(tmp.path(), opts(false, 1 << 17)).unwrap();
    let g = engine.gallery("g").unwrap();
    let ids: Vec<u64> = (0..10_000).collect();
    assert_contents(&g, &model, ids, "after a second reopen");
    for e in g.get(&[8000]) {
        assert_same(&e, &c[0], "written after recovery");
    }
}

fn wait_for_new_segment(dir: &Path, known: usize, done: &dyn Fn() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let n = crate::support::files_like(dir, "seg-", ".vseg").len();
        if n > known {
            return true;
        }
        if done() {
            return false;
        }
        std::hint::spin_loop();
    }
    false
}

/// A flush that is writing its segment when the failure happens must not
/// publish (or persist in the manifest) the state the failed batch left in
/// memory: the failed upsert would become visible, and its tombstone on the
/// old version could become durable without the new version.
#[test]
fn a_flush_in_progress_does_not_publish_a_failed_batch() {
    let mut hits = 0;
    for attempt in 0..3u64 {
        let tmp = tempfile::tempdir().unwrap();
        let mut rng = Rng(attempt);
        let mut model = Model::new();
        let failed: Vec<Embedding>;
        {
            let fs = FaultyFs::new();
            let engine =
                Engine::open_with_fs(tmp.path(), opts(false, 1 << 20), fs.clone()).unwrap();
            let g = engine.create_gallery("g").unwrap();
            let a: Vec<Embedding> = (0..300)
                .map(|i| embedding(&mut rng, i, &format!("p{}", i % 30)))
                .collect();
            g.insert(&a).unwrap();
            model.extend(a.into_iter().map(|e| (e.id, e)));
            g.flush().unwrap(); // rows 0..300 in a segment
            // A memtable big enough that writing it as a segment takes a while.
            for chunk in 0..6u64 {
                let b: Vec<Embedding> = (0..5000)
                    .map(|i| {
                        let id = 1000 + chunk * 5000 + i;
                        embedding(&mut rng, id, &format!("q{}", id % 500))
                    })
                    .collect();
                g.insert(&b).unwrap();
                model.extend(b.into_iter().map(|e| (e.id, e)));
            }
            let gdir = g.dir().to_owned();
            let known = crate::support::files_like(&gdir, "seg-", ".vseg").len();
            let flusher = {
                let g: Arc<Gallery> = g.clone();
                std::thread::spawn(move || g.flush())
            };
            let in_window = wait_for_new_segment(&gdir, known, &|| flusher.is_finished());
            fs.inject(Fault::on(Op::Sync, "wal-"));
            // Upsert a segment row and a memtable row being flushed, plus a new id.
            failed = [7u64, 1001, 900_000]
                .iter()
                .map(|&id| embedding(&mut rng, id, "intruder"))
                .collect();
            assert!(g.insert(&failed).is_err());
            let flushed = flusher.join().unwrap();
            if in_window {
                hits += 1;
            }
            println!(
                "attempt {attempt}: failure injected during the segment write: {in_window}, flush: {flushed:?}"
            );
            assert_readers_see(&g, &model, &failed, &format!("attempt {attempt}, poisoned"));
        }
        let engine = Engine::open(tmp.path(), opts(false, 1 << 20)).unwrap();
        let g = engine.gallery("g").unwrap();
        assert_all_or_nothing(&g, &model, &failed, &format!("attempt {attempt}, reopened"));
    }
    assert!(
        hits > 0,
        "never caught the flush mid-write; the test proved nothing"
    );
}

/// A WAL append that fails half-way (EIO after the first record's frame,
/// injected as a short write) latches the gallery like a
/// failed fsync: the batch is not acknowledged, readers never see it, later
/// writes are refused until reopen, and the partial record is a torn tail that
/// recovery drops.
#[test]
fn a_failed_wal_write_poisons_and_its_partial_record_is_dropped_at_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(0xE10);
    let mut model = Model::new();
    let failed: Vec<Embedding>;
    {
        let (fs, _engine, g) = faulty_gallery(tmp.path(), &mut rng, &mut model, 0..100, 10);
        fs.inject(Fault::on(Op::Write, "wal-").short(8));
        failed = [5u64, 500]
            .iter()
            .map(|&id| embedding(&mut rng, id, "intruder"))
            .collect();
        let err = g.insert(&failed).unwrap_err();
        assert!(
            matches!(err, Error::Poisoned { .. }),
            "a failed append reports the failure: {err}"
        );
        assert!(err.to_string().contains("os error 5"), "{err}");
        assert!(is_poisoned(&g.insert(&[embedding(&mut rng, 900, "late")])));
        assert!(is_poisoned(&g.delete(&[1], &[])));
        assert_readers_see(&g, &model, &failed, "poisoned by a failed write");
    }
    let engine = Engine::open(tmp.path(), opts(false, 1 << 17)).unwrap();
    let g = engine.gallery("g").unwrap();
    // Only a frame header reached the file: the batch cannot be there.
    assert!(
        !assert_all_or_nothing(&g, &model, &failed, "reopened after a failed write"),
        "a batch whose record was cut short came back"
    );
    g.insert(&[embedding(&mut rng, 901, "after")]).unwrap();
    assert_eq!(g.get(&[901]).len(), 1);
}

/// A full disk (ENOSPC from the WAL space reservation, injected through the
/// file-system seam) refuses the batch whole with `Error::NoSpace`
/// before anything is applied, and does not latch: the next write works. The
/// real file-system version of this runs against the server on a small tmpfs
/// (`tests/server/full_disk.rs`).
#[test]
fn no_space_for_the_wal_refuses_the_batch_and_keeps_the_gallery_writable() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5BACE);
    let mut model = Model::new();
    drop(faulty_gallery(tmp.path(), &mut rng, &mut model, 0..100, 10));
    // Reopened, the WAL has no space reserved past its end: the next write
    // must reserve, and the disk is full.
    let fs = FaultyFs::new();
    let engine = Engine::open_with_fs(tmp.path(), opts(false, 1 << 17), fs.clone()).unwrap();
    let g = engine.gallery("g").unwrap();

    // Always: the WAL asks for a whole step, then for exactly what it needs.
    fs.inject(Fault::on(Op::Allocate, "wal-").no_space().always());
    let refused: Vec<Embedding> = [7u64, 700]
        .iter()
        .map(|&id| embedding(&mut rng, id, "refused"))
        .collect();
    let err = g.insert(&refused).unwrap_err();
    assert!(
        matches!(err, Error::NoSpace { .. }) && err.is_no_space(),
        "{err:?}"
    );
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    assert_readers_see(&g, &model, &refused, "after a refused insert");

    let err = g.delete(&[1, 2], &["p3".to_string()]).unwrap_err();
    assert!(matches!(err, Error::NoSpace { .. }), "{err:?}");
    assert_readers_see(&g, &model, &refused, "after a refused delete");

    // Not latched: once there is space, writes go on.
    fs.clear();
    let b = [embedding(&mut rng, 800, "later")];
    g.insert(&b).unwrap();
    model.insert(800, b[0].clone());
    assert_eq!(g.delete(&[1], &[]).unwrap(), 1);
    model.remove(&1);
    drop(g);
    drop(engine);
    let engine = Engine::open(tmp.path(), opts(false, 1 << 17)).unwrap();
    let g = engine.gallery("g").unwrap();
    let ids: Vec<u64> = (0..1000).collect();
    assert_contents(&g, &model, ids, "reopened after refusals");
}

/// While flushes fail (segment files cannot be created), rows
/// pile up in memory only to `max_unflushed_rows`: further inserts are
/// refused with `Error::Backlogged` naming the failure, deletes still work,
/// and once flushes work again inserts resume by themselves.
#[test]
fn failing_flushes_bound_unflushed_rows_and_deletes_still_work() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(true, 200);
    o.gallery.max_unflushed_rows = 1_000;
    let mut rng = Rng(0xBAC);
    let mut model = Model::new();
    {
        let fs = FaultyFs::new();
        let engine = Engine::open_with_fs(tmp.path(), o.clone(), fs.clone()).unwrap();
        let g = engine.create_gallery("g").unwrap();
        fs.inject(Fault::on(Op::Create, "seg-").always());
        let mut next = 0u64;
        let refused = loop {
            let b: Vec<Embedding> = (next..next + 100)
                .map(|i| embedding(&mut rng, i, &format!("p{}", i % 50)))
                .collect();
            match g.insert(&b) {
                Ok(_) => {
                    model.extend(b.into_iter().map(|e| (e.id, e)));
                    next += 100;
                }
                Err(e) => break e,
            }
            assert!(next < 5_000, "never refused: the bound does not hold");
        };
        assert!(matches!(refused, Error::Backlogged { .. }), "{refused}");
        assert!(
            (1_000..1_100).contains(&model.len()),
            "{} rows taken",
            model.len()
        );
        // The refusal names the failing flush once maintenance has tried.
        let t0 = Instant::now();
        loop {
            let e = g.insert(&[embedding(&mut rng, 90_000, "x")]).unwrap_err();
            let msg = e.to_string();
            if msg.contains("flushes are failing") {
                assert!(msg.contains("injected create failure"), "{msg}");
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "{msg}");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Deletes are still taken (people can be erased), reads work.
        assert_eq!(g.delete(&[0, 1], &["p7".to_string()]).unwrap(), 2 + 20);
        model.retain(|&id, e| id > 1 && e.subject != "p7");
        let ids: Vec<u64> = (0..2_000).chain([90_000]).collect();
        assert_contents(&g, &model, ids, "backlogged");
        // Flushes work again: inserts resume without a reopen.
        fs.clear();
        let t0 = Instant::now();
        let late = [embedding(&mut rng, 90_001, "late")];
        while let Err(e) = g.insert(&late) {
            assert!(
                matches!(e, Error::Backlogged { .. }) && t0.elapsed() < Duration::from_secs(10),
                "{e}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        model.insert(90_001, late[0].clone());
    }
    let engine = Engine::open(tmp.path(), o).unwrap();
    let g = engine.gallery("g").unwrap();
    let ids: Vec<u64> = (0..2_000).chain([90_000, 90_001]).collect();
    assert_contents(&g, &model, ids, "reopened");
}

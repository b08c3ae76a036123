//! Concurrency: writer threads insert, upsert and delete (by id and by subject)
//! while searcher threads search and identify and a maintenance thread calls
//! `flush()` and `compact()` over and over, with background maintenance on a
//! small memtable as well. Each writer owns a disjoint id range, so the model
//! of acknowledged operations is well defined.
//!
//! During the run, assertions are only those that hold whatever the
//! interleaving: a search never returns an id whose deletion was acknowledged
//! before the search started (deleted ids are never reused), `get` of such ids
//! is empty, and every hit is some version of its id that was submitted before
//! the search ended (distance checked against that version), with its subject.
//! At the end the gallery equals the model exactly, also after reopening.

use crate::support::{
    Model, assert_contents, check_identify, check_search, create, files_like, gallery_dir, mix,
    opts,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use visage_engine::{Embedding, Engine, Gallery, Hit};
use visage_tests::faults::FaultyFs;
use visage_tests::{Rng, l2sq_f64};

const WRITERS: u64 = 3;
const BATCHES: usize = 800;

fn vector_of(id: u64, version: u64) -> Vec<f32> {
    Rng(mix(id, version)).vector()
}

/// Ids of writer `t` are `t << 32 | n`; four consecutive ids per subject.
fn subject_of(id: u64) -> String {
    format!("w{}-{}", id >> 32, (id & 0xffff_ffff) / 4)
}

#[derive(Default)]
struct Shared {
    /// Ids whose deletion was acknowledged (never reinserted).
    dead: Mutex<HashSet<u64>>,
    /// Highest version of each id ever submitted.
    versions: Mutex<HashMap<u64, u64>>,
    done: AtomicBool,
    /// Explicit flush+compact rounds and searches finished so far: writers
    /// wait halfway until enough of both ran beside them (a condition, not
    /// a timing: on a loaded machine the maintainer may be slow).
    rounds: AtomicUsize,
    searches: AtomicUsize,
}

/// Rounds and searches that must have run before writers go past halfway.
const MIN_ROUNDS: usize = 6;
const MIN_SEARCHES: usize = 21;

fn writer(t: u64, g: Arc<Gallery>, sh: Arc<Shared>) -> Model {
    let mut rng = Rng(mix(0xC0C0, t));
    let mut model = Model::new();
    let mut next = 0u64;
    let mut ver: HashMap<u64, u64> = HashMap::new();
    let submit_versions = |ids: &[(u64, u64)]| {
        let mut v = sh.versions.lock().unwrap();
        for &(id, version) in ids {
            v.insert(id, version);
        }
    };
    for b in 0..BATCHES {
        if b == BATCHES / 2 {
            // Bounded, so that a maintainer or searcher that died fails the
            // test instead of hanging it.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
            while sh.rounds.load(Ordering::Acquire) < MIN_ROUNDS
                || sh.searches.load(Ordering::Acquire) < MIN_SEARCHES
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "maintenance or searches stopped before enough ran"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        let live: Vec<u64> = model.keys().copied().collect();
        let pick = |rng: &mut Rng| live[rng.below(live.len() as u64) as usize];
        let r = if live.len() < 8 { 0 } else { rng.below(10) };
        let mut batch: Vec<Embedding> = Vec::new();
        let mut deletes: Vec<u64> = Vec::new();
        let mut subject_delete = None;
        match r {
            0..=3 | 9 => {
                for _ in 0..4 {
                    let id = t << 32 | next;
                    next += 1;
                    batch.push(Embedding {
                        id,
                        subject: subject_of(id),
                        vector: vector_of(id, 0),
                    });
                    ver.insert(id, 0);
                }
                if r == 9 {
                    let id = pick(&mut rng);
                    let v = ver[&id] + 1;
                    ver.insert(id, v);
                    batch.push(Embedding {
                        id,
                        subject: subject_of(id),
                        vector: vector_of(id, v),
                    });
                }
            }
            4 | 5 => {
                let mut ids = HashSet::new();
                for _ in 0..1 + rng.below(3) {
                    ids.insert(pick(&mut rng));
                }
                for id in ids {
                    let v = ver[&id] + 1;
                    ver.insert(id, v);
                    batch.push(Embedding {
                        id,
                        subject: subject_of(id),
                        vector: vector_of(id, v),
                    });
                }
            }
            6 | 7 => {
                for _ in 0..1 + rng.below(3) {
                    deletes.push(pick(&mut rng));
                }
            }
            _ => subject_delete = Some(subject_of(pick(&mut rng))),
        }
        if !batch.is_empty() {
            submit_versions(&batch.iter().map(|e| (e.id, ver[&e.id])).collect::<Vec<_>>());
            g.insert(&batch).unwrap();
            model.extend(batch.into_iter().map(|e| (e.id, e)));
        }
        if !deletes.is_empty() {
            deletes.sort_unstable();
            deletes.dedup();
            assert_eq!(g.delete(&deletes, &[]).unwrap(), deletes.len() as u64);
        }
        if let Some(s) = subject_delete {
            deletes = model
                .values()
                .filter(|e| e.subject == s)
                .map(|e| e.id)
                .collect();
            assert_eq!(g.delete(&[], &[s]).unwrap(), deletes.len() as u64);
        }
        if !deletes.is_empty() {
            for id in &deletes {
                model.remove(id);
            }
            sh.dead.lock().unwrap().extend(deletes);
        }
    }
    model
}

/// Check hits that a search concurrent with writes may legitimately return.
fn check_hits(hits: &[Hit], probe: &[f32], dead_before: &HashSet<u64>, sh: &Shared, ctx: &str) {
    let versions = sh.versions.lock().unwrap().clone();
    for w in hits.windows(2) {
        assert!(
            (w[0].distance, w[0].id) < (w[1].distance, w[1].id),
            "{ctx}: hits out of order"
        );
    }
    for h in hits {
        assert!(
            !dead_before.contains(&h.id),
            "{ctx}: id {} was deleted before the search started",
            h.id
        );
        assert_eq!(h.subject, subject_of(h.id), "{ctx}: subject of id {}", h.id);
        let max = *versions
            .get(&h.id)
            .unwrap_or_else(|| panic!("{ctx}: id {} was never submitted", h.id));
        let ok = (0..=max).any(|v| {
            let d = l2sq_f64(probe, &vector_of(h.id, v));
            (h.distance as f64 - d).abs() <= 1e-4 * d + 1e-3
        });
        assert!(
            ok,
            "{ctx}: id {} at distance {} matches no version",
            h.id, h.distance
        );
    }
}

fn searcher(s: u64, g: Arc<Gallery>, sh: Arc<Shared>, searches: Arc<AtomicUsize>) {
    let mut rng = Rng(mix(0x5EA2, s));
    while !sh.done.load(Ordering::Acquire) {
        let dead_before: HashSet<u64> = sh.dead.lock().unwrap().clone();
        // Near an existing row half of the time.
        let probe = if rng.below(2) == 0 {
            let id = rng.below(WRITERS) << 32 | rng.below(200);
            vector_of(id, 0)
        } else {
            rng.vector()
        };
        let ctx = format!("searcher {s}");
        let hits = g.search(std::slice::from_ref(&probe), 30).unwrap();
        check_hits(&hits[0], &probe, &dead_before, &sh, &ctx);
        let cands = g.identify(std::slice::from_ref(&probe), 5).unwrap();
        check_hits(&cands[0], &probe, &dead_before, &sh, &ctx);
        let subjects: HashSet<&str> = cands[0].iter().map(|h| h.subject.as_str()).collect();
        assert_eq!(
            subjects.len(),
            cands[0].len(),
            "{ctx}: identify repeats a subject"
        );
        let sample: Vec<u64> = dead_before.iter().take(50).copied().collect();
        assert!(g.get(&sample).is_empty(), "{ctx}: get returns a deleted id");
        searches.fetch_add(1, Ordering::Relaxed);
        sh.searches.fetch_add(1, Ordering::Release);
    }
}

fn check_final(g: &Gallery, model: &Model, all_ids: &[u64], ctx: &str) {
    assert_contents(g, model, all_ids.iter().copied(), ctx);
    let mut rng = Rng(77);
    for _ in 0..5 {
        let p = rng.vector();
        let hits = g.search(std::slice::from_ref(&p), 25).unwrap();
        check_search(&hits[0], model, &p, 25, false, ctx);
        let cands = g.identify(std::slice::from_ref(&p), 8).unwrap();
        check_identify(&cands[0], model, &p, 8, false, ctx);
    }
}

#[test]
fn writers_searchers_and_maintenance_together_end_in_the_model_state() {
    let tmp = tempfile::tempdir().unwrap();
    let options = || {
        let mut o = opts(true, 200);
        o.gallery.compaction.min_small_to_merge = 3;
        o
    };
    let engine = Engine::open(tmp.path(), options()).unwrap();
    let g = engine.create_gallery("g").unwrap();
    let sh = Arc::new(Shared::default());
    let searches = Arc::new(AtomicUsize::new(0));
    let maint_rounds = Arc::new(AtomicUsize::new(0));
    let searchers: Vec<_> = (0..2)
        .map(|s| {
            let (g, sh, n) = (g.clone(), sh.clone(), searches.clone());
            std::thread::spawn(move || searcher(s, g, sh, n))
        })
        .collect();
    let maintainer = {
        let (g, sh, n) = (g.clone(), sh.clone(), maint_rounds.clone());
        std::thread::spawn(move || {
            while !sh.done.load(Ordering::Acquire) {
                g.flush().unwrap();
                g.compact().unwrap();
                n.fetch_add(1, Ordering::Relaxed);
                sh.rounds.fetch_add(1, Ordering::Release);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let (g, sh) = (g.clone(), sh.clone());
            std::thread::spawn(move || writer(t, g, sh))
        })
        .collect();
    let mut model = Model::new();
    for w in writers {
        model.extend(w.join().unwrap());
    }
    sh.done.store(true, Ordering::Release);
    for s in searchers {
        s.join().unwrap();
    }
    maintainer.join().unwrap();
    let all_ids: Vec<u64> = sh.versions.lock().unwrap().keys().copied().collect();
    let dead = sh.dead.lock().unwrap().len();
    println!(
        "{} live, {dead} deleted, {} searches, {} flush+compact rounds, {} segments",
        model.len(),
        searches.load(Ordering::Relaxed),
        maint_rounds.load(Ordering::Relaxed),
        g.stats().segments
    );
    assert!(
        searches.load(Ordering::Relaxed) >= MIN_SEARCHES
            && maint_rounds.load(Ordering::Relaxed) >= MIN_ROUNDS
    );
    check_final(&g, &model, &all_ids, "after the run");
    drop(g);
    drop(engine);
    let engine = Engine::open(tmp.path(), options()).unwrap();
    let g = engine.gallery("g").unwrap();
    check_final(&g, &model, &all_ids, "reopened");
}

/// A merge in progress does not hold up a flush: the compactor and the
/// flusher take locks of their own. (With one lock, a merge of several
/// seconds made inserts stall once the memtables filled behind the flush
/// waiting for it.) The merge is held when it creates its segment; a flush
/// of newer rows must finish meanwhile, and the gallery then holds every row,
/// also after reopening.
#[test]
fn a_flush_completes_while_a_merge_is_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let fs = FaultyFs::new();
    let engine = Engine::open_with_fs(&root, opts(false, 1 << 20), fs.clone()).unwrap();
    let g = create(&engine, "g", 128);
    let mut rng = Rng(23);
    let mut model = Model::new();
    let mut insert = |first: u64, model: &mut Model| {
        let batch: Vec<Embedding> = (first..first + 100)
            .map(|id| Embedding {
                id,
                subject: format!("s{}", id / 4),
                vector: rng.vector(),
            })
            .collect();
        g.insert(&batch).unwrap();
        model.extend(batch.into_iter().map(|e| (e.id, e)));
    };
    // Two small segments, which a compaction merges.
    for k in 0..2 {
        insert(k * 100, &mut model);
        g.flush().unwrap();
    }
    // The merge's segment takes the next file number: after the highest of
    // the WAL files and segments (the memtable is empty, so the compaction's
    // own flush writes nothing).
    let gdir = gallery_dir(&root, "g");
    let number = |p: &std::path::Path| {
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        u64::from_str_radix(name.split('-').nth(1).unwrap(), 16).unwrap()
    };
    let highest = files_like(&gdir, "wal-", ".log")
        .iter()
        .chain(&files_like(&gdir, "seg-", ".vseg"))
        .map(|p| number(p))
        .max()
        .unwrap();
    let hold = fs.hold(&format!("seg-{:016x}.vseg", highest + 1));
    std::thread::scope(|s| {
        let merging = s.spawn(|| g.compact());
        hold.wait_reached();
        insert(200, &mut model);
        let (tx, rx) = std::sync::mpsc::channel();
        let flushing = &g;
        s.spawn(move || tx.send(flushing.flush().map(|r| r.after.segments)));
        let flushed = rx.recv_timeout(std::time::Duration::from_secs(120));
        // Released before asserting: a failure must not leave the merge held.
        hold.release();
        let segments = flushed.expect("the flush waited for the merge").unwrap();
        assert_eq!(segments, 3, "the two being merged and the flushed one");
        merging.join().unwrap().unwrap();
    });
    assert_eq!(
        g.stats().segments,
        2,
        "the merged segment and the flushed one"
    );
    let ids: Vec<u64> = model.keys().copied().collect();
    assert_contents(&g, &model, ids.clone(), "after the merge and the flush");
    drop(g);
    drop(engine);
    let engine = Engine::open_with_fs(&root, opts(false, 1 << 20), fs).unwrap();
    let g = engine.gallery("g").unwrap();
    assert_contents(&g, &model, ids, "reopened");
}

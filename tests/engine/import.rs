//! Bulk import (`Gallery::import`): an imported gallery answers exactly as
//! the same rows inserted through the write path; a bad row, ids given twice,
//! ids the gallery holds or a malformed source refuse the whole import and
//! leave the gallery's files and answers as they were; `replace` replaces;
//! writes made during an import survive it and a reopen; and an import
//! killed at random moments leaves the gallery exactly as before or exactly
//! as after.

use crate::support::{
    Model, all_files, check_search, create, dyadic_vector_of, gallery_dir, mix, opts, rerun_self,
    subject_count,
};
use std::borrow::Cow;
use std::ops::Range;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use visage_engine::{
    Embedding, Engine, EngineOptions, Error, Gallery, ImportOptions, ImportSource, Result,
};
use visage_tests::Rng;
use visage_tests::faults::FaultyFs;

/// Rows in memory, as an import source.
struct Mem {
    dim: usize,
    vectors: Vec<f32>,
    subjects: Vec<String>,
    ids: Option<Vec<u64>>,
}

impl ImportSource for Mem {
    fn rows(&self) -> usize {
        self.vectors.len() / self.dim
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn vector(&self, row: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.vectors[row * self.dim..(row + 1) * self.dim]);
    }
    fn subjects(&self, range: Range<usize>) -> Result<Vec<String>> {
        Ok(
            self.subjects[range.start.min(self.subjects.len())..range.end.min(self.subjects.len())]
                .to_vec(),
        )
    }
    fn ids(&self) -> Result<Option<Cow<'_, [u64]>>> {
        Ok(self.ids.as_deref().map(Cow::Borrowed))
    }
}

impl Mem {
    /// Rows `ids` of dyadic vectors (exact distances), subject `p{id % subjects}`.
    fn of(seed: u64, ids: Range<u64>, subjects: u64, dim: usize) -> Mem {
        let mut rng = Rng(seed);
        let mut vectors = Vec::new();
        let mut names = Vec::new();
        for id in ids.clone() {
            vectors.extend(dyadic_vector_of(&mut rng, dim));
            names.push(format!("p{}", id % subjects));
        }
        Mem {
            dim,
            vectors,
            subjects: names,
            ids: Some(ids.collect()),
        }
    }

    fn embeddings(&self) -> Vec<Embedding> {
        let ids = self.ids.as_ref().expect("ids");
        (0..self.rows())
            .map(|r| Embedding {
                id: ids[r],
                subject: self.subjects[r].clone(),
                vector: self.vectors[r * self.dim..(r + 1) * self.dim].to_vec(),
            })
            .collect()
    }
}

/// Engine options whose segments hold about `rows` rows of `dim` values.
fn small_segments(rows: u64, dim: usize) -> EngineOptions {
    let mut o = opts(false, 1 << 17);
    o.gallery.compaction.max_segment_bytes = rows * (5 * dim as u64 + 48);
    o
}

fn insert_all(g: &Gallery, rows: &[Embedding]) {
    for b in rows.chunks(5000) {
        g.insert(b).unwrap();
    }
}

fn probes(seed: u64, n: usize, dim: usize) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    (0..n).map(|_| dyadic_vector_of(&mut rng, dim)).collect()
}

/// Every probe's top 10 in `g` is the model's, exactly.
fn check_answers(g: &Gallery, model: &Model, probes: &[Vec<f32>], ctx: &str) {
    let hits = g.search(probes, 10).unwrap();
    for (i, (h, p)) in hits.iter().zip(probes).enumerate() {
        check_search(h, model, p, 10, true, &format!("{ctx}: probe {i}"));
    }
    let st = g.stats();
    assert_eq!(st.live, model.len() as u64, "{ctx}: live rows");
    assert_eq!(st.subjects, subject_count(model), "{ctx}: subjects");
}

#[test]
fn an_imported_gallery_answers_as_the_same_rows_inserted() {
    for dim in [128, 96] {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), small_segments(3000, dim)).unwrap();
        let (ins, imp) = (create(&engine, "ins", dim), create(&engine, "imp", dim));
        let mut model = Model::new();
        // Rows before the import, inserted in both, half of them flushed.
        let before = Mem::of(1, 0..600, 40, dim).embeddings();
        insert_all(&ins, &before[..300]);
        insert_all(&imp, &before[..300]);
        ins.flush().unwrap();
        imp.flush().unwrap();
        insert_all(&ins, &before[300..]);
        insert_all(&imp, &before[300..]);
        let src = Mem::of(2, 600..20_600, 900, dim);
        let rows = src.embeddings();
        insert_all(&ins, &rows);
        let rep = imp.import(&src, ImportOptions::default()).unwrap();
        assert_eq!(rep.rows, 20_000);
        assert_eq!(rep.replaced, 0);
        assert!(rep.segments >= 6, "segments of about 3,000 rows: {rep:?}");
        for e in before.iter().chain(&rows) {
            model.insert(e.id, e.clone());
        }
        assert_eq!(rep.subjects, subject_count(&model), "the report's subjects");
        let ps = probes(3, 40, dim);
        check_answers(&ins, &model, &ps, &format!("inserted, {dim}"));
        check_answers(&imp, &model, &ps, &format!("imported, {dim}"));
        assert_eq!(
            imp.search(&ps, 10).unwrap(),
            ins.search(&ps, 10).unwrap(),
            "same answers, {dim}"
        );
        let some: Vec<u64> = (0..20_600).step_by(97).collect();
        assert_eq!(imp.get(&some), ins.get(&some), "get, {dim}");
        assert_eq!(
            imp.stats().memtable_rows,
            0,
            "the import flushed the memtable"
        );
        drop((ins, imp));
        drop(engine);
        let engine = Engine::open(dir.path(), small_segments(3000, dim)).unwrap();
        let imp = engine.gallery("imp").unwrap();
        check_answers(&imp, &model, &ps, &format!("imported, reopened, {dim}"));
        // Assigned ids continue above the imported ones.
        let (_, fresh) = imp
            .insert_rows(None, &["new"], &[0.25f32; 1].repeat(dim))
            .unwrap();
        assert!(fresh[0] > 20_599, "{fresh:?}");
    }
}

/// The gallery's files (names and lengths) and answers.
fn fingerprint(root: &std::path::Path, g: &Gallery, ps: &[Vec<f32>]) -> String {
    let mut files: Vec<String> = all_files(&gallery_dir(root, "g"))
        .iter()
        .map(|p| {
            let len = std::fs::metadata(p).map_or(0, |m| m.len());
            format!("{}:{len}", p.file_name().unwrap().to_string_lossy())
        })
        .collect();
    files.sort();
    format!(
        "{files:?} {:?} {:?}",
        g.stats().live,
        g.search(ps, 5).unwrap()
    )
}

#[test]
fn a_bad_import_is_refused_whole_and_changes_nothing() {
    const DIM: usize = 128;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small_segments(10_000, DIM)).unwrap();
    let g = create(&engine, "g", DIM);
    insert_all(&g, &Mem::of(1, 0..1000, 50, DIM).embeddings()[..600]);
    g.flush().unwrap();
    insert_all(&g, &Mem::of(1, 0..1000, 50, DIM).embeddings()[600..]);
    let ps = probes(4, 8, DIM);
    let before = fingerprint(dir.path(), &g, &ps);
    let unchanged = |what: &str| {
        assert_eq!(
            fingerprint(dir.path(), &g, &ps),
            before,
            "{what}: files or answers changed"
        );
    };
    let good = || Mem::of(2, 10_000..90_000, 3000, DIM);

    // NaN at row 73,421: seven segments were written before it, and removed.
    let mut src = good();
    src.vectors[73_421 * DIM + 5] = f32::NAN;
    let e = g.import(&src, ImportOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NonFiniteValue {
                index: 73_421,
                position: 5,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("vectors[73421]"), "{e}");
    unchanged("NaN");

    // A subjects list one short.
    let mut src = good();
    src.subjects.pop();
    let e = g.import(&src, ImportOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::BatchShape {
                what: "subjects",
                ..
            }
        ),
        "{e}"
    );
    unchanged("subjects short");

    // A bad subject names its row.
    let mut src = good();
    src.subjects[41_000] = "tab\there".into();
    let e = g.import(&src, ImportOptions::default()).unwrap_err();
    assert!(
        matches!(e, Error::InvalidSubject { index: 41_000, .. }),
        "{e}"
    );
    unchanged("bad subject");

    // An id twice, at rows 10 and 50,000.
    let mut src = good();
    src.ids.as_mut().unwrap()[50_000] = 10_010;
    let e = g.import(&src, ImportOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DuplicateId {
                id: 10_010,
                first: 10,
                second: 50_000,
                ..
            }
        ),
        "{e}"
    );
    unchanged("duplicate id");

    // Ids the gallery holds (rows 3 and 7 of the source), without replace.
    let mut src = good();
    src.ids.as_mut().unwrap()[3] = 999;
    src.ids.as_mut().unwrap()[7] = 5;
    let e = g.import(&src, ImportOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::IdsExist {
                id: 999,
                row: 3,
                count: 2
            }
        ),
        "{e}"
    );
    unchanged("ids held");

    // The wrong dimension; no rows.
    let mut src = Mem::of(2, 0..10, 3, 96);
    src.ids = None;
    let e = g.import(&src, ImportOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DimensionMismatch {
                expected: 128,
                got: 96,
                ..
            }
        ),
        "{e}"
    );
    let empty = Mem::of(2, 0..0, 3, DIM);
    assert!(matches!(
        g.import(&empty, ImportOptions::default()),
        Err(Error::BatchShape { .. })
    ));
    unchanged("shape");

    // And the good one goes in.
    let rep = g.import(&good(), ImportOptions::default()).unwrap();
    assert_eq!((rep.rows, g.stats().live), (80_000, 81_000));
}

#[test]
fn replace_replaces_the_rows_of_held_ids() {
    const DIM: usize = 128;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small_segments(400, DIM)).unwrap();
    let g = create(&engine, "g", DIM);
    let mut model = Model::new();
    let old = Mem::of(1, 0..1000, 50, DIM).embeddings();
    insert_all(&g, &old[..700]);
    g.flush().unwrap();
    insert_all(&g, &old[700..]);
    for e in &old {
        model.insert(e.id, e.clone());
    }
    // Ids 500..1500: half held (in a segment and in the memtable), half new;
    // subjects "q…": subjects p… whose every row is replaced leave.
    let mut src = Mem::of(2, 500..1500, 30, DIM);
    for s in &mut src.subjects {
        *s = s.replace('p', "q");
    }
    let rep = g.import(&src, ImportOptions { replace: true }).unwrap();
    assert_eq!((rep.rows, rep.replaced), (1000, 500));
    for e in src.embeddings() {
        model.insert(e.id, e);
    }
    assert_eq!(rep.subjects, subject_count(&model));
    let ps = probes(5, 30, DIM);
    check_answers(&g, &model, &ps, "replaced");
    assert_eq!(g.get(&[600])[0].subject, model[&600].subject);
    drop(g);
    drop(engine);
    let engine = Engine::open(dir.path(), small_segments(400, DIM)).unwrap();
    check_answers(
        &engine.gallery("g").unwrap(),
        &model,
        &ps,
        "replaced, reopened",
    );
}

#[test]
fn writes_during_an_import_survive_it_and_a_reopen() {
    const DIM: usize = 128;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), small_segments(5000, DIM)).unwrap();
    let g = create(&engine, "g", DIM);
    let old = Mem::of(1, 0..2000, 50, DIM).embeddings();
    insert_all(&g, &old);
    let stop = Arc::new(AtomicBool::new(false));
    // A writer inserting new rows and deleting old ones until the import is done.
    let writer = {
        let (g, stop) = (g.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut done: Vec<Embedding> = Vec::new();
            let mut deleted = Vec::new();
            let mut rng = Rng(9);
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) || n < 20 {
                let batch: Vec<Embedding> = (0..10)
                    .map(|i| Embedding {
                        id: 1_000_000 + n * 10 + i,
                        subject: format!("w{}", n % 7),
                        vector: dyadic_vector_of(&mut rng, DIM),
                    })
                    .collect();
                g.insert(&batch).unwrap();
                done.extend(batch);
                g.delete(&[n], &[]).unwrap();
                deleted.push(n);
                n += 1;
            }
            (done, deleted)
        })
    };
    let src = Mem::of(2, 10_000..50_000, 2000, DIM);
    g.import(&src, ImportOptions::default()).unwrap();
    stop.store(true, Ordering::SeqCst);
    let (written, deleted) = writer.join().unwrap();
    let mut model = Model::new();
    for e in old.into_iter().chain(src.embeddings()).chain(written) {
        model.insert(e.id, e);
    }
    for id in deleted {
        model.remove(&id);
    }
    let ps = probes(6, 30, DIM);
    check_answers(&g, &model, &ps, "after the import");
    drop(g);
    drop(engine);
    let engine = Engine::open(dir.path(), small_segments(5000, DIM)).unwrap();
    let g = engine.gallery("g").unwrap();
    check_answers(&g, &model, &ps, "reopened");
    let ids: Vec<u64> = model.keys().copied().collect();
    assert_eq!(g.get(&ids).len(), ids.len(), "every row is there");
}

const CHILD_ENV: &str = "VISAGE_IMPORT_CHILD";
const KILLS: u64 = 8;
const BEFORE: u64 = 1000;
const IMPORTED: Range<u64> = 100_000..160_000;

/// The child: import [`IMPORTED`] (seeded by the run) into the gallery, then
/// print how long it took.
fn import_child(dir: &str, seed: u64) {
    let engine = Engine::open(dir, small_segments(8000, 128)).unwrap();
    let g = engine.gallery("g").unwrap();
    let t = Instant::now();
    g.import(
        &Mem::of(seed, IMPORTED, 5000, 128),
        ImportOptions::default(),
    )
    .unwrap();
    println!("IMPORTED {}", t.elapsed().as_millis());
}

#[test]
fn a_killed_import_leaves_the_gallery_before_or_after() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let seed = std::env::var("VISAGE_IMPORT_SEED")
            .unwrap()
            .parse()
            .unwrap();
        import_child(&dir, seed);
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut rng = Rng(77);
    let old = Mem::of(1, 0..BEFORE, 50, 128);
    let ps = probes(8, 10, 128);
    let mut outcomes = (0, 0);
    // How long an import takes here (an unkilled run), so kills fall inside it.
    let mut span_ms = 0u64;
    for run in 0..=KILLS {
        let dir = root.path().join(format!("run{run}"));
        {
            let engine = Engine::open(&dir, small_segments(8000, 128)).unwrap();
            insert_all(&create(&engine, "g", 128), &old.embeddings());
        }
        let seed = mix(1234, run);
        let mut child = rerun_self("import::a_killed_import_leaves_the_gallery_before_or_after")
            .env(CHILD_ENV, &dir)
            .env("VISAGE_IMPORT_SEED", seed.to_string())
            .stdout(Stdio::piped())
            .stderr(if run == 0 {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
        if run == 0 {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            span_ms = text
                .split("IMPORTED ")
                .nth(1)
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("the unkilled import finished: {text}"));
        } else {
            // A random moment: opening, writing segments, installing, done.
            std::thread::sleep(Duration::from_millis(rng.below(span_ms * 3 / 2 + 50)));
            let _ = child.kill();
            let _ = child.wait();
        }
        let engine = Engine::open(&dir, small_segments(8000, 128)).unwrap();
        let g = engine.gallery("g").unwrap();
        let mut model = Model::new();
        for e in old.embeddings() {
            model.insert(e.id, e);
        }
        let live = g.stats().live;
        if live == BEFORE {
            outcomes.0 += 1;
        } else {
            assert_eq!(
                live,
                BEFORE + IMPORTED.end - IMPORTED.start,
                "run {run}: half an import"
            );
            outcomes.1 += 1;
            for e in Mem::of(seed, IMPORTED, 5000, 128).embeddings() {
                model.insert(e.id, e);
            }
        }
        check_answers(&g, &model, &ps, &format!("run {run}, {live} rows"));
        let sample: Vec<u64> = model.keys().copied().step_by(331).collect();
        let got = g.get(&sample);
        for (e, id) in got.iter().zip(&sample) {
            assert_eq!(e.vector, model[id].vector, "run {run}: id {id}");
        }
        // Nothing of a killed import is left on disk.
        let segs = crate::support::files_like(&gallery_dir(&dir, "g"), "seg-", ".vseg");
        assert_eq!(
            segs.len() as u64,
            g.stats().segments,
            "run {run}: orphan segments"
        );
        if run == 0 {
            assert_eq!(live, BEFORE + 60_000, "the unkilled import completed");
        }
    }
    println!(
        "kills: {} before, {} after the import",
        outcomes.0,
        outcomes.1 - 1
    );
}

/// An import the disk has no room for is refused before anything is
/// written, saying how many bytes it needs and how many are free; with room
/// again, the same import goes in.
#[test]
fn an_import_without_room_on_the_disk_is_refused_whole_before_writing() {
    const DIM: usize = 128;
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new();
    let engine = Engine::open_with_fs(dir.path(), small_segments(10_000, DIM), fs.clone()).unwrap();
    let g = create(&engine, "g", DIM);
    insert_all(&g, &Mem::of(1, 0..500, 50, DIM).embeddings());
    g.flush().unwrap();
    let ps = probes(5, 8, DIM);
    let before = fingerprint(dir.path(), &g, &ps);
    // 30,000 rows of 128 values take about 20 MB as segments; 5 MB are free.
    let src = Mem::of(3, 10_000..40_000, 1000, DIM);
    fs.set_available(Some(5 << 20));
    let e = g.import(&src, ImportOptions::default()).unwrap_err();
    match &e {
        Error::NoSpace {
            what,
            needed,
            available,
            ..
        } => {
            assert_eq!(*what, "import");
            assert_eq!(*available, 5 << 20);
            assert!(
                (30_000 * 5 * DIM as u64..40_000 * 5 * DIM as u64).contains(needed),
                "needs {needed} bytes"
            );
        }
        other => panic!("not NoSpace: {other:?}"),
    }
    assert!(e.is_no_space());
    let msg = e.to_string();
    assert!(
        msg.contains("not enough free disk space for import") && msg.contains("needs about"),
        "{msg}"
    );
    assert_eq!(
        fingerprint(dir.path(), &g, &ps),
        before,
        "the refused import changed files or answers"
    );
    fs.set_available(None);
    let rep = g.import(&src, ImportOptions::default()).unwrap();
    assert_eq!((rep.rows, g.stats().live), (30_000, 30_500));
}

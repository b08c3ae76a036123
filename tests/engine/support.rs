//! Helpers of the engine suites: the brute-force reference for search and
//! identification, exact-arithmetic vector generators, bit-exact comparisons,
//! gallery file helpers, and re-running this test binary as a child process.
//!
//! The reference is deliberately naive (f64, full sort over a `BTreeMap`
//! model) so that it shares no code or shortcut with the engine.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use visage_engine::{DIM, Embedding, Engine, EngineOptions, Gallery, GallerySpec, Hit};
use visage_tests::{Rng, embedding, l2sq_f64};

/// The model every suite checks against: id → embedding.
pub type Model = BTreeMap<u64, Embedding>;

/// Engine options with the given maintenance mode and flush threshold.
pub fn opts(background: bool, memtable_rows: usize) -> EngineOptions {
    let mut o = EngineOptions::default();
    o.gallery.background = background;
    o.gallery.memtable_rows = memtable_rows;
    o
}

/// The dimensions the exactness suites run at: the default, the other one
/// with kernels specialised for it, and one that takes the generic path.
pub const DIMS: [usize; 3] = [128, 512, 96];

/// A new gallery `name` of dimension `dim` (no model, not normalising).
pub fn create(engine: &Engine, name: &str, dim: usize) -> Arc<Gallery> {
    let g = engine
        .create_gallery_with(name, &GallerySpec::with_dim(dim))
        .unwrap();
    assert_eq!(g.dim(), dim, "dimension of the new gallery {name}");
    g
}

/// A seed derived from two numbers (splitmix of a mix), for per-item data.
pub fn mix(a: u64, b: u64) -> u64 {
    Rng(a ^ b.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64()
}

/// A vector of [`DIM`] multiples of 1/4 in [-4, 4] ([`dyadic_vector_of`]).
pub fn dyadic_vector(rng: &mut Rng) -> Vec<f32> {
    dyadic_vector_of(rng, DIM)
}

/// A vector of `dim` multiples of 1/4 in [-4, 4], with the occasional `-0.0`.
///
/// Every squared difference, square and product is a multiple of 1/16 of at
/// most 64, so every partial sum of `dim` of them is a multiple of 1/16 of at
/// most 2^6 · `dim` (2^15 at 512, 2^17 at 2,048): it fits in the 24 bits of an f32
/// mantissa for any dimension up to 2^14. Any kernel (any summation order, FMA
/// or not, direct or through norms) therefore computes every distance
/// *exactly* in f32: the reference ranking is unambiguous and ties are
/// frequent, which exercises the tie-break by id.
pub fn dyadic_vector_of(rng: &mut Rng, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|_| match rng.below(40) {
            0 => -0.0,
            _ => (rng.below(33) as f32 - 16.0) / 4.0,
        })
        .collect()
}

/// `center` plus a small dyadic perturbation (still exact, see [`dyadic_vector`]).
pub fn dyadic_near(rng: &mut Rng, center: &[f32]) -> Vec<f32> {
    center
        .iter()
        .map(|&c| (c + (rng.below(5) as f32 - 2.0) / 4.0).clamp(-4.0, 4.0))
        .collect()
}

/// `center` plus uniform noise of amplitude `noise` (continuous values).
pub fn continuous_near(rng: &mut Rng, center: &[f32], noise: f32) -> Vec<f32> {
    center
        .iter()
        .map(|&c| c + (rng.f32() * 2.0 - 1.0) * noise)
        .collect()
}

/// Bit patterns (so `-0.0` differs from `0.0`, unlike `==`).
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Assert that `got` is `want` with bit-identical vector bytes.
#[track_caller]
pub fn assert_same(got: &Embedding, want: &Embedding, ctx: &str) {
    assert_eq!(got.id, want.id, "{ctx}: id");
    assert_eq!(
        got.subject, want.subject,
        "{ctx}: subject of id {}",
        want.id
    );
    assert!(
        bits(&got.vector) == bits(&want.vector),
        "{ctx}: vector bytes of id {} differ",
        want.id
    );
}

/// Assert that the gallery holds exactly `model` among `ids` (get of every id,
/// bit-identical), and that its live count and subject count agree.
#[track_caller]
pub fn assert_contents(
    g: &visage_engine::Gallery,
    model: &Model,
    ids: impl IntoIterator<Item = u64>,
    ctx: &str,
) {
    let ids: Vec<u64> = ids.into_iter().collect();
    let got = g.get(&ids);
    let want: Vec<&Embedding> = ids.iter().filter_map(|id| model.get(id)).collect();
    let got_ids: Vec<u64> = got.iter().map(|e| e.id).collect();
    let want_ids: Vec<u64> = want.iter().map(|e| e.id).collect();
    assert_eq!(got_ids, want_ids, "{ctx}: ids returned by get");
    for (g, w) in got.iter().zip(want) {
        assert_same(g, w, ctx);
    }
    let s = g.stats();
    assert_eq!(s.live, model.len() as u64, "{ctx}: stats().live");
    assert_eq!(s.subjects, subject_count(model), "{ctx}: stats().subjects");
}

/// Distinct subjects of the model.
pub fn subject_count(model: &Model) -> u64 {
    let mut s: Vec<&str> = model.values().map(|e| e.subject.as_str()).collect();
    s.sort_unstable();
    s.dedup();
    s.len() as u64
}

/// One reference row: f64 distance, id, and the f64 sum of the two squared
/// norms (the scale of the rounding error a norms-based kernel may make).
#[derive(Debug, Clone, Copy)]
struct RefRow {
    d: f64,
    id: u64,
    scale: f64,
}

fn norm2(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64 * x as f64).sum()
}

/// Every live row ranked by (f64 distance, id).
fn ranking(model: &Model, probe: &[f32]) -> Vec<RefRow> {
    let nq = norm2(probe);
    let mut all: Vec<RefRow> = model
        .values()
        .map(|e| RefRow {
            d: l2sq_f64(probe, &e.vector),
            id: e.id,
            scale: nq + norm2(&e.vector),
        })
        .collect();
    all.sort_by(|a, b| a.d.total_cmp(&b.d).then(a.id.cmp(&b.id)));
    all
}

/// How far an f32 distance may be from the f64 one: 1e-4 relative, plus a
/// term for the cancellation a norms-based kernel suffers on near matches.
fn tol(r: &RefRow) -> f64 {
    1e-4 * r.d + 1e-6 * r.scale
}

/// Counts of a tolerant comparison, to show that near-ties were rare.
#[derive(Debug, Default, Clone, Copy)]
pub struct Compared {
    /// Result positions compared.
    pub positions: usize,
    /// Positions where the engine's id differed from the f64 reference's and
    /// the two f64 distances were within tolerance (an ambiguous near-tie).
    pub ambiguous: usize,
}

impl std::ops::AddAssign for Compared {
    fn add_assign(&mut self, o: Compared) {
        self.positions += o.positions;
        self.ambiguous += o.ambiguous;
    }
}

/// The engine's hits are sorted strictly by (distance, id).
#[track_caller]
fn assert_sorted(hits: &[Hit], ctx: &str) {
    for w in hits.windows(2) {
        let ord = w[0]
            .distance
            .total_cmp(&w[1].distance)
            .then(w[0].id.cmp(&w[1].id));
        assert!(
            ord.is_lt(),
            "{ctx}: hits not ascending by (distance, id): {:?} then {:?}",
            (w[0].id, w[0].distance),
            (w[1].id, w[1].distance)
        );
    }
}

/// Search results must equal brute force over `model`.
///
/// With `exact` (data from [`dyadic_vector`]), ids must be equal in order and
/// distances bit-equal. Otherwise ids must be equal in order except at
/// positions where the f64 distances of the engine's id and the reference's
/// id are within tolerance (an f32 near-tie), and every distance must be
/// within tolerance of the f64 one.
#[track_caller]
pub fn check_search(
    hits: &[Hit],
    model: &Model,
    probe: &[f32],
    k: usize,
    exact: bool,
    ctx: &str,
) -> Compared {
    let all = ranking(model, probe);
    let by_id: HashMap<u64, RefRow> = all.iter().map(|r| (r.id, *r)).collect();
    let want = &all[..k.min(all.len())];
    assert_eq!(hits.len(), want.len(), "{ctx}: k={k}, number of hits");
    assert_sorted(hits, ctx);
    let mut c = Compared::default();
    let mut seen = std::collections::HashSet::new();
    for (i, (h, w)) in hits.iter().zip(want).enumerate() {
        c.positions += 1;
        assert!(seen.insert(h.id), "{ctx}: id {} returned twice", h.id);
        let Some(r) = by_id.get(&h.id) else {
            panic!("{ctx}: hit {i} is id {}, which is not live", h.id)
        };
        assert_eq!(
            h.subject, model[&h.id].subject,
            "{ctx}: subject of hit {i} (id {})",
            h.id
        );
        if exact {
            assert_eq!(
                (h.id, h.distance),
                (w.id, w.d as f32),
                "{ctx}: k={k}, hit {i}: engine (id, distance) vs brute force"
            );
            continue;
        }
        assert!(
            (h.distance as f64 - r.d).abs() <= tol(r),
            "{ctx}: hit {i} id {}: distance {} vs f64 {}",
            h.id,
            h.distance,
            r.d
        );
        if h.id != w.id {
            assert!(
                (r.d - w.d).abs() <= tol(r) + tol(w),
                "{ctx}: k={k}, hit {i}: engine id {} (f64 distance {}) but brute force id {} (f64 distance {})",
                h.id,
                r.d,
                w.id,
                w.d
            );
            c.ambiguous += 1;
        }
    }
    c
}

/// Identification must equal brute force: the `k` best distinct subjects
/// ranked by each subject's best (distance, id), each with that best row.
/// `exact` as in [`check_search`].
#[track_caller]
pub fn check_identify(
    hits: &[Hit],
    model: &Model,
    probe: &[f32],
    k: usize,
    exact: bool,
    ctx: &str,
) -> Compared {
    let all = ranking(model, probe);
    let by_id: HashMap<u64, RefRow> = all.iter().map(|r| (r.id, *r)).collect();
    // First row of each subject in the (d, id) order is its best.
    let mut best: Vec<RefRow> = Vec::new();
    let mut best_of: HashMap<&str, RefRow> = HashMap::new();
    for r in &all {
        let s = model[&r.id].subject.as_str();
        if !best_of.contains_key(s) {
            best_of.insert(s, *r);
            best.push(*r);
        }
    }
    let want = &best[..k.min(best.len())];
    assert_eq!(
        hits.len(),
        want.len(),
        "{ctx}: identify k={k} over {} subjects, number of candidates",
        best.len()
    );
    assert_sorted(hits, ctx);
    let mut c = Compared::default();
    let mut seen = std::collections::HashSet::new();
    for (i, (h, w)) in hits.iter().zip(want).enumerate() {
        c.positions += 1;
        assert!(
            seen.insert(h.subject.clone()),
            "{ctx}: subject {:?} returned twice",
            h.subject
        );
        let Some(r) = by_id.get(&h.id) else {
            panic!("{ctx}: candidate {i} is id {}, which is not live", h.id)
        };
        assert_eq!(
            h.subject, model[&h.id].subject,
            "{ctx}: candidate {i}: id {} does not belong to the subject returned",
            h.id
        );
        if exact {
            assert_eq!(
                (h.subject.as_str(), h.id, h.distance),
                (model[&w.id].subject.as_str(), w.id, w.d as f32),
                "{ctx}: identify k={k}, candidate {i}: engine (subject, id, distance) vs brute force"
            );
            continue;
        }
        assert!(
            (h.distance as f64 - r.d).abs() <= tol(r),
            "{ctx}: candidate {i} id {}: distance {} vs f64 {}",
            h.id,
            h.distance,
            r.d
        );
        // The row shown is the subject's best, up to a near-tie inside the subject.
        let sb = best_of[h.subject.as_str()];
        assert!(
            h.id == sb.id || (r.d - sb.d).abs() <= tol(r) + tol(&sb),
            "{ctx}: candidate {i} ({:?}) shows id {} (f64 {}) but its best is id {} (f64 {})",
            h.subject,
            h.id,
            r.d,
            sb.id,
            sb.d
        );
        if h.id != w.id {
            assert!(
                (r.d - w.d).abs() <= tol(r) + tol(w),
                "{ctx}: identify k={k}, candidate {i}: engine {:?} (f64 {}) but brute force {:?} (f64 {})",
                h.subject,
                r.d,
                model[&w.id].subject,
                w.d
            );
            c.ambiguous += 1;
        }
    }
    c
}

/// The directory of gallery `name` under data directory `root`.
pub fn gallery_dir(root: &Path, name: &str) -> PathBuf {
    root.join("galleries").join(name)
}

/// Files in `dir` whose names start with `prefix` and end with `suffix`, sorted by name.
pub fn files_like(dir: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(prefix) && n.ends_with(suffix)
        })
        .collect();
    v.sort();
    v
}

/// The WAL file being appended to (the highest-numbered one).
pub fn last_wal(gdir: &Path) -> PathBuf {
    files_like(gdir, "wal-", ".log")
        .pop()
        .expect("a gallery always has a WAL file")
}

/// Every regular file under `dir`, recursively.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A command re-running this test binary with only the test `name`
/// (module path inside the binary, e.g. `crash::child`), for tests that need
/// a second process. The child recognises its role by an environment variable
/// the caller sets.
pub fn rerun_self(name: &str) -> Command {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut c = Command::new(exe);
    c.args([name, "--exact", "--nocapture", "--test-threads=1"]);
    c
}

/// A gallery "g" in `dir` on a fault-injecting file system (no fault armed),
/// holding rows `ids` (subject `p{id % subjects}`), which are also put in `model`.
pub fn faulty_gallery(
    dir: &Path,
    rng: &mut Rng,
    model: &mut Model,
    ids: std::ops::Range<u64>,
    subjects: u64,
) -> (
    std::sync::Arc<visage_tests::faults::FaultyFs>,
    Engine,
    std::sync::Arc<visage_engine::Gallery>,
) {
    let fs = visage_tests::faults::FaultyFs::new();
    let engine = Engine::open_with_fs(dir, opts(false, 1 << 17), fs.clone()).unwrap();
    let g = engine.create_gallery("g").unwrap();
    let a: Vec<Embedding> = ids
        .map(|i| embedding(rng, i, &format!("p{}", i % subjects)))
        .collect();
    g.insert(&a).unwrap();
    model.extend(a.into_iter().map(|e| (e.id, e)));
    (fs, engine, g)
}

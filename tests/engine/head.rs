//! The learned scoring head through the gallery's API, each property checked
//! against a reference that shares no code with the engine:
//!
//! - Training is a function of the gallery's contents and the seed alone:
//!   bit-identical weights, bias, thresholds and statistics across runs,
//!   storage layouts (segment and memtable vs memtable only) and rayon thread
//!   counts (a child process with another count); another seed, another head.
//! - The calibrated thresholds, the head's and the plain distance's, accept
//!   the target fraction of *fresh* impostor pairs (images of people never
//!   enrolled against enrolled embeddings) within a binomial bound, and the
//!   reported TAR holds on fresh genuine pairs.
//! - A head survives reopening, retraining replaces it (in memory and on
//!   disk), a damaged `HEAD` file fails the open with an error naming it, and
//!   a missing one means no head.
//! - `verify`, `identify_open` and `search_with` agree with brute force over
//!   the live embeddings, computed here in f64 from the published `HeadInfo`
//!   parameters: ids may differ from the reference only at f32 near-ties, and
//!   every probability is σ(logit) within the f32 rounding bound; head
//!   ranking also at 512 and 96 values a vector (one weight per dimension).
//! - Decisions follow the threshold asked for, else the calibrated one.
//! - Subjects enrolled after training are recognised without retraining.
//! - On anisotropic data the head's held-out TAR at FAR 1e-3 beats plain L2's;
//!   on isotropic data it is within sampling noise of it.
//!
//! The galleries are small (a few thousand embeddings) and `max_pairs` is
//! bounded so the module runs in seconds at the test profile's opt-level.

use crate::support::{Model, check_identify, check_search, create, gallery_dir, opts, rerun_self};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use visage_engine::synth::{Nuisance, Probe, SynthConfig, SynthGallery, subject_name};
use visage_engine::{
    DIM, Embedding, Engine, Error, Gallery, HeadInfo, Hit, IdentifyOptions, RankBy, SearchOptions,
    TrainOptions, Verdict, VerifyOptions, VerifyPair, VerifyTarget,
};
use visage_tests::{Rng, l2sq_f64};

/// The one gallery of every fixture.
const G: &str = "faces";

// ---- data and galleries -----------------------------------------------------

fn synth(subjects: usize, nuisance: Nuisance, seed: u64) -> SynthGallery {
    synth_of(DIM, subjects, nuisance, seed)
}

fn synth_of(dim: usize, subjects: usize, nuisance: Nuisance, seed: u64) -> SynthGallery {
    SynthGallery::generate(SynthConfig {
        dim,
        subjects,
        min_images: 6,
        max_images: 10,
        nuisance,
        seed,
    })
}

fn anisotropic(subjects: usize, seed: u64) -> SynthGallery {
    synth(subjects, Nuisance::ANISOTROPIC, seed)
}

fn isotropic(subjects: usize, seed: u64) -> SynthGallery {
    synth(
        subjects,
        Nuisance::isotropic_matching(Nuisance::ANISOTROPIC),
        seed,
    )
}

/// A data directory with one gallery.
struct Fixture {
    dir: tempfile::TempDir,
    engine: Option<Engine>,
    g: Arc<Gallery>,
}

impl Fixture {
    /// `embeddings[..flushed]` in a segment, the rest in the memtable, in a
    /// gallery of their dimension.
    fn new(embeddings: &[Embedding], flushed: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), opts(false, 1 << 20)).unwrap();
        let g = create(&engine, G, embeddings[0].vector.len());
        let (a, b) = embeddings.split_at(flushed);
        for chunk in a.chunks(10_000) {
            g.insert(chunk).unwrap();
        }
        if !a.is_empty() {
            g.flush().unwrap();
        }
        for chunk in b.chunks(10_000) {
            g.insert(chunk).unwrap();
        }
        Fixture {
            dir,
            engine: Some(engine),
            g,
        }
    }

    /// Close and open the data directory again (the same gallery, from disk).
    fn reopen(&mut self) -> Result<(), Error> {
        self.engine = None;
        let e = Engine::open(self.dir.path(), opts(false, 1 << 20))?;
        self.g = e.gallery(G).unwrap();
        self.engine = Some(e);
        Ok(())
    }

    fn close(&mut self) {
        self.engine = None;
    }

    fn head_file(&self) -> std::path::PathBuf {
        gallery_dir(self.dir.path(), G).join("HEAD")
    }
}

fn train_opts(seed: u64, max_pairs: usize, target_far: f64) -> TrainOptions {
    TrainOptions {
        target_far,
        max_pairs,
        seed,
        ..Default::default()
    }
}

fn model_of(embeddings: &[Embedding]) -> Model {
    embeddings.iter().map(|e| (e.id, e.clone())).collect()
}

/// Everything a head decides with, bit for bit (and the statistics it reports).
fn fingerprint(h: &HeadInfo) -> Vec<u64> {
    let mut v: Vec<u64> = h.weights.iter().map(|w| w.to_bits() as u64).collect();
    v.extend(
        [
            h.distance_weight,
            h.bias,
            h.threshold,
            h.logit_threshold,
            h.distance_threshold,
            h.open_logit_threshold,
            h.open_distance_threshold,
        ]
        .map(|x| x.to_bits() as u64),
    );
    v.extend(
        [
            h.target_far,
            h.auc,
            h.tar_at_far,
            h.eer,
            h.distance_auc,
            h.distance_tar_at_far,
            h.distance_eer,
            h.open_tar,
            h.open_distance_tar,
        ]
        .map(f64::to_bits),
    );
    v.extend([
        h.open_probes,
        h.pairs,
        h.heldout_genuine,
        h.heldout_impostor,
        h.seed,
        h.trained as u64,
    ]);
    v
}

// ---- the f64 reference ------------------------------------------------------

/// The head's logit for a pair computed in f64 from the published parameters,
/// and how far an f32 evaluation (any summation order) may be from it.
#[derive(Debug, Clone, Copy)]
struct Score {
    z: f64,
    tol: f64,
}

fn score(h: &HeadInfo, a: &[f32], b: &[f32]) -> Score {
    assert_eq!((a.len(), b.len()), (h.weights.len(), h.weights.len()));
    let (mut z, mut mag, mut d, mut norms) = (h.bias as f64, (h.bias as f64).abs(), 0f64, 0f64);
    for ((&ak, &bk), &wk) in a.iter().zip(b).zip(&h.weights) {
        let (ak, bk) = (ak as f64, bk as f64);
        let x = (ak - bk).abs();
        let t = wk as f64 * x;
        z += t;
        mag += t.abs();
        d += x * x;
        norms += ak * ak + bk * bk;
    }
    let wd = h.distance_weight as f64;
    z += wd * d;
    mag += (wd * d).abs();
    Score {
        z,
        tol: 1e-5 * mag + 1e-6 * wd.abs() * norms + 1e-6,
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The published calibration as (slope, offset) of the logit: P(same) is
/// σ(a·z + b + ln(prior/(1 − prior))) with Platt scaling, σ(z) without.
fn calibration(h: &HeadInfo) -> (f64, f64) {
    match h
        .calibrated
        .as_ref()
        .and_then(|c| c.platt.map(|p| (p, c.prior)))
    {
        Some(((a, b), prior)) => (a, b + (prior / (1.0 - prior)).ln()),
        None => (1.0, 0.0),
    }
}

/// The reported probability of logit `z`, computed here in f64.
fn probability_of(h: &HeadInfo, z: f64) -> f64 {
    let (a, b) = calibration(h);
    sigmoid(a * z + b)
}

/// The logit at which the reported probability is `p`.
fn logit_for(h: &HeadInfo, p: f64) -> f64 {
    let (a, b) = calibration(h);
    ((p / (1.0 - p)).ln() - b) / a
}

/// How far an engine distance may be from the f64 one.
fn dist_tol(d: f64, a: &[f32], b: &[f32]) -> f64 {
    let n: f64 = a.iter().chain(b).map(|&x| x as f64 * x as f64).sum();
    1e-5 * d + 1e-6 * n + 1e-7
}

#[track_caller]
fn assert_probability(h: &HeadInfo, p: Option<f32>, s: Score, ctx: &str) {
    let p = p.unwrap_or_else(|| panic!("{ctx}: no probability although a head is trained"));
    let want = probability_of(h, s.z);
    assert!(
        (p as f64 - want).abs() <= 0.25 * calibration(h).0 * s.tol + 1e-6,
        "{ctx}: probability {p} but the calibrated probability is {want} (logit {})",
        s.z
    );
}

#[track_caller]
fn assert_distance(d: f32, a: &[f32], b: &[f32], ctx: &str) {
    let want = l2sq_f64(a, b);
    assert!(
        (d as f64 - want).abs() <= dist_tol(want, a, b),
        "{ctx}: distance {d} but f64 {want}"
    );
}

/// Every live embedding ranked by the head: f64 logit descending, then id.
fn head_ranking<'m>(h: &HeadInfo, model: &'m Model, probe: &[f32]) -> Vec<(Score, &'m Embedding)> {
    let mut all: Vec<(Score, &Embedding)> = model
        .values()
        .map(|e| (score(h, probe, &e.vector), e))
        .collect();
    all.sort_by(|a, b| b.0.z.total_cmp(&a.0.z).then(a.1.id.cmp(&b.1.id)));
    all
}

/// `search_with(RankBy::Head)` hits against brute force; returns the count of
/// positions that differ from the reference at an f32 near-tie.
#[track_caller]
fn check_head_search(
    hits: &[Hit],
    h: &HeadInfo,
    model: &Model,
    probe: &[f32],
    k: usize,
    ctx: &str,
) -> usize {
    let all = head_ranking(h, model, probe);
    let want = &all[..k.min(all.len())];
    assert_eq!(hits.len(), want.len(), "{ctx}: k={k}, number of hits");
    let mut seen = std::collections::HashSet::new();
    let mut ambiguous = 0;
    for (i, (hit, (ws, we))) in hits.iter().zip(want).enumerate() {
        assert!(seen.insert(hit.id), "{ctx}: id {} twice", hit.id);
        let e = model
            .get(&hit.id)
            .unwrap_or_else(|| panic!("{ctx}: hit {i} is id {}, not live", hit.id));
        assert_eq!(hit.subject, e.subject, "{ctx}: subject of id {}", hit.id);
        let s = score(h, probe, &e.vector);
        assert_probability(h, hit.probability, s, &format!("{ctx}: hit {i}"));
        assert_distance(hit.distance, probe, &e.vector, &format!("{ctx}: hit {i}"));
        if hit.id != we.id {
            assert!(
                (s.z - ws.z).abs() <= s.tol + ws.tol,
                "{ctx}: hit {i} is id {} (f64 logit {}) but brute force has id {} (f64 logit {})",
                hit.id,
                s.z,
                we.id,
                ws.z
            );
            ambiguous += 1;
        }
    }
    ambiguous
}

/// Open-set candidates with a head against brute force: the `k` best subjects
/// by their best embedding's f64 logit, each shown with that embedding.
#[track_caller]
fn check_head_identify(
    cands: &[Hit],
    h: &HeadInfo,
    model: &Model,
    probe: &[f32],
    k: usize,
    ctx: &str,
) -> usize {
    let all = head_ranking(h, model, probe);
    let mut best: Vec<(Score, &Embedding)> = Vec::new();
    let mut best_of: HashMap<&str, (Score, &Embedding)> = HashMap::new();
    for &(s, e) in &all {
        if !best_of.contains_key(e.subject.as_str()) {
            best_of.insert(&e.subject, (s, e));
            best.push((s, e));
        }
    }
    let want = &best[..k.min(best.len())];
    assert_eq!(
        cands.len(),
        want.len(),
        "{ctx}: k={k}, number of candidates"
    );
    let mut seen = std::collections::HashSet::new();
    let mut ambiguous = 0;
    for (i, (c, (ws, we))) in cands.iter().zip(want).enumerate() {
        assert!(
            seen.insert(&c.subject),
            "{ctx}: subject {:?} twice",
            c.subject
        );
        let e = model
            .get(&c.id)
            .unwrap_or_else(|| panic!("{ctx}: candidate {i} is id {}, not live", c.id));
        assert_eq!(
            c.subject, e.subject,
            "{ctx}: candidate {i}: id {} is not of the subject shown",
            c.id
        );
        let s = score(h, probe, &e.vector);
        assert_probability(h, c.probability, s, &format!("{ctx}: candidate {i}"));
        assert_distance(
            c.distance,
            probe,
            &e.vector,
            &format!("{ctx}: candidate {i}"),
        );
        let (bs, be) = best_of[c.subject.as_str()];
        assert!(
            c.id == be.id || (s.z - bs.z).abs() <= s.tol + bs.tol,
            "{ctx}: candidate {i} ({:?}) shows id {} (f64 logit {}) but its best is id {} ({})",
            c.subject,
            c.id,
            s.z,
            be.id,
            bs.z
        );
        if c.subject != we.subject {
            assert!(
                (s.z - ws.z).abs() <= s.tol + ws.tol,
                "{ctx}: candidate {i} is {:?} (f64 logit {}) but brute force has {:?} ({})",
                c.subject,
                s.z,
                we.subject,
                ws.z
            );
            ambiguous += 1;
        }
    }
    ambiguous
}

/// `verify` in batches the engine accepts.
fn verify_all(g: &Gallery, pairs: &[VerifyPair], o: &VerifyOptions) -> Vec<Verdict> {
    pairs
        .chunks(visage_engine::MAX_PROBES)
        .flat_map(|c| g.verify(c, o).unwrap())
        .collect()
}

// ---- the shared trained gallery ----------------------------------------------

/// A trained anisotropic gallery that the read-only tests share: part in a
/// segment, part in the memtable, one subject and a few ids deleted.
struct Shared {
    fx: Fixture,
    data: SynthGallery,
    model: Model,
    head: HeadInfo,
    deleted_subject: String,
    deleted_ids: Vec<u64>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let data = anisotropic(300, 21);
        let fx = Fixture::new(&data.embeddings, data.embeddings.len() * 3 / 5);
        let mut model = model_of(&data.embeddings);
        let deleted_subject = subject_name(7);
        // A segment row and a memtable row of two other subjects.
        let deleted_ids = vec![
            model.keys().nth(3).copied().unwrap(),
            model.len() as u64 - 2,
        ];
        fx.g.delete(&deleted_ids, std::slice::from_ref(&deleted_subject))
            .unwrap();
        model.retain(|id, e| !deleted_ids.contains(id) && e.subject != deleted_subject);
        let head = fx.g.train_head(&train_opts(1, 12_000, 1e-3)).unwrap();
        assert!(head.trained);
        Shared {
            fx,
            data,
            model,
            head,
            deleted_subject,
            deleted_ids,
        }
    })
}

// ---- determinism --------------------------------------------------------------

const CHILD_ENV: &str = "VISAGE_HEAD_CHILD";

fn determinism_data() -> SynthGallery {
    anisotropic(150, 31)
}

fn determinism_opts(seed: u64) -> TrainOptions {
    train_opts(seed, 8_000, 1e-2)
}

/// The child of the thread-count check: trains the gallery in `$VISAGE_HEAD_CHILD`
/// with seed 3 and writes the head's fingerprint next to it.
#[test]
fn training_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let e = Engine::open(dir.join("data"), opts(false, 1 << 20)).expect("child: open");
    let h = e
        .gallery(G)
        .unwrap()
        .train_head(&determinism_opts(3))
        .expect("child: train");
    std::fs::write(dir.join("child.txt"), format!("{:?}", fingerprint(&h))).unwrap();
}

#[test]
fn training_is_deterministic_across_runs_layouts_and_thread_counts() {
    let data = determinism_data();
    let n = data.embeddings.len();
    // A: segment + memtable; B: memtable only.
    let mut a = Fixture::new(&data.embeddings, n / 2);
    let b = Fixture::new(&data.embeddings, 0);
    let h1 = a.g.train_head(&determinism_opts(3)).unwrap();
    assert!(h1.trained && h1.weights.iter().any(|&w| w != 0.0));
    let h2 = a.g.train_head(&determinism_opts(3)).unwrap();
    assert_eq!(
        fingerprint(&h1),
        fingerprint(&h2),
        "same gallery, same seed"
    );
    assert_eq!(fingerprint(&a.g.head().unwrap()), fingerprint(&h1));
    let h3 = b.g.train_head(&determinism_opts(3)).unwrap();
    assert_eq!(
        fingerprint(&h1),
        fingerprint(&h3),
        "same contents in another layout, same seed"
    );
    assert_eq!(
        a.g.export_pairs(&determinism_opts(3)).unwrap(),
        b.g.export_pairs(&determinism_opts(3)).unwrap()
    );

    // Another seed: another split and other pairs, so other weights and thresholds.
    let h4 = b.g.train_head(&determinism_opts(4)).unwrap();
    let differing = h1
        .weights
        .iter()
        .zip(&h4.weights)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert!(
        differing > DIM / 2,
        "seed 4 changed only {differing} of {DIM} weights"
    );
    assert_ne!(h1.bias.to_bits(), h4.bias.to_bits());
    assert_ne!(h1.logit_threshold.to_bits(), h4.logit_threshold.to_bits());
    assert_ne!(
        a.g.export_pairs(&determinism_opts(3)).unwrap(),
        a.g.export_pairs(&determinism_opts(4)).unwrap()
    );

    // Another rayon thread count, in a child process, on gallery A's files.
    let parent_threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let child_threads = if parent_threads == 1 { 3 } else { 1 };
    let root = a.dir.path().to_owned();
    a.close();
    let work = tempfile::tempdir().unwrap();
    std::fs::rename(&root, work.path().join("data")).unwrap();
    let out = rerun_self("head::training_child")
        .env(CHILD_ENV, work.path())
        .env("RAYON_NUM_THREADS", child_threads.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = std::fs::read_to_string(work.path().join("child.txt")).unwrap();
    assert_eq!(
        child,
        format!("{:?}", fingerprint(&h1)),
        "trained with {child_threads} thread(s) vs {parent_threads}"
    );
    std::fs::rename(work.path().join("data"), &root).unwrap();
}

// ---- calibration ---------------------------------------------------------------

/// Assert that `accepted` of `n` fresh pairs is within 4 standard errors of
/// `rate`, a rate estimated on `n_cal` calibration pairs (both binomial), plus
/// one calibration pair of discreteness.
#[track_caller]
fn assert_rate(accepted: usize, n: usize, rate: f64, n_cal: u64, what: &str) {
    let got = accepted as f64 / n as f64;
    let var = rate * (1.0 - rate) * (1.0 / n as f64 + 1.0 / n_cal as f64);
    let bound = 4.0 * var.sqrt() + 1.0 / n_cal as f64;
    println!(
        "{what}: {accepted}/{n} = {got:.5}, expected {rate:.5} ± {bound:.5} ({n_cal} calibration pairs)"
    );
    assert!(
        (got - rate).abs() <= bound,
        "{what}: accepted {accepted} of {n} = {got:.5}, expected {rate:.5} ± {bound:.5}"
    );
}

#[test]
fn calibrated_thresholds_accept_the_target_far_of_fresh_impostors() {
    let target = 1e-2;
    let data = anisotropic(1000, 41);
    let fx = Fixture::new(&data.embeddings, data.embeddings.len());
    let o = train_opts(2, 40_000, target);
    let n = data.embeddings.len() as u64;
    let mut rng = Rng(0xFA12);
    // Fresh impostor pairs: a never-enrolled person against a random enrolled embedding.
    let strangers: Vec<VerifyPair> = data
        .probes(0, 20_000, 77)
        .into_iter()
        .map(|p| VerifyPair {
            a: p.vector,
            b: VerifyTarget::Id(rng.below(n)),
        })
        .collect();
    // Fresh genuine pairs: a new image of an enrolled person against one of their embeddings.
    let mut ids_of: HashMap<&str, Vec<u64>> = HashMap::new();
    for e in &data.embeddings {
        ids_of.entry(&e.subject).or_default().push(e.id);
    }
    let genuine: Vec<VerifyPair> = data
        .probes(5_000, 0, 78)
        .into_iter()
        .map(|p| {
            let ids = &ids_of[p.subject.as_deref().unwrap()];
            VerifyPair {
                a: p.vector,
                b: VerifyTarget::Id(ids[rng.below(ids.len() as u64) as usize]),
            }
        })
        .collect();
    let accepted = |pairs: &[VerifyPair], o: &VerifyOptions| {
        verify_all(&fx.g, pairs, o)
            .iter()
            .filter(|v| v.same)
            .count()
    };

    // Distance threshold only: verify's default decision is the distance.
    let c = fx.g.calibrate(&o).unwrap();
    assert!(!c.trained);
    let d = VerifyOptions::default();
    assert_rate(
        accepted(&strangers, &d),
        strangers.len(),
        target,
        c.heldout_impostor,
        "distance threshold (calibrate), fresh impostors",
    );
    assert_rate(
        accepted(&genuine, &d),
        genuine.len(),
        c.distance_tar_at_far,
        c.heldout_genuine,
        "distance threshold (calibrate), fresh genuine",
    );

    open_set_rates(&fx.g, &data, &o, "distance");

    // With a head: the default decision is the head's threshold.
    let h = fx.g.train_head(&o).unwrap();
    assert!(h.trained);
    assert_eq!(h.target_far, target);
    assert_rate(
        accepted(&strangers, &d),
        strangers.len(),
        target,
        h.heldout_impostor,
        "head threshold, fresh impostors",
    );
    assert_rate(
        accepted(&genuine, &d),
        genuine.len(),
        h.tar_at_far,
        h.heldout_genuine,
        "head threshold, fresh genuine",
    );
    let by_distance = VerifyOptions {
        max_distance: Some(h.distance_threshold),
        ..Default::default()
    };
    assert_rate(
        accepted(&strangers, &by_distance),
        strangers.len(),
        target,
        h.heldout_impostor,
        "distance threshold (train_head), fresh impostors",
    );
    assert_rate(
        accepted(&genuine, &by_distance),
        genuine.len(),
        h.distance_tar_at_far,
        h.heldout_genuine,
        "distance threshold (train_head), fresh genuine",
    );
    open_set_rates(&fx.g, &data, &o, "head");
}

/// Identification of fresh strangers: the fraction told "known" (as anyone)
/// must be the target within the binomial bound of the open-set calibration,
/// whose probes come from the held-out subjects; and fresh images of enrolled
/// people must be known (as themselves) at no less than the reported open-set TAR.
fn open_set_rates(g: &Gallery, data: &SynthGallery, o: &TrainOptions, what: &str) {
    let h = g.head().unwrap();
    assert!(h.open_probes > 0, "{what}: no open-set calibration");
    let strangers: Vec<Vec<f32>> = data
        .probes(0, 3_000, 79)
        .into_iter()
        .map(|p| p.vector)
        .collect();
    let io = IdentifyOptions {
        k: 1,
        ..Default::default()
    };
    let known = g
        .identify_open(&strangers, &io)
        .unwrap()
        .iter()
        .filter(|i| i.known)
        .count();
    // The calibration's probes are several embeddings of each held-out
    // subject; their best matches are not independent, so count subjects.
    let held = (data.config.subjects as f64 * o.heldout_fraction).round() as u64;
    assert_rate(
        known,
        strangers.len(),
        o.target_far,
        held.min(h.open_probes),
        &format!("{what}: open-set threshold, fresh strangers known"),
    );
    let people = data.probes(2_000, 0, 80);
    let vectors: Vec<Vec<f32>> = people.iter().map(|p| p.vector.clone()).collect();
    let right = g
        .identify_open(&vectors, &io)
        .unwrap()
        .iter()
        .zip(&people)
        .filter(|(i, p)| i.known && i.subject == p.subject)
        .count();
    let tar = if h.trained {
        h.open_tar
    } else {
        h.open_distance_tar
    };
    let rate = right as f64 / people.len() as f64;
    let se = (tar * (1.0 - tar) * (1.0 / people.len() as f64 + 1.0 / held as f64)).sqrt();
    println!(
        "{what}: open-set threshold, fresh enrolled known as themselves: {right}/{} = {rate:.4}, reported open-set TAR {tar:.4}",
        people.len()
    );
    assert!(
        rate >= tar - 4.0 * se - 1.0 / held as f64,
        "{what}: fresh enrolled people known as themselves {rate} < open-set TAR {tar} (se {se})"
    );
}

/// The calibration's own promise, exactly: of the held-out impostor pairs
/// (`export_pairs` draws the same pairs as `train_head`), the stored
/// thresholds accept at most `floor(target_far · n)`, as the engine itself
/// decides (`verify` of the feature vector `|a − b|` against the origin gives
/// the pair's logit and squared distance), and the reported TARs are the
/// fractions of held-out genuine pairs the stored thresholds accept.
#[test]
fn stored_thresholds_keep_the_promise_on_the_heldout_pairs() {
    let data = anisotropic(200, 91);
    let fx = Fixture::new(&data.embeddings, data.embeddings.len());
    let zero = vec![0f32; DIM];
    for target in [1e-4, 1e-3, 1e-2, 0.2] {
        let o = train_opts(5, 12_000, target);
        let h = fx.g.train_head(&o).unwrap();
        let (_, (x, y)) = fx.g.export_pairs(&o).unwrap();
        let pairs: Vec<VerifyPair> = x
            .chunks_exact(DIM)
            .map(|f| VerifyPair {
                a: f.to_vec(),
                b: VerifyTarget::Vector(zero.clone()),
            })
            .collect();
        let n_imp = y.iter().filter(|&&l| !l).count();
        let n_gen = y.len() - n_imp;
        assert_eq!(
            (n_gen as u64, n_imp as u64),
            (h.heldout_genuine, h.heldout_impostor)
        );
        let allowed = (target * n_imp as f64).floor() as usize;
        for (what, o, tar) in [
            ("head", VerifyOptions::default(), h.tar_at_far),
            (
                "distance",
                VerifyOptions {
                    max_distance: Some(h.distance_threshold),
                    ..Default::default()
                },
                h.distance_tar_at_far,
            ),
        ] {
            let v = verify_all(&fx.g, &pairs, &o);
            let fa = v.iter().zip(&y).filter(|(v, l)| v.same && !**l).count();
            let ta = v.iter().zip(&y).filter(|(v, l)| v.same && **l).count();
            println!(
                "target {target}: {what} accepts {fa} of {n_imp} held-out impostors (allowed {allowed}), {ta} of {n_gen} genuine (reported TAR {tar})"
            );
            assert!(
                fa <= allowed,
                "target {target}: the stored {what} threshold accepts {fa} of {n_imp} held-out impostors, more than {allowed}"
            );
            assert!(
                fa + 1 >= allowed.min(n_imp),
                "target {target}: {what} threshold too strict ({fa} accepted, {allowed} allowed)"
            );
            assert_eq!(
                ta as f64 / n_gen as f64,
                tar,
                "target {target}: reported {what} TAR vs the stored threshold's"
            );
        }
    }
}

// ---- persistence -----------------------------------------------------------------

fn some_pairs(data: &SynthGallery, n: u64, seed: u64) -> Vec<VerifyPair> {
    let mut rng = Rng(seed);
    data.probes(20, 20, seed)
        .into_iter()
        .flat_map(|p| {
            let subject = p
                .subject
                .clone()
                .unwrap_or_else(|| subject_name(rng.below(10) as usize));
            let id = rng.below(n);
            [
                VerifyPair {
                    a: p.vector.clone(),
                    b: VerifyTarget::Subject(subject),
                },
                VerifyPair {
                    a: p.vector.clone(),
                    b: VerifyTarget::Id(id),
                },
                VerifyPair {
                    a: p.vector,
                    b: VerifyTarget::Vector(data.embeddings[id as usize].vector.clone()),
                },
            ]
        })
        .collect()
}

#[test]
fn a_head_survives_reopen_retraining_replaces_it_and_damage_fails_the_open() {
    let data = anisotropic(120, 51);
    let mut fx = Fixture::new(&data.embeddings, data.embeddings.len() / 2);
    let n = data.embeddings.len() as u64;
    let pairs = some_pairs(&data, n, 5);
    let probes: Vec<Vec<f32>> = data
        .probes(10, 10, 6)
        .into_iter()
        .map(|p| p.vector)
        .collect();
    let io = IdentifyOptions {
        k: 5,
        ..Default::default()
    };
    let d = VerifyOptions::default();

    let h1 = fx.g.train_head(&train_opts(1, 6_000, 1e-2)).unwrap();
    let v1 = fx.g.verify(&pairs, &d).unwrap();
    let i1 = fx.g.identify_open(&probes, &io).unwrap();
    assert!(v1.iter().any(|v| v.same) && v1.iter().any(|v| !v.same));
    fx.reopen().unwrap();
    let got = fx.g.head().expect("the head after reopening");
    assert_eq!(*got, h1);
    assert_eq!(fingerprint(&got), fingerprint(&h1));
    assert_eq!(
        fx.g.verify(&pairs, &d).unwrap(),
        v1,
        "verify after reopening"
    );
    assert_eq!(fx.g.identify_open(&probes, &io).unwrap(), i1);

    // Retraining replaces the head, in memory and on disk.
    let h2 = fx.g.train_head(&train_opts(2, 6_000, 1e-2)).unwrap();
    assert_ne!(fingerprint(&h2), fingerprint(&h1));
    assert_eq!(*fx.g.head().unwrap(), h2);
    let v2 = fx.g.verify(&pairs, &d).unwrap();
    assert_ne!(v2, v1, "answers of the new head");
    fx.reopen().unwrap();
    assert_eq!(*fx.g.head().unwrap(), h2);
    assert_eq!(fx.g.verify(&pairs, &d).unwrap(), v2);
    // Calibrating at another FAR keeps the trained weights and moves both thresholds.
    let c = fx.g.calibrate(&train_opts(9, 6_000, 0.1)).unwrap();
    assert!(c.trained);
    assert_eq!(
        (&c.weights, c.distance_weight, c.bias, c.pairs),
        (&h2.weights, h2.distance_weight, h2.bias, h2.pairs)
    );
    assert_eq!(c.target_far, 0.1);
    assert!(c.logit_threshold < h2.logit_threshold, "{c:?}");
    assert!(c.distance_threshold > h2.distance_threshold, "{c:?}");
    fx.reopen().unwrap();
    assert_eq!(*fx.g.head().unwrap(), c);

    // Damage: a flipped byte anywhere fails the open with an error naming the file.
    let path = fx.head_file();
    fx.close();
    let good = std::fs::read(&path).unwrap();
    let cases: [(&str, usize); 5] = [
        ("magic", 3),
        ("a weight", 16 + 4 * 40 + 2),
        ("the logit threshold", 533),
        ("a statistic", 560),
        ("the checksum", good.len() - 2),
    ];
    for (what, at) in cases {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        let Err(err) = Engine::open(fx.dir.path(), opts(false, 1 << 20)) else {
            panic!("opened a gallery whose HEAD has a flipped byte in {what}")
        };
        assert!(err.is_corruption(), "{what}: {err:?}");
        match &err {
            Error::ChecksumMismatch { path: p, .. } | Error::Corruption { path: p, .. } => {
                assert_eq!(p, &path, "{what}: {err}");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert!(err.to_string().contains("HEAD"), "{what}: {err}");
    }
    // A truncated file too.
    std::fs::write(&path, &good[..good.len() - 1]).unwrap();
    let Err(err) = Engine::open(fx.dir.path(), opts(false, 1 << 20)) else {
        panic!("opened a gallery with a truncated HEAD")
    };
    // (The CRC of a version-3 file is its last 4 bytes: cut short, it fails that check.)
    assert!(
        matches!(&err, Error::Corruption { path: p, .. } | Error::ChecksumMismatch { path: p, .. } if p == &path),
        "{err:?}"
    );
    // Repaired, it opens with the head it had.
    std::fs::write(&path, &good).unwrap();
    fx.reopen().unwrap();
    assert_eq!(*fx.g.head().unwrap(), c);

    // No HEAD file: no head.
    fx.close();
    std::fs::remove_file(&path).unwrap();
    fx.reopen().unwrap();
    assert!(fx.g.head().is_none());
    let so = SearchOptions {
        k: 3,
        rank_by: RankBy::Head,
        ..Default::default()
    };
    assert!(matches!(
        fx.g.search_with(&probes, &so),
        Err(Error::NoTrainedHead { .. })
    ));
    let min_p = VerifyOptions {
        min_probability: Some(0.5),
        ..Default::default()
    };
    assert!(matches!(
        fx.g.verify(&pairs, &min_p),
        Err(Error::NoTrainedHead { .. })
    ));
}

// ---- verify ------------------------------------------------------------------------

#[test]
fn verify_with_a_head_is_the_best_of_the_subject_by_the_head() {
    let s = shared();
    let (g, h, model) = (&s.fx.g, &s.head, &s.model);
    let live: Vec<u64> = model.keys().copied().collect();
    let mut rng = Rng(0x7E12);
    let probes = s.data.probes(60, 40, 8);
    let mut by_subject = Vec::new();
    for p in &probes {
        let subject = match &p.subject {
            Some(sub) if sub != &s.deleted_subject && rng.below(4) != 0 => sub.clone(),
            _ => loop {
                let sub = subject_name(rng.below(300) as usize);
                if sub != s.deleted_subject {
                    break sub;
                }
            },
        };
        by_subject.push(VerifyPair {
            a: p.vector.clone(),
            b: VerifyTarget::Subject(subject),
        });
    }
    let mut ambiguous = 0;
    for o in [
        VerifyOptions::default(),
        VerifyOptions {
            min_probability: Some(0.5),
            ..Default::default()
        },
        VerifyOptions {
            min_probability: Some(0.999),
            ..Default::default()
        },
    ] {
        // With no override, a claim's own rule for the subject's image count.
        let claims = h.calibrated.as_ref().and_then(|c| c.claims.as_ref());
        let rule = |m: usize| -> (bool, f64) {
            match (o.min_probability, claims) {
                (Some(p), _) => (false, logit_for(h, p as f64)),
                (None, Some(c)) => (
                    c.score == visage_engine::head::ClaimScore::Mean,
                    c.logit_thresholds[m.clamp(1, c.logit_thresholds.len()) - 1] as f64,
                ),
                (None, None) => (false, h.logit_threshold as f64),
            }
        };
        let verdicts = g.verify(&by_subject, &o).unwrap();
        assert_eq!(verdicts.len(), by_subject.len());
        for (i, (pair, v)) in by_subject.iter().zip(&verdicts).enumerate() {
            let ctx = format!("{o:?}, pair {i}");
            let VerifyTarget::Subject(sub) = &pair.b else {
                unreachable!()
            };
            let mut rows: Vec<(Score, &Embedding)> = model
                .values()
                .filter(|e| &e.subject == sub)
                .map(|e| (score(h, &pair.a, &e.vector), e))
                .collect();
            rows.sort_by(|x, y| y.0.z.total_cmp(&x.0.z).then(x.1.id.cmp(&y.1.id)));
            let (bs, be) = rows[0];
            let (mean_rule, t) = rule(rows.len());
            // The decided score: the best logit, or the mean over the images.
            let decided = if mean_rule {
                let n = rows.len() as f64;
                Score {
                    z: rows.iter().map(|r| r.0.z).sum::<f64>() / n,
                    tol: rows.iter().map(|r| r.0.tol).fold(0.0, f64::max),
                }
            } else {
                score(
                    h,
                    &pair.a,
                    &model[&v.matched_id.expect("matched id")].vector,
                )
            };
            let m = v.matched_id.expect("matched id of a subject");
            let me = model.get(&m).expect("matched id is live");
            assert_eq!(&me.subject, sub, "{ctx}: matched id of another subject");
            let ms = score(h, &pair.a, &me.vector);
            if m != be.id {
                assert!(
                    (ms.z - bs.z).abs() <= ms.tol + bs.tol,
                    "{ctx}: matched id {m} (f64 logit {}) but the best is id {} ({})",
                    ms.z,
                    be.id,
                    bs.z
                );
                ambiguous += 1;
            }
            assert_probability(h, v.probability, ms, &ctx);
            assert_distance(v.distance, &pair.a, &me.vector, &ctx);
            if (decided.z - t).abs() > decided.tol + 1e-5 * t.abs() {
                assert_eq!(
                    v.same,
                    decided.z >= t,
                    "{ctx}: logit {} vs threshold {t}",
                    decided.z
                );
            } else {
                ambiguous += 1;
            }
        }
    }
    assert!(ambiguous <= 3, "{ambiguous} near-ties in 300 verdicts");

    // By id equals against that vector; the verdicts are the same but for matched_id.
    let mut pairs = Vec::new();
    for p in probes.iter().take(40) {
        let id = live[rng.below(live.len() as u64) as usize];
        pairs.push(VerifyPair {
            a: p.vector.clone(),
            b: VerifyTarget::Id(id),
        });
        pairs.push(VerifyPair {
            a: p.vector.clone(),
            b: VerifyTarget::Vector(model[&id].vector.clone()),
        });
    }
    let vs = g.verify(&pairs, &VerifyOptions::default()).unwrap();
    for (i, w) in vs.chunks(2).enumerate() {
        let VerifyTarget::Id(id) = pairs[2 * i].b else {
            unreachable!()
        };
        assert_eq!(w[0].matched_id, Some(id));
        assert_eq!(w[1].matched_id, None);
        assert_eq!(
            (
                w[0].same,
                w[0].probability.map(f32::to_bits),
                w[0].distance.to_bits()
            ),
            (
                w[1].same,
                w[1].probability.map(f32::to_bits),
                w[1].distance.to_bits()
            ),
            "pair {i}: by id vs by vector"
        );
        let sc = score(h, &pairs[2 * i].a, &model[&id].vector);
        assert_probability(h, w[0].probability, sc, &format!("by id, pair {i}"));
    }
}

#[test]
fn verify_rejects_unknown_targets_and_bad_vectors_with_their_position() {
    let s = shared();
    let g = &s.fx.g;
    let v = s.data.embeddings[100].vector.clone();
    let ok = VerifyPair {
        a: v.clone(),
        b: VerifyTarget::Subject(subject_name(3)),
    };
    let with = |i: usize, bad: VerifyPair| {
        let mut pairs = vec![ok.clone(); 4];
        pairs[i] = bad;
        g.verify(&pairs, &VerifyOptions::default())
    };
    let unknown_id = 1 << 40;
    for (i, b, field) in [
        (1, VerifyTarget::Id(unknown_id), "pairs[1].id"),
        (2, VerifyTarget::Id(s.deleted_ids[0]), "pairs[2].id"),
        (2, VerifyTarget::Id(s.deleted_ids[1]), "pairs[2].id"),
        (
            3,
            VerifyTarget::Subject("nobody-at-all".into()),
            "pairs[3].subject",
        ),
        (
            0,
            VerifyTarget::Subject(s.deleted_subject.clone()),
            "pairs[0].subject",
        ),
    ] {
        let err = with(
            i,
            VerifyPair {
                a: v.clone(),
                b: b.clone(),
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::UnknownId { .. } | Error::UnknownSubject { .. }),
            "{b:?}: {err:?}"
        );
        assert!(err.to_string().contains(field), "{b:?}: {err}");
    }
    let short = v[..DIM - 1].to_vec();
    let err = with(
        2,
        VerifyPair {
            a: short.clone(),
            b: VerifyTarget::Id(0),
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::DimensionMismatch {
                what: "pairs.a",
                index: 2,
                expected: DIM,
                got
            } if got == DIM - 1
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("pairs.a[2]"), "{err}");
    let mut long = v.clone();
    long.push(0.0);
    let err = with(
        3,
        VerifyPair {
            a: v.clone(),
            b: VerifyTarget::Vector(long),
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::DimensionMismatch {
                what: "pairs.b",
                index: 3,
                got,
                ..
            } if got == DIM + 1
        ),
        "{err:?}"
    );
    let mut nan = v.clone();
    nan[5] = f32::NAN;
    let err = with(
        1,
        VerifyPair {
            a: nan,
            b: VerifyTarget::Id(0),
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NonFiniteValue {
                what: "pairs.a",
                index: 1,
                position: 5,
                ..
            }
        ),
        "{err:?}"
    );
    for (o, what) in [
        (
            VerifyOptions {
                min_probability: Some(1.5),
                ..Default::default()
            },
            "min_probability",
        ),
        (
            VerifyOptions {
                max_distance: Some(-1.0),
                ..Default::default()
            },
            "max_distance",
        ),
    ] {
        let err = g.verify(std::slice::from_ref(&ok), &o).unwrap_err();
        assert!(matches!(err, Error::OutOfRange { .. }), "{what}: {err:?}");
        assert!(err.to_string().contains(what), "{err}");
    }
}

#[test]
fn without_a_head_verify_and_identify_go_by_distance() {
    let data = anisotropic(60, 61);
    let fx = Fixture::new(&data.embeddings, data.embeddings.len() / 2);
    let model = model_of(&data.embeddings);
    let g = &fx.g;
    assert!(g.head().is_none());
    let probes: Vec<Probe> = data.probes(30, 20, 9);
    let vectors: Vec<Vec<f32>> = probes.iter().map(|p| p.vector.clone()).collect();
    let mut rng = Rng(0x0DD);

    // No head: HEAD ranking and probability thresholds are refused.
    let so = SearchOptions {
        k: 5,
        rank_by: RankBy::Head,
        ..Default::default()
    };
    let err = g.search_with(&vectors, &so).unwrap_err();
    assert!(matches!(err, Error::NoTrainedHead { .. }), "{err:?}");
    let io = IdentifyOptions {
        k: 5,
        min_probability: Some(0.5),
        max_distance: None,
    };
    let err = g.identify_open(&vectors, &io).unwrap_err();
    assert!(matches!(err, Error::NoTrainedHead { .. }), "{err:?}");

    // Verify by subject: the nearest of the subject's embeddings (ties by id).
    let pairs: Vec<VerifyPair> = probes
        .iter()
        .map(|p| VerifyPair {
            a: p.vector.clone(),
            b: VerifyTarget::Subject(
                p.subject
                    .clone()
                    .unwrap_or_else(|| subject_name(rng.below(60) as usize)),
            ),
        })
        .collect();
    // A threshold that splits the pairs: the median nearest distance (in f64, here).
    let mut nearest: Vec<f64> = pairs
        .iter()
        .map(|pair| {
            let VerifyTarget::Subject(sub) = &pair.b else {
                unreachable!()
            };
            model
                .values()
                .filter(|e| &e.subject == sub)
                .map(|e| l2sq_f64(&pair.a, &e.vector))
                .fold(f64::INFINITY, f64::min)
        })
        .collect();
    nearest.sort_by(f64::total_cmp);
    let max_distance = nearest[nearest.len() / 2] as f32;
    let vo = VerifyOptions {
        max_distance: Some(max_distance),
        ..Default::default()
    };
    let verdicts = g.verify(&pairs, &vo).unwrap();
    assert!(verdicts.iter().any(|v| v.same) && verdicts.iter().any(|v| !v.same));
    for (i, (pair, v)) in pairs.iter().zip(&verdicts).enumerate() {
        let VerifyTarget::Subject(sub) = &pair.b else {
            unreachable!()
        };
        let mut rows: Vec<(f64, u64)> = model
            .values()
            .filter(|e| &e.subject == sub)
            .map(|e| (l2sq_f64(&pair.a, &e.vector), e.id))
            .collect();
        rows.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
        let m = v.matched_id.unwrap();
        let md = l2sq_f64(&pair.a, &model[&m].vector);
        assert_eq!(model[&m].subject, *sub, "pair {i}");
        let tol = dist_tol(md, &pair.a, &model[&m].vector)
            + dist_tol(rows[0].0, &pair.a, &model[&rows[0].1].vector);
        assert!(
            m == rows[0].1 || (md - rows[0].0).abs() <= tol,
            "pair {i}: matched {m} ({md}) but the nearest is {:?}",
            rows[0]
        );
        assert_eq!(v.probability, None, "pair {i}");
        assert_distance(v.distance, &pair.a, &model[&m].vector, &format!("pair {i}"));
        assert_eq!(v.same, v.distance <= max_distance, "pair {i}");
    }

    // Identify without a threshold: the distance thresholds are calibrated on
    // the spot, and the open-set (1:N) one decides.
    let io = IdentifyOptions {
        k: 4,
        ..Default::default()
    };
    let ids = g.identify_open(&vectors, &io).unwrap();
    let h = g.head().expect("calibrated on the spot");
    assert!(!h.trained);
    assert!(h.distance_threshold > 0.0 && h.heldout_impostor > 0);
    assert!(
        h.open_probes > 0 && h.open_distance_threshold > 0.0,
        "{h:?}"
    );
    assert!(h.open_distance_threshold < h.distance_threshold, "{h:?}");
    assert_eq!(h.seed, TrainOptions::default().seed);
    let mut known = 0;
    for (i, (p, id)) in vectors.iter().zip(&ids).enumerate() {
        check_identify(&id.candidates, &model, p, 4, false, &format!("probe {i}"));
        assert!(id.candidates.iter().all(|c| c.probability.is_none()));
        let best = &id.candidates[0];
        assert_eq!(
            id.known,
            best.distance <= h.open_distance_threshold,
            "probe {i}"
        );
        assert_eq!(
            id.subject.as_deref(),
            id.known.then_some(best.subject.as_str())
        );
        known += id.known as usize;
    }
    assert!(
        known > 0 && known < ids.len(),
        "{known} of {} known",
        ids.len()
    );
    // And verify's default decision uses the 1:1 threshold.
    let verdicts = g.verify(&pairs, &VerifyOptions::default()).unwrap();
    for (i, v) in verdicts.iter().enumerate() {
        assert_eq!(v.same, v.distance <= h.distance_threshold, "pair {i}");
    }
}

// ---- identify_open ------------------------------------------------------------------

/// Thresholds strictly between observed values (never on one), near the given quantiles.
fn between(values: &[f32], quantiles: &[f64], min_gap: f32) -> Vec<f32> {
    let mut v = values.to_vec();
    v.sort_by(f32::total_cmp);
    v.dedup();
    let mut out = Vec::new();
    for q in quantiles {
        let start = ((v.len() - 1) as f64 * q) as usize;
        if let Some(i) = (start..v.len() - 1).find(|&i| v[i + 1] - v[i] > min_gap) {
            out.push(v[i] + (v[i + 1] - v[i]) / 2.0);
        }
    }
    out.dedup();
    out
}

#[test]
fn identify_open_ranks_by_the_head_and_follows_its_thresholds() {
    let s = shared();
    let (g, h, model) = (&s.fx.g, &s.head, &s.model);
    let probes = s.data.probes(60, 60, 10);
    let vectors: Vec<Vec<f32>> = probes.iter().map(|p| p.vector.clone()).collect();
    let k = 8;
    let base = g
        .identify_open(
            &vectors,
            &IdentifyOptions {
                k,
                ..Default::default()
            },
        )
        .unwrap();
    // Ranking: brute force by the head, each subject with its best embedding.
    let mut ambiguous = 0;
    for (i, (p, id)) in vectors.iter().zip(&base).enumerate() {
        ambiguous += check_head_identify(&id.candidates, h, model, p, k, &format!("probe {i}"));
    }
    assert!(ambiguous <= 2, "{ambiguous} near-ties");

    // No override: the calibrated open-set (1:N) logit threshold decides, on
    // the best candidate (not the 1:1 threshold verify uses).
    assert!(h.open_probes > 0, "no open-set calibration: {h:?}");
    assert!(h.open_logit_threshold > h.logit_threshold, "{h:?}");
    // The threshold for the gallery's current size, interpolated here from
    // the published model (linear in ln N between its grid points).
    let n = g.stats().subjects;
    let points = &h
        .calibrated
        .as_ref()
        .unwrap()
        .open_head
        .as_ref()
        .unwrap()
        .points;
    let t = match points.iter().position(|q| q.subjects > n) {
        Some(0) => points[0].threshold as f64,
        None => points[points.len() - 1].threshold as f64,
        Some(j) => {
            let (a, b) = (&points[j - 1], &points[j]);
            let f = ((n as f64).ln() - (a.subjects as f64).ln())
                / ((b.subjects as f64).ln() - (a.subjects as f64).ln());
            a.threshold as f64 + f * (b.threshold as f64 - a.threshold as f64)
        }
    };
    let mut known = 0;
    for (i, id) in base.iter().enumerate() {
        let best = &id.candidates[0];
        let sc = score(h, &vectors[i], &model[&best.id].vector);
        if (sc.z - t).abs() > sc.tol + 1e-5 * t.abs() {
            assert_eq!(id.known, sc.z >= t, "probe {i}: logit {} vs {t}", sc.z);
        }
        assert_eq!(
            id.subject.as_deref(),
            id.known.then_some(best.subject.as_str()),
            "probe {i}"
        );
        known += id.known as usize;
    }
    // The threshold splits the probes (the decisions above are not all alike).
    assert!(
        known > 0 && known < probes.len(),
        "{known} of {} known",
        probes.len()
    );

    // Overrides: min_probability and max_distance, at several thresholds.
    let p0: Vec<f32> = base
        .iter()
        .map(|id| id.candidates[0].probability.unwrap())
        .collect();
    let d0: Vec<f32> = base.iter().map(|id| id.candidates[0].distance).collect();
    let mut thresholds: Vec<IdentifyOptions> = between(
        &p0,
        &[0.05, 0.15, 0.25, 0.4, 0.5, 0.6, 0.75, 0.85, 0.95],
        1e-4,
    )
    .into_iter()
    .map(|p| IdentifyOptions {
        k,
        min_probability: Some(p),
        max_distance: None,
    })
    .collect();
    assert!(thresholds.len() >= 4, "{thresholds:?}");
    let mut sorted_d = d0.clone();
    sorted_d.sort_by(f32::total_cmp);
    for q in [0.1, 0.4, 0.6, 0.9] {
        // On an observed distance exactly: the bound is inclusive.
        thresholds.push(IdentifyOptions {
            k,
            min_probability: None,
            max_distance: Some(sorted_d[((sorted_d.len() - 1) as f64 * q) as usize]),
        });
    }
    thresholds.extend([0.0, 1.0].map(|p| IdentifyOptions {
        k,
        min_probability: Some(p),
        max_distance: None,
    }));
    for o in &thresholds {
        let got = g.identify_open(&vectors, o).unwrap();
        let mut n_known = 0;
        for (i, (id, b)) in got.iter().zip(&base).enumerate() {
            assert_eq!(id.candidates, b.candidates, "{o:?}, probe {i}: candidates");
            let want = match (o.min_probability, o.max_distance) {
                (Some(p), _) if p <= 0.0 => true,
                (Some(p), _) if p >= 1.0 => false,
                (Some(p), _) => p0[i] >= p,
                (None, Some(d)) => d0[i] <= d,
                _ => unreachable!(),
            };
            assert_eq!(
                id.known, want,
                "{o:?}, probe {i}: best p {} d {}",
                p0[i], d0[i]
            );
            assert_eq!(
                id.subject.as_deref(),
                id.known.then_some(b.candidates[0].subject.as_str())
            );
            n_known += id.known as usize;
        }
        if let Some(p) = o.min_probability.filter(|&p| p > 0.0 && p < 1.0) {
            // The threshold splits the probes where the reference says.
            let want = p0.iter().filter(|&&x| x >= p).count();
            assert_eq!(n_known, want, "{o:?}");
        }
    }
    let all = g
        .identify_open(&vectors, &thresholds[thresholds.len() - 2])
        .unwrap();
    assert!(all.iter().all(|i| i.known), "min_probability 0 accepts all");
    let none = g
        .identify_open(&vectors, &thresholds[thresholds.len() - 1])
        .unwrap();
    assert!(
        none.iter().all(|i| !i.known),
        "min_probability 1 accepts none"
    );
    // Out of range.
    for o in [
        IdentifyOptions {
            k,
            min_probability: Some(-0.1),
            max_distance: None,
        },
        IdentifyOptions {
            k,
            min_probability: None,
            max_distance: Some(f32::NAN),
        },
    ] {
        let err = g.identify_open(&vectors, &o).unwrap_err();
        assert!(matches!(err, Error::OutOfRange { .. }), "{o:?}: {err:?}");
    }
}

// ---- search_with -------------------------------------------------------------------

#[test]
fn search_ranked_by_the_head_equals_brute_force() {
    let s = shared();
    let (g, h, model) = (&s.fx.g, &s.head, &s.model);
    let probes: Vec<Vec<f32>> = s
        .data
        .probes(30, 30, 11)
        .into_iter()
        .map(|p| p.vector)
        .collect();
    let mut ambiguous = 0;
    let mut positions = 0;
    for k in [1, 7, 40] {
        let so = SearchOptions {
            k,
            rank_by: RankBy::Head,
            ..Default::default()
        };
        let hits = g.search_with(&probes, &so).unwrap();
        for (i, (p, hs)) in probes.iter().zip(&hits).enumerate() {
            ambiguous += check_head_search(hs, h, model, p, k, &format!("k={k}, probe {i}"));
            positions += hs.len();
        }
    }
    assert!(
        ambiguous * 100 <= positions,
        "{ambiguous} near-ties of {positions}"
    );

    // Ranked by distance with a head: nearest first, each hit with σ(logit).
    let so = SearchOptions {
        k: 10,
        ..Default::default()
    };
    let hits = g.search_with(&probes, &so).unwrap();
    for (i, (p, hs)) in probes.iter().zip(&hits).enumerate() {
        check_search(hs, model, p, 10, false, &format!("probe {i}"));
        for hit in hs {
            let sc = score(h, p, &model[&hit.id].vector);
            assert_probability(h, hit.probability, sc, &format!("probe {i}, id {}", hit.id));
        }
    }
}

/// The head holds one weight per dimension: at 512 (kernels specialised for
/// it) and 96 (the generic kernels) too, ranking by the head equals brute
/// force, in search and in open-set identification, before and after reopening.
#[test]
fn search_ranked_by_the_head_equals_brute_force_at_512_and_96() {
    for dim in [512, 96] {
        let data = synth_of(dim, 150, Nuisance::ANISOTROPIC, 23);
        let mut fx = Fixture::new(&data.embeddings, data.embeddings.len() / 2);
        let model = model_of(&data.embeddings);
        let trained = fx.g.train_head(&train_opts(1, 6_000, 1e-2)).unwrap();
        assert!(trained.trained, "dim {dim}");
        assert_eq!(trained.weights.len(), dim);
        let probes = data.probes(20, 20, 11);
        let vectors: Vec<Vec<f32>> = probes.iter().map(|p| p.vector.clone()).collect();
        for round in ["trained", "reopened"] {
            let h = fx.g.head().unwrap();
            assert_eq!(fingerprint(&h), fingerprint(&trained), "dim {dim}, {round}");
            let (mut ambiguous, mut positions) = (0, 0);
            for k in [1, 7, 40] {
                let so = SearchOptions {
                    k,
                    rank_by: RankBy::Head,
                    ..Default::default()
                };
                let hits = fx.g.search_with(&vectors, &so).unwrap();
                for (i, (p, hs)) in vectors.iter().zip(&hits).enumerate() {
                    let ctx = format!("dim {dim}, {round}, k={k}, probe {i}");
                    ambiguous += check_head_search(hs, &h, &model, p, k, &ctx);
                    positions += hs.len();
                }
            }
            let io = IdentifyOptions {
                k: 8,
                ..Default::default()
            };
            for (i, (p, id)) in vectors
                .iter()
                .zip(fx.g.identify_open(&vectors, &io).unwrap())
                .enumerate()
            {
                let ctx = format!("dim {dim}, {round}, identify probe {i}");
                ambiguous += check_head_identify(&id.candidates, &h, &model, p, 8, &ctx);
                positions += id.candidates.len();
            }
            assert!(
                ambiguous * 100 <= positions,
                "dim {dim}, {round}: {ambiguous} near-ties of {positions}"
            );
            fx.reopen().unwrap();
        }
    }
}

// ---- enrolment after training -------------------------------------------------------

#[test]
fn subjects_enrolled_after_training_are_recognised_without_retraining() {
    let (old, new) = (300, 30);
    let data = anisotropic(old + new, 71);
    let first_new = data
        .embeddings
        .iter()
        .position(|e| e.subject == subject_name(old))
        .unwrap();
    let fx = Fixture::new(&data.embeddings[..first_new], first_new);
    let h = fx.g.train_head(&train_opts(1, 12_000, 1e-3)).unwrap();
    let file = std::fs::read(fx.head_file()).unwrap();
    fx.g.insert(&data.embeddings[first_new..]).unwrap();
    assert_eq!(*fx.g.head().unwrap(), h, "insert changed the head");
    assert_eq!(std::fs::read(fx.head_file()).unwrap(), file);

    let probes = data.probes(1_500, 0, 12);
    let vectors: Vec<Vec<f32>> = probes.iter().map(|p| p.vector.clone()).collect();
    let got =
        fx.g.identify_open(
            &vectors,
            &IdentifyOptions {
                k: 3,
                ..Default::default()
            },
        )
        .unwrap();
    let (mut n_new, mut ok_new, mut n_old, mut ok_old) = (0, 0, 0, 0);
    for (p, id) in probes.iter().zip(&got) {
        let sub = p.subject.as_ref().unwrap();
        let right = id.known && id.subject.as_ref() == Some(sub);
        if sub.as_str() >= subject_name(old).as_str() {
            n_new += 1;
            ok_new += right as usize;
        } else {
            n_old += 1;
            ok_old += right as usize;
        }
    }
    let (r_new, r_old) = (ok_new as f64 / n_new as f64, ok_old as f64 / n_old as f64);
    println!(
        "recognised: new subjects {ok_new}/{n_new}, enrolled before training {ok_old}/{n_old}"
    );
    assert!(n_new >= 80, "{n_new} probes of new subjects");
    assert!(r_new >= 0.95, "new subjects recognised {ok_new}/{n_new}");
    let se = (r_old * (1.0 - r_old) / n_new as f64).sqrt();
    assert!(
        r_new >= r_old - 4.0 * se - 1.0 / n_new as f64,
        "new {r_new} vs old {r_old}"
    );
}

// ---- head vs plain L2 -----------------------------------------------------------------

#[test]
fn the_head_beats_l2_on_anisotropic_data_and_matches_it_on_isotropic_data() {
    let o = train_opts(1, 40_000, 1e-3);
    let results: Vec<(&str, HeadInfo)> = [
        ("anisotropic", anisotropic(900, 81)),
        ("isotropic", isotropic(900, 81)),
    ]
    .into_iter()
    .map(|(label, data)| {
        let fx = Fixture::new(&data.embeddings, data.embeddings.len());
        (label, fx.g.train_head(&o).unwrap())
    })
    .collect();
    for (label, h) in &results {
        let p = h.distance_tar_at_far;
        let se = (p * (1.0 - p) / h.heldout_genuine as f64).sqrt();
        println!(
            "{label}: TAR@FAR=1e-3 head {:.4} vs L2 {:.4} (±{se:.4}), AUC head {:.5} vs L2 {:.5}, {} genuine / {} impostor held out",
            h.tar_at_far, p, h.auc, h.distance_auc, h.heldout_genuine, h.heldout_impostor
        );
        assert!(h.heldout_impostor >= 5_000 && h.heldout_genuine >= 1_000);
        if *label == "anisotropic" {
            assert!(
                h.tar_at_far > p + 3.0 * se,
                "{label}: head TAR {} does not beat L2's {p} (se {se})",
                h.tar_at_far
            );
            assert!(h.auc > h.distance_auc, "{label}: AUC");
        } else {
            assert!(
                h.tar_at_far >= p - 3.0 * se,
                "{label}: head TAR {} is worse than L2's {p} beyond 3 se ({se})",
                h.tar_at_far
            );
        }
    }
}

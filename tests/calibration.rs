//! The calibration scenario: the false-accept rates of a gallery's default
//! decisions measured on fresh synthetic probes, counted here from the
//! decisions the public API returns and the generator's ground truth (no
//! engine code computes a rate). Shared by the engine test that holds the
//! rates to their target and by `visage-bench calibration`, which prints the
//! table.
//!
//! A gallery of `subjects` × `images` embeddings gets a head trained at
//! `target_far`; then, each on `decisions` fresh decisions:
//! - Verify vector vs vector: two fresh images of different enrolled subjects;
//! - Verify vector vs subject: a fresh image of one enrolled subject claims
//!   another (all of whose images are compared);
//! - Identify (open set) strangers, people never enrolled, at the training
//!   size; after enrolling 3× as many new subjects (the gallery grows 4×);
//!   and after removing those and half of the original subjects (half the
//!   training size). Nothing is retrained in between.
//!
//! Genuine decisions are counted too (true-accept rates), for the report.

use std::path::Path;
use std::sync::Arc;
use visage_engine::synth::{Nuisance, SynthConfig, SynthGallery, subject_name};
use visage_engine::{
    Embedding, Engine, EngineOptions, Gallery, IdentifyOptions, TrainOptions, Verdict,
    VerifyOptions, VerifyPair, VerifyTarget,
};

/// The scenario's parameters.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Enrolled subjects at training time.
    pub subjects: usize,
    /// Images per subject.
    pub images: usize,
    /// Target false-accept rate of training.
    pub target_far: f64,
    /// Decisions measured per rate.
    pub decisions: usize,
    /// Seed of the data.
    pub seed: u64,
    /// How images of one person vary.
    pub nuisance: Nuisance,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            subjects: 4000,
            images: 10,
            target_far: 0.01,
            decisions: 20_000,
            seed: 12,
            nuisance: NUISANCE,
        }
    }
}

/// Moderate difficulty: the default anisotropic noise at 0.8× its standard
/// deviation, which puts the mean cosine of two images of one person near
/// 0.5 (printed by the scenario as `genuine_cosine`). Images with more noise
/// than most in the strong coordinates lie closer to everyone: some strangers
/// are near many people, as with real faces.
pub const NUISANCE: Nuisance = Nuisance::Anisotropic {
    strong_dims: 24,
    strong_sigma: 0.22 * 0.8,
    weak_sigma: 0.075 * 0.8,
};

/// The same total noise spread over every coordinate alike: every stranger is
/// about as near to people as any other.
pub const ISOTROPIC: Nuisance = Nuisance::Isotropic { sigma: 0.0934 };

/// One measured rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    /// What was decided.
    pub decision: &'static str,
    /// Decisions made.
    pub decisions: usize,
    /// Of which accepted.
    pub accepted: usize,
    /// Whether an acceptance is an error (impostor) or not (genuine).
    pub impostor: bool,
}

impl Rate {
    /// Accepted / decisions.
    pub fn rate(&self) -> f64 {
        self.accepted as f64 / self.decisions.max(1) as f64
    }
}

/// What the scenario measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Mean cosine of two fresh images of one enrolled subject.
    pub genuine_cosine: f64,
    /// The rates, impostor ones first.
    pub rates: Vec<Rate>,
    /// The trained gallery's head, as reported.
    pub head: visage_engine::HeadInfo,
    /// Seconds training took.
    pub train_seconds: f64,
    /// Expected calibration error of the verdicts' probabilities on as many
    /// fresh genuine as impostor pairs (prior ½).
    pub ece: f64,
}

impl Measured {
    /// The rate named `decision`.
    pub fn get(&self, decision: &str) -> &Rate {
        self.rates
            .iter()
            .find(|r| r.decision == decision)
            .unwrap_or_else(|| panic!("no rate {decision}"))
    }
}

/// Names of the rates.
pub const PAIR_FAR: &str = "verify vector vs vector, impostor pairs";
/// Impostor subject claims.
pub const CLAIM_FAR: &str = "verify vector vs subject, impostor claims";
/// Strangers at the training size.
pub const FPIR: &str = "identify strangers, gallery at training size";
/// Strangers after growth.
pub const FPIR_GROWN: &str = "identify strangers, gallery grown 4x";
/// Strangers after shrinking.
pub const FPIR_SHRUNK: &str = "identify strangers, gallery shrunk to half";
/// Genuine pairs.
pub const PAIR_TAR: &str = "verify vector vs vector, genuine pairs";
/// Genuine claims.
pub const CLAIM_TAR: &str = "verify vector vs subject, genuine claims";

/// Four times the scenario's people, from one generator (the same
/// variation between images for all): the first quarter is enrolled for
/// training, the rest when the gallery grows.
fn population(s: &Scenario) -> SynthGallery {
    SynthGallery::generate(SynthConfig {
        subjects: 4 * s.subjects,
        min_images: s.images,
        max_images: s.images,
        nuisance: s.nuisance,
        seed: s.seed,
        ..SynthConfig::default()
    })
}

fn insert(g: &Gallery, rows: &[Embedding]) {
    for chunk in rows.chunks(10_000) {
        g.insert(chunk).expect("insert");
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn verify_all(g: &Gallery, pairs: &[VerifyPair]) -> Vec<Verdict> {
    pairs
        .chunks(1000)
        .flat_map(|c| g.verify(c, &VerifyOptions::default()).expect("verify"))
        .collect()
}

fn verify_count(g: &Gallery, pairs: &[VerifyPair]) -> usize {
    verify_all(g, pairs).iter().filter(|v| v.same).count()
}

/// Expected calibration error of probabilities against outcomes, in ten
/// equal-width bins of the probability: Σ (bin size / n)·|mean p − fraction same|.
pub fn expected_calibration_error(scored: &[(f64, bool)]) -> f64 {
    let mut bins = [(0usize, 0.0f64, 0usize); 10];
    for &(p, same) in scored {
        let b = ((p * 10.0) as usize).min(9);
        bins[b].0 += 1;
        bins[b].1 += p;
        bins[b].2 += usize::from(same);
    }
    let n = scored.len().max(1) as f64;
    bins.iter()
        .filter(|b| b.0 > 0)
        .map(|&(k, sum, same)| k as f64 / n * (sum / k as f64 - same as f64 / k as f64).abs())
        .sum()
}

fn strangers_accepted(g: &Gallery, probes: &[Vec<f32>]) -> usize {
    let opts = IdentifyOptions {
        k: 1,
        ..Default::default()
    };
    probes
        .chunks(1000)
        .map(|c| {
            g.identify_open(c, &opts)
                .expect("identify")
                .iter()
                .filter(|i| i.known)
                .count()
        })
        .sum()
}

/// Run the scenario in a new data directory under `dir`, training with `train`
/// (its `target_far` is set from the scenario).
pub fn run(dir: &Path, s: &Scenario, train: TrainOptions) -> Measured {
    let mut opts = EngineOptions::default();
    opts.gallery.background = false;
    let engine = Engine::open(dir, opts).expect("open");
    let g: Arc<Gallery> = engine.create_gallery("faces").expect("create");
    let base = population(s);
    let enrolled = |e: &&Embedding| subject_index(&e.subject) < s.subjects;
    let rows: Vec<Embedding> = base.embeddings.iter().filter(enrolled).cloned().collect();
    insert(&g, &rows);
    g.flush().expect("flush");
    let started = std::time::Instant::now();
    let head = g
        .train_head(&TrainOptions {
            target_far: s.target_far,
            ..train
        })
        .expect("train");
    let train_seconds = started.elapsed().as_secs_f64();
    let n = s.decisions;
    // Fresh images of enrolled subjects, in pairs of different subjects
    // (impostor pairs and claims) and of the same subject (genuine ones).
    let known: Vec<_> = base
        .probes(20 * n, 0, s.seed ^ 0x5EED)
        .into_iter()
        .filter(|p| subject_index(p.subject.as_deref().unwrap_or("")) < s.subjects)
        .collect();
    let mut pair_imp = Vec::with_capacity(n);
    let mut claim_imp = Vec::with_capacity(n);
    let mut claim_gen = Vec::with_capacity(n);
    for w in known.chunks_exact(2) {
        let (a, b) = (&w[0], &w[1]);
        let (sa, sb) = (a.subject.clone().unwrap(), b.subject.clone().unwrap());
        if sa == sb {
            continue;
        }
        if pair_imp.len() < n {
            pair_imp.push(VerifyPair {
                a: a.vector.clone(),
                b: VerifyTarget::Vector(b.vector.clone()),
            });
        } else if claim_imp.len() < n {
            claim_imp.push(VerifyPair {
                a: a.vector.clone(),
                b: VerifyTarget::Subject(sb),
            });
        }
        if claim_gen.len() < n {
            claim_gen.push(VerifyPair {
                a: b.vector.clone(),
                b: VerifyTarget::Subject(sb_of(b)),
            });
        }
    }
    assert!(
        pair_imp.len() == n && claim_imp.len() == n,
        "too few probes"
    );
    // Genuine pairs: two fresh images of one subject.
    let mut by_subject: std::collections::BTreeMap<String, Vec<&[f32]>> = Default::default();
    for p in &known {
        by_subject
            .entry(p.subject.clone().unwrap())
            .or_default()
            .push(&p.vector);
    }
    let mut pair_gen = Vec::with_capacity(n);
    let mut cos = 0.0;
    for (a, b) in by_subject
        .values()
        .flat_map(|v| v.chunks_exact(2).map(|w| (w[0], w[1])))
        .take(n)
    {
        cos += cosine(a, b);
        pair_gen.push(VerifyPair {
            a: a.to_vec(),
            b: VerifyTarget::Vector(b.to_vec()),
        });
    }
    let stranger_probes = |seed: u64| -> Vec<Vec<f32>> {
        base.probes(0, n, seed)
            .into_iter()
            .map(|p| p.vector)
            .collect()
    };
    let rate = |decision, accepted, impostor| Rate {
        decision,
        decisions: n,
        accepted,
        impostor,
    };
    // Reliability: as many genuine as impostor pairs, the default prior ½.
    let imp_verdicts = verify_all(&g, &pair_imp);
    let gen_verdicts = verify_all(&g, &pair_gen[..pair_gen.len().min(pair_imp.len())]);
    let scored: Vec<(f64, bool)> = imp_verdicts
        .iter()
        .map(|v| (v, false))
        .chain(gen_verdicts.iter().map(|v| (v, true)))
        .map(|(v, same)| (f64::from(v.probability.expect("a trained head")), same))
        .collect();
    let ece = expected_calibration_error(&scored);
    let mut rates = vec![
        rate(
            PAIR_FAR,
            imp_verdicts.iter().filter(|v| v.same).count(),
            true,
        ),
        rate(CLAIM_FAR, verify_count(&g, &claim_imp), true),
        rate(
            FPIR,
            strangers_accepted(&g, &stranger_probes(s.seed ^ 1)),
            true,
        ),
    ];
    // Grow 4×: enrol the other three quarters of the population.
    let rest: Vec<Embedding> = base
        .embeddings
        .iter()
        .filter(|e| !enrolled(e))
        .cloned()
        .collect();
    insert(&g, &rest);
    let mut grown: Vec<String> = rest.iter().map(|e| e.subject.clone()).collect();
    g.flush().expect("flush");
    rates.push(rate(
        FPIR_GROWN,
        strangers_accepted(&g, &stranger_probes(s.seed ^ 2)),
        true,
    ));
    // Shrink to half the training size.
    grown.sort_unstable();
    grown.dedup();
    grown.extend((0..s.subjects / 2).map(subject_name));
    for chunk in grown.chunks(1000) {
        g.delete(&[], chunk).expect("delete");
    }
    rates.push(rate(
        FPIR_SHRUNK,
        strangers_accepted(&g, &stranger_probes(s.seed ^ 3)),
        true,
    ));
    // Genuine rates on the half that remains enrolled.
    let remaining: Vec<VerifyPair> = claim_gen
        .into_iter()
        .filter(|p| match &p.b {
            VerifyTarget::Subject(s0) => subject_index(s0) >= s.subjects / 2,
            _ => false,
        })
        .collect();
    rates.push(Rate {
        decision: CLAIM_TAR,
        decisions: remaining.len(),
        accepted: verify_count(&g, &remaining),
        impostor: false,
    });
    rates.push(Rate {
        decision: PAIR_TAR,
        decisions: pair_gen.len(),
        accepted: verify_count(&g, &pair_gen),
        impostor: false,
    });
    Measured {
        genuine_cosine: cos / pair_gen.len().max(1) as f64,
        rates,
        head,
        train_seconds,
        ece,
    }
}

fn sb_of(p: &visage_engine::synth::Probe) -> String {
    p.subject.clone().unwrap()
}

fn subject_index(name: &str) -> usize {
    name.trim_start_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or(0)
}

/// The measured rates as a Markdown table.
pub fn table(m: &Measured, target: f64) -> String {
    let mut out = String::from(
        "| decision | decisions | accepted | measured rate | target |\n|---|---|---|---|---|\n",
    );
    for r in &m.rates {
        let tgt = if r.impostor {
            format!("{target}")
        } else {
            "-".into()
        };
        let ratio = if r.impostor {
            format!(" ({:.1}×)", r.rate() / target)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.4}{ratio} | {tgt} |\n",
            r.decision,
            r.decisions,
            r.accepted,
            r.rate()
        ));
    }
    out
}

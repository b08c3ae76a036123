//! Subject-level calibration: the decisions that compare a probe with a whole
//! subject rather than with one embedding.
//!
//! - A **claim** ("this probe is subject B", `Verify` against a subject)
//!   compares the probe with every image of B. The best of `m` comparisons
//!   passes a pair threshold far more often than one comparison does, so
//!   claims get thresholds of their own, one per image count `m`, each set on
//!   held-out impostor claims with exactly `m` images. Two claim scores are
//!   measured, the best of the `m` scores and their mean; the one with the
//!   higher true-accept rate at the target is kept ([`ClaimScore`]).
//! - **Identification** keeps the best match over the whole gallery, so a
//!   stranger's chance of passing a fixed threshold grows with the number N
//!   of enrolled subjects. Each held-out probe is scored against a sample of
//!   subjects (its score against a subject is the best over the subject's
//!   images); its scores are standardised by their own mean and spread (some
//!   faces are near many people, and dominate false positives), and the
//!   standardised scores of all probes are pooled into one tail. The
//!   false-positive identification rate at threshold `t` for N subjects is
//!   then the mean over probes of `1 − (1 − G((t − μ_p)/σ_p))^N`, `G` the
//!   pooled survival (empirical, with an exponential tail beyond its 100
//!   highest values); the threshold for each N on a grid around the
//!   calibration size is solved from it and stored ([`OpenSetModel`]).
//!   Decisions interpolate the grid at the gallery's current N.
//!
//! Everything is a function of the snapshot, the scores and the seed:
//! probes are scored in parallel but collected in order.

use super::calibrate::{calibrate, f32_at_or_above};
use super::pairs::RowRef;
use crate::DIM;
use crate::rng::Rng;
use crate::snapshot::Snapshot;
use rayon::prelude::*;

/// Most subjects each probe is scored against.
const MAX_SUBJECTS: usize = 4000;
/// Of those, how many give each probe an impostor claim per image count.
const CLAIM_SUBJECTS: usize = 64;
/// Image counts with a claim threshold of their own; larger subjects use the last.
pub const MAX_CLAIM_IMAGES: usize = 32;
/// Impostor claims needed to set a claim threshold.
const MIN_CLAIMS: usize = 1000;
/// Pooled standardised scores above which the tail is exponential.
const TAIL_K: usize = 100;
/// Grid of gallery sizes: N0 · 2^(j/4) for j in −GRID..=GRID.
const GRID: i32 = 24;

/// How a claim scores a subject's images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimScore {
    /// The best of the subject's images.
    Best,
    /// The mean over the subject's images (the head's logit only).
    Mean,
}

/// Thresholds of claims against a subject, by its image count.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimCalibration {
    /// The head's claim score.
    pub score: ClaimScore,
    /// Head: accept iff the claim score on the logit reaches entry `m − 1`
    /// (subjects with more images than entries use the last). Empty without a head.
    pub logit_thresholds: Vec<f32>,
    /// Distance: accept iff the smallest squared distance to the subject's
    /// images is at most entry `m − 1`.
    pub distance_thresholds: Vec<f32>,
    /// The image count at which the rates below were measured (the gallery's
    /// median, or the largest with enough genuine claims).
    pub images: u32,
    /// The head's true-accept rate of genuine claims at its threshold.
    pub tar: f64,
    /// The same with the other claim score (what was not chosen).
    pub tar_other: f64,
    /// Plain distance's (best of `m`) true-accept rate of genuine claims.
    pub distance_tar: f64,
}

/// One grid point of the open-set model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenPoint {
    /// Enrolled subjects.
    pub subjects: u64,
    /// Threshold for that many: on the logit (accept iff ≥) or the squared
    /// distance (accept iff ≤).
    pub threshold: f32,
    /// Predicted false-positive identification rate at that size if the
    /// threshold stayed the one for the calibration size.
    pub fpir_fixed: f32,
}

/// The open-set (1:N) threshold as a function of the gallery's size.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenSetModel {
    /// Subjects enrolled at calibration.
    pub subjects: u64,
    /// Largest gallery size whose threshold rests mostly on observed scores
    /// (at least half of its predicted false positives come from standardised
    /// scores inside the observed range); beyond it, on the fitted tail.
    pub trusted_up_to: u64,
    /// Grid, by size ascending.
    pub points: Vec<OpenPoint>,
}

impl OpenSetModel {
    /// The threshold for `n` subjects: linear in log N between grid points,
    /// the end points beyond the grid.
    pub fn threshold(&self, n: u64) -> Option<f32> {
        let p = &self.points;
        let (first, last) = (p.first()?, p.last()?);
        if n <= first.subjects {
            return Some(first.threshold);
        }
        if n >= last.subjects {
            return Some(last.threshold);
        }
        let i = p.partition_point(|q| q.subjects <= n);
        let (a, b) = (&p[i - 1], &p[i]);
        let f = ((n as f64).ln() - (a.subjects as f64).ln())
            / ((b.subjects as f64).ln() - (a.subjects as f64).ln());
        let t = a.threshold as f64 + f * (b.threshold as f64 - a.threshold as f64);
        Some(t as f32)
    }
}

/// What the subject-level calibration sets.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SubjectLevel {
    pub claims: Option<ClaimCalibration>,
    pub open_head: Option<OpenSetModel>,
    pub open_distance: Option<OpenSetModel>,
    /// Open-set TAR at the calibration size: head, distance.
    pub open_tar: (f64, f64),
    /// Probes used.
    pub probes: u64,
}

/// Scores of the probes against the sampled subjects, in one "higher means
/// same" unit (the logit, or minus the squared distance).
struct Scored {
    /// Per probe: its score against each sampled subject but its own.
    best: Vec<Vec<f64>>,
    /// Per image count `m`: impostor claims, best of `m` and mean of `m`.
    imp_best: Vec<Vec<f64>>,
    imp_mean: Vec<Vec<f64>>,
    /// Per image count: genuine claims (the probe's own other images).
    gen_best: Vec<Vec<f64>>,
    gen_mean: Vec<Vec<f64>>,
    /// Per probe: best score against its own other images (if any).
    own_best: Vec<f64>,
}

struct ProbeScores {
    best: Vec<f64>,
    imp: Vec<(usize, f64, f64)>,
    gen_: Vec<(usize, f64, f64)>,
    own_best: Option<f64>,
}

fn score_all(
    snap: &Snapshot,
    groups: &[Vec<RowRef>],
    sample: &[usize],
    probes: &[(RowRef, usize)],
    score: &(dyn Fn(&[f32; DIM], &[f32; DIM]) -> f64 + Sync),
) -> Scored {
    let vec_of = |(s, r): RowRef| &snap.vectors(s as usize)[r as usize];
    let per: Vec<ProbeScores> = probes
        .par_iter()
        .map(|&(row, own)| {
            let q = vec_of(row);
            let mut out = ProbeScores {
                best: Vec::with_capacity(sample.len()),
                imp: Vec::new(),
                gen_: Vec::new(),
                own_best: None,
            };
            let mut claimed = 0;
            for &s in sample {
                if s == own {
                    continue;
                }
                let claims = claimed < CLAIM_SUBJECTS;
                claimed += 1;
                let (mut mx, mut sum) = (f64::NEG_INFINITY, 0.0);
                for (i, &r) in groups[s].iter().enumerate() {
                    let v = score(q, vec_of(r));
                    mx = mx.max(v);
                    sum += v;
                    if claims && i < MAX_CLAIM_IMAGES {
                        out.imp.push((i, mx, sum / (i + 1) as f64));
                    }
                }
                out.best.push(mx);
            }
            let (mut mx, mut sum, mut i) = (f64::NEG_INFINITY, 0.0, 0);
            for &r in &groups[own] {
                if r == row {
                    continue;
                }
                let v = score(q, vec_of(r));
                mx = mx.max(v);
                sum += v;
                if i < MAX_CLAIM_IMAGES {
                    out.gen_.push((i, mx, sum / (i + 1) as f64));
                }
                i += 1;
            }
            out.own_best = (i > 0).then_some(mx);
            out
        })
        .collect();
    let mut s = Scored {
        best: Vec::with_capacity(per.len()),
        imp_best: vec![Vec::new(); MAX_CLAIM_IMAGES],
        imp_mean: vec![Vec::new(); MAX_CLAIM_IMAGES],
        gen_best: vec![Vec::new(); MAX_CLAIM_IMAGES],
        gen_mean: vec![Vec::new(); MAX_CLAIM_IMAGES],
        own_best: Vec::new(),
    };
    for p in per {
        for (m, b, a) in p.imp {
            s.imp_best[m].push(b);
            s.imp_mean[m].push(a);
        }
        for (m, b, a) in p.gen_ {
            s.gen_best[m].push(b);
            s.gen_mean[m].push(a);
        }
        s.own_best.extend(p.own_best);
        s.best.push(p.best);
    }
    s
}

/// Calibrate the subject-level decisions at `target` (false-accept rate of
/// claims, false-positive identification rate of strangers). `groups` are
/// the live rows of each subject; `probes` held-out rows with their subject;
/// `logit` the trained head's score, if any.
pub(super) fn calibrate_subjects(
    snap: &Snapshot,
    groups: &[Vec<RowRef>],
    probes: &[(RowRef, usize)],
    target: f64,
    seed: u64,
    logit: Option<&(dyn Fn(&[f32; DIM], &[f32; DIM]) -> f64 + Sync)>,
) -> Option<SubjectLevel> {
    if probes.is_empty() || groups.len() < 2 {
        return None;
    }
    // A seeded sample of subjects, each with its rows in a seeded order (a
    // claim with m images uses the first m).
    let mut rng = Rng::new(seed ^ 0x5B1E_C75C_0000_0001);
    let mut order: Vec<usize> = (0..groups.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order.truncate(MAX_SUBJECTS);
    let mut shuffled: Vec<Vec<RowRef>> = groups.to_vec();
    for g in &mut shuffled {
        for i in (1..g.len()).rev() {
            g.swap(i, rng.below(i + 1));
        }
    }
    let mut sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
    sizes.sort_unstable();
    let median = sizes[sizes.len() / 2].max(1);
    let n0 = snap.subjects().max(1);

    let kernel = crate::search::kernels::selected();
    let dist = |a: &[f32; DIM], b: &[f32; DIM]| -f64::from(kernel.l2sq(a, b));
    let d = score_all(snap, &shuffled, &order, probes, &dist);
    let h = logit.map(|f| score_all(snap, &shuffled, &order, probes, f));

    // Claims: one threshold per image count with enough impostor claims.
    let counts = d
        .imp_best
        .iter()
        .take_while(|v| v.len() >= MIN_CLAIMS)
        .count();
    let claims = (counts > 0).then(|| {
        let eval_m = (1..=median.min(counts))
            .rev()
            .find(|&m| d.gen_best[m - 1].len() >= 100)
            .unwrap_or(1);
        let per_m = |imp: &[Vec<f64>], gen_: &[Vec<f64>]| -> (Vec<f64>, f64) {
            let ts: Vec<f64> = (0..counts)
                .map(|m| calibrate(&gen_[m], &imp[m], target).threshold)
                .collect();
            let g = &gen_[eval_m - 1];
            let t = ts[eval_m - 1];
            let tar = g.iter().filter(|&&s| s >= t).count() as f64 / g.len().max(1) as f64;
            (ts, if g.is_empty() { f64::NAN } else { tar })
        };
        let (dt, dtar) = per_m(&d.imp_best, &d.gen_best);
        let mut c = ClaimCalibration {
            score: ClaimScore::Best,
            logit_thresholds: Vec::new(),
            // Accept iff −distance ≥ t, i.e. distance ≤ −t (largest f32 at or below).
            distance_thresholds: dt.iter().map(|&t| -f32_at_or_above(t)).collect(),
            images: eval_m as u32,
            tar: f64::NAN,
            tar_other: f64::NAN,
            distance_tar: dtar,
        };
        if let Some(h) = &h {
            let (bt, btar) = per_m(&h.imp_best, &h.gen_best);
            let (mt, mtar) = per_m(&h.imp_mean, &h.gen_mean);
            let (score, ts, tar, other) = if mtar > btar {
                (ClaimScore::Mean, mt, mtar, btar)
            } else {
                (ClaimScore::Best, bt, btar, mtar)
            };
            c.score = score;
            c.logit_thresholds = ts.iter().map(|&t| f32_at_or_above(t)).collect();
            c.tar = tar;
            c.tar_other = other;
        }
        c
    });

    let (open_distance, dtar) = open_model(&d.best, &d.own_best, n0, target, true);
    let (open_head, htar) = match &h {
        Some(h) => {
            let (m, t) = open_model(&h.best, &h.own_best, n0, target, false);
            (m, t)
        }
        None => (None, f64::NAN),
    };
    Some(SubjectLevel {
        claims,
        open_head,
        open_distance,
        open_tar: (htar, dtar),
        probes: probes.len() as u64,
    })
}

/// The pooled standardised tail and each probe's location and scale.
struct Tail {
    /// Standardised scores, descending.
    z: Vec<f64>,
    /// Each probe's mean and standard deviation.
    loc: Vec<(f64, f64)>,
    /// Mean excess of the TAIL_K highest over the K-th.
    beta: f64,
}

impl Tail {
    fn new(best: &[Vec<f64>]) -> Option<Tail> {
        let mut loc = Vec::with_capacity(best.len());
        let mut z = Vec::new();
        for s in best.iter().filter(|s| s.len() >= 2) {
            let n = s.len() as f64;
            let mu = s.iter().sum::<f64>() / n;
            let var = s.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / (n - 1.0);
            let sd = var.sqrt().max(1e-12);
            loc.push((mu, sd));
            z.extend(s.iter().map(|v| (v - mu) / sd));
        }
        if z.len() < 2 * TAIL_K || !z.iter().all(|v| v.is_finite()) {
            return None;
        }
        z.par_sort_unstable_by(|a, b| b.total_cmp(a));
        let zk = z[TAIL_K - 1];
        let beta = (z[..TAIL_K].iter().map(|v| v - zk).sum::<f64>() / TAIL_K as f64).max(1e-9);
        Some(Tail { z, loc, beta })
    }

    /// Pooled survival P(Z ≥ z).
    fn survival(&self, z: f64) -> f64 {
        let total = self.z.len() as f64;
        let zk = self.z[TAIL_K - 1];
        if z > zk {
            return TAIL_K as f64 / total * (-(z - zk) / self.beta).exp();
        }
        self.z.partition_point(|&v| v >= z) as f64 / total
    }

    /// Predicted FPIR at score threshold `t` with `n` subjects, and the share
    /// of it from standardised scores beyond the observed range.
    fn fpir(&self, t: f64, n: f64) -> (f64, f64) {
        let zk = self.z[TAIL_K - 1];
        let (mut sum, mut beyond) = (0.0, 0.0);
        for &(mu, sd) in &self.loc {
            let z = (t - mu) / sd;
            let g = self.survival(z).min(1.0 - 1e-15);
            let p = -(n * (-g).ln_1p()).exp_m1();
            sum += p;
            if z > zk {
                beyond += p;
            }
        }
        let k = self.loc.len() as f64;
        (sum / k, if sum > 0.0 { beyond / sum } else { 0.0 })
    }

    /// The score threshold at which the predicted FPIR with `n` subjects is `target`.
    fn solve(&self, target: f64, n: f64) -> f64 {
        let lo0 = self
            .loc
            .iter()
            .map(|&(mu, sd)| mu + sd * self.z[self.z.len() - 1])
            .fold(f64::INFINITY, f64::min);
        let hi0 = self
            .loc
            .iter()
            .map(|&(mu, sd)| mu + sd * self.z[0])
            .fold(f64::NEG_INFINITY, f64::max);
        let (mut lo, mut hi) = (lo0, hi0);
        let mut width = (hi0 - lo0).max(1e-9);
        while self.fpir(hi, n).0 > target && width < 1e12 {
            hi += width;
            width *= 2.0;
        }
        for _ in 0..80 {
            let mid = lo + (hi - lo) / 2.0;
            if self.fpir(mid, n).0 > target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }
}

/// The open-set model of one score from each probe's scores against other
/// subjects (`best`), with the open-set TAR at the calibration size from the
/// probes' best scores against their own other images. `distance`: the score
/// is minus the squared distance, and thresholds are stored as distances.
fn open_model(
    best: &[Vec<f64>],
    own_best: &[f64],
    n0: u64,
    target: f64,
    distance: bool,
) -> (Option<OpenSetModel>, f64) {
    let Some(tail) = Tail::new(best) else {
        return (None, f64::NAN);
    };
    let stored = |t: f64| {
        if distance {
            -f32_at_or_above(t)
        } else {
            f32_at_or_above(t)
        }
    };
    let t0 = tail.solve(target, n0 as f64);
    let mut points: Vec<OpenPoint> = Vec::new();
    let mut trusted_up_to = 0;
    for j in -GRID..=GRID {
        let n = ((n0 as f64) * 2f64.powf(f64::from(j) / 4.0))
            .round()
            .max(1.0) as u64;
        if points.last().is_some_and(|p| p.subjects >= n) {
            continue;
        }
        let t = if n == n0 {
            t0
        } else {
            tail.solve(target, n as f64)
        };
        if tail.fpir(t, n as f64).1 <= 0.5 {
            trusted_up_to = n;
        }
        points.push(OpenPoint {
            subjects: n,
            threshold: stored(t),
            fpir_fixed: tail.fpir(t0, n as f64).0 as f32,
        });
    }
    let tar = own_best.iter().filter(|&&s| s >= t0).count() as f64 / own_best.len().max(1) as f64;
    (
        Some(OpenSetModel {
            subjects: n0,
            trusted_up_to,
            points,
        }),
        if own_best.is_empty() { f64::NAN } else { tar },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_interpolates_in_log_n_and_clamps() {
        let m = OpenSetModel {
            subjects: 100,
            trusted_up_to: 400,
            points: vec![
                OpenPoint {
                    subjects: 100,
                    threshold: 1.0,
                    fpir_fixed: 0.01,
                },
                OpenPoint {
                    subjects: 400,
                    threshold: 3.0,
                    fpir_fixed: 0.04,
                },
            ],
        };
        assert_eq!(m.threshold(1), Some(1.0));
        assert_eq!(m.threshold(100), Some(1.0));
        assert!((m.threshold(200).unwrap() - 2.0).abs() < 1e-6);
        assert_eq!(m.threshold(10_000), Some(3.0));
    }

    /// Probes whose scores against subjects are independent normals with
    /// their own location and scale: the solved thresholds give the target
    /// FPIR when strangers are simulated against N fresh subjects.
    #[test]
    fn solved_thresholds_hold_the_target_when_simulated() {
        let mut rng = Rng::new(9);
        let probes = 400;
        let per = 1000;
        let locs: Vec<(f64, f64)> = (0..probes)
            .map(|_| {
                let mu = f64::from(rng.normal()) * 0.5;
                let sd = 1.0 + 0.3 * f64::from(rng.normal()).abs();
                (mu, sd)
            })
            .collect();
        let best: Vec<Vec<f64>> = locs
            .iter()
            .map(|&(mu, sd)| {
                (0..per)
                    .map(|_| mu + sd * f64::from(rng.normal()))
                    .collect()
            })
            .collect();
        let tail = Tail::new(&best).unwrap();
        for n in [250.0, 1000.0, 4000.0] {
            let t = tail.solve(0.05, n);
            // Simulate: fresh strangers from the same population, best of n.
            let trials = 4000;
            let mut hits = 0;
            for i in 0..trials {
                let (mu, sd) = locs[i % probes];
                let mut mx = f64::NEG_INFINITY;
                for _ in 0..n as usize {
                    mx = mx.max(mu + sd * f64::from(rng.normal()));
                }
                if mx >= t {
                    hits += 1;
                }
            }
            let rate = f64::from(hits) / trials as f64;
            assert!((0.035..=0.065).contains(&rate), "n {n}: fpir {rate}");
        }
    }
}

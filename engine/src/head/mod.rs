//! The learned scoring head: training, calibration and scoring.
//!
//! `p(same | a, b) = σ(Σ_k w_k·|a_k − b_k| + w_d·‖a − b‖² + β)`: the article's
//! logistic unit over the 128 features |a_k − b_k|, plus one feature, the
//! squared distance itself. Without it, a weighted-L1 head cannot express the
//! plain L2 rule and loses to it on isotropic data; with it, plain L2 is the
//! special case `w = 0`, so the head can only match or beat it. Trained per gallery from its
//! own labels: positive pairs within subjects, negative pairs both random and
//! hard (the nearest embeddings of other subjects, found with the engine's own
//! exact search). Subjects are split into a training set and a held-out set;
//! the head is fitted on training pairs by L2-regularised, class-balanced
//! logistic regression solved with Newton's method (129 unknowns: a 129×129
//! Cholesky solve per step), and calibrated on held-out pairs: the decision
//! threshold is set so that at most the target fraction of held-out impostor
//! pairs is accepted. The same calibration gives a plain squared-distance
//! threshold, so "unknown" works without a head too.
//!
//! Everything is deterministic for a given seed: sampling uses a seeded
//! generator and sums are reduced in a fixed order whatever the thread count.
//! Persisting the result is the gallery's (through [`crate::storage::format`]); scoring
//! uses the weighted-L1 kernel in [`crate::search::kernels`].

use crate::DIM;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::search::kernels;
use crate::search::{self, Metric};
use crate::snapshot::Snapshot;
use crate::storage::format::HeadData;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};

/// Most pairs one training or calibration may draw. Each pair costs its 128
/// features (512 bytes) and a share of every Newton step: the limit keeps a
/// request from asking for gigabytes (found by the `requests` fuzz target:
/// `max_pairs` is a `uint32` on the wire).
pub const MAX_TRAIN_PAIRS: usize = 1_000_000;

/// Parameters of training and calibration.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// False-accept rate the decision threshold is set for (on held-out impostor pairs).
    pub target_far: f64,
    /// Upper bound on the pairs used (training and calibration together), 100
    /// to [`MAX_TRAIN_PAIRS`]; bounds the work.
    pub max_pairs: usize,
    /// Seed of all sampling.
    pub seed: u64,
    /// L2 penalty `λ/2·‖w‖²` added to the summed (class-balanced) log-loss; the bias is not penalised.
    pub l2: f64,
    /// Fraction of subjects held out for calibration.
    pub heldout_fraction: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            target_far: 1e-3,
            max_pairs: 200_000,
            seed: 1,
            l2: 1.0,
            heldout_fraction: 0.3,
        }
    }
}

/// A trained head and its calibration, as reported to clients.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadInfo {
    /// Whether a head is trained (false: only the distance threshold is calibrated).
    pub trained: bool,
    /// Weights `w_k`.
    pub weights: Vec<f32>,
    /// Weight `w_d` of the squared distance ‖a − b‖².
    pub distance_weight: f32,
    /// Bias `β`.
    pub bias: f32,
    /// Decision threshold on the probability.
    pub threshold: f32,
    /// The same threshold on the logit (what decisions compare, exactly).
    pub logit_threshold: f32,
    /// False-accept rate the thresholds were set for.
    pub target_far: f64,
    /// Head's area under the ROC curve on held-out pairs.
    pub auc: f64,
    /// Head's true-accept rate at the threshold on held-out genuine pairs.
    pub tar_at_far: f64,
    /// Head's equal error rate on held-out pairs.
    pub eer: f64,
    /// Training pairs.
    pub pairs: u64,
    /// Held-out genuine pairs used for calibration.
    pub heldout_genuine: u64,
    /// Held-out impostor pairs used for calibration.
    pub heldout_impostor: u64,
    /// Decision threshold on the squared L2 distance (same iff distance ≤ it).
    pub distance_threshold: f32,
    /// Plain distance's AUC on the same held-out pairs.
    pub distance_auc: f64,
    /// Plain distance's TAR at the target FAR.
    pub distance_tar_at_far: f64,
    /// Plain distance's EER.
    pub distance_eer: f64,
    /// Seed used.
    pub seed: u64,
    /// Open-set (1:N identification) threshold on the logit: a probe is
    /// "known" iff its best candidate's logit reaches it.
    pub open_logit_threshold: f32,
    /// Open-set threshold on the squared distance (without a head).
    pub open_distance_threshold: f32,
    /// Open-set TAR of the head: held-out embeddings whose best match of their
    /// own subject passes the open-set threshold.
    pub open_tar: f64,
    /// The same for plain distance.
    pub open_distance_tar: f64,
    /// Probes used for the open-set calibration (0: not calibrated).
    pub open_probes: u64,
}

impl HeadInfo {
    /// The head's logit for a pair: `Σ w_k·|a_k − b_k| + w_d·‖a − b‖² + β`.
    ///
    /// Values near `f32::MAX` (finite, so accepted) overflow the sums, and an
    /// infinite term of each sign makes a NaN. Such a pair is no evidence of the
    /// same person: its logit is −∞ (probability 0, never accepted), never NaN.
    pub fn logit(&self, a: &[f32; DIM], b: &[f32; DIM]) -> f32 {
        let k = kernels::selected();
        let z = k.wl1(&self.weights, a, b) + self.distance_weight * k.l2sq(a, b) + self.bias;
        if z.is_nan() { f32::NEG_INFINITY } else { z }
    }

    /// The weights as an array (zeros if not trained).
    pub(crate) fn weight_array(&self) -> [f32; DIM] {
        let mut w = [0f32; DIM];
        for (d, s) in w.iter_mut().zip(&self.weights) {
            *d = *s;
        }
        w
    }

    pub(crate) fn to_data(&self) -> HeadData {
        HeadData {
            flags: if self.trained { 3 } else { 2 } | if self.open_probes > 0 { 4 } else { 0 },
            weights: self.weight_array().to_vec(),
            distance_weight: self.distance_weight,
            bias: self.bias,
            logit_threshold: self.logit_threshold,
            distance_threshold: self.distance_threshold,
            stats: [
                self.target_far,
                self.auc,
                self.tar_at_far,
                self.eer,
                self.distance_auc,
                self.distance_tar_at_far,
                self.distance_eer,
            ],
            counts: [
                self.pairs,
                self.heldout_genuine,
                self.heldout_impostor,
                self.seed,
            ],
            open_thresholds: [self.open_logit_threshold, self.open_distance_threshold],
            open_tar: [self.open_tar, self.open_distance_tar],
            open_probes: self.open_probes,
        }
    }

    pub(crate) fn from_data(d: &HeadData) -> HeadInfo {
        HeadInfo {
            trained: d.flags & 1 == 1,
            weights: d.weights.clone(),
            distance_weight: d.distance_weight,
            bias: d.bias,
            threshold: sigmoid(d.logit_threshold),
            logit_threshold: d.logit_threshold,
            target_far: d.stats[0],
            auc: d.stats[1],
            tar_at_far: d.stats[2],
            eer: d.stats[3],
            pairs: d.counts[0],
            heldout_genuine: d.counts[1],
            heldout_impostor: d.counts[2],
            distance_threshold: d.distance_threshold,
            distance_auc: d.stats[4],
            distance_tar_at_far: d.stats[5],
            distance_eer: d.stats[6],
            seed: d.counts[3],
            open_logit_threshold: d.open_thresholds[0],
            open_distance_threshold: d.open_thresholds[1],
            open_tar: d.open_tar[0],
            open_distance_tar: d.open_tar[1],
            open_probes: if d.flags & 4 == 4 { d.open_probes } else { 0 },
        }
    }
}

/// The logistic function.
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// A labelled pair of rows: (source, row) of each side.
type RowRef = (u32, u32);

/// Training and calibration pairs drawn from a snapshot.
#[derive(Debug, Default)]
pub(crate) struct Pairs {
    pub train: Vec<(RowRef, RowRef, bool)>,
    pub heldout: Vec<(RowRef, RowRef, bool)>,
    /// Held-out rows to probe the gallery with for the open-set calibration.
    pub open_probes: Vec<RowRef>,
}

/// Most probes of the open-set calibration.
const OPEN_PROBES: usize = 2000;
/// Candidates examined per open-set probe.
const OPEN_K: usize = 32;

/// Live rows grouped by subject, in a deterministic order.
fn rows_by_subject(snap: &Snapshot) -> Vec<Vec<RowRef>> {
    let mut map: HashMap<&str, Vec<RowRef>> = HashMap::new();
    for s in 0..snap.source_count() {
        for row in 0..snap.vectors(s).len() {
            if !snap.deleted(s, row) {
                map.entry(snap.subject(s, row))
                    .or_default()
                    .push((s as u32, row as u32));
            }
        }
    }
    let mut v: Vec<(&str, Vec<RowRef>)> = map.into_iter().collect();
    v.sort_unstable_by(|a, b| a.0.cmp(b.0));
    v.into_iter().map(|(_, rows)| rows).collect()
}

/// Draw the pairs: training positives, random and hard negatives; held-out genuine and impostor pairs.
pub(crate) fn sample_pairs(
    snap: &Snapshot,
    opts: &TrainOptions,
    with_training: bool,
) -> Result<Pairs> {
    let groups = rows_by_subject(snap);
    let mut rng = Rng::new(opts.seed);
    let mut order: Vec<usize> = (0..groups.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let n_held = ((groups.len() as f64 * opts.heldout_fraction).round() as usize)
        .clamp(1, groups.len().saturating_sub(1).max(1));
    let (held, train) = order.split_at(n_held.min(order.len()));
    let multi = |set: &[usize]| set.iter().filter(|&&s| groups[s].len() >= 2).count();
    if held.len() < 2 || multi(held) < 1 || (with_training && (train.len() < 2 || multi(train) < 1))
    {
        return Err(Error::InvalidArgument(format!(
            "the gallery has {} subjects; training and calibration need at least 4, several with two or more embeddings",
            groups.len()
        )));
    }
    let held_budget = if with_training {
        opts.max_pairs / 4
    } else {
        opts.max_pairs
    };
    let train_budget = opts.max_pairs - held_budget;
    let mut pairs = Pairs::default();
    let genuine =
        |rng: &mut Rng, set: &[usize], out: &mut Vec<(RowRef, RowRef, bool)>, n: usize| {
            let multi: Vec<usize> = set
                .iter()
                .copied()
                .filter(|&s| groups[s].len() >= 2)
                .collect();
            let available: usize = multi
                .iter()
                .map(|&s| groups[s].len() * (groups[s].len() - 1) / 2)
                .sum();
            if available <= n {
                for &s in &multi {
                    let g = &groups[s];
                    for i in 0..g.len() {
                        for j in i + 1..g.len() {
                            out.push((g[i], g[j], true));
                        }
                    }
                }
            } else {
                for _ in 0..n {
                    let g = &groups[multi[rng.below(multi.len())]];
                    let i = rng.below(g.len());
                    let j = (i + 1 + rng.below(g.len() - 1)) % g.len();
                    out.push((g[i], g[j], true));
                }
            }
        };
    let impostor =
        |rng: &mut Rng, set: &[usize], out: &mut Vec<(RowRef, RowRef, bool)>, n: usize| {
            for _ in 0..n {
                let a = set[rng.below(set.len())];
                let b = loop {
                    let b = set[rng.below(set.len())];
                    if b != a {
                        break b;
                    }
                };
                let (ga, gb) = (&groups[a], &groups[b]);
                out.push((ga[rng.below(ga.len())], gb[rng.below(gb.len())], false));
            }
        };
    if with_training {
        genuine(&mut rng, train, &mut pairs.train, train_budget / 2);
        let n_pos = pairs.train.len();
        let n_neg = train_budget.saturating_sub(n_pos).max(n_pos);
        // Hard negatives: the nearest rows of other training subjects to random training rows.
        let n_hard = n_neg / 3;
        let per_query = 16usize;
        let n_queries = n_hard.div_ceil(per_query - 1).min(256);
        let train_set: HashSet<usize> = train.iter().copied().collect();
        let mut subject_of: HashMap<RowRef, usize> = HashMap::new();
        for &s in train {
            for &r in &groups[s] {
                subject_of.insert(r, s);
            }
        }
        let queries: Vec<(RowRef, usize)> = (0..n_queries)
            .map(|_| {
                let s = train[rng.below(train.len())];
                (groups[s][rng.below(groups[s].len())], s)
            })
            .collect();
        let qv: Vec<[f32; DIM]> = queries
            .iter()
            .map(|&((src, row), _)| snap.vectors(src as usize)[row as usize])
            .collect();
        let tops = search::top_k(snap, &qv, per_query, Metric::L2);
        let mut hard = 0;
        for (&(q, s), cands) in queries.iter().zip(&tops) {
            for c in cands {
                let r = (c.src, c.row);
                if let Some(&other) = subject_of.get(&r)
                    && other != s
                    && train_set.contains(&other)
                {
                    pairs.train.push((q, r, false));
                    hard += 1;
                }
            }
        }
        impostor(
            &mut rng,
            train,
            &mut pairs.train,
            n_neg.saturating_sub(hard),
        );
    }
    // Open-set probes: one row of each held-out subject with two or more rows, in turn.
    for round in 0.. {
        let before = pairs.open_probes.len();
        for &s in held {
            if pairs.open_probes.len() >= OPEN_PROBES {
                break;
            }
            if let Some(&r) = groups[s].get(round).filter(|_| groups[s].len() >= 2) {
                pairs.open_probes.push(r);
            }
        }
        if pairs.open_probes.len() == before || pairs.open_probes.len() >= OPEN_PROBES {
            break;
        }
    }
    genuine(&mut rng, held, &mut pairs.heldout, held_budget / 4);
    let n_gen = pairs.heldout.len();
    impostor(
        &mut rng,
        held,
        &mut pairs.heldout,
        held_budget.saturating_sub(n_gen).max(held_budget / 2),
    );
    Ok(pairs)
}

/// |a − b| for each pair, with labels.
pub(crate) fn features(
    snap: &Snapshot,
    pairs: &[(RowRef, RowRef, bool)],
) -> (Vec<[f32; DIM]>, Vec<bool>) {
    let x = pairs
        .par_iter()
        .map(|&((sa, ra), (sb, rb), _)| {
            let a = &snap.vectors(sa as usize)[ra as usize];
            let b = &snap.vectors(sb as usize)[rb as usize];
            std::array::from_fn(|k| (a[k] - b[k]).abs())
        })
        .collect();
    (x, pairs.iter().map(|p| p.2).collect())
}

/// Unknowns: 128 weights of |a_k − b_k|, the weight of ‖a − b‖², the bias.
const P: usize = DIM + 2;

/// Fit `σ(w·x + w_d·‖x‖² + b)` by Newton's method on the class-balanced,
/// L2-penalised log-loss, where `x` holds the |a_k − b_k| of a pair (so
/// `‖x‖²` is its squared distance). Returns (weights, distance weight, bias,
/// Newton steps). Deterministic: partial sums over
/// fixed chunks, added in order.
#[allow(clippy::type_complexity)]
pub fn fit(x: &[[f32; DIM]], y: &[bool], l2: f64) -> Result<([f64; DIM], f64, f64, usize)> {
    let n = x.len();
    let n_pos = y.iter().filter(|&&l| l).count();
    let n_neg = n - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Err(Error::InvalidArgument(
            "training needs both genuine and impostor pairs".into(),
        ));
    }
    let c_pos = n as f64 / (2.0 * n_pos as f64);
    let c_neg = n as f64 / (2.0 * n_neg as f64);
    let mut theta = [0f64; P];
    let mut steps = 0;
    for _ in 0..50 {
        steps += 1;
        let parts: Vec<(Vec<f64>, Vec<f64>)> = x
            .par_chunks(2048)
            .zip(y.par_chunks(2048))
            .map(|(xc, yc)| {
                let mut g = vec![0f64; P];
                let mut h = vec![0f64; P * P];
                let mut xt = [0f64; P];
                for (xi, &yi) in xc.iter().zip(yc) {
                    for k in 0..DIM {
                        xt[k] = xi[k] as f64;
                    }
                    xt[DIM] = xt[..DIM].iter().map(|v| v * v).sum();
                    xt[DIM + 1] = 1.0;
                    let z: f64 = xt.iter().zip(&theta).map(|(a, b)| a * b).sum();
                    let p = 1.0 / (1.0 + (-z).exp());
                    let c = if yi { c_pos } else { c_neg };
                    let r = c * (p - if yi { 1.0 } else { 0.0 });
                    let s = c * p * (1.0 - p);
                    for j in 0..P {
                        g[j] += r * xt[j];
                        let v = s * xt[j];
                        let row = &mut h[j * P..j * P + P];
                        for k in j..P {
                            row[k] += v * xt[k];
                        }
                    }
                }
                (g, h)
            })
            .collect();
        let mut g = vec![0f64; P];
        let mut h = vec![0f64; P * P];
        for (pg, ph) in &parts {
            for (a, b) in g.iter_mut().zip(pg) {
                *a += b;
            }
            for (a, b) in h.iter_mut().zip(ph) {
                *a += b;
            }
        }
        for j in 0..=DIM {
            g[j] += l2 * theta[j];
            h[j * P + j] += l2;
        }
        h[(DIM + 1) * P + DIM + 1] += 1e-9;
        for j in 0..P {
            for k in 0..j {
                h[j * P + k] = h[k * P + j];
            }
        }
        let delta = cholesky_solve(&mut h, &g).ok_or_else(|| {
            Error::InvalidArgument("training pairs are degenerate (singular Hessian)".into())
        })?;
        // Damped Newton: halve the step until the penalised loss does not increase.
        let before = loss(x, y, &theta, c_pos, c_neg, l2);
        let mut step = 1.0;
        let mut next = theta;
        loop {
            for ((n, t), d) in next.iter_mut().zip(&theta).zip(&delta) {
                *n = t - step * d;
            }
            if loss(x, y, &next, c_pos, c_neg, l2) <= before || step < 1e-6 {
                break;
            }
            step /= 2.0;
        }
        let max = delta.iter().map(|d| (d * step).abs()).fold(0.0, f64::max);
        theta = next;
        if max < 1e-7 {
            break;
        }
    }
    let mut w = [0f64; DIM];
    w.copy_from_slice(&theta[..DIM]);
    Ok((w, theta[DIM], theta[DIM + 1], steps))
}

/// The penalised, class-balanced log-loss at `theta` (summed in fixed chunks, in order).
fn loss(x: &[[f32; DIM]], y: &[bool], theta: &[f64; P], c_pos: f64, c_neg: f64, l2: f64) -> f64 {
    let parts: Vec<f64> = x
        .par_chunks(2048)
        .zip(y.par_chunks(2048))
        .map(|(xc, yc)| {
            let mut sum = 0f64;
            for (xi, &yi) in xc.iter().zip(yc) {
                let mut z = theta[DIM + 1];
                let mut d2 = 0f64;
                for k in 0..DIM {
                    let v = xi[k] as f64;
                    z += theta[k] * v;
                    d2 += v * v;
                }
                z += theta[DIM] * d2;
                // log(1 + e^z) − y·z, computed stably.
                let softplus = if z > 0.0 {
                    z + (-z).exp().ln_1p()
                } else {
                    z.exp().ln_1p()
                };
                sum += if yi {
                    c_pos * (softplus - z)
                } else {
                    c_neg * softplus
                };
            }
            sum
        })
        .collect();
    parts.iter().sum::<f64>() + 0.5 * l2 * theta[..=DIM].iter().map(|t| t * t).sum::<f64>()
}

/// Solve `A x = b` for symmetric positive-definite `A` (row-major, P×P), in place.
fn cholesky_solve(a: &mut [f64], b: &[f64]) -> Option<Vec<f64>> {
    for j in 0..P {
        let mut d = a[j * P + j];
        for k in 0..j {
            d -= a[j * P + k] * a[j * P + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return None;
        }
        let d = d.sqrt();
        a[j * P + j] = d;
        for i in j + 1..P {
            let mut s = a[i * P + j];
            for k in 0..j {
                s -= a[i * P + k] * a[j * P + k];
            }
            a[i * P + j] = s / d;
        }
    }
    let mut y = vec![0f64; P];
    for i in 0..P {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i * P + k] * y[k];
        }
        y[i] = s / a[i * P + i];
    }
    let mut x = vec![0f64; P];
    for i in (0..P).rev() {
        let mut s = y[i];
        for k in i + 1..P {
            s -= a[k * P + i] * x[k];
        }
        x[i] = s / a[i * P + i];
    }
    Some(x)
}

/// Operating point of a score ("higher means same") on labelled pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Accept iff score ≥ threshold.
    pub threshold: f64,
    /// Fraction of genuine pairs accepted at the threshold.
    pub tar: f64,
    /// Fraction of impostor pairs accepted at the threshold (≤ the target).
    pub far: f64,
    /// Area under the ROC curve.
    pub auc: f64,
    /// Equal error rate.
    pub eer: f64,
}

/// Threshold, TAR, AUC and EER of `genuine` vs `impostor` scores at `target_far`.
pub fn calibrate(genuine: &[f64], impostor: &[f64], target_far: f64) -> Calibration {
    let mut imp: Vec<f64> = impostor.to_vec();
    imp.sort_by(|a, b| b.total_cmp(a)); // descending
    let allowed = ((target_far * imp.len() as f64).floor() as usize).min(imp.len());
    // Accept iff score ≥ t, admitting at most `allowed` impostors (ties pushed above).
    let t = match (imp.get(allowed), allowed) {
        (None, _) => f64::NEG_INFINITY,
        (Some(&s), 0) => next_up(s),
        (Some(&s), a) => {
            let above = imp[a - 1];
            if above > s {
                s + (above - s) / 2.0
            } else {
                next_up(s)
            }
        }
    };
    let t = if t > imp.get(allowed).copied().unwrap_or(f64::NEG_INFINITY) {
        t
    } else {
        next_up(t)
    };
    let tar = genuine.iter().filter(|&&s| s >= t).count() as f64 / genuine.len().max(1) as f64;
    let far = imp.iter().filter(|&&s| s >= t).count() as f64 / imp.len().max(1) as f64;
    Calibration {
        threshold: t,
        tar,
        far,
        auc: auc(genuine, impostor),
        eer: eer(genuine, impostor),
    }
}

/// The smallest f32 at or above `t`: for an f32 score `s`, `s ≥ t` iff
/// `s ≥ f32_at_or_above(t)`, so an f64 threshold stored as f32 decides alike.
fn f32_at_or_above(t: f64) -> f32 {
    let r = t as f32;
    if (r as f64) < t { r.next_up() } else { r }
}

fn next_up(x: f64) -> f64 {
    if x.is_nan() || x == f64::INFINITY {
        return x;
    }
    let bits = x.to_bits();
    if x == 0.0 {
        return f64::from_bits(1);
    }
    f64::from_bits(if x > 0.0 { bits + 1 } else { bits - 1 })
}

/// Probability that a random genuine score exceeds a random impostor score (ties count half).
pub fn auc(genuine: &[f64], impostor: &[f64]) -> f64 {
    if genuine.is_empty() || impostor.is_empty() {
        return f64::NAN;
    }
    let mut all: Vec<(f64, bool)> = genuine
        .iter()
        .map(|&s| (s, true))
        .chain(impostor.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < all.len() {
        // Ties by total order, so a NaN score (from overflowing values) is one
        // tie group like any other: with `==` it equals nothing, not even itself,
        // and the loop would never advance.
        let mut j = i;
        while j < all.len() && all[j].0.total_cmp(&all[i].0).is_eq() {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0; // ranks i+1 ..= j
        rank_sum += avg_rank * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (ng, ni) = (genuine.len() as f64, impostor.len() as f64);
    (rank_sum - ng * (ng + 1.0) / 2.0) / (ng * ni)
}

/// Equal error rate: where the false-accept and false-reject rates cross.
pub fn eer(genuine: &[f64], impostor: &[f64]) -> f64 {
    if genuine.is_empty() || impostor.is_empty() {
        return f64::NAN;
    }
    let mut g = genuine.to_vec();
    let mut im = impostor.to_vec();
    g.sort_by(|a, b| a.total_cmp(b));
    im.sort_by(|a, b| a.total_cmp(b));
    let mut thresholds: Vec<f64> = g.iter().chain(&im).copied().collect();
    thresholds.sort_by(|a, b| a.total_cmp(b));
    thresholds.dedup();
    let mut best = (f64::INFINITY, 0.5);
    for t in thresholds {
        let frr = g.partition_point(|&s| s < t) as f64 / g.len() as f64;
        let far = (im.len() - im.partition_point(|&s| s < t)) as f64 / im.len() as f64;
        let gap = (far - frr).abs();
        if gap < best.0 {
            best = (gap, (far + frr) / 2.0);
        }
    }
    best.1
}

/// Train (optionally) and calibrate on a snapshot.
pub(crate) fn train(
    snap: &Snapshot,
    opts: &TrainOptions,
    fit_head: bool,
    previous: Option<&HeadInfo>,
) -> Result<HeadInfo> {
    if !(opts.target_far > 0.0 && opts.target_far < 1.0) {
        return Err(Error::InvalidArgument(format!(
            "target_far must be in (0, 1), got {}",
            opts.target_far
        )));
    }
    if !(100..=MAX_TRAIN_PAIRS).contains(&opts.max_pairs) {
        return Err(Error::InvalidArgument(format!(
            "max_pairs must be from 100 to {MAX_TRAIN_PAIRS}, got {}",
            opts.max_pairs
        )));
    }
    let pairs = sample_pairs(snap, opts, fit_head)?;
    let mut info = match previous {
        Some(p) if !fit_head && p.trained => p.clone(),
        _ => HeadInfo {
            trained: false,
            weights: vec![0.0; DIM],
            distance_weight: 0.0,
            bias: 0.0,
            threshold: 1.0,
            logit_threshold: f32::INFINITY,
            target_far: opts.target_far,
            auc: f64::NAN,
            tar_at_far: f64::NAN,
            eer: f64::NAN,
            pairs: 0,
            heldout_genuine: 0,
            heldout_impostor: 0,
            distance_threshold: 0.0,
            distance_auc: f64::NAN,
            distance_tar_at_far: f64::NAN,
            distance_eer: f64::NAN,
            seed: opts.seed,
            open_logit_threshold: f32::INFINITY,
            open_distance_threshold: 0.0,
            open_tar: f64::NAN,
            open_distance_tar: f64::NAN,
            open_probes: 0,
        },
    };
    if fit_head {
        let (x, y) = features(snap, &pairs.train);
        let (w, wd, b, _) = fit(&x, &y, opts.l2)?;
        info.trained = true;
        info.weights = w.iter().map(|&v| v as f32).collect();
        info.distance_weight = wd as f32;
        info.bias = b as f32;
        info.pairs = pairs.train.len() as u64;
        // Never store what the head file's decoder refuses (and a NaN or
        // infinite weight would make probabilities NaN).
        let finite = |x: &f32| x.is_finite();
        if !(info.weights.iter().all(finite) && finite(&info.distance_weight) && finite(&info.bias))
        {
            return Err(Error::InvalidArgument(
                "training gave non-finite weights (degenerate pairs); nothing was changed".into(),
            ));
        }
    }
    let (xh, yh) = features(snap, &pairs.heldout);
    let split = |scores: Vec<f64>| -> (Vec<f64>, Vec<f64>) {
        let mut g = Vec::new();
        let mut i = Vec::new();
        for (s, &l) in scores.into_iter().zip(&yh) {
            if l { g.push(s) } else { i.push(s) }
        }
        (g, i)
    };
    // Distance: "higher means same" is −distance, computed with the f32
    // kernel decisions use (l2sq(|a − b|, 0) is l2sq(a, b) to the bit), so
    // the stored threshold decides every held-out pair as calibrated.
    let kernel = kernels::selected();
    let zero = [0f32; DIM];
    let dscores: Vec<f64> = xh.iter().map(|f| -(kernel.l2sq(f, &zero) as f64)).collect();
    let (g, i) = split(dscores);
    let dc = calibrate(&g, &i, opts.target_far);
    // Accept iff distance ≤ −t: the largest f32 at or below −t keeps that for f32 distances.
    info.distance_threshold = -f32_at_or_above(dc.threshold);
    info.distance_auc = dc.auc;
    info.distance_tar_at_far = dc.tar;
    info.distance_eer = dc.eer;
    info.heldout_genuine = g.len() as u64;
    info.heldout_impostor = i.len() as u64;
    info.target_far = opts.target_far;
    info.seed = opts.seed;
    if info.trained {
        let w = info.weight_array();
        let hscores: Vec<f64> = xh
            .iter()
            .map(|f| {
                (kernel.wl1(&w, f, &zero)
                    + info.distance_weight * kernel.l2sq(f, &zero)
                    + info.bias) as f64
            })
            .collect();
        let (g, i) = split(hscores);
        let hc = calibrate(&g, &i, opts.target_far);
        // Accept iff logit ≥ t: rounding t to the nearest f32 could land on
        // (or below) the highest rejected impostor's f32 score and accept it.
        info.logit_threshold = f32_at_or_above(hc.threshold);
        info.threshold = sigmoid(info.logit_threshold);
        info.auc = hc.auc;
        info.tar_at_far = hc.tar;
        info.eer = hc.eer;
    }
    open_set(snap, &pairs.open_probes, opts.target_far, &mut info);
    Ok(info)
}

/// Calibrate the open-set thresholds: each probe is a held-out embedding; its
/// best match among *other* subjects is a stranger's best match (the gallery
/// minus one subject), its best *other* embedding of its own subject a genuine
/// best match. Scores are computed exactly as identification computes them.
fn open_set(snap: &Snapshot, probes: &[RowRef], target_far: f64, info: &mut HeadInfo) {
    if probes.is_empty() {
        return;
    }
    let qs: Vec<[f32; DIM]> = probes
        .iter()
        .map(|&(s, r)| snap.vectors(s as usize)[r as usize])
        .collect();
    let best = |metric: Metric<'_>,
                score: &dyn Fn(&[f32; DIM], &search::Cand) -> f64|
     -> (Vec<f64>, Vec<f64>) {
        let tops = search::top_k(snap, &qs, OPEN_K, metric);
        let (mut genuine, mut stranger) = (Vec::new(), Vec::new());
        for ((&(ps, pr), q), cands) in probes.iter().zip(&qs).zip(&tops) {
            let own = snap.subject(ps as usize, pr as usize);
            let mut seen_same = false;
            let mut seen_other = false;
            for c in cands {
                if (c.src, c.row) == (ps, pr) {
                    continue;
                }
                let same = snap.subject(c.src as usize, c.row as usize) == own;
                if same && !seen_same {
                    seen_same = true;
                    genuine.push(score(q, c));
                } else if !same && !seen_other {
                    seen_other = true;
                    stranger.push(score(q, c));
                }
                if seen_same && seen_other {
                    break;
                }
            }
        }
        (genuine, stranger)
    };
    let (g, s) = best(Metric::L2, &|_, c| -(c.dist as f64));
    if s.is_empty() {
        return;
    }
    let dc = calibrate(&g, &s, target_far);
    info.open_distance_threshold = -f32_at_or_above(dc.threshold);
    info.open_distance_tar = dc.tar;
    info.open_probes = s.len() as u64;
    if info.trained {
        let w = info.weight_array();
        let head = info.clone();
        let (g, s) = best(Metric::Head(&w, info.distance_weight), &|q, c| {
            head.logit(q, &snap.vectors(c.src as usize)[c.row as usize]) as f64
        });
        if !s.is_empty() {
            let hc = calibrate(&g, &s, target_far);
            info.open_logit_threshold = f32_at_or_above(hc.threshold);
            info.open_tar = hc.tar;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_and_eer_on_known_cases() {
        assert_eq!(auc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        assert_eq!(auc(&[1.0], &[1.0]), 0.5);
        assert!((auc(&[1.0, 3.0], &[2.0, 0.0]) - 0.75).abs() < 1e-12);
        assert_eq!(eer(&[3.0, 4.0], &[1.0, 2.0]), 0.0);
    }

    /// Found by the `head` fuzz target (huge weights): overflowing terms of both
    /// signs made the logit NaN, and probabilities NaN. Ordinary weights and
    /// finite vectors near `f32::MAX` do the same.
    #[test]
    fn logit_is_never_nan() {
        let d = HeadData {
            flags: 3,
            weights: (0..DIM)
                .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
                .collect(),
            distance_weight: -0.5,
            ..HeadData::default()
        };
        let h = HeadInfo::from_data(&d);
        let a = [f32::MAX; DIM];
        let b = [-f32::MAX; DIM];
        for (x, y) in [(&a, &b), (&a, &a), (&b, &a)] {
            let z = h.logit(x, y);
            assert!(!z.is_nan(), "{z}");
            assert!((0.0..=1.0).contains(&sigmoid(z)));
        }
        assert_eq!(h.logit(&a, &b), f32::NEG_INFINITY);
    }

    /// Found by the `segment` fuzz target: a NaN score made `auc` loop forever.
    #[test]
    fn auc_terminates_on_nan_scores() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(auc(&[f64::NAN, 2.0, f64::NAN], &[1.0, f64::NAN]));
        });
        let a = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("auc did not finish on NaN scores");
        // Ranked by total order, NaN above everything: the two genuine NaNs and the
        // impostor NaN tie at the top, the genuine 2.0 beats the impostor 1.0.
        assert!((a - (0.5 * 2.0 + 1.0 + 2.0) / 6.0).abs() < 1e-12, "{a}");
    }

    #[test]
    fn calibration_never_exceeds_the_target_far() {
        let mut rng = Rng::new(3);
        let imp: Vec<f64> = (0..10_000).map(|_| rng.normal() as f64).collect();
        let genuine: Vec<f64> = (0..1000).map(|_| rng.normal() as f64 + 3.0).collect();
        for far in [1e-3, 1e-2, 0.1] {
            let c = calibrate(&genuine, &imp, far);
            assert!(c.far <= far, "far {} > {far}", c.far);
            assert!(
                c.far >= far - 2.0 / imp.len() as f64,
                "threshold too strict: {} for {far}",
                c.far
            );
        }
        // Ties at the threshold are never accepted beyond the budget.
        let tied = vec![1.0; 100];
        let c = calibrate(&[2.0], &tied, 0.05);
        assert_eq!(c.far, 0.0);
        assert_eq!(c.tar, 1.0);
    }

    #[test]
    fn newton_recovers_a_known_logistic_model() {
        // Labels drawn from a known model; the fit must find it (large n, tiny penalty).
        let mut rng = Rng::new(11);
        let mut true_w = [0f64; DIM];
        true_w[0] = -4.0;
        true_w[5] = 3.0;
        let b = 0.5;
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..40_000 {
            let f: [f32; DIM] = std::array::from_fn(|_| rng.uniform() as f32);
            let z: f64 = f
                .iter()
                .zip(&true_w)
                .map(|(a, w)| *a as f64 * w)
                .sum::<f64>()
                + b;
            let p = 1.0 / (1.0 + (-z).exp());
            x.push(f);
            y.push(rng.uniform() < p);
        }
        let (w, wd, _, steps) = fit(&x, &y, 1e-6).unwrap();
        assert!(wd.abs() < 0.3, "no distance term in the true model: {wd}");
        assert!((w[0] - -4.0).abs() < 0.3, "w0 {}", w[0]);
        assert!((w[5] - 3.0).abs() < 0.3, "w5 {}", w[5]);
        assert!(w[1].abs() < 0.3);
        assert!(steps < 20);
        // Deterministic.
        assert_eq!(fit(&x, &y, 1e-6).unwrap().0, w);
    }
}

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
//!   of enrolled subjects. Each held-out probe (up to 10,000) is scored
//!   against a window of up to 4,096 other subjects (its score against a
//!   subject is the best over the subject's images). Its scores are
//!   standardised by its own mean and deviation, each score by those of the
//!   others (leave one out), since some faces are near many people and make
//!   most false positives. The standardised scores are pooled within strata
//!   of probes by mean score, each stratum's tail empirical down to its top
//!   1% and a generalised Pareto distribution beyond. The false-positive
//!   identification rate at threshold `t` for N subjects is then the mean
//!   over probes of `1 − (1 − G((t − μ_p)/σ_p))^N`, `G` the probe's stratum's
//!   survival; the threshold for each N on a grid from 1/64 to 64 times the
//!   calibration size is solved from it and stored ([`OpenSetModel`]).
//!   Decisions interpolate the grid at the gallery's current N.
//!
//! Everything is a function of the snapshot, the scores and the seed:
//! probes are scored in parallel but collected in order.

use super::calibrate::{f32_at_or_above, operating_point};
use super::pairs::RowRef;
use crate::rng::Rng;
use crate::snapshot::Snapshot;
use rayon::prelude::*;

/// Most subjects each probe is scored against (a window of a seeded
/// shuffle of all subjects, starting at a place of its own).
const MAX_SUBJECTS: usize = 4096;
/// Probes scored together against one window of subjects.
const PROBE_TILE: usize = 32;
/// Of those, how many give each probe an impostor claim per image count.
const CLAIM_SUBJECTS: usize = 64;
/// Image counts with a claim threshold of their own; larger subjects use the last.
pub const MAX_CLAIM_IMAGES: usize = 32;
/// Impostor claims needed to set a claim threshold.
const MIN_CLAIMS: usize = 1000;
/// Fewest pooled standardised scores a fitted tail rests on.
const TAIL_K: usize = 100;
/// Grid of gallery sizes: N0 · 2^(j/4) for j in −GRID..=GRID.
const GRID: i32 = 24;

/// A score of a pair of embeddings, higher meaning the same person.
pub(super) type PairScore<'a> = dyn Fn(&[f32], &[f32]) -> f64 + Sync + 'a;

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
    groups: &[Vec<&[f32]>],
    order: &[usize],
    probes: &[(&[f32], usize, usize)],
    score: &PairScore<'_>,
) -> Scored {
    let window = MAX_SUBJECTS.min(order.len() - 1);
    // Probes in tiles that share their window of subjects, so each subject's
    // rows are read from memory once per tile rather than once per probe.
    let per: Vec<ProbeScores> = probes
        .par_chunks(PROBE_TILE)
        .flat_map_iter(|tile| {
            let start = tile[0].2;
            let mut outs: Vec<ProbeScores> = tile
                .iter()
                .map(|_| ProbeScores {
                    best: Vec::with_capacity(window),
                    imp: Vec::new(),
                    gen_: Vec::new(),
                    own_best: None,
                })
                .collect();
            let sample = (0..=window).map(|k| order[(start + k) % order.len()]);
            for s in sample {
                for (&(q, own, _), out) in tile.iter().zip(&mut outs) {
                    if s == own || out.best.len() == window {
                        continue;
                    }
                    let claims = out.best.len() < CLAIM_SUBJECTS;
                    let (mut mx, mut sum) = (f64::NEG_INFINITY, 0.0);
                    for (i, &r) in groups[s].iter().enumerate() {
                        let v = score(q, r);
                        mx = mx.max(v);
                        sum += v;
                        if claims && i < MAX_CLAIM_IMAGES {
                            out.imp.push((i, mx, sum / (i + 1) as f64));
                        }
                    }
                    out.best.push(mx);
                }
            }
            for (&(q, own, _), out) in tile.iter().zip(&mut outs) {
                let (mut mx, mut sum, mut i) = (f64::NEG_INFINITY, 0.0, 0);
                for &r in &groups[own] {
                    if std::ptr::eq(r, q) {
                        continue;
                    }
                    let v = score(q, r);
                    mx = mx.max(v);
                    sum += v;
                    if i < MAX_CLAIM_IMAGES {
                        out.gen_.push((i, mx, sum / (i + 1) as f64));
                    }
                    i += 1;
                }
                out.own_best = (i > 0).then_some(mx);
            }
            outs
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
    logit: Option<&PairScore<'_>>,
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
    // Each row's vector resolved once (a snapshot lookup per score would
    // cost more than the score).
    let vec_of = |(s, r): RowRef| snap.vector(s as usize, r as usize);
    let probes: Vec<(&[f32], usize, usize)> = probes
        .iter()
        .map(|&(row, own)| (vec_of(row), own, rng.below(order.len())))
        .collect();
    let probes = &probes[..];
    let mut shuffled: Vec<Vec<&[f32]>> = groups
        .iter()
        .map(|g| g.iter().map(|&r| vec_of(r)).collect())
        .collect();
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
    let dist = |a: &[f32], b: &[f32]| -f64::from(kernel.l2sq(a, b));
    let d = score_all(&shuffled, &order, probes, &dist);
    let h = logit.map(|f| score_all(&shuffled, &order, probes, f));

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
                .map(|m| operating_point(&gen_[m], &imp[m], target).0)
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

/// Strata of probes by their mean score (cut at these quantiles): the tail
/// shape of the probes near many people need not be that of the others.
const STRATA: [f64; 3] = [0.5, 0.8, 0.95];
/// Fewest probes a stratum needs, else the probes form one.
const MIN_STRATUM: usize = 50;

/// The standardised scores of a stratum of probes, pooled: empirical down
/// to the `k`-th highest, a generalised Pareto tail beyond (fitted to the
/// `k` highest by probability-weighted moments, Hosking and Wallis 1987).
struct Stratum {
    /// The `k + 1` highest values, descending.
    top: Vec<f64>,
    /// Values in all.
    total: f64,
    /// The lowest value.
    lo: f64,
    /// Values the tail is fitted to.
    k: usize,
    /// Shape ξ and scale σ of the generalised Pareto tail.
    xi: f64,
    scale: f64,
    /// The empirical survival at evenly spaced points from the lowest value
    /// to `z[k]` (a decision-time lookup without searching millions of values).
    table: Vec<f64>,
}

/// Intervals of a stratum's survival table.
const TABLE: usize = 4096;

/// Observed values beyond a standardised score for it to count as observed.
const OBSERVED: usize = 10;

impl Stratum {
    fn new(mut z: Vec<f64>) -> Option<Stratum> {
        if z.len() < 2 * TAIL_K || !z.iter().all(|v| v.is_finite()) {
            return None;
        }
        let total = z.len() as f64;
        // The top 1% (at least TAIL_K values, at most 10,000) sorted; the
        // rest only counted into the table's intervals.
        let k = (z.len() / 100).clamp(TAIL_K, 10_000);
        z.select_nth_unstable_by(k, |a, b| b.total_cmp(a));
        let (top, rest) = z.split_at_mut(k + 1);
        top.sort_unstable_by(|a, b| b.total_cmp(a));
        let u = top[k];
        let lo = rest.iter().copied().fold(u, f64::min);
        // Exceedances over u, ascending, with plotting positions (j − 0.35)/k.
        let n = k as f64;
        let (mut a0, mut a1) = (0.0, 0.0);
        for (j, &v) in top[..k].iter().rev().enumerate() {
            let y = v - u;
            a0 += y;
            a1 += (1.0 - (j as f64 + 0.65) / n) * y;
        }
        a0 /= n;
        a1 /= n;
        let d = (a0 - 2.0 * a1).max(1e-300);
        // Hosking and Wallis's k is −ξ. A shape far below zero would put an
        // end point close above the data: keep it at −0.5 or above.
        let xi = -(a0 / d - 2.0).clamp(-10.0, 0.5);
        let scale = (2.0 * a0 * a1 / d).max(1e-12);
        // table[i]: the fraction of values at or above lo + h·i.
        let h = (u - lo) / TABLE as f64;
        let mut counts = vec![0u64; TABLE + 2];
        for &v in rest.iter() {
            // Values in (lo + h·(b − 1), lo + h·b] are ≥ the points 0..b.
            let b = if h > 0.0 {
                ((v - lo) / h).floor() as usize
            } else {
                0
            };
            counts[b.min(TABLE)] += 1;
        }
        let mut table = vec![0f64; TABLE + 1];
        let mut above = (k + 1) as f64; // the top values are all ≥ u
        for i in (0..=TABLE).rev() {
            above += counts[i] as f64;
            table[i] = above / total;
        }
        Some(Stratum {
            top: top[..=k].to_vec(),
            total,
            k,
            xi,
            scale,
            lo,
            table,
        })
    }

    /// Pooled survival P(Z ≥ z), and whether fewer than [`OBSERVED`]
    /// standardised scores reach `z` (the value rests on the fitted tail).
    fn survival(&self, z: f64) -> (f64, bool) {
        let total = self.total;
        let u = self.top[self.k];
        let sparse = z > self.top[OBSERVED - 1];
        if z > u {
            let y = (z - u) / self.scale;
            let tail = if self.xi.abs() < 1e-9 {
                (-y).exp()
            } else {
                let b = 1.0 + self.xi * y;
                if b <= 0.0 {
                    0.0
                } else {
                    b.powf(-1.0 / self.xi)
                }
            };
            return (self.k as f64 / total * tail, sparse);
        }
        let lo = self.lo;
        if z <= lo {
            return (1.0, sparse);
        }
        // Linear between the table's points.
        let x = (z - lo) / (u - lo) * TABLE as f64;
        let i = (x as usize).min(TABLE - 1);
        let f = x - i as f64;
        (
            self.table[i] + f * (self.table[i + 1] - self.table[i]),
            sparse,
        )
    }
}

/// The probes' locations and scales, and their strata's tails.
struct Tail {
    /// Each probe's mean, standard deviation and stratum.
    loc: Vec<(f64, f64, usize)>,
    strata: Vec<Stratum>,
    /// Range of standardised scores seen.
    z_range: (f64, f64),
}

impl Tail {
    fn new(best: &[Vec<f64>]) -> Option<Tail> {
        let best: Vec<&Vec<f64>> = best.iter().filter(|s| s.len() >= 3).collect();
        let mut loc: Vec<(f64, f64, usize)> = Vec::with_capacity(best.len());
        for s in &best {
            let n = s.len() as f64;
            let (sum, sum2) = s.iter().fold((0.0, 0.0), |(a, b), v| (a + v, b + v * v));
            let mu = sum / n;
            let sd = ((sum2 - n * mu * mu) / (n - 1.0))
                .max(0.0)
                .sqrt()
                .max(1e-12);
            loc.push((mu, sd, 0));
        }
        // Strata by mean score.
        let mut by_mu: Vec<usize> = (0..loc.len()).collect();
        by_mu.sort_unstable_by(|&a, &b| loc[a].0.total_cmp(&loc[b].0));
        let mut cuts: Vec<usize> = STRATA
            .iter()
            .map(|f| (f * loc.len() as f64) as usize)
            .collect();
        cuts.push(loc.len());
        let mut start = 0;
        let mut stratum = 0;
        for &end in &cuts {
            // Too small a stratum joins the next (the last joins the one before).
            if end - start < MIN_STRATUM && end != loc.len() {
                continue;
            }
            if end - start < MIN_STRATUM && stratum > 0 {
                stratum -= 1;
            }
            for &p in &by_mu[start..end] {
                loc[p].2 = stratum;
            }
            stratum += 1;
            start = end;
        }
        let mut zs: Vec<Vec<f64>> = vec![Vec::new(); stratum];
        for (s, l) in best.iter().zip(&loc) {
            let n = s.len() as f64;
            let (sum, sum2) = s.iter().fold((0.0, 0.0), |(a, b), v| (a + v, b + v * v));
            // Each score standardised by the others' mean and deviation
            // (leave one out): a new subject's score is not in the sample a
            // decision standardises it by, and an extreme score would pull
            // its own mean and deviation towards itself, shrinking exactly
            // the standardised values the tail is made of.
            zs[l.2].extend(s.iter().map(|v| {
                let m = (sum - v) / (n - 1.0);
                let var = (sum2 - v * v - (n - 1.0) * m * m) / (n - 2.0);
                (v - m) / var.max(0.0).sqrt().max(1e-12)
            }));
        }
        let strata: Vec<Stratum> = zs.into_iter().map(Stratum::new).collect::<Option<_>>()?;
        let z_range = strata
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |r, s| {
                (r.0.min(s.lo), r.1.max(s.top[0]))
            });
        Some(Tail {
            loc,
            strata,
            z_range,
        })
    }

    /// Predicted FPIR at score threshold `t` with `n` subjects, and the share
    /// of it from standardised scores fewer than [`OBSERVED`] calibration
    /// scores reach.
    fn fpir(&self, t: f64, n: f64) -> (f64, f64) {
        let (mut sum, mut beyond) = (0.0, 0.0);
        for &(mu, sd, k) in &self.loc {
            let (g, extrapolated) = self.strata[k].survival((t - mu) / sd);
            let p = -(n * (-g.min(1.0 - 1e-15)).ln_1p()).exp_m1();
            sum += p;
            if extrapolated {
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
            .map(|&(mu, sd, _)| mu + sd * self.z_range.0)
            .fold(f64::INFINITY, f64::min);
        let hi0 = self
            .loc
            .iter()
            .map(|&(mu, sd, _)| mu + sd * self.z_range.1)
            .fold(f64::NEG_INFINITY, f64::max);
        let (mut lo, mut hi) = (lo0, hi0);
        let mut width = (hi0 - lo0).max(1e-9);
        while self.fpir(hi, n).0 > target && width < 1e12 {
            hi += width;
            width *= 2.0;
        }
        for _ in 0..60 {
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

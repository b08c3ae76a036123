//! Calibration on held-out pairs: thresholds at a target false-accept rate.
//! [`calibrate`] finds the operating point of any score on labelled pairs;
//! [`verification`] sets the 1:1 thresholds (the plain distance's, and the
//! head's if trained), fits the Platt scaling that makes the head's
//! probability calibrated ([`platt`]) and draws the DET curves. The
//! subject-level decisions (claims, identification) are `subjects`'.
//! Thresholds are stored as f32 rounded so that f32 scores decide as the f64
//! calibration did.

use super::stats::{auc, eer};
use super::{HeadInfo, sigmoid};
use crate::search::kernels;

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
    let (threshold, tar, far) = operating_point(genuine, impostor, target_far);
    Calibration {
        threshold,
        tar,
        far,
        auc: auc(genuine, impostor),
        eer: eer(genuine, impostor),
    }
}

/// The threshold of [`calibrate`] with its TAR and FAR, without the AUC and
/// EER (which cost a sort of both classes each).
pub(super) fn operating_point(
    genuine: &[f64],
    impostor: &[f64],
    target_far: f64,
) -> (f64, f64, f64) {
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
    (t, tar, far)
}

/// The smallest f32 at or above `t`: for an f32 score `s`, `s ≥ t` iff
/// `s ≥ f32_at_or_above(t)`, so an f64 threshold stored as f32 decides alike.
pub(super) fn f32_at_or_above(t: f64) -> f32 {
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

/// What the pair-level calibration adds beyond the thresholds in `HeadInfo`.
pub(super) struct PairLevel {
    pub platt: Option<(f64, f64)>,
    pub det_head: Vec<(f32, f32)>,
    pub det_distance: Vec<(f32, f32)>,
    pub op_head: Option<(f32, f32)>,
    pub op_distance: (f32, f32),
}

/// Platt scaling: `(a, b)` of `σ(a·z + b)` fitted by Newton's method to
/// held-out scores, the two classes weighted equally (so it is P(same | z) at
/// prior ½), with Platt's smoothed targets `(n₊ + 1)/(n₊ + 2)` and
/// `1/(n₋ + 2)` so that separable scores still give a finite slope. `None`
/// without both classes, or if the fit does not give a positive slope.
pub fn platt(genuine: &[f64], impostor: &[f64]) -> Option<(f64, f64)> {
    if genuine.is_empty() || impostor.is_empty() {
        return None;
    }
    let (np, nn) = (genuine.len() as f64, impostor.len() as f64);
    let classes = [
        (genuine, (np + 1.0) / (np + 2.0), 0.5 / np),
        (impostor, 1.0 / (nn + 2.0), 0.5 / nn),
    ];
    let loss = |a: f64, b: f64| -> f64 {
        let mut l = 0.0;
        for (scores, t, w) in classes {
            for &z in scores {
                let x = a * z + b;
                // −t·ln σ(x) − (1 − t)·ln(1 − σ(x)), stably.
                let softplus = |v: f64| {
                    if v > 0.0 {
                        v + (-v).exp().ln_1p()
                    } else {
                        v.exp().ln_1p()
                    }
                };
                l += w * (t * softplus(-x) + (1.0 - t) * softplus(x));
            }
        }
        l
    };
    let (mut a, mut b) = (1.0, 0.0);
    let mut current = loss(a, b);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (scores, t, w) in classes {
            for &z in scores {
                let p = 1.0 / (1.0 + (-(a * z + b)).exp());
                let r = w * (p - t);
                let s = w * p * (1.0 - p);
                ga += r * z;
                gb += r;
                haa += s * z * z;
                hab += s * z;
                hbb += s;
            }
        }
        let det = haa * hbb - hab * hab;
        if det.is_nan() || det <= 0.0 {
            break;
        }
        let (da, db) = ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det);
        let mut step = 1.0;
        let mut improved = false;
        for _ in 0..40 {
            let (na, nb) = (a - step * da, b - step * db);
            let l = loss(na, nb);
            if l <= current {
                improved = current - l > 1e-15;
                (a, b, current) = (na, nb, l);
                break;
            }
            step /= 2.0;
        }
        if !improved {
            break;
        }
    }
    (a.is_finite() && a > 0.0 && b.is_finite()).then_some((a, b))
}

/// DET curve of a score on labelled pairs: (false-accept, false-reject
/// rate) at thresholds where the FAR steps through 10^(−k/8) down to one
/// impostor, FAR ascending.
fn det_curve(genuine: &[f64], impostor: &[f64]) -> Vec<(f32, f32)> {
    if genuine.is_empty() || impostor.is_empty() {
        return Vec::new();
    }
    let mut imp = impostor.to_vec();
    imp.sort_by(|a, b| b.total_cmp(a));
    let mut gen_ = genuine.to_vec();
    gen_.sort_by(|a, b| a.total_cmp(b));
    let (ni, ng) = (imp.len() as f64, gen_.len() as f64);
    let mut out: Vec<(f32, f32)> = Vec::new();
    for k in 0..=64 {
        let far = 10f64.powf(-f64::from(k) / 8.0);
        let idx = ((far * ni).ceil() as usize).clamp(1, imp.len()) - 1;
        let t = imp[idx];
        let accepted = imp.partition_point(|&s| s >= t) as f64;
        let rejected = gen_.partition_point(|&s| s < t) as f64;
        let p = ((accepted / ni) as f32, (rejected / ng) as f32);
        if out.last() != Some(&p) {
            out.push(p);
        }
        if idx == 0 {
            break;
        }
    }
    out.reverse();
    out
}

/// Calibrate the 1:1 thresholds on held-out pairs (features `xh`, row-major,
/// `dim` values a pair; labels `yh`): the plain distance's always, the head's if `info` is trained;
/// with the Platt scaling and the DET curves.
pub(super) fn verification(
    xh: &[f32],
    dim: usize,
    yh: &[bool],
    target_far: f64,
    info: &mut HeadInfo,
) -> PairLevel {
    let split = |scores: Vec<f64>| -> (Vec<f64>, Vec<f64>) {
        let mut g = Vec::new();
        let mut i = Vec::new();
        for (s, &l) in scores.into_iter().zip(yh) {
            if l { g.push(s) } else { i.push(s) }
        }
        (g, i)
    };
    // Distance: "higher means same" is −distance, computed with the f32
    // kernel decisions use (l2sq(|a − b|, 0) is l2sq(a, b) to the bit), so
    // the stored threshold decides every held-out pair as calibrated.
    let kernel = kernels::selected();
    let zero = vec![0f32; dim];
    let dscores: Vec<f64> = xh
        .chunks_exact(dim)
        .map(|f| -(kernel.l2sq(f, &zero) as f64))
        .collect();
    let (g, i) = split(dscores);
    let dc = calibrate(&g, &i, target_far);
    let mut out = PairLevel {
        platt: None,
        det_head: Vec::new(),
        det_distance: det_curve(&g, &i),
        op_head: None,
        op_distance: (dc.far as f32, (1.0 - dc.tar) as f32),
    };
    // Accept iff distance ≤ −t: the largest f32 at or below −t keeps that for f32 distances.
    info.distance_threshold = -f32_at_or_above(dc.threshold);
    info.distance_auc = dc.auc;
    info.distance_tar_at_far = dc.tar;
    info.distance_eer = dc.eer;
    info.heldout_genuine = g.len() as u64;
    info.heldout_impostor = i.len() as u64;
    if info.trained {
        let w = info.weight_array(dim);
        let hscores: Vec<f64> = xh
            .chunks_exact(dim)
            .map(|f| {
                (kernel.wl1(&w, f, &zero)
                    + info.distance_weight * kernel.l2sq(f, &zero)
                    + info.bias) as f64
            })
            .collect();
        let (g, i) = split(hscores);
        let hc = calibrate(&g, &i, target_far);
        // Accept iff logit ≥ t: rounding t to the nearest f32 could land on
        // (or below) the highest rejected impostor's f32 score and accept it.
        info.logit_threshold = f32_at_or_above(hc.threshold);
        info.threshold = sigmoid(info.logit_threshold);
        info.auc = hc.auc;
        info.tar_at_far = hc.tar;
        info.eer = hc.eer;
        out.platt = platt(&g, &i);
        out.det_head = det_curve(&g, &i);
        out.op_head = Some((hc.far as f32, (1.0 - hc.tar) as f32));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

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
}

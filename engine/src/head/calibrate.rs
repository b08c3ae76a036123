//! Calibration: thresholds at a target false-accept rate. [`calibrate`]
//! finds the operating point of any score on labelled pairs; [`verification`]
//! sets the 1:1 thresholds (the plain distance's, and the head's if trained)
//! on held-out pairs, and [`open_set`] the 1:N thresholds from held-out probes
//! searched against the gallery, scored exactly as identification scores them.
//! Thresholds are stored as f32 rounded so that f32 scores decide as the f64
//! calibration did.

use super::pairs::RowRef;
use super::stats::{auc, eer};
use super::{HeadInfo, sigmoid};
use crate::DIM;
use crate::search::kernels;
use crate::search::{self, Metric};
use crate::snapshot::Snapshot;

/// Candidates examined per open-set probe.
const OPEN_K: usize = 32;

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

/// Calibrate the 1:1 thresholds on held-out pairs (features `xh`, labels
/// `yh`): the plain distance's always, the head's if `info` is trained.
pub(super) fn verification(xh: &[[f32; DIM]], yh: &[bool], target_far: f64, info: &mut HeadInfo) {
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
    let zero = [0f32; DIM];
    let dscores: Vec<f64> = xh.iter().map(|f| -(kernel.l2sq(f, &zero) as f64)).collect();
    let (g, i) = split(dscores);
    let dc = calibrate(&g, &i, target_far);
    // Accept iff distance ≤ −t: the largest f32 at or below −t keeps that for f32 distances.
    info.distance_threshold = -f32_at_or_above(dc.threshold);
    info.distance_auc = dc.auc;
    info.distance_tar_at_far = dc.tar;
    info.distance_eer = dc.eer;
    info.heldout_genuine = g.len() as u64;
    info.heldout_impostor = i.len() as u64;
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
        let hc = calibrate(&g, &i, target_far);
        // Accept iff logit ≥ t: rounding t to the nearest f32 could land on
        // (or below) the highest rejected impostor's f32 score and accept it.
        info.logit_threshold = f32_at_or_above(hc.threshold);
        info.threshold = sigmoid(info.logit_threshold);
        info.auc = hc.auc;
        info.tar_at_far = hc.tar;
        info.eer = hc.eer;
    }
}

/// Calibrate the open-set thresholds: each probe is a held-out embedding; its
/// best match among *other* subjects is a stranger's best match (the gallery
/// minus one subject), its best *other* embedding of its own subject a genuine
/// best match. Scores are computed exactly as identification computes them.
pub(super) fn open_set(snap: &Snapshot, probes: &[RowRef], target_far: f64, info: &mut HeadInfo) {
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

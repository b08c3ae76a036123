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
//! logistic regression solved with Newton's method (130 unknowns: a 130×130
//! Cholesky solve per step), and calibrated on held-out pairs: the decision
//! threshold is set so that at most the target fraction of held-out impostor
//! pairs is accepted. The same calibration gives a plain squared-distance
//! threshold, so "unknown" works without a head too.
//!
//! Everything is deterministic for a given seed: sampling uses the seeded
//! generator of [`crate::rng`] and sums are reduced in a fixed order whatever the thread count.
//! Persisting the result is the gallery's (through [`crate::storage::format`]); scoring
//! uses the weighted-L1 kernel in [`crate::search::kernels`].
//!
//! One module per step: `pairs` draws the labelled pairs from a snapshot,
//! `fit` fits the weights, `calibrate` sets the 1:1 and open-set thresholds,
//! `stats` computes AUC and EER. This module holds what the head is
//! ([`HeadInfo`], [`TrainOptions`], scoring) and `train`, which runs the
//! steps in turn.

mod calibrate;
mod fit;
mod pairs;
mod stats;

pub use calibrate::{Calibration, calibrate};
pub use fit::fit;
pub(crate) use pairs::{features, sample_pairs};
pub use stats::{auc, eer};

use crate::DIM;
use crate::error::{Error, Result};
use crate::search::kernels;
use crate::snapshot::Snapshot;
use crate::storage::format::HeadData;

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

/// Train (optionally) and calibrate on a snapshot.
pub(crate) fn train(
    snap: &Snapshot,
    opts: &TrainOptions,
    fit_head: bool,
    previous: Option<&HeadInfo>,
) -> Result<HeadInfo> {
    if !(opts.target_far > 0.0 && opts.target_far < 1.0) {
        return Err(Error::OutOfRange {
            option: "target_far",
            expected: "in (0, 1)".into(),
            got: opts.target_far.to_string(),
        });
    }
    if !(100..=MAX_TRAIN_PAIRS).contains(&opts.max_pairs) {
        return Err(Error::OutOfRange {
            option: "max_pairs",
            expected: format!("from 100 to {MAX_TRAIN_PAIRS}"),
            got: opts.max_pairs.to_string(),
        });
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
            return Err(Error::CannotTrain {
                reason: "training gave non-finite weights (degenerate pairs); nothing was changed"
                    .into(),
            });
        }
    }
    let (xh, yh) = features(snap, &pairs.heldout);
    info.target_far = opts.target_far;
    info.seed = opts.seed;
    calibrate::verification(&xh, &yh, opts.target_far, &mut info);
    calibrate::open_set(snap, &pairs.open_probes, opts.target_far, &mut info);
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

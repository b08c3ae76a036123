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
mod subjects;

pub use calibrate::{Calibration, calibrate, platt};
pub use fit::fit;
pub(crate) use pairs::{features, sample_pairs};
pub use stats::{auc, eer};
pub use subjects::{ClaimCalibration, ClaimScore, MAX_CLAIM_IMAGES, OpenPoint, OpenSetModel};

use crate::error::{Error, Result};
use crate::search::kernels;
use crate::snapshot::Snapshot;
use crate::storage::format::{HeadData, HeadExt, OpenTable};

/// Most pairs one training or calibration may draw. Each pair costs its 128
/// features (512 bytes) and a share of every Newton step: the limit keeps a
/// request from asking for gigabytes (found by the `requests` fuzz target:
/// `max_pairs` is a `uint32` on the wire).
pub const MAX_TRAIN_PAIRS: usize = 1_000_000;

/// The prior probabilities are stated at unless the gallery sets another: a
/// comparison about as likely to be of the same person as not, as in a
/// claim someone makes about their own identity.
pub const DEFAULT_PRIOR: f64 = 0.5;

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
    /// Prior P(same person) that reported probabilities are stated at, in (0, 1).
    pub prior: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            target_far: 1e-3,
            max_pairs: 200_000,
            seed: 1,
            l2: 1.0,
            heldout_fraction: 0.3,
            prior: DEFAULT_PRIOR,
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
    /// The 1:1 decision threshold on the reported (calibrated) probability:
    /// [`HeadInfo::probability`] of `logit_threshold`.
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
    /// What calibration format 3 adds: calibrated probabilities, subject
    /// claims, open-set thresholds by gallery size, DET curves. `None` for a
    /// head read from an older file until it is retrained or recalibrated.
    pub calibrated: Option<Calibrated>,
}

/// The calibration of format version 3.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibrated {
    /// Prior P(same person) the probabilities are stated at.
    pub prior: f64,
    /// Platt scaling `(a, b)` of the head's logit `z`, fitted on held-out
    /// pairs with the classes weighted equally: P(same) = σ(a·z + b + ln(prior/(1 − prior))).
    /// `None` without a trained head.
    pub platt: Option<(f64, f64)>,
    /// Thresholds of claims against a subject, by its image count.
    pub claims: Option<ClaimCalibration>,
    /// Open-set threshold by gallery size: of the head's logit (with a
    /// trained head), of the squared distance.
    pub open_head: Option<OpenSetModel>,
    /// See `open_head`.
    pub open_distance: Option<OpenSetModel>,
    /// DET curves (false-accept, false-reject rate) on held-out pairs, FAR
    /// ascending: of the head (empty without one), of plain distance.
    pub det_head: Vec<(f32, f32)>,
    /// See `det_head`.
    pub det_distance: Vec<(f32, f32)>,
    /// Operating points (FAR, FRR) on held-out pairs at the 1:1 thresholds.
    pub op_head: Option<(f32, f32)>,
    /// See `op_head`.
    pub op_distance: Option<(f32, f32)>,
}

/// The 1:1 decision thresholds a claim against a subject with some number
/// of images uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClaimRule {
    /// How the head's logits over the subject's images are combined.
    pub score: ClaimScore,
    /// Accept iff the combined logit reaches this (with a trained head).
    pub logit: f32,
    /// Accept iff the smallest squared distance is at most this (without).
    pub distance: f32,
}

/// The open-set thresholds for the gallery's current size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenRule {
    /// Enrolled subjects they are for.
    pub subjects: u64,
    /// On the head's logit (accept iff ≥), with a trained head.
    pub logit: Option<f32>,
    /// On the squared distance (accept iff ≤).
    pub distance: Option<f32>,
    /// Whether `subjects` is within what the calibration's scores back
    /// (the smaller of the two models' trusted sizes).
    pub trusted: bool,
}

impl HeadInfo {
    /// The head's logit for a pair: `Σ w_k·|a_k − b_k| + w_d·‖a − b‖² + β`.
    ///
    /// Values near `f32::MAX` (finite, so accepted) overflow the sums, and an
    /// infinite term of each sign makes a NaN. Such a pair is no evidence of the
    /// same person: its logit is −∞ (probability 0, never accepted), never NaN.
    pub fn logit(&self, a: &[f32], b: &[f32]) -> f32 {
        let k = kernels::selected();
        let z = k.wl1(&self.weights, a, b) + self.distance_weight * k.l2sq(a, b) + self.bias;
        if z.is_nan() { f32::NEG_INFINITY } else { z }
    }

    /// The reported probability for a logit: calibrated at the prior when
    /// this head has Platt scaling, else the raw σ(z) of older heads.
    pub fn probability(&self, z: f32) -> f32 {
        match self
            .calibrated
            .as_ref()
            .and_then(|c| c.platt.map(|p| (p, c.prior)))
        {
            Some(((a, b), prior)) => {
                let x = a * f64::from(z) + b + (prior / (1.0 - prior)).ln();
                (1.0 / (1.0 + (-x).exp())) as f32
            }
            None => sigmoid(z),
        }
    }

    /// The logit at or above which [`HeadInfo::probability`] reaches `p`
    /// (−∞ for p ≤ 0, +∞ for p ≥ 1).
    pub fn logit_at_probability(&self, p: f32) -> f32 {
        if p <= 0.0 {
            return f32::NEG_INFINITY;
        }
        if p >= 1.0 {
            return f32::INFINITY;
        }
        let lp = (f64::from(p) / (1.0 - f64::from(p))).ln();
        match self
            .calibrated
            .as_ref()
            .and_then(|c| c.platt.map(|q| (q, c.prior)))
        {
            Some(((a, b), prior)) => {
                let z = (lp - b - (prior / (1.0 - prior)).ln()) / a;
                // The smallest f32 whose probability reaches p: round down,
                // then step up while the probability is below p.
                let mut t = z as f32;
                if f64::from(t) > z {
                    t = t.next_down();
                }
                while self.probability(t) < p && t < f32::MAX {
                    t = t.next_up();
                }
                t
            }
            None => lp as f32,
        }
    }

    /// The thresholds of a claim against a subject with `images` images:
    /// the calibrated ones for that count (counts beyond the calibrated
    /// range use the largest), else, for older heads, the pair thresholds.
    pub fn claim_rule(&self, images: usize) -> ClaimRule {
        let pair = ClaimRule {
            score: ClaimScore::Best,
            logit: self.logit_threshold,
            distance: self.distance_threshold,
        };
        let Some(c) = self.calibrated.as_ref().and_then(|c| c.claims.as_ref()) else {
            return pair;
        };
        let at = |v: &[f32]| v.get(images.clamp(1, v.len().max(1)) - 1).copied();
        ClaimRule {
            score: if self.trained {
                c.score
            } else {
                ClaimScore::Best
            },
            logit: at(&c.logit_thresholds).unwrap_or(pair.logit),
            distance: at(&c.distance_thresholds).unwrap_or(pair.distance),
        }
    }

    /// The open-set thresholds for a gallery of `subjects` enrolled subjects:
    /// from the models by gallery size, else (older heads) the fixed ones.
    pub fn open_rule(&self, subjects: u64) -> Option<OpenRule> {
        let c = self.calibrated.as_ref();
        let head = c
            .and_then(|c| c.open_head.as_ref())
            .filter(|_| self.trained);
        let dist = c.and_then(|c| c.open_distance.as_ref());
        if head.is_none() && dist.is_none() {
            return (self.open_probes > 0).then_some(OpenRule {
                subjects,
                logit: self.trained.then_some(self.open_logit_threshold),
                distance: Some(self.open_distance_threshold),
                trusted: false,
            });
        }
        let trusted = [head, dist]
            .iter()
            .flatten()
            .all(|m| subjects <= m.trusted_up_to);
        Some(OpenRule {
            subjects,
            logit: head.and_then(|m| m.threshold(subjects)),
            distance: dist.and_then(|m| m.threshold(subjects)),
            trusted,
        })
    }

    /// The weights for a gallery of `dim` values a vector (zeros if not
    /// trained, or not trained at that dimension).
    pub(crate) fn weight_array(&self, dim: usize) -> Vec<f32> {
        if self.weights.len() == dim {
            self.weights.clone()
        } else {
            vec![0.0; dim]
        }
    }

    /// The head as the bytes of a `HEAD` file (checksummed): a cluster
    /// keeps its gallery's head so in its catalog.
    pub fn encode(&self) -> Vec<u8> {
        crate::storage::format::encode_head(&self.to_data())
    }

    /// A head from [`HeadInfo::encode`]'s bytes; `what` names their source
    /// in errors (DATA_LOSS-kind when they are damaged).
    pub fn decode(what: &std::path::Path, bytes: &[u8]) -> crate::Result<HeadInfo> {
        Ok(HeadInfo::from_data(&crate::storage::format::decode_head(
            what, bytes,
        )?))
    }

    pub(crate) fn to_data(&self) -> HeadData {
        HeadData {
            flags: if self.trained { 3 } else { 2 } | if self.open_probes > 0 { 4 } else { 0 },
            weights: self.weights.clone(),
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
            ext: self.calibrated.as_ref().map(Calibrated::to_ext),
        }
    }

    pub(crate) fn from_data(d: &HeadData) -> HeadInfo {
        let mut h = HeadInfo {
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
            calibrated: d.ext.as_ref().map(Calibrated::from_ext),
        };
        h.threshold = h.probability(h.logit_threshold);
        h
    }
}

impl Calibrated {
    fn to_ext(&self) -> HeadExt {
        let open = |m: &Option<OpenSetModel>| match m {
            Some(m) => OpenTable {
                subjects: m.subjects,
                trusted_up_to: m.trusted_up_to,
                points: m
                    .points
                    .iter()
                    .map(|p| (p.subjects, p.threshold, p.fpir_fixed))
                    .collect(),
            },
            None => OpenTable::default(),
        };
        let nan2 = [f32::NAN; 2];
        let pair = |p: Option<(f32, f32)>| p.map_or(nan2, |(a, b)| [a, b]);
        let det = |d: &[(f32, f32)]| d.iter().map(|&(a, b)| [a, b]).collect();
        let claims = self.claims.as_ref();
        HeadExt {
            prior: self.prior,
            platt: self.platt.map_or([f64::NAN; 2], |(a, b)| [a, b]),
            claim_score: u32::from(claims.is_some_and(|c| c.score == ClaimScore::Mean)),
            claim_images: claims.map_or(0, |c| c.images),
            claim_tar: claims.map_or([f64::NAN; 3], |c| [c.tar, c.tar_other, c.distance_tar]),
            claim_logit: claims.map_or_else(Vec::new, |c| c.logit_thresholds.clone()),
            claim_distance: claims.map_or_else(Vec::new, |c| c.distance_thresholds.clone()),
            open: [open(&self.open_head), open(&self.open_distance)],
            det: [det(&self.det_head), det(&self.det_distance)],
            op: [pair(self.op_head), pair(self.op_distance)],
        }
    }

    fn from_ext(e: &HeadExt) -> Calibrated {
        let open = |t: &OpenTable| {
            (!t.points.is_empty()).then(|| OpenSetModel {
                subjects: t.subjects,
                trusted_up_to: t.trusted_up_to,
                points: t
                    .points
                    .iter()
                    .map(|&(subjects, threshold, fpir_fixed)| OpenPoint {
                        subjects,
                        threshold,
                        fpir_fixed,
                    })
                    .collect(),
            })
        };
        let pair = |p: [f32; 2]| (!p[0].is_nan()).then_some((p[0], p[1]));
        let det = |d: &[[f32; 2]]| d.iter().map(|p| (p[0], p[1])).collect();
        Calibrated {
            prior: e.prior,
            platt: (!e.platt[0].is_nan()).then_some((e.platt[0], e.platt[1])),
            claims: (!e.claim_distance.is_empty()).then(|| ClaimCalibration {
                score: if e.claim_score == 1 {
                    ClaimScore::Mean
                } else {
                    ClaimScore::Best
                },
                logit_thresholds: e.claim_logit.clone(),
                distance_thresholds: e.claim_distance.clone(),
                images: e.claim_images,
                tar: e.claim_tar[0],
                tar_other: e.claim_tar[1],
                distance_tar: e.claim_tar[2],
            }),
            open_head: open(&e.open[0]),
            open_distance: open(&e.open[1]),
            det_head: det(&e.det[0]),
            det_distance: det(&e.det[1]),
            op_head: pair(e.op[0]),
            op_distance: pair(e.op[1]),
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
    if !(opts.prior > 0.0 && opts.prior < 1.0) {
        return Err(Error::OutOfRange {
            option: "prior",
            expected: "in (0, 1)".into(),
            got: opts.prior.to_string(),
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
            weights: vec![0.0; snap.dim],
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
            calibrated: None,
        },
    };
    if fit_head {
        let (x, y) = features(snap, &pairs.train);
        let (w, wd, b, _) = fit(&x, snap.dim, &y, opts.l2)?;
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
    let pair_level = calibrate::verification(&xh, snap.dim, &yh, opts.target_far, &mut info);
    let head = info.clone();
    let logit = |a: &[f32], b: &[f32]| f64::from(head.logit(a, b));
    let logit: Option<&subjects::PairScore<'_>> = if info.trained { Some(&logit) } else { None };
    let subject_level = subjects::calibrate_subjects(
        snap,
        &pairs.groups,
        &pairs.open_probes,
        opts.target_far,
        opts.seed,
        logit,
    );
    let mut cal = Calibrated {
        prior: opts.prior,
        platt: pair_level.platt,
        claims: None,
        open_head: None,
        open_distance: None,
        det_head: pair_level.det_head,
        det_distance: pair_level.det_distance,
        op_head: pair_level.op_head,
        op_distance: Some(pair_level.op_distance),
    };
    info.open_probes = 0;
    if let Some(sl) = subject_level {
        // The fixed open-set fields of older formats: the thresholds for the
        // calibration size.
        let n0 = snap.subjects();
        if let Some(t) = sl.open_head.as_ref().and_then(|m| m.threshold(n0)) {
            info.open_logit_threshold = t;
        }
        if let Some(t) = sl.open_distance.as_ref().and_then(|m| m.threshold(n0)) {
            info.open_distance_threshold = t;
            info.open_probes = sl.probes;
        }
        (info.open_tar, info.open_distance_tar) = sl.open_tar;
        cal.claims = sl.claims;
        cal.open_head = sl.open_head;
        cal.open_distance = sl.open_distance;
    }
    info.calibrated = Some(cal);
    if info.trained {
        info.threshold = info.probability(info.logit_threshold);
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DIM;

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

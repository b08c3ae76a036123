//! Conversions between the wire messages (`visage_proto::v1`) and the engine's
//! types, and the few checks the engine does not make itself (presence of
//! message fields, Search's distance threshold).

use crate::status::{ApiError, invalid};
use visage_engine::head::{ClaimScore, OpenSetModel};
use visage_engine::{
    DIM, Embedding, Gallery, GallerySpec, GalleryStats, HeadInfo, Hit, Identification,
    TrainOptions, Verdict, VerdictRule, VerifyPair, VerifyTarget,
};
use visage_proto::v1 as pb;

/// What a CreateGallery request asks for: `dim` 0 means the default (128).
/// The engine checks the rest (`InvalidSpec`).
pub fn spec_in(r: &pb::CreateGalleryRequest) -> GallerySpec {
    GallerySpec {
        dim: if r.dim == 0 { DIM } else { r.dim as usize },
        model: r.model.clone(),
        normalize: r.normalize,
    }
}

/// Wire embeddings to engine embeddings (moves the vectors, no copy).
pub fn embeddings_in(batch: Vec<pb::Embedding>) -> Vec<Embedding> {
    batch
        .into_iter()
        .map(|e| Embedding {
            id: e.id,
            subject: e.subject,
            vector: e.vector,
        })
        .collect()
}

/// Engine embedding to wire embedding.
pub fn embedding_out(e: Embedding) -> pb::Embedding {
    pb::Embedding {
        id: e.id,
        subject: e.subject,
        vector: e.vector,
    }
}

/// Wire vectors to plain vectors (moves the values).
pub fn vectors_in(vs: Vec<pb::Vector>) -> Vec<Vec<f32>> {
    vs.into_iter().map(|v| v.values).collect()
}

/// A search hit from the wire (a shard's answer, merged by a cluster node).
pub fn hit_in(h: pb::Hit) -> Hit {
    Hit {
        id: h.id,
        subject: h.subject,
        distance: h.distance,
        probability: h.probability,
        similarity: h.similarity,
        rank_key: h.rank_key,
    }
}

/// A search hit.
pub fn hit_out(h: Hit) -> pb::Hit {
    pb::Hit {
        id: h.id,
        subject: h.subject,
        distance: h.distance,
        probability: h.probability,
        similarity: h.similarity,
        rank_key: h.rank_key,
    }
}

/// An identification candidate.
pub fn candidate_out(h: Hit) -> pb::Candidate {
    pb::Candidate {
        subject: h.subject,
        id: h.id,
        distance: h.distance,
        probability: h.probability,
        similarity: h.similarity,
        rank_key: h.rank_key,
    }
}

/// One probe's identification.
pub fn identification_out(i: Identification) -> pb::Identification {
    pb::Identification {
        known: i.known,
        subject: i.subject.unwrap_or_default(),
        candidates: i.candidates.into_iter().map(candidate_out).collect(),
    }
}

/// A wire verification pair; `None` names the missing field.
pub fn pair_in(i: usize, p: pb::VerifyPair) -> Result<VerifyPair, ApiError> {
    use pb::verify_pair::B;
    let a =
        p.a.ok_or_else(|| invalid(&format!("pairs[{i}].a"), "missing"))?
            .values;
    let b = match p.b {
        Some(B::Vector(v)) => VerifyTarget::Vector(v.values),
        Some(B::Id(id)) => VerifyTarget::Id(id),
        Some(B::Subject(s)) => VerifyTarget::Subject(s),
        None => {
            return Err(invalid(
                &format!("pairs[{i}].b"),
                "missing (set vector, id or subject)",
            ));
        }
    };
    Ok(VerifyPair { a, b })
}

/// One verdict.
pub fn verdict_out(v: Verdict) -> pb::Verdict {
    pb::Verdict {
        same: v.same,
        probability: v.probability,
        distance: v.distance,
        matched_id: v.matched_id,
        similarity: v.similarity,
        rule: match v.rule {
            VerdictRule::Distance => pb::VerdictRule::Distance,
            VerdictRule::Probability => pb::VerdictRule::Probability,
            VerdictRule::MeanProbability => pb::VerdictRule::MeanProbability,
        } as i32,
        threshold: v.threshold,
    }
}

/// A gallery's head (or its absence) as `HeadInfo`, with the open-set
/// thresholds in use for `subjects` enrolled subjects (the gallery's
/// current count).
pub fn head_out(h: Option<&HeadInfo>, subjects: u64) -> pb::HeadInfo {
    let Some(h) = h else {
        return pb::HeadInfo {
            current_subjects: subjects,
            ..pb::HeadInfo::default()
        };
    };
    let cal = h.calibrated.as_ref();
    let claims = cal.and_then(|c| c.claims.as_ref());
    let platt = cal.and_then(|c| c.platt).filter(|_| h.trained);
    let det = |d: &[(f32, f32)]| -> Vec<pb::DetPoint> { d.iter().map(|&p| det_point(p)).collect() };
    let rule = h.open_rule(subjects);
    pb::HeadInfo {
        trained: h.trained,
        weights: if h.trained {
            h.weights.clone()
        } else {
            Vec::new()
        },
        bias: h.bias,
        distance_weight: h.distance_weight,
        // On the scale of the probabilities reported (calibrated when the
        // head has Platt scaling).
        threshold: h.threshold,
        target_far: h.target_far as f32,
        auc: h.auc as f32,
        tar_at_far: h.tar_at_far as f32,
        pairs: h.pairs,
        eer: h.eer as f32,
        distance_threshold: h.distance_threshold,
        distance_auc: h.distance_auc as f32,
        distance_tar_at_far: h.distance_tar_at_far as f32,
        distance_eer: h.distance_eer as f32,
        heldout_genuine: h.heldout_genuine,
        heldout_impostor: h.heldout_impostor,
        seed: h.seed,
        logit_threshold: h.logit_threshold,
        open_logit_threshold: h.open_logit_threshold,
        open_distance_threshold: h.open_distance_threshold,
        open_tar: h.open_tar as f32,
        open_distance_tar: h.open_distance_tar as f32,
        open_probes: h.open_probes,
        calibration_current: cal.is_some(),
        prior: cal.map_or(0.0, |c| c.prior),
        probability_calibrated: platt.is_some(),
        platt_a: platt.map_or(0.0, |p| p.0),
        platt_b: platt.map_or(0.0, |p| p.1),
        claim_score: match h.claim_rule(1).score {
            ClaimScore::Best => pb::ClaimScore::Best,
            ClaimScore::Mean => pb::ClaimScore::Mean,
        }
        .into(),
        claim_logit_thresholds: claims
            .filter(|_| h.trained)
            .map_or_else(Vec::new, |c| c.logit_thresholds.clone()),
        claim_distance_thresholds: claims.map_or_else(Vec::new, |c| c.distance_thresholds.clone()),
        claim_images: claims.map_or(0, |c| c.images),
        claim_tar: claims.map_or(f64::NAN, |c| c.tar),
        claim_tar_other: claims.map_or(f64::NAN, |c| c.tar_other),
        claim_distance_tar: claims.map_or(f64::NAN, |c| c.distance_tar),
        open_head_model: cal
            .and_then(|c| c.open_head.as_ref())
            .filter(|_| h.trained)
            .map(open_model_out),
        open_distance_model: cal
            .and_then(|c| c.open_distance.as_ref())
            .map(open_model_out),
        det_head: cal.map_or_else(Vec::new, |c| det(&c.det_head)),
        det_distance: cal.map_or_else(Vec::new, |c| det(&c.det_distance)),
        op_head: cal.and_then(|c| c.op_head).map(det_point),
        op_distance: cal.and_then(|c| c.op_distance).map(det_point),
        current_subjects: subjects,
        current_open_logit_threshold: rule.and_then(|r| r.logit),
        current_open_distance_threshold: rule.and_then(|r| r.distance),
        current_open_trusted: rule.is_some_and(|r| r.trusted),
    }
}

/// A gallery's head as `HeadInfo`, with the open-set thresholds for its
/// current number of enrolled subjects.
pub fn gallery_head_out(g: &Gallery) -> pb::HeadInfo {
    head_out(g.head().as_deref(), g.stats().subjects)
}

fn det_point((far, frr): (f32, f32)) -> pb::DetPoint {
    pb::DetPoint { far, frr }
}

fn open_model_out(m: &OpenSetModel) -> pb::OpenSetModel {
    pb::OpenSetModel {
        subjects: m.subjects,
        trusted_up_to: m.trusted_up_to,
        points: m
            .points
            .iter()
            .map(|p| pb::OpenPoint {
                subjects: p.subjects,
                threshold: p.threshold,
                fpir_fixed: p.fpir_fixed,
            })
            .collect(),
    }
}

/// Training options from a request: zero (or unset) means the default.
pub fn train_options_in(r: &pb::TrainHeadRequest) -> TrainOptions {
    let d = TrainOptions::default();
    TrainOptions {
        target_far: if r.target_far == 0.0 {
            d.target_far
        } else {
            f64::from(r.target_far)
        },
        max_pairs: if r.max_pairs == 0 {
            d.max_pairs
        } else {
            r.max_pairs as usize
        },
        seed: r.seed.unwrap_or(d.seed),
        // Checked by the engine (INVALID_ARGUMENT naming `prior`).
        prior: r.prior.unwrap_or(d.prior),
        ..d
    }
}

/// Gallery statistics as `GalleryInfo`, with the open-set thresholds for
/// its current number of enrolled subjects.
pub fn info_out(g: &Gallery) -> pb::GalleryInfo {
    let s = g.stats();
    let head = g.head();
    let rule = head.as_deref().and_then(|h| h.open_rule(s.subjects));
    let spec = g.spec();
    pb::GalleryInfo {
        name: g.name().to_owned(),
        dim: spec.dim as u32,
        model: spec.model.clone(),
        normalize: spec.normalize,
        live: s.live,
        deleted: s.deleted,
        subjects: s.subjects,
        segments: s.segments,
        bytes_on_disk: s.bytes_on_disk,
        head_trained: head.as_ref().is_some_and(|h| h.trained),
        memtable_rows: s.memtable_rows,
        open_logit_threshold: rule.and_then(|r| r.logit),
        open_distance_threshold: rule.and_then(|r| r.distance),
        open_trusted: rule.is_some_and(|r| r.trusted),
        exception_rows: s.exception_rows,
        outdated_segments: s.outdated_segments,
        scans: Some(pb::ScanCounts {
            first_pass: s.scans.first_pass,
            widened: s.scans.widened,
            f32_batch: s.scans.f32_batch,
            direct: s.scans.direct,
        }),
        segment_details: g
            .segments()
            .into_iter()
            .map(|x| pb::SegmentInfo {
                file_no: x.file_no,
                rows: x.rows,
                deleted: x.deleted,
                exceptions: x.exceptions,
                format_version: x.format_version,
            })
            .collect(),
        operations: g
            .progress()
            .into_iter()
            .map(|p| pb::OperationProgress {
                kind: p.kind.to_owned(),
                rows_done: p.rows_done,
                rows_total: p.rows_total,
                bytes_done: p.bytes_done,
                bytes_total: p.bytes_total,
                elapsed_seconds: p.elapsed.as_secs_f64(),
            })
            .collect(),
        shards: 1,
        replicas: 1,
    }
}

/// Gallery statistics as `GalleryStats`.
pub fn stats_out(s: GalleryStats) -> pb::GalleryStats {
    pb::GalleryStats {
        live: s.live,
        deleted: s.deleted,
        subjects: s.subjects,
        segments: s.segments,
        memtable_rows: s.memtable_rows,
        bytes_on_disk: s.bytes_on_disk,
    }
}

/// An optional distance threshold: finite and non-negative when present.
pub fn distance_threshold(field: &str, v: Option<f32>) -> Result<Option<f32>, ApiError> {
    match v {
        Some(d) if !d.is_finite() || d < 0.0 => Err(invalid(
            field,
            format_args!("must be a finite distance >= 0, got {d}"),
        )),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_checked() {
        assert!(distance_threshold("max_distance", None).unwrap().is_none());
        assert_eq!(
            distance_threshold("max_distance", Some(0.5)).unwrap(),
            Some(0.5)
        );
        let e = distance_threshold("max_distance", Some(f32::NAN)).unwrap_err();
        assert_eq!(e.0.code(), tonic::Code::InvalidArgument);
        assert!(
            e.0.message().starts_with("max_distance: "),
            "{}",
            e.0.message()
        );
        assert!(distance_threshold("max_distance", Some(-1.0)).is_err());
        assert!(distance_threshold("max_distance", Some(f32::INFINITY)).is_err());
    }

    #[test]
    fn pairs_name_their_missing_parts() {
        let e = pair_in(3, pb::VerifyPair { a: None, b: None }).unwrap_err();
        assert_eq!(e.0.message(), "pairs[3].a: missing");
        let e = pair_in(
            4,
            pb::VerifyPair {
                a: Some(pb::Vector {
                    values: vec![0.0; 128],
                }),
                b: None,
            },
        )
        .unwrap_err();
        assert!(e.0.message().starts_with("pairs[4].b: missing"));
    }

    fn old_head() -> HeadInfo {
        HeadInfo {
            trained: true,
            weights: vec![0.5; DIM],
            distance_weight: -2.0,
            bias: 3.0,
            // As the engine sets it: the probability at the logit threshold.
            threshold: 1.0 / (1.0 + (-1.1f32).exp()),
            logit_threshold: 1.1,
            target_far: 0.01,
            auc: 0.99,
            tar_at_far: 0.9,
            eer: 0.02,
            pairs: 1000,
            heldout_genuine: 10,
            heldout_impostor: 20,
            distance_threshold: 1.5,
            distance_auc: 0.95,
            distance_tar_at_far: 0.6,
            distance_eer: 0.05,
            seed: 4,
            open_logit_threshold: 6.5,
            open_distance_threshold: 0.8,
            open_tar: 0.85,
            open_distance_tar: 0.25,
            open_probes: 300,
            calibrated: None,
        }
    }

    #[test]
    fn head_out_carries_the_open_set_calibration() {
        assert_eq!(
            head_out(None, 7),
            pb::HeadInfo {
                current_subjects: 7,
                ..pb::HeadInfo::default()
            }
        );
        // A head from an older HEAD file: the fixed open-set thresholds,
        // raw sigmoid probabilities, nothing of the new calibration.
        let h = old_head();
        let p = head_out(Some(&h), 500);
        assert_eq!((p.trained, p.weights.len()), (true, DIM));
        assert_eq!((p.distance_weight, p.bias), (-2.0, 3.0));
        assert_eq!(p.logit_threshold, 1.1);
        assert_eq!(p.threshold, 1.0 / (1.0 + (-1.1f32).exp()));
        assert_eq!(
            (p.open_logit_threshold, p.open_distance_threshold),
            (6.5, 0.8)
        );
        assert_eq!((p.open_tar, p.open_distance_tar), (0.85, 0.25));
        assert_eq!(p.open_probes, 300);
        assert_eq!((p.distance_threshold, p.pairs, p.seed), (1.5, 1000, 4));
        assert!(!p.calibration_current && !p.probability_calibrated);
        assert_eq!(p.current_subjects, 500);
        assert_eq!(p.current_open_logit_threshold, Some(6.5));
        assert_eq!(p.current_open_distance_threshold, Some(0.8));
        assert!(!p.current_open_trusted);
        assert!(p.open_head_model.is_none() && p.det_head.is_empty());
        assert_eq!(p.claim_images, 0);
        assert!(p.claim_logit_thresholds.is_empty());
    }

    #[test]
    fn head_out_carries_the_new_calibration() {
        let model = |t: [f32; 3]| OpenSetModel {
            subjects: 200,
            trusted_up_to: 400,
            points: [100, 200, 400]
                .into_iter()
                .zip(t)
                .map(|(subjects, threshold)| visage_engine::head::OpenPoint {
                    subjects,
                    threshold,
                    fpir_fixed: subjects as f32 / 1e5,
                })
                .collect(),
        };
        let mut h = HeadInfo {
            calibrated: Some(visage_engine::head::Calibrated {
                prior: 0.2,
                platt: Some((1.5, -0.25)),
                claims: Some(visage_engine::head::ClaimCalibration {
                    score: ClaimScore::Mean,
                    logit_thresholds: vec![1.0, 2.0],
                    distance_thresholds: vec![0.5, 0.4],
                    images: 2,
                    tar: 0.97,
                    tar_other: 0.95,
                    distance_tar: 0.8,
                }),
                open_head: Some(model([5.0, 6.0, 7.0])),
                open_distance: Some(model([0.9, 0.8, 0.7])),
                det_head: vec![(0.001, 0.1), (0.01, 0.05)],
                det_distance: vec![(0.001, 0.3)],
                op_head: Some((0.01, 0.05)),
                op_distance: None,
            }),
            ..old_head()
        };
        // As the engine sets it for a calibrated head.
        h.threshold = h.probability(h.logit_threshold);
        let p = head_out(Some(&h), 200);
        assert!(p.calibration_current && p.probability_calibrated);
        assert_eq!((p.prior, p.platt_a, p.platt_b), (0.2, 1.5, -0.25));
        // The threshold on the probabilities' own scale.
        let x = 1.5 * f64::from(1.1f32) - 0.25 + (0.2f64 / 0.8).ln();
        assert!((f64::from(p.threshold) - 1.0 / (1.0 + (-x).exp())).abs() < 1e-6);
        assert_eq!(p.claim_score(), pb::ClaimScore::Mean);
        assert_eq!(p.claim_logit_thresholds, [1.0, 2.0]);
        assert_eq!(p.claim_distance_thresholds, [0.5, 0.4]);
        assert_eq!(
            (
                p.claim_images,
                p.claim_tar,
                p.claim_tar_other,
                p.claim_distance_tar
            ),
            (2, 0.97, 0.95, 0.8)
        );
        let m = p.open_head_model.as_ref().unwrap();
        assert_eq!((m.subjects, m.trusted_up_to, m.points.len()), (200, 400, 3));
        assert_eq!(
            (
                m.points[2].subjects,
                m.points[2].threshold,
                m.points[2].fpir_fixed
            ),
            (400, 7.0, 0.004)
        );
        assert_eq!(
            p.open_distance_model.as_ref().unwrap().points[0].threshold,
            0.9
        );
        assert_eq!(p.det_head.len(), 2);
        assert_eq!(
            p.det_distance[0],
            pb::DetPoint {
                far: 0.001,
                frr: 0.3
            }
        );
        assert_eq!(
            p.op_head,
            Some(pb::DetPoint {
                far: 0.01,
                frr: 0.05
            })
        );
        assert_eq!(p.op_distance, None);
        assert_eq!(
            (
                p.current_subjects,
                p.current_open_logit_threshold,
                p.current_open_distance_threshold,
                p.current_open_trusted
            ),
            (200, Some(6.0), Some(0.8), true)
        );
        // Beyond the trusted size: the grid's end, untrusted.
        let p = head_out(Some(&h), 5000);
        assert_eq!(
            (
                p.current_open_logit_threshold,
                p.current_open_distance_threshold,
                p.current_open_trusted
            ),
            (Some(7.0), Some(0.7), false)
        );
        // Without a trained head: no logit thresholds, no Platt scaling.
        let u = HeadInfo {
            trained: false,
            ..h
        };
        let p = head_out(Some(&u), 200);
        assert!(p.calibration_current && !p.probability_calibrated);
        assert!(p.weights.is_empty() && p.claim_logit_thresholds.is_empty());
        assert!(p.open_head_model.is_none());
        assert_eq!(p.claim_score(), pb::ClaimScore::Best);
        assert_eq!(p.current_open_logit_threshold, None);
        assert_eq!(p.current_open_distance_threshold, Some(0.8));
    }

    #[test]
    fn zero_training_options_mean_defaults() {
        let o = train_options_in(&pb::TrainHeadRequest {
            gallery: "g".into(),
            target_far: 0.0,
            max_pairs: 0,
            seed: None,
            prior: None,
        });
        assert_eq!(o, TrainOptions::default());
        let o = train_options_in(&pb::TrainHeadRequest {
            gallery: "g".into(),
            target_far: 0.01,
            max_pairs: 5000,
            seed: Some(9),
            prior: Some(0.01),
        });
        assert_eq!((o.max_pairs, o.seed, o.prior), (5000, 9, 0.01));
        assert!((o.target_far - 0.01).abs() < 1e-9);
    }
}

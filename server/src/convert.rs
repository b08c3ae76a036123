//! Conversions between the wire messages (`visage_proto::v1`) and the engine's
//! types, and the few checks the engine does not make itself (presence of
//! message fields, Search's distance threshold).

use crate::status::{ApiError, invalid};
use visage_engine::{
    DIM, Embedding, Gallery, GalleryStats, HeadInfo, Hit, Identification, TrainOptions, Verdict,
    VerifyPair, VerifyTarget,
};
use visage_proto::v1 as pb;

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

/// A search hit.
pub fn hit_out(h: Hit) -> pb::Hit {
    pb::Hit {
        id: h.id,
        subject: h.subject,
        distance: h.distance,
        probability: h.probability,
    }
}

/// An identification candidate.
pub fn candidate_out(h: Hit) -> pb::Candidate {
    pb::Candidate {
        subject: h.subject,
        id: h.id,
        distance: h.distance,
        probability: h.probability,
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
    }
}

/// A gallery's head (or its absence) as `HeadInfo`.
pub fn head_out(h: Option<&HeadInfo>) -> pb::HeadInfo {
    let Some(h) = h else {
        return pb::HeadInfo::default();
    };
    pb::HeadInfo {
        trained: h.trained,
        weights: if h.trained {
            h.weights.clone()
        } else {
            Vec::new()
        },
        bias: h.bias,
        distance_weight: h.distance_weight,
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
        ..d
    }
}

/// Gallery statistics as `GalleryInfo`.
pub fn info_out(g: &Gallery) -> pb::GalleryInfo {
    let s = g.stats();
    pb::GalleryInfo {
        name: g.name().to_owned(),
        dim: DIM as u32,
        live: s.live,
        deleted: s.deleted,
        subjects: s.subjects,
        segments: s.segments,
        bytes_on_disk: s.bytes_on_disk,
        head_trained: g.head().is_some_and(|h| h.trained),
        memtable_rows: s.memtable_rows,
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

    #[test]
    fn head_out_carries_the_open_set_calibration() {
        assert_eq!(head_out(None), pb::HeadInfo::default());
        let h = HeadInfo {
            trained: true,
            weights: vec![0.5; DIM],
            distance_weight: -2.0,
            bias: 3.0,
            threshold: 0.75,
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
        };
        let p = head_out(Some(&h));
        assert_eq!((p.trained, p.weights.len()), (true, DIM));
        assert_eq!((p.distance_weight, p.bias), (-2.0, 3.0));
        assert_eq!((p.threshold, p.logit_threshold), (0.75, 1.1));
        assert_eq!(
            (p.open_logit_threshold, p.open_distance_threshold),
            (6.5, 0.8)
        );
        assert_eq!((p.open_tar, p.open_distance_tar), (0.85, 0.25));
        assert_eq!(p.open_probes, 300);
        assert_eq!((p.distance_threshold, p.pairs, p.seed), (1.5, 1000, 4));
    }

    #[test]
    fn zero_training_options_mean_defaults() {
        let o = train_options_in(&pb::TrainHeadRequest {
            gallery: "g".into(),
            target_far: 0.0,
            max_pairs: 0,
            seed: None,
        });
        assert_eq!(o, TrainOptions::default());
        let o = train_options_in(&pb::TrainHeadRequest {
            gallery: "g".into(),
            target_far: 0.01,
            max_pairs: 5000,
            seed: Some(9),
        });
        assert_eq!((o.max_pairs, o.seed), (5000, 9));
        assert!((o.target_far - 0.01).abs() < 1e-9);
    }
}

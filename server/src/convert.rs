//! Conversions between the wire messages (`visage_proto::v1`) and the engine's
//! types, and the few checks the engine does not make itself (thresholds,
//! vectors given to Verify).

use crate::status::{ApiError, invalid};
use visage_engine::{DIM, Embedding, GalleryStats, Hit};
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

/// A search hit (no head yet: no probability).
pub fn hit_out(h: Hit) -> pb::Hit {
    pb::Hit {
        id: h.id,
        subject: h.subject,
        distance: h.distance,
        probability: None,
    }
}

/// An identification candidate (no head yet: no probability).
pub fn candidate_out(h: Hit) -> pb::Candidate {
    pb::Candidate {
        subject: h.subject,
        id: h.id,
        distance: h.distance,
        probability: None,
    }
}

/// Gallery statistics as `GalleryInfo`.
pub fn info_out(name: &str, s: GalleryStats) -> pb::GalleryInfo {
    pb::GalleryInfo {
        name: name.to_owned(),
        dim: DIM as u32,
        live: s.live,
        deleted: s.deleted,
        subjects: s.subjects,
        segments: s.segments,
        bytes_on_disk: s.bytes_on_disk,
        head_trained: false,
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

/// An optional probability: in [0, 1] when present.
pub fn probability(field: &str, v: Option<f32>) -> Result<Option<f32>, ApiError> {
    match v {
        Some(p) if !(0.0..=1.0).contains(&p) => Err(invalid(
            field,
            format_args!("must be a probability in [0, 1], got {p}"),
        )),
        other => Ok(other),
    }
}

/// A vector given inline (Verify): 128 finite values. `field` is its full path.
pub fn check_vector(field: &str, v: &[f32]) -> Result<(), ApiError> {
    if v.len() != DIM {
        return Err(invalid(
            field,
            format_args!("expected {DIM} values, got {}", v.len()),
        ));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(invalid(
            field,
            format_args!("value {i} is {} (every value must be finite)", v[i]),
        ));
    }
    Ok(())
}

/// Squared L2 distance, accumulated in f64 (exact to f32 rounding).
pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = f64::from(*x) - f64::from(*y);
            d * d
        })
        .sum::<f64>() as f32
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
        assert!(probability("min_probability", Some(1.5)).is_err());
        assert!(probability("min_probability", Some(0.5)).is_ok());
    }

    #[test]
    fn inline_vectors_are_checked() {
        let mut v = vec![0.0f32; DIM];
        assert!(check_vector("pairs[0].a", &v).is_ok());
        v[7] = f32::INFINITY;
        let e = check_vector("pairs[0].a", &v).unwrap_err();
        assert_eq!(
            e.0.message(),
            "pairs[0].a: value 7 is inf (every value must be finite)"
        );
        let e = check_vector("pairs[1].b.vector", &v[..3]).unwrap_err();
        assert_eq!(
            e.0.message(),
            "pairs[1].b.vector: expected 128 values, got 3"
        );
    }

    #[test]
    fn l2sq_matches_hand_computation() {
        let a = [1.0f32, 2.0, 3.0];
        let b = [1.5f32, 0.0, 3.0];
        assert_eq!(l2sq(&a, &b), 0.25 + 4.0);
    }
}

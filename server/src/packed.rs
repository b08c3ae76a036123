//! The packed forms of batches (`Matrix`, parallel `ids` and `subjects`, the
//! flat Search response): decoding and shape checks, and the conversions to
//! and from the engine's types.
//!
//! A request carries its vectors either in its repeated messages (one
//! `Vector` or `Embedding` per row, a Python object per value for a grpcio
//! client) or packed in one `Matrix` of little-endian f32 bytes, never both.
//! The shape of a matrix is checked here, before the engine sees a value: its
//! byte length against `rows * dim * 4`, and `dim` against the gallery's; the
//! engine then checks each row (finite values, not zero where the gallery
//! normalises) and names it `matrix[i]`.

use crate::status::{ApiError, in_field, invalid};
use std::borrow::Cow;
use visage_engine::{Error, Hit, VerifyPair, VerifyTarget};
use visage_proto::v1 as pb;

/// The values of a matrix, row-major, after checking its byte length: the
/// request's own bytes viewed as f32 where they are aligned for it (no copy;
/// the engine only builds for little-endian targets), else a copy. `field`
/// names it in errors (`matrix`, `b_matrix`).
pub fn values<'a>(field: &str, m: &'a pb::Matrix) -> Result<Cow<'a, [f32]>, ApiError> {
    let need = u64::from(m.rows) * u64::from(m.dim) * 4;
    if m.f32_le.len() as u64 != need {
        return Err(invalid(
            field,
            format_args!(
                "{} rows of dimension {} need {need} bytes of f32_le (rows * dim * 4), got {}",
                m.rows,
                m.dim,
                m.f32_le.len()
            ),
        ));
    }
    if m.dim == 0 && m.rows > 0 {
        return Err(invalid(
            field,
            format_args!("{} rows of dimension 0", m.rows),
        ));
    }
    Ok(f32s(&m.f32_le))
}

/// `values` as little-endian f32 bytes (one copy on a little-endian machine).
pub fn f32_le(values: &[f32]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice(values).to_vec()
    } else {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

/// Little-endian f32 bytes as f32: a view where aligned, else a copy.
fn f32s(bytes: &[u8]) -> Cow<'_, [f32]> {
    if cfg!(target_endian = "little")
        && let Ok(view) = bytemuck::try_cast_slice::<u8, f32>(bytes)
    {
        return Cow::Borrowed(view);
    }
    Cow::Owned(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// Refuse a matrix whose dimension is not the gallery's (before the engine
/// would report it row by row).
pub fn check_dim(field: &str, m: &pb::Matrix, dim: usize) -> Result<(), ApiError> {
    if m.rows > 0 && m.dim as usize != dim {
        return Err(invalid(
            field,
            format_args!(
                "expected {dim} values, got {}: the gallery's dimension is {dim}, the matrix has {} rows of {} ({} bytes)",
                m.dim,
                m.rows,
                m.dim,
                m.f32_le.len()
            ),
        ));
    }
    Ok(())
}

/// The rows of a checked matrix's values, as the engine's batch calls take them.
pub fn rows(values: &[f32], dim: u32) -> Vec<&[f32]> {
    if dim == 0 {
        return Vec::new();
    }
    values.chunks_exact(dim as usize).collect()
}

/// A request may carry its vectors in its repeated messages or packed, not both.
pub fn exclusive(repeated: &str, n: usize, packed: Option<&pb::Matrix>) -> Result<(), ApiError> {
    if n > 0 && packed.is_some() {
        return Err(invalid(
            "matrix",
            format_args!("set together with {n} {repeated}: send the vectors in one form"),
        ));
    }
    Ok(())
}

/// A packed Insert: the matrix, its subjects and its ids (none: the gallery
/// assigns them), checked against each other.
#[derive(Debug)]
pub struct InsertBatch<'a> {
    /// Row-major values.
    pub values: Cow<'a, [f32]>,
    /// The matrix's declared dimension.
    pub dim: u32,
    /// One per row.
    pub subjects: Vec<String>,
    /// One per row, or `None`: assign.
    pub ids: Option<Vec<u64>>,
}

/// An Insert without a matrix must not set the packed form's other fields.
pub fn no_packed_parts(ids: &[u64], subjects: &[String]) -> Result<(), ApiError> {
    if !ids.is_empty() || !subjects.is_empty() {
        return Err(invalid(
            "matrix",
            format_args!(
                "missing, but ids ({}) or subjects ({}) are set: the packed form needs the vectors in matrix",
                ids.len(),
                subjects.len()
            ),
        ));
    }
    Ok(())
}

impl<'a> InsertBatch<'a> {
    /// The packed batch of an Insert request with matrix `m`.
    pub fn new(
        m: &'a pb::Matrix,
        ids: Vec<u64>,
        subjects: Vec<String>,
    ) -> Result<InsertBatch<'a>, ApiError> {
        let values = values("matrix", m)?;
        let rows = m.rows as usize;
        if subjects.len() != rows {
            return Err(invalid(
                "subjects",
                format_args!(
                    "{} subjects for {rows} rows of matrix (one per row)",
                    subjects.len()
                ),
            ));
        }
        if !ids.is_empty() && ids.len() != rows {
            return Err(invalid(
                "ids",
                format_args!(
                    "{} ids for {rows} rows of matrix (one per row, or none to have the gallery assign them)",
                    ids.len()
                ),
            ));
        }
        Ok(InsertBatch {
            values,
            dim: m.dim,
            subjects,
            ids: (!ids.is_empty() || rows == 0).then_some(ids),
        })
    }
}

/// An engine error about a packed insert, naming the request's fields: rows
/// of `matrix`, entries of `subjects` (`ids` already come named).
pub fn insert_error(e: Error) -> ApiError {
    match e {
        Error::InvalidSubject { index, reason, .. } => {
            invalid(&format!("subjects[{index}]"), reason)
        }
        e => in_field(e, "matrix").into(),
    }
}

/// The pairs of a packed Verify: the `a` rows of `matrix` and one `b` each
/// from exactly one of `b_matrix`, `b_ids`, `b_subjects`, for a gallery of
/// dimension `dim`.
pub fn verify_pairs(
    r: &mut pb::VerifyRequest,
    dim: usize,
) -> Result<Option<Vec<VerifyPair>>, ApiError> {
    let Some(m) = r.matrix.take() else {
        if r.b_matrix.is_some() || !r.b_ids.is_empty() || !r.b_subjects.is_empty() {
            return Err(invalid(
                "matrix",
                "missing, but b_matrix, b_ids or b_subjects is set: the packed form needs the a rows in matrix",
            ));
        }
        return Ok(None);
    };
    let a = values("matrix", &m)?;
    check_dim("matrix", &m, dim)?;
    let n = m.rows as usize;
    let set = [
        r.b_matrix.is_some(),
        !r.b_ids.is_empty(),
        !r.b_subjects.is_empty(),
    ];
    if set.iter().filter(|&&s| s).count() != usize::from(n > 0) {
        return Err(invalid(
            "b_matrix",
            format_args!(
                "{n} pairs need their b in exactly one of b_matrix, b_ids, b_subjects ({} set)",
                set.iter().filter(|&&s| s).count()
            ),
        ));
    }
    let targets: Vec<VerifyTarget> = if let Some(bm) = r.b_matrix.take() {
        if bm.rows as usize != n || bm.dim != m.dim {
            return Err(invalid(
                "b_matrix",
                format_args!(
                    "{} rows of dimension {}, but matrix has {n} rows of dimension {}",
                    bm.rows, bm.dim, m.dim
                ),
            ));
        }
        let b = values("b_matrix", &bm)?;
        check_dim("b_matrix", &bm, dim)?;
        rows(&b, bm.dim)
            .into_iter()
            .map(|v| VerifyTarget::Vector(v.to_vec()))
            .collect()
    } else if !r.b_ids.is_empty() {
        if r.b_ids.len() != n {
            return Err(invalid(
                "b_ids",
                format_args!("{} ids for {n} rows of matrix", r.b_ids.len()),
            ));
        }
        r.b_ids.iter().map(|&id| VerifyTarget::Id(id)).collect()
    } else {
        if r.b_subjects.len() != n {
            return Err(invalid(
                "b_subjects",
                format_args!("{} subjects for {n} rows of matrix", r.b_subjects.len()),
            ));
        }
        std::mem::take(&mut r.b_subjects)
            .into_iter()
            .map(VerifyTarget::Subject)
            .collect()
    };
    Ok(Some(
        rows(&a, m.dim)
            .into_iter()
            .zip(targets)
            .map(|(a, b)| VerifyPair { a: a.to_vec(), b })
            .collect(),
    ))
}

/// The page token after subject `s`: its bytes in hex (a token is opaque to
/// clients, and a subject may hold any UTF-8).
pub fn page_token(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The subject a page token says to continue after (`None`: the first page).
pub fn page_after(token: &str) -> Result<Option<String>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        invalid(
            "page_token",
            "not a token this server gave (pass next_page_token as it came)",
        )
    };
    if !token.len().is_multiple_of(2) || token.len() > 2 * 256 {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}

/// The flat form of a Search response: `k` slots per query, padded with id
/// 0 and distance +infinity (probability and similarity NaN, subject empty).
pub fn search_response(
    results: Vec<Vec<Hit>>,
    k: usize,
    with_subjects: bool,
) -> pb::SearchResponse {
    let slots = results.len() * k;
    let hits = results.iter().flatten();
    let probabilities = hits.clone().any(|h| h.probability.is_some());
    let similarities = hits.clone().any(|h| h.similarity.is_some());
    let mut r = pb::SearchResponse {
        k: k as u32,
        counts: Vec::with_capacity(results.len()),
        ids: Vec::with_capacity(slots),
        distances: Vec::with_capacity(slots),
        subjects: Vec::with_capacity(if with_subjects { slots } else { 0 }),
        probabilities: Vec::with_capacity(if probabilities { slots } else { 0 }),
        similarities: Vec::with_capacity(if similarities { slots } else { 0 }),
        ..pb::SearchResponse::default()
    };
    for hits in results {
        r.counts.push(hits.len() as u32);
        let pad = k - hits.len();
        for h in hits {
            r.ids.push(h.id);
            r.distances.push(h.distance);
            if with_subjects {
                r.subjects.push(h.subject);
            }
            if probabilities {
                r.probabilities.push(h.probability.unwrap_or(f32::NAN));
            }
            if similarities {
                r.similarities.push(h.similarity.unwrap_or(f32::NAN));
            }
        }
        r.ids.extend(std::iter::repeat_n(0, pad));
        r.distances.extend(std::iter::repeat_n(f32::INFINITY, pad));
        if with_subjects {
            r.subjects.extend(std::iter::repeat_n(String::new(), pad));
        }
        if probabilities {
            r.probabilities.extend(std::iter::repeat_n(f32::NAN, pad));
        }
        if similarities {
            r.similarities.extend(std::iter::repeat_n(f32::NAN, pad));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: u32, dim: u32, values: &[f32]) -> pb::Matrix {
        pb::Matrix {
            rows,
            dim,
            f32_le: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    #[test]
    fn a_matrix_decodes_little_endian_rows_and_refuses_a_wrong_length() {
        let m = matrix(2, 2, &[1.0, -2.5, 3.0, f32::MAX]);
        assert_eq!(*values("matrix", &m).unwrap(), [1.0, -2.5, 3.0, f32::MAX]);
        assert_eq!(f32_le(&[1.0, -2.5, 3.0, f32::MAX]), m.f32_le);
        // Bytes aligned for f32 are viewed, others copied, with the same values.
        let mut buf = vec![0f32; 5];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
        bytes[1..17].copy_from_slice(&m.f32_le);
        assert!(matches!(f32s(&bytes[1..17]), Cow::Owned(_)));
        assert_eq!(*f32s(&bytes[1..17]), [1.0, -2.5, 3.0, f32::MAX]);
        bytes[4..20].copy_from_slice(&m.f32_le);
        assert!(matches!(f32s(&bytes[4..20]), Cow::Borrowed(_)));
        assert_eq!(*f32s(&bytes[4..20]), [1.0, -2.5, 3.0, f32::MAX]);
        let mut short = m.clone();
        short.f32_le.pop();
        let e = values("matrix", &short).unwrap_err().0;
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "matrix: 2 rows of dimension 2 need 16 bytes of f32_le (rows * dim * 4), got 15"
        );
        let e = check_dim("matrix", &m, 128).unwrap_err().0;
        assert_eq!(
            e.message(),
            "matrix: expected 128 values, got 2: the gallery's dimension is 128, the matrix has 2 rows of 2 (16 bytes)"
        );
        // Rows of dimension 0 can carry no bytes and still claim rows.
        assert!(values("matrix", &matrix(3, 0, &[])).is_err());
        assert!(values("matrix", &matrix(0, 128, &[])).unwrap().is_empty());
    }

    #[test]
    fn packed_insert_shapes_must_agree() {
        let m = matrix(2, 1, &[1.0, 2.0]);
        let subjects = || vec!["a".to_owned(), "b".to_owned()];
        let b = InsertBatch::new(&m, vec![], subjects()).unwrap();
        assert_eq!(b.ids, None);
        let b = InsertBatch::new(&m, vec![7, 9], subjects()).unwrap();
        assert_eq!(b.ids, Some(vec![7, 9]));
        let e = InsertBatch::new(&m, vec![7], subjects()).unwrap_err();
        assert!(
            e.0.message().starts_with("ids: 1 ids for 2 rows"),
            "{}",
            e.0.message()
        );
        let e = InsertBatch::new(&m, vec![], vec!["a".into()]).unwrap_err();
        assert!(
            e.0.message().starts_with("subjects: 1 subjects for 2 rows"),
            "{}",
            e.0.message()
        );
        assert!(no_packed_parts(&[1], &[]).is_err());
        assert!(no_packed_parts(&[], &[]).is_ok());
    }

    #[test]
    fn page_tokens_round_trip_any_subject_and_refuse_garbage() {
        for s in ["a", "émile-03", "x y\u{1F600}", &"z".repeat(256)] {
            assert_eq!(page_after(&page_token(s)).unwrap().as_deref(), Some(s));
        }
        assert_eq!(page_after("").unwrap(), None);
        for bad in ["0", "zz", "ff", "c3", &"61".repeat(257)] {
            let e = page_after(bad).unwrap_err().0;
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.message().starts_with("page_token:"), "{}", e.message());
        }
    }

    #[test]
    fn flat_search_responses_pad_to_k() {
        let hit = |id, d| Hit {
            id,
            subject: format!("s{id}"),
            distance: d,
            probability: None,
            similarity: None,
            rank_key: None,
        };
        let r = search_response(vec![vec![hit(3, 0.5), hit(1, 0.7)], vec![]], 3, true);
        assert_eq!(r.k, 3);
        assert_eq!(r.counts, [2, 0]);
        assert_eq!(r.ids, [3, 1, 0, 0, 0, 0]);
        assert_eq!(r.distances[..2], [0.5, 0.7]);
        assert!(r.distances[2..].iter().all(|d| *d == f32::INFINITY));
        assert_eq!(r.subjects, ["s3", "s1", "", "", "", ""]);
        assert!(r.probabilities.is_empty() && r.similarities.is_empty());
    }
}

//! The head file (`HEAD`): layout, encoder and decoder. No I/O.
//!
//! # Head file (`HEAD`), version 1
//!
//! The gallery's learned scoring head and its calibration, replaced atomically.
//!
//! | offset | size | type | meaning |
//! |---|---|---|---|
//! | 0 | 8 | `[u8; 8]` | magic `89 56 48 44 0D 0A 1A 0A` (`\x89VHD\r\n\x1a\n`) |
//! | 8 | 4 | u32 | format version (1) |
//! | 12 | 4 | u32 | flags: bit 0 head trained, bit 1 distance threshold calibrated |
//! | 16 | 512 | 128 × f32 | weights `w_k` |
//! | 528 | 4 | f32 | bias `β` |
//! | 532 | 4 | f32 | decision threshold on the logit `Σ w_k·|a_k − b_k| + β` |
//! | 536 | 4 | f32 | decision threshold on the squared L2 distance |
//! | 540 | 4 | f32 | weight `w_d` of the squared distance |
//! | 544 | 7 × 8 | f64 | target FAR, head AUC, head TAR at FAR, head EER, distance AUC, distance TAR at FAR, distance EER |
//! | 600 | 4 × 8 | u64 | training pairs, held-out genuine pairs, held-out impostor pairs, seed |
//! | 632 | 4 | f32 | open-set (1:N) decision threshold on the logit |
//! | 636 | 4 | f32 | open-set decision threshold on the squared distance |
//! | 640 | 2 × 8 | f64 | open-set TAR of the head, of the distance |
//! | 656 | 8 | u64 | probes used for the open-set calibration |
//! | 664 | 4 | u32 | crc32 of bytes 0..664 |
//!
//! The 1:1 thresholds (verification) are set on held-out impostor *pairs*; the
//! open-set thresholds (identification, flag bit 2) on the best match of
//! held-out embeddings among all *other* subjects, so that a stranger is
//! accepted as someone at about the target rate whatever the gallery's size.

use super::{FORMAT_VERSION, VECTOR_BYTES, check_version, get_u32, get_u64, put_u32, put_u64};
use crate::DIM;
use crate::error::{Error, Result};
use std::path::Path;

/// Magic number of the head file.
pub const HEAD_MAGIC: [u8; 8] = *b"\x89VHD\r\n\x1a\n";
/// Length of the head file.
pub const HEAD_LEN: usize = 668;
const HEAD_WEIGHTS_OFF: usize = 16;
const HEAD_BIAS_OFF: usize = HEAD_WEIGHTS_OFF + VECTOR_BYTES;
const HEAD_STATS_OFF: usize = HEAD_BIAS_OFF + 4 * size_of::<f32>();
const HEAD_COUNTS_OFF: usize = HEAD_STATS_OFF + 7 * size_of::<f64>();
const HEAD_OPEN_OFF: usize = HEAD_COUNTS_OFF + 4 * size_of::<u64>();
const HEAD_CRC_OFF: usize = HEAD_OPEN_OFF + 2 * size_of::<f32>() + 3 * size_of::<u64>();
const _: () = assert!(HEAD_BIAS_OFF == 528 && HEAD_STATS_OFF == 544 && HEAD_COUNTS_OFF == 600);
const _: () = assert!(HEAD_OPEN_OFF == 632 && HEAD_CRC_OFF == 664);
const _: () = assert!(HEAD_CRC_OFF + 4 == HEAD_LEN);

/// Decoded head file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeadData {
    /// Bit 0: head trained; bit 1: distance threshold calibrated.
    pub flags: u32,
    /// Weights.
    pub weights: Vec<f32>,
    /// Weight of the squared distance.
    pub distance_weight: f32,
    /// Bias.
    pub bias: f32,
    /// Threshold on the logit.
    pub logit_threshold: f32,
    /// Threshold on the squared distance.
    pub distance_threshold: f32,
    /// Target FAR, head AUC, TAR, EER, distance AUC, TAR, EER.
    pub stats: [f64; 7],
    /// Training pairs, held-out genuine, held-out impostor, seed.
    pub counts: [u64; 4],
    /// Open-set thresholds: on the logit, on the squared distance.
    pub open_thresholds: [f32; 2],
    /// Open-set TAR of the head, of the distance.
    pub open_tar: [f64; 2],
    /// Probes used for the open-set calibration.
    pub open_probes: u64,
}

/// Encode the head file.
pub fn encode_head(h: &HeadData) -> Vec<u8> {
    let mut b = vec![0u8; HEAD_LEN];
    b[..8].copy_from_slice(&HEAD_MAGIC);
    put_u32(&mut b, 8, FORMAT_VERSION);
    put_u32(&mut b, 12, h.flags);
    for (i, w) in h.weights.iter().take(DIM).enumerate() {
        b[HEAD_WEIGHTS_OFF + 4 * i..HEAD_WEIGHTS_OFF + 4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    for (i, v) in [
        h.bias,
        h.logit_threshold,
        h.distance_threshold,
        h.distance_weight,
    ]
    .iter()
    .enumerate()
    {
        b[HEAD_BIAS_OFF + 4 * i..HEAD_BIAS_OFF + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    for (i, v) in h.stats.iter().enumerate() {
        b[HEAD_STATS_OFF + 8 * i..HEAD_STATS_OFF + 8 * i + 8].copy_from_slice(&v.to_le_bytes());
    }
    for (i, v) in h.counts.iter().enumerate() {
        put_u64(&mut b, HEAD_COUNTS_OFF + 8 * i, *v);
    }
    for (i, v) in h.open_thresholds.iter().enumerate() {
        b[HEAD_OPEN_OFF + 4 * i..HEAD_OPEN_OFF + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    for (i, v) in h.open_tar.iter().enumerate() {
        b[HEAD_OPEN_OFF + 8 + 8 * i..HEAD_OPEN_OFF + 16 + 8 * i].copy_from_slice(&v.to_le_bytes());
    }
    put_u64(&mut b, HEAD_OPEN_OFF + 24, h.open_probes);
    let crc = crc32fast::hash(&b[..HEAD_CRC_OFF]);
    put_u32(&mut b, HEAD_CRC_OFF, crc);
    b
}

/// Decode a head file read from `path`.
pub fn decode_head(path: &Path, b: &[u8]) -> Result<HeadData> {
    if b.len() != HEAD_LEN {
        return Err(Error::corrupt(
            path,
            0,
            format!("head file is {} bytes, expected {HEAD_LEN}", b.len()),
        ));
    }
    if b[..8] != HEAD_MAGIC {
        return Err(Error::corrupt(
            path,
            0,
            "not a visage head file (bad magic number)",
        ));
    }
    let stored = get_u32(b, HEAD_CRC_OFF);
    let computed = crc32fast::hash(&b[..HEAD_CRC_OFF]);
    if stored != computed {
        return Err(Error::ChecksumMismatch {
            path: path.into(),
            section: "head file".into(),
            expected: stored,
            got: computed,
        });
    }
    let version = get_u32(b, 8);
    check_version(path, version)?;
    let f32_at = |at: usize| f32::from_bits(get_u32(b, at));
    let weights: Vec<f32> = (0..DIM).map(|i| f32_at(HEAD_WEIGHTS_OFF + 4 * i)).collect();
    let h = HeadData {
        flags: get_u32(b, 12),
        weights,
        bias: f32_at(HEAD_BIAS_OFF),
        logit_threshold: f32_at(HEAD_BIAS_OFF + 4),
        distance_threshold: f32_at(HEAD_BIAS_OFF + 8),
        distance_weight: f32_at(HEAD_BIAS_OFF + 12),
        stats: std::array::from_fn(|i| f64::from_bits(get_u64(b, HEAD_STATS_OFF + 8 * i))),
        counts: std::array::from_fn(|i| get_u64(b, HEAD_COUNTS_OFF + 8 * i)),
        open_thresholds: std::array::from_fn(|i| f32_at(HEAD_OPEN_OFF + 4 * i)),
        open_tar: std::array::from_fn(|i| f64::from_bits(get_u64(b, HEAD_OPEN_OFF + 8 + 8 * i))),
        open_probes: get_u64(b, HEAD_OPEN_OFF + 24),
    };
    // The weights, distance weight and bias must be finite (an infinite weight
    // times a zero difference is a NaN probability); the thresholds may be
    // infinite (an uncalibrated one is) but not NaN.
    let weights_bad = h
        .weights
        .iter()
        .chain([h.bias, h.distance_weight].iter())
        .any(|x| !x.is_finite());
    if weights_bad || h.logit_threshold.is_nan() || h.distance_threshold.is_nan() {
        return Err(Error::corrupt(
            path,
            HEAD_WEIGHTS_OFF as u64,
            "head holds non-finite weights or NaN thresholds",
        ));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::format::test_support::reseal;

    #[test]
    fn head_round_trip_golden_offsets_and_corruption() {
        let h = HeadData {
            flags: 3,
            weights: (0..DIM).map(|i| -(i as f32) / 10.0).collect(),
            distance_weight: -3.0,
            bias: 2.5,
            logit_threshold: 0.75,
            distance_threshold: 1.25,
            stats: [1e-3, 0.99, 0.9, 0.01, 0.95, 0.7, 0.05],
            counts: [1000, 200, 3000, 42],
            open_thresholds: [3.5, 0.25],
            open_tar: [0.8, 0.6],
            open_probes: 2000,
        };
        let b = encode_head(&h);
        assert_eq!(b.len(), HEAD_LEN);
        assert_eq!(&b[..8], b"\x89VHD\r\n\x1a\n");
        assert_eq!(&b[528..532], &2.5f32.to_le_bytes());
        assert_eq!(&b[544..552], &1e-3f64.to_le_bytes());
        assert_eq!(&b[624..632], &42u64.to_le_bytes());
        assert_eq!(&b[632..636], &3.5f32.to_le_bytes());
        assert_eq!(&b[656..664], &2000u64.to_le_bytes());
        assert_eq!(decode_head(Path::new("h"), &b).unwrap(), h);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 4;
            assert!(decode_head(Path::new("h"), &c).is_err(), "byte {i}");
        }
        assert!(decode_head(Path::new("h"), &b[..100]).is_err());
        // Found by the `head` target's checks: an infinite weight under a valid
        // CRC was accepted, and a probe equal to a stored vector then scored
        // inf × 0, a NaN probability.
        for at in [HEAD_WEIGHTS_OFF, HEAD_BIAS_OFF, HEAD_BIAS_OFF + 12] {
            let mut c = b.clone();
            c[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
            reseal(&mut c);
            assert!(decode_head(Path::new("h"), &c).is_err(), "offset {at}");
        }
        // An infinite (uncalibrated) threshold is fine.
        let mut c = b.clone();
        c[HEAD_BIAS_OFF + 4..HEAD_BIAS_OFF + 8].copy_from_slice(&f32::INFINITY.to_le_bytes());
        reseal(&mut c);
        assert!(decode_head(Path::new("h"), &c).is_ok());
    }
}

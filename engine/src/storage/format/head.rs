//! The head file (`HEAD`): layout, encoder and decoder. No I/O.
//!
//! # Head file (`HEAD`), versions 1 to 4
//!
//! The gallery's learned scoring head and its calibration, replaced atomically.
//! Versions 1 and 2 are the fixed 668 bytes below; version 3 keeps bytes
//! 0..664 and puts the calibration it adds (the extension) between them and
//! the CRC, which then covers the whole file. Version 4 holds one weight per
//! dimension of the gallery, after the extension: its bytes 16..528 are
//! zero, and the weights are `D` u32 then `D` × f32 right before the CRC.
//!
//! | offset | size | type | meaning |
//! |---|---|---|---|
//! | 0 | 8 | `[u8; 8]` | magic `89 56 48 44 0D 0A 1A 0A` (`\x89VHD\r\n\x1a\n`) |
//! | 8 | 4 | u32 | format version (1) |
//! | 12 | 4 | u32 | flags: bit 0 head trained, bit 1 distance threshold calibrated |
//! | 16 | 512 | 128 × f32 | weights `w_k` (version 4: zero, see above) |
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
//! | 664 | 4 | u32 | versions 1–2: crc32 of bytes 0..664 |
//!
//! The version-3 extension, from byte 664 (counts bound the lists; `f32`
//! thresholds are never NaN):
//!
//! | size | type | meaning |
//! |---|---|---|
//! | 8 | f64 | prior P(same) probabilities are stated at, in (0, 1) |
//! | 2 × 8 | f64 | Platt scaling `a`, `b`: P(same) at prior ½ is `σ(a·logit + b)`; NaN, NaN without a head |
//! | 4 | u32 | claim score of the head: 0 best of the subject's images, 1 their mean |
//! | 4 | u32 | image count at which the claim TARs were measured |
//! | 3 × 8 | f64 | claim TAR of the head, of the other claim score, of plain distance |
//! | 4 | u32 | `c`, claim thresholds on the logit (0 without a head) |
//! | c × 4 | f32 | logit threshold for a subject with 1, 2, … images |
//! | 4 | u32 | `d`, claim thresholds on the squared distance |
//! | d × 4 | f32 | distance threshold for 1, 2, … images |
//! | 2 × … | | open-set model of the head's logit, then of the distance: subjects at calibration u64, trusted up to u64, count `k` u32, then `k` × (subjects u64, threshold f32, FPIR at the fixed threshold f32), subjects strictly ascending (`k` = 0: none) |
//! | 2 × … | | DET curve of the head, then of the distance, on held-out pairs: count u32, then (FAR f32, FRR f32) each in [0, 1] |
//! | 2 × 2 × 4 | f32 | operating points (FAR, FRR) of the head and of the distance at their thresholds (NaN: none) |
//! | 4 | u32 | version 4: `D`, the weights' count (the gallery's dimension) |
//! | D × 4 | f32 | version 4: weights `w_k` |
//! | 4 | u32 | crc32 of everything before it |
//!
//! The 1:1 thresholds (verification) are set on held-out impostor *pairs*;
//! the fixed open-set thresholds (identification, flag bit 2) are those for
//! the gallery's size at calibration; version 3's open-set models give the
//! threshold for any size (see `head::subjects`).

use super::{
    Cursor, FORMAT_VERSION, check_version, check_zero, get_u32, get_u64, put_u32, put_u64,
};
use crate::DIM;
use crate::api::GallerySpec;
use crate::error::{Error, Result};
use std::path::Path;

/// Magic number of the head file.
pub const HEAD_MAGIC: [u8; 8] = *b"\x89VHD\r\n\x1a\n";
/// Length of a version-1 or -2 head file (version 3 is longer).
pub const HEAD_LEN: usize = 668;
const HEAD_WEIGHTS_OFF: usize = 16;
const HEAD_BIAS_OFF: usize = HEAD_WEIGHTS_OFF + DIM * size_of::<f32>();
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
    /// Weights, one per dimension of the gallery.
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
    /// What version 3 adds (`None`: read from an older file).
    pub ext: Option<HeadExt>,
}

/// The calibration a version-3 head file adds.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadExt {
    /// Prior of the stated probabilities.
    pub prior: f64,
    /// Platt scaling (a, b), NaN without a head.
    pub platt: [f64; 2],
    /// 0: best of the images, 1: mean.
    pub claim_score: u32,
    /// Image count of the claim TARs.
    pub claim_images: u32,
    /// Claim TAR: head, other score, distance.
    pub claim_tar: [f64; 3],
    /// Claim thresholds on the logit by image count.
    pub claim_logit: Vec<f32>,
    /// Claim thresholds on the squared distance by image count.
    pub claim_distance: Vec<f32>,
    /// Open-set models: head, distance.
    pub open: [OpenTable; 2],
    /// DET curves (FAR, FRR): head, distance.
    pub det: [Vec<[f32; 2]>; 2],
    /// Operating points (FAR, FRR): head, distance.
    pub op: [[f32; 2]; 2],
}

impl Default for HeadExt {
    /// No calibration: prior ½, no Platt scaling, no claims, models or curves.
    fn default() -> Self {
        HeadExt {
            prior: 0.5,
            platt: [f64::NAN; 2],
            claim_score: 0,
            claim_images: 0,
            claim_tar: [f64::NAN; 3],
            claim_logit: Vec::new(),
            claim_distance: Vec::new(),
            open: [OpenTable::default(), OpenTable::default()],
            det: [Vec::new(), Vec::new()],
            op: [[f32::NAN; 2]; 2],
        }
    }
}

/// An open-set model as stored.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OpenTable {
    /// Subjects at calibration.
    pub subjects: u64,
    /// Largest size backed by observed scores.
    pub trusted_up_to: u64,
    /// (subjects, threshold, FPIR at the fixed threshold).
    pub points: Vec<(u64, f32, f32)>,
}

fn put_f32s(b: &mut Vec<u8>, v: &[f32]) {
    for x in v {
        b.extend_from_slice(&x.to_le_bytes());
    }
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "list lengths are bounded by the calibration (a few hundred entries)"
)]
fn encode_ext(b: &mut Vec<u8>, e: &HeadExt) {
    b.extend_from_slice(&e.prior.to_le_bytes());
    for v in e.platt {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&e.claim_score.to_le_bytes());
    b.extend_from_slice(&e.claim_images.to_le_bytes());
    for v in e.claim_tar {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for list in [&e.claim_logit, &e.claim_distance] {
        b.extend_from_slice(&(list.len() as u32).to_le_bytes());
        put_f32s(b, list);
    }
    for t in &e.open {
        b.extend_from_slice(&t.subjects.to_le_bytes());
        b.extend_from_slice(&t.trusted_up_to.to_le_bytes());
        b.extend_from_slice(&(t.points.len() as u32).to_le_bytes());
        for &(n, th, f) in &t.points {
            b.extend_from_slice(&n.to_le_bytes());
            put_f32s(b, &[th, f]);
        }
    }
    for d in &e.det {
        b.extend_from_slice(&(d.len() as u32).to_le_bytes());
        for p in d {
            put_f32s(b, p);
        }
    }
    for p in &e.op {
        put_f32s(b, p);
    }
}

impl Cursor<'_> {
    fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_bits(self.u32()?))
    }
    fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_bits(self.u64()?))
    }
    /// A count of items of `size` bytes each that fit in what is left.
    fn count(&mut self, size: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n > (self.buf.len() - self.at) / size {
            return Err(self.err(format!("{n} entries do not fit in the file")));
        }
        Ok(n)
    }
    fn threshold(&mut self) -> Result<f32> {
        let v = self.f32()?;
        if v.is_nan() {
            return Err(self.err("NaN threshold".into()));
        }
        Ok(v)
    }
}

fn decode_ext(c: &mut Cursor<'_>) -> Result<HeadExt> {
    let prior = c.f64()?;
    if !(prior > 0.0 && prior < 1.0) {
        return Err(c.err(format!("prior {prior} is not in (0, 1)")));
    }
    let platt = [c.f64()?, c.f64()?];
    let no_platt = platt[0].is_nan() && platt[1].is_nan();
    let slope = platt[0].is_finite() && platt[0] > 0.0 && platt[1].is_finite();
    if !(no_platt || slope) {
        return Err(c.err(format!("Platt scaling {platt:?} is not a positive slope")));
    }
    let claim_score = c.u32()?;
    if claim_score > 1 {
        return Err(c.err(format!("claim score {claim_score} is not 0 or 1")));
    }
    let claim_images = c.u32()?;
    let claim_tar = [c.f64()?, c.f64()?, c.f64()?];
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        let n = c.count(4)?;
        for _ in 0..n {
            list.push(c.threshold()?);
        }
    }
    let [claim_logit, claim_distance] = lists;
    let mut open = [OpenTable::default(), OpenTable::default()];
    for t in &mut open {
        t.subjects = c.u64()?;
        t.trusted_up_to = c.u64()?;
        let n = c.count(16)?;
        for _ in 0..n {
            let subjects = c.u64()?;
            if t.points.last().is_some_and(|p| p.0 >= subjects) {
                return Err(c.err("open-set sizes out of order".into()));
            }
            t.points.push((subjects, c.threshold()?, c.f32()?));
        }
    }
    let rate = |v: f32| (0.0..=1.0).contains(&v);
    let mut det = [Vec::new(), Vec::new()];
    for d in &mut det {
        let n = c.count(8)?;
        for _ in 0..n {
            let p = [c.f32()?, c.f32()?];
            if !(rate(p[0]) && rate(p[1])) {
                return Err(c.err(format!("DET point {p:?} is not a pair of rates")));
            }
            d.push(p);
        }
    }
    let mut op = [[0f32; 2]; 2];
    for p in &mut op {
        *p = [c.f32()?, c.f32()?];
    }
    Ok(HeadExt {
        prior,
        platt,
        claim_score,
        claim_images,
        claim_tar,
        claim_logit,
        claim_distance,
        open,
        det,
        op,
    })
}

/// Encode the head file.
pub fn encode_head(h: &HeadData) -> Vec<u8> {
    let mut b = vec![0u8; HEAD_LEN];
    b[..8].copy_from_slice(&HEAD_MAGIC);
    put_u32(&mut b, 8, FORMAT_VERSION);
    put_u32(&mut b, 12, h.flags);
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
    b.truncate(HEAD_CRC_OFF);
    encode_ext(&mut b, &h.ext.clone().unwrap_or_default());
    #[allow(
        clippy::cast_possible_truncation,
        reason = "one weight per dimension: at most 2,048"
    )]
    b.extend_from_slice(&(h.weights.len() as u32).to_le_bytes());
    put_f32s(&mut b, &h.weights);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decode a head file read from `path`.
pub fn decode_head(path: &Path, b: &[u8]) -> Result<HeadData> {
    if b.len() < HEAD_LEN {
        return Err(Error::corrupt(
            path,
            0,
            format!(
                "head file is {} bytes, at least {HEAD_LEN} expected",
                b.len()
            ),
        ));
    }
    if b[..8] != HEAD_MAGIC {
        return Err(Error::corrupt(
            path,
            0,
            "not a visage head file (bad magic number)",
        ));
    }
    let version = get_u32(b, 8);
    // Versions 1 and 2 are exactly HEAD_LEN bytes; 3 has its CRC at the end.
    if version < 3 && b.len() != HEAD_LEN {
        return Err(Error::corrupt(
            path,
            0,
            format!(
                "version-{version} head file is {} bytes, expected {HEAD_LEN}",
                b.len()
            ),
        ));
    }
    let crc_at = b.len() - 4;
    let stored = get_u32(b, crc_at);
    let computed = crc32fast::hash(&b[..crc_at]);
    if stored != computed {
        return Err(Error::ChecksumMismatch {
            path: path.into(),
            section: "head file".into(),
            expected: stored,
            got: computed,
        });
    }
    check_version(path, version)?;
    let f32_at = |at: usize| f32::from_bits(get_u32(b, at));
    // Up to version 3, the 128 weights of a 128-value gallery at offset 16;
    // from version 4 at the end, and zeros here.
    let weights: Vec<f32> = if version >= 4 {
        check_zero(path, b, HEAD_WEIGHTS_OFF..HEAD_BIAS_OFF)?;
        Vec::new()
    } else {
        (0..DIM).map(|i| f32_at(HEAD_WEIGHTS_OFF + 4 * i)).collect()
    };
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
        ext: None,
    };
    let mut h = h;
    if version >= 3 {
        let mut c = Cursor {
            buf: &b[..crc_at],
            at: HEAD_CRC_OFF,
            path,
            base: 0,
        };
        h.ext = Some(decode_ext(&mut c)?);
        if version >= 4 {
            let at = c.at;
            let dim = c.count(4)?;
            if let Some(why) = GallerySpec::with_dim(dim).problem() {
                return Err(Error::corrupt(
                    path,
                    at as u64,
                    format!("head weights: {why}"),
                ));
            }
            for _ in 0..dim {
                h.weights.push(c.f32()?);
            }
        }
        c.finish()?;
    }
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
            ext: Some(HeadExt {
                prior: 0.25,
                platt: [1.5, -0.5],
                claim_score: 1,
                claim_images: 9,
                claim_tar: [0.9, 0.8, 0.7],
                claim_logit: vec![1.0, 2.0, 3.0],
                claim_distance: vec![0.5, 0.4],
                open: [
                    OpenTable {
                        subjects: 100,
                        trusted_up_to: 400,
                        points: vec![(50, 1.0, 0.005), (100, 2.0, 0.01)],
                    },
                    OpenTable::default(),
                ],
                det: [vec![[0.001, 0.2], [0.01, 0.1]], vec![[0.5, 0.5]]],
                op: [[0.01, 0.1], [0.01, 0.3]],
            }),
        };
        let b = encode_head(&h);
        assert_eq!(&b[664..672], &0.25f64.to_le_bytes());
        // Version 4: the weights at the end, after their count; zeros at 16..528.
        assert_eq!(&b[8..12], &FORMAT_VERSION.to_le_bytes());
        assert!(b[16..528].iter().all(|&x| x == 0));
        let tail = b.len() - 4 - 4 * DIM - 4;
        assert_eq!(&b[tail..tail + 4], &128u32.to_le_bytes());
        assert_eq!(&b[tail + 8..tail + 12], &(-0.1f32).to_le_bytes());
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
        for cut in [HEAD_LEN, b.len() - 1] {
            let mut c = b[..cut].to_vec();
            reseal(&mut c);
            assert!(decode_head(Path::new("h"), &c).is_err(), "cut at {cut}");
        }
        // A version-2 file: the same first 664 bytes with the weights at 16,
        // its CRC right after.
        let mut v2 = b[..HEAD_CRC_OFF + 4].to_vec();
        v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        for (i, w) in h.weights.iter().enumerate() {
            v2[16 + 4 * i..20 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        reseal(&mut v2);
        let old = decode_head(Path::new("h"), &v2).unwrap();
        assert_eq!(old.ext, None);
        assert_eq!(
            HeadData {
                ext: h.ext.clone(),
                ..old
            },
            h
        );
        // A head of 512 weights round-trips; a weight count no gallery has is corruption.
        let wide = HeadData {
            weights: (0..512).map(|i| i as f32 / 512.0).collect(),
            ..h.clone()
        };
        assert_eq!(
            decode_head(Path::new("h"), &encode_head(&wide)).unwrap(),
            wide
        );
        let odd = HeadData {
            weights: vec![0.5; 100],
            ..h.clone()
        };
        assert!(decode_head(Path::new("h"), &encode_head(&odd)).is_err());
        // Found by the `head` target's checks: an infinite weight under a valid
        // CRC was accepted, and a probe equal to a stored vector then scored
        // inf × 0, a NaN probability.
        let first_weight = b.len() - 4 - 4 * DIM;
        for at in [first_weight, HEAD_BIAS_OFF, HEAD_BIAS_OFF + 12] {
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

//! The manifest (`MANIFEST`): layout, encoder and decoder. No I/O.
//!
//! # Manifest (`MANIFEST`), version 6 (4 and 5 are the same without the highest id; 3 also without the gallery's spec; 1 and 2 also without the subject count)
//!
//! | size | type | meaning |
//! |---|---|---|
//! | 8 | `[u8; 8]` | magic `89 56 4D 46 0D 0A 1A 0A` (`\x89VMF\r\n\x1a\n`) |
//! | 4 | u32 | format version (1) |
//! | 4 | u32 | reserved, 0 |
//! | 8 | u64 | body length `b` |
//! | b | body | see below |
//! | 4 | u32 | crc32 of everything before it |
//!
//! Body: generation u64, next file number u64, first WAL file to replay u64,
//! segment count u32, then per segment (each file number once): file number
//! u64, rows u64, tombstone count u64, that many u32 deleted rows in ascending
//! order; then (version 3) the number of subjects with a live row in these
//! segments, u64 (`u64::MAX`: not counted, the next open counts them). With
//! the WAL's records replayed on top, it gives the gallery's subject count
//! without reading every segment's subjects at open. Then (version 4) the
//! gallery's spec, fixed at creation: dimension u32 (a multiple of 16 from
//! 16 to 2,048), flags u32 (bit 0: normalise; the other bits reserved, 0),
//! model name length u16 (at most 256) and its UTF-8 bytes. A manifest of
//! version 1 to 3 is a gallery of 128 values a vector, no model, not normalising.
//! Then (version 6) the highest id the gallery has held or assigned, u64: the
//! counter of the ids it assigns (each above it), which never goes down, so an
//! assigned id is never assigned again, even after its row was deleted and
//! compacted away. Opening takes the largest of it, the ids in the segments and
//! the ids in the replayed WAL (a manifest before version 6: the last two).
//! Then (version 7) the log sequence of the last batch the segments hold, u64:
//! for a gallery that is a replica of a replicated log (0 otherwise). The
//! WAL's records of batches applied from the log carry theirs (kind 3), so
//! opening restores the sequence of the last batch applied.

use super::{Cursor, FORMAT_VERSION, check_version, check_zero, get_u32, get_u64};
use crate::api::GallerySpec;
use crate::error::{Error, Result};
use std::path::Path;

/// Magic number of the manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"\x89VMF\r\n\x1a\n";

/// Decoded manifest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ManifestData {
    /// Incremented at every write.
    pub generation: u64,
    /// Next unused file number.
    pub next_file_no: u64,
    /// First WAL file to replay on open.
    pub wal_start: u64,
    /// Live segments.
    pub segments: Vec<ManifestSegment>,
    /// Subjects with a live row in the segments (`None`: not counted, as in
    /// versions 1 and 2).
    pub subjects: Option<u64>,
    /// The gallery's dimension, model and normalisation (the default, 128
    /// values and no model, for versions 1 to 3).
    pub spec: GallerySpec,
    /// The highest id the gallery has held or assigned (0 before version 6).
    pub highest_id: u64,
    /// The sequence number, in the replicated log the gallery is a replica
    /// of, of the last batch its segments hold (0: none, or not a replica;
    /// always 0 before version 7).
    pub applied_seq: u64,
}

/// One segment in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestSegment {
    /// File number.
    pub file_no: u64,
    /// Rows in the file.
    pub rows: u64,
    /// Deleted rows, ascending.
    pub deleted: Vec<u32>,
}

const MANIFEST_PREFIX_LEN: usize = 8 + 4 + 4 + 8;

/// Encode a manifest file.
pub fn encode_manifest(m: &ManifestData) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&m.generation.to_le_bytes());
    body.extend_from_slice(&m.next_file_no.to_le_bytes());
    body.extend_from_slice(&m.wal_start.to_le_bytes());
    #[allow(
        clippy::cast_possible_truncation,
        reason = "a segment is a file: a gallery holds far fewer than 2^32 of them"
    )]
    body.extend_from_slice(&(m.segments.len() as u32).to_le_bytes());
    for s in &m.segments {
        body.extend_from_slice(&s.file_no.to_le_bytes());
        body.extend_from_slice(&s.rows.to_le_bytes());
        body.extend_from_slice(&(s.deleted.len() as u64).to_le_bytes());
        for r in &s.deleted {
            body.extend_from_slice(&r.to_le_bytes());
        }
    }
    body.extend_from_slice(&m.subjects.unwrap_or(u64::MAX).to_le_bytes());
    #[allow(
        clippy::cast_possible_truncation,
        reason = "a spec's dimension is at most 2,048 and its model at most 256 bytes (GallerySpec::problem)"
    )]
    {
        body.extend_from_slice(&(m.spec.dim as u32).to_le_bytes());
        body.extend_from_slice(&u32::from(m.spec.normalize).to_le_bytes());
        body.extend_from_slice(&(m.spec.model.len() as u16).to_le_bytes());
    }
    body.extend_from_slice(m.spec.model.as_bytes());
    body.extend_from_slice(&m.highest_id.to_le_bytes());
    body.extend_from_slice(&m.applied_seq.to_le_bytes());
    let mut out = Vec::with_capacity(MANIFEST_PREFIX_LEN + body.len() + 4);
    out.extend_from_slice(&MANIFEST_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decode a manifest file read from `path`.
pub fn decode_manifest(path: &Path, b: &[u8]) -> Result<ManifestData> {
    if b.len() < MANIFEST_PREFIX_LEN + 4 {
        return Err(Error::corrupt(
            path,
            0,
            format!("manifest is {} bytes, too short", b.len()),
        ));
    }
    if b[..8] != MANIFEST_MAGIC {
        return Err(Error::corrupt(
            path,
            0,
            "not a visage manifest (bad magic number)",
        ));
    }
    let version = get_u32(b, 8);
    check_version(path, version)?;
    check_zero(path, b, 12..16)?;
    let body_len = get_u64(b, 16);
    let total = (MANIFEST_PREFIX_LEN as u64)
        .checked_add(body_len)
        .and_then(|n| n.checked_add(4));
    if total != Some(b.len() as u64) {
        return Err(Error::corrupt(
            path,
            16,
            format!(
                "body length {body_len} does not match file length {}",
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
            section: "manifest".into(),
            expected: stored,
            got: computed,
        });
    }
    let mut c = Cursor {
        buf: &b[..crc_at],
        at: MANIFEST_PREFIX_LEN,
        path,
        base: 0,
    };
    let generation = c.u64()?;
    let next_file_no = c.u64()?;
    let wal_start = c.u64()?;
    let n = c.u32()? as usize;
    let mut segments = Vec::with_capacity(n.min(b.len() / 24));
    for _ in 0..n {
        let file_no = c.u64()?;
        let rows = c.u64()?;
        let nd = c.u64()?;
        // Each tombstone takes 4 bytes of the file: a count within that bound
        // fits in `usize` and bounds the allocation.
        let nd = match usize::try_from(nd) {
            Ok(n) if nd <= rows && n <= b.len() / 4 => n,
            _ => {
                return Err(c.err(format!(
                    "segment {file_no:016x}: {nd} tombstones for {rows} rows"
                )));
            }
        };
        let mut deleted = Vec::with_capacity(nd);
        let mut prev: Option<u32> = None;
        for _ in 0..nd {
            let r = c.u32()?;
            if u64::from(r) >= rows || prev.is_some_and(|p| p >= r) {
                return Err(c.err(format!(
                    "segment {file_no:016x}: tombstone row {r} out of order or range"
                )));
            }
            prev = Some(r);
            deleted.push(r);
        }
        segments.push(ManifestSegment {
            file_no,
            rows,
            deleted,
        });
    }
    let subjects = if version >= 3 {
        Some(c.u64()?).filter(|&n| n != u64::MAX)
    } else {
        None
    };
    let spec = if version >= 4 {
        let at = c.at;
        let dim = c.u32()? as usize;
        let flags = c.u32()?;
        if flags > 1 {
            return Err(Error::corrupt(
                path,
                (at + 4) as u64,
                format!("unknown gallery flags {flags:#x}"),
            ));
        }
        let len = usize::from(c.u16()?);
        let model = std::str::from_utf8(c.take(len)?)
            .map_err(|_| Error::corrupt(path, (at + 10) as u64, "model name is not UTF-8"))?
            .to_owned();
        let spec = GallerySpec {
            dim,
            model,
            normalize: flags == 1,
        };
        if let Some(why) = spec.problem() {
            return Err(Error::corrupt(path, at as u64, why));
        }
        spec
    } else {
        GallerySpec::default()
    };
    let highest_id = if version >= 6 { c.u64()? } else { 0 };
    let applied_seq = if version >= 7 { c.u64()? } else { 0 };
    c.finish()?;
    let mut numbers: Vec<u64> = segments.iter().map(|s| s.file_no).collect();
    numbers.sort_unstable();
    if let Some(w) = numbers.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::corrupt(
            path,
            MANIFEST_PREFIX_LEN as u64,
            format!("segment {:016x} is listed twice", w[0]),
        ));
    }
    Ok(ManifestData {
        generation,
        next_file_no,
        wal_start,
        segments,
        subjects,
        spec,
        highest_id,
        applied_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::format::test_support::reseal;

    #[test]
    fn manifest_round_trip_and_corruption() {
        let m = ManifestData {
            generation: 3,
            next_file_no: 10,
            wal_start: 9,
            segments: vec![
                ManifestSegment {
                    file_no: 4,
                    rows: 100,
                    deleted: vec![1, 5, 99],
                },
                ManifestSegment {
                    file_no: 7,
                    rows: 2,
                    deleted: vec![],
                },
            ],
            subjects: Some(7),
            spec: GallerySpec {
                dim: 512,
                model: "arcface-r100@insightface-0.7.3".into(),
                normalize: true,
            },
            highest_id: 0x0123_4567_89ab_cdef,
            applied_seq: 0x0fed_cba9_8765_4321,
        };
        let b = encode_manifest(&m);
        assert_eq!(decode_manifest(Path::new("m"), &b).unwrap(), m);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 1;
            assert!(decode_manifest(Path::new("m"), &c).is_err(), "byte {i}");
        }
        for cut in 0..b.len() {
            assert!(decode_manifest(Path::new("m"), &b[..cut]).is_err());
        }
        // Found by the `manifest` fuzz target: one segment listed twice was
        // accepted, and the gallery then served each of its rows twice.
        let mut twice = m.clone();
        twice.segments[1].file_no = 4;
        twice.segments[1].deleted.clear();
        assert!(decode_manifest(Path::new("m"), &encode_manifest(&twice)).is_err());
        // A spec the engine could not have created is corruption.
        for spec in [
            GallerySpec::with_dim(100),
            GallerySpec::with_dim(4096),
            GallerySpec {
                model: "a\nb".into(),
                ..GallerySpec::default()
            },
        ] {
            let bad = ManifestData { spec, ..m.clone() };
            assert!(decode_manifest(Path::new("m"), &encode_manifest(&bad)).is_err());
        }
    }

    /// A version-5 manifest (no highest id) decodes with highest id 0 (the
    /// segments and the WAL give it at open); a version-3 one (no spec) as a
    /// default gallery of 128 values; a version-2 one (no subject count) still decodes, its count unknown;
    /// "not counted" written by this version reads back as unknown too.
    #[test]
    fn versions_without_the_subject_count_decode_as_unknown() {
        let m = ManifestData {
            generation: 2,
            next_file_no: 5,
            wal_start: 4,
            segments: vec![ManifestSegment {
                file_no: 3,
                rows: 10,
                deleted: vec![2],
            }],
            subjects: Some(3),
            spec: GallerySpec::default(),
            highest_id: 0,
            applied_seq: 0,
        };
        let v7 = encode_manifest(&m);
        // Versions 6 and 7 end with the highest id, then the applied sequence.
        assert_eq!(&v7[v7.len() - 20..v7.len() - 4], &[0; 16]);
        let mut v6 = v7[..v7.len() - 12].to_vec();
        v6[8..12].copy_from_slice(&6u32.to_le_bytes());
        let body = (v6.len() - MANIFEST_PREFIX_LEN) as u64;
        v6[16..24].copy_from_slice(&body.to_le_bytes());
        v6.extend_from_slice(&[0; 4]);
        reseal(&mut v6);
        assert_eq!(decode_manifest(Path::new("m"), &v6).unwrap(), m);
        let mut v4 = v7[..v7.len() - 20].to_vec();
        v4[8..12].copy_from_slice(&5u32.to_le_bytes());
        let body = (v4.len() - MANIFEST_PREFIX_LEN) as u64;
        v4[16..24].copy_from_slice(&body.to_le_bytes());
        v4.extend_from_slice(&[0; 4]);
        reseal(&mut v4);
        assert_eq!(decode_manifest(Path::new("m"), &v4).unwrap(), m);
        // The spec of a default gallery takes 10 bytes: 128, no flags, no model
        // (versions 4 and 5 share the layout).
        assert_eq!(
            &v4[v4.len() - 14..v4.len() - 4],
            &[128, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let mut v3 = v4[..v4.len() - 14].to_vec();
        v3[8..12].copy_from_slice(&3u32.to_le_bytes());
        let body = (v3.len() - MANIFEST_PREFIX_LEN) as u64;
        v3[16..24].copy_from_slice(&body.to_le_bytes());
        v3.extend_from_slice(&[0; 4]);
        reseal(&mut v3);
        assert_eq!(decode_manifest(Path::new("m"), &v3).unwrap(), m);
        assert_eq!(&v3[v3.len() - 12..v3.len() - 4], &3u64.to_le_bytes());
        let mut v2 = v3[..v3.len() - 12].to_vec();
        v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        let body = (v2.len() - MANIFEST_PREFIX_LEN) as u64;
        v2[16..24].copy_from_slice(&body.to_le_bytes());
        v2.extend_from_slice(&[0; 4]);
        reseal(&mut v2);
        let got = decode_manifest(Path::new("m"), &v2).unwrap();
        assert_eq!(got.subjects, None);
        assert_eq!(got.segments, m.segments);
        let unknown = ManifestData {
            subjects: None,
            ..m
        };
        assert_eq!(
            decode_manifest(Path::new("m"), &encode_manifest(&unknown)).unwrap(),
            unknown
        );
    }

    /// Found by the `manifest` fuzz target: decoders accepted non-zero reserved
    /// bytes under a valid CRC, so an accepted file did not re-encode to itself.
    #[test]
    fn reserved_bytes_must_be_zero_even_under_a_valid_crc() {
        let m = encode_manifest(&ManifestData::default());
        let mut bad = m.clone();
        bad[15] = 0x51;
        reseal(&mut bad);
        assert!(decode_manifest(Path::new("m"), &m).is_ok());
        assert!(decode_manifest(Path::new("m"), &bad).is_err());
    }
}

//! Segment files (`.vseg`): the header, its section table and the sections. No I/O.
//!
//! # Segment file (`.vseg`), version 1
//!
//! | offset | size | type | meaning |
//! |---|---|---|---|
//! | 0 | 8 | `[u8; 8]` | magic `89 56 53 47 0D 0A 1A 0A` (`\x89VSG\r\n\x1a\n`) |
//! | 8 | 4 | u32 | format version (1) |
//! | 12 | 4 | u32 | dimension `D` (128 up to version 3; from version 4 a multiple of 16 from 16 to 2,048, the gallery's) |
//! | 16 | 8 | u64 | rows |
//! | 24 | 8 | u64 | distinct subjects |
//! | 32 | 8 | u64 | segment file number |
//! | 40 | 4 | u32 | number of used section slots (10 in version 1, 12 in versions 2 to 4, 13 in versions 5 to 7, 14 from version 8) |
//! | 44 | 4 | u32 | reserved, 0 |
//! | 48 | 16 × 24 | section table | per slot: offset u64, length u64, crc32 u32, reserved u32 |
//! | 432 | 76 | | reserved, 0 |
//! | 508 | 4 | u32 | crc32 of bytes 0..508 |
//!
//! Sections follow the 512-byte header, each starting at a multiple of 64
//! bytes (zero padding between), in slot order:
//!
//! | slot | name | length | contents |
//! |---|---|---|---|
//! | 0 | vectors | rows × 4·D | row-major `[f32; D]` |
//! | 1 | ids | rows × 8 | u64 id of each row |
//! | 2 | subject_ords | rows × 4 | u32 ordinal of each row's subject in the subject table |
//! | 3 | norms | rows × 4 | f32 squared L2 norm of each row |
//! | 4 | sorted_ids | rows × 8 | the ids in ascending order |
//! | 5 | sorted_rows | rows × 4 | u32 row of each entry of `sorted_ids` |
//! | 6 | subject_offsets | (subjects + 1) × 8 | u64 start of each subject in `subject_bytes`, then the end |
//! | 7 | subject_bytes | Σ | UTF-8 subject strings, in ascending byte order, concatenated |
//! | 8 | posting_offsets | (subjects + 1) × 4 | u32 start of each subject's rows in `posting_rows`, then `rows` |
//! | 9 | posting_rows | rows × 4 | u32 rows grouped by subject ordinal, ascending within a subject |
//! | 10 | sq8_params | 8·D | version 2: f32 minimum of each dimension, then f32 step of each dimension |
//! | 11 | sq8_codes | rows × D | version 2: u8 code per value, `x ≈ min + step·code` (round to nearest, clamped) |
//! | 12 | sq8_exceptions | 4 × E | version 5: u32 rows, strictly ascending, whose codes are not within half a step of their values in some dimension (clamped to the quantiser's range: outliers); the scans score them exactly |
//! | 13 | sq8_rho | 8 | version 8: f64 ρ, the largest coding error `‖x − x̂‖` of the rows that are not exceptions (`crate::quantizer::coding_error`, rounded up), finite and ≥ 0; 0 without such rows |
//!
//! From version 5 the quantiser's range of a dimension is robust to outliers
//! (the 1% and 99% quantiles reached out by their distance on each side, within
//! the minimum and maximum; see `crate::quantizer::sq8_params`), and every row
//! with a value outside it is listed in `sq8_exceptions`. Up to version 4 the
//! range was the minimum and maximum, so no row was an exception.
//!
//! A segment holds each id at most once. Sections 1–10, 12 and 13 are verified
//! against their CRC at every open (they are small); the vector section on request
//! ([`crate::VerifyChecksums::Full`]), because reading 512 MB per million rows
//! would make open O(n).

use super::{SECTION_ALIGN, check_version, check_zero, get_u32, get_u64, put_u32, put_u64};
use crate::DIM;
use crate::api::GallerySpec;
use crate::error::{Error, Result};
use std::path::Path;

/// Magic number of segment files.
pub const SEGMENT_MAGIC: [u8; 8] = *b"\x89VSG\r\n\x1a\n";

// ---- segment header: offsets chained from sizes -------------------------
const SEG_MAGIC_OFF: usize = 0;
const SEG_VERSION_OFF: usize = SEG_MAGIC_OFF + 8;
const SEG_DIM_OFF: usize = SEG_VERSION_OFF + size_of::<u32>();
const SEG_ROWS_OFF: usize = SEG_DIM_OFF + size_of::<u32>();
const SEG_SUBJECTS_OFF: usize = SEG_ROWS_OFF + size_of::<u64>();
const SEG_FILE_NO_OFF: usize = SEG_SUBJECTS_OFF + size_of::<u64>();
const SEG_SECTION_COUNT_OFF: usize = SEG_FILE_NO_OFF + size_of::<u64>();
const SEG_RESERVED_OFF: usize = SEG_SECTION_COUNT_OFF + size_of::<u32>();
const SEG_TABLE_OFF: usize = SEG_RESERVED_OFF + size_of::<u32>();
/// Bytes of one section-table entry.
const SECTION_ENTRY_LEN: usize = 2 * size_of::<u64>() + 2 * size_of::<u32>();
/// Slots in the section table (room for later versions).
pub const SECTION_SLOTS: usize = 16;
const SEG_TABLE_END: usize = SEG_TABLE_OFF + SECTION_SLOTS * SECTION_ENTRY_LEN;
/// Length of the segment header, including its trailing CRC.
pub const SEGMENT_HEADER_LEN: usize = 512;
const SEG_CRC_OFF: usize = SEGMENT_HEADER_LEN - size_of::<u32>();
const _: () = assert!(SEG_TABLE_OFF == 48);
const _: () = assert!(SEG_TABLE_END == 432);
const _: () = assert!(SEG_TABLE_END <= SEG_CRC_OFF);
const _: () = assert!((SEGMENT_HEADER_LEN as u64).is_multiple_of(SECTION_ALIGN));

/// The sections of a version-1 segment, in slot order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Section {
    /// Row-major vectors.
    Vectors = 0,
    /// Id per row.
    Ids,
    /// Subject ordinal per row.
    SubjectOrds,
    /// Squared norm per row.
    Norms,
    /// Ids ascending.
    SortedIds,
    /// Row per sorted id.
    SortedRows,
    /// Offsets of subject strings.
    SubjectOffsets,
    /// Subject strings.
    SubjectBytes,
    /// Offsets into posting rows.
    PostingOffsets,
    /// Rows grouped by subject.
    PostingRows,
    /// Scalar-quantiser parameters (version 2).
    Sq8Params,
    /// 8-bit codes (version 2).
    Sq8Codes,
    /// Rows whose codes the quantiser's bound does not cover (version 5).
    Sq8Exceptions,
    /// The largest coding error of the other rows (version 8).
    Sq8Rho,
}

/// The first segment version whose quantiser is robust to outliers and lists
/// its exceptions. Older segments are "outdated": forced compaction rewrites
/// them. (Not [`super::FORMAT_VERSION`]: a later version that changes only
/// another file kind must not make every segment outdated.)
pub const ROBUST_CODES_VERSION: u32 = 5;

/// The first segment version that stores its coding error bound ρ
/// ([`Section::Sq8Rho`]); older ones compute it from their vectors.
pub const STORED_RHO_VERSION: u32 = 8;

/// Number of sections in a segment of the newest version.
pub const SECTION_COUNT: usize = 14;

/// Number of sections in a segment of `version`.
pub fn sections_in(version: u32) -> usize {
    match version {
        8.. => 14,
        5..=7 => 13,
        2..=4 => 12,
        _ => 10,
    }
}

/// Bytes of the scalar-quantiser parameters at dimension `dim`: per dimension
/// a minimum and a step (f32 each).
pub fn sq8_params_bytes(dim: u64) -> u64 {
    2 * dim * 4
}

impl Section {
    /// All sections in slot order.
    pub const ALL: [Section; SECTION_COUNT] = [
        Section::Vectors,
        Section::Ids,
        Section::SubjectOrds,
        Section::Norms,
        Section::SortedIds,
        Section::SortedRows,
        Section::SubjectOffsets,
        Section::SubjectBytes,
        Section::PostingOffsets,
        Section::PostingRows,
        Section::Sq8Params,
        Section::Sq8Codes,
        Section::Sq8Exceptions,
        Section::Sq8Rho,
    ];

    /// Name used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Section::Vectors => "vectors",
            Section::Ids => "ids",
            Section::SubjectOrds => "subject_ords",
            Section::Norms => "norms",
            Section::SortedIds => "sorted_ids",
            Section::SortedRows => "sorted_rows",
            Section::SubjectOffsets => "subject_offsets",
            Section::SubjectBytes => "subject_bytes",
            Section::PostingOffsets => "posting_offsets",
            Section::PostingRows => "posting_rows",
            Section::Sq8Params => "sq8_params",
            Section::Sq8Codes => "sq8_codes",
            Section::Sq8Exceptions => "sq8_exceptions",
            Section::Sq8Rho => "sq8_rho",
        }
    }

    /// Expected length in bytes for a segment of `rows` rows of `dim` values
    /// and `subjects` subjects; `None` for the variable-length subject bytes
    /// and exception rows (checked when the segment is opened).
    pub fn expected_len(self, rows: u64, subjects: u64, dim: u64) -> Option<u64> {
        Some(match self {
            Section::Vectors => rows.checked_mul(dim)?.checked_mul(4)?,
            Section::Ids | Section::SortedIds => rows.checked_mul(8)?,
            Section::SubjectOrds | Section::Norms | Section::SortedRows | Section::PostingRows => {
                rows.checked_mul(4)?
            }
            Section::SubjectOffsets => subjects.checked_add(1)?.checked_mul(8)?,
            Section::PostingOffsets => subjects.checked_add(1)?.checked_mul(4)?,
            Section::SubjectBytes | Section::Sq8Exceptions => return None,
            Section::Sq8Params => sq8_params_bytes(dim),
            Section::Sq8Codes => rows.checked_mul(dim)?,
            Section::Sq8Rho => 8,
        })
    }
}

/// Location and checksum of one section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SectionEntry {
    /// Byte offset from the start of the file (multiple of 64).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// CRC-32 of the section's bytes.
    pub crc: u32,
}

/// Decoded segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version.
    pub version: u32,
    /// Values per vector.
    pub dim: u32,
    /// Rows.
    pub rows: u64,
    /// Distinct subjects.
    pub subjects: u64,
    /// File number.
    pub file_no: u64,
    /// Section table.
    pub sections: [SectionEntry; SECTION_COUNT],
}

impl SegmentHeader {
    /// Encode into the fixed 512-byte header, CRC included.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[SEG_MAGIC_OFF..SEG_MAGIC_OFF + 8].copy_from_slice(&SEGMENT_MAGIC);
        put_u32(&mut b, SEG_VERSION_OFF, self.version);
        put_u32(&mut b, SEG_DIM_OFF, self.dim);
        put_u64(&mut b, SEG_ROWS_OFF, self.rows);
        put_u64(&mut b, SEG_SUBJECTS_OFF, self.subjects);
        put_u64(&mut b, SEG_FILE_NO_OFF, self.file_no);
        let n = sections_in(self.version);
        #[allow(
            clippy::cast_possible_truncation,
            reason = "at most SECTION_COUNT (14)"
        )]
        put_u32(&mut b, SEG_SECTION_COUNT_OFF, n as u32);
        for (i, s) in self.sections.iter().take(n).enumerate() {
            let at = SEG_TABLE_OFF + i * SECTION_ENTRY_LEN;
            put_u64(&mut b, at, s.offset);
            put_u64(&mut b, at + 8, s.len);
            put_u32(&mut b, at + 16, s.crc);
        }
        let crc = crc32fast::hash(&b[..SEG_CRC_OFF]);
        put_u32(&mut b, SEG_CRC_OFF, crc);
        b
    }

    /// Decode and check a header read from `path` whose total length is `file_len`.
    /// Checks magic, version, dimension, CRC, and that every section lies inside
    /// the file, is 64-byte aligned and has the length its counts imply.
    pub fn decode(path: &Path, bytes: &[u8], file_len: u64) -> Result<SegmentHeader> {
        if bytes.len() < SEGMENT_HEADER_LEN {
            return Err(Error::corrupt(
                path,
                0,
                format!(
                    "file is {} bytes, shorter than the {SEGMENT_HEADER_LEN}-byte segment header",
                    bytes.len()
                ),
            ));
        }
        let b = &bytes[..SEGMENT_HEADER_LEN];
        if b[..8] != SEGMENT_MAGIC {
            return Err(Error::corrupt(
                path,
                0,
                "not a visage segment file (bad magic number)",
            ));
        }
        let version = get_u32(b, SEG_VERSION_OFF);
        let stored = get_u32(b, SEG_CRC_OFF);
        let computed = crc32fast::hash(&b[..SEG_CRC_OFF]);
        if stored != computed {
            return Err(Error::ChecksumMismatch {
                path: path.into(),
                section: "segment header".into(),
                expected: stored,
                got: computed,
            });
        }
        check_version(path, version)?;
        let dim = get_u32(b, SEG_DIM_OFF);
        // Up to version 3 every gallery was of 128 values.
        let valid = if version >= 4 {
            GallerySpec::with_dim(dim as usize).problem().is_none()
        } else {
            dim as usize == DIM
        };
        if !valid {
            return Err(Error::corrupt(
                path,
                SEG_DIM_OFF as u64,
                format!("dimension {dim} is not one a version-{version} segment can have"),
            ));
        }
        let rows = get_u64(b, SEG_ROWS_OFF);
        let subjects = get_u64(b, SEG_SUBJECTS_OFF);
        if rows > u64::from(u32::MAX) || subjects > rows {
            return Err(Error::corrupt(
                path,
                SEG_ROWS_OFF as u64,
                format!("{rows} rows and {subjects} subjects are out of range"),
            ));
        }
        let count = get_u32(b, SEG_SECTION_COUNT_OFF);
        let n = sections_in(version);
        if usize::try_from(count) != Ok(n) {
            return Err(Error::corrupt(
                path,
                SEG_SECTION_COUNT_OFF as u64,
                format!("{count} sections, version {version} has {n}"),
            ));
        }
        // Reserved fields, the table slots this version does not use, and the
        // padding before the CRC are written as zeros: anything else is not a
        // header this build wrote or can re-encode.
        let unused_slots = SEG_TABLE_OFF + n * SECTION_ENTRY_LEN..SEG_TABLE_END;
        for range in [
            SEG_RESERVED_OFF..SEG_TABLE_OFF,
            unused_slots,
            SEG_TABLE_END..SEG_CRC_OFF,
        ] {
            check_zero(path, b, range)?;
        }
        for i in 0..n {
            check_zero(
                path,
                b,
                SEG_TABLE_OFF + i * SECTION_ENTRY_LEN + 20
                    ..SEG_TABLE_OFF + (i + 1) * SECTION_ENTRY_LEN,
            )?;
        }
        // Sections a version does not have stay empty (offset 0, length 0).
        let mut sections = [SectionEntry::default(); SECTION_COUNT];
        for (i, sec) in Section::ALL.iter().take(n).enumerate() {
            let at = SEG_TABLE_OFF + i * SECTION_ENTRY_LEN;
            let e = SectionEntry {
                offset: get_u64(b, at),
                len: get_u64(b, at + 8),
                crc: get_u32(b, at + 16),
            };
            let end = e.offset.checked_add(e.len);
            if !e.offset.is_multiple_of(SECTION_ALIGN)
                || e.offset < SEGMENT_HEADER_LEN as u64
                || end.is_none_or(|end| end > file_len)
            {
                return Err(Error::corrupt(
                    path,
                    at as u64,
                    format!(
                        "section {} at offset {} with length {} does not fit a {file_len}-byte file at 64-byte alignment",
                        sec.name(),
                        e.offset,
                        e.len
                    ),
                ));
            }
            if let Some(want) = sec.expected_len(rows, subjects, u64::from(dim))
                && want != e.len
            {
                return Err(Error::corrupt(
                    path,
                    at as u64,
                    format!(
                        "section {} is {} bytes, {rows} rows need {want}",
                        sec.name(),
                        e.len
                    ),
                ));
            }
            sections[i] = e;
        }
        Ok(SegmentHeader {
            version,
            dim,
            rows,
            subjects,
            file_no: get_u64(b, SEG_FILE_NO_OFF),
            sections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::format::test_support::reseal;

    /// The section table of a segment of `version` with no rows: each of its
    /// sections at its own aligned offset after the header, with the length
    /// its counts imply; the slots the version does not use empty.
    fn empty_sections(dim: u64, version: u32) -> [SectionEntry; SECTION_COUNT] {
        let mut sections = [SectionEntry::default(); SECTION_COUNT];
        let mut at = 512;
        for (i, s) in sections.iter_mut().enumerate().take(sections_in(version)) {
            s.offset = at;
            s.len = Section::ALL[i].expected_len(0, 0, dim).unwrap_or(0);
            at = super::super::align_up(at + s.len.max(1));
        }
        sections
    }

    #[test]
    fn segment_header_golden_bytes() {
        let mut sections = empty_sections(128, 2);
        for (i, s) in sections.iter_mut().enumerate().take(12) {
            s.crc = u32::try_from(i).unwrap();
        }
        let h = SegmentHeader {
            version: 2,
            dim: 128,
            rows: 0,
            subjects: 0,
            file_no: 0x0102,
            sections,
        };
        let b = h.encode();
        assert_eq!(&b[0..8], b"\x89VSG\r\n\x1a\n");
        assert_eq!(&b[8..12], &[2, 0, 0, 0]);
        assert_eq!(&b[12..16], &[128, 0, 0, 0]);
        assert_eq!(&b[32..40], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[40..44], &[12, 0, 0, 0]);
        // Section 1: offset 576 at 48 + 24.
        assert_eq!(&b[72..80], &576u64.to_le_bytes());
        assert_eq!(&b[88..92], &1u32.to_le_bytes());
        assert_eq!(&b[508..512], &crc32fast::hash(&b[..508]).to_le_bytes());
        let back = SegmentHeader::decode(Path::new("x"), &b, 4096).unwrap();
        assert_eq!(back, h);
        // Version 4 records any dimension the gallery may have; older versions only 128.
        let sections = empty_sections(512, 4);
        let v4 = SegmentHeader {
            version: 4,
            dim: 512,
            sections,
            ..h.clone()
        };
        let b = v4.encode();
        assert_eq!(&b[12..16], &[0, 2, 0, 0]);
        assert_eq!(SegmentHeader::decode(Path::new("x"), &b, 8192).unwrap(), v4);
        // Version 5 adds the exceptions (section 12): 13 slots in use.
        let v5 = SegmentHeader {
            version: 5,
            sections: empty_sections(512, 5),
            ..v4.clone()
        };
        let b = v5.encode();
        assert_eq!(&b[40..44], &[13, 0, 0, 0]);
        assert_eq!(
            &b[48 + 12 * 24..48 + 12 * 24 + 8],
            &v5.sections[12].offset.to_le_bytes()
        );
        assert_eq!(SegmentHeader::decode(Path::new("x"), &b, 8192).unwrap(), v5);
        for (version, dim) in [(3, 512), (4, 100), (4, 4096), (4, 0), (5, 100)] {
            let bad = SegmentHeader {
                version,
                dim,
                sections: empty_sections(u64::from(dim), version),
                ..h.clone()
            };
            let err = SegmentHeader::decode(Path::new("x"), &bad.encode(), 1 << 20).unwrap_err();
            assert!(err.to_string().contains("dimension"), "{err}");
        }
    }

    /// The encoded header of an empty version-1 segment (file 1).
    fn empty_v1_header() -> [u8; SEGMENT_HEADER_LEN] {
        SegmentHeader {
            version: 1,
            dim: 128,
            rows: 0,
            subjects: 0,
            file_no: 1,
            sections: empty_sections(128, 1),
        }
        .encode()
    }

    #[test]
    fn segment_header_rejects_every_flipped_byte() {
        let b = empty_v1_header();
        for i in 0..SEGMENT_HEADER_LEN {
            let mut c = b;
            c[i] ^= 0x40;
            assert!(
                SegmentHeader::decode(Path::new("x"), &c, 4096).is_err(),
                "byte {i}"
            );
        }
    }

    /// Found by the `manifest` fuzz target: decoders accepted non-zero reserved
    /// bytes under a valid CRC, so an accepted file did not re-encode to itself.
    #[test]
    fn reserved_bytes_must_be_zero_even_under_a_valid_crc() {
        let v1 = empty_v1_header();
        assert!(SegmentHeader::decode(Path::new("s"), &v1, 4096).is_ok());
        // The reserved word, a slot's reserved word, a slot version 1 does not
        // use (slot 10), and the padding before the CRC.
        for at in [44, 48 + 20, 48 + 24 * 10, 450] {
            let mut bad = v1;
            bad[at] = 1;
            reseal(&mut bad);
            assert!(
                SegmentHeader::decode(Path::new("s"), &bad, 4096).is_err(),
                "byte {at}"
            );
        }
    }
}

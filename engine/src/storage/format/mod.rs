//! THE on-disk format of a gallery: constants, encoders and decoders. No I/O.
//!
//! Every file starts with an 8-byte magic number holding a non-ASCII byte and
//! a newline (so text-mode transfers and truncation to 7 bits are caught, as in
//! PNG), a little-endian `u32` format version, and is protected by CRC-32
//! (IEEE 802.3 polynomial `0x04C11DB7`, reflected, as computed by `crc32fast`).
//! All integers and floats are little-endian. Decoders never panic: every
//! offset read from disk is bounds-checked and a bad value is an `Err` that
//! names the file and the offset. Reserved fields are written as zeros, and a
//! decoder refuses a file whose reserved bytes are not (so everything a
//! decoder accepts re-encodes to the same bytes).
//!
//! A gallery directory holds:
//!
//! | file | written | contents |
//! |---|---|---|
//! | `MANIFEST` | atomically replaced (temp, fsync, rename, fsync dir) | live segments, their tombstones, the first WAL file to replay |
//! | `wal-XXXXXXXXXXXXXXXX.log` | appended | batches acknowledged since the manifest |
//! | `seg-XXXXXXXXXXXXXXXX.vseg` | once, then immutable and memory-mapped | embeddings |
//!
//! File numbers (`XXXX…`, 16 lowercase hex digits) come from one counter per
//! gallery kept in the manifest and are never reused.
//!
//! # Segment file (`.vseg`), version 1
//!
//! | offset | size | type | meaning |
//! |---|---|---|---|
//! | 0 | 8 | `[u8; 8]` | magic `89 56 53 47 0D 0A 1A 0A` (`\x89VSG\r\n\x1a\n`) |
//! | 8 | 4 | u32 | format version (1) |
//! | 12 | 4 | u32 | dimension (128) |
//! | 16 | 8 | u64 | rows |
//! | 24 | 8 | u64 | distinct subjects |
//! | 32 | 8 | u64 | segment file number |
//! | 40 | 4 | u32 | number of used section slots (10 in version 1, 12 in version 2) |
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
//! | 0 | vectors | rows × 512 | row-major `[f32; 128]` |
//! | 1 | ids | rows × 8 | u64 id of each row |
//! | 2 | subject_ords | rows × 4 | u32 ordinal of each row's subject in the subject table |
//! | 3 | norms | rows × 4 | f32 squared L2 norm of each row |
//! | 4 | sorted_ids | rows × 8 | the ids in ascending order |
//! | 5 | sorted_rows | rows × 4 | u32 row of each entry of `sorted_ids` |
//! | 6 | subject_offsets | (subjects + 1) × 8 | u64 start of each subject in `subject_bytes`, then the end |
//! | 7 | subject_bytes | Σ | UTF-8 subject strings, in ascending byte order, concatenated |
//! | 8 | posting_offsets | (subjects + 1) × 4 | u32 start of each subject's rows in `posting_rows`, then `rows` |
//! | 9 | posting_rows | rows × 4 | u32 rows grouped by subject ordinal, ascending within a subject |
//! | 10 | sq8_params | 1024 | version 2: f32 minimum of each dimension, then f32 step of each dimension |
//! | 11 | sq8_codes | rows × 128 | version 2: u8 code per value, `x ≈ min + step·code` (round to nearest, clamped) |
//!
//! A segment holds each id at most once. Sections 1–9 are verified against their
//! CRC at every open (they are small); the vector section on request
//! ([`crate::VerifyChecksums::Full`]), because reading 512 MB per million rows
//! would make open O(n).
//!
//! # WAL file (`.log`), version 1
//!
//! | offset | size | type | meaning |
//! |---|---|---|---|
//! | 0 | 8 | `[u8; 8]` | magic `89 56 57 4C 0D 0A 1A 0A` (`\x89VWL\r\n\x1a\n`) |
//! | 8 | 4 | u32 | format version (1) |
//! | 12 | 4 | u32 | salt: random seed of every record CRC in this file |
//! | 16 | 8 | u64 | WAL file number |
//! | 24 | 4 | u32 | reserved, 0 |
//! | 28 | 4 | u32 | crc32 of bytes 0..28 |
//!
//! Then records, each one whole batch (applied entirely or not at all):
//!
//! | size | type | meaning |
//! |---|---|---|
//! | 4 | u32 | payload length `n` (1 ..= [`MAX_RECORD_LEN`]) |
//! | 4 | u32 | crc32 seeded with the salt, over the length field and the payload |
//! | n | payload | kind u8, then the body |
//!
//! Kind 1, insert (upsert): count u32, then per embedding id u64, subject
//! length u16, subject bytes, 128 × f32. Kind 2, delete: count u32, then count × id u64
//! (deletes by subject are logged as the ids they resolved to).
//!
//! The salt means a stale record left in a reused or preallocated file can never
//! validate. Recovery reads records until the end; a record that is cut short,
//! has length 0 or fails its CRC is a *torn tail* if no valid record follows it
//! in the last WAL file, and is truncated; a bad record followed by a valid one,
//! or a bad record in an older WAL file, is corruption and an error.
//!
//! # Manifest (`MANIFEST`), version 1
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
//! order.
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
//!
//! # Version history
//! - 1: first format. Still read: segments without the 8-bit codes are
//!   scanned exactly by every mode (fixture `tests/fixtures/format-v1`).
//! - 2: segments carry 8-bit scalar-quantised codes (sections 10 and 11);
//!   the head file gained the open-set thresholds. WAL and manifest unchanged.

#[cfg(not(target_endian = "little"))]
compile_error!(
    "visage writes little-endian files and maps them directly: big-endian targets are not supported"
);

use crate::DIM;
use crate::error::{Error, Result};
use std::path::Path;

/// Newest format version this build writes.
pub const FORMAT_VERSION: u32 = 2;
/// Oldest format version this build reads.
pub const OLDEST_SUPPORTED_VERSION: u32 = 1;

/// Magic number of segment files.
pub const SEGMENT_MAGIC: [u8; 8] = *b"\x89VSG\r\n\x1a\n";
/// Magic number of WAL files.
pub const WAL_MAGIC: [u8; 8] = *b"\x89VWL\r\n\x1a\n";
/// Magic number of the manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"\x89VMF\r\n\x1a\n";

/// Bytes in one stored vector.
pub const VECTOR_BYTES: usize = DIM * size_of::<f32>();
/// Every section starts at a multiple of this.
pub const SECTION_ALIGN: u64 = 64;
/// Longest subject in bytes.
pub const MAX_SUBJECT_LEN: usize = 256;
/// Longest WAL record payload (a batch) in bytes.
pub const MAX_RECORD_LEN: usize = 256 << 20;

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
}

/// Number of sections in a segment of the newest version.
pub const SECTION_COUNT: usize = 12;

/// Number of sections in a segment of `version`.
pub fn sections_in(version: u32) -> usize {
    if version >= 2 { 12 } else { 10 }
}

/// Bytes of the scalar-quantiser parameters: per dimension a minimum and a step (f32 each).
pub const SQ8_PARAMS_BYTES: u64 = 2 * DIM as u64 * 4;

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
        }
    }

    /// Expected length in bytes for a segment of `rows` rows and `subjects` subjects;
    /// `None` for the variable-length subject bytes.
    pub fn expected_len(self, rows: u64, subjects: u64) -> Option<u64> {
        Some(match self {
            Section::Vectors => rows.checked_mul(VECTOR_BYTES as u64)?,
            Section::Ids | Section::SortedIds => rows.checked_mul(8)?,
            Section::SubjectOrds | Section::Norms | Section::SortedRows | Section::PostingRows => {
                rows.checked_mul(4)?
            }
            Section::SubjectOffsets => subjects.checked_add(1)?.checked_mul(8)?,
            Section::PostingOffsets => subjects.checked_add(1)?.checked_mul(4)?,
            Section::SubjectBytes => return None,
            Section::Sq8Params => SQ8_PARAMS_BYTES,
            Section::Sq8Codes => rows.checked_mul(DIM as u64)?,
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
        put_u32(&mut b, SEG_DIM_OFF, DIM as u32);
        put_u64(&mut b, SEG_ROWS_OFF, self.rows);
        put_u64(&mut b, SEG_SUBJECTS_OFF, self.subjects);
        put_u64(&mut b, SEG_FILE_NO_OFF, self.file_no);
        let n = sections_in(self.version);
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
        if dim as usize != DIM {
            return Err(Error::corrupt(
                path,
                SEG_DIM_OFF as u64,
                format!("dimension {dim}, expected {DIM}"),
            ));
        }
        let rows = get_u64(b, SEG_ROWS_OFF);
        let subjects = get_u64(b, SEG_SUBJECTS_OFF);
        if rows > u32::MAX as u64 || subjects > rows {
            return Err(Error::corrupt(
                path,
                SEG_ROWS_OFF as u64,
                format!("{rows} rows and {subjects} subjects are out of range"),
            ));
        }
        let count = get_u32(b, SEG_SECTION_COUNT_OFF);
        let n = sections_in(version);
        if count as usize != n {
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
            if let Some(want) = sec.expected_len(rows, subjects)
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
            rows,
            subjects,
            file_no: get_u64(b, SEG_FILE_NO_OFF),
            sections,
        })
    }
}

/// Round `n` up to the next multiple of [`SECTION_ALIGN`].
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(SECTION_ALIGN) * SECTION_ALIGN
}

// ---- WAL ---------------------------------------------------------------

/// Length of the WAL file header.
pub const WAL_HEADER_LEN: usize = 32;
/// Length of a WAL record's frame (length + CRC).
pub const RECORD_FRAME_LEN: usize = 8;

/// Encode a WAL file header.
pub fn encode_wal_header(salt: u32, file_no: u64) -> [u8; WAL_HEADER_LEN] {
    let mut b = [0u8; WAL_HEADER_LEN];
    b[..8].copy_from_slice(&WAL_MAGIC);
    put_u32(&mut b, 8, FORMAT_VERSION);
    put_u32(&mut b, 12, salt);
    put_u64(&mut b, 16, file_no);
    let crc = crc32fast::hash(&b[..28]);
    put_u32(&mut b, 28, crc);
    b
}

/// Decode a WAL file header; returns `(salt, file number)`.
pub fn decode_wal_header(path: &Path, b: &[u8]) -> Result<(u32, u64)> {
    if b.len() < WAL_HEADER_LEN {
        return Err(Error::corrupt(
            path,
            0,
            format!("WAL file is {} bytes, shorter than its header", b.len()),
        ));
    }
    if b[..8] != WAL_MAGIC {
        return Err(Error::corrupt(
            path,
            0,
            "not a visage WAL file (bad magic number)",
        ));
    }
    let stored = get_u32(b, 28);
    let computed = crc32fast::hash(&b[..28]);
    if stored != computed {
        return Err(Error::ChecksumMismatch {
            path: path.into(),
            section: "WAL header".into(),
            expected: stored,
            got: computed,
        });
    }
    let version = get_u32(b, 8);
    check_version(path, version)?;
    check_zero(path, b, 24..28)?;
    Ok((get_u32(b, 12), get_u64(b, 16)))
}

/// CRC of a record: seeded with the file's salt, over the length field and payload.
pub fn record_crc(salt: u32, len_field: [u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(salt);
    h.update(&len_field);
    h.update(payload);
    h.finalize()
}

/// The 8-byte frame of a record, from a CRC state already fed the payload
/// (started with `crc32fast::Hasher::new()`), so the payload's CRC can be
/// computed by the thread that encoded it and only combined here.
pub fn frame_header(
    salt: u32,
    payload_len: usize,
    payload_crc: &crc32fast::Hasher,
) -> [u8; RECORD_FRAME_LEN] {
    let len = (payload_len as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new_with_initial(salt);
    h.update(&len);
    h.combine(payload_crc);
    let crc = h.finalize().to_le_bytes();
    [
        len[0], len[1], len[2], len[3], crc[0], crc[1], crc[2], crc[3],
    ]
}

/// Append one framed record holding `payload` to `out`.
pub fn frame_record(salt: u32, payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&record_crc(salt, len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Outcome of reading one record frame at some offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A valid record; `next` is the offset just past it.
    Record {
        /// The payload.
        payload: &'a [u8],
        /// Offset after the record.
        next: usize,
    },
    /// No more bytes.
    End,
    /// Bytes that are not a valid record (cut short, zero length, or bad CRC).
    Bad(&'static str),
}

/// Read the record frame starting at `at` in `buf` (a whole WAL file).
pub fn read_frame(salt: u32, buf: &[u8], at: usize) -> Frame<'_> {
    if at >= buf.len() {
        return Frame::End;
    }
    let Some(frame) = buf.get(at..at + RECORD_FRAME_LEN) else {
        return Frame::Bad("record frame cut short");
    };
    let len_field: [u8; 4] = [frame[0], frame[1], frame[2], frame[3]];
    let len = u32::from_le_bytes(len_field) as usize;
    if len == 0 || len > MAX_RECORD_LEN {
        return Frame::Bad("record length out of range");
    }
    let start = at + RECORD_FRAME_LEN;
    let Some(payload) = buf.get(start..start + len) else {
        return Frame::Bad("record cut short");
    };
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if record_crc(salt, len_field, payload) != crc {
        return Frame::Bad("record checksum mismatch");
    }
    Frame::Record {
        payload,
        next: start + len,
    }
}

/// WAL record kind: insert (upsert) batch.
pub const KIND_INSERT: u8 = 1;
/// WAL record kind: delete batch.
pub const KIND_DELETE: u8 = 2;

/// One embedding as carried in a WAL record.
#[derive(Debug, Clone, PartialEq)]
pub struct WalEmbedding {
    /// Id.
    pub id: u64,
    /// Subject.
    pub subject: String,
    /// Vector.
    pub vector: [f32; DIM],
}

/// A decoded WAL record.
#[derive(Debug, Clone, PartialEq)]
pub enum WalOp {
    /// Insert (upsert) a batch.
    Insert(Vec<WalEmbedding>),
    /// Delete ids.
    Delete(Vec<u64>),
}

/// Encode an insert payload.
pub fn encode_insert<'a>(
    items: impl ExactSizeIterator<Item = (u64, &'a str, &'a [f32; DIM])>,
    out: &mut Vec<u8>,
) {
    out.push(KIND_INSERT);
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for (id, subject, v) in items {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(subject.len() as u16).to_le_bytes());
        out.extend_from_slice(subject.as_bytes());
        // f32 bytes in memory order are little-endian: big-endian targets are refused at compile time.
        out.extend_from_slice(bytemuck::cast_slice(v));
    }
}

/// Encode a delete payload.
pub fn encode_delete(ids: &[u64], out: &mut Vec<u8>) {
    out.push(KIND_DELETE);
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

/// What is wrong with a subject, if anything: 1 to [`MAX_SUBJECT_LEN`] bytes,
/// no control characters. The write path refuses such subjects, so the WAL
/// decoder refuses them too.
pub fn subject_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        Some("is empty".to_string())
    } else if s.len() > MAX_SUBJECT_LEN {
        Some(format!(
            "is {} bytes, longer than {MAX_SUBJECT_LEN}",
            s.len()
        ))
    } else {
        s.chars()
            .find(|c| c.is_control())
            .map(|c| format!("holds control character {c:?}"))
    }
}

/// Decode a record payload; `offset` is the payload's position in `path`, for errors.
///
/// A record holds only what the write path accepts: an insert's subjects pass
/// [`subject_problem`], its values are finite and its ids distinct. A record
/// that passes its CRC but breaks these rules is corruption, refused here
/// rather than carried into the memtable and the next segment.
pub fn decode_op(path: &Path, offset: u64, payload: &[u8]) -> Result<WalOp> {
    let mut c = Cursor {
        buf: payload,
        at: 0,
        path,
        base: offset,
    };
    let kind = c.u8()?;
    let count = c.u32()? as usize;
    match kind {
        KIND_INSERT => {
            // Each embedding takes at least 8 + 2 + 512 bytes: bound the allocation by the payload.
            if count > payload.len() / (10 + VECTOR_BYTES) {
                return Err(c.err(format!(
                    "insert record claims {count} embeddings in {} bytes",
                    payload.len()
                )));
            }
            let mut items = Vec::with_capacity(count);
            for i in 0..count {
                let id = c.u64()?;
                let slen = c.u16()? as usize;
                let at = c.at;
                let subject = std::str::from_utf8(c.take(slen)?)
                    .map_err(|_| Error::corrupt(path, offset + at as u64, "subject is not UTF-8"))?
                    .to_owned();
                if let Some(why) = subject_problem(&subject) {
                    return Err(Error::corrupt(
                        path,
                        offset + at as u64,
                        format!("embedding {i}: subject {why}"),
                    ));
                }
                let mut vector = [0f32; DIM];
                let at = c.at;
                let raw = c.take(VECTOR_BYTES)?;
                for (dst, src) in vector.iter_mut().zip(raw.chunks_exact(4)) {
                    *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
                }
                if let Some(d) = vector.iter().position(|x| !x.is_finite()) {
                    return Err(Error::corrupt(
                        path,
                        offset + (at + 4 * d) as u64,
                        format!("embedding {i}: value {d} is {}", vector[d]),
                    ));
                }
                items.push(WalEmbedding {
                    id,
                    subject,
                    vector,
                });
            }
            c.finish()?;
            let mut ids: Vec<u64> = items.iter().map(|e| e.id).collect();
            ids.sort_unstable();
            if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
                return Err(Error::corrupt(
                    path,
                    offset,
                    format!("insert record holds id {} twice", w[0]),
                ));
            }
            Ok(WalOp::Insert(items))
        }
        KIND_DELETE => {
            if count > payload.len() / 8 {
                return Err(c.err(format!(
                    "delete record claims {count} ids in {} bytes",
                    payload.len()
                )));
            }
            let mut ids = Vec::with_capacity(count);
            for _ in 0..count {
                ids.push(c.u64()?);
            }
            c.finish()?;
            Ok(WalOp::Delete(ids))
        }
        k => Err(Error::corrupt(
            path,
            offset,
            format!("unknown WAL record kind {k}"),
        )),
    }
}

// ---- manifest ------------------------------------------------------------

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
    body.extend_from_slice(&(m.segments.len() as u32).to_le_bytes());
    for s in &m.segments {
        body.extend_from_slice(&s.file_no.to_le_bytes());
        body.extend_from_slice(&s.rows.to_le_bytes());
        body.extend_from_slice(&(s.deleted.len() as u64).to_le_bytes());
        for r in &s.deleted {
            body.extend_from_slice(&r.to_le_bytes());
        }
    }
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
        if nd > rows || nd > (b.len() / 4) as u64 {
            return Err(c.err(format!(
                "segment {file_no:016x}: {nd} tombstones for {rows} rows"
            )));
        }
        let mut deleted = Vec::with_capacity(nd as usize);
        let mut prev: Option<u32> = None;
        for _ in 0..nd {
            let r = c.u32()?;
            if r as u64 >= rows || prev.is_some_and(|p| p >= r) {
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
    })
}

// ---- head ------------------------------------------------------------------

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

/// The reserved bytes `range` of `b` are zero, as every encoder writes them.
fn check_zero(path: &Path, b: &[u8], range: std::ops::Range<usize>) -> Result<()> {
    let at = range.start;
    match b.get(range).map(|r| r.iter().position(|&x| x != 0)) {
        Some(None) => Ok(()),
        Some(Some(i)) => Err(Error::corrupt(
            path,
            (at + i) as u64,
            "reserved byte is not zero",
        )),
        None => Err(Error::corrupt(path, at as u64, "file cut short")),
    }
}

/// A file of `version` can be read by this build, or the error says which versions can.
fn check_version(path: &Path, version: u32) -> Result<()> {
    if (OLDEST_SUPPORTED_VERSION..=FORMAT_VERSION).contains(&version) {
        return Ok(());
    }
    Err(Error::UnsupportedVersion {
        path: path.into(),
        found: version,
        oldest: OLDEST_SUPPORTED_VERSION,
        newest: FORMAT_VERSION,
    })
}

// ---- little-endian helpers -------------------------------------------------

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
/// Caller guarantees `at + 4 <= b.len()`.
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
/// Caller guarantees `at + 8 <= b.len()`.
fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Bounds-checked reader over a byte slice; every failure is a `Corruption` error.
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
    path: &'a Path,
    base: u64,
}

impl<'a> Cursor<'a> {
    fn err(&self, reason: String) -> Error {
        Error::corrupt(self.path, self.base + self.at as u64, reason)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        match self.buf.get(self.at..self.at.saturating_add(n)) {
            Some(s) => {
                self.at += n;
                Ok(s)
            }
            None => Err(self.err(format!(
                "needs {n} more bytes, {} left",
                self.buf.len() - self.at
            ))),
        }
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let s = self.take(8)?;
        Ok(get_u64(s, 0))
    }
    fn finish(&self) -> Result<()> {
        if self.at != self.buf.len() {
            return Err(self.err(format!(
                "{} unexpected trailing bytes",
                self.buf.len() - self.at
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_golden_bytes() {
        let mut sections = [SectionEntry::default(); SECTION_COUNT];
        for (i, s) in sections.iter_mut().enumerate() {
            *s = SectionEntry {
                offset: 512 + 64 * i as u64,
                len: Section::ALL[i].expected_len(0, 0).unwrap_or(0),
                crc: i as u32,
            };
        }
        let h = SegmentHeader {
            version: 2,
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
    }

    #[test]
    fn segment_header_rejects_every_flipped_byte() {
        let mut sections = [SectionEntry::default(); SECTION_COUNT];
        for (i, s) in sections.iter_mut().enumerate() {
            *s = SectionEntry {
                offset: 512 + 64 * i as u64,
                len: Section::ALL[i].expected_len(0, 0).unwrap_or(0),
                crc: 0,
            };
        }
        let b = SegmentHeader {
            version: 1,
            rows: 0,
            subjects: 0,
            file_no: 1,
            sections,
        }
        .encode();
        for i in 0..SEGMENT_HEADER_LEN {
            let mut c = b;
            c[i] ^= 0x40;
            assert!(
                SegmentHeader::decode(Path::new("x"), &c, 4096).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn wal_header_and_records_round_trip() {
        let h = encode_wal_header(0xdead_beef, 7);
        assert_eq!(
            decode_wal_header(Path::new("w"), &h).unwrap(),
            (0xdead_beef, 7)
        );
        let v = [0.5f32; DIM];
        let mut payload = Vec::new();
        encode_insert([(9u64, "emp-1", &v)].into_iter(), &mut payload);
        let mut file = Vec::new();
        frame_record(0xdead_beef, &payload, &mut file);
        let mut del = Vec::new();
        encode_delete(&[1, 2, 3], &mut del);
        frame_record(0xdead_beef, &del, &mut file);
        let Frame::Record { payload: p, next } = read_frame(0xdead_beef, &file, 0) else {
            panic!()
        };
        assert_eq!(
            decode_op(Path::new("w"), 8, p).unwrap(),
            WalOp::Insert(vec![WalEmbedding {
                id: 9,
                subject: "emp-1".into(),
                vector: v
            }])
        );
        let Frame::Record {
            payload: p,
            next: end,
        } = read_frame(0xdead_beef, &file, next)
        else {
            panic!()
        };
        assert_eq!(
            decode_op(Path::new("w"), 0, p).unwrap(),
            WalOp::Delete(vec![1, 2, 3])
        );
        assert_eq!(read_frame(0xdead_beef, &file, end), Frame::End);
        // A CRC computed in two parts and combined gives the same frame.
        let mut h = crc32fast::Hasher::new();
        h.update(&del);
        assert_eq!(
            &frame_header(0xdead_beef, del.len(), &h)[..],
            &file[next..next + 8]
        );
        // Another salt never validates the same bytes.
        assert!(matches!(read_frame(0x1234, &file, 0), Frame::Bad(_)));
        // Every truncation is a bad frame, never a panic.
        for cut in 1..next {
            assert!(
                matches!(read_frame(0xdead_beef, &file[..cut], 0), Frame::Bad(_)),
                "cut {cut}"
            );
        }
    }

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
    }

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
            let crc = crc32fast::hash(&c[..HEAD_CRC_OFF]);
            c[HEAD_CRC_OFF..].copy_from_slice(&crc.to_le_bytes());
            assert!(decode_head(Path::new("h"), &c).is_err(), "offset {at}");
        }
        // An infinite (uncalibrated) threshold is fine.
        let mut c = b.clone();
        c[HEAD_BIAS_OFF + 4..HEAD_BIAS_OFF + 8].copy_from_slice(&f32::INFINITY.to_le_bytes());
        let crc = crc32fast::hash(&c[..HEAD_CRC_OFF]);
        c[HEAD_CRC_OFF..].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_head(Path::new("h"), &c).is_ok());
    }

    /// Found by the `manifest` fuzz target: decoders accepted non-zero reserved
    /// bytes under a valid CRC, so an accepted file did not re-encode to itself.
    #[test]
    fn reserved_bytes_must_be_zero_even_under_a_valid_crc() {
        let m = encode_manifest(&ManifestData::default());
        let mut bad = m.clone();
        bad[15] = 0x51;
        let n = bad.len() - 4;
        let crc = crc32fast::hash(&bad[..n]);
        bad[n..].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_manifest(Path::new("m"), &m).is_ok());
        assert!(decode_manifest(Path::new("m"), &bad).is_err());

        let w = encode_wal_header(1, 2);
        let mut bad = w;
        bad[25] = 1;
        let crc = crc32fast::hash(&bad[..28]);
        bad[28..].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_wal_header(Path::new("w"), &w).is_ok());
        assert!(decode_wal_header(Path::new("w"), &bad).is_err());

        let mut sections = [SectionEntry::default(); SECTION_COUNT];
        for (i, s) in sections.iter_mut().enumerate() {
            s.offset = 512 + 64 * i as u64;
            s.len = Section::ALL[i].expected_len(0, 0).unwrap_or(0);
        }
        let v1 = SegmentHeader {
            version: 1,
            rows: 0,
            subjects: 0,
            file_no: 1,
            sections,
        }
        .encode();
        assert!(SegmentHeader::decode(Path::new("s"), &v1, 4096).is_ok());
        // The reserved word, a slot's reserved word, a slot version 1 does not
        // use (slot 10), and the padding before the CRC.
        for at in [44, 48 + 20, 48 + 24 * 10, 450] {
            let mut bad = v1;
            bad[at] = 1;
            let crc = crc32fast::hash(&bad[..508]);
            bad[508..].copy_from_slice(&crc.to_le_bytes());
            assert!(
                SegmentHeader::decode(Path::new("s"), &bad, 4096).is_err(),
                "byte {at}"
            );
        }
    }

    #[test]
    fn decode_op_rejects_garbage_without_panicking() {
        let mut payload = Vec::new();
        encode_insert([(1u64, "a", &[1.0; DIM])].into_iter(), &mut payload);
        for cut in 0..payload.len() {
            assert!(decode_op(Path::new("w"), 0, &payload[..cut]).is_err());
        }
        let mut huge = vec![KIND_INSERT];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_op(Path::new("w"), 0, &huge).is_err());
    }
}

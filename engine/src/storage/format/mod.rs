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
//! | `ERASURE-KEY` | once, atomically (at the first delete or backup) | the secret key of the erasure hashes |
//! | `ERASURES` | appended, before each delete is applied | keyed hashes of what was deleted (never names) |
//!
//! A backup directory holds copies (or hard links) of those files as of one
//! WAL position, and `BACKUP`, its checksummed manifest, written last.
//!
//! File numbers (`XXXX…`, 16 lowercase hex digits) come from one counter per
//! gallery kept in the manifest and are never reused.
//!
//! Each file kind's layout table and notes live in its own module, next to its
//! encoder, decoder and golden-byte tests:
//!
//! - [`segment`]: segment files (`.vseg`): header, section table, sections;
//! - [`wal`]: WAL files (`.log`): header, record framing, insert and delete records;
//! - [`manifest`]: the manifest (`MANIFEST`);
//! - [`head`]: the head file (`HEAD`);
//! - [`backup`]: the backup manifest (`BACKUP`), the erasure log and its key.
//!
//! This module holds what they share: [`FORMAT_VERSION`] and
//! [`OLDEST_SUPPORTED_VERSION`], section alignment ([`SECTION_ALIGN`],
//! [`align_up`]), the subject rules ([`MAX_SUBJECT_LEN`], [`subject_problem`]),
//! the little-endian helpers, the bounds-checked reader and the checks of
//! versions and reserved bytes. Every public item of the kind modules is
//! re-exported here, so `format::X` names it whatever its file kind.
//!
//! # Version history
//! - 1: first format. Still read: segments without the 8-bit codes are
//!   scanned exactly by every mode (fixture `tests/fixtures/format-v1`).
//! - 2: segments carry 8-bit scalar-quantised codes (sections 10 and 11);
//!   the head file gained the open-set thresholds. WAL and manifest unchanged.
//! - 3: the manifest records how many subjects have a live row in its
//!   segments (so opening needs no scan of every subject); the head file
//!   gained the calibrated probability (Platt scaling and prior), the
//!   subject-claim thresholds by image count, the open-set threshold by
//!   gallery size and the DET curves. Segments and WAL unchanged (they carry
//!   version 3 in their headers, with version 2's layout).
//! - 4: a gallery may hold vectors of any dimension that is a multiple of 16
//!   from 16 to 2,048. The manifest records the gallery's spec (dimension,
//!   model, normalisation); the WAL header records the dimension of its
//!   records (in bytes 24..28, reserved until version 3); the head file records
//!   its dimension and holds one weight per dimension. Segments already
//!   recorded their dimension: their layout is unchanged. Files of versions 1
//!   to 3 are galleries of 128 values a vector (fixtures `format-v1` to `-v4`).
//! - 5: segments' quantiser ranges are robust to outliers, and the rows with
//!   a value outside them are listed in a new section (12, `sq8_exceptions`)
//!   and scanned exactly; a build that read the codes of such a segment as
//!   version 4 would rely on a bound they do not meet, hence the new
//!   version. Manifest, WAL and head file unchanged (version 5 in their
//!   headers, version 4's layout). Forced compaction (`visage compact`)
//!   rewrites older segments in this version.
//! - 6: the manifest records the highest id the gallery has held or assigned,
//!   the counter of the ids it assigns to inserts that give none. Segments,
//!   WAL and head file unchanged (version 6 in their headers, version 5's
//!   layout).
//! - 7: galleries can be replicas of a replicated log (cluster mode): a WAL
//!   record of kind 3 carries a batch with the log sequence it was applied
//!   at, and the manifest records the sequence of the last batch its
//!   segments hold. Segments and head file unchanged (version 7 in their
//!   headers, version 6's layout).
//! - 8: segments store their coding error bound ρ (section 13, `sq8_rho`:
//!   the largest `‖x − x̂‖` of the rows that are not exceptions, as the
//!   writer computed it while coding), so the first search after an open
//!   reads only the codes, never every vector (23 s at 50M rows before).
//!   Older segments compute it at first use, as before; they are not
//!   outdated. Manifest, WAL and head file unchanged (version 8 in their
//!   headers, version 7's layout).

#[cfg(not(target_endian = "little"))]
compile_error!(
    "visage writes little-endian files and maps them directly: big-endian targets are not supported"
);

pub mod backup;
pub mod head;
pub mod manifest;
pub mod segment;
pub mod wal;

pub use backup::{
    BACKUP_BLOCK, BACKUP_MAGIC, BackupFile, BackupManifest, ERASURE_KEY_LEN, ERASURE_KEY_MAGIC,
    ERASURE_RECORD_LEN, ERASURES_HEADER_LEN, ERASURES_MAGIC, ErasureKind, ErasureLog,
    ErasureRecord, decode_backup, decode_erasure_key, decode_erasures, encode_backup,
    encode_erasure_key, encode_erasure_records, encode_erasures_header, plain_file_name,
};
pub use head::{HEAD_LEN, HEAD_MAGIC, HeadData, HeadExt, OpenTable, decode_head, encode_head};
pub use manifest::{
    MANIFEST_MAGIC, ManifestData, ManifestSegment, decode_manifest, encode_manifest,
};
pub use segment::{
    ROBUST_CODES_VERSION, SECTION_COUNT, SECTION_SLOTS, SEGMENT_HEADER_LEN, SEGMENT_MAGIC,
    STORED_RHO_VERSION, Section, SectionEntry, SegmentHeader, sections_in, sq8_params_bytes,
};
pub use wal::{
    Frame, KIND_AT, KIND_DELETE, KIND_INSERT, MAX_DELETE_IDS, MAX_RECORD_LEN, RECORD_FRAME_LEN,
    WAL_HEADER_LEN, WAL_MAGIC, WalEmbedding, WalOp, decode_op, decode_wal_header, encode_at,
    encode_delete, encode_insert, encode_wal_header, frame_header, frame_record, read_frame,
    record_crc,
};

use crate::error::{Error, Result};
use std::path::Path;

/// Newest format version this build writes.
pub const FORMAT_VERSION: u32 = 8;
/// Oldest format version this build reads.
pub const OLDEST_SUPPORTED_VERSION: u32 = 1;

/// Every section starts at a multiple of this.
pub const SECTION_ALIGN: u64 = 64;
/// Longest subject in bytes.
pub const MAX_SUBJECT_LEN: usize = 256;

/// Round `n` up to the next multiple of [`SECTION_ALIGN`].
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(SECTION_ALIGN) * SECTION_ALIGN
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

/// Helpers shared by the tests of every file kind.
#[cfg(test)]
mod test_support {
    /// Recompute the CRC-32 in the last 4 bytes of `b` over everything before
    /// it, as every file kind places it, so an edit is caught by the check
    /// under test rather than by the checksum.
    pub(super) fn reseal(b: &mut [u8]) {
        let n = b.len() - 4;
        let crc = crc32fast::hash(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
    }
}

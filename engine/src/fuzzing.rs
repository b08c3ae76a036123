//! Entry points for the fuzz targets in `fuzz/` (not part of the API).
//!
//! The decoders of [`crate::storage::format`] are public already; what is not is the
//! recovery scan of a whole WAL file and the opening of a segment, which sit
//! behind `pub(crate)` types. These wrappers expose exactly those code paths,
//! on bytes (the WAL) or on a file the fuzz target wrote (the segment, which is
//! memory-mapped as in production), so the fuzzers run the real decoders and
//! not copies of them. Hidden from the docs; nothing else should use them.

use crate::DIM;
use crate::error::Result;
use crate::storage::format::WalOp;
use crate::storage::segment::{Segment, VerifyChecksums};
use crate::storage::wal;
use std::path::Path;

/// What the recovery scan of one WAL file found.
#[derive(Debug)]
pub struct WalReplay {
    /// The file's salt (0 for a file too short to hold a header).
    pub salt: u32,
    /// The records, decoded, in file order.
    pub ops: Vec<WalOp>,
    /// Length of the valid prefix: a torn tail starts here.
    pub valid_len: u64,
    /// Length of the bytes given.
    pub file_len: u64,
}

/// Run the recovery scan on `bytes`, the whole of WAL file number `file_no`,
/// in a gallery of the dimension its header states (128 if it has none);
/// `is_last` says whether it is the newest file (the only one allowed a torn tail).
pub fn replay_wal(bytes: &[u8], file_no: u64, is_last: bool) -> Result<WalReplay> {
    let path = Path::new(&wal::file_name(file_no)).to_owned();
    let dim = crate::storage::format::decode_wal_header(&path, bytes)
        .map_or(DIM, |(_, _, dim)| dim as usize);
    let r = wal::replay_bytes(&path, bytes, file_no, is_last, dim)?;
    Ok(WalReplay {
        salt: r.salt,
        ops: r.ops,
        valid_len: r.valid_len,
        file_len: r.file_len,
    })
}

/// One row of a segment as its accessors return it.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentRow {
    /// Id (ids section).
    pub id: u64,
    /// Subject, through the row's ordinal and the subject table.
    pub subject: String,
    /// Vector.
    pub vector: Vec<f32>,
    /// The row that the sorted-id index finds for `id`.
    pub found: Option<usize>,
    /// Whether the posting list of `subject` holds this row.
    pub in_posting: bool,
}

/// A segment opened and read through every accessor the engine uses.
#[derive(Debug, Clone)]
pub struct SegmentContents {
    /// Rows in file order.
    pub rows: Vec<SegmentRow>,
    /// Distinct subjects.
    pub subjects: usize,
    /// Whether the segment carries 8-bit codes (version 2).
    pub has_codes: bool,
}

/// Open the segment file at `path` as file number `file_no` (memory-mapped,
/// checked as at gallery open, in a gallery of the dimension its header
/// states) and read every row back through the same accessors the gallery
/// and the scans use.
pub fn open_segment(path: &Path, file_no: u64, verify: VerifyChecksums) -> Result<SegmentContents> {
    let bytes = std::fs::read(path).map_err(|e| crate::Error::Io {
        path: path.into(),
        source: e,
    })?;
    let header = crate::storage::format::SegmentHeader::decode(path, &bytes, bytes.len() as u64)?;
    let dim = header.dim as usize;
    let seg = Segment::open(&crate::storage::io::RealFs, path, file_no, verify, dim)?;
    let n = seg.rows();
    let vectors = seg.vectors();
    let ids = seg.ids();
    let has_codes = match seg.sq8() {
        Some((min, step, codes)) => min.len() + step.len() + codes.len() > 0,
        None => false,
    };
    let mut rows = Vec::with_capacity(n.min(1 << 16));
    for r in 0..n {
        let id = ids.get(r).copied().unwrap_or_default();
        let subject = seg.row_subject(r).to_owned();
        let in_posting = seg.subject_rows(&subject).contains(&(r as u32));
        rows.push(SegmentRow {
            id,
            vector: vectors
                .get(r * dim..(r + 1) * dim)
                .map_or_else(|| vec![0.0; dim], <[f32]>::to_vec),
            found: seg.find_id(id),
            in_posting,
            subject,
        });
    }
    // Every subject and posting list, including any no row refers to.
    for ord in 0..seg.subject_count() {
        let _ = (seg.subject(ord as u32), seg.posting(ord));
    }
    Ok(SegmentContents {
        rows,
        subjects: seg.subject_count(),
        has_codes,
    })
}

/// The direct scan of `g`, the reference every other exact distance search
/// must equal bit for bit: per probe, the ids and distances of the top `k`
/// live rows by (squared L2, id). `probes` is row-major, the gallery's
/// dimension a probe; where the gallery normalises, each is scaled to unit
/// length first, as a search does (a zero probe, which a search refuses, is
/// left as it is).
pub fn search_direct(g: &crate::Gallery, probes: &[f32], k: usize) -> Vec<Vec<(u64, f32)>> {
    let snap = g.snapshot();
    let mut probes = probes.to_vec();
    if g.spec().normalize {
        for p in probes.chunks_exact_mut(g.dim()) {
            let _ = crate::gallery::normalize(p);
        }
    }
    crate::search::top_k_direct(&snap, &probes, k, crate::search::Metric::L2)
        .into_iter()
        .map(|cs| cs.into_iter().map(|c| (c.id, c.dist)).collect())
        .collect()
}

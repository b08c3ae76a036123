//! Segments: immutable files of embeddings, written once by [`write_segment`]
//! and read through a memory map by [`Segment`] with no parse and no copy.
//!
//! The layout is defined in [`crate::storage::format`]. Deciding *when* to write a
//! segment (flush, compaction) belongs to the gallery; this module only turns
//! rows into a file and a file back into typed views.

use super::io::{DIRECT_ALIGN, FileSystem, WritableFile};
use super::mmap::{self, MappedFile};
use crate::error::{Error, Result};
use crate::quantizer::{
    CodeStats, RowCoder, Sq8Range, coded_within, coding_error, sample_stride, sq8_encode,
};
use crate::storage::format::{
    self, SECTION_COUNT, SEGMENT_HEADER_LEN, Section, SectionEntry, SegmentHeader,
};
use rayon::prelude::*;
use std::ops::Range;
use std::path::Path;

/// How much of a segment to check against its CRCs when opening it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyChecksums {
    /// Header and every metadata section (ids, subjects, postings): O(rows × 32 bytes).
    /// The vectors, their norms and 8-bit codes are trusted to be as the
    /// writer made them: a segment is complete and fsynced before the manifest
    /// names it, but later damage to these sections is found only by `Full`.
    #[default]
    Metadata,
    /// Everything, vectors included: reads the whole file.
    Full,
}

/// One row handed to the writer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowRef<'a> {
    pub id: u64,
    pub subject: &'a str,
    pub vector: &'a [f32],
}

/// The rows a segment is written from, by row number: rows in memory or in
/// other segments ([`RowRef`]s), or a bulk import's source, read twice (the
/// vectors, then their codes) without being held in memory.
pub(crate) trait SegmentRows: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn id(&self, i: usize) -> u64;
    fn subject(&self, i: usize) -> &str;
    /// Write row `i`'s vector (`dim` values) into `out`. An error (a bad row
    /// of an import's source) stops the write; the caller removes the file.
    fn vector(&self, i: usize, out: &mut [f32]) -> Result<()>;
}

impl SegmentRows for [RowRef<'_>] {
    fn len(&self) -> usize {
        <[RowRef<'_>]>::len(self)
    }
    fn id(&self, i: usize) -> u64 {
        self[i].id
    }
    fn subject(&self, i: usize) -> &str {
        self[i].subject
    }
    fn vector(&self, i: usize, out: &mut [f32]) -> Result<()> {
        out.copy_from_slice(self[i].vector);
        Ok(())
    }
}

/// Write `rows` (ids unique, vectors of `dim` values) as segment file
/// `file_no` at `path`, fsynced. The caller fsyncs the directory and records
/// the file in the manifest. Returns the file's length. Rows are coded with
/// `code_row`: `crate::quantizer::code_row` or a kernel's version of it,
/// which gives the same codes and errors, bit for bit (the caller picks the
/// one for this CPU: this layer does not reach the kernels).
///
/// Memory: the per-row metadata (ids, subject ordinals, norms, postings:
/// about 40 bytes a row, and the subjects' strings) and a sample of at most
/// 65,536 rows for the quantiser; the vectors stream from `rows` twice.
pub(crate) fn write_segment<R: SegmentRows + ?Sized>(
    fs: &dyn FileSystem,
    path: &Path,
    file_no: u64,
    rows: &R,
    dim: usize,
    code_row: RowCoder,
) -> Result<u64> {
    let n = rows.len();
    let dim32 = u32::try_from(dim).map_err(|_| Error::InvalidSpec {
        reason: format!("dimension {dim}"),
    })?;
    // Rows, ordinals and posting entries are stored as u32 (the reader
    // refuses more rows than that): refuse here rather than write such a file.
    let Ok(n32) = u32::try_from(n) else {
        return Err(Error::TooLarge {
            what: "rows in one segment",
            got: n,
            limit: u32::MAX as usize,
        });
    };
    // Subject table: sorted distinct subjects; ordinal per row; postings.
    // The rows sorted by subject give both the table and each row's ordinal.
    let mut by_subject: Vec<u32> = (0..n32).collect();
    by_subject
        .par_sort_unstable_by(|&a, &b| rows.subject(a as usize).cmp(rows.subject(b as usize)));
    let mut subjects: Vec<&str> = Vec::new();
    let mut ords = vec![0u32; n];
    for &r in &by_subject {
        let s = rows.subject(r as usize);
        if subjects.last() != Some(&s) {
            subjects.push(s);
        }
        #[allow(
            clippy::cast_possible_truncation,
            reason = "a subject's index is below `n`, which fits in u32 (checked above)"
        )]
        let ord = (subjects.len() - 1) as u32;
        ords[r as usize] = ord;
    }
    drop(by_subject);
    let mut posting_offsets = vec![0u32; subjects.len() + 1];
    for &o in &ords {
        posting_offsets[o as usize + 1] += 1;
    }
    for i in 0..subjects.len() {
        posting_offsets[i + 1] += posting_offsets[i];
    }
    let mut fill = posting_offsets.clone();
    let mut posting_rows = vec![0u32; n];
    for (row, &o) in (0..n32).zip(&ords) {
        posting_rows[fill[o as usize] as usize] = row;
        fill[o as usize] += 1;
    }
    drop(fill);
    let mut subject_offsets = Vec::with_capacity(subjects.len() + 1);
    let mut subject_bytes = Vec::new();
    for s in &subjects {
        subject_offsets.push(subject_bytes.len() as u64);
        subject_bytes.extend_from_slice(s.as_bytes());
    }
    subject_offsets.push(subject_bytes.len() as u64);
    let subject_count = subjects.len();
    drop(subjects);
    let ids: Vec<u64> = (0..n).map(|i| rows.id(i)).collect();
    let mut order: Vec<u32> = (0..n32).collect();
    order.par_sort_unstable_by_key(|&r| ids[r as usize]);
    let sorted_ids: Vec<u64> = order.iter().map(|&r| ids[r as usize]).collect();

    // Filled by the pass over the vectors: each row's norm, each dimension's
    // range and the quantiser's sample (every `stride`-th row).
    let mut norms: Vec<f32> = Vec::with_capacity(n);
    let mut range = Sq8Range::new(dim);
    let stride = sample_stride(n);
    let mut sample: Vec<f32> = Vec::new();
    let mut sq: Option<(Vec<f32>, Vec<f32>)> = None;
    // Rows with a value clamped to the quantiser's range, found while coding,
    // and the largest coding error of the others.
    let mut exceptions: Vec<u32> = Vec::new();
    let mut rho = 0f64;
    // Rows are read and coded in blocks, in parallel, and written in order.
    let mut block = vec![0f32; WRITE_BLOCK * dim];
    let mut codes = vec![0u8; WRITE_BLOCK * dim];

    let file = fs.create_direct(path).map_err(|e| Error::io(path, e))?;
    let direct = file.direct();
    // Buffers no larger than the segment, about: a flush of a few rows
    // allocates a few pages, not 8 MiB.
    let estimate = SEGMENT_HEADER_LEN as u64 + n as u64 * row_bytes_estimate(dim, 32);
    let cap = usize::try_from(estimate)
        .unwrap_or(SINK_BUF)
        .next_multiple_of(DIRECT_ALIGN)
        .clamp(DIRECT_ALIGN, SINK_BUF);
    let mut w = Sink::new(file, cap).map_err(|e| Error::io(path, e))?;
    let io = |e| Error::io(path, e);
    w.write_all(&[0u8; SEGMENT_HEADER_LEN]).map_err(io)?;
    let mut pos = SEGMENT_HEADER_LEN as u64;
    let mut sections = [SectionEntry::default(); SECTION_COUNT];
    for sec in Section::ALL {
        let aligned = format::align_up(pos);
        #[allow(
            clippy::cast_possible_truncation,
            reason = "padding to the next section is below SECTION_ALIGN (64)"
        )]
        let pad = (aligned - pos) as usize;
        w.write_all(&vec![0u8; pad]).map_err(io)?;
        pos = aligned;
        let mut h = crc32fast::Hasher::new();
        let mut len = 0u64;
        let mut put = |w: &mut Sink, b: &[u8]| -> Result<()> {
            h.update(b);
            len += b.len() as u64;
            w.write_all(b).map_err(io)
        };
        match sec {
            Section::Vectors => {
                for start in (0..n).step_by(WRITE_BLOCK) {
                    let blk = read_block(rows, start, n, dim, &mut block)?;
                    put(&mut w, bytemuck::cast_slice(blk))?;
                    norms.par_extend(
                        blk.par_chunks_exact(dim)
                            .map(|v| v.iter().map(|x| x * x).sum::<f32>()),
                    );
                    let r = blk
                        .par_chunks(dim * 1024)
                        .map(|c| {
                            let mut r = Sq8Range::new(dim);
                            for v in c.chunks_exact(dim) {
                                r.add(v);
                            }
                            r
                        })
                        .reduce(|| Sq8Range::new(dim), |a, b| a.merge(&b));
                    range = range.merge(&r);
                    let first = start.div_ceil(stride) * stride;
                    for i in (first..start + blk.len() / dim).step_by(stride) {
                        sample.extend_from_slice(&blk[(i - start) * dim..(i - start + 1) * dim]);
                    }
                }
            }
            Section::Ids => put(&mut w, &le_u64s(&ids))?,
            Section::SubjectOrds => put(&mut w, &le_u32s(&ords))?,
            Section::Norms => put(&mut w, &le_f32s(&norms))?,
            Section::SortedIds => put(&mut w, &le_u64s(&sorted_ids))?,
            Section::SortedRows => put(&mut w, &le_u32s(&order))?,
            Section::SubjectOffsets => put(&mut w, &le_u64s(&subject_offsets))?,
            Section::SubjectBytes => put(&mut w, &subject_bytes)?,
            Section::PostingOffsets => put(&mut w, &le_u32s(&posting_offsets))?,
            Section::PostingRows => put(&mut w, &le_u32s(&posting_rows))?,
            Section::Sq8Params => {
                let refs: Vec<&[f32]> = sample.chunks_exact(dim.max(1)).collect();
                let range = std::mem::replace(&mut range, Sq8Range::new(0));
                let (sq_min, sq_step) = range.params(&refs);
                put(&mut w, &le_f32s(&sq_min))?;
                put(&mut w, &le_f32s(&sq_step))?;
                sq = Some((sq_min, sq_step));
            }
            Section::Sq8Codes => {
                let (sq_min, sq_step) = sq.as_ref().expect("params come before codes");
                for start in (0..n).step_by(WRITE_BLOCK) {
                    let blk = read_block(rows, start, n, dim, &mut block)?;
                    let m = blk.len() / dim;
                    let out = &mut codes[..m * dim];
                    // Each row coded, then either an exception or a term of
                    // the coding error's maximum (as `CodeStats::of` takes it
                    // from the file, without reading the vectors back).
                    let (mut outside, block_rho) = out
                        .par_chunks_exact_mut(dim)
                        .zip(blk.par_chunks_exact(dim))
                        .enumerate()
                        .map(|(j, (code, v))| {
                            #[allow(
                                clippy::cast_possible_truncation,
                                reason = "a row number is below `n`, which fits in u32 (checked above)"
                            )]
                            let row = (start + j) as u32;
                            match code_row(v, sq_min, sq_step, code) {
                                Some(e) => (None, e),
                                None => (Some(row), 0.0),
                            }
                        })
                        .fold(
                            || (Vec::new(), 0f64),
                            |(mut rows, rho), (row, e)| {
                                rows.extend(row);
                                (rows, rho.max(e))
                            },
                        )
                        .reduce(
                            || (Vec::new(), 0f64),
                            |(mut a, ra), (b, rb)| {
                                a.extend(b);
                                (a, ra.max(rb))
                            },
                        );
                    rho = rho.max(block_rho);
                    outside.sort_unstable();
                    exceptions.extend(outside);
                    put(&mut w, out)?;
                }
            }
            Section::Sq8Exceptions => put(&mut w, &le_u32s(&exceptions))?,
            Section::Sq8Rho => put(&mut w, &rho.to_le_bytes())?,
        }
        sections[sec as usize] = SectionEntry {
            offset: pos,
            len,
            crc: h.finalize(),
        };
        pos += len;
    }
    let header = SegmentHeader {
        version: format::FORMAT_VERSION,
        dim: dim32,
        rows: n as u64,
        subjects: subject_count as u64,
        file_no,
        sections,
    };
    w.finish(&header.encode(), direct).map_err(io)?;
    Ok(pos)
}

/// Bytes of one row in a segment, about: its vector and 8-bit code, id,
/// norm, subject ordinal, sorted-id and posting entries (32 bytes), and a
/// subject of `subject_len` bytes.
pub(crate) fn row_bytes_estimate(dim: usize, subject_len: usize) -> u64 {
    (4 * dim + dim + 32 + subject_len) as u64
}

/// Where a segment's bytes go: staged in a buffer aligned to
/// [`DIRECT_ALIGN`] and written in whole buffers at aligned offsets, as a
/// file that bypasses the page cache needs (and any other takes). The writes
/// happen on a thread of their own, one buffer at a time while the writer
/// fills the next: a direct write returns only once the device has the
/// bytes, and the coding need not wait for it.
struct Sink {
    /// The buffer being filled (each of the two holds the same number of
    /// bytes, a multiple of [`DIRECT_ALIGN`], at most [`SINK_BUF`]).
    buf: Aligned,
    /// Bytes staged in `buf`.
    len: usize,
    /// Bytes handed to the writing thread before the staged ones.
    written: u64,
    /// The file's first block once handed over: the header is patched into
    /// it at the end.
    first: Vec<u8>,
    /// Full buffers (with their length and offset) to the writing thread.
    full: Option<std::sync::mpsc::SyncSender<(Aligned, usize, u64)>>,
    /// Written buffers back from it, for reuse.
    free: std::sync::mpsc::Receiver<Aligned>,
    /// The writing thread; it gives the file back, or the first error.
    thread: Option<std::thread::JoinHandle<std::io::Result<Box<dyn WritableFile>>>>,
}

/// The most bytes [`Sink`] stages between writes (a multiple of [`DIRECT_ALIGN`]).
const SINK_BUF: usize = 4 << 20;

/// `cap` bytes aligned to [`DIRECT_ALIGN`]: the aligned window of a
/// larger allocation.
struct Aligned {
    raw: Vec<u8>,
    off: usize,
    cap: usize,
}

impl Aligned {
    fn new(cap: usize) -> Aligned {
        let raw = vec![0u8; cap + DIRECT_ALIGN];
        let off = raw.as_ptr().align_offset(DIRECT_ALIGN);
        Aligned { raw, off, cap }
    }
    fn bytes(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.cap]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.cap]
    }
}

impl Sink {
    fn new(file: Box<dyn WritableFile>, cap: usize) -> std::io::Result<Sink> {
        let (full, todo) = std::sync::mpsc::sync_channel::<(Aligned, usize, u64)>(1);
        let (done, free) = std::sync::mpsc::channel();
        // The second buffer: one is filled while the other is written.
        let _ = done.send(Aligned::new(cap));
        let thread = std::thread::Builder::new()
            .name("visage-segment-write".into())
            .spawn(move || {
                for (buf, len, at) in todo {
                    file.write_all_at(&buf.bytes()[..len], at)?;
                    // The writer may have stopped waiting (it failed): no matter.
                    let _ = done.send(buf);
                }
                Ok(file)
            })?;
        Ok(Sink {
            buf: Aligned::new(cap),
            len: 0,
            written: 0,
            first: Vec::new(),
            full: Some(full),
            free,
            thread: Some(thread),
        })
    }

    fn write_all(&mut self, mut b: &[u8]) -> std::io::Result<()> {
        while !b.is_empty() {
            let k = (self.buf.cap - self.len).min(b.len());
            self.buf.bytes_mut()[self.len..self.len + k].copy_from_slice(&b[..k]);
            self.len += k;
            b = &b[k..];
            if self.len == self.buf.cap {
                self.spill()?;
            }
        }
        Ok(())
    }

    /// Hand the staged bytes (`len`, a multiple of the alignment unless the
    /// file is buffered or they were padded) to the writing thread, and take
    /// a written buffer back.
    fn spill(&mut self) -> std::io::Result<()> {
        if self.written == 0 {
            self.first = self.buf.bytes()[..DIRECT_ALIGN.min(self.len)].to_vec();
        }
        let sent = match &self.full {
            Some(tx) => match self.free.recv() {
                Ok(next) => {
                    let buf = std::mem::replace(&mut self.buf, next);
                    tx.send((buf, self.len, self.written)).is_ok()
                }
                Err(_) => false,
            },
            None => false,
        };
        if !sent {
            // The thread stopped: its error says why.
            return Err(self
                .join()
                .err()
                .unwrap_or_else(|| std::io::Error::other("the segment writing thread stopped")));
        }
        self.written += self.len as u64;
        self.len = 0;
        Ok(())
    }

    /// Wait for the writing thread to finish what it was given.
    fn join(&mut self) -> std::io::Result<Box<dyn WritableFile>> {
        self.full = None;
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(std::io::Error::other("the segment writing thread panicked")),
            None => Err(std::io::Error::other("the segment writing thread stopped")),
        }
    }

    /// Write the rest, then `header` over the file's first bytes; make it
    /// all durable (`fsync`).
    fn finish(mut self, header: &[u8], direct: bool) -> std::io::Result<()> {
        let total = self.written + self.len as u64;
        let header_staged = self.written == 0;
        if header_staged {
            // All of it is staged: the header goes in before the one write.
            self.buf.bytes_mut()[..header.len()].copy_from_slice(header);
        }
        let pad = if direct {
            self.len.next_multiple_of(DIRECT_ALIGN) - self.len
        } else {
            0
        };
        let len = self.len;
        self.buf.bytes_mut()[len..len + pad].fill(0);
        self.len += pad;
        self.spill()?;
        let file = self.join()?;
        if !header_staged {
            // The first block again, with the header: whole, from aligned memory.
            let first = std::mem::take(&mut self.first);
            let block = &mut self.buf.bytes_mut()[..first.len()];
            block.copy_from_slice(&first);
            block[..header.len()].copy_from_slice(header);
            file.write_all_at(block, 0)?;
        }
        if pad > 0 {
            file.set_len(total)?;
        }
        file.sync_all()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // An error path: let the thread finish (or fail) before the caller
        // removes the file.
        if self.thread.is_some() {
            let _ = self.join();
        }
    }
}

/// Rows a segment writer reads, codes and writes at a time.
const WRITE_BLOCK: usize = 8192;

/// Rows `start..` (up to [`WRITE_BLOCK`], and `n`) of `rows` into `block`,
/// read in parallel; the first bad row's error (the lowest row number, so
/// the same whatever the threads did).
fn read_block<'b, R: SegmentRows + ?Sized>(
    rows: &R,
    start: usize,
    n: usize,
    dim: usize,
    block: &'b mut [f32],
) -> Result<&'b [f32]> {
    let m = (n - start).min(WRITE_BLOCK);
    let blk = &mut block[..m * dim];
    let first_bad = blk
        .par_chunks_exact_mut(dim)
        .enumerate()
        .filter_map(|(j, out)| rows.vector(start + j, out).err().map(|e| (j, e)))
        .min_by_key(|(j, _)| *j);
    match first_bad {
        Some((_, e)) => Err(e),
        None => Ok(blk),
    }
}

// Vectors are written with `cast_slice` (native order) which is little-endian on
// every target we build for; refuse to compile elsewhere rather than write
// big-endian files.
#[cfg(not(target_endian = "little"))]
compile_error!(
    "visage writes little-endian files and maps them directly: big-endian targets are not supported"
);

fn le_u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn le_u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn le_f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// An open, memory-mapped segment.
pub(crate) struct Segment {
    file_no: u64,
    map: MappedFile,
    header: SegmentHeader,
    /// `header.rows` and `header.subjects` as `usize`.
    rows: usize,
    /// Values per vector.
    dim: usize,
    subjects: usize,
    ranges: [Range<usize>; SECTION_COUNT],
    /// The codes' statistics for the integer scans, computed on first use.
    code_stats: std::sync::OnceLock<CodeStats>,
    /// The coding error bound the segment stores (version 8 on, see
    /// [`Segment::read_stored_rho`]): the code statistics then read only the codes.
    stored_rho: Option<f64>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("file_no", &self.file_no)
            .field("rows", &self.header.rows)
            .finish()
    }
}

impl Segment {
    /// Map and check the segment at `path`, of a gallery of `dim` values a vector.
    pub(crate) fn open(
        fs: &dyn FileSystem,
        path: &Path,
        file_no: u64,
        verify: VerifyChecksums,
        dim: usize,
    ) -> Result<Segment> {
        let map = fs.map(path).map_err(|e| Error::io(path, e))?;
        let bytes = map.bytes();
        let file_len = bytes.len() as u64;
        let header = SegmentHeader::decode(path, bytes, file_len)?;
        if header.file_no != file_no {
            return Err(Error::corrupt(
                path,
                32,
                format!(
                    "header says file {:016x}, expected {file_no:016x}",
                    header.file_no
                ),
            ));
        }
        if header.dim as usize != dim {
            return Err(Error::corrupt(
                path,
                12,
                format!(
                    "segment of vectors of {} values in a gallery of {dim}",
                    header.dim
                ),
            ));
        }
        // `decode` checked that every section ends within `bytes`, and that
        // rows ≤ u32::MAX and subjects ≤ rows: these conversions cannot fail.
        let mut ranges: [Range<usize>; SECTION_COUNT] = std::array::from_fn(|_| 0..0);
        for (range, e) in ranges.iter_mut().zip(&header.sections) {
            let (Ok(start), Ok(end)) =
                (usize::try_from(e.offset), usize::try_from(e.offset + e.len))
            else {
                return Err(Error::corrupt(
                    path,
                    e.offset,
                    "section beyond the address space",
                ));
            };
            *range = start..end;
        }
        let (Ok(rows), Ok(subjects)) = (
            usize::try_from(header.rows),
            usize::try_from(header.subjects),
        ) else {
            return Err(Error::corrupt(
                path,
                0,
                "more rows than the address space holds",
            ));
        };
        for &sec in &Section::ALL[..format::sections_in(header.version)] {
            let bulk = matches!(sec, Section::Vectors | Section::Sq8Codes);
            if bulk && verify == VerifyChecksums::Metadata {
                continue;
            }
            let e = header.sections[sec as usize];
            let got = crc32fast::hash(&bytes[ranges[sec as usize].clone()]);
            if got != e.crc {
                return Err(Error::ChecksumMismatch {
                    path: path.into(),
                    section: format!("section {} at offset {}", sec.name(), e.offset),
                    expected: e.crc,
                    got,
                });
            }
        }
        let mut seg = Segment {
            file_no,
            map,
            header,
            rows,
            dim,
            subjects,
            ranges,
            code_stats: std::sync::OnceLock::new(),
            stored_rho: None,
        };
        seg.check_structure()?;
        seg.stored_rho = seg.read_stored_rho()?;
        if verify == VerifyChecksums::Full {
            seg.check_rows()?;
        }
        Ok(seg)
    }

    /// The coding error bound the segment stores (version 8 on), checked to
    /// be a bound at all: finite and not negative (a zero is a segment whose
    /// rows are coded exactly, or are all exceptions).
    fn read_stored_rho(&self) -> Result<Option<f64>> {
        if self.header.version < format::STORED_RHO_VERSION {
            return Ok(None);
        }
        let at = self.header.sections[Section::Sq8Rho as usize].offset;
        let bytes = &self.map.bytes()[self.ranges[Section::Sq8Rho as usize].clone()];
        let rho = f64::from_le_bytes(
            bytes
                .try_into()
                .map_err(|_| Error::corrupt(self.path(), at, "section sq8_rho is not one f64"))?,
        );
        if !rho.is_finite() || rho < 0.0 {
            return Err(Error::corrupt(
                self.path(),
                at,
                format!("section sq8_rho: {rho} is not a coding error bound"),
            ));
        }
        Ok(Some(rho))
    }

    /// With the vectors read anyway ([`VerifyChecksums::Full`]): every value is
    /// finite, as the write path requires, and each stored norm and 8-bit code
    /// is the one the writer computes from its vector, bit for bit (the error
    /// bounds of the tiled and the screened exact scans rely on them).
    fn check_rows(&self) -> Result<()> {
        let norms = self.u32s(Section::Norms)?;
        let vectors_at = self.header.sections[Section::Vectors as usize].offset;
        let sq8 = self.sq8();
        let dim = self.dim;
        let exceptions = self.exceptions();
        let mut want = vec![0u8; dim];
        // The coding error bound of the rows, as `CodeStats::of` takes it.
        let mut rho = 0f64;
        for (i, (v, &n)) in self
            .vectors_checked()?
            .chunks_exact(dim)
            .zip(norms)
            .enumerate()
        {
            if let Some(d) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::corrupt(
                    self.path(),
                    vectors_at + (i * 4 * dim + 4 * d) as u64,
                    format!("section vectors: row {i} value {d} is {}", v[d]),
                ));
            }
            if let Some((min, step, codes)) = sq8 {
                sq8_encode(v, min, step, &mut want);
                let row = &codes[i * dim..(i + 1) * dim];
                if let Some(d) = (0..dim).find(|&d| row[d] != want[d]) {
                    let e = self.header.sections[Section::Sq8Codes as usize];
                    return Err(Error::corrupt(
                        self.path(),
                        e.offset + (i * dim + d) as u64,
                        format!(
                            "section sq8 codes: row {i} value {d} is coded {}, its vector codes to {}",
                            row[d], want[d]
                        ),
                    ));
                }
                // From version 5, a row the bound does not cover must be
                // listed as an exception, and a listed row must be one.
                let listed = u32::try_from(i).is_ok_and(|r| exceptions.binary_search(&r).is_ok());
                if self.header.version >= format::ROBUST_CODES_VERSION
                    && listed == coded_within(v, min, step, row)
                {
                    let e = self.header.sections[Section::Sq8Exceptions as usize];
                    let what = if listed {
                        "is listed as an exception, but its codes are within half a step"
                    } else {
                        "has codes beyond half a step of its values, and no exception lists it"
                    };
                    return Err(Error::corrupt(
                        self.path(),
                        e.offset,
                        format!("section sq8 exceptions: row {i} {what}"),
                    ));
                }
                if !listed {
                    rho = rho.max(coding_error(min, step, row, v));
                }
            }
            let want: f32 = v.iter().map(|x| x * x).sum();
            if want.to_bits() != n {
                let e = self.header.sections[Section::Norms as usize];
                return Err(Error::corrupt(
                    self.path(),
                    e.offset + 4 * i as u64,
                    format!(
                        "section norms: row {i} has norm {}, its vector {want}",
                        f32::from_bits(n)
                    ),
                ));
            }
        }
        // The stored bound is the rows' own, bit for bit: a smaller one would
        // let the screened scans drop rows that belong in the answer.
        if let Some(stored) = self.stored_rho
            && stored.to_bits() != rho.to_bits()
        {
            let e = self.header.sections[Section::Sq8Rho as usize];
            return Err(Error::corrupt(
                self.path(),
                e.offset,
                format!(
                    "section sq8_rho: the stored coding error bound is {stored}, the rows' largest coding error {rho}"
                ),
            ));
        }
        Ok(())
    }

    /// Check every index stored in the metadata sections, so later accesses
    /// cannot go out of bounds, and that the indexes agree with the rows they
    /// index: the sorted ids are the rows' ids (so ids are distinct) and each
    /// posting list holds exactly its subject's rows. Compaction copies rows
    /// through one view and finds them through the other, so a disagreement
    /// would silently change what a gallery holds.
    fn check_structure(&self) -> Result<()> {
        let rows = self.rows();
        let nsub = self.subject_count();
        let bad = |sec: Section, i: usize, what: String| {
            let e = self.header.sections[sec as usize];
            Error::corrupt(
                self.path(),
                e.offset + i as u64,
                format!("section {}: {what}", sec.name()),
            )
        };
        // Typed views (alignment and length).
        self.vectors_checked()?;
        for (i, &o) in self.subject_ords_raw()?.iter().enumerate() {
            if o as usize >= nsub {
                return Err(bad(
                    Section::SubjectOrds,
                    i * 4,
                    format!("ordinal {o} of {nsub} subjects"),
                ));
            }
        }
        let sorted = self.u64s(Section::SortedIds)?;
        for i in 1..sorted.len() {
            if sorted[i - 1] >= sorted[i] {
                return Err(bad(
                    Section::SortedIds,
                    i * 8,
                    "ids not strictly ascending".into(),
                ));
            }
        }
        for (sec, list) in [
            (Section::SortedRows, self.u32s(Section::SortedRows)?),
            (Section::PostingRows, self.u32s(Section::PostingRows)?),
        ] {
            if let Some(i) = list.iter().position(|&r| r as usize >= rows) {
                return Err(bad(sec, i * 4, format!("row {} of {rows}", list[i])));
            }
        }
        let ids = self.u64s(Section::Ids)?;
        let sorted_rows = self.u32s(Section::SortedRows)?;
        // Strictly ascending sorted ids, each the id of its row: the sorted rows
        // are a permutation and the ids are distinct.
        if let Some(i) = sorted_rows
            .iter()
            .zip(sorted)
            .position(|(&r, &id)| ids.get(r as usize) != Some(&id))
        {
            return Err(bad(
                Section::SortedRows,
                i * 4,
                format!(
                    "sorted id {} points at row {}, which holds another id",
                    sorted[i], sorted_rows[i]
                ),
            ));
        }
        let po = self.u32s(Section::PostingOffsets)?;
        if po.first() != Some(&0)
            || po.last().map(|&r| r as usize) != Some(rows)
            || po.windows(2).any(|w| w[0] > w[1])
        {
            return Err(bad(
                Section::PostingOffsets,
                0,
                "offsets not ascending from 0 to rows".into(),
            ));
        }
        // Each posting list ascending and holding rows of its own subject only:
        // with `rows` entries in all, every row is in exactly one list.
        let ords = self.subject_ords_raw()?;
        let postings = self.u32s(Section::PostingRows)?;
        for (ord, w) in po.windows(2).enumerate() {
            let list = &postings[w[0] as usize..w[1] as usize];
            let stray = list.iter().enumerate().find(|&(j, &r)| {
                ords.get(r as usize).map(|&o| o as usize) != Some(ord)
                    || (j > 0 && list[j - 1] >= r)
            });
            if let Some((j, &r)) = stray {
                return Err(bad(
                    Section::PostingRows,
                    (w[0] as usize + j) * 4,
                    format!(
                        "row {r} in the list of subject {ord}, out of order or of another subject"
                    ),
                ));
            }
        }
        let so = self.u64s(Section::SubjectOffsets)?;
        let sb = self.section(Section::SubjectBytes);
        if so.first() != Some(&0)
            || so.last() != Some(&(sb.len() as u64))
            || so.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(bad(
                Section::SubjectOffsets,
                0,
                "offsets not strictly ascending over the subject bytes".into(),
            ));
        }
        let mut prev: Option<&[u8]> = None;
        for i in 0..nsub {
            // The offsets ascend to `sb.len()` (checked above), so they fit in usize.
            #[allow(clippy::cast_possible_truncation, reason = "at most sb.len()")]
            let (start, end) = (so[i] as usize, so[i + 1] as usize);
            let s = &sb[start..end];
            // UTF-8, and a subject the write path accepts (one a client could
            // not name, in a delete or a verification, must not be stored).
            let problem = match std::str::from_utf8(s) {
                Err(_) => Some("is not UTF-8".to_string()),
                Ok(s) => format::subject_problem(s),
            };
            if let Some(why) = problem {
                return Err(bad(
                    Section::SubjectBytes,
                    start,
                    format!("subject {i} {why}"),
                ));
            }
            // Strictly ascending (bytewise, as `str` orders): lookups by name
            // search the dictionary. Found by the `segment` fuzz target: with
            // a subject listed twice, a lookup found one ordinal's rows only,
            // and the writer's subject count lost a subject that had rows.
            if prev.is_some_and(|p| p >= s) {
                return Err(bad(
                    Section::SubjectBytes,
                    start,
                    format!("subject {i} is not after subject {} in byte order", i - 1),
                ));
            }
            prev = Some(s);
        }
        if self.header.version >= format::ROBUST_CODES_VERSION {
            // Exceptions: rows of this segment, strictly ascending (the scans
            // search the list, and skip each listed row in the coded pass).
            let exc = self.u32s(Section::Sq8Exceptions)?;
            if let Some(i) =
                (0..exc.len()).find(|&i| exc[i] as usize >= rows || (i > 0 && exc[i - 1] >= exc[i]))
            {
                return Err(bad(
                    Section::Sq8Exceptions,
                    4 * i,
                    format!(
                        "exception {i} is row {}: not a row of {rows}, or not after exception {}",
                        exc[i],
                        i.saturating_sub(1)
                    ),
                ));
            }
        }
        if self.header.version >= 2 {
            let params: &[f32] = mmap::cast(self.path(), 0, self.section(Section::Sq8Params))?;
            let dim = self.dim;
            let bad_param = |(i, x): (usize, &f32)| !x.is_finite() || (i >= dim && *x < 0.0);
            if let Some(i) = params.iter().enumerate().position(bad_param) {
                return Err(bad(
                    Section::Sq8Params,
                    i * 4,
                    format!("quantiser parameter {i} is {}", params[i]),
                ));
            }
        }
        Ok(())
    }

    /// About to read every row in order (a merge): read ahead.
    pub(crate) fn advise_sequential(&self) {
        self.map
            .advise_sequential(self.ranges[Section::Vectors as usize].clone());
    }

    fn section(&self, s: Section) -> &[u8] {
        &self.map.bytes()[self.ranges[s as usize].clone()]
    }
    fn u64s(&self, s: Section) -> Result<&[u64]> {
        mmap::cast(
            self.path(),
            self.header.sections[s as usize].offset,
            self.section(s),
        )
    }
    fn u32s(&self, s: Section) -> Result<&[u32]> {
        mmap::cast(
            self.path(),
            self.header.sections[s as usize].offset,
            self.section(s),
        )
    }
    fn subject_ords_raw(&self) -> Result<&[u32]> {
        self.u32s(Section::SubjectOrds)
    }
    fn vectors_checked(&self) -> Result<&[f32]> {
        mmap::cast(
            self.path(),
            self.header.sections[0].offset,
            self.section(Section::Vectors),
        )
    }

    /// File number.
    pub(crate) fn file_no(&self) -> u64 {
        self.file_no
    }
    /// Path of the file.
    pub(crate) fn path(&self) -> &Path {
        self.map.path()
    }
    /// Rows (live and deleted).
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }
    /// Distinct subjects.
    pub(crate) fn subject_count(&self) -> usize {
        self.subjects
    }
    /// Values per vector.
    #[cfg(test)]
    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    // The views below were checked (length, alignment, bounds) by `open`;
    // a failure here would be a bug, so they fall back to empty slices rather than panic.

    /// Row-major vectors, [`Segment::dim`] values a row.
    pub(crate) fn vectors(&self) -> &[f32] {
        self.vectors_checked().unwrap_or(&[])
    }
    /// Id of each row.
    pub(crate) fn ids(&self) -> &[u64] {
        self.u64s(Section::Ids).unwrap_or(&[])
    }
    /// Subject ordinal of each row.
    pub(crate) fn subject_ords(&self) -> &[u32] {
        self.subject_ords_raw().unwrap_or(&[])
    }
    /// Squared norm of each row.
    pub(crate) fn norms(&self) -> &[f32] {
        mmap::cast(self.path(), 0, self.section(Section::Norms)).unwrap_or(&[])
    }
    /// The statistics of the codes the integer scans need (`‖x̂‖²` of each
    /// row, the centre codes and each row's spread about them, the largest
    /// coding error; see [`CodeStats`]), computed once (8 bytes per row).
    /// Empty without codes.
    ///
    /// The computation runs in parallel and holds no lock: a rayon worker
    /// waiting on a lock could be the one that must finish the work, so two
    /// first callers may both compute it (the first result is kept).
    /// [`Segment::warm`] starts it in the background when a segment is opened
    /// or written, so searches rarely do.
    pub(crate) fn code_stats(&self) -> &CodeStats {
        if let Some(c) = self.code_stats.get() {
            return c;
        }
        let c = match (self.sq8(), self.stored_rho) {
            (Some((min, step, codes)), Some(rho)) => {
                CodeStats::with_rho(min, step, codes, self.dim, rho)
            }
            (Some((min, step, codes)), None) => CodeStats::of(
                min,
                step,
                codes,
                self.vectors(),
                self.exceptions(),
                self.dim,
            ),
            (None, _) => CodeStats::default(),
        };
        // The pass above was the last to read every vector: from now on
        // searches read only candidates' rows (and compactions, sequentially,
        // a segment at a time), so read-ahead around each would fill memory
        // with neighbours nobody asked for when the vectors exceed it.
        self.map
            .advise_random(self.ranges[Section::Vectors as usize].clone());
        self.code_stats.get_or_init(|| c)
    }

    /// Ask the kernel to read the vectors of `rows` (ascending) ahead of a
    /// re-rank that reads them (see [`MappedFile::advise_will_need`]).
    pub(crate) fn will_need_rows(&self, rows: impl IntoIterator<Item = usize>) {
        let base = self.ranges[Section::Vectors as usize].start;
        let row_bytes = self.dim * 4;
        self.map.advise_will_need(
            rows.into_iter()
                .map(|r| base + r * row_bytes..base + (r + 1) * row_bytes),
        );
    }

    /// Compute [`Segment::code_stats`] on the rayon pool, in the background.
    pub(crate) fn warm(seg: &std::sync::Arc<Segment>) {
        if seg.code_stats.get().is_none() && seg.sq8().is_some() {
            let seg = std::sync::Arc::clone(seg);
            rayon::spawn(move || {
                seg.code_stats();
            });
        }
    }

    /// The rows whose codes the quantiser's bound does not cover (values
    /// clamped to its range), ascending; scanned exactly. Empty before
    /// version 5, whose quantiser ranges covered every value.
    pub(crate) fn exceptions(&self) -> &[u32] {
        if self.header.version < format::ROBUST_CODES_VERSION {
            return &[];
        }
        self.u32s(Section::Sq8Exceptions).unwrap_or(&[])
    }

    /// The format version the segment was written in.
    pub(crate) fn version(&self) -> u32 {
        self.header.version
    }

    /// The 8-bit codes (row-major, [`Segment::dim`] a row) with the
    /// quantiser's per-dimension minimum and step (version 2 segments and
    /// later; `None` for version 1).
    pub(crate) fn sq8(&self) -> Option<(&[f32], &[f32], &[u8])> {
        if self.header.version < 2 {
            return None;
        }
        let params: &[f32] = mmap::cast(self.path(), 0, self.section(Section::Sq8Params)).ok()?;
        let codes = self.section(Section::Sq8Codes);
        let (min, step) = params.split_at_checked(self.dim)?;
        (codes.len() == self.rows() * self.dim && step.len() == self.dim)
            .then_some((min, step, codes))
    }
    /// Subject string of ordinal `ord`.
    pub(crate) fn subject(&self, ord: u32) -> &str {
        self.subject_at(ord as usize)
    }
    /// Subject string of ordinal `i` (a `usize`, as counted by [`Self::subject_count`]).
    pub(crate) fn subject_at(&self, i: usize) -> &str {
        let so = self.u64s(Section::SubjectOffsets).unwrap_or(&[]);
        let sb = self.section(Section::SubjectBytes);
        let bytes = match (so.get(i), so.get(i + 1)) {
            (Some(&a), Some(&b)) => usize::try_from(a)
                .ok()
                .zip(usize::try_from(b).ok())
                .and_then(|(a, b)| sb.get(a..b)),
            _ => None,
        };
        bytes
            .and_then(|s| std::str::from_utf8(s).ok())
            .unwrap_or("")
    }
    /// Subject of row `row`.
    pub(crate) fn row_subject(&self, row: usize) -> &str {
        self.subject(self.subject_ords().get(row).copied().unwrap_or(u32::MAX))
    }
    /// The largest id of the segment (deleted rows included): the last of
    /// the sorted ids, checked ascending at open.
    pub(crate) fn max_id(&self) -> Option<u64> {
        self.u64s(Section::SortedIds).ok()?.last().copied()
    }
    /// Smallest id stored.
    pub(crate) fn min_id(&self) -> Option<u64> {
        self.u64s(Section::SortedIds).ok()?.first().copied()
    }
    /// The file's length in bytes.
    pub(crate) fn file_len(&self) -> u64 {
        self.map.bytes().len() as u64
    }
    /// Row holding `id`, if any.
    pub(crate) fn find_id(&self, id: u64) -> Option<usize> {
        let sorted = self.u64s(Section::SortedIds).ok()?;
        // Cheap range check first: segments often hold disjoint id ranges.
        if sorted.first().is_none_or(|&f| id < f) || sorted.last().is_none_or(|&l| id > l) {
            return None;
        }
        let i = sorted.binary_search(&id).ok()?;
        self.u32s(Section::SortedRows)
            .ok()?
            .get(i)
            .map(|&r| r as usize)
    }
    /// Rows of `subject` in this segment (deleted ones included).
    pub(crate) fn subject_rows(&self, subject: &str) -> &[u32] {
        let so = self.u64s(Section::SubjectOffsets).unwrap_or(&[]);
        let n = so.len().saturating_sub(1);
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.subject_at(mid).cmp(subject) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return self.posting(mid),
            }
        }
        &[]
    }
    /// Rows of subject ordinal `ord`.
    pub(crate) fn posting(&self, ord: usize) -> &[u32] {
        let po = self.u32s(Section::PostingOffsets).unwrap_or(&[]);
        let pr = self.u32s(Section::PostingRows).unwrap_or(&[]);
        match (po.get(ord), po.get(ord + 1)) {
            (Some(&a), Some(&b)) => &pr[a as usize..b as usize],
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantizer::code_row;
    use crate::storage::io::RealFs;

    fn vec_of(x: f32, dim: usize) -> Vec<f32> {
        (0..dim).map(|i| x + i as f32 * 0.01).collect()
    }

    /// Write `vs` as segment file 1 at `path`: row `i` with id `i`, every
    /// row of subject "s".
    fn write_plain(path: &Path, vs: &[Vec<f32>], dim: usize) -> u64 {
        let rows: Vec<RowRef> = vs
            .iter()
            .enumerate()
            .map(|(i, v)| RowRef {
                id: i as u64,
                subject: "s",
                vector: v,
            })
            .collect();
        write_segment(&RealFs, path, 1, rows.as_slice(), dim, code_row).unwrap()
    }

    #[test]
    fn sink_writes_the_same_bytes_to_a_direct_file_and_a_buffered_one() {
        let dir = tempfile::tempdir().unwrap();
        let header = [0xABu8; SEGMENT_HEADER_LEN];
        for len in [
            SEGMENT_HEADER_LEN,
            1000,
            DIRECT_ALIGN,
            5000,
            SINK_BUF,
            SINK_BUF + DIRECT_ALIGN + 1,
            2 * SINK_BUF + 7,
        ] {
            let data: Vec<u8> = (0..len)
                .map(|i| u8::try_from((i * 7 + i / 4093) % 251).unwrap())
                .collect();
            let mut want = data.clone();
            want[..SEGMENT_HEADER_LEN].copy_from_slice(&header);
            for (direct, cap) in [(false, SINK_BUF), (true, SINK_BUF), (true, DIRECT_ALIGN)] {
                let path = dir.path().join(format!("{len}-{direct}-{cap}"));
                let file = if direct {
                    RealFs.create_direct(&path)
                } else {
                    RealFs.create(&path, crate::storage::io::Create::New)
                }
                .unwrap();
                let is_direct = file.direct();
                let mut sink = Sink::new(file, cap).unwrap();
                // Pieces of odd sizes, as the sections come.
                for piece in data.chunks(1000 + 3) {
                    sink.write_all(piece).unwrap();
                }
                sink.finish(&header, is_direct).unwrap();
                let got = std::fs::read(&path).unwrap();
                assert!(
                    got == want,
                    "{len} bytes, direct {direct}, buffers of {cap}: file differs"
                );
            }
        }
    }

    #[test]
    fn the_writers_coding_error_is_the_one_code_stats_computes() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 64;
        let mut rng = 12345u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let n = 9000;
        let mut vs: Vec<Vec<f32>> = (0..n).map(|_| (0..dim).map(|_| next()).collect()).collect();
        // Outliers past the quantiser's robust range: exceptions.
        for r in [5, 777, 8999] {
            vs[r][3] = 40.0;
        }
        let path = dir.path().join("seg.vseg");
        let len = write_plain(&path, &vs, dim);
        assert_eq!(len, std::fs::metadata(&path).unwrap().len());
        // Opening takes the stored bound (no vector read); the statistics
        // computed from the vectors, as for a segment older than version 8,
        // are the same, bit for bit.
        let seg = Segment::open(&RealFs, &path, 1, VerifyChecksums::Metadata, dim).unwrap();
        assert_eq!(seg.exceptions(), &[5, 777, 8999]);
        assert!(
            seg.stored_rho.is_some(),
            "a version-8 segment stores its bound"
        );
        let (min, step, codes) = seg.sq8().unwrap();
        let from_vectors = CodeStats::of(min, step, codes, seg.vectors(), seg.exceptions(), dim);
        let stored = seg.code_stats();
        assert!(from_vectors.rho > 0.0 && from_vectors.rho.is_finite());
        assert_eq!(from_vectors.rho.to_bits(), stored.rho.to_bits());
        assert_eq!(from_vectors.norms, stored.norms);
        assert_eq!(from_vectors.centre, stored.centre);
        assert_eq!(from_vectors.spread, stored.spread);
        // And a full check agrees with it.
        Segment::open(&RealFs, &path, 1, VerifyChecksums::Full, dim).unwrap();
    }

    /// A stored bound that is not the rows' own is refused: with a bad
    /// checksum at every open; with a good checksum (a writer's bug) by the
    /// full check, which recomputes it; and, whatever the checksum, when it
    /// is no bound at all (NaN, infinite, negative).
    #[test]
    fn a_stored_coding_error_bound_that_is_not_the_rows_own_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 32;
        let vs: Vec<Vec<f32>> = (0..200)
            .map(|i| {
                (0..dim)
                    .map(|d| ((i * 7 + d * 13) % 29) as f32 * 0.0137 - 0.2)
                    .collect()
            })
            .collect();
        let path = dir.path().join("seg.vseg");
        write_plain(&path, &vs, dim);
        let rho = Segment::open(&RealFs, &path, 1, VerifyChecksums::Metadata, dim)
            .unwrap()
            .stored_rho
            .unwrap();
        assert!(rho > 0.0);
        let good = std::fs::read(&path).unwrap();
        let header = SegmentHeader::decode(&path, &good, good.len() as u64).unwrap();
        let e = header.sections[Section::Sq8Rho as usize];
        let at = usize::try_from(e.offset).unwrap();
        // Write `rho` into the section, its CRC and the header's resealed.
        let with = |rho: f64| {
            let mut b = good.clone();
            b[at..at + 8].copy_from_slice(&rho.to_le_bytes());
            let mut h = header.clone();
            h.sections[Section::Sq8Rho as usize].crc = crc32fast::hash(&b[at..at + 8]);
            b[..SEGMENT_HEADER_LEN].copy_from_slice(&h.encode());
            b
        };
        let open = |b: &[u8], verify| {
            std::fs::write(&path, b).unwrap();
            Segment::open(&RealFs, &path, 1, verify, dim).map(|s| s.code_stats().rho)
        };
        // The resealed original opens, with its bound.
        assert_eq!(open(&with(rho), VerifyChecksums::Full).unwrap(), rho);
        // A flipped bit without a new checksum.
        let mut flipped = good.clone();
        flipped[at] ^= 1;
        let err = open(&flipped, VerifyChecksums::Metadata).unwrap_err();
        assert!(err.to_string().contains("sq8_rho"), "{err}");
        // A smaller bound with a good checksum: taken as stored by a
        // metadata check, refused by the full one.
        let smaller = with(rho / 2.0);
        assert_eq!(
            open(&smaller, VerifyChecksums::Metadata).unwrap(),
            rho / 2.0
        );
        let err = open(&smaller, VerifyChecksums::Full).unwrap_err();
        assert!(
            err.to_string().contains("sq8_rho") && err.to_string().contains("largest coding error"),
            "{err}"
        );
        for bad in [f64::NAN, f64::INFINITY, -1.0] {
            let err = open(&with(bad), VerifyChecksums::Metadata).unwrap_err();
            assert!(
                err.to_string().contains("not a coding error bound"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn write_then_open_gives_back_every_row() {
        for dim in [16, 96, 128, 512] {
            write_then_open_at(dim);
        }
    }

    fn write_then_open_at(dim: usize) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg.vseg");
        let vs: Vec<Vec<f32>> = (0..50).map(|i| vec_of(i as f32, dim)).collect();
        let subjects = ["bob", "alice", "carol", "alice", "émile"];
        let rows: Vec<RowRef> = (0..50)
            .map(|i| RowRef {
                id: 1000 - i as u64 * 7,
                subject: subjects[i % 5],
                vector: &vs[i],
            })
            .collect();
        write_segment(&RealFs, &path, 42, rows.as_slice(), dim, code_row).unwrap();
        for verify in [VerifyChecksums::Metadata, VerifyChecksums::Full] {
            let seg = Segment::open(&RealFs, &path, 42, verify, dim).unwrap();
            assert_eq!(seg.rows(), 50);
            assert_eq!(seg.dim(), dim);
            assert_eq!(seg.subject_count(), 4);
            let (_, _, codes) = seg.sq8().unwrap();
            assert_eq!(codes.len(), 50 * dim);
            for (i, r) in rows.iter().enumerate() {
                assert_eq!(&seg.vectors()[i * dim..(i + 1) * dim], r.vector);
                assert_eq!(seg.ids()[i], r.id);
                assert_eq!(seg.row_subject(i), r.subject);
                assert_eq!(seg.find_id(r.id), Some(i));
                assert!(
                    seg.subject_rows(r.subject)
                        .contains(&u32::try_from(i).unwrap())
                );
                let norm: f32 = r.vector.iter().map(|x| x * x).sum();
                assert_eq!(seg.norms()[i], norm);
            }
            assert_eq!(seg.find_id(1), None);
            assert_eq!(seg.subject_rows("alice").len(), 20);
            assert!(seg.subject_rows("dave").is_empty());
        }
        assert!(
            Segment::open(&RealFs, &path, 43, VerifyChecksums::Metadata, dim).is_err(),
            "wrong file number"
        );
        let other = if dim == 128 { 512 } else { 128 };
        let err = Segment::open(&RealFs, &path, 42, VerifyChecksums::Metadata, other).unwrap_err();
        assert!(err.to_string().contains("gallery of"), "{err}");
    }

    #[test]
    fn every_corrupted_metadata_byte_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg.vseg");
        let vs: Vec<Vec<f32>> = (0..3).map(|i| vec_of(i as f32, 128)).collect();
        write_plain(&path, &vs, 128);
        let good = std::fs::read(&path).unwrap();
        let ranges = Segment::open(&RealFs, &path, 1, VerifyChecksums::Full, 128)
            .unwrap()
            .ranges
            .clone();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            // Zero padding between sections is the only part no CRC covers.
            let padding = i >= SEGMENT_HEADER_LEN && !ranges.iter().any(|r| r.contains(&i));
            if padding {
                continue;
            }
            assert!(
                Segment::open(&RealFs, &path, 1, VerifyChecksums::Full, 128).is_err(),
                "flipped byte {i} went unnoticed"
            );
            // The bulk sections (vectors, codes) are verified only with Full.
            let bulk = ranges[Section::Vectors as usize].contains(&i)
                || ranges[Section::Sq8Codes as usize].contains(&i);
            if !bulk {
                assert!(
                    Segment::open(&RealFs, &path, 1, VerifyChecksums::Metadata, 128).is_err(),
                    "byte {i}"
                );
            }
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(Segment::open(&RealFs, &path, 1, VerifyChecksums::Metadata, 128).is_err());
    }
}

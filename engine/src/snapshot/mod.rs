//! What a reader sees: the gallery's segments with their tombstones and the
//! memtable chunks with theirs, immutable once published. Searches, the head
//! and statistics read a `Snapshot`; only the gallery's writer makes new ones.
//!
//! The rows written since the last flush live in [`memtable`] chunks; the
//! deletion bitmaps of segments and chunks in [`tombstones`].
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_lossless,
    clippy::cast_sign_loss
)]

pub(crate) mod memtable;
pub(crate) mod tombstones;

use crate::Embedding;
use crate::quantizer::CodeStats;
use crate::storage::segment::Segment;
use memtable::MemChunk;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tombstones::Tombstones;

/// A segment with its tombstones.
#[derive(Debug, Clone)]
pub(crate) struct SegState {
    pub seg: Arc<Segment>,
    pub tomb: Arc<Tombstones>,
}

/// What a reader sees: immutable once published.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub segments: Vec<SegState>,
    pub chunks: Vec<MemChunk>,
    /// Subjects with a live row, as the writer counted them when it published this.
    pub subjects: u64,
    /// Values per vector (the gallery's dimension).
    pub dim: usize,
    /// The gallery's counts of how exact scans settled their probes, shared
    /// by every snapshot it publishes.
    pub scans: Arc<ScanCounters>,
}

/// How the exact scans settled their probes, counted since the gallery was
/// opened: by the first pass over the codes (the screened scan's, or the
/// integer tiled batch scan's), by a wider one, by the f32 batch scan, or by
/// the direct scan; and how often a proof failed and sent a probe on. An
/// operator sees a degraded gallery when the later ones grow.
#[derive(Debug, Default)]
pub(crate) struct ScanCounters {
    pub screened: AtomicU64,
    pub int_tiled: AtomicU64,
    pub widened: AtomicU64,
    pub f32_batch: AtomicU64,
    pub direct: AtomicU64,
    pub fallbacks: AtomicU64,
}

impl ScanCounters {
    pub(crate) fn add(c: &AtomicU64, n: usize) {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> crate::api::ScanCounts {
        let screened = self.screened.load(Ordering::Relaxed);
        let int_tiled = self.int_tiled.load(Ordering::Relaxed);
        crate::api::ScanCounts {
            first_pass: screened + int_tiled,
            screened,
            int_tiled,
            widened: self.widened.load(Ordering::Relaxed),
            f32_batch: self.f32_batch.load(Ordering::Relaxed),
            direct: self.direct.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
        }
    }
}

/// The machine's memory in bytes (`MemTotal` of /proc/meminfo, read once;
/// `u64::MAX` where there is none to read).
fn physical_memory() -> u64 {
    static MEMORY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MEMORY.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                kib.checked_mul(1024)
            })
            .unwrap_or(u64::MAX)
    })
}

impl Snapshot {
    /// Segments first, then memtable chunks.
    pub(crate) fn source_count(&self) -> usize {
        self.segments.len() + self.chunks.len()
    }
    /// A source's vectors, row-major, [`Snapshot::dim`] values a row.
    pub(crate) fn vectors(&self, s: usize) -> &[f32] {
        match self.segments.get(s) {
            Some(ss) => ss.seg.vectors(),
            None => &self.chunks[s - self.segments.len()].chunk.vectors,
        }
    }
    /// Rows `a..b` of a source's vectors.
    pub(crate) fn rows(&self, s: usize, a: usize, b: usize) -> &[f32] {
        &self.vectors(s)[a * self.dim..b * self.dim]
    }
    /// Whether the rows a re-rank reads are worth asking for ahead
    /// ([`Snapshot::will_need`]): when the segments' vectors are more than
    /// half the machine's memory, so they cannot all stay in the page cache
    /// beside the codes. Below that, once read they stay, and the advice
    /// would cost a page-cache lookup a row for nothing (3% of a batch of
    /// 1,000 probes at 1M rows). The environment variable `VISAGE_PREFETCH`
    /// (`always`, `never`) overrides the rule, for testing; read once.
    pub(crate) fn prefetch_rows(&self) -> bool {
        static FORCED: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
        let forced = FORCED.get_or_init(|| match std::env::var("VISAGE_PREFETCH").as_deref() {
            Ok("always") => Some(true),
            Ok("never") => Some(false),
            _ => None,
        });
        if let Some(f) = *forced {
            return f;
        }
        let bytes: u64 = self
            .segments
            .iter()
            .map(|ss| std::mem::size_of_val(ss.seg.vectors()) as u64)
            .sum();
        bytes > physical_memory() / 2
    }
    /// Ask the kernel to read ahead the vectors of the segment rows among
    /// `rows` ((source, row) pairs, sorted): what a re-rank is about to read.
    /// Memtable rows are in memory already.
    pub(crate) fn will_need(&self, rows: &[(usize, usize)]) {
        for (s, ss) in self.segments.iter().enumerate() {
            let from = rows.partition_point(|&(src, _)| src < s);
            let to = rows.partition_point(|&(src, _)| src <= s);
            if from < to {
                ss.seg
                    .will_need_rows(rows[from..to].iter().map(|&(_, r)| r));
            }
        }
    }
    /// One row's vector.
    pub(crate) fn vector(&self, s: usize, row: usize) -> &[f32] {
        self.rows(s, row, row + 1)
    }
    /// The 8-bit codes of a source (row-major, [`Snapshot::dim`] a row), with
    /// the quantiser's minimum and step (segments of version 2 and later only).
    pub(crate) fn sq8(&self, s: usize) -> Option<(&[f32], &[f32], &[u8])> {
        self.segments.get(s).and_then(|ss| ss.seg.sq8())
    }
    /// A segment's exceptions: rows whose codes its quantiser's bound does not
    /// cover, ascending (empty for memtable chunks and older segments).
    pub(crate) fn exceptions(&self, s: usize) -> &[u32] {
        self.segments.get(s).map_or(&[], |ss| ss.seg.exceptions())
    }
    /// The statistics of a coded segment's codes (computed on first use; `None`
    /// for memtable chunks and segments without codes).
    pub(crate) fn code_stats(&self, s: usize) -> Option<&CodeStats> {
        self.segments
            .get(s)
            .map(|ss| ss.seg.code_stats())
            .filter(|c| !c.centre.is_empty())
    }
    /// Precomputed squared norms of a source's rows (segments have them; memtable chunks do not).
    pub(crate) fn norms(&self, s: usize) -> Option<&[f32]> {
        self.segments.get(s).map(|ss| ss.seg.norms())
    }
    /// The id of every row of a source (resolve once, then index, in loops over rows).
    pub(crate) fn ids(&self, s: usize) -> &[u64] {
        match self.segments.get(s) {
            Some(ss) => ss.seg.ids(),
            None => &self.chunks[s - self.segments.len()].chunk.ids,
        }
    }
    /// The deletion bitmap of a source.
    pub(crate) fn tombstones(&self, s: usize) -> &Tombstones {
        match self.segments.get(s) {
            Some(ss) => &ss.tomb,
            None => &self.chunks[s - self.segments.len()].tomb,
        }
    }
    #[inline]
    pub(crate) fn deleted(&self, s: usize, row: usize) -> bool {
        self.tombstones(s).get(row)
    }
    #[inline]
    pub(crate) fn id(&self, s: usize, row: usize) -> u64 {
        self.ids(s)[row]
    }
    pub(crate) fn subject(&self, s: usize, row: usize) -> &str {
        match self.segments.get(s) {
            Some(ss) => ss.seg.row_subject(row),
            None => &self.chunks[s - self.segments.len()].chunk.subjects[row],
        }
    }
    pub(crate) fn live_rows(&self) -> usize {
        let seg: usize = self
            .segments
            .iter()
            .map(|s| s.seg.rows() - s.tomb.count())
            .sum();
        let mem: usize = self
            .chunks
            .iter()
            .map(|c| c.chunk.ids.len() - c.tomb.count())
            .sum();
        seg + mem
    }
    pub(crate) fn deleted_rows(&self) -> usize {
        self.segments.iter().map(|s| s.tomb.count()).sum::<usize>()
            + self.chunks.iter().map(|c| c.tomb.count()).sum::<usize>()
    }
    /// Subjects with a live row (the writer's count: no scan).
    pub(crate) fn subjects(&self) -> u64 {
        self.subjects
    }
    /// Subjects with a live row, counted by reading every row's subject: the
    /// reference the writer's count is checked against in debug builds.
    pub(crate) fn count_subjects(&self) -> usize {
        let mut set: HashSet<&str> = HashSet::new();
        for ss in &self.segments {
            for ord in 0..ss.seg.subject_count() {
                if ss
                    .seg
                    .posting(ord)
                    .iter()
                    .any(|&r| !ss.tomb.get(r as usize))
                {
                    set.insert(ss.seg.subject_at(ord));
                }
            }
        }
        for c in &self.chunks {
            for (r, s) in c.chunk.subjects.iter().enumerate() {
                if !c.tomb.get(r) {
                    set.insert(s);
                }
            }
        }
        set.len()
    }
    /// The first `limit` subjects with a live row, in byte order, that sort
    /// after `after` (all when `None`), each with its live rows.
    ///
    /// Each segment's subjects are a sorted dictionary: a binary search finds
    /// where `after` falls, and the walk stops once the segment has given
    /// `limit` live subjects. That is enough: the page's subjects are all at
    /// most that segment's `limit`-th, whose counts it gave in full. The
    /// memtable chunks (bounded by the flush threshold) are read whole.
    pub(crate) fn subjects_page(&self, after: Option<&str>, limit: usize) -> Vec<(String, u64)> {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        let past = |s: &str| after.is_none_or(|a| s > a);
        for ss in &self.segments {
            let n = ss.seg.subject_count();
            let (mut lo, mut hi) = (0, n);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if past(ss.seg.subject_at(mid)) {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            let mut given = 0;
            for ord in lo..n {
                if given == limit {
                    break;
                }
                let live = ss
                    .seg
                    .posting(ord)
                    .iter()
                    .filter(|&&r| !ss.tomb.get(r as usize))
                    .count() as u64;
                if live > 0 {
                    *counts.entry(ss.seg.subject_at(ord)).or_default() += live;
                    given += 1;
                }
            }
        }
        for c in &self.chunks {
            for (r, s) in c.chunk.subjects.iter().enumerate() {
                if !c.tomb.get(r) && past(s) {
                    *counts.entry(s).or_default() += 1;
                }
            }
        }
        counts
            .into_iter()
            .take(limit)
            .map(|(s, n)| (s.to_owned(), n))
            .collect()
    }

    /// Live rows of `subject`.
    pub(crate) fn subject_rows(&self, subject: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (i, ss) in self.segments.iter().enumerate() {
            out.extend(
                ss.seg
                    .subject_rows(subject)
                    .iter()
                    .map(|&r| r as usize)
                    .filter(|&r| !ss.tomb.get(r))
                    .map(|r| (i, r)),
            );
        }
        for (j, c) in self.chunks.iter().enumerate() {
            for (r, s) in c.chunk.subjects.iter().enumerate() {
                if &**s == subject && !c.tomb.get(r) {
                    out.push((self.segments.len() + j, r));
                }
            }
        }
        out
    }
    pub(crate) fn get(&self, id: u64) -> Option<Embedding> {
        for c in self.chunks.iter().rev() {
            if let Some(r) = c.chunk.find_live(id, &c.tomb) {
                return Some(Embedding {
                    id,
                    subject: c.chunk.subjects[r].to_string(),
                    vector: c.chunk.vectors[r * self.dim..(r + 1) * self.dim].to_vec(),
                });
            }
        }
        for ss in &self.segments {
            if let Some(r) = ss.seg.find_id(id).filter(|&r| !ss.tomb.get(r)) {
                return Some(Embedding {
                    id,
                    subject: ss.seg.row_subject(r).to_owned(),
                    vector: ss.seg.vectors()[r * self.dim..(r + 1) * self.dim].to_vec(),
                });
            }
        }
        None
    }
}

//! The per-probe top-k sets every scan feeds, and the parallel run that
//! feeds them.
//!
//! A scan is split into work units of rows of one source ([`work_units`]);
//! [`fold_units`] runs them on rayon, each worker keeping one [`TopK`] per
//! probe (and whatever scratch its scan needs), and merges the workers' heaps
//! probe by probe at the end. Rows reach a heap through [`offer`] (or
//! [`offer_group`]), which compares a run of scores with the heap's bound
//! before it looks at tombstones and ids, read from a [`Source`] resolved once
//! per work unit. Order is total, by distance then id, so what a heap keeps
//! does not depend on how the work was split.
//!
//! What is scored, and how, is left to the scans (`direct`, `screen`,
//! `tiled`); the candidate type [`Cand`] is the search module's.

use super::Cand;
use super::kernels::{Kernels, LANES};
use crate::snapshot::Snapshot;
use crate::snapshot::tombstones::Tombstones;
use rayon::prelude::*;

/// Rows per parallel work unit of the direct and code scans.
pub(super) const BLOCK_ROWS: usize = 16 * 1024;
/// Rows scored against every probe while they sit in cache (128 KiB of vectors).
pub(super) const SUB_ROWS: usize = 256;

/// The k smallest candidates seen so far: an unordered buffer and a cut.
///
/// A candidate enters only if it is below the cut (the k-th smallest at the
/// last compaction); when the buffer holds `k` plus a slack, it is compacted
/// to its k smallest (a linear-time selection) and the cut moves down. Every
/// candidate turned away, then or later, is at least the final k-th, so the
/// kept set is exactly the k smallest offered, as a heap's would be, for
/// constant work a candidate instead of a heap's log k sifts.
#[derive(Debug, Clone)]
pub(super) struct TopK {
    k: usize,
    buf: Vec<Cand>,
    /// The k-th smallest at the last compaction; nothing at or above it can enter.
    cut: Option<Cand>,
}

impl TopK {
    pub(super) fn new(k: usize) -> TopK {
        TopK {
            k,
            buf: Vec::with_capacity(Self::capacity(k).min(256)),
            cut: None,
        }
    }
    /// Candidates held before a compaction: `k` and half as many again (a
    /// batch holds a set per probe and per fold, so the slack is memory).
    fn capacity(k: usize) -> usize {
        k.saturating_add((k / 2).max(32))
    }
    /// Distances above this cannot enter.
    #[inline]
    pub(super) fn bound(&self) -> f32 {
        self.cut.map_or(f32::INFINITY, |c| c.dist)
    }
    /// Offer a candidate; true if it entered.
    #[inline]
    fn push(&mut self, c: Cand) -> bool {
        if self.k == 0 || self.cut.is_some_and(|w| c >= w) {
            return false;
        }
        self.buf.push(c);
        if self.buf.len() >= Self::capacity(self.k) {
            self.compact();
        }
        true
    }
    /// Keep the k smallest and move the cut to the largest of them.
    fn compact(&mut self) {
        if self.buf.len() > self.k {
            self.buf.select_nth_unstable(self.k - 1);
            self.buf.truncate(self.k);
        }
        if self.buf.len() == self.k {
            self.cut = self.buf.iter().max().copied();
        }
    }
    fn merge(&mut self, other: TopK) {
        for c in other.buf {
            self.push(c);
        }
    }
    /// The kept candidates' (source, row), once cut to the best `k`.
    pub(super) fn kept_rows(&mut self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.compact();
        self.buf.iter().map(|c| (c.src as usize, c.row as usize))
    }
    /// The kept candidates, ascending, with the worst of them (infinite if none).
    pub(super) fn into_sorted(mut self) -> (Vec<Cand>, f32) {
        self.compact();
        self.buf.sort_unstable();
        let worst = self.buf.last().map_or(f32::INFINITY, |c| c.dist);
        (self.buf, worst)
    }
}

/// A work unit: (source, first row, end row).
pub(super) type Unit = (usize, usize, usize);

/// The scan's work units, `rows` at most each.
pub(super) fn work_units(snap: &Snapshot, rows: usize) -> Vec<Unit> {
    let mut units = Vec::new();
    for s in 0..snap.source_count() {
        let n = snap.vectors(s).len() / snap.dim;
        for a in (0..n).step_by(rows) {
            units.push((s, a, (a + rows).min(n)));
        }
    }
    units
}

/// The `min_len` of [`fold_units`] that makes few large folds: two per
/// thread. Each fold starts with empty top-k sets, which fill with rows that
/// later ones push out; with rayon's default splitting (a fold per unit or
/// two) that warm-up was a quarter of the batch scan's time and an eighth of
/// a single probe's.
pub(super) fn few_folds(units: &[Unit]) -> usize {
    units
        .len()
        .div_ceil(2 * rayon::current_num_threads())
        .max(1)
}

/// Run `scan` over `units` in parallel, `min_len` units at least per rayon
/// job. Each fold starts with `probes` empty heaps of `keep` and a fresh
/// `scratch()`; `scan` feeds one unit's rows into them; the folds' heaps are
/// merged probe by probe and their scratch by `join`.
pub(super) fn fold_units<S: Send>(
    units: &[Unit],
    min_len: usize,
    probes: usize,
    keep: usize,
    scratch: impl Fn() -> S + Sync + Send,
    scan: impl Fn(&mut [TopK], &mut S, Unit) + Sync + Send,
    join: impl Fn(&mut S, S) + Sync + Send,
) -> (Vec<TopK>, S) {
    let empty = || (vec![TopK::new(keep); probes], scratch());
    units
        .par_iter()
        .with_min_len(min_len)
        .fold(empty, |(mut tops, mut s), &unit| {
            scan(&mut tops, &mut s, unit);
            (tops, s)
        })
        .reduce(empty, |(mut tops, mut s), (other, o)| {
            for (x, y) in tops.iter_mut().zip(other) {
                x.merge(y);
            }
            join(&mut s, o);
            (tops, s)
        })
}

/// A source's rows as [`offer`] needs them, resolved once per work unit
/// rather than per row: its index, ids and tombstones.
#[derive(Clone, Copy)]
pub(super) struct Source<'a> {
    src: u32,
    ids: &'a [u64],
    tomb: &'a Tombstones,
    /// Rows to pass over, ascending: a coded pass skips the segment's
    /// exceptions, which [`offer_exact_rows`] scores.
    skip: &'a [u32],
}

impl<'a> Source<'a> {
    pub(super) fn of(snap: &'a Snapshot, s: usize) -> Source<'a> {
        Source {
            src: s as u32,
            ids: snap.ids(s),
            tomb: snap.tombstones(s),
            skip: &[],
        }
    }
    /// The source as a pass over its 8-bit codes sees it: without its
    /// exceptions, whose codes the quantiser's bound does not cover.
    pub(super) fn coded(snap: &'a Snapshot, s: usize) -> Source<'a> {
        Source {
            skip: snap.exceptions(s),
            ..Source::of(snap, s)
        }
    }
    fn skips(&self, row: usize) -> bool {
        !self.skip.is_empty()
            && u32::try_from(row).is_ok_and(|r| self.skip.binary_search(&r).is_ok())
    }
}

/// Score the exceptions of source `s` among rows `a..b` exactly (the direct
/// scan's kernel call) against every probe, and offer them: the coded passes
/// skip them, and this puts them in the same top-k sets with their exact
/// distances.
pub(super) fn offer_exceptions(
    kern: &Kernels,
    snap: &Snapshot,
    probes: &[f32],
    tops: &mut [TopK],
    (s, a, b): Unit,
) {
    let exc = snap.exceptions(s);
    let (lo, hi) = (
        exc.partition_point(|&r| (r as usize) < a),
        exc.partition_point(|&r| (r as usize) < b),
    );
    if lo == hi {
        return;
    }
    let (src, dim) = (Source::of(snap, s), snap.dim);
    let mut d = [0f32];
    for &r in &exc[lo..hi] {
        let x = snap.vector(s, r as usize);
        for (q, top) in probes.chunks_exact(dim).zip(tops.iter_mut()) {
            kern.l2sq_many(q, x, &mut d);
            offer(top, &d, &src, r as usize);
        }
    }
}

/// Offer the rows `first..first + dists.len()` of `src` to `top`. The
/// comparison with the heap's bound runs sixteen lanes at a time (vectorised);
/// only rows under it reach the tombstone check and the heap.
#[inline]
pub(super) fn offer(top: &mut TopK, dists: &[f32], src: &Source<'_>, first: usize) {
    let mut bound = top.bound();
    for (ci, chunk) in dists.chunks(16).enumerate() {
        let mut mask = 0u32;
        for (lane, &d) in chunk.iter().enumerate() {
            mask |= ((d <= bound) as u32) << lane;
        }
        while mask != 0 {
            let lane = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let d = chunk[lane];
            if d > bound {
                continue;
            }
            let row = first + ci * 16 + lane;
            if src.tomb.get(row) || src.skips(row) {
                continue;
            }
            if top.push(Cand {
                dist: d,
                id: src.ids[row],
                src: src.src,
                row: row as u32,
            }) {
                bound = top.bound();
            }
        }
    }
}

/// [`offer`] for one packed group: `d` holds the estimates of rows
/// `first..first + live` (`live ≤ LANES`). The comparison with the heap's
/// bound runs on the whole fixed-size group at once (one vector compare).
#[inline(always)]
pub(super) fn offer_group(
    top: &mut TopK,
    d: &[f32; LANES],
    live: usize,
    src: &Source<'_>,
    first: usize,
) {
    let bound = top.bound();
    let mut mask = 0u32;
    for (lane, &x) in d.iter().enumerate() {
        mask |= ((x <= bound) as u32) << lane;
    }
    mask &= (1u32 << live) - 1;
    if mask != 0 {
        offer(top, &d[..live], src, first);
    }
}

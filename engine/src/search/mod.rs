//! Exact search over a snapshot: top-k embeddings and subject-level identification.
//!
//! This module is the entry point: the crate calls [`top_k`], [`top_k_direct`],
//! [`top_k_quantized`] and [`identify`], with a [`Metric`], and gets [`Cand`]s
//! back. It picks the scan for a request (the dispatch below) and the kernels
//! once per request, and passes both down. The scans live in their own files:
//! - `direct`: exact distances for every row (the reference, and head ranking);
//! - `screen`: scans through the 8-bit codes, the screened exact scan's proof
//!   and the approximate 8-bit mode;
//! - `tiled`: batches as tiles of probes × packed groups of rows;
//! - `topk`: the per-probe top-k sets, work units and the parallel
//!   fold/merge they all share;
//! - [`kernels`]: the distance kernels, chosen once per process.
//!
//! The quantiser itself (parameters, codes, error bounds) is `crate::quantizer`,
//! below both this module and storage. Search reads the `crate::snapshot` and
//! never the gallery.
//!
//! Every scan splits the rows into blocks across segments and memtable
//! chunks; rayon runs the blocks in parallel, each worker keeping one bounded
//! top-k set per probe, and the sets are merged at the end. Order is total: by
//! distance, then by id, so results are deterministic and equal to a
//! brute-force scan's.
//!
//! Probes are passed row-major, `snap.dim` values each (`probes.len()` is a
//! multiple of it): a batch is one allocation whatever the dimension.

mod direct;
pub mod kernels;
mod screen;
mod tiled;
mod topk;

use crate::snapshot::Snapshot;
use kernels::Kernels;
use std::cmp::Ordering;
use std::collections::HashSet;

/// What a scan ranks by: the key is "smaller is better".
#[derive(Debug, Clone, Copy)]
pub(crate) enum Metric<'a> {
    /// Squared L2 distance.
    L2,
    /// The head's score: key = −(Σ w_k·|q_k − x_k| + w_d·‖q − x‖²) (the bias does not change the order).
    Head(&'a [f32], f32),
}

/// A candidate row; `dist` is the metric's key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cand {
    pub dist: f32,
    pub id: u64,
    pub src: u32,
    pub row: u32,
}

impl PartialEq for Cand {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> Ordering {
        self.dist.total_cmp(&o.dist).then(self.id.cmp(&o.id))
    }
}

/// Exact top-`k` live rows for each probe, ascending by (distance, id).
///
/// L2 batches of at least [`batch_threshold`] probes take the tiled scan;
/// smaller ones the screened scan where some segment has codes; everything
/// else (head ranking, snapshots without codes) the direct scan. All three
/// return the same answer, bit for bit.
pub(crate) fn top_k(
    snap: &Snapshot,
    probes: &[f32],
    k: usize,
    metric: Metric<'_>,
) -> Vec<Vec<Cand>> {
    let kern = kernels::selected();
    if matches!(metric, Metric::L2) {
        let bounds = screen::screen_bounds(snap);
        let coded = bounds.iter().any(Option::is_some);
        if probe_count(snap, probes) >= batch_threshold(kern, coded) {
            return tiled::scan(kern, snap, probes, k, &bounds);
        }
        if coded {
            return screen::screened(kern, snap, probes, k, &bounds);
        }
    }
    direct::scan(kern, snap, probes, k, metric)
}

/// The per-probe scan: exact distances from the start.
pub(crate) fn top_k_direct(
    snap: &Snapshot,
    probes: &[f32],
    k: usize,
    metric: Metric<'_>,
) -> Vec<Vec<Cand>> {
    direct::scan(kernels::selected(), snap, probes, k, metric)
}

/// The 8-bit mode: `8k + 32` candidates per probe by the code estimate,
/// re-ranked exactly (see `screen::approximate`); a true neighbour ranked
/// below the candidates by its estimate is missed. A large batch is
/// compute-bound, not bandwidth-bound: there the exact tiled scan is faster
/// than decoding codes probe by probe, and it is taken instead.
pub(crate) fn top_k_quantized(snap: &Snapshot, probes: &[f32], k: usize) -> Vec<Vec<Cand>> {
    if probes.is_empty() {
        return Vec::new();
    }
    let kern = kernels::selected();
    let bounds = screen::screen_bounds(snap);
    if probe_count(snap, probes) >= batch_threshold(kern, bounds.iter().any(Option::is_some)) {
        return tiled::scan(kern, snap, probes, k, &bounds);
    }
    screen::approximate(kern, snap, probes, k, &bounds)
}

/// Probes in a row-major batch.
///
/// # Panics
/// If the batch is not a whole number of probes of the snapshot's dimension
/// (the gallery checked every probe's length).
pub(crate) fn probe_count(snap: &Snapshot, probes: &[f32]) -> usize {
    assert!(
        snap.dim > 0 && probes.len().is_multiple_of(snap.dim),
        "probes of {} values",
        snap.dim
    );
    probes.len() / snap.dim
}

/// The probes at positions `which` of a row-major batch, gathered into one.
pub(crate) fn gather(probes: &[f32], dim: usize, which: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(which.len() * dim);
    for &i in which {
        out.extend_from_slice(&probes[i * dim..(i + 1) * dim]);
    }
    out
}

/// Batches at least this large use the tiled scan in f32.
const TILED_MIN_PROBES: usize = 32;
/// Batches at least this large use the tiled scan when it runs on integer dot
/// products of the codes (measured at 1M rows: 2 probes 175/s against 190/s
/// screened one by one, 4 probes 315/s, 10 probes 577/s against 226/s screened).
const INT_TILED_MIN_PROBES: usize = 4;

/// The smallest batch the tiled scan is faster for, with or without coded segments.
fn batch_threshold(kern: &Kernels, coded: bool) -> usize {
    if coded && kern.fast_u8_dots() {
        INT_TILED_MIN_PROBES
    } else {
        TILED_MIN_PROBES
    }
}

/// For each probe, the `k` best distinct subjects, each represented by its
/// best row, ranked exactly as a brute-force scan ranks them.
///
/// Subjects are ranked by their best row's (distance, id). Scanning the top
/// `K` rows finds every subject whose best row is among them, in order; once
/// that yields `k` distinct subjects, no unseen subject can rank higher (its
/// best row is beyond the K-th). Otherwise `K` grows until it covers every
/// live row, so the answer is exact in every case.
pub(crate) fn identify(
    snap: &Snapshot,
    probes: &[f32],
    k: usize,
    metric: Metric<'_>,
) -> Vec<Vec<Cand>> {
    let live = snap.live_rows();
    let n = probe_count(snap, probes);
    let mut results = vec![Vec::new(); n];
    if live == 0 || k == 0 {
        return results;
    }
    let mut kk = k.saturating_mul(10).max(32).min(live);
    let mut pending: Vec<usize> = (0..n).collect();
    loop {
        let qs = gather(probes, snap.dim, &pending);
        let tops = top_k(snap, &qs, kk, metric);
        let mut next = Vec::new();
        for (j, cands) in tops.into_iter().enumerate() {
            let mut seen = HashSet::new();
            let picked: Vec<Cand> = cands
                .into_iter()
                .filter(|c| seen.insert(snap.subject(c.src as usize, c.row as usize)))
                .take(k)
                .collect();
            if picked.len() >= k || kk >= live {
                results[pending[j]] = picked;
            } else {
                next.push(pending[j]);
            }
        }
        if next.is_empty() {
            return results;
        }
        pending = next;
        kk = kk.saturating_mul(4).min(live);
    }
}

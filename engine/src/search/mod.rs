//! Exact search over a snapshot: top-k embeddings and subject-level identification.
//!
//! The scan is split into blocks of rows across segments and memtable chunks;
//! rayon runs the blocks in parallel, each worker keeping one bounded max-heap
//! per probe, and the heaps are merged at the end. Within a block, each
//! sub-block of rows stays in cache while every probe of the batch is scored
//! against it. Order is total: by distance, then by id, so results are
//! deterministic and equal to a brute-force scan's.

use crate::DIM;
use crate::quantizer::{GAMMA, ProbeForm, ScreenBound, U, coded_low, int_weights};
use crate::snapshot::Snapshot;
pub mod kernels;
use rayon::prelude::*;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

/// Rows per parallel work unit.
const BLOCK_ROWS: usize = 16 * 1024;
/// Rows scored against every probe while they sit in cache (128 KiB of vectors).
const SUB_ROWS: usize = 256;

/// What a scan ranks by: the key is "smaller is better".
#[derive(Debug, Clone, Copy)]
pub(crate) enum Metric<'a> {
    /// Squared L2 distance.
    L2,
    /// The head's score: key = −(Σ w_k·|q_k − x_k| + w_d·‖q − x‖²) (the bias does not change the order).
    Head(&'a [f32; DIM], f32),
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

/// The k smallest candidates seen so far.
#[derive(Debug, Clone)]
struct TopK {
    k: usize,
    heap: BinaryHeap<Cand>,
}

impl TopK {
    fn new(k: usize) -> TopK {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k.min(1024) + 1),
        }
    }
    /// Distances above this cannot enter.
    #[inline]
    fn bound(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::INFINITY
        } else {
            self.heap.peek().map_or(f32::INFINITY, |c| c.dist)
        }
    }
    /// Offer a candidate; true if it entered.
    #[inline]
    fn push(&mut self, c: Cand) -> bool {
        if self.heap.len() < self.k {
            self.heap.push(c);
            true
        } else {
            match self.heap.peek_mut() {
                // Replacing the top sifts once (pop then push would sift twice).
                Some(mut w) if c < *w => {
                    *w = c;
                    true
                }
                _ => false,
            }
        }
    }
    fn merge(&mut self, other: TopK) {
        for c in other.heap {
            self.push(c);
        }
    }
    fn into_sorted(self) -> Vec<Cand> {
        self.heap.into_sorted_vec()
    }
}

/// The scan's work units: (source, first row, end row), `rows` at most each.
fn work_units(snap: &Snapshot, rows: usize) -> Vec<(usize, usize, usize)> {
    let mut units = Vec::new();
    for s in 0..snap.source_count() {
        let n = snap.vectors(s).len();
        for a in (0..n).step_by(rows) {
            units.push((s, a, (a + rows).min(n)));
        }
    }
    units
}

/// Offer the rows `first..first + dists.len()` of source `s` to `top`. The
/// comparison with the heap's bound runs sixteen lanes at a time (vectorised);
/// only rows under it reach the tombstone check and the heap.
#[inline]
fn offer(top: &mut TopK, dists: &[f32], snap: &Snapshot, s: usize, first: usize) {
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
            if snap.deleted(s, row) {
                continue;
            }
            if top.push(Cand {
                dist: d,
                id: snap.id(s, row),
                src: s as u32,
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
fn offer_group(
    top: &mut TopK,
    d: &[f32; kernels::LANES],
    live: usize,
    snap: &Snapshot,
    s: usize,
    first: usize,
) {
    let bound = top.bound();
    let mut mask = 0u32;
    for (lane, &x) in d.iter().enumerate() {
        mask |= ((x <= bound) as u32) << lane;
    }
    mask &= (1u32 << live) - 1;
    if mask != 0 {
        offer(top, &d[..live], snap, s, first);
    }
}

/// Exact top-`k` live rows for each probe, ascending by (distance, id).
pub(crate) fn top_k(
    snap: &Snapshot,
    probes: &[[f32; DIM]],
    k: usize,
    metric: Metric<'_>,
) -> Vec<Vec<Cand>> {
    if matches!(metric, Metric::L2) {
        let bounds = screen_bounds(snap);
        let coded = bounds.iter().any(Option::is_some);
        if probes.len() >= batch_threshold(coded) {
            return top_k_tiled(snap, probes, k, &bounds);
        }
        if coded {
            return top_k_screened(snap, probes, k, &bounds);
        }
    }
    top_k_direct(snap, probes, k, metric)
}

/// The per-probe scan: exact distances from the start.
pub(crate) fn top_k_direct(
    snap: &Snapshot,
    probes: &[[f32; DIM]],
    k: usize,
    metric: Metric<'_>,
) -> Vec<Vec<Cand>> {
    if probes.is_empty() {
        return Vec::new();
    }
    let units = work_units(snap, BLOCK_ROWS);
    let kernel = kernels::selected();
    let empty = || vec![TopK::new(k); probes.len()];
    let tops = units
        .par_iter()
        .fold(empty, |mut acc, &(s, a, b)| {
            let vecs = &snap.vectors(s)[a..b];
            let mut dists = [0f32; SUB_ROWS];
            let mut extra = [0f32; SUB_ROWS];
            for (sub_i, sub) in vecs.chunks(SUB_ROWS).enumerate() {
                let base = a + sub_i * SUB_ROWS;
                for (q, top) in probes.iter().zip(acc.iter_mut()) {
                    match metric {
                        Metric::L2 => kernel.l2sq_many(q, sub, &mut dists),
                        Metric::Head(w, wd) => {
                            kernel.wl1_many(w, q, sub, &mut dists);
                            kernel.l2sq_many(q, sub, &mut extra);
                            for (d, e) in dists.iter_mut().zip(&extra) {
                                *d = -(*d + wd * e);
                            }
                        }
                    }
                    offer(top, &dists[..sub.len()], snap, s, base);
                }
            }
            acc
        })
        .reduce(empty, |mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                x.merge(y);
            }
            a
        });
    tops.into_iter().map(TopK::into_sorted).collect()
}

/// The 8-bit path (for batches below the tiled threshold; larger batches take
/// the exact tiled scan, which is faster there): scan each segment's codes (a quarter of the bytes of the
/// vectors) for `8k + 32` candidates per probe by the code estimate, then
/// re-rank them with the exact kernel call of the direct scan. Returned
/// distances are exact; a true neighbour whose code estimate ranked below the
/// candidates is missed (rare: recall is measured by the benches and tests).
/// Memtable chunks and version-1 segments have no codes and are scanned exactly.
pub(crate) fn top_k_quantized(snap: &Snapshot, probes: &[[f32; DIM]], k: usize) -> Vec<Vec<Cand>> {
    if probes.is_empty() {
        return Vec::new();
    }
    // A large batch is compute-bound, not bandwidth-bound: the tiled exact scan
    // is faster than decoding codes probe by probe, and exact.
    let bounds = screen_bounds(snap);
    if probes.len() >= batch_threshold(bounds.iter().any(Option::is_some)) {
        return top_k_tiled(snap, probes, k, &bounds);
    }
    let keep = k.saturating_mul(8).saturating_add(32);
    let coded: Vec<bool> = (0..snap.source_count())
        .map(|s| snap.sq8(s).is_some())
        .collect();
    let forms = int_forms(snap, probes, &bounds);
    scan_codes(snap, probes, keep, &coded, &forms)
        .into_iter()
        .zip(probes)
        .map(|(top, q)| rerank(snap, q, top, k).0)
        .collect()
}

/// A probe's integer forms, per source (`None` where a source is not scanned
/// through integer dot products).
type IntForms = Vec<Option<(Vec<kernels::IntProbe>, Vec<ProbeForm>)>>;

/// The integer forms of `probes` for every source with a bound in `bounds`,
/// where the CPU has fast integer dot products (otherwise all `None`).
fn int_forms(snap: &Snapshot, probes: &[[f32; DIM]], bounds: &[Option<ScreenBound>]) -> IntForms {
    let fast = kernels::selected().fast_u8_dots();
    bounds
        .iter()
        .enumerate()
        .map(|(s, b)| {
            let b = b.as_ref().filter(|_| fast)?;
            let (min, step, _) = snap.sq8(s)?;
            Some(probes.iter().map(|q| int_probe(q, min, step, b)).unzip())
        })
        .collect()
}

/// For each probe, the `keep` best live rows by an estimate from the 8-bit
/// codes in the sources where `coded[s]`: the integer one of [`int_probe`]
/// where `forms[s]` is given, else `Σ (q_d − min_d − step_d·c_d)²` in f32; and
/// by the exact distance (the direct scan's kernel call) elsewhere.
fn scan_codes(
    snap: &Snapshot,
    probes: &[[f32; DIM]],
    keep: usize,
    coded: &[bool],
    forms: &IntForms,
) -> Vec<TopK> {
    let units = work_units(snap, BLOCK_ROWS);
    let kernel = kernels::selected();
    let empty = || vec![TopK::new(keep); probes.len()];
    units
        .par_iter()
        .fold(empty, |mut acc, &(s, a, b)| {
            let mut dists = [0f32; SUB_ROWS];
            let sq8 = snap.sq8(s).filter(|_| coded[s]);
            let int = forms[s].as_ref().filter(|_| sq8.is_some());
            let qms: Vec<[f32; DIM]> = match sq8 {
                Some((min, _, _)) if int.is_none() => probes
                    .iter()
                    .map(|q| std::array::from_fn(|d| q[d] - min[d]))
                    .collect(),
                _ => Vec::new(),
            };
            let xn = if int.is_some() {
                snap.decoded_norms(s)
            } else {
                &[]
            };
            for start in (a..b).step_by(SUB_ROWS) {
                let end = (start + SUB_ROWS).min(b);
                for (p, top) in acc.iter_mut().enumerate() {
                    match (sq8, int) {
                        (Some((_, _, codes)), Some((ips, pf))) => {
                            let f = kernels::TileForm {
                                c0: pf[p].c0,
                                alpha2: pf[p].alpha2,
                                bound: f32::INFINITY,
                            };
                            let (c, x) = (&codes[start..end], &xn[start..end]);
                            kernel.est_u8_rows(&ips[p], &f, x, c, &mut dists)
                        }
                        (Some((_, step, codes)), None) => {
                            kernel.sq8_l2_many(&qms[p], step, &codes[start..end], &mut dists)
                        }
                        (None, _) => {
                            kernel.l2sq_many(&probes[p], &snap.vectors(s)[start..end], &mut dists)
                        }
                    }
                    offer(top, &dists[..end - start], snap, s, start);
                }
            }
            acc
        })
        .reduce(empty, |mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                x.merge(y);
            }
            a
        })
}

/// Replace the estimates of `top`'s candidates by exact distances (the same
/// kernel call as the direct scan, so the paths agree to the bit) and keep the
/// best `k`. Also returns the worst estimate kept and how many were kept.
///
/// A row whose exact distance is NaN is dropped, as the direct scan never
/// offers one. Writes refuse non-finite values, but a segment opened with
/// metadata verification is trusted, and its codes give such a row a finite
/// estimate.
fn rerank(snap: &Snapshot, q: &[f32; DIM], top: TopK, k: usize) -> (Vec<Cand>, f32, usize) {
    let kernel = kernels::selected();
    let worst = top.heap.peek().map_or(f32::INFINITY, |c| c.dist);
    let mut cands = top.into_sorted();
    let kept = cands.len();
    for c in cands.iter_mut() {
        let row = &snap.vectors(c.src as usize)[c.row as usize];
        let mut d = [0f32];
        kernel.l2sq_many(q, std::slice::from_ref(row), &mut d);
        c.dist = d[0];
    }
    cands.retain(|c| !c.dist.is_nan());
    cands.sort_unstable();
    cands.truncate(k);
    (cands, worst, kept)
}

/// Whether a probe's re-ranked candidates (from [`rerank`]) are provably its
/// top `k`: either every live row was a candidate (fewer than `keep` kept and
/// no estimate was NaN), or `low(W)`, the least exact distance a row outside
/// the candidates can have when the worst kept estimate is `W`, exceeds the
/// k-th exact distance (strictly, so ties by id are settled too).
fn proven(
    (cands, worst, kept): (&[Cand], f32, usize),
    keep: usize,
    live: usize,
    k: usize,
    low: impl FnOnce(f64) -> f64,
) -> bool {
    if kept < keep {
        return kept == live;
    }
    match cands.get(k.wrapping_sub(1)) {
        Some(kth) if worst.is_finite() && kth.dist.is_finite() => {
            low(f64::from(worst)) > f64::from(kth.dist)
        }
        _ => false,
    }
}

/// The bound of each source, or `None` where its codes cannot screen: memtable
/// chunks and version-1 segments (no codes), and quantisers whose step
/// overflowed (values near ±f32::MAX), which the codes do not bound.
fn screen_bounds(snap: &Snapshot) -> Vec<Option<ScreenBound>> {
    (0..snap.source_count())
        .map(|s| {
            snap.sq8(s)
                .and_then(|(min, step, _)| ScreenBound::of(min, step))
        })
        .collect()
}

/// Exact search screened by the 8-bit codes (for batches below the tiled
/// threshold), after the VA-file of Weber, Schek and Blott (1998): scan the
/// codes (a quarter of the bytes) for the best `keep` rows by the estimate,
/// compute their exact distances, then prove that no other row can enter.
///
/// A row outside the candidates has an estimate `e ≥ W`, the worst kept. The
/// estimate is `‖q − x̂‖²` up to rounding, so `‖q − x̂‖ ≥ √(W/(1+γ)) − ε`;
/// and `‖q − x‖ ≥ ‖q − x̂‖ − ρ`, so its exact distance as the kernel computes
/// it is at least `(1−γ)·(√(W/(1+γ)) − ε − ρ)²`. If that exceeds the k-th
/// exact distance found, the answer is the direct scan's, bit for bit and tie
/// for tie. Rows without codes enter with exact distances, which the same
/// bound covers. A probe that the bound cannot settle (near-ties, a crowded
/// neighbourhood) is screened again with sixteen times the candidates, then
/// scanned directly, so the answer is always exact.
fn top_k_screened(
    snap: &Snapshot,
    probes: &[[f32; DIM]],
    k: usize,
    bounds: &[Option<ScreenBound>],
) -> Vec<Vec<Cand>> {
    let coded: Vec<bool> = bounds.iter().map(Option::is_some).collect();
    let live = snap.live_rows();
    let mut results = vec![Vec::new(); probes.len()];
    let mut pending: Vec<usize> = (0..probes.len()).collect();
    let mut keep = k.saturating_mul(8).saturating_add(32);
    for _round in 0..2 {
        if pending.is_empty() {
            return results;
        }
        let qs: Vec<[f32; DIM]> = pending.iter().map(|&i| probes[i]).collect();
        let forms = int_forms(snap, &qs, bounds);
        let mut next = Vec::new();
        for (j, (top, q)) in scan_codes(snap, &qs, keep, &coded, &forms)
            .into_iter()
            .zip(&qs)
            .enumerate()
        {
            let i = pending[j];
            let (cands, worst, kept) = rerank(snap, q, top, k);
            // Rows without codes entered with exact distances (`w` itself
            // bounds them); coded rows, per source, through their estimate.
            let ok = proven((&cands, worst, kept), keep, live, k, |w| {
                let qn = q.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
                let mut low = w;
                for (b, f) in bounds.iter().zip(&forms) {
                    let Some(b) = b else { continue };
                    let near = match f {
                        // The integer estimate is within `err` of ‖q − x̂‖².
                        Some((_, pf)) => (w - pf[j].err).max(0.0).sqrt(),
                        // The f32 estimate: a relative error γ, and each term's
                        // difference off by at most 3u·(|q_d − min_d| + |step_d·c_d|).
                        None => {
                            (w / (1.0 + GAMMA)).sqrt() - 3.0 * U * (qn + b.min_norm + b.range_norm)
                        }
                    };
                    low = low.min(coded_low(near, b.rho));
                }
                low
            });
            if ok {
                results[i] = cands;
            } else {
                next.push(i);
            }
        }
        pending = next;
        keep = keep.saturating_mul(16);
    }
    if !pending.is_empty() {
        let qs: Vec<[f32; DIM]> = pending.iter().map(|&i| probes[i]).collect();
        for (i, r) in pending
            .into_iter()
            .zip(top_k_direct(snap, &qs, k, Metric::L2))
        {
            results[i] = r;
        }
    }
    results
}

/// Batches at least this large use the tiled scan in f32.
const TILED_MIN_PROBES: usize = 32;
/// Batches at least this large use the tiled scan when it runs on integer dot
/// products of the codes (measured at 1M rows: 2 probes 175/s against 190/s
/// screened one by one, 4 probes 315/s, 10 probes 577/s against 226/s screened).
const INT_TILED_MIN_PROBES: usize = 4;

/// The smallest batch the tiled scan is faster for, with or without coded segments.
fn batch_threshold(coded: bool) -> usize {
    if coded && kernels::selected().fast_u8_dots() {
        INT_TILED_MIN_PROBES
    } else {
        TILED_MIN_PROBES
    }
}
/// Rows per work unit of the tiled scan (packed f32: 128 KiB, codes: 32 KiB;
/// they stay in cache while every probe tile passes).
const TILED_UNIT_ROWS: usize = 256;

/// A probe's integer form for one coded source: the quantiser's weights, in
/// the byte layout of the integer kernels.
fn int_probe(
    q: &[f32; DIM],
    min: &[f32; DIM],
    step: &[f32; DIM],
    b: &ScreenBound,
) -> (kernels::IntProbe, ProbeForm) {
    let (m, form) = int_weights(q, min, step, b);
    (kernels::IntProbe::new(&m), form)
}

/// The batch scan. Each probe keeps `4k + 16` candidates by an estimate, their
/// distances are recomputed exactly, and the result is accepted only if no row
/// outside the candidates can beat the k-th (as in [`top_k_screened`]); a probe
/// the bound cannot settle is searched again by [`top_k_screened`], so the
/// answer is always exactly the direct scan's.
///
/// Where the CPU has integer dot products (AVX-512 VNNI), coded segments are
/// scanned through their 8-bit codes: each probe is turned into 16-bit integer
/// weights per segment ([`int_probe`]) and tiles of probes × packed code
/// groups are multiplied exactly in `i32`, twice the multiply-adds per
/// instruction of f32 and a quarter of the bytes. The estimate's error is the
/// codes' (`ρ`, as in the screened scan) plus the weights' rounding, both
/// bounded per probe. Elsewhere, and for memtable chunks and version-1
/// segments, tiles of probes × packed f32 rows give `‖q‖² + ‖x‖² − 2·q·x`,
/// within `512·u·(‖q‖ + ‖x‖)²` of the direct form.
fn top_k_tiled(
    snap: &Snapshot,
    probes: &[[f32; DIM]],
    k: usize,
    bounds: &[Option<ScreenBound>],
) -> Vec<Vec<Cand>> {
    use kernels::{LANES, PACKED_CODES, PACKED_GROUP, TILE_PROBES, TileForm};
    let kernel = kernels::selected();
    let keep = k.saturating_mul(4).saturating_add(16);
    let forms = int_forms(snap, probes, bounds);
    let qn: Vec<f32> = probes
        .iter()
        .map(|q| q.iter().map(|&x| x as f64 * x as f64).sum::<f64>() as f32)
        .collect();
    let units = work_units(snap, TILED_UNIT_ROWS);
    struct Acc {
        tops: Vec<TopK>,
        /// Largest squared norm of the rows scanned in f32.
        max_norm: f32,
        packed: Vec<[f32; PACKED_GROUP]>,
        codes: Vec<[u8; PACKED_CODES]>,
        norms: Vec<f32>,
    }
    let empty = || Acc {
        tops: vec![TopK::new(keep); probes.len()],
        max_norm: 0.0,
        packed: Vec::new(),
        codes: Vec::new(),
        norms: Vec::new(),
    };
    // Few large folds: each starts with empty heaps, which fill with rows
    // that later ones push out (heap work was a quarter of the time with
    // rayon's default splitting).
    let acc = units
        .par_iter()
        .with_min_len(
            units
                .len()
                .div_ceil(2 * rayon::current_num_threads())
                .max(1),
        )
        .fold(empty, |mut acc, &(s, a, b)| {
            let n = b - a;
            let groups = n.div_ceil(LANES);
            acc.norms.clear();
            let coded = forms[s].as_ref().zip(snap.sq8(s));
            match coded {
                Some((_, (_, _, codes))) => {
                    acc.codes.resize(groups, [0u8; PACKED_CODES]);
                    for (g, rows) in codes[a..b].chunks(LANES).enumerate() {
                        kernels::pack_codes(rows, &mut acc.codes[g]);
                    }
                    acc.norms.extend_from_slice(&snap.decoded_norms(s)[a..b]);
                }
                None => {
                    let vecs = &snap.vectors(s)[a..b];
                    acc.packed.resize(groups, [0f32; PACKED_GROUP]);
                    for (g, rows) in vecs.chunks(LANES).enumerate() {
                        kernels::pack_group(rows, &mut acc.packed[g]);
                    }
                    match snap.norms(s) {
                        Some(x) => acc.norms.extend_from_slice(&x[a..b]),
                        None => acc
                            .norms
                            .extend(vecs.iter().map(|v| v.iter().map(|x| x * x).sum::<f32>())),
                    }
                    acc.max_norm = acc.norms.iter().fold(acc.max_norm, |m, &x| m.max(x));
                }
            }
            acc.norms.resize(groups * LANES, 0.0);
            let mut out = [0f32; TILE_PROBES * LANES];
            for t in (0..probes.len()).step_by(TILE_PROBES) {
                let te = (t + TILE_PROBES).min(probes.len());
                for g in 0..groups {
                    let xn = &acc.norms[g * LANES..g * LANES + LANES];
                    let live = (n - g * LANES).min(LANES);
                    let first = a + g * LANES;
                    if let Some(((ips, pf), _)) = coded {
                        // Estimates and the lanes under each probe's bound, in one kernel call.
                        let forms: [TileForm; TILE_PROBES] = std::array::from_fn(|p| {
                            let i = (t + p).min(te - 1);
                            TileForm {
                                c0: pf[i].c0,
                                alpha2: pf[i].alpha2,
                                bound: acc.tops[i].bound(),
                            }
                        });
                        let xn: &[f32; LANES] = xn.try_into().expect("a group of norms");
                        let masks =
                            kernel.est_u8_tile(&ips[t..te], &forms, xn, &acc.codes[g], &mut out);
                        for (p, &m) in masks.iter().enumerate().take(te - t) {
                            if u32::from(m) & ((1u32 << live) - 1) != 0 {
                                let d = &out[p * LANES..p * LANES + live];
                                offer(&mut acc.tops[t + p], d, snap, s, first);
                            }
                        }
                        continue;
                    }
                    kernel.dots_tile(&probes[t..te], &acc.packed[g], &mut out);
                    for p in 0..te - t {
                        // Estimates for all lanes at once (vectorised); `offer` filters them.
                        let mut d = [0f32; LANES];
                        let dots = &out[p * LANES..p * LANES + LANES];
                        let qp = qn[t + p];
                        for ((dl, &x), &dot) in d.iter_mut().zip(xn).zip(dots) {
                            *dl = qp + x - 2.0 * dot;
                        }
                        offer_group(&mut acc.tops[t + p], &d, live, snap, s, first);
                    }
                }
            }
            acc
        })
        .reduce(empty, |mut a, b| {
            for (x, y) in a.tops.iter_mut().zip(b.tops) {
                x.merge(y);
            }
            a.max_norm = a.max_norm.max(b.max_norm);
            a
        });
    let uncoded = forms.iter().any(Option::is_none);
    let max_x = f64::from(acc.max_norm).sqrt();
    let live = snap.live_rows();
    let mut results = Vec::with_capacity(probes.len());
    let mut rescan = Vec::new();
    for (i, top) in acc.tops.into_iter().enumerate() {
        let (cands, worst, kept) = rerank(snap, &probes[i], top, k);
        let ok = proven((&cands, worst, kept), keep, live, k, |w| {
            let mut low = f64::INFINITY;
            if uncoded {
                // |estimate − exact| ≤ 512·u·(‖q‖ + ‖x‖)²: generous for 128-term sums.
                low = w - 512.0 * U * (f64::from(qn[i]).sqrt() + max_x).powi(2);
            }
            for (b, f) in bounds.iter().zip(&forms) {
                if let (Some(b), Some((_, pf))) = (b, f) {
                    low = low.min(coded_low((w - pf[i].err).max(0.0).sqrt(), b.rho));
                }
            }
            low
        });
        if !ok {
            rescan.push(i);
        }
        results.push(cands);
    }
    if !rescan.is_empty() {
        let qs: Vec<[f32; DIM]> = rescan.iter().map(|&i| probes[i]).collect();
        for (i, r) in rescan.into_iter().zip(top_k_screened(snap, &qs, k, bounds)) {
            results[i] = r;
        }
    }
    results
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
    probes: &[[f32; DIM]],
    k: usize,
    metric: Metric<'_>,
) -> Vec<Vec<Cand>> {
    let live = snap.live_rows();
    let mut results = vec![Vec::new(); probes.len()];
    if live == 0 || k == 0 {
        return results;
    }
    let mut kk = k.saturating_mul(10).max(32).min(live);
    let mut pending: Vec<usize> = (0..probes.len()).collect();
    loop {
        let qs: Vec<[f32; DIM]> = pending.iter().map(|&i| probes[i]).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantizer::{decoded_norm, sq8_encode, sq8_params};
    use proptest::prelude::*;

    fn vector(seed: &[f32], scale: f32, offset: f32) -> [f32; DIM] {
        std::array::from_fn(|d| {
            offset + scale * seed[d % seed.len()] * (1.0 + d as f32 / 7.0).sin()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The two bounds the exactness proofs rest on, against f64: every
        /// coded row is within ρ of its vector, and the integer estimate is
        /// within `err` of `‖q − x̂‖²`, near the origin and far from it.
        #[test]
        fn codes_and_integer_estimates_stay_within_their_bounds(
            seeds in prop::collection::vec(prop::collection::vec(-1.0f32..1.0, 1..40), 2..12),
            q in prop::collection::vec(-1.0f32..1.0, 1..40),
            scale in prop::sample::select(vec![1e-3f32, 0.1, 1.0, 30.0]),
            offset in prop::sample::select(vec![0.0f32, 1.0, -250.0, 1000.0]),
        ) {
            let mut rows: Vec<[f32; DIM]> = seeds.iter().map(|s| vector(s, scale, offset)).collect();
            let q = vector(&q, scale * 1.5, offset);
            // The quantiser over `rows` as the segment writer makes it.
            let (min, step) = sq8_params(&rows);
            // A row half a step from a code in every dimension: the worst case of ρ.
            rows.push(std::array::from_fn(|d| min[d] + step[d] * ((d % 200) as f32 + 0.5)));
            let b = ScreenBound::of(&min, &step).expect("a finite quantiser");
            let (ip, f) = int_probe(&q, &min, &step, &b);
            prop_assert!(f.err.is_finite());
            for x in &rows {
                let mut c = [0u8; DIM];
                sq8_encode(x, &min, &step, &mut c);
                let xhat: [f64; DIM] = std::array::from_fn(|d| f64::from(min[d]) + f64::from(step[d]) * f64::from(c[d]));
                let off: f64 = x.iter().zip(&xhat).map(|(&a, &b)| (f64::from(a) - b).powi(2)).sum::<f64>().sqrt();
                prop_assert!(off <= b.rho, "‖x − x̂‖ = {off} above ρ = {}", b.rho);
                // The estimate as the scan computes it: one probe, one row, the scalar kernel.
                let mut packed = [0u8; kernels::PACKED_CODES];
                kernels::pack_codes(std::slice::from_ref(&c), &mut packed);
                let form = kernels::TileForm { c0: f.c0, alpha2: f.alpha2, bound: 0.0 };
                let mut xn = [0f32; kernels::LANES];
                xn[0] = decoded_norm(&min, &step, &c);
                let mut out = [0f32; kernels::TILE_PROBES * kernels::LANES];
                kernels::scalar::est_u8_tile(&[ip], &[form], &xn, &packed, &mut out);
                let est = f64::from(out[0]);
                let exact: f64 = q.iter().zip(&xhat).map(|(&a, &b)| (f64::from(a) - b).powi(2)).sum();
                prop_assert!((est - exact).abs() <= f.err, "estimate {est}, exact {exact}, err {}", f.err);
            }
        }
    }
}

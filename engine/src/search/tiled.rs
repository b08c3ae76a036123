//! The tiled batch scan: tiles of probes × packed groups of rows, for batches
//! large enough to be compute-bound, with the same proof of exactness as the
//! screened scan and the screened scan as its fallback.
//!
//! It owns the packing of each work unit (f32 rows or 8-bit codes), the tile
//! loop and the f32 estimate's error bound. The integer forms, re-ranking,
//! the proof and the fallback are `screen`'s; the quantiser's bounds are
//! `crate::quantizer`'s; heaps and the parallel run are `topk`'s.

use super::Cand;
use super::kernels::{IntTile, Kernels, LANES, TILE_PROBES, TileForm};
use super::screen::{first_keep, int_forms, prefetch, proven, rerank, tile_form};
use super::topk::{
    Source, few_folds, fold_units, offer, offer_exceptions, offer_group, work_units,
};
use super::{Metric, direct, gather, probe_count};
use crate::quantizer::{ScreenBound, U, coded_low};
use crate::snapshot::{ScanCounters, Snapshot};

/// Values per work unit of the tiled scan: 256 rows of 128 values (packed
/// f32: 128 KiB, codes: 32 KiB; they stay in cache while every probe tile
/// passes), fewer rows of longer vectors.
const TILED_UNIT_VALUES: usize = 256 * 128;

/// A worker's scratch: the packed unit, and the largest squared norm of the
/// rows it scanned in f32 (for the error bound).
#[derive(Default)]
struct Scratch {
    /// Largest squared norm of the rows scanned in f32.
    max_norm: f32,
    /// Packed groups of rows, `dim × LANES` floats each.
    packed: Vec<f32>,
    /// Packed groups of codes, `dim × LANES` bytes each.
    codes: Vec<u8>,
    /// Each row's squared norm (decoded, for codes).
    norms: Vec<f32>,
    /// Each coded row's spread about the centre codes (see `CodeStats`).
    spread: Vec<f32>,
}

/// The batch scan. Each probe keeps [`first_keep`] candidates by an estimate, their
/// distances are recomputed exactly, and the result is accepted only if no row
/// outside the candidates can beat the k-th (as in the screened scan). The
/// probes the bound cannot settle (near-ties, crowded neighbourhoods, probes
/// far from every row, a segment whose codes are coarse) stay a batch: they
/// are scanned again together by the f32 tiled scan, whose bound is far
/// tighter, and the few that even it cannot settle by the direct scan,
/// together; so the answer is always exactly the direct scan's, and no probe
/// costs more than the integer pass plus its share of the f32 one.
///
/// Where the CPU has integer dot products (AVX-512 VNNI), coded segments are
/// scanned through their 8-bit codes: each probe is turned into signed-byte
/// weights per segment (`screen::int_forms`) and tiles of probes × packed
/// code groups are multiplied exactly in `i32`, 64 multiply-adds an
/// instruction (four times f32's) and a quarter of the bytes. Rows are ranked
/// by a lower estimate: the codes' error (`ρ`, as in the screened scan) and the
/// weights' rounding (`κ` times the row's spread) are both bounded per probe
/// and row; a segment's exceptions (rows the codes do not bound) are scored
/// exactly in the same pass. Elsewhere, and for memtable chunks and version-1
/// segments, tiles of probes × packed f32 rows give `‖q‖² + ‖x‖² − 2·q·x`,
/// within `4·D·u·(‖q‖ + ‖x‖)²` of the direct form (`D` values a row).
pub(super) fn scan(
    kern: &Kernels,
    snap: &Snapshot,
    probes: &[f32],
    k: usize,
    bounds: &[Option<ScreenBound>],
) -> Vec<Vec<Cand>> {
    let n = probe_count(snap, probes);
    let mut results = vec![Vec::new(); n];
    let mut pending: Vec<usize> = (0..n).collect();
    let mut done = vec![false; n];
    let keep = first_keep(k, snap.dim);
    let counters = &snap.scans;
    // The integer pass where it runs, then f32 (with more candidates if the
    // first pass was f32 already). A large batch first tries the integer pass
    // on a sample of its probes: where the codes cannot settle most of them
    // (segments of an older format with outliers stretch every step), the
    // integer pass would only add to the f32 one, and the whole batch takes
    // the f32 scan at once.
    let mut int = kern.fast_u8_dots() && bounds.iter().any(Option::is_some);
    if int && n >= 4 * SAMPLE_PROBES {
        let sample: Vec<usize> = (0..n)
            .step_by(n / SAMPLE_PROBES)
            .take(SAMPLE_PROBES)
            .collect();
        let qs = gather(probes, snap.dim, &sample);
        let got = scan_round(kern, snap, &qs, k, keep, bounds, true);
        let settled = got.iter().filter(|r| r.is_some()).count();
        ScanCounters::add(&counters.int_tiled, settled);
        ScanCounters::add(&counters.fallbacks, sample.len() - settled);
        for (&i, r) in sample.iter().zip(got) {
            if let Some(cands) = r {
                results[i] = cands;
                done[i] = true;
            }
        }
        int = 2 * settled >= SAMPLE_PROBES;
        pending.retain(|&i| !done[i]);
    }
    let rounds = if int {
        [(true, keep), (false, keep)]
    } else {
        [(false, keep), (false, keep.saturating_mul(16))]
    };
    for (int, keep) in rounds {
        if pending.is_empty() {
            return results;
        }
        let qs = gather(probes, snap.dim, &pending);
        let mut next = Vec::new();
        for (j, r) in scan_round(kern, snap, &qs, k, keep, bounds, int)
            .into_iter()
            .enumerate()
        {
            match r {
                Some(cands) => results[pending[j]] = cands,
                None => next.push(pending[j]),
            }
        }
        let settled = pending.len() - next.len();
        ScanCounters::add(
            if int {
                &counters.int_tiled
            } else {
                &counters.f32_batch
            },
            settled,
        );
        ScanCounters::add(&counters.fallbacks, next.len());
        pending = next;
        if pending.is_empty() {
            return results;
        }
    }
    ScanCounters::add(&counters.direct, pending.len());
    let qs = gather(probes, snap.dim, &pending);
    for (i, r) in pending
        .into_iter()
        .zip(direct::scan(kern, snap, &qs, k, Metric::L2))
    {
        results[i] = r;
    }
    results
}

/// Probes of a large batch the integer pass is tried on first (see [`scan`]).
const SAMPLE_PROBES: usize = 16;

/// One pass of the batch scan with `keep` candidates a probe: each probe's
/// proven top `k`, or `None` where the bound could not settle it.
/// With `int` false, every source is scanned in f32, codes or not.
fn scan_round(
    kern: &Kernels,
    snap: &Snapshot,
    probes: &[f32],
    k: usize,
    keep: usize,
    bounds: &[Option<ScreenBound>],
    int: bool,
) -> Vec<Option<Vec<Cand>>> {
    let dim = snap.dim;
    let n_probes = probe_count(snap, probes);
    let group = dim * LANES;
    let forms = if int {
        int_forms(kern, snap, probes, bounds)
    } else {
        vec![None; bounds.len()]
    };
    // Each coded source's probes interleaved, a tile at a time, checked once.
    let tiles: Vec<Vec<IntTile>> = forms
        .iter()
        .map(|f| {
            f.as_ref().map_or_else(Vec::new, |(ips, _)| {
                ips.chunks(TILE_PROBES)
                    .map(|t| {
                        let tile = IntTile::new(t);
                        Kernels::check_int_tile(&tile, dim);
                        tile
                    })
                    .collect()
            })
        })
        .collect();
    let qn: Vec<f32> = probes
        .chunks_exact(dim)
        .map(|q| q.iter().map(|&x| x as f64 * x as f64).sum::<f64>() as f32)
        .collect();
    let units = work_units(snap, (TILED_UNIT_VALUES / dim).max(LANES));
    let (mut tops, scratch) = fold_units(
        &units,
        few_folds(&units),
        n_probes,
        keep,
        Scratch::default,
        |tops, acc, (s, a, b)| {
            let n = b - a;
            let groups = n.div_ceil(LANES);
            acc.norms.clear();
            acc.spread.clear();
            let coded = forms[s].as_ref().zip(snap.sq8(s)).zip(snap.code_stats(s));
            // A coded pass skips the segment's exceptions and scores them exactly below.
            let src = if coded.is_some() {
                Source::coded(snap, s)
            } else {
                Source::of(snap, s)
            };
            match coded {
                Some(((_, (_, _, codes)), stats)) => {
                    acc.codes.resize(groups * group, 0);
                    let rows = codes[a * dim..b * dim].chunks(LANES * dim);
                    for (rows, out) in rows.zip(acc.codes.chunks_exact_mut(group)) {
                        super::kernels::pack_codes(rows, dim, out);
                    }
                    acc.norms.extend_from_slice(&stats.norms[a..b]);
                    acc.spread.extend_from_slice(&stats.spread[a..b]);
                    acc.spread.resize(groups * LANES, 0.0);
                }
                None => {
                    let vecs = snap.rows(s, a, b);
                    acc.packed.resize(groups * group, 0.0);
                    let rows = vecs.chunks(LANES * dim);
                    for (rows, out) in rows.zip(acc.packed.chunks_exact_mut(group)) {
                        super::kernels::pack_group(rows, dim, out);
                    }
                    match snap.norms(s) {
                        Some(x) => acc.norms.extend_from_slice(&x[a..b]),
                        None => acc.norms.extend(
                            vecs.chunks_exact(dim)
                                .map(|v| v.iter().map(|x| x * x).sum::<f32>()),
                        ),
                    }
                    acc.max_norm = acc.norms.iter().fold(acc.max_norm, |m, &x| m.max(x));
                }
            }
            acc.norms.resize(groups * LANES, 0.0);
            let mut out = [0f32; TILE_PROBES * LANES];
            for t in (0..n_probes).step_by(TILE_PROBES) {
                let te = (t + TILE_PROBES).min(n_probes);
                for g in 0..groups {
                    let xn = &acc.norms[g * LANES..g * LANES + LANES];
                    let live = (n - g * LANES).min(LANES);
                    let first = a + g * LANES;
                    if let Some(((_, pf), _)) = coded.map(|(f, _)| f) {
                        // Estimates and the lanes under each probe's bound, in one kernel call.
                        let forms: [TileForm; TILE_PROBES] = std::array::from_fn(|p| {
                            let i = (t + p).min(te - 1);
                            tile_form(&pf[i], tops[i].bound())
                        });
                        let xn: &[f32; LANES] = xn.try_into().expect("a group of norms");
                        let xs = &acc.spread[g * LANES..g * LANES + LANES];
                        let xs: &[f32; LANES] = xs.try_into().expect("a group of spreads");
                        let codes = &acc.codes[g * group..(g + 1) * group];
                        let tile = &tiles[s][t / TILE_PROBES];
                        let masks = kern.est_u8_tile(tile, &forms, xn, xs, codes, &mut out);
                        for (p, &m) in masks.iter().enumerate().take(te - t) {
                            if u32::from(m) & ((1u32 << live) - 1) != 0 {
                                let d = &out[p * LANES..p * LANES + live];
                                offer(&mut tops[t + p], d, &src, first);
                            }
                        }
                        continue;
                    }
                    let packed = &acc.packed[g * group..(g + 1) * group];
                    kern.dots_tile(&probes[t * dim..te * dim], packed, &mut out);
                    for p in 0..te - t {
                        // Estimates for all lanes at once (vectorised); `offer` filters them.
                        let mut d = [0f32; LANES];
                        let dots = &out[p * LANES..p * LANES + LANES];
                        let qp = qn[t + p];
                        for ((dl, &x), &dot) in d.iter_mut().zip(xn).zip(dots) {
                            *dl = qp + x - 2.0 * dot;
                        }
                        offer_group(&mut tops[t + p], &d, live, &src, first);
                    }
                }
            }
            if coded.is_some() {
                offer_exceptions(kern, snap, probes, tops, (s, a, b));
            }
        },
        |a, b| a.max_norm = a.max_norm.max(b.max_norm),
    );
    let uncoded = forms.iter().any(Option::is_none);
    // Exceptions enter with exact distances: `w` itself bounds them.
    let exact_rows =
        (0..snap.source_count()).any(|s| forms[s].is_some() && !snap.exceptions(s).is_empty());
    let max_x = f64::from(scratch.max_norm).sqrt();
    let live = snap.live_rows();
    // |estimate − exact| ≤ 4·D·u·(‖q‖ + ‖x‖)² (512·u at 128 values: generous
    // for D-term sums, whose rounding is within about D·u of the magnitudes).
    let slack = 4.0 * dim as f64 * U;
    prefetch(snap, &mut tops);
    tops.into_iter()
        .enumerate()
        .map(|(i, top)| {
            let q = &probes[i * dim..(i + 1) * dim];
            let (cands, worst, kept) = rerank(kern, snap, q, top, k);
            let ok = proven((&cands, worst, kept), keep, live, k, |w| {
                let mut low = if exact_rows { w } else { f64::INFINITY };
                if uncoded {
                    low = low.min(w - slack * (f64::from(qn[i]).sqrt() + max_x).powi(2));
                }
                for (b, f) in bounds.iter().zip(&forms) {
                    if let (Some(b), Some((_, pf))) = (b, f) {
                        low = low.min(coded_low((w - pf[i].err).max(0.0).sqrt(), b.rho, dim));
                    }
                }
                low
            });
            ok.then_some(cands)
        })
        .collect()
}

//! The tiled batch scan: tiles of probes × packed groups of rows, for batches
//! large enough to be compute-bound, with the same proof of exactness as the
//! screened scan and the screened scan as its fallback.
//!
//! It owns the packing of each work unit (f32 rows or 8-bit codes), the tile
//! loop and the f32 estimate's error bound. The integer forms, re-ranking,
//! the proof and the fallback are `screen`'s; the quantiser's bounds are
//! `crate::quantizer`'s; heaps and the parallel run are `topk`'s.

use super::Cand;
use super::kernels::{Kernels, LANES, TILE_PROBES, TileForm};
use super::screen::{int_forms, proven, rerank, screened};
use super::topk::{Source, fold_units, offer, offer_group, work_units};
use super::{gather, probe_count};
use crate::quantizer::{ScreenBound, U, coded_low};
use crate::snapshot::Snapshot;

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
    norms: Vec<f32>,
}

/// The batch scan. Each probe keeps `4k + 16` candidates by an estimate, their
/// distances are recomputed exactly, and the result is accepted only if no row
/// outside the candidates can beat the k-th (as in the screened scan); a probe
/// the bound cannot settle is searched again by the screened scan, so the
/// answer is always exactly the direct scan's.
///
/// Where the CPU has integer dot products (AVX-512 VNNI), coded segments are
/// scanned through their 8-bit codes: each probe is turned into 16-bit integer
/// weights per segment (`screen::int_forms`) and tiles of probes × packed code
/// groups are multiplied exactly in `i32`, twice the multiply-adds per
/// instruction of f32 and a quarter of the bytes. The estimate's error is the
/// codes' (`ρ`, as in the screened scan) plus the weights' rounding, both
/// bounded per probe. Elsewhere, and for memtable chunks and version-1
/// segments, tiles of probes × packed f32 rows give `‖q‖² + ‖x‖² − 2·q·x`,
/// within `4·D·u·(‖q‖ + ‖x‖)²` of the direct form (`D` values a row).
pub(super) fn scan(
    kern: &Kernels,
    snap: &Snapshot,
    probes: &[f32],
    k: usize,
    bounds: &[Option<ScreenBound>],
) -> Vec<Vec<Cand>> {
    let dim = snap.dim;
    let n_probes = probe_count(snap, probes);
    let group = dim * LANES;
    let keep = k.saturating_mul(4).saturating_add(16);
    let forms = int_forms(kern, snap, probes, bounds);
    let qn: Vec<f32> = probes
        .chunks_exact(dim)
        .map(|q| q.iter().map(|&x| x as f64 * x as f64).sum::<f64>() as f32)
        .collect();
    let units = work_units(snap, (TILED_UNIT_VALUES / dim).max(LANES));
    // Few large folds: each starts with empty heaps, which fill with rows
    // that later ones push out (heap work was a quarter of the time with
    // rayon's default splitting).
    let min_len = units
        .len()
        .div_ceil(2 * rayon::current_num_threads())
        .max(1);
    let (tops, scratch) = fold_units(
        &units,
        min_len,
        n_probes,
        keep,
        Scratch::default,
        |tops, acc, (s, a, b)| {
            let src = Source::of(snap, s);
            let n = b - a;
            let groups = n.div_ceil(LANES);
            acc.norms.clear();
            let coded = forms[s].as_ref().zip(snap.sq8(s));
            match coded {
                Some((_, (_, _, codes))) => {
                    acc.codes.resize(groups * group, 0);
                    let rows = codes[a * dim..b * dim].chunks(LANES * dim);
                    for (rows, out) in rows.zip(acc.codes.chunks_exact_mut(group)) {
                        super::kernels::pack_codes(rows, dim, out);
                    }
                    acc.norms.extend_from_slice(&snap.decoded_norms(s)[a..b]);
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
                    if let Some(((ips, pf), _)) = coded {
                        // Estimates and the lanes under each probe's bound, in one kernel call.
                        let forms: [TileForm; TILE_PROBES] = std::array::from_fn(|p| {
                            let i = (t + p).min(te - 1);
                            TileForm {
                                c0: pf[i].c0,
                                alpha2: pf[i].alpha2,
                                bound: tops[i].bound(),
                            }
                        });
                        let xn: &[f32; LANES] = xn.try_into().expect("a group of norms");
                        let codes = &acc.codes[g * group..(g + 1) * group];
                        let masks = kern.est_u8_tile(&ips[t..te], &forms, xn, codes, &mut out);
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
        },
        |a, b| a.max_norm = a.max_norm.max(b.max_norm),
    );
    let uncoded = forms.iter().any(Option::is_none);
    let max_x = f64::from(scratch.max_norm).sqrt();
    let live = snap.live_rows();
    let mut results = Vec::with_capacity(n_probes);
    let mut rescan = Vec::new();
    // |estimate − exact| ≤ 4·D·u·(‖q‖ + ‖x‖)² (512·u at 128 values: generous
    // for D-term sums, whose rounding is within about D·u of the magnitudes).
    let slack = 4.0 * dim as f64 * U;
    for (i, top) in tops.into_iter().enumerate() {
        let q = &probes[i * dim..(i + 1) * dim];
        let (cands, worst, kept) = rerank(kern, snap, q, top, k);
        let ok = proven((&cands, worst, kept), keep, live, k, |w| {
            let mut low = f64::INFINITY;
            if uncoded {
                low = w - slack * (f64::from(qn[i]).sqrt() + max_x).powi(2);
            }
            for (b, f) in bounds.iter().zip(&forms) {
                if let (Some(b), Some((_, pf))) = (b, f) {
                    low = low.min(coded_low((w - pf[i].err).max(0.0).sqrt(), b.rho, dim));
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
        let qs = gather(probes, dim, &rescan);
        for (i, r) in rescan.into_iter().zip(screened(kern, snap, &qs, k, bounds)) {
            results[i] = r;
        }
    }
    results
}

//! Scans through the 8-bit codes: the screened exact scan with its proof,
//! and the approximate 8-bit scan with re-ranking.
//!
//! Both scan each coded segment's codes (a quarter of the bytes of the
//! vectors) for candidates by an estimate, then re-rank the candidates with
//! the exact kernel call of the direct scan ([`rerank`]). The screened scan
//! then proves that no other row can beat the k-th ([`proven`]) or searches
//! the probe again; the approximate one does not. This module also turns
//! probes into their integer forms per source ([`int_forms`]), which the tiled
//! scan shares.
//!
//! The quantiser's arithmetic and error bounds (ρ, γ, the integer weights'
//! error) are `crate::quantizer`'s; heaps and the parallel run are `topk`'s;
//! the direct fallback is `direct`'s.

use super::kernels::{self, IntProbe, Kernels};
use super::topk::{
    BLOCK_ROWS, SUB_ROWS, Source, TopK, few_folds, fold_units, offer, offer_exceptions, work_units,
};
use super::{Cand, Metric, direct, gather, probe_count};
use crate::quantizer::{ProbeForm, ScreenBound, U, coded_low, gamma, int_weights};
use crate::snapshot::{ScanCounters, Snapshot};

/// The bound of each source, or `None` where its codes cannot screen: memtable
/// chunks and version-1 segments (no codes), and quantisers whose step
/// overflowed (values near ±f32::MAX), which the codes do not bound.
pub(super) fn screen_bounds(snap: &Snapshot) -> Vec<Option<ScreenBound>> {
    (0..snap.source_count())
        .map(|s| {
            snap.sq8(s)
                .and_then(|(min, step, _)| ScreenBound::of(min, step))
                .map(|b| b.tightened(snap.code_stats(s)))
        })
        .collect()
}

/// A probe's integer forms, per source (`None` where a source is not scanned
/// through integer dot products).
pub(super) type IntForms = Vec<Option<(Vec<IntProbe>, Vec<ProbeForm>)>>;

/// The integer forms of `probes` for every source with a bound in `bounds`,
/// where the kernels have fast integer dot products (otherwise all `None`).
pub(super) fn int_forms(
    kern: &Kernels,
    snap: &Snapshot,
    probes: &[f32],
    bounds: &[Option<ScreenBound>],
) -> IntForms {
    let fast = kern.fast_u8_dots();
    bounds
        .iter()
        .enumerate()
        .map(|(s, b)| {
            let b = b.as_ref().filter(|_| fast)?;
            let (min, step, _) = snap.sq8(s)?;
            let centre = &snap.code_stats(s)?.centre;
            Some(
                probes
                    .chunks_exact(snap.dim)
                    .map(|q| int_probe(q, min, step, centre, b))
                    .unzip(),
            )
        })
        .collect()
}

/// A probe's integer form for one coded source: the quantiser's weights, in
/// the byte layout of the integer kernels.
fn int_probe(
    q: &[f32],
    min: &[f32],
    step: &[f32],
    centre: &[u8],
    b: &ScreenBound,
) -> (IntProbe, ProbeForm) {
    let (m, form) = int_weights(q, min, step, centre, b);
    (IntProbe::new(&m), form)
}

/// A probe's terms of the kernels' lower estimate, with a bound for the mask.
pub(super) fn tile_form(pf: &ProbeForm, bound: f32) -> kernels::TileForm {
    kernels::TileForm {
        c0: pf.c0,
        alpha2: pf.alpha2,
        kappa: pf.kappa,
        bound,
    }
}

/// The 8-bit path (for batches below the tiled threshold; the module root
/// sends larger batches to the exact tiled scan, which is faster there): scan
/// each segment's codes for `8k + 32` candidates per probe by the code
/// estimate, then re-rank them with the exact kernel call of the direct scan.
/// Returned distances are exact; a true neighbour whose code estimate ranked
/// below the candidates is missed (rare: recall is measured by the benches and
/// tests). Memtable chunks and version-1 segments have no codes and are
/// scanned exactly.
pub(super) fn approximate(
    kern: &Kernels,
    snap: &Snapshot,
    probes: &[f32],
    k: usize,
    bounds: &[Option<ScreenBound>],
) -> Vec<Vec<Cand>> {
    let keep = k.saturating_mul(8).saturating_add(32);
    let coded: Vec<bool> = (0..snap.source_count())
        .map(|s| snap.sq8(s).is_some())
        .collect();
    let forms = int_forms(kern, snap, probes, bounds);
    let mut tops = scan_codes(kern, snap, probes, keep, &coded, &forms);
    prefetch(snap, &mut tops);
    tops.into_iter()
        .zip(probes.chunks_exact(snap.dim))
        .map(|(top, q)| rerank(kern, snap, q, top, k).0)
        .collect()
}

/// For each probe, the `keep` best live rows by an estimate from the 8-bit
/// codes in the sources where `coded[s]`: the integer one of [`int_probe`]
/// where `forms[s]` is given, else `Σ (q_d − min_d − step_d·c_d)²` in f32; and
/// by the exact distance (the direct scan's kernel call) elsewhere.
fn scan_codes(
    kern: &Kernels,
    snap: &Snapshot,
    probes: &[f32],
    keep: usize,
    coded: &[bool],
    forms: &IntForms,
) -> Vec<TopK> {
    let dim = snap.dim;
    let units = work_units(snap, BLOCK_ROWS);
    let (tops, ()) = fold_units(
        &units,
        few_folds(&units),
        probe_count(snap, probes),
        keep,
        || (),
        |acc, (), (s, a, b)| {
            let mut dists = [0f32; SUB_ROWS];
            let sq8 = snap.sq8(s).filter(|_| coded[s]);
            // A coded pass skips the segment's exceptions and scores them exactly below.
            let src = if sq8.is_some() {
                Source::coded(snap, s)
            } else {
                Source::of(snap, s)
            };
            let int = forms[s].as_ref().filter(|_| sq8.is_some());
            // Each probe minus the quantiser's minimum, row-major.
            let qms: Vec<f32> = match sq8 {
                Some((min, _, _)) if int.is_none() => probes
                    .chunks_exact(dim)
                    .flat_map(|q| q.iter().zip(min).map(|(x, m)| x - m))
                    .collect(),
                _ => Vec::new(),
            };
            let stats = int.and(snap.code_stats(s));
            let (xn, xs) = stats.map_or((&[][..], &[][..]), |c| (&c.norms[..], &c.spread[..]));
            for start in (a..b).step_by(SUB_ROWS) {
                let end = (start + SUB_ROWS).min(b);
                for (p, top) in acc.iter_mut().enumerate() {
                    match (sq8, int) {
                        (Some((_, _, codes)), Some((ips, pf))) => {
                            let f = tile_form(&pf[p], f32::INFINITY);
                            let c = &codes[start * dim..end * dim];
                            let x = (&xn[start..end], &xs[start..end]);
                            kern.est_u8_rows(&ips[p], &f, x, c, dim, &mut dists);
                        }
                        (Some((_, step, codes)), None) => {
                            let qm = &qms[p * dim..(p + 1) * dim];
                            let c = &codes[start * dim..end * dim];
                            kern.sq8_l2_many(qm, step, c, &mut dists);
                        }
                        (None, _) => {
                            let q = &probes[p * dim..(p + 1) * dim];
                            kern.l2sq_many(q, snap.rows(s, start, end), &mut dists);
                        }
                    }
                    offer(top, &dists[..end - start], &src, start);
                }
            }
            if sq8.is_some() {
                offer_exceptions(kern, snap, probes, acc, (s, a, b));
            }
        },
        |(), ()| {},
    );
    tops
}

/// Ask the kernel to read, all at once, the segment rows the re-rank of
/// `tops` is about to read, when the vectors exceed memory
/// ([`Snapshot::prefetch_rows`]). Those rows come from the disk then,
/// and faulted in one at a time each costs the device a round trip; advised
/// together, they are read with the device's whole queue (measured at 50M
/// rows, 25.6 GB of vectors on a 25 GB machine: batch +15%, identify +60%,
/// single-probe p99 −12%).
pub(super) fn prefetch(snap: &Snapshot, tops: &mut [TopK]) {
    if !snap.prefetch_rows() {
        return;
    }
    let mut rows: Vec<(usize, usize)> = tops.iter_mut().flat_map(TopK::kept_rows).collect();
    rows.sort_unstable();
    rows.dedup();
    snap.will_need(&rows);
}

/// Replace the estimates of `top`'s candidates by exact distances (the same
/// kernel call as the direct scan, so the paths agree to the bit) and keep the
/// best `k`. Also returns the worst estimate kept and how many were kept.
///
/// A row whose exact distance is NaN is dropped, as the direct scan never
/// offers one. Writes refuse non-finite values, but a segment opened with
/// metadata verification is trusted, and its codes give such a row a finite
/// estimate.
pub(super) fn rerank(
    kern: &Kernels,
    snap: &Snapshot,
    q: &[f32],
    top: TopK,
    k: usize,
) -> (Vec<Cand>, f32, usize) {
    let (mut cands, worst) = top.into_sorted();
    let kept = cands.len();
    for c in cands.iter_mut() {
        let row = snap.vector(c.src as usize, c.row as usize);
        let mut d = [0f32];
        kern.l2sq_many(q, row, &mut d);
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
pub(super) fn proven(
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

/// Candidates a probe keeps in the first pass of the screened and batch
/// scans: `8k + 32`, times `⌈√(D/128)⌉`. Distances concentrate as the dimension grows, so more rows
/// fall inside the codes' margin of a probe's k-th; too few candidates and the
/// proof fails, too many and keeping them costs (measured at 1M rows, k = 10:
/// at 128 values 112 settle every probe of 1,000 in the batch scan; at 512,
/// 112 leave a quarter of them unsettled and 224 leave 5).
pub(super) fn first_keep(k: usize, dim: usize) -> usize {
    let scale = (dim.div_ceil(128) as f64).sqrt().ceil() as usize;
    k.saturating_mul(8)
        .saturating_add(32)
        .saturating_mul(scale.max(1))
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
pub(super) fn screened(
    kern: &Kernels,
    snap: &Snapshot,
    probes: &[f32],
    k: usize,
    bounds: &[Option<ScreenBound>],
) -> Vec<Vec<Cand>> {
    let dim = snap.dim;
    let coded: Vec<bool> = bounds.iter().map(Option::is_some).collect();
    let live = snap.live_rows();
    let n = probe_count(snap, probes);
    let mut results = vec![Vec::new(); n];
    let mut pending: Vec<usize> = (0..n).collect();
    let mut keep = first_keep(k, dim);
    for round in 0..2 {
        if pending.is_empty() {
            return results;
        }
        let qs = gather(probes, dim, &pending);
        let forms = int_forms(kern, snap, &qs, bounds);
        let mut next = Vec::new();
        let mut tops = scan_codes(kern, snap, &qs, keep, &coded, &forms);
        prefetch(snap, &mut tops);
        for (j, (top, q)) in tops.into_iter().zip(qs.chunks_exact(dim)).enumerate() {
            let i = pending[j];
            let (cands, worst, kept) = rerank(kern, snap, q, top, k);
            // Rows without codes entered with exact distances (`w` itself
            // bounds them); coded rows, per source, through their estimate.
            let ok = proven((&cands, worst, kept), keep, live, k, |w| {
                let qn = q.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
                let mut low = w;
                for (b, f) in bounds.iter().zip(&forms) {
                    let Some(b) = b else { continue };
                    let near = match f {
                        // The integer lower estimate is at most ‖q − x̂‖² + err.
                        Some((_, pf)) => (w - pf[j].err).max(0.0).sqrt(),
                        // The f32 estimate: a relative error γ, and each term's
                        // difference off by at most 3u·(|q_d − min_d| + |step_d·c_d|).
                        None => {
                            (w / (1.0 + gamma(dim))).sqrt()
                                - 3.0 * U * (qn + b.min_norm + b.range_norm)
                        }
                    };
                    low = low.min(coded_low(near, b.rho, dim));
                }
                low
            });
            if ok {
                results[i] = cands;
            } else {
                next.push(i);
            }
        }
        let counter = if round == 0 {
            &snap.scans.screened
        } else {
            &snap.scans.widened
        };
        ScanCounters::add(counter, pending.len() - next.len());
        ScanCounters::add(&snap.scans.fallbacks, next.len());
        pending = next;
        keep = keep.saturating_mul(16);
    }
    if !pending.is_empty() {
        ScanCounters::add(&snap.scans.direct, pending.len());
        let qs = gather(probes, dim, &pending);
        for (i, r) in pending
            .into_iter()
            .zip(direct::scan(kern, snap, &qs, k, Metric::L2))
        {
            results[i] = r;
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantizer::{CodeStats, sq8_encode, sq8_params};
    use proptest::prelude::*;

    fn vector(seed: &[f32], scale: f32, offset: f32, dim: usize) -> Vec<f32> {
        (0..dim)
            .map(|d| offset + scale * seed[d % seed.len()] * (1.0 + d as f32 / 7.0).sin())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The two bounds the exactness proofs rest on, against f64: every
        /// coded row is within ρ of its vector, and the integer lower
        /// estimate is at most `‖q − x̂‖² + err` (and not far below it: within
        /// its per-row allowance `κ·‖c − μ‖`), near the origin and far from it.
        #[test]
        fn codes_and_integer_estimates_stay_within_their_bounds(
            seeds in prop::collection::vec(prop::collection::vec(-1.0f32..1.0, 1..40), 2..12),
            q in prop::collection::vec(-1.0f32..1.0, 1..40),
            scale in prop::sample::select(vec![1e-3f32, 0.1, 1.0, 30.0]),
            offset in prop::sample::select(vec![0.0f32, 1.0, -250.0, 1000.0]),
            dim in prop::sample::select(vec![16usize, 96, 128, 512, 2048]),
        ) {
            let mut rows: Vec<Vec<f32>> = seeds.iter().map(|s| vector(s, scale, offset, dim)).collect();
            let q = vector(&q, scale * 1.5, offset, dim);
            // The quantiser over `rows` as the segment writer makes it.
            let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
            let (min, step) = sq8_params(&refs, dim);
            // A row half a step from a code in every dimension: the worst case of ρ.
            rows.push((0..dim).map(|d| min[d] + step[d] * ((d % 200) as f32 + 0.5)).collect());
            let codes: Vec<u8> = rows.iter().flat_map(|x| {
                let mut c = vec![0u8; dim];
                sq8_encode(x, &min, &step, &mut c);
                c
            }).collect();
            let flat: Vec<f32> = rows.concat();
            // Few rows: the robust range is their minimum and maximum, no exceptions.
            let stats = CodeStats::of(&min, &step, &codes, &flat, &[], dim);
            let b = ScreenBound::of(&min, &step).expect("a finite quantiser");
            let (ip, f) = int_probe(&q, &min, &step, &stats.centre, &b);
            prop_assert!(f.err.is_finite());
            for (i, (x, c)) in rows.iter().zip(codes.chunks_exact(dim)).enumerate() {
                let xhat: Vec<f64> = (0..dim).map(|d| f64::from(min[d]) + f64::from(step[d]) * f64::from(c[d])).collect();
                let off: f64 = x.iter().zip(&xhat).map(|(&a, &b)| (f64::from(a) - b).powi(2)).sum::<f64>().sqrt();
                prop_assert!(off <= b.rho, "‖x − x̂‖ = {off} above ρ = {}", b.rho);
                prop_assert!(off <= stats.rho, "‖x − x̂‖ = {off} above the data's ρ = {}", stats.rho);
                // The spread against f64.
                let spread: f64 = c.iter().zip(&stats.centre).map(|(&a, &m)| (f64::from(a) - f64::from(m)).powi(2)).sum::<f64>().sqrt();
                prop_assert!(f64::from(stats.spread[i]) >= spread && f64::from(stats.spread[i]) <= spread * (1.0 + 1e-6) + 1e-30);
                // The estimate as the scan computes it: one probe, one row, the scalar kernel.
                let mut packed = vec![0u8; dim * kernels::LANES];
                kernels::pack_codes(c, dim, &mut packed);
                let form = tile_form(&f, 0.0);
                let (mut xn, mut xs) = ([0f32; kernels::LANES], [0f32; kernels::LANES]);
                xn[0] = stats.norms[i];
                xs[0] = stats.spread[i];
                let mut out = [0f32; kernels::TILE_PROBES * kernels::LANES];
                kernels::scalar::est_u8_tile(&kernels::IntTile::new(std::slice::from_ref(&ip)), &[form], &xn, &xs, &packed, &mut out);
                let low = f64::from(out[0]);
                let exact: f64 = q.iter().zip(&xhat).map(|(&a, &b)| (f64::from(a) - b).powi(2)).sum();
                prop_assert!(low <= exact + f.err, "lower estimate {low} above exact {exact} + err {}", f.err);
                let allowance = 2.0 * f64::from(f.kappa) * f64::from(xs[0]);
                prop_assert!(low >= exact - allowance - f.err, "lower estimate {low} more than {allowance} + {} below exact {exact}", f.err);
            }
        }
    }
}

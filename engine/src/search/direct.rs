//! The direct scan: exact distances (or head scores) for every row, no
//! screening. The reference the other scans must equal bit for bit, the path
//! for head ranking and for snapshots without codes, and the last resort of
//! the screened scan.
//!
//! It owns only its loop: heaps, work units and the parallel run are in
//! `topk`, the kernels in `kernels`, the choice of scan in the module root.

use super::kernels::Kernels;
use super::topk::{BLOCK_ROWS, SUB_ROWS, Source, few_folds, fold_units, offer, work_units};
use super::{Cand, Metric};
use crate::snapshot::Snapshot;

/// The per-probe scan: exact distances from the start. Within a block, each
/// sub-block of rows stays in cache while every probe of the batch is scored
/// against it.
pub(super) fn scan(
    kern: &Kernels,
    snap: &Snapshot,
    probes: &[f32],
    k: usize,
    metric: Metric<'_>,
) -> Vec<Vec<Cand>> {
    if probes.is_empty() {
        return Vec::new();
    }
    let dim = snap.dim;
    let units = work_units(snap, BLOCK_ROWS);
    let (tops, ()) = fold_units(
        &units,
        few_folds(&units),
        super::probe_count(snap, probes),
        k,
        || (),
        |acc, (), (s, a, b)| {
            let src = Source::of(snap, s);
            let vecs = snap.rows(s, a, b);
            let mut dists = [0f32; SUB_ROWS];
            let mut extra = [0f32; SUB_ROWS];
            for (sub_i, sub) in vecs.chunks(SUB_ROWS * dim).enumerate() {
                let base = a + sub_i * SUB_ROWS;
                let rows = sub.len() / dim;
                for (q, top) in probes.chunks_exact(dim).zip(acc.iter_mut()) {
                    match metric {
                        Metric::L2 => kern.l2sq_many(q, sub, &mut dists),
                        Metric::Head(w, wd) => {
                            kern.wl1_many(w, q, sub, &mut dists);
                            kern.l2sq_many(q, sub, &mut extra);
                            for (d, e) in dists.iter_mut().zip(&extra) {
                                *d = -(*d + wd * e);
                            }
                        }
                    }
                    offer(top, &dists[..rows], &src, base);
                }
            }
        },
        |(), ()| {},
    );
    tops.into_iter().map(|t| t.into_sorted().0).collect()
}

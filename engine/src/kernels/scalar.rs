//! Scalar reference kernels: the definition every SIMD kernel is tested against.

use crate::DIM;

/// Squared L2 distance, summed left to right.
pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Squared L2 distance from `q` to every row.
pub fn l2sq_many(q: &[f32; DIM], rows: &[[f32; DIM]], out: &mut [f32]) {
    for (o, r) in out.iter_mut().zip(rows) {
        *o = l2sq(q, r);
    }
}

/// Weighted L1: `Σ w_k·|a_k − b_k|`, summed left to right.
pub fn wl1(w: &[f32], a: &[f32], b: &[f32]) -> f32 {
    w.iter()
        .zip(a)
        .zip(b)
        .map(|((w, x), y)| w * (x - y).abs())
        .sum()
}

/// Weighted L1 from `q` to every row.
pub fn wl1_many(w: &[f32; DIM], q: &[f32; DIM], rows: &[[f32; DIM]], out: &mut [f32]) {
    for (o, r) in out.iter_mut().zip(rows) {
        *o = wl1(w, q, r);
    }
}

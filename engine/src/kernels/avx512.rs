//! AVX-512F kernels (x86_64). Callers check `Kernel::Avx512.is_available()`.

use crate::DIM;
use std::arch::x86_64::*;

/// Load 16 floats from `s[at..at + 16]` (bounds-checked slice access).
#[inline]
#[target_feature(enable = "avx512f")]
fn load16(s: &[f32], at: usize) -> __m512 {
    let c: &[f32; 16] = s[at..at + 16].try_into().expect("16 floats");
    // SAFETY: `c` is a valid reference to 16 contiguous f32; loadu has no alignment requirement.
    unsafe { _mm512_loadu_ps(c.as_ptr()) }
}

/// Squared L2 of two equal-length slices.
#[target_feature(enable = "avx512f")]
pub(super) fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut i = 0;
    while i + 32 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            let d = _mm512_sub_ps(load16(a, i + 16 * j), load16(b, i + 16 * j));
            *acc = _mm512_fmadd_ps(d, d, *acc);
        }
        i += 32;
    }
    while i + 16 <= n {
        let d = _mm512_sub_ps(load16(a, i), load16(b, i));
        acc[0] = _mm512_fmadd_ps(d, d, acc[0]);
        i += 16;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    while i < n {
        let d = a[i] - b[i];
        s += d * d;
        i += 1;
    }
    s
}

/// Squared L2 from `q` to each row: the probe stays in registers.
#[target_feature(enable = "avx512f")]
pub(super) fn l2sq_many(q: &[f32; DIM], rows: &[[f32; DIM]], out: &mut [f32]) {
    let mut qv = [_mm512_setzero_ps(); DIM / 16];
    for (j, v) in qv.iter_mut().enumerate() {
        *v = load16(q, 16 * j);
    }
    for (o, r) in out.iter_mut().zip(rows) {
        let mut acc = [_mm512_setzero_ps(); 2];
        for j in 0..DIM / 16 {
            let d = _mm512_sub_ps(load16(r, 16 * j), qv[j]);
            acc[j % 2] = _mm512_fmadd_ps(d, d, acc[j % 2]);
        }
        *o = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    }
}

/// Weighted L1 of equal-length slices.
#[target_feature(enable = "avx512f")]
pub(super) fn wl1(w: &[f32], a: &[f32], b: &[f32]) -> f32 {
    let n = w.len().min(a.len()).min(b.len());
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut i = 0;
    while i + 32 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            let d = _mm512_abs_ps(_mm512_sub_ps(load16(a, i + 16 * j), load16(b, i + 16 * j)));
            *acc = _mm512_fmadd_ps(load16(w, i + 16 * j), d, *acc);
        }
        i += 32;
    }
    while i + 16 <= n {
        let d = _mm512_abs_ps(_mm512_sub_ps(load16(a, i), load16(b, i)));
        acc[0] = _mm512_fmadd_ps(load16(w, i), d, acc[0]);
        i += 16;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    while i < n {
        s += w[i] * (a[i] - b[i]).abs();
        i += 1;
    }
    s
}

/// Weighted L1 from `q` to each row: probe and weights stay in registers.
#[target_feature(enable = "avx512f")]
pub(super) fn wl1_many(w: &[f32; DIM], q: &[f32; DIM], rows: &[[f32; DIM]], out: &mut [f32]) {
    let mut qv = [_mm512_setzero_ps(); DIM / 16];
    let mut wv = [_mm512_setzero_ps(); DIM / 16];
    for j in 0..DIM / 16 {
        qv[j] = load16(q, 16 * j);
        wv[j] = load16(w, 16 * j);
    }
    for (o, r) in out.iter_mut().zip(rows) {
        let mut acc = [_mm512_setzero_ps(); 2];
        for j in 0..DIM / 16 {
            let d = _mm512_abs_ps(_mm512_sub_ps(load16(r, 16 * j), qv[j]));
            acc[j % 2] = _mm512_fmadd_ps(wv[j], d, acc[j % 2]);
        }
        *o = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    }
}

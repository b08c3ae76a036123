//! AVX2 + FMA kernels (x86_64). Called only through the table that
//! `Kernel::Avx2Fma.kernels()` hands out after `is_available()` returned true.

//!
//! The kernels over rows take `const D: usize`: 128 and 512 are compiled with
//! the length known (loops unrolled, bounds checks gone), 0 takes the length
//! from the probe (any multiple of 16).

use std::arch::x86_64::*;

// Index loops keep the register blocking explicit.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Load 8 floats from `s[at..at + 8]` (bounds-checked slice access).
// Index loops keep the register blocking explicit.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn load8(s: &[f32], at: usize) -> __m256 {
    let c: &[f32; 8] = s[at..at + 8].try_into().expect("8 floats");
    // SAFETY: `c` is a valid reference to 8 contiguous f32; loadu has no alignment requirement.
    unsafe { _mm256_loadu_ps(c.as_ptr()) }
}

/// Squared L2 of two equal-length slices.
#[target_feature(enable = "avx2,fma")]
pub(super) fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            let d = _mm256_sub_ps(load8(a, i + 8 * j), load8(b, i + 8 * j));
            *acc = _mm256_fmadd_ps(d, d, *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        let d = _mm256_sub_ps(load8(a, i), load8(b, i));
        acc[0] = _mm256_fmadd_ps(d, d, acc[0]);
        i += 8;
    }
    let mut s = hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    while i < n {
        let d = a[i] - b[i];
        s += d * d;
        i += 1;
    }
    s
}

/// The dimension: `D`, or the probe's length when `D` is 0.
#[inline(always)]
fn dim_of<const D: usize>(len: usize) -> usize {
    debug_assert!(D == 0 || D == len);
    if D == 0 { len } else { D }
}

/// Squared L2 from `q` to each row (the compiler keeps the probe in registers
/// where it fits).
#[target_feature(enable = "avx2,fma")]
pub(super) fn l2sq_many<const D: usize>(q: &[f32], rows: &[f32], out: &mut [f32]) {
    let dim = dim_of::<D>(q.len());
    let q = &q[..dim];
    for (o, r) in out.iter_mut().zip(rows.chunks_exact(dim)) {
        let mut acc = [_mm256_setzero_ps(); 4];
        for j in 0..dim / 8 {
            let d = _mm256_sub_ps(load8(r, 8 * j), load8(q, 8 * j));
            acc[j % 4] = _mm256_fmadd_ps(d, d, acc[j % 4]);
        }
        *o = hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
    }
}

/// Weighted L1 of equal-length slices.
#[target_feature(enable = "avx2,fma")]
pub(super) fn wl1(w: &[f32], a: &[f32], b: &[f32]) -> f32 {
    let n = w.len().min(a.len()).min(b.len());
    let sign = _mm256_set1_ps(-0.0);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            let d = _mm256_andnot_ps(
                sign,
                _mm256_sub_ps(load8(a, i + 8 * j), load8(b, i + 8 * j)),
            );
            *acc = _mm256_fmadd_ps(load8(w, i + 8 * j), d, *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        let d = _mm256_andnot_ps(sign, _mm256_sub_ps(load8(a, i), load8(b, i)));
        acc[0] = _mm256_fmadd_ps(load8(w, i), d, acc[0]);
        i += 8;
    }
    let mut s = hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    while i < n {
        s += w[i] * (a[i] - b[i]).abs();
        i += 1;
    }
    s
}

/// Weighted L1 from `q` to each row.
#[target_feature(enable = "avx2,fma")]
pub(super) fn wl1_many<const D: usize>(w: &[f32], q: &[f32], rows: &[f32], out: &mut [f32]) {
    let dim = dim_of::<D>(q.len());
    let (w, q) = (&w[..dim], &q[..dim]);
    let sign = _mm256_set1_ps(-0.0);
    for (o, r) in out.iter_mut().zip(rows.chunks_exact(dim)) {
        let mut acc = [_mm256_setzero_ps(); 4];
        for j in 0..dim / 8 {
            let d = _mm256_andnot_ps(sign, _mm256_sub_ps(load8(r, 8 * j), load8(q, 8 * j)));
            acc[j % 4] = _mm256_fmadd_ps(load8(w, 8 * j), d, acc[j % 4]);
        }
        *o = hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
    }
}

/// Dot products of up to 8 probes with 16 packed rows (two 8-lane halves).
#[target_feature(enable = "avx2,fma")]
pub(super) fn dots_tile<const D: usize>(
    qs: &[f32],
    packed: &[f32],
    out: &mut [f32; super::TILE_PROBES * super::LANES],
) {
    let dim = dim_of::<D>(packed.len() / super::LANES);
    let n = qs.len() / dim;
    // Six accumulator pairs fit the 16 ymm registers with the two row halves.
    let mut start = 0;
    while start < n {
        let end = (start + 6).min(n);
        let q = &qs[start * dim..end * dim];
        match end - start {
            6 => tile::<D, 6>(q, start, packed, out),
            5 => tile::<D, 5>(q, start, packed, out),
            4 => tile::<D, 4>(q, start, packed, out),
            3 => tile::<D, 3>(q, start, packed, out),
            2 => tile::<D, 2>(q, start, packed, out),
            _ => tile::<D, 1>(q, start, packed, out),
        }
        start = end;
    }
}

// Index loops keep the register blocking explicit.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn tile<const D: usize, const P: usize>(
    qs: &[f32],
    first: usize,
    packed: &[f32],
    out: &mut [f32; super::TILE_PROBES * super::LANES],
) {
    let dim = dim_of::<D>(packed.len() / super::LANES);
    let qs: [&[f32]; P] = std::array::from_fn(|p| &qs[p * dim..(p + 1) * dim]);
    let mut lo = [_mm256_setzero_ps(); P];
    let mut hi = [_mm256_setzero_ps(); P];
    for d in 0..dim {
        let xl = load8(packed, d * 16);
        let xh = load8(packed, d * 16 + 8);
        for p in 0..P {
            let q = _mm256_set1_ps(qs[p][d]);
            lo[p] = _mm256_fmadd_ps(q, xl, lo[p]);
            hi[p] = _mm256_fmadd_ps(q, xh, hi[p]);
        }
    }
    for p in 0..P {
        let at = (first + p) * 16;
        let dst: &mut [f32; 16] = (&mut out[at..at + 16]).try_into().expect("16 floats");
        // SAFETY: `dst` is a valid, exclusive reference to 16 contiguous f32; storeu has no alignment requirement.
        unsafe {
            _mm256_storeu_ps(dst.as_mut_ptr(), lo[p]);
            _mm256_storeu_ps(dst.as_mut_ptr().add(8), hi[p]);
        }
    }
}

/// Squared L2 from a probe to 8-bit coded rows (see `scalar::sq8_l2_many`).
#[target_feature(enable = "avx2,fma")]
pub(super) fn sq8_l2_many<const D: usize>(qm: &[f32], step: &[f32], codes: &[u8], out: &mut [f32]) {
    let dim = dim_of::<D>(qm.len());
    let (qm, step) = (&qm[..dim], &step[..dim]);
    for (o, c) in out.iter_mut().zip(codes.chunks_exact(dim)) {
        let mut acc = [_mm256_setzero_ps(); 4];
        for j in 0..dim / 8 {
            let bytes: &[u8; 8] = c[8 * j..8 * j + 8].try_into().expect("8 codes");
            // SAFETY: `bytes` is a valid reference to 8 bytes; loadl reads exactly 8 bytes, unaligned.
            let raw = unsafe { _mm_loadl_epi64(bytes.as_ptr().cast()) };
            let x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(raw));
            let t = _mm256_fnmadd_ps(load8(step, 8 * j), x, load8(qm, 8 * j));
            acc[j % 4] = _mm256_fmadd_ps(t, t, acc[j % 4]);
        }
        *o = hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
    }
}

/// `crate::quantizer::code_row` compiled with AVX2 and FMA enabled (the
/// compiler vectorises its loops wider; the arithmetic is the same IEEE
/// operations in the same order, so the result is the reference's).
#[target_feature(enable = "avx2,fma")]
pub(super) fn code_row(v: &[f32], min: &[f32], step: &[f32], code: &mut [u8]) -> Option<f64> {
    crate::quantizer::code_row(v, min, step, code)
}

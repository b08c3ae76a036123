//! AVX-512F kernels (x86_64). Called only through the tables that
//! `Kernel::Avx512.kernels()` hands out after `is_available()` returned true
//! (and, for the VNNI ones, `fast_u8_dots()`).

//!
//! The kernels over rows take `const D: usize`: 128 and 512 are compiled with
//! the length known (loops unrolled, bounds checks gone), 0 takes the length
//! from the probe (any multiple of 16).

use std::arch::x86_64::*;

/// The dimension: `D`, or the length given when `D` is 0.
#[inline(always)]
fn dim_of<const D: usize>(len: usize) -> usize {
    debug_assert!(D == 0 || D == len);
    if D == 0 { len } else { D }
}

/// Load 16 floats from `s[at..at + 16]` (bounds-checked slice access).
// Index loops keep the register blocking explicit.
#[allow(clippy::needless_range_loop)]
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

/// Squared L2 from `q` to each row (the compiler keeps the probe in
/// registers where it fits).
#[target_feature(enable = "avx512f")]
pub(super) fn l2sq_many<const D: usize>(q: &[f32], rows: &[f32], out: &mut [f32]) {
    let dim = dim_of::<D>(q.len());
    let q = &q[..dim];
    let row = |r: &[f32]| {
        let mut acc = [_mm512_setzero_ps(); 2];
        for j in 0..dim / 16 {
            let d = _mm512_sub_ps(load16(r, 16 * j), load16(q, 16 * j));
            acc[j % 2] = _mm512_fmadd_ps(d, d, acc[j % 2]);
        }
        _mm512_add_ps(acc[0], acc[1])
    };
    // Sixteen rows at a time share one transposing reduction (two instructions a
    // row instead of a serial horizontal sum each).
    // Every row goes through the same reduction tree, whatever its position,
    // so a distance does not depend on which other rows were scored with it.
    for (g, o) in rows.chunks(16 * dim).zip(out.chunks_mut(16)) {
        let accs: [__m512; 16] = std::array::from_fn(|i| {
            g.get(i * dim..(i + 1) * dim)
                .map_or(_mm512_setzero_ps(), &row)
        });
        store_n(o, hsum16(&accs));
    }
}

/// Store the first `s.len()` (at most 16) lanes of `v` to `s`.
#[inline]
#[target_feature(enable = "avx512f")]
fn store_n(s: &mut [f32], v: __m512) {
    let mut tmp = [0f32; 16];
    // SAFETY: `tmp` is a valid, exclusive array of 16 f32; storeu has no alignment requirement.
    unsafe { _mm512_storeu_ps(tmp.as_mut_ptr(), v) };
    let n = s.len().min(16);
    s[..n].copy_from_slice(&tmp[..n]);
}

/// Lane `i` of the result is the sum of the sixteen lanes of `v[i]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn hsum16(v: &[__m512; 16]) -> __m512 {
    // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3].
    let l1: [__m512; 8] = std::array::from_fn(|i| {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
    });
    // Per 128-bit lane: the partial sums of four rows [a, b, c, d].
    let l2: [__m512; 4] = std::array::from_fn(|i| {
        let (x, y) = (l1[2 * i], l1[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(x, y),
            _mm512_shuffle_ps::<0xEE>(x, y),
        )
    });
    // Fold the four 128-bit lanes of two four-row groups into two lanes each.
    let l3: [__m512; 2] = std::array::from_fn(|i| {
        let (x, y) = (l2[2 * i], l2[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
        )
    });
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(l3[0], l3[1]),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(l3[0], l3[1]),
    )
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

/// Weighted L1 from `q` to each row.
#[target_feature(enable = "avx512f")]
pub(super) fn wl1_many<const D: usize>(w: &[f32], q: &[f32], rows: &[f32], out: &mut [f32]) {
    let dim = dim_of::<D>(q.len());
    let (w, q) = (&w[..dim], &q[..dim]);
    for (o, r) in out.iter_mut().zip(rows.chunks_exact(dim)) {
        let mut acc = [_mm512_setzero_ps(); 2];
        for j in 0..dim / 16 {
            let d = _mm512_abs_ps(_mm512_sub_ps(load16(r, 16 * j), load16(q, 16 * j)));
            acc[j % 2] = _mm512_fmadd_ps(load16(w, 16 * j), d, acc[j % 2]);
        }
        *o = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    }
}

/// Dot products of up to 8 probes with 16 packed rows: one accumulator per probe,
/// each FMA takes its probe value as a broadcast.
#[target_feature(enable = "avx512f")]
pub(super) fn dots_tile<const D: usize>(
    qs: &[f32],
    packed: &[f32],
    out: &mut [f32; super::TILE_PROBES * super::LANES],
) {
    let dim = dim_of::<D>(packed.len() / super::LANES);
    match qs.len() / dim {
        8 => tile::<D, 8>(qs, packed, out),
        7 => tile::<D, 7>(qs, packed, out),
        6 => tile::<D, 6>(qs, packed, out),
        5 => tile::<D, 5>(qs, packed, out),
        4 => tile::<D, 4>(qs, packed, out),
        3 => tile::<D, 3>(qs, packed, out),
        2 => tile::<D, 2>(qs, packed, out),
        1 => tile::<D, 1>(qs, packed, out),
        _ => {}
    }
}

// Index loops keep the register blocking explicit.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f")]
fn tile<const D: usize, const P: usize>(
    qs: &[f32],
    packed: &[f32],
    out: &mut [f32; super::TILE_PROBES * super::LANES],
) {
    let dim = dim_of::<D>(packed.len() / super::LANES);
    let qs: [&[f32]; P] = std::array::from_fn(|p| &qs[p * dim..(p + 1) * dim]);
    let mut acc = [_mm512_setzero_ps(); P];
    for d in 0..dim {
        let x = load16(packed, d * 16);
        for p in 0..P {
            acc[p] = _mm512_fmadd_ps(_mm512_set1_ps(qs[p][d]), x, acc[p]);
        }
    }
    for (p, a) in acc.iter().enumerate() {
        let dst: &mut [f32; 16] = (&mut out[p * 16..p * 16 + 16])
            .try_into()
            .expect("16 floats");
        // SAFETY: `dst` is a valid, exclusive reference to 16 contiguous f32; storeu has no alignment requirement.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), *a) };
    }
}

/// Squared L2 from a probe to 8-bit coded rows (see `scalar::sq8_l2_many`).
#[target_feature(enable = "avx512f")]
pub(super) fn sq8_l2_many<const D: usize>(qm: &[f32], step: &[f32], codes: &[u8], out: &mut [f32]) {
    let dim = dim_of::<D>(qm.len());
    let (qm, step) = (&qm[..dim], &step[..dim]);
    let row = |c: &[u8]| {
        let mut acc = [_mm512_setzero_ps(); 2];
        for j in 0..dim / 16 {
            let bytes: &[u8; 16] = c[16 * j..16 * j + 16].try_into().expect("16 codes");
            // SAFETY: `bytes` is a valid reference to 16 bytes; loadu has no alignment requirement.
            let raw = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
            let x = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(raw));
            let t = _mm512_fnmadd_ps(load16(step, 16 * j), x, load16(qm, 16 * j));
            acc[j % 2] = _mm512_fmadd_ps(t, t, acc[j % 2]);
        }
        _mm512_add_ps(acc[0], acc[1])
    };
    for (g, o) in codes.chunks(16 * dim).zip(out.chunks_mut(16)) {
        let accs: [__m512; 16] = std::array::from_fn(|i| {
            g.get(i * dim..(i + 1) * dim)
                .map_or(_mm512_setzero_ps(), &row)
        });
        store_n(o, hsum16(&accs));
    }
}

/// Integer dot products of up to 8 probes with 16 packed coded rows (see
/// `scalar::dots_u8_tile`): `vpdpbusd` multiplies four code bytes (unsigned) by
/// four weight bytes (signed) per lane.
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) fn dots_u8_tile<const D: usize>(
    qs: &super::IntTile,
    packed: &[u8],
    out: &mut [i32; super::TILE_PROBES * super::LANES],
) {
    match qs.probes() {
        8 => itile::<D, 8>(qs, packed, out),
        7 => itile::<D, 7>(qs, packed, out),
        6 => itile::<D, 6>(qs, packed, out),
        5 => itile::<D, 5>(qs, packed, out),
        4 => itile::<D, 4>(qs, packed, out),
        3 => itile::<D, 3>(qs, packed, out),
        2 => itile::<D, 2>(qs, packed, out),
        1 => itile::<D, 1>(qs, packed, out),
        _ => {}
    }
}

/// Lower distance estimates of up to 8 probes to 16 packed coded rows (see
/// `scalar::est_u8_tile`), with the mask of lanes at or under each probe's bound.
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) fn est_u8_tile<const D: usize>(
    qs: &super::IntTile,
    forms: &[super::TileForm],
    xn: &[f32; super::LANES],
    xs: &[f32; super::LANES],
    packed: &[u8],
    out: &mut [f32; super::TILE_PROBES * super::LANES],
) -> [u16; super::TILE_PROBES] {
    match qs.probes() {
        8 => etile::<D, 8>(qs, forms, xn, xs, packed, out),
        7 => etile::<D, 7>(qs, forms, xn, xs, packed, out),
        6 => etile::<D, 6>(qs, forms, xn, xs, packed, out),
        5 => etile::<D, 5>(qs, forms, xn, xs, packed, out),
        4 => etile::<D, 4>(qs, forms, xn, xs, packed, out),
        3 => etile::<D, 3>(qs, forms, xn, xs, packed, out),
        2 => etile::<D, 2>(qs, forms, xn, xs, packed, out),
        1 => etile::<D, 1>(qs, forms, xn, xs, packed, out),
        _ => [0; super::TILE_PROBES],
    }
}

/// `((c0 + xn) − alpha2·dot) − kappa·xs` for 16 lanes, rounded at each step
/// as the scalar version is (no FMA).
#[inline]
#[target_feature(enable = "avx512f")]
fn lower16(f: &super::TileForm, xn: __m512, xs: __m512, dot: __m512i) -> __m512 {
    let prod = _mm512_mul_ps(_mm512_set1_ps(f.alpha2), _mm512_cvtepi32_ps(dot));
    let est = _mm512_sub_ps(_mm512_add_ps(_mm512_set1_ps(f.c0), xn), prod);
    _mm512_sub_ps(est, _mm512_mul_ps(_mm512_set1_ps(f.kappa), xs))
}

// Index loops keep the register blocking explicit.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
fn etile<const D: usize, const P: usize>(
    qs: &super::IntTile,
    forms: &[super::TileForm],
    xn: &[f32; super::LANES],
    xs: &[f32; super::LANES],
    packed: &[u8],
    out: &mut [f32; super::TILE_PROBES * super::LANES],
) -> [u16; super::TILE_PROBES] {
    let dots = idots::<D, P>(qs, packed);
    let (x, s) = (load16(xn, 0), load16(xs, 0));
    let mut masks = [0u16; super::TILE_PROBES];
    for p in 0..P {
        let f = &forms[p];
        let est = lower16(f, x, s, dots[p]);
        masks[p] = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(est, _mm512_set1_ps(f.bound));
        let dst: &mut [f32; 16] = (&mut out[p * 16..p * 16 + 16])
            .try_into()
            .expect("16 floats");
        // SAFETY: `dst` is a valid, exclusive reference to 16 contiguous f32; storeu has no alignment requirement.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), est) };
    }
    masks
}

// Index loops keep the register blocking explicit.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
fn itile<const D: usize, const P: usize>(
    qs: &super::IntTile,
    packed: &[u8],
    out: &mut [i32; super::TILE_PROBES * super::LANES],
) {
    let dots = idots::<D, P>(qs, packed);
    for p in 0..P {
        let dst: &mut [i32; 16] = (&mut out[p * 16..p * 16 + 16]).try_into().expect("16 ints");
        // SAFETY: `dst` is a valid, exclusive reference to 16 contiguous i32; storeu has no alignment requirement.
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), dots[p]) };
    }
}

/// `Σ_d m_p[d]·code[lane][d]` for P probes, one register of 16 lanes each:
/// one `vpdpbusd` per probe for each 64 codes (four dimensions of 16 rows).
// Index loops keep the register blocking explicit.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
fn idots<const D: usize, const P: usize>(qs: &super::IntTile, packed: &[u8]) -> [__m512i; P] {
    let dim = dim_of::<D>(packed.len() / super::LANES);
    let quads = dim / 4;
    let mut acc = [_mm512_setzero_si512(); P];
    // Each 64 codes meet the tile's P weights for the same quad: both walked
    // in fixed-size chunks, so the loop has no bounds checks.
    let weights = qs.weights()[..quads * P].chunks_exact(P);
    for (w, bytes) in weights.zip(packed[..64 * quads].chunks_exact(64)) {
        let w: &[i32; P] = w.try_into().expect("P weights");
        let bytes: &[u8; 64] = bytes.try_into().expect("64 codes");
        // SAFETY: `bytes` is a valid reference to 64 bytes; loadu has no alignment requirement.
        let x = unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) };
        for p in 0..P {
            acc[p] = _mm512_dpbusd_epi32(acc[p], x, _mm512_set1_epi32(w[p]));
        }
    }
    acc
}

/// `hsum16` on integers: lane `i` of the result is the sum of the sixteen lanes
/// of `v[i]` (exact, wrapping as `i32` addition does).
#[inline]
#[target_feature(enable = "avx512f")]
fn hsum16_epi32(v: &[__m512i; 16]) -> __m512i {
    let l1: [__m512i; 8] = std::array::from_fn(|i| {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b))
    });
    let l2: [__m512i; 4] = std::array::from_fn(|i| {
        let (x, y) = (
            _mm512_castsi512_ps(l1[2 * i]),
            _mm512_castsi512_ps(l1[2 * i + 1]),
        );
        _mm512_add_epi32(
            _mm512_castps_si512(_mm512_shuffle_ps::<0x44>(x, y)),
            _mm512_castps_si512(_mm512_shuffle_ps::<0xEE>(x, y)),
        )
    });
    let l3: [__m512i; 2] = std::array::from_fn(|i| {
        let (x, y) = (l2[2 * i], l2[2 * i + 1]);
        _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0b10_00_10_00>(x, y),
            _mm512_shuffle_i32x4::<0b11_01_11_01>(x, y),
        )
    });
    _mm512_add_epi32(
        _mm512_shuffle_i32x4::<0b10_00_10_00>(l3[0], l3[1]),
        _mm512_shuffle_i32x4::<0b11_01_11_01>(l3[0], l3[1]),
    )
}

/// Lower distance estimates of one probe to row-major coded rows (see
/// `scalar::est_u8_rows`): per row, one `vpdpbusd` for each 64 codes (the
/// last ones masked), then sixteen rows' lanes summed at once. At 128 and 512
/// values the probe's weights stay in registers across the rows.
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) fn est_u8_rows<const D: usize>(
    q: &super::IntProbe,
    form: &super::TileForm,
    xn: &[f32],
    xs: &[f32],
    codes: &[u8],
    out: &mut [f32],
) {
    if xn.is_empty() {
        return;
    }
    let dim = dim_of::<D>(codes.len() / xn.len());
    // 64 codes (16 quads) a register; a last partial register loads only the
    // row's remaining quads (the probe's padding weights are zero).
    let (full, tail) = (dim / 64, (dim % 64) / 4);
    let tail_mask: __mmask16 = ((1u32 << tail) - 1) as __mmask16;
    let wreg = |j: usize| {
        let s: &[i32; 16] = q.w[16 * j..16 * j + 16].try_into().expect("16 quads");
        // SAFETY: `s` is a valid reference to 16 contiguous i32; loadu has no alignment requirement.
        unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
    };
    // Up to 512 values, the weights are loaded once (in registers when `D` is known).
    const HELD: usize = 8;
    let held: [__m512i; HELD] = std::array::from_fn(|j| {
        if j < full.min(HELD) {
            wreg(j)
        } else {
            _mm512_setzero_si512()
        }
    });
    let tail_w = if tail > 0 {
        wreg(full)
    } else {
        _mm512_setzero_si512()
    };
    for (((g, o), x), s) in codes
        .chunks(16 * dim)
        .zip(out.chunks_mut(16))
        .zip(xn.chunks(16))
        .zip(xs.chunks(16))
    {
        // Sixteen rows, each a chain of `vpdpbusd`, written out here rather
        // than in a closure so that the rows' chains interleave and the
        // weights stay in registers.
        let mut accs = [_mm512_setzero_si512(); 16];
        for (acc, c) in accs.iter_mut().zip(g.chunks_exact(dim)) {
            for j in 0..full {
                let bytes: &[u8; 64] = c[64 * j..64 * j + 64].try_into().expect("64 codes");
                // SAFETY: `bytes` is a valid reference to 64 bytes; loadu has no alignment requirement.
                let x = unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) };
                let w = if j < HELD { held[j] } else { wreg(j) };
                *acc = _mm512_dpbusd_epi32(*acc, x, w);
            }
            if tail > 0 {
                let rest = &c[64 * full..];
                debug_assert_eq!(rest.len(), 4 * tail);
                // SAFETY: the mask selects the first `tail` i32 lanes, exactly the
                // `4·tail` bytes of `rest`; masked-off lanes are not read, and
                // loadu has no alignment requirement.
                let x = unsafe { _mm512_maskz_loadu_epi32(tail_mask, rest.as_ptr().cast()) };
                *acc = _mm512_dpbusd_epi32(*acc, x, tail_w);
            }
        }
        let dots = hsum16_epi32(&accs);
        let (mut xv, mut sv) = ([0f32; 16], [0f32; 16]);
        xv[..x.len()].copy_from_slice(x);
        sv[..s.len()].copy_from_slice(s);
        store_n(o, lower16(form, load16(&xv, 0), load16(&sv, 0), dots));
    }
}

/// `crate::quantizer::code_row` compiled with AVX-512F enabled (the
/// compiler vectorises its loops wider; the arithmetic is the same IEEE
/// operations in the same order, so the result is the reference's).
#[target_feature(enable = "avx512f")]
pub(super) fn code_row(v: &[f32], min: &[f32], step: &[f32], code: &mut [u8]) -> Option<f64> {
    crate::quantizer::code_row(v, min, step, code)
}

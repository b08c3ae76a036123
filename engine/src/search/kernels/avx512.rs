//! AVX-512F kernels (x86_64). Called only through the tables that
//! `Kernel::Avx512.kernels()` hands out after `is_available()` returned true
//! (and, for the VNNI ones, `fast_u8_dots()`).

use crate::DIM;
use std::arch::x86_64::*;

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

/// Squared L2 from `q` to each row: the probe stays in registers.
#[target_feature(enable = "avx512f")]
pub(super) fn l2sq_many(q: &[f32; DIM], rows: &[[f32; DIM]], out: &mut [f32]) {
    let mut qv = [_mm512_setzero_ps(); DIM / 16];
    for (j, v) in qv.iter_mut().enumerate() {
        *v = load16(q, 16 * j);
    }
    let row = |r: &[f32; DIM]| {
        let mut acc = [_mm512_setzero_ps(); 2];
        for j in 0..DIM / 16 {
            let d = _mm512_sub_ps(load16(r, 16 * j), qv[j]);
            acc[j % 2] = _mm512_fmadd_ps(d, d, acc[j % 2]);
        }
        _mm512_add_ps(acc[0], acc[1])
    };
    // Sixteen rows at a time share one transposing reduction (two instructions a
    // row instead of a serial horizontal sum each).
    // Every row goes through the same reduction tree, whatever its position,
    // so a distance does not depend on which other rows were scored with it.
    for (g, o) in rows.chunks(16).zip(out.chunks_mut(16)) {
        let accs: [__m512; 16] =
            std::array::from_fn(|i| g.get(i).map_or(_mm512_setzero_ps(), &row));
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

/// Dot products of up to 8 probes with 16 packed rows: one accumulator per probe,
/// each FMA takes its probe value as a broadcast.
#[target_feature(enable = "avx512f")]
pub(super) fn dots_tile(
    qs: &[[f32; DIM]],
    packed: &[f32; super::PACKED_GROUP],
    out: &mut [f32; super::TILE_PROBES * super::LANES],
) {
    match qs.len() {
        8 => tile::<8>(qs, packed, out),
        7 => tile::<7>(qs, packed, out),
        6 => tile::<6>(qs, packed, out),
        5 => tile::<5>(qs, packed, out),
        4 => tile::<4>(qs, packed, out),
        3 => tile::<3>(qs, packed, out),
        2 => tile::<2>(qs, packed, out),
        1 => tile::<1>(qs, packed, out),
        _ => {}
    }
}

// Index loops keep the register blocking explicit.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f")]
fn tile<const P: usize>(
    qs: &[[f32; DIM]],
    packed: &[f32; super::PACKED_GROUP],
    out: &mut [f32; super::TILE_PROBES * super::LANES],
) {
    let mut acc = [_mm512_setzero_ps(); P];
    for d in 0..DIM {
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
pub(super) fn sq8_l2_many(
    qm: &[f32; DIM],
    step: &[f32; DIM],
    codes: &[[u8; DIM]],
    out: &mut [f32],
) {
    let mut qv = [_mm512_setzero_ps(); DIM / 16];
    let mut sv = [_mm512_setzero_ps(); DIM / 16];
    for j in 0..DIM / 16 {
        qv[j] = load16(qm, 16 * j);
        sv[j] = load16(step, 16 * j);
    }
    let row = |c: &[u8; DIM]| {
        let mut acc = [_mm512_setzero_ps(); 2];
        for j in 0..DIM / 16 {
            let bytes: &[u8; 16] = c[16 * j..16 * j + 16].try_into().expect("16 codes");
            // SAFETY: `bytes` is a valid reference to 16 bytes; loadu has no alignment requirement.
            let raw = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
            let x = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(raw));
            let t = _mm512_fnmadd_ps(sv[j], x, qv[j]);
            acc[j % 2] = _mm512_fmadd_ps(t, t, acc[j % 2]);
        }
        _mm512_add_ps(acc[0], acc[1])
    };
    for (g, o) in codes.chunks(16).zip(out.chunks_mut(16)) {
        let accs: [__m512; 16] =
            std::array::from_fn(|i| g.get(i).map_or(_mm512_setzero_ps(), &row));
        store_n(o, hsum16(&accs));
    }
}

/// Integer dot products of up to 8 probes with 16 packed coded rows (see
/// `scalar::dots_u8_tile`): `vpdpbusd` multiplies four code bytes (unsigned) by
/// four probe bytes (signed) per lane, once for the probe's high bytes and once
/// for its low bytes.
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) fn dots_u8_tile(
    qs: &[super::IntProbe],
    packed: &[u8; super::PACKED_CODES],
    out: &mut [i32; super::TILE_PROBES * super::LANES],
) {
    match qs.len() {
        8 => itile::<8>(qs, packed, out),
        7 => itile::<7>(qs, packed, out),
        6 => itile::<6>(qs, packed, out),
        5 => itile::<5>(qs, packed, out),
        4 => itile::<4>(qs, packed, out),
        3 => itile::<3>(qs, packed, out),
        2 => itile::<2>(qs, packed, out),
        1 => itile::<1>(qs, packed, out),
        _ => {}
    }
}

/// Distance estimates of up to 8 probes to 16 packed coded rows (see
/// `scalar::est_u8_tile`), with the mask of lanes at or under each probe's bound.
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) fn est_u8_tile(
    qs: &[super::IntProbe],
    forms: &[super::TileForm],
    xn: &[f32; super::LANES],
    packed: &[u8; super::PACKED_CODES],
    out: &mut [f32; super::TILE_PROBES * super::LANES],
) -> [u16; super::TILE_PROBES] {
    match qs.len() {
        8 => etile::<8>(qs, forms, xn, packed, out),
        7 => etile::<7>(qs, forms, xn, packed, out),
        6 => etile::<6>(qs, forms, xn, packed, out),
        5 => etile::<5>(qs, forms, xn, packed, out),
        4 => etile::<4>(qs, forms, xn, packed, out),
        3 => etile::<3>(qs, forms, xn, packed, out),
        2 => etile::<2>(qs, forms, xn, packed, out),
        1 => etile::<1>(qs, forms, xn, packed, out),
        _ => [0; super::TILE_PROBES],
    }
}

// Index loops keep the register blocking explicit.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
fn etile<const P: usize>(
    qs: &[super::IntProbe],
    forms: &[super::TileForm],
    xn: &[f32; super::LANES],
    packed: &[u8; super::PACKED_CODES],
    out: &mut [f32; super::TILE_PROBES * super::LANES],
) -> [u16; super::TILE_PROBES] {
    let dots = idots::<P>(qs, packed);
    let x = load16(xn, 0);
    let mut masks = [0u16; super::TILE_PROBES];
    for p in 0..P {
        let f = forms[p];
        // (c0 + ‖x̂‖²) − α2·dot, rounded at each step as the scalar version is (no FMA).
        let prod = _mm512_mul_ps(_mm512_set1_ps(f.alpha2), _mm512_cvtepi32_ps(dots[p]));
        let est = _mm512_sub_ps(_mm512_add_ps(_mm512_set1_ps(f.c0), x), prod);
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
fn itile<const P: usize>(
    qs: &[super::IntProbe],
    packed: &[u8; super::PACKED_CODES],
    out: &mut [i32; super::TILE_PROBES * super::LANES],
) {
    let dots = idots::<P>(qs, packed);
    for p in 0..P {
        let dst: &mut [i32; 16] = (&mut out[p * 16..p * 16 + 16]).try_into().expect("16 ints");
        // SAFETY: `dst` is a valid, exclusive reference to 16 contiguous i32; storeu has no alignment requirement.
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), dots[p]) };
    }
}

/// `Σ_d m_p[d]·code[lane][d]` for P probes, one register of 16 lanes each.
// Index loops keep the register blocking explicit.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
fn idots<const P: usize>(
    qs: &[super::IntProbe],
    packed: &[u8; super::PACKED_CODES],
) -> [__m512i; P] {
    let mut hi = [_mm512_setzero_si512(); P];
    let mut lo = [_mm512_setzero_si512(); P];
    for j in 0..super::QUADS {
        let bytes: &[u8; 64] = packed[64 * j..64 * j + 64].try_into().expect("64 codes");
        // SAFETY: `bytes` is a valid reference to 64 bytes; loadu has no alignment requirement.
        let x = unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) };
        for p in 0..P {
            hi[p] = _mm512_dpbusd_epi32(hi[p], x, _mm512_set1_epi32(qs[p].hi[j]));
            lo[p] = _mm512_dpbusd_epi32(lo[p], x, _mm512_set1_epi32(qs[p].lo[j]));
        }
    }
    std::array::from_fn(|p| _mm512_add_epi32(_mm512_slli_epi32::<8>(hi[p]), lo[p]))
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

/// Distance estimates of one probe to row-major coded rows (see
/// `scalar::est_u8_rows`): per row, four `vpdpbusd` (two halves of the row,
/// high and low weight bytes), then sixteen rows' lanes summed at once.
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) fn est_u8_rows(
    q: &super::IntProbe,
    form: &super::TileForm,
    xn: &[f32],
    codes: &[[u8; DIM]],
    out: &mut [f32],
) {
    let load = |s: &[i32]| {
        let s: &[i32; 16] = s.try_into().expect("16 quads");
        // SAFETY: `s` is a valid reference to 16 contiguous i32; loadu has no alignment requirement.
        unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
    };
    let (h0, h1) = (load(&q.hi[..16]), load(&q.hi[16..]));
    let (l0, l1) = (load(&q.lo[..16]), load(&q.lo[16..]));
    let c0 = _mm512_set1_ps(form.c0);
    let alpha2 = _mm512_set1_ps(form.alpha2);
    let row = |c: &[u8; DIM]| {
        // SAFETY: `c` is a valid reference to 128 bytes; each loadu reads 64 of them, unaligned.
        let (x0, x1) = unsafe {
            (
                _mm512_loadu_si512(c.as_ptr().cast()),
                _mm512_loadu_si512(c[64..].as_ptr().cast()),
            )
        };
        let z = _mm512_setzero_si512();
        let hi = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, x0, h0), x1, h1);
        let lo = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, x0, l0), x1, l1);
        _mm512_add_epi32(_mm512_slli_epi32::<8>(hi), lo)
    };
    for ((g, o), x) in codes.chunks(16).zip(out.chunks_mut(16)).zip(xn.chunks(16)) {
        let accs: [__m512i; 16] =
            std::array::from_fn(|i| g.get(i).map_or(_mm512_setzero_si512(), &row));
        let dots = hsum16_epi32(&accs);
        let mut xs = [0f32; 16];
        xs[..x.len()].copy_from_slice(x);
        let prod = _mm512_mul_ps(alpha2, _mm512_cvtepi32_ps(dots));
        let est = _mm512_sub_ps(_mm512_add_ps(c0, load16(&xs, 0)), prod);
        store_n(o, est);
    }
}

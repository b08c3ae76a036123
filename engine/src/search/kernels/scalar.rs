//! Scalar reference kernels: the definition every SIMD kernel is tested against.
//! One version for every dimension: rows are row-major slices, the dimension
//! is the probe's length (or a packed group's length over [`super::LANES`]).

use super::{IntProbe, LANES, TILE_PROBES, TileForm};

/// Squared L2 distance, summed left to right.
pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Squared L2 distance from `q` to every row.
pub fn l2sq_many(q: &[f32], rows: &[f32], out: &mut [f32]) {
    for (o, r) in out.iter_mut().zip(rows.chunks_exact(q.len())) {
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
pub fn wl1_many(w: &[f32], q: &[f32], rows: &[f32], out: &mut [f32]) {
    for (o, r) in out.iter_mut().zip(rows.chunks_exact(q.len())) {
        *o = wl1(w, q, r);
    }
}

/// Dot products of a probe tile with a packed row group (see `Kernels::dots_tile`).
pub fn dots_tile(qs: &[f32], packed: &[f32], out: &mut [f32; TILE_PROBES * LANES]) {
    let dim = packed.len() / LANES;
    for (p, q) in qs.chunks_exact(dim).enumerate() {
        let mut acc = [0f32; LANES];
        for (d, &qd) in q.iter().enumerate() {
            let col = &packed[d * LANES..d * LANES + LANES];
            for (a, &x) in acc.iter_mut().zip(col) {
                *a += qd * x;
            }
        }
        out[p * LANES..p * LANES + LANES].copy_from_slice(&acc);
    }
}

/// Squared L2 from a probe to 8-bit coded rows: `Σ (qm_d − step_d·code_d)²`
/// where `qm = q − min` (the quantiser's minimum subtracted once per probe).
pub fn sq8_l2_many(qm: &[f32], step: &[f32], codes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(codes.chunks_exact(qm.len())) {
        *o = qm
            .iter()
            .zip(step)
            .zip(c)
            .map(|((q, s), &c)| {
                let t = q - s * c as f32;
                t * t
            })
            .sum();
    }
}

/// `m·c` of a probe's weights and one row's codes, the weights' high and low
/// bytes summed apart and combined in `i32`, as every kernel does.
fn dot_row(q: &IntProbe, code: impl Fn(usize) -> u8, dim: usize) -> i32 {
    let (mut hi, mut lo) = (0i32, 0i32);
    for j in 0..dim / 4 {
        let (h, l) = (q.hi[j].to_le_bytes(), q.lo[j].to_le_bytes());
        for b in 0..4 {
            let c = i32::from(code(4 * j + b));
            hi += c * i32::from(h[b].cast_signed());
            lo += c * i32::from(l[b].cast_signed());
        }
    }
    256 * hi + lo
}

/// Integer dot products of a probe tile with a packed group of 8-bit codes
/// (see `Kernel::dots_u8_tile`), summed in `i32`.
pub fn dots_u8_tile(qs: &[IntProbe], packed: &[u8], out: &mut [i32; TILE_PROBES * LANES]) {
    let dim = packed.len() / LANES;
    for (p, q) in qs.iter().enumerate() {
        for lane in 0..LANES {
            let code = |d: usize| packed[64 * (d / 4) + 4 * lane + d % 4];
            out[p * LANES + lane] = dot_row(q, code, dim);
        }
    }
}

/// Distance estimates `(c0 + xn[lane]) − alpha2·(dot as f32)` of a probe tile
/// to a packed group of codes, each operation rounded in turn (no fused
/// multiply-add), and per probe the mask of lanes whose estimate is at most
/// its bound (see `Kernel::est_u8_tile`).
pub fn est_u8_tile(
    qs: &[IntProbe],
    forms: &[TileForm],
    xn: &[f32; LANES],
    packed: &[u8],
    out: &mut [f32; TILE_PROBES * LANES],
) -> [u16; TILE_PROBES] {
    let mut dots = [0i32; TILE_PROBES * LANES];
    dots_u8_tile(qs, packed, &mut dots);
    let mut masks = [0u16; TILE_PROBES];
    for (p, f) in forms.iter().enumerate().take(qs.len()) {
        for lane in 0..LANES {
            let est = (f.c0 + xn[lane]) - f.alpha2 * dots[p * LANES + lane] as f32;
            out[p * LANES + lane] = est;
            masks[p] |= u16::from(est <= f.bound) << lane;
        }
    }
    masks
}

/// Distance estimates of one probe to row-major coded rows, as
/// [`est_u8_tile`] computes them for packed groups: `out[i] = (c0 + xn[i]) −
/// alpha2·(m·codes[i] as f32)`, the dot product exact in `i32`. The
/// dimension is the codes' length over the rows' (`xn`'s).
pub fn est_u8_rows(q: &IntProbe, form: &TileForm, xn: &[f32], codes: &[u8], out: &mut [f32]) {
    if xn.is_empty() {
        return;
    }
    let dim = codes.len() / xn.len();
    for ((o, c), &x) in out.iter_mut().zip(codes.chunks_exact(dim)).zip(xn) {
        let dot = dot_row(q, |d| c[d], dim);
        *o = (form.c0 + x) - form.alpha2 * dot as f32;
    }
}

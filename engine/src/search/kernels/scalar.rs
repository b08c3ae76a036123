//! Scalar reference kernels: the definition every SIMD kernel is tested against.
//! One version for every dimension: rows are row-major slices, the dimension
//! is the probe's length (or a packed group's length over [`super::LANES`]).

use super::{IntProbe, IntTile, LANES, TILE_PROBES, TileForm};

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

/// `m·c` of a probe's signed-byte weights (quad `j` at `w(j)`) and one
/// row's codes, in `i32`.
fn dot_row(w: impl Fn(usize) -> i32, code: impl Fn(usize) -> u8, dim: usize) -> i32 {
    let mut dot = 0i32;
    for j in 0..dim / 4 {
        for (b, &wb) in w(j).to_le_bytes().iter().enumerate() {
            dot += i32::from(code(4 * j + b)) * i32::from(wb.cast_signed());
        }
    }
    dot
}

/// Integer dot products of a probe tile with a packed group of 8-bit codes
/// (see `Kernel::dots_u8_tile`), summed in `i32`.
pub fn dots_u8_tile(qs: &IntTile, packed: &[u8], out: &mut [i32; TILE_PROBES * LANES]) {
    let dim = packed.len() / LANES;
    let (n, w) = (qs.probes(), qs.weights());
    for p in 0..n {
        for lane in 0..LANES {
            let code = |d: usize| packed[64 * (d / 4) + 4 * lane + d % 4];
            out[p * LANES + lane] = dot_row(|j| w[j * n + p], code, dim);
        }
    }
}

/// One lower estimate, `((c0 + xn) − alpha2·(dot as f32)) − kappa·xs`, each
/// operation rounded in turn (no fused multiply-add), as every kernel computes it.
#[inline]
fn lower(f: &TileForm, xn: f32, xs: f32, dot: i32) -> f32 {
    ((f.c0 + xn) - f.alpha2 * dot as f32) - f.kappa * xs
}

/// Lower distance estimates of a probe tile to a packed group of codes
/// (see `Kernel::est_u8_tile`), and per probe the mask of lanes whose
/// estimate is at most its bound.
pub fn est_u8_tile(
    qs: &IntTile,
    forms: &[TileForm],
    xn: &[f32; LANES],
    xs: &[f32; LANES],
    packed: &[u8],
    out: &mut [f32; TILE_PROBES * LANES],
) -> [u16; TILE_PROBES] {
    let mut dots = [0i32; TILE_PROBES * LANES];
    dots_u8_tile(qs, packed, &mut dots);
    let mut masks = [0u16; TILE_PROBES];
    for (p, f) in forms.iter().enumerate().take(qs.probes()) {
        for lane in 0..LANES {
            let est = lower(f, xn[lane], xs[lane], dots[p * LANES + lane]);
            out[p * LANES + lane] = est;
            masks[p] |= u16::from(est <= f.bound) << lane;
        }
    }
    masks
}

/// Lower distance estimates of one probe to row-major coded rows, as
/// [`est_u8_tile`] computes them for packed groups. The dimension is the
/// codes' length over the rows' (`xn`'s).
pub fn est_u8_rows(
    q: &IntProbe,
    form: &TileForm,
    xn: &[f32],
    xs: &[f32],
    codes: &[u8],
    out: &mut [f32],
) {
    if xn.is_empty() {
        return;
    }
    let dim = codes.len() / xn.len();
    for (((o, c), &x), &s) in out.iter_mut().zip(codes.chunks_exact(dim)).zip(xn).zip(xs) {
        *o = lower(form, x, s, dot_row(|j| q.w[j], |d| c[d], dim));
    }
}

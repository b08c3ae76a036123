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

/// Dot products of a probe tile with a packed row group (see `Kernel::dots_tile`).
pub fn dots_tile(
    qs: &[[f32; DIM]],
    packed: &[f32; super::PACKED_GROUP],
    out: &mut [f32; super::TILE_PROBES * super::LANES],
) {
    use super::LANES;
    for (p, q) in qs.iter().enumerate() {
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
pub fn sq8_l2_many(qm: &[f32; DIM], step: &[f32; DIM], codes: &[[u8; DIM]], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(codes) {
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

/// Integer dot products of a probe tile with a packed group of 8-bit codes
/// (see `Kernel::dots_u8_tile`), summed in `i32`.
pub fn dots_u8_tile(
    qs: &[super::IntProbe],
    packed: &[u8; super::PACKED_CODES],
    out: &mut [i32; super::TILE_PROBES * super::LANES],
) {
    use super::{LANES, QUADS};
    for (p, q) in qs.iter().enumerate() {
        for lane in 0..LANES {
            let (mut hi, mut lo) = (0i32, 0i32);
            for j in 0..QUADS {
                let (h, l) = (q.hi[j].to_le_bytes(), q.lo[j].to_le_bytes());
                for b in 0..4 {
                    let c = i32::from(packed[64 * j + 4 * lane + b]);
                    hi += c * i32::from(h[b].cast_signed());
                    lo += c * i32::from(l[b].cast_signed());
                }
            }
            out[p * LANES + lane] = 256 * hi + lo;
        }
    }
}

/// Distance estimates `(c0 + xn[lane]) − alpha2·(dot as f32)` of a probe tile
/// to a packed group of codes, each operation rounded in turn (no fused
/// multiply-add), and per probe the mask of lanes whose estimate is at most
/// its bound (see `Kernel::est_u8_tile`).
pub fn est_u8_tile(
    qs: &[super::IntProbe],
    forms: &[super::TileForm],
    xn: &[f32; super::LANES],
    packed: &[u8; super::PACKED_CODES],
    out: &mut [f32; super::TILE_PROBES * super::LANES],
) -> [u16; super::TILE_PROBES] {
    use super::LANES;
    let mut dots = [0i32; super::TILE_PROBES * LANES];
    dots_u8_tile(qs, packed, &mut dots);
    let mut masks = [0u16; super::TILE_PROBES];
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
/// alpha2·(m·codes[i] as f32)`, the dot product exact in `i32`.
pub fn est_u8_rows(
    q: &super::IntProbe,
    form: &super::TileForm,
    xn: &[f32],
    codes: &[[u8; DIM]],
    out: &mut [f32],
) {
    for ((o, c), &x) in out.iter_mut().zip(codes).zip(xn) {
        let (mut hi, mut lo) = (0i32, 0i32);
        for j in 0..super::QUADS {
            let (h, l) = (q.hi[j].to_le_bytes(), q.lo[j].to_le_bytes());
            for b in 0..4 {
                let v = i32::from(c[4 * j + b]);
                hi += v * i32::from(h[b].cast_signed());
                lo += v * i32::from(l[b].cast_signed());
            }
        }
        *o = (form.c0 + x) - form.alpha2 * (256 * hi + lo) as f32;
    }
}

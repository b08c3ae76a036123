//! The 8-bit scalar quantiser: everything about a segment's codes, in one place.
//!
//! A version-2 segment stores, next to its vectors, a per-dimension minimum
//! and step ([`sq8_params`], computed when the segment is written) and one
//! code per value ([`sq8_encode`]: `round((x − min) / step)`), so a row
//! decodes to `x̂_d = min_d + step_d·c_d` ([`decoded_norm`] is `‖x̂‖²`). This
//! module owns that arithmetic and the error bounds the exact scans rest on:
//! how far a decoded row can be from its vector ([`ScreenBound`]), how the
//! f32 kernels round ([`U`], [`GAMMA`]), the least exact distance a row can
//! have given its estimate ([`coded_low`]), and the integer weights a probe is
//! turned into for the VNNI scan with their error ([`int_weights`],
//! [`ProbeForm`], [`INT_WEIGHT_MAX`]).
//!
//! It leaves to others: the section layout to `crate::storage::format`,
//! writing and mapping the codes to `crate::storage::segment`, the scans and
//! their proofs of exactness to `crate::search`, and the kernels (with the
//! byte layout of an integer probe, `IntProbe`) to `crate::search::kernels`.
//! It sits below both storage and search and imports neither, so the writer
//! (storage) and the reader (search) share one definition without an import
//! circle.

/// Per-dimension minimum and step of the 8-bit scalar quantiser of `rows`
/// (each of `dim` values). A dimension with a non-finite minimum or maximum
/// (no rows) gets minimum 0 and step 0; a step that overflows (values near
/// ±f32::MAX) is 0.
pub(crate) fn sq8_params<'a>(
    rows: impl IntoIterator<Item = &'a [f32]>,
    dim: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut lo = vec![f32::INFINITY; dim];
    let mut hi = vec![f32::NEG_INFINITY; dim];
    for v in rows {
        for d in 0..dim {
            lo[d] = lo[d].min(v[d]);
            hi[d] = hi[d].max(v[d]);
        }
    }
    let mut step = vec![0f32; dim];
    for d in 0..dim {
        if !lo[d].is_finite() || !hi[d].is_finite() {
            lo[d] = 0.0;
            continue;
        }
        let s = (hi[d] - lo[d]) / 255.0;
        // A step that overflows (values near ±f32::MAX) cannot code; codes 0 then
        // give a poor estimate, which the exact re-rank or the exact mode corrects.
        step[d] = if s.is_finite() { s } else { 0.0 };
    }
    (lo, step)
}

/// `‖x̂‖²` of a coded row, `x̂_d = min_d + step_d·c_d`, summed in f64.
pub(crate) fn decoded_norm(min: &[f32], step: &[f32], c: &[u8]) -> f32 {
    let x2: f64 = (0..c.len())
        .map(|d| (f64::from(min[d]) + f64::from(step[d]) * f64::from(c[d])).powi(2))
        .sum();
    x2 as f32
}

/// Code one vector: `round((x − min) / step)`, clamped to 0..=255.
pub(crate) fn sq8_encode(v: &[f32], min: &[f32], step: &[f32], out: &mut [u8]) {
    for d in 0..out.len() {
        out[d] = if step[d] > 0.0 {
            ((v[d] - min[d]) / step[d]).round().clamp(0.0, 255.0) as u8
        } else {
            0
        };
    }
}

/// Unit roundoff of f32.
pub(crate) const U: f64 = f32::EPSILON as f64 / 2.0;
/// Relative error allowed for a `dim`-term f32 sum of squares, twice the
/// classic `n·u` bound (with room for the few extra roundings of each term).
pub(crate) fn gamma(dim: usize) -> f64 {
    2.0 * (dim as f64 + 8.0) * U
}

/// The least exact distance (as the f32 kernel rounds it, over `dim` terms)
/// of a coded row with `‖q − x̂‖ ≥ near`, its codes being within `rho` of its vector.
pub(crate) fn coded_low(near: f64, rho: f64, dim: usize) -> f64 {
    let r = (near - rho).max(0.0);
    (1.0 - gamma(dim)) * r * r
}

/// What the exactness proof of the screened scan needs from a segment's
/// quantiser: `rho` bounds `‖x − x̂‖` for every row, where `x̂_d = min_d +
/// step_d·c_d` is the decoded vector (codes round to nearest, so each
/// coordinate is off by at most half a step); `min_norm` and `range_norm`
/// bound the magnitudes the estimate's rounding error scales with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScreenBound {
    pub rho: f64,
    pub min_norm: f64,
    pub range_norm: f64,
}

impl ScreenBound {
    /// The bound of a quantiser, or `None` where its codes cannot screen
    /// (a step that overflowed: values near ±f32::MAX, which the codes do not bound).
    pub(crate) fn of(min: &[f32], step: &[f32]) -> Option<ScreenBound> {
        let (mut step2, mut min2) = (0f64, 0f64);
        for (&m, &st) in min.iter().zip(step) {
            if !m.is_finite() || !st.is_finite() || st < 0.0 || (st == 0.0 && m.abs() > 1e30) {
                return None;
            }
            step2 += f64::from(st) * f64::from(st);
            min2 += f64::from(m) * f64::from(m);
        }
        // Half a step per coordinate, plus the rounding of the division that chose
        // the code; a zero step (one value, or a range below 255 subnormals) is
        // off by at most 1e-37 per coordinate.
        let rho = (0.5 + 1e-3) * step2.sqrt() + 1e-37 * (min.len() as f64).sqrt();
        Some(ScreenBound {
            rho,
            min_norm: min2.sqrt(),
            range_norm: 255.0 * step2.sqrt(),
        })
    }
}

/// Largest weight magnitude of a probe's integer form at any dimension:
/// `256·127 + 127`, so the high byte of a weight stays in `-127..=127` (the
/// low one in `-128..=127`).
pub const INT_WEIGHT_MAX: i32 = 256 * 127 + 127;

/// Largest weight magnitude at dimension `dim`: [`INT_WEIGHT_MAX`] up to 256
/// values, smaller above, so that the kernels' sums stay inside `i32`. The
/// high bytes' sum `H` is at most `dim·255·(W + 128)/256` and the low bytes'
/// `L` at most `dim·255·128`, and `256·H + L` is formed in `i32`: with
/// `W = (2^31 − 1)/(255·dim) − 256`, `256·H + L ≤ dim·255·(W + 256) < 2^31`.
/// At 512 values that is 16,192 (weights of 15 bits), at 2,048 3,856.
pub fn int_weight_max(dim: usize) -> i32 {
    let dim = i64::try_from(dim.max(1)).unwrap_or(i64::MAX / 255);
    let fit = i64::from(i32::MAX) / (255 * dim) - 256;
    i32::try_from(fit.clamp(1, i64::from(INT_WEIGHT_MAX))).unwrap_or(1)
}

/// A probe's integer form for one coded source: weights `m ≈ (q ∘ step)/α`,
/// so that `q·x̂ = q·min + Σ_d q_d·step_d·c_d ≈ q·min + α·(m·c)`, with the
/// distance estimate `c0 + ‖x̂‖² − 2α·(m·c)`, `c0 = ‖q‖² − 2·q·min`, and
/// `err` bounding its distance from `‖q − x̂‖²`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProbeForm {
    pub alpha2: f32,
    pub c0: f32,
    pub err: f64,
}

/// The integer weights `m` (each within ±[`INT_WEIGHT_MAX`]) of probe `q` for
/// a source with quantiser `min`, `step` and bound `b`, with the terms and
/// error of its estimate.
pub(crate) fn int_weights(
    q: &[f32],
    min: &[f32],
    step: &[f32],
    b: &ScreenBound,
) -> (Vec<i32>, ProbeForm) {
    let wlim = f64::from(int_weight_max(q.len()));
    // Products of two f32 are exact in f64.
    let w: Vec<f64> = q
        .iter()
        .zip(step)
        .map(|(&x, &s)| f64::from(x) * f64::from(s))
        .collect();
    let wmax = w.iter().fold(0f64, |m, x| m.max(x.abs()));
    let alpha = (wmax / wlim) as f32;
    let a = f64::from(alpha);
    let m: Vec<i32> = w
        .iter()
        .map(|&wd| {
            if a > 0.0 {
                (wd / a).round().clamp(-wlim, wlim) as i32
            } else {
                0
            }
        })
        .collect();
    // |w·c − α·(m·c)| ≤ Σ_d |w_d − α·m_d|·c_d ≤ 255·Σ_d |w_d − α·m_d|.
    let e_dot = 255.0
        * w.iter()
            .zip(&m)
            .map(|(&wd, &md)| (wd - a * f64::from(md)).abs())
            .sum::<f64>();
    let qn2: f64 = q.iter().map(|&x| f64::from(x).powi(2)).sum();
    let qmin: f64 = q
        .iter()
        .zip(min)
        .map(|(&x, &m)| f64::from(x) * f64::from(m))
        .sum();
    let c0 = qn2 - 2.0 * qmin;
    // Magnitudes the f32 estimate rounds at: |c0|, ‖x̂‖² ≤ (‖min‖ + ‖step·c‖)², 2α·|m·c|.
    let mabs: f64 = m.iter().map(|&x| f64::from(x.abs())).sum();
    let xmax = b.min_norm + b.range_norm;
    let mag = c0.abs() + xmax * xmax + 2.0 * a * 255.0 * mabs;
    // Far inside f32's range every term of the estimate is finite, so no
    // estimate is NaN (which would drop a row unseen); otherwise (values near
    // ±f32::MAX) the bound is infinite and the probe is searched again.
    let finite = alpha.is_finite() && mag.is_finite() && mag < 1e30;
    let form = ProbeForm {
        alpha2: 2.0 * alpha,
        c0: c0 as f32,
        err: if finite {
            2.0 * e_dot + 16.0 * U * mag
        } else {
            f64::INFINITY
        },
    };
    (m, form)
}

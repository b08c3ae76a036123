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

/// Rows sampled (evenly spaced) for the quantiser's quantiles.
const QUANTILE_SAMPLE: usize = 1 << 16;
/// The quantile of each tail the quantiser's range starts from.
const QUANTILE_TAIL: f64 = 0.01;

/// Per-dimension minimum and step of the 8-bit scalar quantiser of `rows`
/// (each of `dim` values), from version 5 robust to outliers.
///
/// Each dimension's range starts from the 1% and 99% quantiles `q1`, `q99`
/// of (up to 65,536 evenly spaced) rows and reaches out by `q99 − q1` on
/// each side, but never past the dimension's minimum and maximum. Data
/// spread like face embeddings (the extremes of a million rows within about
/// ±5σ, the reach ±7σ) keep their minimum and maximum; a few rows far out in
/// some dimension (a failed embedding, an unnormalised vector, up to 1% of
/// the rows) no longer stretch every row's steps: their values are clamped
/// and the rows become the segment's exceptions ([`coded_within`]), scanned
/// exactly. A dimension with a non-finite minimum or maximum (no rows) gets
/// minimum 0 and step 0; a step that overflows (values near ±f32::MAX) is 0.
#[cfg(test)]
pub(crate) fn sq8_params(rows: &[&[f32]], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let mut range = Sq8Range::new(dim);
    for v in rows {
        range.add(v);
    }
    let stride = sample_stride(rows.len());
    let sample: Vec<&[f32]> = rows.iter().step_by(stride).copied().collect();
    range.params(&sample)
}

/// Every `sample_stride(n)`-th row of `n` (from the first) is the sample
/// [`Sq8Range::params`] takes its quantiles from.
pub(crate) fn sample_stride(n: usize) -> usize {
    n.div_ceil(QUANTILE_SAMPLE).max(1)
}

/// The minimum and maximum of each dimension over rows seen one at a time:
/// [`sq8_params`] for a writer that streams its rows (a bulk import) and
/// keeps only the sample.
pub(crate) struct Sq8Range {
    lo: Vec<f32>,
    hi: Vec<f32>,
}

impl Sq8Range {
    pub(crate) fn new(dim: usize) -> Sq8Range {
        Sq8Range {
            lo: vec![f32::INFINITY; dim],
            hi: vec![f32::NEG_INFINITY; dim],
        }
    }

    pub(crate) fn add(&mut self, v: &[f32]) {
        for ((lo, hi), &x) in self.lo.iter_mut().zip(&mut self.hi).zip(v) {
            *lo = lo.min(x);
            *hi = hi.max(x);
        }
    }

    /// The range of the rows of both.
    pub(crate) fn merge(mut self, other: &Sq8Range) -> Sq8Range {
        self.add(&other.lo);
        self.add(&other.hi);
        self
    }

    /// The quantiser's minimum and step, from the range and the sample of rows
    /// (every [`sample_stride`]-th).
    pub(crate) fn params(self, sample: &[&[f32]]) -> (Vec<f32>, Vec<f32>) {
        use rayon::prelude::*;
        let Sq8Range { mut lo, hi } = self;
        let dim = lo.len();
        let m = sample.len();
        let mut step = vec![0f32; dim];
        // Columns of `GROUP` dimensions at a time, copied out of the rows in
        // tiles (each row's values are read once, not once a dimension),
        // then each column's quantiles on its own thread.
        const GROUP: usize = 32;
        const TILE: usize = 64;
        let mut cols = vec![0f32; GROUP.min(dim) * m];
        for d0 in (0..dim).step_by(GROUP) {
            let g = GROUP.min(dim - d0);
            for (t, tile) in sample.chunks(TILE).enumerate() {
                for k in 0..g {
                    let col = &mut cols[k * m + t * TILE..k * m + t * TILE + tile.len()];
                    for (c, row) in col.iter_mut().zip(tile) {
                        *c = row[d0 + k];
                    }
                }
            }
            let groups = cols.par_chunks_mut(m.max(1)).take(g);
            groups
                .zip(&mut lo[d0..d0 + g])
                .zip(&hi[d0..d0 + g])
                .zip(&mut step[d0..d0 + g])
                .for_each(|(((col, lo), &hi), step)| {
                    (*lo, *step) = column_params(col, *lo, hi);
                });
        }
        (lo, step)
    }
}

/// One dimension's minimum and step from its range `lo..=hi` and its
/// sample `col` (reordered): the range narrowed to the sample's 1%–99%
/// quantiles widened by their distance on each side (robust to outliers,
/// whose rows become exceptions).
fn column_params(col: &mut [f32], mut lo: f32, mut hi: f32) -> (f32, f32) {
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 0.0);
    }
    if let Some(last) = col.len().checked_sub(1) {
        let last = last as f64;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "indices within the sample"
        )]
        let (i1, i99) = (
            (last * QUANTILE_TAIL).floor() as usize,
            (last * (1.0 - QUANTILE_TAIL)).ceil() as usize,
        );
        let q1 = *col.select_nth_unstable_by(i1, f32::total_cmp).1;
        // Everything at or above i1 is now past it: the upper quantile is there.
        let q99 = *col[i1..].select_nth_unstable_by(i99 - i1, f32::total_cmp).1;
        let reach = q99 - q1;
        let (a, b) = ((q1 - reach).max(lo), (q99 + reach).min(hi));
        if a.is_finite() && b.is_finite() && a <= b {
            (lo, hi) = (a, b);
        }
    }
    let s = (hi - lo) / 255.0;
    // A step that overflows (values near ±f32::MAX) cannot code; codes 0 then
    // give a poor estimate, which the exact re-rank or the exact mode corrects.
    (lo, if s.is_finite() { s } else { 0.0 })
}

/// Whether a row's codes are within half a step (and the rounding slack
/// [`ScreenBound`] allows) of its values in every dimension, so that the
/// segment's `ρ` bounds `‖x − x̂‖`. A row that is not (a value clamped to the
/// quantiser's range) is one of the segment's exceptions, scanned exactly.
///
/// A code strictly between 0 and 255 was not clamped, so it is the rounding
/// of `(x − min)/step` (within half a step, plus the f32 division's relative
/// rounding, far below the slack): only values coded 0 or 255 (and dimensions
/// of step 0, coded 0) need the check in f64.
#[inline(always)]
pub(crate) fn coded_within(v: &[f32], min: &[f32], step: &[f32], c: &[u8]) -> bool {
    // Most rows have no code at either end: a byte test over the row (which
    // vectorises) settles them.
    if !c
        .iter()
        .fold(false, |any, &x| any | (x.wrapping_sub(1) >= 254))
    {
        return true;
    }
    (0..v.len()).all(|d| {
        if c[d] != 0 && c[d] != 255 {
            return true;
        }
        let xh = f64::from(min[d]) + f64::from(step[d]) * f64::from(c[d]);
        (f64::from(v[d]) - xh).abs() <= HALF_STEP * f64::from(step[d]) + ZERO_STEP_SLACK
    })
}

/// The share of a step a coded value may be off: half, plus the rounding of
/// the division that chose the code.
const HALF_STEP: f64 = 0.5 + 1e-3;
/// A zero step (one value, or a range below 255 subnormals) is off by at most this.
const ZERO_STEP_SLACK: f64 = 1e-37;

/// `‖x̂‖²` of a coded row, `x̂_d = min_d + step_d·c_d`, summed in f64.
pub(crate) fn decoded_norm(min: &[f32], step: &[f32], c: &[u8]) -> f32 {
    let x2: f64 = (0..c.len())
        .map(|d| (f64::from(min[d]) + f64::from(step[d]) * f64::from(c[d])).powi(2))
        .sum();
    x2 as f32
}

/// `x.round().clamp(0.0, 255.0) as u8` (half away from zero; NaN gives 0),
/// without a call to `roundf` or `truncf` (the baseline x86-64 target has no
/// rounding instruction, so each is a library call and the loop over a
/// vector stays scalar): below 0 (or NaN) is 0; at or above 0, the integer
/// part (a conversion, exact below 2^23) plus one where the fraction is at
/// least a half (exact too). Branch-free, so [`sq8_encode`] vectorises.
#[inline(always)]
fn round_code(x: f32) -> u8 {
    // Not `clamp`: it keeps NaN, where `max` gives 0.
    #[allow(clippy::manual_clamp, reason = "NaN must become 0")]
    let x = x.max(0.0).min(256.0);
    #[allow(
        clippy::cast_possible_truncation,
        reason = "x is in 0..=256: its integer part fits, and is exact (a signed conversion: one vector instruction)"
    )]
    let t = x as i32;
    let up = i32::from(x - t as f32 >= 0.5);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "in 0..=255: clamped first"
    )]
    let code = (t + up).min(255) as u8;
    code
}

/// Code one vector: `round((x − min) / step)`, clamped to 0..=255 (0 where
/// the step is 0).
#[inline(always)]
pub(crate) fn sq8_encode(v: &[f32], min: &[f32], step: &[f32], out: &mut [u8]) {
    let n = out.len();
    let (v, min, step) = (&v[..n], &min[..n], &step[..n]);
    for d in 0..n {
        let c = round_code((v[d] - min[d]) / step[d]);
        out[d] = if step[d] > 0.0 { c } else { 0 };
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
    /// The bound with `ρ` lowered to the largest coding error actually found
    /// in the segment's rows (`stats.rho`), where that is smaller.
    pub(crate) fn tightened(self, stats: Option<&CodeStats>) -> ScreenBound {
        let rho = stats.map_or(self.rho, |s| self.rho.min(s.rho));
        ScreenBound { rho, ..self }
    }

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
        // off by at most 1e-37 per coordinate. Rows for which that does not
        // hold are the segment's exceptions (`coded_within`), scanned exactly.
        let rho = HALF_STEP * step2.sqrt() + ZERO_STEP_SLACK * (min.len() as f64).sqrt();
        Some(ScreenBound {
            rho,
            min_norm: min2.sqrt(),
            range_norm: 255.0 * step2.sqrt(),
        })
    }
}

/// Largest weight magnitude of a probe's integer form: one signed byte, so a
/// `vpdpbusd` multiplies four codes by four weights in one step (64
/// multiply-adds an instruction). Sums stay far inside `i32` at every
/// dimension: `2048·255·127 < 2^26`.
pub const INT_WEIGHT_MAX: i32 = 127;

/// What the integer estimate's per-row error bound needs from a coded
/// segment, computed once from its codes ([`CodeStats::of`]): the decoded
/// norms `‖x̂‖²`, a per-dimension centre code `μ_d` (the rounded mean code)
/// and each row's spread `‖c − μ‖`.
#[derive(Debug, Default)]
pub(crate) struct CodeStats {
    /// `‖x̂‖²` of each row (see [`decoded_norm`]).
    pub norms: Vec<f32>,
    /// The centre code of each dimension.
    pub centre: Vec<u8>,
    /// `‖c − μ‖` of each row, rounded up (exact integer sum, one rounding of its root).
    pub spread: Vec<f32>,
    /// The largest `‖x − x̂‖` of any row but the exceptions, from the vectors themselves (with
    /// room for the f64 arithmetic): usually well under [`ScreenBound`]'s
    /// worst case of half a step in every coordinate. Infinite if a vector
    /// is not finite.
    pub rho: f64,
}

impl CodeStats {
    /// The statistics of a segment's codes (row-major, `dim` a row) and of
    /// their distance from its `vectors` (the same rows), in parallel.
    pub(crate) fn of(
        min: &[f32],
        step: &[f32],
        codes: &[u8],
        vectors: &[f32],
        exceptions: &[u32],
        dim: usize,
    ) -> CodeStats {
        use rayon::prelude::*;
        if vectors.len() != codes.len() {
            return CodeStats::default();
        }
        // The exceptions are scanned exactly: the bound is the other rows'.
        let exception = |r: usize| exceptions.binary_search(&(r as u32)).is_ok();
        let rho = codes
            .par_chunks_exact(dim.max(1))
            .zip(vectors.par_chunks_exact(dim.max(1)))
            .enumerate()
            .with_min_len(4096)
            .filter(|(r, _)| exceptions.is_empty() || !exception(*r))
            .map(|(_, (c, x))| coding_error(min, step, c, x))
            .reduce(|| 0.0, f64::max);
        CodeStats::with_rho(min, step, codes, dim, rho)
    }

    /// The statistics of a segment's codes whose `rho` is known (its writer
    /// computed it while coding, with [`coding_error`] over the same rows):
    /// from the codes alone, without reading the vectors.
    pub(crate) fn with_rho(
        min: &[f32],
        step: &[f32],
        codes: &[u8],
        dim: usize,
        rho: f64,
    ) -> CodeStats {
        use rayon::prelude::*;
        let rows = codes.len() / dim.max(1);
        if rows == 0 {
            return CodeStats::default();
        }
        let sums = codes
            .par_chunks_exact(dim)
            .with_min_len(4096)
            .fold(
                || vec![0u64; dim],
                |mut acc, c| {
                    for (a, &x) in acc.iter_mut().zip(c) {
                        *a += u64::from(x);
                    }
                    acc
                },
            )
            .reduce(
                || vec![0u64; dim],
                |mut a, b| {
                    for (x, y) in a.iter_mut().zip(b) {
                        *x += y;
                    }
                    a
                },
            );
        let n = rows as u64;
        // Rounded mean, at most 255 as every code is.
        let centre: Vec<u8> = sums
            .iter()
            .map(|&s| u8::try_from((2 * s + n) / (2 * n)).unwrap_or(u8::MAX))
            .collect();
        let (norms, spread) = codes
            .par_chunks_exact(dim)
            .with_min_len(4096)
            .map(|c| (decoded_norm(min, step, c), code_spread(c, &centre)))
            .unzip();
        CodeStats {
            norms,
            centre,
            spread,
            rho,
        }
    }
}

/// `‖x − x̂‖` of one row, computed in f64 and rounded up generously: each
/// coordinate of `x̂` is off by at most 2^-53 of itself, and the sum and the
/// root by a relative 2^-50 at 2,048 terms, far inside the margins added.
/// Infinite where `x` is not finite.
#[inline(always)]
pub(crate) fn coding_error(min: &[f32], step: &[f32], c: &[u8], x: &[f32]) -> f64 {
    // Four partial sums (the same error bound as one running sum, and
    // independent additions the processor overlaps).
    let (mut e4, mut n4) = ([0f64; 4], [0f64; 4]);
    let n = c.len();
    let (min, step, x) = (&min[..n], &step[..n], &x[..n]);
    let mut lane = |k: usize, m: f32, s: f32, c: u8, x: f32| {
        let xh = f64::from(m) + f64::from(s) * f64::from(c);
        e4[k] += (f64::from(x) - xh).powi(2);
        n4[k] += xh * xh;
    };
    let body = n - n % 4;
    for (((m, s), c), x) in min[..body]
        .chunks_exact(4)
        .zip(step[..body].chunks_exact(4))
        .zip(c[..body].chunks_exact(4))
        .zip(x[..body].chunks_exact(4))
    {
        for k in 0..4 {
            lane(k, m[k], s[k], c[k], x[k]);
        }
    }
    for d in body..n {
        lane(d % 4, min[d], step[d], c[d], x[d]);
    }
    let e2 = (e4[0] + e4[1]) + (e4[2] + e4[3]);
    let n2 = (n4[0] + n4[1]) + (n4[2] + n4[3]);
    let e = e2.sqrt() * (1.0 + 1e-9) + 1e-14 * n2.sqrt();
    if e.is_finite() { e } else { f64::INFINITY }
}

/// A function that codes a row as [`code_row`] does (it, or one of the
/// kernels' versions of it, which the segment writer's caller chooses).
pub(crate) type RowCoder = fn(&[f32], &[f32], &[f32], &mut [u8]) -> Option<f64>;

/// Code one row (`code` ← [`sq8_encode`]) and say what it adds to its
/// segment: `None` if it is an exception (a value clamped to the
/// quantiser's range, see [`coded_within`]), else its coding error
/// [`coding_error`]. The reference of the kernels' `code_row` (which compile
/// this same function with wider vector instructions enabled: IEEE
/// arithmetic, no contraction, so their results are this one's, bit for bit).
#[inline(always)]
pub(crate) fn code_row(v: &[f32], min: &[f32], step: &[f32], code: &mut [u8]) -> Option<f64> {
    sq8_encode(v, min, step, code);
    coded_within(v, min, step, code).then(|| coding_error(min, step, code, v))
}

/// `‖c − μ‖` of one row's codes, rounded up to f32 (the sum of squares is an
/// exact integer; its square root is rounded in f64, then up).
pub(crate) fn code_spread(c: &[u8], centre: &[u8]) -> f32 {
    let s2: u64 = c
        .iter()
        .zip(centre)
        .map(|(&x, &m)| {
            let d = u64::from(x.abs_diff(m));
            d * d
        })
        .sum();
    round_up((s2 as f64).sqrt() * (1.0 + 1e-12))
}

/// `x` as the nearest f32 at or above it (bounds must not shrink when stored in f32).
fn round_up(x: f64) -> f32 {
    let f = x as f32;
    if f64::from(f) < x { f.next_up() } else { f }
}

/// A probe's integer form for one coded source: signed-byte weights
/// `m ≈ (q ∘ step)/α` with residuals `r = q ∘ step − α·m`, so that
///
/// `q·x̂ = q·min + α·(m·c) + r·μ + r·(c − μ)`,
///
/// and the distance estimate `e = c0 + ‖x̂‖² − 2α·(m·c)` with
/// `c0 = ‖q‖² − 2·q·min − 2·r·μ` misses `‖q − x̂‖²` by `2·r·(c − μ)`, at most
/// `κ·‖c − μ‖` with `κ = 2‖r‖` (Cauchy–Schwarz). The scans rank rows by the
/// lower estimate `e − κ·‖c − μ‖`, which is at most `‖q − x̂‖²` up to the f32
/// rounding `err`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProbeForm {
    pub alpha2: f32,
    pub c0: f32,
    pub kappa: f32,
    pub err: f64,
}

/// The integer weights `m` (each within ±[`INT_WEIGHT_MAX`]) of probe `q` for
/// a source with quantiser `min`, `step`, centre codes `centre` and bound `b`,
/// with the terms and rounding error of its lower estimate.
pub(crate) fn int_weights(
    q: &[f32],
    min: &[f32],
    step: &[f32],
    centre: &[u8],
    b: &ScreenBound,
) -> (Vec<i32>, ProbeForm) {
    let wlim = f64::from(INT_WEIGHT_MAX);
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
    // `a·m_d` is exact in f64 (24 by 7 bits); the residual is rounded once,
    // by at most 2^-53 of itself, which the factor on ‖r‖ covers.
    let r: Vec<f64> = w
        .iter()
        .zip(&m)
        .map(|(&wd, &md)| wd - a * f64::from(md))
        .collect();
    let rnorm = r.iter().map(|x| x * x).sum::<f64>().sqrt() * (1.0 + 1e-9);
    let kappa = round_up(2.0 * rnorm);
    let rmu: f64 = r.iter().zip(centre).map(|(&x, &c)| x * f64::from(c)).sum();
    let qn2: f64 = q.iter().map(|&x| f64::from(x).powi(2)).sum();
    let qmin: f64 = q
        .iter()
        .zip(min)
        .map(|(&x, &m)| f64::from(x) * f64::from(m))
        .sum();
    let c0 = qn2 - 2.0 * qmin - 2.0 * rmu;
    // Magnitudes the f32 lower estimate rounds at: |c0|, ‖x̂‖² ≤ (‖min‖ +
    // ‖step·c‖)², 2α·|m·c|, and κ·‖c − μ‖ ≤ κ·255·√D; plus the f64 sums above.
    let mabs: f64 = m.iter().map(|&x| f64::from(x.abs())).sum();
    let xmax = b.min_norm + b.range_norm;
    let mag = c0.abs()
        + qn2
        + 2.0 * qmin.abs()
        + 2.0 * rmu.abs()
        + xmax * xmax
        + 2.0 * a * 255.0 * mabs
        + f64::from(kappa) * 255.0 * (q.len() as f64).sqrt();
    // Far inside f32's range every term of the estimate is finite, so no
    // estimate is NaN (which would drop a row unseen); otherwise (values near
    // ±f32::MAX) the bound is infinite and the probe is searched again.
    let finite = alpha.is_finite() && kappa.is_finite() && mag.is_finite() && mag < 1e30;
    let form = ProbeForm {
        alpha2: 2.0 * alpha,
        c0: c0 as f32,
        kappa,
        err: if finite {
            16.0 * U * mag
        } else {
            f64::INFINITY
        },
    };
    (m, form)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_code_is_round_then_clamp() {
        let reference = |x: f32| x.round().clamp(0.0, 255.0) as u8;
        let mut xs = vec![
            f32::NAN,
            f32::NEG_INFINITY,
            f32::INFINITY,
            -0.5,
            -0.0,
            0.0,
            0.499_999_97,
            0.5,
            1.5,
            2.5,
            254.499_98,
            254.5,
            255.499_98,
            255.5,
            256.0,
            1e9,
            -1e9,
        ];
        // A sweep from -20 to 280 in steps of 1/1024, and each half-integer
        // and its neighbours.
        for i in 0..307_200 {
            xs.push(-20.0 + i as f32 / 1024.0);
        }
        for i in 0..300 {
            let h = i as f32 - 19.5;
            xs.extend([h, h.next_down(), h.next_up()]);
        }
        for x in xs {
            assert_eq!(round_code(x), reference(x), "{x}");
        }
    }

    /// Roughly normal values (a sum of four uniforms), seeded: this module
    /// is a leaf and imports no other.
    fn normals(seed: u64, n: usize) -> Vec<f32> {
        let mut x = seed;
        let mut uniform = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f32 / (1u64 << 53) as f32
        };
        (0..n)
            .map(|_| (0..4).map(|_| uniform()).sum::<f32>() - 2.0)
            .collect()
    }

    /// Face-like rows with a few far out in one dimension: the range ignores
    /// them, they (and only they) are not coded within half a step, and the
    /// others are, against f64.
    #[test]
    fn outliers_become_exceptions_and_leave_the_steps_alone() {
        let dim = 32;
        let values = normals(7, 2000 * dim);
        let mut rows: Vec<Vec<f32>> = values
            .chunks_exact(dim)
            .map(|v| v.iter().map(|x| 0.1 * x).collect())
            .collect();
        let clean: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        let (_, clean_step) = sq8_params(&clean, dim);
        for (r, v) in [(3usize, 50.0f32), (700, -1000.0), (1999, 12.0)] {
            rows[r][r % dim] = v;
        }
        let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        let (min, step) = sq8_params(&refs, dim);
        // The outliers moved no range but within the reach of the quantiles
        // (one side here, by at most `q99 − q1`, itself within the clean
        // range): at most twice the clean rows' step, not 50/255.
        for d in 0..dim {
            assert!(
                step[d] <= 2.0 * clean_step[d],
                "dimension {d}: {} against {}",
                step[d],
                clean_step[d]
            );
            if ![3, 700 % dim, 1999 % dim].contains(&d) {
                assert_eq!(step[d], clean_step[d], "dimension {d}");
            }
        }
        let mut code = vec![0u8; dim];
        let mut exceptions = Vec::new();
        for (i, v) in rows.iter().enumerate() {
            sq8_encode(v, &min, &step, &mut code);
            let off = (0..dim)
                .map(|d| {
                    (f64::from(v[d])
                        - (f64::from(min[d]) + f64::from(step[d]) * f64::from(code[d])))
                    .abs()
                        / f64::from(step[d])
                })
                .fold(0f64, f64::max);
            let within = coded_within(v, &min, &step, &code);
            assert_eq!(within, off <= HALF_STEP, "row {i}: {off} steps off");
            if !within {
                exceptions.push(i);
            }
        }
        assert_eq!(exceptions, [3, 700, 1999]);
        // Few rows: the range is their minimum and maximum, as before.
        let few: Vec<&[f32]> = rows[..20].iter().map(Vec::as_slice).collect();
        let (fmin, _) = sq8_params(&few, dim);
        for d in 0..dim {
            let m = few.iter().map(|v| v[d]).fold(f32::INFINITY, f32::min);
            assert_eq!(fmin[d], m);
        }
    }
}

//! Distance kernels: one scalar reference and SIMD versions, chosen once at run time.
//!
//! Distances are squared L2 throughout (as faiss reports them); any square root
//! or probability is taken at the API edge. [`scalar`] is the reference and the
//! fallback; every other implementation is tested against it (see the tests at
//! the bottom, which run over every table in [`Kernels::available`]).
//!
//! **Dispatch.** A [`Kernel`] names an implementation; its [`Kernels`] is a
//! table of plain function pointers, handed out by [`Kernel::kernels`] only
//! after the CPU check passed, and [`selected`] picks the engine's table once
//! per process (a `OnceLock`). Calls go straight through the table: no match
//! and no CPU-feature test per call. Whether the integer code kernels run on
//! AVX-512 VNNI is decided when the table is chosen too
//! ([`Kernels::fast_u8_dots`]); scans read it once per search.
//!
//! This module owns the kernels, their data layouts (packed groups, packed
//! codes, [`IntProbe`]) and the dispatch; *what* is scanned, and the
//! quantiser's arithmetic and error bounds, belong to the scans in
//! `crate::search` and to `crate::quantizer`.
//!
//! This module and `crate::storage::mmap` are the only places that may use `unsafe`:
//! calling a `#[target_feature]` function is `unsafe`, and each such call is
//! made only from a table that [`Kernel::kernels`] hands out after
//! [`Kernel::is_available`] returned true.
#![allow(unsafe_code)]

use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod scalar;

pub use crate::quantizer::INT_WEIGHT_MAX;

/// One implementation of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512F (x86_64).
    Avx512,
    /// AVX2 with FMA (x86_64).
    Avx2Fma,
    /// Portable scalar reference.
    Scalar,
}

impl Kernel {
    /// Every implementation, in order of preference.
    pub const IMPLS: [Kernel; 3] = [Kernel::Avx512, Kernel::Avx2Fma, Kernel::Scalar];

    /// Whether this CPU can run the implementation.
    pub fn is_available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            Kernel::Scalar => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// All implementations this CPU can run.
    pub fn available() -> Vec<Kernel> {
        Self::IMPLS
            .into_iter()
            .filter(|k| k.is_available())
            .collect()
    }

    /// Name for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2Fma => "avx2+fma",
            Kernel::Scalar => "scalar",
        }
    }

    /// Parse a name as printed by [`Kernel::name`].
    pub fn from_name(s: &str) -> Option<Kernel> {
        Self::IMPLS.into_iter().find(|k| k.name() == s)
    }

    /// Whether the integer code kernels ([`Kernels::dots_u8_tile`]) of this
    /// implementation run at SIMD speed on this CPU (AVX-512 VNNI); elsewhere
    /// they are the scalar reference.
    pub fn fast_u8_dots(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                self.is_available() && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            _ => false,
        }
    }

    /// The implementation's table, or `None` if this CPU cannot run it. This
    /// is the only way to a SIMD table: every `unsafe` call in one rests on
    /// the check made here.
    pub fn kernels(self) -> Option<&'static Kernels> {
        if !self.is_available() {
            return None;
        }
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if self.fast_u8_dots() => Some(&AVX512_VNNI),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => Some(&AVX512F),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => Some(&AVX2_FMA),
            Kernel::Scalar => Some(&SCALAR),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

/// Rows per packed group of the batch (tiled) kernels.
pub const LANES: usize = 16;
/// Most probes one call of [`Kernels::dots_tile`] scores.
pub const TILE_PROBES: usize = 8;

/// Pack up to [`LANES`] rows of `dim` values (`rows`, row-major) dimension-major
/// (`out[d·LANES + lane] = rows[lane][d]`), zero-filling missing lanes, so a
/// batch kernel reads one row-group per load. `out` holds `dim × LANES` floats.
///
/// # Panics
/// If `rows` is not a whole number of rows, or `out` has the wrong length.
pub fn pack_group(rows: &[f32], dim: usize, out: &mut [f32]) {
    assert!(rows.len().is_multiple_of(dim) && out.len() == dim * LANES);
    out.fill(0.0);
    for (lane, r) in rows.chunks_exact(dim).take(LANES).enumerate() {
        for (d, &x) in r.iter().enumerate() {
            out[d * LANES + lane] = x;
        }
    }
}

/// Pack up to [`LANES`] rows of `dim` codes for [`Kernels::dots_u8_tile`], in
/// quads of four dimensions (`out[64·j + 4·lane + b] = rows[lane][4·j + b]`),
/// zero-filling missing lanes. `out` holds `dim × LANES` bytes.
///
/// # Panics
/// If `rows` is not a whole number of rows, or `out` has the wrong length.
pub fn pack_codes(rows: &[u8], dim: usize, out: &mut [u8]) {
    assert!(rows.len().is_multiple_of(dim) && out.len() == dim * LANES);
    out.fill(0);
    for (lane, r) in rows.chunks_exact(dim).take(LANES).enumerate() {
        for j in 0..dim / 4 {
            out[64 * j + 4 * lane..64 * j + 4 * lane + 4].copy_from_slice(&r[4 * j..4 * j + 4]);
        }
    }
}

/// Quads (of four dimensions) an [`IntProbe`] holds: its dimension's, rounded
/// up to a multiple of 16 (one 512-bit register) with zero weights.
fn padded_quads(dim: usize) -> usize {
    (dim / 4).div_ceil(16) * 16
}

/// A probe as the integer kernels take it: signed-byte weights (within
/// ±[`INT_WEIGHT_MAX`]), four dimensions to an `i32` (little-endian,
/// dimension `4·j + b` in byte `b` of quad `j`), zero-padded to a multiple of
/// 16 quads (one 512-bit register). The weights themselves are the
/// quantiser's (`crate::quantizer::int_weights`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntProbe {
    /// The weights, four to a quad.
    pub w: Vec<i32>,
}

impl IntProbe {
    /// Pack weights (each within ±[`INT_WEIGHT_MAX`]; a multiple of four of them).
    ///
    /// # Panics
    /// If a weight is out of range or their count is not a multiple of four.
    pub fn new(m: &[i32]) -> IntProbe {
        assert!(m.len().is_multiple_of(4), "weights in whole quads");
        let mut w = vec![0i32; padded_quads(m.len())];
        for (q, w4) in w.iter_mut().zip(m.chunks_exact(4)) {
            let mut b = [0u8; 4];
            for (b, &x) in b.iter_mut().zip(w4) {
                assert!(x.abs() <= INT_WEIGHT_MAX, "weight {x} out of range");
                *b = x as i8 as u8;
            }
            *q = i32::from_le_bytes(b);
        }
        IntProbe { w }
    }

    /// Quads of weights, padding included.
    pub fn quads(&self) -> usize {
        self.w.len()
    }
}

/// Up to [`TILE_PROBES`] integer probes interleaved for the tile kernels:
/// quad `j` of probe `p` at `w[j·probes + p]`, so a kernel reads one short
/// contiguous run of weights for each 64 codes. Built once per batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntTile {
    probes: usize,
    quads: usize,
    w: Vec<i32>,
}

impl IntTile {
    /// Interleave probes of equal length.
    ///
    /// # Panics
    /// If there are more than [`TILE_PROBES`] or their lengths differ.
    pub fn new(qs: &[IntProbe]) -> IntTile {
        assert!(
            qs.len() <= TILE_PROBES,
            "at most {TILE_PROBES} probes per tile"
        );
        let quads = qs.first().map_or(0, IntProbe::quads);
        assert!(
            qs.iter().all(|q| q.quads() == quads),
            "probes of one length"
        );
        let probes = qs.len();
        let mut w = vec![0i32; quads * probes];
        for (p, q) in qs.iter().enumerate() {
            for (j, &x) in q.w.iter().enumerate() {
                w[j * probes + p] = x;
            }
        }
        IntTile { probes, quads, w }
    }

    /// Probes in the tile.
    pub fn probes(&self) -> usize {
        self.probes
    }

    /// Quads of weights of each probe, padding included.
    pub fn quads(&self) -> usize {
        self.quads
    }

    /// The interleaved weights.
    pub fn weights(&self) -> &[i32] {
        &self.w
    }
}

/// A probe's terms of the integer scans' lower estimate (see [`Kernels::est_u8_tile`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileForm {
    /// `‖q‖² − 2·q·min − 2·r·μ` (see `crate::quantizer::ProbeForm`).
    pub c0: f32,
    /// Twice the weights' scale α.
    pub alpha2: f32,
    /// Twice the norm of the weights' residuals: the row's spread times it
    /// bounds what the weights miss.
    pub kappa: f32,
    /// Estimates at most this are flagged in the returned mask.
    pub bound: f32,
}

/// Kernels come specialised for the dimensions of today's face models, whose
/// loops the compiler unrolls with the length known, and in one generic
/// version for every other dimension (a multiple of 16): index 0 is 128
/// values, 1 is 512, 2 any other.
type ByDim<F> = [F; 3];

/// The index of a dimension in a [`ByDim`].
#[inline]
fn class(dim: usize) -> usize {
    match dim {
        128 => 0,
        512 => 1,
        _ => 2,
    }
}

/// The three specialisations of a SIMD kernel, as the closures of a table: the
/// caller of this macro states the CPU check the `unsafe` calls rest on.
#[cfg(target_arch = "x86_64")]
macro_rules! by_dim {
    ($($f:ident)::+ ($($a:ident),*)) => {
        [
            // SAFETY: reached only through `Kernel::kernels`, after the table's CPU features were detected.
            |$($a),*| unsafe { $($f)::+::<128>($($a),*) },
            // SAFETY: reached only through `Kernel::kernels`, after the table's CPU features were detected.
            |$($a),*| unsafe { $($f)::+::<512>($($a),*) },
            // SAFETY: reached only through `Kernel::kernels`, after the table's CPU features were detected.
            |$($a),*| unsafe { $($f)::+::<0>($($a),*) },
        ]
    };
}

/// One implementation's kernels: plain function pointers, chosen once (see
/// the module documentation). Obtained from [`Kernel::kernels`],
/// [`Kernels::available`] or [`selected`]; the methods check their arguments
/// and call straight through, to the specialisation for the dimension.
// Each field's type is its kernel's signature, spelled out.
#[allow(clippy::type_complexity)]
#[derive(Debug, Clone, Copy)]
pub struct Kernels {
    kernel: Kernel,
    fast_u8_dots: bool,
    l2sq: fn(&[f32], &[f32]) -> f32,
    l2sq_many: ByDim<fn(&[f32], &[f32], &mut [f32])>,
    wl1: fn(&[f32], &[f32], &[f32]) -> f32,
    wl1_many: ByDim<fn(&[f32], &[f32], &[f32], &mut [f32])>,
    dots_tile: ByDim<fn(&[f32], &[f32], &mut [f32; TILE_PROBES * LANES])>,
    sq8_l2_many: ByDim<fn(&[f32], &[f32], &[u8], &mut [f32])>,
    dots_u8_tile: ByDim<fn(&IntTile, &[u8], &mut [i32; TILE_PROBES * LANES])>,
    est_u8_tile: ByDim<
        fn(
            &IntTile,
            &[TileForm],
            &[f32; LANES],
            &[f32; LANES],
            &[u8],
            &mut [f32; TILE_PROBES * LANES],
        ) -> [u16; TILE_PROBES],
    >,
    est_u8_rows: ByDim<fn(&IntProbe, &TileForm, &[f32], &[f32], &[u8], &mut [f32])>,
    code_row: crate::quantizer::RowCoder,
}

/// The portable reference, on every CPU (one version for every dimension).
const SCALAR: Kernels = Kernels {
    kernel: Kernel::Scalar,
    fast_u8_dots: false,
    l2sq: scalar::l2sq,
    l2sq_many: [scalar::l2sq_many; 3],
    wl1: scalar::wl1,
    wl1_many: [scalar::wl1_many; 3],
    dots_tile: [scalar::dots_tile; 3],
    sq8_l2_many: [scalar::sq8_l2_many; 3],
    dots_u8_tile: [scalar::dots_u8_tile; 3],
    est_u8_tile: [scalar::est_u8_tile; 3],
    est_u8_rows: [scalar::est_u8_rows; 3],
    code_row: crate::quantizer::code_row,
};

// The SIMD tables below are private and reached only through
// `Kernel::kernels`, which returns each one only after `is_available()` (and,
// for AVX512_VNNI, `fast_u8_dots()`) returned true on this CPU: that check is
// what every `unsafe` call in them rests on.

/// AVX2 + FMA; the integer code kernels are the scalar ones.
#[cfg(target_arch = "x86_64")]
const AVX2_FMA: Kernels = Kernels {
    kernel: Kernel::Avx2Fma,
    fast_u8_dots: false,
    // SAFETY: reached only through `Kernel::kernels`, after AVX2 and FMA were detected.
    l2sq: |a, b| unsafe { avx2::l2sq(a, b) },
    l2sq_many: by_dim!(avx2::l2sq_many(q, rows, out)),
    // SAFETY: reached only through `Kernel::kernels`, after AVX2 and FMA were detected.
    wl1: |w, a, b| unsafe { avx2::wl1(w, a, b) },
    wl1_many: by_dim!(avx2::wl1_many(w, q, rows, out)),
    dots_tile: by_dim!(avx2::dots_tile(qs, packed, out)),
    sq8_l2_many: by_dim!(avx2::sq8_l2_many(qm, step, codes, out)),
    // SAFETY: reached only through `Kernel::kernels`, after AVX2 and FMA were detected.
    code_row: |v, min, step, code| unsafe { avx2::code_row(v, min, step, code) },
    ..SCALAR
};

/// AVX-512F without VNNI; the integer code kernels are the scalar ones.
#[cfg(target_arch = "x86_64")]
const AVX512F: Kernels = Kernels {
    kernel: Kernel::Avx512,
    fast_u8_dots: false,
    // SAFETY: reached only through `Kernel::kernels`, after AVX-512F was detected.
    l2sq: |a, b| unsafe { avx512::l2sq(a, b) },
    l2sq_many: by_dim!(avx512::l2sq_many(q, rows, out)),
    // SAFETY: reached only through `Kernel::kernels`, after AVX-512F was detected.
    wl1: |w, a, b| unsafe { avx512::wl1(w, a, b) },
    wl1_many: by_dim!(avx512::wl1_many(w, q, rows, out)),
    dots_tile: by_dim!(avx512::dots_tile(qs, packed, out)),
    sq8_l2_many: by_dim!(avx512::sq8_l2_many(qm, step, codes, out)),
    // SAFETY: reached only through `Kernel::kernels`, after AVX-512F was detected.
    code_row: |v, min, step, code| unsafe { avx512::code_row(v, min, step, code) },
    ..SCALAR
};

/// AVX-512F with VNNI: the integer code kernels at SIMD speed too.
#[cfg(target_arch = "x86_64")]
const AVX512_VNNI: Kernels = Kernels {
    fast_u8_dots: true,
    dots_u8_tile: by_dim!(avx512::dots_u8_tile(qs, packed, out)),
    est_u8_tile: by_dim!(avx512::est_u8_tile(qs, forms, xn, xs, packed, out)),
    est_u8_rows: by_dim!(avx512::est_u8_rows(q, form, xn, xs, codes, out)),
    ..AVX512F
};

impl Kernels {
    /// The table of every implementation this CPU can run, in order of preference.
    pub fn available() -> Vec<&'static Kernels> {
        Kernel::IMPLS
            .into_iter()
            .filter_map(Kernel::kernels)
            .collect()
    }

    /// The implementation this table calls.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Name of the implementation (see [`Kernel::name`]).
    pub fn name(&self) -> &'static str {
        self.kernel.name()
    }

    /// Whether [`Kernels::dots_u8_tile`] and the other integer code kernels run
    /// at SIMD speed (AVX-512 VNNI); elsewhere they are the scalar reference.
    /// Decided when the table was chosen.
    #[inline]
    pub fn fast_u8_dots(&self) -> bool {
        self.fast_u8_dots
    }

    /// Squared L2 distance between two slices of equal length (any length).
    ///
    /// # Panics
    /// If the lengths differ.
    #[inline]
    pub fn l2sq(&self, a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "l2sq of slices of different lengths");
        (self.l2sq)(a, b)
    }

    /// Squared L2 distance from `q` (a multiple of 16 values) to each row of
    /// `rows` (row-major, `q.len()` values a row), written to `out[i]`.
    ///
    /// # Panics
    /// If `q` is not a multiple of 16 values, `rows` not whole rows, or `out`
    /// shorter than the rows.
    #[inline]
    pub fn l2sq_many(&self, q: &[f32], rows: &[f32], out: &mut [f32]) {
        let n = rows_of(rows.len(), q.len());
        (self.l2sq_many[class(q.len())])(q, rows, &mut out[..n]);
    }

    /// Weighted L1 distance `Σ w_k·|a_k − b_k|` of equal-length slices: the
    /// head's score before its bias.
    ///
    /// # Panics
    /// If the lengths differ.
    #[inline]
    pub fn wl1(&self, w: &[f32], a: &[f32], b: &[f32]) -> f32 {
        assert!(
            w.len() == a.len() && a.len() == b.len(),
            "wl1 of slices of different lengths"
        );
        (self.wl1)(w, a, b)
    }

    /// Weighted L1 from `q` to each row (as [`Kernels::l2sq_many`]), written to `out[i]`.
    ///
    /// # Panics
    /// As [`Kernels::l2sq_many`], or if `w` and `q` differ in length.
    #[inline]
    pub fn wl1_many(&self, w: &[f32], q: &[f32], rows: &[f32], out: &mut [f32]) {
        assert_eq!(w.len(), q.len(), "weights and probe of different lengths");
        let n = rows_of(rows.len(), q.len());
        (self.wl1_many[class(q.len())])(w, q, rows, &mut out[..n]);
    }

    /// Dot products of up to [`TILE_PROBES`] probes (`qs`, row-major) with one
    /// packed group of [`LANES`] rows (see [`pack_group`]; its length gives
    /// the dimension): `out[p·LANES + lane] = qs[p] · row[lane]`.
    ///
    /// # Panics
    /// If more than [`TILE_PROBES`] probes are given, or the lengths disagree.
    #[inline]
    pub fn dots_tile(&self, qs: &[f32], packed: &[f32], out: &mut [f32; TILE_PROBES * LANES]) {
        let dim = packed.len() / LANES;
        let n = rows_of(qs.len(), dim);
        assert!(n <= TILE_PROBES, "at most {TILE_PROBES} probes per tile");
        (self.dots_tile[class(dim)])(qs, packed, out);
    }

    /// Squared L2 from a probe to 8-bit coded rows: `out[i] = Σ (qm_d − step_d·codes[i]_d)²`,
    /// where `qm = q − min` (see the segment format's scalar quantiser).
    ///
    /// # Panics
    /// If the lengths disagree, or `out` is shorter than the rows.
    #[inline]
    pub fn sq8_l2_many(&self, qm: &[f32], step: &[f32], codes: &[u8], out: &mut [f32]) {
        assert_eq!(qm.len(), step.len(), "probe and steps of different lengths");
        let n = rows_of(codes.len(), qm.len());
        (self.sq8_l2_many[class(qm.len())])(qm, step, codes, &mut out[..n]);
    }

    /// This implementation's version of `crate::quantizer::code_row` (code
    /// one row, and say whether it is an exception or else its coding error):
    /// the same code compiled with this implementation's vector
    /// instructions, so the same result, bit for bit. For the segment writer
    /// (which, below this module, takes it from its caller).
    pub(crate) fn row_coder(&self) -> crate::quantizer::RowCoder {
        self.code_row
    }

    /// Integer dot products of a tile of probes with one packed group of
    /// [`LANES`] coded rows (see [`pack_codes`]; its length gives the
    /// dimension): `out[p·LANES + lane] = Σ_d m_p[d]·code[lane][d]`, exact in `i32`.
    ///
    /// # Panics
    /// If the tile's quads do not fit the codes.
    #[inline]
    pub fn dots_u8_tile(&self, qs: &IntTile, packed: &[u8], out: &mut [i32; TILE_PROBES * LANES]) {
        let dim = packed.len() / LANES;
        Self::check_int_tile(qs, dim);
        (self.dots_u8_tile[class(dim)])(qs, packed, out);
    }

    /// Lower distance estimates of a tile of probes to one packed group of
    /// coded rows: `out[p·LANES + lane] = ((c0_p + xn[lane]) −
    /// alpha2_p·(m_p·c_lane)) − kappa_p·xs[lane]`, rounded operation by
    /// operation (so every implementation agrees to the bit); returns per
    /// probe the mask of lanes with an estimate at most its bound. `xn` are
    /// the rows' decoded norms, `xs` their spreads (`crate::quantizer::CodeStats`).
    ///
    /// The tile is checked against the codes once per scan, not here (this is
    /// the inner loop of the batch scan): see [`Kernels::check_int_tile`]. A
    /// tile with too few quads panics on a bounds check inside the kernel.
    ///
    /// # Panics
    /// If there are fewer forms than probes.
    #[inline]
    pub fn est_u8_tile(
        &self,
        qs: &IntTile,
        forms: &[TileForm],
        xn: &[f32; LANES],
        xs: &[f32; LANES],
        packed: &[u8],
        out: &mut [f32; TILE_PROBES * LANES],
    ) -> [u16; TILE_PROBES] {
        assert!(forms.len() >= qs.probes(), "a form for each probe");
        (self.est_u8_tile[class(packed.len() / LANES)])(qs, forms, xn, xs, packed, out)
    }

    /// [`Kernels::est_u8_tile`] for one probe and row-major codes (as a segment
    /// stores them, `dim` bytes a row), bit for bit the same values
    /// (`form.bound` is not used).
    ///
    /// # Panics
    /// If `xn`, `xs` or `out` is shorter than the rows, or the probe's quads
    /// do not fit the codes.
    #[inline]
    pub fn est_u8_rows(
        &self,
        q: &IntProbe,
        form: &TileForm,
        (xn, xs): (&[f32], &[f32]),
        codes: &[u8],
        dim: usize,
        out: &mut [f32],
    ) {
        Self::check_int_probes(std::slice::from_ref(q), dim);
        let n = rows_of(codes.len(), dim);
        (self.est_u8_rows[class(dim)])(q, form, &xn[..n], &xs[..n], codes, &mut out[..n]);
    }

    /// Checks, once per scan, that a tile fits codes of `dim` values (see
    /// [`Kernels::check_int_probes`]).
    ///
    /// # Panics
    /// If it does not.
    pub fn check_int_tile(qs: &IntTile, dim: usize) {
        assert!(
            dim > 0 && dim.is_multiple_of(16) && qs.quads() == padded_quads(dim),
            "a tile of {} quads for codes of {dim} values",
            qs.quads()
        );
    }

    /// Checks, once per scan, that integer probes fit codes of `dim` values
    /// (a positive multiple of 16): each has [`padded_quads`] quads.
    ///
    /// # Panics
    /// If they do not.
    pub fn check_int_probes(qs: &[IntProbe], dim: usize) {
        assert!(
            dim > 0 && dim.is_multiple_of(16),
            "codes of {dim} values (a multiple of 16)"
        );
        let quads = padded_quads(dim);
        assert!(
            qs.iter().all(|q| q.quads() == quads),
            "probes of {quads} quads for codes of {dim} values"
        );
    }
}

/// Rows of `dim` values in `len` values.
///
/// # Panics
/// If `dim` is not a positive multiple of 16 or `len` not a multiple of it.
#[inline]
fn rows_of(len: usize, dim: usize) -> usize {
    assert!(
        dim > 0 && dim.is_multiple_of(16) && len.is_multiple_of(dim),
        "{len} values are not whole rows of {dim} (a multiple of 16)"
    );
    len / dim
}

/// The kernels used by the engine: the best available implementation's table,
/// chosen once per process. The environment variable `VISAGE_KERNEL`
/// (`avx512`, `avx2+fma`, `scalar`) can force a slower one for testing; an
/// unavailable choice is ignored.
pub fn selected() -> &'static Kernels {
    static CHOSEN: OnceLock<&'static Kernels> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        let forced = std::env::var("VISAGE_KERNEL")
            .ok()
            .and_then(|s| Kernel::from_name(&s))
            .and_then(Kernel::kernels);
        // The scalar table is always available, so the list is never empty.
        forced.unwrap_or_else(|| Kernels::available()[0])
    })
}

/// Squared L2 distance between two embeddings with the selected kernel.
#[inline]
pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    selected().l2sq(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn scalar_is_always_available_and_selected_is_available() {
        assert!(Kernel::available().contains(&Kernel::Scalar));
        assert!(selected().kernel().is_available());
        // A table for every implementation the CPU can run, and only for those.
        let tables: Vec<Kernel> = Kernels::available().iter().map(|t| t.kernel()).collect();
        assert_eq!(tables, Kernel::available());
        for k in Kernel::IMPLS {
            let t = k.kernels();
            assert_eq!(t.is_some(), k.is_available(), "{}", k.name());
            assert_eq!(t.is_some_and(|t| t.fast_u8_dots()), k.fast_u8_dots());
        }
    }

    #[test]
    fn integer_vectors_are_exact_on_every_kernel() {
        // Small integers: every partial sum is exactly representable, so all
        // implementations must agree bit for bit whatever the order of addition.
        for len in [
            0usize, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 127, 128, 129, 300,
        ] {
            let a: Vec<f32> = (0..len).map(|i| (i % 13) as f32 - 6.0).collect();
            let b: Vec<f32> = (0..len).map(|i| (i % 7) as f32).collect();
            let want: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
            let w: Vec<f32> = (0..len).map(|i| (i % 5) as f32 - 2.0).collect();
            let want_wl1: f32 = w
                .iter()
                .zip(&a)
                .zip(&b)
                .map(|((w, x), y)| w * (x - y).abs())
                .sum();
            for k in Kernels::available() {
                assert_eq!(k.l2sq(&a, &b), want, "{} len {len}", k.name());
                assert_eq!(k.wl1(&w, &a, &b), want_wl1, "{} wl1 len {len}", k.name());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn every_kernel_matches_scalar(
            (a, b) in (0usize..400).prop_flat_map(|n| (
                prop::collection::vec(-100.0f32..100.0, n),
                prop::collection::vec(-100.0f32..100.0, n),
            ))
        ) {
            let want = scalar::l2sq(&a, &b);
            for k in Kernels::available() {
                let got = k.l2sq(&a, &b);
                prop_assert!(close(got, want), "{}: {got} vs {want} (len {})", k.name(), a.len());
            }
        }

        /// The segment writer's coding: codes and the verdict (exception, or
        /// the coding error) the reference's bit for bit, on rows with
        /// values outside the quantiser's range, zero steps, and a NaN or
        /// an infinity planted.
        #[test]
        fn every_code_row_kernel_matches_the_quantiser_bit_for_bit(
            (u, min, step, plant) in (0usize..300).prop_flat_map(|n| (
                prop::collection::vec(0.0f32..1.0, n),
                prop::collection::vec(-2.0f32..0.0, n),
                prop::collection::vec(prop_oneof![Just(0.0f32), 0.001f32..0.05], n),
                (0usize..5, any::<prop::sample::Index>()),
            ))
        ) {
            // Within the quantiser's range (a coding error), but for the
            // value planted: NaN, infinity, or out of range (an exception).
            let mut v: Vec<f32> = (0..u.len()).map(|d| min[d] + step[d] * 255.0 * u[d]).collect();
            if !v.is_empty() {
                let at = plant.1.index(v.len());
                match plant.0 {
                    0 => v[at] = f32::NAN,
                    1 => v[at] = f32::INFINITY,
                    2 => v[at] = min[at] - 1.0,
                    _ => {}
                }
            }
            let mut want_codes = vec![0u8; v.len()];
            let want = crate::quantizer::code_row(&v, &min, &step, &mut want_codes);
            for k in Kernels::available() {
                let mut codes = vec![0u8; v.len()];
                let got = (k.row_coder())(&v, &min, &step, &mut codes);
                prop_assert_eq!(&codes, &want_codes, "{}", k.name());
                prop_assert_eq!(got.map(f64::to_bits), want.map(f64::to_bits), "{}", k.name());
            }
        }

        #[test]
        fn every_wl1_kernel_matches_scalar(
            (w, a, b) in (0usize..400).prop_flat_map(|n| (
                prop::collection::vec(-3.0f32..3.0, n),
                prop::collection::vec(-100.0f32..100.0, n),
                prop::collection::vec(-100.0f32..100.0, n),
            ))
        ) {
            let want = scalar::wl1(&w, &a, &b);
            // Weighted sums cancel: scale the tolerance by the sum of magnitudes.
            let mag: f32 = w.iter().zip(&a).zip(&b).map(|((w, x), y)| (w * (x - y)).abs()).sum();
            for k in Kernels::available() {
                let got = k.wl1(&w, &a, &b);
                prop_assert!((got - want).abs() <= 1e-4 * mag.max(1.0), "{}: {got} vs {want}", k.name());
            }
        }

        #[test]
        fn every_wl1_many_kernel_matches_scalar(
            (dim, w, q, rows) in dims().prop_flat_map(|d| (
                Just(d),
                prop::collection::vec(-3.0f32..3.0, d),
                prop::collection::vec(-10.0f32..10.0, d),
                prop::collection::vec(prop::collection::vec(-10.0f32..10.0, d), 0..20),
            ))
        ) {
            let flat: Vec<f32> = rows.concat();
            for k in Kernels::available() {
                let mut got = vec![f32::NAN; rows.len() + 2];
                k.wl1_many(&w, &q, &flat, &mut got);
                for (i, r) in rows.iter().enumerate() {
                    let want = scalar::wl1(&w, &q, r);
                    let mag: f32 = w.iter().zip(&q).zip(r).map(|((w, x), y)| (w * (x - y)).abs()).sum();
                    prop_assert!((got[i] - want).abs() <= 1e-4 * mag.max(1.0), "{} dim {dim} row {i}", k.name());
                }
                prop_assert!(got[rows.len()..].iter().all(|x| x.is_nan()), "wrote past the rows");
            }
        }

        #[test]
        fn every_dots_tile_kernel_matches_scalar(
            (dim, qs, rows) in dims().prop_flat_map(|d| (
                Just(d),
                prop::collection::vec(prop::collection::vec(-10.0f32..10.0, d), 1..=TILE_PROBES),
                prop::collection::vec(prop::collection::vec(-10.0f32..10.0, d), 0..=LANES),
            ))
        ) {
            let mut packed = vec![f32::NAN; dim * LANES];
            pack_group(&rows.concat(), dim, &mut packed);
            let flat_qs = qs.concat();
            for k in Kernels::available() {
                let mut out = [f32::NAN; TILE_PROBES * LANES];
                k.dots_tile(&flat_qs, &packed, &mut out);
                for (p, q) in qs.iter().enumerate() {
                    for lane in 0..LANES {
                        let want: f32 = rows.get(lane).map_or(0.0, |r| q.iter().zip(r).map(|(a, b)| a * b).sum());
                        let mag: f32 = rows.get(lane).map_or(0.0, |r| q.iter().zip(r).map(|(a, b)| (a * b).abs()).sum());
                        let got = out[p * LANES + lane];
                        prop_assert!((got - want).abs() <= 1e-4 * mag.max(1.0), "{} dim {dim} p {p} lane {lane}: {got} vs {want}", k.name());
                    }
                }
            }
        }

        #[test]
        fn every_sq8_kernel_matches_scalar(
            (dim, qm, step, codes) in dims().prop_flat_map(|d| (
                Just(d),
                prop::collection::vec(-2.0f32..2.0, d),
                prop::collection::vec(0.0f32..0.02, d),
                prop::collection::vec(prop::collection::vec(0u8..=255, d), 0..20),
            ))
        ) {
            let flat = codes.concat();
            let mut want = vec![0f32; codes.len()];
            scalar::sq8_l2_many(&qm, &step, &flat, &mut want);
            for k in Kernels::available() {
                let mut got = vec![f32::NAN; codes.len() + 2];
                k.sq8_l2_many(&qm, &step, &flat, &mut got);
                for i in 0..codes.len() {
                    prop_assert!(close(got[i], want[i]), "{} dim {dim} row {i}: {} vs {}", k.name(), got[i], want[i]);
                }
                prop_assert!(got[codes.len()..].iter().all(|x| x.is_nan()), "wrote past the rows");
            }
        }

        #[test]
        fn every_u8_dots_kernel_matches_scalar_exactly(
            (dim, ms, rows) in dims_up_to_max().prop_flat_map(|d| (
                Just(d),
                prop::collection::vec(prop::collection::vec(-INT_WEIGHT_MAX..=INT_WEIGHT_MAX, d), 1..=TILE_PROBES),
                prop::collection::vec(prop::collection::vec(0u8..=255, d), 0..=LANES),
            )),
            extreme in any::<bool>(),
        ) {
            // Extreme: every weight at ±the limit and every code 255, the largest sums.
            let ms: Vec<Vec<i32>> = ms.into_iter().map(|m| {
                if extreme { m.iter().map(|&w| if w < 0 { -INT_WEIGHT_MAX } else { INT_WEIGHT_MAX }).collect() } else { m }
            }).collect();
            let rows: Vec<Vec<u8>> = rows.into_iter().map(|r| if extreme { vec![255; dim] } else { r }).collect();
            let qs: Vec<IntProbe> = ms.iter().map(|m| IntProbe::new(m)).collect();
            let tile = IntTile::new(&qs);
            let mut packed = vec![7u8; dim * LANES];
            pack_codes(&rows.concat(), dim, &mut packed);
            for k in Kernels::available() {
                let mut out = [i32::MIN; TILE_PROBES * LANES];
                k.dots_u8_tile(&tile, &packed, &mut out);
                for (p, m) in ms.iter().enumerate() {
                    for lane in 0..LANES {
                        // Independent of the packing: i64 over the original weights.
                        let want: i64 = rows.get(lane).map_or(0, |r| m.iter().zip(r).map(|(&w, &c)| i64::from(w) * i64::from(c)).sum());
                        prop_assert_eq!(i64::from(out[p * LANES + lane]), want, "{} dim {} p {} lane {}", k.name(), dim, p, lane);
                    }
                }
                prop_assert!(out[qs.len() * LANES..].iter().all(|&x| x == i32::MIN), "wrote past the probes");
            }
        }

        #[test]
        fn every_u8_estimate_kernel_matches_scalar_bit_for_bit(
            (dim, ms, rows) in dims().prop_flat_map(|d| (
                Just(d),
                prop::collection::vec(prop::collection::vec(-INT_WEIGHT_MAX..=INT_WEIGHT_MAX, d), 1..=TILE_PROBES),
                prop::collection::vec(prop::collection::vec(0u8..=255, d), 0..=LANES),
            )),
            forms in prop::collection::vec((-100.0f32..100.0, 0.0f32..1e-3, 0.0f32..1e-3, -10.0f32..200.0), TILE_PROBES),
            xn in prop::collection::vec(0.0f32..100.0, LANES),
            xs in prop::collection::vec(0.0f32..6000.0, LANES),
        ) {
            let qs: Vec<IntProbe> = ms.iter().map(|m| IntProbe::new(m)).collect();
            let tile = IntTile::new(&qs);
            let forms: Vec<TileForm> = forms.into_iter().map(|(c0, a, kappa, bound)| TileForm { c0, alpha2: 2.0 * a, kappa, bound }).collect();
            let xn: [f32; LANES] = xn.try_into().unwrap();
            let xs: [f32; LANES] = xs.try_into().unwrap();
            let mut packed = vec![0u8; dim * LANES];
            pack_codes(&rows.concat(), dim, &mut packed);
            let mut want = [f32::NAN; TILE_PROBES * LANES];
            let want_masks = scalar::est_u8_tile(&tile, &forms, &xn, &xs, &packed, &mut want);
            for k in Kernels::available() {
                let mut got = [f32::NAN; TILE_PROBES * LANES];
                let masks = k.est_u8_tile(&tile, &forms, &xn, &xs, &packed, &mut got);
                for i in 0..qs.len() * LANES {
                    prop_assert_eq!(got[i].to_bits(), want[i].to_bits(), "{} dim {} at {}", k.name(), dim, i);
                }
                prop_assert_eq!(masks, want_masks, "{}", k.name());
                prop_assert!(got[qs.len() * LANES..].iter().all(|x| x.is_nan()), "wrote past the probes");
            }
        }

        #[test]
        fn every_u8_row_estimate_kernel_matches_the_tile_kernel_bit_for_bit(
            (dim, m, rows) in dims().prop_flat_map(|d| (
                Just(d),
                prop::collection::vec(-INT_WEIGHT_MAX..=INT_WEIGHT_MAX, d),
                prop::collection::vec(prop::collection::vec(0u8..=255, d), 0..40),
            )),
            (c0, a, kappa) in (-100.0f32..100.0, 0.0f32..1e-3, 0.0f32..1e-3),
            xn in prop::collection::vec(0.0f32..100.0, 40),
            xs in prop::collection::vec(0.0f32..6000.0, 40),
        ) {
            let q = IntProbe::new(&m);
            let tile = IntTile::new(std::slice::from_ref(&q));
            let form = TileForm { c0, alpha2: 2.0 * a, kappa, bound: 0.0 };
            // The reference: the packed tile kernel, sixteen rows at a time.
            let mut want = vec![0f32; rows.len()];
            for (g, chunk) in rows.chunks(LANES).enumerate() {
                let mut packed = vec![0u8; dim * LANES];
                pack_codes(&chunk.concat(), dim, &mut packed);
                let (mut x, mut s) = ([0f32; LANES], [0f32; LANES]);
                x[..chunk.len()].copy_from_slice(&xn[g * LANES..g * LANES + chunk.len()]);
                s[..chunk.len()].copy_from_slice(&xs[g * LANES..g * LANES + chunk.len()]);
                let mut out = [0f32; TILE_PROBES * LANES];
                scalar::est_u8_tile(&tile, &[form], &x, &s, &packed, &mut out);
                want[g * LANES..g * LANES + chunk.len()].copy_from_slice(&out[..chunk.len()]);
            }
            let flat = rows.concat();
            for k in Kernels::available() {
                let mut got = vec![f32::NAN; rows.len() + 3];
                k.est_u8_rows(&q, &form, (&xn, &xs), &flat, dim, &mut got);
                for i in 0..rows.len() {
                    prop_assert_eq!(got[i].to_bits(), want[i].to_bits(), "{} dim {} row {}", k.name(), dim, i);
                }
                prop_assert!(got[rows.len()..].iter().all(|x| x.is_nan()), "wrote past the rows");
            }
        }

        #[test]
        fn every_many_kernel_matches_scalar(
            (dim, q, rows) in dims().prop_flat_map(|d| (
                Just(d),
                prop::collection::vec(-10.0f32..10.0, d),
                prop::collection::vec(prop::collection::vec(-10.0f32..10.0, d), 0..40),
            ))
        ) {
            let flat = rows.concat();
            let mut want = vec![0f32; rows.len()];
            scalar::l2sq_many(&q, &flat, &mut want);
            for k in Kernels::available() {
                let mut got = vec![f32::NAN; rows.len() + 3];
                k.l2sq_many(&q, &flat, &mut got);
                for i in 0..rows.len() {
                    prop_assert!(close(got[i], want[i]), "{} dim {dim} row {i}: {} vs {}", k.name(), got[i], want[i]);
                    prop_assert!(close(got[i], scalar::l2sq(&q, &rows[i])));
                }
                prop_assert!(got[rows.len()..].iter().all(|x| x.is_nan()), "wrote past the rows");
            }
        }
    }

    /// The dimensions the kernel tests run at: the two specialised ones and
    /// generic ones (the smallest, one with a partial 64-code register, one
    /// between the specialised sizes).
    fn dims() -> impl Strategy<Value = usize> {
        prop::sample::select(vec![16usize, 48, 96, 128, 144, 512])
    }

    /// As [`dims`], plus the largest dimension (the largest sums).
    fn dims_up_to_max() -> impl Strategy<Value = usize> {
        prop::sample::select(vec![16usize, 96, 128, 512, 2048])
    }
}

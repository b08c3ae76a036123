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

use crate::DIM;
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
/// Floats in one packed group: `DIM × LANES`, dimension-major.
pub const PACKED_GROUP: usize = DIM * LANES;

/// Pack up to [`LANES`] rows dimension-major (`out[d·LANES + lane] = rows[lane][d]`),
/// zero-filling missing lanes, so a batch kernel reads one row-group per load.
pub fn pack_group(rows: &[[f32; DIM]], out: &mut [f32; PACKED_GROUP]) {
    out.fill(0.0);
    for (lane, r) in rows.iter().take(LANES).enumerate() {
        for (d, &x) in r.iter().enumerate() {
            out[d * LANES + lane] = x;
        }
    }
}

/// Bytes in one packed group of 8-bit codes: `DIM × LANES`, in quads of four
/// dimensions (`out[64·j + 4·lane + b] = rows[lane][4·j + b]`).
pub const PACKED_CODES: usize = DIM * LANES;
/// Quads of four dimensions in an embedding.
pub const QUADS: usize = DIM / 4;

/// A probe as the integer batch kernel takes it: signed 16-bit weights
/// `m_d = 256·hi_d + lo_d`, split into two signed bytes, four dimensions to
/// an `i32` (little-endian, dimension `4·j + b` in byte `b` of quad `j`).
/// The weights themselves are the quantiser's (`crate::quantizer::int_weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntProbe {
    /// High bytes of the weights.
    pub hi: [i32; QUADS],
    /// Low bytes of the weights.
    pub lo: [i32; QUADS],
}

impl IntProbe {
    /// Split weights (each within ±[`INT_WEIGHT_MAX`]) into high and low bytes.
    ///
    /// # Panics
    /// If a weight is out of range.
    pub fn new(m: &[i32; DIM]) -> IntProbe {
        let (mut hi, mut lo) = ([0i32; QUADS], [0i32; QUADS]);
        for j in 0..QUADS {
            let (mut h, mut l) = ([0u8; 4], [0u8; 4]);
            for b in 0..4 {
                let w = m[4 * j + b];
                assert!(w.abs() <= INT_WEIGHT_MAX, "weight {w} out of range");
                // Round half up: the low byte lands in -128..=127.
                let hb = (w + 128).div_euclid(256);
                h[b] = hb as i8 as u8;
                l[b] = (w - 256 * hb) as i8 as u8;
            }
            hi[j] = i32::from_le_bytes(h);
            lo[j] = i32::from_le_bytes(l);
        }
        IntProbe { hi, lo }
    }
}

/// A probe's terms of the integer batch scan's estimate (see [`Kernels::est_u8_tile`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileForm {
    /// `‖q‖² − 2·q·min`.
    pub c0: f32,
    /// Twice the weights' scale α.
    pub alpha2: f32,
    /// Estimates at most this are flagged in the returned mask.
    pub bound: f32,
}

/// Pack up to [`LANES`] rows of codes for [`Kernels::dots_u8_tile`], zero-filling
/// missing lanes.
pub fn pack_codes(rows: &[[u8; DIM]], out: &mut [u8; PACKED_CODES]) {
    out.fill(0);
    for (lane, r) in rows.iter().take(LANES).enumerate() {
        for j in 0..QUADS {
            out[64 * j + 4 * lane..64 * j + 4 * lane + 4].copy_from_slice(&r[4 * j..4 * j + 4]);
        }
    }
}

/// One implementation's kernels: plain function pointers, chosen once (see
/// the module documentation). Obtained from [`Kernel::kernels`],
/// [`Kernels::available`] or [`selected`]; the methods check their arguments
/// and call straight through.
// Each field's type is its kernel's signature, spelled out.
#[allow(clippy::type_complexity)]
#[derive(Debug, Clone, Copy)]
pub struct Kernels {
    kernel: Kernel,
    fast_u8_dots: bool,
    l2sq: fn(&[f32], &[f32]) -> f32,
    l2sq_many: fn(&[f32; DIM], &[[f32; DIM]], &mut [f32]),
    wl1: fn(&[f32], &[f32], &[f32]) -> f32,
    wl1_many: fn(&[f32; DIM], &[f32; DIM], &[[f32; DIM]], &mut [f32]),
    dots_tile: fn(&[[f32; DIM]], &[f32; PACKED_GROUP], &mut [f32; TILE_PROBES * LANES]),
    sq8_l2_many: fn(&[f32; DIM], &[f32; DIM], &[[u8; DIM]], &mut [f32]),
    dots_u8_tile: fn(&[IntProbe], &[u8; PACKED_CODES], &mut [i32; TILE_PROBES * LANES]),
    est_u8_tile: fn(
        &[IntProbe],
        &[TileForm],
        &[f32; LANES],
        &[u8; PACKED_CODES],
        &mut [f32; TILE_PROBES * LANES],
    ) -> [u16; TILE_PROBES],
    est_u8_rows: fn(&IntProbe, &TileForm, &[f32], &[[u8; DIM]], &mut [f32]),
}

/// The portable reference, on every CPU.
const SCALAR: Kernels = Kernels {
    kernel: Kernel::Scalar,
    fast_u8_dots: false,
    l2sq: scalar::l2sq,
    l2sq_many: scalar::l2sq_many,
    wl1: scalar::wl1,
    wl1_many: scalar::wl1_many,
    dots_tile: scalar::dots_tile,
    sq8_l2_many: scalar::sq8_l2_many,
    dots_u8_tile: scalar::dots_u8_tile,
    est_u8_tile: scalar::est_u8_tile,
    est_u8_rows: scalar::est_u8_rows,
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
    // SAFETY: reached only through `Kernel::kernels`, after AVX2 and FMA were detected.
    l2sq_many: |q, rows, out| unsafe { avx2::l2sq_many(q, rows, out) },
    // SAFETY: reached only through `Kernel::kernels`, after AVX2 and FMA were detected.
    wl1: |w, a, b| unsafe { avx2::wl1(w, a, b) },
    // SAFETY: reached only through `Kernel::kernels`, after AVX2 and FMA were detected.
    wl1_many: |w, q, rows, out| unsafe { avx2::wl1_many(w, q, rows, out) },
    // SAFETY: reached only through `Kernel::kernels`, after AVX2 and FMA were detected.
    dots_tile: |qs, packed, out| unsafe { avx2::dots_tile(qs, packed, out) },
    // SAFETY: reached only through `Kernel::kernels`, after AVX2 and FMA were detected.
    sq8_l2_many: |qm, step, codes, out| unsafe { avx2::sq8_l2_many(qm, step, codes, out) },
    ..SCALAR
};

/// AVX-512F without VNNI; the integer code kernels are the scalar ones.
#[cfg(target_arch = "x86_64")]
const AVX512F: Kernels = Kernels {
    kernel: Kernel::Avx512,
    fast_u8_dots: false,
    // SAFETY: reached only through `Kernel::kernels`, after AVX-512F was detected.
    l2sq: |a, b| unsafe { avx512::l2sq(a, b) },
    // SAFETY: reached only through `Kernel::kernels`, after AVX-512F was detected.
    l2sq_many: |q, rows, out| unsafe { avx512::l2sq_many(q, rows, out) },
    // SAFETY: reached only through `Kernel::kernels`, after AVX-512F was detected.
    wl1: |w, a, b| unsafe { avx512::wl1(w, a, b) },
    // SAFETY: reached only through `Kernel::kernels`, after AVX-512F was detected.
    wl1_many: |w, q, rows, out| unsafe { avx512::wl1_many(w, q, rows, out) },
    // SAFETY: reached only through `Kernel::kernels`, after AVX-512F was detected.
    dots_tile: |qs, packed, out| unsafe { avx512::dots_tile(qs, packed, out) },
    // SAFETY: reached only through `Kernel::kernels`, after AVX-512F was detected.
    sq8_l2_many: |qm, step, codes, out| unsafe { avx512::sq8_l2_many(qm, step, codes, out) },
    ..SCALAR
};

/// AVX-512F with VNNI: the integer code kernels at SIMD speed too.
#[cfg(target_arch = "x86_64")]
const AVX512_VNNI: Kernels = Kernels {
    fast_u8_dots: true,
    // SAFETY: reached only through `Kernel::kernels`, after AVX-512F and VNNI were detected.
    dots_u8_tile: |qs, packed, out| unsafe { avx512::dots_u8_tile(qs, packed, out) },
    // SAFETY: reached only through `Kernel::kernels`, after AVX-512F and VNNI were detected.
    est_u8_tile: |qs, forms, xn, packed, out| unsafe {
        avx512::est_u8_tile(qs, forms, xn, packed, out)
    },
    // SAFETY: reached only through `Kernel::kernels`, after AVX-512F and VNNI were detected.
    est_u8_rows: |q, form, xn, codes, out| unsafe { avx512::est_u8_rows(q, form, xn, codes, out) },
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

    /// Squared L2 distance from `q` to each row, written to `out[i]`.
    ///
    /// # Panics
    /// If `out` is shorter than `rows`.
    #[inline]
    pub fn l2sq_many(&self, q: &[f32; DIM], rows: &[[f32; DIM]], out: &mut [f32]) {
        let out = &mut out[..rows.len()];
        (self.l2sq_many)(q, rows, out);
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

    /// Weighted L1 from `q` to each row, written to `out[i]`.
    ///
    /// # Panics
    /// If `out` is shorter than `rows`.
    #[inline]
    pub fn wl1_many(&self, w: &[f32; DIM], q: &[f32; DIM], rows: &[[f32; DIM]], out: &mut [f32]) {
        let out = &mut out[..rows.len()];
        (self.wl1_many)(w, q, rows, out);
    }

    /// Dot products of up to [`TILE_PROBES`] probes with one packed group of
    /// [`LANES`] rows: `out[p·LANES + lane] = qs[p] · row[lane]`.
    ///
    /// # Panics
    /// If more than [`TILE_PROBES`] probes are given.
    #[inline]
    pub fn dots_tile(
        &self,
        qs: &[[f32; DIM]],
        packed: &[f32; PACKED_GROUP],
        out: &mut [f32; TILE_PROBES * LANES],
    ) {
        assert!(
            qs.len() <= TILE_PROBES,
            "at most {TILE_PROBES} probes per tile"
        );
        (self.dots_tile)(qs, packed, out);
    }

    /// Squared L2 from a probe to 8-bit coded rows: `out[i] = Σ (qm_d − step_d·codes[i]_d)²`,
    /// where `qm = q − min` (see the segment format's scalar quantiser).
    ///
    /// # Panics
    /// If `out` is shorter than `codes`.
    #[inline]
    pub fn sq8_l2_many(
        &self,
        qm: &[f32; DIM],
        step: &[f32; DIM],
        codes: &[[u8; DIM]],
        out: &mut [f32],
    ) {
        let out = &mut out[..codes.len()];
        (self.sq8_l2_many)(qm, step, codes, out);
    }

    /// Integer dot products of up to [`TILE_PROBES`] probes with one packed
    /// group of [`LANES`] coded rows: `out[p·LANES + lane] = Σ_d m_p[d]·code[lane][d]`,
    /// exact in `i32`.
    ///
    /// # Panics
    /// If more than [`TILE_PROBES`] probes are given.
    #[inline]
    pub fn dots_u8_tile(
        &self,
        qs: &[IntProbe],
        packed: &[u8; PACKED_CODES],
        out: &mut [i32; TILE_PROBES * LANES],
    ) {
        assert!(
            qs.len() <= TILE_PROBES,
            "at most {TILE_PROBES} probes per tile"
        );
        (self.dots_u8_tile)(qs, packed, out);
    }

    /// Distance estimates of up to [`TILE_PROBES`] probes to one packed group of
    /// coded rows: `out[p·LANES + lane] = (c0_p + xn[lane]) − alpha2_p·(m_p·c_lane)`,
    /// rounded operation by operation (so every implementation agrees to the
    /// bit); returns per probe the mask of lanes with an estimate at most its bound.
    ///
    /// # Panics
    /// If more than [`TILE_PROBES`] probes are given, or fewer forms than probes.
    #[inline]
    pub fn est_u8_tile(
        &self,
        qs: &[IntProbe],
        forms: &[TileForm],
        xn: &[f32; LANES],
        packed: &[u8; PACKED_CODES],
        out: &mut [f32; TILE_PROBES * LANES],
    ) -> [u16; TILE_PROBES] {
        assert!(
            qs.len() <= TILE_PROBES && forms.len() >= qs.len(),
            "at most {TILE_PROBES} probes per tile, each with its form"
        );
        (self.est_u8_tile)(qs, forms, xn, packed, out)
    }

    /// [`Kernels::est_u8_tile`] for one probe and row-major codes (as a segment
    /// stores them): `out[i] = (c0 + xn[i]) − alpha2·(m·codes[i])`, bit for bit
    /// the same value (`form.bound` is not used).
    ///
    /// # Panics
    /// If `xn` or `out` is shorter than `codes`.
    #[inline]
    pub fn est_u8_rows(
        &self,
        q: &IntProbe,
        form: &TileForm,
        xn: &[f32],
        codes: &[[u8; DIM]],
        out: &mut [f32],
    ) {
        let (xn, out) = (&xn[..codes.len()], &mut out[..codes.len()]);
        (self.est_u8_rows)(q, form, xn, codes, out);
    }
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
pub fn l2sq(a: &[f32; DIM], b: &[f32; DIM]) -> f32 {
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
            w in prop::collection::vec(-3.0f32..3.0, DIM),
            q in prop::collection::vec(-10.0f32..10.0, DIM),
            rows in prop::collection::vec(prop::collection::vec(-10.0f32..10.0, DIM), 0..20),
        ) {
            let w: [f32; DIM] = w.try_into().unwrap();
            let q: [f32; DIM] = q.try_into().unwrap();
            let rows: Vec<[f32; DIM]> = rows.into_iter().map(|r| r.try_into().unwrap()).collect();
            for k in Kernels::available() {
                let mut got = vec![f32::NAN; rows.len() + 2];
                k.wl1_many(&w, &q, &rows, &mut got);
                for (i, r) in rows.iter().enumerate() {
                    let want = scalar::wl1(&w, &q, r);
                    let mag: f32 = w.iter().zip(&q).zip(r).map(|((w, x), y)| (w * (x - y)).abs()).sum();
                    prop_assert!((got[i] - want).abs() <= 1e-4 * mag.max(1.0), "{} row {i}", k.name());
                }
                prop_assert!(got[rows.len()..].iter().all(|x| x.is_nan()), "wrote past the rows");
            }
        }

        #[test]
        fn every_dots_tile_kernel_matches_scalar(
            qs in prop::collection::vec(prop::collection::vec(-10.0f32..10.0, DIM), 1..=TILE_PROBES),
            rows in prop::collection::vec(prop::collection::vec(-10.0f32..10.0, DIM), 0..=LANES),
        ) {
            let qs: Vec<[f32; DIM]> = qs.into_iter().map(|r| r.try_into().unwrap()).collect();
            let rows: Vec<[f32; DIM]> = rows.into_iter().map(|r| r.try_into().unwrap()).collect();
            let mut packed = [f32::NAN; PACKED_GROUP];
            pack_group(&rows, &mut packed);
            for k in Kernels::available() {
                let mut out = [f32::NAN; TILE_PROBES * LANES];
                k.dots_tile(&qs, &packed, &mut out);
                for (p, q) in qs.iter().enumerate() {
                    for lane in 0..LANES {
                        let want: f32 = rows.get(lane).map_or(0.0, |r| q.iter().zip(r).map(|(a, b)| a * b).sum());
                        let mag: f32 = rows.get(lane).map_or(0.0, |r| q.iter().zip(r).map(|(a, b)| (a * b).abs()).sum());
                        let got = out[p * LANES + lane];
                        prop_assert!((got - want).abs() <= 1e-4 * mag.max(1.0), "{} p {p} lane {lane}: {got} vs {want}", k.name());
                    }
                }
            }
        }

        #[test]
        fn every_sq8_kernel_matches_scalar(
            qm in prop::collection::vec(-2.0f32..2.0, DIM),
            step in prop::collection::vec(0.0f32..0.02, DIM),
            codes in prop::collection::vec(prop::collection::vec(0u8..=255, DIM), 0..20),
        ) {
            let qm: [f32; DIM] = qm.try_into().unwrap();
            let step: [f32; DIM] = step.try_into().unwrap();
            let codes: Vec<[u8; DIM]> = codes.into_iter().map(|r| r.try_into().unwrap()).collect();
            let mut want = vec![0f32; codes.len()];
            scalar::sq8_l2_many(&qm, &step, &codes, &mut want);
            for k in Kernels::available() {
                let mut got = vec![f32::NAN; codes.len() + 2];
                k.sq8_l2_many(&qm, &step, &codes, &mut got);
                for i in 0..codes.len() {
                    prop_assert!(close(got[i], want[i]), "{} row {i}: {} vs {}", k.name(), got[i], want[i]);
                }
                prop_assert!(got[codes.len()..].iter().all(|x| x.is_nan()), "wrote past the rows");
            }
        }

        #[test]
        fn every_u8_dots_kernel_matches_scalar_exactly(
            ms in prop::collection::vec(prop::collection::vec(-INT_WEIGHT_MAX..=INT_WEIGHT_MAX, DIM), 1..=TILE_PROBES),
            rows in prop::collection::vec(prop::collection::vec(0u8..=255, DIM), 0..=LANES),
            extreme in any::<bool>(),
        ) {
            // Extreme: every weight at ±the limit and every code 255, the largest sums.
            let ms: Vec<[i32; DIM]> = ms.into_iter().map(|m| {
                let m: [i32; DIM] = m.try_into().unwrap();
                if extreme { m.map(|w| if w < 0 { -INT_WEIGHT_MAX } else { INT_WEIGHT_MAX }) } else { m }
            }).collect();
            let rows: Vec<[u8; DIM]> = rows.into_iter().map(|r| {
                let r: [u8; DIM] = r.try_into().unwrap();
                if extreme { [255; DIM] } else { r }
            }).collect();
            let qs: Vec<IntProbe> = ms.iter().map(IntProbe::new).collect();
            let mut packed = [7u8; PACKED_CODES];
            pack_codes(&rows, &mut packed);
            for k in Kernels::available() {
                let mut out = [i32::MIN; TILE_PROBES * LANES];
                k.dots_u8_tile(&qs, &packed, &mut out);
                for (p, m) in ms.iter().enumerate() {
                    for lane in 0..LANES {
                        // Independent of the byte split: i64 over the original weights.
                        let want: i64 = rows.get(lane).map_or(0, |r| m.iter().zip(r).map(|(&w, &c)| i64::from(w) * i64::from(c)).sum());
                        prop_assert_eq!(i64::from(out[p * LANES + lane]), want, "{} p {} lane {}", k.name(), p, lane);
                    }
                }
                prop_assert!(out[qs.len() * LANES..].iter().all(|&x| x == i32::MIN), "wrote past the probes");
            }
        }

        #[test]
        fn every_u8_estimate_kernel_matches_scalar_bit_for_bit(
            ms in prop::collection::vec(prop::collection::vec(-INT_WEIGHT_MAX..=INT_WEIGHT_MAX, DIM), 1..=TILE_PROBES),
            rows in prop::collection::vec(prop::collection::vec(0u8..=255, DIM), 0..=LANES),
            forms in prop::collection::vec((-100.0f32..100.0, 0.0f32..1e-3, -10.0f32..200.0), TILE_PROBES),
            xn in prop::collection::vec(0.0f32..100.0, LANES),
        ) {
            let qs: Vec<IntProbe> = ms.iter().map(|m| IntProbe::new(&m.clone().try_into().unwrap())).collect();
            let rows: Vec<[u8; DIM]> = rows.into_iter().map(|r| r.try_into().unwrap()).collect();
            let forms: Vec<TileForm> = forms.into_iter().map(|(c0, a, bound)| TileForm { c0, alpha2: 2.0 * a, bound }).collect();
            let xn: [f32; LANES] = xn.try_into().unwrap();
            let mut packed = [0u8; PACKED_CODES];
            pack_codes(&rows, &mut packed);
            let mut want = [f32::NAN; TILE_PROBES * LANES];
            let want_masks = scalar::est_u8_tile(&qs, &forms, &xn, &packed, &mut want);
            for k in Kernels::available() {
                let mut got = [f32::NAN; TILE_PROBES * LANES];
                let masks = k.est_u8_tile(&qs, &forms, &xn, &packed, &mut got);
                for i in 0..qs.len() * LANES {
                    prop_assert_eq!(got[i].to_bits(), want[i].to_bits(), "{} at {}", k.name(), i);
                }
                prop_assert_eq!(masks, want_masks, "{}", k.name());
                prop_assert!(got[qs.len() * LANES..].iter().all(|x| x.is_nan()), "wrote past the probes");
            }
        }

        #[test]
        fn every_u8_row_estimate_kernel_matches_the_tile_kernel_bit_for_bit(
            m in prop::collection::vec(-INT_WEIGHT_MAX..=INT_WEIGHT_MAX, DIM),
            rows in prop::collection::vec(prop::collection::vec(0u8..=255, DIM), 0..40),
            (c0, a) in (-100.0f32..100.0, 0.0f32..1e-3),
            xn in prop::collection::vec(0.0f32..100.0, 40),
        ) {
            let q = IntProbe::new(&m.try_into().unwrap());
            let rows: Vec<[u8; DIM]> = rows.into_iter().map(|r| r.try_into().unwrap()).collect();
            let form = TileForm { c0, alpha2: 2.0 * a, bound: 0.0 };
            // The reference: the packed tile kernel, sixteen rows at a time.
            let mut want = vec![0f32; rows.len()];
            for (g, chunk) in rows.chunks(LANES).enumerate() {
                let mut packed = [0u8; PACKED_CODES];
                pack_codes(chunk, &mut packed);
                let mut x = [0f32; LANES];
                x[..chunk.len()].copy_from_slice(&xn[g * LANES..g * LANES + chunk.len()]);
                let mut out = [0f32; TILE_PROBES * LANES];
                scalar::est_u8_tile(&[q], &[form], &x, &packed, &mut out);
                want[g * LANES..g * LANES + chunk.len()].copy_from_slice(&out[..chunk.len()]);
            }
            for k in Kernels::available() {
                let mut got = vec![f32::NAN; rows.len() + 3];
                k.est_u8_rows(&q, &form, &xn, &rows, &mut got);
                for i in 0..rows.len() {
                    prop_assert_eq!(got[i].to_bits(), want[i].to_bits(), "{} row {}", k.name(), i);
                }
                prop_assert!(got[rows.len()..].iter().all(|x| x.is_nan()), "wrote past the rows");
            }
        }

        #[test]
        fn every_many_kernel_matches_scalar(
            q in prop::collection::vec(-10.0f32..10.0, DIM),
            rows in prop::collection::vec(prop::collection::vec(-10.0f32..10.0, DIM), 0..40),
        ) {
            let q: [f32; DIM] = q.try_into().unwrap();
            let rows: Vec<[f32; DIM]> = rows.into_iter().map(|r| r.try_into().unwrap()).collect();
            let mut want = vec![0f32; rows.len()];
            scalar::l2sq_many(&q, &rows, &mut want);
            for k in Kernels::available() {
                let mut got = vec![f32::NAN; rows.len() + 3];
                k.l2sq_many(&q, &rows, &mut got);
                for i in 0..rows.len() {
                    prop_assert!(close(got[i], want[i]), "{} row {i}: {} vs {}", k.name(), got[i], want[i]);
                    prop_assert!(close(got[i], scalar::l2sq(&q, &rows[i])));
                }
                prop_assert!(got[rows.len()..].iter().all(|x| x.is_nan()), "wrote past the rows");
            }
        }
    }
}

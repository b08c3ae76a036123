//! The machine's bounds for exact search, measured with every core:
//!
//! - **memory read bandwidth**: the floor of one exact probe, which must read
//!   every stored vector once (`N × 512` bytes for `f32`, `N × 128` for 8-bit
//!   codes);
//! - **FMA peak**: the floor of a large batch, where distances are computed in
//!   the GEMM form `‖x‖² + ‖q‖² − 2·x·q` and the dot products dominate: one
//!   fused multiply-add per dimension per (probe, vector) pair, counted as
//!   **2 flops** (`2 · d` per distance, the convention BLAS and faiss use).

use std::time::{Duration, Instant};

/// Memory read bandwidth with every core: median of `reps` reads of a `bytes` buffer.
#[derive(Debug, Clone, Copy)]
pub struct Bandwidth {
    /// Buffer size.
    pub bytes: usize,
    /// Median time of one full read.
    pub median: Duration,
    /// Threads that read it.
    pub threads: usize,
}

impl Bandwidth {
    /// Bytes per second.
    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.median.as_secs_f64()
    }
}

/// Measure the memory read bandwidth (see [`crate::memory_read_time`]).
pub fn memory_read_bandwidth(bytes: usize, reps: usize) -> Bandwidth {
    Bandwidth {
        bytes,
        median: crate::memory_read_time(bytes, reps.max(1)),
        threads: rayon::current_num_threads(),
    }
}

/// Vector instruction set used for the FMA peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// 512-bit FMA (16 `f32` lanes).
    Avx512,
    /// 256-bit FMA (8 `f32` lanes).
    Avx2Fma,
    /// A multiply-add loop the compiler vectorises for the baseline target.
    Portable,
}

impl Isa {
    /// The best one this CPU has (checked at run time).
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2Fma;
            }
        }
        Isa::Portable
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512f",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Portable => "portable",
        }
    }

    /// Flops of one iteration of its loop (each multiply-add counts 2).
    fn flops_per_iter(self) -> u64 {
        match self {
            Isa::Avx512 => (ACC * 16 * 2) as u64,
            Isa::Avx2Fma => (ACC * 8 * 2) as u64,
            Isa::Portable => (PORTABLE_LANES * 2) as u64,
        }
    }

    /// Run `iters` iterations of its loop; returns a value that depends on all of them.
    #[allow(
        unsafe_code,
        reason = "calls the `#[target_feature]` loops, after `detect` checked the CPU"
    )]
    fn run(self, iters: u64) -> f32 {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                // SAFETY: `Isa::Avx512` comes only from `detect`, which checked at run
                // time that this CPU has AVX-512F, the one feature the fn enables.
                unsafe { fma_loop_avx512(iters) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => {
                // SAFETY: `Isa::Avx2Fma` comes only from `detect`, which checked at run
                // time that this CPU has AVX2 and FMA, the features the fn enables.
                unsafe { fma_loop_avx2(iters) }
            }
            _ => fma_loop_portable(iters),
        }
    }
}

/// Independent accumulators: enough to cover FMA latency × FMA ports (4 × 2)
/// with room to spare, few enough to stay in the 16 AVX2 registers with the
/// two constants.
const ACC: usize = 12;
const PORTABLE_LANES: usize = 64;
/// Each step is `acc = acc · A + B`: it converges to `B / (1 − A)`, so no
/// overflow or denormals however long it runs.
const A: f32 = 0.999_99;
const B: f32 = 1e-6;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_loop_avx512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(std::hint::black_box(A));
    let b = _mm512_set1_ps(std::hint::black_box(B));
    let mut acc = [_mm512_set1_ps(1.0); ACC];
    for _ in 0..iters {
        for x in &mut acc {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for x in acc {
        s = _mm512_add_ps(s, x);
    }
    _mm512_reduce_add_ps(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_loop_avx2(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(std::hint::black_box(A));
    let b = _mm256_set1_ps(std::hint::black_box(B));
    let mut acc = [_mm256_set1_ps(1.0); ACC];
    for _ in 0..iters {
        for x in &mut acc {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut s = _mm256_setzero_ps();
    for x in acc {
        s = _mm256_add_ps(s, x);
    }
    let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let h = _mm_hadd_ps(h, h);
    _mm_cvtss_f32(_mm_hadd_ps(h, h))
}

/// Separate multiply and add (no FMA in the baseline x86-64 target); flops
/// are counted the same way, 2 per multiply-add.
fn fma_loop_portable(iters: u64) -> f32 {
    let a = std::hint::black_box(A);
    let b = std::hint::black_box(B);
    let mut acc = [1.0f32; PORTABLE_LANES];
    for _ in 0..iters {
        for x in &mut acc {
            *x = *x * a + b;
        }
    }
    acc.iter().sum()
}

/// The FMA peak with every core.
#[derive(Debug, Clone, Copy)]
pub struct FmaPeak {
    /// Instruction set of the loop.
    pub isa: Isa,
    /// Threads that ran it.
    pub threads: usize,
    /// Flops per second (multiply-add = 2), the best of the runs.
    pub flops_per_sec: f64,
}

/// Measure the FMA peak: every core runs the loop of the best instruction set
/// for about `secs` seconds; the best of `reps` runs.
pub fn fma_peak(secs: f64, reps: usize) -> FmaPeak {
    let isa = Isa::detect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Calibrate the iteration count on one thread.
    let mut iters = 1u64 << 16;
    loop {
        let t = Instant::now();
        std::hint::black_box(isa.run(iters));
        let e = t.elapsed().as_secs_f64();
        if e > 0.05 {
            iters = ((iters as f64) * secs / e).max(1.0) as u64;
            break;
        }
        iters *= 4;
    }
    let mut best = 0f64;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| std::hint::black_box(isa.run(iters)));
            }
        });
        let e = t.elapsed().as_secs_f64();
        best = best.max((iters * isa.flops_per_iter() * threads as u64) as f64 / e);
    }
    FmaPeak {
        isa,
        threads,
        flops_per_sec: best,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_available_loop_computes_the_same_recurrence() {
        // After n steps each lane holds the same value, whatever the width.
        let n = 1000;
        let mut x = 1.0f32;
        for _ in 0..n {
            x = x.mul_add(A, B);
        }
        let isa = Isa::detect();
        let lanes = match isa {
            Isa::Avx512 => ACC * 16,
            Isa::Avx2Fma => ACC * 8,
            Isa::Portable => PORTABLE_LANES,
        };
        let got = isa.run(n);
        assert!(
            (got / lanes as f32 - x).abs() < 1e-3,
            "{}: {got} vs {lanes} × {x}",
            isa.name()
        );
        let p = fma_loop_portable(n);
        assert!((p / PORTABLE_LANES as f32 - x).abs() < 1e-3);
    }
}

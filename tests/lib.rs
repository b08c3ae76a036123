//! Helpers shared by the integration tests (and the benches and fuzz targets):
//! a seeded PRNG and data generators.

use visage_engine::rng::splitmix64;
use visage_engine::{DIM, Embedding};

pub mod calibration;
pub mod cluster;
pub mod faults;
pub mod scan;

/// The engine's splitmix64 ([`visage_engine::rng`]) with the test data's
/// samplers: `Rng(s)` starts at state `s` itself (the engine's `Rng::new`
/// mixes its seed first), and [`Rng::f32`] and [`Rng::below`] use the bits
/// their own way. Every seeded test and fuzz seed depends on these values.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.0)
    }
    /// Uniform in [0, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        self.f32() * 2.0 - 1.0
    }
    /// A vector of the default dimension ([`DIM`]) with values uniform in [-1, 1).
    pub fn vector(&mut self) -> Vec<f32> {
        self.vector_of(DIM)
    }
    /// A vector of `dim` values uniform in [-1, 1) (at [`DIM`] the same
    /// values as [`Rng::vector`]).
    pub fn vector_of(&mut self, dim: usize) -> Vec<f32> {
        (0..dim).map(|_| self.unit()).collect()
    }
}

/// An embedding with a random vector of the default dimension.
pub fn embedding(rng: &mut Rng, id: u64, subject: &str) -> Embedding {
    embedding_of(rng, id, subject, DIM)
}

/// An embedding with a random vector of `dim` values.
pub fn embedding_of(rng: &mut Rng, id: u64, subject: &str, dim: usize) -> Embedding {
    Embedding {
        id,
        subject: subject.to_owned(),
        vector: rng.vector_of(dim),
    }
}

/// CRC-32 (IEEE 802.3, reflected), bitwise: the reference tests reseal
/// hand-edited files with, sharing no code with the engine's `crc32fast`.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Squared L2 in f64: the independent reference for distances.
pub fn l2sq_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum()
}

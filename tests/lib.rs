//! Helpers shared by the integration tests (and the benches and fuzz targets):
//! a seeded PRNG and data generators.

use visage_engine::{DIM, Embedding};

pub mod faults;
pub mod scan;

/// splitmix64: a small, good PRNG for reproducible test data.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
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
    /// A vector with values uniform in [-1, 1).
    pub fn vector(&mut self) -> Vec<f32> {
        (0..DIM).map(|_| self.unit()).collect()
    }
}

/// An embedding with a random vector.
pub fn embedding(rng: &mut Rng, id: u64, subject: &str) -> Embedding {
    Embedding {
        id,
        subject: subject.to_owned(),
        vector: rng.vector(),
    }
}

/// Squared L2 in f64: the independent reference for distances.
pub fn l2sq_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum()
}

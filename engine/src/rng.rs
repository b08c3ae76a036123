//! The seeded pseudo-random generator: splitmix64, with uniform, bounded and
//! standard-normal (Box–Muller) samplers. The one generator of the repository:
//! the head's pair sampling, the synthetic data of [`crate::synth`] (whose
//! `SynthRng` is this [`Rng`]) and the test helpers' `visage_tests::Rng`
//! (through [`splitmix64`]) all draw from it.
//!
//! Not cryptographic, and not meant to be: what matters is that a seed gives
//! the same numbers on every machine and thread count, forever. Every seeded
//! test, benchmark data set and fuzz seed depends on these exact values, so
//! the constants, the seeding and the samplers' use of the bits never change.

/// One step of splitmix64: advance `state` by the golden-ratio increment and
/// return the next 64 random bits (Steele, Lea and Flood's finaliser).
#[inline]
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded generator: splitmix64 with Box–Muller normals.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
    /// The second normal of the last Box–Muller pair, returned next.
    spare: Option<f32>,
}

impl Rng {
    /// A generator from a seed (its state starts at `seed ^ 0x5151_5151_5151_5151`).
    pub fn new(seed: u64) -> Rng {
        Rng {
            state: seed ^ 0x5151_5151_5151_5151,
            spare: None,
        }
    }

    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.state)
    }

    /// Uniform in [0, 1), from the top 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n) (`n > 0`), by multiply-shift: no modulo bias beyond 2⁻⁶⁴·n.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Standard normal (Box–Muller: two uniforms give two normals; the second
    /// is kept for the next call).
    pub fn normal(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        self.spare = Some((r * s) as f32);
        (r * c) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values every seeded data set rests on: splitmix64's published
    /// output for state 0 (the reference implementation's first three), and
    /// `Rng::new`'s seeding.
    #[test]
    fn splitmix64_matches_the_reference_and_seeding_is_fixed() {
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(splitmix64(&mut s), 0x06C4_5D18_8009_454F);
        let mut state = 7 ^ 0x5151_5151_5151_5151;
        let mut r = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(r.next_u64(), splitmix64(&mut state));
        }
    }

    #[test]
    fn samplers_stay_in_range() {
        let mut r = Rng::new(1);
        for n in 1..200 {
            assert!(r.below(n) < n);
            assert!((0.0..1.0).contains(&r.uniform()));
        }
        let normals: Vec<f64> = (0..20_000).map(|_| r.normal() as f64).collect();
        let mean = normals.iter().sum::<f64>() / normals.len() as f64;
        let var = normals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / normals.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}

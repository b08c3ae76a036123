//! A seeded generator of synthetic, face-like embeddings, shared by tests,
//! benches and the demo.
//!
//! Each subject has a centre drawn uniformly on the unit sphere; each image is
//! `normalize(centre + noise)` where the noise is Gaussian with a standard
//! deviation per coordinate. With [`Nuisance::Anisotropic`] a random subset of
//! coordinates varies much more than the rest (like pose and lighting, which
//! move some directions of a real face embedding far more than identity does);
//! with [`Nuisance::Isotropic`] every coordinate varies alike, with the same
//! total noise energy. Probes are new images of enrolled subjects, or images of
//! people never enrolled (fresh centres).
//!
//! Any dimension (a multiple of 16) can be generated; the nuisance settings
//! are stated for 128 values and scaled to the dimension (as many strong
//! coordinates in proportion, each coordinate's deviation by `√(128/D)`), so
//! a gallery is as hard to search at 512 values as at 128. At 128 values the
//! data are what they always were, bit for bit.

use crate::rng::Rng;
use crate::{DIM, Embedding};

/// How image-to-image variation is spread over the coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Nuisance {
    /// `strong_dims` random coordinates with standard deviation `strong_sigma`, the rest `weak_sigma`.
    Anisotropic {
        /// Number of high-variance coordinates.
        strong_dims: usize,
        /// Their standard deviation.
        strong_sigma: f32,
        /// Standard deviation of the others.
        weak_sigma: f32,
    },
    /// Every coordinate with the same standard deviation.
    Isotropic {
        /// Standard deviation.
        sigma: f32,
    },
}

impl Nuisance {
    /// The default anisotropic setting (24 of 128 coordinates carry most of the noise).
    pub const ANISOTROPIC: Nuisance = Nuisance::Anisotropic {
        strong_dims: 24,
        strong_sigma: 0.22,
        weak_sigma: 0.075,
    };

    /// Isotropic noise with the same total energy as [`Nuisance::ANISOTROPIC`].
    pub fn isotropic_matching(n: Nuisance) -> Nuisance {
        match n {
            Nuisance::Anisotropic {
                strong_dims,
                strong_sigma,
                weak_sigma,
            } => {
                let energy = strong_dims as f32 * strong_sigma * strong_sigma
                    + (DIM - strong_dims) as f32 * weak_sigma * weak_sigma;
                Nuisance::Isotropic {
                    sigma: (energy / DIM as f32).sqrt(),
                }
            }
            iso => iso,
        }
    }
}

impl Nuisance {
    /// This setting, stated for 128 values, at `dim` values.
    fn at_dim(self, dim: usize) -> Nuisance {
        if dim == DIM {
            return self;
        }
        let scale = (DIM as f32 / dim as f32).sqrt();
        match self {
            Nuisance::Anisotropic {
                strong_dims,
                strong_sigma,
                weak_sigma,
            } => Nuisance::Anisotropic {
                strong_dims: strong_dims * dim / DIM,
                strong_sigma: strong_sigma * scale,
                weak_sigma: weak_sigma * scale,
            },
            Nuisance::Isotropic { sigma } => Nuisance::Isotropic {
                sigma: sigma * scale,
            },
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthConfig {
    /// Values per vector (a multiple of 16; 128 by default).
    pub dim: usize,
    /// Enrolled subjects.
    pub subjects: usize,
    /// Fewest images per subject.
    pub min_images: usize,
    /// Most images per subject.
    pub max_images: usize,
    /// Variation between images of one subject.
    pub nuisance: Nuisance,
    /// Seed: the same seed gives the same data.
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            dim: DIM,
            subjects: 1000,
            min_images: 8,
            max_images: 12,
            nuisance: Nuisance::ANISOTROPIC,
            seed: 1,
        }
    }
}

/// The seeded random source of the generator: the crate's [`Rng`] under the
/// name synth has always used for it (same type, same values).
pub type SynthRng = Rng;

/// Synth's sampler on the generator (an inherent method, so that
/// `rng.unit_vector()` reads as it always has).
impl Rng {
    /// A point uniform on the unit sphere of `dim` dimensions.
    pub fn unit_vector(&mut self, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim).map(|_| self.normal()).collect();
        normalize(&mut v);
        v
    }
}

fn normalize(v: &mut [f32]) {
    let n = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    for x in v.iter_mut() {
        *x /= n;
    }
}

/// A probe and who it really is (`None`: a stranger).
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// The vector.
    pub vector: Vec<f32>,
    /// The enrolled subject it shows, or `None` for someone never enrolled.
    pub subject: Option<String>,
}

/// A generated organisation.
#[derive(Debug, Clone)]
pub struct SynthGallery {
    /// The configuration.
    pub config: SynthConfig,
    /// Enrolled embeddings, ids `0..`, subjects `subj-000000`....
    pub embeddings: Vec<Embedding>,
    centres: Vec<Vec<f32>>,
    sigmas: Vec<f32>,
}

/// Subject name of subject number `i`.
pub fn subject_name(i: usize) -> String {
    format!("subj-{i:06}")
}

impl SynthGallery {
    /// Generate an organisation.
    pub fn generate(config: SynthConfig) -> SynthGallery {
        let mut rng = SynthRng::new(config.seed);
        let dim = config.dim;
        let sigmas = match config.nuisance.at_dim(dim) {
            Nuisance::Isotropic { sigma } => vec![sigma; dim],
            Nuisance::Anisotropic {
                strong_dims,
                strong_sigma,
                weak_sigma,
            } => {
                let mut sigmas = vec![weak_sigma; dim];
                // A random subset of coordinates (partial Fisher–Yates).
                let mut idx: Vec<usize> = (0..dim).collect();
                for i in 0..strong_dims.min(dim) {
                    let j = i + rng.below(dim - i);
                    idx.swap(i, j);
                    sigmas[idx[i]] = strong_sigma;
                }
                sigmas
            }
        };
        let mut g = SynthGallery {
            config,
            embeddings: Vec::new(),
            centres: Vec::new(),
            sigmas,
        };
        let span = config.max_images.saturating_sub(config.min_images) + 1;
        for s in 0..config.subjects {
            let centre = rng.unit_vector(dim);
            let n = config.min_images + rng.below(span);
            for _ in 0..n {
                let v = g.image(&mut rng, &centre);
                let id = g.embeddings.len() as u64;
                g.embeddings.push(Embedding {
                    id,
                    subject: subject_name(s),
                    vector: v,
                });
            }
            g.centres.push(centre);
        }
        g
    }

    /// One image of a face with this centre.
    pub fn image(&self, rng: &mut SynthRng, centre: &[f32]) -> Vec<f32> {
        let mut v = centre.to_vec();
        for (x, s) in v.iter_mut().zip(&self.sigmas) {
            *x += s * rng.normal();
        }
        normalize(&mut v);
        v
    }

    /// `known` new images of random enrolled subjects and `strangers` images of
    /// people never enrolled, shuffled, from `seed`.
    pub fn probes(&self, known: usize, strangers: usize, seed: u64) -> Vec<Probe> {
        let mut rng = SynthRng::new(seed ^ 0xA5A5_0000_0000_5A5A);
        let mut out = Vec::with_capacity(known + strangers);
        for _ in 0..known {
            let s = rng.below(self.centres.len().max(1));
            if let Some(c) = self.centres.get(s) {
                out.push(Probe {
                    vector: self.image(&mut rng, c),
                    subject: Some(subject_name(s)),
                });
            }
        }
        for _ in 0..strangers {
            let c = rng.unit_vector(self.config.dim);
            out.push(Probe {
                vector: self.image(&mut rng, &c),
                subject: None,
            });
        }
        for i in (1..out.len()).rev() {
            let j = rng.below(i + 1);
            out.swap(i, j);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data_and_unit_norm() {
        let c = SynthConfig {
            subjects: 20,
            ..Default::default()
        };
        let a = SynthGallery::generate(c);
        let b = SynthGallery::generate(c);
        assert_eq!(a.embeddings, b.embeddings);
        assert!(a.embeddings.len() >= 160 && a.embeddings.len() <= 240);
        for e in &a.embeddings {
            let n: f32 = e.vector.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-4);
        }
        assert_eq!(a.probes(5, 5, 9), b.probes(5, 5, 9));
        assert_eq!(
            a.probes(5, 5, 9)
                .iter()
                .filter(|p| p.subject.is_none())
                .count(),
            5
        );
    }

    #[test]
    fn images_of_a_subject_are_closer_than_strangers_on_average() {
        for dim in [128, 512, 96] {
            images_closer_at(dim);
        }
    }

    fn images_closer_at(dim: usize) {
        let g = SynthGallery::generate(SynthConfig {
            dim,
            subjects: 50,
            ..Default::default()
        });
        assert!(g.embeddings.iter().all(|e| e.vector.len() == dim));
        let d = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>();
        let (mut same, mut ns, mut diff, mut nd) = (0f32, 0, 0f32, 0);
        for (i, a) in g.embeddings.iter().enumerate().step_by(7) {
            for b in g.embeddings.iter().skip(i + 1).step_by(5) {
                if a.subject == b.subject {
                    same += d(&a.vector, &b.vector);
                    ns += 1;
                } else {
                    diff += d(&a.vector, &b.vector);
                    nd += 1;
                }
            }
        }
        assert!(
            same / ns as f32 + 0.3 < diff / nd as f32,
            "{} vs {}",
            same / ns as f32,
            diff / nd as f32
        );
    }
}

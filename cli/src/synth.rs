//! `visage synth`: the engine's seeded generator of face-like embeddings
//! (`visage_engine::synth`), written as files every other command reads.
//!
//! ```text
//! visage synth --subjects 1000 --probes 200 --out org
//! visage gallery create org
//! visage synth --subjects 1000 --dim 512 --out org512   # for: gallery create org512 --dim 512
//! visage insert org --vectors org/embeddings.npy --subjects org/subjects.txt --ids org/ids.npy
//! visage identify org --probes org/probes.npy
//! ```

use crate::output::count;
use crate::{Failure, Res, print_json};
use clap::Args;
use serde_json::json;
use std::path::{Path, PathBuf};
use visage_client::npy::{self, Matrix};
use visage_engine::synth::{Nuisance, Probe, SynthConfig, SynthGallery};
use visage_engine::{DIM, GallerySpec};

/// Arguments of `visage synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Enrolled subjects (people), 8 to 12 images each.
    #[arg(long)]
    subjects: usize,
    /// Seed: the same seed writes the same files.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Values per vector: a multiple of 16 from 16 to 2048 (the dimension
    /// of the gallery the files are for).
    #[arg(long, default_value_t = DIM)]
    dim: usize,
    /// Let every coordinate vary alike (same total noise) instead of 24 in
    /// every 128 varying much more than the rest.
    #[arg(long)]
    isotropic: bool,
    /// Probes: half new images of enrolled subjects, half of people never
    /// enrolled (0: write no probe files).
    #[arg(long, default_value_t = 200)]
    probes: usize,
    /// Output directory (created if missing; the five files are overwritten).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// The generator's settings for `subjects` people with vectors of `dim`
/// values; an error for a dimension no gallery can have.
pub fn config(subjects: usize, seed: u64, isotropic: bool, dim: usize) -> Res<SynthConfig> {
    if let Some(why) = GallerySpec::with_dim(dim).problem() {
        return Err(Failure(format!("--dim: {why}")));
    }
    Ok(SynthConfig {
        dim,
        subjects,
        nuisance: if isotropic {
            Nuisance::isotropic_matching(Nuisance::ANISOTROPIC)
        } else {
            Nuisance::ANISOTROPIC
        },
        seed,
        ..SynthConfig::default()
    })
}

/// `n` probes of `g`: `n − n/2` of enrolled subjects, `n/2` strangers, shuffled.
pub fn probes(g: &SynthGallery, n: usize) -> Vec<Probe> {
    g.probes(n - n / 2, n / 2, g.config.seed)
}

/// A name of the nuisance setting for reports.
pub fn nuisance_name(n: Nuisance) -> &'static str {
    match n {
        Nuisance::Anisotropic { .. } => "anisotropic",
        Nuisance::Isotropic { .. } => "isotropic",
    }
}

fn write_text(path: &Path, lines: impl Iterator<Item = String>) -> Res {
    let mut text = String::new();
    for l in lines {
        text.push_str(&l);
        text.push('\n');
    }
    std::fs::write(path, text)
        .map_err(|e| Failure(format!("{}: cannot write: {e}", path.display())))
}

fn matrix<'a>(rows: impl Iterator<Item = &'a [f32]>, dim: usize) -> Matrix {
    let data: Vec<f32> = rows.flatten().copied().collect();
    Matrix {
        rows: data.len() / dim,
        cols: dim,
        data,
    }
}

/// Run `visage synth`.
pub fn run(a: SynthArgs, json: bool) -> Res {
    if a.subjects == 0 {
        return Err(Failure("--subjects must be at least 1".into()));
    }
    let cfg = config(a.subjects, a.seed, a.isotropic, a.dim)?;
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Failure(format!("{}: cannot create: {e}", a.out.display())))?;
    let g = SynthGallery::generate(cfg);
    let e = &g.embeddings;
    let mut files = vec![
        a.out.join("embeddings.npy"),
        a.out.join("subjects.txt"),
        a.out.join("ids.npy"),
    ];
    npy::write_matrix(
        &files[0],
        &matrix(e.iter().map(|e| e.vector.as_slice()), a.dim),
    )?;
    write_text(&files[1], e.iter().map(|e| e.subject.clone()))?;
    let ids: Vec<u64> = e.iter().map(|e| e.id).collect();
    npy::write_ids_i64(&files[2], &ids)?;
    let ps = probes(&g, a.probes);
    if !ps.is_empty() {
        files.push(a.out.join("probes.npy"));
        files.push(a.out.join("probes_truth.txt"));
        npy::write_matrix(
            &files[3],
            &matrix(ps.iter().map(|p| p.vector.as_slice()), a.dim),
        )?;
        write_text(
            &files[4],
            ps.iter()
                .map(|p| p.subject.clone().unwrap_or_else(|| "-".into())),
        )?;
    }
    let known = ps.iter().filter(|p| p.subject.is_some()).count();
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    if json {
        return print_json(&json!({
            "out": a.out.display().to_string(),
            "subjects": a.subjects,
            "embeddings": e.len(),
            "probes": ps.len(),
            "known_probes": known,
            "stranger_probes": ps.len() - known,
            "seed": a.seed,
            "dim": a.dim,
            "nuisance": nuisance_name(g.config.nuisance),
            "files": names,
        }));
    }
    println!(
        "wrote {} embeddings of {} values of {} subjects ({} nuisance, seed {}) and {} probes ({} enrolled, {} strangers) to {}",
        count(e.len() as u64),
        a.dim,
        count(a.subjects as u64),
        nuisance_name(g.config.nuisance),
        a.seed,
        count(ps.len() as u64),
        count(known as u64),
        count((ps.len() - known) as u64),
        a.out.display()
    );
    for f in &names {
        println!("  {f}");
    }
    if a.dim != DIM {
        println!(
            "into a gallery of their dimension: visage gallery create GALLERY --dim {}",
            a.dim
        );
    }
    println!(
        "enrol them with: visage insert GALLERY --vectors {} --subjects {} --ids {}",
        names[0], names[1], names[2]
    );
    Ok(())
}

//! Evaluate the scoring head against plain L2 on synthetic galleries, and
//! export the exact training and held-out pairs so an independent
//! implementation (scikit-learn, `benches/python/head_vs_sklearn.py`) can be
//! trained on the same data.
//!
//! `cargo run --release -p visage-bench --bin head_eval -- [--subjects N] [--export DIR]`

use std::path::PathBuf;
use visage_engine::synth::{Nuisance, SynthConfig, SynthGallery};
use visage_engine::{Engine, EngineOptions, TrainOptions};

fn main() {
    let mut subjects = 2000usize;
    let mut export: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--subjects" => {
                subjects = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--subjects N");
            }
            "--export" => export = Some(args.next().expect("--export DIR").into()),
            other => {
                eprintln!(
                    "unknown argument {other}; usage: head_eval [--subjects N] [--export DIR]"
                );
                std::process::exit(2);
            }
        }
    }
    println!(
        "| data | subjects | embeddings | head AUC | L2 AUC | head TAR@FAR=1e-3 | L2 TAR@FAR=1e-3 | head claim TAR | L2 claim TAR | head EER | L2 EER | train pairs | held-out genuine / impostor | train time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (label, nuisance) in [
        ("anisotropic", Nuisance::ANISOTROPIC),
        (
            "isotropic",
            Nuisance::isotropic_matching(Nuisance::ANISOTROPIC),
        ),
    ] {
        let data = SynthGallery::generate(SynthConfig {
            subjects,
            nuisance,
            seed: 7,
            ..Default::default()
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = EngineOptions::default();
        o.gallery.background = false;
        let engine = Engine::open(dir.path(), o).expect("open");
        let g = engine.create_gallery("eval").expect("create");
        for chunk in data.embeddings.chunks(10_000) {
            g.insert(chunk).expect("insert");
        }
        g.flush().expect("flush");
        let opts = TrainOptions::default();
        let t = std::time::Instant::now();
        let h = g.train_head(&opts).expect("train");
        let secs = t.elapsed().as_secs_f64();
        // Claims against a subject (all its images), at the same target, at
        // the image count the calibration measured them for.
        let claims = h.calibrated.as_ref().and_then(|c| c.claims.as_ref());
        let claim = |f: fn(&visage_engine::head::ClaimCalibration) -> f64| {
            claims.map_or_else(
                || "-".to_owned(),
                |c| format!("{:.4} (m = {})", f(c), c.images),
            )
        };
        println!(
            "| {label} | {subjects} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {} | {:.4} | {:.4} | {} | {} / {} | {:.2} s |",
            data.embeddings.len(),
            h.auc,
            h.distance_auc,
            h.tar_at_far,
            h.distance_tar_at_far,
            claim(|c| c.tar),
            claim(|c| c.distance_tar),
            h.eer,
            h.distance_eer,
            h.pairs,
            h.heldout_genuine,
            h.heldout_impostor,
            secs
        );
        if let Some(dir) = &export {
            let out = dir.join(label);
            std::fs::create_dir_all(&out).expect("export dir");
            let (train, held) = g.export_pairs(&opts).expect("export");
            write_pairs(&out.join("train"), &train);
            write_pairs(&out.join("heldout"), &held);
            std::fs::write(
                out.join("visage_auc.txt"),
                format!("{}\n{}\n", h.auc, h.distance_auc),
            )
            .expect("write");
        }
    }
}

fn write_pairs(prefix: &std::path::Path, pairs: &(Vec<f32>, Vec<bool>)) {
    let (x, y) = pairs;
    let dim = x.len() / y.len().max(1);
    visage_client::npy::write_f32(prefix.with_extension("x.npy"), x, &[y.len(), dim])
        .expect("write x");
    let labels: Vec<f32> = y.iter().map(|&l| if l { 1.0 } else { 0.0 }).collect();
    visage_client::npy::write_f32(prefix.with_extension("y.npy"), &labels, &[y.len()])
        .expect("write y");
}

//! The tiled batch scan returns exactly what the per-probe scan returns.

use visage_engine::{Embedding, Engine, EngineOptions};
use visage_tests::Rng;

fn gallery_with_everything(
    dir: &std::path::Path,
    rng: &mut Rng,
    duplicates: bool,
) -> (Engine, Vec<Vec<f32>>) {
    let mut o = EngineOptions::default();
    o.gallery.background = false;
    let engine = Engine::open(dir, o).unwrap();
    let g = engine.create_gallery("t").unwrap();
    let base: Vec<Vec<f32>> = (0..50).map(|_| rng.vector()).collect();
    let mut id = 0u64;
    for round in 0..3 {
        let batch: Vec<Embedding> = (0..3000)
            .map(|i| {
                id += 1;
                // With duplicates, many rows share a few vectors exactly: ties everywhere.
                let vector = if duplicates {
                    base[(i * 7 + round) % base.len()].clone()
                } else {
                    rng.vector()
                };
                Embedding {
                    id,
                    subject: format!("s{}", id % 400),
                    vector,
                }
            })
            .collect();
        g.insert(&batch).unwrap();
        if round < 2 {
            g.flush().unwrap();
        }
    }
    let doomed: Vec<u64> = (1..id).step_by(13).collect();
    g.delete(&doomed, &["s7".to_string()]).unwrap();
    drop(g);
    (engine, base)
}

fn check(duplicates: bool) {
    for seed in [1u64, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(seed);
        let (engine, base) = gallery_with_everything(dir.path(), &mut rng, duplicates);
        let g = engine.gallery("t").unwrap();
        // 61 probes (above the tiled threshold): full tiles of 8 and a remainder; some equal to stored vectors.
        let probes: Vec<Vec<f32>> = (0..61)
            .map(|i| {
                if i % 5 == 0 {
                    base[i % base.len()].clone()
                } else {
                    rng.vector()
                }
            })
            .collect();
        for k in [1usize, 10, 64] {
            let batch = g.search(&probes, k).unwrap();
            for (i, p) in probes.iter().enumerate() {
                let single = g.search(std::slice::from_ref(p), k).unwrap();
                assert_eq!(
                    batch[i], single[0],
                    "seed {seed} probe {i} k {k} duplicates {duplicates}"
                );
            }
        }
    }
}

#[test]
fn tiled_batches_equal_single_probe_scans() {
    check(false);
}

#[test]
fn tiled_batches_equal_single_probe_scans_with_exact_duplicates() {
    check(true);
}

//! The tiled batch scan returns exactly what the per-probe scan returns, and
//! what the direct scan returns, at each dimension of `support::DIMS` (128,
//! 512 and 96, the generic kernels).

use crate::support::{DIMS, create};
use visage_engine::{Embedding, Engine, EngineOptions};
use visage_tests::Rng;

fn gallery_with_everything(
    dir: &std::path::Path,
    rng: &mut Rng,
    duplicates: bool,
    dim: usize,
) -> (Engine, Vec<Vec<f32>>) {
    let mut o = EngineOptions::default();
    o.gallery.background = false;
    let engine = Engine::open(dir, o).unwrap();
    let g = create(&engine, "t", dim);
    let base: Vec<Vec<f32>> = (0..50).map(|_| rng.vector_of(dim)).collect();
    let mut id = 0u64;
    for round in 0..3 {
        let batch: Vec<Embedding> = (0..3000)
            .map(|i| {
                id += 1;
                // With duplicates, many rows share a few vectors exactly: ties everywhere.
                let vector = if duplicates {
                    base[(i * 7 + round) % base.len()].clone()
                } else {
                    rng.vector_of(dim)
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
    for dim in DIMS {
        // Three galleries at the default dimension; one at the others, whose
        // structure (segments, memtable, deletes, tiles) is the same.
        let seeds: &[u64] = if dim == visage_engine::DIM {
            &[1, 2, 3]
        } else {
            &[1]
        };
        for &seed in seeds {
            let dir = tempfile::tempdir().unwrap();
            let mut rng = Rng(seed);
            let (engine, base) = gallery_with_everything(dir.path(), &mut rng, duplicates, dim);
            let g = engine.gallery("t").unwrap();
            // 61 probes (above the tiled threshold): full tiles of 8 and a remainder; some equal to stored vectors.
            let probes: Vec<Vec<f32>> = (0..61)
                .map(|i| {
                    if i % 5 == 0 {
                        base[i % base.len()].clone()
                    } else {
                        rng.vector_of(dim)
                    }
                })
                .collect();
            let flat: Vec<f32> = probes.concat();
            for k in [1usize, 10, 64] {
                let ctx = format!("dim {dim} seed {seed} k {k} duplicates {duplicates}");
                let batch = g.search(&probes, k).unwrap();
                let direct = visage_engine::fuzzing::search_direct(&g, &flat, k);
                for (i, p) in probes.iter().enumerate() {
                    let single = g.search(std::slice::from_ref(p), k).unwrap();
                    assert_eq!(batch[i], single[0], "{ctx} probe {i}: batch vs alone");
                    let got: Vec<(u64, u32)> = batch[i]
                        .iter()
                        .map(|h| (h.id, h.distance.to_bits()))
                        .collect();
                    let want: Vec<(u64, u32)> =
                        direct[i].iter().map(|&(id, d)| (id, d.to_bits())).collect();
                    assert_eq!(got, want, "{ctx} probe {i}: batch vs the direct scan");
                }
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

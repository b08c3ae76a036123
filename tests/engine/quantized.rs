//! The 8-bit path: every returned distance is the exact one, and recall
//! against the exact scan stays high on realistic and on uniform data, at
//! each dimension of `support::DIMS` (128, 512 and 96, the generic kernels).

use visage_engine::synth::{SynthConfig, SynthGallery};
use visage_engine::{Engine, EngineOptions, ScanMode, SearchOptions};
use visage_tests::Rng;

use crate::support::{DIMS, create};

fn run(embeddings: &[visage_engine::Embedding], probes: &[Vec<f32>], min_recall: f64) {
    let dim = embeddings[0].vector.len();
    let dir = tempfile::tempdir().unwrap();
    let mut o = EngineOptions::default();
    o.gallery.background = false;
    let engine = Engine::open(dir.path(), o).unwrap();
    let g = create(&engine, "q", dim);
    let half = embeddings.len() / 2;
    g.insert(&embeddings[..half]).unwrap();
    g.flush().unwrap();
    g.insert(&embeddings[half..]).unwrap();
    g.flush().unwrap();
    // Some rows stay in the memtable (scanned exactly) and some are deleted.
    let extra: Vec<_> = embeddings[..50]
        .iter()
        .map(|e| visage_engine::Embedding {
            id: e.id + 10_000_000,
            ..e.clone()
        })
        .collect();
    g.insert(&extra).unwrap();
    let doomed: Vec<u64> = embeddings.iter().step_by(11).map(|e| e.id).collect();
    g.delete(&doomed, &[]).unwrap();
    for k in [1usize, 10, 50] {
        let exact = g
            .search_with(
                probes,
                &SearchOptions {
                    k,
                    ..Default::default()
                },
            )
            .unwrap();
        // Batches of 16: below the size where the engine switches to the exact tiled scan.
        let quant: Vec<Vec<visage_engine::Hit>> = probes
            .chunks(16)
            .flat_map(|c| {
                g.search_with(
                    c,
                    &SearchOptions {
                        k,
                        mode: ScanMode::Quantized,
                        ..Default::default()
                    },
                )
                .unwrap()
            })
            .collect();
        let (mut found, mut total) = (0usize, 0usize);
        for (e, q) in exact.iter().zip(&quant) {
            assert_eq!(q.len(), e.len(), "dim {dim}, k {k}");
            // Every returned hit carries its exact distance (same as the exact scan reports for that id).
            let single = g.get(&q.iter().map(|h| h.id).collect::<Vec<_>>());
            assert_eq!(
                single.len(),
                q.len(),
                "dim {dim}: quantized search returned a deleted or unknown id"
            );
            for h in q {
                if let Some(x) = e.iter().find(|x| x.id == h.id) {
                    assert_eq!(x.distance, h.distance, "dim {dim}, id {}", h.id);
                }
            }
            assert!(
                q.windows(2)
                    .all(|w| (w[0].distance, w[0].id) <= (w[1].distance, w[1].id)),
                "dim {dim}: not sorted"
            );
            // Recall counts ties: a hit as close as the exact k-th neighbour is correct.
            let kth = e.last().map_or(f32::INFINITY, |x| x.distance);
            found += q.iter().filter(|h| h.distance <= kth).count();
            total += e.len();
        }
        let recall = found as f64 / total as f64;
        println!("dim {dim}, k {k}: 8-bit recall {recall}");
        assert!(
            recall >= min_recall,
            "dim {dim}, k {k}: recall {recall} below {min_recall}"
        );
    }
}

#[test]
fn quantized_search_returns_exact_distances_with_high_recall_on_face_like_data() {
    for dim in DIMS {
        let data = SynthGallery::generate(SynthConfig {
            dim,
            subjects: 600,
            seed: 3,
            ..Default::default()
        });
        let probes: Vec<Vec<f32>> = data
            .probes(100, 100, 4)
            .into_iter()
            .map(|p| p.vector)
            .collect();
        run(&data.embeddings, &probes, 0.999);
    }
}

#[test]
fn quantized_search_on_uniform_data() {
    for dim in DIMS {
        let mut rng = Rng(9);
        let embeddings: Vec<_> = (0..6000u64)
            .map(|i| visage_tests::embedding_of(&mut rng, i, &format!("s{}", i % 500), dim))
            .collect();
        let probes: Vec<Vec<f32>> = (0..100).map(|_| rng.vector_of(dim)).collect();
        run(&embeddings, &probes, 0.99);
    }
}

//! Galleries of every dimension of `support::DIMS` (128, 512 and 96, the
//! generic kernels) side by side in one data directory: each keeps its
//! dimension and model across reopening, with rows in a segment and in the
//! WAL (replayed), deletes and upserts over both, then after compaction; and
//! searches and identifies exactly as brute force after each reopening.
//! (Galleries of older formats open as 128-d: `compat.rs`.)

use crate::support::{
    DIMS, Model, assert_contents, check_identify, check_search, dyadic_vector_of, opts,
};
use visage_engine::{Embedding, Engine, Gallery, GallerySpec};
use visage_tests::Rng;

fn spec(dim: usize) -> GallerySpec {
    GallerySpec {
        dim,
        model: format!("model-{dim}@1"),
        normalize: false,
    }
}

fn name(dim: usize) -> String {
    format!("d{dim}")
}

fn rows(rng: &mut Rng, ids: std::ops::Range<u64>, dim: usize) -> Vec<Embedding> {
    ids.map(|id| Embedding {
        id,
        subject: format!("s{}", id % 23),
        vector: dyadic_vector_of(rng, dim),
    })
    .collect()
}

/// Spec, contents, and search and identification against brute force, with
/// one probe per call and in a batch large enough for the tiled scan.
fn check(g: &Gallery, model: &Model, dim: usize, rng: &mut Rng, ctx: &str) {
    assert_eq!(g.spec(), &spec(dim), "{ctx}: spec");
    assert_eq!(g.dim(), dim, "{ctx}: dimension");
    assert_contents(g, model, 0..600, ctx);
    let probes: Vec<Vec<f32>> = (0..40).map(|_| dyadic_vector_of(rng, dim)).collect();
    for k in [1, 10, model.len() + 1] {
        let batch = g.search(&probes, k).unwrap();
        for (i, p) in probes.iter().enumerate() {
            check_search(&batch[i], model, p, k, true, &format!("{ctx}, probe {i}"));
            if i % 8 == 0 {
                let alone = g.search(std::slice::from_ref(p), k).unwrap();
                assert_eq!(alone[0], batch[i], "{ctx}, probe {i}: alone vs in a batch");
            }
        }
    }
    let cands = g.identify(&probes[..8], 5).unwrap();
    for (i, p) in probes[..8].iter().enumerate() {
        check_identify(&cands[i], model, p, 5, true, &format!("{ctx}, probe {i}"));
    }
}

#[test]
fn galleries_of_each_dimension_survive_reopening_from_segments_and_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0xD135);
    let mut models: Vec<Model> = Vec::new();
    {
        let engine = Engine::open(dir.path(), opts(false, 1 << 17)).unwrap();
        for dim in DIMS {
            let g = engine.create_gallery_with(&name(dim), &spec(dim)).unwrap();
            let mut model = Model::new();
            // A segment of 300 rows; then, in the WAL only: 200 new rows,
            // upserts of 20 segment rows, deletes from both parts.
            let first = rows(&mut rng, 0..300, dim);
            g.insert(&first).unwrap();
            g.flush().unwrap();
            let mut later = rows(&mut rng, 300..500, dim);
            later.extend(rows(&mut rng, 0..300, dim).into_iter().step_by(15));
            g.insert(&later).unwrap();
            model.extend(first.into_iter().chain(later).map(|e| (e.id, e)));
            let doomed: Vec<u64> = (0..500).step_by(33).collect();
            assert_eq!(g.delete(&doomed, &[]).unwrap(), doomed.len() as u64);
            model.retain(|id, _| !doomed.contains(id));
            let s = g.stats();
            assert!(s.segments == 1 && s.memtable_rows > 0, "dim {dim}: {s:?}");
            models.push(model);
        }
    }
    {
        let engine = Engine::open(dir.path(), opts(false, 1 << 17)).unwrap();
        let mut listed = engine.list_galleries();
        listed.sort();
        let mut want: Vec<String> = DIMS.iter().map(|&d| name(d)).collect();
        want.sort();
        assert_eq!(listed, want);
        for (dim, model) in DIMS.into_iter().zip(&models) {
            let g = engine.gallery(&name(dim)).unwrap();
            let ctx = format!("dim {dim}, reopened (segment and WAL)");
            let s = g.stats();
            assert!(s.segments == 1 && s.memtable_rows > 0, "{ctx}: {s:?}");
            check(&g, model, dim, &mut rng, &ctx);
            // Everything into one segment, nothing deleted left.
            g.flush().unwrap();
            g.compact().unwrap();
            let s = g.stats();
            assert_eq!((s.segments, s.memtable_rows, s.deleted), (1, 0, 0), "{ctx}");
        }
    }
    let engine = Engine::open(dir.path(), opts(false, 1 << 17)).unwrap();
    for (dim, model) in DIMS.into_iter().zip(&models) {
        let g = engine.gallery(&name(dim)).unwrap();
        check(
            &g,
            model,
            dim,
            &mut rng,
            &format!("dim {dim}, compacted and reopened"),
        );
    }
}

#[test]
fn a_normalising_gallery_keeps_unit_vectors_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let spec = GallerySpec {
        dim: 96,
        model: "cosine@1".into(),
        normalize: true,
    };
    let mut rng = Rng(0xC05);
    let input: Vec<Embedding> = (0..60u64)
        .map(|id| Embedding {
            id,
            subject: format!("s{}", id % 7),
            vector: rng.vector_of(96).iter().map(|x| 3.0 * x).collect(),
        })
        .collect();
    let ids: Vec<u64> = (0..60).collect();
    let stored = {
        let engine = Engine::open(dir.path(), opts(false, 1 << 17)).unwrap();
        let g = engine.create_gallery_with("cos", &spec).unwrap();
        g.insert(&input[..30]).unwrap();
        g.flush().unwrap();
        g.insert(&input[30..]).unwrap();
        g.get(&ids)
    };
    // Stored vectors are the inputs scaled to unit length.
    for (e, x) in stored.iter().zip(&input) {
        let dot: f64 = e
            .vector
            .iter()
            .zip(&x.vector)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        let n2: f64 = e.vector.iter().map(|a| f64::from(*a).powi(2)).sum();
        let x2: f64 = x.vector.iter().map(|a| f64::from(*a).powi(2)).sum();
        assert!((n2 - 1.0).abs() < 1e-5, "id {}: squared norm {n2}", e.id);
        assert!(
            dot / x2.sqrt() > 1.0 - 1e-5,
            "id {}: not parallel to the input",
            e.id
        );
    }
    let engine = Engine::open(dir.path(), opts(false, 1 << 17)).unwrap();
    let g = engine.gallery("cos").unwrap();
    assert_eq!(g.spec(), &spec);
    assert_eq!(g.get(&ids), stored, "after reopening (segment and WAL)");
    // Probes are normalised too: a stored vector scaled up is at distance
    // about 0 from itself, with similarity about 1.
    let probe: Vec<f32> = input[40].vector.iter().map(|x| 5.0 * x).collect();
    let hits = g.search(&[probe], 3).unwrap();
    assert_eq!(hits[0][0].id, 40);
    for h in &hits[0] {
        assert_eq!(h.similarity, Some(1.0 - h.distance / 2.0), "id {}", h.id);
    }
    assert!(hits[0][0].distance < 1e-5, "{:?}", hits[0][0]);
}

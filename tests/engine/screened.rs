//! Exact search of small batches screens the segments' 8-bit codes and then
//! proves that no row outside its candidates can enter the top k. The answer
//! must be the direct scan's, bit for bit and tie for tie: here the same rows
//! are held twice, uncoded in a memtable (scanned directly) and coded in
//! segments (screened), and every answer of the two galleries is compared.
//! Every case runs at each dimension of `support::DIMS` (128, 512 and 96, the
//! generic kernels).

use std::sync::Arc;
use visage_engine::synth::{SynthConfig, SynthGallery};
use visage_engine::{Embedding, Engine, Gallery, Hit, SearchOptions};
use visage_tests::Rng;

use crate::support::{DIMS, create, opts};

/// Ids and distance bits, the whole of what a search answers.
fn key(hits: &[Hit]) -> Vec<(u64, u32)> {
    hits.iter().map(|h| (h.id, h.distance.to_bits())).collect()
}

/// `rows` in a gallery, in three parts: the first `coded` of them flushed to
/// segments, the rest left in the memtable; then the same deletions.
fn gallery(engine: &Engine, name: &str, rows: &[Embedding], coded: usize) -> Arc<Gallery> {
    let g = create(engine, name, rows[0].vector.len());
    let third = rows.len() / 3;
    for (i, part) in [&rows[..third], &rows[third..2 * third], &rows[2 * third..]]
        .into_iter()
        .enumerate()
    {
        g.insert(part).unwrap();
        if i < coded {
            g.flush().unwrap();
        }
    }
    let doomed: Vec<u64> = rows.iter().step_by(17).map(|e| e.id).collect();
    g.delete(&doomed, &[]).unwrap();
    g
}

/// The values of `k` every comparison runs at.
const KS: [usize; 3] = [1, 10, 64];

fn check(rows: &[Embedding], probes: &[Vec<f32>], what: &str) {
    let what = &format!("{what} at {}", rows[0].vector.len());
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), opts(false, usize::MAX)).unwrap();
    let direct = gallery(&engine, "direct", rows, 0);
    assert_eq!(
        direct.stats().segments,
        0,
        "{what}: the reference must be uncoded"
    );
    // The reference, for each k: the direct scan of the uncoded gallery, and
    // its identification (one probe at a time: the direct scan too).
    let flat = probes.concat();
    let want: Vec<Vec<Vec<(u64, u32)>>> = KS
        .iter()
        .map(|&k| {
            visage_engine::fuzzing::search_direct(&direct, &flat, k)
                .into_iter()
                .map(|hits| hits.into_iter().map(|(id, d)| (id, d.to_bits())).collect())
                .collect()
        })
        .collect();
    let want_identify: Vec<Vec<Vec<(u64, u32)>>> = KS
        .iter()
        .map(|&k| {
            probes[..8]
                .iter()
                .map(|p| key(&direct.identify(std::slice::from_ref(p), k.min(20)).unwrap()[0]))
                .collect()
        })
        .collect();
    // Batches of the uncoded gallery from 32 probes take the tiled scan in f32.
    compare(
        &direct,
        &want,
        &want_identify,
        probes,
        &[48],
        &format!("{what}, uncoded"),
    );
    // Coded segments with a memtable tail, and coded segments alone.
    for coded in [2, 3] {
        let screened = gallery(&engine, &format!("screened{coded}"), rows, coded);
        assert_eq!(
            screened.stats().segments,
            coded as u64,
            "{what}: coded segments"
        );
        // One probe per call and 3 (screened), 16 (the tiled batch scan on
        // integer dot products of the codes where the CPU has them, else
        // screened) and 48 (tiled, in f32 where the CPU lacks them).
        compare(
            &screened,
            &want,
            &want_identify,
            probes,
            &[1, 3, 16, 48],
            &format!("{what}, {coded} segments"),
        );
    }
}

/// `g`'s answers in batches of each size of `batches` equal `want` (per k of
/// [`KS`], per probe), and its identification `want_identify`.
fn compare(
    g: &Gallery,
    want: &[Vec<Vec<(u64, u32)>>],
    want_identify: &[Vec<Vec<(u64, u32)>>],
    probes: &[Vec<f32>],
    batches: &[usize],
    what: &str,
) {
    for (ki, &k) in KS.iter().enumerate() {
        let o = SearchOptions {
            k,
            ..Default::default()
        };
        for &batch in batches {
            for (c, chunk) in probes.chunks(batch).enumerate() {
                let got = g.search_with(chunk, &o).unwrap();
                for (i, hits) in got.iter().enumerate() {
                    let p = c * batch + i;
                    assert_eq!(
                        key(hits),
                        want[ki][p],
                        "{what}: k {k}, batch {batch}, probe {p}"
                    );
                }
            }
        }
        let got = g.identify(&probes[..8], k.min(20)).unwrap();
        for (p, hits) in got.iter().enumerate() {
            assert_eq!(
                key(hits),
                want_identify[ki][p],
                "{what}: identify k {k}, probe {p}"
            );
        }
    }
}

/// Probes: stored vectors, slight variations of them, and fresh ones.
fn probes(
    rng: &mut Rng,
    rows: &[Embedding],
    fresh: impl Fn(&mut Rng) -> Vec<f32>,
) -> Vec<Vec<f32>> {
    (0..48)
        .map(|i| {
            let stored = &rows[rng.below(rows.len() as u64) as usize].vector;
            match i % 3 {
                0 => stored.clone(),
                1 => stored
                    .iter()
                    .map(|&x| x + (rng.f32() - 0.5) * 1e-3)
                    .collect(),
                _ => fresh(rng),
            }
        })
        .collect()
}

#[test]
fn screened_search_equals_the_direct_scan_on_face_like_data() {
    for dim in DIMS {
        let data = SynthGallery::generate(SynthConfig {
            dim,
            subjects: 500,
            seed: 11,
            ..Default::default()
        });
        let fresh: Vec<Vec<f32>> = data
            .probes(40, 40, 5)
            .into_iter()
            .map(|p| p.vector)
            .collect();
        let mut rng = Rng(5);
        let mut ps = probes(&mut rng, &data.embeddings, |r| {
            fresh[r.below(80) as usize].clone()
        });
        ps.extend(fresh);
        check(&data.embeddings, &ps, "face-like");
    }
}

#[test]
fn screened_search_equals_the_direct_scan_with_exact_duplicates_and_ties() {
    // Many rows share a few vectors exactly: the k-th distance is tied with
    // rows outside any candidate set, which the proof must refuse to settle.
    for dim in DIMS {
        let mut rng = Rng(6);
        let base: Vec<Vec<f32>> = (0..40).map(|_| rng.vector_of(dim)).collect();
        let rows: Vec<Embedding> = (0..4500u64)
            .map(|i| Embedding {
                id: 1 + (i * 7919) % 4500,
                subject: format!("s{}", i % 300),
                vector: base[(i as usize * 13) % base.len()].clone(),
            })
            .collect();
        let ps = probes(&mut rng, &rows, |r| r.vector_of(dim));
        check(&rows, &ps, "duplicates");
    }
}

#[test]
fn screened_search_equals_the_direct_scan_with_uneven_ranges() {
    // Uniform rows, one dimension of which spans a huge range in the first
    // segment: its codes there are 0.4 apart in that dimension, so ordinary
    // rows take only a few values in it. Among
    // them, 400 rows differ from one vector only in that dimension: the codes
    // cannot tell them apart, and only the bound (which knows how coarse the
    // codes are) sends probes near them back to an exact scan.
    for dim in DIMS {
        let mut rng = Rng(7);
        let line = rng.vector_of(dim);
        let rows: Vec<Embedding> = (0..4500u64)
            .map(|i| {
                let mut e =
                    visage_tests::embedding_of(&mut rng, i + 1, &format!("s{}", i % 300), dim);
                if i < 1500 && i % 100 == 0 {
                    e.vector[3] = 100.0 * (rng.f32() - 0.5);
                } else if (500..900).contains(&i) {
                    e.vector = line.clone();
                    e.vector[3] = (i - 500) as f32 / 400.0;
                }
                e
            })
            .collect();
        let mut ps = probes(&mut rng, &rows, |r| r.vector_of(dim));
        for t in [0.3f32, 0.5, 0.77, 0.999] {
            let mut p = line.clone();
            p[3] = t + 1e-4;
            ps.push(p);
        }
        check(&rows, &ps, "uneven ranges");
    }
}

#[test]
fn screened_search_equals_the_direct_scan_far_from_the_origin() {
    // Rows clustered around (1000, …, 1000): the estimates of the integer
    // batch scan cancel terms of 10^8 (10^9 at 512 values) to find distances
    // of about 1, so their rounding, not the codes, decides what the bound
    // may settle.
    for dim in DIMS {
        let mut rng = Rng(8);
        let rows: Vec<Embedding> = (0..4500u64)
            .map(|i| {
                let mut e =
                    visage_tests::embedding_of(&mut rng, i + 1, &format!("s{}", i % 300), dim);
                for x in e.vector.iter_mut() {
                    *x = 1000.0 + *x * 0.05;
                }
                e
            })
            .collect();
        let ps = probes(&mut rng, &rows, |r| {
            r.vector_of(dim)
                .into_iter()
                .map(|x| 1000.0 + x * 0.05)
                .collect()
        });
        check(&rows, &ps, "far from the origin");
    }
}

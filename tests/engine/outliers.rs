//! A few rows far outside the others cannot spoil the codes: a segment's
//! quantiser takes its ranges from robust quantiles, the rows with a value
//! outside them are the segment's exceptions (scored exactly in the same
//! pass), and every answer stays the direct scan's, bit for bit and tie for
//! tie. The statistics count the exceptions and how the scans settled their
//! probes; far-away probes in a batch are settled together.
//!
//! Rows hold small integers (exact in f32), so distances tie exactly and the
//! order by id is tested too. Each case runs at every dimension of
//! `support::DIMS`.

use std::collections::BTreeSet;
use visage_engine::{Embedding, Engine, Gallery, Hit, SearchOptions};
use visage_tests::Rng;

use crate::support::{DIMS, create, opts};

fn key(hits: &[Hit]) -> Vec<(u64, u32)> {
    hits.iter().map(|h| (h.id, h.distance.to_bits())).collect()
}

/// Outliers: (row, its far value at coordinate 0).
const OUTLIERS: [(usize, f32); 5] = [
    (3, 50.0),
    (400, -1000.0),
    (777, 1e6),
    (1200, 12.0),
    (1999, 50.0),
];
/// The row that is all zeros: an exact tie with row 3's outlier for the probe
/// that is half of it (see [`rows`]).
const ZERO_ROW: usize = 1500;

/// 2,000 rows of small integers in −3..=3 (ids 1000 + row), with the
/// outliers' far value at coordinate 0 (row 3 zero elsewhere) and the zero
/// row all zeros.
fn rows(dim: usize) -> Vec<Embedding> {
    let mut rng = Rng(91);
    (0..2000)
        .map(|r| {
            let mut vector: Vec<f32> = (0..dim).map(|_| (rng.below(7) as f32) - 3.0).collect();
            if let Some(&(_, v)) = OUTLIERS.iter().find(|o| o.0 == r) {
                if r == 3 {
                    vector.fill(0.0);
                }
                vector[0] = v;
            }
            if r == ZERO_ROW {
                vector = vec![0.0; dim];
            }
            Embedding {
                id: 1000 + r as u64,
                subject: format!("p{}", r / 10),
                vector,
            }
        })
        .collect()
}

/// Probes: copies of the outliers (each its own nearest neighbour), half of
/// row 3 (equidistant from it and the zero row: 25² either way), some
/// ordinary rows nudged, and a far-away probe (× 1,000).
fn probes(all: &[Embedding]) -> Vec<Vec<f32>> {
    let dim = all[0].vector.len();
    let mut out: Vec<Vec<f32>> = OUTLIERS
        .iter()
        .map(|&(r, _)| all[r].vector.clone())
        .collect();
    let mut half = vec![0.0f32; dim];
    half[0] = 25.0;
    out.push(half);
    for r in [10usize, 11, 500, 1501] {
        let mut v = all[r].vector.clone();
        v[1] += 1.0;
        out.push(v);
    }
    out.push(all[20].vector.iter().map(|x| x * 1000.0 + 1.0).collect());
    out
}

fn exceptions_of(g: &Gallery) -> u64 {
    g.segments().iter().map(|s| s.exceptions).sum()
}

#[test]
fn outlier_rows_are_exceptions_and_every_scan_stays_exact() {
    for dim in DIMS {
        let what = format!("dim {dim}");
        let all = rows(dim);
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), opts(false, usize::MAX)).unwrap();
        // The reference: the same rows uncoded (memtable, direct scan).
        let direct = create(&engine, "direct", dim);
        direct.insert(&all).unwrap();
        let g = create(&engine, "coded", dim);
        g.insert(&all).unwrap();
        g.flush().unwrap();
        // Exactly the outliers are exceptions: the zero row and the integers
        // are within the robust range.
        let st = g.stats();
        assert_eq!(st.exception_rows, OUTLIERS.len() as u64, "{what}");
        assert_eq!(exceptions_of(&g), st.exception_rows, "{what}");
        assert_eq!(st.outdated_segments, 0, "{what}");
        let segs = g.segments();
        assert_eq!(segs.len(), 1, "{what}");
        assert_eq!(
            segs[0].format_version,
            visage_engine::format::FORMAT_VERSION,
            "{what}"
        );

        let ps = probes(&all);
        let flat = ps.concat();
        for k in [1usize, 2, 10, 64] {
            let want: Vec<Vec<(u64, u32)>> =
                visage_engine::fuzzing::search_direct(&direct, &flat, k)
                    .into_iter()
                    .map(|h| h.into_iter().map(|(id, d)| (id, d.to_bits())).collect())
                    .collect();
            // Each outlier is its own nearest neighbour, found though its codes are clamped.
            for (p, &(r, _)) in OUTLIERS.iter().enumerate() {
                assert_eq!(want[p][0], (1000 + r as u64, 0f32.to_bits()), "{what}");
            }
            // The exception row 3 and the coded zero row tie at 625: by id.
            if k >= 10 {
                let tie = &want[OUTLIERS.len()];
                let at = tie
                    .iter()
                    .position(|h| h.0 == 1003)
                    .expect("row 3 near half of it");
                assert_eq!(
                    (tie[at], tie[at + 1]),
                    (
                        (1003, 625f32.to_bits()),
                        (1000 + ZERO_ROW as u64, 625f32.to_bits())
                    ),
                    "{what}: the tie across an exception and a coded row"
                );
            }
            let o = SearchOptions {
                k,
                ..Default::default()
            };
            // One probe at a time (screened), 3 (screened), 8 and all (batch scan).
            for batch in [1usize, 3, 8, ps.len()] {
                for (c, chunk) in ps.chunks(batch).enumerate() {
                    for (i, hits) in g.search_with(chunk, &o).unwrap().iter().enumerate() {
                        let p = c * batch + i;
                        assert_eq!(
                            key(hits),
                            want[p],
                            "{what}: k {k}, batch {batch}, probe {p}"
                        );
                    }
                }
            }
        }
        // Every probe of every scan was counted where it was settled.
        let scans = g.stats().scans;
        let counted = scans.first_pass + scans.widened + scans.f32_batch + scans.direct;
        assert!(counted >= 4 * ps.len() as u64, "{what}: {scans:?}");
        assert!(scans.first_pass > 0, "{what}: {scans:?}");
    }
}

#[test]
fn the_same_rows_give_the_same_exceptions_and_compaction_keeps_them() {
    let dim = 128;
    let all = rows(dim);
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), opts(false, usize::MAX)).unwrap();
    let outliers: BTreeSet<u64> = OUTLIERS.iter().map(|o| 1000 + o.0 as u64).collect();
    let mut sets = Vec::new();
    for name in ["a", "b"] {
        let g = create(&engine, name, dim);
        g.insert(&all).unwrap();
        g.flush().unwrap();
        sets.push(g.stats().exception_rows);
        // Compaction (a deleted row makes it rewrite the segment) re-derives
        // the quantiser from the remaining rows: the same outliers.
        g.delete(&[1000 + 42], &[]).unwrap();
        g.compact().unwrap();
        assert_eq!(g.stats().segments, 1);
        sets.push(g.stats().exception_rows);
        // And the rows flagged are the outliers: each is scored exactly,
        // so searching for its own vector finds it at distance 0.
        for &id in &outliers {
            let v = &all[(id - 1000) as usize].vector;
            let hits = g.search(std::slice::from_ref(v), 1).unwrap();
            assert_eq!((hits[0][0].id, hits[0][0].distance), (id, 0.0));
        }
    }
    assert!(sets.iter().all(|&n| n == outliers.len() as u64), "{sets:?}");
}

//! Erasure: after a subject is deleted and the gallery compacted, none of that
//! subject's vectors remains in any file of the data directory — neither a
//! whole 512-byte little-endian encoding nor any 64-byte window of one —
//! whether the vectors had been flushed to segments, replaced by an upsert, or
//! were still only in the memtable and the WAL. The same scan finds every
//! other subject's live vectors (and the doomed ones before the deletion), so
//! it is shown to work.

use crate::support::{Model, assert_contents, opts};
use std::path::Path;
use visage_engine::{Embedding, Engine};
use visage_tests::scan::{WINDOW, Windows, contains, le_bytes, read_tree};
use visage_tests::{Rng, embedding};

/// Assert that no window of `gone` and every whole vector of `kept` is on disk.
fn assert_erased(root: &Path, gone: &[Vec<u8>], kept: &[Vec<u8>], ctx: &str) {
    let files = read_tree(root);
    let w = Windows::new(gone);
    for (p, b) in &files {
        let found = w.find(b);
        assert!(
            found.is_empty(),
            "{ctx}: {} holds {} windows of deleted vectors, e.g. vector {} bytes {}.. at offset {}",
            p.display(),
            found.len(),
            found[0].0,
            found[0].1,
            found[0].2
        );
    }
    for (i, k) in kept.iter().enumerate() {
        assert!(
            files.iter().any(|(_, b)| contains(b, k)),
            "{ctx}: the scan does not find live vector {i}, so it proves nothing"
        );
    }
}

#[test]
fn a_deleted_subject_leaves_no_vector_bytes_in_any_file_after_compaction() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut rng = Rng(0xE7A5E);
    let mut model = Model::new();
    let mut gone: Vec<Vec<f32>> = Vec::new(); // every vector ever stored for the subject
    let doomed = "subject-to-erase";
    let mut next_id = 0u64;
    let mut batch = |rng: &mut Rng, per_keep: usize, per_gone: usize, gone: &mut Vec<Vec<f32>>| {
        let mut b: Vec<Embedding> = Vec::new();
        for s in 0..6 {
            for _ in 0..per_keep {
                b.push(embedding(rng, next_id, &format!("keep-{s}")));
                next_id += 1;
            }
        }
        for _ in 0..per_gone {
            let e = embedding(rng, next_id, doomed);
            gone.push(e.vector.clone());
            b.push(e);
            next_id += 1;
        }
        b
    };
    {
        let engine = Engine::open(root, opts(false, 1 << 17)).unwrap();
        let g = engine.create_gallery("g").unwrap();
        // Segment 1.
        let b = batch(&mut rng, 4, 5, &mut gone);
        let first_gone = b.last().unwrap().id;
        g.insert(&b).unwrap();
        model.extend(b.into_iter().map(|e| (e.id, e)));
        g.flush().unwrap();
        // Segment 2, plus an upsert that replaces a vector of the subject in segment 1.
        let mut b = batch(&mut rng, 3, 4, &mut gone);
        let replacement = embedding(&mut rng, first_gone, doomed);
        gone.push(replacement.vector.clone());
        b.push(replacement);
        g.insert(&b).unwrap();
        model.extend(b.into_iter().map(|e| (e.id, e)));
        g.flush().unwrap();
        // Memtable and WAL only.
        let b = batch(&mut rng, 2, 3, &mut gone);
        g.insert(&b).unwrap();
        model.extend(b.into_iter().map(|e| (e.id, e)));
        assert!(g.stats().segments >= 2 && g.stats().memtable_rows > 0);

        // Before deletion the scan finds the subject's current vectors.
        let live_gone: Vec<Vec<u8>> = model
            .values()
            .filter(|e| e.subject == doomed)
            .map(|e| le_bytes(&e.vector))
            .collect();
        let files = read_tree(root);
        for v in &live_gone {
            assert!(
                files.iter().any(|(_, b)| contains(b, v)),
                "scan misses a stored vector"
            );
        }

        let n = g.delete(&[], &[doomed.to_string()]).unwrap();
        assert_eq!(n, live_gone.len() as u64);
        model.retain(|_, e| e.subject != doomed);
        g.compact().unwrap();
        assert_contents(&g, &model, 0..next_id, "after compaction");
        let gone_b: Vec<Vec<u8>> = gone.iter().map(|v| le_bytes(v)).collect();
        let kept: Vec<Vec<u8>> = model.values().map(|e| le_bytes(&e.vector)).collect();
        assert_erased(root, &gone_b, &kept, "after compaction");
        // Writes after the compaction do not bring anything back.
        g.insert(&[embedding(&mut rng, 10_000, "keep-0")]).unwrap();
        model.insert(10_000, g.get(&[10_000])[0].clone());
    }
    let engine = Engine::open(root, opts(false, 1 << 17)).unwrap();
    let g = engine.gallery("g").unwrap();
    assert_contents(&g, &model, (0..next_id).chain([10_000]), "reopened");
    let gone_b: Vec<Vec<u8>> = gone.iter().map(|v| le_bytes(v)).collect();
    let kept: Vec<Vec<u8>> = model.values().map(|e| le_bytes(&e.vector)).collect();
    assert_erased(root, &gone_b, &kept, "after reopening");
}

#[test]
fn the_window_scan_finds_a_partial_copy() {
    // A 64-byte piece of a vector at an odd offset in a file is found.
    let tmp = tempfile::tempdir().unwrap();
    let v = le_bytes(&Rng(1).vector());
    let mut junk = vec![7u8; 1001];
    junk.extend_from_slice(&v[130..130 + WINDOW]);
    junk.extend_from_slice(&[9; 33]);
    std::fs::write(tmp.path().join("f"), &junk).unwrap();
    let w = Windows::new(std::slice::from_ref(&v));
    assert_eq!(w.find(&junk), vec![(0, 130, 1001)]);
}

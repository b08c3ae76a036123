//! A gallery as a replica of a replicated log: batches applied at their log
//! sequence (`insert_at`, `delete_at`) carry it in their own WAL record, so a
//! reopen restores the applied sequence with the batch, from the WAL or from
//! the manifest after a flush; a redelivered batch is skipped; and a WAL torn
//! anywhere in its last record gives back either the previous sequence with
//! the previous contents or the new ones, never a batch without its sequence.

use crate::support::{Model, assert_contents, last_wal, opts};
use std::path::Path;
use visage_engine::{Embedding, Engine, EngineOptions, GallerySpec};
use visage_tests::{Rng, embedding};

fn open(dir: &Path) -> Engine {
    let o: EngineOptions = opts(false, 1 << 17);
    Engine::open(dir, o).unwrap()
}

fn columns(rows: &[Embedding]) -> (Vec<u64>, Vec<String>, Vec<f32>) {
    (
        rows.iter().map(|e| e.id).collect(),
        rows.iter().map(|e| e.subject.clone()).collect(),
        rows.iter().flat_map(|e| e.vector.iter().copied()).collect(),
    )
}

/// Apply `rows` at `seq` and the model.
fn apply(g: &visage_engine::Gallery, model: &mut Model, seq: u64, rows: &[Embedding]) {
    let (ids, subjects, vectors) = columns(rows);
    let out = g.insert_at(seq, &ids, &subjects, &vectors).unwrap();
    assert!(out.is_some(), "batch {seq} applied");
    for e in rows {
        model.insert(e.id, e.clone());
    }
}

#[test]
fn the_applied_sequence_survives_reopen_from_the_wal_and_from_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(81);
    let mut model = Model::new();
    let engine = open(dir.path());
    let g = engine
        .create_gallery_with("shard-0", &GallerySpec::default())
        .unwrap();
    assert_eq!(g.applied_seq(), 0);
    let batch = |rng: &mut Rng, first: u64| -> Vec<Embedding> {
        (first..first + 20)
            .map(|id| embedding(rng, id, &format!("p{}", id % 7)))
            .collect()
    };
    apply(&g, &mut model, 3, &batch(&mut rng, 0));
    apply(&g, &mut model, 4, &batch(&mut rng, 100));
    // A delete at 7 (sequences need not be dense: other shards' batches).
    assert_eq!(g.delete_at(7, &[100, 101], &[]).unwrap(), Some(2));
    model.remove(&100);
    model.remove(&101);
    assert_eq!(g.applied_seq(), 7);
    // Redelivered batches are skipped, and change nothing.
    let again = batch(&mut rng, 500);
    let (ids, subjects, vectors) = columns(&again);
    assert_eq!(g.insert_at(4, &ids, &subjects, &vectors).unwrap(), None);
    assert_eq!(g.delete_at(7, &[0], &[]).unwrap(), None);
    assert_eq!(g.delete_at(2, &[1], &[]).unwrap(), None);
    let ids_all: Vec<u64> = (0..600).collect();
    assert_contents(&g, &model, ids_all.clone(), "after redeliveries");
    // A batch with nothing for this shard records the position alone.
    assert_eq!(
        g.insert_at(9, &[], &[] as &[String], &[])
            .unwrap()
            .map(|o| o.inserted),
        Some(0)
    );
    assert_eq!(g.applied_seq(), 9);
    drop(g);
    drop(engine);

    // From the WAL.
    let engine = open(dir.path());
    let g = engine.gallery("shard-0").unwrap();
    assert_eq!(g.applied_seq(), 9, "replayed from the WAL");
    assert_contents(&g, &model, ids_all.clone(), "reopened");
    // From the manifest: flushed, then more in the WAL, then flushed again.
    g.flush().unwrap();
    apply(&g, &mut model, 12, &batch(&mut rng, 200));
    drop(g);
    drop(engine);
    let engine = open(dir.path());
    let g = engine.gallery("shard-0").unwrap();
    assert_eq!(g.applied_seq(), 12, "manifest 9, WAL 12");
    g.flush().unwrap();
    g.compact().unwrap();
    drop(g);
    drop(engine);
    let engine = open(dir.path());
    let g = engine.gallery("shard-0").unwrap();
    assert_eq!(g.applied_seq(), 12, "from the manifest alone");
    assert_contents(&g, &model, ids_all, "after flush and compaction");
    // Plain writes (not from a log) leave the sequence alone.
    g.insert(&[embedding(&mut rng, 900, "local")]).unwrap();
    assert_eq!(g.applied_seq(), 12);
}

#[test]
fn a_torn_last_record_gives_back_the_batch_with_its_sequence_or_neither() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(82);
    let mut before = Model::new();
    {
        let engine = open(dir.path());
        let g = engine
            .create_gallery_with("shard-1", &GallerySpec::default())
            .unwrap();
        let first: Vec<Embedding> = (0..10)
            .map(|id| embedding(&mut rng, id, &format!("p{id}")))
            .collect();
        apply(&g, &mut before, 41, &first);
    }
    let wal = last_wal(&dir.path().join("galleries/shard-1"));
    let good = std::fs::read(&wal).unwrap();
    // The last batch: 5 rows at 42.
    let last: Vec<Embedding> = (10..15)
        .map(|id| embedding(&mut rng, id, &format!("p{id}")))
        .collect();
    {
        let engine = open(dir.path());
        let g = engine.gallery("shard-1").unwrap();
        let mut m = before.clone();
        apply(&g, &mut m, 42, &last);
    }
    let full = std::fs::read(&wal).unwrap();
    assert!(full.len() > good.len() && full.starts_with(&good));
    let mut after = before.clone();
    for e in &last {
        after.insert(e.id, e.clone());
    }
    let ids: Vec<u64> = (0..15).collect();
    // Cut the WAL at every length from the end of the first batch to the
    // end of the second (a sample of them, every 7th byte and both ends).
    let cuts: Vec<usize> = (good.len()..=full.len())
        .filter(|n| (n - good.len()).is_multiple_of(7) || *n == full.len() || *n + 1 == full.len())
        .collect();
    for cut in cuts {
        std::fs::write(&wal, &full[..cut]).unwrap();
        let engine = open(dir.path());
        let g = engine.gallery("shard-1").unwrap();
        if cut == full.len() {
            assert_eq!(g.applied_seq(), 42, "whole record");
            assert_contents(&g, &after, ids.clone(), "whole record");
        } else {
            assert_eq!(g.applied_seq(), 41, "cut at {cut} of {}", full.len());
            assert_contents(&g, &before, ids.clone(), &format!("cut at {cut}"));
        }
        drop(g);
        drop(engine);
    }
}

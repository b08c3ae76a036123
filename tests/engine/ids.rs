//! Flat inserts (`Gallery::insert_rows`) and the ids a gallery assigns: a
//! counter above every id the gallery has held or assigned, persisted with
//! the manifest and rebuilt from the files at open, so an assigned id is never
//! handed out twice, whatever is deleted, compacted or reopened in between.

use crate::support::{create, opts};
use visage_engine::{Embedding, Engine, Error, ErrorKind};
use visage_tests::Rng;

fn rows(rng: &mut Rng, n: usize, dim: usize) -> (Vec<String>, Vec<f32>) {
    let subjects = (0..n).map(|i| format!("s{}", i % 7)).collect();
    let vectors = (0..n * dim).map(|_| rng.f32() * 2.0 - 1.0).collect();
    (subjects, vectors)
}

/// Every row of the gallery, by id (ids 0..limit probed).
fn contents(g: &visage_engine::Gallery, limit: u64) -> Vec<Embedding> {
    g.get(&(0..limit).collect::<Vec<_>>())
}

#[test]
fn assigned_ids_are_fresh_consecutive_and_stored_with_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), opts(false, 1 << 20)).unwrap();
    let g = create(&engine, "g", 96);
    let mut rng = Rng(3);
    let (s, v) = rows(&mut rng, 5, 96);
    let (out, ids) = g.insert_rows(None, &s, &v).unwrap();
    assert_eq!((out.inserted, out.replaced), (5, 0));
    assert_eq!(ids, [1, 2, 3, 4, 5], "a new gallery assigns from 1");
    for (i, id) in ids.iter().enumerate() {
        let e = &g.get(&[*id])[0];
        assert_eq!(e.subject, s[i]);
        assert_eq!(e.vector, v[i * 96..(i + 1) * 96]);
    }
    // Explicit ids raise the counter: the next assigned id is above them.
    let (s2, v2) = rows(&mut rng, 2, 96);
    let (_, given) = g.insert_rows(Some(&[1000, 40]), &s2, &v2).unwrap();
    assert_eq!(given, [1000, 40]);
    let (_, next) = g.insert_rows(None, &s2, &v2).unwrap();
    assert_eq!(next, [1001, 1002]);
    // The classic insert raises it too.
    g.insert(&[Embedding {
        id: 5000,
        subject: "x".into(),
        vector: v2[..96].to_vec(),
    }])
    .unwrap();
    assert_eq!(g.insert_rows(None, &s2[..1], &v2[..96]).unwrap().1, [5001]);
    // An empty batch assigns nothing.
    let none: [&str; 0] = [];
    assert_eq!(
        g.insert_rows(None, &none, &[]).unwrap().1,
        Vec::<u64>::new()
    );
    assert_eq!(g.insert_rows(None, &s2[..1], &v2[..96]).unwrap().1, [5002]);
}

#[test]
fn assigned_ids_are_never_reused_after_delete_compact_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(9);
    let mut handed_out = Vec::new();
    for round in 0..4 {
        let engine = Engine::open(dir.path(), opts(false, 1 << 20)).unwrap();
        let g = if round == 0 {
            create(&engine, "g", 128)
        } else {
            engine.gallery("g").unwrap()
        };
        let (s, v) = rows(&mut rng, 50, 128);
        let (_, ids) = g.insert_rows(None, &s, &v).unwrap();
        assert!(
            ids.iter().all(|id| handed_out.iter().all(|old| id > old)),
            "round {round}: {ids:?} reuses or goes below an id handed out before"
        );
        handed_out.extend(&ids);
        // Delete the newest rows, so no file holds the highest ids any more
        // once compacted: only the manifest's counter remembers them.
        g.delete(&ids[25..], &[]).unwrap();
        match round {
            // Reopen from the WAL alone (nothing flushed).
            0 => {}
            // Flushed, deleted rows still in a segment.
            1 => {
                g.flush().unwrap();
            }
            // Compacted: the deleted rows are gone from every file.
            _ => {
                g.compact().unwrap();
                let top = *ids.last().unwrap();
                assert!(g.get(&[top]).is_empty());
            }
        }
    }
}

#[test]
fn a_bad_flat_batch_is_refused_whole_with_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), opts(false, 1 << 20)).unwrap();
    let g = create(&engine, "g", 16);
    let mut rng = Rng(4);
    let (s, v) = rows(&mut rng, 4, 16);
    g.insert_rows(Some(&[1, 2, 3, 4]), &s, &v).unwrap();
    let before = contents(&g, 64);
    let check = |e: Error, kind: ErrorKind, text: &str| {
        assert_eq!(e.kind(), kind, "{e}");
        assert!(e.to_string().contains(text), "{e} lacks {text:?}");
        assert_eq!(
            contents(&g, 64),
            before,
            "a refused batch changed the gallery: {e}"
        );
    };
    let (s2, mut v2) = rows(&mut rng, 3, 16);
    // Shapes that disagree.
    check(
        g.insert_rows(None, &s2, &v2[..40]).unwrap_err(),
        ErrorKind::InvalidArgument,
        "vectors: 40 values",
    );
    check(
        g.insert_rows(Some(&[7, 8]), &s2, &v2).unwrap_err(),
        ErrorKind::InvalidArgument,
        "ids: 2 ids for 3 rows",
    );
    // A repeated id, named by its positions.
    check(
        g.insert_rows(Some(&[7, 8, 7]), &s2, &v2).unwrap_err(),
        ErrorKind::InvalidArgument,
        "ids[2]: id 7 already appears at ids[0]",
    );
    // A bad value or subject in one row: the row is named.
    v2[2 * 16 + 5] = f32::NAN;
    check(
        g.insert_rows(None, &s2, &v2).unwrap_err(),
        ErrorKind::InvalidArgument,
        "embeddings[2]: value 5 is NaN",
    );
    v2[2 * 16 + 5] = 0.5;
    let bad_subjects = ["a", "", "c"];
    check(
        g.insert_rows(None, &bad_subjects, &v2).unwrap_err(),
        ErrorKind::InvalidArgument,
        "embeddings[1].subject",
    );
    // The counter did not move for refused batches.
    assert_eq!(g.insert_rows(None, &s2, &v2).unwrap().1, [5, 6, 7]);
}

#[test]
fn a_gallery_that_held_the_largest_id_assigns_none() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), opts(false, 1 << 20)).unwrap();
    let g = create(&engine, "g", 16);
    let mut rng = Rng(5);
    let (s, v) = rows(&mut rng, 2, 16);
    g.insert_rows(Some(&[u64::MAX - 1]), &s[..1], &v[..16])
        .unwrap();
    // One id is left: a batch of two cannot be assigned, a batch of one can.
    let e = g.insert_rows(None, &s, &v).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");
    assert!(e.to_string().contains("no fresh ids left"), "{e}");
    assert_eq!(g.stats().live, 1);
    assert_eq!(
        g.insert_rows(None, &s[..1], &v[..16]).unwrap().1,
        [u64::MAX]
    );
    let e = g.insert_rows(None, &s[..1], &v[..16]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");
    // Explicit ids still go in.
    g.insert_rows(Some(&[3]), &s[..1], &v[..16]).unwrap();
    assert_eq!(g.stats().live, 3);
}

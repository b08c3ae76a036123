//! Basic behaviour: create, insert, search, delete, flush, compact, reopen.

use std::collections::BTreeMap;
use visage_engine::{Engine, EngineOptions, Error};
use visage_tests::{Rng, embedding, l2sq_f64};

fn opts() -> EngineOptions {
    let mut o = EngineOptions::default();
    o.gallery.background = false;
    o
}

#[test]
fn insert_search_delete_flush_compact_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(7);
    let mut model: BTreeMap<u64, visage_engine::Embedding> = BTreeMap::new();
    {
        let engine = Engine::open(dir.path(), opts()).unwrap();
        let g = engine.create_gallery("staff").unwrap();
        assert!(matches!(
            engine.create_gallery("staff"),
            Err(Error::GalleryExists(_))
        ));
        let batch: Vec<_> = (0..500)
            .map(|i| embedding(&mut rng, i, &format!("p{}", i % 50)))
            .collect();
        let out = g.insert(&batch).unwrap();
        assert_eq!((out.inserted, out.replaced), (500, 0));
        for e in batch {
            model.insert(e.id, e);
        }
        g.flush().unwrap();
        let more: Vec<_> = (400..700)
            .map(|i| embedding(&mut rng, i, &format!("p{}", i % 50)))
            .collect();
        let out = g.insert(&more).unwrap();
        assert_eq!((out.inserted, out.replaced), (200, 100));
        for e in more {
            model.insert(e.id, e);
        }
        let n = g.delete(&[1, 2, 3, 100_000], &["p7".to_string()]).unwrap();
        let gone: Vec<u64> = model
            .keys()
            .copied()
            .filter(|&id| [1, 2, 3].contains(&id) || model[&id].subject == "p7")
            .collect();
        assert_eq!(n, gone.len() as u64);
        for id in gone {
            model.remove(&id);
        }
        check(&g, &model, &mut rng);
        g.compact().unwrap();
        check(&g, &model, &mut rng);
        let s = g.stats();
        assert_eq!(s.live, model.len() as u64);
        assert_eq!(s.deleted, 0);
        assert_eq!(s.subjects, 49);
    }
    let engine = Engine::open(dir.path(), opts()).unwrap();
    assert_eq!(engine.list_galleries(), vec!["staff".to_string()]);
    let g = engine.gallery("staff").unwrap();
    check(&g, &model, &mut rng);
    // Writes after reopen, without flushing, survive another reopen through the WAL.
    g.insert(&[embedding(&mut rng, 5000, "late")]).unwrap();
    model.insert(5000, g.get(&[5000])[0].clone());
    drop(g);
    drop(engine);
    let engine = Engine::open(dir.path(), opts()).unwrap();
    check(&engine.gallery("staff").unwrap(), &model, &mut rng);
    engine.drop_gallery("staff").unwrap();
    assert!(engine.list_galleries().is_empty());
    assert!(matches!(
        engine.gallery("staff"),
        Err(Error::GalleryNotFound(_))
    ));
}

fn check(
    g: &visage_engine::Gallery,
    model: &BTreeMap<u64, visage_engine::Embedding>,
    rng: &mut Rng,
) {
    // Every live embedding is there with identical bytes; get of absent ids returns nothing.
    let ids: Vec<u64> = model.keys().copied().collect();
    let got = g.get(&ids);
    assert_eq!(got.len(), model.len());
    for e in got {
        assert_eq!(&e, &model[&e.id]);
    }
    assert!(g.get(&[1, 2, 3]).is_empty() || model.contains_key(&1));
    // Search equals brute force.
    let probes: Vec<Vec<f32>> = (0..5).map(|_| rng.vector()).collect();
    let res = g.search(&probes, 10).unwrap();
    for (p, hits) in probes.iter().zip(&res) {
        let mut all: Vec<(f64, u64)> = model
            .values()
            .map(|e| (l2sq_f64(p, &e.vector), e.id))
            .collect();
        all.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let want: Vec<u64> = all.iter().take(10).map(|x| x.1).collect();
        let got: Vec<u64> = hits.iter().map(|h| h.id).collect();
        assert_eq!(got, want);
        for (h, w) in hits.iter().zip(&all) {
            assert!((h.distance as f64 - w.0).abs() <= 1e-4 * w.0.max(1.0));
        }
    }
}

#[test]
fn second_open_of_a_locked_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _a = Engine::open(dir.path(), opts()).unwrap();
    let err = Engine::open(dir.path(), opts()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
}

/// Upserts find the row they replace wherever it is (a segment, the
/// memtable, a deleted top id), and batches of ids above every id held
/// (which skip the lookups) are counted as new: checked against a model
/// after every batch, through a flush and a reopen.
#[test]
fn upserts_replace_wherever_the_old_row_is_and_new_ids_are_new() {
    use crate::support::{Model, assert_contents};
    struct Run {
        engine: Engine,
        model: Model,
        rng: Rng,
    }
    impl Run {
        fn put(&mut self, ids: impl IntoIterator<Item = u64>, what: &str) {
            let batch: Vec<_> = ids
                .into_iter()
                .map(|id| embedding(&mut self.rng, id, &format!("p{}", id % 13)))
                .collect();
            let replaced = batch
                .iter()
                .filter(|e| self.model.contains_key(&e.id))
                .count() as u64;
            let g = self.engine.gallery("g").unwrap();
            let out = g.insert(&batch).unwrap();
            let expected = (batch.len() as u64 - replaced, replaced);
            assert_eq!((out.inserted, out.replaced), expected, "{what}");
            for e in batch {
                self.model.insert(e.id, e);
            }
            assert_contents(&g, &self.model, 0..400, what);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), opts()).unwrap();
    engine.create_gallery("g").unwrap();
    let mut run = Run {
        engine,
        model: Model::new(),
        rng: Rng(11),
    };
    run.put(1..=100, "new gallery");
    run.engine.gallery("g").unwrap().flush().unwrap();
    run.put([100], "the segment's top id, the memtable empty");
    run.put(101..=200, "above the segment");
    run.put(200..=250, "straddling the memtable's top");
    run.put([100, 300], "a segment's top id and a new one");
    assert_eq!(
        run.engine
            .gallery("g")
            .unwrap()
            .delete(&[300], &[])
            .unwrap(),
        1
    );
    run.model.remove(&300);
    run.put(300..=310, "at a deleted top id");
    run.put(311..=320, "above a deleted top id");
    let Run { engine, model, rng } = run;
    drop(engine);
    let engine = Engine::open(dir.path(), opts()).unwrap();
    let mut run = Run { engine, model, rng };
    run.put([320], "after a reopen: the replayed top id");
    run.put([5, 319, 321], "after a reopen: replayed and segment rows");
    run.put(322..=330, "after a reopen: new ids");
}

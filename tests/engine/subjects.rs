//! Listing a gallery's subjects a page at a time (`Gallery::subjects`)
//! against a model of the live rows, with rows spread over several segments,
//! the memtable, deletes and upserts that move a row to another subject.

use crate::support::{create, opts};
use std::collections::BTreeMap;
use visage_engine::{Embedding, Engine, ErrorKind, MAX_SUBJECTS_PAGE};
use visage_tests::Rng;

/// Every page of `g`'s subjects with pages of `size`, concatenated.
fn all_pages(g: &visage_engine::Gallery, size: usize) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = g.subjects(after.as_deref(), size).unwrap();
        assert!(page.len() <= size);
        let last = page.len() < size;
        if let Some((s, _)) = page.last() {
            after = Some(s.clone());
        }
        out.extend(page);
        if last {
            return out;
        }
    }
}

#[test]
fn pages_of_subjects_equal_the_live_rows_counted() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), opts(false, 1 << 20)).unwrap();
    let g = create(&engine, "g", 16);
    let mut rng = Rng(31);
    // id -> subject of the live rows.
    let mut model: BTreeMap<u64, String> = BTreeMap::new();
    // Subject names that interleave across segments, with a multi-byte one.
    let name = |i: u64| {
        if i.is_multiple_of(17) {
            format!("émile-{i:03}")
        } else {
            format!("p-{i:03}")
        }
    };
    for round in 0..5 {
        let batch: Vec<Embedding> = (0..200)
            .map(|_| {
                let id = rng.below(600);
                let e = Embedding {
                    id,
                    subject: name(rng.below(90)),
                    vector: rng.vector_of(16),
                };
                (id, e)
            })
            .collect::<BTreeMap<u64, Embedding>>()
            .into_values()
            .collect();
        g.insert(&batch).unwrap();
        for e in &batch {
            model.insert(e.id, e.subject.clone());
        }
        let gone: Vec<u64> = (0..30).map(|_| rng.below(600)).collect();
        let subject = name(rng.below(90));
        g.delete(&gone, std::slice::from_ref(&subject)).unwrap();
        for id in &gone {
            model.remove(id);
        }
        model.retain(|_, s| *s != subject);
        // Segments of each round; the last round stays in the memtable.
        if round < 4 {
            g.flush().unwrap();
        }
        if round == 2 {
            g.compact().unwrap();
        }
        let mut want: BTreeMap<&str, u64> = BTreeMap::new();
        for s in model.values() {
            *want.entry(s).or_default() += 1;
        }
        let want: Vec<(String, u64)> = want.into_iter().map(|(s, n)| (s.to_owned(), n)).collect();
        for size in [1, 3, 7, 64, MAX_SUBJECTS_PAGE] {
            assert_eq!(all_pages(&g, size), want, "round {round}, pages of {size}");
        }
        // A page may start after a name the gallery does not hold.
        let after = "p-050x";
        let tail: Vec<(String, u64)> = want
            .iter()
            .filter(|(s, _)| s.as_str() > after)
            .take(5)
            .cloned()
            .collect();
        assert_eq!(g.subjects(Some(after), 5).unwrap(), tail, "round {round}");
        assert_eq!(g.stats().subjects, want.len() as u64);
    }
    for bad in [0, MAX_SUBJECTS_PAGE + 1] {
        let e = g.subjects(None, bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains("page_size"), "{e}");
    }
}

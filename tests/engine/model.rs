//! Model-based property test: random sequences of inserts (new ids, upserts,
//! batches with repeated subjects, and batches with a repeated id that must be
//! rejected whole), deletes by id and by subject, flushes, compactions and
//! reopenings, checked after every step against a `BTreeMap<u64, Embedding>`:
//! `get` of every id (bit-identical vectors, `-0.0` included), the live and
//! subject counts, and search and identification against brute force.
//!
//! Vectors are dyadic (see `support::dyadic_vector`), so search results must
//! equal the reference exactly, ties broken by id. Half the cases run with
//! background maintenance on a tiny memtable, so flushes and merges also
//! happen between the steps on their own. The property runs at 128 values a
//! vector and, with half the cases, at 512 or 96 (the generic kernels); the
//! fixed sequence at each of the three.

use crate::support::{
    DIMS, Model, assert_contents, check_identify, check_search, create, dyadic_vector_of, opts,
};
use proptest::prelude::*;
use visage_engine::{Embedding, Engine, Error, Gallery};
use visage_tests::Rng;

/// Ids are drawn from `0..IDS`; deletes also name a few ids never inserted.
const IDS: u64 = 40;

fn subject(i: u8) -> String {
    match i % 6 {
        0 => "alice".into(),
        1 => "bob".into(),
        2 => "carol".into(),
        3 => "émile 😀".into(),
        4 => "x".repeat(256), // the longest subject accepted
        _ => "d".into(),
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// (id, subject, vector seed) per embedding; a repeated id makes the batch invalid.
    Insert(Vec<(u64, u8, u64)>),
    DeleteIds(Vec<u64>),
    DeleteSubjects(Vec<u8>),
    Flush,
    Compact,
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => prop::collection::vec((0..IDS, 0..6u8, any::<u64>()), 1..10).prop_map(Step::Insert),
        3 => prop::collection::vec(0..IDS + 4, 1..6).prop_map(Step::DeleteIds),
        1 => prop::collection::vec(0..7u8, 1..3).prop_map(Step::DeleteSubjects),
        1 => Just(Step::Flush),
        1 => Just(Step::Compact),
        1 => Just(Step::Reopen),
    ]
}

struct Run {
    dir: tempfile::TempDir,
    background: bool,
    dim: usize,
    engine: Option<Engine>,
    g: Option<std::sync::Arc<Gallery>>,
    model: Model,
}

impl Run {
    fn options(&self) -> visage_engine::EngineOptions {
        // In background mode a tiny memtable makes flushes and merges happen on their own.
        opts(self.background, if self.background { 4 } else { 1 << 17 })
    }

    fn g(&self) -> &Gallery {
        self.g.as_ref().expect("open")
    }

    fn reopen(&mut self) {
        self.g = None;
        self.engine = None;
        let e = Engine::open(self.dir.path(), self.options()).unwrap();
        let g = e.gallery("m").unwrap();
        assert_eq!(g.dim(), self.dim, "dimension after reopening");
        self.g = Some(g);
        self.engine = Some(e);
    }

    fn apply(&mut self, step: &Step, ctx: &str) {
        match step {
            Step::Insert(items) => {
                let batch: Vec<Embedding> = items
                    .iter()
                    .map(|&(id, s, seed)| Embedding {
                        id,
                        subject: subject(s),
                        vector: dyadic_vector_of(&mut Rng(seed), self.dim),
                    })
                    .collect();
                // The first position whose id appeared before, and where.
                let dup = (0..batch.len()).find_map(|j| {
                    (0..j)
                        .find(|&i| batch[i].id == batch[j].id)
                        .map(|i| (batch[j].id, i, j))
                });
                let res = self.g().insert(&batch);
                match dup {
                    Some((id, first, second)) => match res {
                        Err(Error::DuplicateId {
                            what: "embeddings",
                            id: gid,
                            first: gf,
                            second: gs,
                        }) => assert_eq!((gid, gf, gs), (id, first, second), "{ctx}"),
                        other => panic!("{ctx}: repeated id {id} gave {other:?}"),
                    },
                    None => {
                        let out = res.unwrap();
                        let replaced = batch
                            .iter()
                            .filter(|e| self.model.contains_key(&e.id))
                            .count() as u64;
                        assert_eq!(
                            (out.inserted, out.replaced),
                            (batch.len() as u64 - replaced, replaced),
                            "{ctx}: insert outcome"
                        );
                        for e in batch {
                            self.model.insert(e.id, e);
                        }
                    }
                }
            }
            Step::DeleteIds(ids) => {
                let mut gone: Vec<u64> = ids
                    .iter()
                    .copied()
                    .filter(|id| self.model.contains_key(id))
                    .collect();
                gone.sort_unstable();
                gone.dedup();
                let n = self.g().delete(ids, &[]).unwrap();
                assert_eq!(n, gone.len() as u64, "{ctx}: deleted count");
                for id in gone {
                    self.model.remove(&id);
                }
            }
            Step::DeleteSubjects(ss) => {
                let names: Vec<String> = ss.iter().map(|&s| subject(s)).collect();
                let gone: Vec<u64> = self
                    .model
                    .values()
                    .filter(|e| names.contains(&e.subject))
                    .map(|e| e.id)
                    .collect();
                let n = self.g().delete(&[], &names).unwrap();
                assert_eq!(n, gone.len() as u64, "{ctx}: deleted count");
                for id in gone {
                    self.model.remove(&id);
                }
            }
            Step::Flush => {
                self.g().flush().unwrap();
                assert_eq!(self.g().stats().memtable_rows, 0, "{ctx}: after flush");
            }
            Step::Compact => {
                self.g().compact().unwrap();
                let s = self.g().stats();
                assert_eq!(
                    (s.memtable_rows, s.deleted),
                    (0, 0),
                    "{ctx}: after compaction nothing deleted remains"
                );
            }
            Step::Reopen => self.reopen(),
        }
    }

    fn check(&self, probe_seed: u64, ctx: &str) {
        assert_contents(self.g(), &self.model, 0..IDS + 4, ctx);
        let mut rng = Rng(probe_seed);
        let probes = [
            dyadic_vector_of(&mut rng, self.dim),
            dyadic_vector_of(&mut rng, self.dim),
        ];
        let all = self.model.len() + 1;
        for k in [3, all] {
            let res = self.g().search(&probes, k).unwrap();
            for (p, hits) in probes.iter().zip(&res) {
                check_search(hits, &self.model, p, k, true, ctx);
            }
        }
        for k in [2, 7] {
            let res = self.g().identify(&probes, k).unwrap();
            for (p, hits) in probes.iter().zip(&res) {
                check_identify(hits, &self.model, p, k, true, ctx);
            }
        }
    }
}

fn run(background: bool, dim: usize, steps: &[Step]) {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Run {
        dir,
        background,
        dim,
        engine: None,
        g: None,
        model: Model::new(),
    };
    {
        let e = Engine::open(r.dir.path(), r.options()).unwrap();
        r.g = Some(create(&e, "m", dim));
        r.engine = Some(e);
    }
    for (i, s) in steps.iter().enumerate() {
        let ctx = format!("dim {dim}, step {i} ({s:?})");
        r.apply(s, &ctx);
        r.check(i as u64, &ctx);
    }
    // Whatever happened, a final reopen shows the same state.
    r.reopen();
    r.check(u64::MAX, &format!("dim {dim}, final reopen"));
}

fn cases() -> u32 {
    std::env::var("VISAGE_MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // Failures print the minimal sequence; no regression files in the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_equals_a_btreemap_model(
        background in any::<bool>(),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        run(background, 128, &steps);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases() / 2,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The same property at the other dimensions of `support::DIMS`.
    #[test]
    fn engine_equals_a_btreemap_model_at_512_and_96(
        background in any::<bool>(),
        dim in prop::sample::select(vec![512usize, 96]),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        run(background, dim, &steps);
    }
}

/// A fixed sequence covering every step kind in order, so the suite exercises
/// them even if the generator's weights change.
#[test]
fn every_step_kind_in_one_fixed_sequence() {
    let ins = |ids: &[u64], s: u8| Step::Insert(ids.iter().map(|&i| (i, s, i * 31 + 7)).collect());
    for dim in DIMS {
        run(
            false,
            dim,
            &[
                ins(&[1, 2, 3, 4], 0),
                Step::Flush,
                ins(&[3, 5, 6], 1), // upsert 3 over a segment row, new subject
                Step::Insert(vec![(7, 2, 1), (8, 2, 2), (7, 3, 3)]), // rejected whole
                Step::DeleteIds(vec![1, 6, 42]),
                Step::Reopen,
                Step::DeleteSubjects(vec![1]),
                Step::Compact,
                ins(&[1, 9], 4),
                Step::Reopen,
                Step::Compact,
                Step::DeleteSubjects(vec![0, 4]),
                Step::Reopen,
            ],
        );
    }
}

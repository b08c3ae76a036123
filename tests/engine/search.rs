//! Search and identification against brute force, on random galleries spread
//! over several segments (with tombstones from later deletes and upserts) and
//! the memtable, then after compaction and after reopening.
//!
//! Two kinds of data: dyadic vectors (every distance exact in f32 on any
//! kernel, ties frequent) compared for exact equality of ids *and* distances,
//! and continuous clustered vectors compared with the f64 reference, tolerant
//! only at f32 near-ties (see `support::check_search`). Subjects with hundreds
//! of embeddings sit next to the probes, so identification must widen its scan
//! (its internal "grow K" path) to find `k` distinct subjects; `k` also exceeds
//! the number of subjects and the number of live rows.
//!
//! Each suite runs at 128 values a vector (the default), at 512 (the other
//! size with specialised kernels) and at 96 (the generic kernels).

use crate::support::{
    Compared, Model, check_identify, check_search, continuous_near, create, dyadic_near,
    dyadic_vector_of, opts,
};
use std::collections::HashSet;
use visage_engine::{Embedding, Engine, Gallery};
use visage_tests::Rng;

struct Subject {
    name: String,
    center: Vec<f32>,
    big: bool,
}

struct World {
    rng: Rng,
    exact: bool,
    dim: usize,
    subjects: Vec<Subject>,
    model: Model,
    ever: std::collections::BTreeSet<u64>,
}

impl World {
    fn new(seed: u64, exact: bool, dim: usize) -> World {
        let mut rng = Rng(seed);
        let n_small = 40 + rng.below(30) as usize;
        let mut subjects = Vec::new();
        for i in 0..n_small + 3 {
            let big = i >= n_small;
            let center = if exact {
                dyadic_vector_of(&mut rng, dim)
            } else {
                rng.vector_of(dim)
            };
            subjects.push(Subject {
                name: if big {
                    format!("big-{i}")
                } else {
                    format!("emp-{i:05}")
                },
                center,
                big,
            });
        }
        World {
            rng,
            exact,
            dim,
            subjects,
            model: Model::new(),
            ever: Default::default(),
        }
    }

    fn near(&mut self, s: usize) -> Vec<f32> {
        let c = self.subjects[s].center.clone();
        if self.exact {
            dyadic_near(&mut self.rng, &c)
        } else {
            continuous_near(&mut self.rng, &c, 0.15)
        }
    }

    /// A subject index: big subjects get about half of all embeddings.
    fn pick_subject(&mut self) -> usize {
        let n = self.subjects.len();
        if self.rng.below(2) == 0 {
            n - 3 + self.rng.below(3) as usize
        } else {
            self.rng.below(n as u64 - 3) as usize
        }
    }

    fn random_live_id(&mut self) -> Option<u64> {
        if self.model.is_empty() {
            return None;
        }
        let i = self.rng.below(self.model.len() as u64) as usize;
        self.model.keys().nth(i).copied()
    }

    /// A batch of new ids plus upserts of live ones (some moving to another subject).
    fn insert_batch(&mut self, g: &Gallery, n: usize) {
        let mut batch: Vec<Embedding> = Vec::new();
        let mut ids = HashSet::new();
        let mut want_replaced = 0;
        while batch.len() < n {
            let upsert = self.rng.below(10) == 0;
            let id = match upsert.then(|| self.random_live_id()).flatten() {
                Some(id) => id,
                // Sparse ids, so id order is unrelated to insertion order.
                None => self.rng.below(1 << 40),
            };
            if !ids.insert(id) {
                continue;
            }
            if self.model.contains_key(&id) {
                want_replaced += 1;
            }
            let s = self.pick_subject();
            let vector = self.near(s);
            batch.push(Embedding {
                id,
                subject: self.subjects[s].name.clone(),
                vector,
            });
        }
        let out = g.insert(&batch).unwrap();
        assert_eq!(out.replaced, want_replaced, "replaced count");
        assert_eq!(out.inserted + out.replaced, n as u64);
        for e in batch {
            self.ever.insert(e.id);
            self.model.insert(e.id, e);
        }
    }

    fn delete_some(&mut self, g: &Gallery, n: usize) {
        let mut ids: Vec<u64> = (0..n).filter_map(|_| self.random_live_id()).collect();
        ids.push(u64::MAX); // absent: ignored
        let mut gone: Vec<u64> = ids.clone();
        gone.retain(|id| self.model.contains_key(id));
        gone.sort_unstable();
        gone.dedup();
        let deleted = g.delete(&ids, &[]).unwrap();
        assert_eq!(deleted, gone.len() as u64, "delete by ids count");
        for id in gone {
            self.model.remove(&id);
        }
    }

    fn delete_subject(&mut self, g: &Gallery, s: usize) {
        let name = self.subjects[s].name.clone();
        let gone: Vec<u64> = self
            .model
            .values()
            .filter(|e| e.subject == name)
            .map(|e| e.id)
            .collect();
        let deleted = g.delete(&[], std::slice::from_ref(&name)).unwrap();
        assert_eq!(deleted, gone.len() as u64, "delete subject {name}");
        for id in gone {
            self.model.remove(&id);
        }
    }

    fn probes(&mut self) -> Vec<Vec<f32>> {
        let n = self.subjects.len();
        let mut p = Vec::new();
        for s in n - 3..n {
            p.push(self.near(s)); // near a big subject: identification must grow K
        }
        for _ in 0..3 {
            let s = self.rng.below(n as u64 - 3) as usize;
            p.push(self.near(s));
        }
        p.push(if self.exact {
            dyadic_vector_of(&mut self.rng, self.dim)
        } else {
            self.rng.vector_of(self.dim)
        });
        p
    }
}

#[derive(Default)]
struct Tally {
    compared: Compared,
    grow_cases: usize,
}

/// Every probe, several k, alone and batched, search and identify.
fn check_all(g: &Gallery, w: &mut World, tally: &mut Tally, ctx: &str) {
    // Ids ever used (live ones and deleted ones) must read back as the model says.
    crate::support::assert_contents(g, &w.model, w.ever.iter().copied(), ctx);
    let probes = w.probes();
    let live = w.model.len();
    let subjects = crate::support::subject_count(&w.model) as usize;
    for k in [1, 10, 57, live + 3] {
        let batched = g.search(&probes, k).unwrap();
        for (pi, p) in probes.iter().enumerate() {
            let c = format!("{ctx}, search probe {pi}");
            tally.compared += check_search(&batched[pi], &w.model, p, k, w.exact, &c);
            let alone = g.search(std::slice::from_ref(p), k).unwrap();
            assert_eq!(alone[0], batched[pi], "{c}: alone vs in a batch");
        }
    }
    for k in [1, 3, 7, subjects + 2] {
        let batched = g.identify(&probes, k).unwrap();
        for (pi, p) in probes.iter().enumerate() {
            let c = format!("{ctx}, identify probe {pi}");
            tally.compared += check_identify(&batched[pi], &w.model, p, k, w.exact, &c);
            let alone = g.identify(std::slice::from_ref(p), k).unwrap();
            assert_eq!(alone[0], batched[pi], "{c}: alone vs in a batch");
            // Would the engine's first scan (max(10k, 32) rows) hold fewer than k subjects?
            let mut ranked: Vec<(f64, u64)> = w
                .model
                .values()
                .map(|e| (visage_tests::l2sq_f64(p, &e.vector), e.id))
                .collect();
            ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let first = (10 * k).max(32).min(live);
            let distinct: HashSet<&str> = ranked[..first]
                .iter()
                .map(|r| w.model[&r.1].subject.as_str())
                .collect();
            if distinct.len() < k && first < live {
                tally.grow_cases += 1;
            }
        }
    }
}

fn run(seed: u64, exact: bool, dim: usize) -> Tally {
    let ctx = format!(
        "dim {dim}, seed {seed:#x} ({})",
        if exact { "exact" } else { "f32" }
    );
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(seed, exact, dim);
    let mut tally = Tally::default();
    {
        let engine = Engine::open(dir.path(), opts(false, 1 << 17)).unwrap();
        let g = create(&engine, "g", dim);
        for phase in 0..5 {
            let n = 250 + w.rng.below(150) as usize;
            w.insert_batch(&g, n);
            let n = 1 + w.rng.below(20) as usize;
            w.insert_batch(&g, n);
            let n = 5 + w.rng.below(20) as usize;
            w.delete_some(&g, n);
            match phase {
                2 => {
                    let s = w.rng.below(10) as usize;
                    w.delete_subject(&g, s);
                }
                3 => {
                    // Part of a big subject, by ids.
                    let big = w.subjects.len() - 1;
                    let name = w.subjects[big].name.clone();
                    let ids: Vec<u64> = w
                        .model
                        .values()
                        .filter(|e| e.subject == name)
                        .map(|e| e.id)
                        .step_by(3)
                        .collect();
                    assert_eq!(g.delete(&ids, &[]).unwrap(), ids.len() as u64);
                    for id in ids {
                        w.model.remove(&id);
                    }
                }
                _ => {}
            }
            check_all(&g, &mut w, &mut tally, &format!("{ctx}, phase {phase}"));
            if phase < 4 {
                g.flush().unwrap();
                check_all(
                    &g,
                    &mut w,
                    &mut tally,
                    &format!("{ctx}, phase {phase} flushed"),
                );
            }
        }
        let s = g.stats();
        assert!(
            s.segments >= 3 && s.memtable_rows > 0 && s.deleted > 0,
            "{ctx}: the gallery should mix segments, memtable and tombstones: {s:?}"
        );
        assert!(
            w.subjects
                .iter()
                .any(|s| s.big && w.model.values().filter(|e| e.subject == s.name).count() > 100),
            "{ctx}: big subjects exist"
        );
        g.compact().unwrap();
        check_all(&g, &mut w, &mut tally, &format!("{ctx}, compacted"));
        // More writes over the compacted segments, left in the memtable.
        w.insert_batch(&g, 100);
        w.delete_some(&g, 10);
    }
    let engine = Engine::open(dir.path(), opts(false, 1 << 17)).unwrap();
    let g = engine.gallery("g").unwrap();
    assert_eq!(g.dim(), dim, "{ctx}: dimension after reopening");
    check_all(&g, &mut w, &mut tally, &format!("{ctx}, reopened"));
    tally
}

/// Dyadic data at dimension `dim`, over `seeds`: ids and distances equal.
fn exact_data(dim: usize, seeds: &[u64]) {
    let mut total = Tally::default();
    for &seed in seeds {
        let t = run(seed, true, dim);
        total.compared += t.compared;
        total.grow_cases += t.grow_cases;
    }
    assert_eq!(total.compared.ambiguous, 0);
    assert!(
        total.grow_cases > 20 * seeds.len(),
        "dim {dim}: identification's widening path was exercised only {} times",
        total.grow_cases
    );
    println!(
        "exact, dim {dim}: {} positions compared, {} identify cases needing a wider scan",
        total.compared.positions, total.grow_cases
    );
}

/// Continuous data at dimension `dim`, over `seeds`: equal up to f32 near-ties.
fn continuous_data(dim: usize, seeds: &[u64]) {
    let mut total = Tally::default();
    for &seed in seeds {
        let t = run(seed, false, dim);
        total.compared += t.compared;
        total.grow_cases += t.grow_cases;
    }
    assert!(
        total.grow_cases > 20 * seeds.len(),
        "dim {dim}: grow cases: {}",
        total.grow_cases
    );
    // Near-ties must stay rare, or the tolerant comparison would prove little.
    assert!(
        total.compared.ambiguous * 50 <= total.compared.positions,
        "dim {dim}: {:?}",
        total.compared
    );
    println!(
        "f32, dim {dim}: {} positions compared, {} at f32 near-ties, {} identify cases needing a wider scan",
        total.compared.positions, total.compared.ambiguous, total.grow_cases
    );
}

#[test]
fn exact_data_search_and_identify_equal_brute_force() {
    exact_data(128, &[1, 0xfeed, 0xdead_beef, 42]);
}

#[test]
fn exact_data_search_and_identify_equal_brute_force_at_512() {
    exact_data(512, &[1, 0xfeed]);
}

#[test]
fn exact_data_search_and_identify_equal_brute_force_at_96() {
    exact_data(96, &[42]);
}

#[test]
fn continuous_data_search_and_identify_equal_brute_force() {
    continuous_data(128, &[7, 0x5eed, 0x00ab_cdef]);
}

#[test]
fn continuous_data_search_and_identify_equal_brute_force_at_512() {
    continuous_data(512, &[7, 0x5eed]);
}

#[test]
fn continuous_data_search_and_identify_equal_brute_force_at_96() {
    continuous_data(96, &[0x00ab_cdef]);
}

/// The same comparisons with the re-ranked rows asked for ahead
/// (`VISAGE_PREFETCH=always`, in a child process: the engine reads the
/// variable once a process). Galleries this small never take that path on
/// their own: it starts when the vectors exceed half the machine's memory.
#[test]
fn search_and_identify_equal_brute_force_with_rows_prefetched() {
    if std::env::var("VISAGE_PREFETCH").as_deref() == Ok("always") {
        exact_data(128, &[1]);
        continuous_data(128, &[7]);
        return;
    }
    let out = crate::support::rerun_self(
        "search::search_and_identify_equal_brute_force_with_rows_prefetched",
    )
    .env("VISAGE_PREFETCH", "always")
    .output()
    .expect("run the child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "the child failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The comparison itself must reject wrong answers, or the suites above prove nothing.
mod checker_rejects {
    use crate::support::{Model, check_identify, check_search, dyadic_vector};
    use visage_engine::{Embedding, Hit};
    use visage_tests::{Rng, l2sq_f64};

    fn setup() -> (Model, Vec<f32>, Vec<Hit>) {
        let mut rng = Rng(3);
        let mut model = Model::new();
        for id in 0..50u64 {
            let e = Embedding {
                id,
                subject: format!("s{}", id % 7),
                vector: dyadic_vector(&mut rng),
            };
            model.insert(id, e);
        }
        let probe = dyadic_vector(&mut rng);
        let mut hits: Vec<Hit> = model
            .values()
            .map(|e| Hit {
                id: e.id,
                subject: e.subject.clone(),
                distance: l2sq_f64(&probe, &e.vector) as f32,
                probability: None,
                similarity: None,
                rank_key: None,
            })
            .collect();
        hits.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
        hits.truncate(10);
        (model, probe, hits)
    }

    #[test]
    fn the_right_answer() {
        let (model, probe, hits) = setup();
        check_search(&hits, &model, &probe, 10, true, "ok");
        check_search(&hits, &model, &probe, 10, false, "ok");
    }

    #[test]
    #[should_panic]
    fn a_missing_hit() {
        let (model, probe, mut hits) = setup();
        hits.remove(4);
        check_search(&hits, &model, &probe, 10, false, "missing");
    }

    #[test]
    #[should_panic]
    fn a_wrong_row_in_place_of_the_last() {
        let (model, probe, mut hits) = setup();
        let e = &model[&hits[0].id];
        let far = model
            .values()
            .max_by(|a, b| l2sq_f64(&probe, &a.vector).total_cmp(&l2sq_f64(&probe, &b.vector)))
            .unwrap();
        assert_ne!(e.id, far.id);
        hits[9] = Hit {
            id: far.id,
            subject: far.subject.clone(),
            distance: l2sq_f64(&probe, &far.vector) as f32 + 1e9,
            probability: None,
            similarity: None,
            rank_key: None,
        };
        hits.sort_by(|a, b| a.distance.total_cmp(&b.distance));
        check_search(&hits, &model, &probe, 10, false, "wrong row");
    }

    #[test]
    #[should_panic]
    fn a_slightly_wrong_distance() {
        let (model, probe, mut hits) = setup();
        hits[0].distance *= 1.001;
        check_search(&hits, &model, &probe, 10, false, "distance");
    }

    #[test]
    #[should_panic]
    fn identification_returning_rows_instead_of_subjects() {
        let (model, probe, hits) = setup();
        check_identify(&hits[..3], &model, &probe, 3, false, "rows");
    }
}

//! The engine's batch validation, against a reference model: sequences of
//! inserts (arbitrary embeddings: any length, NaN and infinite values, empty,
//! long, control-character and non-ASCII subjects, repeated ids), deletes by
//! id and subject, flushes, compactions and a reopen.
//!
//! The gallery is made with a dimension (128, 16, 96 or 512) and with or
//! without normalisation, as the input chooses.
//!
//! Checks: each batch is accepted exactly when the reference rules accept it
//! (the gallery's dimension of finite values, not all zero where it
//! normalises; subject of 1 to 256 bytes without control characters; ids
//! unique in the batch), and a rejected batch fails with the error and
//! position of its first bad entry and changes nothing; after every step the
//! gallery holds exactly the model's embeddings (bit for bit: normalised, in
//! a normalising gallery, to unit length within 1e-5); the same after a reopen.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use visage_engine::{Embedding, Engine, Error, GallerySpec};
use visage_fuzz::*;

#[derive(Debug, Arbitrary)]
enum Subject {
    /// One of a few people.
    Person(u8),
    /// Anything.
    Raw(String),
    /// A long name of `n` repeated characters (around the 256-byte limit).
    Long(u16, char),
}

impl Subject {
    fn text(&self) -> String {
        match self {
            Subject::Person(p) => format!("p{}", p % 6),
            Subject::Raw(s) => s.clone(),
            Subject::Long(n, c) => std::iter::repeat_n(*c, (*n % 300) as usize).collect(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Value {
    Finite(i8),
    Nan,
    Inf,
    NegInf,
    NegZero,
    Max,
    Subnormal,
}

#[derive(Debug, Arbitrary)]
enum Vector {
    /// 128 values from a seed.
    Seeded(u16),
    /// A seeded vector with one value replaced.
    Patched(u16, u8, Value),
    /// A seeded vector of another length.
    Length(u16, u8),
    /// All zeros.
    Zero,
}

impl Vector {
    fn values(&self, dim: usize) -> Vec<f32> {
        let seeded = |seed: u16, n: usize| -> Vec<f32> {
            let mut r = Rng(seed as u64);
            (0..n).map(|_| r.unit()).collect()
        };
        match self {
            Vector::Seeded(s) => seeded(*s, dim),
            Vector::Patched(s, at, v) => {
                let mut x = seeded(*s, dim);
                x[*at as usize % dim] = match v {
                    Value::Finite(i) => *i as f32 / 8.0,
                    Value::Nan => f32::NAN,
                    Value::Inf => f32::INFINITY,
                    Value::NegInf => f32::NEG_INFINITY,
                    Value::NegZero => -0.0,
                    Value::Max => f32::MAX,
                    Value::Subnormal => f32::from_bits(1),
                };
                x
            }
            Vector::Length(s, n) => seeded(*s, *n as usize),
            Vector::Zero => vec![0.0; dim],
        }
    }
}

/// The gallery the steps run on.
#[derive(Debug, Arbitrary)]
struct Config {
    dim: u8,
    normalize: bool,
}

impl Config {
    fn spec(&self) -> GallerySpec {
        GallerySpec {
            dim: [128, 16, 96, 512][self.dim as usize % 4],
            normalize: self.normalize,
            ..GallerySpec::default()
        }
    }
}

/// The vector a normalising gallery stores: scaled by 1/‖v‖ with the norm in f64.
fn unit(v: &[f32]) -> Vec<f32> {
    let n2: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    let inv = 1.0 / n2.sqrt();
    v.iter().map(|&x| (f64::from(x) * inv) as f32).collect()
}

#[derive(Debug, Arbitrary)]
struct Item {
    id: u8,
    subject: Subject,
    vector: Vector,
}

#[derive(Debug, Arbitrary)]
enum Step {
    Insert(Vec<Item>),
    Delete(Vec<u8>, Vec<Subject>),
    Flush,
    Compact,
}

/// What the reference rules say about one subject.
fn subject_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control)
}

/// The first bad entry of a batch, as the engine must report it.
fn expected_insert_error(batch: &[Embedding], spec: &GallerySpec) -> Option<String> {
    let mut seen = std::collections::HashMap::new();
    for (i, e) in batch.iter().enumerate() {
        if e.vector.len() != spec.dim {
            return Some(format!("dimension {i}"));
        }
        if let Some(p) = e.vector.iter().position(|x| !x.is_finite()) {
            return Some(format!("value {i} {p}"));
        }
        if spec.normalize && e.vector.iter().all(|&x| x == 0.0) {
            return Some(format!("zero {i}"));
        }
        if !subject_ok(&e.subject) {
            return Some(format!("subject {i}"));
        }
        if let Some(first) = seen.insert(e.id, i) {
            return Some(format!("duplicate {first} {i}"));
        }
    }
    None
}

fn describe(e: &Error) -> String {
    match e {
        Error::DimensionMismatch {
            what: "embeddings",
            index,
            ..
        } => format!("dimension {index}"),
        Error::NonFiniteValue {
            what: "embeddings",
            index,
            position,
            ..
        } => format!("value {index} {position}"),
        Error::InvalidSubject {
            what: "embeddings",
            index,
            ..
        } => format!("subject {index}"),
        Error::InvalidSubject {
            what: "subjects",
            index,
            ..
        } => format!("delete subject {index}"),
        Error::ZeroVector {
            what: "embeddings",
            index,
        } => format!("zero {index}"),
        Error::DuplicateId { first, second, .. } => format!("duplicate {first} {second}"),
        other => panic!("unexpected error: {other}"),
    }
}

fuzz_target!(|input: (Config, Vec<Step>)| {
    let (config, steps) = input;
    let spec = config.spec();
    let root = fresh_dir("embeddings");
    let mut engine = Engine::open(&root, engine_options()).expect("open");
    let mut g = engine.create_gallery_with(GALLERY, &spec).expect("create");
    let mut model = State::new();
    let all_ids: Vec<u64> = (0..=255).collect();
    for step in steps.iter().take(16) {
        match step {
            Step::Insert(items) => {
                let batch: Vec<Embedding> = items
                    .iter()
                    .map(|it| Embedding {
                        id: it.id as u64,
                        subject: it.subject.text(),
                        vector: it.vector.values(spec.dim),
                    })
                    .collect();
                let stats = g.stats();
                match (g.insert(&batch), expected_insert_error(&batch, &spec)) {
                    (Ok(out), None) => {
                        let replaced = batch.iter().filter(|e| model.contains_key(&e.id)).count();
                        assert_eq!(out.replaced, replaced as u64);
                        assert_eq!(out.inserted + out.replaced, batch.len() as u64);
                        for e in &batch {
                            let stored = if spec.normalize {
                                let u = unit(&e.vector);
                                let n: f64 = u.iter().map(|&x| f64::from(x).powi(2)).sum();
                                assert!((n - 1.0).abs() < 1e-5, "unit vector of norm² {n}");
                                u
                            } else {
                                e.vector.clone()
                            };
                            model.insert(
                                e.id,
                                (
                                    e.subject.clone(),
                                    stored.iter().map(|x| x.to_bits()).collect(),
                                ),
                            );
                        }
                    }
                    (Err(e), Some(want)) => {
                        assert_eq!(describe(&e), want, "{e}");
                        assert_eq!(g.stats(), stats, "a rejected insert changed the statistics");
                    }
                    (got, want) => panic!("insert: engine says {got:?}, reference says {want:?}"),
                }
            }
            Step::Delete(ids, subjects) => {
                let ids: Vec<u64> = ids.iter().map(|&i| i as u64).collect();
                let subjects: Vec<String> = subjects.iter().map(Subject::text).collect();
                let bad = subjects.iter().position(|s| !subject_ok(s));
                match (g.delete(&ids, &subjects), bad) {
                    (Ok(n), None) => {
                        let gone: Vec<u64> = model
                            .iter()
                            .filter(|(id, (s, _))| ids.contains(id) || subjects.contains(s))
                            .map(|(id, _)| *id)
                            .collect();
                        assert_eq!(n, gone.len() as u64, "deleted count");
                        for id in gone {
                            model.remove(&id);
                        }
                    }
                    (Err(e), Some(i)) => assert_eq!(describe(&e), format!("delete subject {i}")),
                    (got, want) => {
                        panic!("delete: engine says {got:?}, reference says bad subject {want:?}")
                    }
                }
            }
            Step::Flush => {
                g.flush().expect("flush");
            }
            Step::Compact => {
                g.compact().expect("compact");
            }
        }
        assert_eq!(
            state(&g, &all_ids),
            model,
            "the gallery differs from the model after {step:?}"
        );
        assert_eq!(g.stats().live as usize, model.len());
    }
    drop(g);
    (engine, g) = reopen(engine, &root);
    assert_eq!(g.spec(), &spec, "the gallery's spec after a reopen");
    assert_eq!(
        state(&g, &all_ids),
        model,
        "the gallery differs from the model after a reopen"
    );
    drop(g);
    drop(engine);
});

//! Validation: every malformed request is rejected with the `Error` variant
//! that names what was wrong and where (the first bad position), is a caller
//! error, and changes nothing — statistics, the contents read back, and the
//! bytes of every file in the gallery (so nothing reached the WAL) are the
//! same before and after, also across a reopen.

use crate::support::{Model, all_files, assert_contents, opts};
use std::path::{Path, PathBuf};
use visage_engine::{
    DIM, Embedding, Engine, Error, Gallery, MAX_DELETE_BATCH, MAX_IDENTIFY_K, MAX_INSERT_BATCH,
    MAX_K, MAX_PROBES,
};
use visage_tests::{Rng, embedding};

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    all_files(dir)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

fn good(id: u64) -> Embedding {
    embedding(&mut Rng(id), id, &format!("s{}", id % 3))
}

fn with_vector(id: u64, f: impl FnOnce(&mut Vec<f32>)) -> Embedding {
    let mut e = good(id);
    f(&mut e.vector);
    e
}

fn with_subject(id: u64, s: &str) -> Embedding {
    let mut e = good(id);
    e.subject = s.to_owned();
    e
}

/// Assert the rejection and its message, then that nothing changed.
#[track_caller]
fn rejected<T: std::fmt::Debug>(
    g: &Gallery,
    model: &Model,
    before: &[(PathBuf, Vec<u8>)],
    res: Result<T, Error>,
    want: impl Fn(&Error) -> bool,
    message: &str,
) {
    let err = res.expect_err("a malformed request was accepted");
    assert!(want(&err), "wrong error: {err:?}");
    assert!(err.is_caller_error(), "{err:?} is a caller error");
    assert!(
        err.to_string().contains(message),
        "message {:?} should mention {message:?}",
        err.to_string()
    );
    assert_contents(g, model, 0..300, &format!("after {err}"));
    assert!(files(g.dir()) == before, "files changed after {err}");
}

#[test]
fn every_rejection_names_the_position_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open(tmp.path(), opts(false, 1 << 17)).unwrap();
    let g = engine.create_gallery("g").unwrap();
    let mut model = Model::new();
    let seg: Vec<Embedding> = (0..100).map(good).collect();
    g.insert(&seg).unwrap();
    g.flush().unwrap();
    let mem: Vec<Embedding> = (100..150).map(good).collect();
    g.insert(&mem).unwrap();
    model.extend(seg.into_iter().chain(mem).map(|e| (e.id, e)));
    let before = files(g.dir());
    let batch = |bad_at: usize, bad: Embedding| -> Vec<Embedding> {
        let mut b: Vec<Embedding> = (200..205).map(good).collect();
        b[bad_at] = bad;
        b
    };

    // Vectors.
    for (len, at) in [(127usize, 2usize), (129, 0), (0, 4)] {
        rejected(
            &g,
            &model,
            &before,
            g.insert(&batch(
                at,
                with_vector(200 + at as u64, |v| v.resize(len, 0.5)),
            )),
            |e| {
                matches!(e, Error::DimensionMismatch { what: "embeddings", index, expected: DIM, got }
                    if *index == at && *got == len)
            },
            &format!("embeddings[{at}]"),
        );
    }
    for (value, at, pos) in [
        (f32::NAN, 1usize, 5usize),
        (f32::INFINITY, 0, 127),
        (f32::NEG_INFINITY, 4, 0),
    ] {
        rejected(
            &g,
            &model,
            &before,
            g.insert(&batch(at, with_vector(200 + at as u64, |v| v[pos] = value))),
            |e| {
                matches!(e, Error::NonFiniteValue { what: "embeddings", index, position, value: v }
                    if *index == at && *position == pos && v.to_bits() == value.to_bits())
            },
            &format!("embeddings[{at}]"),
        );
    }
    // Subjects: empty, 257 bytes (multi-byte characters count as bytes), control characters.
    let long = format!("{}a", "é".repeat(128));
    assert_eq!(long.len(), 257);
    for (s, at) in [
        ("", 3usize),
        (long.as_str(), 1),
        ("line\nbreak", 0),
        ("tab\there", 2),
        ("nul\0", 4),
        ("del\u{7f}", 3),
        ("c1\u{85}", 1),
    ] {
        rejected(
            &g,
            &model,
            &before,
            g.insert(&batch(at, with_subject(200 + at as u64, s))),
            |e| matches!(e, Error::InvalidSubject { what: "embeddings", index, .. } if *index == at),
            &format!("embeddings[{at}].subject"),
        );
    }
    // A repeated id, including one that exists already.
    let mut dup = batch(0, good(7));
    dup[3] = good(7);
    rejected(
        &g,
        &model,
        &before,
        g.insert(&dup),
        |e| {
            matches!(
                e,
                Error::DuplicateId {
                    what: "embeddings",
                    id: 7,
                    first: 0,
                    second: 3
                }
            )
        },
        "embeddings[3]",
    );
    // The first bad position is reported.
    let mut two = batch(1, with_subject(201, ""));
    two[3] = with_vector(203, |v| v[0] = f32::NAN);
    rejected(
        &g,
        &model,
        &before,
        g.insert(&two),
        |e| matches!(e, Error::InvalidSubject { index: 1, .. }),
        "embeddings[1]",
    );
    // Too many embeddings (checked before anything else, so empty vectors suffice).
    let huge: Vec<Embedding> = (0..MAX_INSERT_BATCH as u64 + 1)
        .map(|id| Embedding {
            id,
            subject: "s".into(),
            vector: Vec::new(),
        })
        .collect();
    rejected(
        &g,
        &model,
        &before,
        g.insert(&huge),
        |e| matches!(e, Error::TooLarge { what: "embeddings", got, limit } if *got == MAX_INSERT_BATCH + 1 && *limit == MAX_INSERT_BATCH),
        &MAX_INSERT_BATCH.to_string(),
    );
    drop(huge);

    // Deletes: a bad subject rejects the whole request, valid ids included.
    rejected(
        &g,
        &model,
        &before,
        g.delete(&[1, 2, 150], &["s0".into(), "bad\r".into()]),
        |e| {
            matches!(
                e,
                Error::InvalidSubject {
                    what: "subjects",
                    index: 1,
                    ..
                }
            )
        },
        "subjects[1]",
    );
    rejected(
        &g,
        &model,
        &before,
        g.delete(&[], &[String::new()]),
        |e| {
            matches!(
                e,
                Error::InvalidSubject {
                    what: "subjects",
                    index: 0,
                    ..
                }
            )
        },
        "subjects[0]",
    );
    let many = vec![1u64; MAX_DELETE_BATCH];
    rejected(
        &g,
        &model,
        &before,
        g.delete(&many, &["s1".into()]),
        |e| matches!(e, Error::TooLarge { limit, .. } if *limit == MAX_DELETE_BATCH),
        &MAX_DELETE_BATCH.to_string(),
    );

    // Search and identify: k, probe dimension and values, probe count.
    let p = vec![vec![0.25f32; DIM]; 3];
    rejected(
        &g,
        &model,
        &before,
        g.search(&p, 0),
        |e| matches!(e, Error::InvalidK { got: 0, .. }),
        "k",
    );
    rejected(
        &g,
        &model,
        &before,
        g.identify(&p, 0),
        |e| matches!(e, Error::InvalidK { got: 0, .. }),
        "k",
    );
    rejected(
        &g,
        &model,
        &before,
        g.search(&p, MAX_K + 1),
        |e| matches!(e, Error::InvalidK { got, limit } if *got == MAX_K + 1 && *limit == MAX_K),
        &MAX_K.to_string(),
    );
    rejected(
        &g,
        &model,
        &before,
        g.identify(&p, MAX_IDENTIFY_K + 1),
        |e| matches!(e, Error::InvalidK { limit, .. } if *limit == MAX_IDENTIFY_K),
        &MAX_IDENTIFY_K.to_string(),
    );
    let mut bad_dim = p.clone();
    bad_dim[1].pop();
    rejected(
        &g,
        &model,
        &before,
        g.search(&bad_dim, 5),
        |e| {
            matches!(
                e,
                Error::DimensionMismatch {
                    what: "probes",
                    index: 1,
                    got: 127,
                    ..
                }
            )
        },
        "probes[1]",
    );
    let mut nan = p.clone();
    nan[2][64] = f32::NAN;
    rejected(
        &g,
        &model,
        &before,
        g.identify(&nan, 5),
        |e| {
            matches!(
                e,
                Error::NonFiniteValue {
                    what: "probes",
                    index: 2,
                    position: 64,
                    ..
                }
            )
        },
        "probes[2]",
    );
    let too_many = vec![Vec::<f32>::new(); MAX_PROBES + 1];
    rejected(
        &g,
        &model,
        &before,
        g.search(&too_many, 1),
        |e| matches!(e, Error::TooLarge { what: "probes", limit, .. } if *limit == MAX_PROBES),
        &MAX_PROBES.to_string(),
    );

    // The limits themselves are accepted.
    assert_eq!(g.search(&p, MAX_K).unwrap()[0].len(), model.len());
    assert_eq!(g.identify(&p, MAX_IDENTIFY_K).unwrap()[0].len(), 3);
    assert!(g.insert(&[]).is_ok());
    assert_eq!(
        files(g.dir()),
        before,
        "reads and an empty insert write nothing"
    );
    let edge = with_subject(250, &"é".repeat(128)); // 256 bytes
    g.insert(std::slice::from_ref(&edge)).unwrap();
    model.insert(250, edge);
    drop(g);
    drop(engine);
    let engine = Engine::open(tmp.path(), opts(false, 1 << 17)).unwrap();
    assert_contents(&engine.gallery("g").unwrap(), &model, 0..300, "reopened");
}

#[test]
fn invalid_gallery_names_are_refused_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open(tmp.path(), opts(false, 1 << 17)).unwrap();
    let long = "a".repeat(65);
    for name in [
        "",
        "..",
        "../escape",
        "a/b",
        "-dash-first",
        "sp ace",
        "é",
        long.as_str(),
    ] {
        match engine.create_gallery(name) {
            // Quoted whole up to 64 bytes, shortened beyond (a hostile name
            // must not make a megabyte-long message).
            Err(Error::InvalidName { name: n, .. }) if name.len() <= 64 => assert_eq!(n, name),
            Err(Error::InvalidName { name: n, .. }) => {
                assert_eq!(n, format!("{}… (65 bytes)", "a".repeat(64)));
            }
            other => panic!("{name:?}: {other:?}"),
        }
    }
    assert!(engine.list_galleries().is_empty());
    assert!(
        all_files(tmp.path())
            .iter()
            .all(|p| p.file_name().unwrap() == "LOCK")
    );
    assert!(!tmp.path().join("escape").exists());
    engine.create_gallery(&"a".repeat(64)).unwrap();
    engine.create_gallery("0_ok-Name").unwrap();
    assert_eq!(engine.list_galleries().len(), 2);
}

/// Extreme but valid values: ids 0 and u64::MAX, -0.0, subnormals, ±f32::MAX
/// (whose distances overflow f32 to infinity). They round-trip bit for bit
/// through the memtable, a segment and a reopen, and a search with k above the
/// live count still returns every row, in (distance, id) order.
#[test]
fn extreme_values_round_trip_and_stay_searchable() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(4);
    let special = |id: u64, f: &dyn Fn(usize) -> f32| Embedding {
        id,
        subject: format!("edge-{}", id % 3),
        vector: (0..DIM).map(f).collect(),
    };
    let rows = vec![
        special(0, &|i| if i % 2 == 0 { -0.0 } else { 0.0 }),
        special(u64::MAX, &|i| f32::from_bits(1 + i as u32)), // subnormals
        special(u64::MAX - 1, &|i| {
            if i % 2 == 0 { f32::MAX } else { -f32::MAX }
        }),
        special(1 << 63, &|_| f32::MIN_POSITIVE),
        special(7, &|i| i as f32 * 1e30),
        embedding(&mut rng, 8, "plain"),
    ];
    let model: Model = rows.iter().map(|e| (e.id, e.clone())).collect();
    let ids: Vec<u64> = model.keys().copied().collect();
    let check = |g: &Gallery, ctx: &str| {
        let got = g.get(&ids);
        assert_eq!(got.len(), ids.len(), "{ctx}");
        for e in &got {
            crate::support::assert_same(e, &model[&e.id], ctx);
        }
        for probe in [
            vec![0.0f32; DIM],
            vec![f32::MAX; DIM],
            rows[5].vector.clone(),
        ] {
            let hits = g.search(std::slice::from_ref(&probe), 10).unwrap();
            let mut got: Vec<u64> = hits[0].iter().map(|h| h.id).collect();
            got.sort_unstable();
            assert_eq!(got, ids, "{ctx}: k above the live count returns every row");
            for w in hits[0].windows(2) {
                let key = |h: &visage_engine::Hit| (h.distance, h.id);
                assert!(key(&w[0]) < key(&w[1]), "{ctx}: order {:?}", hits[0]);
            }
            let cands = g.identify(std::slice::from_ref(&probe), 10).unwrap();
            assert_eq!(cands[0].len(), 4, "{ctx}: every subject identified");
        }
    };
    {
        let engine = Engine::open(tmp.path(), opts(false, 1 << 17)).unwrap();
        let g = engine.create_gallery("g").unwrap();
        g.insert(&rows).unwrap();
        check(&g, "memtable");
        g.flush().unwrap();
        check(&g, "segment");
    }
    let engine = Engine::open(tmp.path(), opts(false, 1 << 17)).unwrap();
    check(&engine.gallery("g").unwrap(), "reopened");
}

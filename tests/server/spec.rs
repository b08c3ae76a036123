//! Galleries of other dimensions, cosine (normalising) galleries and model
//! pinning over gRPC: a 512-d normalising gallery answers as a brute-force
//! scan of the normalised vectors does, with `similarity = 1 − d/2`; every
//! refused request (another model, a wrong dimension, a zero vector, a batch
//! over the limit for the dimension, a bad spec) gets its status and changes
//! nothing; galleries of older formats read as 128-d.

use crate::harness::{Server, TempData, assert_status};
use std::path::Path;
use tonic::Code;
use visage_client::proto;
use visage_client::{Against, Client, Embedding, Error, GalleryInfo, GallerySpec, Threshold};
use visage_tests::Rng;

/// The model the tests' galleries are created for, and another one.
pub(crate) const ARCFACE: &str = "arcface-r100@insightface-0.7.3";
pub(crate) const FACENET: &str = "facenet512@deepface-0.0.93";

/// A vector of `dim` values uniform in [-1, 1), scaled by a factor in
/// [0.5, 4.5) so that normalising it changes it.
pub(crate) fn vector(rng: &mut Rng, dim: usize) -> Vec<f32> {
    let scale = 0.5 + 4.0 * rng.f32();
    (0..dim).map(|_| rng.unit() * scale).collect()
}

/// `v / ‖v‖` in f64: the reference for what a normalising gallery stores.
pub(crate) fn unit(v: &[f32]) -> Vec<f64> {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    v.iter().map(|&x| f64::from(x) / norm).collect()
}

fn l2sq(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A normalising gallery's expected content: id → (subject, unit vector in f64).
#[derive(Default)]
pub(crate) struct Cosine {
    rows: std::collections::BTreeMap<u64, (String, Vec<f64>)>,
}

impl Cosine {
    pub(crate) fn insert(&mut self, batch: &[Embedding]) {
        for e in batch {
            self.rows.insert(e.id, (e.subject.clone(), unit(&e.vector)));
        }
    }

    /// Brute-force top-k of the normalised probe: (id, subject, distance,
    /// cosine), ascending by (distance, id).
    pub(crate) fn search(&self, q: &[f32], k: usize) -> Vec<(u64, String, f64, f64)> {
        let q = unit(q);
        let mut all: Vec<_> = self
            .rows
            .iter()
            .map(|(id, (s, v))| (*id, s.clone(), l2sq(&q, v), dot(&q, v)))
            .collect();
        all.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    /// Brute-force identification: the k best subjects by their best embedding.
    fn identify(&self, q: &[f32], k: usize) -> Vec<(u64, String, f64, f64)> {
        let mut best: Vec<(u64, String, f64, f64)> = Vec::new();
        for hit in self.search(q, self.rows.len()) {
            if !best.iter().any(|b| b.1 == hit.1) {
                best.push(hit);
            }
        }
        best.truncate(k);
        best
    }
}

/// A served f32 value against an f64 reference, to f32 precision.
fn close(got: f32, want: f64, what: &str) {
    assert!(
        (f64::from(got) - want).abs() <= 1e-5,
        "{what}: {got} vs reference {want}"
    );
}

/// A served similarity: present, `1 − d/2` of the served distance, the
/// reference cosine, and within [−1, 1].
fn check_similarity(similarity: Option<f32>, distance: f32, cosine: f64, what: &str) {
    let s = similarity.unwrap_or_else(|| panic!("{what}: no similarity in a normalising gallery"));
    assert!((-1.0..=1.0).contains(&s), "{what}: similarity {s}");
    assert!(
        (s - (1.0 - distance / 2.0)).abs() <= 1e-6,
        "{what}: similarity {s} is not 1 - d/2 of d = {distance}"
    );
    close(s, cosine, what);
}

/// Served hits against the reference: ids and subjects exactly, distances
/// and similarities to f32 precision.
fn check_hits(got: &[proto::Hit], want: &[(u64, String, f64, f64)], what: &str) {
    let ids: Vec<u64> = got.iter().map(|h| h.id).collect();
    let want_ids: Vec<u64> = want.iter().map(|w| w.0).collect();
    assert_eq!(ids, want_ids, "{what}: ids");
    for (h, w) in got.iter().zip(want) {
        assert_eq!(h.subject, w.1, "{what}: subject of {}", h.id);
        close(h.distance, w.2, what);
        check_similarity(h.similarity, h.distance, w.3, what);
    }
}

pub(crate) fn spec(dim: u32) -> GallerySpec {
    GallerySpec {
        dim,
        model: ARCFACE.into(),
        normalize: true,
        ..GallerySpec::default()
    }
}

/// `n` embeddings with ids `first..first + n` of `subjects` subjects.
fn embeddings(rng: &mut Rng, dim: usize, first: u64, n: usize, subjects: u64) -> Vec<Embedding> {
    (first..first + n as u64)
        .map(|id| Embedding {
            id,
            subject: format!("p-{}", id % subjects),
            vector: vector(rng, dim),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_512_d_cosine_gallery_answers_as_brute_force_on_unit_vectors() {
    cosine_gallery_end_to_end(512).await;
}

async fn cosine_gallery_end_to_end(dim: usize) {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    let info = c
        .create_gallery_with("arc", &spec(dim as u32))
        .await
        .unwrap();
    assert_eq!(
        (
            info.dim as usize,
            info.model.as_str(),
            info.normalize,
            info.live
        ),
        (dim, ARCFACE, true, 0)
    );
    // Requests naming the gallery's model and requests naming none are served.
    let named = c.gallery("arc").with_model(ARCFACE);
    let unnamed = c.gallery("arc");
    let mut rng = Rng(512);
    let mut model = Cosine::default();
    let first = embeddings(&mut rng, dim, 0, 900, 90);
    let out = named.insert(&first).await.unwrap();
    assert_eq!((out.inserted, out.replaced), (900, 0));
    model.insert(&first);
    // Half of it in a segment, the rest in memory.
    named.flush().await.unwrap();
    let second = embeddings(&mut rng, dim, 900, 300, 90);
    unnamed.insert(&second).await.unwrap();
    model.insert(&second);
    let info = named.stats().await.unwrap();
    assert_eq!(
        (info.dim as usize, info.live, info.subjects),
        (dim, 1200, 90)
    );
    let listed: Vec<_> = c
        .list_galleries()
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.name, i.dim, i.model, i.normalize))
        .collect();
    assert_eq!(listed, [("arc".into(), dim as u32, ARCFACE.into(), true)]);

    // Get returns what was stored: the unit vector.
    for e in named.get(&[3, 950, 1199]).await.unwrap() {
        let want = &model.rows[&e.id].1;
        assert_eq!(e.vector.len(), dim);
        for (x, w) in e.vector.iter().zip(want) {
            assert!((f64::from(*x) - w).abs() <= 1e-6, "id {}: {x} vs {w}", e.id);
        }
    }

    // Search: fresh probes, and enrolled vectors scaled (same direction).
    let mut probes: Vec<Vec<f32>> = (0..12).map(|_| vector(&mut rng, dim)).collect();
    for id in [5u64, 901] {
        let v = if id < 900 {
            &first[id as usize].vector
        } else {
            &second[id as usize - 900].vector
        };
        probes.push(v.iter().map(|x| x * 3.25).collect());
    }
    for g in [&named, &unnamed] {
        let res = g.search(&probes, 10).await.unwrap();
        assert_eq!(res.len(), probes.len());
        for (i, (hits, q)) in res.iter().zip(&probes).enumerate() {
            check_hits(hits, &model.search(q, 10), &format!("search probe {i}"));
        }
        // A scaled enrolled vector finds itself, at similarity 1.
        let top = &res[12][0];
        assert_eq!(top.id, 5);
        assert!(top.similarity.unwrap() > 0.9999, "{top:?}");
        assert_eq!(res[13][0].id, 901);
    }

    // Identify: the best distinct subjects, known iff within max_distance.
    let max_distance = 0.5;
    let who = named
        .identify_with(
            &probes,
            5,
            Threshold {
                max_distance: Some(max_distance),
                ..Threshold::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(who.len(), probes.len());
    for (i, (r, q)) in who.iter().zip(&probes).enumerate() {
        let want = model.identify(q, 5);
        let got: Vec<(u64, &str)> = r
            .candidates
            .iter()
            .map(|c| (c.id, c.subject.as_str()))
            .collect();
        let want_ids: Vec<(u64, &str)> = want.iter().map(|w| (w.0, w.1.as_str())).collect();
        assert_eq!(got, want_ids, "identify probe {i}");
        for (c, w) in r.candidates.iter().zip(&want) {
            close(c.distance, w.2, "identify");
            check_similarity(c.similarity, c.distance, w.3, "identify");
        }
        let known = want[0].2 <= f64::from(max_distance);
        assert_eq!(r.known, known, "identify probe {i}");
        if known {
            assert_eq!(r.subject, want[0].1);
        }
    }
    assert!(who[12].known && who[12].subject == "p-5");

    // Verify: against a vector, an id and a subject.
    let a = probes[0].clone();
    let b = probes[1].clone();
    let subject_best = model
        .identify(&a, 90)
        .into_iter()
        .find(|w| w.1 == "p-7")
        .unwrap();
    let verdicts = named
        .verify_with(
            &[
                (a.clone(), Against::Vector(b.clone())),
                (a.clone(), Against::Id(42)),
                (a.clone(), Against::Subject("p-7".into())),
                (probes[12].clone(), Against::Id(5)),
            ],
            Threshold {
                max_distance: Some(max_distance),
                ..Threshold::default()
            },
        )
        .await
        .unwrap();
    let (ua, ub) = (unit(&a), unit(&b));
    let u42 = &model.rows[&42].1;
    let u5 = &model.rows[&5].1;
    let u12 = unit(&probes[12]);
    let want = [
        (l2sq(&ua, &ub), dot(&ua, &ub), None),
        (l2sq(&ua, u42), dot(&ua, u42), Some(42)),
        (subject_best.2, subject_best.3, Some(subject_best.0)),
        (l2sq(&u12, u5), dot(&u12, u5), Some(5)),
    ];
    for (i, (v, (d, cos, matched))) in verdicts.iter().zip(want).enumerate() {
        let what = format!("verdict {i}");
        close(v.distance, d, &what);
        check_similarity(v.similarity, v.distance, cos, &what);
        assert_eq!(v.matched_id, matched, "{what}");
        assert_eq!(v.same, d <= f64::from(max_distance), "{what}");
    }
    assert!(verdicts[3].same);
}

/// The gallery's observable state: counts, every embedding, and the answer
/// to one search.
async fn state(
    c: &Client,
    gallery: &str,
    ids: &[u64],
    probe: &[f32],
) -> ((u64, u64, u64), Vec<Embedding>, Vec<(u64, String, u32)>) {
    let g = c.gallery(gallery);
    let i = g.stats().await.unwrap();
    let hits = g.search(&[probe], 20).await.unwrap();
    (
        (i.live, i.deleted, i.subjects),
        g.get(ids).await.unwrap(),
        hits[0]
            .iter()
            .map(|h| (h.id, h.subject.clone(), h.distance.to_bits()))
            .collect(),
    )
}

fn raw<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, Error> {
    r.map(tonic::Response::into_inner).map_err(Error::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_name_what_is_wrong_and_change_nothing() {
    refusals(512).await;
}

async fn refusals(dim: usize) {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    c.create_gallery_with("arc", &spec(dim as u32))
        .await
        .unwrap();
    let g = c.gallery("arc").with_model(ARCFACE);
    let other = c.gallery("arc").with_model(FACENET);
    let mut rng = Rng(13);
    let base = embeddings(&mut rng, dim, 0, 200, 20);
    g.insert(&base).await.unwrap();
    g.flush().await.unwrap();
    g.insert(&embeddings(&mut rng, dim, 200, 50, 20))
        .await
        .unwrap();
    let ids: Vec<u64> = (0..300).collect();
    let probe = vector(&mut rng, dim);
    let before = state(&c, "arc", &ids, &probe).await;
    assert_eq!(before.0.0, 250);
    let unchanged = |what: &str| format!("{what} changed the gallery");

    // Each bad batch holds new ids (250..) and upserts of existing ones (0..).
    let batch = || {
        let mut rng = Rng(99);
        let mut b = embeddings(&mut rng, dim, 245, 10, 20);
        b[0].subject = "moved".into();
        b
    };
    let models = [ARCFACE, FACENET];

    // Another model: FAILED_PRECONDITION naming both, on every kind of request.
    assert_status(
        other.insert(&batch()).await,
        Code::FailedPrecondition,
        &models,
    );
    assert!(
        state(&c, "arc", &ids, &probe).await == before,
        "{}",
        unchanged("insert")
    );
    assert_status(
        other.insert_stream(tokio_stream::iter(vec![batch()])).await,
        Code::FailedPrecondition,
        &["messages[0]", ARCFACE, FACENET],
    );
    assert!(
        state(&c, "arc", &ids, &probe).await == before,
        "{}",
        unchanged("insert_stream")
    );
    // A stream whose second message names the other model: the first is
    // committed, the second refused whole.
    let mut rpc = c.rpc();
    let first = embeddings(&mut rng, dim, 1000, 3, 20);
    let r = raw(rpc
        .insert_stream(tokio_stream::iter(vec![
            proto::InsertRequest {
                gallery: "arc".into(),
                embeddings: first.clone(),
                model: ARCFACE.into(),
                ..Default::default()
            },
            proto::InsertRequest {
                gallery: "arc".into(),
                embeddings: batch(),
                model: FACENET.into(),
                ..Default::default()
            },
        ]))
        .await);
    assert_status(
        r,
        Code::FailedPrecondition,
        &[
            "messages[1]",
            ARCFACE,
            FACENET,
            "1 earlier messages (3 embeddings)",
        ],
    );
    let before = {
        let now = state(&c, "arc", &ids, &probe).await;
        assert_eq!(
            now.0,
            (253, before.0.1, before.0.2),
            "only the first message"
        );
        assert!(now.1 == before.1, "{}", unchanged("the refused message"));
        let got = g.get(&[1000, 1001, 1002]).await.unwrap();
        assert_eq!(
            got.iter().map(|e| e.id).collect::<Vec<_>>(),
            [1000, 1001, 1002]
        );
        now
    };

    let q = [probe.clone()];
    assert_status(other.search(&q, 5).await, Code::FailedPrecondition, &models);
    assert_status(
        other.identify(&q, 5).await,
        Code::FailedPrecondition,
        &models,
    );
    assert_status(
        other.verify(&[(probe.clone(), Against::Id(3))]).await,
        Code::FailedPrecondition,
        &models,
    );
    // Even a request the engine would refuse for its vectors: the model first.
    assert_status(
        other.search(&[vec![0.0; 3]], 5).await,
        Code::FailedPrecondition,
        &models,
    );
    // The gallery's own model, and none, are accepted.
    assert_eq!(g.search(&q, 20).await.unwrap()[0].len(), 20);
    assert_eq!(c.gallery("arc").search(&q, 20).await.unwrap()[0].len(), 20);

    // Wrong dimensions: INVALID_ARGUMENT with the gallery's and the one received.
    let expected = format!("expected {dim} values, got 128");
    let mut b = batch();
    b[3].vector.truncate(128);
    assert_status(
        g.insert(&b).await,
        Code::InvalidArgument,
        &["embeddings[3]", &expected],
    );
    let mut b = batch();
    b[6].vector.push(0.5);
    assert_status(
        g.insert(&b).await,
        Code::InvalidArgument,
        &[
            "embeddings[6]",
            &format!("expected {dim} values, got {}", dim + 1),
        ],
    );
    assert!(
        state(&c, "arc", &ids, &probe).await == before,
        "{}",
        unchanged("a wrong dimension")
    );
    let short: Vec<f32> = probe[..128].to_vec();
    assert_status(
        g.search(&[probe.clone(), short.clone()], 5).await,
        Code::InvalidArgument,
        &["queries[1]", &expected],
    );
    assert_status(
        g.identify(&[&short], 5).await,
        Code::InvalidArgument,
        &["matrix", &expected],
    );
    assert_status(
        g.verify(&[
            (probe.clone(), Against::Id(1)),
            (short.clone(), Against::Id(1)),
        ])
        .await,
        Code::InvalidArgument,
        &["[1]", &expected],
    );
    assert_status(
        g.verify(&[(probe.clone(), Against::Vector(short.clone()))])
            .await,
        Code::InvalidArgument,
        &["[0]", &expected],
    );

    // Zero vectors cannot be normalised: INVALID_ARGUMENT naming the position.
    let mut b = batch();
    b[2].vector = vec![0.0; dim];
    assert_status(
        g.insert(&b).await,
        Code::InvalidArgument,
        &["matrix[2]", "zero vector"],
    );
    assert!(
        state(&c, "arc", &ids, &probe).await == before,
        "{}",
        unchanged("a zero vector")
    );
    let zero = vec![0.0f32; dim];
    assert_status(
        g.search(&[probe.clone(), probe.clone(), zero.clone()], 5)
            .await,
        Code::InvalidArgument,
        &["matrix[2]", "zero vector"],
    );
    assert_status(
        g.identify(&[&zero], 5).await,
        Code::InvalidArgument,
        &["matrix[0]", "zero vector"],
    );
    assert_status(
        g.verify(&[
            (probe.clone(), Against::Id(1)),
            (probe.clone(), Against::Vector(zero.clone())),
        ])
        .await,
        Code::InvalidArgument,
        &["[1]", "zero vector"],
    );

    // Batches over the limits for this dimension (Limits::for_dim: 100,000
    // embeddings and 10,000 probes at 128 values, proportionally fewer above).
    let insert_limit = 100_000 * 128 / dim.max(128);
    let probe_limit = 10_000 * 128 / dim.max(128);
    let huge: Vec<Embedding> = (0..insert_limit as u64 + 1)
        .map(|i| Embedding {
            id: 5000 + i,
            subject: "s".into(),
            vector: vec![],
        })
        .collect();
    assert_status(
        g.insert_with(
            &huge,
            visage_client::InsertOptions {
                batch: huge.len(),
                concurrency: 1,
            },
            |_| {},
        )
        .await,
        Code::ResourceExhausted,
        &[
            "embeddings",
            &(insert_limit + 1).to_string(),
            &insert_limit.to_string(),
        ],
    );
    let many: Vec<&[f32]> = (0..=probe_limit).map(|_| probe.as_slice()).collect();
    assert_status(
        g.search(&many, 1).await,
        Code::ResourceExhausted,
        &[&(probe_limit + 1).to_string(), &probe_limit.to_string()],
    );
    let pairs: Vec<(Vec<f32>, Against)> = (0..=probe_limit)
        .map(|_| (vec![], Against::Id(1)))
        .collect();
    assert_status(
        g.verify(&pairs).await,
        Code::ResourceExhausted,
        &["pairs", &(probe_limit + 1).to_string()],
    );
    let get_ids: Vec<u64> = (0..=insert_limit as u64).collect();
    assert_status(
        g.get(&get_ids).await,
        Code::ResourceExhausted,
        &[
            "ids",
            &(insert_limit + 1).to_string(),
            &insert_limit.to_string(),
        ],
    );
    assert!(
        state(&c, "arc", &ids, &probe).await == before,
        "{}",
        unchanged("a batch over the limit")
    );

    // A batch at the limit goes through the server's default message limit.
    let full = embeddings(&mut rng, dim, 10_000, insert_limit, 500);
    let out = g
        .insert_with(
            &full,
            visage_client::InsertOptions {
                batch: insert_limit,
                concurrency: 1,
            },
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!((out.inserted, out.batches), (insert_limit as u64, 1));
}

/// The largest Insert and Search of every dimension, with subjects of 100
/// bytes, fit in the server's default message limit (64 MiB); the unscaled
/// limit of 100,000 embeddings would not from 176 values a vector.
#[test]
fn the_largest_requests_fit_the_default_message_limit() {
    use prost::Message;
    const DEFAULT: usize = 64 << 20;
    let insert = |dim: usize, n: usize| proto::InsertRequest {
        gallery: "g".repeat(64),
        embeddings: (0..n as u64)
            .map(|i| Embedding {
                id: u64::MAX - i,
                subject: format!("{i:0100}"),
                vector: vec![0.25; dim],
            })
            .collect(),
        model: "m".repeat(256),
        ..Default::default()
    };
    // The packed form of the same batch: smaller (no tag per value).
    let packed = |dim: usize, n: usize| proto::InsertRequest {
        gallery: "g".repeat(64),
        matrix: visage_client::matrix_of(&vec![0.25; n * dim], dim as u32),
        ids: (0..n as u64).map(|i| u64::MAX - i).collect(),
        subjects: (0..n).map(|i| format!("{i:0100}")).collect(),
        model: "m".repeat(256),
        ..Default::default()
    };
    for dim in [16, 128, 176, 512, 1024, 2048] {
        let limits = visage_engine::Limits::for_dim(dim);
        let bytes = insert(dim, limits.insert_batch).encoded_len();
        assert!(bytes <= DEFAULT, "insert at {dim}: {bytes} bytes");
        let packed_bytes = packed(dim, limits.insert_batch).encoded_len();
        assert!(
            packed_bytes < bytes,
            "packed insert at {dim}: {packed_bytes} bytes"
        );
        let search = proto::SearchRequest {
            gallery: "g".into(),
            queries: vec![
                proto::Vector {
                    values: vec![0.25; dim]
                };
                limits.probes
            ],
            k: 100,
            ..Default::default()
        };
        assert!(search.encoded_len() <= DEFAULT / 8, "search at {dim}");
        if dim >= 176 {
            assert!(insert(dim, 100_000).encoded_len() > DEFAULT, "{dim}");
        }
    }
    assert_eq!(visage_engine::Limits::for_dim(512).insert_batch, 25_000);
    assert_eq!(visage_engine::Limits::for_dim(2048).probes, 625);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_and_defaults_are_128_d() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    let with = |dim: u32, model: &str, normalize: bool| GallerySpec {
        dim,
        model: model.into(),
        normalize,
        ..GallerySpec::default()
    };
    for (s, fragments) in [
        (
            with(100, "", false),
            vec!["dimension 100", "multiple of 16"],
        ),
        (with(4096, "", false), vec!["dimension 4096", "2048"]),
        (with(8, ARCFACE, true), vec!["dimension 8", "16"]),
        (with(2064, "", false), vec!["dimension 2064"]),
        (
            with(512, &"m".repeat(300), false),
            vec!["model", "300 bytes"],
        ),
        (
            with(128, "arc\nface", false),
            vec!["model", "control character"],
        ),
    ] {
        assert_status(
            c.create_gallery_with("g", &s).await,
            Code::InvalidArgument,
            &fragments,
        );
    }
    assert!(
        c.list_galleries().await.unwrap().is_empty(),
        "nothing created"
    );

    // dim 0 and the plain call are the default: 128, no model, not normalising.
    let d = c.create_gallery("plain").await.unwrap();
    let z = c
        .create_gallery_with("zero", &with(0, "", false))
        .await
        .unwrap();
    for info in [&d, &z] {
        assert_eq!(
            (info.dim, info.model.as_str(), info.normalize),
            (128, "", false)
        );
    }
    // A 128-d gallery with a model, not normalising: no similarity; its model
    // is checked all the same.
    c.create_gallery_with("facenet", &with(128, FACENET, false))
        .await
        .unwrap();
    let g = c.gallery("facenet").with_model(FACENET);
    let mut rng = Rng(3);
    g.insert(&embeddings(&mut rng, 128, 0, 20, 4))
        .await
        .unwrap();
    let hits = g.search(&[rng.vector()], 5).await.unwrap();
    assert!(hits[0].iter().all(|h| h.similarity.is_none()));
    assert_status(
        c.gallery("facenet")
            .with_model(ARCFACE)
            .insert(&embeddings(&mut rng, 128, 100, 2, 1))
            .await,
        Code::FailedPrecondition,
        &[ARCFACE, FACENET],
    );
    // A gallery that records no model refuses requests naming one.
    assert_status(
        c.gallery("plain")
            .with_model(ARCFACE)
            .search(&[rng.vector()], 1)
            .await,
        Code::FailedPrecondition,
        &[ARCFACE],
    );
    assert_eq!(c.gallery("facenet").stats().await.unwrap().live, 20);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// The fixtures' gallery as `GetGallery` shows it.
fn fixture_info(info: &GalleryInfo) -> (u32, &str, bool, u64) {
    (info.dim, info.model.as_str(), info.normalize, info.live)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn galleries_of_older_formats_are_128_d_without_a_model() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut versions: Vec<String> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("format-v"))
        .collect();
    versions.sort();
    for v in ["format-v1", "format-v2", "format-v3"] {
        assert!(versions.iter().any(|n| n == v), "{v} missing: {versions:?}");
    }
    for v in &versions {
        let t = TempData::new();
        copy_dir(&fixtures.join(v), &t.data());
        let server = Server::start(&t.data());
        let c = server.client().await;
        let info = c.gallery("fixture").stats().await.unwrap();
        // 44 written, ids 5 and 6 deleted (see tests/engine/compat.rs).
        assert_eq!(fixture_info(&info), (128, "", false, 42), "{v}");
        assert_eq!(
            c.list_galleries()
                .await
                .unwrap()
                .iter()
                .map(fixture_info)
                .collect::<Vec<_>>(),
            [(128, "", false, 42)],
            "{v}"
        );
        let e = c.gallery("fixture").get(&[7]).await.unwrap();
        let hits = c
            .gallery("fixture")
            .search(&[&e[0].vector], 1)
            .await
            .unwrap();
        assert_eq!((hits[0][0].id, hits[0][0].similarity), (7, None), "{v}");
    }
}

//! The packed forms of the wire (`Matrix` batches, parallel ids and subjects,
//! the flat Search response) against the repeated forms old clients send, on
//! the real server: the same answers; malformed matrices refused with the
//! rows, dimension and byte length, changing nothing; and the ids the gallery
//! assigns, never handed out twice across deletes, compaction and SIGKILL.

use crate::harness::{Model, Server, TempData, assert_hits, assert_status, batch};
use tonic::Code;
use visage_client::{Against, Client, Embedding, Error, Rows, matrix, matrix_of, proto};
use visage_tests::Rng;

fn raw<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, Error> {
    r.map(tonic::Response::into_inner).map_err(Error::from)
}

/// Every row of gallery `g` among ids `0..limit`, in id order.
async fn rows_of(c: &Client, g: &str, limit: u64) -> Vec<Embedding> {
    let ids: Vec<u64> = (0..limit).collect();
    let mut out = Vec::new();
    for chunk in ids.chunks(10_000) {
        out.extend(c.gallery(g).get(chunk).await.unwrap());
    }
    out
}

fn packed_insert(g: &str, rows: &[Embedding], ids: bool) -> proto::InsertRequest {
    let vs: Vec<&[f32]> = rows.iter().map(|e| &e.vector[..]).collect();
    proto::InsertRequest {
        gallery: g.into(),
        matrix: matrix(&vs),
        ids: if ids {
            rows.iter().map(|e| e.id).collect()
        } else {
            Vec::new()
        },
        subjects: rows.iter().map(|e| e.subject.clone()).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_and_repeated_requests_give_the_same_answers() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    let mut rpc = c.rpc();
    c.create_gallery("g").await.unwrap();
    let mut rng = Rng(21);
    let rows = batch(&mut rng, 1, 300, 30, "p");
    let mut model = Model::default();
    model.insert(&rows);
    // Half through each form.
    raw(rpc.insert(packed_insert("g", &rows[..150], true)).await).unwrap();
    raw(rpc
        .insert(proto::InsertRequest {
            gallery: "g".into(),
            embeddings: rows[150..].to_vec(),
            ..Default::default()
        })
        .await)
    .unwrap();
    assert_eq!(rows_of(&c, "g", 400).await, rows);

    let queries: Vec<Vec<f32>> = (0..7).map(|_| rng.vector()).collect();
    let q: Vec<&[f32]> = queries.iter().map(|v| &v[..]).collect();
    for k in [1, 10, 299, 300, 500] {
        let flat = raw(rpc
            .search(proto::SearchRequest {
                gallery: "g".into(),
                matrix: matrix(&q),
                k,
                with_subjects: true,
                ..Default::default()
            })
            .await)
        .unwrap();
        let nested = raw(rpc
            .search(proto::SearchRequest {
                gallery: "g".into(),
                queries: queries
                    .iter()
                    .map(|v| proto::Vector { values: v.clone() })
                    .collect(),
                k,
                ..Default::default()
            })
            .await)
        .unwrap();
        assert!(flat.results.is_empty() && nested.counts.is_empty());
        let k = k as usize;
        assert_eq!(flat.k as usize, k);
        assert_eq!(flat.ids.len(), q.len() * k, "k {k}");
        assert_eq!(flat.distances.len(), q.len() * k);
        assert_eq!(flat.subjects.len(), q.len() * k);
        // No head, no normalising: no probabilities or similarities.
        assert!(flat.probabilities.is_empty() && flat.similarities.is_empty());
        for (i, query) in queries.iter().enumerate() {
            let want = model.search(query, k);
            let n = flat.counts[i] as usize;
            assert_eq!(n, want.len().min(k), "k {k}, query {i}");
            let slots = i * k..(i + 1) * k;
            let hits: Vec<proto::Hit> = slots
                .clone()
                .take(n)
                .map(|s| proto::Hit {
                    id: flat.ids[s],
                    subject: flat.subjects[s].clone(),
                    distance: flat.distances[s],
                    ..Default::default()
                })
                .collect();
            assert_hits(&hits, &want, &format!("flat, k {k}, query {i}"));
            assert_eq!(hits, nested.results[i].hits, "k {k}, query {i}");
            // Padding: id 0, distance +inf, subject empty.
            for s in slots.skip(n) {
                assert_eq!(flat.ids[s], 0);
                assert_eq!(flat.distances[s], f32::INFINITY);
                assert_eq!(flat.subjects[s], "");
            }
        }
    }
    // Without subjects asked for, none are sent.
    let flat = raw(rpc
        .search(proto::SearchRequest {
            gallery: "g".into(),
            matrix: matrix(&q),
            k: 3,
            ..Default::default()
        })
        .await)
    .unwrap();
    assert!(flat.subjects.is_empty() && flat.ids.len() == 21);

    // Identify: the same response either way.
    let packed = raw(rpc
        .identify(proto::IdentifyRequest {
            gallery: "g".into(),
            matrix: matrix(&q),
            k: 5,
            max_distance: Some(100.0),
            ..Default::default()
        })
        .await)
    .unwrap();
    let nested = raw(rpc
        .identify(proto::IdentifyRequest {
            gallery: "g".into(),
            probes: queries
                .iter()
                .map(|v| proto::Vector { values: v.clone() })
                .collect(),
            k: 5,
            max_distance: Some(100.0),
            ..Default::default()
        })
        .await)
    .unwrap();
    assert_eq!(packed, nested);
    assert_eq!(packed.results.len(), 7);

    // Verify, against vectors, ids and subjects: the same verdicts, which
    // say their rule and threshold.
    let g = c.gallery("g");
    let a: Vec<Vec<f32>> = rows[..4].iter().map(|e| e.vector.clone()).collect();
    for against in [
        (0..4)
            .map(|i| Against::Vector(rows[i + 10].vector.clone()))
            .collect::<Vec<_>>(),
        (0..4).map(|i| Against::Id(rows[i].id)).collect(),
        (0..4)
            .map(|i| Against::Subject(rows[i + 1].subject.clone()))
            .collect(),
    ] {
        let pairs: Vec<(Vec<f32>, Against)> = a.iter().cloned().zip(against).collect();
        let threshold = visage_client::Threshold {
            max_distance: Some(50.0),
            ..Default::default()
        };
        // The client packs these (same kind of b throughout) ...
        let packed = g.verify_with(&pairs, threshold).await.unwrap();
        // ... and the repeated form of the same pairs.
        let nested = raw(rpc
            .verify(proto::VerifyRequest {
                gallery: "g".into(),
                pairs: pairs
                    .iter()
                    .map(|(a, b)| proto::VerifyPair {
                        a: Some(proto::Vector { values: a.clone() }),
                        b: Some(match b {
                            Against::Vector(v) => {
                                proto::verify_pair::B::Vector(proto::Vector { values: v.clone() })
                            }
                            Against::Id(id) => proto::verify_pair::B::Id(*id),
                            Against::Subject(s) => proto::verify_pair::B::Subject(s.clone()),
                        }),
                    })
                    .collect(),
                max_distance: Some(50.0),
                ..Default::default()
            })
            .await)
        .unwrap()
        .verdicts;
        assert_eq!(packed, nested);
        for v in &packed {
            assert_eq!(v.rule, proto::VerdictRule::Distance as i32);
            assert_eq!(v.threshold, 50.0);
            assert_eq!(v.same, v.distance <= 50.0);
        }
    }
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packed_requests_are_refused_and_change_nothing() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    let mut rpc = c.rpc();
    c.create_gallery("g").await.unwrap();
    let mut rng = Rng(8);
    let rows = batch(&mut rng, 1, 20, 4, "m");
    c.gallery("g").insert(&rows).await.unwrap();
    let before = rows_of(&c, "g", 100).await;
    let good = || packed_insert("g", &batch(&mut Rng(9), 10, 5, 2, "n"), true);

    let mut cases: Vec<(proto::InsertRequest, Code, Vec<&str>)> = Vec::new();
    let mut short = good();
    short
        .matrix
        .as_mut()
        .unwrap()
        .f32_le
        .truncate(5 * 128 * 4 - 3);
    cases.push((
        short,
        Code::InvalidArgument,
        vec![
            "matrix",
            "5 rows of dimension 128 need 2560 bytes",
            "got 2557",
        ],
    ));
    let mut wrong_dim = good();
    let m = wrong_dim.matrix.as_mut().unwrap();
    m.dim = 64;
    m.f32_le.truncate(5 * 64 * 4);
    cases.push((
        wrong_dim,
        Code::InvalidArgument,
        vec![
            "matrix",
            "expected 128 values, got 64",
            "5 rows",
            "1280 bytes",
        ],
    ));
    let mut zero_dim = good();
    zero_dim.matrix.as_mut().unwrap().dim = 0;
    cases.push((
        zero_dim,
        Code::InvalidArgument,
        vec!["matrix", "dimension 0"],
    ));
    let mut both = good();
    both.embeddings = rows[..1].to_vec();
    cases.push((both, Code::InvalidArgument, vec!["matrix", "one form"]));
    let mut few_subjects = good();
    few_subjects.subjects.pop();
    cases.push((
        few_subjects,
        Code::InvalidArgument,
        vec!["subjects", "4 subjects for 5 rows"],
    ));
    let mut few_ids = good();
    few_ids.ids.pop();
    cases.push((
        few_ids,
        Code::InvalidArgument,
        vec!["ids", "4 ids for 5 rows"],
    ));
    let mut no_matrix = good();
    no_matrix.matrix = None;
    cases.push((no_matrix, Code::InvalidArgument, vec!["matrix", "missing"]));
    // Rows named by position; ids too.
    let mut nan = good();
    nan.matrix.as_mut().unwrap().f32_le[(3 * 128 + 7) * 4..(3 * 128 + 8) * 4]
        .copy_from_slice(&f32::NAN.to_le_bytes());
    cases.push((
        nan,
        Code::InvalidArgument,
        vec!["matrix[3]", "value 7", "NaN"],
    ));
    let mut dup = good();
    dup.ids[4] = dup.ids[1];
    cases.push((
        dup,
        Code::InvalidArgument,
        vec!["ids[4]", "already appears at ids[1]"],
    ));
    let mut subject = good();
    subject.subjects[2] = String::new();
    cases.push((subject, Code::InvalidArgument, vec!["subjects[2]", "empty"]));
    let mut model = good();
    model.model = "other".into();
    cases.push((model, Code::FailedPrecondition, vec!["model"]));
    for (req, code, fragments) in cases {
        // Both as a unary call and as the first message of a stream.
        assert_status(raw(rpc.insert(req.clone()).await), code, &fragments);
        assert_status(
            raw(rpc.insert_stream(tokio_stream::iter(vec![req])).await),
            code,
            &fragments,
        );
        assert_eq!(
            rows_of(&c, "g", 100).await,
            before,
            "a refused batch changed the gallery ({fragments:?})"
        );
    }

    // Queries: a wrong length, a wrong dimension, both forms.
    let q = rng.vector();
    let mut m = matrix(&[&q[..]]).unwrap();
    m.f32_le.push(0);
    assert_status(
        raw(rpc
            .search(proto::SearchRequest {
                gallery: "g".into(),
                matrix: Some(m),
                k: 3,
                ..Default::default()
            })
            .await),
        Code::InvalidArgument,
        &[
            "matrix",
            "1 rows of dimension 128 need 512 bytes",
            "got 513",
        ],
    );
    assert_status(
        raw(rpc
            .identify(proto::IdentifyRequest {
                gallery: "g".into(),
                matrix: matrix_of(&q[..64], 64),
                k: 3,
                ..Default::default()
            })
            .await),
        Code::InvalidArgument,
        &["matrix", "expected 128 values, got 64"],
    );
    assert_status(
        raw(rpc
            .search(proto::SearchRequest {
                gallery: "g".into(),
                matrix: matrix(&[&q[..]]),
                queries: vec![proto::Vector { values: q.clone() }],
                k: 3,
                ..Default::default()
            })
            .await),
        Code::InvalidArgument,
        &["matrix", "one form"],
    );
    // Verify: b in none or two of its forms, or of another length.
    let a = matrix(&[&q[..], &q[..]]);
    for (b_ids, b_subjects, text) in [
        (
            vec![],
            vec![],
            "exactly one of b_matrix, b_ids, b_subjects (0 set)",
        ),
        (vec![1, 2], vec!["m-1".to_string(), "m-2".into()], "(2 set)"),
        (vec![1], vec![], "b_ids: 1 ids for 2 rows"),
    ] {
        assert_status(
            raw(rpc
                .verify(proto::VerifyRequest {
                    gallery: "g".into(),
                    matrix: a.clone(),
                    b_ids,
                    b_subjects,
                    max_distance: Some(1.0),
                    ..Default::default()
                })
                .await),
            Code::InvalidArgument,
            &[text],
        );
    }
    assert_eq!(rows_of(&c, "g", 100).await, before);
    assert!(server.terminate().success());
}

/// Insert `n` rows through the client without ids: the ids assigned.
async fn assign(c: &Client, rng: &mut Rng, n: usize) -> Vec<u64> {
    let rows = Rows {
        vectors: (0..n * 128).map(|_| rng.f32()).collect(),
        dim: 128,
        subjects: (0..n).map(|i| format!("a-{}", i % 5)).collect(),
        ids: None,
    };
    let (out, ids) = c.gallery("g").insert_rows([rows], 2, |_| {}).await.unwrap();
    assert_eq!(out.total(), n as u64);
    assert_eq!(ids.len(), n);
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigned_ids_survive_sigkill_delete_and_compaction_without_reuse() {
    /// `ids` (one batch's) are consecutive and above every id handed out.
    fn check(handed_out: &mut Vec<u64>, ids: &[u64], when: &str) {
        let floor = handed_out.iter().max().copied().unwrap_or(0);
        assert!(ids[0] > floor, "{when}: {} is not above {floor}", ids[0]);
        assert!(
            ids.windows(2).all(|w| w[1] == w[0] + 1),
            "{when}: not consecutive: {ids:?}"
        );
        handed_out.extend(ids);
    }
    let t = TempData::new();
    let mut handed_out: Vec<u64> = Vec::new();
    for round in 0..4 {
        let server = Server::start(&t.data());
        let c = server.client().await;
        if round == 0 {
            c.create_gallery("g").await.unwrap();
        }
        let mut rng = Rng(100 + round);
        // Several batches at once: each gets its own range, in input order.
        let rows = Rows {
            vectors: (0..2500 * 128).map(|_| rng.f32()).collect(),
            dim: 128,
            subjects: (0..2500).map(|i| format!("b-{}", i % 50)).collect(),
            ids: None,
        };
        let chunks: Vec<Rows> = (0..5)
            .map(|i| Rows {
                vectors: rows.vectors[i * 500 * 128..(i + 1) * 500 * 128].to_vec(),
                dim: 128,
                subjects: rows.subjects[i * 500..(i + 1) * 500].to_vec(),
                ids: None,
            })
            .collect();
        let (_, ids) = c.gallery("g").insert_rows(chunks, 3, |_| {}).await.unwrap();
        assert_eq!(ids.len(), 2500);
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 2500, "round {round}: an id assigned twice");
        // Each row is stored under the id it was given.
        let got = c.gallery("g").get(&ids[..10]).await.unwrap();
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e.id, ids[i]);
            assert_eq!(e.vector, rows.vectors[i * 128..(i + 1) * 128]);
        }
        let floor = handed_out.iter().max().copied().unwrap_or(0);
        assert!(
            sorted[0] > floor,
            "round {round}: id {} is not above {floor}, handed out before",
            sorted[0]
        );
        handed_out.extend(&ids);
        let more = assign(&c, &mut rng, 10).await;
        check(&mut handed_out, &more, &format!("round {round}"));
        // The newest rows deleted: after compaction no file holds them.
        c.gallery("g").delete(&more, &[]).await.unwrap();
        match round {
            0 => {}
            1 => {
                c.gallery("g").flush().await.unwrap();
            }
            _ => {
                c.gallery("g").compact().await.unwrap();
            }
        }
        // SIGKILL, whatever was flushed or not.
        drop(server);
    }
    // Streaming: each packed message's ids, in order, in the one response.
    let server = Server::start(&t.data());
    let c = server.client().await;
    let mut rng = Rng(7);
    let msgs: Vec<proto::InsertRequest> = (0..3)
        .map(|i| {
            let rows = batch(&mut rng, 0, 4, 2, &format!("st{i}"));
            packed_insert(if i == 0 { "g" } else { "" }, &rows, false)
        })
        .collect();
    let r = raw(c.rpc().insert_stream(tokio_stream::iter(msgs)).await).unwrap();
    assert_eq!((r.batches, r.ids.len()), (3, 12));
    check(&mut handed_out, &r.ids, "stream");
    // A unary packed insert with ids returns none.
    let given = raw(c
        .rpc()
        .insert(packed_insert("g", &batch(&mut rng, 7, 3, 1, "given"), true))
        .await)
    .unwrap();
    assert!(given.ids.is_empty() && given.inserted + given.replaced == 3);
    // Near the top of the id space: RESOURCE_EXHAUSTED, nothing changed.
    let top = vec![Embedding {
        id: u64::MAX,
        subject: "top".into(),
        vector: rng.vector(),
    }];
    c.gallery("g").insert(&top).await.unwrap();
    let live = c.gallery("g").stats().await.unwrap().live;
    let mut req = packed_insert("g", &batch(&mut rng, 0, 2, 1, "over"), false);
    req.gallery = "g".into();
    assert_status(
        raw(c.rpc().insert(req).await),
        Code::ResourceExhausted,
        &["no fresh ids left", "18446744073709551615"],
    );
    assert_eq!(c.gallery("g").stats().await.unwrap().live, live);
    assert!(server.terminate().success());
}

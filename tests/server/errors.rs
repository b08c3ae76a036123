//! Every bad input gets the right status code and a message naming the field
//! and position, and a rejected request changes nothing.

use crate::harness::{Server, TempData, assert_status, batch, counts};
use tonic::Code;
use visage_client::proto;
use visage_client::{Client, Embedding, Error};
use visage_tests::Rng;

/// The gallery's full observable state: counts and every embedding.
async fn snapshot(c: &Client, ids: &[u64]) -> ((u64, u64, u64), Vec<Embedding>) {
    (counts(c, "g").await, c.gallery("g").get(ids).await.unwrap())
}

fn raw<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, Error> {
    r.map(tonic::Response::into_inner).map_err(Error::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_inserts_name_field_and_position_and_change_nothing() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    c.create_gallery("g").await.unwrap();
    let mut rng = Rng(77);
    let base = batch(&mut rng, 0, 100, 10, "s");
    c.gallery("g").insert(&base).await.unwrap();
    let all_ids: Vec<u64> = (0..200).collect();
    let before = snapshot(&c, &all_ids).await;
    let mut rpc = c.rpc();

    // Each bad batch mixes new ids (100..) and upserts of existing ones (0..):
    // if anything of it were applied, counts or stored vectors would change.
    let good = || {
        let mut rng = Rng(5);
        let mut b = batch(&mut rng, 95, 10, 3, "n");
        b[0].subject = "changed".into();
        b
    };
    let cases: Vec<(Vec<Embedding>, Code, Vec<&str>)> = vec![
        (
            {
                let mut b = good();
                b[3].vector.pop();
                b
            },
            Code::InvalidArgument,
            vec!["embeddings[3]", "expected 128 values, got 127"],
        ),
        (
            {
                let mut b = good();
                b[6].vector.push(0.0);
                b
            },
            Code::InvalidArgument,
            vec!["embeddings[6]", "got 129"],
        ),
        (
            {
                let mut b = good();
                b[2].vector[17] = f32::NAN;
                b
            },
            Code::InvalidArgument,
            vec!["embeddings[2]", "value 17", "NaN", "finite"],
        ),
        (
            {
                let mut b = good();
                b[9].vector[0] = f32::NEG_INFINITY;
                b
            },
            Code::InvalidArgument,
            vec!["embeddings[9]", "value 0", "inf"],
        ),
        (
            {
                let mut b = good();
                b[7].id = b[1].id;
                b
            },
            Code::InvalidArgument,
            vec!["embeddings[7]", "embeddings[1]", "id 96"],
        ),
        (
            {
                let mut b = good();
                b[4].subject = String::new();
                b
            },
            Code::InvalidArgument,
            vec!["embeddings[4].subject", "empty"],
        ),
        (
            {
                let mut b = good();
                b[5].subject = "x".repeat(300);
                b
            },
            Code::InvalidArgument,
            vec!["embeddings[5].subject", "300 bytes"],
        ),
        (
            {
                let mut b = good();
                b[8].subject = "tab\there".into();
                b
            },
            Code::InvalidArgument,
            vec!["embeddings[8].subject", "control character"],
        ),
    ];
    for (bad, code, fragments) in cases {
        let r = raw(rpc
            .insert(proto::InsertRequest {
                gallery: "g".into(),
                embeddings: bad,
                ..Default::default()
            })
            .await);
        assert_status(r, code, &fragments);
        assert!(
            snapshot(&c, &all_ids).await == before,
            "a rejected batch changed the gallery ({fragments:?})"
        );
    }

    // Through the chunking client (batches of 1,000): the failing batch is
    // rejected whole, the others are committed, and positions are relative
    // to the caller's input.
    let mut big = batch(&mut rng, 1000, 2500, 10, "b");
    big[2345].vector[1] = f32::INFINITY;
    let opts = visage_client::InsertOptions {
        batch: 1000,
        ..Default::default()
    };
    let e = c
        .gallery("g")
        .insert_with(&big, opts, |_| {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument));
    let text = e.to_string();
    assert!(
        text.contains("matrix[2345]") && text.contains("embeddings[2000..2500]"),
        "{text}"
    );
    assert!(
        matches!(
            e,
            Error::Insert {
                offset: 2000,
                len: 500,
                committed: 2000,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(counts(&c, "g").await.0, 2100);
    assert!(c.gallery("g").get(&[3000, 3499]).await.unwrap().is_empty());
    let committed: Vec<u64> = (1000..3000).collect();
    c.gallery("g").delete(&committed, &[]).await.unwrap();
    c.gallery("g").compact().await.unwrap();
    assert!(snapshot(&c, &all_ids).await == before);

    // Gallery names.
    for (name, fragment) in [
        ("", "is empty"),
        ("bad name", "letters, digits"),
        ("-x", "must start"),
    ] {
        let r = raw(rpc
            .insert(proto::InsertRequest {
                gallery: name.into(),
                embeddings: good(),
                ..Default::default()
            })
            .await);
        assert_status(r, Code::InvalidArgument, &["gallery: ", fragment]);
    }
    let long = "a".repeat(65);
    assert_status(
        c.create_gallery(&long).await,
        Code::InvalidArgument,
        &["name: ", "longer than 64"],
    );
    assert_status(
        c.create_gallery("").await,
        Code::InvalidArgument,
        &["name: ", "empty"],
    );
    assert_status(
        c.create_gallery("a/b").await,
        Code::InvalidArgument,
        &["name: "],
    );
    assert_eq!(c.list_galleries().await.unwrap().len(), 1);

    // Too large a batch: RESOURCE_EXHAUSTED before any vector is read.
    let huge: Vec<Embedding> = (0..100_001)
        .map(|i| Embedding {
            id: i,
            subject: "s".into(),
            vector: vec![],
        })
        .collect();
    let r = raw(rpc
        .insert(proto::InsertRequest {
            gallery: "g".into(),
            embeddings: huge,
            ..Default::default()
        })
        .await);
    assert_status(
        r,
        Code::ResourceExhausted,
        &["embeddings", "100001", "100000"],
    );
    assert!(
        snapshot(&c, &all_ids).await == before,
        "a too-large batch changed the gallery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_resource_exhausted() {
    let t = TempData::new();
    // A 1 MB limit: a batch of 3,000 embeddings (about 1.6 MB) is too large.
    let server = Server::start_with(&t.data(), &["--max-message-bytes", "1000000"]);
    let c = server.client().await;
    c.create_gallery("g").await.unwrap();
    let mut rng = Rng(8);
    let mut rpc = c.rpc();
    let r = raw(rpc
        .insert(proto::InsertRequest {
            gallery: "g".into(),
            embeddings: batch(&mut rng, 0, 3000, 5, "s"),
            ..Default::default()
        })
        .await);
    assert_status(
        r,
        Code::ResourceExhausted,
        &["too large", "1000000", "--max-message-bytes"],
    );
    // In a stream too, with the committed count.
    let msgs = vec![
        proto::InsertRequest {
            gallery: "g".into(),
            embeddings: batch(&mut rng, 0, 10, 5, "s"),
            ..Default::default()
        },
        proto::InsertRequest {
            gallery: "g".into(),
            embeddings: batch(&mut rng, 10, 3000, 5, "s"),
            ..Default::default()
        },
    ];
    let r = raw(rpc.insert_stream(tokio_stream::iter(msgs)).await);
    assert_status(
        r,
        Code::ResourceExhausted,
        &[
            "messages[1]",
            "too large",
            "1 earlier messages (10 embeddings)",
        ],
    );
    assert_eq!(counts(&c, "g").await.0, 10);
    // Smaller batches go through (the client's default, about 4 MiB, is
    // above this server's limit of 1 MB).
    let small = visage_client::InsertOptions {
        batch: 1000,
        ..Default::default()
    };
    let out = c
        .gallery("g")
        .insert_with(&batch(&mut rng, 100, 3000, 5, "s"), small, |_| {})
        .await
        .unwrap();
    assert_eq!(out.inserted, 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_errors() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    c.create_gallery("g").await.unwrap();
    let g = c.gallery("g");
    let mut rng = Rng(4);
    g.insert(&batch(&mut rng, 0, 50, 5, "s")).await.unwrap();
    let q = rng.vector();
    let mut short = q.clone();
    short.truncate(100);
    let mut nan = q.clone();
    nan[3] = f32::NAN;

    // k.
    assert_status(
        g.search(&[&q], 0).await,
        Code::InvalidArgument,
        &["k must be at least 1"],
    );
    assert_status(
        g.search(&[&q], 10_001).await,
        Code::InvalidArgument,
        &["k", "10001", "10000"],
    );
    assert_status(
        g.identify(&[&q], 0).await,
        Code::InvalidArgument,
        &["k must be at least 1"],
    );
    assert_status(
        g.identify(&[&q], 1001).await,
        Code::InvalidArgument,
        &["k", "1001", "1000"],
    );
    // Vectors, by field and position.
    assert_status(
        g.search(&[&q, &short], 5).await,
        Code::InvalidArgument,
        &["queries[1]", "got 100"],
    );
    assert_status(
        g.search(&[&q, &q, &nan], 5).await,
        Code::InvalidArgument,
        &["matrix[2]", "value 3", "NaN"],
    );
    assert_status(
        g.identify(&[&nan], 5).await,
        Code::InvalidArgument,
        &["matrix[0]", "value 3"],
    );
    // Thresholds.
    let mut rpc = c.rpc();
    for bad in [f32::NAN, -1.0, f32::INFINITY] {
        let r = raw(rpc
            .search(proto::SearchRequest {
                gallery: "g".into(),
                queries: vec![proto::Vector { values: q.clone() }],
                k: 5,
                rank_by: 0,
                max_distance: Some(bad),
                mode: 0,
                ..Default::default()
            })
            .await);
        assert_status(r, Code::InvalidArgument, &["max_distance"]);
        let r = raw(rpc
            .identify(proto::IdentifyRequest {
                gallery: "g".into(),
                probes: vec![proto::Vector { values: q.clone() }],
                k: 5,
                min_probability: None,
                max_distance: Some(bad),
                ..Default::default()
            })
            .await);
        assert_status(r, Code::InvalidArgument, &["max_distance"]);
    }
    let r = raw(rpc
        .identify(proto::IdentifyRequest {
            gallery: "g".into(),
            probes: vec![proto::Vector { values: q.clone() }],
            k: 5,
            min_probability: Some(1.5),
            max_distance: None,
            ..Default::default()
        })
        .await);
    assert_status(r, Code::InvalidArgument, &["min_probability"]);
    let r = raw(rpc
        .search(proto::SearchRequest {
            gallery: "g".into(),
            queries: vec![proto::Vector { values: q.clone() }],
            k: 5,
            rank_by: 7,
            max_distance: None,
            mode: 0,
            ..Default::default()
        })
        .await);
    assert_status(r, Code::InvalidArgument, &["rank_by", "7"]);
    let r = raw(rpc
        .search(proto::SearchRequest {
            gallery: "g".into(),
            queries: vec![proto::Vector { values: q.clone() }],
            k: 5,
            rank_by: 0,
            max_distance: None,
            mode: 9,
            ..Default::default()
        })
        .await);
    assert_status(r, Code::InvalidArgument, &["mode", "9"]);
    // Result volume and batch sizes.
    let many: Vec<&[f32]> = (0..200).map(|_| q.as_slice()).collect();
    assert_status(
        g.search(&many, 10_000).await,
        Code::ResourceExhausted,
        &["matrix", "200 rows", "1000000"],
    );
    let too_many: Vec<&[f32]> = (0..10_001).map(|_| q.as_slice()).collect();
    assert_status(
        g.search(&too_many, 1).await,
        Code::ResourceExhausted,
        &["matrix", "10001", "10000"],
    );
    let ids: Vec<u64> = (0..100_001).collect();
    assert_status(
        g.get(&ids).await,
        Code::ResourceExhausted,
        &["ids", "100001"],
    );
    let pairs: Vec<(Vec<f32>, visage_client::Against)> = (0..10_001)
        .map(|_| (vec![], visage_client::Against::Id(1)))
        .collect();
    assert_status(
        g.verify(&pairs).await,
        Code::ResourceExhausted,
        &["pairs", "10001"],
    );
    // Delete: a bad subject rejects the whole request.
    assert_status(
        g.delete(&[1, 2], &["s-1".into(), String::new()]).await,
        Code::InvalidArgument,
        &["subjects[1]", "empty"],
    );
    assert_eq!(counts(&c, "g").await, (50, 0, 5));
    assert_eq!(g.get(&[1, 2]).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_gallery_is_not_found_everywhere() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    let g = c.gallery("ghost");
    let mut rng = Rng(1);
    let q = rng.vector();
    let frag: &[&str] = &["gallery \"ghost\" does not exist"];
    assert_status(g.stats().await, Code::NotFound, frag);
    assert_status(
        g.insert(&batch(&mut rng, 0, 3, 1, "s")).await,
        Code::NotFound,
        frag,
    );
    assert_status(g.delete(&[1], &[]).await, Code::NotFound, frag);
    assert_status(g.get(&[1]).await, Code::NotFound, frag);
    assert_status(g.search(&[&q], 1).await, Code::NotFound, frag);
    assert_status(g.identify(&[&q], 1).await, Code::NotFound, frag);
    assert_status(
        g.verify(&[(q.clone(), visage_client::Against::Id(1))])
            .await,
        Code::NotFound,
        frag,
    );
    assert_status(g.head().await, Code::NotFound, frag);
    assert_status(
        g.train_head(&Default::default()).await,
        Code::NotFound,
        frag,
    );
    assert_status(g.flush().await, Code::NotFound, frag);
    assert_status(g.compact().await, Code::NotFound, frag);
    assert_status(c.drop_gallery("ghost").await, Code::NotFound, frag);
    assert!(
        c.list_galleries().await.unwrap().is_empty(),
        "no request created anything"
    );
}

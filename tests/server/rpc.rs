//! Every RPC against the real server, checked against a model of the
//! acknowledged operations and brute-force distances.

use crate::harness::{
    Model, Server, TempData, assert_close, assert_hits, assert_status, batch,
    calibrated_probability, counts,
};
use tonic::Code;
use visage_client::proto;
use visage_client::{Against, InsertOptions, SearchOptions, Threshold, TrainHead};
use visage_engine::synth::{SynthConfig, SynthGallery};
use visage_tests::{Rng, l2sq_f64};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gallery_lifecycle() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    assert!(c.serving().await.unwrap());
    assert!(c.list_galleries().await.unwrap().is_empty());

    let info = c.create_gallery("staff").await.unwrap();
    assert_eq!(
        (info.name.as_str(), info.dim, info.live, info.head_trained),
        ("staff", 128, 0, false)
    );
    c.create_gallery("visitors").await.unwrap();
    assert_status(
        c.create_gallery("staff").await,
        Code::AlreadyExists,
        &["staff"],
    );
    let names: Vec<String> = c
        .list_galleries()
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, ["staff", "visitors"]);

    let mut rng = Rng(1);
    c.gallery("staff")
        .insert(&batch(&mut rng, 0, 30, 3, "p"))
        .await
        .unwrap();
    let info = c.gallery("staff").stats().await.unwrap();
    assert_eq!((info.live, info.subjects, info.deleted), (30, 3, 0));

    let dropped = c.drop_gallery("staff").await.unwrap();
    assert_eq!((dropped.name.as_str(), dropped.live), ("staff", 30));
    assert_status(c.drop_gallery("staff").await, Code::NotFound, &["staff"]);
    assert_status(
        c.gallery("staff").stats().await,
        Code::NotFound,
        &["\"staff\" does not exist"],
    );
    // The name is free again, and the new gallery is empty.
    assert_eq!(c.create_gallery("staff").await.unwrap().live, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_get_search_identify_match_brute_force() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    c.create_gallery("g").await.unwrap();
    let g = c.gallery("g");
    let mut rng = Rng(42);
    let mut model = Model::default();

    // 2,500 embeddings of 250 subjects, in chunks of 300 with 3 in flight.
    let data = batch(&mut rng, 0, 2500, 250, "s");
    let mut acked = 0;
    let out = g
        .insert_with(
            &data,
            InsertOptions {
                batch: 300,
                concurrency: 3,
            },
            |n| acked += n,
        )
        .await
        .unwrap();
    assert_eq!((out.inserted, out.replaced, out.batches), (2500, 0, 9));
    assert_eq!(acked, 2500);
    model.insert(&data);
    assert_eq!(counts(&c, "g").await, (2500, 0, 250));

    // Upsert 100 existing ids with new vectors (and one subject change).
    let mut upd = batch(&mut rng, 1000, 100, 250, "s");
    upd[0].subject = "moved".into();
    let out = g.insert(&upd).await.unwrap();
    assert_eq!((out.inserted, out.replaced), (0, 100));
    model.insert(&upd);
    assert_eq!(counts(&c, "g").await.0, 2500);

    // Get: found ones, request order, exact vectors; missing ids skipped.
    let got = g.get(&[1050, 7, 999_999, 1000, 2499]).await.unwrap();
    let ids: Vec<u64> = got.iter().map(|e| e.id).collect();
    assert_eq!(ids, [1050, 7, 1000, 2499]);
    for e in &got {
        let (s, v) = &model.rows[&e.id];
        assert_eq!((&e.subject, &e.vector), (s, v), "id {}", e.id);
    }

    // Search: 25 probes (some are enrolled vectors, some fresh), k = 10.
    let mut probes: Vec<Vec<f32>> = (0..20).map(|_| rng.vector()).collect();
    probes.extend([3u64, 1000, 1050, 2000, 2499].map(|id| model.rows[&id].1.clone()));
    let res = g.search(&probes, 10).await.unwrap();
    assert_eq!(res.len(), probes.len());
    for (i, (hits, q)) in res.iter().zip(&probes).enumerate() {
        assert_hits(hits, &model.search(q, 10), &format!("search probe {i}"));
        assert!(
            hits.iter().all(|h| h.probability.is_none()),
            "no head: no probability"
        );
    }
    // An enrolled vector finds itself at distance 0.
    assert_eq!((res[21][0].id, res[21][0].distance), (1000, 0.0));
    assert_eq!(res[21][0].subject, "moved");

    // max_distance keeps exactly the hits within it (a limit between the
    // 5th and 6th distances).
    let reference = model.search(&probes[0], 10);
    let limit = ((reference[4].2 + reference[5].2) / 2.0) as f32;
    let within = g
        .search_with(
            &probes[..1],
            &SearchOptions {
                k: 10,
                max_distance: Some(limit),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let want: Vec<_> = model
        .search(&probes[0], 10)
        .into_iter()
        .filter(|h| h.2 as f32 <= limit)
        .collect();
    assert_hits(&within[0], &want, "search within max_distance");

    // Identify: k best distinct subjects; known decided by max_distance.
    let threshold = 45.0;
    let ids = g
        .identify_with(
            &probes,
            5,
            Threshold {
                max_distance: Some(threshold),
                min_probability: None,
            },
        )
        .await
        .unwrap();
    for (i, (r, q)) in ids.iter().zip(&probes).enumerate() {
        let want = model.identify(q, 5);
        let got: Vec<(u64, String)> = r
            .candidates
            .iter()
            .map(|c| (c.id, c.subject.clone()))
            .collect();
        let exp: Vec<(u64, String)> = want.iter().map(|w| (w.0, w.1.clone())).collect();
        assert_eq!(got, exp, "identify probe {i}");
        for (c, w) in r.candidates.iter().zip(&want) {
            assert_close(c.distance, w.2, "identify distance");
        }
        let known = want[0].2 <= f64::from(threshold);
        assert_eq!(r.known, known, "probe {i} known");
        assert_eq!(
            r.subject,
            if known {
                want[0].1.clone()
            } else {
                String::new()
            }
        );
    }
    assert!(ids[20].known && ids[20].subject == model.rows[&3].0);
    assert!(!ids[0].known, "a random vector is nobody we know");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_stream_commits_each_message() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    c.create_gallery("g").await.unwrap();
    let g = c.gallery("g");
    let mut rng = Rng(3);
    let batches: Vec<Vec<_>> = (0..10)
        .map(|b| batch(&mut rng, b * 100, 100, 20, "s"))
        .collect();
    let mut model = Model::default();
    for b in &batches {
        model.insert(b);
    }
    let out = g
        .insert_stream(tokio_stream::iter(batches.clone()))
        .await
        .unwrap();
    assert_eq!((out.inserted, out.replaced, out.batches), (1000, 0, 10));
    assert_eq!(counts(&c, "g").await, (1000, 0, 20));
    let q = rng.vector();
    assert_hits(
        &g.search(&[&q], 5).await.unwrap()[0],
        &model.search(&q, 5),
        "after stream",
    );

    // Message 2 of a stream is bad: 0 and 1 are committed, 2 and later are not.
    let mut bad: Vec<Vec<_>> = (0..4)
        .map(|b| batch(&mut rng, 5000 + b * 10, 10, 5, "t"))
        .collect();
    bad[2][7].vector.pop();
    let e = assert_status(
        g.insert_stream(tokio_stream::iter(bad.clone())).await,
        Code::InvalidArgument,
        &[
            "messages[2]",
            "embeddings[7]",
            "expected 128 values, got 127",
            "2 earlier messages (20 embeddings) were committed",
        ],
    );
    let visage_client::Error::Status(s) = &e else {
        panic!("expected a status")
    };
    assert_eq!(s.metadata().get("visage-committed-batches").unwrap(), "2");
    assert_eq!(
        s.metadata().get("visage-committed-embeddings").unwrap(),
        "20"
    );
    assert_eq!(counts(&c, "g").await.0, 1020);
    assert_eq!(g.get(&[5000, 5019, 5020, 5030]).await.unwrap().len(), 2);

    // A later message naming another gallery is refused.
    let mut rpc = c.rpc();
    let msgs = vec![
        proto::InsertRequest {
            gallery: "g".into(),
            embeddings: batch(&mut rng, 9000, 5, 5, "u"),
            ..Default::default()
        },
        proto::InsertRequest {
            gallery: "other".into(),
            embeddings: batch(&mut rng, 9005, 5, 5, "u"),
            ..Default::default()
        },
    ];
    let r = rpc.insert_stream(tokio_stream::iter(msgs)).await;
    assert_status(
        r.map_err(visage_client::Error::from),
        Code::InvalidArgument,
        &["messages[1]", "gallery", "\"other\""],
    );
    assert_eq!(counts(&c, "g").await.0, 1025);
    // A stream to a gallery that does not exist.
    assert_status(
        c.gallery("nope")
            .insert_stream(tokio_stream::iter(vec![batch(&mut rng, 1, 1, 1, "x")]))
            .await,
        Code::NotFound,
        &["messages[0]", "\"nope\""],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_by_ids_and_subjects() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    c.create_gallery("g").await.unwrap();
    let g = c.gallery("g");
    let mut rng = Rng(5);
    let mut model = Model::default();
    let data = batch(&mut rng, 0, 600, 30, "s");
    g.insert(&data).await.unwrap();
    model.insert(&data);
    g.flush().await.unwrap(); // some rows in a segment, some in memory
    let more = batch(&mut rng, 600, 200, 30, "s");
    g.insert(&more).await.unwrap();
    model.insert(&more);

    let subjects = vec!["s-3".to_string(), "s-17".to_string(), "nobody".to_string()];
    let ids = [1, 2, 3, 650, 700, 123_456];
    let n = g.delete(&ids, &subjects).await.unwrap();
    assert_eq!(n, model.delete(&ids, &subjects));
    assert_eq!(
        counts(&c, "g").await,
        (model.rows.len() as u64, n, model.subjects() as u64)
    );
    // Deleting again removes nothing.
    assert_eq!(g.delete(&ids, &subjects).await.unwrap(), 0);
    // The deleted are gone from get and from every search.
    assert!(g.get(&[1, 2, 3, 650]).await.unwrap().is_empty());
    let deleted_vec = data[3].vector.clone();
    let hits = g.search(&[&deleted_vec], 20).await.unwrap();
    assert_hits(&hits[0], &model.search(&deleted_vec, 20), "after delete");
    assert!(
        hits[0]
            .iter()
            .all(|h| h.subject != "s-3" && h.subject != "s-17")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_vectors_ids_and_subjects() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    c.create_gallery("g").await.unwrap();
    let g = c.gallery("g");
    let mut rng = Rng(9);
    let mut model = Model::default();
    let data = batch(&mut rng, 0, 200, 20, "s");
    g.insert(&data).await.unwrap();
    model.insert(&data);

    let a = rng.vector();
    let b = rng.vector();
    let d_ab = l2sq_f64(&a, &b);
    let d_a7 = l2sq_f64(&a, &model.rows[&7].1);
    // Best of subject s-4: the nearest of its embeddings.
    let (best_id, best_d) = model
        .rows
        .iter()
        .filter(|(_, (s, _))| s == "s-4")
        .map(|(id, (_, v))| (*id, l2sq_f64(&a, v)))
        .min_by(|x, y| x.1.total_cmp(&y.1).then(x.0.cmp(&y.0)))
        .unwrap();
    let pairs = vec![
        (a.clone(), Against::Vector(b.clone())),
        (a.clone(), Against::Id(7)),
        (a.clone(), Against::Subject("s-4".into())),
        (model.rows[&7].1.clone(), Against::Id(7)),
    ];
    // The threshold halfway between the two distances decides.
    let cut = ((d_ab.min(d_a7) + d_ab.max(d_a7)) / 2.0) as f32;
    let v = g
        .verify_with(
            &pairs,
            Threshold {
                max_distance: Some(cut),
                min_probability: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(v.len(), 4);
    assert_close(v[0].distance, d_ab, "vector pair");
    assert_close(v[1].distance, d_a7, "id pair");
    assert_close(v[2].distance, best_d, "subject pair");
    assert_eq!(
        (v[0].matched_id, v[1].matched_id, v[2].matched_id),
        (None, Some(7), Some(best_id))
    );
    assert_eq!(v[0].same, d_ab as f32 <= cut);
    assert_eq!(v[1].same, d_a7 as f32 <= cut);
    assert_ne!(v[0].same, v[1].same);
    assert_eq!((v[3].distance, v[3].same), (0.0, true));
    assert!(v.iter().all(|x| x.probability.is_none()));

    // Bad pairs name the pair.
    assert_status(
        g.verify_with(
            &[(a.clone(), Against::Id(424_242))],
            Threshold {
                max_distance: Some(1.0),
                min_probability: None,
            },
        )
        .await,
        Code::NotFound,
        &["pairs[0]", "424242"],
    );
    assert_status(
        g.verify_with(
            &[
                (a.clone(), Against::Id(7)),
                (a.clone(), Against::Subject("ghost".into())),
            ],
            Threshold {
                max_distance: Some(1.0),
                min_probability: None,
            },
        )
        .await,
        Code::NotFound,
        &["pairs[1]", "ghost"],
    );
    assert_status(
        g.verify_with(
            &[(a.clone(), Against::Id(7)), (vec![0.0; 3], Against::Id(7))],
            Threshold {
                max_distance: Some(1.0),
                min_probability: None,
            },
        )
        .await,
        Code::InvalidArgument,
        &["[1]", "expected 128 values, got 3"],
    );
    let mut rpc = c.rpc();
    let r = rpc
        .verify(proto::VerifyRequest {
            gallery: "g".into(),
            pairs: vec![proto::VerifyPair {
                a: None,
                b: Some(proto::verify_pair::B::Id(7)),
            }],
            max_distance: Some(1.0),
            min_probability: None,
            ..Default::default()
        })
        .await;
    assert_status(
        r.map_err(visage_client::Error::from),
        Code::InvalidArgument,
        &["pairs[0].a: missing"],
    );
    let r = rpc
        .verify(proto::VerifyRequest {
            gallery: "g".into(),
            pairs: vec![proto::VerifyPair {
                a: Some(proto::Vector { values: a.clone() }),
                b: None,
            }],
            max_distance: Some(1.0),
            min_probability: None,
            ..Default::default()
        })
        .await;
    assert_status(
        r.map_err(visage_client::Error::from),
        Code::InvalidArgument,
        &["pairs[0].b: missing"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_training_scores_and_decides() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    c.create_gallery("g").await.unwrap();
    let g = c.gallery("g");
    let synth = SynthGallery::generate(SynthConfig {
        subjects: 120,
        min_images: 6,
        max_images: 8,
        seed: 11,
        ..Default::default()
    });
    let data: Vec<visage_client::Embedding> = synth
        .embeddings
        .iter()
        .map(|e| visage_client::Embedding {
            id: e.id,
            subject: e.subject.clone(),
            vector: e.vector.clone(),
        })
        .collect();
    g.insert(&data).await.unwrap();
    let probes = synth.probes(10, 10, 5);
    let vectors: Vec<Vec<f32>> = probes.iter().map(|p| p.vector.clone()).collect();

    // Before training: no head, and what needs one says so.
    let h = g.head().await.unwrap();
    assert!(!h.trained && h.weights.is_empty());
    assert_status(
        g.search_with(
            &vectors,
            &SearchOptions {
                k: 5,
                rank_by_head: true,
                max_distance: None,
                ..Default::default()
            },
        )
        .await,
        Code::FailedPrecondition,
        &["head"],
    );
    assert_status(
        g.identify_with(
            &vectors,
            3,
            Threshold {
                max_distance: None,
                min_probability: Some(0.5),
            },
        )
        .await,
        Code::FailedPrecondition,
        &["min_probability", "head"],
    );
    assert_status(
        g.train_head(&TrainHead {
            target_far: Some(1.5),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["target_far"],
    );

    let trained = g
        .train_head(&TrainHead {
            target_far: Some(0.01),
            max_pairs: Some(20_000),
            seed: Some(3),
            prior: None,
        })
        .await
        .unwrap();
    assert!(trained.trained);
    assert_eq!(trained.weights.len(), 128);
    assert!(
        trained.auc > 0.9,
        "head AUC {} on well-separated synthetic subjects",
        trained.auc
    );
    assert!((trained.target_far - 0.01).abs() < 1e-6);
    assert_eq!(trained.seed, 3);
    assert!(trained.pairs > 0 && trained.heldout_genuine > 0 && trained.heldout_impostor > 0);
    assert_eq!(
        g.head().await.unwrap(),
        trained,
        "GetHead returns what TrainHead reported"
    );
    assert!(g.stats().await.unwrap().head_trained);

    // Ranking by the head: probabilities present and descending.
    let res = g
        .search_with(
            &vectors,
            &SearchOptions {
                k: 5,
                rank_by_head: true,
                max_distance: None,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for hits in &res {
        let p: Vec<f32> = hits
            .iter()
            .map(|h| h.probability.expect("probability"))
            .collect();
        assert!(p.windows(2).all(|w| w[0] >= w[1]), "descending: {p:?}");
    }
    // Identification with the trained head's own threshold: enrolled probes
    // find their subject first, and `known` is exactly "the best candidate's
    // probability reaches the head's calibrated open-set (1:N) threshold",
    // which is stricter than the 1:1 one that Verify uses.
    // Probabilities are the calibrated ones at the prior, the threshold on
    // their scale, and identification uses the open-set threshold for the
    // gallery's current size (nothing changed since training).
    assert!(trained.open_probes > 0, "open-set thresholds calibrated");
    assert!(trained.open_logit_threshold >= trained.logit_threshold);
    assert!(trained.probability_calibrated);
    assert!(
        (f64::from(trained.threshold)
            - calibrated_probability(&trained, trained.logit_threshold.into()))
        .abs()
            < 1e-6
    );
    assert_eq!(trained.current_subjects, 120);
    let open_logit = trained
        .current_open_logit_threshold
        .expect("an open-set threshold for the current size");
    assert_eq!(
        open_logit, trained.open_logit_threshold,
        "same N as at training"
    );
    let open_threshold = calibrated_probability(&trained, open_logit.into()) as f32;
    let ids = g.identify(&vectors, 3).await.unwrap();
    for (p, r) in probes.iter().zip(&ids) {
        assert!(r.candidates.iter().all(|c| c.probability.is_some()));
        let best = &r.candidates[0];
        if let Some(s) = &p.subject {
            assert_eq!(
                &best.subject, s,
                "an enrolled probe finds its subject first"
            );
        }
        let p_best = best.probability.unwrap();
        // Near 1 an f32 probability is coarse: decide only where it is clear.
        if (p_best - open_threshold).abs() > 1e-6 {
            assert_eq!(
                r.known,
                p_best >= open_threshold,
                "known follows the head's open-set threshold ({p_best} vs {open_threshold})"
            );
        }
        assert_eq!(
            r.subject,
            if r.known {
                best.subject.clone()
            } else {
                String::new()
            }
        );
    }
    // Verify with the head decides by probability.
    let v = g
        .verify_with(
            &[(vectors[0].clone(), Against::Vector(vectors[0].clone()))],
            Threshold {
                max_distance: None,
                min_probability: Some(0.5),
            },
        )
        .await
        .unwrap();
    assert_eq!(v[0].distance, 0.0);
    assert_eq!(v[0].same, v[0].probability.unwrap() >= 0.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_and_compact_report_before_and_after() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    c.create_gallery("g").await.unwrap();
    let g = c.gallery("g");
    let mut rng = Rng(21);
    let data = batch(&mut rng, 0, 1000, 50, "s");
    g.insert(&data).await.unwrap();

    let f = g.flush().await.unwrap();
    assert_eq!(
        (f.before.live, f.before.memtable_rows, f.before.segments),
        (1000, 1000, 0)
    );
    assert_eq!(
        (f.after.live, f.after.memtable_rows, f.after.segments),
        (1000, 0, 1)
    );
    assert_eq!(f.after.subjects, 50);

    let n = g.delete(&[], &["s-1".into(), "s-2".into()]).await.unwrap();
    assert_eq!(n, 40);
    let r = g.compact().await.unwrap();
    assert_eq!((r.before.live, r.before.deleted), (960, 40));
    assert_eq!(
        (r.after.live, r.after.deleted, r.after.subjects),
        (960, 0, 48)
    );
    assert!(r.after.bytes_on_disk < r.before.bytes_on_disk, "{r:?}");
    assert_eq!(counts(&c, "g").await, (960, 0, 48));
    // Nothing of the deleted subjects is found any more.
    let res = g.search(&[&data[1].vector], 50).await.unwrap();
    assert!(
        res[0]
            .iter()
            .all(|h| h.subject != "s-1" && h.subject != "s-2")
    );
    // Flushing an empty memtable changes nothing.
    let f = g.flush().await.unwrap();
    assert_eq!(f.before, f.after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantized_search_returns_exact_distances() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    c.create_gallery("q").await.unwrap();
    let g = c.gallery("q");
    let data = SynthGallery::generate(SynthConfig {
        subjects: 300,
        seed: 5,
        ..Default::default()
    });
    let wire: Vec<_> = data
        .embeddings
        .iter()
        .map(|e| visage_client::Embedding {
            id: e.id,
            subject: e.subject.clone(),
            vector: e.vector.clone(),
        })
        .collect();
    g.insert(&wire).await.unwrap();
    g.flush().await.unwrap(); // codes exist only in segments
    let probes: Vec<Vec<f32>> = data.probes(8, 8, 6).into_iter().map(|p| p.vector).collect();
    let exact = g.search(&probes, 10).await.unwrap();
    let quant = g
        .search_with(
            &probes,
            &SearchOptions {
                k: 10,
                quantized: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (mut same, mut total) = (0, 0);
    for (pi, (e, q)) in exact.iter().zip(&quant).enumerate() {
        assert_eq!(q.len(), 10);
        for h in q {
            // Every hit carries its exact distance, as brute force computes it.
            let v = &data.embeddings[h.id as usize].vector;
            assert_close(h.distance, l2sq_f64(&probes[pi], v), "quantized hit");
            if let Some(x) = e.iter().find(|x| x.id == h.id) {
                assert_eq!(x.distance, h.distance);
                same += 1;
            }
        }
        total += e.len();
    }
    assert!(same as f64 / total as f64 >= 0.99, "recall {same}/{total}");
}

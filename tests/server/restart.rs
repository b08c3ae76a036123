//! Restart and graceful shutdown: SIGTERM finishes calls in flight, flushes,
//! exits 0, and every acknowledged write is there after a restart.

use crate::harness::{Model, Server, TempData, assert_hits, batch};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Code;
use visage_client::{Client, Threshold};
use visage_tests::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_answers_after_sigterm_and_restart() {
    let t = TempData::new();
    let mut rng = Rng(31);
    let mut model = Model::default();
    let probes: Vec<Vec<f32>> = (0..10).map(|_| rng.vector()).collect();
    let server = Server::start(&t.data());
    let c = server.client().await;
    c.create_gallery("a").await.unwrap();
    c.create_gallery("b").await.unwrap();
    let g = c.gallery("a");
    // Rows in a segment, rows only in the WAL, deletes of both, an upsert.
    let first = batch(&mut rng, 0, 1500, 100, "s");
    g.insert(&first).await.unwrap();
    model.insert(&first);
    g.flush().await.unwrap();
    let second = batch(&mut rng, 1200, 800, 100, "s");
    g.insert(&second).await.unwrap();
    model.insert(&second);
    let n = g.delete(&[5, 6, 1900], &["s-42".into()]).await.unwrap();
    assert_eq!(n, model.delete(&[5, 6, 1900], &["s-42".into()]));
    c.gallery("b")
        .insert(&batch(&mut rng, 0, 10, 2, "x"))
        .await
        .unwrap();

    let threshold = Threshold {
        max_distance: Some(40.0),
        min_probability: None,
    };
    let before_search = g.search(&probes, 10).await.unwrap();
    let before_ident = g.identify_with(&probes, 5, threshold).await.unwrap();
    let before_list = c.list_galleries().await.unwrap();
    let ids: Vec<u64> = (0..2100).collect();
    let before_get = g.get(&ids).await.unwrap();
    for (hits, q) in before_search.iter().zip(&probes) {
        assert_hits(hits, &model.search(q, 10), "before restart");
    }
    assert_eq!(before_get.len(), model.rows.len());
    drop(c);

    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");

    let server = Server::start(&t.data());
    let c = server.client().await;
    let g = c.gallery("a");
    assert_eq!(g.search(&probes, 10).await.unwrap(), before_search);
    assert_eq!(
        g.identify_with(&probes, 5, threshold).await.unwrap(),
        before_ident
    );
    assert_eq!(g.get(&ids).await.unwrap(), before_get);
    let after_list = c.list_galleries().await.unwrap();
    // (`deleted` may shrink: the shutdown's flush does not write rows that
    // were deleted while still in memory.)
    let strip = |v: &[visage_client::GalleryInfo]| -> Vec<(String, u64, u64)> {
        v.iter()
            .map(|g| (g.name.clone(), g.live, g.subjects))
            .collect()
    };
    assert_eq!(strip(&after_list), strip(&before_list));
    // The shutdown flushed: nothing is left only in the WAL.
    assert!(
        after_list.iter().all(|g| g.memtable_rows == 0),
        "{after_list:?}"
    );
    let log = server.log();
    drop(server);
    assert!(!log.contains("ERROR"), "{log}");
}

/// Inserts that keep arriving while the server is told to stop: every insert
/// acknowledged before the shutdown is there after the restart, with its vector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_inserts_loses_no_acknowledged_insert() {
    let t = TempData::new();
    let mut server = Server::start(&t.data());
    let url = server.url();
    {
        let c = server.client().await;
        c.create_gallery("g").await.unwrap();
    }
    let acked: Arc<Mutex<Model>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let acked = acked.clone();
        let url = url.clone();
        writers.push(tokio::spawn(async move {
            let c = Client::connect(&url).await.unwrap();
            let g = c.gallery("g");
            let mut rng = Rng(100 + w);
            let mut refused = 0;
            for i in 0..100_000u64 {
                let b = batch(&mut rng, w * 10_000_000 + i * 50, 50, 7, &format!("w{w}"));
                match g.insert(&b).await {
                    Ok(out) => {
                        assert_eq!(out.total(), 50);
                        acked.lock().unwrap().insert(&b);
                    }
                    Err(_) => {
                        refused += 1;
                        if refused > 3 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    // And one streaming insert, whose committed prefix is reported on failure.
    let stream_task = {
        let url = url.clone();
        tokio::spawn(async move {
            let c = Client::connect(&url).await.unwrap();
            let mut rng = Rng(999);
            let batches: Vec<Vec<_>> = (0..100_000u64)
                .map(|i| batch(&mut rng, 90_000_000 + i * 20, 20, 5, "st"))
                .take(2000)
                .collect();
            let sent = batches.clone();
            let slow = tokio_stream::StreamExt::throttle(
                tokio_stream::iter(batches),
                Duration::from_millis(2),
            );
            (c.gallery("g").insert_stream(slow).await, sent)
        })
    };
    // Let writes flow, then ask the server to stop.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let acked_before = acked.lock().unwrap().rows.len();
    assert!(acked_before > 0, "inserts were flowing before the signal");
    server.signal_term();
    let status = tokio::task::spawn_blocking(move || {
        let st = server.wait(Duration::from_secs(60));
        (st, server)
    })
    .await
    .unwrap();
    assert_eq!(
        status.0.code(),
        Some(0),
        "graceful shutdown exits 0; log:\n{}",
        status.1.log()
    );
    for w in writers {
        w.await.unwrap();
    }
    let (stream_result, sent) = stream_task.await.unwrap();
    // The stream (2,000 messages, 2 ms apart) was still running: the
    // shutdown cut it with UNAVAILABLE and the count of committed embeddings.
    let e = stream_result.expect_err("the stream outlives the shutdown");
    assert_eq!(e.code(), Some(Code::Unavailable), "{e}");
    assert!(
        e.message().unwrap_or_default().contains("shutting down"),
        "{e}"
    );
    let visage_client::Error::Status(s) = &e else {
        panic!("expected a status: {e:?}")
    };
    let committed_stream: u64 = s
        .metadata()
        .get("visage-committed-embeddings")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("committed count in the trailers");
    assert!(
        committed_stream > 0 && committed_stream.is_multiple_of(20),
        "{committed_stream}"
    );

    let server = Server::start(&t.data());
    let c = server.client().await;
    let g = c.gallery("g");
    let model = acked.lock().unwrap().clone();
    assert!(model.rows.len() >= acked_before);
    let ids: Vec<u64> = model.rows.keys().copied().collect();
    for chunk in ids.chunks(50_000) {
        let got = g.get(chunk).await.unwrap();
        assert_eq!(
            got.len(),
            chunk.len(),
            "an acknowledged insert is missing after restart"
        );
        for e in got {
            assert_eq!(model.rows[&e.id], (e.subject, e.vector), "id {}", e.id);
        }
    }
    // The stream's committed prefix (in message order) is there too.
    let stream_ids: Vec<u64> = sent
        .iter()
        .flatten()
        .map(|e| e.id)
        .take(committed_stream as usize)
        .collect();
    assert_eq!(g.get(&stream_ids).await.unwrap().len(), stream_ids.len());
}

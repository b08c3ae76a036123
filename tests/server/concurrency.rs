//! Eight clients inserting, upserting, deleting and searching at once; the
//! final state equals the model of the acknowledged operations.
//!
//! Each client owns its ids and subjects, so the final state does not depend
//! on how the server interleaved the clients: it is the union of the clients'
//! own models. While running, each client checks read-your-writes on its own
//! data through searches of the whole (shared, changing) gallery.

use crate::harness::{Model, Server, TempData, assert_hits, emb};
use visage_client::Client;
use visage_tests::Rng;

const CLIENTS: u64 = 8;
const ROUNDS: usize = 40;

async fn client_run(url: String, w: u64) -> Model {
    let c = Client::connect(&url).await.unwrap();
    let g = c.gallery("g");
    let mut rng = Rng(1000 + w);
    let mut model = Model::default();
    let id_base = w * 1_000_000;
    let subject = |j: u64| format!("c{w}-s{j}");
    let mut next = 0u64;
    for round in 0..ROUNDS {
        match rng.below(10) {
            // Insert a batch of new embeddings.
            0..=4 => {
                let n = 20 + rng.below(80);
                let b: Vec<_> = (0..n)
                    .map(|i| emb(&mut rng, id_base + next + i, &subject((next + i) % 25)))
                    .collect();
                next += n;
                let out = g.insert(&b).await.unwrap();
                assert_eq!((out.inserted, out.replaced), (n, 0));
                model.insert(&b);
            }
            // Upsert some existing ids (new vectors, maybe new subjects).
            5 => {
                let ids: Vec<u64> = model
                    .rows
                    .keys()
                    .copied()
                    .filter(|_| rng.below(10) == 0)
                    .collect();
                let b: Vec<_> = ids
                    .iter()
                    .map(|&id| {
                        let s = subject(rng.below(25));
                        emb(&mut rng, id, &s)
                    })
                    .collect();
                let out = g.insert(&b).await.unwrap();
                assert_eq!((out.inserted, out.replaced), (0, b.len() as u64));
                model.insert(&b);
            }
            // Delete some ids and a subject.
            6 | 7 => {
                let ids: Vec<u64> = model
                    .rows
                    .keys()
                    .copied()
                    .filter(|_| rng.below(8) == 0)
                    .chain([id_base + 999_999])
                    .collect();
                let subjects = vec![subject(rng.below(25))];
                let n = g.delete(&ids, &subjects).await.unwrap();
                assert_eq!(
                    n,
                    model.delete(&ids, &subjects),
                    "client {w} round {round}: delete count"
                );
            }
            // Read your writes: own live vectors are found at distance 0, own
            // deleted ids never come back.
            _ => {
                let own: Vec<(u64, Vec<f32>)> = model
                    .rows
                    .iter()
                    .filter(|_| rng.below(5) == 0)
                    .take(5)
                    .map(|(id, (_, v))| (*id, v.clone()))
                    .collect();
                if own.is_empty() {
                    continue;
                }
                let probes: Vec<&[f32]> = own.iter().map(|(_, v)| v.as_slice()).collect();
                let res = g.search(&probes, 3).await.unwrap();
                for ((id, _), hits) in own.iter().zip(&res) {
                    assert_eq!(
                        (hits[0].id, hits[0].distance),
                        (*id, 0.0),
                        "client {w}: own write not visible"
                    );
                }
                let got = g
                    .get(&own.iter().map(|(id, _)| *id).collect::<Vec<_>>())
                    .await
                    .unwrap();
                assert_eq!(got.len(), own.len());
            }
        }
    }
    model
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_final_state_equals_the_model() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    c.create_gallery("g").await.unwrap();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|w| tokio::spawn(client_run(server.url(), w)))
        .collect();
    let mut all = Model::default();
    for t in tasks {
        let m = t.await.unwrap();
        all.rows.extend(m.rows);
    }
    let g = c.gallery("g");
    let info = g.stats().await.unwrap();
    assert_eq!(
        (info.live, info.subjects),
        (all.rows.len() as u64, all.subjects() as u64)
    );
    let ids: Vec<u64> = (0..CLIENTS)
        .flat_map(|w| (w * 1_000_000..w * 1_000_000 + 10_000).collect::<Vec<_>>())
        .collect();
    let got = g.get(&ids).await.unwrap();
    let served: Model = Model {
        rows: got
            .into_iter()
            .map(|e| (e.id, (e.subject, e.vector)))
            .collect(),
    };
    assert_eq!(
        served, all,
        "final state differs from the acknowledged operations"
    );
    let mut rng = Rng(5);
    let probes: Vec<Vec<f32>> = (0..10).map(|_| rng.vector()).collect();
    for (hits, q) in g.search(&probes, 20).await.unwrap().iter().zip(&probes) {
        assert_hits(hits, &all.search(q, 20), "final search");
    }
    // And after compaction, the same.
    g.compact().await.unwrap();
    for (hits, q) in g.search(&probes, 20).await.unwrap().iter().zip(&probes) {
        assert_hits(hits, &all.search(q, 20), "search after compaction");
    }
}

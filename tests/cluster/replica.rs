//! A replica follows a gallery's JetStream log (a real 3-member cluster) and
//! ends with exactly the rows of a single-node gallery given the same
//! batches: inserts, upserts that move an id to a subject of another shard,
//! deletes by id and by subject. Meanwhile the stream's leader is killed
//! (publishes retried with their message ids land once) and the replica is
//! stopped and reopened twice, once after a crash of its process's
//! unflushed state (no flush, writes kept only by the OS).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use visage_cluster::batch::LogBatch;
use visage_cluster::log::{Log, stream_name};
use visage_cluster::replica::Replica;
use visage_cluster::shard::shard_of;
use visage_engine::{Durability, Engine, EngineOptions, GallerySpec};
use visage_tests::Rng;
use visage_tests::cluster::{NatsCluster, require_cluster_tools};

const SHARDS: u32 = 4;
const DIM: usize = 16;

fn engine(dir: &std::path::Path) -> Engine {
    let mut o = EngineOptions::default();
    o.gallery.background = false;
    o.gallery.durability = Durability::ProcessCrash;
    Engine::open(dir, o).unwrap()
}

/// Every live row of a gallery: id → (subject, vector bits).
fn rows(g: &visage_engine::Gallery) -> BTreeMap<u64, (String, Vec<u32>)> {
    let mut out = BTreeMap::new();
    let mut ex = g.export();
    while let Some(b) = ex.next_batch(10_000) {
        for (i, id) in b.ids.iter().enumerate() {
            let v = b.vectors[i * DIM..(i + 1) * DIM]
                .iter()
                .map(|x| x.to_bits())
                .collect();
            out.insert(*id, (b.subjects[i].clone(), v));
        }
    }
    out
}

/// Publish with retries of the same message id until stored (a leader
/// change takes seconds), within a deadline.
async fn publish(log: &Log, batch: &LogBatch, id: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), log.publish("doors", batch, id)).await {
            Ok(Ok(seq)) => return seq,
            Ok(Err(e)) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) if Instant::now() < deadline => {}
            other => panic!("publish {id} failed until the deadline: {other:?}"),
        }
    }
}

/// Wait until the replica's shards applied `seq` (failing if its follower
/// ended).
async fn wait_applied(
    r: &Replica,
    seq: u64,
    follower: &mut tokio::task::JoinHandle<visage_cluster::Result<()>>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while r.applied() < seq {
        assert!(
            Instant::now() < deadline,
            "applied {} of {seq}",
            r.applied()
        );
        if follower.is_finished() {
            panic!("the follower ended: {:?}", follower.await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_applies_the_log_exactly_once_across_restarts_and_a_leader_kill() {
    if !require_cluster_tools(
        "a_replica_applies_the_log_exactly_once_across_restarts_and_a_leader_kill",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsCluster::start(&dir.path().join("nats"), 3);
    let log = Log::connect(&nats.url_list(), None, 3).await.unwrap();
    log.ensure_stream("doors").await.unwrap();
    let spec = GallerySpec::with_dim(DIM);
    let reference_engine = engine(&dir.path().join("reference"));
    let reference = reference_engine
        .create_gallery_with("doors", &spec)
        .unwrap();
    let shards_dir = dir.path().join("node");
    let served: Vec<u32> = (0..SHARDS).collect();

    let mut rng = Rng(91);
    let mut round = 0u64;
    let next_batch = |rng: &mut Rng, round: u64| -> LogBatch {
        match round % 4 {
            // Deletes: some ids, and a subject.
            0 => LogBatch::delete(
                vec![round * 10 - 31, round * 10 - 32],
                vec![format!("p{}", rng.below(30))],
            ),
            // Upserts of earlier ids under other subjects (they may move shards).
            1 if round > 4 => {
                let ids: Vec<u64> = (0..5).map(|i| (round - 4) * 10 + i).collect();
                let subjects = ids.iter().map(|_| format!("p{}", rng.below(30))).collect();
                let v: Vec<f32> = (0..5 * DIM).map(|_| rng.unit()).collect();
                LogBatch::insert(ids, subjects, &v, DIM)
            }
            _ => {
                let ids: Vec<u64> = (0..10).map(|i| round * 10 + i).collect();
                let subjects = ids.iter().map(|_| format!("p{}", rng.below(30))).collect();
                let v: Vec<f32> = (0..10 * DIM).map(|_| rng.unit()).collect();
                LogBatch::insert(ids, subjects, &v, DIM)
            }
        }
    };
    let apply_reference = |b: &LogBatch| {
        if b.ids.is_empty() {
            reference.delete(&b.delete_ids, &b.delete_subjects).unwrap();
        } else {
            let v: Vec<f32> = b
                .vectors
                .chunks_exact(4)
                .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
                .collect();
            reference
                .insert_rows(Some(&b.ids), &b.subjects, &v)
                .unwrap();
        }
    };

    let mut last = 0;
    for phase in 0..3 {
        let e = engine(&shards_dir);
        let replica = Arc::new(Replica::open(&e, "doors", &spec, SHARDS, &served).unwrap());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut follower = {
            let (r, log) = (replica.clone(), log.clone());
            tokio::spawn(async move { r.follow(&log, stop_rx).await })
        };
        for i in 0..40 {
            if phase == 1 && i == 20 {
                // Kill the stream's leader mid-phase; publishes retry.
                let leader = nats.stream_leader(&stream_name("doors")).expect("a leader");
                nats.kill(leader);
            }
            round += 1;
            let b = next_batch(&mut rng, round);
            last = publish(&log, &b, &format!("batch-{round}")).await;
            apply_reference(&b);
        }
        wait_applied(&replica, last, &mut follower).await;
        stop_tx.send(true).unwrap();
        follower.await.unwrap().unwrap();
        if phase == 1 {
            // Flush one shard: its position comes from the manifest next time.
            replica.shard(0).unwrap().flush().unwrap();
        }
        drop(replica);
        drop(e);
    }
    // A retried publish of an id already stored is stored once.
    let again = publish(
        &log,
        &LogBatch::delete(vec![], vec![]),
        &format!("batch-{round}"),
    )
    .await;
    assert_eq!(again, last, "the duplicate was not stored again");

    // The shards hold exactly the reference's rows, each in its subject's shard.
    let e = engine(&shards_dir);
    let replica = Replica::open(&e, "doors", &spec, SHARDS, &served).unwrap();
    assert_eq!(replica.applied(), last);
    let mut union = BTreeMap::new();
    for k in 0..SHARDS {
        for (id, row) in rows(replica.shard(k).unwrap()) {
            assert_eq!(shard_of(&row.0, SHARDS), k, "row {id} in the wrong shard");
            assert!(union.insert(id, row).is_none(), "row {id} in two shards");
        }
    }
    let want = rows(&reference);
    assert!(want.len() > 200, "{} rows", want.len());
    assert_eq!(union, want);

    // Searches and identifications fanned out to the shards and merged equal
    // the single gallery's, ids and distance bits, for rows and for
    // strangers' probes, k from 1 to past the rows of a shard.
    let probes: Vec<Vec<f32>> = want
        .values()
        .take(10)
        .map(|(_, v)| v.iter().map(|b| f32::from_bits(*b)).collect())
        .chain((0..10).map(|_| (0..DIM).map(|_| rng.unit()).collect()))
        .collect();
    let key = |hits: &[Vec<visage_engine::Hit>]| -> Vec<Vec<(u64, String, u32)>> {
        hits.iter()
            .map(|h| {
                h.iter()
                    .map(|x| (x.id, x.subject.clone(), x.distance.to_bits()))
                    .collect()
            })
            .collect()
    };
    for k in [1, 5, 40, 500] {
        let per_shard: Vec<_> = (0..SHARDS)
            .map(|s| replica.shard(s).unwrap().search(&probes, k).unwrap())
            .collect();
        let merged = visage_cluster::merge::merge_hits(per_shard, k);
        assert_eq!(
            key(&merged),
            key(&reference.search(&probes, k).unwrap()),
            "search k={k}"
        );
        let per_shard: Vec<_> = (0..SHARDS)
            .map(|s| {
                replica
                    .shard(s)
                    .unwrap()
                    .identify(&probes, k.min(30))
                    .unwrap()
            })
            .collect();
        let merged = visage_cluster::merge::merge_hits(per_shard, k.min(30));
        assert_eq!(
            key(&merged),
            key(&reference.identify(&probes, k.min(30)).unwrap()),
            "identify k={k}"
        );
    }
}

//! The catalog on a real 3-member etcd cluster: galleries are created once
//! (a second create of the name changes nothing), read and listed; a node's
//! key lives while its registration keeps the lease alive and goes when it
//! stops; all of it keeps working while the etcd leader is killed.

use std::time::{Duration, Instant};
use visage_cluster::catalog::{Catalog, GalleryEntry, NodeEntry};
use visage_tests::cluster::{EtcdCluster, require_cluster_tools};

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "{what} within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn galleries_and_nodes_live_in_etcd_through_a_leader_kill() {
    if !require_cluster_tools("galleries_and_nodes_live_in_etcd_through_a_leader_kill") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::start(dir.path(), 3);
    let cat = Catalog::connect(&etcd.endpoints(), None).await.unwrap();
    let doors = GalleryEntry {
        dim: 512,
        model: "arcface-r100".into(),
        normalize: true,
        shards: 4,
        replicas: Vec::new(),
    };
    assert!(cat.create_gallery("doors", &doors).await.unwrap());
    let other = GalleryEntry {
        shards: 9,
        ..doors.clone()
    };
    assert!(
        !cat.create_gallery("doors", &other).await.unwrap(),
        "the name is taken"
    );
    assert_eq!(cat.gallery("doors").await.unwrap(), Some(doors.clone()));
    assert_eq!(cat.gallery("nope").await.unwrap(), None);

    let a = cat
        .register(
            "node-a",
            &NodeEntry {
                advertise: "127.0.0.1:7001".into(),
            },
            Duration::from_secs(4),
        )
        .await
        .unwrap();
    let b = cat
        .register(
            "node-b",
            &NodeEntry {
                advertise: "127.0.0.1:7002".into(),
            },
            Duration::from_secs(4),
        )
        .await
        .unwrap();
    let names = async || -> Vec<String> {
        cat.nodes()
            .await
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    };
    assert_eq!(names().await, vec!["node-a", "node-b"]);

    // The leader dies: the catalog answers (retrying), the leases stay alive.
    let leader = etcd.leader().expect("a leader");
    etcd.kill(leader);
    assert!(cat.create_gallery("lobby", &doors).await.unwrap());
    let galleries: Vec<String> = cat
        .galleries()
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(galleries, vec!["doors", "lobby"]);
    // Longer than the leases' TTL (4 s): both nodes are still there.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        assert_eq!(
            names().await,
            vec!["node-a", "node-b"],
            "a live node's key went"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Node b stops (its process would die): its key goes with its lease.
    drop(b);
    until("node-b's key expires", async || {
        names().await == vec!["node-a"]
    })
    .await;
    etcd.restart(leader);
    drop(a);
    until("node-a's key expires", async || names().await.is_empty()).await;
}

//! Credentials in cluster mode, on real processes: NATS with a token, etcd
//! with authentication on, and visage nodes with API keys that call each
//! other with a cluster key of the `node` role. A node given a wrong NATS
//! token or etcd password does not start and says which and why; a node
//! whose cluster key the others do not know gets its fan-out refused with
//! the reason; only the node role may address one shard directly.

use std::time::{Duration, Instant};
use tonic::transport::Channel;
use visage_client::proto;
use visage_client::proto::visage_client::VisageClient;
use visage_tests::cluster::{
    EtcdCluster, NatsCluster, NatsOptions, VisageNode, require_cluster_tools,
};

const ADMIN: &str = "admin-key-0123456789abcdef";
const NODE: &str = "node-key-0123456789abcdef0";

fn authed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r.set_timeout(Duration::from_secs(30));
    r
}

async fn client(addr: &str) -> VisageClient<Channel> {
    VisageClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy(),
    )
}

/// Wait until the node's process exits; its log.
fn exits(n: &VisageNode) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    while n.is_running() {
        assert!(
            Instant::now() < deadline,
            "{} still runs; log:\n{}",
            n.id,
            n.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    n.log()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credentials_are_checked_everywhere() {
    if !require_cluster_tools("credentials_are_checked_everywhere") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsCluster::start_with(
        &dir.path().join("nats"),
        3,
        NatsOptions {
            token: Some("nats-secret-token".into()),
        },
    );
    let etcd = EtcdCluster::start(&dir.path().join("etcd"), 3);
    etcd.enable_auth("etcd-root-password");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("admin {ADMIN}\nnode {NODE}\n")).unwrap();
    let node_key = dir.path().join("node.key");
    std::fs::write(&node_key, NODE).unwrap();
    let wrong_key = dir.path().join("wrong.key");
    std::fs::write(&wrong_key, "not-a-key-of-this-cluster-0").unwrap();
    let (urls, endpoints) = (nats.url_list(), etcd.endpoints().join(","));
    let flags = |token: &str, password: &str, key: &std::path::Path| -> Vec<String> {
        [
            "--nats-token",
            token,
            "--etcd-user",
            "root",
            "--etcd-password",
            password,
            "--api-keys",
            &keys.display().to_string(),
            "--cluster-key-file",
            &key.display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    };

    // Wrong credentials: the node stops at once and says which and why.
    let bad = VisageNode::start(
        dir.path(),
        "bad-nats",
        &urls,
        &endpoints,
        &flags("wrong-token", "etcd-root-password", &node_key),
    );
    let log = exits(&bad);
    assert!(
        log.contains("cannot join the cluster") && log.contains("nats"),
        "a wrong NATS token is reported: {log}"
    );
    assert!(
        log.to_lowercase().contains("authorization"),
        "the reason is NATS's: {log}"
    );
    let bad = VisageNode::start(
        dir.path(),
        "bad-etcd",
        &urls,
        &endpoints,
        &flags("nats-secret-token", "wrong-password", &node_key),
    );
    let log = exits(&bad);
    assert!(
        log.contains("cannot join the cluster") && log.contains("etcd"),
        "a wrong etcd password is reported: {log}"
    );
    assert!(
        log.contains("authentication failed"),
        "the reason is etcd's: {log}"
    );

    // Right credentials: two nodes that know each other's key, one with a
    // key nobody knows.
    let good = ["a", "b"].map(|id| {
        VisageNode::start(
            dir.path(),
            id,
            &urls,
            &endpoints,
            &flags("nats-secret-token", "etcd-root-password", &node_key),
        )
    });
    let stranger = VisageNode::start(
        dir.path(),
        "c",
        &urls,
        &endpoints,
        &flags("nats-secret-token", "etcd-root-password", &wrong_key),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client(&good[0].addr)
            .await
            .cluster_status(authed(proto::ClusterStatusRequest {}, ADMIN))
            .await;
        if r.is_ok_and(|r| r.get_ref().nodes.len() == 3) {
            break;
        }
        assert!(Instant::now() < deadline, "3 nodes within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut a = client(&good[0].addr).await;
    // Without a key: refused before anything.
    let e = a
        .cluster_status(proto::ClusterStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    // One shard on each node (3 shards, 1 copy): every read needs the others.
    a.create_gallery(authed(
        proto::CreateGalleryRequest {
            name: "doors".into(),
            dim: 16,
            shards: 3,
            replicas: 1,
            ..Default::default()
        },
        ADMIN,
    ))
    .await
    .unwrap();
    let seq = a
        .insert(authed(
            proto::InsertRequest {
                gallery: "doors".into(),
                embeddings: (1..=30)
                    .map(|i| proto::Embedding {
                        id: i,
                        subject: format!("p{i}"),
                        vector: (0..16).map(|j| (i * 16 + j) as f32 * 0.01).collect(),
                    })
                    .collect(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner()
        .seq;
    let search = |min_seq| proto::SearchRequest {
        gallery: "doors".into(),
        queries: vec![proto::Vector {
            values: vec![0.1; 16],
        }],
        k: 30,
        min_seq,
        ..Default::default()
    };
    // The nodes with the cluster key fan out to each other ...
    for n in &good {
        let r = client(&n.addr)
            .await
            .search(authed(search(seq), ADMIN))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", n.id))
            .into_inner();
        assert_eq!(r.results[0].hits.len(), 30, "every shard answered");
    }
    // ... the stranger's calls to them are refused, and it says why.
    let e = client(&stranger.addr)
        .await
        .search(authed(search(seq), ADMIN))
        .await
        .expect_err("a node with an unknown cluster key read the other nodes' shards");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(e.message().contains("unknown API key"), "{e}");
    // One shard directly: the node role only.
    let mut direct = authed(search(seq), ADMIN);
    direct
        .metadata_mut()
        .insert("visage-shard", "0".parse().unwrap());
    let e = a.search(direct).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("node role"), "{e}");
    let mut direct = authed(search(seq), NODE);
    direct
        .metadata_mut()
        .insert("visage-shard", "0".parse().unwrap());
    let hits = a.search(direct).await.unwrap().into_inner().results[0]
        .hits
        .len();
    assert!(
        hits < 30,
        "one shard holds part of the gallery ({hits} of 30)"
    );
}

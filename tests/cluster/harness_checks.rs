//! The harness itself: 3-member clusters start, serve the clients the
//! project uses (async-nats, etcd-client), survive a SIGKILL of their leader
//! with every acknowledged write kept, and take the killed member back.

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, StorageType};
use etcd_client::{Client as Etcd, ConnectOptions as EtcdOptions, GetOptions};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use visage_tests::cluster::{EtcdCluster, NatsCluster, NatsOptions, require_cluster_tools};

/// How long writes may stall after a leader is killed: NATS 2.9's raft
/// election timeout is 4-9 s; etcd's client times out a request to the dead
/// member after 3 s.
const FAILOVER: Duration = Duration::from_secs(30);

const STREAM: &str = "HARNESS";

/// A NATS client over every member (it moves to another when one dies).
async fn nats_client(cluster: &NatsCluster) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(cluster.urls())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", cluster.url_list()))
}

/// Publish message `id` (payload and `Nats-Msg-Id` both the id) until it is
/// acknowledged, retrying with the same msg id; returns (stream seq,
/// duplicate, failed attempts).
async fn publish_acked(
    js: &async_nats::jetstream::Context,
    id: u64,
    deadline: Instant,
    cluster: &NatsCluster,
) -> (u64, bool, u32) {
    let mut failures = 0;
    loop {
        let msg = PublishMessage::build()
            .payload(id.to_string().into())
            .message_id(id.to_string());
        let err = match js.send_publish(format!("{STREAM}.w"), msg).await {
            Ok(ack) => match ack.await {
                Ok(a) => return (a.sequence, a.duplicate, failures),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        failures += 1;
        assert!(
            Instant::now() < deadline,
            "message {id} not acknowledged before the deadline (last error: {err}); logs:{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `cond` every 50 ms until it holds or `limit` passes (then panics
/// with `what` and the logs).
fn wait_for(
    what: &str,
    limit: Duration,
    logs: impl Fn() -> String,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what} within {limit:?}; logs:{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stream_survives_leader_kill() {
    if !require_cluster_tools("nats_stream_survives_leader_kill") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let t0 = Instant::now();
    let cluster = NatsCluster::start(dir.path(), 3);
    let started = t0.elapsed();
    assert_eq!(cluster.urls().len(), 3);
    assert_eq!(cluster.url_list().split(',').count(), 3);

    let js = async_nats::jetstream::new(nats_client(&cluster).await);
    js.create_stream(stream::Config {
        name: STREAM.to_owned(),
        subjects: vec![format!("{STREAM}.>")],
        num_replicas: 3,
        storage: StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("create R3 stream: {e}; logs:{}", cluster.logs()));

    let before = 200u64;
    let total = 400u64;
    let mut seqs = Vec::new();
    let deadline = Instant::now() + FAILOVER;
    for id in 0..before {
        let (seq, dup, _) = publish_acked(&js, id, deadline, &cluster).await;
        assert!(!dup, "message {id} a duplicate before any failure");
        seqs.push(seq);
    }
    assert_eq!(
        seqs,
        (1..=before).collect::<Vec<_>>(),
        "contiguous sequences"
    );

    // The leader's own /jsz names it; the others host replicas.
    let mut leader = None;
    wait_for(
        "a stream leader",
        FAILOVER,
        || cluster.logs(),
        || {
            leader = cluster.stream_leader(STREAM);
            leader.is_some()
        },
    );
    let leader = leader.expect("leader");
    for i in 0..3 {
        assert!(
            cluster.stream_detail(i, STREAM).is_some(),
            "member {i} hosts no replica of the R3 stream"
        );
    }

    cluster.kill(leader);
    assert!(!cluster.is_running(leader));
    let killed = Instant::now();
    let deadline = killed + FAILOVER;
    let mut failures = 0;
    let mut duplicates = 0u32;
    let mut first_after = None;
    for id in before..total {
        // A retry after a lost ack is acknowledged as a duplicate, with the
        // stored message's sequence.
        let (seq, dup, f) = publish_acked(&js, id, deadline, &cluster).await;
        failures += f;
        duplicates += u32::from(dup);
        first_after.get_or_insert_with(|| killed.elapsed());
        seqs.push(seq);
    }
    let stall = first_after.expect("published after the kill");
    let new_leader = cluster.stream_leader(STREAM);
    assert!(
        new_leader.is_some_and(|l| l != leader),
        "new leader {new_leader:?} (killed {leader})"
    );

    // The killed member comes back from its store and catches up.
    let t_restart = Instant::now();
    cluster.restart(leader);
    assert!(cluster.is_running(leader));
    assert!(cluster.store_dir(leader).is_dir());
    wait_for(
        "the restarted member holding every message",
        FAILOVER,
        || cluster.logs(),
        || {
            cluster
                .stream_detail(leader, STREAM)
                .and_then(|s| s.pointer("/state/messages")?.as_u64())
                == Some(total)
        },
    );
    let restarted = t_restart.elapsed();
    assert!(cluster.log(leader).contains("Server is ready"));

    // Every acknowledged message is stored exactly once, in order.
    let mut st = js.get_stream(STREAM).await.expect("get stream");
    let info = st.info().await.expect("stream info").clone();
    assert_eq!(info.state.messages, total, "stored = acknowledged");
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "one seq per message");
    let consumer = st
        .create_consumer(pull::Config {
            durable_name: Some("harness-check".to_owned()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("durable pull consumer");
    let mut messages = consumer.messages().await.expect("pull");
    let mut got = Vec::new();
    while (got.len() as u64) < total {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap_or_else(|_| panic!("pull stalled after {} messages", got.len()))
            .expect("pull stream ended")
            .expect("message");
        let id: u64 = std::str::from_utf8(&m.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("id payload");
        m.ack().await.expect("ack");
        got.push(id);
    }
    assert_eq!(
        got,
        (0..total).collect::<Vec<_>>(),
        "each id once, in order"
    );

    eprintln!(
        "nats: ready in {started:?}; leader n{} killed, publishes resumed after {stall:?} \
         ({failures} failed attempts, {duplicates} acknowledged as duplicates); restarted \
         member current after {restarted:?}",
        leader + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_survives_leader_kill() {
    if !require_cluster_tools("etcd_survives_leader_kill") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let t0 = Instant::now();
    let cluster = EtcdCluster::start(dir.path(), 3);
    let started = t0.elapsed();
    assert_eq!(cluster.endpoints().len(), 3);
    let opts = EtcdOptions::new()
        .with_timeout(Duration::from_secs(3))
        .with_connect_timeout(Duration::from_secs(2));
    let mut client = Etcd::connect(cluster.endpoints(), Some(opts.clone()))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}; logs:{}", cluster.logs()));

    let total = 100u32;
    let before = 50u32;
    for k in 0..before {
        client
            .put(format!("harness/{k:03}"), format!("v{k}"), None)
            .await
            .unwrap_or_else(|e| panic!("put {k}: {e}"));
    }
    let r = client.get("harness/000", None).await.expect("get");
    assert_eq!(r.kvs()[0].value_str().unwrap(), "v0");

    let mut leader = None;
    wait_for(
        "an etcd leader",
        FAILOVER,
        || cluster.logs(),
        || {
            leader = cluster.leader();
            leader.is_some()
        },
    );
    let leader = leader.expect("leader");
    cluster.kill(leader);
    assert!(!cluster.is_running(leader));

    // The balanced channel keeps sending some requests to the dead member
    // (etcd-client issue #39): retry each put until it succeeds.
    let killed = Instant::now();
    let deadline = killed + FAILOVER;
    let mut errors = BTreeSet::new();
    let mut failures = 0u32;
    let mut first_after = None;
    for k in before..total {
        loop {
            match client
                .put(format!("harness/{k:03}"), format!("v{k}"), None)
                .await
            {
                Ok(_) => break,
                Err(e) => {
                    failures += 1;
                    let e = e.to_string();
                    assert!(
                        Instant::now() < deadline,
                        "put {k} still failing after the leader kill: {e}; logs:{}",
                        cluster.logs()
                    );
                    errors.insert(e.chars().take(80).collect::<String>());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        first_after.get_or_insert_with(|| killed.elapsed());
    }
    let stall = first_after.expect("put after the kill");
    wait_for(
        "a new etcd leader",
        FAILOVER,
        || cluster.logs(),
        || cluster.leader().is_some_and(|l| l != leader),
    );

    // Everything written before and after the kill is there.
    let check = |kvs: &[etcd_client::KeyValue]| {
        let got: Vec<(String, String)> = kvs
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_owned(),
                    kv.value_str().unwrap().to_owned(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = (0..total)
            .map(|k| (format!("harness/{k:03}"), format!("v{k}")))
            .collect();
        got == want
    };
    let deadline = Instant::now() + FAILOVER;
    let all = loop {
        match client
            .get("harness/", Some(GetOptions::new().with_prefix()))
            .await
        {
            Ok(r) => break r,
            Err(e) => {
                assert!(Instant::now() < deadline, "range read after the kill: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        check(all.kvs()),
        "keys after the kill: {} of {total}",
        all.kvs().len()
    );

    // The killed member restarts from its data dir and catches up: a
    // serializable read answered by it alone sees every key.
    let t_restart = Instant::now();
    cluster.restart(leader);
    assert!(cluster.is_running(leader));
    assert!(cluster.data_dir(leader).is_dir());
    let mut alone = Etcd::connect([cluster.endpoints()[leader].clone()], Some(opts))
        .await
        .expect("connect to the restarted member");
    let deadline = Instant::now() + FAILOVER;
    loop {
        let r = alone
            .get(
                "harness/",
                Some(GetOptions::new().with_prefix().with_serializable()),
            )
            .await;
        if r.as_ref().is_ok_and(|r| check(r.kvs())) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted member lacks keys: {:?}; logs:{}",
            r.map(|r| r.kvs().len()),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restarted = t_restart.elapsed();
    assert!(!cluster.log(leader).is_empty());

    eprintln!(
        "etcd: ready in {started:?}; leader e{} killed, puts resumed after {stall:?} \
         ({failures} failed attempts: {errors:?}); restarted member current after {restarted:?}",
        leader + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials() {
    if !require_cluster_tools("credentials") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "harness-token-0123456789";
    let nats = NatsCluster::start_with(
        &dir.path().join("nats"),
        3,
        NatsOptions {
            token: Some(token.to_owned()),
        },
    );
    let etcd = EtcdCluster::start(&dir.path().join("etcd"), 3);

    // NATS: no token, a wrong token: refused; the token: a replicated stream.
    for bad in [None, Some("wrong-token")] {
        let mut o = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2));
        if let Some(t) = bad {
            o = o.token(t.to_owned());
        }
        let r = o.connect(nats.urls()).await;
        assert!(r.is_err(), "connected with token {bad:?}");
    }
    let client = async_nats::ConnectOptions::with_token(token.to_owned())
        .connect(nats.urls())
        .await
        .expect("connect with the token");
    let js = async_nats::jetstream::new(client);
    js.create_stream(stream::Config {
        name: STREAM.to_owned(),
        subjects: vec![format!("{STREAM}.>")],
        num_replicas: 3,
        storage: StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("create stream: {e}; logs:{}", nats.logs()));
    let ack = js
        .publish(format!("{STREAM}.x"), "one".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert_eq!(ack.sequence, 1);

    // etcd: before auth anyone writes; after, only root.
    let ep = etcd.endpoints();
    let mut anon = Etcd::connect(&ep, None).await.expect("connect");
    anon.put("open", "1", None).await.expect("put before auth");
    etcd.enable_auth("root-pass:with-colon");
    let e = anon
        .put("closed", "1", None)
        .await
        .expect_err("put without credentials after auth enable");
    assert!(e.to_string().contains("user name is empty"), "{e}");
    let wrong = Etcd::connect(&ep, Some(EtcdOptions::new().with_user("root", "nope"))).await;
    assert!(wrong.is_err(), "authenticated with a wrong password");
    let mut root = Etcd::connect(
        &ep,
        Some(EtcdOptions::new().with_user("root", "root-pass:with-colon")),
    )
    .await
    .expect("connect as root");
    root.put("closed", "1", None).await.expect("put as root");
    let r = root.get("open", None).await.expect("get as root");
    assert_eq!(r.kvs()[0].value_str().unwrap(), "1");
    // The harness's own checks need no credentials.
    assert!((0..3).all(|i| etcd.healthy(i)));
    assert!(etcd.leader().is_some());
}

/// A test that panics with clusters running leaves no process behind: the
/// clusters' Drop kills and reaps every member while unwinding.
#[test]
fn panic_kills_every_member() {
    if !require_cluster_tools("panic_kills_every_member") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let nats = NatsCluster::start(&path.join("nats"), 3);
        let etcd = EtcdCluster::start(&path.join("etcd"), 3);
        let pids: Vec<u32> = (0..3)
            .flat_map(|i| [nats.pid(i), etcd.pid(i)])
            .map(|p| p.expect("running member"))
            .collect();
        tx.send(pids).expect("send pids");
        panic!("a failing test");
    })
    .join();
    assert!(r.is_err(), "the thread panicked");
    let pids = rx.recv().expect("pids");
    assert_eq!(pids.len(), 6);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "member process {pid} outlived the panic"
        );
    }
}

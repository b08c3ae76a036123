//! The cluster benchmark (README, "Cluster mode", "Measured"): three visage
//! nodes on loopback (3 NATS JetStream members, 3 etcd members, a gallery of
//! 4 shards with 2 copies each) against one single-node server (default
//! durability, `power-loss`: the WAL fsynced before each acknowledgement),
//! given the same rows in the same batches, in the same run:
//!
//! - insert throughput: batches of 1,000 rows, 4 in flight, through the raw
//!   gRPC client (the cluster's batches spread over its nodes); for the
//!   cluster also the time until every replica has applied the last batch;
//! - single-probe Search (k = 10) latency, sequential, p50 / p99, and batch
//!   Search (1,000 probes, k = 10), median of 5, single and cluster calls
//!   interleaved so that both see the same background load;
//! - catch-up of a node killed with SIGKILL while more rows are written:
//!   through the log (not trimmed: nothing was flushed), and through a
//!   peer's copy (the live copies flushed and the log trimmed meanwhile).
//!
//! Every cluster answer is checked against the single node's (top-10 ids,
//! and distance bits), so the benchmark cannot silently measure errors.
//! Run with `bash benches/cluster.sh` (it builds the release binaries):
//! ignored by default. `VISAGE_BENCH_ROWS`, `VISAGE_BENCH_MORE` (rows
//! written while the node is down, log catch-up), `VISAGE_BENCH_COPY_MORE`
//! (the same for the copy catch-up) and `VISAGE_BENCH_PROBES` change the
//! sizes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use visage_client::proto;
use visage_client::proto::visage_client::VisageClient;
use visage_engine::Embedding;
use visage_engine::synth::{SynthConfig, SynthGallery};
use visage_tests::cluster::{
    EtcdCluster, NatsCluster, VisageNode, require_cluster_tools, visage_server_binary,
};

const DIM: usize = 128;
const GALLERY: &str = "faces";
const SHARDS: u32 = 4;
const REPLICAS: u32 = 2;
/// Rows per insert batch (one log message: about 0.5 MB, under NATS's 1 MiB).
const BATCH: usize = 1000;
/// Insert batches in flight.
const INFLIGHT: usize = 4;
/// Probes of one batch Search, and how many batch Searches (the median).
const BATCH_PROBES: usize = 1000;
const BATCH_RUNS: usize = 5;
const K: u32 = 10;
/// The node that is killed and catches up (it holds shards 1 and 2).
const DOWN: usize = 2;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The single-node server: the same binary without --nats/--etcd.
struct Single {
    child: Child,
    addr: String,
}

impl Single {
    fn start(dir: &Path) -> Single {
        let data = dir.join("single");
        std::fs::create_dir_all(&data).unwrap();
        let log = dir.join("single.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(visage_server_binary())
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn visage-server");
        // Killed by Drop if it never says where it listens.
        let mut single = Single {
            child,
            addr: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("visage-server listening on "))
            {
                single.addr = addr.to_owned();
                return single;
            }
            assert!(
                Instant::now() < deadline,
                "single node did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Single {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy()
}

fn client_of(ch: &Channel) -> VisageClient<Channel> {
    VisageClient::new(ch.clone())
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20)
}

fn timed<T>(msg: T, t: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(t);
    r
}

fn insert_request(rows: &[Embedding]) -> proto::InsertRequest {
    let values: Vec<f32> = rows.iter().flat_map(|e| e.vector.iter().copied()).collect();
    proto::InsertRequest {
        gallery: GALLERY.into(),
        matrix: visage_client::matrix_of(&values, DIM as u32),
        ids: rows.iter().map(|e| e.id).collect(),
        subjects: rows.iter().map(|e| e.subject.clone()).collect(),
        ..Default::default()
    }
}

/// Insert `rows` in batches of [`BATCH`], [`INFLIGHT`] at once, batch `i`
/// to `channels[i % len]`: the elapsed time and the largest log position.
async fn insert_all(channels: &[Channel], rows: &[Embedding]) -> (Duration, u64) {
    let batches: Arc<Vec<proto::InsertRequest>> =
        Arc::new(rows.chunks(BATCH).map(insert_request).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..INFLIGHT {
        let (batches, next, channels) = (batches.clone(), next.clone(), channels.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = batches.get(i) else {
                    return seq;
                };
                let mut c = client_of(&channels[i % channels.len()]);
                let r = c
                    .insert(timed(b.clone(), Duration::from_secs(60)))
                    .await
                    .unwrap_or_else(|e| panic!("insert batch {i}: {e}"))
                    .into_inner();
                assert_eq!(r.inserted + r.replaced, b.ids.len() as u64);
                seq = seq.max(r.seq);
            }
        }));
    }
    let mut seq = 0;
    for t in tasks {
        seq = seq.max(t.await.unwrap());
    }
    (started.elapsed(), seq)
}

async fn status(ch: &Channel) -> proto::ClusterStatusResponse {
    client_of(ch)
        .cluster_status(timed(
            proto::ClusterStatusRequest {},
            Duration::from_secs(10),
        ))
        .await
        .unwrap()
        .into_inner()
}

fn gallery_status(s: &proto::ClusterStatusResponse) -> &proto::ClusterGallery {
    s.galleries.iter().find(|g| g.name == GALLERY).unwrap()
}

/// Poll ClusterStatus until every replica is live and reports `seq`
/// applied (nodes report every 0.5 s, so this is late by up to that).
async fn until_status_applied(ch: &Channel, seq: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(r) = client_of(ch)
            .cluster_status(timed(
                proto::ClusterStatusRequest {},
                Duration::from_secs(10),
            ))
            .await
        {
            let s = r.into_inner();
            if s.galleries
                .iter()
                .find(|g| g.name == GALLERY)
                .is_some_and(|g| {
                    g.replicas.len() == (SHARDS * REPLICAS) as usize
                        && g.replicas.iter().all(|r| r.live && r.applied_seq >= seq)
                })
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not all apply {seq} within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until node `addr`'s replica (every shard it holds) has applied
/// `seq`, asked directly: a shard call (Get of no ids) to its shard
/// `shard` with `visage-min-seq`, which the node answers the moment it
/// has applied it. Retried while the node is not up or holds no replica
/// yet, and every 250 ms: a call that waits on a replica which then stops
/// (its position trimmed) is not woken when its copy replaces it.
async fn until_node_applied(addr: &str, shard: u32, seq: u64) {
    let ch = channel(addr);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut r = timed(
            proto::GetRequest {
                gallery: GALLERY.into(),
                ids: Vec::new(),
                min_seq: seq,
            },
            Duration::from_millis(250),
        );
        r.metadata_mut()
            .insert("visage-shard", shard.to_string().parse().unwrap());
        r.metadata_mut()
            .insert("visage-min-seq", seq.to_string().parse().unwrap());
        if client_of(&ch).get(r).await.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} did not apply {seq} within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The shards node `id` holds.
fn shards_of(g: &proto::ClusterGallery, id: &str) -> Vec<u32> {
    g.replicas
        .iter()
        .filter(|r| r.node_id == id)
        .map(|r| r.shard)
        .collect()
}

/// Wait until every node has applied `seq`, each asked directly.
async fn until_all_applied(nodes: &[VisageNode], g: &proto::ClusterGallery, seq: u64) {
    let waits: Vec<_> = nodes
        .iter()
        .map(|n| {
            let (addr, shard) = (n.addr.clone(), shards_of(g, &n.id)[0]);
            tokio::spawn(async move { until_node_applied(&addr, shard, seq).await })
        })
        .collect();
    for w in waits {
        w.await.unwrap();
    }
}

/// Hits of one query as (id, distance bits).
type Hits = Vec<(u64, u32)>;

async fn search_one(ch: &Channel, probe: &[f32], min_seq: u64) -> (Duration, Hits) {
    let mut c = client_of(ch);
    let t = Instant::now();
    let r = c
        .search(timed(
            proto::SearchRequest {
                gallery: GALLERY.into(),
                queries: vec![proto::Vector {
                    values: probe.to_vec(),
                }],
                k: K,
                min_seq,
                ..Default::default()
            },
            Duration::from_secs(30),
        ))
        .await
        .unwrap_or_else(|e| panic!("search: {e}"))
        .into_inner();
    let took = t.elapsed();
    let hits = r.results[0]
        .hits
        .iter()
        .map(|h| (h.id, h.distance.to_bits()))
        .collect();
    (took, hits)
}

async fn search_batch(ch: &Channel, flat: &[f32], min_seq: u64) -> (Duration, Vec<Hits>) {
    let rows = flat.len() / DIM;
    let mut c = client_of(ch);
    let t = Instant::now();
    let r = c
        .search(timed(
            proto::SearchRequest {
                gallery: GALLERY.into(),
                matrix: visage_client::matrix_of(flat, DIM as u32),
                k: K,
                min_seq,
                ..Default::default()
            },
            Duration::from_secs(120),
        ))
        .await
        .unwrap_or_else(|e| panic!("batch search: {e}"))
        .into_inner();
    let took = t.elapsed();
    assert_eq!(r.counts.len(), rows);
    let k = K as usize;
    let hits = (0..rows)
        .map(|q| {
            (0..r.counts[q] as usize)
                .map(|i| (r.ids[q * k + i], r.distances[q * k + i].to_bits()))
                .collect()
        })
        .collect();
    (took, hits)
}

/// Compare hits: the ids must be equal; returns how many queries differ
/// in some distance's bits (reported, not fatal).
fn compare(what: &str, single: &[Hits], cluster: &[Hits]) -> usize {
    assert_eq!(single.len(), cluster.len(), "{what}: queries");
    let mut bits = 0;
    for (q, (s, c)) in single.iter().zip(cluster).enumerate() {
        let si: Vec<u64> = s.iter().map(|h| h.0).collect();
        let ci: Vec<u64> = c.iter().map(|h| h.0).collect();
        assert_eq!(si, ci, "{what}: top-{K} ids of query {q} differ");
        assert_eq!(si.len(), K as usize, "{what}: query {q} has {K} hits");
        if s != c {
            bits += 1;
        }
    }
    bits
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn du(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(path)
            .map(|rd| rd.flatten().map(|e| du(&e.path())).sum())
            .unwrap_or(0)
    } else {
        meta.len()
    }
}

async fn gallery_info(ch: &Channel) -> proto::GalleryInfo {
    client_of(ch)
        .get_gallery(timed(
            proto::GetGalleryRequest {
                name: GALLERY.into(),
            },
            Duration::from_secs(30),
        ))
        .await
        .unwrap()
        .into_inner()
}

/// Probes of the same single and cluster answers: run `probes` through both
/// (cluster calls rotate over `nodes`) and check they agree.
async fn check_probes(
    what: &str,
    single: &Channel,
    nodes: &[Channel],
    probes: &[Vec<f32>],
    seq: u64,
) {
    let (mut s, mut c) = (Vec::new(), Vec::new());
    for (i, p) in probes.iter().enumerate() {
        s.push(search_one(single, p, 0).await.1);
        c.push(search_one(&nodes[i % nodes.len()], p, seq).await.1);
    }
    compare(what, &s, &c);
}

/// Latencies of the same searches on the single node and the cluster.
struct Reads {
    one_s: Vec<Duration>,
    one_c: Vec<Duration>,
    batch_s: Duration,
    batch_c: Duration,
    /// Queries whose hits' distance bits differ (ids are asserted equal).
    bits: usize,
}

/// Single-probe searches (sequential, after a warm-up of 50) and batch
/// searches ([`BATCH_RUNS`], the median), single node and cluster
/// interleaved so that both see the same background load; the cluster's
/// calls rotate over its nodes and pass `seq` as `min_seq`.
async fn measure_reads(
    one: &Channel,
    nodes: &[Channel],
    probes: &[Vec<f32>],
    batch_probes: &[f32],
    seq: u64,
) -> Reads {
    for (i, p) in probes.iter().take(50).enumerate() {
        search_one(one, p, 0).await;
        search_one(&nodes[i % nodes.len()], p, seq).await;
    }
    let (mut one_s, mut one_c, mut hits_s, mut hits_c) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, p) in probes.iter().enumerate() {
        let (t, h) = search_one(one, p, 0).await;
        one_s.push(t);
        hits_s.push(h);
        let (t, h) = search_one(&nodes[i % nodes.len()], p, seq).await;
        one_c.push(t);
        hits_c.push(h);
    }
    let mut bits = compare("single-probe search", &hits_s, &hits_c);
    one_s.sort();
    one_c.sort();
    search_batch(one, batch_probes, 0).await;
    search_batch(&nodes[0], batch_probes, seq).await;
    let (mut bat_s, mut bat_c) = (Vec::new(), Vec::new());
    for run in 0..BATCH_RUNS {
        let (ts, hs) = search_batch(one, batch_probes, 0).await;
        let (tc, hc) = search_batch(&nodes[run % nodes.len()], batch_probes, seq).await;
        bits += compare("batch search", &hs, &hc);
        bat_s.push(ts);
        bat_c.push(tc);
    }
    Reads {
        one_s,
        one_c,
        batch_s: median(bat_s),
        batch_c: median(bat_c),
        bits,
    }
}

/// What one catch-up took.
struct CatchUp {
    /// Rows written while the node was down.
    rows: usize,
    /// From the restart to the process listening.
    listening: Duration,
    /// From the restart to the node answering a read at the last position.
    applied: Duration,
    /// From the restart to ClusterStatus showing every replica there.
    status: Duration,
}

/// Restart `node` and time, from the restart, its listening, its answering
/// a read at `seq` (asked directly, shard `shard`), and ClusterStatus (as
/// `other` answers it) showing every replica at `seq`, the two waits at once.
async fn restart_and_catch_up(
    node: &VisageNode,
    shard: u32,
    other: &Channel,
    seq: u64,
) -> (Duration, Duration, Duration) {
    let t = Instant::now();
    node.restart();
    let listening = t.elapsed();
    let addr = node.addr.clone();
    let direct = tokio::spawn(async move {
        until_node_applied(&addr, shard, seq).await;
        t.elapsed()
    });
    let other = other.clone();
    let by_status = tokio::spawn(async move {
        until_status_applied(&other, seq).await;
        t.elapsed()
    });
    (listening, direct.await.unwrap(), by_status.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a benchmark of several minutes: bash benches/cluster.sh"]
async fn bench_three_nodes_against_one() {
    if !require_cluster_tools("bench_three_nodes_against_one") {
        return;
    }
    // With the defaults each shard holds about 105,000 rows at the end,
    // under the memtable's flush threshold (131,072): nothing is flushed,
    // so nothing is trimmed, until the Flush of the copy catch-up.
    let rows = env_usize("VISAGE_BENCH_ROWS", 200_000);
    let more = env_usize("VISAGE_BENCH_MORE", 200_000);
    let copy_more = env_usize("VISAGE_BENCH_COPY_MORE", 20_000);
    let n_probes = env_usize("VISAGE_BENCH_PROBES", 500);
    let total = rows + more + copy_more;

    // The data: 10 images per subject, face-like (synth), ids from 1.
    let t = Instant::now();
    let synth = SynthGallery::generate(SynthConfig {
        dim: DIM,
        subjects: total.div_ceil(10),
        min_images: 10,
        max_images: 10,
        seed: 2024,
        ..Default::default()
    });
    let mut data = synth.embeddings.clone();
    data.truncate(total);
    for e in &mut data {
        e.id += 1;
    }
    // Probes: new images of enrolled subjects and strangers.
    let probes: Vec<Vec<f32>> = synth
        .probes(n_probes * 4 / 5, n_probes - n_probes * 4 / 5, 7)
        .into_iter()
        .map(|p| p.vector)
        .collect();
    let batch_probes: Vec<f32> = synth
        .probes(
            BATCH_PROBES * 4 / 5,
            BATCH_PROBES - BATCH_PROBES * 4 / 5,
            11,
        )
        .into_iter()
        .flat_map(|p| p.vector)
        .collect();
    eprintln!(
        "data: {total} rows of {DIM} values generated in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Everything on the same disk as the build (not a tmpfs).
    let root = std::env::var_os("VISAGE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    std::fs::create_dir_all(&root).unwrap();
    let dir = tempfile::tempdir_in(&root).unwrap();
    let nats = NatsCluster::start(&dir.path().join("nats"), 3);
    let etcd = EtcdCluster::start(&dir.path().join("etcd"), 3);
    let (urls, endpoints) = (nats.url_list(), etcd.endpoints().join(","));
    let nodes: Vec<VisageNode> = (0..3)
        .map(|i| VisageNode::start(dir.path(), &format!("node{i}"), &urls, &endpoints, &[]))
        .collect();
    let single = Single::start(dir.path());
    let one = channel(&single.addr);
    let chans: Vec<Channel> = nodes.iter().map(|n| channel(&n.addr)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for ch in &chans {
        while status(ch).await.nodes.len() < 3 {
            assert!(Instant::now() < deadline, "nodes did not see each other");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    client_of(&one)
        .create_gallery(proto::CreateGalleryRequest {
            name: GALLERY.into(),
            dim: DIM as u32,
            ..Default::default()
        })
        .await
        .unwrap();
    client_of(&chans[0])
        .create_gallery(timed(
            proto::CreateGalleryRequest {
                name: GALLERY.into(),
                dim: DIM as u32,
                shards: SHARDS,
                replicas: REPLICAS,
                ..Default::default()
            },
            Duration::from_secs(60),
        ))
        .await
        .unwrap();

    // Inserts.
    let (single_insert, _) = insert_all(std::slice::from_ref(&one), &data[..rows]).await;
    eprintln!("single node: {rows} rows in {single_insert:?}");
    let started = Instant::now();
    let (cluster_insert, last) = insert_all(&chans, &data[..rows]).await;
    let g = gallery_status(&status(&chans[0]).await).clone();
    until_all_applied(&nodes, &g, last).await;
    let cluster_applied = started.elapsed();
    until_status_applied(&chans[0], last).await;
    let cluster_status_applied = started.elapsed();
    eprintln!(
        "cluster: {rows} rows acknowledged in {cluster_insert:?}, applied everywhere after {cluster_applied:?} (ClusterStatus {cluster_status_applied:?})"
    );
    let g = gallery_status(&status(&chans[0]).await).clone();
    assert_eq!(g.log_last_seq, last);
    assert_eq!(
        g.log_last_seq,
        rows.div_ceil(BATCH) as u64,
        "one message a batch"
    );

    // Reads as written: the single node holds 131,072 rows in a segment
    // and the rest in its memtable, the cluster's shards all in memtables.
    let fresh = measure_reads(&one, &chans, &probes, &batch_probes, last).await;

    // Sizes (before any flush: the cluster's shards hold their rows in
    // memtables and WALs; the single node flushed a segment at 131,072).
    let info_s = gallery_info(&one).await;
    let info_c = gallery_info(&chans[0]).await;
    assert_eq!((info_s.live, info_c.live), (rows as u64, rows as u64));
    let stream = format!("VISAGE_{GALLERY}");
    let log_bytes = (0..3)
        .find_map(|i| nats.stream_detail(i, &stream))
        .and_then(|d| {
            d.pointer("/state/bytes")
                .and_then(serde_json::Value::as_u64)
        })
        .unwrap_or(0);

    // Catch-up through the log: node DOWN killed, `more` rows written.
    let down = &nodes[DOWN];
    let down_shards = shards_of(&g, &down.id);
    let live: Vec<Channel> = (0..3)
        .filter(|&i| i != DOWN)
        .map(|i| chans[i].clone())
        .collect();
    down.kill();
    let (_, _) = insert_all(std::slice::from_ref(&one), &data[rows..rows + more]).await;
    let (down_insert, last2) = insert_all(&live, &data[rows..rows + more]).await;
    let first_before = gallery_status(&status(&live[0]).await).log_first_seq;
    assert!(
        first_before <= last + 1,
        "the log was trimmed past the down node ({first_before} > {}): this catch-up would be a copy",
        last + 1
    );
    let (listening, applied, by_status) =
        restart_and_catch_up(down, down_shards[0], &live[0], last2).await;
    assert!(
        !down.log().contains("shard copied from a peer"),
        "the node was meant to follow the log"
    );
    let log_catch_up = CatchUp {
        rows: more,
        listening,
        applied,
        status: by_status,
    };
    // The restarted node answers like the single node (its own shards first).
    check_probes(
        "after the log catch-up",
        &one,
        &[channel(&down.addr)],
        &probes[..100.min(probes.len())],
        last2,
    )
    .await;

    // Catch-up through a peer's copy: killed again, more rows, the live
    // copies flushed, so the log is trimmed past the node's position.
    down.kill();
    let lo = rows + more;
    insert_all(std::slice::from_ref(&one), &data[lo..lo + copy_more]).await;
    let (_, last3) = insert_all(&live, &data[lo..lo + copy_more]).await;
    // Flush runs on every copy of the nodes the catalog has live: wait
    // until the killed node's lease has expired.
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&live[0]).await.nodes.len() > 2 {
        assert!(
            Instant::now() < deadline,
            "{} still live 60 s after its kill",
            down.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client_of(&live[0])
        .flush(timed(
            proto::FlushRequest {
                gallery: GALLERY.into(),
            },
            Duration::from_secs(120),
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while gallery_status(&status(&live[0]).await).log_first_seq <= last2 + 1 {
        assert!(
            Instant::now() < deadline,
            "the log was not trimmed past {last2} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (listening, applied, by_status) =
        restart_and_catch_up(down, down_shards[0], &live[0], last3).await;
    let node_log = down.log();
    let restarted = node_log.rfind("visage-server listening on").unwrap_or(0);
    for line in node_log[restarted..]
        .lines()
        .filter(|l| ["INFO", "WARN", "ERROR"].iter().any(|w| l.contains(w)))
    {
        eprintln!("{}: {line}", down.id);
    }
    assert!(
        node_log.contains("shard copied from a peer"),
        "the node was meant to copy its shards from a peer"
    );
    let copy_catch_up = CatchUp {
        rows: copy_more,
        listening,
        applied,
        status: by_status,
    };
    check_probes(
        "after the copy catch-up",
        &one,
        &[channel(&down.addr)],
        &probes[..100.min(probes.len())],
        last3,
    )
    .await;
    // The rows the node's shards hold (copied), and the node's own account
    // of each copy's seconds.
    let mut copied_rows = 0u64;
    let mut copy_seconds = 0f64;
    for line in node_log
        .lines()
        .filter(|l| l.contains("shard copied from a peer"))
    {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.parse::<f64>().ok())
        };
        copied_rows += field("rows").unwrap_or(0.0) as u64;
        copy_seconds += field("seconds").unwrap_or(0.0);
    }

    // Sizes after the flush (segments; every row in one).
    client_of(&one)
        .flush(proto::FlushRequest {
            gallery: GALLERY.into(),
        })
        .await
        .unwrap();
    let flushed_s = gallery_info(&one).await;
    let flushed_c = gallery_info(&chans[0]).await;
    let all = total as u64;
    assert_eq!((flushed_s.live, flushed_c.live), (all, all));
    let node_dirs: Vec<u64> = nodes.iter().map(|n| du(&dir.path().join(&n.id))).collect();
    let nats_dirs: Vec<u64> = (0..3).map(|i| du(&nats.store_dir(i))).collect();

    // Reads once every row is in a segment (both flushed), all rows.
    let chans: Vec<Channel> = nodes.iter().map(|n| channel(&n.addr)).collect();
    let flushed = measure_reads(&one, &chans, &probes, &batch_probes, last3).await;

    // The table.
    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    let (ins_s, ins_c) = (rate(rows, single_insert), rate(rows, cluster_insert));
    println!();
    println!(
        "{rows} rows of {DIM} values (synthetic faces, 10 a subject), batches of {BATCH}, {INFLIGHT} in flight; \
         cluster: 3 nodes, {SHARDS} shards x {REPLICAS} copies, NATS R3; single: power-loss (fsync); \
         searches: {} single probes in sequence, batches of {BATCH_PROBES} (median of {BATCH_RUNS}), k = {K}",
        probes.len()
    );
    println!();
    println!("| | single node | 3-node cluster | cluster / single |");
    println!("|---|---|---|---|");
    println!(
        "| insert {rows} rows, rows/s acknowledged | {ins_s:.0} | {ins_c:.0} | {:.2} |",
        ins_c / ins_s
    );
    println!(
        "| insert, rows/s until every replica applied | | {:.0} | {:.2} |",
        rate(rows, cluster_applied),
        rate(rows, cluster_applied) / ins_s
    );
    for (what, r) in [
        (format!("{rows} rows as written"), &fresh),
        (format!("{total} rows flushed"), &flushed),
    ] {
        let row = |name: &str, s: Duration, c: Duration| {
            println!(
                "| {what}: {name} | {:.2} | {:.2} | {:.2} |",
                ms(s),
                ms(c),
                ms(c) / ms(s)
            );
        };
        row(
            "1 probe, p50 ms",
            quantile(&r.one_s, 0.5),
            quantile(&r.one_c, 0.5),
        );
        row(
            "1 probe, p99 ms",
            quantile(&r.one_s, 0.99),
            quantile(&r.one_c, 0.99),
        );
        row(&format!("{BATCH_PROBES} probes, ms"), r.batch_s, r.batch_c);
    }
    println!(
        "| bytes on disk / row, one copy, unflushed (GetGallery) | {:.0} | {:.0} | |",
        info_s.bytes_on_disk as f64 / rows as f64,
        info_c.bytes_on_disk as f64 / rows as f64
    );
    println!(
        "| bytes on disk / row, one copy, flushed (GetGallery) | {:.0} | {:.0} | |",
        flushed_s.bytes_on_disk as f64 / all as f64,
        flushed_c.bytes_on_disk as f64 / all as f64
    );
    println!();
    let c = &log_catch_up;
    let its = data[rows..rows + more]
        .iter()
        .filter(|e| down_shards.contains(&visage_cluster::shard::shard_of(&e.subject, SHARDS)))
        .count();
    println!(
        "catch-up through the log: node {} ({} of {SHARDS} shards) down while {} rows ({} messages) were written; \
         listening after {:.2} s, applied them all after {:.2} s: {:.0} log rows/s ({its} of the rows in its shards: {:.0} rows/s), \
         ClusterStatus after {:.2} s",
        down.id,
        down_shards.len(),
        c.rows,
        c.rows.div_ceil(BATCH),
        c.listening.as_secs_f64(),
        c.applied.as_secs_f64(),
        rate(c.rows, c.applied),
        rate(its, c.applied),
        c.status.as_secs_f64()
    );
    let c = &copy_catch_up;
    println!(
        "catch-up through a peer's copy: down again while {} rows were written, the live copies flushed and the log trimmed; \
         listening after {:.2} s, at the last position after {:.2} s ({copied_rows} rows in its shards: {:.0} rows/s), \
         ClusterStatus after {:.2} s; the copies themselves took {copy_seconds:.2} s by the node's log ({:.0} rows/s)",
        c.rows,
        c.listening.as_secs_f64(),
        c.applied.as_secs_f64(),
        copied_rows as f64 / c.applied.as_secs_f64(),
        c.status.as_secs_f64(),
        copied_rows as f64 / copy_seconds.max(1e-9)
    );
    println!(
        "  the writes while the node was down: {more} rows acknowledged by 2 nodes at {:.0} rows/s",
        rate(more, down_insert)
    );
    println!(
        "sizes: log {:.0} B/row ({log_bytes} B for {rows} rows, each of 3 NATS members); \
         queries whose distance bits differ (ids are equal): {} as written, {} flushed",
        log_bytes as f64 / rows as f64,
        fresh.bits,
        flushed.bits
    );
    println!(
        "after the flush: single node {} B; node dirs {node_dirs:?} B; NATS stores {nats_dirs:?} B (log trimmed to {}..{})",
        du(&dir.path().join("single")),
        gallery_status(&status(&chans[0]).await).log_first_seq,
        last3
    );
    drop(single);
}

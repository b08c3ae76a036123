//! Three visage nodes in cluster mode on a real 3-member JetStream cluster
//! and a real 3-member etcd cluster, all on loopback, with a gallery of 4
//! shards and 2 copies of each: every answer (search, identify, verify, get,
//! counts) equals the answer of a single-node gallery given the same writes
//! in the same order (computed in this process by the engine, ids and
//! distance bits), from every node; nodes killed with SIGKILL under load
//! lose no acknowledged write and catch up; a JetStream member and an etcd
//! member killed under load stop nothing for longer than their elections.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use visage_client::proto;
use visage_client::proto::visage_client::VisageClient;
use visage_engine::{Engine, EngineOptions, Gallery, GallerySpec, IdentifyOptions};
use visage_tests::Rng;
use visage_tests::cluster::{EtcdCluster, NatsCluster, VisageNode, require_cluster_tools};

const DIM: usize = 32;
const SHARDS: u32 = 4;
const GALLERY: &str = "doors";
/// Far enough that identification's decision is exercised both ways.
const MAX_DISTANCE: f32 = 0.9;

struct Cluster {
    dir: tempfile::TempDir,
    nats: NatsCluster,
    etcd: EtcdCluster,
    nodes: Vec<VisageNode>,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let nats = NatsCluster::start(&dir.path().join("nats"), 3);
        let etcd = EtcdCluster::start(&dir.path().join("etcd"), 3);
        let (urls, endpoints) = (nats.url_list(), etcd.endpoints().join(","));
        let nodes = (0..n)
            .map(|i| VisageNode::start(dir.path(), &format!("node{i}"), &urls, &endpoints, &[]))
            .collect();
        Cluster {
            dir,
            nats,
            etcd,
            nodes,
        }
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            let log = n.log();
            let tail = &log[log.len().saturating_sub(4000)..];
            s.push_str(&format!("\n===== {} =====\n{tail}", n.id));
        }
        s
    }
}

async fn client(addr: &str) -> VisageClient<Channel> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    VisageClient::new(ch)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20)
}

fn with_timeout<T>(msg: T, t: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(t);
    r
}

/// Wait until node `addr` sees `n` live nodes.
async fn until_nodes(addr: &str, n: usize, c: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut cl = client(addr).await;
        if let Ok(r) = cl
            .cluster_status(with_timeout(
                proto::ClusterStatusRequest {},
                Duration::from_secs(5),
            ))
            .await
            && r.get_ref().nodes.len() == n
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} does not see {n} nodes within 60 s{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The single-node reference: the engine in this process, given the same
/// writes in the order the cluster's log acknowledged them.
struct Reference {
    _dir: tempfile::TempDir,
    _engine: Engine,
    g: Arc<Gallery>,
}

impl Reference {
    fn new() -> Reference {
        let dir = tempfile::tempdir().unwrap();
        let mut o = EngineOptions::default();
        o.gallery.background = false;
        let e = Engine::open(dir.path(), o).unwrap();
        let g = e
            .create_gallery_with(
                "ref",
                &GallerySpec {
                    dim: DIM,
                    model: String::new(),
                    normalize: false,
                },
            )
            .unwrap();
        Reference {
            _dir: dir,
            _engine: e,
            g,
        }
    }
}

/// One write, as sent to the cluster and applied to the reference.
#[derive(Clone, Debug)]
enum Write {
    Insert(Vec<u64>, Vec<String>, Vec<f32>),
    Delete(Vec<u64>, Vec<String>),
}

fn insert_request(ids: &[u64], subjects: &[String], vectors: &[f32]) -> proto::InsertRequest {
    proto::InsertRequest {
        gallery: GALLERY.into(),
        embeddings: ids
            .iter()
            .zip(subjects)
            .zip(vectors.chunks_exact(DIM))
            .map(|((id, s), v)| proto::Embedding {
                id: *id,
                subject: s.clone(),
                vector: v.to_vec(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Send `w` to the node `addr`: its log position.
async fn send(addr: &str, w: &Write) -> Result<u64, tonic::Status> {
    let mut c = client(addr).await;
    let t = Duration::from_secs(30);
    match w {
        Write::Insert(ids, subjects, vectors) => Ok(c
            .insert(with_timeout(insert_request(ids, subjects, vectors), t))
            .await?
            .into_inner()
            .seq),
        Write::Delete(ids, subjects) => Ok(c
            .delete(with_timeout(
                proto::DeleteRequest {
                    gallery: GALLERY.into(),
                    ids: ids.clone(),
                    subjects: subjects.clone(),
                },
                t,
            ))
            .await?
            .into_inner()
            .seq),
    }
}

fn apply(r: &Reference, w: &Write) {
    match w {
        Write::Insert(ids, subjects, vectors) => {
            r.g.insert_rows(Some(ids), subjects, vectors).unwrap();
        }
        Write::Delete(ids, subjects) => {
            r.g.delete(ids, subjects).unwrap();
        }
    }
}

/// A random write: mostly inserts (new ids, and upserts that move an id to
/// another subject, often of another shard), some deletes by id and by
/// subject.
fn random_write(rng: &mut Rng, next_id: &mut u64, people: u64) -> Write {
    let subject = |rng: &mut Rng| format!("person-{}", rng.below(people));
    match rng.below(10) {
        0 => {
            let ids = (0..3).map(|_| 1 + rng.below(*next_id)).collect();
            let subjects = if rng.below(3) == 0 {
                vec![subject(rng)]
            } else {
                Vec::new()
            };
            Write::Delete(ids, subjects)
        }
        _ => {
            let n = 1 + rng.below(40) as usize;
            let mut ids = Vec::new();
            let mut subjects = Vec::new();
            let mut vectors = Vec::new();
            for _ in 0..n {
                let id = if rng.below(8) == 0 && *next_id > 1 {
                    1 + rng.below(*next_id - 1)
                } else {
                    *next_id += 1;
                    *next_id
                };
                if ids.contains(&id) {
                    continue;
                }
                ids.push(id);
                let s = subject(rng);
                // Near a per-subject centre, so identification finds people.
                let v: Vec<f32> = centre(&s)
                    .into_iter()
                    .map(|x| x + 0.15 * (rng.unit() - 0.5))
                    .collect();
                vectors.extend(v);
                subjects.push(s);
            }
            Write::Insert(ids, subjects, vectors)
        }
    }
}

/// The centre of a subject's vectors.
fn centre(subject: &str) -> Vec<f32> {
    let h = subject.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    Rng(h | 1).vector_of(DIM)
}

fn bits(h: &[(u64, f32)]) -> Vec<(u64, u32)> {
    h.iter().map(|(id, d)| (*id, d.to_bits())).collect()
}

/// Compare every kind of read of node `addr` (at log position `seq`) with
/// the reference.
async fn check_reads(addr: &str, seq: u64, r: &Reference, rng: &mut Rng, what: &str) {
    let mut c = client(addr).await;
    let t = Duration::from_secs(30);
    let probes: Vec<Vec<f32>> = (0..12)
        .map(|i| {
            if i % 2 == 0 {
                rng.vector_of(DIM)
            } else {
                centre(&format!("person-{i}"))
            }
        })
        .collect();
    for k in [1u32, 7, 60] {
        // Unpacked search.
        let got = c
            .search(with_timeout(
                proto::SearchRequest {
                    gallery: GALLERY.into(),
                    queries: probes
                        .iter()
                        .map(|p| proto::Vector { values: p.clone() })
                        .collect(),
                    k,
                    min_seq: seq,
                    ..Default::default()
                },
                t,
            ))
            .await
            .unwrap_or_else(|e| panic!("{what}: search on {addr}: {e}"))
            .into_inner();
        let want = r.g.search(&probes, k as usize).unwrap();
        for (q, (g, w)) in got.results.iter().zip(&want).enumerate() {
            let g: Vec<(u64, f32)> = g.hits.iter().map(|h| (h.id, h.distance)).collect();
            let w: Vec<(u64, f32)> = w.iter().map(|h| (h.id, h.distance)).collect();
            assert_eq!(
                bits(&g),
                bits(&w),
                "{what}: search k={k} query {q} on {addr}"
            );
        }
        assert_eq!(got.results.len(), want.len());
        // Packed search, with subjects.
        let flat: Vec<u8> = probes
            .iter()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let got = c
            .search(with_timeout(
                proto::SearchRequest {
                    gallery: GALLERY.into(),
                    k,
                    matrix: Some(proto::Matrix {
                        rows: probes.len() as u32,
                        dim: DIM as u32,
                        f32_le: flat,
                    }),
                    with_subjects: true,
                    min_seq: seq,
                    ..Default::default()
                },
                t,
            ))
            .await
            .unwrap_or_else(|e| panic!("{what}: packed search on {addr}: {e}"))
            .into_inner();
        for (q, w) in want.iter().enumerate() {
            assert_eq!(got.counts[q] as usize, w.len(), "{what}: packed counts");
            for (i, h) in w.iter().enumerate() {
                let at = q * k as usize + i;
                assert_eq!(got.ids[at], h.id, "{what}: packed id");
                assert_eq!(got.distances[at].to_bits(), h.distance.to_bits());
                assert_eq!(got.subjects[at], h.subject);
            }
        }
    }
    // Identification with a threshold.
    for k in [1u32, 5] {
        let got = c
            .identify(with_timeout(
                proto::IdentifyRequest {
                    gallery: GALLERY.into(),
                    probes: probes
                        .iter()
                        .map(|p| proto::Vector { values: p.clone() })
                        .collect(),
                    k,
                    max_distance: Some(MAX_DISTANCE),
                    min_seq: seq,
                    ..Default::default()
                },
                t,
            ))
            .await
            .unwrap_or_else(|e| panic!("{what}: identify on {addr}: {e}"))
            .into_inner();
        let want =
            r.g.identify_open(
                &probes,
                &IdentifyOptions {
                    k: k as usize,
                    min_probability: None,
                    max_distance: Some(MAX_DISTANCE),
                },
            )
            .unwrap();
        for (q, (g, w)) in got.results.iter().zip(&want).enumerate() {
            assert_eq!(g.known, w.known, "{what}: identify known, probe {q}");
            assert_eq!(
                g.subject,
                w.subject.clone().unwrap_or_default(),
                "{what}: identify subject, probe {q}"
            );
            let gc: Vec<(String, u64, u32)> = g
                .candidates
                .iter()
                .map(|c| (c.subject.clone(), c.id, c.distance.to_bits()))
                .collect();
            let wc: Vec<(String, u64, u32)> = w
                .candidates
                .iter()
                .map(|c| (c.subject.clone(), c.id, c.distance.to_bits()))
                .collect();
            assert_eq!(gc, wc, "{what}: identify k={k} probe {q} on {addr}");
        }
    }
    // Verification against subjects, ids and vectors.
    let live = r.g.export().next_batch(1_000_000);
    if let Some(b) = live.filter(|b| !b.ids.is_empty()) {
        let mut pairs = Vec::new();
        let mut want_pairs = Vec::new();
        for (i, p) in probes.iter().enumerate() {
            let row = (i * 7919) % b.ids.len();
            let (target, engine_target) = match i % 3 {
                0 => (
                    proto::verify_pair::B::Subject(b.subjects[row].clone()),
                    visage_engine::VerifyTarget::Subject(b.subjects[row].clone()),
                ),
                1 => (
                    proto::verify_pair::B::Id(b.ids[row]),
                    visage_engine::VerifyTarget::Id(b.ids[row]),
                ),
                _ => (
                    proto::verify_pair::B::Vector(proto::Vector {
                        values: probes[(i + 1) % probes.len()].clone(),
                    }),
                    visage_engine::VerifyTarget::Vector(probes[(i + 1) % probes.len()].clone()),
                ),
            };
            pairs.push(proto::VerifyPair {
                a: Some(proto::Vector { values: p.clone() }),
                b: Some(target),
            });
            want_pairs.push(visage_engine::VerifyPair {
                a: p.clone(),
                b: engine_target,
            });
        }
        let got = c
            .verify(with_timeout(
                proto::VerifyRequest {
                    gallery: GALLERY.into(),
                    pairs,
                    max_distance: Some(MAX_DISTANCE),
                    min_seq: seq,
                    ..Default::default()
                },
                t,
            ))
            .await
            .unwrap_or_else(|e| panic!("{what}: verify on {addr}: {e}"))
            .into_inner();
        let want =
            r.g.verify(
                &want_pairs,
                &visage_engine::VerifyOptions {
                    min_probability: None,
                    max_distance: Some(MAX_DISTANCE),
                },
            )
            .unwrap();
        assert_eq!(got.verdicts.len(), want.len());
        for (i, (g, w)) in got.verdicts.iter().zip(&want).enumerate() {
            assert_eq!(g.same, w.same, "{what}: verify {i}");
            assert_eq!(
                g.distance.to_bits(),
                w.distance.to_bits(),
                "{what}: verify {i}"
            );
            assert_eq!(g.matched_id, w.matched_id, "{what}: verify {i}");
        }
        // Every live row, by Get (within its limit of ids a call), and the
        // counts.
        let ids: Vec<u64> = b.ids.clone();
        let mut got = Vec::new();
        for part in ids.chunks(50_000) {
            got.extend(
                c.get(with_timeout(
                    proto::GetRequest {
                        gallery: GALLERY.into(),
                        ids: part.to_vec(),
                        min_seq: seq,
                    },
                    t,
                ))
                .await
                .unwrap_or_else(|e| panic!("{what}: get on {addr}: {e}"))
                .into_inner()
                .embeddings,
            );
        }
        assert_eq!(got.len(), ids.len(), "{what}: every live row");
        let by_id: BTreeMap<u64, &proto::Embedding> = got.iter().map(|e| (e.id, e)).collect();
        for (i, id) in b.ids.iter().enumerate() {
            let e = by_id[id];
            assert_eq!(e.subject, b.subjects[i], "{what}: subject of {id}");
            let want_bits: Vec<u32> = b.vectors[i * DIM..(i + 1) * DIM]
                .iter()
                .map(|x| x.to_bits())
                .collect();
            let got_bits: Vec<u32> = e.vector.iter().map(|x| x.to_bits()).collect();
            assert_eq!(got_bits, want_bits, "{what}: vector of {id}");
        }
    }
    let info = c
        .get_gallery(with_timeout(
            proto::GetGalleryRequest {
                name: GALLERY.into(),
            },
            t,
        ))
        .await
        .unwrap()
        .into_inner();
    let stats = r.g.stats();
    // Counts are read without min_seq: every replica is at `seq` by now
    // (the reads above waited for one of each shard; GetGallery may ask the
    // other), so compare once they agree.
    if info.live != stats.live {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = c
                .get_gallery(proto::GetGalleryRequest {
                    name: GALLERY.into(),
                })
                .await
                .unwrap()
                .into_inner();
            if info.live == stats.live && info.subjects == stats.subjects {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: live {} subjects {} vs the reference's {} {}",
                info.live,
                info.subjects,
                stats.live,
                stats.subjects
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        assert_eq!(info.subjects, stats.subjects, "{what}: subjects");
    }
}

async fn create(addr: &str) {
    let mut c = client(addr).await;
    let info = c
        .create_gallery(with_timeout(
            proto::CreateGalleryRequest {
                name: GALLERY.into(),
                dim: DIM as u32,
                shards: SHARDS,
                replicas: 2,
                ..Default::default()
            },
            Duration::from_secs(60),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.shards, info.replicas), (SHARDS, 2));
}

/// Wait until every replica of every shard has applied `seq` (ClusterStatus).
async fn until_applied(addr: &str, seq: u64, c: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut cl = client(addr).await;
        if let Ok(r) = cl.cluster_status(proto::ClusterStatusRequest {}).await {
            let s = r.into_inner();
            let g = s.galleries.iter().find(|g| g.name == GALLERY);
            if g.is_some_and(|g| {
                g.replicas.len() == (SHARDS * 2) as usize
                    && g.replicas.iter().all(|r| r.live && r.applied_seq >= seq)
            }) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not all apply {seq} within 120 s{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_answer_exactly_like_one_gallery() {
    if !require_cluster_tools("three_nodes_answer_exactly_like_one_gallery") {
        return;
    }
    let c = Cluster::start(3);
    for n in &c.nodes {
        until_nodes(&n.addr, 3, &c).await;
    }
    create(&c.nodes[1].addr).await;
    let r = Reference::new();
    let mut rng = Rng(17);
    let mut next_id = 0u64;
    let mut seq = 0;
    for i in 0..120 {
        let w = random_write(&mut rng, &mut next_id, 150);
        let addr = &c.nodes[i % 3].addr;
        let s = send(addr, &w)
            .await
            .unwrap_or_else(|e| panic!("write {i} on {addr}: {e}{}", c.logs()));
        assert!(s > seq, "log positions grow: {s} after {seq}");
        seq = s;
        apply(&r, &w);
        if i % 40 == 39 {
            for n in &c.nodes {
                check_reads(&n.addr, seq, &r, &mut rng, &format!("after write {i}")).await;
            }
        }
    }
    // A batch the replicas would refuse is refused before it is logged.
    let mut bad = insert_request(&[1], &["x".into()], &[0.5; DIM]);
    bad.embeddings[0].vector[3] = f32::NAN;
    let e = client(&c.nodes[0].addr)
        .await
        .insert(bad)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("embeddings[0]"), "{e}");
    let (_, last) = c_log_bounds(&c).await;
    assert_eq!(last, seq, "nothing was logged for the refused batch");

    until_applied(&c.nodes[0].addr, seq, &c).await;
    let status = client(&c.nodes[2].addr)
        .await
        .cluster_status(proto::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.nodes.len(), 3);
    let g = &status.galleries[0];
    assert_eq!(
        (g.name.as_str(), g.shards, g.log_last_seq),
        (GALLERY, SHARDS, seq)
    );
    for s in 0..SHARDS {
        let holders: Vec<&str> = g
            .replicas
            .iter()
            .filter(|r| r.shard == s)
            .map(|r| r.node_id.as_str())
            .collect();
        assert_eq!(holders.len(), 2, "two copies of shard {s}");
        assert_ne!(holders[0], holders[1]);
    }
    // Backup and restore are single-node operations.
    let e = client(&c.nodes[0].addr)
        .await
        .backup(proto::BackupRequest {
            gallery: GALLERY.into(),
            name: "b1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    drop(c.dir);
}

async fn c_log_bounds(c: &Cluster) -> (u64, u64) {
    let s = client(&c.nodes[0].addr)
        .await
        .cluster_status(proto::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let g = s.galleries.iter().find(|g| g.name == GALLERY).unwrap();
    (g.log_first_seq, g.log_last_seq)
}

/// The acknowledged writes, with their log positions.
type Acked = Arc<std::sync::Mutex<Vec<(u64, Write)>>>;

/// Wait until `n` more writes are acknowledged.
async fn more_acks(acked: &Acked, n: usize, c: &Cluster, what: &str) {
    let start = acked.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < start + n {
        assert!(
            Instant::now() < deadline,
            "{what}: fewer than {n} writes acknowledged within 120 s{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many kills: `VISAGE_NODE_KILLS` (the long script sets 10), else 2.
fn kills(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writers and readers run against the live nodes while `disrupt` kills
/// and restarts things; every acknowledged write is in the reference (in
/// log order), reads during the disruption must be answered, and at the
/// end every node answers exactly like the reference.
/// What a round of [`under_load`] kills.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kill {
    /// A visage node (in turn), SIGKILL, restarted once writes went on.
    Node,
    /// A JetStream member (the gallery's stream leader every other round).
    LogMember,
    /// The etcd leader; while it is down a visage node leaves and rejoins.
    CatalogLeader,
}

async fn under_load(c: &Cluster, rounds: usize, kill: Kill) {
    for n in &c.nodes {
        until_nodes(&n.addr, 3, c).await;
    }
    create(&c.nodes[0].addr).await;
    let stop = Arc::new(AtomicBool::new(false));
    let down = Arc::new(std::sync::Mutex::new(None::<usize>));
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.addr.clone()).collect();
    // The writer: acknowledged writes with their log positions.
    let acked: Acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ack_times = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let writer = {
        let (stop, down, acked, addrs, times) = (
            stop.clone(),
            down.clone(),
            acked.clone(),
            addrs.clone(),
            ack_times.clone(),
        );
        tokio::spawn(async move {
            let mut rng = Rng(99);
            let mut next_id = 0u64;
            let mut i = 0usize;
            let mut failures = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let w = random_write(&mut rng, &mut next_id, 400);
                // Retried on other nodes until acknowledged: an upsert with
                // the same ids and a delete are idempotent.
                loop {
                    let skip = *down.lock().unwrap();
                    let target = (0..addrs.len())
                        .map(|j| (i + j) % addrs.len())
                        .find(|j| Some(*j) != skip)
                        .unwrap();
                    i += 1;
                    match send(&addrs[target], &w).await {
                        Ok(seq) => {
                            acked.lock().unwrap().push((seq, w.clone()));
                            times.lock().unwrap().push(Instant::now());
                            // A steady load, not all the CPU the machine has.
                            tokio::time::sleep(Duration::from_millis(3)).await;
                            break;
                        }
                        Err(_) => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
            failures
        })
    };
    // The reader: searches on live nodes must be answered.
    let answered = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, down, addrs, answered) =
            (stop.clone(), down.clone(), addrs.clone(), answered.clone());
        tokio::spawn(async move {
            let mut rng = Rng(5);
            let mut i = 0usize;
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let skip = *down.lock().unwrap();
                let target = (0..addrs.len())
                    .map(|j| (i + j) % addrs.len())
                    .find(|j| Some(*j) != skip)
                    .unwrap();
                i += 1;
                let mut cl = client(&addrs[target]).await;
                let r = cl
                    .search(with_timeout(
                        proto::SearchRequest {
                            gallery: GALLERY.into(),
                            queries: vec![proto::Vector {
                                values: rng.vector_of(DIM),
                            }],
                            k: 10,
                            ..Default::default()
                        },
                        Duration::from_secs(20),
                    ))
                    .await;
                match r {
                    Ok(_) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    // The node itself died under the call: not a refusal.
                    Err(e) if *down.lock().unwrap() == Some(target) => {
                        let _ = e;
                    }
                    Err(e) => errors.push(format!("{}: {e}", addrs[target])),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            errors
        })
    };
    let mut rng = Rng(1234);
    for round in 0..rounds {
        // A random moment: after a random number of further acks.
        let start = acked.lock().unwrap().len();
        let wait = 5 + rng.below(40) as usize;
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.lock().unwrap().len() < start + wait {
            assert!(
                Instant::now() < deadline,
                "writes stalled before round {round}{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match kill {
            Kill::Node => {
                let i = round % c.nodes.len();
                *down.lock().unwrap() = Some(i);
                c.nodes[i].kill();
                // Down while writes and reads go on through the others.
                more_acks(&acked, 15, c, &format!("{} down", c.nodes[i].id)).await;
                c.nodes[i].restart();
                // Back once it serves (it joins the cluster after it
                // listens) and the others see it.
                until_nodes(&c.nodes[i].addr, 3, c).await;
                until_nodes(&c.nodes[(i + 1) % 3].addr, 3, c).await;
                *down.lock().unwrap() = None;
            }
            Kill::LogMember => {
                let leader = c.nats.stream_leader(&format!("VISAGE_{GALLERY}"));
                let i = match leader {
                    Some(l) if round % 2 == 0 => l,
                    _ => round % c.nats.len(),
                };
                c.nats.kill(i);
                more_acks(&acked, 15, c, &format!("NATS member {i} down")).await;
                c.nats.restart(i);
            }
            Kill::CatalogLeader => {
                let i = c.etcd.leader().unwrap_or(round % c.etcd.len());
                c.etcd.kill(i);
                more_acks(&acked, 10, c, &format!("etcd member {i} down")).await;
                // Membership still changes: a node leaves and comes back.
                let j = round % c.nodes.len();
                *down.lock().unwrap() = Some(j);
                c.nodes[j].kill();
                let other = &c.nodes[(j + 1) % 3].addr;
                until_nodes(other, 2, c).await;
                more_acks(&acked, 10, c, "a node down with an etcd member").await;
                c.nodes[j].restart();
                // Joining takes longer while an etcd member is down (the
                // client sends a share of its calls to it until they time
                // out): back once it serves and the others see it.
                until_nodes(&c.nodes[j].addr, 3, c).await;
                until_nodes(other, 3, c).await;
                *down.lock().unwrap() = None;
                c.etcd.restart(i);
            }
        }
    }
    // Some more writes after the last disruption.
    let start = acked.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < start + 20 {
        assert!(
            Instant::now() < deadline,
            "writes stalled at the end{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let failures = writer.await.unwrap();
    let times = ack_times.lock().unwrap().clone();
    let pause = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    println!(
        "{kill:?} x{rounds}: {} writes acknowledged, {failures} attempts failed and were retried, longest pause between acknowledgements {pause:?}, {} reads answered",
        times.len(),
        answered.load(Ordering::Relaxed)
    );
    let errors = reader.await.unwrap();
    assert!(
        errors.is_empty(),
        "reads on live nodes failed: {errors:?}{}",
        c.logs()
    );
    assert!(answered.load(Ordering::Relaxed) > 0);
    // The reference: the acknowledged writes in log order. A write retried
    // on another node after an unanswered attempt may sit in the log twice;
    // applying it twice is what the cluster did, and it is idempotent.
    let mut acked = acked.lock().unwrap().clone();
    acked.sort_by_key(|(s, _)| *s);
    let seqs: Vec<u64> = acked.iter().map(|(s, _)| *s).collect();
    let mut dedup = seqs.clone();
    dedup.dedup();
    assert_eq!(
        dedup.len(),
        seqs.len(),
        "two writes acknowledged at one position"
    );
    let r = Reference::new();
    for (_, w) in &acked {
        apply(&r, w);
    }
    let last = *seqs.last().unwrap();
    until_applied(&c.nodes[0].addr, last, c).await;
    let mut rng = Rng(77);
    for n in &c.nodes {
        check_reads(
            &n.addr,
            last,
            &r,
            &mut rng,
            &format!("after the load, on {}", n.id),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_nodes_lose_no_acknowledged_write_and_catch_up() {
    if !require_cluster_tools("killed_nodes_lose_no_acknowledged_write_and_catch_up") {
        return;
    }
    let c = Cluster::start(3);
    under_load(&c, kills("VISAGE_NODE_KILLS", 2), Kill::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_log_members_pause_writes_and_lose_nothing() {
    if !require_cluster_tools("killed_log_members_pause_writes_and_lose_nothing") {
        return;
    }
    let c = Cluster::start(3);
    under_load(&c, kills("VISAGE_LOG_KILLS", 1), Kill::LogMember).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_etcd_leader_stops_nothing() {
    if !require_cluster_tools("a_killed_etcd_leader_stops_nothing") {
        return;
    }
    let c = Cluster::start(3);
    under_load(&c, 1, Kill::CatalogLeader).await;
}

/// Every row of shard `k` as node `addr` holds it (a shard call).
async fn shard_rows(
    addr: &str,
    k: u32,
    ids: &[u64],
    seq: u64,
) -> BTreeMap<u64, (String, Vec<u32>)> {
    let mut r = with_timeout(
        proto::GetRequest {
            gallery: GALLERY.into(),
            ids: ids.to_vec(),
            min_seq: seq,
        },
        Duration::from_secs(30),
    );
    r.metadata_mut()
        .insert("visage-shard", k.to_string().parse().unwrap());
    r.metadata_mut()
        .insert("visage-min-seq", seq.to_string().parse().unwrap());
    client(addr)
        .await
        .get(r)
        .await
        .unwrap_or_else(|e| panic!("shard {k} on {addr}: {e}"))
        .into_inner()
        .embeddings
        .into_iter()
        .map(|e| {
            (
                e.id,
                (e.subject, e.vector.iter().map(|x| x.to_bits()).collect()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_down_while_the_log_is_trimmed_rejoins_from_a_peers_copy() {
    if !require_cluster_tools("a_node_down_while_the_log_is_trimmed_rejoins_from_a_peers_copy") {
        return;
    }
    let c = Cluster::start(3);
    for n in &c.nodes {
        until_nodes(&n.addr, 3, &c).await;
    }
    create(&c.nodes[0].addr).await;
    let r = Reference::new();
    let mut rng = Rng(4242);
    let mut next_id = 0u64;
    let mut seq = 0;
    let mut write = async |rng: &mut Rng, next_id: &mut u64, n: usize, nodes: &[usize]| {
        for i in 0..n {
            let w = random_write(rng, next_id, 200);
            seq = send(&c.nodes[nodes[i % nodes.len()]].addr, &w)
                .await
                .unwrap();
            apply(&r, &w);
        }
        seq
    };
    write(&mut rng, &mut next_id, 40, &[0, 1, 2]).await;
    let down_at = write(&mut rng, &mut next_id, 1, &[0]).await;
    until_applied(&c.nodes[0].addr, down_at, &c).await;
    c.nodes[2].kill();
    until_nodes(&c.nodes[0].addr, 2, &c).await;
    let flushed_at = write(&mut rng, &mut next_id, 40, &[0, 1]).await;
    // Every live copy flushes: the log can be trimmed past node 2.
    client(&c.nodes[0].addr)
        .await
        .flush(with_timeout(
            proto::FlushRequest {
                gallery: GALLERY.into(),
            },
            Duration::from_secs(60),
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (first, _) = c_log_bounds(&c).await;
        if first > down_at + 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log was not trimmed past {down_at} within 60 s (first {first}, flushed at {flushed_at}){}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.nodes[2].restart();
    let last = write(&mut rng, &mut next_id, 10, &[0, 1, 2]).await;
    until_applied(&c.nodes[0].addr, last, &c).await;
    assert!(
        c.nodes[2].log().contains("shard copied from a peer"),
        "node 2 started from copies{}",
        c.logs()
    );
    // Node 2's shards hold exactly what their other copy holds, and what
    // the reference holds in those shards, bit for bit.
    let all = r.g.export().next_batch(1_000_000).unwrap();
    let status = client(&c.nodes[0].addr)
        .await
        .cluster_status(proto::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let g = &status.galleries[0];
    for k in 0..SHARDS {
        let holders: Vec<&str> = g
            .replicas
            .iter()
            .filter(|x| x.shard == k)
            .map(|x| x.node_id.as_str())
            .collect();
        if !holders.contains(&"node2") {
            continue;
        }
        let want: BTreeMap<u64, (String, Vec<u32>)> = all
            .ids
            .iter()
            .enumerate()
            .filter(|(i, _)| visage_cluster::shard::shard_of(&all.subjects[*i], SHARDS) == k)
            .map(|(i, id)| {
                (
                    *id,
                    (
                        all.subjects[i].clone(),
                        all.vectors[i * DIM..(i + 1) * DIM]
                            .iter()
                            .map(|x| x.to_bits())
                            .collect(),
                    ),
                )
            })
            .collect();
        for h in holders {
            let addr = &c.nodes[h[4..].parse::<usize>().unwrap()].addr;
            let got = shard_rows(addr, k, &all.ids, last).await;
            assert_eq!(got, want, "shard {k} on {h}");
        }
    }
    let mut rng = Rng(8);
    check_reads(&c.nodes[2].addr, last, &r, &mut rng, "after the rejoin").await;
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_erased_person_leaves_every_replica_and_every_log_member() {
    if !require_cluster_tools("an_erased_person_leaves_every_replica_and_every_log_member") {
        return;
    }
    let c = Cluster::start(3);
    for n in &c.nodes {
        until_nodes(&n.addr, 3, &c).await;
    }
    create(&c.nodes[0].addr).await;
    let mut rng = Rng(31337);
    let mut next_id = 0u64;
    let marked: Vec<Vec<f32>> = (0..3).map(|_| rng.vector_of(DIM)).collect();
    let kept: Vec<Vec<f32>> = (0..3).map(|_| rng.vector_of(DIM)).collect();
    let mut seq = 0;
    for i in 0..30 {
        let w = match i % 10 {
            // The person to erase and one to keep, each batch beside others.
            3 | 7 => {
                let Write::Insert(mut ids, mut subjects, mut vectors) =
                    random_write(&mut Rng(i as u64 + 1), &mut next_id, 100)
                else {
                    continue;
                };
                for (who, v) in [("erase-me", &marked[i / 10]), ("keep-me", &kept[i / 10])] {
                    next_id += 1;
                    ids.push(next_id);
                    subjects.push(who.to_owned());
                    vectors.extend_from_slice(v);
                }
                Write::Insert(ids, subjects, vectors)
            }
            _ => random_write(&mut rng, &mut next_id, 100),
        };
        seq = send(&c.nodes[i % 3].addr, &w).await.unwrap();
    }
    let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    // Before: the scan finds the person in replicas' files and the log's.
    until_applied(&c.nodes[0].addr, seq, &c).await;
    for v in &marked[..3 - 1] {
        let held = files_holding(c.dir.path(), &bytes(v));
        assert!(
            held.iter()
                .any(|p| p.starts_with(c.dir.path().join("nats"))),
            "the log holds the vector before the erasure: {held:?}"
        );
    }
    let erased_at = send(
        &c.nodes[1].addr,
        &Write::Delete(Vec::new(), vec!["erase-me".into()]),
    )
    .await
    .unwrap();
    let erasure = async || {
        let s = client(&c.nodes[2].addr)
            .await
            .cluster_status(proto::ClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        s.galleries[0]
            .erasures
            .iter()
            .find(|e| e.seq == erased_at)
            .cloned()
    };
    // Recorded, and waiting for the replicas to compact.
    let deadline = Instant::now() + Duration::from_secs(60);
    let pending = loop {
        if let Some(e) = erasure().await {
            break e;
        }
        assert!(Instant::now() < deadline, "no erasure recorded{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((pending.subjects, pending.ids), (1, 0));
    until_applied(&c.nodes[0].addr, erased_at, &c).await;
    client(&c.nodes[0].addr)
        .await
        .compact(with_timeout(
            proto::CompactRequest {
                gallery: GALLERY.into(),
            },
            Duration::from_secs(60),
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let e = erasure().await.unwrap();
        if e.state == "done" {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "erasure not done within 120 s: {e:?}{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The messages that carried the person are gone: erased by the
    // erasure, or by trimming (which erases too) before it looked.
    let (first, _) = c_log_bounds(&c).await;
    assert!(
        done.messages_erased >= 3 || first > erased_at,
        "{done:?}, log from {first}"
    );
    // After: no file of any node, of any log member or of etcd holds the
    // person's vectors; the kept person's are still found (the scan works).
    for v in &marked {
        let held = files_holding(c.dir.path(), &bytes(v));
        assert!(held.is_empty(), "an erased vector is still in {held:?}");
    }
    for v in &kept {
        let held = files_holding(c.dir.path(), &bytes(v));
        assert!(
            held.iter()
                .any(|p| p.starts_with(c.dir.path().join("node0"))
                    || p.starts_with(c.dir.path().join("node1"))
                    || p.starts_with(c.dir.path().join("node2"))),
            "a kept vector is in a replica's files: {held:?}"
        );
    }
    let held = files_holding(c.dir.path(), b"erase-me");
    assert!(held.is_empty(), "the erased name is still in {held:?}");
    // The gallery answers without the person.
    let got = client(&c.nodes[0].addr)
        .await
        .search(proto::SearchRequest {
            gallery: GALLERY.into(),
            queries: vec![proto::Vector {
                values: marked[0].clone(),
            }],
            k: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.results[0].hits.iter().all(|h| h.subject != "erase-me"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_head_trained_across_shards_decides_like_one_gallery() {
    if !require_cluster_tools("a_head_trained_across_shards_decides_like_one_gallery") {
        return;
    }
    let c = Cluster::start(3);
    for n in &c.nodes {
        until_nodes(&n.addr, 3, &c).await;
    }
    create(&c.nodes[0].addr).await;
    let r = Reference::new();
    let mut rng = Rng(555);
    let mut next_id = 0u64;
    let mut seq = 0;
    for i in 0..90 {
        let w = random_write(&mut rng, &mut next_id, 120);
        seq = send(&c.nodes[i % 3].addr, &w).await.unwrap();
        apply(&r, &w);
    }
    until_applied(&c.nodes[0].addr, seq, &c).await;
    // Without a head, only a request's own threshold is the same on every
    // shard.
    let probes: Vec<Vec<f32>> = (0..16)
        .map(|i| {
            if i % 2 == 0 {
                rng.vector_of(DIM)
            } else {
                centre(&format!("person-{i}"))
            }
        })
        .collect();
    let identify = |min_probability: Option<f32>| proto::IdentifyRequest {
        gallery: GALLERY.into(),
        probes: probes
            .iter()
            .map(|p| proto::Vector { values: p.clone() })
            .collect(),
        k: 5,
        min_probability,
        min_seq: seq,
        ..Default::default()
    };
    let e = client(&c.nodes[0].addr)
        .await
        .identify(identify(None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    let trained = client(&c.nodes[1].addr)
        .await
        .train_head(with_timeout(
            proto::TrainHeadRequest {
                gallery: GALLERY.into(),
                seed: Some(7),
                ..Default::default()
            },
            Duration::from_secs(300),
        ))
        .await
        .unwrap_or_else(|e| panic!("train: {e}{}", c.logs()))
        .into_inner();
    assert!(trained.trained && trained.auc > 0.5, "{trained:?}");
    // The reference gets the cluster's head, from the catalog.
    let cat = visage_cluster::catalog::Catalog::connect(&c.etcd.endpoints(), None)
        .await
        .unwrap();
    let (_, bytes) = cat.head(GALLERY).await.unwrap().unwrap();
    let head = visage_engine::HeadInfo::decode(std::path::Path::new("catalog"), &bytes).unwrap();
    assert_eq!(head.auc as f32, trained.auc);
    r.g.install_head(&head).unwrap();
    let got_head = client(&c.nodes[2].addr)
        .await
        .get_head(proto::GetHeadRequest {
            gallery: GALLERY.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got_head.trained);
    assert_eq!(got_head.current_subjects, r.g.stats().subjects);
    for n in &c.nodes {
        for min_probability in [None, Some(0.5)] {
            let got = client(&n.addr)
                .await
                .identify(with_timeout(
                    identify(min_probability),
                    Duration::from_secs(30),
                ))
                .await
                .unwrap_or_else(|e| panic!("identify on {}: {e}", n.id))
                .into_inner();
            let want =
                r.g.identify_open(
                    &probes,
                    &IdentifyOptions {
                        k: 5,
                        min_probability,
                        max_distance: None,
                    },
                )
                .unwrap();
            let mut known = 0;
            for (q, (g, w)) in got.results.iter().zip(&want).enumerate() {
                assert_eq!(
                    (g.known, g.subject.as_str()),
                    (w.known, w.subject.as_deref().unwrap_or_default()),
                    "probe {q} on {}",
                    n.id
                );
                known += usize::from(w.known);
                let gc: Vec<(String, u64, u32, Option<u32>)> = g
                    .candidates
                    .iter()
                    .map(|c| {
                        (
                            c.subject.clone(),
                            c.id,
                            c.distance.to_bits(),
                            c.probability.map(f32::to_bits),
                        )
                    })
                    .collect();
                let wc: Vec<(String, u64, u32, Option<u32>)> = w
                    .candidates
                    .iter()
                    .map(|c| {
                        (
                            c.subject.clone(),
                            c.id,
                            c.distance.to_bits(),
                            c.probability.map(f32::to_bits),
                        )
                    })
                    .collect();
                assert_eq!(gc, wc, "probe {q} on {}", n.id);
            }
            assert!(
                known > 0 && known < probes.len(),
                "both decisions exercised: {known}"
            );
        }
    }
    // Search ranked by the head.
    for n in &c.nodes {
        let got = client(&n.addr)
            .await
            .search(proto::SearchRequest {
                gallery: GALLERY.into(),
                queries: probes
                    .iter()
                    .map(|p| proto::Vector { values: p.clone() })
                    .collect(),
                k: 8,
                rank_by: proto::RankBy::Head as i32,
                min_seq: seq,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("search by head on {}: {e}", n.id))
            .into_inner();
        let want =
            r.g.search_with(
                &probes,
                &visage_engine::SearchOptions {
                    k: 8,
                    rank_by: visage_engine::RankBy::Head,
                    ..Default::default()
                },
            )
            .unwrap();
        for (q, (g, w)) in got.results.iter().zip(&want).enumerate() {
            let g: Vec<(u64, u32)> = g
                .hits
                .iter()
                .map(|h| (h.id, h.distance.to_bits()))
                .collect();
            let w: Vec<(u64, u32)> = w.iter().map(|h| (h.id, h.distance.to_bits())).collect();
            assert_eq!(g, w, "search by head, query {q} on {}", n.id);
        }
    }
    // Verification by the head's calibrated thresholds (pair and claim).
    let live = r.g.export().next_batch(1_000_000).unwrap();
    let mut pairs = Vec::new();
    let mut want_pairs = Vec::new();
    for (i, p) in probes.iter().enumerate() {
        let row = (i * 104_729) % live.ids.len();
        let (b, eb) = match i % 3 {
            0 => (
                proto::verify_pair::B::Subject(live.subjects[row].clone()),
                visage_engine::VerifyTarget::Subject(live.subjects[row].clone()),
            ),
            1 => (
                proto::verify_pair::B::Id(live.ids[row]),
                visage_engine::VerifyTarget::Id(live.ids[row]),
            ),
            _ => (
                proto::verify_pair::B::Vector(proto::Vector {
                    values: live.vectors[row * DIM..(row + 1) * DIM].to_vec(),
                }),
                visage_engine::VerifyTarget::Vector(
                    live.vectors[row * DIM..(row + 1) * DIM].to_vec(),
                ),
            ),
        };
        pairs.push(proto::VerifyPair {
            a: Some(proto::Vector { values: p.clone() }),
            b: Some(b),
        });
        want_pairs.push(visage_engine::VerifyPair {
            a: p.clone(),
            b: eb,
        });
    }
    let got = client(&c.nodes[0].addr)
        .await
        .verify(proto::VerifyRequest {
            gallery: GALLERY.into(),
            pairs,
            min_seq: seq,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let want =
        r.g.verify(&want_pairs, &visage_engine::VerifyOptions::default())
            .unwrap();
    for (i, (g, w)) in got.verdicts.iter().zip(&want).enumerate() {
        assert_eq!(
            (
                g.same,
                g.distance.to_bits(),
                g.probability.map(f32::to_bits),
                g.matched_id
            ),
            (
                w.same,
                w.distance.to_bits(),
                w.probability.map(f32::to_bits),
                w.matched_id
            ),
            "verify {i}"
        );
        assert_eq!(g.threshold.to_bits(), w.threshold.to_bits(), "verify {i}");
    }
}

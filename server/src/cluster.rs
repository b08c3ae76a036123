//! Cluster mode (`--nats`, `--etcd`): the `visage.v1.Visage` service of a
//! node whose galleries are sharded and replicated (see `visage-cluster`).
//!
//! - Writes: any node checks an Insert or Delete as a single node would,
//!   publishes it as one message of the gallery's log and answers once the
//!   log holds it (a quorum of its servers), with the message's sequence.
//!   A rejected batch publishes nothing.
//! - Reads: any node fans Search, Identify, Verify and Get out to one live
//!   replica of each shard involved (its own first), each call with its own
//!   deadline, another replica when one fails or is slow, and merges the
//!   answers exactly. A read may name `min_seq`: only replicas that applied
//!   the log that far answer (read your own writes).
//! - Shard calls: a node addresses one shard of a gallery on another node
//!   with the same RPCs and the metadata [`SHARD_HEADER`] (the `node` role
//!   only), [`MIN_SEQ_HEADER`]; the node answers from its local gallery of
//!   that shard with the single-node handlers.

use crate::auth::SHARD_HEADER;
use crate::packed;
use crate::service::VisageService;
use crate::status::{ApiError, invalid};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};
use visage_cluster::batch::LogBatch;
use visage_cluster::catalog::{GalleryEntry, assign};
use visage_cluster::merge::merge_by as merge;
use visage_cluster::node::{GalleryView, Node};
use visage_cluster::shard::{shard_gallery, shard_of};
use visage_engine::{GallerySpec, check_delete, check_rows};
use visage_proto::v1 as pb;
use visage_proto::v1::visage_client::VisageClient;
use visage_proto::v1::visage_server::Visage;

/// The metadata of a shard call: the log position the replica must have
/// applied before it answers.
pub const MIN_SEQ_HEADER: &str = "visage-min-seq";

/// How long a read or write may take in all when the client sets no
/// deadline (`grpc-timeout`).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
/// How long one shard call may take before another replica is asked.
pub const SHARD_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The most rows a cluster gathers on one node to train its head.
pub const MAX_TRAIN_ROWS: u64 = 5_000_000;
/// How long one publish may wait for the log's acknowledgement before it is
/// sent again (with the same message id: it is stored once).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// How a node reaches the others.
#[derive(Clone, Default)]
pub struct PeerOptions {
    /// The cluster key, sent to other nodes as `authorization: Bearer KEY`
    /// (a key of the `node` role in their `--api-keys`).
    pub key: Option<String>,
    /// TLS for calls to other nodes (their servers' CA), when the nodes
    /// serve TLS.
    pub tls: Option<ClientTlsConfig>,
}

impl std::fmt::Debug for PeerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerOptions")
            .field("key", &self.key.as_ref().map(|_| "…"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The cluster-mode service state of one node.
pub struct Front {
    node: Arc<Node>,
    local: VisageService,
    peers: PeerOptions,
    channels: Mutex<HashMap<String, Channel>>,
    rotation: AtomicU64,
    messages: AtomicU64,
    max_message_bytes: usize,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("node", &self.node.id())
            .finish_non_exhaustive()
    }
}

type Boxed<T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send>>;

/// Where a shard call goes.
enum Target {
    Local,
    Remote(VisageClient<Channel>),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether another replica may answer where this one failed.
fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::Internal
    )
}

/// The deadline a request carries (`grpc-timeout`), else [`DEFAULT_DEADLINE`].
fn deadline_of<T>(req: &Request<T>) -> Instant {
    let t = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(DEFAULT_DEADLINE);
    Instant::now() + t
}

/// A `grpc-timeout` value: digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn header<T>(req: &Request<T>, name: &str) -> Result<Option<u64>, Status> {
    match req.metadata().get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| Status::invalid_argument(format!("metadata {name}: not a number"))),
    }
}

/// Requests that name a gallery: a shard call renames it to the shard's
/// local gallery.
trait Galleried {
    fn gallery_mut(&mut self) -> &mut String;
}

macro_rules! galleried {
    ($($t:ty => $f:ident),* $(,)?) => {
        $(impl Galleried for $t {
            fn gallery_mut(&mut self) -> &mut String {
                &mut self.$f
            }
        })*
    };
}

galleried!(
    pb::SearchRequest => gallery,
    pb::IdentifyRequest => gallery,
    pb::VerifyRequest => gallery,
    pb::GetRequest => gallery,
    pb::GetGalleryRequest => name,
    pb::ListSubjectsRequest => gallery,
    pb::CompactRequest => gallery,
    pb::FlushRequest => gallery,
    pb::ExportRequest => gallery,
);

fn not_found(name: &str) -> Status {
    Status::not_found(format!("no gallery {name:?} in the cluster"))
}

fn not_in_cluster(what: &str) -> Status {
    Status::failed_precondition(format!(
        "{what} is not available in cluster mode yet (it is on a single node)"
    ))
}

/// Hits per query in the flat form of a Search response.
fn unflatten(r: pb::SearchResponse) -> Vec<Vec<pb::Hit>> {
    let k = r.k as usize;
    r.counts
        .iter()
        .enumerate()
        .map(|(q, &n)| {
            (0..n as usize)
                .map(|i| {
                    let at = q * k + i;
                    pb::Hit {
                        id: r.ids[at],
                        subject: r.subjects.get(at).cloned().unwrap_or_default(),
                        distance: r.distances[at],
                        probability: r.probabilities.get(at).copied(),
                        similarity: r.similarities.get(at).copied(),
                        rank_key: None,
                    }
                })
                .collect()
        })
        .collect()
}

/// The flat form of merged hits ([`packed::search_response`]).
fn flatten(results: Vec<Vec<pb::Hit>>, k: usize, with_subjects: bool) -> pb::SearchResponse {
    let results = results
        .into_iter()
        .map(|hits| hits.into_iter().map(crate::convert::hit_in).collect())
        .collect();
    packed::search_response(results, k, with_subjects)
}

fn spec_of(e: &GalleryEntry) -> GallerySpec {
    GallerySpec {
        dim: e.dim,
        model: e.model.clone(),
        normalize: e.normalize,
    }
}

/// A gallery name a cluster gallery may not take: its shards' local
/// galleries are named `NAME-sK`.
fn shard_like(name: &str) -> bool {
    name.rsplit_once("-s")
        .is_some_and(|(_, k)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
}

impl Front {
    /// The service of `node`, answering shard calls from its engine.
    pub fn new(
        node: Arc<Node>,
        local: VisageService,
        peers: PeerOptions,
        max_message_bytes: usize,
    ) -> Front {
        Front {
            node,
            local,
            peers,
            channels: Mutex::new(HashMap::new()),
            rotation: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            max_message_bytes,
        }
    }

    /// The node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    fn view(&self, name: &str) -> Result<GalleryView, Status> {
        self.node.gallery(name).ok_or_else(|| not_found(name))
    }

    /// A decision every shard takes alike: the request's `max_distance`,
    /// or the cluster's head (its probabilities and calibrated thresholds,
    /// the same on every shard). Without a head, a shard's own calibrated
    /// distance thresholds would differ from shard to shard: refused.
    fn check_decision(
        view: &GalleryView,
        min_probability: Option<f32>,
        max_distance: Option<f32>,
    ) -> Result<(), Status> {
        if view.head_rev > 0 || (min_probability.is_none() && max_distance.is_some()) {
            return Ok(());
        }
        Err(Status::failed_precondition(
            "the gallery has no head yet in the cluster: pass max_distance, or train a head (TrainHead) for calibrated thresholds and min_probability",
        ))
    }

    fn check_model(view: &GalleryView, name: &str, model: &str) -> Result<(), Status> {
        if model.is_empty() || model == view.entry.model {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "gallery {name:?} holds vectors of model {:?}; the request names {model:?}",
            view.entry.model
        )))
    }

    fn client(&self, addr: &str) -> Result<VisageClient<Channel>, Status> {
        let mut channels = lock(&self.channels);
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let scheme = if self.peers.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                let mut e = Endpoint::from_shared(format!("{scheme}://{addr}"))
                    .map_err(|e| Status::internal(format!("node address {addr}: {e}")))?
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5));
                if let Some(tls) = &self.peers.tls {
                    e = e
                        .tls_config(tls.clone())
                        .map_err(|e| Status::internal(format!("TLS to {addr}: {e}")))?;
                }
                let c = e.connect_lazy();
                channels.insert(addr.to_owned(), c.clone());
                c
            }
        };
        Ok(VisageClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes.max(64 << 20))
            .max_encoding_message_size(self.max_message_bytes.max(64 << 20)))
    }

    /// A client of the node at `addr`, with `r` carrying the cluster key.
    fn remote<T>(&self, addr: &str, r: &mut Request<T>) -> Result<VisageClient<Channel>, Status> {
        if let Some(key) = &self.peers.key {
            let v = format!("Bearer {key}")
                .parse()
                .map_err(|_| Status::internal("the cluster key is not a valid header value"))?;
            r.metadata_mut().insert("authorization", v);
        }
        self.client(addr)
    }

    /// The replicas to ask for shard `k`, in order: this node's own first
    /// (when it serves the shard), then the other live ones, rotated so
    /// the load spreads.
    fn targets(&self, view: &GalleryView, k: u32) -> Vec<(String, Option<String>)> {
        let nodes = self.node.nodes();
        let me = self.node.id();
        let mut out = Vec::new();
        if view.replica.as_ref().is_some_and(|r| r.shard(k).is_some()) {
            out.push((me.to_owned(), None));
        }
        let mut others: Vec<(String, Option<String>)> = view
            .entry
            .nodes_of(k)
            .iter()
            .filter(|n| *n != me)
            .filter_map(|n| nodes.get(n).map(|e| (n.clone(), Some(e.advertise.clone()))))
            .collect();
        if !others.is_empty() {
            let r = self.rotation.fetch_add(1, Ordering::Relaxed) as usize % others.len();
            others.rotate_left(r);
        }
        out.extend(others);
        out
    }

    /// Call shard `k` of `gallery` with `req` on one replica after another
    /// until one answers (or the deadline passes).
    async fn call_shard<Req, Resp, F>(
        self: &Arc<Self>,
        view: &GalleryView,
        k: u32,
        req: Req,
        min_seq: u64,
        deadline: Instant,
        call: F,
    ) -> Result<Resp, Status>
    where
        Req: Clone + Send + 'static,
        Resp: Send + 'static,
        F: Fn(Arc<Front>, Target, Request<Req>) -> Boxed<Resp>,
    {
        let mut failures: Vec<String> = Vec::new();
        loop {
            let targets = self.targets(view, k);
            for (node, addr) in targets {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let timeout = left.min(SHARD_CALL_TIMEOUT);
                let mut r = Request::new(req.clone());
                r.set_timeout(timeout);
                let md = r.metadata_mut();
                md.insert(SHARD_HEADER, MetadataValue::from(k));
                md.insert(MIN_SEQ_HEADER, MetadataValue::from(min_seq));
                let target = match &addr {
                    None => Target::Local,
                    Some(a) => Target::Remote(self.remote(a, &mut r)?),
                };
                match tokio::time::timeout(timeout, call(self.clone(), target, r)).await {
                    Ok(Ok(resp)) => return Ok(resp.into_inner()),
                    Ok(Err(s)) if retryable(&s) => {
                        failures.push(format!("{node}: {}", s.message()));
                    }
                    Ok(Err(s)) => return Err(s),
                    Err(_) => failures.push(format!("{node}: no answer within {timeout:?}")),
                }
            }
            if Instant::now() + Duration::from_millis(100) >= deadline {
                failures.dedup();
                let tail = failures.len().saturating_sub(4);
                return Err(Status::unavailable(format!(
                    "shard {k} of gallery {:?}: no replica answered before the deadline ({})",
                    view.name,
                    failures[tail..].join("; ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// [`Front::call_shard`] for each of `shards` at once.
    async fn fan<Req, Resp, F>(
        self: &Arc<Self>,
        view: &GalleryView,
        shards: Vec<(u32, Req)>,
        min_seq: u64,
        deadline: Instant,
        call: F,
    ) -> Result<Vec<(u32, Resp)>, Status>
    where
        Req: Clone + Send + 'static,
        Resp: Send + 'static,
        F: Fn(Arc<Front>, Target, Request<Req>) -> Boxed<Resp> + Clone + Send + Sync + 'static,
    {
        let mut tasks = Vec::with_capacity(shards.len());
        for (k, req) in shards {
            let (me, view, call) = (self.clone(), view.clone(), call.clone());
            tasks.push(tokio::spawn(async move {
                me.call_shard(&view, k, req, min_seq, deadline, call)
                    .await
                    .map(|r| (k, r))
            }));
        }
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(
                t.await
                    .map_err(|e| Status::internal(format!("shard task: {e}")))??,
            );
        }
        Ok(out)
    }

    /// Ready this node's replica of a shard call's shard: the local
    /// gallery's name, once it has applied the call's `min_seq`.
    async fn local_shard<T: Galleried>(&self, req: &mut Request<T>) -> Result<(), Status> {
        let k = header(req, SHARD_HEADER)?.unwrap_or(0);
        let k = u32::try_from(k)
            .map_err(|_| Status::invalid_argument(format!("{SHARD_HEADER}: {k}")))?;
        let min_seq = header(req, MIN_SEQ_HEADER)?.unwrap_or(0);
        let deadline = deadline_of(req);
        let gallery = req.get_mut().gallery_mut().clone();
        let view = self.view(&gallery)?;
        let Some(replica) = view.replica.filter(|r| r.shard(k).is_some()) else {
            return Err(Status::unavailable(format!(
                "node {} holds no replica of shard {k} of {gallery:?}{}",
                self.node.id(),
                view.failure
                    .map(|f| format!(" (it stopped: {f})"))
                    .unwrap_or_default()
            )));
        };
        if self.node.head_installed(&gallery) < view.head_rev {
            return Err(Status::unavailable(format!(
                "node {}: the gallery's new head is not installed here yet",
                self.node.id()
            )));
        }
        // Wait for `min_seq`, looking again at the node's replica now and
        // then: a replica started again from a peer's copy replaces it.
        let mut replica = replica;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if replica
                .wait_applied(min_seq, left.min(Duration::from_millis(200)))
                .await
            {
                break;
            }
            if left <= Duration::from_millis(200) {
                return Err(Status::unavailable(format!(
                    "node {}: shard {k} of {gallery:?} has applied the log to {}, not yet {min_seq}",
                    self.node.id(),
                    replica.applied()
                )));
            }
            if let Some(r) = self
                .node
                .gallery(&gallery)
                .and_then(|v| v.replica)
                .filter(|r| r.shard(k).is_some())
            {
                replica = r;
            }
        }
        *req.get_mut().gallery_mut() = shard_gallery(&gallery, k);
        Ok(())
    }

    fn is_shard_call<T>(req: &Request<T>) -> bool {
        req.metadata().contains_key(SHARD_HEADER)
    }

    fn next_message_id(&self) -> String {
        let n = self.messages.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{t:x}-{n}", self.node.id())
    }

    /// Publish a checked batch, retrying (same message id) until the log
    /// acknowledges it or the deadline passes.
    async fn publish(
        &self,
        gallery: &str,
        batch: &LogBatch,
        deadline: Instant,
    ) -> Result<u64, Status> {
        let size = prost::Message::encoded_len(batch);
        let max = self.node.log().max_payload();
        if size > max {
            return Err(Status::resource_exhausted(format!(
                "the batch is {size} bytes; the cluster's log takes at most {max} bytes a message (a batch is one message, so it stays atomic): send fewer rows a batch"
            )));
        }
        let id = self.next_message_id();
        let mut last = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Status::unavailable(format!(
                    "the log of {gallery:?} did not acknowledge the batch before the deadline ({last}); it may or may not be stored: retry it (an upsert with the same ids and a delete are idempotent)"
                )));
            }
            match tokio::time::timeout(
                left.min(PUBLISH_TIMEOUT),
                self.node.log().publish(gallery, batch, &id),
            )
            .await
            {
                Ok(Ok(seq)) => return Ok(seq),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "no acknowledgement within 5 s".into(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Check one Insert message and publish it: (rows, assigned ids, seq).
    async fn insert_batch(
        &self,
        req: pb::InsertRequest,
        deadline: Instant,
    ) -> Result<(u64, Vec<u64>, u64), Status> {
        let name = req.gallery.clone();
        let view = self.view(&name)?;
        Front::check_model(&view, &name, &req.model)?;
        packed::exclusive("embeddings", req.embeddings.len(), req.matrix.as_ref())?;
        if req.conflict_check != pb::ConflictCheck::Off as i32 {
            return Err(not_in_cluster("conflict_check"));
        }
        let spec = spec_of(&view.entry);
        let (ids, subjects, vectors, assign) = match &req.matrix {
            None => {
                packed::no_packed_parts(&req.ids, &req.subjects)?;
                let dim = spec.dim;
                let mut vectors = Vec::with_capacity(req.embeddings.len() * dim);
                for (i, e) in req.embeddings.iter().enumerate() {
                    if e.vector.len() != dim {
                        return Err(invalid(
                            &format!("embeddings[{i}]"),
                            format_args!(
                                "expected {dim} values (the gallery's dimension), got {}",
                                e.vector.len()
                            ),
                        )
                        .into());
                    }
                    vectors.extend_from_slice(&e.vector);
                }
                let ids: Vec<u64> = req.embeddings.iter().map(|e| e.id).collect();
                let subjects: Vec<String> = req.embeddings.into_iter().map(|e| e.subject).collect();
                check_rows(&spec, Some(&ids), &subjects, &vectors).map_err(ApiError::from)?;
                (ids, subjects, vectors, false)
            }
            Some(m) => {
                let b = packed::InsertBatch::new(m, req.ids.clone(), req.subjects.clone())?;
                packed::check_dim("matrix", m, spec.dim)?;
                check_rows(&spec, b.ids.as_deref(), &b.subjects, &b.values)
                    .map_err(packed::insert_error)?;
                let assign = b.ids.is_none();
                let ids = match b.ids {
                    Some(ids) => ids,
                    None => self
                        .node
                        .assign_ids(&name, b.subjects.len() as u64)
                        .await
                        .map_err(|e| Status::unavailable(format!("assigning ids: {e}")))?,
                };
                (ids, b.subjects, b.values.into_owned(), assign)
            }
        };
        let rows = ids.len() as u64;
        let batch = LogBatch::insert(ids.clone(), subjects, &vectors, spec.dim);
        let seq = self.publish(&name, &batch, deadline).await?;
        Ok((rows, if assign { ids } else { Vec::new() }, seq))
    }

    /// The gallery's statistics, summed over one replica of each shard.
    async fn info(
        self: &Arc<Self>,
        name: &str,
        deadline: Instant,
    ) -> Result<pb::GalleryInfo, Status> {
        let view = self.view(name)?;
        let shards = (0..view.entry.shards)
            .map(|k| {
                (
                    k,
                    pb::GetGalleryRequest {
                        name: name.to_owned(),
                    },
                )
            })
            .collect();
        let parts = self
            .fan(&view, shards, 0, deadline, |f, t, r| {
                Box::pin(async move {
                    match t {
                        Target::Local => f.get_gallery_shard(r).await,
                        Target::Remote(mut c) => c.get_gallery(r).await,
                    }
                })
            })
            .await?;
        let e = &view.entry;
        let mut info = pb::GalleryInfo {
            name: name.to_owned(),
            dim: e.dim as u32,
            model: e.model.clone(),
            normalize: e.normalize,
            shards: e.shards,
            replicas: e.replicas.first().map_or(0, |r| r.len() as u32),
            head_trained: view.head_rev > 0,
            ..pb::GalleryInfo::default()
        };
        for (_, p) in parts {
            info.live += p.live;
            info.deleted += p.deleted;
            info.subjects += p.subjects;
            info.segments += p.segments;
            info.bytes_on_disk += p.bytes_on_disk;
            info.memtable_rows += p.memtable_rows;
            info.exception_rows += p.exception_rows;
            info.outdated_segments += p.outdated_segments;
        }
        Ok(info)
    }

    async fn get_gallery_shard(
        self: Arc<Self>,
        mut r: Request<pb::GetGalleryRequest>,
    ) -> Result<Response<pb::GalleryInfo>, Status> {
        self.local_shard(&mut r).await?;
        self.local.get_gallery(r).await
    }

    /// Wait until every live node assigned a shard of `name` reports its
    /// replica (so reads right after CreateGallery find them).
    async fn wait_replicas(&self, name: &str, entry: &GalleryEntry, deadline: Instant) {
        let wanted: std::collections::BTreeSet<&String> = entry.replicas.iter().flatten().collect();
        while Instant::now() < deadline {
            let live = self.node.nodes();
            let reported: Vec<String> = match self.node.catalog().progress(name).await {
                Ok(p) => p.into_iter().map(|(n, _)| n).collect(),
                Err(_) => Vec::new(),
            };
            if wanted
                .iter()
                .all(|n| !live.contains_key(*n) || reported.contains(n))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

macro_rules! shard_handler {
    ($name:ident, $method:ident, $req:ty, $resp:ty) => {
        impl Front {
            async fn $name(
                self: Arc<Self>,
                mut r: Request<$req>,
            ) -> Result<Response<$resp>, Status> {
                self.local_shard(&mut r).await?;
                self.local.$method(r).await
            }
        }
    };
}

shard_handler!(search_shard, search, pb::SearchRequest, pb::SearchResponse);
shard_handler!(
    identify_shard,
    identify,
    pb::IdentifyRequest,
    pb::IdentifyResponse
);
shard_handler!(verify_shard, verify, pb::VerifyRequest, pb::VerifyResponse);
shard_handler!(get_shard, get, pb::GetRequest, pb::GetResponse);
shard_handler!(
    subjects_shard,
    list_subjects,
    pb::ListSubjectsRequest,
    pb::ListSubjectsResponse
);
shard_handler!(
    compact_shard,
    compact,
    pb::CompactRequest,
    pb::CompactResponse
);
shard_handler!(flush_shard, flush, pb::FlushRequest, pb::FlushResponse);

/// The cluster-mode service: [`Front`] behind the gRPC trait.
#[derive(Debug, Clone)]
pub struct ClusterService(pub Arc<Front>);

#[tonic::async_trait]
impl Visage for ClusterService {
    async fn create_gallery(
        &self,
        request: Request<pb::CreateGalleryRequest>,
    ) -> Result<Response<pb::GalleryInfo>, Status> {
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        let f = &self.0;
        visage_engine::check_gallery_name(&req.name).map_err(|e| crate::status::at("name", e))?;
        if shard_like(&req.name) {
            return Err(invalid(
                "name",
                format_args!(
                    "{:?} ends like a shard's local gallery (-sN); choose another name",
                    req.name
                ),
            )
            .into());
        }
        let spec = crate::convert::spec_in(&req);
        if let Some(reason) = spec.problem() {
            return Err(ApiError::from(visage_engine::Error::InvalidSpec { reason }).into());
        }
        let shards = req.shards.max(1);
        if shards > 1024 {
            return Err(invalid("shards", format_args!("{shards}: at most 1,024")).into());
        }
        let live: Vec<String> = f.node.nodes().into_keys().collect();
        let replicas = match req.replicas {
            0 => live.len().min(2),
            r => r as usize,
        };
        if replicas > live.len() {
            return Err(Status::failed_precondition(format!(
                "replicas: {replicas} copies of each shard need {replicas} live nodes; {} are live ({})",
                live.len(),
                live.join(", ")
            )));
        }
        let entry = GalleryEntry {
            dim: spec.dim,
            model: spec.model.clone(),
            normalize: spec.normalize,
            shards,
            replicas: assign(&live, shards, replicas),
        };
        f.node
            .log()
            .ensure_stream(&req.name)
            .await
            .map_err(|e| Status::unavailable(format!("creating the gallery's log: {e}")))?;
        let created = f
            .node
            .catalog()
            .create_gallery(&req.name, &entry)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if !created {
            return Err(Status::already_exists(format!(
                "gallery {:?} exists in the cluster",
                req.name
            )));
        }
        tracing::info!(gallery = %req.name, shards, replicas, "cluster gallery created");
        f.node
            .sync()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        f.wait_replicas(&req.name, &entry, deadline).await;
        Ok(Response::new(pb::GalleryInfo {
            name: req.name,
            dim: entry.dim as u32,
            model: entry.model,
            normalize: entry.normalize,
            shards,
            replicas: replicas as u32,
            ..pb::GalleryInfo::default()
        }))
    }

    async fn drop_gallery(
        &self,
        request: Request<pb::DropGalleryRequest>,
    ) -> Result<Response<pb::DropGalleryResponse>, Status> {
        let deadline = deadline_of(&request);
        let name = request.into_inner().name;
        let f = &self.0;
        let before = f.info(&name, deadline).await.ok();
        let removed = f
            .node
            .catalog()
            .delete_gallery(&name)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if !removed {
            return Err(not_found(&name));
        }
        f.node
            .log()
            .delete_stream(&name)
            .await
            .map_err(|e| Status::unavailable(format!("deleting the gallery's log: {e}")))?;
        f.node
            .sync()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(gallery = %name, "cluster gallery dropped");
        Ok(Response::new(pb::DropGalleryResponse { dropped: before }))
    }

    async fn list_galleries(
        &self,
        request: Request<pb::ListGalleriesRequest>,
    ) -> Result<Response<pb::ListGalleriesResponse>, Status> {
        let deadline = deadline_of(&request);
        let mut galleries = Vec::new();
        for name in self.0.node.galleries().into_keys() {
            galleries.push(self.0.info(&name, deadline).await?);
        }
        Ok(Response::new(pb::ListGalleriesResponse { galleries }))
    }

    async fn list_subjects(
        &self,
        request: Request<pb::ListSubjectsRequest>,
    ) -> Result<Response<pb::ListSubjectsResponse>, Status> {
        let f = self.0.clone();
        if Front::is_shard_call(&request) {
            return f.subjects_shard(request).await;
        }
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        let view = f.view(&req.gallery)?;
        let size = if req.page_size == 0 {
            crate::service::DEFAULT_SUBJECTS_PAGE
        } else {
            req.page_size as usize
        };
        let shards = (0..view.entry.shards).map(|k| (k, req.clone())).collect();
        let parts = f
            .fan(&view, shards, 0, deadline, |f, t, r| {
                Box::pin(async move {
                    match t {
                        Target::Local => f.subjects_shard(r).await,
                        Target::Remote(mut c) => c.list_subjects(r).await,
                    }
                })
            })
            .await?;
        let mut all: Vec<pb::SubjectCount> =
            parts.into_iter().flat_map(|(_, p)| p.subjects).collect();
        all.sort_by(|a, b| a.subject.as_bytes().cmp(b.subject.as_bytes()));
        all.truncate(size);
        let next_page_token = match all.last() {
            Some(s) if all.len() == size => packed::page_token(&s.subject),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListSubjectsResponse {
            subjects: all,
            next_page_token,
        }))
    }

    async fn get_gallery(
        &self,
        request: Request<pb::GetGalleryRequest>,
    ) -> Result<Response<pb::GalleryInfo>, Status> {
        let f = self.0.clone();
        if Front::is_shard_call(&request) {
            return f.get_gallery_shard(request).await;
        }
        let deadline = deadline_of(&request);
        let name = request.into_inner().name;
        Ok(Response::new(f.info(&name, deadline).await?))
    }

    async fn insert(
        &self,
        request: Request<pb::InsertRequest>,
    ) -> Result<Response<pb::InsertResponse>, Status> {
        let deadline = deadline_of(&request);
        let (rows, ids, seq) = self.0.insert_batch(request.into_inner(), deadline).await?;
        Ok(Response::new(pb::InsertResponse {
            inserted: rows,
            batches: 1,
            ids,
            seq,
            ..pb::InsertResponse::default()
        }))
    }

    async fn insert_stream(
        &self,
        request: Request<Streaming<pb::InsertRequest>>,
    ) -> Result<Response<pb::InsertResponse>, Status> {
        let mut stream = request.into_inner();
        let mut out = pb::InsertResponse::default();
        let mut gallery: Option<String> = None;
        while let Some(msg) = stream.message().await? {
            let mut msg = msg;
            match &gallery {
                None => gallery = Some(msg.gallery.clone()),
                Some(g) if msg.gallery.is_empty() => msg.gallery = g.clone(),
                Some(g) if *g != msg.gallery => {
                    return Err(invalid(
                        "gallery",
                        format_args!(
                            "message {} names {:?}; the stream is for {g:?} ({} batches committed)",
                            out.batches, msg.gallery, out.batches
                        ),
                    )
                    .into());
                }
                Some(_) => {}
            }
            let deadline = Instant::now() + DEFAULT_DEADLINE;
            let index = out.batches;
            let (rows, ids, seq) = self.0.insert_batch(msg, deadline).await.map_err(|s| {
                Status::new(
                    s.code(),
                    format!(
                        "message {index}: {} ({index} earlier batches were committed)",
                        s.message()
                    ),
                )
            })?;
            out.batches += 1;
            out.inserted += rows;
            out.ids.extend(ids);
            out.seq = seq;
        }
        if gallery.is_none() {
            return Err(invalid("gallery", "the stream sent no message").into());
        }
        Ok(Response::new(out))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        self.0.view(&req.gallery)?;
        check_delete(&req.ids, &req.subjects).map_err(ApiError::from)?;
        let batch = LogBatch::delete(req.ids, req.subjects);
        let seq = self.0.publish(&req.gallery, &batch, deadline).await?;
        Ok(Response::new(pb::DeleteResponse { deleted: 0, seq }))
    }

    type ExportStream = tokio_stream::wrappers::ReceiverStream<Result<pb::ExportBatch, Status>>;

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let f = self.0.clone();
        if Front::is_shard_call(&request) {
            let mut r = request;
            f.local_shard(&mut r).await?;
            return f.local.export(r).await;
        }
        let req = request.into_inner();
        let view = f.view(&req.gallery)?;
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            f.export_rows(view, req),
        )))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let f = self.0.clone();
        if Front::is_shard_call(&request) {
            return f.get_shard(request).await;
        }
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        let view = f.view(&req.gallery)?;
        let found = f.get_ids(&view, &req, deadline).await?;
        let embeddings = req
            .ids
            .iter()
            .filter_map(|id| found.get(id).cloned())
            .collect();
        Ok(Response::new(pb::GetResponse { embeddings }))
    }

    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let f = self.0.clone();
        if Front::is_shard_call(&request) {
            return f.search_shard(request).await;
        }
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        let view = f.view(&req.gallery)?;
        Front::check_model(&view, &req.gallery, &req.model)?;
        let by_head = req.rank_by == pb::RankBy::Head as i32;
        if by_head && req.matrix.is_some() {
            return Err(not_in_cluster(
                "rank_by HEAD with a packed matrix (send `queries`)",
            ));
        }
        let k = req.k as usize;
        let packed_form = req.matrix.is_some();
        let with_subjects = req.with_subjects;
        let min_seq = req.min_seq;
        let shards = (0..view.entry.shards).map(|s| (s, req.clone())).collect();
        let parts = f
            .fan(&view, shards, min_seq, deadline, |f, t, r| {
                Box::pin(async move {
                    match t {
                        Target::Local => f.search_shard(r).await,
                        Target::Remote(mut c) => c.search(r).await,
                    }
                })
            })
            .await?;
        if packed_form {
            let lists: Vec<Vec<Vec<pb::Hit>>> =
                parts.into_iter().map(|(_, r)| unflatten(r)).collect();
            let merged = merge(lists, k, |h| (h.distance, h.id));
            return Ok(Response::new(flatten(merged, k, with_subjects)));
        }
        let lists: Vec<Vec<Vec<pb::Hit>>> = parts
            .into_iter()
            .map(|(_, r)| r.results.into_iter().map(|x| x.hits).collect())
            .collect();
        let merged = merge(lists, k, |h| (h.rank_key.unwrap_or(h.distance), h.id));
        Ok(Response::new(pb::SearchResponse {
            results: merged
                .into_iter()
                .map(|hits| pb::SearchResult { hits })
                .collect(),
            ..pb::SearchResponse::default()
        }))
    }

    async fn identify(
        &self,
        request: Request<pb::IdentifyRequest>,
    ) -> Result<Response<pb::IdentifyResponse>, Status> {
        let f = self.0.clone();
        if Front::is_shard_call(&request) {
            return f.identify_shard(request).await;
        }
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        let view = f.view(&req.gallery)?;
        Front::check_model(&view, &req.gallery, &req.model)?;
        Front::check_decision(&view, req.min_probability, req.max_distance)?;
        let k = req.k as usize;
        let min_seq = req.min_seq;
        let shards = (0..view.entry.shards).map(|s| (s, req.clone())).collect();
        // The open-set decision is for the whole gallery's subjects.
        let subjects = view.subjects;
        let parts = f
            .fan(&view, shards, min_seq, deadline, move |f, t, mut r| {
                r.metadata_mut().insert(
                    crate::service::GALLERY_SUBJECTS_HEADER,
                    MetadataValue::from(subjects),
                );
                Box::pin(async move {
                    match t {
                        Target::Local => f.identify_shard(r).await,
                        Target::Remote(mut c) => c.identify(r).await,
                    }
                })
            })
            .await?;
        // Each candidate keeps whether its shard found it known (the
        // threshold is the request's, the same on every shard).
        let lists: Vec<Vec<Vec<(pb::Candidate, bool)>>> = parts
            .into_iter()
            .map(|(_, r)| {
                r.results
                    .into_iter()
                    .map(|i| {
                        let known = i.known;
                        i.candidates
                            .into_iter()
                            .enumerate()
                            .map(|(j, c)| (c, known && j == 0))
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let merged = merge(lists, k, |(c, _)| (c.rank_key.unwrap_or(c.distance), c.id));
        Ok(Response::new(pb::IdentifyResponse {
            results: merged
                .into_iter()
                .map(|cs| {
                    let known = cs.first().is_some_and(|(_, known)| *known);
                    pb::Identification {
                        known,
                        subject: if known {
                            cs[0].0.subject.clone()
                        } else {
                            String::new()
                        },
                        candidates: cs.into_iter().map(|(c, _)| c).collect(),
                    }
                })
                .collect(),
        }))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let f = self.0.clone();
        if Front::is_shard_call(&request) {
            return f.verify_shard(request).await;
        }
        let deadline = deadline_of(&request);
        let mut req = request.into_inner();
        let view = f.view(&req.gallery)?;
        Front::check_model(&view, &req.gallery, &req.model)?;
        Front::check_decision(&view, req.min_probability, req.max_distance)?;
        let pairs = f.verify_pairs_in(&mut req, view.entry.dim)?;
        // Route each pair: a subject to its shard, an id to the shard that
        // holds it, a vector to shard 0 (no gallery data is involved).
        let id_pairs: Vec<u64> = pairs
            .iter()
            .filter_map(|p| match p.b {
                Some(pb::verify_pair::B::Id(id)) => Some(id),
                _ => None,
            })
            .collect();
        let holders = if id_pairs.is_empty() {
            HashMap::new()
        } else {
            let get = pb::GetRequest {
                gallery: req.gallery.clone(),
                ids: id_pairs,
                min_seq: req.min_seq,
            };
            f.get_ids(&view, &get, deadline)
                .await?
                .into_iter()
                .map(|(id, e)| (id, shard_of(&e.subject, view.entry.shards)))
                .collect()
        };
        let mut routed: HashMap<u32, Vec<(usize, pb::VerifyPair)>> = HashMap::new();
        for (i, p) in pairs.into_iter().enumerate() {
            let k = match &p.b {
                Some(pb::verify_pair::B::Subject(s)) => shard_of(s, view.entry.shards),
                Some(pb::verify_pair::B::Id(id)) => match holders.get(id) {
                    Some(k) => *k,
                    None => {
                        return Err(Status::not_found(format!(
                            "pairs[{i}]: gallery {:?} has no embedding with id {id}",
                            req.gallery
                        )));
                    }
                },
                _ => 0,
            };
            routed.entry(k).or_default().push((i, p));
        }
        let n: usize = routed.values().map(Vec::len).sum();
        let positions: HashMap<u32, Vec<usize>> = routed
            .iter()
            .map(|(k, v)| (*k, v.iter().map(|(i, _)| *i).collect()))
            .collect();
        let shards = routed
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    pb::VerifyRequest {
                        gallery: req.gallery.clone(),
                        pairs: v.into_iter().map(|(_, p)| p).collect(),
                        max_distance: req.max_distance,
                        min_probability: req.min_probability,
                        min_seq: req.min_seq,
                        ..pb::VerifyRequest::default()
                    },
                )
            })
            .collect();
        let parts = f
            .fan(&view, shards, req.min_seq, deadline, |f, t, r| {
                Box::pin(async move {
                    match t {
                        Target::Local => f.verify_shard(r).await,
                        Target::Remote(mut c) => c.verify(r).await,
                    }
                })
            })
            .await?;
        let mut verdicts: Vec<Option<pb::Verdict>> = (0..n).map(|_| None).collect();
        for (k, r) in parts {
            for (pos, v) in positions[&k].iter().zip(r.verdicts) {
                verdicts[*pos] = Some(v);
            }
        }
        Ok(Response::new(pb::VerifyResponse {
            verdicts: verdicts
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect(),
        }))
    }

    async fn train_head(
        &self,
        request: Request<pb::TrainHeadRequest>,
    ) -> Result<Response<pb::HeadInfo>, Status> {
        let deadline = deadline_of(&request).max(Instant::now() + Duration::from_secs(600));
        let req = request.into_inner();
        let f = self.0.clone();
        let view = f.view(&req.gallery)?;
        let head = f.train_across_shards(&view, &req).await?;
        let rev = f
            .node
            .catalog()
            .put_head(&req.gallery, &head.encode())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(gallery = %req.gallery, revision = rev, auc = head.auc, "cluster head trained");
        f.wait_head(&req.gallery, &view, rev, deadline).await?;
        let subjects = f.view(&req.gallery).map_or(0, |v| v.subjects);
        Ok(Response::new(crate::convert::head_out(
            Some(&head),
            subjects,
        )))
    }

    async fn get_head(
        &self,
        request: Request<pb::GetHeadRequest>,
    ) -> Result<Response<pb::HeadInfo>, Status> {
        let name = request.into_inner().gallery;
        let f = &self.0;
        let view = f.view(&name)?;
        let head = f
            .node
            .catalog()
            .head(&name)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .map(|(_, bytes)| {
                visage_engine::HeadInfo::decode(std::path::Path::new("catalog head"), &bytes)
            })
            .transpose()
            .map_err(ApiError::from)?;
        Ok(Response::new(crate::convert::head_out(
            head.as_ref(),
            view.subjects,
        )))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        let f = self.0.clone();
        if Front::is_shard_call(&request) {
            return f.compact_shard(request).await;
        }
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        let (before, after) = f
            .every_replica(
                &req.gallery,
                deadline,
                req.clone(),
                |f, t, r| {
                    Box::pin(async move {
                        match t {
                            Target::Local => f.compact_shard(r).await,
                            Target::Remote(mut c) => c.compact(r).await,
                        }
                    })
                },
                |r: &pb::CompactResponse| (r.before, r.after),
            )
            .await?;
        Ok(Response::new(pb::CompactResponse {
            before: Some(before),
            after: Some(after),
        }))
    }

    async fn flush(
        &self,
        request: Request<pb::FlushRequest>,
    ) -> Result<Response<pb::FlushResponse>, Status> {
        let f = self.0.clone();
        if Front::is_shard_call(&request) {
            return f.flush_shard(request).await;
        }
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        let (before, after) = f
            .every_replica(
                &req.gallery,
                deadline,
                req.clone(),
                |f, t, r| {
                    Box::pin(async move {
                        match t {
                            Target::Local => f.flush_shard(r).await,
                            Target::Remote(mut c) => c.flush(r).await,
                        }
                    })
                },
                |r: &pb::FlushResponse| (r.before, r.after),
            )
            .await?;
        Ok(Response::new(pb::FlushResponse {
            before: Some(before),
            after: Some(after),
        }))
    }

    async fn backup(
        &self,
        _request: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::BackupResponse>, Status> {
        Err(Status::failed_precondition(
            "Backup is not available in cluster mode (the log and the replicas are the cluster's copies; back up single-node galleries)",
        ))
    }

    async fn import(
        &self,
        _request: Request<pb::ImportRequest>,
    ) -> Result<Response<pb::ImportResponse>, Status> {
        Err(Status::failed_precondition(
            "Import is not available in cluster mode (every row must pass through the gallery's log; insert in batches)",
        ))
    }

    async fn restore(
        &self,
        _request: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::RestoreResponse>, Status> {
        Err(Status::failed_precondition(
            "Restore is not available in cluster mode (restore into a single-node server)",
        ))
    }

    type CopyShardStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::ShardFileChunk, Status>>;

    async fn copy_shard(
        &self,
        request: Request<pb::CopyShardRequest>,
    ) -> Result<Response<Self::CopyShardStream>, Status> {
        let req = request.into_inner();
        let f = &self.0;
        let view = f.view(&req.gallery)?;
        let k = req.shard;
        if view.replica.as_ref().is_none_or(|r| r.shard(k).is_none()) {
            return Err(Status::unavailable(format!(
                "node {} holds no live replica of shard {k} of {:?}",
                f.node.id(),
                req.gallery
            )));
        }
        let local = shard_gallery(&req.gallery, k);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("send-{local}-{stamp}");
        let engine = f.node.engine().clone();
        let (files, root) = {
            let (engine, name) = (engine.clone(), name.clone());
            tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
                let opts = visage_engine::BackupOptions::default();
                engine.backup(&local, &name, &opts)?;
                let files = engine.backup_files(&name)?;
                let root = engine
                    .backup_root()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_default();
                Ok((files, root))
            })
            .await
            .map_err(|e| Status::internal(format!("copy task: {e}")))??
        };
        tracing::info!(gallery = %req.gallery, shard = k, files = files.len(), "sending a copy of a shard");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let send = || -> Result<(), Status> {
                for path in &files {
                    let full = root.join(path);
                    let mut file = std::fs::File::open(&full)
                        .map_err(|e| Status::internal(format!("{}: {e}", full.display())))?;
                    let mut offset = 0u64;
                    loop {
                        let mut data = vec![0u8; 1 << 20];
                        let n = file
                            .read(&mut data)
                            .map_err(|e| Status::internal(format!("{}: {e}", full.display())))?;
                        // An empty file is sent as one empty chunk.
                        if n == 0 && offset > 0 {
                            break;
                        }
                        data.truncate(n);
                        let chunk = pb::ShardFileChunk {
                            path: path.clone(),
                            offset,
                            data,
                        };
                        if tx.blocking_send(Ok(chunk)).is_err() {
                            return Ok(());
                        }
                        offset += n as u64;
                        if n == 0 {
                            break;
                        }
                    }
                }
                Ok(())
            };
            if let Err(s) = send() {
                let _ = tx.blocking_send(Err(s));
            }
            if let Err(e) = engine.remove_backup(&name) {
                tracing::warn!(backup = %name, error = %e, "could not remove a shard copy's backup");
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let f = &self.0;
        let nodes = f.node.nodes();
        let mut galleries = Vec::new();
        for (name, view) in f.node.galleries() {
            let (first, last) = f.node.log().bounds(&name).await.unwrap_or((0, 0));
            let progress: HashMap<String, visage_cluster::catalog::Progress> = f
                .node
                .catalog()
                .progress(&name)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?
                .into_iter()
                .collect();
            let mut replicas = Vec::new();
            for k in 0..view.entry.shards {
                for n in view.entry.nodes_of(k) {
                    let (applied, flushed) = progress
                        .get(n)
                        .and_then(|p| p.of(k))
                        .map_or((0, 0), |p| (p.applied, p.flushed));
                    replicas.push(pb::ShardReplica {
                        shard: k,
                        node_id: n.clone(),
                        live: nodes.contains_key(n),
                        applied_seq: applied,
                        flushed_seq: flushed,
                        lag: last.saturating_sub(applied),
                    });
                }
            }
            let erasures = f
                .node
                .catalog()
                .erasures(&name)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?
                .into_iter()
                .map(|e| {
                    use visage_cluster::catalog::ErasureState;
                    let progress = &progress;
                    let (state, waiting_for) = match e.state {
                        ErasureState::Replicas => (
                            "replicas",
                            (0..view.entry.shards)
                                .flat_map(|k| {
                                    view.entry.nodes_of(k).iter().filter_map(move |n| {
                                        let clean = progress
                                            .get(n)
                                            .and_then(|p| p.of(k))
                                            .is_some_and(|p| p.clean >= e.seq);
                                        (!clean).then(|| format!("shard {k} on node {n}"))
                                    })
                                })
                                .collect(),
                        ),
                        ErasureState::LogMembers => ("log", e.lagging.clone()),
                        ErasureState::Done => ("done", Vec::new()),
                    };
                    pb::ErasureStatus {
                        seq: e.seq,
                        subjects: e.subjects_count,
                        ids: e.ids_count,
                        state: state.into(),
                        waiting_for,
                        messages_erased: e.messages_erased,
                    }
                })
                .collect();
            galleries.push(pb::ClusterGallery {
                name,
                shards: view.entry.shards,
                log_first_seq: first,
                log_last_seq: last,
                replicas,
                erasures,
            });
        }
        Ok(Response::new(pb::ClusterStatusResponse {
            node_id: f.node.id().to_owned(),
            nodes: nodes
                .into_iter()
                .map(|(id, e)| pb::ClusterNode {
                    id,
                    advertise: e.advertise,
                })
                .collect(),
            galleries,
        }))
    }
}

impl Front {
    /// The embeddings of `req.ids` held by any shard, by id.
    async fn get_ids(
        self: &Arc<Self>,
        view: &GalleryView,
        req: &pb::GetRequest,
        deadline: Instant,
    ) -> Result<HashMap<u64, pb::Embedding>, Status> {
        let shards = (0..view.entry.shards).map(|k| (k, req.clone())).collect();
        let parts = self
            .fan(view, shards, req.min_seq, deadline, |f, t, r| {
                Box::pin(async move {
                    match t {
                        Target::Local => f.get_shard(r).await,
                        Target::Remote(mut c) => c.get(r).await,
                    }
                })
            })
            .await?;
        Ok(parts
            .into_iter()
            .flat_map(|(_, r)| r.embeddings)
            .map(|e| (e.id, e))
            .collect())
    }

    /// Every live row of the gallery, one shard after another, each from
    /// one live replica (one snapshot a shard), in batches; an error ends
    /// the stream.
    fn export_rows(
        self: &Arc<Self>,
        view: GalleryView,
        req: pb::ExportRequest,
    ) -> tokio::sync::mpsc::Receiver<Result<pb::ExportBatch, Status>> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let me = self.clone();
        tokio::spawn(async move {
            for k in 0..view.entry.shards {
                let mut last = String::from("no live replica");
                let mut done = false;
                for (node, addr) in me.targets(&view, k) {
                    let mut r = Request::new(req.clone());
                    r.metadata_mut()
                        .insert(SHARD_HEADER, MetadataValue::from(k));
                    let stream = match &addr {
                        None => {
                            let f = me.clone();
                            match f.local_shard(&mut r).await {
                                Ok(()) => f.local.export(r).await.map(Response::into_inner),
                                Err(s) => Err(s),
                            }
                            .map(|s| {
                                Box::pin(s)
                                    as Pin<
                                        Box<
                                            dyn tokio_stream::Stream<
                                                    Item = Result<pb::ExportBatch, Status>,
                                                > + Send,
                                        >,
                                    >
                            })
                        }
                        Some(a) => match me.remote(a, &mut r) {
                            Ok(mut c) => c.export(r).await.map(|s| {
                                Box::pin(s.into_inner())
                                    as Pin<
                                        Box<
                                            dyn tokio_stream::Stream<
                                                    Item = Result<pb::ExportBatch, Status>,
                                                > + Send,
                                        >,
                                    >
                            }),
                            Err(s) => Err(s),
                        },
                    };
                    let mut stream = match stream {
                        Ok(s) => s,
                        Err(s) => {
                            last = format!("{node}: {}", s.message());
                            continue;
                        }
                    };
                    use tokio_stream::StreamExt;
                    while let Some(b) = stream.next().await {
                        let failed = b.is_err();
                        if tx.send(b).await.is_err() || failed {
                            return;
                        }
                    }
                    done = true;
                    break;
                }
                if !done {
                    let _ = tx
                        .send(Err(Status::unavailable(format!(
                            "shard {k}: no replica could export it ({last})"
                        ))))
                        .await;
                    return;
                }
            }
        });
        rx
    }

    /// Train a head on every row of the gallery: the shards' rows are
    /// gathered into a scratch gallery on this node, trained as a single
    /// node trains (pairs drawn by its search), and the scratch gallery is
    /// dropped.
    async fn train_across_shards(
        self: &Arc<Self>,
        view: &GalleryView,
        req: &pb::TrainHeadRequest,
    ) -> Result<visage_engine::HeadInfo, Status> {
        let rows: u64 = self
            .info(&req.gallery, Instant::now() + DEFAULT_DEADLINE)
            .await?
            .live;
        if rows > MAX_TRAIN_ROWS {
            return Err(Status::failed_precondition(format!(
                "gallery {:?} has {rows} rows; training a cluster's head gathers them on one node, at most {MAX_TRAIN_ROWS} for now",
                req.gallery
            )));
        }
        let engine = self.node.engine().clone();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let scratch = format!("headtrain-{stamp}");
        let spec = spec_of(&view.entry);
        let g = {
            let (engine, scratch) = (engine.clone(), scratch.clone());
            tokio::task::spawn_blocking(move || engine.create_gallery_with(&scratch, &spec))
                .await
                .map_err(|e| Status::internal(format!("task: {e}")))?
                .map_err(ApiError::from)?
        };
        let result = async {
            let mut rx = self.export_rows(
                view.clone(),
                pb::ExportRequest {
                    gallery: req.gallery.clone(),
                    batch_rows: 0,
                },
            );
            while let Some(b) = rx.recv().await {
                let b = b?;
                let values: Vec<f32> = b
                    .matrix
                    .as_ref()
                    .map(|m| packed::values("matrix", m).map(|v| v.into_owned()))
                    .transpose()?
                    .unwrap_or_default();
                let g = g.clone();
                tokio::task::spawn_blocking(move || {
                    g.insert_rows(Some(&b.ids), &b.subjects, &values)
                })
                .await
                .map_err(|e| Status::internal(format!("task: {e}")))?
                .map_err(ApiError::from)?;
            }
            let opts = crate::convert::train_options_in(req);
            let g = g.clone();
            tokio::task::spawn_blocking(move || g.train_head(&opts))
                .await
                .map_err(|e| Status::internal(format!("task: {e}")))?
                .map_err(|e| Status::from(ApiError::from(e)))
        }
        .await;
        let cleanup = tokio::task::spawn_blocking(move || engine.drop_gallery(&scratch)).await;
        if let Ok(Err(e)) = cleanup {
            tracing::warn!(error = %e, "could not drop the head's scratch gallery");
        }
        result
    }

    /// Wait until every live node assigned a shard of `name` has installed
    /// head revision `rev`.
    async fn wait_head(
        &self,
        name: &str,
        view: &GalleryView,
        rev: i64,
        deadline: Instant,
    ) -> Result<(), Status> {
        loop {
            let live = self.node.nodes();
            let progress: HashMap<String, visage_cluster::catalog::Progress> = self
                .node
                .catalog()
                .progress(name)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?
                .into_iter()
                .collect();
            let missing: Vec<String> = view
                .entry
                .replicas
                .iter()
                .flatten()
                .filter(|n| live.contains_key(*n))
                .filter(|n| {
                    !progress
                        .get(*n)
                        .is_some_and(|p| p.shards.iter().all(|s| s.head >= rev))
                })
                .cloned()
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Status::unavailable(format!(
                    "the head is stored, but nodes {} have not installed it yet",
                    missing.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The pairs of a Verify request, the packed form unpacked.
    fn verify_pairs_in(
        &self,
        req: &mut pb::VerifyRequest,
        dim: usize,
    ) -> Result<Vec<pb::VerifyPair>, Status> {
        packed::exclusive("pairs", req.pairs.len(), req.matrix.as_ref())?;
        let Some(pairs) = packed::verify_pairs(req, dim)? else {
            return Ok(std::mem::take(&mut req.pairs));
        };
        Ok(pairs
            .into_iter()
            .map(|p| pb::VerifyPair {
                a: Some(pb::Vector { values: p.a }),
                b: Some(match p.b {
                    visage_engine::VerifyTarget::Vector(v) => {
                        pb::verify_pair::B::Vector(pb::Vector { values: v })
                    }
                    visage_engine::VerifyTarget::Id(id) => pb::verify_pair::B::Id(id),
                    visage_engine::VerifyTarget::Subject(s) => pb::verify_pair::B::Subject(s),
                }),
            })
            .collect())
    }

    /// Run a maintenance call on every live replica of every shard of
    /// `name` (each copy compacts or flushes its own files); the statistics
    /// before and after are summed over one replica of each shard.
    async fn every_replica<Req, Resp, F>(
        self: &Arc<Self>,
        name: &str,
        deadline: Instant,
        req: Req,
        call: F,
        stats: impl Fn(&Resp) -> (Option<pb::GalleryStats>, Option<pb::GalleryStats>),
    ) -> Result<(pb::GalleryStats, pb::GalleryStats), Status>
    where
        Req: Clone + Send + 'static,
        Resp: Send + 'static,
        F: Fn(Arc<Front>, Target, Request<Req>) -> Boxed<Resp> + Clone + Send + Sync + 'static,
    {
        let view = self.view(name)?;
        let nodes = self.node.nodes();
        let me = self.node.id().to_owned();
        let mut tasks = Vec::new();
        for k in 0..view.entry.shards {
            for n in view.entry.nodes_of(k) {
                let addr = if *n == me {
                    None
                } else if let Some(e) = nodes.get(n) {
                    Some(e.advertise.clone())
                } else {
                    continue;
                };
                let mut r = Request::new(req.clone());
                r.set_timeout(deadline.saturating_duration_since(Instant::now()));
                r.metadata_mut()
                    .insert(SHARD_HEADER, MetadataValue::from(k));
                let target = match addr {
                    None => Target::Local,
                    Some(a) => Target::Remote(self.remote(&a, &mut r)?),
                };
                let fut = call(self.clone(), target, r);
                tasks.push((k, n.clone(), tokio::spawn(fut)));
            }
        }
        let mut before = pb::GalleryStats::default();
        let mut after = pb::GalleryStats::default();
        let mut counted = std::collections::HashSet::new();
        let mut unreachable = Vec::new();
        for (k, n, t) in tasks {
            let r = match t
                .await
                .map_err(|e| Status::internal(format!("task: {e}")))?
            {
                Ok(r) => r.into_inner(),
                // A node that just died (its lease not yet expired): its
                // copy is brought up to date when it comes back.
                Err(s) if s.code() == Code::Unavailable => {
                    tracing::warn!(node = %n, shard = k, error = %s.message(), "a replica did not answer a maintenance call");
                    unreachable.push(format!("node {n}, shard {k}: {}", s.message()));
                    continue;
                }
                Err(s) => {
                    return Err(Status::new(
                        s.code(),
                        format!("node {n}, shard {k}: {}", s.message()),
                    ));
                }
            };
            if counted.insert(k) {
                let (b, a) = stats(&r);
                for (sum, x) in [(&mut before, b), (&mut after, a)] {
                    if let Some(x) = x {
                        sum.live += x.live;
                        sum.deleted += x.deleted;
                        sum.subjects += x.subjects;
                        sum.segments += x.segments;
                        sum.memtable_rows += x.memtable_rows;
                        sum.bytes_on_disk += x.bytes_on_disk;
                    }
                }
            }
        }
        if let Some(k) = (0..view.entry.shards).find(|k| !counted.contains(k)) {
            return Err(Status::unavailable(format!(
                "no replica of shard {k} answered ({})",
                unreachable.join("; ")
            )));
        }
        Ok((before, after))
    }
}

/// Fetches peers' copies of shards over gRPC (`CopyShard`), for a node
/// whose log position was trimmed.
pub struct PeerCopies {
    front: std::sync::Weak<Front>,
}

impl PeerCopies {
    /// Copies fetched with `front`'s channels and cluster key.
    pub fn new(front: &Arc<Front>) -> PeerCopies {
        PeerCopies {
            front: Arc::downgrade(front),
        }
    }
}

/// Where chunk path `path` (relative to a backup root, as the sender's
/// `Engine::backup_files` names it) goes under this node's backup `into`:
/// `NAME/FILE` → `into/FILE`, `erasures/FILE` stays. Anything else (more
/// levels, `..`, odd names) is refused.
fn copy_target(path: &str, into: &str) -> Option<String> {
    let (dir, file) = path.split_once('/')?;
    if !visage_engine::format::plain_file_name(file) || file.contains('/') {
        return None;
    }
    if dir == "erasures" {
        Some(format!("erasures/{file}"))
    } else if visage_engine::format::plain_file_name(dir) {
        Some(format!("{into}/{file}"))
    } else {
        None
    }
}

impl visage_cluster::node::ShardSource for PeerCopies {
    fn fetch(
        &self,
        addr: String,
        gallery: String,
        shard: u32,
        into: String,
    ) -> Pin<Box<dyn Future<Output = visage_cluster::Result<()>> + Send>> {
        let front = self.front.clone();
        Box::pin(async move {
            let err = |e: String| visage_cluster::Error::Nats(format!("copy from {addr}: {e}"));
            let front = front
                .upgrade()
                .ok_or_else(|| err("the server stopped".into()))?;
            let root = front
                .node
                .engine()
                .backup_root()
                .map(std::path::Path::to_path_buf)
                .ok_or_else(|| err("no backup root is set".into()))?;
            let mut r = Request::new(pb::CopyShardRequest { gallery, shard });
            let mut c = front
                .remote(&addr, &mut r)
                .map_err(|s| err(s.message().to_owned()))?;
            let mut stream = c
                .copy_shard(r)
                .await
                .map_err(|s| err(s.message().to_owned()))?
                .into_inner();
            let mut open: Option<(String, tokio::fs::File, u64)> = None;
            tokio::fs::create_dir_all(root.join(&into))
                .await
                .map_err(|e| err(e.to_string()))?;
            tokio::fs::create_dir_all(root.join("erasures"))
                .await
                .map_err(|e| err(e.to_string()))?;
            use tokio::io::AsyncWriteExt;
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|s| err(s.message().to_owned()))?
            {
                let target = copy_target(&chunk.path, &into)
                    .ok_or_else(|| err(format!("refused file name {:?}", chunk.path)))?;
                if open.as_ref().is_none_or(|(p, _, _)| *p != target) {
                    if let Some((_, f, _)) = open.take() {
                        f.sync_all().await.map_err(|e| err(e.to_string()))?;
                    }
                    if chunk.offset != 0 {
                        return Err(err(format!("{} does not start at 0", chunk.path)));
                    }
                    let f = tokio::fs::File::create(root.join(&target))
                        .await
                        .map_err(|e| err(e.to_string()))?;
                    open = Some((target.clone(), f, 0));
                }
                if let Some((_, f, at)) = open.as_mut() {
                    if chunk.offset != *at {
                        return Err(err(format!(
                            "{}: a chunk at {} where {} was due",
                            chunk.path, chunk.offset, at
                        )));
                    }
                    f.write_all(&chunk.data)
                        .await
                        .map_err(|e| err(e.to_string()))?;
                    *at += chunk.data.len() as u64;
                }
            }
            if let Some((_, f, _)) = open.take() {
                f.sync_all().await.map_err(|e| err(e.to_string()))?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[test]
    fn copied_files_stay_in_their_backup() {
        assert_eq!(
            copy_target("send-doors-s1-5/seg-000001.vseg", "copy-x"),
            Some("copy-x/seg-000001.vseg".into())
        );
        assert_eq!(
            copy_target("erasures/ab12.log", "copy-x"),
            Some("erasures/ab12.log".into())
        );
        for bad in [
            "../x",
            "a/../b",
            "a/b/c",
            "/etc/passwd",
            "a/.hidden",
            "noslash",
        ] {
            assert_eq!(copy_target(bad, "copy-x"), None, "{bad}");
        }
    }

    #[test]
    fn shard_names_are_reserved() {
        assert!(shard_like("doors-s3"));
        assert!(shard_like("a-s12"));
        assert!(!shard_like("doors-s"));
        assert!(!shard_like("doors-sx"));
        assert!(!shard_like("doors"));
    }

    #[test]
    fn merges_keep_the_k_best_by_distance_then_id() {
        let hit = |id: u64, d: f32| pb::Hit {
            id,
            distance: d,
            ..pb::Hit::default()
        };
        let a = vec![vec![hit(4, 0.5), hit(9, 1.0)], vec![hit(1, 0.1)]];
        let b = vec![vec![hit(2, 0.5), hit(3, 0.7)], vec![]];
        let m = merge(vec![a, b], 3, |h| (h.distance, h.id));
        let ids: Vec<Vec<u64>> = m.iter().map(|h| h.iter().map(|x| x.id).collect()).collect();
        assert_eq!(ids, vec![vec![2, 4, 3], vec![1]]);
        let flat = flatten(m.clone(), 3, true);
        assert_eq!(flat.counts, vec![3, 1]);
        assert_eq!(flat.ids, vec![2, 4, 3, 1, 0, 0]);
        assert_eq!(unflatten(flat), m);
    }
}

//! Async, typed Rust client for a visage server.
//!
//! ```no_run
//! # async fn demo() -> Result<(), visage_client::Error> {
//! use visage_client::{Client, Embedding};
//!
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! client.create_gallery("staff").await?;
//! let staff = client.gallery("staff");
//! staff
//!     .insert(&[Embedding { id: 1, subject: "emp-00123".into(), vector: vec![0.1; 128] }])
//!     .await?;
//! let hits = staff.search(&[vec![0.1f32; 128]], 10).await?; // exact top-10 per query
//! let who = staff.identify(&[vec![0.1f32; 128]], 5).await?; // 5 best distinct subjects, known or not
//! staff.delete(&[], &["emp-00123".to_string()]).await?; // a person leaves
//! staff.compact().await?; // ... and their vectors leave the disk
//! # Ok(()) }
//! ```
//!
//! Over TLS, with an API key ([`Client::connect_with`]):
//!
//! ```no_run
//! # async fn demo() -> Result<(), visage_client::Error> {
//! use visage_client::{Client, ConnectOptions};
//!
//! let client = Client::connect_with(
//!     "https://faces.internal:50051",
//!     ConnectOptions {
//!         ca_cert_pem: Some(std::fs::read("ca.pem").expect("CA certificate")),
//!         api_key: std::env::var("VISAGE_API_KEY").ok(),
//!         ..ConnectOptions::default()
//!     },
//! )
//! .await?;
//! # Ok(()) }
//! ```
//!
//! A gallery of another dimension, for a model compared by cosine, with the
//! model pinned ([`Client::create_gallery_with`], [`Gallery::with_model`]):
//!
//! ```no_run
//! # async fn demo() -> Result<(), visage_client::Error> {
//! use visage_client::{Client, GallerySpec};
//!
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let model = "arcface-r100@insightface-0.7.3";
//! let spec = GallerySpec { dim: 512, model: model.into(), normalize: true, ..GallerySpec::default() };
//! client.create_gallery_with("staff512", &spec).await?;
//! // Every request through this handle names the model: vectors of another
//! // model are refused (FAILED_PRECONDITION), not mixed in.
//! let staff = client.gallery("staff512").with_model(model);
//! let hits = staff.search(&[vec![0.1f32; 512]], 10).await?;
//! let cosine = hits[0].first().and_then(|h| h.similarity); // 1 - distance / 2
//! # Ok(()) }
//! ```
//!
//! In cluster mode, a gallery is created split into shards, each held by
//! some replicas ([`GallerySpec::shards`], [`GallerySpec::replicas`]). A
//! write is acknowledged once the gallery's replicated log holds it, and
//! reports its position there ([`InsertOutcome::seq`],
//! [`DeleteOutcome::seq`]); reads through a handle given that position
//! ([`Gallery::with_min_seq`], or [`SearchOptions::min_seq`]) are answered
//! only by replicas that have applied it, so they see the write.
//! [`Client::cluster_status`] shows the nodes and each replica's progress.
//! A single node reports `seq` 0 and ignores `min_seq`, so the same code
//! runs against both:
//!
//! ```no_run
//! # async fn demo() -> Result<(), visage_client::Error> {
//! use visage_client::{Client, Embedding, GallerySpec};
//!
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let spec = GallerySpec { shards: 4, replicas: 2, ..GallerySpec::default() };
//! client.create_gallery_with("staff", &spec).await?;
//! let staff = client.gallery("staff");
//! let e = Embedding { id: 1, subject: "emp-00123".into(), vector: vec![0.1; 128] };
//! let written = staff.insert(&[e]).await?;
//! // Read your write: wait for replicas that applied the log up to it.
//! let found = staff.clone().with_min_seq(written.seq).get(&[1]).await?;
//! let removed = staff.delete_outcome(&[1], &[]).await?;
//! let gone = staff.with_min_seq(removed.seq).get(&[1]).await?; // empty
//! for g in client.cluster_status().await?.galleries {
//!     for r in &g.replicas {
//!         println!("{} shard {} on {}: lag {}", g.name, r.shard, r.node_id, r.lag);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Results are the wire messages of [`proto`] (plain structs: [`Hit`],
//! [`Identification`], [`Verdict`], [`GalleryInfo`], [`ClusterStatus`] ...). Errors from the
//! server keep their gRPC status ([`Error::code`]) and print as one line,
//! `NOT_FOUND: gallery "x" does not exist`.
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod npy;

use std::fmt;
use std::time::Duration;
use tokio::task::JoinSet;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};
use visage_proto::error_chain;
use visage_proto::v1::visage_client::VisageClient;

pub use proto::{
    Candidate, ClusterGallery, ClusterNode, Embedding, ErasureStatus, GalleryInfo, GalleryStats,
    HeadInfo, Hit, Identification, ShardReplica, Verdict,
};
/// What [`Client::cluster_status`] returns: the answering node, the live
/// nodes, and each gallery's log and shard replicas.
pub type ClusterStatus = proto::ClusterStatusResponse;
/// The wire messages of `visage.v1`.
pub use visage_proto::v1 as proto;

/// Default bytes of vectors per Insert request in [`Gallery::insert`] (see
/// [`default_batch`]).
pub const DEFAULT_BATCH_BYTES: usize = 4 << 20;

/// Embeddings per Insert request by default for vectors of `dim` values:
/// [`DEFAULT_BATCH_BYTES`] of vectors (8,192 of 128 values, 2,048 of 512,
/// 512 of 2,048), within every gallery's per-call limit. Fewer, larger
/// requests keep the server's group commits full.
pub fn default_batch(dim: usize) -> usize {
    (DEFAULT_BATCH_BYTES / (4 * dim.max(1))).max(1)
}
/// Default Insert requests in flight at once in [`Gallery::insert`].
pub const DEFAULT_CONCURRENCY: usize = 4;

/// Largest response the client accepts (a Get of 100,000 embeddings is about 53 MB).
const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// Everything a client call can fail with.
#[derive(Debug)]
pub enum Error {
    /// The server address is malformed or the server cannot be reached.
    Connect {
        /// The address tried.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The client's own settings are unusable (a CA certificate for a plaintext
    /// address, an API key that cannot be sent as metadata ...).
    Config(String),
    /// The server answered with an error status.
    Status(Status),
    /// One batch of a chunked insert failed (other batches may have been committed).
    Insert {
        /// Position of the batch's first embedding in the caller's input.
        offset: usize,
        /// Embeddings in the failed batch.
        len: usize,
        /// Embeddings of other batches acknowledged before the failure was seen.
        committed: u64,
        /// Cluster mode: the highest log position of those acknowledged
        /// batches (pass it as `min_seq` to read them); 0 on a single node
        /// or when none was acknowledged.
        seq: u64,
        /// The server's answer, with positions made relative to the caller's input.
        status: Status,
    },
}

impl Error {
    /// The gRPC status code, if the server answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Connect { .. } | Error::Config(_) => None,
            Error::Status(s) | Error::Insert { status: s, .. } => Some(s.code()),
        }
    }

    /// The server's message, if it answered.
    pub fn message(&self) -> Option<&str> {
        match self {
            Error::Connect { .. } | Error::Config(_) => None,
            Error::Status(s) | Error::Insert { status: s, .. } => Some(s.message()),
        }
    }
}

/// The canonical gRPC name of a status code (`NOT_FOUND`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn status_line(s: &Status) -> String {
    // Transport failures arrive as UNAVAILABLE/UNKNOWN with the cause in the source.
    let mut msg = s.message().to_owned();
    if msg.is_empty() {
        msg = "(no message)".into();
    }
    if matches!(s.code(), Code::Unavailable | Code::Unknown)
        && let Some(src) = std::error::Error::source(s)
    {
        let src = src.to_string();
        if !msg.contains(&src) {
            msg = format!("{msg}: {src}");
        }
    }
    // A plaintext client against a TLS server: the server reads the HTTP/2
    // preface as a bad TLS record and closes, and depending on timing the
    // client reports that as INTERNAL (the TLS alert read as a frame),
    // CANCELLED, UNKNOWN or UNAVAILABLE. What they share is that the channel
    // made the status, not the server.
    if transport_failure(s) {
        msg.push_str(TLS_HINT);
    }
    format!("{}: {msg}", code_name(s.code()))
}

const TLS_HINT: &str = " (if the server uses TLS, connect with an https:// address)";

/// Whether the channel made `s` because the connection failed or closed: tonic
/// keeps the transport error as its source. A status the server sent (even
/// CANCELLED or UNAVAILABLE) has no source.
fn transport_failure(s: &Status) -> bool {
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        if e.is::<tonic::transport::Error>() {
            return true;
        }
        src = e.source();
    }
    false
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { url, reason } => {
                let hint = if reason.contains("certificate") {
                    "is the CA certificate given (--tls-ca) the one that signed the server's, \
                     and does the server's certificate carry the host name (or --tls-domain)?"
                } else if url.starts_with("http://") && !reason.contains("refused") {
                    // Something listens there: a TLS server closes on a plaintext client.
                    "is visage-server running there? if it uses TLS, connect with an https:// address"
                } else {
                    "is visage-server running there?"
                };
                write!(f, "cannot connect to {url}: {reason} ({hint})")
            }
            Error::Config(msg) => write!(f, "invalid client settings: {msg}"),
            Error::Status(s) => f.write_str(&status_line(s)),
            Error::Insert {
                offset,
                len,
                committed,
                seq,
                status,
            } => {
                write!(
                    f,
                    "batch embeddings[{offset}..{}] rejected: {}; {committed} embeddings of other batches were committed",
                    offset + len,
                    status_line(status)
                )?;
                if *seq > 0 {
                    write!(f, " (up to log seq {seq})")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        Error::Status(s)
    }
}

/// Result of client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Counts of an insert.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InsertOutcome {
    /// Ids that were new.
    pub inserted: u64,
    /// Ids that existed and were replaced.
    pub replaced: u64,
    /// Batches (requests or stream messages) committed.
    pub batches: u64,
    /// Cluster mode: the log position of the last of the batches, the
    /// highest of their `seq`s (batches sent concurrently may be logged in
    /// any order). Reads through [`Gallery::with_min_seq`]`(seq)` (or with
    /// [`SearchOptions::min_seq`]) see every batch of this insert. 0 on a
    /// single node. In cluster mode the batches are acknowledged once the
    /// log holds them, so `inserted` counts the rows and `replaced` is 0.
    pub seq: u64,
}

impl InsertOutcome {
    /// Embeddings written (new plus replaced).
    pub fn total(&self) -> u64 {
        self.inserted + self.replaced
    }

    fn add(&mut self, r: &proto::InsertResponse) {
        self.inserted += r.inserted;
        self.replaced += r.replaced;
        self.batches += r.batches;
        self.seq = self.seq.max(r.seq);
    }
}

/// What [`Gallery::delete_outcome`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// Live embeddings removed (ids that did not exist count nothing). 0 in
    /// cluster mode: the delete is acknowledged once the gallery's log holds
    /// it, and the replicas remove the rows as they apply it.
    pub deleted: u64,
    /// Cluster mode: the delete's position in the gallery's log; reads
    /// through [`Gallery::with_min_seq`]`(seq)` no longer see the rows. 0 on
    /// a single node.
    pub seq: u64,
}

/// Statistics before and after a flush or compaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Before.
    pub before: GalleryStats,
    /// After.
    pub after: GalleryStats,
}

/// The other side of a verification pair.
#[derive(Debug, Clone, PartialEq)]
pub enum Against {
    /// Another vector.
    Vector(Vec<f32>),
    /// An enrolled embedding, by id.
    Id(u64),
    /// An enrolled subject (the best of its embeddings counts).
    Subject(String),
}

/// Which threshold decides "same person" / "known" in identify and verify.
/// The default (both `None`) is the gallery's calibrated threshold: in
/// identify, the open-set one for the gallery's current number of subjects;
/// in verify, the 1:1 one, or for a subject the claim threshold for its
/// number of images.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Threshold {
    /// Same iff the squared distance is at most this.
    pub max_distance: Option<f32>,
    /// Same iff the head's probability (calibrated P(same person) of one
    /// comparison at the gallery's prior) is at least this (needs a trained head;
    /// takes precedence over `max_distance`).
    pub min_probability: Option<f32>,
}

/// Parameters of [`Gallery::search_with`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchOptions {
    /// Hits per query.
    pub k: u32,
    /// Rank by the head's probability instead of distance (needs a trained head).
    pub rank_by_head: bool,
    /// Drop hits farther than this squared distance.
    pub max_distance: Option<f32>,
    /// Scan the 8-bit codes first, then re-rank exactly (distance ranking only).
    pub quantized: bool,
    /// Cluster mode: answer only from replicas that have applied the
    /// gallery's log up to this position (a write's `seq`), waiting for them
    /// within the call's deadline: read your own writes. 0: any replica.
    /// The handle's [`Gallery::with_min_seq`] applies too (the higher of the
    /// two counts). Ignored on a single node.
    pub min_seq: u64,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            k: 10,
            rank_by_head: false,
            max_distance: None,
            quantized: false,
            min_seq: 0,
        }
    }
}

/// Parameters of [`Gallery::train_head`]; `None` means the server's default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TrainHead {
    /// False-accept rate the thresholds are calibrated for (default 0.001).
    pub target_far: Option<f32>,
    /// Upper bound on the pairs drawn (default 200,000).
    pub max_pairs: Option<u32>,
    /// Seed of the pair sampling (default 1).
    pub seed: Option<u64>,
    /// Prior P(same person) the probabilities are stated at, in (0, 1)
    /// (default 0.5).
    pub prior: Option<f64>,
}

/// What [`Client::create_gallery_with`] creates: fixed for the gallery's life.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GallerySpec {
    /// Values per vector: a multiple of 16 from 16 to 2,048 (0: the server's
    /// default, 128).
    pub dim: u32,
    /// The model that made the vectors, free text such as
    /// `arcface-r100@insightface-0.7.3` (empty: none recorded).
    pub model: String,
    /// Store unit vectors and normalise probes (for models compared by
    /// cosine); hits, candidates and verdicts then carry `similarity`.
    pub normalize: bool,
    /// Cluster mode: the shards the subjects are split among, by a hash of
    /// the subject (all images of a person in one shard). 0: the server's
    /// default, 1. Must be 0 or 1 on a single node.
    pub shards: u32,
    /// Cluster mode: the nodes that hold a copy of each shard, chosen among
    /// the live nodes at creation. 0: the server's default (two, or one in a
    /// one-node cluster). Must be 0 or 1 on a single node.
    pub replicas: u32,
}

/// How [`Gallery::insert_with`] splits and sends a large input (by default
/// batches of [`default_batch`]`(128)`, [`DEFAULT_CONCURRENCY`] in flight).
#[derive(Debug, Clone, Copy)]
pub struct InsertOptions {
    /// Embeddings per request (at most the gallery's limit: 100,000 up to
    /// 128 values a vector, proportionally fewer above).
    pub batch: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
}

impl Default for InsertOptions {
    fn default() -> Self {
        InsertOptions {
            batch: default_batch(128),
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

/// How [`Client::connect_with`] connects: whom to trust over TLS, and the API
/// key to send. The default is what [`Client::connect`] does.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// PEM of the CA certificate(s) that signed the server's certificate. When
    /// set, the connection uses TLS and trusts these CAs only; when not set,
    /// an `https://` address is checked against the system's trusted roots.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// The name the server's certificate must carry, when it is not the
    /// address's host (for example when connecting by IP address).
    pub domain: Option<String>,
    /// API key sent with every call as `authorization: Bearer KEY`.
    pub api_key: Option<String>,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("ca_cert_pem", &self.ca_cert_pem.as_ref().map(Vec::len))
            .field("domain", &self.domain)
            // Never the key itself.
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ConnectOptions {
    fn wants_tls(&self) -> bool {
        self.ca_cert_pem.is_some() || self.domain.is_some()
    }
}

/// Adds the API key (if any) to every call's metadata.
#[derive(Clone, Default)]
pub struct ApiKey {
    header: Option<MetadataValue<Ascii>>,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.header.is_some() {
            "ApiKey(<redacted>)"
        } else {
            "ApiKey(none)"
        })
    }
}

impl ApiKey {
    /// `authorization: Bearer KEY` metadata, marked sensitive (never indexed
    /// by HTTP/2 header compression, redacted in debug output).
    pub fn new(key: &str) -> Result<ApiKey> {
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Config(
                "an API key is one or more visible ASCII characters without spaces".into(),
            ));
        }
        let mut v = MetadataValue::try_from(format!("Bearer {key}"))
            .map_err(|_| Error::Config("the API key cannot be sent as metadata".into()))?;
        v.set_sensitive(true);
        Ok(ApiKey { header: Some(v) })
    }

    /// No key.
    pub fn none() -> ApiKey {
        ApiKey { header: None }
    }
}

impl Interceptor for ApiKey {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// The client's transport: a channel that adds the API key to every call.
pub type Transport = InterceptedService<Channel, ApiKey>;

/// A connection to a visage server. Cheap to clone (clones share the connection).
#[derive(Debug, Clone)]
pub struct Client {
    rpc: VisageClient<Transport>,
    transport: Transport,
}

/// `host:port` becomes `http://host:port` (`https://` with `tls`).
fn normalise_url(url: &str, tls: bool) -> String {
    if url.contains("://") {
        url.to_owned()
    } else if tls {
        format!("https://{url}")
    } else {
        format!("http://{url}")
    }
}

impl Client {
    /// Connect to `url` (`http://host:port`, or just `host:port`), without an
    /// API key; an `https://` address is checked against the system's trusted roots.
    pub async fn connect(url: &str) -> Result<Client> {
        Client::connect_with(url, ConnectOptions::default()).await
    }

    /// Connect to `url` with TLS settings and an API key. `https://` addresses
    /// use TLS, and so does `host:port` when a CA certificate or domain is
    /// given; giving them with an `http://` address is an error.
    pub async fn connect_with(url: &str, opts: ConnectOptions) -> Result<Client> {
        let url = normalise_url(url, opts.wants_tls());
        let key = match &opts.api_key {
            Some(k) => ApiKey::new(k)?,
            None => ApiKey::none(),
        };
        let connect_err = |reason: String| Error::Connect {
            url: url.clone(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| connect_err(format!("invalid address: {e}")))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20);
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().timeout(Duration::from_secs(10));
            tls = match &opts.ca_cert_pem {
                Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                None => tls.with_native_roots(),
            };
            if let Some(d) = &opts.domain {
                tls = tls.domain_name(d.clone());
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Error::Config(format!("TLS: {}", error_chain(&e))))?;
        } else if opts.wants_tls() {
            return Err(Error::Config(format!(
                "a CA certificate or TLS domain was given, but {url} is not an https:// address"
            )));
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| connect_err(error_chain(&e)))?;
        Ok(Client::with_transport(InterceptedService::new(
            channel, key,
        )))
    }

    /// A client over an existing channel, without an API key.
    pub fn from_channel(channel: Channel) -> Client {
        Client::with_transport(InterceptedService::new(channel, ApiKey::none()))
    }

    /// A client over a transport: a channel with its API key, as in
    /// `InterceptedService::new(channel, ApiKey::new(key)?)`.
    pub fn with_transport(transport: Transport) -> Client {
        let rpc =
            VisageClient::new(transport.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES);
        Client { rpc, transport }
    }

    /// The generated tonic client, for calls this API does not wrap (it sends
    /// the API key too).
    pub fn rpc(&self) -> VisageClient<Transport> {
        self.rpc.clone()
    }

    /// The server's health (`grpc.health.v1`) for the visage service: true when SERVING.
    pub async fn serving(&self) -> Result<bool> {
        let mut h = tonic_health::pb::health_client::HealthClient::new(self.transport.clone());
        let r = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: visage_proto::SERVICE_NAME.to_owned(),
            })
            .await?
            .into_inner();
        Ok(r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
    }

    /// Create an empty gallery of the default kind: 128 values a vector, no
    /// model recorded, not normalising.
    pub async fn create_gallery(&self, name: &str) -> Result<GalleryInfo> {
        self.create_gallery_with(name, &GallerySpec::default())
            .await
    }

    /// Create an empty gallery of dimension `spec.dim` for vectors of
    /// `spec.model`, normalising if `spec.normalize`, in cluster mode split
    /// into `spec.shards` shards of `spec.replicas` copies each
    /// (INVALID_ARGUMENT for a dimension or model the server cannot take, or
    /// for shards or replicas above 1 on a single node).
    pub async fn create_gallery_with(&self, name: &str, spec: &GallerySpec) -> Result<GalleryInfo> {
        Ok(self
            .rpc()
            .create_gallery(proto::CreateGalleryRequest {
                name: name.into(),
                dim: spec.dim,
                model: spec.model.clone(),
                normalize: spec.normalize,
                shards: spec.shards,
                replicas: spec.replicas,
            })
            .await?
            .into_inner())
    }

    /// Drop a gallery and delete its files; returns its statistics just before.
    pub async fn drop_gallery(&self, name: &str) -> Result<GalleryInfo> {
        let r = self
            .rpc()
            .drop_gallery(proto::DropGalleryRequest { name: name.into() })
            .await?
            .into_inner();
        Ok(r.dropped.unwrap_or_default())
    }

    /// Every gallery with its statistics, sorted by name.
    pub async fn list_galleries(&self) -> Result<Vec<GalleryInfo>> {
        Ok(self
            .rpc()
            .list_galleries(proto::ListGalleriesRequest {})
            .await?
            .into_inner()
            .galleries)
    }

    /// Back up gallery `gallery` as `name` under the server's backup root,
    /// while it serves (admin role). Returns when the backup is complete;
    /// [`Gallery::stats`]'s `operations` show its progress meanwhile.
    pub async fn backup(&self, gallery: &str, name: &str) -> Result<proto::BackupResponse> {
        Ok(self
            .rpc()
            .backup(proto::BackupRequest {
                gallery: gallery.to_owned(),
                name: name.to_owned(),
            })
            .await?
            .into_inner())
    }

    /// Bulk-import files the server reads (admin role; see the Import RPC):
    /// `vectors` (`.npy`, (N, D) float32/float64), `subjects` (text, N
    /// lines), `ids` (`.npy` of N integers; `None`: the gallery assigns
    /// them). The rows appear all at once; with `replace`, rows of ids the
    /// gallery holds are replaced, else such an import is refused whole.
    pub async fn import(
        &self,
        gallery: &str,
        vectors: &str,
        subjects: &str,
        ids: Option<&str>,
        replace: bool,
    ) -> Result<proto::ImportResponse> {
        Ok(self
            .rpc()
            .import(proto::ImportRequest {
                gallery: gallery.to_owned(),
                vectors_path: vectors.to_owned(),
                subjects_path: subjects.to_owned(),
                ids_path: ids.unwrap_or_default().to_owned(),
                replace,
            })
            .await?
            .into_inner())
    }

    /// Restore backup `name` as the new gallery `gallery` (admin role),
    /// re-applying the erasures made since the backup.
    pub async fn restore(&self, name: &str, gallery: &str) -> Result<proto::RestoreResponse> {
        Ok(self
            .rpc()
            .restore(proto::RestoreRequest {
                name: name.to_owned(),
                gallery: gallery.to_owned(),
            })
            .await?
            .into_inner())
    }

    /// Cluster mode (admin role): the node that answered, the live nodes,
    /// and for each gallery its log's first and last position and each
    /// shard's replicas with the log position each has applied and flushed,
    /// and its lag. FAILED_PRECONDITION from a single-node server.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        Ok(self
            .rpc()
            .cluster_status(proto::ClusterStatusRequest {})
            .await?
            .into_inner())
    }

    /// A handle on gallery `name` (no request is made). Its requests name
    /// no model ([`Gallery::with_model`]) and read from any replica
    /// ([`Gallery::with_min_seq`]).
    pub fn gallery(&self, name: &str) -> Gallery {
        Gallery {
            rpc: self.rpc.clone(),
            name: name.to_owned(),
            model: String::new(),
            min_seq: 0,
        }
    }
}

/// A handle on one gallery. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gallery {
    rpc: VisageClient<Transport>,
    name: String,
    /// Sent as `model` with every Insert, Search, Identify and Verify.
    model: String,
    /// Sent as `min_seq` with every Get, Search, Identify and Verify.
    min_seq: u64,
}

/// Rewrite the positions of a batch's rows in a server message
/// (`embeddings[i]`, and in the packed form `matrix[i]`, `subjects[i]`,
/// `ids[i]`) to `offset + i`, positions in the caller's whole input.
fn shift_positions(msg: &str, offset: usize) -> String {
    const KEYS: [&str; 4] = ["embeddings[", "matrix[", "subjects[", "ids["];
    let mut out = String::with_capacity(msg.len() + 8);
    let mut rest = msg;
    while let Some((p, key)) = KEYS
        .iter()
        .filter_map(|k| rest.find(k).map(|p| (p, *k)))
        .min()
    {
        // A key ending another word (`b_ids[`) is not a row position.
        let word = p > 0 && {
            let before = rest.as_bytes()[p - 1];
            before.is_ascii_alphanumeric() || before == b'_'
        };
        out.push_str(&rest[..p + key.len()]);
        rest = &rest[p + key.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(i) if !word && rest[digits..].starts_with(']') => {
                out.push_str(&(i + offset).to_string());
                rest = &rest[digits..];
            }
            _ => {}
        }
    }
    out.push_str(rest);
    out
}

fn vectors<V: AsRef<[f32]>>(vs: &[V]) -> Vec<proto::Vector> {
    vs.iter()
        .map(|v| proto::Vector {
            values: v.as_ref().to_vec(),
        })
        .collect()
}

/// Rows packed as a [`proto::Matrix`] (little-endian f32, row-major): the
/// form the client sends batches in. `None` when the rows differ in length
/// (the repeated form is sent then, and the server names the row that is
/// wrong).
pub fn matrix<V: AsRef<[f32]>>(rows: &[V]) -> Option<proto::Matrix> {
    let dim = rows.first().map_or(0, |r| r.as_ref().len());
    if rows.iter().any(|r| r.as_ref().len() != dim) || (dim == 0 && !rows.is_empty()) {
        return None;
    }
    let mut m = matrix_of(&[], u32::try_from(dim).ok()?)?;
    m.rows = u32::try_from(rows.len()).ok()?;
    m.f32_le.reserve(rows.len() * dim * 4);
    for r in rows {
        extend_le(&mut m.f32_le, r.as_ref());
    }
    Some(m)
}

/// `values`, rows of `dim` laid one after another, as a [`proto::Matrix`];
/// `None` when `values` is not whole rows or a count does not fit the wire.
pub fn matrix_of(values: &[f32], dim: u32) -> Option<proto::Matrix> {
    let rows = if dim == 0 {
        0
    } else if values.len().is_multiple_of(dim as usize) {
        u32::try_from(values.len() / dim as usize).ok()?
    } else {
        return None;
    };
    let mut f32_le = Vec::with_capacity(values.len() * 4);
    extend_le(&mut f32_le, values);
    Some(proto::Matrix { rows, dim, f32_le })
}

/// Append `values` as little-endian f32 bytes: one copy where the machine is
/// little-endian.
fn extend_le(out: &mut Vec<u8>, values: &[f32]) {
    if cfg!(target_endian = "little") {
        out.extend_from_slice(bytemuck::cast_slice(values));
    } else {
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// One packed insert batch: vectors laid row after row, one subject per row,
/// and one id per row or none (the gallery assigns them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    /// Row-major values, `dim` per row.
    pub vectors: Vec<f32>,
    /// Values per row.
    pub dim: u32,
    /// One per row.
    pub subjects: Vec<String>,
    /// One per row; `None`: the gallery assigns fresh ids (each above every
    /// id it has held or assigned, never reused).
    pub ids: Option<Vec<u64>>,
}

impl Rows {
    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.subjects.len()
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty()
    }
}

/// An Insert request for `batch`: packed when its vectors share a length,
/// else in the repeated form (so the server names the row that is wrong).
fn insert_request(name: &str, model: &str, batch: Vec<Embedding>) -> proto::InsertRequest {
    let base = proto::InsertRequest {
        gallery: name.to_owned(),
        model: model.to_owned(),
        ..proto::InsertRequest::default()
    };
    let Some(m) = matrix(&batch.iter().map(|e| &e.vector[..]).collect::<Vec<_>>()) else {
        return proto::InsertRequest {
            embeddings: batch,
            ..base
        };
    };
    let (ids, subjects) = batch.into_iter().map(|e| (e.id, e.subject)).unzip();
    proto::InsertRequest {
        matrix: Some(m),
        ids,
        subjects,
        ..base
    }
}

/// An Insert request for packed rows (a configuration error when the vectors
/// are not whole rows of `dim`).
fn rows_request(name: &str, model: &str, rows: Rows) -> Result<proto::InsertRequest> {
    let m = matrix_of(&rows.vectors, rows.dim).ok_or_else(|| {
        Error::Config(format!(
            "{} values are not whole rows of {} values",
            rows.vectors.len(),
            rows.dim
        ))
    })?;
    Ok(proto::InsertRequest {
        gallery: name.to_owned(),
        model: model.to_owned(),
        matrix: Some(m),
        ids: rows.ids.unwrap_or_default(),
        subjects: rows.subjects,
        ..proto::InsertRequest::default()
    })
}

/// The packed fields of a Verify request: the `a` rows, and the `b` of every
/// pair in one form.
struct VerifyPacked {
    a: proto::Matrix,
    b: VerifyB,
}

enum VerifyB {
    Vectors(proto::Matrix),
    Ids(Vec<u64>),
    Subjects(Vec<String>),
}

/// `pairs` packed, when their `a` vectors share a length and their `b` are all
/// vectors (of that length), all ids or all subjects; else `None` (the
/// repeated form is sent, and the server names the pair that is wrong).
fn verify_packed(pairs: &[(Vec<f32>, Against)]) -> Option<VerifyPacked> {
    let a = matrix(&pairs.iter().map(|(a, _)| &a[..]).collect::<Vec<_>>())?;
    let b = match pairs.first().map(|(_, b)| b) {
        None => return None,
        Some(Against::Vector(_)) => {
            let bs: Option<Vec<&[f32]>> = pairs
                .iter()
                .map(|(_, b)| match b {
                    Against::Vector(v) => Some(&v[..]),
                    _ => None,
                })
                .collect();
            let m = matrix(&bs?)?;
            if m.dim != a.dim {
                return None;
            }
            VerifyB::Vectors(m)
        }
        Some(Against::Id(_)) => VerifyB::Ids(
            pairs
                .iter()
                .map(|(_, b)| match b {
                    Against::Id(id) => Some(*id),
                    _ => None,
                })
                .collect::<Option<_>>()?,
        ),
        Some(Against::Subject(_)) => VerifyB::Subjects(
            pairs
                .iter()
                .map(|(_, b)| match b {
                    Against::Subject(s) => Some(s.clone()),
                    _ => None,
                })
                .collect::<Option<_>>()?,
        ),
    };
    Some(VerifyPacked { a, b })
}

fn packed_into(p: VerifyPacked, base: proto::VerifyRequest) -> proto::VerifyRequest {
    let mut r = proto::VerifyRequest {
        matrix: Some(p.a),
        ..base
    };
    match p.b {
        VerifyB::Vectors(m) => r.b_matrix = Some(m),
        VerifyB::Ids(ids) => r.b_ids = ids,
        VerifyB::Subjects(s) => r.b_subjects = s,
    }
    r
}

fn verify_pairs(pairs: &[(Vec<f32>, Against)]) -> Vec<proto::VerifyPair> {
    use proto::verify_pair::B;
    pairs
        .iter()
        .map(|(a, b)| proto::VerifyPair {
            a: Some(proto::Vector { values: a.clone() }),
            b: Some(match b {
                Against::Vector(v) => B::Vector(proto::Vector { values: v.clone() }),
                Against::Id(id) => B::Id(*id),
                Against::Subject(s) => B::Subject(s.clone()),
            }),
        })
        .collect()
}

/// Hits from the flat form of a Search response.
fn flat_hits(r: proto::SearchResponse) -> Vec<Vec<Hit>> {
    let k = r.k as usize;
    let mut subjects = r.subjects.into_iter();
    let mut out = Vec::with_capacity(r.counts.len());
    for (q, &n) in r.counts.iter().enumerate() {
        let mut hits = Vec::with_capacity(n as usize);
        for slot in q * k..q * k + k {
            let subject = subjects.next().unwrap_or_default();
            if slot >= q * k + n as usize {
                continue;
            }
            hits.push(Hit {
                id: r.ids.get(slot).copied().unwrap_or_default(),
                subject,
                distance: r.distances.get(slot).copied().unwrap_or(f32::INFINITY),
                probability: r.probabilities.get(slot).copied(),
                similarity: r.similarities.get(slot).copied(),
                rank_key: None,
            });
        }
        out.push(hits);
    }
    out
}

impl Gallery {
    /// The gallery's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This handle, naming `model` as the model of the vectors of every
    /// Insert, Search, Identify and Verify it sends: the server refuses them
    /// with FAILED_PRECONDITION (and changes nothing) when the gallery was
    /// created for another model. Empty: no check.
    pub fn with_model(mut self, model: impl Into<String>) -> Gallery {
        self.model = model.into();
        self
    }

    /// The model this handle's requests name (empty: none).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// This handle, reading your writes in cluster mode: its Get, Search,
    /// Identify and Verify are answered only by replicas that have applied
    /// the gallery's log up to `seq` (the `seq` of an [`InsertOutcome`] or
    /// [`DeleteOutcome`]), and wait for one within the call's deadline. 0:
    /// any replica. A single node ignores it (its writes are visible when
    /// acknowledged).
    ///
    /// ```no_run
    /// # async fn demo(client: visage_client::Client, e: Vec<visage_client::Embedding>)
    /// # -> Result<(), visage_client::Error> {
    /// let staff = client.gallery("staff");
    /// let written = staff.insert(&e).await?;
    /// let hits = staff.with_min_seq(written.seq).search(&[vec![0.1f32; 128]], 10).await?;
    /// # Ok(()) }
    /// ```
    pub fn with_min_seq(mut self, seq: u64) -> Gallery {
        self.min_seq = seq;
        self
    }

    /// The log position this handle's reads wait for (0: none).
    pub fn min_seq(&self) -> u64 {
        self.min_seq
    }

    /// Current statistics.
    pub async fn stats(&self) -> Result<GalleryInfo> {
        Ok(self
            .rpc
            .clone()
            .get_gallery(proto::GetGalleryRequest {
                name: self.name.clone(),
            })
            .await?
            .into_inner())
    }

    /// Insert (upsert) `embeddings` in batches of [`default_batch`] for
    /// their length, with up to [`DEFAULT_CONCURRENCY`] requests in flight.
    pub async fn insert(&self, embeddings: &[Embedding]) -> Result<InsertOutcome> {
        let opts = InsertOptions {
            batch: default_batch(embeddings.first().map_or(128, |e| e.vector.len())),
            ..InsertOptions::default()
        };
        self.insert_batches(
            embeddings
                .chunks(opts.batch.max(1))
                .map(<[Embedding]>::to_vec),
            opts.concurrency,
            |_| {},
        )
        .await
    }

    /// Insert with explicit batching; `progress` is called with the size of
    /// every acknowledged batch.
    pub async fn insert_with(
        &self,
        embeddings: &[Embedding],
        opts: InsertOptions,
        progress: impl FnMut(u64),
    ) -> Result<InsertOutcome> {
        self.insert_batches(
            embeddings
                .chunks(opts.batch.max(1))
                .map(<[Embedding]>::to_vec),
            opts.concurrency,
            progress,
        )
        .await
    }

    /// Insert batches as separate requests, up to `concurrency` in flight.
    ///
    /// Each batch is atomic; the batches are not (a duplicate id in two
    /// batches is an upsert, not an error). On the first failure no further
    /// batch is sent, the ones in flight are awaited, and [`Error::Insert`]
    /// says which batch failed and how many embeddings were committed.
    /// `progress` is called with the size of every acknowledged batch.
    pub async fn insert_batches<I>(
        &self,
        batches: I,
        concurrency: usize,
        mut progress: impl FnMut(u64),
    ) -> Result<InsertOutcome>
    where
        I: IntoIterator<Item = Vec<Embedding>>,
    {
        let (name, model) = (self.name.clone(), self.model.clone());
        let requests = batches
            .into_iter()
            .map(move |b| Ok(insert_request(&name, &model, b)));
        Ok(self
            .send_batches(requests, concurrency, &mut progress)
            .await?
            .0)
    }

    /// Insert packed batches ([`Rows`]) as separate requests, up to
    /// `concurrency` in flight, as [`Gallery::insert_batches`]. Returns the
    /// counts and the ids the gallery assigned to batches without ids, in
    /// input order (empty when every batch gave its ids).
    pub async fn insert_rows<I>(
        &self,
        batches: I,
        concurrency: usize,
        mut progress: impl FnMut(u64),
    ) -> Result<(InsertOutcome, Vec<u64>)>
    where
        I: IntoIterator<Item = Rows>,
    {
        let (name, model) = (self.name.clone(), self.model.clone());
        let requests = batches
            .into_iter()
            .map(move |b| rows_request(&name, &model, b));
        self.send_batches(requests, concurrency, &mut progress)
            .await
    }

    /// [`Gallery::insert_rows`] with a check for double enrolments
    /// ([`proto::ConflictCheck`]): each batch is checked against the gallery
    /// as it is (earlier batches included) and its own rows. Returns the
    /// counts, the assigned ids and the conflicts found (positions in the
    /// whole input); with REJECT a batch with conflicts fails the insert
    /// ([`Error::Insert`], earlier batches committed).
    pub async fn insert_rows_checked<I>(
        &self,
        batches: I,
        concurrency: usize,
        check: proto::ConflictCheck,
        mut progress: impl FnMut(u64),
    ) -> Result<(InsertOutcome, Vec<u64>, Vec<proto::Conflict>)>
    where
        I: IntoIterator<Item = Rows>,
    {
        let (name, model) = (self.name.clone(), self.model.clone());
        let requests = batches.into_iter().map(move |b| {
            rows_request(&name, &model, b).map(|r| proto::InsertRequest {
                conflict_check: check as i32,
                ..r
            })
        });
        self.send_all(requests, concurrency, &mut progress).await
    }

    async fn send_batches<I>(
        &self,
        requests: I,
        concurrency: usize,
        progress: &mut impl FnMut(u64),
    ) -> Result<(InsertOutcome, Vec<u64>)>
    where
        I: IntoIterator<Item = Result<proto::InsertRequest>>,
    {
        let (out, ids, _) = self.send_all(requests, concurrency, progress).await?;
        Ok((out, ids))
    }

    async fn send_all<I>(
        &self,
        requests: I,
        concurrency: usize,
        progress: &mut impl FnMut(u64),
    ) -> Result<(InsertOutcome, Vec<u64>, Vec<proto::Conflict>)>
    where
        I: IntoIterator<Item = Result<proto::InsertRequest>>,
    {
        let mut batches = requests.into_iter();
        let mut assigned: Vec<(usize, Vec<u64>)> = Vec::new();
        let mut conflicts: Vec<proto::Conflict> = Vec::new();
        let mut in_flight = JoinSet::new();
        let mut total = InsertOutcome::default();
        let mut failure: Option<(usize, usize, Status)> = None;
        let mut offset = 0usize;
        loop {
            while failure.is_none() && in_flight.len() < concurrency.max(1) {
                let Some(req) = batches.next() else { break };
                let req = req?;
                let len = req
                    .matrix
                    .as_ref()
                    .map_or(req.embeddings.len(), |m| m.rows as usize);
                let start = offset;
                offset += len;
                let mut rpc = self.rpc.clone();
                in_flight.spawn(async move { (start, len, rpc.insert(req).await) });
            }
            let Some(done) = in_flight.join_next().await else {
                break;
            };
            match done {
                Ok((start, len, Ok(r))) => {
                    let r = r.into_inner();
                    total.add(&r);
                    if !r.ids.is_empty() {
                        assigned.push((start, r.ids));
                    }
                    let shift = |p: u32| p + start as u32;
                    conflicts.extend(r.conflicts.into_iter().map(|c| proto::Conflict {
                        position: shift(c.position),
                        other_position: c.other_position.map(shift),
                        ..c
                    }));
                    progress(len as u64);
                }
                Ok((start, len, Err(s))) => {
                    // Keep the earliest failing batch.
                    if failure.as_ref().is_none_or(|(o, _, _)| start < *o) {
                        failure = Some((start, len, s));
                    }
                }
                Err(e) => {
                    failure.get_or_insert((
                        offset,
                        0,
                        Status::internal(format!("insert task failed: {e}")),
                    ));
                }
            }
        }
        match failure {
            None => {
                assigned.sort_unstable_by_key(|(start, _)| *start);
                conflicts.sort_by_key(|c| c.position);
                Ok((
                    total,
                    assigned.into_iter().flat_map(|(_, ids)| ids).collect(),
                    conflicts,
                ))
            }
            Some((offset, len, s)) => Err(Error::Insert {
                offset,
                len,
                committed: total.total(),
                seq: total.seq,
                status: Status::with_metadata(
                    s.code(),
                    shift_positions(s.message(), offset),
                    s.metadata().clone(),
                ),
            }),
        }
    }

    /// [`Gallery::insert_stream`] of packed batches: every item of `batches`
    /// is one message. Returns the counts and the ids the gallery assigned to
    /// messages without ids, in order.
    pub async fn insert_rows_stream<S>(&self, batches: S) -> Result<(InsertOutcome, Vec<u64>)>
    where
        S: tokio_stream::Stream<Item = Rows> + Send + 'static,
    {
        use tokio_stream::StreamExt;
        let (name, model) = (self.name.clone(), self.model.clone());
        // A batch that is not whole rows is sent with no vectors and its
        // subjects: the server refuses it, naming the counts.
        let requests = batches.map(move |rows| {
            let subjects = rows.subjects.clone();
            rows_request(&name, &model, rows).unwrap_or_else(|_| proto::InsertRequest {
                gallery: name.clone(),
                model: model.clone(),
                matrix: Some(proto::Matrix::default()),
                subjects,
                ..proto::InsertRequest::default()
            })
        });
        let r = self.rpc.clone().insert_stream(requests).await?.into_inner();
        let mut out = InsertOutcome::default();
        out.add(&r);
        Ok((out, r.ids))
    }

    /// Insert through one client-streaming call: every item of `batches` is
    /// one message (one atomic batch). On failure the status message (and the
    /// trailing metadata `visage-committed-embeddings`) says what was committed.
    pub async fn insert_stream<S>(&self, batches: S) -> Result<InsertOutcome>
    where
        S: tokio_stream::Stream<Item = Vec<Embedding>> + Send + 'static,
    {
        use tokio_stream::StreamExt;
        let (name, model) = (self.name.clone(), self.model.clone());
        let requests = batches.map(move |embeddings| insert_request(&name, &model, embeddings));
        let r = self.rpc.clone().insert_stream(requests).await?.into_inner();
        let mut total = InsertOutcome::default();
        total.add(&r);
        Ok(total)
    }

    /// Delete embeddings by id and every embedding of `subjects`; returns how
    /// many live embeddings were removed (0 in cluster mode: see
    /// [`Gallery::delete_outcome`]).
    pub async fn delete(&self, ids: &[u64], subjects: &[String]) -> Result<u64> {
        Ok(self.delete_outcome(ids, subjects).await?.deleted)
    }

    /// [`Gallery::delete`], also returning the delete's position in the
    /// gallery's log in cluster mode ([`DeleteOutcome::seq`]).
    pub async fn delete_outcome(&self, ids: &[u64], subjects: &[String]) -> Result<DeleteOutcome> {
        let r = self
            .rpc
            .clone()
            .delete(proto::DeleteRequest {
                gallery: self.name.clone(),
                ids: ids.to_vec(),
                subjects: subjects.to_vec(),
            })
            .await?
            .into_inner();
        Ok(DeleteOutcome {
            deleted: r.deleted,
            seq: r.seq,
        })
    }

    /// One page of the gallery's subjects (in byte order, with their live
    /// embeddings) and the token of the next page (empty after the last).
    /// `page_size` 0 is the server's default (1,000); `token` empty starts.
    pub async fn subjects_page(
        &self,
        page_size: u32,
        token: &str,
    ) -> Result<(Vec<proto::SubjectCount>, String)> {
        let r = self
            .rpc
            .clone()
            .list_subjects(proto::ListSubjectsRequest {
                gallery: self.name.clone(),
                page_size,
                page_token: token.to_owned(),
            })
            .await?
            .into_inner();
        Ok((r.subjects, r.next_page_token))
    }

    /// Every subject of the gallery with its live embeddings, page after page.
    pub async fn subjects(&self, page_size: u32) -> Result<Vec<proto::SubjectCount>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let (page, next) = self.subjects_page(page_size, &token).await?;
            out.extend(page);
            if next.is_empty() {
                return Ok(out);
            }
            token = next;
        }
    }

    /// Every live embedding of the gallery (the Export call: admin role), as
    /// it was when the call began: packed batches of `batch_rows` (0: the
    /// server's default, about 4 MiB a message), concatenated.
    pub async fn export(&self, batch_rows: u32) -> Result<Rows> {
        let mut stream = self
            .rpc
            .clone()
            .export(proto::ExportRequest {
                gallery: self.name.clone(),
                batch_rows,
            })
            .await?
            .into_inner();
        let mut all = Rows {
            ids: Some(Vec::new()),
            ..Rows::default()
        };
        while let Some(b) = stream.message().await? {
            let m = b.matrix.unwrap_or_default();
            all.dim = m.dim;
            all.vectors.extend(
                m.f32_le
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            all.subjects.extend(b.subjects);
            if let Some(ids) = all.ids.as_mut() {
                ids.extend(b.ids);
            }
        }
        Ok(all)
    }

    /// The embeddings with these ids that exist, in request order.
    pub async fn get(&self, ids: &[u64]) -> Result<Vec<Embedding>> {
        Ok(self
            .rpc
            .clone()
            .get(proto::GetRequest {
                gallery: self.name.clone(),
                ids: ids.to_vec(),
                min_seq: self.min_seq,
            })
            .await?
            .into_inner()
            .embeddings)
    }

    /// Exact `k` nearest embeddings of each query, ascending by (distance, id).
    pub async fn search<V: AsRef<[f32]>>(&self, queries: &[V], k: u32) -> Result<Vec<Vec<Hit>>> {
        self.search_with(
            queries,
            &SearchOptions {
                k,
                ..Default::default()
            },
        )
        .await
    }

    /// Search with a ranking and a distance limit.
    pub async fn search_with<V: AsRef<[f32]>>(
        &self,
        queries: &[V],
        opts: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>> {
        let rank_by = if opts.rank_by_head {
            proto::RankBy::Head
        } else {
            proto::RankBy::Distance
        };
        let packed = matrix(queries);
        let r = self
            .rpc
            .clone()
            .search(proto::SearchRequest {
                gallery: self.name.clone(),
                queries: if packed.is_some() {
                    Vec::new()
                } else {
                    vectors(queries)
                },
                with_subjects: packed.is_some(),
                matrix: packed,
                k: opts.k,
                rank_by: rank_by as i32,
                max_distance: opts.max_distance,
                mode: if opts.quantized {
                    proto::ScanMode::Quantized
                } else {
                    proto::ScanMode::Exact
                } as i32,
                model: self.model.clone(),
                min_seq: self.min_seq.max(opts.min_seq),
            })
            .await?
            .into_inner();
        if r.results.is_empty() && !r.counts.is_empty() {
            return Ok(flat_hits(r));
        }
        Ok(r.results.into_iter().map(|r| r.hits).collect())
    }

    /// For each probe, the `k` best distinct subjects; `known` is decided by
    /// the gallery's calibrated threshold.
    pub async fn identify<V: AsRef<[f32]>>(
        &self,
        probes: &[V],
        k: u32,
    ) -> Result<Vec<Identification>> {
        self.identify_with(probes, k, Threshold::default()).await
    }

    /// [`Gallery::identify`] with an explicit threshold.
    pub async fn identify_with<V: AsRef<[f32]>>(
        &self,
        probes: &[V],
        k: u32,
        threshold: Threshold,
    ) -> Result<Vec<Identification>> {
        let packed = matrix(probes);
        Ok(self
            .rpc
            .clone()
            .identify(proto::IdentifyRequest {
                gallery: self.name.clone(),
                probes: if packed.is_some() {
                    Vec::new()
                } else {
                    vectors(probes)
                },
                matrix: packed,
                k,
                min_probability: threshold.min_probability,
                max_distance: threshold.max_distance,
                model: self.model.clone(),
                min_seq: self.min_seq,
            })
            .await?
            .into_inner()
            .results)
    }

    /// 1:1 verification of each pair, decided by the gallery's calibrated threshold.
    pub async fn verify(&self, pairs: &[(Vec<f32>, Against)]) -> Result<Vec<Verdict>> {
        self.verify_with(pairs, Threshold::default()).await
    }

    /// [`Gallery::verify`] with an explicit threshold.
    pub async fn verify_with(
        &self,
        pairs: &[(Vec<f32>, Against)],
        threshold: Threshold,
    ) -> Result<Vec<Verdict>> {
        let base = proto::VerifyRequest {
            gallery: self.name.clone(),
            max_distance: threshold.max_distance,
            min_probability: threshold.min_probability,
            model: self.model.clone(),
            min_seq: self.min_seq,
            ..proto::VerifyRequest::default()
        };
        let req = match verify_packed(pairs) {
            Some(packed) => packed_into(packed, base),
            None => proto::VerifyRequest {
                pairs: verify_pairs(pairs),
                ..base
            },
        };
        Ok(self.rpc.clone().verify(req).await?.into_inner().verdicts)
    }

    /// Train the gallery's scoring head and calibrate its thresholds.
    pub async fn train_head(&self, opts: &TrainHead) -> Result<HeadInfo> {
        Ok(self
            .rpc
            .clone()
            .train_head(proto::TrainHeadRequest {
                gallery: self.name.clone(),
                target_far: opts.target_far.unwrap_or(0.0),
                max_pairs: opts.max_pairs.unwrap_or(0),
                seed: opts.seed,
                prior: opts.prior,
            })
            .await?
            .into_inner())
    }

    /// The gallery's scoring head and thresholds, with the open-set
    /// thresholds in use for its current number of enrolled subjects
    /// (`trained` is false while it has no head).
    pub async fn head(&self) -> Result<HeadInfo> {
        Ok(self
            .rpc
            .clone()
            .get_head(proto::GetHeadRequest {
                gallery: self.name.clone(),
            })
            .await?
            .into_inner())
    }

    /// Flush, then rewrite segments without deleted rows.
    pub async fn compact(&self) -> Result<Maintenance> {
        let r = self
            .rpc
            .clone()
            .compact(proto::CompactRequest {
                gallery: self.name.clone(),
            })
            .await?
            .into_inner();
        Ok(Maintenance {
            before: r.before.unwrap_or_default(),
            after: r.after.unwrap_or_default(),
        })
    }

    /// Write the in-memory rows to a segment.
    pub async fn flush(&self) -> Result<Maintenance> {
        let r = self
            .rpc
            .clone()
            .flush(proto::FlushRequest {
                gallery: self.name.clone(),
            })
            .await?
            .into_inner();
        Ok(Maintenance {
            before: r.before.unwrap_or_default(),
            after: r.after.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrices_hold_little_endian_rows() {
        let rows = [
            vec![1.0f32, -0.0, f32::MIN_POSITIVE],
            vec![3.5, f32::MAX, -7.25],
        ];
        let m = matrix(&rows).unwrap();
        assert_eq!((m.rows, m.dim), (2, 3));
        let want: Vec<u8> = rows
            .iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(m.f32_le, want);
        assert_eq!(matrix_of(&rows.concat(), 3).unwrap(), m);
        // Rows of different lengths, or of none, have no packed form.
        assert!(matrix(&[vec![1.0f32], vec![1.0, 2.0]]).is_none());
        assert!(matrix(&[Vec::<f32>::new()]).is_none());
        assert!(matrix_of(&[1.0, 2.0, 3.0], 2).is_none());
    }

    #[test]
    fn positions_are_shifted_to_the_callers_input() {
        assert_eq!(
            shift_positions("embeddings[3]: expected 128 values, got 127", 1000),
            "embeddings[1003]: expected 128 values, got 127"
        );
        assert_eq!(
            shift_positions(
                "embeddings[5]: id 9 already appears at embeddings[2] of the same batch",
                10
            ),
            "embeddings[15]: id 9 already appears at embeddings[12] of the same batch"
        );
        assert_eq!(shift_positions("embeddings[x]", 5), "embeddings[x]");
        assert_eq!(shift_positions("no positions", 5), "no positions");
    }

    #[test]
    fn errors_print_as_one_line_with_the_code_name() {
        let e = Error::from(Status::not_found("gallery \"x\" does not exist"));
        assert_eq!(e.to_string(), "NOT_FOUND: gallery \"x\" does not exist");
        assert_eq!(e.code(), Some(Code::NotFound));
        assert_eq!(normalise_url("localhost:1", false), "http://localhost:1");
        assert_eq!(normalise_url("http://h:2", false), "http://h:2");
        assert_eq!(normalise_url("localhost:1", true), "https://localhost:1");
        assert_eq!(normalise_url("http://h:2", true), "http://h:2");
    }

    #[test]
    fn a_partial_insert_names_the_log_seq_of_what_was_committed() {
        let failed = |seq| Error::Insert {
            offset: 10,
            len: 5,
            committed: 10,
            seq,
            status: Status::invalid_argument("embeddings[12]: bad"),
        };
        let single = failed(0).to_string();
        assert!(
            single.ends_with("10 embeddings of other batches were committed"),
            "{single}"
        );
        let cluster = failed(77).to_string();
        assert!(
            cluster.ends_with("were committed (up to log seq 77)"),
            "{cluster}"
        );
    }

    #[test]
    fn only_transport_failures_hint_at_tls() {
        // Statuses the server sent, of every code a failed connection may
        // also show, get no hint.
        for s in [
            Status::not_found("gallery \"x\" does not exist"),
            Status::cancelled("operation was canceled"),
            Status::unavailable("shutting down"),
            Status::unknown("transport error"),
            Status::internal("h2 protocol error: http2 error"),
        ] {
            let e = Error::from(s);
            assert!(!e.to_string().contains("https://"), "{e}");
        }
        // A status the channel made from its own error gets it.
        let transport = Endpoint::from_shared("not an address").expect_err("invalid address");
        let e = Error::from(Status::from_error(Box::new(transport)));
        assert!(e.to_string().ends_with(TLS_HINT), "{e}");
        // So does a failed plaintext connection, unless nothing listens there.
        let connect = |reason: &str| Error::Connect {
            url: "http://h:1".into(),
            reason: reason.into(),
        };
        let closed = connect("transport error: connection closed").to_string();
        assert!(closed.contains("https://"), "{closed}");
        let refused = connect("tcp connect error: Connection refused (os error 111)");
        assert!(!refused.to_string().contains("https://"), "{refused}");
    }

    #[test]
    fn an_insert_reports_the_highest_seq_of_its_batches() {
        let mut out = InsertOutcome::default();
        // Concurrent batches may be acknowledged out of log order.
        for (inserted, seq) in [(3, 17), (2, 12), (4, 15)] {
            out.add(&proto::InsertResponse {
                inserted,
                batches: 1,
                seq,
                ..proto::InsertResponse::default()
            });
        }
        assert_eq!((out.inserted, out.batches, out.seq), (9, 3, 17));
        // A single node logs nothing: 0 stays 0.
        let mut single = InsertOutcome::default();
        single.add(&proto::InsertResponse {
            inserted: 1,
            ..proto::InsertResponse::default()
        });
        assert_eq!(single.seq, 0);
    }

    #[tokio::test]
    async fn handles_carry_their_min_seq() {
        let channel = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let client = Client::from_channel(channel);
        let g = client.gallery("g");
        assert_eq!(g.min_seq(), 0);
        let at = g.clone().with_model("m").with_min_seq(42);
        assert_eq!((at.min_seq(), at.model(), at.name()), (42, "m", "g"));
        // The original handle is unchanged.
        assert_eq!(g.min_seq(), 0);
        assert_eq!(SearchOptions::default().min_seq, 0);
        assert_eq!(GallerySpec::default().shards, 0);
        assert_eq!(GallerySpec::default().replicas, 0);
    }

    #[test]
    fn api_keys_are_redacted_and_checked() {
        let k = ApiKey::new(" key-0123456789abcdef\n").expect("valid key");
        assert_eq!(format!("{k:?}"), "ApiKey(<redacted>)");
        let mut k2 = k.clone();
        let req = k2.call(Request::new(())).expect("intercept");
        let v = req.metadata().get("authorization").expect("header");
        assert_eq!(v.to_str().ok(), Some("Bearer key-0123456789abcdef"));
        assert!(v.is_sensitive());
        for bad in ["", "two words", "caf\u{e9}"] {
            assert!(matches!(ApiKey::new(bad), Err(Error::Config(_))), "{bad:?}");
        }
        let opts = ConnectOptions {
            api_key: Some("key-0123456789abcdef".into()),
            ..ConnectOptions::default()
        };
        assert!(!format!("{opts:?}").contains("0123456789"));
        let none = ApiKey::none().call(Request::new(())).expect("intercept");
        assert!(none.metadata().get("authorization").is_none());
    }
}

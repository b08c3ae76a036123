//! visage-server: the engine over gRPC (`visage.v1.Visage`), with the standard
//! health service (`grpc.health.v1`) and server reflection (v1 and v1alpha),
//! so `grpcurl` works without the proto file.
//!
//! - [`service`]: the handlers, thin: validate, convert, call the engine on the
//!   blocking pool, convert back.
//! - [`status`]: the one mapping from engine errors to status codes.
//! - [`convert`]: wire ⇄ engine types.
//! - [`auth`]: API keys and roles, checked by a tower layer before any service.
//! - [`metrics`]: Prometheus metrics (`--metrics-listen`): calls by method and
//!   status, galleries read at scrape time, the process.
//! - [`serve`]: run the server until a shutdown signal, then stop accepting,
//!   finish calls in flight, flush every gallery.
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod auth;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod convert;
pub mod import;
pub mod metrics;
pub mod net;
pub mod packed;
pub mod service;
pub mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::Status;
use tonic::transport::server::ServerTlsConfig;
use tonic::transport::{Identity, Server};
use visage_engine::Engine;
use visage_proto::error_chain;
use visage_proto::v1::visage_server::VisageServer;

pub use auth::ApiKeys;
pub use service::VisageService;

/// Limits the server adds to the engine's (documented in the proto file).
pub mod limits {
    /// Largest number of ids in one Get from a gallery of at most 128
    /// values a vector; see [`get_ids`] for the others.
    pub const MAX_GET_IDS: usize = 100_000;
    /// Largest number of ids in one Get from a gallery of dimension `dim`:
    /// [`MAX_GET_IDS`] up to 128 values a vector, proportionally fewer above
    /// (as the engine scales its own limits, `visage_engine::Limits`), so the
    /// response's vectors stay within about 51 MB.
    pub fn get_ids(dim: usize) -> usize {
        (MAX_GET_IDS * visage_engine::DIM / dim.max(visage_engine::DIM)).max(1)
    }
    /// Largest `queries × k` (Search) or `probes × k` (Identify) in one request.
    pub const MAX_RESULTS: usize = 1_000_000;
    /// Default largest request message, in bytes.
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;
    /// Default connections served at once.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
    /// Default idle time after which a silent connection is closed.
    pub const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
    /// Requests served at once on one connection (HTTP/2 streams).
    pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
}

/// Any error that stops the server.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Settings of [`serve`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Largest request message in bytes; larger ones get RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
    /// How long a shutdown waits for calls in flight before flushing anyway.
    pub shutdown_grace: Duration,
    /// Serve TLS only, with this certificate and key (`None`: plaintext).
    pub tls: Option<TlsIdentity>,
    /// Require these API keys (`None`: no authentication).
    pub api_keys: Option<ApiKeys>,
    /// Connections served at once; one more is accepted and closed at once.
    pub max_connections: usize,
    /// A connection from which nothing arrives for this long is closed (the
    /// server pings clients every third of it, so live clients stay).
    pub idle_timeout: Duration,
    /// A streaming insert whose next message takes longer is ended.
    pub stream_idle_timeout: Duration,
    /// Largest rate of a backup's copying, bytes a second (`None`: no limit).
    pub backup_bytes_per_sec: Option<u64>,
    /// Import only files under this directory (`None`: any the server can read).
    pub import_root: Option<std::path::PathBuf>,
    /// Cluster mode: the node (joined to NATS and etcd) and how it reaches
    /// the others (`None`: a single node).
    #[cfg(feature = "cluster")]
    pub cluster: Option<(Arc<visage_cluster::node::Node>, cluster::PeerOptions)>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_message_bytes: limits::DEFAULT_MAX_MESSAGE_BYTES,
            shutdown_grace: Duration::from_secs(30),
            tls: None,
            api_keys: None,
            max_connections: limits::DEFAULT_MAX_CONNECTIONS,
            idle_timeout: limits::DEFAULT_IDLE_TIMEOUT,
            stream_idle_timeout: service::DEFAULT_STREAM_IDLE_TIMEOUT,
            backup_bytes_per_sec: None,
            import_root: None,
            #[cfg(feature = "cluster")]
            cluster: None,
        }
    }
}

/// The server's TLS certificate chain and private key (PEM), checked when made.
#[derive(Clone)]
pub struct TlsIdentity {
    identity: Identity,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.write_str("TlsIdentity(..)")
    }
}

impl TlsIdentity {
    /// A certificate chain and its private key, both PEM. Fails if rustls
    /// cannot use them (no certificate, no key, a key that is not PKCS#8,
    /// PKCS#1 or SEC1, or a key that does not match the certificate).
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<TlsIdentity, BoxError> {
        let id = TlsIdentity {
            identity: Identity::from_pem(cert, key),
        };
        // The same check the server makes when it starts, but now, with a message.
        Server::builder()
            .tls_config(id.config())
            .map_err(|e| format!("unusable TLS certificate or key: {}", error_chain(&e)))?;
        Ok(id)
    }

    /// Read the certificate chain and the private key from PEM files.
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsIdentity, BoxError> {
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("cannot read the TLS {what} {}: {e}", p.display()))
        };
        let (c, k) = (read("certificate", cert)?, read("key", key)?);
        TlsIdentity::from_pem(&c, &k).map_err(|e| {
            format!(
                "{e} (certificate {}, key {})",
                cert.display(),
                key.display()
            )
            .into()
        })
    }

    fn config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            // A client that connects and never finishes the handshake does not hold a task.
            .timeout(Duration::from_secs(10))
    }
}

/// tonic reports an oversized request as OUT_OF_RANGE; gRPC (and our
/// contract) say RESOURCE_EXHAUSTED. Rewrites trailers-only error responses.
fn rewrite_oversized<B>(
    mut resp: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    if let Some(s) = Status::from_header_map(resp.headers())
        && s.code() == tonic::Code::OutOfRange
    {
        let fixed = service::oversized(s);
        if fixed.code() != tonic::Code::OutOfRange
            && let Err(e) = fixed.add_header(resp.headers_mut())
        {
            tracing::warn!(error = %e, "could not rewrite an oversized-message status");
        }
    }
    resp
}

/// Serve `engine` on `listener` until `signal` completes, then shut down
/// gracefully: stop accepting connections, let calls in flight finish (up to
/// `opts.shutdown_grace`), stop streaming inserts between messages, and flush
/// every gallery. Returns an error if the server failed or a flush failed.
pub async fn serve<F>(
    engine: Arc<Engine>,
    listener: TcpListener,
    opts: ServerOptions,
    signal: F,
) -> Result<(), BoxError>
where
    F: Future<Output = ()> + Send,
{
    serve_with_metrics(engine, listener, None, opts, signal).await
}

/// [`serve`], and with `metrics` the Prometheus endpoint (`GET /metrics`, see
/// [`metrics`]) on that listener, behind the same API keys; it stops with
/// the gRPC server.
pub async fn serve_with_metrics<F>(
    engine: Arc<Engine>,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    opts: ServerOptions,
    signal: F,
) -> Result<(), BoxError>
where
    F: Future<Output = ()> + Send,
{
    let metrics = metrics.map(|l| (l, Arc::new(metrics::Metrics::new(engine.clone()))));
    let (health, health_service) = tonic_health::server::health_reporter();
    // The engine (and so the data directory) is open: serving.
    health.set_serving::<VisageServer<VisageService>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(visage_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(visage_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let single = VisageService::new(engine.clone(), stop_rx.clone())
        .with_stream_idle_timeout(opts.stream_idle_timeout)
        .with_backup_rate(opts.backup_bytes_per_sec)
        .with_import_root(opts.import_root.clone());
    #[cfg(feature = "cluster")]
    let (single, clustered) = match &opts.cluster {
        None => (Some(single), None),
        Some((node, peers)) => {
            let front = Arc::new(cluster::Front::new(
                node.clone(),
                single,
                peers.clone(),
                opts.max_message_bytes,
            ));
            node.set_shard_source(Arc::new(cluster::PeerCopies::new(&front)));
            (
                None,
                Some(
                    VisageServer::new(cluster::ClusterService(front))
                        .max_decoding_message_size(opts.max_message_bytes),
                ),
            )
        }
    };
    #[cfg(not(feature = "cluster"))]
    let single = Some(single);
    let visage =
        single.map(|s| VisageServer::new(s).max_decoding_message_size(opts.max_message_bytes));

    tracing::info!("tls: {}", if opts.tls.is_some() { "on" } else { "off" });
    match &opts.api_keys {
        // Counts per role only, never keys.
        Some(keys) => tracing::info!(?keys, "api keys: on"),
        None => tracing::info!("api keys: off (no authentication)"),
    }
    let mut builder = Server::builder();
    if let Some(tls) = &opts.tls {
        builder = builder.tls_config(tls.config())?;
    }
    let router = builder
        // Batches of a thousand embeddings are half a megabyte: open the
        // HTTP/2 windows so a batch does not wait for window updates.
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_concurrent_streams(limits::MAX_STREAMS_PER_CONNECTION)
        // Pings find dead peers, and their answers keep a live but quiet
        // client inside the idle timeout of `net::incoming`.
        .http2_keepalive_interval(Some(opts.idle_timeout / 3))
        .http2_keepalive_timeout(Some(opts.idle_timeout / 3))
        .trace_fn(|req| tracing::debug_span!("rpc", method = %req.uri().path()))
        // Outermost: every call is counted with the code the client gets,
        // refusals for keys and sizes included.
        .layer(match &metrics {
            Some((_, m)) => m.layer(),
            None => metrics::RpcMetricsLayer::off(),
        })
        .layer(tower::util::MapResponseLayer::new(rewrite_oversized))
        // Before any service: a refused call never reaches the engine.
        .layer(auth::AuthLayer::new(opts.api_keys.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_optional_service(visage);
    #[cfg(feature = "cluster")]
    let router = router.add_optional_service(clustered);
    let incoming = net::incoming(
        listener,
        net::ConnectionLimits {
            max_connections: opts.max_connections,
            idle_timeout: opts.idle_timeout,
        },
    );
    let mut metrics_server = metrics.map(|(l, m)| {
        let mut stop = stop_rx.clone();
        tokio::spawn(m.serve(l, opts.api_keys.clone(), async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }))
    });
    let mut stop_wait = stop_rx.clone();
    let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = stop_wait.wait_for(|stop| *stop).await;
    }));

    tokio::select! {
        () = signal => {}
        r = &mut server => {
            // The server stopped on its own: an error (it only stops on the signal otherwise).
            r??;
            return Err("server stopped unexpectedly".into());
        }
        Some(r) = async { Some((metrics_server.as_mut()?).await) } => {
            r??;
            return Err("the metrics endpoint stopped unexpectedly".into());
        }
    }
    tracing::info!("shutting down: no new connections; finishing calls in flight");
    #[cfg(feature = "cluster")]
    let leaving = opts.cluster.as_ref().map(|(node, _)| node.clone());
    health
        .set_not_serving::<VisageServer<VisageService>>()
        .await;
    let _ = stop_tx.send(true);
    let mut failure: Option<BoxError> = None;
    match tokio::time::timeout(opts.shutdown_grace, &mut server).await {
        Ok(Ok(Ok(()))) => tracing::info!("all calls finished"),
        Ok(Ok(Err(e))) => failure = Some(e.into()),
        Ok(Err(e)) => failure = Some(e.into()),
        Err(_) => {
            tracing::warn!(grace = ?opts.shutdown_grace, "calls still in flight after the grace period; flushing anyway (unacknowledged calls may be lost)");
            server.abort();
        }
    }
    if let Some(m) = metrics_server {
        // Scrapes in flight finish; a stuck one does not hold the shutdown.
        let abort = m.abort_handle();
        match tokio::time::timeout(Duration::from_secs(5), m).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the metrics endpoint failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the metrics endpoint failed"),
            Err(_) => abort.abort(),
        }
    }
    #[cfg(feature = "cluster")]
    if let Some(node) = leaving {
        // No more log messages are applied; what was applied is flushed below.
        node.stop().await;
    }
    let flushed = tokio::task::spawn_blocking(move || {
        let mut errors = Vec::new();
        for name in engine.list_galleries() {
            let Ok(g) = engine.gallery(&name) else { continue };
            match g.flush() {
                Ok(r) => tracing::info!(gallery = %name, live = r.after.live, segments = r.after.segments, "flushed"),
                Err(e) => {
                    tracing::error!(gallery = %name, error = %e, "flush at shutdown failed (the WAL still holds every acknowledged write)");
                    errors.push(format!("{name}: {e}"));
                }
            }
        }
        errors
    })
    .await?;
    if let Some(e) = failure {
        return Err(e);
    }
    if !flushed.is_empty() {
        return Err(format!("flush at shutdown failed: {}", flushed.join("; ")).into());
    }
    Ok(())
}

//! Prometheus metrics (`--metrics-listen ADDR`): `GET /metrics` on a listener
//! of its own, in the Prometheus text format (0.0.4), through the
//! `prometheus-client` registry and encoder.
//!
//! - Calls: [`RpcMetricsLayer`], a tower layer in front of every service,
//!   counts each call of `visage.v1.Visage` by method and gRPC status code
//!   and times it (from the request to the status: the end of the response
//!   stream for streaming calls). The health service and reflection are not
//!   counted. A method the server does not know is counted as `unknown`,
//!   so clients cannot grow the label set.
//! - Galleries: [`EngineCollector`] reads every open gallery at scrape time
//!   (`Gallery::stats`, `Gallery::counters`, `Gallery::head`): rows,
//!   subjects, segments, bytes on disk, which scan settled the probes, WAL
//!   group commit sizes and sync times, flushes and compactions, the head.
//! - The process: resident memory and open file descriptors, from `/proc`.
//!
//! With `--api-keys`, a scrape needs a key of at least the `read` role, sent
//! as for the API (`authorization: Bearer KEY` or `x-api-key: KEY`): a missing
//! or unknown key gets 401, a key without the role 403, each with a one-line
//! body. The metric names, types and labels are listed in README.md
//! ("Operations", "Metrics").

use crate::auth::{self, ApiKeys, Role};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::codegen::http;
use tower::{Layer, Service};
use visage_engine::{Engine, GalleryCounters, GalleryStats, HeadInfo, HistogramCounts};

/// The metrics of a server: the registry the endpoint encodes, and the
/// per-call metrics the [`RpcMetricsLayer`] records into.
#[derive(Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    rpc: RpcMetrics,
}

impl Metrics {
    /// Metrics of the calls, of `engine`'s galleries and of the process.
    pub fn new(engine: Arc<Engine>) -> Metrics {
        let mut registry = Registry::default();
        let rpc = RpcMetrics::default();
        registry.register(
            "visage_rpc_requests",
            "Calls of visage.v1.Visage answered, by method and gRPC status code",
            rpc.requests.clone(),
        );
        registry.register(
            "visage_rpc_duration_seconds",
            "Seconds from a call's request to its status (the end of the stream for streaming calls), by method",
            rpc.latency.clone(),
        );
        registry.register_collector(Box::new(EngineCollector { engine }));
        registry.register_collector(Box::new(ProcessCollector));
        Metrics {
            registry: Arc::new(registry),
            rpc,
        }
    }

    /// The layer that records calls into these metrics.
    pub fn layer(&self) -> RpcMetricsLayer {
        RpcMetricsLayer {
            rpc: Some(self.rpc.clone()),
        }
    }

    /// Everything, in the Prometheus text format. Reads every gallery's
    /// statistics (directory listings): call it off the async runtime.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Serve `GET /metrics` on `listener` until `shutdown` completes, then
    /// finish the scrapes in flight. With `keys`, a scrape needs a key of
    /// the `read` role or higher.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        keys: Option<ApiKeys>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let endpoint = Endpoint {
            metrics: self,
            keys: keys.map(Arc::new),
        };
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(scrape))
            .with_state(endpoint);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

#[derive(Clone)]
struct Endpoint {
    metrics: Arc<Metrics>,
    keys: Option<Arc<ApiKeys>>,
}

/// `GET /metrics`: the key check (as the API's, see [`auth`]), then the
/// encoding on the blocking pool.
async fn scrape(State(ep): State<Endpoint>, headers: HeaderMap) -> Response {
    if let Some(keys) = &ep.keys
        && let Err(status) = keys
            .role_for(&headers)
            .and_then(|role| auth::require(role, Role::Read, "/metrics"))
    {
        let code = if status.code() == tonic::Code::PermissionDenied {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        tracing::info!(code = %code, reason = %status.message(), "metrics scrape refused");
        let mut resp = (code, format!("{}\n", status.message())).into_response();
        if code == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        return resp;
    }
    let metrics = ep.metrics.clone();
    match tokio::task::spawn_blocking(move || metrics.encode()).await {
        Ok(Ok(body)) => (
            [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Ok(Err(_)) | Err(_) => {
            tracing::error!("could not encode the metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not encode the metrics\n",
            )
                .into_response()
        }
    }
}

// ---------------------------------------------------------------------------
// Calls

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

fn call_histogram() -> Histogram {
    // 0.5 ms to about 65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// Counters and histograms of calls by method.
#[derive(Debug, Clone)]
struct RpcMetrics {
    requests: Family<CallLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

impl Default for RpcMetrics {
    fn default() -> RpcMetrics {
        RpcMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(call_histogram as fn() -> Histogram),
        }
    }
}

/// The method label of a request path: the method of `visage.v1.Visage`
/// (`/visage.v1.Visage/Search` → `Search`), `unknown` for a method of that
/// service the server does not have, `None` for other services (health,
/// reflection), which are not counted.
pub fn method_label(path: &str) -> Option<&str> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let (service, method) = path.split_once('/')?;
    if service != visage_proto::SERVICE_NAME {
        return None;
    }
    Some(if auth::visage_role(method).is_some() {
        method
    } else {
        "unknown"
    })
}

/// The status code in a header map's `grpc-status`, if it has one (the
/// headers of a trailers-only response, or trailers), as its name (`Ok`,
/// `NotFound`, ...).
pub fn status_code(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("grpc-status")
        .map(|v| format!("{:?}", tonic::Code::from_bytes(v.as_bytes())))
}

/// One call being timed.
struct Call {
    rpc: RpcMetrics,
    method: String,
    start: Instant,
}

impl Call {
    fn finish(self, code: &str) {
        let elapsed = self.start.elapsed().as_secs_f64();
        self.rpc
            .latency
            .get_or_create(&MethodLabels {
                method: self.method.clone(),
            })
            .observe(elapsed);
        self.rpc
            .requests
            .get_or_create(&CallLabels {
                method: self.method,
                code: code.to_owned(),
            })
            .inc();
    }
}

/// A tower layer recording each call of `visage.v1.Visage` into the
/// metrics (without metrics it only passes responses through). It sits
/// in front of every other layer, so calls refused for their key or size are
/// counted with their codes.
#[derive(Debug, Clone, Default)]
pub struct RpcMetricsLayer {
    rpc: Option<RpcMetrics>,
}

impl RpcMetricsLayer {
    /// A layer that records nothing (metrics off).
    pub fn off() -> RpcMetricsLayer {
        RpcMetricsLayer::default()
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RecordRpc<S>;

    fn layer(&self, inner: S) -> RecordRpc<S> {
        RecordRpc {
            inner,
            rpc: self.rpc.clone(),
        }
    }
}

/// The service of [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RecordRpc<S> {
    inner: S,
    rpc: Option<RpcMetrics>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RecordRpc<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<RpcBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let call = self.rpc.as_ref().and_then(|rpc| {
            method_label(req.uri().path()).map(|m| Call {
                rpc: rpc.clone(),
                method: m.to_owned(),
                start: Instant::now(),
            })
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let (parts, body) = resp.into_parts();
            let mut call = call;
            // A trailers-only response (errors) has its status in the headers;
            // others send it in the trailers, at the end of the body.
            if let Some(code) = status_code(&parts.headers)
                && let Some(c) = call.take()
            {
                c.finish(&code);
            }
            Ok(http::Response::from_parts(
                parts,
                RpcBody {
                    inner: Box::pin(body),
                    call,
                },
            ))
        })
    }
}

/// A response body that records its call's status when the trailers pass:
/// `Unknown` if the body ends without a status, `Cancelled` if it is dropped
/// before its end (the client went away).
pub struct RpcBody<B> {
    inner: Pin<Box<B>>,
    call: Option<Call>,
}

impl<B> Drop for RpcBody<B> {
    fn drop(&mut self) {
        if let Some(c) = self.call.take() {
            c.finish("Cancelled");
        }
    }
}

impl<B: http_body::Body> http_body::Body for RpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = this.inner.as_mut().poll_frame(cx);
        if this.call.is_some() {
            let code = match &polled {
                Poll::Ready(Some(Ok(frame))) => frame.trailers_ref().map(|t| {
                    status_code(t).unwrap_or_else(|| format!("{:?}", tonic::Code::Unknown))
                }),
                Poll::Ready(Some(Err(_)) | None) => Some(format!("{:?}", tonic::Code::Unknown)),
                Poll::Pending => None,
            };
            if let Some(code) = code
                && let Some(c) = this.call.take()
            {
                c.finish(&code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------
// Galleries, read at scrape time

/// What one gallery reports at a scrape.
struct GalleryRow {
    name: String,
    stats: GalleryStats,
    counters: GalleryCounters,
    head: Option<Arc<HeadInfo>>,
    progress: Vec<visage_engine::OperationProgress>,
}

/// Reads every open gallery at scrape time (see the module documentation).
#[derive(Debug)]
pub struct EngineCollector {
    engine: Arc<Engine>,
}

type Gauge = (&'static str, &'static str, fn(&GalleryStats) -> u64);

/// The per-gallery gauges taken from `GalleryStats`.
const GALLERY_GAUGES: &[Gauge] = &[
    ("visage_gallery_live_rows", "Live embeddings", |s| s.live),
    (
        "visage_gallery_deleted_rows",
        "Deleted or replaced embeddings still on disk (until compaction)",
        |s| s.deleted,
    ),
    (
        "visage_gallery_subjects",
        "Distinct subjects with a live embedding",
        |s| s.subjects,
    ),
    ("visage_gallery_segments", "Segment files", |s| s.segments),
    (
        "visage_gallery_disk_bytes",
        "Bytes of all files in the gallery's directory",
        |s| s.bytes_on_disk,
    ),
    (
        "visage_gallery_unflushed_rows",
        "Rows in the memtable, not yet flushed to a segment (held in the WAL)",
        |s| s.memtable_rows,
    ),
    (
        "visage_gallery_exception_rows",
        "Rows whose 8-bit codes the quantiser's bound does not cover (scored in f32)",
        |s| s.exception_rows,
    ),
    (
        "visage_gallery_outdated_segments",
        "Segments of an older format (forced compaction rewrites them)",
        |s| s.outdated_segments,
    ),
];

fn gallery_labels(name: &str) -> [(&'static str, &str); 1] {
    [("gallery", name)]
}

/// One histogram sample from the engine's fixed buckets.
fn encode_counts(
    enc: &mut prometheus_client::encoding::MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    h: &HistogramCounts,
) -> fmt::Result {
    let mut buckets: Vec<(f64, u64)> = h
        .bounds
        .iter()
        .copied()
        .zip(h.counts.iter().copied())
        .collect();
    buckets.push((f64::INFINITY, h.counts.last().copied().unwrap_or(0)));
    enc.encode_family(labels)?
        .encode_histogram::<NoLabelSet>(h.sum, h.count(), &buckets, None)
}

impl EngineCollector {
    fn rows(&self) -> Vec<GalleryRow> {
        self.engine
            .list_galleries()
            .into_iter()
            // Dropped since it was listed: left out.
            .filter_map(|name| self.engine.gallery(&name).ok())
            .map(|g| GalleryRow {
                name: g.name().to_owned(),
                stats: g.stats(),
                counters: g.counters(),
                head: g.head(),
                progress: g.progress(),
            })
            .collect()
    }
}

impl Collector for EngineCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let rows = self.rows();
        ConstGauge::new(rows.len() as u64).encode(enc.encode_descriptor(
            "visage_galleries",
            "Open galleries",
            None,
            MetricType::Gauge,
        )?)?;
        if rows.is_empty() {
            return Ok(());
        }
        for (name, help, value) in GALLERY_GAUGES {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for r in &rows {
                ConstGauge::new(value(&r.stats))
                    .encode(m.encode_family(&gallery_labels(&r.name))?)?;
            }
        }

        // Which scan settled the probes.
        let mut m = enc.encode_descriptor(
            "visage_scan_probes",
            "Probes of exact searches and identifications by the scan that settled them: screened (first pass over the 8-bit codes, few probes), screened_widened (its second pass), int_tiled (integer batch scan), f32_tiled (f32 batch scan), direct (every row in f32)",
            None,
            MetricType::Counter,
        )?;
        for r in &rows {
            let s = &r.stats.scans;
            for (scan, v) in [
                ("screened", s.screened),
                ("screened_widened", s.widened),
                ("int_tiled", s.int_tiled),
                ("f32_tiled", s.f32_batch),
                ("direct", s.direct),
            ] {
                ConstCounter::new(v)
                    .encode(m.encode_family(&[("gallery", r.name.as_str()), ("scan", scan)])?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "visage_scan_fallbacks",
            "Times the exactness proof could not settle a probe and sent it on to a later scan",
            None,
            MetricType::Counter,
        )?;
        for r in &rows {
            ConstCounter::new(r.stats.scans.fallbacks)
                .encode(m.encode_family(&gallery_labels(&r.name))?)?;
        }

        // The write path.
        for (name, help, pick) in [
            (
                "visage_wal_group_batches",
                "Batches (insert or delete calls) each WAL group commit wrote together",
                (|c: &GalleryCounters| &c.wal_group_batches)
                    as fn(&GalleryCounters) -> &HistogramCounts,
            ),
            (
                "visage_wal_group_records",
                "WAL records each group commit wrote with one write",
                |c| &c.wal_group_records,
            ),
            (
                "visage_wal_fsync_duration_seconds",
                "Seconds each WAL fdatasync of a group commit took",
                |c| &c.wal_fsync_seconds,
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for r in &rows {
                encode_counts(&mut m, &gallery_labels(&r.name), pick(&r.counters))?;
            }
        }

        // Flushes and compactions.
        let ops = |c: &GalleryCounters| {
            [
                ("flush", c.flush.clone()),
                ("compaction", c.compaction.clone()),
            ]
        };
        let mut m = enc.encode_descriptor(
            "visage_maintenance_runs",
            "Flushes (memtable to segment) and compactions (segments merged into one) finished, by operation",
            None,
            MetricType::Counter,
        )?;
        for r in &rows {
            for (op, c) in ops(&r.counters) {
                ConstCounter::new(c.runs)
                    .encode(m.encode_family(&[("gallery", r.name.as_str()), ("operation", op)])?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "visage_maintenance_duration_seconds",
            "Seconds each flush or compaction took, by operation",
            None,
            MetricType::Histogram,
        )?;
        for r in &rows {
            for (op, c) in ops(&r.counters) {
                encode_counts(
                    &mut m,
                    &[("gallery", r.name.as_str()), ("operation", op)],
                    &c.seconds,
                )?;
            }
        }
        let mut m = enc.encode_descriptor(
            "visage_maintenance_written_bytes",
            "Bytes of segment files flushes and compactions wrote, by operation",
            None,
            MetricType::Counter,
        )?;
        for r in &rows {
            for (op, c) in ops(&r.counters) {
                ConstCounter::new(c.bytes_written)
                    .encode(m.encode_family(&[("gallery", r.name.as_str()), ("operation", op)])?)?;
            }
        }

        // Long operations in progress (compaction, flush, backup): one
        // sample per running operation, none when idle.
        type Part = fn(&visage_engine::OperationProgress) -> u64;
        let parts: [(&str, &str, Part); 4] = [
            (
                "visage_operation_rows_done",
                "Rows a running compaction, flush or backup has written or copied",
                |p| p.rows_done,
            ),
            (
                "visage_operation_rows_planned",
                "Rows a running compaction, flush or backup will write or copy",
                |p| p.rows_total,
            ),
            (
                "visage_operation_bytes_done",
                "Bytes a running compaction, flush or backup has written or copied",
                |p| p.bytes_done,
            ),
            (
                "visage_operation_bytes_planned",
                "Bytes a running compaction, flush or backup will write or copy",
                |p| p.bytes_total,
            ),
        ];
        if rows.iter().any(|r| !r.progress.is_empty()) {
            for (name, help, part) in parts {
                let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for r in &rows {
                    // Two backups of one gallery may run at once: summed.
                    let mut by_kind: std::collections::BTreeMap<&str, u64> = Default::default();
                    for p in &r.progress {
                        *by_kind.entry(p.kind).or_default() += part(p);
                    }
                    for (kind, v) in by_kind {
                        ConstGauge::new(v).encode(m.encode_family(&[
                            ("gallery", r.name.as_str()),
                            ("operation", kind),
                        ])?)?;
                    }
                }
            }
        }

        // The head.
        let mut m = enc.encode_descriptor(
            "visage_head_trained",
            "1 if the gallery has a trained scoring head, else 0",
            None,
            MetricType::Gauge,
        )?;
        for r in &rows {
            let trained = r.head.as_ref().is_some_and(|h| h.trained);
            ConstGauge::new(i64::from(trained))
                .encode(m.encode_family(&gallery_labels(&r.name))?)?;
        }
        let calibrated: Vec<(&GalleryRow, &HeadInfo)> = rows
            .iter()
            .filter_map(|r| r.head.as_deref().map(|h| (r, h)))
            .collect();
        if !calibrated.is_empty() {
            let mut m = enc.encode_descriptor(
                "visage_head_target_far",
                "False-accept rate the gallery's thresholds were calibrated for (galleries with a HEAD file)",
                None,
                MetricType::Gauge,
            )?;
            for (r, h) in &calibrated {
                ConstGauge::new(h.target_far).encode(m.encode_family(&gallery_labels(&r.name))?)?;
            }
            let mut m = enc.encode_descriptor(
                "visage_head_threshold",
                "Decision thresholds in use, by kind: pair_logit and pair_probability (1:1, trained head), pair_distance (1:1 squared distance), open_logit and open_distance (identification, for the gallery's current number of subjects)",
                None,
                MetricType::Gauge,
            )?;
            for (r, h) in &calibrated {
                let rule = h.open_rule(r.stats.subjects);
                let kinds = [
                    ("pair_logit", h.trained.then_some(h.logit_threshold)),
                    ("pair_probability", h.trained.then_some(h.threshold)),
                    ("pair_distance", Some(h.distance_threshold)),
                    ("open_logit", rule.and_then(|r| r.logit)),
                    ("open_distance", rule.and_then(|r| r.distance)),
                ];
                for (kind, v) in kinds {
                    let Some(v) = v.filter(|v| v.is_finite()) else {
                        continue;
                    };
                    ConstGauge::new(f64::from(v)).encode(
                        m.encode_family(&[("gallery", r.name.as_str()), ("kind", kind)])?,
                    )?;
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The process

/// Resident memory and open file descriptors, from `/proc/self` (left out
/// where there is no `/proc`).
#[derive(Debug)]
struct ProcessCollector;

/// Resident set size in bytes, from `/proc/self/status` (`VmRSS: N kB`).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Open file descriptors: entries of `/proc/self/fd`.
fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        if let Some(rss) = resident_bytes() {
            ConstGauge::new(rss).encode(enc.encode_descriptor(
                "visage_process_resident_memory_bytes",
                "Resident memory of the server process, in bytes",
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(fds) = open_fds() {
            ConstGauge::new(fds).encode(enc.encode_descriptor(
                "visage_process_open_fds",
                "File descriptors the server process has open",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_of_paths() {
        assert_eq!(method_label("/visage.v1.Visage/Search"), Some("Search"));
        assert_eq!(
            method_label("/visage.v1.Visage/InsertStream"),
            Some("InsertStream")
        );
        assert_eq!(
            method_label("/visage.v1.Visage/NoSuchMethod"),
            Some("unknown")
        );
        assert_eq!(method_label("/visage.v1.Visage/"), Some("unknown"));
        assert_eq!(method_label("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            method_label("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(method_label("/"), None);
        assert_eq!(method_label(""), None);
    }

    #[test]
    fn status_codes_from_headers_and_trailers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(status_code(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert_eq!(status_code(&h).as_deref(), Some("Ok"));
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(status_code(&h).as_deref(), Some("NotFound"));
        h.insert("grpc-status", http::HeaderValue::from_static("16"));
        assert_eq!(status_code(&h).as_deref(), Some("Unauthenticated"));
        h.insert("grpc-status", http::HeaderValue::from_static("garbage"));
        assert_eq!(status_code(&h).as_deref(), Some("Unknown"));
        // What tonic writes for an error status.
        let mut h = http::HeaderMap::new();
        tonic::Status::permission_denied("no")
            .add_header(&mut h)
            .expect("header");
        assert_eq!(status_code(&h).as_deref(), Some("PermissionDenied"));
    }

    /// A response body of fixed frames.
    struct Frames(std::collections::VecDeque<http_body::Frame<&'static [u8]>>);

    impl http_body::Body for Frames {
        type Data = &'static [u8];
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<&'static [u8]>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn trailers(code: &'static str) -> http_body::Frame<&'static [u8]> {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static(code));
        http_body::Frame::trailers(t)
    }

    /// Call `path` on a service answering with `status` in the headers (or
    /// none) and `frames` as the body; read `read` frames of it, then drop it.
    async fn call(
        rpc: &RpcMetrics,
        path: &str,
        status: Option<&'static str>,
        frames: Vec<http_body::Frame<&'static [u8]>>,
        read: usize,
    ) {
        use http_body::Body as _;
        let frames = std::sync::Mutex::new(Some(frames));
        let inner = tower::service_fn(move |_req: http::Request<()>| {
            let mut resp = http::Response::new(Frames(
                frames
                    .lock()
                    .expect("frames")
                    .take()
                    .unwrap_or_default()
                    .into(),
            ));
            if let Some(code) = status {
                resp.headers_mut()
                    .insert("grpc-status", http::HeaderValue::from_static(code));
            }
            std::future::ready(Ok::<_, std::convert::Infallible>(resp))
        });
        let mut svc = RpcMetricsLayer {
            rpc: Some(rpc.clone()),
        }
        .layer(inner);
        let req = http::Request::builder()
            .uri(path)
            .body(())
            .expect("request");
        let mut body = svc.call(req).await.expect("response").into_body();
        for _ in 0..read {
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        }
    }

    fn count(rpc: &RpcMetrics, method: &str, code: &str) -> u64 {
        rpc.requests
            .get_or_create(&CallLabels {
                method: method.into(),
                code: code.into(),
            })
            .get()
    }

    #[tokio::test]
    async fn the_layer_records_status_from_headers_or_trailers() {
        let rpc = RpcMetrics::default();
        let data = || http_body::Frame::data(&b"message"[..]);
        // Unary success: data, then OK trailers (no status in the headers).
        call(
            &rpc,
            "/visage.v1.Visage/Search",
            None,
            vec![data(), trailers("0")],
            3,
        )
        .await;
        assert_eq!(count(&rpc, "Search", "Ok"), 1);
        // Trailers-only error: counted at the headers.
        call(&rpc, "/visage.v1.Visage/Search", Some("5"), vec![], 0).await;
        assert_eq!(count(&rpc, "Search", "NotFound"), 1);
        // A stream ending with an error status in its trailers.
        call(
            &rpc,
            "/visage.v1.Visage/Export",
            None,
            vec![data(), data(), trailers("7")],
            4,
        )
        .await;
        assert_eq!(count(&rpc, "Export", "PermissionDenied"), 1);
        // The client went away before the status.
        call(
            &rpc,
            "/visage.v1.Visage/Export",
            None,
            vec![data(), trailers("0")],
            1,
        )
        .await;
        assert_eq!(count(&rpc, "Export", "Cancelled"), 1);
        assert_eq!(count(&rpc, "Export", "Ok"), 0);
        // A body that ends without a status.
        call(&rpc, "/visage.v1.Visage/Get", None, vec![data()], 2).await;
        assert_eq!(count(&rpc, "Get", "Unknown"), 1);
        // Health checks are not counted; unknown methods are, as `unknown`.
        call(
            &rpc,
            "/grpc.health.v1.Health/Check",
            None,
            vec![trailers("0")],
            1,
        )
        .await;
        call(&rpc, "/visage.v1.Visage/Nope", Some("12"), vec![], 0).await;
        assert_eq!(count(&rpc, "unknown", "Unimplemented"), 1);
        let mut text = String::new();
        let mut reg = Registry::default();
        reg.register("r", "r", rpc.requests.clone());
        reg.register("t", "t", rpc.latency.clone());
        prometheus_text::encode(&mut text, &reg).expect("encode");
        assert!(!text.contains("Health"), "{text}");
        // Latency: one observation per counted call.
        assert!(text.contains("t_count{method=\"Search\"} 2\n"), "{text}");
        assert!(text.contains("t_count{method=\"Export\"} 2\n"), "{text}");
    }

    #[test]
    fn process_readings() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
        assert!(open_fds().is_some_and(|n| n >= 3));
    }
}

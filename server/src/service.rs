//! The `visage.v1.Visage` service: thin handlers over the engine.
//!
//! Each handler validates what the engine does not (thresholds, limits that
//! exist only on the wire), converts, calls the engine inside
//! `spawn_blocking` (engine calls take locks, fsync and scan vectors: never on
//! the async runtime), and converts back. Engine errors become statuses in
//! [`crate::status`] only.
//!
//! A request that names a model (`model` on Insert, Search, Identify and
//! Verify) is checked against the gallery's before anything else is done
//! with it, so a mismatch changes nothing. Limits that depend on the size of
//! a vector follow the gallery's dimension (the engine's `Limits::for_dim`
//! for inserts and probes, [`crate::limits::get_ids`] for Get).

use crate::convert::{self, distance_threshold};
use crate::limits::{self, MAX_GET_IDS, MAX_RESULTS};
use crate::packed;
use crate::status::{ApiError, at, in_field, invalid, too_large};
use std::sync::Arc;
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use visage_engine::{
    Engine, Gallery, IdentifyOptions, InsertOutcome, Limits, MAX_IDENTIFY_K, MAX_K, MAX_PROBES,
    RankBy, ScanMode, SearchOptions, VerifyOptions,
};
use visage_proto::v1 as pb;
use visage_proto::v1::visage_server::Visage;

/// The service implementation, sharing one engine.
#[derive(Debug, Clone)]
pub struct VisageService {
    engine: Arc<Engine>,
    shutdown: watch::Receiver<bool>,
    stream_idle: std::time::Duration,
    backup_rate: Option<u64>,
    import_root: Option<std::path::PathBuf>,
}

/// The metadata of a cluster node's identify call to one shard: the whole
/// gallery's number of subjects, for the open-set decision.
pub const GALLERY_SUBJECTS_HEADER: &str = "visage-gallery-subjects";

/// Default longest wait for the next message of a streaming insert.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl VisageService {
    /// A service over `engine`. When `shutdown` turns true, streaming inserts
    /// stop taking messages (unary calls in flight finish normally).
    pub fn new(engine: Arc<Engine>, shutdown: watch::Receiver<bool>) -> Self {
        VisageService {
            engine,
            shutdown,
            stream_idle: DEFAULT_STREAM_IDLE_TIMEOUT,
            backup_rate: None,
            import_root: None,
        }
    }

    /// Import only files under `root` (`None`: any file the server can read).
    pub fn with_import_root(mut self, root: Option<std::path::PathBuf>) -> Self {
        self.import_root = root;
        self
    }

    /// `path` made absolute and, with an import root, checked to lie under it
    /// (after resolving links, so no link leads out).
    fn import_path(&self, field: &str, path: &str) -> Result<std::path::PathBuf, Status> {
        if path.is_empty() {
            return Err(Status::invalid_argument(format!("{field}: no path given")));
        }
        let p = std::path::Path::new(path);
        let Some(root) = &self.import_root else {
            return Ok(p.to_owned());
        };
        let resolved = p
            .canonicalize()
            .map_err(|e| Status::invalid_argument(format!("{field}: {path}: cannot open: {e}")))?;
        let root = root.canonicalize().map_err(|e| {
            Status::failed_precondition(format!(
                "the server's import root {} cannot be opened: {e}",
                root.display()
            ))
        })?;
        if !resolved.starts_with(&root) {
            return Err(Status::permission_denied(format!(
                "{field}: {path} is not under the server's import root {}",
                root.display()
            )));
        }
        Ok(resolved)
    }

    /// Copy backups at most this many bytes a second (`None`: no limit).
    pub fn with_backup_rate(mut self, bytes_per_sec: Option<u64>) -> Self {
        self.backup_rate = bytes_per_sec;
        self
    }

    /// End a streaming insert whose next message does not arrive within
    /// `timeout` (DEADLINE_EXCEEDED; the batches before it stay committed).
    pub fn with_stream_idle_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.stream_idle = timeout;
        self
    }

    /// Run engine work on the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, Status>
    where
        F: FnOnce(&Engine) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let engine = self.engine.clone();
        match tokio::task::spawn_blocking(move || f(&engine)).await {
            Ok(r) => r.map_err(Status::from),
            Err(e) => {
                tracing::error!(error = %e, "engine task failed");
                Err(Status::internal(format!("engine task failed: {e}")))
            }
        }
    }
}

/// The gallery named by a request's `gallery` field.
fn open(engine: &Engine, name: &str) -> Result<Arc<Gallery>, ApiError> {
    visage_engine::check_gallery_name(name).map_err(|e| at("gallery", e))?;
    Ok(engine.gallery(name)?)
}

/// The gallery named by a request's `gallery` field, when the request's
/// `model` (if it names one) is the gallery's: checked before the request
/// does anything.
fn open_for(engine: &Engine, name: &str, model: &str) -> Result<Arc<Gallery>, ApiError> {
    let g = open(engine, name)?;
    g.check_model(model)?;
    Ok(g)
}

/// Insert one request's batch, in either form, into the gallery `name`: the
/// counts, and the ids the gallery assigned (a packed batch without ids).
fn insert_one(
    engine: &Engine,
    name: &str,
    req: pb::InsertRequest,
) -> Result<(InsertOutcome, Vec<u64>, Vec<pb::Conflict>), ApiError> {
    packed::exclusive("embeddings", req.embeddings.len(), req.matrix.as_ref())?;
    let check = pb::ConflictCheck::try_from(req.conflict_check).map_err(|_| {
        invalid(
            "conflict_check",
            format_args!("unknown value {}", req.conflict_check),
        )
    })?;
    let g = open_for(engine, name, &req.model)?;
    let Some(m) = &req.matrix else {
        packed::no_packed_parts(&req.ids, &req.subjects)?;
        // The check needs whole rows; a batch with a row of another length
        // is refused by the insert, naming it.
        let conflicts = if check != pb::ConflictCheck::Off
            && req.embeddings.iter().all(|e| e.vector.len() == g.dim())
        {
            let ids: Vec<u64> = req.embeddings.iter().map(|e| e.id).collect();
            let subjects: Vec<&str> = req.embeddings.iter().map(|e| e.subject.as_str()).collect();
            let vectors: Vec<f32> = req
                .embeddings
                .iter()
                .flat_map(|e| e.vector.iter().copied())
                .collect();
            conflict_check(&g, check, "embeddings", &ids, &subjects, &vectors)
                .map_err(ApiError::from)?
        } else {
            Vec::new()
        };
        let out = g.insert(&convert::embeddings_in(req.embeddings))?;
        return Ok((out, Vec::new(), conflicts));
    };
    let b = packed::InsertBatch::new(m, req.ids, req.subjects)?;
    packed::check_dim("matrix", m, g.dim())?;
    let conflicts = if check == pb::ConflictCheck::Off {
        Vec::new()
    } else {
        let ids = b.ids.as_deref().unwrap_or(&[]);
        conflict_check(&g, check, "matrix", ids, &b.subjects, &b.values).map_err(|e| match e {
            ConflictError::Engine(e) => packed::insert_error(e),
            ConflictError::Api(e) => e,
        })?
    };
    let assign = b.ids.is_none();
    let (out, ids) = g
        .insert_rows(b.ids.as_deref(), &b.subjects, &b.values)
        .map_err(packed::insert_error)?;
    Ok((out, if assign { ids } else { Vec::new() }, conflicts))
}

/// Why a conflict check stopped an insert.
enum ConflictError {
    /// The engine refused the batch (shape, values, no calibration).
    Engine(visage_engine::Error),
    /// Conflicts under CONFLICT_CHECK_REJECT.
    Api(ApiError),
}

impl From<ConflictError> for ApiError {
    fn from(e: ConflictError) -> Self {
        match e {
            ConflictError::Engine(e) => e.into(),
            ConflictError::Api(e) => e,
        }
    }
}

/// The conflicts of a batch (REPORT), or the refusal that lists them (REJECT).
fn conflict_check<S: AsRef<str>>(
    g: &Gallery,
    check: pb::ConflictCheck,
    field: &str,
    ids: &[u64],
    subjects: &[S],
    vectors: &[f32],
) -> Result<Vec<pb::Conflict>, ConflictError> {
    let found = g
        .conflicts(ids, subjects, vectors)
        .map_err(ConflictError::Engine)?;
    let wire: Vec<pb::Conflict> = found
        .into_iter()
        .map(|c| pb::Conflict {
            position: c.position as u32,
            subject: subjects[c.position].as_ref().to_owned(),
            other_subject: c.other_subject,
            other_id: c.other_id,
            other_position: c.other_position.map(|p| p as u32),
            distance: c.distance,
            probability: c.probability,
        })
        .collect();
    if check == pb::ConflictCheck::Reject && !wire.is_empty() {
        let first: Vec<String> = wire
            .iter()
            .take(5)
            .map(|c| {
                let other = match c.other_position {
                    Some(p) => format!("{field}[{p}] of the batch"),
                    None => format!("id {}", c.other_id),
                };
                format!(
                    "{field}[{}] {:?} matches {other} ({:?}) at distance {:.4}",
                    c.position,
                    visage_engine::shown(&c.subject),
                    visage_engine::shown(&c.other_subject),
                    c.distance
                )
            })
            .collect();
        return Err(ConflictError::Api(ApiError(Status::failed_precondition(
            format!(
                "conflict_check: {} of the batch's embeddings look like subjects enrolled under other names, so nothing was inserted: {}{}",
                wire.len(),
                first.join("; "),
                if wire.len() > 5 { "; ..." } else { "" }
            ),
        ))));
    }
    Ok(wire)
}

/// Bytes of vectors an Export message carries when the request leaves
/// `batch_rows` 0.
const EXPORT_BATCH_BYTES: usize = 4 << 20;

/// Subjects a ListSubjects page holds when the request leaves `page_size` 0.
pub const DEFAULT_SUBJECTS_PAGE: usize = 1000;

/// `probes × k` bounded so one request cannot ask for unbounded results.
/// Skipped when `k` itself is out of range: the engine reports that.
fn check_results(field: &str, n: usize, k: usize, max_k: usize) -> Result<(), ApiError> {
    if (1..=max_k).contains(&k) && n.saturating_mul(k) > MAX_RESULTS {
        let noun = if field == "matrix" { "rows" } else { field };
        return Err(ApiError(Status::resource_exhausted(format!(
            "{field}: {n} {noun} × k = {k} ask for {} results, more than the limit of {MAX_RESULTS} per request; send fewer {noun} per request",
            n.saturating_mul(k)
        ))));
    }
    Ok(())
}

/// OUT_OF_RANGE "decoded message length too large" from tonic's decoder, as
/// RESOURCE_EXHAUSTED with a message saying what to do; other statuses as is.
pub fn oversized(s: Status) -> Status {
    const PREFIX: &str = "Error, decoded message length too large: ";
    match s.message().strip_prefix(PREFIX) {
        Some(rest) if s.code() == tonic::Code::OutOfRange => Status::resource_exhausted(format!(
            "request message too large ({rest}); send smaller batches or raise the server's --max-message-bytes"
        )),
        _ => s,
    }
}

/// Committed counts so far of a streaming insert.
#[derive(Debug, Default, Clone, Copy)]
struct StreamProgress {
    batches: u64,
    outcome: InsertOutcome,
}

impl StreamProgress {
    /// A status for a stream that stopped at message `index`.
    fn fail(&self, index: u64, s: Status) -> Status {
        let committed = self.outcome.inserted + self.outcome.replaced;
        let mut out = Status::new(
            s.code(),
            format!(
                "messages[{index}]: {}; the {} earlier messages ({committed} embeddings) were committed",
                s.message(),
                self.batches
            ),
        );
        let md = out.metadata_mut();
        md.insert(
            "visage-committed-batches",
            MetadataValue::from(self.batches),
        );
        md.insert(
            "visage-committed-embeddings",
            MetadataValue::from(committed),
        );
        out
    }
}

#[tonic::async_trait]
impl Visage for VisageService {
    async fn create_gallery(
        &self,
        request: Request<pb::CreateGalleryRequest>,
    ) -> Result<Response<pb::GalleryInfo>, Status> {
        let req = request.into_inner();
        let spec = convert::spec_in(&req);
        for (field, n) in [("shards", req.shards), ("replicas", req.replicas)] {
            if n > 1 {
                return Err(Status::failed_precondition(format!(
                    "{field}: {n} needs cluster mode (start the server with --nats and --etcd); a single node holds one shard"
                )));
            }
        }
        let name = req.name;
        let info = self
            .blocking(move |engine| {
                visage_engine::check_gallery_name(&name).map_err(|e| at("name", e))?;
                let g = engine.create_gallery_with(&name, &spec)?;
                tracing::info!(
                    gallery = %name,
                    dim = spec.dim,
                    model = %spec.model,
                    normalize = spec.normalize,
                    "gallery created"
                );
                Ok(convert::info_out(&g))
            })
            .await?;
        Ok(Response::new(info))
    }

    async fn drop_gallery(
        &self,
        request: Request<pb::DropGalleryRequest>,
    ) -> Result<Response<pb::DropGalleryResponse>, Status> {
        let name = request.into_inner().name;
        let dropped = self
            .blocking(move |engine| {
                visage_engine::check_gallery_name(&name).map_err(|e| at("name", e))?;
                let before = convert::info_out(&*engine.gallery(&name)?);
                engine.drop_gallery(&name)?;
                tracing::info!(gallery = %name, "gallery dropped");
                Ok(before)
            })
            .await?;
        Ok(Response::new(pb::DropGalleryResponse {
            dropped: Some(dropped),
        }))
    }

    async fn list_galleries(
        &self,
        _request: Request<pb::ListGalleriesRequest>,
    ) -> Result<Response<pb::ListGalleriesResponse>, Status> {
        let galleries = self
            .blocking(|engine| {
                Ok(engine
                    .list_galleries()
                    .into_iter()
                    // A gallery dropped since the listing is simply skipped.
                    .filter_map(|n| engine.gallery(&n).ok())
                    .map(|g| convert::info_out(&g))
                    .collect())
            })
            .await?;
        Ok(Response::new(pb::ListGalleriesResponse { galleries }))
    }

    async fn list_subjects(
        &self,
        request: Request<pb::ListSubjectsRequest>,
    ) -> Result<Response<pb::ListSubjectsResponse>, Status> {
        let req = request.into_inner();
        let size = if req.page_size == 0 {
            DEFAULT_SUBJECTS_PAGE
        } else {
            req.page_size as usize
        };
        let after = packed::page_after(&req.page_token)?;
        let page = self
            .blocking(move |engine| {
                let g = open(engine, &req.gallery)?;
                Ok(g.subjects(after.as_deref(), size)?)
            })
            .await?;
        let next_page_token = match page.last() {
            Some((s, _)) if page.len() == size => packed::page_token(s),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListSubjectsResponse {
            subjects: page
                .into_iter()
                .map(|(subject, embeddings)| pb::SubjectCount {
                    subject,
                    embeddings,
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn get_gallery(
        &self,
        request: Request<pb::GetGalleryRequest>,
    ) -> Result<Response<pb::GalleryInfo>, Status> {
        let name = request.into_inner().name;
        let info = self
            .blocking(move |engine| {
                visage_engine::check_gallery_name(&name).map_err(|e| at("name", e))?;
                Ok(convert::info_out(&*engine.gallery(&name)?))
            })
            .await?;
        Ok(Response::new(info))
    }

    async fn insert(
        &self,
        request: Request<pb::InsertRequest>,
    ) -> Result<Response<pb::InsertResponse>, Status> {
        let req = request.into_inner();
        let (out, ids, conflicts) = self
            .blocking(move |engine| {
                let name = req.gallery.clone();
                insert_one(engine, &name, req)
            })
            .await?;
        Ok(Response::new(pb::InsertResponse {
            inserted: out.inserted,
            replaced: out.replaced,
            batches: 1,
            ids,
            conflicts,
            seq: 0,
        }))
    }

    async fn insert_stream(
        &self,
        request: Request<Streaming<pb::InsertRequest>>,
    ) -> Result<Response<pb::InsertResponse>, Status> {
        let mut stream = request.into_inner();
        let mut shutdown = self.shutdown.clone();
        let mut progress = StreamProgress::default();
        let mut gallery: Option<String> = None;
        let mut assigned = Vec::new();
        let mut conflicts = Vec::new();
        loop {
            let index = progress.batches;
            let next = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => {
                    return Err(progress.fail(index, Status::unavailable(
                        "the server is shutting down and takes no further messages; resend the rest",
                    )));
                }
                m = tokio::time::timeout(self.stream_idle, stream.message()) => match m {
                    Ok(m) => m,
                    Err(_) => {
                        return Err(progress.fail(index, Status::deadline_exceeded(format!(
                            "no message arrived for {} s: the stream is closed; resend the rest",
                            self.stream_idle.as_secs_f64()
                        ))));
                    }
                },
            };
            let mut msg = match next {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(s) => return Err(progress.fail(index, oversized(s))),
            };
            let name = match (&gallery, std::mem::take(&mut msg.gallery)) {
                (None, n) => gallery.insert(n).clone(),
                (Some(g), n) if n.is_empty() || n == *g => g.clone(),
                (Some(g), n) => {
                    return Err(progress.fail(
                        index,
                        invalid(
                            "gallery",
                            format_args!(
                                "{:?} differs from {:?} named by the first message",
                                visage_engine::shown(&n),
                                visage_engine::shown(g)
                            ),
                        )
                        .0,
                    ));
                }
            };
            let (out, ids, found) = self
                .blocking(move |engine| insert_one(engine, &name, msg))
                .await
                .map_err(|s| progress.fail(index, s))?;
            progress.batches += 1;
            progress.outcome.inserted += out.inserted;
            progress.outcome.replaced += out.replaced;
            assigned.extend(ids);
            conflicts.extend(found);
        }
        if gallery.is_none() {
            return Err(invalid("gallery", "the stream sent no message").0);
        }
        Ok(Response::new(pb::InsertResponse {
            inserted: progress.outcome.inserted,
            replaced: progress.outcome.replaced,
            batches: progress.batches,
            ids: assigned,
            conflicts,
            seq: 0,
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let req = request.into_inner();
        let deleted = self
            .blocking(move |engine| {
                let g = open(engine, &req.gallery)?;
                Ok(g.delete(&req.ids, &req.subjects)?)
            })
            .await?;
        Ok(Response::new(pb::DeleteResponse { deleted, seq: 0 }))
    }

    type ExportStream = tokio_stream::wrappers::ReceiverStream<Result<pb::ExportBatch, Status>>;

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let req = request.into_inner();
        let (mut export, rows) = self
            .blocking(move |engine| {
                let g = open(engine, &req.gallery)?;
                let limit = Limits::for_dim(g.dim()).insert_batch;
                let rows = match req.batch_rows as usize {
                    0 => (EXPORT_BATCH_BYTES / (4 * g.dim())).clamp(1, limit),
                    n if n <= limit => n,
                    n => return Err(too_large("batch_rows", n, limit)),
                };
                Ok((g.export(), rows))
            })
            .await?;
        // Two batches ahead at most: a slow reader holds back the export,
        // not the server's memory.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            let dim = export.dim() as u32;
            while let Some(b) = export.next_batch(rows) {
                let msg = pb::ExportBatch {
                    matrix: Some(pb::Matrix {
                        rows: b.ids.len() as u32,
                        dim,
                        f32_le: packed::f32_le(&b.vectors),
                    }),
                    ids: b.ids,
                    subjects: b.subjects,
                };
                if tx.blocking_send(Ok(msg)).is_err() {
                    // The client went away.
                    break;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let req = request.into_inner();
        // The most any gallery allows, before anything is looked up ...
        if req.ids.len() > MAX_GET_IDS {
            return Err(too_large("ids", req.ids.len(), MAX_GET_IDS).into());
        }
        let found = self
            .blocking(move |engine| {
                let g = open(engine, &req.gallery)?;
                // ... and what this gallery's dimension allows.
                let limit = limits::get_ids(g.dim());
                if req.ids.len() > limit {
                    return Err(too_large("ids", req.ids.len(), limit));
                }
                Ok(g.get(&req.ids))
            })
            .await?;
        Ok(Response::new(pb::GetResponse {
            embeddings: found.into_iter().map(convert::embedding_out).collect(),
        }))
    }

    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let req = request.into_inner();
        let rank_by = match pb::RankBy::try_from(req.rank_by) {
            Ok(pb::RankBy::Distance) => RankBy::Distance,
            Ok(pb::RankBy::Head) => RankBy::Head,
            Err(_) => {
                return Err(
                    invalid("rank_by", format_args!("unknown value {}", req.rank_by)).into(),
                );
            }
        };
        let mode = match pb::ScanMode::try_from(req.mode) {
            Ok(pb::ScanMode::Exact) => ScanMode::Exact,
            Ok(pb::ScanMode::Quantized) => ScanMode::Quantized,
            Err(_) => {
                return Err(invalid("mode", format_args!("unknown value {}", req.mode)).into());
            }
        };
        let opts = SearchOptions {
            k: req.k as usize,
            rank_by,
            max_distance: distance_threshold("max_distance", req.max_distance)?,
            mode,
        };
        packed::exclusive("queries", req.queries.len(), req.matrix.as_ref())?;
        if let Some(m) = &req.matrix {
            check_results("matrix", m.rows as usize, opts.k, MAX_K)?;
            let (gallery, model, m) = (req.gallery, req.model, m.clone());
            let with_subjects = req.with_subjects;
            return Ok(Response::new(
                self.blocking(move |engine| {
                    let g = open_for(engine, &gallery, &model)?;
                    let values = packed::values("matrix", &m)?;
                    packed::check_dim("matrix", &m, g.dim())?;
                    let results = g
                        .search_with(&packed::rows(&values, m.dim), &opts)
                        .map_err(|e| in_field(e, "matrix"))?;
                    Ok(packed::search_response(results, opts.k, with_subjects))
                })
                .await?,
            ));
        }
        check_results("queries", req.queries.len(), opts.k, MAX_K)?;
        let queries = convert::vectors_in(req.queries);
        let (gallery, model) = (req.gallery, req.model);
        let results = self
            .blocking(move |engine| {
                open_for(engine, &gallery, &model)?
                    .search_with(&queries, &opts)
                    .map_err(|e| in_field(e, "queries").into())
            })
            .await?;
        Ok(Response::new(pb::SearchResponse {
            results: results
                .into_iter()
                .map(|hits| pb::SearchResult {
                    hits: hits.into_iter().map(convert::hit_out).collect(),
                })
                .collect(),
            ..pb::SearchResponse::default()
        }))
    }

    async fn identify(
        &self,
        request: Request<pb::IdentifyRequest>,
    ) -> Result<Response<pb::IdentifyResponse>, Status> {
        // A cluster node asking one shard: the open-set decision is for the
        // whole gallery's number of subjects (only the node role may send
        // the shard header, so only nodes may set it).
        let gallery_subjects = if request.metadata().contains_key(crate::auth::SHARD_HEADER) {
            request
                .metadata()
                .get(GALLERY_SUBJECTS_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        } else {
            None
        };
        let req = request.into_inner();
        let opts = IdentifyOptions {
            k: req.k as usize,
            min_probability: req.min_probability,
            max_distance: req.max_distance,
        };
        packed::exclusive("probes", req.probes.len(), req.matrix.as_ref())?;
        let n = req
            .matrix
            .as_ref()
            .map_or(req.probes.len(), |m| m.rows as usize);
        let field = if req.matrix.is_some() {
            "matrix"
        } else {
            "probes"
        };
        check_results(field, n, opts.k, MAX_IDENTIFY_K)?;
        let (gallery, model, matrix) = (req.gallery, req.model, req.matrix);
        let probes = convert::vectors_in(req.probes);
        let results = self
            .blocking(move |engine| {
                let g = open_for(engine, &gallery, &model)?;
                match matrix {
                    Some(m) => {
                        let values = packed::values("matrix", &m)?;
                        packed::check_dim("matrix", &m, g.dim())?;
                        g.identify_open_sized(
                            &packed::rows(&values, m.dim),
                            &opts,
                            gallery_subjects,
                        )
                        .map_err(|e| in_field(e, "matrix").into())
                    }
                    None => Ok(g.identify_open_sized(&probes, &opts, gallery_subjects)?),
                }
            })
            .await?;
        Ok(Response::new(pb::IdentifyResponse {
            results: results
                .into_iter()
                .map(convert::identification_out)
                .collect(),
        }))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let mut req = request.into_inner();
        packed::exclusive("pairs", req.pairs.len(), req.matrix.as_ref())?;
        // The most any gallery allows; the engine checks the gallery's own
        // limit for its dimension.
        let n = req
            .matrix
            .as_ref()
            .map_or(req.pairs.len(), |m| m.rows as usize);
        if n > MAX_PROBES {
            let field = if req.matrix.is_some() {
                "matrix"
            } else {
                "pairs"
            };
            return Err(too_large(field, n, MAX_PROBES).into());
        }
        let pairs = std::mem::take(&mut req.pairs)
            .into_iter()
            .enumerate()
            .map(|(i, p)| convert::pair_in(i, p))
            .collect::<Result<Vec<_>, _>>()?;
        let opts = VerifyOptions {
            min_probability: req.min_probability,
            max_distance: req.max_distance,
        };
        let verdicts = self
            .blocking(move |engine| {
                let g = open_for(engine, &req.gallery, &req.model)?;
                let pairs = packed::verify_pairs(&mut req, g.dim())?.unwrap_or(pairs);
                Ok(g.verify(&pairs, &opts)?)
            })
            .await?;
        Ok(Response::new(pb::VerifyResponse {
            verdicts: verdicts.into_iter().map(convert::verdict_out).collect(),
        }))
    }

    async fn train_head(
        &self,
        request: Request<pb::TrainHeadRequest>,
    ) -> Result<Response<pb::HeadInfo>, Status> {
        let req = request.into_inner();
        let opts = convert::train_options_in(&req);
        let head = self
            .blocking(move |engine| {
                let g = open(engine, &req.gallery)?;
                let h = g.train_head(&opts)?;
                tracing::info!(gallery = %req.gallery, auc = h.auc, tar_at_far = h.tar_at_far, target_far = h.target_far, prior = opts.prior, "head trained");
                Ok(convert::head_out(Some(&h), g.stats().subjects))
            })
            .await?;
        Ok(Response::new(head))
    }

    async fn get_head(
        &self,
        request: Request<pb::GetHeadRequest>,
    ) -> Result<Response<pb::HeadInfo>, Status> {
        let gallery = request.into_inner().gallery;
        let head = self
            .blocking(move |engine| Ok(convert::gallery_head_out(&*open(engine, &gallery)?)))
            .await?;
        Ok(Response::new(head))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        let gallery = request.into_inner().gallery;
        let r = self
            .blocking(move |engine| Ok(open(engine, &gallery)?.compact()?))
            .await?;
        Ok(Response::new(pb::CompactResponse {
            before: Some(convert::stats_out(r.before)),
            after: Some(convert::stats_out(r.after)),
        }))
    }

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::BackupResponse>, Status> {
        let r = request.into_inner();
        let opts = visage_engine::BackupOptions {
            max_bytes_per_sec: self.backup_rate,
        };
        let name = r.name.clone();
        let rep = self
            .blocking(move |engine| Ok(engine.backup(&r.gallery, &r.name, &opts)?))
            .await?;
        tracing::info!(backup = %name, rows = rep.rows, bytes = rep.bytes, linked = rep.linked, "backup taken");
        Ok(Response::new(pb::BackupResponse {
            name,
            rows: rep.rows,
            subjects: rep.subjects,
            files: rep.files,
            linked_files: rep.linked,
            bytes: rep.bytes,
            wal_file: rep.wal_file_no,
            wal_offset: rep.wal_offset,
        }))
    }

    async fn import(
        &self,
        request: Request<pb::ImportRequest>,
    ) -> Result<Response<pb::ImportResponse>, Status> {
        let r = request.into_inner();
        let vectors = self.import_path("vectors_path", &r.vectors_path)?;
        let subjects = self.import_path("subjects_path", &r.subjects_path)?;
        let ids = match r.ids_path.as_str() {
            "" => None,
            p => Some(self.import_path("ids_path", p)?),
        };
        let gallery = r.gallery.clone();
        let opts = visage_engine::ImportOptions { replace: r.replace };
        let rep = self
            .blocking(move |engine| {
                let g = engine.gallery(&r.gallery)?;
                let src = crate::import::FileSource::open(&vectors, &subjects, ids.as_deref())?;
                Ok(g.import(&src, opts)?)
            })
            .await?;
        tracing::info!(gallery = %gallery, rows = rep.rows, replaced = rep.replaced,
            segments = rep.segments, seconds = rep.seconds, "import done");
        Ok(Response::new(pb::ImportResponse {
            rows: rep.rows,
            replaced: rep.replaced,
            segments: rep.segments,
            bytes: rep.bytes,
            first_id: rep.first_assigned_id.unwrap_or(0),
            subjects: rep.subjects,
            seconds: rep.seconds,
        }))
    }

    async fn restore(
        &self,
        request: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::RestoreResponse>, Status> {
        let r = request.into_inner();
        let (rep, info) = self
            .blocking(move |engine| {
                let rep = engine.restore(&r.name, &r.gallery)?;
                let info = convert::info_out(&*engine.gallery(&r.gallery)?);
                Ok((rep, info))
            })
            .await?;
        tracing::info!(gallery = %info.name, from = %rep.source_gallery,
            erasures = rep.erasures_applied, erased = rep.rows_erased, "backup restored");
        Ok(Response::new(pb::RestoreResponse {
            gallery: Some(info),
            source_gallery: rep.source_gallery,
            erasures_applied: rep.erasures_applied,
            rows_erased: rep.rows_erased,
        }))
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Err(Status::failed_precondition(
            "this server is a single node (cluster mode needs --nats and --etcd)",
        ))
    }

    type CopyShardStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::ShardFileChunk, Status>>;

    async fn copy_shard(
        &self,
        _request: Request<pb::CopyShardRequest>,
    ) -> Result<Response<Self::CopyShardStream>, Status> {
        Err(Status::failed_precondition(
            "this server is a single node (cluster mode needs --nats and --etcd)",
        ))
    }

    async fn flush(
        &self,
        request: Request<pb::FlushRequest>,
    ) -> Result<Response<pb::FlushResponse>, Status> {
        let gallery = request.into_inner().gallery;
        let r = self
            .blocking(move |engine| Ok(open(engine, &gallery)?.flush()?))
            .await?;
        Ok(Response::new(pb::FlushResponse {
            before: Some(convert::stats_out(r.before)),
            after: Some(convert::stats_out(r.after)),
        }))
    }
}

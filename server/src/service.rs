//! The `visage.v1.Visage` service: thin handlers over the engine.
//!
//! Each handler validates what the engine does not (thresholds, limits that
//! exist only on the wire), converts, calls the engine inside
//! `spawn_blocking` (engine calls take locks, fsync and scan vectors: never on
//! the async runtime), and converts back. Engine errors become statuses in
//! [`crate::status`] only.

use crate::convert::{self, check_vector, distance_threshold, l2sq, probability};
use crate::limits::{MAX_GET_IDS, MAX_RESULTS};
use crate::status::{ApiError, at, in_field, invalid, too_large};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use visage_engine::{Engine, Gallery, InsertOutcome, MAX_IDENTIFY_K, MAX_K, MAX_PROBES};
use visage_proto::v1 as pb;
use visage_proto::v1::verify_pair::B;
use visage_proto::v1::visage_server::Visage;

/// The service implementation, sharing one engine.
#[derive(Debug, Clone)]
pub struct VisageService {
    engine: Arc<Engine>,
    shutdown: watch::Receiver<bool>,
}

impl VisageService {
    /// A service over `engine`. When `shutdown` turns true, streaming inserts
    /// stop taking messages (unary calls in flight finish normally).
    pub fn new(engine: Arc<Engine>, shutdown: watch::Receiver<bool>) -> Self {
        VisageService { engine, shutdown }
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

/// `probes × k` bounded so one request cannot ask for unbounded results.
/// Skipped when `k` itself is out of range: the engine reports that.
fn check_results(field: &str, n: usize, k: usize, max_k: usize) -> Result<(), ApiError> {
    if (1..=max_k).contains(&k) && n.saturating_mul(k) > MAX_RESULTS {
        return Err(ApiError(Status::resource_exhausted(format!(
            "{field}: {n} × k = {k} asks for {} results, more than the limit of {MAX_RESULTS} per request; send fewer {field} per request",
            n.saturating_mul(k)
        ))));
    }
    Ok(())
}

fn no_head(gallery: &str, what: &str) -> ApiError {
    ApiError(Status::failed_precondition(format!(
        "{what} needs a trained scoring head and gallery {gallery:?} has none \
         (heads are not available in this server version; use max_distance)"
    )))
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
        let name = request.into_inner().name;
        let info = self
            .blocking(move |engine| {
                visage_engine::check_gallery_name(&name).map_err(|e| at("name", e))?;
                let g = engine.create_gallery(&name)?;
                tracing::info!(gallery = %name, "gallery created");
                Ok(convert::info_out(&name, g.stats()))
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
                let stats = engine.gallery(&name)?.stats();
                engine.drop_gallery(&name)?;
                tracing::info!(gallery = %name, "gallery dropped");
                Ok(convert::info_out(&name, stats))
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
                    .map(|g| convert::info_out(g.name(), g.stats()))
                    .collect())
            })
            .await?;
        Ok(Response::new(pb::ListGalleriesResponse { galleries }))
    }

    async fn get_gallery(
        &self,
        request: Request<pb::GetGalleryRequest>,
    ) -> Result<Response<pb::GalleryInfo>, Status> {
        let name = request.into_inner().name;
        let info = self
            .blocking(move |engine| {
                visage_engine::check_gallery_name(&name).map_err(|e| at("name", e))?;
                let g = engine.gallery(&name)?;
                Ok(convert::info_out(&name, g.stats()))
            })
            .await?;
        Ok(Response::new(info))
    }

    async fn insert(
        &self,
        request: Request<pb::InsertRequest>,
    ) -> Result<Response<pb::InsertResponse>, Status> {
        let req = request.into_inner();
        let out = self
            .blocking(move |engine| {
                let g = open(engine, &req.gallery)?;
                Ok(g.insert(&convert::embeddings_in(req.embeddings))?)
            })
            .await?;
        Ok(Response::new(pb::InsertResponse {
            inserted: out.inserted,
            replaced: out.replaced,
            batches: 1,
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
        loop {
            let index = progress.batches;
            let next = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => {
                    return Err(progress.fail(index, Status::unavailable(
                        "the server is shutting down and takes no further messages; resend the rest",
                    )));
                }
                m = stream.message() => m,
            };
            let msg = match next {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(s) => return Err(progress.fail(index, oversized(s))),
            };
            let name = match (&gallery, msg.gallery) {
                (None, n) => gallery.insert(n).clone(),
                (Some(g), n) if n.is_empty() || n == *g => g.clone(),
                (Some(g), n) => {
                    return Err(progress.fail(
                        index,
                        invalid(
                            "gallery",
                            format_args!("{n:?} differs from {g:?} named by the first message"),
                        )
                        .0,
                    ));
                }
            };
            let embeddings = msg.embeddings;
            let out = self
                .blocking(move |engine| {
                    let g = open(engine, &name)?;
                    Ok(g.insert(&convert::embeddings_in(embeddings))?)
                })
                .await
                .map_err(|s| progress.fail(index, s))?;
            progress.batches += 1;
            progress.outcome.inserted += out.inserted;
            progress.outcome.replaced += out.replaced;
        }
        if gallery.is_none() {
            return Err(invalid("gallery", "the stream sent no message").0);
        }
        Ok(Response::new(pb::InsertResponse {
            inserted: progress.outcome.inserted,
            replaced: progress.outcome.replaced,
            batches: progress.batches,
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
        Ok(Response::new(pb::DeleteResponse { deleted }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let req = request.into_inner();
        if req.ids.len() > MAX_GET_IDS {
            return Err(too_large("ids", req.ids.len(), MAX_GET_IDS).into());
        }
        let found = self
            .blocking(move |engine| Ok(open(engine, &req.gallery)?.get(&req.ids)))
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
        let rank_by = pb::RankBy::try_from(req.rank_by)
            .map_err(|_| invalid("rank_by", format_args!("unknown value {}", req.rank_by)))?;
        let max_distance = distance_threshold("max_distance", req.max_distance)?;
        let k = req.k as usize;
        check_results("queries", req.queries.len(), k, MAX_K)?;
        let queries = convert::vectors_in(req.queries);
        let gallery = req.gallery;
        let results = self
            .blocking(move |engine| {
                let g = open(engine, &gallery)?;
                if rank_by == pb::RankBy::Head {
                    return Err(no_head(&gallery, "rank_by HEAD"));
                }
                g.search(&queries, k)
                    .map_err(|e| in_field(e, "queries").into())
            })
            .await?;
        let within = |h: &visage_engine::Hit| max_distance.is_none_or(|m| h.distance <= m);
        Ok(Response::new(pb::SearchResponse {
            results: results
                .into_iter()
                .map(|hits| pb::SearchResult {
                    hits: hits
                        .into_iter()
                        .filter(within)
                        .map(convert::hit_out)
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn identify(
        &self,
        request: Request<pb::IdentifyRequest>,
    ) -> Result<Response<pb::IdentifyResponse>, Status> {
        let req = request.into_inner();
        let max_distance = distance_threshold("max_distance", req.max_distance)?;
        let min_probability = probability("min_probability", req.min_probability)?;
        let k = req.k as usize;
        check_results("probes", req.probes.len(), k, MAX_IDENTIFY_K)?;
        let probes = convert::vectors_in(req.probes);
        let gallery = req.gallery;
        let results = self
            .blocking(move |engine| {
                let g = open(engine, &gallery)?;
                if min_probability.is_some() {
                    return Err(no_head(&gallery, "min_probability"));
                }
                Ok(g.identify(&probes, k)?)
            })
            .await?;
        let within = |h: &visage_engine::Hit| max_distance.is_none_or(|m| h.distance <= m);
        Ok(Response::new(pb::IdentifyResponse {
            results: results
                .into_iter()
                .map(|hits| {
                    let candidates: Vec<pb::Candidate> = hits
                        .into_iter()
                        .filter(within)
                        .map(convert::candidate_out)
                        .collect();
                    pb::Identification {
                        known: !candidates.is_empty(),
                        subject: candidates
                            .first()
                            .map(|c| c.subject.clone())
                            .unwrap_or_default(),
                        candidates,
                    }
                })
                .collect(),
        }))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let req = request.into_inner();
        if req.pairs.len() > MAX_PROBES {
            return Err(too_large("pairs", req.pairs.len(), MAX_PROBES).into());
        }
        let max_distance = distance_threshold("max_distance", req.max_distance)?;
        // Validate every pair before touching the gallery.
        let mut pairs = Vec::with_capacity(req.pairs.len());
        for (i, p) in req.pairs.into_iter().enumerate() {
            let a =
                p.a.ok_or_else(|| invalid(&format!("pairs[{i}].a"), "missing"))?
                    .values;
            check_vector(&format!("pairs[{i}].a"), &a)?;
            match &p.b {
                None => {
                    return Err(invalid(
                        &format!("pairs[{i}].b"),
                        "missing (set vector, id or subject)",
                    )
                    .into());
                }
                Some(B::Vector(v)) => check_vector(&format!("pairs[{i}].b.vector"), &v.values)?,
                Some(B::Id(_)) => {}
                Some(B::Subject(_)) => {
                    return Err(Status::unimplemented(format!(
                        "pairs[{i}].b.subject: verification against a subject is not implemented yet; \
                         pass b.id (an enrolled embedding) or b.vector"
                    )));
                }
            }
            pairs.push((a, p.b));
        }
        let gallery = req.gallery;
        let verdicts = self
            .blocking(move |engine| {
                let g = open(engine, &gallery)?;
                let ids: Vec<u64> = pairs
                    .iter()
                    .filter_map(|(_, b)| match b {
                        Some(B::Id(id)) => Some(*id),
                        _ => None,
                    })
                    .collect();
                let enrolled: HashMap<u64, Vec<f32>> =
                    g.get(&ids).into_iter().map(|e| (e.id, e.vector)).collect();
                let mut out = Vec::with_capacity(pairs.len());
                for (i, (a, b)) in pairs.iter().enumerate() {
                    let distance = match b {
                        Some(B::Vector(v)) => l2sq(a, &v.values),
                        Some(B::Id(id)) => {
                            let v = enrolled.get(id).ok_or_else(|| {
                                ApiError(Status::not_found(format!(
                                    "pairs[{i}].b.id: gallery {gallery:?} has no embedding with id {id}"
                                )))
                            })?;
                            l2sq(a, v)
                        }
                        // Rejected above.
                        Some(B::Subject(_)) | None => {
                            return Err(ApiError(Status::internal("unvalidated pair")));
                        }
                    };
                    out.push(pb::Verdict {
                        same: max_distance.map(|m| distance <= m),
                        probability: None,
                        distance,
                    });
                }
                Ok(out)
            })
            .await?;
        Ok(Response::new(pb::VerifyResponse { verdicts }))
    }

    async fn train_head(
        &self,
        _request: Request<pb::TrainHeadRequest>,
    ) -> Result<Response<pb::HeadInfo>, Status> {
        Err(Status::unimplemented(
            "TrainHead is not implemented in this server version; \
             identify and verify with max_distance instead",
        ))
    }

    async fn get_head(
        &self,
        request: Request<pb::GetHeadRequest>,
    ) -> Result<Response<pb::HeadInfo>, Status> {
        let gallery = request.into_inner().gallery;
        self.blocking(move |engine| open(engine, &gallery).map(|_| ()))
            .await?;
        Ok(Response::new(pb::HeadInfo {
            trained: false,
            ..Default::default()
        }))
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

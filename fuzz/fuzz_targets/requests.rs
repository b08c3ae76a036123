//! Request validation: arbitrary protobuf bytes decoded as each request
//! message of `visage.v1`, then handled exactly as the server handles them
//! (the `VisageService` handlers: validation, conversion, the engine call) on
//! a fresh copy of the template gallery (32 embeddings, two segments, a WAL,
//! a trained head).
//!
//! Input: a byte choosing the message type, then its encoding.
//!
//! Checks: no panic; an error is never INTERNAL, UNKNOWN, DATA_LOSS or
//! UNAVAILABLE (those mean a bug or a broken disk, not a bad request); a
//! rejected Insert or Delete changes nothing; an accepted Insert stores
//! exactly what was sent and Delete removes what it names; replies have one
//! entry per query, probe or pair, at most k hits, in order, within
//! max_distance, with probabilities in [0, 1]; a request naming a model other
//! than the template's (none recorded) is never accepted;
//! the template does not normalise, so nothing carries a similarity; a
//! created gallery has the dimension, model and normalisation asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::sync::{Arc, OnceLock};
use tonic::{Code, Request, Status};
use visage_engine::{Engine, MAX_TRAIN_PAIRS};
use visage_fuzz::*;
use visage_proto::v1 as pb;
use visage_proto::v1::visage_server::Visage;
use visage_server::VisageService;

/// Message types, in the order of the selector byte.
pub const KINDS: [&str; 15] = [
    "CreateGallery",
    "DropGallery",
    "GetGallery",
    "ListGalleries",
    "Insert",
    "Delete",
    "Get",
    "Search",
    "Identify",
    "Verify",
    "TrainHead",
    "GetHead",
    "Compact",
    "Flush",
    "ListSubjects",
];

/// Training runs longer than a fuzz iteration should above this many pairs;
/// requests above the engine's limit ([`MAX_TRAIN_PAIRS`]) run too (refused).
const FUZZ_MAX_PAIRS: u32 = 5_000;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime")
    })
}

fn check_status(kind: &str, s: &Status) {
    assert!(
        !matches!(
            s.code(),
            Code::Internal | Code::Unknown | Code::DataLoss | Code::Unavailable
        ),
        "{kind}: {:?}: {}",
        s.code(),
        s.message()
    );
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A request naming a model is never accepted: the template records none.
/// (It may fail for another reason first, such as a bad `k`.)
fn check_model<T>(kind: &str, model: &str, r: &Result<T, Status>) {
    assert!(
        model.is_empty() || r.is_err(),
        "{kind} naming model {model:?} accepted by a gallery that records none"
    );
}

fn check_hits(hits: &[pb::Hit], k: usize, max_distance: Option<f32>, by_distance: bool) {
    assert!(hits.len() <= k, "{} hits for k = {k}", hits.len());
    for h in hits {
        assert_eq!(h.similarity, None, "similarity from a gallery that does not normalise");
        if let Some(p) = h.probability {
            assert!((0.0..=1.0).contains(&p), "probability {p}");
        }
        if let Some(m) = max_distance {
            assert!(
                h.distance <= m,
                "hit at {} beyond max_distance {m}",
                h.distance
            );
        }
    }
    if by_distance {
        for w in hits.windows(2) {
            assert!(
                (w[0].distance, w[0].id) < (w[1].distance, w[1].id),
                "hits out of order"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((sel, bytes)) = split_flags(data) else {
        return;
    };
    let kind = KINDS[sel as usize % KINDS.len()];
    // Decode first: bytes that are no message of this type never reach a handler
    // (tonic answers them itself).
    macro_rules! decode {
        ($t:ty) => {
            match <$t>::decode(bytes) {
                Ok(m) => m,
                Err(_) => return,
            }
        };
    }
    let t = template();
    let root = write_gallery("requests", &t.files);
    let engine = Arc::new(Engine::open(&root, engine_options()).expect("open the template"));
    let g = engine.gallery(GALLERY).expect("the template gallery");
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let svc = VisageService::new(engine.clone(), shutdown);
    let known: Vec<u64> = t.embeddings.keys().copied().collect();
    let rt = runtime();

    match kind {
        "CreateGallery" => {
            let r = decode!(pb::CreateGalleryRequest);
            match rt.block_on(svc.create_gallery(Request::new(r.clone()))) {
                Ok(info) => {
                    let info = info.into_inner();
                    let dim = if r.dim == 0 { 128 } else { r.dim };
                    assert_eq!(
                        (info.dim, &info.model, info.normalize),
                        (dim, &r.model, r.normalize)
                    );
                }
                Err(s) => check_status(kind, &s),
            }
        }
        "DropGallery" => {
            let r = decode!(pb::DropGalleryRequest);
            if let Err(s) = rt.block_on(svc.drop_gallery(Request::new(r))) {
                check_status(kind, &s);
            }
        }
        "GetGallery" => {
            let r = decode!(pb::GetGalleryRequest);
            if let Err(s) = rt.block_on(svc.get_gallery(Request::new(r))) {
                check_status(kind, &s);
            }
        }
        "ListGalleries" => {
            let r = decode!(pb::ListGalleriesRequest);
            let out = rt
                .block_on(svc.list_galleries(Request::new(r)))
                .expect("ListGalleries");
            assert_eq!(out.into_inner().galleries.len(), 1);
        }
        "Insert" => {
            let r = decode!(pb::InsertRequest);
            let mut ids = known.clone();
            ids.extend(r.embeddings.iter().map(|e| e.id));
            ids.extend(&r.ids);
            let before = state(&g, &ids);
            let highest = before.keys().copied().chain(known.iter().copied()).max();
            let stats = g.stats();
            let result = rt.block_on(svc.insert(Request::new(r.clone())));
            check_model(kind, &r.model, &result);
            if r.gallery == GALLERY && !r.model.is_empty() {
                // The model is checked before anything else of the batch.
                let code = result.as_ref().err().map(Status::code);
                assert_eq!(code, Some(Code::FailedPrecondition), "{kind}: model mismatch");
            }
            match result {
                Ok(out) if r.matrix.is_some() => {
                    // The packed form: rows of the matrix under the ids
                    // given, or under the ids returned (above every id held).
                    let out = out.into_inner();
                    let m = r.matrix.as_ref().expect("a packed insert");
                    let n = m.rows as usize;
                    assert_eq!(out.inserted + out.replaced, n as u64);
                    let row_ids = if r.ids.is_empty() {
                        assert_eq!(out.ids.len(), n, "an id per row assigned");
                        assert!(
                            out.ids.iter().all(|&id| Some(id) > highest && id > 0),
                            "assigned ids {:?} not above {highest:?}",
                            out.ids
                        );
                        out.ids.clone()
                    } else {
                        assert!(out.ids.is_empty(), "ids assigned to a batch that gave its own");
                        r.ids.clone()
                    };
                    let after = state(&g, &row_ids);
                    let dim = m.dim as usize;
                    for (i, id) in row_ids.iter().enumerate() {
                        let v: Vec<f32> = m.f32_le[i * dim * 4..(i + 1) * dim * 4]
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                            .collect();
                        assert_eq!(after.get(id), Some(&(r.subjects[i].clone(), bits(&v))));
                    }
                    let replaced = row_ids.iter().filter(|id| before.contains_key(id)).count();
                    assert_eq!(out.replaced, replaced as u64);
                }
                Ok(out) => {
                    let out = out.into_inner();
                    assert_eq!(out.inserted + out.replaced, r.embeddings.len() as u64);
                    assert!(out.ids.is_empty(), "ids assigned to a batch of embeddings");
                    let after = state(&g, &ids);
                    for e in &r.embeddings {
                        assert_eq!(
                            after.get(&e.id),
                            Some(&(e.subject.clone(), bits(&e.vector)))
                        );
                    }
                    let replaced = r
                        .embeddings
                        .iter()
                        .filter(|e| before.contains_key(&e.id))
                        .count();
                    assert_eq!(out.replaced, replaced as u64);
                }
                Err(s) => {
                    check_status(kind, &s);
                    assert_eq!(
                        state(&g, &ids),
                        before,
                        "a rejected insert changed the gallery"
                    );
                    assert_eq!(g.stats(), stats, "a rejected insert changed the statistics");
                }
            }
        }
        "Delete" => {
            let r = decode!(pb::DeleteRequest);
            let mut ids = known.clone();
            ids.extend(&r.ids);
            let before = state(&g, &ids);
            let stats = g.stats();
            match rt.block_on(svc.delete(Request::new(r.clone()))) {
                Ok(out) => {
                    let after = state(&g, &ids);
                    let gone: Vec<u64> = before
                        .iter()
                        .filter(|(id, (s, _))| r.ids.contains(id) || r.subjects.contains(s))
                        .map(|(id, _)| *id)
                        .collect();
                    assert_eq!(out.into_inner().deleted, gone.len() as u64, "deleted count");
                    let mut expect = before.clone();
                    for id in &gone {
                        expect.remove(id);
                    }
                    assert_eq!(after, expect, "delete removed something else");
                }
                Err(s) => {
                    check_status(kind, &s);
                    assert_eq!(
                        state(&g, &ids),
                        before,
                        "a rejected delete changed the gallery"
                    );
                    assert_eq!(g.stats(), stats, "a rejected delete changed the statistics");
                }
            }
        }
        "Get" => {
            let r = decode!(pb::GetRequest);
            match rt.block_on(svc.get(Request::new(r.clone()))) {
                Ok(out) => {
                    for e in out.into_inner().embeddings {
                        assert!(
                            r.ids.contains(&e.id),
                            "Get returned id {} not asked for",
                            e.id
                        );
                        let want = &t.embeddings[&e.id];
                        assert_eq!(
                            (&e.subject, bits(&e.vector)),
                            (&want.subject, bits(&want.vector))
                        );
                    }
                }
                Err(s) => check_status(kind, &s),
            }
        }
        "Search" => {
            let r = decode!(pb::SearchRequest);
            let result = rt.block_on(svc.search(Request::new(r.clone())));
            check_model(kind, &r.model, &result);
            match result {
                Ok(out) if r.matrix.is_some() => {
                    // The flat form: k slots a query, hits first, then
                    // padding (id 0, distance +inf).
                    let out = out.into_inner();
                    let rows = r.matrix.as_ref().map_or(0, |m| m.rows as usize);
                    let k = r.k as usize;
                    assert!(out.results.is_empty());
                    assert_eq!((out.k as usize, out.counts.len()), (k, rows));
                    assert_eq!((out.ids.len(), out.distances.len()), (rows * k, rows * k));
                    for (q, &n) in out.counts.iter().enumerate() {
                        let n = n as usize;
                        assert!(n <= k);
                        let hits: Vec<pb::Hit> = (q * k..q * k + n)
                            .map(|s| pb::Hit {
                                id: out.ids[s],
                                distance: out.distances[s],
                                probability: out.probabilities.get(s).copied(),
                                ..pb::Hit::default()
                            })
                            .collect();
                        check_hits(&hits, k, r.max_distance, r.rank_by == 0);
                        for s in q * k + n..(q + 1) * k {
                            assert_eq!((out.ids[s], out.distances[s]), (0, f32::INFINITY));
                        }
                    }
                }
                Ok(out) => {
                    let res = out.into_inner().results;
                    assert_eq!(res.len(), r.queries.len());
                    for x in &res {
                        check_hits(&x.hits, r.k as usize, r.max_distance, r.rank_by == 0);
                    }
                }
                Err(s) => check_status(kind, &s),
            }
        }
        "Identify" => {
            let r = decode!(pb::IdentifyRequest);
            let result = rt.block_on(svc.identify(Request::new(r.clone())));
            check_model(kind, &r.model, &result);
            match result {
                Ok(out) => {
                    let res = out.into_inner().results;
                    let n = r.matrix.as_ref().map_or(r.probes.len(), |m| m.rows as usize);
                    assert_eq!(res.len(), n);
                    for x in &res {
                        assert!(x.candidates.len() <= r.k as usize);
                        for c in &x.candidates {
                            assert_eq!(c.similarity, None, "similarity without normalisation");
                            if let Some(p) = c.probability {
                                assert!((0.0..=1.0).contains(&p), "probability {p}");
                            }
                        }
                    }
                }
                Err(s) => check_status(kind, &s),
            }
        }
        "Verify" => {
            let r = decode!(pb::VerifyRequest);
            let result = rt.block_on(svc.verify(Request::new(r.clone())));
            check_model(kind, &r.model, &result);
            match result {
                Ok(out) => {
                    let v = out.into_inner().verdicts;
                    let n = r.matrix.as_ref().map_or(r.pairs.len(), |m| m.rows as usize);
                    assert_eq!(v.len(), n);
                    for x in &v {
                        assert_eq!(x.similarity, None, "similarity without normalisation");
                        if let Some(p) = x.probability {
                            assert!((0.0..=1.0).contains(&p), "probability {p}");
                        }
                    }
                }
                Err(s) => check_status(kind, &s),
            }
        }
        "TrainHead" => {
            let r = decode!(pb::TrainHeadRequest);
            // 0 asks for the default, 200,000 pairs.
            let pairs = if r.max_pairs == 0 {
                200_000
            } else {
                r.max_pairs
            };
            let run = pairs <= FUZZ_MAX_PAIRS || pairs as usize > MAX_TRAIN_PAIRS;
            if run && let Err(s) = rt.block_on(svc.train_head(Request::new(r))) {
                check_status(kind, &s);
            }
        }
        "GetHead" => {
            let r = decode!(pb::GetHeadRequest);
            if let Err(s) = rt.block_on(svc.get_head(Request::new(r))) {
                check_status(kind, &s);
            }
        }
        "Compact" => {
            let r = decode!(pb::CompactRequest);
            if let Err(s) = rt.block_on(svc.compact(Request::new(r))) {
                check_status(kind, &s);
            }
        }
        "Flush" => {
            let r = decode!(pb::FlushRequest);
            if let Err(s) = rt.block_on(svc.flush(Request::new(r))) {
                check_status(kind, &s);
            }
        }
        "ListSubjects" => {
            let r = decode!(pb::ListSubjectsRequest);
            match rt.block_on(svc.list_subjects(Request::new(r.clone()))) {
                Ok(out) => {
                    // A page: subjects in strictly ascending byte order, each
                    // with a live embedding, at most the page size; a full
                    // page has a token, a short one none.
                    let out = out.into_inner();
                    let size = if r.page_size == 0 { 1000 } else { r.page_size as usize };
                    assert!(out.subjects.len() <= size);
                    assert!(out.subjects.windows(2).all(|w| w[0].subject < w[1].subject));
                    assert!(out.subjects.iter().all(|s| s.embeddings > 0));
                    assert_eq!(out.next_page_token.is_empty(), out.subjects.len() < size);
                }
                Err(s) => check_status(kind, &s),
            }
        }
        _ => unreachable!("every kind is handled"),
    }
    drop(g);
    drop(svc);
    drop(engine);
});

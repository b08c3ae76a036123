//! The read path of the handle: search, identification and verification over
//! the published snapshot, and the decision thresholds they apply.

use super::Gallery;
use super::write::{check_probes, check_subject, check_vector, checked_vector};
use crate::api::*;
use crate::error::{Error, Result};
use crate::head::{ClaimScore, HeadInfo, OpenRule, TrainOptions};
use crate::search;
use crate::snapshot::Snapshot;
use crate::{Embedding, Hit};
use std::sync::Arc;

enum Target<'a> {
    Vector(Vec<f32>),
    Id(u64),
    Subject(&'a str),
}

/// A decision rule: accept iff logit ≥ t, or distance ≤ t.
#[derive(Debug, Clone, Copy)]
enum Decision {
    Logit(f32),
    Distance(f32),
}

impl Decision {
    pub(super) fn accepts(
        &self,
        best: &Hit,
        head: Option<&HeadInfo>,
        q: &[f32],
        snap: &Snapshot,
        c: &search::Cand,
    ) -> bool {
        match *self {
            Decision::Distance(t) => best.distance <= t,
            Decision::Logit(t) => head.filter(|h| h.trained).is_some_and(|h| {
                let v = snap.vector(c.src as usize, c.row as usize);
                h.logit(q, v) >= t
            }),
        }
    }
}

/// A result row: exact distance to the probe, and the head's probability when trained.
fn hit(
    spec: &GallerySpec,
    snap: &Snapshot,
    c: &search::Cand,
    probe: &[f32],
    head: Option<&HeadInfo>,
    metric_is_l2: bool,
) -> Hit {
    let (s, r) = (c.src as usize, c.row as usize);
    let v = snap.vector(s, r);
    let distance = if metric_is_l2 {
        c.dist
    } else {
        crate::search::kernels::l2sq(probe, v)
    };
    Hit {
        id: c.id,
        subject: snap.subject(s, r).to_owned(),
        distance,
        probability: head
            .filter(|h| h.trained)
            .map(|h| h.probability(h.logit(probe, v))),
        similarity: spec.similarity(distance),
        rank_key: (!metric_is_l2).then_some(c.dist),
    }
}

/// Every live embedding of a gallery as it was when [`Gallery::export`] was
/// called (one snapshot: later writes are not seen, and the files it reads
/// stay until it is dropped), handed out in batches: segments first, then
/// the rows not yet flushed, each in row order.
pub struct Export {
    snap: Arc<Snapshot>,
    source: usize,
    row: usize,
}

/// One batch of an [`Export`]: `ids.len()` rows.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportBatch {
    /// Embedding ids.
    pub ids: Vec<u64>,
    /// Their subjects.
    pub subjects: Vec<String>,
    /// Their vectors, row-major, the gallery's dimension a row.
    pub vectors: Vec<f32>,
}

impl Export {
    /// Values per vector.
    pub fn dim(&self) -> usize {
        self.snap.dim
    }

    /// Live rows in all, over every batch.
    pub fn rows(&self) -> usize {
        self.snap.live_rows()
    }

    /// The next batch of at most `max_rows` rows (at least one), or `None`
    /// when every live row has been handed out.
    pub fn next_batch(&mut self, max_rows: usize) -> Option<ExportBatch> {
        let max_rows = max_rows.max(1);
        let mut b = ExportBatch {
            ids: Vec::new(),
            subjects: Vec::new(),
            vectors: Vec::new(),
        };
        while self.source < self.snap.source_count() && b.ids.len() < max_rows {
            let n = self.snap.ids(self.source).len();
            while self.row < n && b.ids.len() < max_rows {
                let (s, r) = (self.source, self.row);
                self.row += 1;
                if !self.snap.deleted(s, r) {
                    b.ids.push(self.snap.id(s, r));
                    b.subjects.push(self.snap.subject(s, r).to_owned());
                    b.vectors.extend_from_slice(self.snap.vector(s, r));
                }
            }
            if self.row == n {
                self.source += 1;
                self.row = 0;
            }
        }
        (!b.ids.is_empty()).then_some(b)
    }
}

impl Gallery {
    /// Every live embedding as it is now, in batches ([`Export`]).
    pub fn export(&self) -> Export {
        Export {
            snap: self.snapshot(),
            source: 0,
            row: 0,
        }
    }

    /// Subjects with a live embedding, a page at a time, in byte order: the
    /// first `limit` (1 to [`MAX_SUBJECTS_PAGE`]) that sort after `after`
    /// (from the first when `None`), each with its number of live
    /// embeddings. Pass the last subject of a page as the next `after`; a
    /// page shorter than `limit` is the last. Reads one snapshot: the cost
    /// is a binary search and `limit` subjects per segment, plus the rows
    /// not yet flushed.
    pub fn subjects(&self, after: Option<&str>, limit: usize) -> Result<Vec<(String, u64)>> {
        if !(1..=MAX_SUBJECTS_PAGE).contains(&limit) {
            return Err(Error::OutOfRange {
                option: "page_size",
                expected: format!("1 to {MAX_SUBJECTS_PAGE}"),
                got: limit.to_string(),
            });
        }
        Ok(self.snapshot().subjects_page(after, limit))
    }

    /// Embeddings for the ids that exist, in request order.
    pub fn get(&self, ids: &[u64]) -> Vec<Embedding> {
        let snap = self.snapshot();
        ids.iter().filter_map(|&id| snap.get(id)).collect()
    }

    /// Exact top-`k` embeddings for each probe, ascending by (distance, id).
    pub fn search<P: AsRef<[f32]>>(&self, probes: &[P], k: usize) -> Result<Vec<Vec<Hit>>> {
        self.search_with(
            probes,
            &SearchOptions {
                k,
                ..Default::default()
            },
        )
    }

    /// Exact top-`k` by distance or by the head's score, optionally only hits
    /// within `max_distance`.
    pub fn search_with<P: AsRef<[f32]>>(
        &self,
        probes: &[P],
        opts: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>> {
        if let Some(d) = opts.max_distance
            && (d.is_nan() || d < 0.0)
        {
            return Err(Error::OutOfRange {
                option: "max_distance",
                expected: "a number at least 0".into(),
                got: d.to_string(),
            });
        }
        let probes = check_probes(&self.spec, probes, opts.k, MAX_K)?;
        let head = self.head();
        let snap = self.snapshot();
        let w;
        let metric = match opts.rank_by {
            RankBy::Distance => search::Metric::L2,
            RankBy::Head => {
                let h =
                    head.as_ref()
                        .filter(|h| h.trained)
                        .ok_or_else(|| Error::NoTrainedHead {
                            gallery: self.name.clone(),
                            hint: "call TrainHead before ranking by HEAD",
                        })?;
                w = h.weight_array(self.spec.dim);
                search::Metric::Head(&w, h.distance_weight)
            }
        };
        let is_l2 = matches!(metric, search::Metric::L2);
        let cands = if is_l2 && opts.mode == ScanMode::Quantized {
            search::top_k_quantized(&snap, &probes, opts.k)
        } else {
            search::top_k(&snap, &probes, opts.k, metric)
        };
        Ok(cands
            .into_iter()
            .zip(probes.chunks_exact(self.spec.dim))
            .map(|(cs, q)| {
                cs.iter()
                    .map(|c| hit(&self.spec, &snap, c, q, head.as_deref(), is_l2))
                    .filter(|h| opts.max_distance.is_none_or(|m| h.distance <= m))
                    .collect()
            })
            .collect())
    }

    /// For each probe, the `k` best distinct subjects, each with its best-matching
    /// embedding, ranked by distance exactly as a brute-force scan ranks them.
    pub fn identify<P: AsRef<[f32]>>(&self, probes: &[P], k: usize) -> Result<Vec<Vec<Hit>>> {
        let probes = check_probes(&self.spec, probes, k, MAX_IDENTIFY_K)?;
        let head = self.head();
        let snap = self.snapshot();
        Ok(search::identify(&snap, &probes, k, search::Metric::L2)
            .into_iter()
            .zip(probes.chunks_exact(self.spec.dim))
            .map(|(cs, q)| {
                cs.iter()
                    .map(|c| hit(&self.spec, &snap, c, q, head.as_deref(), true))
                    .collect()
            })
            .collect())
    }

    /// Open-set identification: the `k` best subjects (ranked by the head's
    /// probability when a head is trained, else by distance), and whether the
    /// best passes the decision threshold (the request's `min_probability` or
    /// `max_distance`, else the gallery's calibrated one).
    pub fn identify_open<P: AsRef<[f32]>>(
        &self,
        probes: &[P],
        opts: &IdentifyOptions,
    ) -> Result<Vec<Identification>> {
        self.identify_open_sized(probes, opts, None)
    }

    /// [`Gallery::identify_open`] as one shard of a larger gallery: the
    /// decision uses the open-set thresholds for `gallery_subjects` subjects
    /// (the whole gallery's count) when given, instead of this gallery's.
    pub fn identify_open_sized<P: AsRef<[f32]>>(
        &self,
        probes: &[P],
        opts: &IdentifyOptions,
        gallery_subjects: Option<u64>,
    ) -> Result<Vec<Identification>> {
        let probes = check_probes(&self.spec, probes, opts.k, MAX_IDENTIFY_K)?;
        let snap = self.snapshot();
        let decision = self.decision_for(
            opts.min_probability,
            opts.max_distance,
            Some(gallery_subjects.unwrap_or_else(|| snap.subjects())),
        )?;
        let head = self.head();
        let w = head
            .as_ref()
            .map(|h| h.weight_array(self.spec.dim))
            .unwrap_or_else(|| vec![0.0; self.spec.dim]);
        let trained = head.as_ref().is_some_and(|h| h.trained);
        let wd = head.as_ref().map_or(0.0, |h| h.distance_weight);
        let metric = if trained {
            search::Metric::Head(&w, wd)
        } else {
            search::Metric::L2
        };
        Ok(search::identify(&snap, &probes, opts.k, metric)
            .into_iter()
            .zip(probes.chunks_exact(self.spec.dim))
            .map(|(cs, q)| {
                let candidates: Vec<Hit> = cs
                    .iter()
                    .map(|c| hit(&self.spec, &snap, c, q, head.as_deref(), !trained))
                    .collect();
                let known = candidates
                    .first()
                    .is_some_and(|best| decision.accepts(best, head.as_deref(), q, &snap, &cs[0]));
                Identification {
                    known,
                    subject: if known {
                        candidates.first().map(|c| c.subject.clone())
                    } else {
                        None
                    },
                    candidates,
                }
            })
            .collect())
    }

    /// Possible double enrolments in a batch about to be inserted (`ids` one
    /// per row, or empty when the gallery will assign them): each row is
    /// compared with the gallery's other subjects by the same exact search
    /// and open-set (1:N) decision as [`Gallery::identify_open`] for the
    /// gallery's current number of subjects (a 1:1 threshold would flag
    /// nearly every row of a large gallery), skipping its own subject and the
    /// rows the batch replaces; and with the batch's rows of other subjects
    /// by the same threshold. One conflict per row at most: its best match of
    /// another subject in the gallery, else in the batch. At most
    /// [`Limits::probes`] rows (the batch is compared with itself).
    /// FAILED_PRECONDITION-kind errors when the gallery has no calibrated
    /// open-set decision yet.
    pub fn conflicts<S: AsRef<str>>(
        &self,
        ids: &[u64],
        subjects: &[S],
        vectors: &[f32],
    ) -> Result<Vec<Conflict>> {
        let (n, dim) = (subjects.len(), self.spec.dim);
        let limit = Limits::for_dim(dim).probes;
        if n > limit {
            return Err(Error::TooLarge {
                what: "embeddings (conflict check)",
                got: n,
                limit,
            });
        }
        if vectors.len() != n * dim || !(ids.is_empty() || ids.len() == n) {
            return Err(Error::BatchShape {
                what: "vectors",
                reason: format!(
                    "{} values and {} ids for {n} subjects of {dim} values",
                    vectors.len(),
                    ids.len()
                ),
            });
        }
        let mut probes = Vec::with_capacity(n * dim);
        for (i, (v, s)) in vectors.chunks_exact(dim).zip(subjects).enumerate() {
            check_vector(&self.spec, "embeddings", i, v, &mut probes)?;
            check_subject("embeddings", i, s.as_ref())?;
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let snap = self.snapshot();
        let decision = self.decision_for(None, None, Some(snap.subjects()))?;
        let head = self.head();
        let trained = head.as_ref().filter(|h| h.trained);
        let w = trained
            .map(|h| h.weight_array(dim))
            .unwrap_or_else(|| vec![0.0; dim]);
        let metric = match trained {
            Some(h) => search::Metric::Head(&w, h.distance_weight),
            None => search::Metric::L2,
        };
        let replaced: std::collections::HashSet<u64> = ids.iter().copied().collect();
        // Enough distinct subjects that one is neither the row's own nor
        // only a row this batch replaces, in all but contrived cases.
        let k = 4.min(snap.subjects().max(1) as usize);
        let found = search::identify(&snap, &probes, k, metric);
        let accepts = |d: f32, a: &[f32], b: &[f32]| match decision {
            Decision::Distance(t) => d <= t,
            Decision::Logit(t) => trained.is_some_and(|h| h.logit(a, b) >= t),
        };
        let probability = |a: &[f32], b: &[f32]| trained.map(|h| h.probability(h.logit(a, b)));
        let mut out = Vec::new();
        for (i, (cs, q)) in found.iter().zip(probes.chunks_exact(dim)).enumerate() {
            let own = subjects[i].as_ref();
            let other = cs.iter().find(|c| {
                let (s, r) = (c.src as usize, c.row as usize);
                snap.subject(s, r) != own && !replaced.contains(&snap.id(s, r))
            });
            if let Some(c) = other {
                let (s, r) = (c.src as usize, c.row as usize);
                let v = snap.vector(s, r);
                let d = search::kernels::l2sq(q, v);
                if accepts(d, q, v) {
                    out.push(Conflict {
                        position: i,
                        other_subject: snap.subject(s, r).to_owned(),
                        other_id: snap.id(s, r),
                        other_position: None,
                        distance: d,
                        probability: probability(q, v),
                    });
                    continue;
                }
            }
            // The batch's own rows of other subjects: the nearest that passes.
            let mut best: Option<(f32, usize)> = None;
            for (j, p) in probes.chunks_exact(dim).enumerate() {
                if j == i || subjects[j].as_ref() == own {
                    continue;
                }
                let d = search::kernels::l2sq(q, p);
                if best.is_none_or(|(bd, _)| d < bd) && accepts(d, q, p) {
                    best = Some((d, j));
                }
            }
            if let Some((d, j)) = best {
                let p = &probes[j * dim..(j + 1) * dim];
                out.push(Conflict {
                    position: i,
                    other_subject: subjects[j].as_ref().to_owned(),
                    other_id: ids.get(j).copied().unwrap_or(0),
                    other_position: Some(j),
                    distance: d,
                    probability: probability(q, p),
                });
            }
        }
        Ok(out)
    }

    /// 1:1 verification of each pair: probability (with a head), distance, and the decision.
    /// Against a subject, the best over that subject's embeddings counts.
    pub fn verify(&self, pairs: &[VerifyPair], opts: &VerifyOptions) -> Result<Vec<Verdict>> {
        let limit = Limits::for_dim(self.spec.dim).probes;
        if pairs.len() > limit {
            return Err(Error::TooLarge {
                what: "pairs",
                got: pairs.len(),
                limit,
            });
        }
        let mut checked = Vec::with_capacity(pairs.len());
        for (i, p) in pairs.iter().enumerate() {
            let a = checked_vector(&self.spec, "pairs.a", i, &p.a)?;
            let b = match &p.b {
                VerifyTarget::Vector(v) => {
                    Target::Vector(checked_vector(&self.spec, "pairs.b", i, v)?)
                }
                VerifyTarget::Id(id) => Target::Id(*id),
                VerifyTarget::Subject(s) => {
                    check_subject("pairs", i, s)?;
                    Target::Subject(s.as_str())
                }
            };
            checked.push((a, b));
        }
        let decision = self.decision(opts.min_probability, opts.max_distance)?;
        let overridden = opts.min_probability.is_some() || opts.max_distance.is_some();
        let head_info = self.head();
        let head = head_info.as_deref().filter(|h| h.trained);
        let snap = self.snapshot();
        let mut out = Vec::with_capacity(pairs.len());
        for (i, (a, b)) in checked.iter().enumerate() {
            let score = |v: &[f32]| -> (f32, Option<f32>) {
                (
                    crate::search::kernels::l2sq(a, v),
                    head.map(|h| h.logit(a, v)),
                )
            };
            // (distance, logit, matched id) of the best-matching embedding,
            // and the decision's rule when a claim has its own.
            let (best, claim) = match b {
                Target::Vector(v) => {
                    let (d, l) = score(v);
                    ((d, l, None), None)
                }
                Target::Id(id) => {
                    let e = snap.get(*id).ok_or_else(|| Error::UnknownId {
                        field: format!("pairs[{i}].id"),
                        id: *id,
                    })?;
                    let (d, l) = score(&e.vector);
                    ((d, l, Some(*id)), None)
                }
                Target::Subject(s) => {
                    let rows = snap.subject_rows(s);
                    if rows.is_empty() {
                        return Err(Error::UnknownSubject {
                            field: format!("pairs[{i}].subject"),
                            subject: crate::error::shown(s),
                        });
                    }
                    let scored: Vec<(f32, Option<f32>, Option<u64>)> = rows
                        .iter()
                        .map(|&(src, r)| {
                            let (d, l) = score(snap.vector(src, r));
                            (d, l, Some(snap.id(src, r)))
                        })
                        .collect();
                    let best = scored
                        .iter()
                        .copied()
                        .min_by(|x, y| match (x.1, y.1) {
                            // Best = highest logit with a head, else smallest distance; ties by id.
                            (Some(lx), Some(ly)) => ly.total_cmp(&lx).then(x.2.cmp(&y.2)),
                            _ => x.0.total_cmp(&y.0).then(x.2.cmp(&y.2)),
                        })
                        .unwrap_or((f32::INFINITY, None, None));
                    // A claim compares with every image: its calibrated rule
                    // for that many images, on the best logit or their mean.
                    let claim = head_info.as_deref().map(|h| {
                        let rule = h.claim_rule(rows.len());
                        let mean = || {
                            let sum: f64 = scored.iter().filter_map(|x| x.1).map(f64::from).sum();
                            (sum / scored.len() as f64) as f32
                        };
                        let as_p = h.probability(rule.logit);
                        match (head, rule.score) {
                            (Some(_), ClaimScore::Mean) => (
                                best.1.is_some() && mean() >= rule.logit,
                                VerdictRule::MeanProbability,
                                as_p,
                            ),
                            (Some(_), ClaimScore::Best) => (
                                best.1.is_some_and(|l| l >= rule.logit),
                                VerdictRule::Probability,
                                as_p,
                            ),
                            (None, _) => (
                                best.0 <= rule.distance,
                                VerdictRule::Distance,
                                rule.distance,
                            ),
                        }
                    });
                    (best, claim)
                }
            };
            let (distance, logit, matched) = best;
            let (same, rule, threshold) = match (claim, decision) {
                (Some(claimed), _) if !overridden => claimed,
                (_, Decision::Logit(t)) => (
                    logit.is_some_and(|l| l >= t),
                    VerdictRule::Probability,
                    head.map_or(f32::NAN, |h| h.probability(t)),
                ),
                (_, Decision::Distance(t)) => (distance <= t, VerdictRule::Distance, t),
            };
            out.push(Verdict {
                same,
                probability: logit.map(|l| head.map_or(0.0, |h| h.probability(l))),
                distance,
                matched_id: matched,
                similarity: self.spec.similarity(distance),
                rule,
                threshold,
            });
        }
        Ok(out)
    }

    /// The threshold decisions use: request overrides first, then the calibrated one.
    fn decision(
        &self,
        min_probability: Option<f32>,
        max_distance: Option<f32>,
    ) -> Result<Decision> {
        self.decision_for(min_probability, max_distance, None)
    }

    /// As [`Gallery::decision`]; `open_set`, the gallery's current subject
    /// count, picks the identification (1:N) thresholds for that size instead
    /// of the verification (1:1) ones.
    fn decision_for(
        &self,
        min_probability: Option<f32>,
        max_distance: Option<f32>,
        open_set: Option<u64>,
    ) -> Result<Decision> {
        let head = self.head();
        if let Some(p) = min_probability {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::OutOfRange {
                    option: "min_probability",
                    expected: "in [0, 1]".into(),
                    got: p.to_string(),
                });
            }
            if !head.as_ref().is_some_and(|h| h.trained) {
                return Err(Error::NoTrainedHead {
                    gallery: self.name.clone(),
                    hint: "min_probability needs one (train one, or pass max_distance)",
                });
            }
            let h = head.as_deref().filter(|h| h.trained);
            return Ok(Decision::Logit(
                h.map_or(f32::INFINITY, |h| h.logit_at_probability(p)),
            ));
        }
        if let Some(d) = max_distance {
            if d.is_nan() || d < 0.0 || !d.is_finite() {
                return Err(Error::OutOfRange {
                    option: "max_distance",
                    expected: "finite and at least 0".into(),
                    got: d.to_string(),
                });
            }
            return Ok(Decision::Distance(d));
        }
        let open = |h: &HeadInfo| open_set.and_then(|n| h.open_rule(n));
        match head.as_deref() {
            Some(h) => Ok(match (open(h), h.trained) {
                // Identification: the thresholds for the gallery's current size.
                (Some(OpenRule { logit: Some(t), .. }), true) => Decision::Logit(t),
                (
                    Some(OpenRule {
                        distance: Some(t), ..
                    }),
                    _,
                ) => Decision::Distance(t),
                (_, true) => Decision::Logit(h.logit_threshold),
                (_, false) => Decision::Distance(h.distance_threshold),
            }),
            None => {
                // No threshold yet: calibrate the distance threshold now from the gallery's own pairs.
                let h =
                    self.calibrate(&TrainOptions::default())
                        .map_err(|e| Error::NoThreshold {
                            gallery: self.name.clone(),
                            source: Box::new(e),
                        })?;
                let rule = open_set.and_then(|n| h.open_rule(n));
                Ok(Decision::Distance(
                    rule.and_then(|r| r.distance)
                        .unwrap_or(h.distance_threshold),
                ))
            }
        }
    }
}

//! The write path: a batch is validated whole in the caller's thread, joins
//! the commit queue, and the batch at its head leads a group commit (reserve,
//! frame and apply under the state lock, one append and one sync, then
//! publish and acknowledge). Also the writer's state (`WriteState`): the WAL
//! writer, the segments with their tombstones, the frozen and active memtables.

use super::{BACKLOG_STALL, Durability, Failure, Gallery, MANIFEST, lock};
use crate::Embedding;
use crate::api::*;
use crate::error::{Error, Result};
use crate::snapshot::memtable::{Chunk, IdHashBuilder, MemLoc, Memtable};
use crate::snapshot::{ScanCounters, SegState, Snapshot};
use crate::storage::format::{self, ManifestData, ManifestSegment, WalOp};
use crate::storage::wal::{Record, WalWriter};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a live id is.
#[derive(Debug, Clone, Copy)]
pub(super) enum Loc {
    Active(MemLoc),
    Frozen(MemLoc),
    Seg(usize, usize),
}

/// The writer's state, under one mutex.
pub(super) struct WriteState {
    pub(super) wal: WalWriter,
    pub(super) segments: Vec<SegState>,
    /// Memtable being written to a segment; its WAL files are those below `active_wal`.
    pub(super) frozen: Option<Memtable>,
    pub(super) active: Memtable,
    pub(super) next_file_no: u64,
    pub(super) generation: u64,
    /// First WAL file the manifest says to replay.
    pub(super) wal_start: u64,
    /// Subjects with at least one live row: the gallery's size N for the
    /// open-set decisions, kept by every insert, upsert and delete (each
    /// looks up only the subjects it touches) and persisted, for the rows in
    /// segments, with the manifest.
    pub(super) subjects: u64,
    /// The gallery's spec, carried into every manifest.
    pub(super) spec: GallerySpec,
    /// How the exact scans settled their probes (see `ScanCounters`).
    pub(super) scans: Arc<ScanCounters>,
    /// The highest id the gallery has held or assigned (shared with
    /// [`Gallery`], which raises it as batches are validated), persisted with
    /// every manifest.
    pub(super) ids: Arc<IdCounter>,
    /// For a replica of a replicated log: the log sequence of the last batch
    /// applied (0: none), restored at open from the manifest and the WAL.
    pub(super) applied_seq: u64,
    /// The sequence of the last batch the segments hold (the manifest's).
    pub(super) segments_seq: u64,
    /// The sequence of the last batch in the frozen memtable.
    pub(super) frozen_seq: u64,
}

impl WriteState {
    /// The next file number. The counter cannot pass `u64::MAX`: only a
    /// damaged manifest brings it there (2^64 files are never made), and
    /// wrapping around would reuse the numbers of live files.
    pub(super) fn alloc_file_no(&mut self, dir: &Path) -> Result<u64> {
        let n = self.next_file_no;
        self.next_file_no = n.checked_add(1).ok_or_else(|| {
            Error::corrupt(
                dir.join(MANIFEST),
                0,
                format!("next file number {n} leaves no file numbers to use"),
            )
        })?;
        Ok(n)
    }

    /// The highest id any row here has had (live or deleted, in memory or
    /// in a segment): no id above it is live.
    fn max_id(&self) -> Option<u64> {
        let segments = self.segments.iter().filter_map(|ss| ss.seg.max_id());
        let frozen = self.frozen.as_ref().and_then(Memtable::max_id);
        segments.chain(frozen).chain(self.active.max_id()).max()
    }

    pub(super) fn find_live(&self, id: u64) -> Option<Loc> {
        if let Some(l) = self.active.find(id) {
            return Some(Loc::Active(l));
        }
        if let Some(l) = self.frozen.as_ref().and_then(|f| f.find(id)) {
            return Some(Loc::Frozen(l));
        }
        self.segments.iter().enumerate().find_map(|(i, ss)| {
            ss.seg
                .find_id(id)
                .filter(|&r| !ss.tomb.get(r))
                .map(|r| Loc::Seg(i, r))
        })
    }

    /// Whether `subject` has a live row anywhere: the memtables' subject
    /// indexes, then each segment's sorted subject dictionary.
    pub(super) fn has_live(&self, subject: &str) -> bool {
        self.active.subject_ids(subject).next().is_some()
            || self
                .frozen
                .as_ref()
                .is_some_and(|f| f.subject_ids(subject).next().is_some())
            || live_in_segments(&self.segments, subject)
    }

    /// The subject of the live row at `loc`.
    fn subject_at(&self, loc: Loc) -> Arc<str> {
        match loc {
            Loc::Active(l) => self.active.subject(l).clone(),
            Loc::Frozen(l) => self
                .frozen
                .as_ref()
                .map_or_else(|| Arc::from(""), |f| f.subject(l).clone()),
            Loc::Seg(i, r) => Arc::from(self.segments[i].seg.row_subject(r)),
        }
    }

    /// Subjects with a live row in `segments`: the count the manifest naming
    /// them records. The rows not in them are the memtables', so this is the
    /// live count less the subjects that only the memtables hold (a scan of
    /// the memtables' subjects, never of the segments').
    pub(super) fn subjects_in(&self, segments: &[SegState]) -> u64 {
        let mut only_in_memory: HashSet<&str> = HashSet::new();
        let frozen = self.frozen.iter().flat_map(Memtable::subjects);
        for s in self.active.subjects().chain(frozen) {
            if !live_in_segments(segments, s) {
                only_in_memory.insert(s);
            }
        }
        self.subjects - only_in_memory.len() as u64
    }

    pub(super) fn delete_loc(&mut self, loc: Loc) {
        match loc {
            Loc::Active(l) => self.active.delete(l),
            Loc::Frozen(l) => {
                if let Some(f) = self.frozen.as_mut() {
                    f.delete(l);
                }
            }
            Loc::Seg(i, r) => {
                Arc::make_mut(&mut self.segments[i].tomb).set(r);
            }
        }
    }

    /// Upsert the rows of `chunk` (ids unique within it).
    pub(super) fn apply_insert(&mut self, chunk: Chunk) -> InsertOutcome {
        // Each distinct subject is looked up once (a batch's rows of one
        // person usually come together: a repeat of the previous row's
        // subject is not even hashed).
        let mut seen: HashSet<&str, IdHashBuilder> = HashSet::default();
        let mut added = 0u64;
        let mut previous: Option<&str> = None;
        for s in chunk.subjects.iter().map(|s| &**s) {
            if previous != Some(s) && seen.insert(s) && !self.has_live(s) {
                added += 1;
            }
            previous = Some(s);
        }
        let mut replaced = 0;
        let mut touched: HashSet<Arc<str>> = HashSet::new();
        // Ids above every id a row here has had cannot be live: a batch of
        // new ids (the common case) skips the lookups.
        let lowest = chunk.sorted.first().map(|&(id, _)| id);
        let fresh = lowest.is_some_and(|lo| self.max_id().is_none_or(|top| lo > top));
        for &id in chunk.ids.iter().filter(|_| !fresh) {
            if let Some(loc) = self.find_live(id) {
                touched.insert(self.subject_at(loc));
                self.delete_loc(loc);
                replaced += 1;
            }
        }
        let n = chunk.len() as u64;
        self.active.append(chunk);
        self.subjects += added;
        self.forget_emptied(touched);
        InsertOutcome {
            inserted: n - replaced,
            replaced,
        }
    }

    pub(super) fn apply_delete(&mut self, ids: &[u64]) -> u64 {
        let mut n = 0;
        let mut touched: HashSet<Arc<str>> = HashSet::new();
        for &id in ids {
            if let Some(loc) = self.find_live(id) {
                touched.insert(self.subject_at(loc));
                self.delete_loc(loc);
                n += 1;
            }
        }
        self.forget_emptied(touched);
        n
    }

    /// Subjects that lost rows: those left with none no longer count.
    fn forget_emptied(&mut self, touched: HashSet<Arc<str>>) {
        let emptied = touched.iter().filter(|s| !self.has_live(s)).count() as u64;
        self.subjects -= emptied;
    }

    pub(super) fn apply_op(&mut self, op: &WalOp) {
        match op {
            WalOp::Insert(items) => {
                let chunk = Chunk::new(
                    items.iter().map(|e| e.id).collect(),
                    items
                        .iter()
                        .map(|e| Arc::from(e.subject.as_str()))
                        .collect(),
                    items
                        .iter()
                        .flat_map(|e| e.vector.iter().copied())
                        .collect(),
                );
                // Live inserts raised the counter when validated; replayed
                // ones raise it here.
                if let Some(top) = items.iter().map(|e| e.id).max() {
                    self.ids.hold(top);
                }
                self.apply_insert(chunk);
            }
            WalOp::Delete(ids) => {
                self.apply_delete(ids);
            }
            WalOp::At { seq, op } => {
                self.apply_op(op);
                self.applied_seq = self.applied_seq.max(*seq);
            }
        }
    }

    /// Live ids named directly or through their subject, each once.
    pub(super) fn resolve_delete(&self, ids: &[u64], subjects: &[String]) -> Vec<u64> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for &id in ids {
            if self.find_live(id).is_some() && seen.insert(id) {
                out.push(id);
            }
        }
        for s in subjects {
            let mut found: Vec<u64> = self.active.subject_ids(s).collect();
            if let Some(f) = &self.frozen {
                found.extend(f.subject_ids(s));
            }
            for ss in &self.segments {
                found.extend(
                    ss.seg
                        .subject_rows(s)
                        .iter()
                        .filter(|&&r| !ss.tomb.get(r as usize))
                        .map(|&r| ss.seg.ids()[r as usize]),
                );
            }
            found.sort_unstable();
            for id in found {
                if seen.insert(id) {
                    out.push(id);
                }
            }
        }
        out
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let mut chunks = Vec::new();
        if let Some(f) = &self.frozen {
            chunks.extend(f.chunks.iter().cloned());
        }
        chunks.extend(self.active.chunks.iter().cloned());
        Snapshot {
            segments: self.segments.clone(),
            chunks,
            subjects: self.subjects,
            dim: self.spec.dim,
            scans: Arc::clone(&self.scans),
        }
    }

    pub(super) fn manifest(
        &self,
        segments: &[SegState],
        wal_start: u64,
        applied_seq: u64,
    ) -> ManifestData {
        ManifestData {
            // A count for people reading the file, compared with nothing: it
            // may wrap (only a damaged manifest brings it near u64::MAX).
            generation: self.generation.wrapping_add(1),
            next_file_no: self.next_file_no,
            wal_start,
            segments: segments
                .iter()
                .map(|s| ManifestSegment {
                    file_no: s.seg.file_no(),
                    rows: s.seg.rows() as u64,
                    deleted: s.tomb.rows(),
                })
                .collect(),
            subjects: Some(self.subjects_in(segments)),
            spec: self.spec.clone(),
            highest_id: self.ids.highest(),
            applied_seq,
        }
    }
}

/// The counter of the ids a gallery assigns: the highest id it has held or
/// assigned. It only goes up: every id a batch names raises it (when the batch
/// is validated, so before any row with the id exists), and assigning `n` ids
/// hands out the `n` above it. Every manifest records it, and opening takes
/// the largest of the manifest's, the segments' and the replayed WAL's ids,
/// so an assigned id is never handed out again, whatever was deleted or
/// compacted since, and whatever crashed.
#[derive(Debug, Default)]
pub(super) struct IdCounter(AtomicU64);

impl IdCounter {
    pub(super) fn new(highest: u64) -> IdCounter {
        IdCounter(AtomicU64::new(highest))
    }

    /// The highest id held or assigned.
    pub(super) fn highest(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Note that the gallery holds (or is about to hold) `id`.
    pub(super) fn hold(&self, id: u64) {
        self.0.fetch_max(id, Ordering::SeqCst);
    }

    /// `n` fresh ids, consecutive: the first is returned. `None` when they
    /// would pass `u64::MAX`.
    pub(super) fn assign(&self, n: u64) -> Option<u64> {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| h.checked_add(n))
            .ok()
            .map(|h| h + 1)
    }
}

/// Whether `subject` has a live row in `segments`.
pub(super) fn live_in_segments(segments: &[SegState], subject: &str) -> bool {
    segments.iter().any(|ss| {
        ss.seg
            .subject_rows(subject)
            .iter()
            .any(|&r| !ss.tomb.get(r as usize))
    })
}

/// A validated write waiting in the commit queue.
pub(super) enum Op {
    /// The rows (taken by the leader) and the WAL payload with its CRC state
    /// (with `seq`, the payload starts with the log position, [`format::encode_at`]).
    Insert {
        chunk: Mutex<Option<Chunk>>,
        payload: Vec<u8>,
        crc: crc32fast::Hasher,
        seq: Option<u64>,
    },
    Delete {
        ids: Vec<u64>,
        subjects: Vec<String>,
        seq: Option<u64>,
    },
}

impl Op {
    /// The log sequence of a batch applied from a replicated log.
    fn seq(&self) -> Option<u64> {
        match self {
            Op::Insert { seq, .. } | Op::Delete { seq, .. } => *seq,
        }
    }
}

pub(super) enum Outcome {
    Insert(InsertOutcome),
    Delete(u64),
    /// A batch from a log at or below the applied sequence: already applied.
    Skipped,
}

pub(super) struct Pending {
    op: Op,
    result: Mutex<Option<Result<Outcome>>>,
}

/// Check one subject string.
pub(super) fn check_subject(what: &'static str, index: usize, s: &str) -> Result<()> {
    match format::subject_problem(s) {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidSubject {
            what,
            index,
            reason,
        }),
    }
}

/// Check one vector against the gallery's spec (dimension, finite values, not
/// zero where the gallery normalises) and append it to `out` as the gallery
/// keeps it: scaled to unit length where the gallery normalises. On error
/// `out` is unchanged.
pub(super) fn check_vector(
    spec: &GallerySpec,
    what: &'static str,
    index: usize,
    v: &[f32],
    out: &mut Vec<f32>,
) -> Result<()> {
    if v.len() != spec.dim {
        return Err(Error::DimensionMismatch {
            what,
            index,
            expected: spec.dim,
            got: v.len(),
        });
    }
    let start = out.len();
    out.extend_from_slice(v);
    check_values(spec.normalize, what, index, &mut out[start..])
        .inspect_err(|_| out.truncate(start))
}

/// Check a vector's values in place (finite; not zero where the gallery
/// normalises, `normalize`) and scale it to unit length where it normalises:
/// [`check_vector`] without the dimension, for a bulk import's rows.
pub(super) fn check_values(
    normalize_it: bool,
    what: &'static str,
    index: usize,
    v: &mut [f32],
) -> Result<()> {
    if let Some(position) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFiniteValue {
            what,
            index,
            position,
            value: v[position],
        });
    }
    if normalize_it && normalize(v).is_none() {
        return Err(Error::ZeroVector { what, index });
    }
    Ok(())
}

/// Check an insert batch in flat form against a gallery's spec, as an
/// insert does before it changes anything: the shape (one row of `dim`
/// values and, when given, one id per subject), the batch limit, every
/// vector (dimension, finite values, not zero where the gallery
/// normalises), every subject, and no id twice. Returns the rows as the
/// gallery keeps them (normalised where it normalises). A cluster node
/// checks a batch with it before logging it, so a batch the replicas would
/// refuse is refused before anything is logged.
pub fn check_rows<S: AsRef<str>>(
    spec: &GallerySpec,
    ids: Option<&[u64]>,
    subjects: &[S],
    vectors: &[f32],
) -> Result<Vec<f32>> {
    let (n, dim) = (subjects.len(), spec.dim);
    if vectors.len() != n * dim {
        return Err(Error::BatchShape {
            what: "vectors",
            reason: format!(
                "{} values are not one row of {dim} per subject ({n} subjects: {} values)",
                vectors.len(),
                n * dim
            ),
        });
    }
    if let Some(ids) = ids
        && ids.len() != n
    {
        return Err(Error::BatchShape {
            what: "ids",
            reason: format!("{} ids for {n} rows (one per row, or none)", ids.len()),
        });
    }
    let limit = Limits::for_dim(dim).insert_batch;
    if n > limit {
        return Err(Error::TooLarge {
            what: "embeddings",
            got: n,
            limit,
        });
    }
    let mut checked = Vec::with_capacity(n * dim);
    for (i, (v, s)) in vectors.chunks_exact(dim).zip(subjects).enumerate() {
        check_vector(spec, "embeddings", i, v, &mut checked)?;
        check_subject("embeddings", i, s.as_ref())?;
    }
    if let Some(ids) = ids {
        let mut seen =
            crate::snapshot::memtable::IdMap::with_capacity_and_hasher(n, Default::default());
        for (i, &id) in ids.iter().enumerate() {
            if let Some(first) = seen.insert(id, i) {
                return Err(Error::DuplicateId {
                    what: "ids",
                    id,
                    first,
                    second: i,
                });
            }
        }
    }
    Ok(checked)
}

/// Check a delete batch as a delete does before it changes anything (its
/// size and its subjects); a cluster node checks one before logging it.
pub fn check_delete(ids: &[u64], subjects: &[String]) -> Result<()> {
    if ids.len() + subjects.len() > MAX_DELETE_BATCH {
        return Err(Error::TooLarge {
            what: "ids and subjects",
            got: ids.len() + subjects.len(),
            limit: MAX_DELETE_BATCH,
        });
    }
    for (i, s) in subjects.iter().enumerate() {
        check_subject("subjects", i, s)?;
    }
    Ok(())
}

/// [`check_vector`] of one vector, returned on its own.
pub(super) fn checked_vector(
    spec: &GallerySpec,
    what: &'static str,
    index: usize,
    v: &[f32],
) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(spec.dim);
    check_vector(spec, what, index, v, &mut out)?;
    Ok(out)
}

/// Scale `v` to unit length (its norm computed in f64, so no finite vector
/// overflows); `None` for the zero vector, which has no direction.
pub(crate) fn normalize(v: &mut [f32]) -> Option<()> {
    let n2: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    if n2 == 0.0 {
        return None;
    }
    let inv = 1.0 / n2.sqrt();
    for x in v.iter_mut() {
        *x = (f64::from(*x) * inv) as f32;
    }
    Some(())
}

/// Check a batch of probes and `k`; the probes come back row-major, as the
/// gallery searches them (normalised where it normalises).
pub(super) fn check_probes<P: AsRef<[f32]>>(
    spec: &GallerySpec,
    probes: &[P],
    k: usize,
    max_k: usize,
) -> Result<Vec<f32>> {
    if k == 0 || k > max_k {
        return Err(Error::InvalidK {
            got: k,
            limit: max_k,
        });
    }
    let limit = Limits::for_dim(spec.dim).probes;
    if probes.len() > limit {
        return Err(Error::TooLarge {
            what: "probes",
            got: probes.len(),
            limit,
        });
    }
    let mut out = Vec::with_capacity(probes.len() * spec.dim);
    for (i, p) in probes.iter().enumerate() {
        check_vector(spec, "probes", i, p.as_ref(), &mut out)?;
    }
    Ok(out)
}

impl Gallery {
    /// Refuse an insert while too many rows wait to be flushed (see
    /// [`GalleryOptions::max_unflushed_rows`]).
    pub(super) fn check_backlog(&self) -> Result<()> {
        if !self.opts.background {
            return Ok(());
        }
        // Flushes that are merely behind stall the writer (up to a bound);
        // flushes that fail refuse it at once.
        let start = std::time::Instant::now();
        loop {
            let rows = {
                let st = lock(&self.state);
                st.active.rows() + st.frozen.as_ref().map_or(0, |f| f.rows())
            };
            if rows < self.opts.max_unflushed_rows {
                return Ok(());
            }
            self.wake_maintenance();
            let failure = lock(&self.flush_failure)
                .clone()
                .or_else(|| lock(&self.compaction_failure).clone());
            if failure.is_some() || start.elapsed() > BACKLOG_STALL {
                return Err(Error::Backlogged {
                    gallery: self.name.clone(),
                    rows,
                    limit: self.opts.max_unflushed_rows,
                    disk_full: failure.as_ref().is_some_and(|f| f.disk_full),
                    failure: failure.map(|f| f.reason),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reserve WAL space for `bytes` more bytes past what this group already
    /// framed (`framed`), or say why not.
    pub(super) fn reserve_wal(&self, st: &mut WriteState, framed: u64, bytes: u64) -> Result<()> {
        st.wal.reserve(framed + bytes).map_err(|e| {
            let e = Error::io(st.wal.path(), e);
            if e.is_no_space() {
                Error::NoSpace {
                    what: "this write",
                    path: self.dir.clone(),
                    needed: bytes,
                    available: crate::storage::fs::available_space(&*self.fs, &self.dir)
                        .unwrap_or(0),
                }
            } else {
                e
            }
        })
    }

    /// Insert (upsert) a batch. The batch is validated whole first; a bad batch
    /// is rejected with an error naming the position and changes nothing.
    pub fn insert(&self, batch: &[Embedding]) -> Result<InsertOutcome> {
        self.check_batch_len(batch.len())?;
        let mut seen = crate::snapshot::memtable::IdMap::with_capacity_and_hasher(
            batch.len(),
            Default::default(),
        );
        let mut vectors = Vec::with_capacity(batch.len() * self.spec.dim);
        for (i, e) in batch.iter().enumerate() {
            check_vector(&self.spec, "embeddings", i, &e.vector, &mut vectors)?;
            check_subject("embeddings", i, &e.subject)?;
            if let Some(first) = seen.insert(e.id, i) {
                return Err(Error::DuplicateId {
                    what: "embeddings",
                    id: e.id,
                    first,
                    second: i,
                });
            }
        }
        let ids = batch.iter().map(|e| e.id).collect();
        let subjects = batch.iter().map(|e| e.subject.as_str());
        Ok(self
            .commit_insert(ids, subjects, vectors, None)?
            .unwrap_or_default())
    }

    /// Insert (upsert) a batch in flat form: `vectors` holds one row of the
    /// gallery's dimension per subject, row after row, and `ids` one id per
    /// row; or `ids` is `None` and the gallery assigns fresh ones, each above
    /// every id it has held or assigned (never 0, never reused: the counter
    /// is persisted with the manifest and rebuilt from the files at open).
    /// Returns the counts and the rows' ids (given or assigned). The batch is
    /// validated whole, as [`Gallery::insert`]; errors name rows as
    /// `embeddings[i]` and ids as `ids[i]`.
    pub fn insert_rows<S: AsRef<str>>(
        &self,
        ids: Option<&[u64]>,
        subjects: &[S],
        vectors: &[f32],
    ) -> Result<(InsertOutcome, Vec<u64>)> {
        let (out, ids) = self.insert_rows_seq(ids, subjects, vectors, None)?;
        Ok((out.unwrap_or_default(), ids))
    }

    /// Apply an insert (upsert) batch of a replicated log at its sequence
    /// number `seq` (a replica's write path): as [`Gallery::insert_rows`]
    /// with the ids given, and the batch's WAL record carries `seq`, so
    /// [`Gallery::applied_seq`] is restored with it after a crash. A batch
    /// at or below the applied sequence was applied before and is skipped
    /// (`None`); batches must come in the log's order. An empty batch only
    /// records the position.
    pub fn insert_at<S: AsRef<str>>(
        &self,
        seq: u64,
        ids: &[u64],
        subjects: &[S],
        vectors: &[f32],
    ) -> Result<Option<InsertOutcome>> {
        Ok(self
            .insert_rows_seq(Some(ids), subjects, vectors, Some(seq))?
            .0)
    }

    /// Apply a delete of a replicated log at its sequence number `seq` (see
    /// [`Gallery::insert_at`]): `None` if it was applied before. A replica
    /// does not keep the erasure log of [`Gallery::delete`]: erasure in a
    /// cluster is the log's and every replica's.
    pub fn delete_at(&self, seq: u64, ids: &[u64], subjects: &[String]) -> Result<Option<u64>> {
        self.check_delete(ids, subjects)?;
        match self.submit(Op::Delete {
            ids: ids.to_vec(),
            subjects: subjects.to_vec(),
            seq: Some(seq),
        })? {
            Outcome::Delete(n) => Ok(Some(n)),
            Outcome::Skipped => Ok(None),
            Outcome::Insert(_) => unreachable!("delete op yields a delete outcome"),
        }
    }

    /// The log sequence of the last batch applied with [`Gallery::insert_at`]
    /// or [`Gallery::delete_at`] (0: none), as recovered after a restart.
    pub fn applied_seq(&self) -> u64 {
        lock(&self.state).applied_seq
    }

    /// The log sequence up to which every applied batch is in the gallery's
    /// segments (flushed and synced, named by the manifest): batches at or
    /// below it are never needed from the log again by this gallery.
    pub fn flushed_seq(&self) -> u64 {
        lock(&self.state).segments_seq
    }

    fn insert_rows_seq<S: AsRef<str>>(
        &self,
        ids: Option<&[u64]>,
        subjects: &[S],
        vectors: &[f32],
        seq: Option<u64>,
    ) -> Result<(Option<InsertOutcome>, Vec<u64>)> {
        let n = subjects.len();
        let checked = check_rows(&self.spec, ids, subjects, vectors)?;
        let ids = match ids {
            Some(ids) => ids.to_vec(),
            None if n == 0 => Vec::new(),
            None => {
                let first = self
                    .ids
                    .assign(n as u64)
                    .ok_or_else(|| Error::IdsExhausted {
                        gallery: self.name.clone(),
                        wanted: n as u64,
                        highest: self.ids.highest(),
                    })?;
                // `first + n` may be 2^64: count up from `first` instead.
                (0..n as u64).map(|i| first + i).collect()
            }
        };
        let outcome = self.commit_insert(
            ids.clone(),
            subjects.iter().map(AsRef::as_ref),
            checked,
            seq,
        )?;
        Ok((outcome, ids))
    }

    /// Refuse a batch over the gallery's limit.
    fn check_batch_len(&self, n: usize) -> Result<()> {
        let limit = Limits::for_dim(self.spec.dim).insert_batch;
        if n > limit {
            return Err(Error::TooLarge {
                what: "embeddings",
                got: n,
                limit,
            });
        }
        Ok(())
    }

    /// Commit a validated batch (ids unique, vectors checked and as the
    /// gallery keeps them): frame its WAL record and join the commit queue.
    fn commit_insert<'a>(
        &self,
        ids: Vec<u64>,
        subjects: impl ExactSizeIterator<Item = &'a str> + Clone,
        vectors: Vec<f32>,
        seq: Option<u64>,
    ) -> Result<Option<InsertOutcome>> {
        if ids.is_empty() {
            let Some(seq) = seq else {
                return Ok(Some(InsertOutcome::default()));
            };
            // Nothing to insert: record the log position alone.
            return match self.submit(Op::Delete {
                ids: Vec::new(),
                subjects: Vec::new(),
                seq: Some(seq),
            })? {
                Outcome::Skipped => Ok(None),
                _ => Ok(Some(InsertOutcome::default())),
            };
        }
        self.check_backlog()?;
        if let Some(&top) = ids.iter().max() {
            self.ids.hold(top);
        }
        let dim = self.spec.dim;
        let mut payload = Vec::with_capacity(14 + ids.len() * (10 + 4 * dim + 16));
        if let Some(seq) = seq {
            format::encode_at(seq, &mut payload);
        }
        format::encode_insert(
            ids.iter()
                .zip(subjects.clone())
                .zip(vectors.chunks_exact(dim))
                .map(|((&id, s), v)| (id, s, v)),
            &mut payload,
        );
        let mut crc = crc32fast::Hasher::new();
        crc.update(&payload);
        let subjects = subjects.map(Arc::from).collect();
        let chunk = Chunk::new(ids, subjects, vectors);
        let op = Op::Insert {
            chunk: Mutex::new(Some(chunk)),
            payload,
            crc,
            seq,
        };
        match self.submit(op)? {
            Outcome::Insert(o) => Ok(Some(o)),
            Outcome::Skipped => Ok(None),
            Outcome::Delete(_) => unreachable!("insert op yields an insert outcome"),
        }
    }

    /// Refuse a delete over its limits or with a bad subject.
    fn check_delete(&self, ids: &[u64], subjects: &[String]) -> Result<()> {
        check_delete(ids, subjects)
    }

    /// Delete embeddings by id and every embedding of the given subjects.
    /// Returns how many live embeddings were removed.
    pub fn delete(&self, ids: &[u64], subjects: &[String]) -> Result<u64> {
        self.check_delete(ids, subjects)?;
        if ids.is_empty() && subjects.is_empty() {
            return Ok(0);
        }
        self.check_writable()?;
        // The erasure is logged (synced) before the delete is applied, and
        // the lock held until it is, so a backup's cut never falls between.
        let mut slot = lock(&self.erasure);
        let erasures = self.erasures(&mut slot)?;
        self.log_erasures(erasures, ids, subjects)?;
        match self.submit(Op::Delete {
            ids: ids.to_vec(),
            subjects: subjects.to_vec(),
            seq: None,
        })? {
            Outcome::Delete(n) => Ok(n),
            Outcome::Insert(_) | Outcome::Skipped => {
                unreachable!("a delete without a log position yields a delete outcome")
            }
        }
    }

    /// Join the commit queue; lead a group if first in line.
    pub(super) fn submit(&self, op: Op) -> Result<Outcome> {
        self.check_writable()?;
        let me = Arc::new(Pending {
            op,
            result: Mutex::new(None),
        });
        let mut q = lock(&self.queue);
        q.push_back(me.clone());
        loop {
            if let Some(r) = lock(&me.result).take() {
                return r;
            }
            if q.front().is_some_and(|f| Arc::ptr_eq(f, &me)) {
                break;
            }
            q = self.queue_cv.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        // Leader: take the whole queue (bounded by bytes) as one group.
        let mut group = Vec::new();
        let mut bytes = 0usize;
        for p in q.iter() {
            let b = match &p.op {
                Op::Insert { payload, .. } => payload.len(),
                Op::Delete { ids, .. } => ids.len() * 8,
            };
            if !group.is_empty() && bytes + b > 64 << 20 {
                break;
            }
            bytes += b;
            group.push(p.clone());
        }
        drop(q);
        let results = self.commit_group(&group);
        let mut q = lock(&self.queue);
        for (p, r) in group.iter().zip(results) {
            *lock(&p.result) = Some(r);
            q.pop_front();
        }
        self.queue_cv.notify_all();
        drop(q);
        lock(&me.result).take().unwrap_or(Err(Error::Closed))
    }

    pub(super) fn commit_group(&self, group: &[Arc<Pending>]) -> Vec<Result<Outcome>> {
        let fail_all = |e: &Error| -> Vec<Result<Outcome>> {
            group
                .iter()
                .map(|_| {
                    Err(match e {
                        Error::Poisoned {
                            gallery,
                            reason,
                            disk_full,
                        } => Error::Poisoned {
                            gallery: gallery.clone(),
                            reason: reason.clone(),
                            disk_full: *disk_full,
                        },
                        Error::Closed => Error::Closed,
                        other => Failure::of("write refused", other).poisoned(&self.name),
                    })
                })
                .collect()
        };
        let mut st = lock(&self.state);
        if let Err(e) = self.check_writable() {
            return fail_all(&e);
        }
        // Apply in queue order, reserving each record's WAL space first. Insert
        // payloads (and their CRC state) are the ones their callers encoded.
        let mut deletes: Vec<(usize, Vec<u8>, crc32fast::Hasher)> = Vec::new();
        let mut outs = Vec::with_capacity(group.len());
        // Bytes framed so far in this group: each batch reserves its WAL space
        // before it is applied, so a full disk refuses it (and the batches
        // after it) whole, leaving the state and the gallery as they were.
        let mut framed = 0u64;
        // A group of inserts alone is applied after its records are written,
        // while the disk writes them back (see below). A delete resolves
        // against the batches before it, so a group with one applies each
        // batch in turn, before the write.
        let defer_apply = self.opts.durability == Durability::PowerLoss
            && group.iter().all(|p| matches!(p.op, Op::Insert { .. }));
        for (i, p) in group.iter().enumerate() {
            if let Some(seq) = p.op.seq()
                && seq <= st.applied_seq
            {
                // Applied before (a redelivery): nothing to apply or log.
                outs.push(Ok(Outcome::Skipped));
                continue;
            }
            match &p.op {
                Op::Insert { chunk, payload, .. } => {
                    let bytes = Record::framed_len(payload.len());
                    if let Err(e) = self.reserve_wal(&mut st, framed, bytes) {
                        outs.push(Err(e));
                        break;
                    }
                    framed += bytes;
                    if defer_apply {
                        // Counted when it is applied, after the write.
                        outs.push(Ok(Outcome::Insert(InsertOutcome::default())));
                    } else {
                        let chunk = lock(chunk).take().unwrap_or_default();
                        outs.push(Ok(Outcome::Insert(st.apply_insert(chunk))));
                    }
                }
                Op::Delete { ids, subjects, seq } => {
                    let resolved = st.resolve_delete(ids, subjects);
                    if resolved.len() > format::MAX_DELETE_IDS {
                        // One record could not hold it: refused whole, nothing applied.
                        outs.push(Err(Error::TooLarge {
                            what: "embeddings to delete (by id and by subject)",
                            got: resolved.len(),
                            limit: format::MAX_DELETE_IDS,
                        }));
                        continue;
                    }
                    // A batch from a log is logged even when it deletes
                    // nothing here: its record carries the log position.
                    if !resolved.is_empty() || seq.is_some() {
                        let mut payload = Vec::with_capacity(14 + resolved.len() * 8);
                        if let Some(seq) = seq {
                            format::encode_at(*seq, &mut payload);
                        }
                        format::encode_delete(&resolved, &mut payload);
                        let bytes = Record::framed_len(payload.len());
                        if let Err(e) = self.reserve_wal(&mut st, framed, bytes) {
                            outs.push(Err(e));
                            break;
                        }
                        framed += bytes;
                        let mut crc = crc32fast::Hasher::new();
                        crc.update(&payload);
                        deletes.push((i, payload, crc));
                    }
                    outs.push(Ok(Outcome::Delete(st.apply_delete(&resolved))));
                }
            }
            if let Some(seq) = p.op.seq()
                && outs.last().is_some_and(Result::is_ok)
            {
                st.applied_seq = seq;
            }
        }
        // Batches after one refused for space are refused too (they were not applied).
        for p in &group[outs.len()..] {
            let needed = match &p.op {
                Op::Insert { payload, .. } => payload.len(),
                Op::Delete { ids, .. } => ids.len() * 8,
            };
            outs.push(Err(Error::NoSpace {
                what: "this write",
                path: self.dir.clone(),
                needed: Record::framed_len(needed),
                available: crate::storage::fs::available_space(&*self.fs, &self.dir).unwrap_or(0),
            }));
        }
        // The records of the applied batches, in queue order.
        let mut records = Vec::with_capacity(group.len());
        let mut deletes = deletes.iter().peekable();
        for (i, (p, out)) in group.iter().zip(&outs).enumerate() {
            if out.is_err() || matches!(out, Ok(Outcome::Skipped)) {
                // Refused (too large, or no space) or applied before: nothing to log.
                continue;
            }
            match &p.op {
                Op::Insert { payload, crc, .. } => records.push(Record { payload, crc }),
                Op::Delete { .. } => {
                    if let Some((_, payload, crc)) = deletes.next_if(|d| d.0 == i) {
                        records.push(Record { payload, crc });
                    }
                }
            }
        }
        if !records.is_empty() {
            let path = st.wal.path().to_owned();
            let from = st.wal.len();
            let res = st.wal.append_group(&records).and_then(|()| {
                if self.opts.durability != Durability::PowerLoss {
                    return Ok(());
                }
                if defer_apply {
                    // The disk starts writing the records back now, and the
                    // memtable takes the batches meanwhile: the fdatasync
                    // then waits for less. Nothing is published before it.
                    st.wal.start_writeback(from);
                    for (p, out) in group.iter().zip(outs.iter_mut()) {
                        if let (Op::Insert { chunk, .. }, Ok(Outcome::Insert(o))) = (&p.op, out) {
                            *o = st.apply_insert(lock(chunk).take().unwrap_or_default());
                        }
                    }
                }
                self.counters.timed_fsync(|| st.wal.sync())
            });
            if let Err(e) = res {
                let err = self.set_poison(Failure::io(
                    format!("WAL write or sync failed on {}", path.display()),
                    &e,
                ));
                return fail_all(&err);
            }
        }
        self.counters.group_commit(group.len(), records.len());
        self.publish(&st);
        let need_flush = st.active.rows() >= self.memtable_limit();
        drop(st);
        if need_flush && self.opts.background {
            self.wake_maintenance();
        }
        outs
    }
}

//! A gallery: the write path (validate, WAL, memtable, publish), recovery on
//! open, flush, and the published `Arc<Snapshot>` that readers search.
//!
//! # Write path
//! A batch is validated whole in the caller's thread (and, for inserts,
//! encoded as a WAL payload there). It then joins the gallery's commit queue.
//! The batch at the head of the queue leads: it takes every queued batch (group
//! commit), and under the state lock frames each as one WAL record, applies it
//! to the in-memory state, appends all records with one `write`, syncs once
//! (in [`Durability::PowerLoss`] mode), and only then publishes a new snapshot
//! and acknowledges every batch of the group. A reader therefore never sees a
//! write that is not yet durable. If the append or sync fails the gallery is
//! poisoned: it refuses writes until reopened, and nothing of the failed group
//! is published or acknowledged.
//!
//! # Read path
//! Readers clone the current `Arc<Snapshot>` (segments with their tombstones,
//! memtable chunks with theirs) and search it without any lock; flushes and
//! compactions publish new snapshots and never change an old one.
//!
//! Segment layout is [`crate::segment`]'s, WAL framing [`crate::wal`]'s,
//! compaction policy [`crate::compaction`]'s.

use crate::compaction::{self, CompactionPolicy, SegmentStat};
use crate::error::{Error, Result};
use crate::format::{self, ManifestData, ManifestSegment, WalOp};
use crate::head::{self, HeadInfo, TrainOptions, sigmoid};
use crate::memtable::{Chunk, MemChunk, MemLoc, Memtable};
use crate::segment::{self, RowRef, Segment, VerifyChecksums};
use crate::tombstones::Tombstones;
use crate::wal::{self, WalWriter};
use crate::{DIM, Embedding, Hit, search};
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

/// Largest insert batch (embeddings per call).
pub const MAX_INSERT_BATCH: usize = 100_000;
/// Largest number of ids plus subjects in one delete call.
pub const MAX_DELETE_BATCH: usize = 1_000_000;
/// Largest number of probes in one search or identify call.
pub const MAX_PROBES: usize = 10_000;
/// Largest `k` for search.
pub const MAX_K: usize = 10_000;
/// Largest `k` for identification.
pub const MAX_IDENTIFY_K: usize = 1_000;

/// Longest an insert waits for flushes that are behind before it is refused.
const BACKLOG_STALL: Duration = Duration::from_secs(30);

/// What an acknowledged write survives. Named for the guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The WAL is fsynced (`fdatasync`) before a write returns: it survives a
    /// process crash, an OS crash and power loss (given media that honour flushes).
    #[default]
    PowerLoss,
    /// The WAL is written to the OS before a write returns, not synced: it
    /// survives the process being killed, not an OS crash or power loss.
    ProcessCrash,
}

/// Per-gallery settings.
#[derive(Debug, Clone)]
pub struct GalleryOptions {
    /// What an acknowledged write survives.
    pub durability: Durability,
    /// Memtable rows that trigger a flush to a segment.
    pub memtable_rows: usize,
    /// Run flushes and compaction policy in a background thread.
    pub background: bool,
    /// How much of each segment to verify at open.
    pub verify: VerifyChecksums,
    /// When background compaction rewrites segments.
    pub compaction: CompactionPolicy,
    /// With `background`, inserts are refused ([`Error::Backlogged`]) while
    /// this many rows wait in memory to be flushed: if flushes keep failing
    /// (a full disk, a failing device), memory stays bounded. Deletes are
    /// always taken, so people can still be erased.
    pub max_unflushed_rows: usize,
}

impl Default for GalleryOptions {
    fn default() -> Self {
        GalleryOptions {
            durability: Durability::PowerLoss,
            memtable_rows: 1 << 17,
            background: true,
            verify: VerifyChecksums::Metadata,
            compaction: CompactionPolicy::default(),
            max_unflushed_rows: 1 << 19,
        }
    }
}

/// Counts of an insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InsertOutcome {
    /// Ids that were new.
    pub inserted: u64,
    /// Ids that existed and were replaced.
    pub replaced: u64,
}

/// Statistics of a gallery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GalleryStats {
    /// Live embeddings.
    pub live: u64,
    /// Deleted or replaced embeddings still occupying space (until compaction).
    pub deleted: u64,
    /// Distinct subjects with at least one live embedding.
    pub subjects: u64,
    /// Segment files.
    pub segments: u64,
    /// Rows in the memtable (not yet in a segment).
    pub memtable_rows: u64,
    /// Bytes of all files in the gallery directory.
    pub bytes_on_disk: u64,
}

/// Before and after a flush or compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaintenanceReport {
    /// Statistics before.
    pub before: GalleryStats,
    /// Statistics after.
    pub after: GalleryStats,
}

/// What to rank search results by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RankBy {
    /// Squared L2 distance, smallest first.
    #[default]
    Distance,
    /// The head's probability, highest first (needs a trained head).
    Head,
}

/// Parameters of a search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchOptions {
    /// Results per probe.
    pub k: usize,
    /// Ranking.
    pub rank_by: RankBy,
    /// Drop hits farther than this (squared L2).
    pub max_distance: Option<f32>,
    /// How distance ranking scans the vectors (results are exact distances either way).
    pub mode: ScanMode,
}

/// How a distance search scans the gallery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScanMode {
    /// The exact top-k, equal to a scan of every f32 vector. Where segments
    /// have 8-bit codes, the scans read the codes and prove from an error bound
    /// that no row outside their re-ranked candidates can enter, scanning
    /// directly where the bound cannot settle a probe: batches of 4 probes or
    /// more through integer dot products (AVX-512 VNNI), smaller ones (or up to
    /// 31 without VNNI) code by code; batches of 32 or more without VNNI take
    /// the tiled f32 scan.
    #[default]
    Exact,
    /// 8-bit codes first (a quarter of the memory traffic), then an exact f32
    /// re-rank of the best candidates, without the proof; returned distances
    /// are exact, the set can in rare cases miss a true neighbour the codes
    /// ranked too low.
    Quantized,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            k: 10,
            rank_by: RankBy::Distance,
            max_distance: None,
            mode: ScanMode::Exact,
        }
    }
}

/// Parameters of open-set identification.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdentifyOptions {
    /// Candidate subjects per probe.
    pub k: usize,
    /// Accept the best candidate only at or above this probability (needs a head).
    pub min_probability: Option<f32>,
    /// Accept the best candidate only within this squared distance.
    pub max_distance: Option<f32>,
}

impl Default for IdentifyOptions {
    fn default() -> Self {
        IdentifyOptions {
            k: 5,
            min_probability: None,
            max_distance: None,
        }
    }
}

/// The answer to "who is this?" for one probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Identification {
    /// Whether the best candidate passed the threshold.
    pub known: bool,
    /// The best candidate's subject when known.
    pub subject: Option<String>,
    /// The best subjects, each with its best-matching embedding.
    pub candidates: Vec<Hit>,
}

/// What a probe is verified against.
#[derive(Debug, Clone, PartialEq)]
pub enum VerifyTarget {
    /// Another vector.
    Vector(Vec<f32>),
    /// An enrolled embedding.
    Id(u64),
    /// Every embedding of a subject (the best counts).
    Subject(String),
}

/// One verification.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyPair {
    /// The probe.
    pub a: Vec<f32>,
    /// What it is compared with.
    pub b: VerifyTarget,
}

/// Decision overrides for verification.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct VerifyOptions {
    /// Same iff probability ≥ this (needs a head).
    pub min_probability: Option<f32>,
    /// Same iff squared distance ≤ this.
    pub max_distance: Option<f32>,
}

/// The answer to "is this the same person?".
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The decision.
    pub same: bool,
    /// The head's probability (when trained).
    pub probability: Option<f32>,
    /// Squared L2 distance (to the best embedding, for a subject).
    pub distance: f32,
    /// The embedding compared with, for an id or a subject.
    pub matched_id: Option<u64>,
}

enum Target<'a> {
    Vector(Box<[f32; DIM]>),
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
    fn accepts(
        &self,
        best: &Hit,
        head: Option<&HeadInfo>,
        q: &[f32; DIM],
        snap: &Snapshot,
        c: &search::Cand,
    ) -> bool {
        match *self {
            Decision::Distance(t) => best.distance <= t,
            Decision::Logit(t) => head.filter(|h| h.trained).is_some_and(|h| {
                let v = &snap.vectors(c.src as usize)[c.row as usize];
                h.logit(q, v) >= t
            }),
        }
    }
}

/// A segment with its tombstones.
#[derive(Debug, Clone)]
pub(crate) struct SegState {
    pub seg: Arc<Segment>,
    pub tomb: Arc<Tombstones>,
}

/// What a reader sees: immutable once published.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub segments: Vec<SegState>,
    pub chunks: Vec<MemChunk>,
}

impl Snapshot {
    /// Segments first, then memtable chunks.
    pub(crate) fn source_count(&self) -> usize {
        self.segments.len() + self.chunks.len()
    }
    pub(crate) fn vectors(&self, s: usize) -> &[[f32; DIM]] {
        match self.segments.get(s) {
            Some(ss) => ss.seg.vectors(),
            None => &self.chunks[s - self.segments.len()].chunk.vectors,
        }
    }
    /// The 8-bit codes of a source (version-2 segments only).
    #[allow(clippy::type_complexity)]
    pub(crate) fn sq8(&self, s: usize) -> Option<(&[f32; DIM], &[f32; DIM], &[[u8; DIM]])> {
        self.segments.get(s).and_then(|ss| ss.seg.sq8())
    }
    /// `‖x̂‖²` of each coded row of a segment (computed on first use; empty for memtable chunks).
    pub(crate) fn decoded_norms(&self, s: usize) -> &[f32] {
        self.segments
            .get(s)
            .map_or(&[], |ss| ss.seg.decoded_norms())
    }
    /// Precomputed squared norms of a source's rows (segments have them; memtable chunks do not).
    pub(crate) fn norms(&self, s: usize) -> Option<&[f32]> {
        self.segments.get(s).map(|ss| ss.seg.norms())
    }
    #[inline]
    pub(crate) fn deleted(&self, s: usize, row: usize) -> bool {
        match self.segments.get(s) {
            Some(ss) => ss.tomb.get(row),
            None => self.chunks[s - self.segments.len()].tomb.get(row),
        }
    }
    #[inline]
    pub(crate) fn id(&self, s: usize, row: usize) -> u64 {
        match self.segments.get(s) {
            Some(ss) => ss.seg.ids()[row],
            None => self.chunks[s - self.segments.len()].chunk.ids[row],
        }
    }
    pub(crate) fn subject(&self, s: usize, row: usize) -> &str {
        match self.segments.get(s) {
            Some(ss) => ss.seg.row_subject(row),
            None => &self.chunks[s - self.segments.len()].chunk.subjects[row],
        }
    }
    pub(crate) fn live_rows(&self) -> usize {
        let seg: usize = self
            .segments
            .iter()
            .map(|s| s.seg.rows() - s.tomb.count())
            .sum();
        let mem: usize = self
            .chunks
            .iter()
            .map(|c| c.chunk.ids.len() - c.tomb.count())
            .sum();
        seg + mem
    }
    fn deleted_rows(&self) -> usize {
        self.segments.iter().map(|s| s.tomb.count()).sum::<usize>()
            + self.chunks.iter().map(|c| c.tomb.count()).sum::<usize>()
    }
    fn subjects(&self) -> usize {
        let mut set: HashSet<&str> = HashSet::new();
        for ss in &self.segments {
            for ord in 0..ss.seg.subject_count() {
                if ss
                    .seg
                    .posting(ord)
                    .iter()
                    .any(|&r| !ss.tomb.get(r as usize))
                {
                    set.insert(ss.seg.subject(ord as u32));
                }
            }
        }
        for c in &self.chunks {
            for (r, s) in c.chunk.subjects.iter().enumerate() {
                if !c.tomb.get(r) {
                    set.insert(s);
                }
            }
        }
        set.len()
    }
    /// A result row: exact distance to the probe, and the head's probability when trained.
    fn hit(
        &self,
        c: &search::Cand,
        probe: &[f32; DIM],
        head: Option<&HeadInfo>,
        metric_is_l2: bool,
    ) -> Hit {
        let (s, r) = (c.src as usize, c.row as usize);
        let v = &self.vectors(s)[r];
        let distance = if metric_is_l2 {
            c.dist
        } else {
            crate::kernels::l2sq(probe, v)
        };
        Hit {
            id: c.id,
            subject: self.subject(s, r).to_owned(),
            distance,
            probability: head
                .filter(|h| h.trained)
                .map(|h| sigmoid(h.logit(probe, v))),
        }
    }
    /// Live rows of `subject`.
    fn subject_rows(&self, subject: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (i, ss) in self.segments.iter().enumerate() {
            out.extend(
                ss.seg
                    .subject_rows(subject)
                    .iter()
                    .map(|&r| r as usize)
                    .filter(|&r| !ss.tomb.get(r))
                    .map(|r| (i, r)),
            );
        }
        for (j, c) in self.chunks.iter().enumerate() {
            for (r, s) in c.chunk.subjects.iter().enumerate() {
                if &**s == subject && !c.tomb.get(r) {
                    out.push((self.segments.len() + j, r));
                }
            }
        }
        out
    }
    fn get(&self, id: u64) -> Option<Embedding> {
        for c in self.chunks.iter().rev() {
            if let Some(r) = c.chunk.find_live(id, &c.tomb) {
                return Some(Embedding {
                    id,
                    subject: c.chunk.subjects[r].to_string(),
                    vector: c.chunk.vectors[r].to_vec(),
                });
            }
        }
        for ss in &self.segments {
            if let Some(r) = ss.seg.find_id(id).filter(|&r| !ss.tomb.get(r)) {
                return Some(Embedding {
                    id,
                    subject: ss.seg.row_subject(r).to_owned(),
                    vector: ss.seg.vectors()[r].to_vec(),
                });
            }
        }
        None
    }
}

/// Where a live id is.
#[derive(Debug, Clone, Copy)]
enum Loc {
    Active(MemLoc),
    Frozen(MemLoc),
    Seg(usize, usize),
}

/// The writer's state, under one mutex.
struct WriteState {
    wal: WalWriter,
    segments: Vec<SegState>,
    /// Memtable being written to a segment; its WAL files are those below `active_wal`.
    frozen: Option<Memtable>,
    active: Memtable,
    next_file_no: u64,
    generation: u64,
    /// First WAL file the manifest says to replay.
    wal_start: u64,
}

impl WriteState {
    /// The next file number. The counter cannot pass `u64::MAX`: only a
    /// damaged manifest brings it there (2^64 files are never made), and
    /// wrapping around would reuse the numbers of live files.
    fn alloc_file_no(&mut self, dir: &Path) -> Result<u64> {
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

    fn find_live(&self, id: u64) -> Option<Loc> {
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

    fn delete_loc(&mut self, loc: Loc) {
        match loc {
            Loc::Active(l) => self.active.delete(l),
            Loc::Frozen(l) => {
                if let Some(f) = self.frozen.as_mut() {
                    f.delete(l)
                }
            }
            Loc::Seg(i, r) => {
                Arc::make_mut(&mut self.segments[i].tomb).set(r);
            }
        }
    }

    /// Upsert the rows of `chunk` (ids unique within it).
    fn apply_insert(&mut self, chunk: Chunk) -> InsertOutcome {
        let mut replaced = 0;
        for &id in &chunk.ids {
            if let Some(loc) = self.find_live(id) {
                self.delete_loc(loc);
                replaced += 1;
            }
        }
        let n = chunk.len() as u64;
        self.active.append(chunk);
        InsertOutcome {
            inserted: n - replaced,
            replaced,
        }
    }

    fn apply_delete(&mut self, ids: &[u64]) -> u64 {
        let mut n = 0;
        for &id in ids {
            if let Some(loc) = self.find_live(id) {
                self.delete_loc(loc);
                n += 1;
            }
        }
        n
    }

    fn apply_op(&mut self, op: &WalOp) {
        match op {
            WalOp::Insert(items) => {
                let chunk = Chunk::new(
                    items.iter().map(|e| e.id).collect(),
                    items
                        .iter()
                        .map(|e| Arc::from(e.subject.as_str()))
                        .collect(),
                    items.iter().map(|e| e.vector).collect(),
                );
                self.apply_insert(chunk);
            }
            WalOp::Delete(ids) => {
                self.apply_delete(ids);
            }
        }
    }

    /// Live ids named directly or through their subject, each once.
    fn resolve_delete(&self, ids: &[u64], subjects: &[String]) -> Vec<u64> {
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

    fn snapshot(&self) -> Snapshot {
        let mut chunks = Vec::new();
        if let Some(f) = &self.frozen {
            chunks.extend(f.chunks.iter().cloned());
        }
        chunks.extend(self.active.chunks.iter().cloned());
        Snapshot {
            segments: self.segments.clone(),
            chunks,
        }
    }

    fn manifest(&self, segments: &[SegState], wal_start: u64) -> ManifestData {
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
        }
    }
}

/// A validated write waiting in the commit queue.
enum Op {
    /// The rows (taken by the leader) and the WAL payload with its CRC state.
    Insert {
        chunk: Mutex<Option<Chunk>>,
        payload: Vec<u8>,
        crc: crc32fast::Hasher,
    },
    Delete {
        ids: Vec<u64>,
        subjects: Vec<String>,
    },
}

enum Outcome {
    Insert(InsertOutcome),
    Delete(u64),
}

struct Pending {
    op: Op,
    result: Mutex<Option<Result<Outcome>>>,
}

/// Wakes the maintenance thread.
#[derive(Default)]
struct Signal {
    flag: Mutex<bool>,
    cv: Condvar,
}

/// A named collection of enrolled embeddings with its own directory.
pub struct Gallery {
    name: String,
    dir: PathBuf,
    opts: GalleryOptions,
    state: Mutex<WriteState>,
    published: RwLock<Arc<Snapshot>>,
    queue: Mutex<VecDeque<Arc<Pending>>>,
    queue_cv: Condvar,
    maintenance: Mutex<()>,
    poison: Mutex<Option<String>>,
    closed: AtomicBool,
    signal: Arc<Signal>,
    fail_next_sync: AtomicBool,
    fail_next_write: AtomicBool,
    fail_next_reserve: AtomicBool,
    fail_flushes: AtomicBool,
    /// The last background maintenance failure, until maintenance works again.
    maintenance_failure: Mutex<Option<String>>,
    head: RwLock<Option<Arc<HeadInfo>>>,
    head_lock: Mutex<()>,
}

impl std::fmt::Debug for Gallery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gallery")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock is a bug; the data is still consistent for
    // our purposes (all mutations are completed before publication).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Name of the head file.
pub(crate) const HEAD: &str = "HEAD";

/// Name of the manifest file.
pub(crate) const MANIFEST: &str = "MANIFEST";

fn seg_name(n: u64) -> String {
    format!("seg-{n:016x}.vseg")
}

fn parse_file_no(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let hex = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Check one subject string.
pub(crate) fn check_subject(what: &'static str, index: usize, s: &str) -> Result<()> {
    match format::subject_problem(s) {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidSubject {
            what,
            index,
            reason,
        }),
    }
}

/// Check one vector: dimension and finiteness.
pub(crate) fn check_vector(what: &'static str, index: usize, v: &[f32]) -> Result<[f32; DIM]> {
    let arr: [f32; DIM] = v.try_into().map_err(|_| Error::DimensionMismatch {
        what,
        index,
        expected: DIM,
        got: v.len(),
    })?;
    if let Some(position) = arr.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFiniteValue {
            what,
            index,
            position,
            value: arr[position],
        });
    }
    Ok(arr)
}

fn check_probes<P: AsRef<[f32]>>(probes: &[P], k: usize, max_k: usize) -> Result<Vec<[f32; DIM]>> {
    if k == 0 {
        return Err(Error::InvalidArgument("k must be at least 1".into()));
    }
    if k > max_k {
        return Err(Error::TooLarge {
            what: "k",
            got: k,
            limit: max_k,
        });
    }
    if probes.len() > MAX_PROBES {
        return Err(Error::TooLarge {
            what: "probes",
            got: probes.len(),
            limit: MAX_PROBES,
        });
    }
    probes
        .iter()
        .enumerate()
        .map(|(i, p)| check_vector("probes", i, p.as_ref()))
        .collect()
}

impl Gallery {
    /// Create the files of an empty gallery in `dir` (which must not exist).
    pub(crate) fn create_files(dir: &Path) -> Result<()> {
        std::fs::create_dir(dir).map_err(|e| Error::io(dir, e))?;
        WalWriter::create(dir, 1)?;
        let m = ManifestData {
            generation: 1,
            next_file_no: 2,
            wal_start: 1,
            segments: vec![],
        };
        crate::fs::atomic_write(&dir.join(MANIFEST), &format::encode_manifest(&m))
            .map_err(|e| e.error)?;
        Ok(())
    }

    /// Open (and recover) the gallery in `dir`.
    pub(crate) fn open(name: &str, dir: &Path, opts: GalleryOptions) -> Result<Arc<Gallery>> {
        let mpath = dir.join(MANIFEST);
        let mbytes = std::fs::read(&mpath).map_err(|e| Error::io(&mpath, e))?;
        let manifest = format::decode_manifest(&mpath, &mbytes)?;
        let mut listed: HashSet<u64> = HashSet::new();
        let mut segments = Vec::with_capacity(manifest.segments.len());
        for ms in &manifest.segments {
            let path = dir.join(seg_name(ms.file_no));
            if !path.exists() {
                return Err(Error::corrupt(
                    &mpath,
                    0,
                    format!(
                        "manifest lists segment {} but the file is missing",
                        path.display()
                    ),
                ));
            }
            let seg = Segment::open(&path, ms.file_no, opts.verify)?;
            if seg.rows() as u64 != ms.rows {
                return Err(Error::corrupt(
                    &path,
                    16,
                    format!("segment has {} rows, manifest says {}", seg.rows(), ms.rows),
                ));
            }
            let tomb = Tombstones::from_rows(seg.rows(), &ms.deleted);
            listed.insert(ms.file_no);
            segments.push(SegState {
                seg: Arc::new(seg),
                tomb: Arc::new(tomb),
            });
        }
        // Classify files: remove orphans of interrupted flushes and compactions.
        let mut wals = Vec::new();
        let mut max_no = 0u64;
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let fname = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if fname.ends_with(crate::fs::TMP_SUFFIX) {
                tracing::info!(file = %path.display(), "removing temporary file left by an interrupted write");
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            } else if let Some(n) = parse_file_no(&fname, "seg-", ".vseg") {
                // Only kept files reserve their numbers: a removed orphan cannot
                // collide, and a stray `seg-ffffffffffffffff.vseg` must not push
                // the counter to overflow.
                if listed.contains(&n) {
                    max_no = max_no.max(n);
                } else {
                    tracing::info!(file = %path.display(), "removing segment not in the manifest (interrupted flush or compaction)");
                    std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                }
            } else if let Some(n) = parse_file_no(&fname, "wal-", ".log") {
                if n < manifest.wal_start {
                    tracing::info!(file = %path.display(), "removing WAL already covered by segments");
                    std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                } else {
                    max_no = max_no.max(n);
                    wals.push(n);
                }
            }
        }
        wals.sort_unstable();
        if wals.first() != Some(&manifest.wal_start) {
            return Err(Error::corrupt(
                &mpath,
                0,
                format!(
                    "manifest says to replay from {}, which is missing",
                    wal::file_name(manifest.wal_start)
                ),
            ));
        }
        let next_file_no = manifest.next_file_no.max(max_no.saturating_add(1));
        // Replay.
        let mut active = Memtable::default();
        let mut tmp = WriteState {
            wal: WalWriter::reopen(&dir.join(wal::file_name(wals[0])), wals[0], 0, 0)?,
            segments,
            frozen: None,
            active: std::mem::take(&mut active),
            next_file_no,
            generation: manifest.generation,
            wal_start: manifest.wal_start,
        };
        let mut writer = None;
        for (i, &n) in wals.iter().enumerate() {
            let path = dir.join(wal::file_name(n));
            let is_last = i + 1 == wals.len();
            let r = wal::replay(&path, n, is_last)?;
            for op in &r.ops {
                tmp.apply_op(op);
            }
            if is_last {
                if r.valid_len == 0 {
                    // Crash while creating this WAL: nothing in it was acknowledged.
                    std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                    writer = Some(WalWriter::create(dir, n)?);
                } else {
                    if r.valid_len < r.file_len {
                        tracing::warn!(file = %path.display(), offset = r.valid_len, dropped = r.file_len - r.valid_len,
                            "truncating torn WAL tail (a write that was never acknowledged)");
                        let f = std::fs::OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(|e| Error::io(&path, e))?;
                        f.set_len(r.valid_len).map_err(|e| Error::io(&path, e))?;
                        f.sync_all().map_err(|e| Error::io(&path, e))?;
                    }
                    writer = Some(WalWriter::reopen(&path, n, r.salt, r.valid_len)?);
                }
            }
        }
        if let Some(w) = writer {
            tmp.wal = w;
        }
        let head_path = dir.join(HEAD);
        let head_info = match std::fs::read(&head_path) {
            Ok(bytes) => Some(HeadInfo::from_data(&format::decode_head(
                &head_path, &bytes,
            )?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&head_path, e)),
        };
        let snapshot = Arc::new(tmp.snapshot());
        let gallery = Arc::new(Gallery {
            name: name.to_owned(),
            dir: dir.to_owned(),
            opts,
            state: Mutex::new(tmp),
            published: RwLock::new(snapshot),
            queue: Mutex::new(VecDeque::new()),
            queue_cv: Condvar::new(),
            maintenance: Mutex::new(()),
            poison: Mutex::new(None),
            closed: AtomicBool::new(false),
            signal: Arc::new(Signal::default()),
            fail_next_sync: AtomicBool::new(false),
            fail_next_write: AtomicBool::new(false),
            fail_next_reserve: AtomicBool::new(false),
            fail_flushes: AtomicBool::new(false),
            maintenance_failure: Mutex::new(None),
            head: RwLock::new(head_info.map(Arc::new)),
            head_lock: Mutex::new(()),
        });
        if gallery.opts.background {
            let weak = Arc::downgrade(&gallery);
            let signal = gallery.signal.clone();
            std::thread::Builder::new()
                .name(format!("visage-maint-{name}"))
                .spawn(move || maintenance_loop(weak, signal))
                .map_err(|e| Error::io(dir, e))?;
        }
        Ok(gallery)
    }

    /// The gallery's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The gallery's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.published
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn publish(&self, st: &WriteState) {
        let snap = Arc::new(st.snapshot());
        *self.published.write().unwrap_or_else(|e| e.into_inner()) = snap;
    }

    fn check_writable(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if let Some(reason) = lock(&self.poison).clone() {
            return Err(Error::Poisoned {
                gallery: self.name.clone(),
                reason,
            });
        }
        Ok(())
    }

    fn set_poison(&self, reason: String) -> Error {
        tracing::error!(gallery = %self.name, %reason, "gallery refuses writes until reopened");
        let mut p = lock(&self.poison);
        p.get_or_insert(reason.clone());
        Error::Poisoned {
            gallery: self.name.clone(),
            reason,
        }
    }

    /// Make the next WAL sync fail, as a failing disk would (for tests of the poisoning path).
    #[doc(hidden)]
    pub fn inject_sync_failure(&self) {
        self.fail_next_sync.store(true, Ordering::SeqCst);
    }

    /// Make the next WAL append fail with EIO after writing part of the group's
    /// bytes, as a failing disk would (for tests of the poisoning path).
    #[doc(hidden)]
    pub fn inject_write_failure(&self) {
        self.fail_next_write.store(true, Ordering::SeqCst);
    }

    /// Make the next WAL space reservation fail with ENOSPC, as a full disk
    /// would (for tests of the no-space path on any file system).
    #[doc(hidden)]
    pub fn inject_no_space(&self) {
        self.fail_next_reserve.store(true, Ordering::SeqCst);
    }

    /// Make every segment write fail with EIO while `on` (for tests of the
    /// unflushed-rows bound).
    #[doc(hidden)]
    pub fn inject_flush_failures(&self, on: bool) {
        self.fail_flushes.store(on, Ordering::SeqCst);
    }

    /// Refuse an insert while too many rows wait to be flushed (see
    /// [`GalleryOptions::max_unflushed_rows`]).
    fn check_backlog(&self) -> Result<()> {
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
            let failure = lock(&self.maintenance_failure).clone();
            if failure.is_some() || start.elapsed() > BACKLOG_STALL {
                return Err(Error::Backlogged {
                    gallery: self.name.clone(),
                    rows,
                    limit: self.opts.max_unflushed_rows,
                    failure,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reserve WAL space for `bytes` more bytes past what this group already
    /// framed (`framed`), or say why not.
    fn reserve_wal(&self, st: &mut WriteState, framed: u64, bytes: u64) -> Result<()> {
        let res = if self.fail_next_reserve.swap(false, Ordering::SeqCst) {
            Err(std::io::Error::from_raw_os_error(28))
        } else {
            st.wal.reserve(framed + bytes)
        };
        res.map_err(|e| {
            let e = Error::io(st.wal.path(), e);
            if e.is_no_space() {
                Error::NoSpace {
                    what: "this write",
                    path: self.dir.clone(),
                    needed: bytes,
                    available: crate::fs::available_space(&self.dir).unwrap_or(0),
                }
            } else {
                e
            }
        })
    }

    pub(crate) fn close(&self) {
        let _m = lock(&self.maintenance);
        self.closed.store(true, Ordering::Release);
        let mut f = lock(&self.signal.flag);
        *f = true;
        self.signal.cv.notify_all();
    }

    /// Insert (upsert) a batch. The batch is validated whole first; a bad batch
    /// is rejected with an error naming the position and changes nothing.
    pub fn insert(&self, batch: &[Embedding]) -> Result<InsertOutcome> {
        if batch.len() > MAX_INSERT_BATCH {
            return Err(Error::TooLarge {
                what: "embeddings",
                got: batch.len(),
                limit: MAX_INSERT_BATCH,
            });
        }
        let mut seen =
            crate::memtable::IdMap::with_capacity_and_hasher(batch.len(), Default::default());
        let mut vectors = Vec::with_capacity(batch.len());
        for (i, e) in batch.iter().enumerate() {
            vectors.push(check_vector("embeddings", i, &e.vector)?);
            check_subject("embeddings", i, &e.subject)?;
            if let Some(first) = seen.insert(e.id, i) {
                return Err(Error::DuplicateId {
                    id: e.id,
                    first,
                    second: i,
                });
            }
        }
        if batch.is_empty() {
            return Ok(InsertOutcome::default());
        }
        self.check_backlog()?;
        let mut payload = Vec::with_capacity(5 + batch.len() * (10 + format::VECTOR_BYTES + 16));
        format::encode_insert(
            batch
                .iter()
                .zip(&vectors)
                .map(|(e, v)| (e.id, e.subject.as_str(), v)),
            &mut payload,
        );
        let mut crc = crc32fast::Hasher::new();
        crc.update(&payload);
        let ids = batch.iter().map(|e| e.id).collect();
        let subjects = batch
            .iter()
            .map(|e| Arc::from(e.subject.as_str()))
            .collect();
        let chunk = Chunk::new(ids, subjects, vectors);
        let op = Op::Insert {
            chunk: Mutex::new(Some(chunk)),
            payload,
            crc,
        };
        match self.submit(op)? {
            Outcome::Insert(o) => Ok(o),
            Outcome::Delete(_) => unreachable!("insert op yields an insert outcome"),
        }
    }

    /// Delete embeddings by id and every embedding of the given subjects.
    /// Returns how many live embeddings were removed.
    pub fn delete(&self, ids: &[u64], subjects: &[String]) -> Result<u64> {
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
        if ids.is_empty() && subjects.is_empty() {
            return Ok(0);
        }
        match self.submit(Op::Delete {
            ids: ids.to_vec(),
            subjects: subjects.to_vec(),
        })? {
            Outcome::Delete(n) => Ok(n),
            Outcome::Insert(_) => unreachable!("delete op yields a delete outcome"),
        }
    }

    /// Join the commit queue; lead a group if first in line.
    fn submit(&self, op: Op) -> Result<Outcome> {
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

    fn commit_group(&self, group: &[Arc<Pending>]) -> Vec<Result<Outcome>> {
        let fail_all = |e: &Error| -> Vec<Result<Outcome>> {
            group
                .iter()
                .map(|_| {
                    Err(match e {
                        Error::Poisoned { gallery, reason } => Error::Poisoned {
                            gallery: gallery.clone(),
                            reason: reason.clone(),
                        },
                        Error::Closed => Error::Closed,
                        other => Error::Poisoned {
                            gallery: self.name.clone(),
                            reason: other.to_string(),
                        },
                    })
                })
                .collect()
        };
        let mut st = lock(&self.state);
        if let Err(e) = self.check_writable() {
            return fail_all(&e);
        }
        let salt = st.wal.salt();
        // Apply in queue order; frame each record. Insert payloads are written
        // from where their callers encoded them (one vectored write for the group).
        enum Body {
            Insert(usize),
            Delete(Vec<u8>),
        }
        let mut records: Vec<([u8; format::RECORD_FRAME_LEN], Body)> =
            Vec::with_capacity(group.len());
        let mut outs = Vec::with_capacity(group.len());
        // Bytes framed so far in this group: each batch reserves its WAL space
        // before it is applied, so a full disk refuses it (and the batches
        // after it) whole, leaving the state and the gallery as they were.
        let mut framed = 0u64;
        for (i, p) in group.iter().enumerate() {
            match &p.op {
                Op::Insert {
                    chunk,
                    payload,
                    crc,
                } => {
                    let bytes = (format::RECORD_FRAME_LEN + payload.len()) as u64;
                    if let Err(e) = self.reserve_wal(&mut st, framed, bytes) {
                        outs.push(Err(e));
                        break;
                    }
                    framed += bytes;
                    records.push((
                        format::frame_header(salt, payload.len(), crc),
                        Body::Insert(i),
                    ));
                    let chunk = lock(chunk).take().unwrap_or_default();
                    outs.push(Ok(Outcome::Insert(st.apply_insert(chunk))));
                }
                Op::Delete { ids, subjects } => {
                    let resolved = st.resolve_delete(ids, subjects);
                    if !resolved.is_empty() {
                        let mut payload = Vec::with_capacity(5 + resolved.len() * 8);
                        format::encode_delete(&resolved, &mut payload);
                        let bytes = (format::RECORD_FRAME_LEN + payload.len()) as u64;
                        if let Err(e) = self.reserve_wal(&mut st, framed, bytes) {
                            outs.push(Err(e));
                            break;
                        }
                        framed += bytes;
                        let mut crc = crc32fast::Hasher::new();
                        crc.update(&payload);
                        records.push((
                            format::frame_header(salt, payload.len(), &crc),
                            Body::Delete(payload),
                        ));
                    }
                    outs.push(Ok(Outcome::Delete(st.apply_delete(&resolved))));
                }
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
                needed: (format::RECORD_FRAME_LEN + needed) as u64,
                available: crate::fs::available_space(&self.dir).unwrap_or(0),
            }));
        }
        if !records.is_empty() {
            let mut parts = Vec::with_capacity(records.len() * 2);
            for (frame, body) in &records {
                parts.push(std::io::IoSlice::new(frame));
                parts.push(std::io::IoSlice::new(match body {
                    Body::Insert(i) => match &group[*i].op {
                        Op::Insert { payload, .. } => payload,
                        Op::Delete { .. } => &[][..],
                    },
                    Body::Delete(payload) => payload,
                }));
            }
            let path = st.wal.path().to_owned();
            let res = if self.fail_next_write.swap(false, Ordering::SeqCst) {
                // Write part of the group, then fail, as a dying disk might.
                let _ = st.wal.append_vectored(&mut parts[..1]);
                Err(std::io::Error::from_raw_os_error(5))
            } else {
                st.wal.append_vectored(&mut parts)
            };
            let res = res.and_then(|_| {
                if self.opts.durability == Durability::PowerLoss {
                    if self.fail_next_sync.swap(false, Ordering::SeqCst) {
                        return Err(std::io::Error::other("injected fsync failure"));
                    }
                    st.wal.sync()
                } else {
                    Ok(())
                }
            });
            if let Err(e) = res {
                let err = self.set_poison(format!(
                    "WAL write or sync failed on {}: {e}",
                    path.display()
                ));
                return fail_all(&err);
            }
        }
        self.publish(&st);
        let need_flush = st.active.rows() >= self.opts.memtable_rows;
        drop(st);
        if need_flush && self.opts.background {
            self.wake_maintenance();
        }
        outs
    }

    fn wake_maintenance(&self) {
        let mut f = lock(&self.signal.flag);
        *f = true;
        self.signal.cv.notify_all();
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
            return Err(Error::InvalidArgument(format!(
                "max_distance must be a number at least 0, got {d}"
            )));
        }
        let probes = check_probes(probes, opts.k, MAX_K)?;
        let head = self.head();
        let snap = self.snapshot();
        let w;
        let metric = match opts.rank_by {
            RankBy::Distance => search::Metric::L2,
            RankBy::Head => {
                let h = head.as_ref().filter(|h| h.trained).ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "gallery {:?} has no trained head: call TrainHead before ranking by HEAD",
                        self.name
                    ))
                })?;
                w = h.weight_array();
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
            .zip(&probes)
            .map(|(cs, q)| {
                cs.iter()
                    .map(|c| snap.hit(c, q, head.as_deref(), is_l2))
                    .filter(|h| opts.max_distance.is_none_or(|m| h.distance <= m))
                    .collect()
            })
            .collect())
    }

    /// For each probe, the `k` best distinct subjects, each with its best-matching
    /// embedding, ranked by distance exactly as a brute-force scan ranks them.
    pub fn identify<P: AsRef<[f32]>>(&self, probes: &[P], k: usize) -> Result<Vec<Vec<Hit>>> {
        let probes = check_probes(probes, k, MAX_IDENTIFY_K)?;
        let head = self.head();
        let snap = self.snapshot();
        Ok(search::identify(&snap, &probes, k, search::Metric::L2)
            .into_iter()
            .zip(&probes)
            .map(|(cs, q)| {
                cs.iter()
                    .map(|c| snap.hit(c, q, head.as_deref(), true))
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
        let probes = check_probes(probes, opts.k, MAX_IDENTIFY_K)?;
        let decision = self.decision_for(opts.min_probability, opts.max_distance, true)?;
        let head = self.head();
        let snap = self.snapshot();
        let w = head
            .as_ref()
            .map(|h| h.weight_array())
            .unwrap_or([0.0; DIM]);
        let trained = head.as_ref().is_some_and(|h| h.trained);
        let wd = head.as_ref().map_or(0.0, |h| h.distance_weight);
        let metric = if trained {
            search::Metric::Head(&w, wd)
        } else {
            search::Metric::L2
        };
        Ok(search::identify(&snap, &probes, opts.k, metric)
            .into_iter()
            .zip(&probes)
            .map(|(cs, q)| {
                let candidates: Vec<Hit> = cs
                    .iter()
                    .map(|c| snap.hit(c, q, head.as_deref(), !trained))
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

    /// 1:1 verification of each pair: probability (with a head), distance, and the decision.
    /// Against a subject, the best over that subject's embeddings counts.
    pub fn verify(&self, pairs: &[VerifyPair], opts: &VerifyOptions) -> Result<Vec<Verdict>> {
        if pairs.len() > MAX_PROBES {
            return Err(Error::TooLarge {
                what: "pairs",
                got: pairs.len(),
                limit: MAX_PROBES,
            });
        }
        let mut checked = Vec::with_capacity(pairs.len());
        for (i, p) in pairs.iter().enumerate() {
            let a = check_vector("pairs.a", i, &p.a)?;
            let b = match &p.b {
                VerifyTarget::Vector(v) => Target::Vector(Box::new(check_vector("pairs.b", i, v)?)),
                VerifyTarget::Id(id) => Target::Id(*id),
                VerifyTarget::Subject(s) => {
                    check_subject("pairs", i, s)?;
                    Target::Subject(s.as_str())
                }
            };
            checked.push((a, b));
        }
        let decision = self.decision(opts.min_probability, opts.max_distance)?;
        let head = self.head();
        let head = head.as_deref().filter(|h| h.trained);
        let snap = self.snapshot();
        let mut out = Vec::with_capacity(pairs.len());
        for (i, (a, b)) in checked.iter().enumerate() {
            let score = |v: &[f32; DIM]| -> (f32, Option<f32>) {
                (crate::kernels::l2sq(a, v), head.map(|h| h.logit(a, v)))
            };
            let best: Option<(f32, Option<f32>, Option<u64>)> = match b {
                Target::Vector(v) => {
                    let (d, l) = score(v);
                    Some((d, l, None))
                }
                Target::Id(id) => {
                    let e = snap.get(*id).ok_or_else(|| {
                        Error::NotFound(format!("pairs[{i}].id: no embedding with id {id}"))
                    })?;
                    let v = check_vector("stored", 0, &e.vector)?;
                    let (d, l) = score(&v);
                    Some((d, l, Some(*id)))
                }
                Target::Subject(s) => {
                    let rows = snap.subject_rows(s);
                    if rows.is_empty() {
                        return Err(Error::NotFound(format!(
                            "pairs[{i}].subject: no embedding of subject {:?}",
                            crate::engine::shown(s)
                        )));
                    }
                    rows.iter()
                        .map(|&(src, r)| {
                            let (d, l) = score(&snap.vectors(src)[r]);
                            (d, l, Some(snap.id(src, r)))
                        })
                        .min_by(|x, y| match (x.1, y.1) {
                            // Best = highest logit with a head, else smallest distance; ties by id.
                            (Some(lx), Some(ly)) => ly.total_cmp(&lx).then(x.2.cmp(&y.2)),
                            _ => x.0.total_cmp(&y.0).then(x.2.cmp(&y.2)),
                        })
                }
            };
            let Some((distance, logit, matched)) = best else {
                continue;
            };
            let same = match decision {
                Decision::Logit(t) => logit.is_some_and(|l| l >= t),
                Decision::Distance(t) => distance <= t,
            };
            out.push(Verdict {
                same,
                probability: logit.map(sigmoid),
                distance,
                matched_id: matched,
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
        self.decision_for(min_probability, max_distance, false)
    }

    /// As [`Gallery::decision`]; `open_set` picks the identification (1:N)
    /// thresholds instead of the verification (1:1) ones.
    fn decision_for(
        &self,
        min_probability: Option<f32>,
        max_distance: Option<f32>,
        open_set: bool,
    ) -> Result<Decision> {
        let head = self.head();
        if let Some(p) = min_probability {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::InvalidArgument(format!(
                    "min_probability must be in [0, 1], got {p}"
                )));
            }
            if !head.as_ref().is_some_and(|h| h.trained) {
                return Err(Error::FailedPrecondition(format!(
                    "min_probability needs a trained head, and gallery {:?} has none: train one or pass max_distance",
                    self.name
                )));
            }
            let logit = if p <= 0.0 {
                f32::NEG_INFINITY
            } else if p >= 1.0 {
                f32::INFINITY
            } else {
                (p / (1.0 - p)).ln()
            };
            return Ok(Decision::Logit(logit));
        }
        if let Some(d) = max_distance {
            if d.is_nan() || d < 0.0 || !d.is_finite() {
                return Err(Error::InvalidArgument(format!(
                    "max_distance must be finite and at least 0, got {d}"
                )));
            }
            return Ok(Decision::Distance(d));
        }
        match head.as_deref() {
            Some(h) if open_set && h.open_probes > 0 => Ok(if h.trained {
                Decision::Logit(h.open_logit_threshold)
            } else {
                Decision::Distance(h.open_distance_threshold)
            }),
            Some(h) if h.trained => Ok(Decision::Logit(h.logit_threshold)),
            Some(h) => Ok(Decision::Distance(h.distance_threshold)),
            None => {
                // No threshold yet: calibrate the distance threshold now from the gallery's own pairs.
                let h = self.calibrate(&TrainOptions::default()).map_err(|e| {
                    Error::FailedPrecondition(format!(
                        "gallery {:?} has no calibrated threshold and could not calibrate one ({e}); pass max_distance or min_probability",
                        self.name
                    ))
                })?;
                Ok(Decision::Distance(if open_set && h.open_probes > 0 {
                    h.open_distance_threshold
                } else {
                    h.distance_threshold
                }))
            }
        }
    }

    /// The gallery's head and calibration, if any.
    pub fn head(&self) -> Option<Arc<HeadInfo>> {
        self.head.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Train the scoring head on the gallery's own labels, calibrate it and
    /// the distance threshold at `opts.target_far`, and persist both
    /// (replacing any previous head atomically).
    pub fn train_head(&self, opts: &TrainOptions) -> Result<HeadInfo> {
        self.train_or_calibrate(opts, true)
    }

    /// Calibrate without training: the distance threshold and, if a head is
    /// trained, its threshold, both at `opts.target_far` on freshly drawn
    /// held-out pairs; a trained head's weights are kept.
    pub fn calibrate(&self, opts: &TrainOptions) -> Result<HeadInfo> {
        self.train_or_calibrate(opts, false)
    }

    /// The features `|a − b|` and labels (true: same subject) of exactly the
    /// training and held-out pairs that [`Gallery::train_head`] with the same
    /// options would draw, for evaluation against other implementations.
    #[allow(clippy::type_complexity)]
    pub fn export_pairs(
        &self,
        opts: &TrainOptions,
    ) -> Result<((Vec<[f32; DIM]>, Vec<bool>), (Vec<[f32; DIM]>, Vec<bool>))> {
        let snap = self.snapshot();
        let pairs = head::sample_pairs(&snap, opts, true)?;
        Ok((
            head::features(&snap, &pairs.train),
            head::features(&snap, &pairs.heldout),
        ))
    }

    fn train_or_calibrate(&self, opts: &TrainOptions, fit: bool) -> Result<HeadInfo> {
        let _h = lock(&self.head_lock);
        self.check_writable()?;
        let snap = self.snapshot();
        let previous = self.head();
        let info = head::train(&snap, opts, fit, previous.as_deref())?;
        let path = self.dir.join(HEAD);
        match crate::fs::atomic_write(&path, &format::encode_head(&info.to_data())) {
            Ok(()) => {}
            Err(e) if e.renamed => {
                return Err(self.set_poison(format!("head directory sync failed: {}", e.error)));
            }
            Err(e) => return Err(e.error),
        }
        *self.head.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(info.clone()));
        Ok(info)
    }

    /// Current statistics.
    pub fn stats(&self) -> GalleryStats {
        let snap = self.snapshot();
        let mut bytes = 0;
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        GalleryStats {
            live: snap.live_rows() as u64,
            deleted: snap.deleted_rows() as u64,
            subjects: snap.subjects() as u64,
            segments: snap.segments.len() as u64,
            memtable_rows: snap.chunks.iter().map(|c| c.chunk.ids.len() as u64).sum(),
            bytes_on_disk: bytes,
        }
    }

    /// Write the memtable to a segment and drop the WAL it came from.
    pub fn flush(&self) -> Result<MaintenanceReport> {
        let _m = lock(&self.maintenance);
        self.check_writable()?;
        let before = self.stats();
        self.flush_locked()?;
        Ok(MaintenanceReport {
            before,
            after: self.stats(),
        })
    }

    /// Flush, then rewrite every segment holding deleted rows and merge small
    /// segments. Afterwards no file of the gallery holds a deleted vector.
    pub fn compact(&self) -> Result<MaintenanceReport> {
        let _m = lock(&self.maintenance);
        self.check_writable()?;
        let before = self.stats();
        self.flush_locked()?;
        let stats = self.segment_stats();
        for group in compaction::plan(&stats, &self.opts.compaction, true) {
            self.merge_locked(&group)?;
        }
        Ok(MaintenanceReport {
            before,
            after: self.stats(),
        })
    }

    fn segment_stats(&self) -> Vec<SegmentStat> {
        let st = lock(&self.state);
        st.segments
            .iter()
            .map(|s| SegmentStat {
                file_no: s.seg.file_no(),
                rows: s.seg.rows() as u64,
                deleted: s.tomb.count() as u64,
            })
            .collect()
    }

    /// Persist a new manifest; on failure after the rename, poison.
    fn write_manifest(&self, m: &ManifestData) -> Result<()> {
        match crate::fs::atomic_write(&self.dir.join(MANIFEST), &format::encode_manifest(m)) {
            Ok(()) => Ok(()),
            Err(e) if e.renamed => {
                Err(self.set_poison(format!("manifest directory sync failed: {}", e.error)))
            }
            Err(e) => Err(e.error),
        }
    }

    /// Caller holds the maintenance lock.
    fn flush_locked(&self) -> Result<()> {
        // 1. Freeze: rotate the WAL so the frozen memtable's records are exactly the older files.
        {
            let mut st = lock(&self.state);
            self.check_writable()?;
            if st.frozen.is_none() {
                if st.active.rows() == 0 {
                    return Ok(());
                }
                st.wal.sync().map_err(|e| {
                    self.set_poison(format!("WAL sync before rotation failed: {e}"))
                })?;
                let n = st.alloc_file_no(&self.dir)?;
                let new_wal = WalWriter::create(&self.dir, n)?;
                st.wal = new_wal;
                let frozen = std::mem::take(&mut st.active);
                st.frozen = Some(frozen);
                self.publish(&st);
            }
        }
        // 2. Write the frozen rows that are live now (outside the state lock).
        let (chunks, file_no) = {
            let mut st = lock(&self.state);
            let chunks = st
                .frozen
                .as_ref()
                .map(|f| f.chunks.clone())
                .unwrap_or_default();
            (chunks, st.alloc_file_no(&self.dir)?)
        };
        let mut map = Vec::new();
        let mut rows = Vec::new();
        for (c, mc) in chunks.iter().enumerate() {
            for r in 0..mc.chunk.ids.len() {
                if !mc.tomb.get(r) {
                    map.push((c, r));
                    rows.push(RowRef {
                        id: mc.chunk.ids[r],
                        subject: &mc.chunk.subjects[r],
                        vector: &mc.chunk.vectors[r],
                    });
                }
            }
        }
        let new_seg = self.write_new_segment("flush", file_no, &rows)?;
        // 3. Install: carry over deletes that happened meanwhile, write the manifest, publish.
        let old_wal_start;
        {
            let mut st = lock(&self.state);
            // A write that failed while the segment was written poisoned the
            // gallery after applying its batch to `st`: installing now would
            // publish that batch and persist its tombstones.
            if let Err(e) = self.check_writable() {
                if let Some(seg) = new_seg {
                    let _ = std::fs::remove_file(seg.path());
                }
                return Err(e);
            }
            let mut segments = st.segments.clone();
            if let Some(seg) = new_seg.clone() {
                let mut tomb = Tombstones::new(seg.rows());
                if let Some(f) = &st.frozen {
                    for (new_row, &(c, r)) in map.iter().enumerate() {
                        if f.chunks[c].tomb.get(r) {
                            tomb.set(new_row);
                        }
                    }
                }
                segments.push(SegState {
                    seg,
                    tomb: Arc::new(tomb),
                });
            }
            let wal_start = st.wal.file_no();
            let m = st.manifest(&segments, wal_start);
            if let Err(e) = self.write_manifest(&m) {
                if let Some(seg) = new_seg {
                    let _ = std::fs::remove_file(seg.path());
                }
                return Err(e);
            }
            st.generation = m.generation;
            st.segments = segments;
            st.frozen = None;
            old_wal_start = st.wal_start;
            st.wal_start = wal_start;
            self.publish(&st);
            // 4. The old WAL files are covered by the manifest now. They are
            // found by listing the directory, not by trying every number from
            // the old start: file numbers need not be dense (a counter far
            // ahead made that loop run for ever).
            for (n, p) in self.wal_files() {
                if !(old_wal_start..wal_start).contains(&n) {
                    continue;
                }
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(file = %p.display(), error = %e, "could not remove covered WAL file")
                    }
                }
            }
        }
        crate::fs::fsync_dir(&self.dir)
    }

    /// The WAL files in the gallery's directory, with their numbers (none if it cannot be listed).
    fn wal_files(&self) -> Vec<(u64, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| {
                let e = e.ok()?;
                let n = parse_file_no(&e.file_name().to_string_lossy(), "wal-", ".log")?;
                Some((n, e.path()))
            })
            .collect()
    }

    /// Write `rows` as segment `file_no`, sync it and the directory, and open it.
    /// Refuses with [`Error::NoSpace`] before writing anything when the disk
    /// has not room for the segment (an estimate from the rows, with slack).
    fn write_new_segment(
        &self,
        what: &'static str,
        file_no: u64,
        rows: &[RowRef<'_>],
    ) -> Result<Option<Arc<Segment>>> {
        if rows.is_empty() {
            return Ok(None);
        }
        // Per row: the vector, its 8-bit code, id, norm, subject index and
        // offsets; plus the subject strings, headers and the manifest after.
        let per_row = (format::VECTOR_BYTES + DIM + 32) as u64;
        let strings: u64 = rows.iter().map(|r| r.subject.len() as u64).sum();
        let needed = rows.len() as u64 * per_row + strings + (1 << 20);
        crate::fs::check_space(&self.dir, what, needed)?;
        if self.fail_flushes.load(Ordering::SeqCst) {
            return Err(Error::io(
                &self.dir,
                std::io::Error::other("injected segment write failure"),
            ));
        }
        let path = self.dir.join(seg_name(file_no));
        let res = segment::write_segment(&path, file_no, rows)
            .and_then(|_| crate::fs::fsync_dir(&self.dir))
            .and_then(|_| Segment::open(&path, file_no, VerifyChecksums::Metadata));
        match res {
            Ok(seg) => Ok(Some(Arc::new(seg))),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Rewrite the segments `inputs` into one without their deleted rows.
    /// Caller holds the maintenance lock.
    fn merge_locked(&self, inputs: &[u64]) -> Result<()> {
        let (captured, file_no) = {
            let mut st = lock(&self.state);
            let cap: Vec<SegState> = st
                .segments
                .iter()
                .filter(|s| inputs.contains(&s.seg.file_no()))
                .cloned()
                .collect();
            (cap, st.alloc_file_no(&self.dir)?)
        };
        let mut map = Vec::new();
        let mut rows = Vec::new();
        for (i, ss) in captured.iter().enumerate() {
            let (ids, vecs) = (ss.seg.ids(), ss.seg.vectors());
            for r in 0..ss.seg.rows() {
                if !ss.tomb.get(r) {
                    map.push((i, r));
                    rows.push(RowRef {
                        id: ids[r],
                        subject: ss.seg.row_subject(r),
                        vector: &vecs[r],
                    });
                }
            }
        }
        let new_seg = self.write_new_segment("compaction", file_no, &rows)?;
        let mut st = lock(&self.state);
        // As in `flush_locked`: never install over the state a failed write left.
        if let Err(e) = self.check_writable() {
            if let Some(seg) = new_seg {
                let _ = std::fs::remove_file(seg.path());
            }
            return Err(e);
        }
        let current: Vec<Arc<Tombstones>> = captured
            .iter()
            .map(|c| {
                st.segments
                    .iter()
                    .find(|s| Arc::ptr_eq(&s.seg, &c.seg))
                    .map(|s| s.tomb.clone())
                    .unwrap_or_else(|| c.tomb.clone())
            })
            .collect();
        let mut segments: Vec<SegState> = st
            .segments
            .iter()
            .filter(|s| !inputs.contains(&s.seg.file_no()))
            .cloned()
            .collect();
        if let Some(seg) = new_seg.clone() {
            let mut tomb = Tombstones::new(seg.rows());
            for (new_row, &(i, r)) in map.iter().enumerate() {
                if current[i].get(r) {
                    tomb.set(new_row);
                }
            }
            segments.push(SegState {
                seg,
                tomb: Arc::new(tomb),
            });
        }
        let m = st.manifest(&segments, st.wal_start);
        if let Err(e) = self.write_manifest(&m) {
            if let Some(seg) = new_seg {
                let _ = std::fs::remove_file(seg.path());
            }
            return Err(e);
        }
        st.generation = m.generation;
        st.segments = segments;
        self.publish(&st);
        drop(st);
        for c in &captured {
            // Unlinking keeps the mapping of readers that still hold the old snapshot valid.
            if let Err(e) = std::fs::remove_file(c.seg.path()) {
                tracing::warn!(file = %c.seg.path().display(), error = %e, "could not remove compacted segment");
            }
        }
        crate::fs::fsync_dir(&self.dir)
    }

    /// One round of background work: flush a full memtable, then apply the policy.
    fn maintain(&self) -> Result<()> {
        let _m = lock(&self.maintenance);
        if self.check_writable().is_err() {
            return Ok(());
        }
        let need_flush = {
            let st = lock(&self.state);
            st.frozen.is_some() || st.active.rows() >= self.opts.memtable_rows
        };
        if need_flush {
            self.flush_locked()?;
        }
        for group in compaction::plan(&self.segment_stats(), &self.opts.compaction, false) {
            self.merge_locked(&group)?;
        }
        Ok(())
    }
}

fn maintenance_loop(gallery: Weak<Gallery>, signal: Arc<Signal>) {
    // A failure that persists (a full disk) is retried every second but
    // logged again only when it changes or once a minute.
    let mut last_failure: Option<(String, std::time::Instant)> = None;
    loop {
        {
            let f = lock(&signal.flag);
            let (mut f, _) = signal
                .cv
                .wait_timeout_while(f, Duration::from_secs(1), |f| !*f)
                .unwrap_or_else(|e| e.into_inner());
            *f = false;
        }
        let Some(g) = gallery.upgrade() else { return };
        if g.closed.load(Ordering::Acquire) {
            return;
        }
        match g.maintain() {
            Ok(()) => {
                *lock(&g.maintenance_failure) = None;
                if last_failure.take().is_some() {
                    tracing::info!(gallery = %g.name, "background maintenance works again");
                }
            }
            Err(e) => {
                let msg = e.to_string();
                *lock(&g.maintenance_failure) = Some(msg.clone());
                let repeat = last_failure
                    .as_ref()
                    .is_some_and(|(m, at)| *m == msg && at.elapsed() < Duration::from_secs(60));
                if !repeat {
                    tracing::error!(gallery = %g.name, error = %msg, "background maintenance failed; retrying every second");
                    last_failure = Some((msg, std::time::Instant::now()));
                }
            }
        }
    }
}

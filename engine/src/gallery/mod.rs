//! A gallery: the write path (validate, WAL, memtable, publish), recovery on
//! open, flush, and the published `Arc<Snapshot>` that readers search.
//!
//! # Write path
//! A batch is validated whole in the caller's thread (and, for inserts,
//! encoded as a WAL payload there). It then joins the gallery's commit queue.
//! The batch at the head of the queue leads: it takes every queued batch (group
//! commit), and under the state lock frames each as one WAL record, applies it
//! to the in-memory state, appends all records with one `write`, syncs once
//! (in [`Durability::PowerLoss`] mode; a group of inserts alone is applied
//! after the `write`, while the disk writes it back), and only then publishes a new snapshot
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
//! # Where each part lives
//! - `mod.rs`: the handle (`Gallery`), its options, poisoning and publication;
//! - `recover.rs`: creating a gallery's files and opening (recovering) them;
//! - `write.rs`: validation of writes, the write state and group commit;
//! - `read.rs`: search, identification, verification and their decisions;
//! - `head.rs`: training and calibrating the scoring head, the `HEAD` file;
//! - `maintain.rs`: statistics, flush, compaction runs, the background flusher and compactor;
//! - `counters.rs`: counts of group commits, WAL syncs, flushes and compactions.
//!
//! Segment layout is `storage::segment`'s, WAL framing `storage::wal`'s,
//! compaction policy [`crate::compaction`]'s, file access the
//! [`crate::io::FileSystem`] seam's.

mod backup;
mod counters;
mod head;
mod import;
mod maintain;
mod read;
mod recover;
mod write;

pub(crate) use backup::{
    BACKUP, ERASURE_KEY, ERASURES_DIR, copy_synced, mirror_path, verify_backup_files,
};
pub use import::{ImportOptions, ImportReport, ImportSource};
pub use read::{Export, ExportBatch};
pub(crate) use write::normalize;
pub use write::{check_delete, check_rows};

pub use crate::api::*;
use crate::compaction::CompactionPolicy;
use crate::error::{Error, Result};
use crate::head::HeadInfo;
use crate::snapshot::Snapshot;
use crate::storage::io::FileSystem;
use crate::storage::segment::VerifyChecksums;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::Duration;
use write::{Pending, WriteState};

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
    /// Bytes of memtable vectors that trigger a flush, whichever of this and
    /// `memtable_rows` comes first: 262,144 rows at 128 values, 65,536 at
    /// 512 by default. At 128 values the flushed segments are then not
    /// small for the compaction policy, so inserted rows are written to a
    /// segment once, not flushed and then merged.
    pub memtable_bytes: usize,
    /// Run flushes and the compaction policy in background threads (a
    /// flusher and a compactor).
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
    /// Where backups are kept (`None`: no backups). Once a gallery has been
    /// backed up, its erasure log is mirrored to `erasures/` under it.
    pub backup_root: Option<PathBuf>,
}

impl Default for GalleryOptions {
    fn default() -> Self {
        GalleryOptions {
            durability: Durability::PowerLoss,
            memtable_rows: 1 << 18,
            memtable_bytes: 128 << 20,
            background: true,
            verify: VerifyChecksums::Metadata,
            compaction: CompactionPolicy::default(),
            max_unflushed_rows: 1 << 19,
            backup_root: None,
        }
    }
}

/// A failure that latched (poisoning) or persists (background maintenance).
#[derive(Debug, Clone)]
struct Failure {
    reason: String,
    /// Whether it was a full disk: the server answers RESOURCE_EXHAUSTED.
    disk_full: bool,
}

impl Failure {
    /// The failure of an engine operation.
    fn of(context: &str, e: &Error) -> Failure {
        Failure {
            reason: format!("{context}: {e}"),
            disk_full: e.is_no_space(),
        }
    }
    /// The failure of a file operation.
    fn io(context: String, e: &std::io::Error) -> Failure {
        Failure {
            reason: format!("{context}: {e}"),
            disk_full: crate::error::io_disk_full(e),
        }
    }
    fn poisoned(&self, gallery: &str) -> Error {
        Error::Poisoned {
            gallery: gallery.to_owned(),
            reason: self.reason.clone(),
            disk_full: self.disk_full,
        }
    }
}

/// Wakes a background thread (the flusher or the compactor).
#[derive(Default)]
struct Signal {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Signal {
    fn raise(&self) {
        let mut f = lock(&self.flag);
        *f = true;
        self.cv.notify_all();
    }

    /// Wait until raised (then lower it) or `timeout` passes.
    fn wait(&self, timeout: Duration) {
        let f = lock(&self.flag);
        let (mut f, _) = self
            .cv
            .wait_timeout_while(f, timeout, |f| !*f)
            .unwrap_or_else(|e| e.into_inner());
        *f = false;
    }
}

/// A named collection of enrolled embeddings with its own directory.
pub struct Gallery {
    /// Every file operation goes through here.
    fs: Arc<dyn FileSystem>,
    name: String,
    dir: PathBuf,
    /// Dimension, model and normalisation, fixed at creation.
    spec: GallerySpec,
    /// The highest id held or assigned (also in `WriteState`, which persists it).
    ids: Arc<write::IdCounter>,
    opts: GalleryOptions,
    state: Mutex<WriteState>,
    published: RwLock<Arc<Snapshot>>,
    queue: Mutex<VecDeque<Arc<Pending>>>,
    queue_cv: Condvar,
    /// Held by whoever flushes (the background flusher, `flush`, an import's
    /// install). Taken after `compacting` by whoever holds both.
    flushing: Mutex<()>,
    /// Held by whoever merges segments (the background compactor,
    /// `compact`), so that flushes go on while a merge runs: a merge takes
    /// seconds, and inserts would stall behind it once the memtables fill.
    compacting: Mutex<()>,
    poison: Mutex<Option<Failure>>,
    closed: AtomicBool,
    /// Wakes the background flusher.
    flush_signal: Arc<Signal>,
    /// Wakes the background compactor.
    compaction_signal: Arc<Signal>,
    /// The last background flush failure, until a flush works again.
    flush_failure: Mutex<Option<Failure>>,
    /// The last background compaction failure, until compaction works again.
    compaction_failure: Mutex<Option<Failure>>,
    head: RwLock<Option<Arc<HeadInfo>>>,
    head_lock: Mutex<()>,
    /// The erasure log (loaded at the first delete or backup); held from a
    /// delete's log append to its commit, and by a backup's cut.
    erasure: Mutex<Option<backup::Erasures>>,
    /// Long operations in progress.
    operations: Mutex<Vec<Arc<backup::ProgressCell>>>,
    /// Group commits, WAL syncs, flushes and compactions since opened.
    counters: counters::Counters,
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

impl Gallery {
    /// The gallery's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The gallery's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The gallery's dimension, model and normalisation.
    pub fn spec(&self) -> &GallerySpec {
        &self.spec
    }

    /// Values per vector.
    pub fn dim(&self) -> usize {
        self.spec.dim
    }

    /// Refuse a request that names a model other than the gallery's (an empty
    /// name is not checked). Callers check before acting, so a refused request
    /// changes nothing.
    pub fn check_model(&self, model: &str) -> Result<()> {
        if model.is_empty() || model == self.spec.model {
            return Ok(());
        }
        Err(Error::ModelMismatch {
            gallery: crate::error::shown(&self.name),
            expected: crate::error::shown(&self.spec.model),
            got: crate::error::shown(model),
        })
    }

    /// What the write path and maintenance did since the gallery was opened:
    /// group commit sizes, WAL sync times, flush and compaction runs, their
    /// times and the bytes they wrote (for monitoring).
    pub fn counters(&self) -> GalleryCounters {
        self.counters.get()
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
        if let Some(f) = lock(&self.poison).clone() {
            return Err(f.poisoned(&self.name));
        }
        Ok(())
    }

    /// Latch the gallery into refusing writes (the first failure is kept).
    fn set_poison(&self, failure: Failure) -> Error {
        tracing::error!(gallery = %self.name, reason = %failure.reason, "gallery refuses writes until reopened");
        lock(&self.poison)
            .get_or_insert(failure)
            .poisoned(&self.name)
    }

    pub(crate) fn close(&self) {
        let _c = lock(&self.compacting);
        let _f = lock(&self.flushing);
        self.closed.store(true, Ordering::Release);
        self.flush_signal.raise();
        self.compaction_signal.raise();
    }

    /// Rows at which the active memtable is flushed (see
    /// [`GalleryOptions::memtable_bytes`]).
    fn memtable_limit(&self) -> usize {
        let row_bytes = 4 * self.spec.dim.max(1);
        self.opts
            .memtable_rows
            .min((self.opts.memtable_bytes / row_bytes).max(1))
    }

    fn wake_maintenance(&self) {
        self.flush_signal.raise();
    }
}

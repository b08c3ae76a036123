//! visage-engine: durable galleries of face embeddings in memory-mapped
//! segments, with exact search.
//!
//! # Crate map
//! Each folder is a concern; every arrow points down (a module uses only
//! modules listed after it):
//! - [`engine`](Engine): a data directory of galleries, its lock, create/drop/list.
//! - [`gallery`]: the handle: write path (validation, group-committed WAL,
//!   memtable), recovery, reads, flush, compaction runs, the published snapshot.
//! - [`head`]: the scoring head: pair sampling, fitting, calibration, statistics.
//! - `search`: exact top-k and subject-level identification over a snapshot
//!   (direct, screened and tiled scans and their exactness proofs), and the
//!   distance [`kernels`], chosen once per process.
//! - `snapshot`: the immutable read view (segments, memtable chunks, tombstones).
//! - [`compaction`]: the pure policy deciding what to rewrite.
//! - `storage`: files: [`format`](mod@format) (**the** on-disk format, one
//!   place, with its version history), the WAL, segments, [`io`] (the
//!   file-system seam), [`fs`] and the only mmap code.
//! - `quantizer`: the 8-bit codes (parameters, encoding, decoded norms) and
//!   their error bounds: written by storage, read by search, so below both.
//! - [`api`]: the public request and response types; [`error`](Error): the one error type.
//! - [`synth`]: seeded synthetic face-like embeddings.
//! - [`rng`]: the seeded PRNG (splitmix64) of the head, synth and the tests.
//!
//! `unsafe` is denied everywhere (the workspace lint `unsafe_code`) except
//! `storage::mmap` and `search::kernels`.
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod api;
pub mod compaction;
mod engine;
mod error;
// Entry points for the fuzz targets in `fuzz/` only: not part of the API.
#[doc(hidden)]
pub mod fuzzing;
pub mod gallery;
pub mod head;
mod quantizer;
pub mod rng;
mod search;
mod snapshot;
mod storage;
pub mod synth;

pub use api::{
    BackupOptions, BackupReport, Conflict, DIM, Embedding, GallerySpec, Hit, Limits, MAX_DIM,
    MAX_MODEL_LEN, MIN_DIM, OperationProgress, RestoreReport, VerdictRule, model_problem,
};
pub use compaction::CompactionPolicy;
pub use engine::{Engine, EngineOptions, check_backup_name, check_gallery_name};
pub use error::{Error, ErrorKind, Result, shown};
pub use gallery::{
    Durability, Export, ExportBatch, Gallery, GalleryCounters, GalleryOptions, GalleryStats,
    HistogramCounts, Identification, IdentifyOptions, ImportOptions, ImportReport, ImportSource,
    InsertOutcome, MAX_DELETE_BATCH, MAX_IDENTIFY_K, MAX_INSERT_BATCH, MAX_K, MAX_PROBES,
    MAX_SUBJECTS_PAGE, MaintenanceCounts, MaintenanceReport, RankBy, ScanCounts, ScanMode,
    SearchOptions, Verdict, VerifyOptions, VerifyPair, VerifyTarget, check_delete, check_rows,
};
pub use head::{HeadInfo, MAX_TRAIN_PAIRS, TrainOptions};
pub use search::kernels;
pub use storage::segment::VerifyChecksums;
pub use storage::{format, fs, io};

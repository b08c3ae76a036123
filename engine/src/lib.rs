//! visage-engine: durable galleries of face embeddings in memory-mapped
//! segments, with exact search.
//!
//! # Crate map
//! - [`engine`]: a data directory of galleries, its lock, create/drop/list.
//! - [`gallery`]: the write path (validation, group-committed WAL, memtable),
//!   recovery, flush, compaction runs, and the snapshots readers search.
//! - [`format`]: **the** on-disk format, one place, with its version history.
//! - `wal`, `memtable`, `segment`, `tombstones`: the stored structures, each
//!   with its writer, on-disk form and reader.
//! - [`compaction`]: the pure policy deciding what to rewrite.
//! - `search`: exact top-k and subject-level identification over a snapshot.
//! - [`kernels`]: distance kernels (scalar reference, AVX2+FMA, AVX-512).
//! - `fs` and `mmap`: atomic writes, directory fsync, the lock file; the only mmap code.
//!
//! `unsafe` is denied everywhere except `mmap` and `kernels`.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod compaction;
mod engine;
mod error;
pub mod format;
pub mod fs;
// Entry points for the fuzz targets in `fuzz/` only: not part of the API.
#[doc(hidden)]
pub mod fuzzing;
pub mod gallery;
pub mod head;
pub mod kernels;
mod memtable;
mod mmap;
mod search;
mod segment;
pub mod synth;
mod tombstones;
mod wal;

pub use compaction::CompactionPolicy;
pub use engine::{Engine, EngineOptions, check_gallery_name, shown};
pub use error::{Error, Result};
pub use gallery::{
    Durability, Gallery, GalleryOptions, GalleryStats, Identification, IdentifyOptions,
    InsertOutcome, MAX_DELETE_BATCH, MAX_IDENTIFY_K, MAX_INSERT_BATCH, MAX_K, MAX_PROBES,
    MaintenanceReport, RankBy, ScanMode, SearchOptions, Verdict, VerifyOptions, VerifyPair,
    VerifyTarget,
};
pub use head::{HeadInfo, MAX_TRAIN_PAIRS, TrainOptions};
pub use segment::VerifyChecksums;

/// Dimension of every embedding.
pub const DIM: usize = 128;

/// One enrolled embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// Client-chosen id, unique in the gallery (inserting an existing id replaces it).
    pub id: u64,
    /// The person it belongs to.
    pub subject: String,
    /// The vector; must hold exactly [`DIM`] finite values.
    pub vector: Vec<f32>,
}

/// A search result: an embedding and its squared L2 distance to the probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Embedding id.
    pub id: u64,
    /// Its subject.
    pub subject: String,
    /// Squared L2 distance to the probe.
    pub distance: f32,
    /// The head's probability that the probe shows the same person (when a head is trained).
    pub probability: Option<f32>,
}

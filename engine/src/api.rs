//! The public request and response types of the engine: what a caller puts
//! into a gallery (`Embedding`), what it asks (`SearchOptions`,
//! `IdentifyOptions`, `VerifyPair`) and what it gets back (`Hit`,
//! `Identification`, `Verdict`, statistics), with the per-call limits.
//!
//! Plain data only: the gallery ([`crate::gallery`]) validates and answers,
//! the search (`search`) ranks.

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

//! The public request and response types of the engine: what a caller puts
//! into a gallery (`Embedding`), what it asks (`SearchOptions`,
//! `IdentifyOptions`, `VerifyPair`) and what it gets back (`Hit`,
//! `Identification`, `Verdict`, statistics), with the per-call limits.
//!
//! Plain data only: the gallery ([`crate::gallery`]) validates and answers,
//! the search (`search`) ranks.

/// Default dimension of a gallery's embeddings (dlib, FaceNet-128, OpenFace, SFace);
/// the fastest path.
pub const DIM: usize = 128;
/// Smallest dimension a gallery may have.
pub const MIN_DIM: usize = 16;
/// Largest dimension a gallery may have.
pub const MAX_DIM: usize = 2048;
/// Longest model name in bytes.
pub const MAX_MODEL_LEN: usize = 256;

/// What a gallery holds, fixed when it is created: the dimension of its
/// vectors, the model that made them and whether it normalises them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GallerySpec {
    /// Values per vector: a multiple of 16 from [`MIN_DIM`] to [`MAX_DIM`].
    pub dim: usize,
    /// The model that made the vectors (free text, e.g.
    /// `arcface-r100@insightface-0.7.3`; empty: not recorded). Requests that
    /// name a model are refused when it differs.
    pub model: String,
    /// Store unit vectors and normalise probes (for models compared by
    /// cosine); hits then carry the cosine similarity `1 − d/2`.
    pub normalize: bool,
}

impl Default for GallerySpec {
    fn default() -> Self {
        GallerySpec {
            dim: DIM,
            model: String::new(),
            normalize: false,
        }
    }
}

impl GallerySpec {
    /// A spec of dimension `dim`, no model, not normalising.
    pub fn with_dim(dim: usize) -> GallerySpec {
        GallerySpec {
            dim,
            ..GallerySpec::default()
        }
    }

    /// What is wrong with the spec, if anything.
    pub fn problem(&self) -> Option<String> {
        if !(MIN_DIM..=MAX_DIM).contains(&self.dim) || !self.dim.is_multiple_of(16) {
            return Some(format!(
                "dimension {} is not a multiple of 16 from {MIN_DIM} to {MAX_DIM}",
                self.dim
            ));
        }
        model_problem(&self.model).map(|why| format!("model {why}"))
    }

    /// The cosine similarity of two unit vectors at squared distance `d`,
    /// when the gallery normalises.
    pub fn similarity(&self, d: f32) -> Option<f32> {
        self.normalize.then(|| 1.0 - d / 2.0)
    }
}

/// What is wrong with a model name, if anything: at most [`MAX_MODEL_LEN`]
/// bytes, no control characters (empty means "not recorded").
pub fn model_problem(model: &str) -> Option<String> {
    if model.len() > MAX_MODEL_LEN {
        Some(format!(
            "is {} bytes, longer than {MAX_MODEL_LEN}",
            model.len()
        ))
    } else {
        model
            .chars()
            .find(|c| c.is_control())
            .map(|c| format!("holds control character {c:?}"))
    }
}

/// Per-call limits of a gallery of dimension `dim`: the element counts of
/// [`MAX_INSERT_BATCH`] and [`MAX_PROBES`] hold at 128 values a vector, and
/// shrink in proportion above it, so a call's vectors stay within the same
/// bytes (an insert of 100,000 vectors of 128 values is 51 MB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most embeddings in one insert.
    pub insert_batch: usize,
    /// Most probes in one search or identify call.
    pub probes: usize,
}

impl Limits {
    /// The limits at dimension `dim`.
    pub fn for_dim(dim: usize) -> Limits {
        let scale = |n: usize| (n * DIM / dim.max(DIM)).max(1);
        Limits {
            insert_batch: scale(MAX_INSERT_BATCH),
            probes: scale(MAX_PROBES),
        }
    }
}

/// One enrolled embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// Client-chosen id, unique in the gallery (inserting an existing id replaces it).
    pub id: u64,
    /// The person it belongs to.
    pub subject: String,
    /// The vector; must hold exactly the gallery's dimension of finite values.
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
    /// Cosine similarity `1 − d/2` (in a normalising gallery).
    pub similarity: Option<f32>,
    /// When ranked by a trained head: the key the scan ranked by, smaller
    /// first (−(Σ w_k·|q_k − x_k| + w_d·‖q − x‖²), the head's score without
    /// its bias), ties broken by id. A cluster merges shards' lists by it.
    pub rank_key: Option<f32>,
}

/// Largest insert batch (embeddings per call).
pub const MAX_INSERT_BATCH: usize = 100_000;
/// Largest number of ids plus subjects in one delete call.
pub const MAX_DELETE_BATCH: usize = 1_000_000;
/// Largest number of probes in one search or identify call.
pub const MAX_PROBES: usize = 10_000;
/// Largest `k` for search.
pub const MAX_K: usize = 10_000;
/// Largest page of [`crate::Gallery::subjects`].
pub const MAX_SUBJECTS_PAGE: usize = 10_000;
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
    /// Rows, over all segments, whose codes the quantiser's bound does not
    /// cover (outliers): the exact scans score them in f32. See
    /// [`SegmentInfo`] for each segment's.
    pub exception_rows: u64,
    /// Segments written by an older format, whose quantiser an outlier can
    /// spoil: forced compaction (`Gallery::compact`) rewrites them.
    pub outdated_segments: u64,
    /// How the exact scans settled their probes since the gallery was opened.
    pub scans: ScanCounts,
}

/// How the exact scans settled their probes since the gallery was opened (each
/// probe of a search or identification is counted once, where it was settled).
/// Nearly all are settled by the first pass through the 8-bit codes; growth in
/// the others means a crowded or degraded gallery (see [`GalleryStats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanCounts {
    /// Proved from the first pass over the codes (screened or batch scan):
    /// always `screened + int_tiled`.
    pub first_pass: u64,
    /// Of `first_pass`, those the screened scan's first pass proved (1–3
    /// probes, or small batches without AVX-512 VNNI).
    pub screened: u64,
    /// Of `first_pass`, those the integer tiled batch scan (AVX-512 VNNI) proved.
    pub int_tiled: u64,
    /// Proved by the screened scan's second pass, with sixteen times the candidates.
    pub widened: u64,
    /// Settled by the f32 batch scan (batches): after the codes could not, or
    /// from the start where the CPU lacks integer dot products (AVX-512 VNNI)
    /// or the codes could not settle a sample of the batch.
    pub f32_batch: u64,
    /// Scanned directly, every row in f32, after the codes could not.
    pub direct: u64,
    /// Times the exactness proof could not settle a probe and sent it on to
    /// a later scan (a wider screened pass, the f32 batch scan or the direct
    /// scan); a probe sent on twice counts twice.
    pub fallbacks: u64,
}

/// Counts of one kind of observation in fixed buckets, as
/// [`GalleryCounters`] reports them (the server exposes them as Prometheus
/// histograms).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistogramCounts {
    /// Upper bounds of the buckets (inclusive), ascending; a last bucket,
    /// without a bound, holds what is larger.
    pub bounds: &'static [f64],
    /// Observations in each bucket (not cumulative): `bounds.len() + 1` counts.
    pub counts: Vec<u64>,
    /// Sum of the observations.
    pub sum: f64,
}

impl HistogramCounts {
    /// Observations in all buckets.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Flushes or compactions of a gallery since it was opened.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MaintenanceCounts {
    /// Runs that finished (a flush with nothing to write is not one; a
    /// compaction counts each segment it wrote by merging).
    pub runs: u64,
    /// Seconds each run took.
    pub seconds: HistogramCounts,
    /// Bytes of segment files written.
    pub bytes_written: u64,
}

/// What the write path and maintenance of a gallery did since it was opened
/// (`Gallery::counters`): group commits, WAL syncs, flushes and compactions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GalleryCounters {
    /// Batches (insert or delete calls) a group commit wrote together.
    pub wal_group_batches: HistogramCounts,
    /// WAL records a group commit wrote with one write (a batch that changed
    /// nothing writes none).
    pub wal_group_records: HistogramCounts,
    /// Seconds each WAL `fdatasync` of a group commit took (none in
    /// `Durability::ProcessCrash` mode).
    pub wal_fsync_seconds: HistogramCounts,
    /// Flushes (memtable to segment).
    pub flush: MaintenanceCounts,
    /// Compactions: each merge of segments into one.
    pub compaction: MaintenanceCounts,
    /// Bulk imports (each run, and the segment bytes it wrote).
    pub import: MaintenanceCounts,
}

/// One segment, as `Gallery::segments` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentInfo {
    /// File number (the segment is `seg-<file_no>.vseg`).
    pub file_no: u64,
    /// Rows stored.
    pub rows: u64,
    /// Rows deleted (until compaction).
    pub deleted: u64,
    /// Rows whose codes the quantiser's bound does not cover, scanned exactly.
    pub exceptions: u64,
    /// Format version the segment was written in.
    pub format_version: u32,
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
    /// Cosine similarity `1 − d/2` (in a normalising gallery).
    pub similarity: Option<f32>,
    /// What the decision compared with its threshold.
    pub rule: VerdictRule,
    /// The threshold the decision used, on the rule's scale: a squared
    /// distance (same iff `distance <= threshold`) or a probability (same iff
    /// the probability, or for [`VerdictRule::MeanProbability`] that of the
    /// mean of the logits, is at least it).
    pub threshold: f32,
}

/// A possible double enrolment: row `position` of a batch looks like
/// another subject, by the gallery's open-set (1:N) decision for its current
/// size ([`crate::Gallery::conflicts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// The row of the batch.
    pub position: usize,
    /// The other subject it matches.
    pub other_subject: String,
    /// The matching embedding's id (0 for a row of the batch without an id yet).
    pub other_id: u64,
    /// When the match is another row of the same batch: its position.
    pub other_position: Option<usize>,
    /// Squared L2 distance between the two.
    pub distance: f32,
    /// The head's calibrated probability that they show the same person
    /// (with a trained head).
    pub probability: Option<f32>,
}

/// What a verification's decision compared with its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictRule {
    /// The squared distance (to the best embedding, for a subject).
    Distance,
    /// The head's calibrated probability (of the best embedding, for a subject).
    Probability,
    /// For a claim against a subject: the probability of the mean of the
    /// head's logits over the subject's embeddings.
    MeanProbability,
}

/// A long operation on a gallery in progress (compaction or backup), as
/// `Gallery::progress` reports it. Totals are known when the operation
/// starts; `done` counts grow to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationProgress {
    /// `"compaction"` (flush and merges, forced or background) or `"backup"`.
    pub kind: &'static str,
    /// Rows written or copied so far.
    pub rows_done: u64,
    /// Rows the operation will write or copy.
    pub rows_total: u64,
    /// Bytes written or copied so far.
    pub bytes_done: u64,
    /// Bytes the operation will write or copy.
    pub bytes_total: u64,
    /// Time since the operation started.
    pub elapsed: std::time::Duration,
}

/// How to take a backup.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Bytes a second the copy may read and write, at most (`None`: as fast
    /// as the disks go). Keeps a backup from starving the searches' I/O.
    pub max_bytes_per_sec: Option<u64>,
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The backup's directory.
    pub dir: std::path::PathBuf,
    /// The cut: last WAL file copied and the bytes of it copied.
    pub wal_file_no: u64,
    /// See `wal_file_no`.
    pub wal_offset: u64,
    /// Live embeddings at the cut.
    pub rows: u64,
    /// Subjects at the cut.
    pub subjects: u64,
    /// Files in the backup (besides its manifest).
    pub files: u64,
    /// Of those, hard links to the gallery's immutable segments.
    pub linked: u64,
    /// Bytes of all files.
    pub bytes: u64,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The backup's gallery name.
    pub source_gallery: String,
    /// Erasure records logged after the backup's cut and applied.
    pub erasures_applied: u64,
    /// Embeddings those erasures removed from the restored rows.
    pub rows_erased: u64,
    /// The restored gallery, as it serves.
    pub stats: GalleryStats,
}

//! The engine's one error type.
//!
//! Every variant says what went wrong and where. Each is documented as a
//! *caller* error (the request was wrong; nothing changed), *corruption* (bytes
//! on disk are not what we wrote) or *I/O* (the operating system refused); the
//! server maps them to status codes on that basis and nowhere else.

use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Caller error: a vector at position `index` of the batch has the wrong length.
    #[error("{what}[{index}]: expected {expected} values, got {got}")]
    DimensionMismatch {
        /// Which field of the request (`embeddings`, `probes`, ...).
        what: &'static str,
        /// Position in the batch.
        index: usize,
        /// Expected dimension (the gallery's).
        expected: usize,
        /// Dimension received.
        got: usize,
    },
    /// Caller error: a vector holds a NaN or infinite value.
    #[error("{what}[{index}]: value {position} is {value} (every value must be finite)")]
    NonFiniteValue {
        /// Which field of the request.
        what: &'static str,
        /// Position in the batch.
        index: usize,
        /// Position of the bad value inside the vector.
        position: usize,
        /// The value itself.
        value: f32,
    },
    /// Caller error: a zero vector in a gallery that normalises (it has no direction).
    #[error("{what}[{index}]: is a zero vector, which cannot be normalised (gallery normalises)")]
    ZeroVector {
        /// Which field of the request.
        what: &'static str,
        /// Position in the batch.
        index: usize,
    },
    /// Caller error: the request names a model other than the gallery's.
    #[error(
        "gallery {gallery:?} holds vectors of model {expected:?}; the request names model {got:?}"
    )]
    ModelMismatch {
        /// The gallery.
        gallery: String,
        /// The gallery's model (empty: none recorded).
        expected: String,
        /// The model the request named.
        got: String,
    },
    /// Caller error: a gallery cannot be created with this specification.
    #[error("invalid gallery specification: {reason}")]
    InvalidSpec {
        /// What is wrong.
        reason: String,
    },
    /// Caller error: a subject string is empty, too long or holds control characters.
    #[error("{what}[{index}].subject: {reason}")]
    InvalidSubject {
        /// Which field of the request.
        what: &'static str,
        /// Position in the batch.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Caller error: the same id appears twice in one insert batch.
    #[error("{what}[{second}]: id {id} already appears at {what}[{first}] of the same batch")]
    DuplicateId {
        /// The batch field (`embeddings`, `ids`).
        what: &'static str,
        /// The repeated id.
        id: u64,
        /// First position.
        first: usize,
        /// Second position.
        second: usize,
    },
    /// Caller error: a gallery name is not acceptable.
    #[error("invalid gallery name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Caller error: `k` is 0, or larger than the call allows.
    #[error("{}", if *got == 0 { "k must be at least 1".to_owned() } else { format!("k: {got} exceeds the limit of {limit}") })]
    InvalidK {
        /// The `k` received.
        got: usize,
        /// The largest `k` the call allows.
        limit: usize,
    },
    /// Caller error: a numeric option (a threshold, a training setting) is
    /// outside its range.
    #[error("{option} must be {expected}, got {got}")]
    OutOfRange {
        /// The option (`max_distance`, `min_probability`, `target_far`, ...).
        option: &'static str,
        /// Its range, in words.
        expected: String,
        /// The value received.
        got: String,
    },
    /// Caller error: the batch is larger than the engine accepts in one call.
    #[error("{what}: {got} exceeds the limit of {limit}")]
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// Size received.
        got: usize,
        /// Limit.
        limit: usize,
    },
    /// Caller error: the gallery's labels cannot train or calibrate a head
    /// (too few subjects, only one kind of pair, degenerate pairs); nothing
    /// was changed.
    #[error("{reason}")]
    CannotTrain {
        /// Why, in words.
        reason: String,
    },
    /// Caller error: the request needs a trained head, and the gallery has none.
    #[error("gallery {gallery:?} has no trained head: {hint}")]
    NoTrainedHead {
        /// Gallery name.
        gallery: String,
        /// What needed it, and what to do instead.
        hint: &'static str,
    },
    /// Caller error: the request gave no threshold, the gallery has no
    /// calibrated one, and calibrating one now failed.
    #[error(
        "gallery {gallery:?} has no calibrated threshold and could not calibrate one ({source}); \
         pass max_distance or min_probability"
    )]
    NoThreshold {
        /// Gallery name.
        gallery: String,
        /// Why calibration failed.
        #[source]
        source: Box<Error>,
    },
    /// Caller error: an embedding id named by the request does not exist.
    #[error("{field}: no embedding with id {id}")]
    UnknownId {
        /// The request field (`pairs[3].id`).
        field: String,
        /// The id.
        id: u64,
    },
    /// Caller error: a subject named by the request has no live embedding.
    #[error("{field}: no embedding of subject {subject:?}")]
    UnknownSubject {
        /// The request field (`pairs[3].subject`).
        field: String,
        /// The subject, as error messages quote names (at most 64 bytes).
        subject: String,
    },
    /// Caller error: no gallery of that name.
    #[error("gallery {0:?} does not exist")]
    GalleryNotFound(String),
    /// Caller error: a backup name is not acceptable (it would leave the
    /// backup root, or is not a plain name).
    #[error("invalid backup name {name:?}: {reason}")]
    InvalidBackupName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Caller error: no backup of that name under the backup root.
    #[error("backup {0:?} does not exist")]
    BackupNotFound(String),
    /// Caller error (state): a backup or restore cannot go on as asked (no
    /// backup root, a backup of that name exists, the erasure log a restore
    /// needs is missing); nothing was changed.
    #[error("backup {name:?}: {reason}")]
    BackupRefused {
        /// The backup.
        name: String,
        /// Why.
        reason: String,
    },
    /// Caller error: a gallery of that name exists already.
    #[error("gallery {0:?} already exists")]
    GalleryExists(String),
    /// Caller error (environment): another process holds the data directory.
    #[error(
        "data directory {path} is locked by another process (only one visage may open it at a time)"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// Corruption: a checksum does not match.
    #[error(
        "checksum mismatch in {path}, {section}: expected {expected:#010x}, computed {got:#010x}"
    )]
    ChecksumMismatch {
        /// File.
        path: PathBuf,
        /// Which part of the file (header, section name, record at offset ...).
        section: String,
        /// Stored checksum.
        expected: u32,
        /// Computed checksum.
        got: u32,
    },
    /// Corruption: the bytes do not decode.
    #[error("corrupt file {path} at offset {offset}: {reason}")]
    Corruption {
        /// File.
        path: PathBuf,
        /// Byte offset of the problem.
        offset: u64,
        /// What was found.
        reason: String,
    },
    /// Corruption or version skew: the file was written by an incompatible version.
    #[error(
        "{path} has format version {found}; this build reads versions {oldest} to {newest} \
         (open it with a visage release that supports version {found}, or restore from backup)"
    )]
    UnsupportedVersion {
        /// File.
        path: PathBuf,
        /// Version found in the file.
        found: u32,
        /// Oldest version this build reads.
        oldest: u32,
        /// Newest version this build reads.
        newest: u32,
    },
    /// I/O: the operating system refused an operation on `path`.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// I/O (latched): an earlier write or fsync failed, so this gallery refuses
    /// writes until it is reopened; nothing unacknowledged was reported durable.
    #[error(
        "gallery {gallery:?} refuses writes after an earlier failure ({reason}); reopen it to recover"
    )]
    Poisoned {
        /// Gallery name.
        gallery: String,
        /// The failure that latched.
        reason: String,
        /// Whether that failure was a full disk (ENOSPC, EDQUOT).
        disk_full: bool,
    },
    /// Resource: the disk has not enough free space for the operation, which
    /// was refused before it changed anything; retry once space is freed.
    #[error(
        "not enough free disk space for {what} in {path}: needs about {needed} bytes, \
         {available} available; nothing was changed (free space, then retry)"
    )]
    NoSpace {
        /// What was refused ("this write", "compaction", "flush").
        what: &'static str,
        /// Directory whose file system is full.
        path: PathBuf,
        /// Bytes the operation needs (an estimate for flush and compaction).
        needed: u64,
        /// Bytes available to this process on that file system.
        available: u64,
    },
    /// Resource: too many rows wait in memory to be flushed to segments
    /// (flushes are failing or behind); inserts are refused until a flush
    /// succeeds. Deletes still work.
    #[error(
        "gallery {gallery:?} holds {rows} rows not yet flushed to segments (limit {limit}){}; \
         inserts resume once a flush succeeds",
        match failure { Some(f) => format!("; flushes are failing: {f}"), None => String::new() }
    )]
    Backlogged {
        /// Gallery name.
        gallery: String,
        /// Rows waiting.
        rows: usize,
        /// The limit (`GalleryOptions::max_unflushed_rows`).
        limit: usize,
        /// The last background flush or compaction failure, if any.
        failure: Option<String>,
        /// Whether that failure was a full disk.
        disk_full: bool,
    },
    /// The engine is shutting down.
    #[error("the engine is closed")]
    Closed,
    /// Caller error: the gallery has no fresh id left to assign (it holds
    /// or has assigned id `u64::MAX`); insert with explicit ids.
    #[error(
        "gallery {gallery:?} has no fresh ids left to assign {wanted}: it has held or assigned id {highest}; give the ids explicitly"
    )]
    IdsExhausted {
        /// Gallery name.
        gallery: String,
        /// Ids asked for.
        wanted: u64,
        /// The highest id the gallery has held or assigned.
        highest: u64,
    },
    /// Caller error: an import names ids the gallery holds (and was not
    /// asked to replace them).
    #[error(
        "ids: id {id} (row {row}) is already in the gallery{}; nothing was imported (replace them with --replace)",
        if *count > 1 { format!(", and {} more ids of the import are", count - 1) } else { String::new() }
    )]
    IdsExist {
        /// The first such id.
        id: u64,
        /// Its row in the source.
        row: usize,
        /// How many ids of the import the gallery holds.
        count: u64,
    },
    /// Caller error: the parts of a flat batch disagree (vectors, subjects
    /// and ids of different lengths).
    #[error("{what}: {reason}")]
    BatchShape {
        /// The part that does not fit.
        what: &'static str,
        /// How.
        reason: String,
    },
}

/// What kind of failure an [`Error`] is, as a client acts on it: the classes
/// of gRPC's status codes, which the server maps one to one and the Python
/// package raises as exceptions of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request was wrong (shape, value, name, limit of `k`); nothing changed.
    InvalidArgument,
    /// No such gallery, id or subject.
    NotFound,
    /// A gallery of that name exists.
    AlreadyExists,
    /// The gallery is not in the state the request needs (a head, a
    /// threshold, the same model; the directory locked by another process).
    FailedPrecondition,
    /// A batch over its limit, a full disk, no fresh ids left.
    ResourceExhausted,
    /// A file of the gallery is damaged.
    DataLoss,
    /// Shutting down, or refusing writes after an I/O failure: retry later.
    Unavailable,
    /// An I/O error the caller cannot act on.
    Internal,
}

impl ErrorKind {
    /// The kind's name, as gRPC spells its status code (`INVALID_ARGUMENT`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "INVALID_ARGUMENT",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::AlreadyExists => "ALREADY_EXISTS",
            ErrorKind::FailedPrecondition => "FAILED_PRECONDITION",
            ErrorKind::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ErrorKind::DataLoss => "DATA_LOSS",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Internal => "INTERNAL",
        }
    }
}

impl Error {
    /// The error's kind. Every variant is matched explicitly (no wildcard),
    /// so a new error cannot reach a client without a decision here.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::DimensionMismatch { .. }
            | Error::ZeroVector { .. }
            | Error::InvalidSpec { .. }
            | Error::NonFiniteValue { .. }
            | Error::InvalidSubject { .. }
            | Error::DuplicateId { .. }
            | Error::InvalidName { .. }
            | Error::InvalidBackupName { .. }
            | Error::BatchShape { .. }
            // `k` too large is a bad argument, not a lack of resources.
            | Error::InvalidK { .. }
            | Error::OutOfRange { .. }
            | Error::CannotTrain { .. } => ErrorKind::InvalidArgument,
            Error::TooLarge { .. } | Error::IdsExhausted { .. } => ErrorKind::ResourceExhausted,
            Error::GalleryNotFound(_)
            | Error::BackupNotFound(_)
            | Error::UnknownId { .. }
            | Error::UnknownSubject { .. } => ErrorKind::NotFound,
            Error::NoTrainedHead { .. }
            | Error::NoThreshold { .. }
            | Error::ModelMismatch { .. }
            | Error::BackupRefused { .. }
            | Error::Locked { .. } => ErrorKind::FailedPrecondition,
            Error::GalleryExists(_) | Error::IdsExist { .. } => ErrorKind::AlreadyExists,
            Error::ChecksumMismatch { .. }
            | Error::Corruption { .. }
            | Error::UnsupportedVersion { .. } => ErrorKind::DataLoss,
            Error::NoSpace { .. } => ErrorKind::ResourceExhausted,
            Error::Backlogged { .. } | Error::Io { .. } | Error::Poisoned { .. }
                if self.is_no_space() =>
            {
                ErrorKind::ResourceExhausted
            }
            Error::Backlogged { .. } | Error::Poisoned { .. } | Error::Closed => {
                ErrorKind::Unavailable
            }
            Error::Io { .. } => ErrorKind::Internal,
        }
    }

    /// True when the error was caused by the request, not by the storage.
    pub fn is_caller_error(&self) -> bool {
        matches!(
            self,
            Error::DimensionMismatch { .. }
                | Error::ZeroVector { .. }
                | Error::ModelMismatch { .. }
                | Error::InvalidSpec { .. }
                | Error::NonFiniteValue { .. }
                | Error::InvalidSubject { .. }
                | Error::DuplicateId { .. }
                | Error::InvalidName { .. }
                | Error::InvalidK { .. }
                | Error::OutOfRange { .. }
                | Error::TooLarge { .. }
                | Error::CannotTrain { .. }
                | Error::NoTrainedHead { .. }
                | Error::NoThreshold { .. }
                | Error::UnknownId { .. }
                | Error::UnknownSubject { .. }
                | Error::GalleryNotFound(_)
                | Error::GalleryExists(_)
                | Error::InvalidBackupName { .. }
                | Error::BackupNotFound(_)
                | Error::BackupRefused { .. }
                | Error::IdsExhausted { .. }
                | Error::BatchShape { .. }
        )
    }

    /// True when bytes on disk are damaged (checksum, decoding or version).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::ChecksumMismatch { .. }
                | Error::Corruption { .. }
                | Error::UnsupportedVersion { .. }
        )
    }

    /// True when the underlying I/O error means the disk is full.
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::Io { source, .. } => io_disk_full(source),
            Error::NoSpace { .. } => true,
            Error::Backlogged { disk_full, .. } | Error::Poisoned { disk_full, .. } => *disk_full,
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Error {
        Error::Corruption {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}

/// A caller's name as error messages quote it: at most 64 bytes, so a
/// hostile megabyte-long name cannot make a megabyte-long status message
/// (which would not even fit in the HTTP/2 trailers that carry it).
pub fn shown(name: &str) -> String {
    const MAX: usize = 64;
    if name.len() <= MAX {
        return name.to_owned();
    }
    let mut end = MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &name[..end], name.len())
}

/// True when an I/O error means the disk is full (ENOSPC, EDQUOT).
pub(crate) fn io_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28 | 122))
}

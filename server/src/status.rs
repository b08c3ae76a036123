//! The one mapping from engine errors to gRPC status codes.
//!
//! The engine classifies every error once ([`Error::kind`], which matches each
//! variant explicitly); this maps the kinds to codes one to one. The
//! message is the engine's `Display` text, which names the field and, in a
//! batch, the position (`embeddings[3]: expected 128 values, got 127`).

use tonic::{Code, Status};
use visage_engine::{Error, ErrorKind};

/// An error on its way to the client: always a gRPC status.
///
/// Handlers return `Result<T, ApiError>` so `?` converts engine errors through
/// [`status_of`] and nothing else.
#[derive(Debug)]
pub struct ApiError(pub Status);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(status_of(&e))
    }
}

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        ApiError(s)
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        e.0
    }
}

/// The status code for an engine error: its kind ([`Error::kind`]), one to one.
pub fn code_of(e: &Error) -> Code {
    match e.kind() {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::DataLoss => Code::DataLoss,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
    }
}

/// The status for an engine error: its code and its message.
pub fn status_of(e: &Error) -> Status {
    let code = code_of(e);
    if e.is_caller_error() {
        tracing::debug!(error = %e, ?code, "request rejected");
    } else {
        tracing::error!(error = %e, ?code, "request failed");
    }
    Status::new(code, e.to_string())
}

/// An engine error about request field `field`: the message starts with the field.
pub fn at(field: &str, e: Error) -> ApiError {
    let s = status_of(&e);
    ApiError(Status::new(s.code(), format!("{field}: {}", s.message())))
}

/// Rename the request field an engine error refers to.
///
/// The engine names batch fields generically (`probes`); a request whose field
/// is called otherwise (`queries` in Search) renames it so the message points
/// at the field the client actually filled in.
pub fn in_field(e: Error, field: &'static str) -> Error {
    match e {
        Error::DimensionMismatch {
            index,
            expected,
            got,
            ..
        } => Error::DimensionMismatch {
            what: field,
            index,
            expected,
            got,
        },
        Error::NonFiniteValue {
            index,
            position,
            value,
            ..
        } => Error::NonFiniteValue {
            what: field,
            index,
            position,
            value,
        },
        Error::ZeroVector { index, .. } => Error::ZeroVector { what: field, index },
        Error::InvalidSubject { index, reason, .. } => Error::InvalidSubject {
            what: field,
            index,
            reason,
        },
        Error::TooLarge { got, limit, .. } => Error::TooLarge {
            what: field,
            got,
            limit,
        },
        other => other,
    }
}

/// INVALID_ARGUMENT naming `field`.
pub fn invalid(field: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError(Status::invalid_argument(format!("{field}: {msg}")))
}

/// RESOURCE_EXHAUSTED naming `field`.
pub fn too_large(field: &str, got: usize, limit: usize) -> ApiError {
    ApiError(Status::resource_exhausted(format!(
        "{field}: {got} exceeds the limit of {limit}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn io(kind: i32) -> Error {
        Error::Io {
            path: PathBuf::from("/x"),
            source: std::io::Error::from_raw_os_error(kind),
        }
    }

    #[test]
    fn every_variant_has_the_documented_code() {
        let cases: Vec<(Error, Code)> = vec![
            (
                Error::DimensionMismatch {
                    what: "embeddings",
                    index: 3,
                    expected: 128,
                    got: 127,
                },
                Code::InvalidArgument,
            ),
            (
                Error::NonFiniteValue {
                    what: "probes",
                    index: 0,
                    position: 5,
                    value: f32::NAN,
                },
                Code::InvalidArgument,
            ),
            (
                Error::ZeroVector {
                    what: "embeddings",
                    index: 4,
                },
                Code::InvalidArgument,
            ),
            (
                Error::InvalidSpec {
                    reason: "dimension 100 is not a multiple of 16 from 16 to 2048".into(),
                },
                Code::InvalidArgument,
            ),
            (
                Error::ModelMismatch {
                    gallery: "g".into(),
                    expected: "arcface".into(),
                    got: "facenet".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                Error::InvalidSubject {
                    what: "embeddings",
                    index: 1,
                    reason: "is empty".into(),
                },
                Code::InvalidArgument,
            ),
            (
                Error::DuplicateId {
                    what: "embeddings",
                    id: 1,
                    first: 0,
                    second: 2,
                },
                Code::InvalidArgument,
            ),
            (
                Error::InvalidName {
                    name: String::new(),
                    reason: "is empty",
                },
                Code::InvalidArgument,
            ),
            (Error::InvalidK { got: 0, limit: 10 }, Code::InvalidArgument),
            (
                Error::InvalidK {
                    got: 20_000,
                    limit: 10_000,
                },
                Code::InvalidArgument,
            ),
            (
                Error::OutOfRange {
                    option: "max_distance",
                    expected: "finite and at least 0".into(),
                    got: "-1".into(),
                },
                Code::InvalidArgument,
            ),
            (
                Error::CannotTrain {
                    reason: "training needs both genuine and impostor pairs".into(),
                },
                Code::InvalidArgument,
            ),
            (
                Error::TooLarge {
                    what: "embeddings",
                    got: 200_000,
                    limit: 100_000,
                },
                Code::ResourceExhausted,
            ),
            (Error::GalleryNotFound("x".into()), Code::NotFound),
            (
                Error::UnknownId {
                    field: "pairs[0].id".into(),
                    id: 9,
                },
                Code::NotFound,
            ),
            (
                Error::UnknownSubject {
                    field: "pairs[0].subject".into(),
                    subject: "ann".into(),
                },
                Code::NotFound,
            ),
            (
                Error::NoTrainedHead {
                    gallery: "g".into(),
                    hint: "call TrainHead before ranking by HEAD",
                },
                Code::FailedPrecondition,
            ),
            (
                Error::NoThreshold {
                    gallery: "g".into(),
                    source: Box::new(Error::CannotTrain {
                        reason: "too few subjects".into(),
                    }),
                },
                Code::FailedPrecondition,
            ),
            (Error::GalleryExists("x".into()), Code::AlreadyExists),
            (
                Error::Locked {
                    path: PathBuf::from("/x/LOCK"),
                },
                Code::FailedPrecondition,
            ),
            (
                Error::ChecksumMismatch {
                    path: PathBuf::from("/x"),
                    section: "header".into(),
                    expected: 1,
                    got: 2,
                },
                Code::DataLoss,
            ),
            (
                Error::Corruption {
                    path: PathBuf::from("/x"),
                    offset: 0,
                    reason: "bad".into(),
                },
                Code::DataLoss,
            ),
            (
                Error::UnsupportedVersion {
                    path: PathBuf::from("/x"),
                    found: 9,
                    oldest: 1,
                    newest: 1,
                },
                Code::DataLoss,
            ),
            (
                Error::NoSpace {
                    what: "compaction",
                    path: PathBuf::from("/x"),
                    needed: 10,
                    available: 1,
                },
                Code::ResourceExhausted,
            ),
            (
                Error::Backlogged {
                    gallery: "g".into(),
                    rows: 9,
                    limit: 8,
                    failure: Some("I/O error on /x: disk on fire".into()),
                    disk_full: false,
                },
                Code::Unavailable,
            ),
            (
                Error::Backlogged {
                    gallery: "g".into(),
                    rows: 9,
                    limit: 8,
                    failure: Some("not enough free disk space for flush in /x".into()),
                    disk_full: true,
                },
                Code::ResourceExhausted,
            ),
            (io(28), Code::ResourceExhausted),
            (io(5), Code::Internal),
            (
                Error::IdsExhausted {
                    gallery: "g".into(),
                    wanted: 2,
                    highest: u64::MAX,
                },
                Code::ResourceExhausted,
            ),
            (
                Error::BatchShape {
                    what: "subjects",
                    reason: "3 subjects for 4 rows".into(),
                },
                Code::InvalidArgument,
            ),
            (
                Error::Poisoned {
                    gallery: "g".into(),
                    reason: "WAL write failed: No space left on device (os error 28)".into(),
                    disk_full: true,
                },
                Code::ResourceExhausted,
            ),
            (
                Error::Poisoned {
                    gallery: "g".into(),
                    reason: "injected fsync failure".into(),
                    disk_full: false,
                },
                Code::Unavailable,
            ),
            (Error::Closed, Code::Unavailable),
        ];
        for (e, code) in cases {
            let s = status_of(&e);
            assert_eq!(s.code(), code, "{e}");
            assert_eq!(s.message(), e.to_string());
        }
    }

    #[test]
    fn renaming_the_field_changes_the_message() {
        let e = in_field(
            Error::DimensionMismatch {
                what: "probes",
                index: 2,
                expected: 128,
                got: 3,
            },
            "queries",
        );
        assert_eq!(e.to_string(), "queries[2]: expected 128 values, got 3");
        let z = in_field(
            Error::ZeroVector {
                what: "probes",
                index: 7,
            },
            "queries",
        );
        assert!(z.to_string().starts_with("queries[7]: "), "{z}");
        let k = in_field(Error::InvalidK { got: 5, limit: 1 }, "queries");
        assert_eq!(k.to_string(), "k: 5 exceeds the limit of 1");
    }
}

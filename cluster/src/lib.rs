//! visage's cluster mode (in progress): a gallery's subjects are split into
//! shards by a hash of the subject, every write is one message of the
//! gallery's NATS JetStream stream (its replicated, ordered write-ahead
//! log), and each node applies the log in order to local galleries, one per
//! shard it serves, recording the log position with each batch.
//!
//! - [`shard`]: which shard holds a subject, and the shard galleries' names;
//! - [`catalog`]: galleries and live nodes in etcd;
//! - [`batch`]: a logged batch (`LogBatch`) and its share for each shard;
//! - [`log`]: the gallery's stream: created, published to with a message id
//!   (a retried publish is stored once);
//! - [`merge`]: exact answers from the shards' answers;
//! - [`replica`]: a node's consumer of a gallery's stream, applying each batch
//!   to its shard galleries exactly once (`Gallery::insert_at`/`delete_at`).
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod batch;
pub mod catalog;
pub mod log;
pub mod merge;
pub mod node;
pub mod replica;
pub mod shard;

/// Errors of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] visage_engine::Error),
    /// etcd failed (after retries), or holds what this build cannot read.
    #[error("etcd: {0}")]
    Etcd(String),
    /// NATS or JetStream failed (connection, stream, publish, consumer).
    #[error("nats: {0}")]
    Nats(String),
    /// The log no longer holds the messages this replica needs next (they
    /// were trimmed): it must copy a peer's shards first.
    #[error("the log {stream} starts at message {first}; this replica needs {needed}")]
    Trimmed {
        /// The stream.
        stream: String,
        /// The first message it holds.
        first: u64,
        /// The message the replica needs.
        needed: u64,
    },
    /// A message of the log does not decode as a batch.
    #[error("log message {seq} of stream {stream}: {reason}")]
    BadMessage {
        /// The stream.
        stream: String,
        /// Its sequence number.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    pub(crate) fn nats(e: impl std::fmt::Display) -> Error {
        Error::Nats(e.to_string())
    }
}

/// Result alias of the cluster layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

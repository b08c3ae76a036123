//! A gallery's replicated write-ahead log: one JetStream stream per gallery
//! (file storage, replicated on up to three servers), one message per
//! batch. A publish returns when JetStream has stored the message on a
//! quorum of its servers, with the stream sequence that orders it among all
//! of the gallery's writes. The message id makes a retried publish (after a
//! timeout or a leader change) land once.

use crate::batch::LogBatch;
use crate::{Error, Result};
use async_nats::jetstream::{self, stream};
use prost::Message;

/// The JetStream side of the cluster.
#[derive(Clone, Debug)]
pub struct Log {
    js: jetstream::Context,
    replicas: usize,
}

/// The stream of `gallery` (gallery names hold only letters, digits, `_`
/// and `-`, which stream names and subjects allow).
pub fn stream_name(gallery: &str) -> String {
    format!("VISAGE_{gallery}")
}

/// The subject the batches of `gallery` are published on.
pub fn subject(gallery: &str) -> String {
    format!("visage.g.{gallery}")
}

impl Log {
    /// Connect to the NATS servers `urls` (comma-separated), with a token if
    /// the servers require one. Streams get `replicas` copies (1 to 5: 3 is
    /// the cluster's, which survives the loss of any one server).
    pub async fn connect(urls: &str, token: Option<&str>, replicas: usize) -> Result<Log> {
        let mut opts = async_nats::ConnectOptions::new();
        if let Some(t) = token {
            opts = opts.token(t.to_owned());
        }
        let addrs = urls
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Nats(format!("--nats {urls}: {e}")))?;
        let client = opts.connect(addrs.as_slice()).await.map_err(Error::nats)?;
        Ok(Log {
            js: jetstream::new(client),
            replicas,
        })
    }

    /// The JetStream context.
    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    /// Create the stream of `gallery` if it does not exist.
    pub async fn ensure_stream(&self, gallery: &str) -> Result<stream::Stream> {
        self.js
            .get_or_create_stream(stream::Config {
                name: stream_name(gallery),
                subjects: vec![subject(gallery)],
                num_replicas: self.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(Error::nats)
    }

    /// Publish `batch` to `gallery`'s log with message id `id`, and wait for
    /// JetStream to store it; returns its sequence (the same sequence for a
    /// retry of the same id).
    pub async fn publish(&self, gallery: &str, batch: &LogBatch, id: &str) -> Result<u64> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        let ack = self
            .js
            .publish_with_headers(subject(gallery), headers, batch.encode_to_vec().into())
            .await
            .map_err(Error::nats)?
            .await
            .map_err(Error::nats)?;
        Ok(ack.sequence)
    }
}

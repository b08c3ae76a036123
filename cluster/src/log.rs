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
    client: async_nats::Client,
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
        let client = opts
            .connect(addrs.as_slice())
            .await
            .map_err(|e| Error::Nats(format!("cannot connect to {urls}: {e}")))?;
        Ok(Log {
            js: jetstream::new(client.clone()),
            client,
            replicas,
        })
    }

    /// A round trip to the server, so a refused connection shows now.
    pub async fn check(&self) -> Result<()> {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.client.flush())
            .await
            .map_err(|_| Error::Nats("the NATS server did not answer within 10 s".into()))?
            .map_err(Error::nats)
    }

    /// The largest message the servers take, in bytes (a batch must fit).
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// Delete the stream of `gallery` (its whole log); `false` if it did not
    /// exist.
    pub async fn delete_stream(&self, gallery: &str) -> Result<bool> {
        match self.js.delete_stream(stream_name(gallery)).await {
            Ok(r) => Ok(r.success),
            Err(e) if e.to_string().contains("not found") => Ok(false),
            Err(e) => Err(Error::nats(e)),
        }
    }

    /// Remove the messages of `gallery`'s log up to `upto` (inclusive).
    pub async fn trim(&self, gallery: &str, upto: u64) -> Result<()> {
        let s = self
            .js
            .get_stream(stream_name(gallery))
            .await
            .map_err(Error::nats)?;
        s.purge().sequence(upto + 1).await.map_err(Error::nats)?;
        Ok(())
    }

    /// The first and last message the stream of `gallery` holds (`(0, 0)`
    /// when it has none, `first > last` once it was emptied).
    pub async fn bounds(&self, gallery: &str) -> Result<(u64, u64)> {
        let mut s = self
            .js
            .get_stream(stream_name(gallery))
            .await
            .map_err(Error::nats)?;
        let info = s.info().await.map_err(Error::nats)?;
        Ok((info.state.first_sequence, info.state.last_sequence))
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

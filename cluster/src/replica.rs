//! A node's replica of some shards of a gallery: it follows the gallery's
//! stream in order and applies each batch's share to the local gallery of
//! each shard, exactly once.
//!
//! Each log message `s` is applied to a shard gallery as two local steps,
//! the share's deletes at local sequence `2s` and its inserts at `2s + 1`
//! (both always written, so the position is recorded even when a share is
//! empty). The engine keeps each step's sequence in the step's own WAL
//! record and skips a step at or below its applied sequence, so after a
//! crash the replica resumes at the first message not wholly applied and
//! nothing is applied twice or skipped.

use crate::batch::LogBatch;
use crate::log::{Log, stream_name};
use crate::shard::shard_gallery;
use crate::{Error, Result};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::StreamExt;
use prost::Message;
use std::sync::Arc;
use visage_engine::{Engine, Gallery, GallerySpec};

/// The local sequence of the delete step of log message `seq`.
fn delete_step(seq: u64) -> u64 {
    seq.saturating_mul(2)
}

/// The first log message a shard gallery has not wholly applied, from its
/// applied local sequence.
fn next_message(local: u64) -> u64 {
    (local / 2 + local % 2).max(1)
}

/// The last log message wholly applied, from a shard gallery's applied
/// (or flushed) local sequence.
pub fn message_applied(local: u64) -> u64 {
    next_message(local) - 1
}

/// The shards of one gallery this node serves.
pub struct Replica {
    gallery: String,
    shards: u32,
    local: Vec<(u32, Arc<Gallery>)>,
    /// The last log message every shard here has applied, for readers
    /// waiting to read their writes.
    applied: tokio::sync::watch::Sender<u64>,
    on_delete: Option<DeleteHook>,
}

/// Called with each delete message's position and batch once applied.
pub type DeleteHook = Arc<dyn Fn(u64, &LogBatch) + Send + Sync>;

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("gallery", &self.gallery)
            .field("shards", &self.shards)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// Open (creating if missing) the local galleries of `served` shards of
    /// `gallery` (of `shards` in all) in `engine`, the node's shard data
    /// directory.
    pub fn open(
        engine: &Engine,
        gallery: &str,
        spec: &GallerySpec,
        shards: u32,
        served: &[u32],
    ) -> Result<Replica> {
        let mut local = Vec::new();
        for &k in served {
            let name = shard_gallery(gallery, k);
            let g = match engine.gallery(&name) {
                Ok(g) => g,
                Err(_) => engine.create_gallery_with(&name, spec)?,
            };
            local.push((k, g));
        }
        let mut r = Replica {
            gallery: gallery.to_owned(),
            shards,
            local,
            applied: tokio::sync::watch::channel(0).0,
            on_delete: None,
        };
        r.applied = tokio::sync::watch::channel(r.applied()).0;
        Ok(r)
    }

    /// Call `hook` after each delete message is applied (the node records
    /// erasures with it).
    pub fn on_delete(mut self, hook: DeleteHook) -> Replica {
        self.on_delete = Some(hook);
        self
    }

    /// The gallery.
    pub fn gallery(&self) -> &str {
        &self.gallery
    }

    /// The shards served here, with their local galleries.
    pub fn shards(&self) -> &[(u32, Arc<Gallery>)] {
        &self.local
    }

    /// Wait until every shard here has applied log message `seq`; `false`
    /// if `timeout` passed first.
    pub async fn wait_applied(&self, seq: u64, timeout: std::time::Duration) -> bool {
        let mut rx = self.applied.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|&a| a >= seq)).await,
            Ok(Ok(_))
        )
    }

    /// The local gallery of shard `k`, if served here.
    pub fn shard(&self, k: u32) -> Option<&Arc<Gallery>> {
        self.local.iter().find(|(s, _)| *s == k).map(|(_, g)| g)
    }

    /// The first log message not yet applied by every shard served here.
    pub fn next_seq(&self) -> u64 {
        self.local
            .iter()
            .map(|(_, g)| next_message(g.applied_seq()))
            .min()
            .unwrap_or(1)
    }

    /// The last log message every shard served here has applied.
    pub fn applied(&self) -> u64 {
        self.next_seq() - 1
    }

    /// Apply log message `seq` to every shard served here (a shard that
    /// applied it before skips it).
    pub fn apply(&self, seq: u64, batch: &LogBatch) -> Result<()> {
        if let Some(reason) = batch.problem() {
            return Err(Error::BadMessage {
                stream: stream_name(&self.gallery),
                seq,
                reason,
            });
        }
        for (k, g) in &self.local {
            let share = batch.share(*k, self.shards);
            g.delete_at(delete_step(seq), &share.delete_ids, &share.delete_subjects)?;
            g.insert_at(
                delete_step(seq) + 1,
                &share.ids,
                &share.subjects,
                &share.vectors,
            )?;
        }
        self.applied.send_replace(self.applied());
        Ok(())
    }

    /// Apply the gallery's log from [`Replica::next_seq`] on, in order,
    /// until `stop` turns true. A consumer that fails or stalls (its server
    /// died, the stream is electing a leader) is made again from the first
    /// message not applied, so a lost consumer never loses or repeats a
    /// batch. Returns an error only for what retrying cannot mend: a batch
    /// the engine refuses, a message that is not a batch, or a log trimmed
    /// past this replica's position.
    pub async fn follow(
        self: Arc<Self>,
        log: &Log,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<()> {
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            match self.clone().follow_once(log, &mut stop).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e @ (Error::Engine(_) | Error::BadMessage { .. } | Error::Trimmed { .. })) => {
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(gallery = %self.gallery, error = %e, "log consumer failed; making it again");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => {}
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                    }
                }
            }
        }
    }

    /// One consumer's life: `Ok(true)` when stopped, `Ok(false)` when it
    /// stalled behind the stream (to be made again).
    async fn follow_once(
        self: Arc<Self>,
        log: &Log,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<bool> {
        let mut stream = log.ensure_stream(&self.gallery).await?;
        let mut expected = self.next_seq();
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: expected,
                },
                ..Default::default()
            })
            .await
            .map_err(Error::nats)?;
        let mut messages = consumer.messages().await.map_err(Error::nats)?;
        loop {
            let next = tokio::select! {
                m = tokio::time::timeout(IDLE, messages.next()) => m,
                _ = stop.wait_for(|s| *s) => return Ok(true),
            };
            let msg = match next {
                // Idle: fine if the stream has nothing more, a stall if it has.
                Err(_) => {
                    let info = stream.info().await.map_err(Error::nats)?;
                    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
                    if first > expected {
                        // Trimmed past this replica, and nothing newer yet.
                        return Err(Error::Trimmed {
                            stream: stream_name(&self.gallery),
                            first,
                            needed: expected,
                        });
                    }
                    if last >= expected {
                        return Ok(false);
                    }
                    continue;
                }
                Ok(None) => return Ok(false),
                Ok(Some(m)) => m.map_err(Error::nats)?,
            };
            let seq = msg.info().map_err(Error::nats)?.stream_sequence;
            if seq < expected {
                continue;
            }
            if seq > expected {
                // Messages below `seq` are gone from the stream (trimmed):
                // this replica needs a copy of a peer's shards first.
                return Err(Error::Trimmed {
                    stream: stream_name(&self.gallery),
                    first: seq,
                    needed: expected,
                });
            }
            let batch = LogBatch::decode(msg.payload.as_ref()).map_err(|e| Error::BadMessage {
                stream: stream_name(&self.gallery),
                seq,
                reason: e.to_string(),
            })?;
            let me = self.clone();
            let batch = tokio::task::spawn_blocking(move || me.apply(seq, &batch).map(|()| batch))
                .await
                .map_err(|e| Error::Nats(format!("apply task: {e}")))??;
            if let Some(hook) = &self.on_delete
                && !(batch.delete_ids.is_empty() && batch.delete_subjects.is_empty())
            {
                hook(seq, &batch);
            }
            expected = seq + 1;
        }
    }
}

/// How long a consumer may deliver nothing before the stream is asked
/// whether it has more (a consumer whose server died delivers nothing).
const IDLE: std::time::Duration = std::time::Duration::from_secs(2);
/// Pause before making a failed consumer again.
const RETRY: std::time::Duration = std::time::Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_resume_at_the_first_message_not_wholly_applied() {
        assert_eq!(next_message(0), 1);
        // Message 5: delete step 10, insert step 11.
        assert_eq!(delete_step(5), 10);
        assert_eq!(next_message(10), 5, "deletes done, inserts not: redo 5");
        assert_eq!(next_message(11), 6, "5 done");
        assert_eq!(message_applied(0), 0);
        assert_eq!(message_applied(10), 4);
        assert_eq!(message_applied(11), 5);
    }
}

//! A gallery's replicated write-ahead log: one JetStream stream per gallery
//! (file storage, replicated on up to three servers), one message per
//! batch. A publish returns when JetStream has stored the message on a
//! quorum of its servers, with the stream sequence that orders it among all
//! of the gallery's writes. The message id makes a retried publish (after a
//! timeout or a leader change) land once.
//!
//! Erasure ([`Log::erase`]): a deleted message's bytes stay in two places
//! on each member (nats-server 2.9): the stream's block file, which a
//! delete with `no_erase: false` overwrites, and the stream's raft log
//! (`jetstream/$SYS/_js_/S-R3F-*/msgs/*.blk`), which goes only when the
//! member snapshots the stream and compacts that log: on a 2-3 minute timer,
//! or at once past 8 MiB of log ([`Log::compact_raft`]). A member that was
//! down catches up from a snapshot, which deletes without overwriting, so it
//! must be rebuilt ([`Log::resync_replica`]). A purge to just past a
//! message leaves its bytes in the block when later messages share the
//! block, and never touches the raft log; no other file (`*.idx`,
//! `meta.inf`, `peers.idx`, `tav.idx`, raft snapshots) held them.

use crate::batch::LogBatch;
use crate::{Error, Result};
use async_nats::jetstream::{self, stream};
use prost::Message;
use std::time::{Duration, Instant};

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

    /// Remove the messages of `gallery`'s log up to `upto` (inclusive), at
    /// most `max` of them (the oldest), each securely deleted (its bytes
    /// overwritten in every member's stream files; a purge would leave them
    /// in a block that later messages share). Returns how many went.
    pub async fn trim(&self, gallery: &str, upto: u64, max: u64) -> Result<u64> {
        let (first, last) = self.bounds(gallery).await?;
        let end = upto
            .min(last)
            .min(first.saturating_add(max.saturating_sub(1)));
        if first == 0 || end < first {
            return Ok(0);
        }
        let seqs: Vec<u64> = (first..=end).collect();
        self.erase_messages(gallery, &seqs).await?;
        Ok(seqs.len() as u64)
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
    ///
    /// A JetStream cluster that has just started (or just lost its meta
    /// leader) answers nothing, or that it has not the peers, until its
    /// members have elected one: such answers are retried for up to
    /// [`STREAM_READY_WAIT`] (creating is idempotent); any other is returned.
    pub async fn ensure_stream(&self, gallery: &str) -> Result<stream::Stream> {
        use async_nats::jetstream::context::CreateStreamErrorKind as Kind;
        let deadline = tokio::time::Instant::now() + STREAM_READY_WAIT;
        loop {
            let r = self
                .js
                .get_or_create_stream(stream::Config {
                    name: stream_name(gallery),
                    subjects: vec![subject(gallery)],
                    num_replicas: self.replicas,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await;
            let e = match r {
                Ok(s) => return Ok(s),
                Err(e) => e,
            };
            let transient = match e.kind() {
                Kind::TimedOut | Kind::JetStreamUnavailable => true,
                Kind::JetStream(j) => {
                    let text = j.to_string();
                    text.contains("no suitable peers") || text.contains("insufficient resources")
                }
                _ => false,
            };
            if !transient || tokio::time::Instant::now() >= deadline {
                return Err(Error::nats(e));
            }
            tracing::debug!(gallery, error = %e, "the JetStream cluster is not ready; retrying");
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
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

/// How long [`Log::ensure_stream`] waits for a JetStream cluster to be ready.
pub const STREAM_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// JetStream's error codes for a message that is not there (already deleted
/// or erased, or never stored): "no message found" (10057, with that
/// description) and "sequence not found" (10043).
fn already_gone(err: &serde_json::Value) -> bool {
    let code = err.get("err_code").and_then(serde_json::Value::as_u64);
    let description = err
        .get("description")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    code == Some(10043) || (code == Some(10057) && description.contains("no message found"))
}

impl Log {
    /// Securely delete the messages `seqs` of `gallery`'s stream: each is
    /// deleted through the stream's raft group with `no_erase: false`, so
    /// every member that applies the delete overwrites the message's record
    /// in its stream files with random bytes. A message already gone counts
    /// as erased (a retried erasure succeeds).
    ///
    /// This does not reach the copies of the messages in the members' raft
    /// logs, see [`Log::compact_raft`]. The whole message goes, with any
    /// other subjects' rows it carried: erase only messages every replica
    /// has applied (and that no replica will need to replay).
    pub async fn erase_messages(&self, gallery: &str, seqs: &[u64]) -> Result<()> {
        self.delete_messages(gallery, seqs, false).await
    }

    /// Delete the messages `seqs` of `gallery`'s stream, overwriting their
    /// stored bytes unless `no_erase`; a message already gone counts as
    /// deleted.
    async fn delete_messages(&self, gallery: &str, seqs: &[u64], no_erase: bool) -> Result<()> {
        let api = format!("STREAM.MSG.DELETE.{}", stream_name(gallery));
        for &seq in seqs {
            let request = serde_json::json!({ "seq": seq, "no_erase": no_erase });
            let reply: serde_json::Value = self
                .js
                .request(api.clone(), &request)
                .await
                .map_err(|e| Error::Nats(format!("delete message {seq}: {e}")))?;
            if let Some(err) = reply.get("error") {
                if !already_gone(err) {
                    return Err(Error::Nats(format!("delete message {seq}: {err}")));
                }
            } else if reply.get("success").and_then(serde_json::Value::as_bool) != Some(true) {
                return Err(Error::Nats(format!("delete message {seq}: {reply}")));
            }
        }
        Ok(())
    }
}

/// JetStream 2.9 snapshots a stream's state on each member, and drops the
/// member's raft log entries up to the snapshot, once the entries applied
/// since the member's last snapshot hold more than 8 MiB (`compactSizeMin`
/// in nats-server's `monitorStream`); otherwise only on a timer of two to
/// three minutes. [`Log::compact_raft`] publishes this much padding, with a
/// margin, to trigger that compaction at once.
const RAFT_COMPACT_BYTES: usize = 8 * 1024 * 1024 + 1024 * 1024;

/// The size of one padding message (below the 1 MiB `max_payload`).
const PAD_MESSAGE_BYTES: usize = 512 * 1024;

/// The protobuf field number of the padding: not a field of [`LogBatch`], so
/// a padding message decodes as an empty batch, which replicas apply as a
/// no-op.
const PAD_FIELD: u32 = 15;

/// A padding message: field [`PAD_FIELD`] (length-delimited) of `len` zero
/// bytes.
fn pad_message(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    prost::encoding::encode_key(
        PAD_FIELD,
        prost::encoding::WireType::LengthDelimited,
        &mut out,
    );
    prost::encoding::encode_varint(len as u64, &mut out);
    out.resize(out.len() + len, 0);
    out
}

impl Log {
    /// Make every running member of `gallery`'s stream snapshot its state
    /// and drop its raft log up to the snapshot, which removes from its
    /// files the raft log's copies of messages deleted earlier: publish
    /// padding messages (empty batches to a replica) past JetStream's
    /// compaction threshold, then delete them. Each member compacts when it
    /// applies the padding, so on return the leader has, and the other
    /// members follow as they apply it (measured: every running member's files
    /// were clean 0.3 s after the call began). A member that is down keeps its raft log until it restarts
    /// and catches up. A member that is sending a catch-up to a peer at
    /// that moment cannot snapshot; it retries at each entry it applies
    /// after, and its 2-3 minute timer remains.
    pub async fn compact_raft(&self, gallery: &str) -> Result<()> {
        let pad = bytes::Bytes::from(pad_message(PAD_MESSAGE_BYTES));
        let mut seqs = Vec::new();
        for _ in 0..RAFT_COMPACT_BYTES.div_ceil(PAD_MESSAGE_BYTES) {
            let ack = self
                .js
                .publish(subject(gallery), pad.clone())
                .await
                .map_err(Error::nats)?
                .await
                .map_err(Error::nats)?;
            seqs.push(ack.sequence);
        }
        self.delete_messages(gallery, &seqs, true).await
    }
}

/// How long [`Log::erase`] waits for every member to apply the erasure
/// before it names the ones that did not.
const CATCH_UP: Duration = Duration::from_secs(10);

/// How long [`Log::resync_replica`] waits for each change of the stream's
/// members.
const RESYNC: Duration = Duration::from_secs(60);

/// Between two looks at the stream's state.
const POLL: Duration = Duration::from_millis(100);

impl Log {
    /// Erase the messages `seqs` of `gallery`'s stream from every member's
    /// files: securely delete them ([`Log::erase_messages`]), make the
    /// members drop their raft logs' copies ([`Log::compact_raft`]), and
    /// wait (up to 10 s) for every member to be current. Returns the
    /// servers that were not (down or lagging): they may still hold the
    /// bytes, and a member that comes back after its peers compacted their
    /// raft logs catches up from a snapshot, which deletes the messages
    /// from its stream files without overwriting them (nats-server 2.9).
    /// Each of them needs [`Log::resync_replica`] once it is back. Same
    /// precondition as [`Log::erase_messages`].
    pub async fn erase(&self, gallery: &str, seqs: &[u64]) -> Result<Vec<String>> {
        self.erase_messages(gallery, seqs).await?;
        self.compact_raft(gallery).await?;
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let behind = self.members_behind(gallery).await?;
            if behind.is_empty() || Instant::now() >= deadline {
                return Ok(behind);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The stream's servers (by name) and those of them that are not
    /// current (offline, or behind the leader).
    async fn members(&self, gallery: &str) -> Result<(Vec<String>, Vec<String>)> {
        let mut stream = self
            .js
            .get_stream(stream_name(gallery))
            .await
            .map_err(Error::nats)?;
        let info = stream.info().await.map_err(Error::nats)?;
        let cluster = info.cluster.clone().unwrap_or_default();
        let mut all: Vec<String> = cluster.leader.clone().into_iter().collect();
        let mut behind = Vec::new();
        for peer in &cluster.replicas {
            all.push(peer.name.clone());
            if peer.offline || !peer.current || peer.lag.unwrap_or(0) > 0 {
                behind.push(peer.name.clone());
            }
        }
        Ok((all, behind))
    }

    /// The messages of `gallery`'s log up to `upto` (inclusive) that carry
    /// a row of a subject whose hash is in `subject_hashes` or of an id in
    /// `ids`, or delete one of them (so the names go too): the messages an
    /// erasure removes.
    pub async fn messages_carrying(
        &self,
        gallery: &str,
        upto: u64,
        subject_hashes: &[String],
        ids: &[u64],
    ) -> Result<Vec<u64>> {
        use prost::Message;
        let hashes: std::collections::HashSet<&str> =
            subject_hashes.iter().map(String::as_str).collect();
        let ids: std::collections::HashSet<u64> = ids.iter().copied().collect();
        let (first, _) = self.bounds(gallery).await?;
        let stream = self
            .js
            .get_stream(stream_name(gallery))
            .await
            .map_err(Error::nats)?;
        let mut out = Vec::new();
        for seq in first.max(1)..=upto {
            let msg = match stream.get_raw_message(seq).await {
                Ok(m) => m,
                // Deleted or erased already.
                Err(e) if e.to_string().contains("no message found") => continue,
                Err(e) => return Err(Error::Nats(format!("read message {seq}: {e}"))),
            };
            let Ok(b) = LogBatch::decode(msg.payload.as_ref()) else {
                continue;
            };
            let hit = b
                .subjects
                .iter()
                .chain(&b.delete_subjects)
                .any(|s| hashes.contains(crate::node::subject_hash(s).as_str()))
                || b.ids.iter().chain(&b.delete_ids).any(|i| ids.contains(i));
            if hit {
                out.push(seq);
            }
        }
        Ok(out)
    }

    /// The stream's servers that are not current.
    pub async fn members_behind(&self, gallery: &str) -> Result<Vec<String>> {
        Ok(self.members(gallery).await?.1)
    }

    /// Rebuild `server`'s copy of `gallery`'s stream from the leader's: if
    /// `server` leads the stream, it steps down first; then the stream is
    /// scaled down to its leader alone (the other members delete their
    /// stream and raft files) and back up (they copy the messages the
    /// stream still holds). For a server that missed an erasure
    /// ([`Log::erase`]). The stream keeps one copy while this runs (seconds
    /// for a small stream; longer for a large one), and its other followers
    /// are rebuilt too. (Removing only `server` is refused by nats-server
    /// 2.9 when no other server can take its place: "peer remap failed".)
    pub async fn resync_replica(&self, gallery: &str, server: &str) -> Result<()> {
        let name = stream_name(gallery);
        let deadline = Instant::now() + RESYNC;
        loop {
            let leader = self.leader(gallery).await;
            match leader.as_deref() {
                Some(l) if l != server => break,
                Some(_) => {
                    let _: serde_json::Value = self
                        .js
                        .request(
                            format!("STREAM.LEADER.STEPDOWN.{name}"),
                            &serde_json::json!({}),
                        )
                        .await
                        .map_err(|e| Error::Nats(format!("step down {name}: {e}")))?;
                }
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::Nats(format!("{server} still leads {name}")));
            }
            tokio::time::sleep(POLL).await;
        }
        let stream = self.js.get_stream(&name).await.map_err(Error::nats)?;
        let mut config = stream.cached_info().config.clone();
        config.num_replicas = 1;
        self.js.update_stream(&config).await.map_err(Error::nats)?;
        self.wait_members(gallery, |all, _| all.len() == 1).await?;
        config.num_replicas = self.replicas;
        self.js.update_stream(&config).await.map_err(Error::nats)?;
        let replicas = self.replicas;
        self.wait_members(gallery, |all, behind| {
            all.len() == replicas && behind.is_empty()
        })
        .await
    }

    /// The stream's leader, if it has one and answers.
    async fn leader(&self, gallery: &str) -> Option<String> {
        let mut stream = self.js.get_stream(stream_name(gallery)).await.ok()?;
        stream.info().await.ok()?.cluster.clone()?.leader
    }

    /// Wait (up to a minute) until `ok(members, behind)`.
    async fn wait_members(
        &self,
        gallery: &str,
        ok: impl Fn(&[String], &[String]) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + RESYNC;
        loop {
            // The stream may be briefly leaderless while its members change.
            if let Ok((all, behind)) = self.members(gallery).await
                && ok(&all, &behind)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Nats(format!(
                    "the members of {} did not settle in {RESYNC:?}",
                    stream_name(gallery)
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

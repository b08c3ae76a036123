//! The cluster's catalog in etcd: galleries (their spec and shard count)
//! and the live nodes (each on a lease it keeps alive, so a dead node's key
//! goes with its lease).
//!
//! Keys: `/visage/galleries/NAME` → [`GalleryEntry`] (JSON);
//! `/visage/nodes/ID` → [`NodeEntry`] (JSON), on the node's lease;
//! `/visage/progress/NAME/ID` → [`Progress`] (JSON), on the node's lease:
//! the log positions node ID's replicas of gallery NAME have applied and
//! flushed; `/visage/ids/NAME` → the next id the cluster assigns in NAME;
//! `/visage/erasures/NAME/SEQ` → [`Erasure`] (JSON): a delete at log
//! position SEQ whose people must leave every replica and the log;
//! `/visage/heads/NAME` → the gallery's scoring head (the bytes of a `HEAD`
//! file), trained across its shards; every node installs it.
//!
//! The etcd client keeps sending a share of requests to a member that is
//! down (etcd-client issue #39): every call here is retried on errors
//! until [`Catalog::deadline`] has passed.

use crate::{Error, Result};
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::{Duration, Instant};

const GALLERIES: &str = "/visage/galleries/";
const NODES: &str = "/visage/nodes/";
const PROGRESS: &str = "/visage/progress/";
const IDS: &str = "/visage/ids/";
const ERASURES: &str = "/visage/erasures/";
const HEADS: &str = "/visage/heads/";

/// A gallery as the catalog holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GalleryEntry {
    /// Values a vector.
    pub dim: usize,
    /// The model recorded at creation (empty: none).
    pub model: String,
    /// Whether vectors are normalised.
    pub normalize: bool,
    /// Shards (subjects are split among them by `shard::shard_of`).
    pub shards: u32,
    /// The nodes that hold each shard (`replicas[k]`: node ids of shard
    /// `k`), chosen at creation.
    #[serde(default)]
    pub replicas: Vec<Vec<String>>,
}

impl GalleryEntry {
    /// The nodes assigned shard `k` (none for a shard out of range).
    pub fn nodes_of(&self, k: u32) -> &[String] {
        self.replicas.get(k as usize).map_or(&[], Vec::as_slice)
    }

    /// The shards assigned to node `id`, ascending.
    pub fn shards_of(&self, id: &str) -> Vec<u32> {
        (0..self.shards)
            .filter(|&k| self.nodes_of(k).iter().any(|n| n == id))
            .collect()
    }
}

/// Spread `shards` shards over `nodes` (sorted ids), `replicas` copies
/// each: shard `k` goes to the `replicas` nodes from position `k` on,
/// round the ring, so every node holds about `shards × replicas / nodes`
/// shards and no shard two copies on one node.
pub fn assign(nodes: &[String], shards: u32, replicas: usize) -> Vec<Vec<String>> {
    let n = nodes.len();
    (0..shards as usize)
        .map(|k| {
            (0..replicas.min(n))
                .map(|j| nodes[(k + j) % n].clone())
                .collect()
        })
        .collect()
}

/// What a node's replicas of one gallery have reached in its log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Per shard served, ascending.
    pub shards: Vec<ShardProgress>,
}

/// One replica's positions in its gallery's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardProgress {
    /// The shard.
    pub shard: u32,
    /// The last log message applied.
    pub applied: u64,
    /// The last log message held by synced segments.
    pub flushed: u64,
    /// The last log message up to which the replica's files hold no row
    /// deleted or replaced by then (flushed, and compacted since).
    pub clean: u64,
    /// Subjects in the replica.
    #[serde(default)]
    pub subjects: u64,
    /// The catalog revision of the gallery's head the replica has
    /// installed (0: none).
    #[serde(default)]
    pub head: i64,
}

impl Progress {
    /// Shard `k`'s positions, if reported.
    pub fn of(&self, k: u32) -> Option<&ShardProgress> {
        self.shards.iter().find(|s| s.shard == k)
    }
}

/// A delete whose people must leave every replica's files and the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erasure {
    /// The delete's log position.
    pub seq: u64,
    /// SHA-256 (hex) of each deleted subject (not the names), until done.
    pub subject_hashes: Vec<String>,
    /// The deleted ids, until done.
    pub ids: Vec<u64>,
    /// Subjects and ids deleted (kept when done).
    pub subjects_count: u64,
    /// See `subjects_count`.
    pub ids_count: u64,
    /// Log messages erased.
    pub messages_erased: u64,
    /// Where it stands.
    pub state: ErasureState,
    /// Log members (NATS servers) that were down or behind when the
    /// messages were erased: their files are rebuilt once they are back.
    pub lagging: Vec<String>,
}

/// Where an erasure stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErasureState {
    /// Waiting for every replica to apply the delete, flush and compact.
    #[default]
    Replicas,
    /// The replicas are clean; the log messages are erased, and log members
    /// that missed it wait to be rebuilt.
    LogMembers,
    /// No replica and no log member holds the rows.
    Done,
}

/// A live node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// The address other nodes reach its gRPC at.
    pub advertise: String,
}

/// The catalog client.
#[derive(Clone)]
pub struct Catalog {
    client: Client,
    deadline: Duration,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

fn etcd(e: etcd_client::Error) -> Error {
    Error::Etcd(e.to_string())
}

impl Catalog {
    /// Connect to etcd `endpoints`, with a user and password when etcd's
    /// authentication is on.
    pub async fn connect(endpoints: &[String], user: Option<(&str, &str)>) -> Result<Catalog> {
        let mut opts = etcd_client::ConnectOptions::new()
            // A call sent to a dead member (etcd-client issue #39) fails
            // after this and is retried; loopback or LAN answers take ms.
            .with_timeout(Duration::from_millis(1500))
            .with_connect_timeout(Duration::from_millis(1500));
        if let Some((name, password)) = user {
            opts = opts.with_user(name, password);
        }
        let client = Client::connect(endpoints, Some(opts)).await.map_err(etcd)?;
        Ok(Catalog {
            client,
            deadline: Duration::from_secs(20),
        })
    }

    /// How long a call retries before it gives up (default 20 s: an etcd
    /// leader election takes about 1 s, a dead member's share of requests
    /// times out in 1.5 s).
    pub fn deadline(mut self, d: Duration) -> Catalog {
        self.deadline = d;
        self
    }

    async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let until = Instant::now() + self.deadline;
        loop {
            match f(self.client.clone()).await {
                Ok(x) => return Ok(x),
                Err(e) if Instant::now() < until => {
                    tracing::debug!(error = %e, "etcd {what} failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(Error::Etcd(format!("{what}: {e}"))),
            }
        }
    }

    /// Record a new gallery; `false` if one of that name exists (nothing changed).
    pub async fn create_gallery(&self, name: &str, entry: &GalleryEntry) -> Result<bool> {
        let key = format!("{GALLERIES}{name}");
        let value = serde_json::to_vec(entry).map_err(|e| Error::Etcd(e.to_string()))?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let r = self
            .retry("create gallery", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(r.succeeded())
    }

    /// A gallery's entry, if it exists.
    pub async fn gallery(&self, name: &str) -> Result<Option<GalleryEntry>> {
        let key = format!("{GALLERIES}{name}");
        let r = self
            .retry("get gallery", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        r.kvs()
            .first()
            .map(|kv| {
                serde_json::from_slice(kv.value())
                    .map_err(|e| Error::Etcd(format!("{key}: not a gallery entry: {e}")))
            })
            .transpose()
    }

    /// Every gallery, by name.
    pub async fn galleries(&self) -> Result<Vec<(String, GalleryEntry)>> {
        self.list(GALLERIES).await
    }

    /// Remove a gallery from the catalog, with its id counter and its
    /// nodes' progress; `false` if it was not there.
    pub async fn delete_gallery(&self, name: &str) -> Result<bool> {
        let key = format!("{GALLERIES}{name}");
        let progress = format!("{PROGRESS}{name}/");
        let ids = format!("{IDS}{name}");
        let erasures = format!("{ERASURES}{name}/");
        let head = format!("{HEADS}{name}");
        let r = self
            .retry("delete gallery", |mut c| {
                let txn = Txn::new().and_then([
                    TxnOp::delete(key.clone(), None),
                    TxnOp::delete(
                        progress.clone(),
                        Some(etcd_client::DeleteOptions::new().with_prefix()),
                    ),
                    TxnOp::delete(ids.clone(), None),
                    TxnOp::delete(head.clone(), None),
                    TxnOp::delete(
                        erasures.clone(),
                        Some(etcd_client::DeleteOptions::new().with_prefix()),
                    ),
                ]);
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(r.op_responses().first().is_some_and(
            |op| matches!(op, etcd_client::TxnOpResponse::Delete(d) if d.deleted() > 0),
        ))
    }

    /// Reserve `n` ids of gallery `name` for this node: returns the first of
    /// `n` consecutive ids no other reservation gets (ids start at 1).
    pub async fn reserve_ids(&self, name: &str, n: u64) -> Result<u64> {
        let key = format!("{IDS}{name}");
        let until = Instant::now() + self.deadline;
        loop {
            let got = self
                .retry("read id counter", |mut c| {
                    let key = key.clone();
                    async move { c.get(key, None).await }
                })
                .await?;
            let (first, revision) = match got.kvs().first() {
                Some(kv) => {
                    let text = String::from_utf8_lossy(kv.value()).into_owned();
                    let next = text
                        .parse::<u64>()
                        .map_err(|e| Error::Etcd(format!("{key}: {text:?}: {e}")))?;
                    (next, kv.mod_revision())
                }
                None => (1, 0),
            };
            let next = first
                .checked_add(n)
                .ok_or_else(|| Error::Etcd(format!("{key}: ids exhausted")))?;
            let cmp = if revision == 0 {
                Compare::create_revision(key.clone(), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(key.clone(), CompareOp::Equal, revision)
            };
            let txn =
                Txn::new()
                    .when([cmp])
                    .and_then([TxnOp::put(key.clone(), next.to_string(), None)]);
            let r = self
                .retry("reserve ids", |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await?;
            if r.succeeded() {
                return Ok(first);
            }
            if Instant::now() > until {
                return Err(Error::Etcd(format!("{key}: reservation kept losing races")));
            }
        }
    }

    /// Record node `id`'s progress in gallery `name`, on its lease.
    pub async fn put_progress(
        &self,
        name: &str,
        id: &str,
        progress: &Progress,
        lease: i64,
    ) -> Result<()> {
        let key = format!("{PROGRESS}{name}/{id}");
        let value = serde_json::to_vec(progress).map_err(|e| Error::Etcd(e.to_string()))?;
        self.retry("put progress", |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await?;
        Ok(())
    }

    /// Record an erasure unless one at its position is recorded (every
    /// node applying the delete records it: the first wins).
    pub async fn add_erasure(&self, name: &str, e: &Erasure) -> Result<()> {
        let key = format!("{ERASURES}{name}/{:020}", e.seq);
        let value = serde_json::to_vec(e).map_err(|x| Error::Etcd(x.to_string()))?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        self.retry("add erasure", |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await?;
        Ok(())
    }

    /// Replace an erasure's record (the node that trims does).
    pub async fn put_erasure(&self, name: &str, e: &Erasure) -> Result<()> {
        let key = format!("{ERASURES}{name}/{:020}", e.seq);
        let value = serde_json::to_vec(e).map_err(|x| Error::Etcd(x.to_string()))?;
        self.retry("put erasure", |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, None).await }
        })
        .await?;
        Ok(())
    }

    /// Store gallery `name`'s head (the bytes of a `HEAD` file); returns its
    /// revision, which grows with each head stored.
    pub async fn put_head(&self, name: &str, head: &[u8]) -> Result<i64> {
        let key = format!("{HEADS}{name}");
        let r = self
            .retry("put head", |mut c| {
                let (key, value) = (key.clone(), head.to_vec());
                async move { c.put(key, value, None).await }
            })
            .await?;
        Ok(r.header().map_or(0, etcd_client::ResponseHeader::revision))
    }

    /// Gallery `name`'s head and its revision, if one was stored.
    pub async fn head(&self, name: &str) -> Result<Option<(i64, Vec<u8>)>> {
        let key = format!("{HEADS}{name}");
        let r = self
            .retry("get head", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(r.kvs()
            .first()
            .map(|kv| (kv.mod_revision(), kv.value().to_vec())))
    }

    /// Gallery `name`'s erasures, oldest first.
    pub async fn erasures(&self, name: &str) -> Result<Vec<Erasure>> {
        Ok(self
            .list::<Erasure>(&format!("{ERASURES}{name}/"))
            .await?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// The progress of every live node in gallery `name`, by node id.
    pub async fn progress(&self, name: &str) -> Result<Vec<(String, Progress)>> {
        self.list(&format!("{PROGRESS}{name}/")).await
    }

    /// Every live node, by id.
    pub async fn nodes(&self) -> Result<Vec<(String, NodeEntry)>> {
        self.list(NODES).await
    }

    async fn list<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>> {
        let r = self
            .retry("list", |mut c| async move {
                c.get(prefix, Some(GetOptions::new().with_prefix())).await
            })
            .await?;
        r.kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let entry = serde_json::from_slice(kv.value())
                    .map_err(|e| Error::Etcd(format!("{key}: {e}")))?;
                Ok((key[prefix.len()..].to_owned(), entry))
            })
            .collect()
    }

    /// Register node `id` on a lease of `ttl` kept alive in the background
    /// until the returned [`Registration`] is dropped (or the process dies):
    /// then the key goes when the lease expires.
    pub async fn register(
        &self,
        id: &str,
        entry: &NodeEntry,
        ttl: Duration,
    ) -> Result<Registration> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = self
            .retry("lease grant", |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?
            .id();
        let key = format!("{NODES}{id}");
        let value = serde_json::to_vec(entry).map_err(|e| Error::Etcd(e.to_string()))?;
        self.retry("register node", |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await?;
        let client = self.client.clone();
        let every = ttl / 3;
        let task = tokio::spawn(async move {
            loop {
                // A fresh keeper each round: a member that died takes its stream with it.
                let mut c = client.clone();
                if let Ok((mut keeper, mut stream)) = c.lease_keep_alive(lease).await {
                    loop {
                        // An answer that does not come (its member died) ends
                        // this keeper; a new one goes to another member.
                        let answered = keeper.keep_alive().await.is_ok()
                            && matches!(
                                tokio::time::timeout(every, stream.message()).await,
                                Ok(Ok(Some(_)))
                            );
                        if !answered {
                            break;
                        }
                        tokio::time::sleep(every).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(Registration { task, lease })
    }
}

/// A node's registration: its lease is kept alive while this lives.
#[derive(Debug)]
pub struct Registration {
    task: tokio::task::JoinHandle<()>,
    lease: i64,
}

impl Registration {
    /// The lease id.
    pub fn lease(&self) -> i64 {
        self.lease
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! A cluster node: registered in the catalog on a lease, it keeps a view
//! of the live nodes and of the galleries, and for each gallery with shards
//! assigned to it runs a [`Replica`] that follows the gallery's log. It
//! reports each replica's progress (applied and flushed log positions) in
//! the catalog, and hands out the cluster's ids.
//!
//! **Trimming.** The live node of smallest id trims each gallery's log below
//! the smallest position that every reporting replica has flushed into its
//! segments (each shard needs one reporting replica at least), so the log
//! holds what some live replica might still need. Trimmed messages are
//! securely deleted (overwritten in every member's stream files), not
//! purged, so no erased person's rows linger in a shared block. A node that was down
//! meanwhile finds its position trimmed ([`Error::Trimmed`]) and starts the
//! shards concerned again from a live peer's copy ([`ShardSource`]: a
//! consistent copy as of a log position, the files of a backup of the peer's
//! shard), then follows the log from the copy's position.
//!
//! The view is refreshed from etcd every [`SYNC`] (polling rather than a
//! watch: a poll also survives the loss of the etcd member it was talking
//! to, and the catalog changes rarely).

use crate::batch::LogBatch;
use crate::catalog::{
    Catalog, Erasure, ErasureState, GalleryEntry, NodeEntry, Progress, Registration, ShardProgress,
};
use crate::log::Log;
use crate::replica::{Replica, message_applied};
use crate::shard::shard_gallery;
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use visage_engine::{Engine, GallerySpec};

/// How often a node refreshes its view of the catalog and reports progress.
pub const SYNC: Duration = Duration::from_millis(500);

/// How a node joins the cluster.
#[derive(Clone)]
pub struct NodeConfig {
    /// The node's id (unique in the cluster, stable across restarts: its
    /// shard assignments are by id).
    pub id: String,
    /// The address other nodes reach its gRPC at.
    pub advertise: String,
    /// NATS servers, comma-separated (`nats://HOST:PORT,…`).
    pub nats: String,
    /// The NATS token, when the servers require one.
    pub nats_token: Option<String>,
    /// etcd endpoints.
    pub etcd: Vec<String>,
    /// etcd user and password, when etcd's authentication is on.
    pub etcd_user: Option<(String, String)>,
    /// Copies of each gallery's log (JetStream replicas: 3 survives the
    /// loss of any one server).
    pub log_replicas: usize,
    /// The node's lease: its catalog entry goes this long after it dies.
    pub lease: Duration,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("NodeConfig")
            .field("id", &self.id)
            .field("advertise", &self.advertise)
            .field("nats", &self.nats)
            .field("etcd", &self.etcd)
            .field("log_replicas", &self.log_replicas)
            .finish_non_exhaustive()
    }
}

/// How a node fetches a live peer's copy of a shard: the files of a backup
/// of the peer's shard gallery, written under this node's backup root as
/// backup `into` (and the erasure-log mirror beside it). The server does it
/// over gRPC (`CopyShard`).
pub trait ShardSource: Send + Sync {
    /// Fetch shard `shard` of `gallery` from the node at `addr`.
    fn fetch(
        &self,
        addr: String,
        gallery: String,
        shard: u32,
        into: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;
}

/// A gallery as this node sees it.
#[derive(Debug, Clone)]
pub struct GalleryView {
    /// The gallery's name.
    pub name: String,
    /// The catalog's entry.
    pub entry: GalleryEntry,
    /// The shards this node serves, when it serves any and its replica is
    /// healthy.
    pub replica: Option<Arc<Replica>>,
    /// Why this node's replica stopped, if it did.
    pub failure: Option<String>,
    /// Subjects in the whole gallery, as its replicas last reported them.
    pub subjects: u64,
    /// The catalog revision of the gallery's head (0: none).
    pub head_rev: i64,
}

struct Running {
    view: GalleryView,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, NodeEntry>,
    galleries: HashMap<String, Running>,
}

/// A running cluster node.
pub struct Node {
    cfg: NodeConfig,
    catalog: Catalog,
    log: Log,
    engine: Arc<Engine>,
    state: RwLock<State>,
    ids: Mutex<HashMap<String, (u64, u64)>>,
    registration: Registration,
    stop: watch::Sender<bool>,
    source: std::sync::OnceLock<Arc<dyn ShardSource>>,
    trimmed: Mutex<HashMap<String, u64>>,
    clean: Mutex<HashMap<(String, u32), u64>>,
    heads: Mutex<HashMap<String, i64>>,
    resynced: Mutex<std::time::Instant>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.cfg.id)
            .finish_non_exhaustive()
    }
}

/// Messages a trim removes at most in one round (each is one request).
const TRIM_BATCH: u64 = 2000;

/// Ids a node reserves at a time from the catalog's counter.
const ID_BLOCK: u64 = 1 << 16;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Node {
    /// Connect to NATS and etcd, register on a lease, open the replicas of
    /// the shards assigned to this node in `engine` (the node's data
    /// directory) and start following their logs. Errors say which of
    /// NATS or etcd refused and why (wrong credentials included).
    pub async fn start(cfg: NodeConfig, engine: Arc<Engine>) -> Result<Arc<Node>> {
        let user = cfg
            .etcd_user
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()));
        let catalog = Catalog::connect(&cfg.etcd, user).await?;
        // A first call, so wrong credentials or a dead cluster show now.
        catalog.nodes().await?;
        let log = Log::connect(&cfg.nats, cfg.nats_token.as_deref(), cfg.log_replicas).await?;
        log.check().await?;
        let registration = catalog
            .register(
                &cfg.id,
                &NodeEntry {
                    advertise: cfg.advertise.clone(),
                },
                cfg.lease,
            )
            .await?;
        let node = Arc::new(Node {
            cfg,
            catalog,
            log,
            engine,
            state: RwLock::new(State::default()),
            ids: Mutex::new(HashMap::new()),
            registration,
            stop: watch::channel(false).0,
            source: std::sync::OnceLock::new(),
            trimmed: Mutex::new(HashMap::new()),
            clean: Mutex::new(HashMap::new()),
            heads: Mutex::new(HashMap::new()),
            resynced: Mutex::new(std::time::Instant::now()),
        });
        node.sync().await?;
        let me = node.clone();
        let mut stop = node.stop.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(SYNC) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                if let Err(e) = me.sync().await {
                    tracing::warn!(error = %e, "cluster sync failed; retrying");
                }
            }
        });
        Ok(node)
    }

    /// Where shards come from when this node's log position was trimmed
    /// (set once, by the server, before it serves).
    pub fn set_shard_source(&self, source: Arc<dyn ShardSource>) {
        let _ = self.source.set(source);
    }

    /// The catalog revision of gallery `name`'s head installed in this
    /// node's replicas (0: none).
    pub fn head_installed(&self, name: &str) -> i64 {
        lock(&self.heads).get(name).copied().unwrap_or(0)
    }

    /// The node's id.
    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The node's engine (its shard galleries).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The live nodes as last seen, by id.
    pub fn nodes(&self) -> BTreeMap<String, NodeEntry> {
        self.read().nodes.clone()
    }

    /// A gallery as last seen (`None`: not in the catalog).
    pub fn gallery(&self, name: &str) -> Option<GalleryView> {
        self.read().galleries.get(name).map(|r| r.view.clone())
    }

    /// Every gallery as last seen, by name.
    pub fn galleries(&self) -> BTreeMap<String, GalleryView> {
        self.read()
            .galleries
            .iter()
            .map(|(k, r)| (k.clone(), r.view.clone()))
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `n` fresh ids of gallery `name`, unique in the cluster.
    pub async fn assign_ids(&self, name: &str, n: u64) -> Result<Vec<u64>> {
        let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        while (out.len() as u64) < n {
            let taken = {
                let mut ids = lock(&self.ids);
                let (next, end) = ids.entry(name.to_owned()).or_insert((0, 0));
                let take = (n - out.len() as u64).min(*end - *next);
                out.extend(*next..*next + take);
                *next += take;
                take
            };
            if taken == 0 {
                let want = ID_BLOCK.max(n - out.len() as u64);
                let first = self.catalog.reserve_ids(name, want).await?;
                lock(&self.ids).insert(name.to_owned(), (first, first + want));
            }
        }
        Ok(out)
    }

    /// Refresh the view from the catalog: live nodes, galleries (start the
    /// replicas of new ones assigned here, stop and remove those of dropped
    /// ones), and report progress.
    pub async fn sync(self: &Arc<Self>) -> Result<()> {
        let nodes: BTreeMap<String, NodeEntry> = self.catalog.nodes().await?.into_iter().collect();
        let galleries: BTreeMap<String, GalleryEntry> =
            self.catalog.galleries().await?.into_iter().collect();
        let mut start = Vec::new();
        let mut dropped = Vec::new();
        {
            let mut st = self.write();
            st.nodes = nodes;
            let gone: Vec<String> = st
                .galleries
                .keys()
                .filter(|n| !galleries.contains_key(*n))
                .cloned()
                .collect();
            for name in gone {
                if let Some(r) = st.galleries.remove(&name) {
                    dropped.push((name, r));
                }
            }
            for (name, entry) in &galleries {
                if !st.galleries.contains_key(name) {
                    start.push((name.clone(), entry.clone()));
                }
            }
        }
        for (name, r) in dropped {
            let _ = r.stop.send(true);
            if let Some(t) = r.task {
                let _ = t.await;
            }
            let shards = r.view.entry.shards_of(&self.cfg.id);
            let engine = self.engine.clone();
            let gallery = name.clone();
            tokio::task::spawn_blocking(move || {
                for k in shards {
                    let shard = shard_gallery(&gallery, k);
                    if engine.gallery(&shard).is_ok()
                        && let Err(e) = engine.drop_gallery(&shard)
                    {
                        tracing::warn!(gallery = %shard, error = %e, "could not drop a dropped gallery's shard");
                    }
                }
            })
            .await
            .map_err(|e| Error::Nats(format!("drop task: {e}")))?;
            tracing::info!(gallery = %name, "gallery dropped from the catalog: replicas removed");
        }
        for (name, entry) in start {
            self.start_gallery(&name, entry).await;
        }
        self.heads_and_counts().await;
        self.report().await;
        self.trim().await;
        self.erase().await;
        Ok(())
    }

    /// Carry each gallery's erasures on (the live node of smallest id does
    /// it): once every assigned replica is clean past an erasure's delete,
    /// erase the log messages up to the delete that carried its people
    /// (with the delete itself), and rebuild the log members that missed it
    /// once they are back.
    async fn erase(&self) {
        if self.nodes().keys().next().map(String::as_str) != Some(self.cfg.id.as_str()) {
            return;
        }
        for (name, view) in self.galleries() {
            let Ok(erasures) = self.catalog.erasures(&name).await else {
                continue;
            };
            for mut e in erasures {
                let before = e.clone();
                if let Err(x) = self.advance_erasure(&name, &view.entry, &mut e).await {
                    tracing::warn!(gallery = %name, seq = e.seq, error = %x, "erasure not advanced");
                }
                if e != before
                    && let Err(x) = self.catalog.put_erasure(&name, &e).await
                {
                    tracing::warn!(gallery = %name, seq = e.seq, error = %x, "could not record an erasure's state");
                }
            }
        }
    }

    async fn advance_erasure(
        &self,
        name: &str,
        entry: &GalleryEntry,
        e: &mut Erasure,
    ) -> Result<()> {
        if e.state == ErasureState::Replicas {
            let progress: HashMap<String, Progress> =
                self.catalog.progress(name).await?.into_iter().collect();
            let clean = (0..entry.shards).all(|k| {
                entry.nodes_of(k).iter().all(|n| {
                    progress
                        .get(n)
                        .and_then(|p| p.of(k))
                        .is_some_and(|p| p.clean >= e.seq)
                })
            });
            if !clean {
                return Ok(());
            }
            let seqs = self
                .log
                .messages_carrying(name, e.seq, &e.subject_hashes, &e.ids)
                .await?;
            let lagging = self.log.erase(name, &seqs).await?;
            tracing::info!(gallery = %name, seq = e.seq, messages = seqs.len(), ?lagging, "log messages erased");
            e.messages_erased = seqs.len() as u64;
            e.lagging = lagging;
            e.state = ErasureState::LogMembers;
        }
        if e.state == ErasureState::LogMembers {
            if !e.lagging.is_empty() {
                // A rebuild at most every 5 s, of a member that is back.
                let due = lock(&self.resynced).elapsed() > Duration::from_secs(5);
                if !due {
                    return Ok(());
                }
                *lock(&self.resynced) = std::time::Instant::now();
                let behind = self.log.members_behind(name).await?;
                let back: Vec<String> = e
                    .lagging
                    .iter()
                    .filter(|m| !behind.contains(m))
                    .cloned()
                    .collect();
                for m in back {
                    self.log.resync_replica(name, &m).await?;
                    tracing::info!(gallery = %name, member = %m, "log member rebuilt after an erasure");
                    e.lagging.retain(|x| *x != m);
                }
            }
            if e.lagging.is_empty() {
                e.state = ErasureState::Done;
                e.subject_hashes.clear();
                e.ids.clear();
            }
        }
        Ok(())
    }

    async fn start_gallery(self: &Arc<Self>, name: &str, entry: GalleryEntry) {
        // Replicas opened afresh (a restart, a copy from a peer) get the
        // catalog's head installed again.
        lock(&self.heads).remove(name);
        let served = entry.shards_of(&self.cfg.id);
        let (stop, _) = watch::channel(false);
        let mut running = Running {
            view: GalleryView {
                name: name.to_owned(),
                entry: entry.clone(),
                replica: None,
                failure: None,
                subjects: 0,
                head_rev: 0,
            },
            stop,
            task: None,
        };
        if !served.is_empty() {
            let spec = GallerySpec {
                dim: entry.dim,
                model: entry.model.clone(),
                normalize: entry.normalize,
            };
            let engine = self.engine.clone();
            let (gallery, shards) = (name.to_owned(), entry.shards);
            let opened = tokio::task::spawn_blocking(move || {
                Replica::open(&engine, &gallery, &spec, shards, &served)
            })
            .await
            .map_err(|e| Error::Nats(format!("open task: {e}")))
            .and_then(|r| r);
            match opened {
                Ok(replica) => {
                    let (catalog, gallery) = (self.catalog.clone(), name.to_owned());
                    let hook = Arc::new(move |seq: u64, batch: &LogBatch| {
                        let e = erasure_of(seq, batch);
                        let (catalog, gallery) = (catalog.clone(), gallery.clone());
                        tokio::spawn(async move {
                            if let Err(x) = catalog.add_erasure(&gallery, &e).await {
                                tracing::warn!(gallery = %gallery, seq, error = %x, "could not record an erasure");
                            }
                        });
                    });
                    let replica = Arc::new(replica.on_delete(hook));
                    running.view.replica = Some(replica.clone());
                    let (me, gallery) = (self.clone(), name.to_owned());
                    let stop = running.stop.subscribe();
                    running.task = Some(tokio::spawn(async move {
                        let r = replica.follow(&me.log, stop).await;
                        if let Err(e) = r {
                            tracing::error!(gallery = %gallery, error = %e, "replica stopped");
                            let trimmed = matches!(e, Error::Trimmed { .. });
                            if let Some(run) = me.write().galleries.get_mut(&gallery) {
                                run.view.replica = None;
                                run.view.failure = Some(e.to_string());
                            }
                            if trimmed {
                                tokio::spawn(async move { me.rejoin(gallery).await });
                            }
                        }
                    }));
                    tracing::info!(gallery = %name, shards = ?entry.shards_of(&self.cfg.id), "replica following the log");
                }
                Err(e) => {
                    tracing::error!(gallery = %name, error = %e, "could not open the replica");
                    running.view.failure = Some(e.to_string());
                }
            }
        }
        self.write().galleries.insert(name.to_owned(), running);
    }

    /// Start the shards of `name` whose log position was trimmed again from
    /// live peers' copies, then follow the log again; retried until it
    /// works or the node stops.
    async fn rejoin(self: Arc<Self>, name: String) {
        let mut stop = self.stop.subscribe();
        loop {
            match self.copy_trimmed_shards(&name).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(gallery = %name, error = %e, "could not copy shards from a peer; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        }
        // The next sync starts the replica again, following the log from
        // the copies' positions.
        self.write().galleries.remove(&name);
    }

    async fn copy_trimmed_shards(self: &Arc<Self>, name: &str) -> Result<()> {
        let source = self
            .source
            .get()
            .cloned()
            .ok_or_else(|| Error::Nats("no shard source is set".into()))?;
        let entry = self
            .gallery(name)
            .map(|v| v.entry)
            .ok_or_else(|| Error::Etcd(format!("gallery {name} is no longer in the catalog")))?;
        let (first, _) = self.log.bounds(name).await?;
        let progress: HashMap<String, Progress> =
            self.catalog.progress(name).await?.into_iter().collect();
        let nodes = self.nodes();
        for k in entry.shards_of(&self.cfg.id) {
            let local = shard_gallery(name, k);
            let engine = self.engine.clone();
            let applied = engine
                .gallery(&local)
                .map_or(0, |g| message_applied(g.applied_seq()));
            if applied + 1 >= first {
                continue;
            }
            // A live peer whose copy reaches the log's first message.
            let peer = entry
                .nodes_of(k)
                .iter()
                .filter(|n| **n != self.cfg.id)
                .filter_map(|n| {
                    let done = progress.get(n)?.of(k)?.applied;
                    let addr = nodes.get(n)?.advertise.clone();
                    (done + 1 >= first).then_some((n.clone(), addr))
                })
                .next()
                .ok_or_else(|| {
                    Error::Nats(format!(
                        "shard {k} of {name}: the log starts at {first}, this replica is at {applied}, and no live peer holds a copy at or past {}",
                        first - 1
                    ))
                })?;
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let into = format!("copy-{local}-{stamp}");
            tracing::info!(gallery = %name, shard = k, from = %peer.0, applied, first, "copying a trimmed shard from a peer");
            let started = std::time::Instant::now();
            source
                .fetch(peer.1.clone(), name.to_owned(), k, into.clone())
                .await?;
            let report =
                tokio::task::spawn_blocking(move || -> Result<visage_engine::RestoreReport> {
                    if engine.gallery(&local).is_ok() {
                        engine.drop_gallery(&local)?;
                    }
                    let r = engine.restore(&into, &local);
                    let _ = engine.remove_backup(&into);
                    Ok(r?)
                })
                .await
                .map_err(|e| Error::Nats(format!("restore task: {e}")))??;
            tracing::info!(gallery = %name, shard = k, from = %peer.0, rows = report.stats.live, seconds = started.elapsed().as_secs_f64(), "shard copied from a peer");
        }
        Ok(())
    }

    /// Trim each gallery's log below what every reporting replica has
    /// flushed (the live node of smallest id does it).
    async fn trim(&self) {
        if self.nodes().keys().next().map(String::as_str) != Some(self.cfg.id.as_str()) {
            return;
        }
        for (name, view) in self.galleries() {
            let Ok(progress) = self.catalog.progress(&name).await else {
                continue;
            };
            let mut point = u64::MAX;
            for k in 0..view.entry.shards {
                let flushed: Vec<u64> = progress
                    .iter()
                    .filter(|(n, _)| view.entry.nodes_of(k).contains(n))
                    .filter_map(|(_, p)| p.of(k))
                    .map(|p| p.flushed)
                    .collect();
                match flushed.iter().min() {
                    Some(f) => point = point.min(*f),
                    // A shard no live replica reports: keep everything.
                    None => point = 0,
                }
            }
            if point == 0 || point == u64::MAX {
                continue;
            }
            let done = lock(&self.trimmed).get(&name).copied().unwrap_or(0);
            if point <= done {
                continue;
            }
            match self.log.trim(&name, point, TRIM_BATCH).await {
                Ok(n) => {
                    if n < TRIM_BATCH {
                        lock(&self.trimmed).insert(name.clone(), point);
                    }
                    tracing::info!(gallery = %name, messages = n, upto = point, "log trimmed");
                }
                Err(e) => tracing::warn!(gallery = %name, error = %e, "could not trim the log"),
            }
        }
    }

    /// Install each gallery's head from the catalog into this node's
    /// replicas when it is newer than the one installed, and refresh the
    /// galleries' subject counts from the replicas' reports.
    async fn heads_and_counts(&self) {
        for (name, view) in self.galleries() {
            if let Ok(progress) = self.catalog.progress(&name).await {
                let mut total = 0;
                for k in 0..view.entry.shards {
                    // The most advanced replica's count.
                    total += progress
                        .iter()
                        .filter_map(|(_, p)| p.of(k))
                        .max_by_key(|p| p.applied)
                        .map_or(0, |p| p.subjects);
                }
                if let Some(run) = self.write().galleries.get_mut(&name) {
                    run.view.subjects = total;
                }
            }
            let Ok(Some((rev, bytes))) = self.catalog.head(&name).await else {
                continue;
            };
            if let Some(run) = self.write().galleries.get_mut(&name) {
                run.view.head_rev = rev;
            }
            let Some(replica) = view.replica.clone() else {
                continue;
            };
            let installed = lock(&self.heads).get(&name).copied().unwrap_or(0);
            if rev <= installed {
                continue;
            }
            let key = format!("/visage/heads/{name}");
            let done = tokio::task::spawn_blocking(move || -> Result<()> {
                let head = visage_engine::HeadInfo::decode(std::path::Path::new(&key), &bytes)?;
                for (_, g) in replica.shards() {
                    g.install_head(&head)?;
                }
                Ok(())
            })
            .await;
            match done {
                Ok(Ok(())) => {
                    lock(&self.heads).insert(name.clone(), rev);
                    tracing::info!(gallery = %name, revision = rev, "head installed");
                }
                Ok(Err(e)) => {
                    tracing::error!(gallery = %name, error = %e, "could not install the head");
                }
                Err(e) => tracing::error!(gallery = %name, error = %e, "head task failed"),
            }
        }
    }

    /// Report each replica's progress in the catalog.
    async fn report(&self) {
        let views = self.galleries();
        for (name, view) in views {
            let Some(replica) = &view.replica else {
                continue;
            };
            let head = lock(&self.heads).get(&name).copied().unwrap_or(0);
            let progress = {
                let mut clean = lock(&self.clean);
                Progress {
                    shards: replica
                        .shards()
                        .iter()
                        .map(|(k, g)| {
                            let flushed = message_applied(g.flushed_seq());
                            let c = clean.entry((name.clone(), *k)).or_insert(0);
                            // No deleted or replaced row left in its files, and
                            // nothing after `flushed` only in the WAL.
                            let stats = g.stats();
                            if stats.deleted == 0 {
                                *c = (*c).max(flushed);
                            }
                            ShardProgress {
                                shard: *k,
                                applied: message_applied(g.applied_seq()),
                                flushed,
                                clean: *c,
                                subjects: stats.subjects,
                                head,
                            }
                        })
                        .collect(),
                }
            };
            if let Err(e) = self
                .catalog
                .put_progress(&name, &self.cfg.id, &progress, self.registration.lease())
                .await
            {
                tracing::warn!(gallery = %name, error = %e, "could not report progress");
            }
        }
    }

    /// Stop following the logs (the replicas stay open in the engine) and
    /// leave the cluster (the lease is revoked by dropping the node).
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let tasks: Vec<_> = {
            let mut st = self.write();
            st.galleries
                .values_mut()
                .filter_map(|r| {
                    let _ = r.stop.send(true);
                    r.task.take()
                })
                .collect()
        };
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// SHA-256 (hex) of a subject, as erasures record it.
pub fn subject_hash(subject: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, subject.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The erasure a delete message at `seq` asks for.
fn erasure_of(seq: u64, batch: &LogBatch) -> Erasure {
    Erasure {
        seq,
        subject_hashes: batch
            .delete_subjects
            .iter()
            .map(|s| subject_hash(s))
            .collect(),
        ids: batch.delete_ids.clone(),
        subjects_count: batch.delete_subjects.len() as u64,
        ids_count: batch.delete_ids.len() as u64,
        ..Erasure::default()
    }
}

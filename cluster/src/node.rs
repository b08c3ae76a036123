//! A cluster node: registered in the catalog on a lease, it keeps a view
//! of the live nodes and of the galleries, and for each gallery with shards
//! assigned to it runs a [`Replica`] that follows the gallery's log. It
//! reports each replica's progress (applied and flushed log positions) in
//! the catalog, and hands out the cluster's ids.
//!
//! The view is refreshed from etcd every [`SYNC`] (polling rather than a
//! watch: a poll also survives the loss of the etcd member it was talking
//! to, and the catalog changes rarely).

use crate::catalog::{Catalog, GalleryEntry, NodeEntry, Progress, Registration};
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

/// A gallery as this node sees it.
#[derive(Debug, Clone)]
pub struct GalleryView {
    /// The catalog's entry.
    pub entry: GalleryEntry,
    /// The shards this node serves, when it serves any and its replica is
    /// healthy.
    pub replica: Option<Arc<Replica>>,
    /// Why this node's replica stopped, if it did.
    pub failure: Option<String>,
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
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.cfg.id)
            .finish_non_exhaustive()
    }
}

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
        self.report().await;
        Ok(())
    }

    async fn start_gallery(self: &Arc<Self>, name: &str, entry: GalleryEntry) {
        let served = entry.shards_of(&self.cfg.id);
        let (stop, _) = watch::channel(false);
        let mut running = Running {
            view: GalleryView {
                entry: entry.clone(),
                replica: None,
                failure: None,
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
                    let replica = Arc::new(replica);
                    running.view.replica = Some(replica.clone());
                    let (me, gallery) = (self.clone(), name.to_owned());
                    let stop = running.stop.subscribe();
                    running.task = Some(tokio::spawn(async move {
                        let r = replica.follow(&me.log, stop).await;
                        if let Err(e) = r {
                            tracing::error!(gallery = %gallery, error = %e, "replica stopped");
                            if let Some(run) = me.write().galleries.get_mut(&gallery) {
                                run.view.replica = None;
                                run.view.failure = Some(e.to_string());
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

    /// Report each replica's progress in the catalog.
    async fn report(&self) {
        let views = self.galleries();
        for (name, view) in views {
            let Some(replica) = &view.replica else {
                continue;
            };
            let progress = Progress {
                shards: replica
                    .shards()
                    .iter()
                    .map(|(k, g)| {
                        (
                            *k,
                            message_applied(g.applied_seq()),
                            message_applied(g.flushed_seq()),
                        )
                    })
                    .collect(),
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

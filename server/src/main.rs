//! `visage-server`: serve a visage data directory over gRPC.
//!
//! With no arguments it opens `./visage-data` and listens on `127.0.0.1:50051`.
//! At startup it prints one line, `visage-server listening on ADDR`, on
//! stdout (with `--listen 127.0.0.1:0` the port is the one the OS chose).
//! SIGINT or SIGTERM: stop accepting, finish calls in flight, flush every
//! gallery, exit 0.
//!
//! `--tls-cert`/`--tls-key` serve TLS only; `--api-keys` requires an API key
//! of the right role on every call but health checks (see `visage_server::auth`).
//!
//! `--metrics-listen ADDR` serves Prometheus metrics at `http://ADDR/metrics`
//! (see `visage_server::metrics`) and prints a second line,
//! `visage-server metrics on ADDR`, after the first.
//!
//! `--nats URLS --etcd URLS --node-id ID` (a build with `--features
//! cluster`) runs the node in cluster mode (see `visage_server::cluster`).
//!
//! Settings come from, strongest first: flags, environment variables
//! (`VISAGE_*`), the TOML file of `--config` (keys are the long flags with
//! `_` or `-`, see `server/visage-server.sample.toml`), the defaults. clap
//! does the layering: the file's settings are handed to it as flags, for the
//! keys that neither the command line nor the environment sets.

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use visage_engine::{Durability, Engine, EngineOptions};
use visage_server::{ApiKeys, ServerOptions, TlsIdentity, limits};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// fsync the WAL before acknowledging a write: survives power loss.
    PowerLoss,
    /// Write the WAL to the OS before acknowledging, without fsync: survives
    /// the server process being killed, not an OS crash or power loss.
    ProcessCrash,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Lines for people (colours on a terminal).
    Text,
    /// One JSON object a line, for log shippers.
    Json,
}

/// Serve visage galleries of face embeddings over gRPC.
#[derive(Debug, Parser)]
#[command(name = "visage-server", version, about, long_about = None)]
struct Args {
    /// TOML file of settings: any long flag as a key (`data_dir =
    /// "/srv/visage"`, `max_connections = 256`); flags and environment
    /// variables override it.
    #[arg(long, env = "VISAGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// How log lines are written (to stderr; RUST_LOG filters them).
    #[arg(long, env = "VISAGE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Data directory (created if missing; one server at a time may open it).
    #[arg(long, env = "VISAGE_DATA_DIR", default_value = "./visage-data")]
    data_dir: PathBuf,
    /// Address to listen on (port 0: any free port, printed at startup).
    #[arg(long, env = "VISAGE_LISTEN", default_value = "127.0.0.1:50051")]
    listen: String,
    /// What an acknowledged write survives.
    #[arg(
        long,
        env = "VISAGE_DURABILITY",
        value_enum,
        default_value = "power-loss"
    )]
    durability: DurabilityArg,
    /// Largest request message in bytes (larger: RESOURCE_EXHAUSTED).
    #[arg(long, env = "VISAGE_MAX_MESSAGE_BYTES", default_value_t = limits::DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Seconds a shutdown waits for calls in flight before flushing anyway.
    #[arg(long, env = "VISAGE_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    shutdown_timeout: u64,
    /// TLS certificate chain (PEM); with --tls-key, serve TLS only.
    #[arg(long, env = "VISAGE_TLS_CERT", value_name = "PATH")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "VISAGE_TLS_KEY", value_name = "PATH")]
    tls_key: Option<PathBuf>,
    /// API key file: lines `ROLE KEY` (ROLE: read, write or admin; # comments).
    /// When given, every call but health checks needs a key of the right role.
    #[arg(long, env = "VISAGE_API_KEYS", value_name = "PATH")]
    api_keys: Option<PathBuf>,
    /// Connections served at once; one more is accepted and closed at once.
    #[arg(long, env = "VISAGE_MAX_CONNECTIONS", default_value_t = limits::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u32).range(1..), |n| n as usize))]
    max_connections: usize,
    /// Seconds after which a connection that sends nothing is closed (live
    /// clients answer the server's pings, sent every third of this).
    #[arg(long, env = "VISAGE_IDLE_TIMEOUT", default_value_t = limits::DEFAULT_IDLE_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,
    /// Directory of backups (`Backup`/`Restore` RPCs; created when the first
    /// backup is taken), and of the mirrored erasure logs that restores
    /// re-apply. Holds biometric data: keep it as private as the data directory.
    #[arg(long, env = "VISAGE_BACKUP_ROOT", default_value = "./visage-backups")]
    backup_root: PathBuf,
    /// Bulk imports (the Import RPC, `visage import`) read only files under
    /// this directory. Unset: any file the server's user can read (imports
    /// need the admin role either way).
    #[arg(long, env = "VISAGE_IMPORT_ROOT")]
    import_root: Option<PathBuf>,
    /// Largest rate a backup reads and writes, in MiB a second (0: no limit),
    /// so a backup does not starve searches of disk bandwidth.
    #[arg(long, env = "VISAGE_BACKUP_RATE", default_value_t = 0)]
    backup_rate: u64,
    /// Seconds a streaming insert may wait for its next message.
    #[arg(long, env = "VISAGE_STREAM_IDLE_TIMEOUT",
          default_value_t = visage_server::service::DEFAULT_STREAM_IDLE_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    stream_idle_timeout: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (IP:PORT; port 0: any
    /// free port, printed at startup). Off unless given; with --api-keys a
    /// scrape needs a key of the read role or higher.
    #[arg(long, env = "VISAGE_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Cluster mode: the NATS servers of the galleries' logs
    /// (nats://HOST:PORT, comma-separated; JetStream on). Needs --etcd and
    /// --node-id, and a build with `--features cluster`.
    #[arg(long, env = "VISAGE_NATS", value_name = "URLS")]
    nats: Option<String>,
    /// The NATS token, when the NATS servers require one.
    #[arg(
        long,
        env = "VISAGE_NATS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    nats_token: Option<String>,
    /// Cluster mode: the etcd endpoints of the catalog (http://HOST:PORT,
    /// comma-separated).
    #[arg(long, env = "VISAGE_ETCD", value_name = "URLS")]
    etcd: Option<String>,
    /// The etcd user, when etcd's authentication is on (the password comes
    /// from --etcd-password or VISAGE_ETCD_PASSWORD).
    #[arg(long, env = "VISAGE_ETCD_USER", value_name = "USER")]
    etcd_user: Option<String>,
    /// The etcd user's password.
    #[arg(
        long,
        env = "VISAGE_ETCD_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    etcd_password: Option<String>,
    /// Cluster mode: this node's id (stable across restarts: shards are
    /// assigned to ids).
    #[arg(long, env = "VISAGE_NODE_ID", value_name = "ID")]
    node_id: Option<String>,
    /// Cluster mode: the HOST:PORT other nodes reach this node's gRPC at
    /// (default: the address it listens on).
    #[arg(long, env = "VISAGE_ADVERTISE", value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Cluster mode: a file holding the cluster key this node presents to
    /// the others (a key of the `node` role in their --api-keys).
    #[arg(long, env = "VISAGE_CLUSTER_KEY_FILE", value_name = "PATH")]
    cluster_key_file: Option<PathBuf>,
    /// Cluster mode: the CA certificate (PEM) the other nodes' TLS
    /// certificates are checked against, when the nodes serve TLS.
    #[arg(long, env = "VISAGE_CLUSTER_CA", value_name = "PATH")]
    cluster_ca: Option<PathBuf>,
    /// Cluster mode: copies of each gallery's log kept by JetStream (3
    /// survives the loss of any one NATS server).
    #[arg(long, env = "VISAGE_LOG_REPLICAS", default_value_t = 3,
          value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u32).range(1..=5), |n| n as usize))]
    log_replicas: usize,
}

/// The arguments, with the `--config` file's settings under the flags and
/// the environment.
fn parse_args() -> Args {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let matches = Args::command().get_matches_from(&argv);
    let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
        return Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    };
    let fail = |msg: String| -> ! {
        Args::command()
            .error(clap::error::ErrorKind::InvalidValue, msg)
            .exit()
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| fail(format!("--config {}: {e}", path.display())));
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| fail(format!("--config {}: {e}", path.display())));
    let cmd = Args::command();
    let mut from_file: Vec<OsString> = Vec::new();
    for (key, value) in &table {
        let id = key.replace('-', "_");
        let known = cmd
            .get_arguments()
            .find(|a| a.get_id() == id.as_str() && id != "config");
        let Some(arg) = known else {
            let keys: Vec<String> = cmd
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| *l != "config" && *l != "help" && *l != "version")
                .map(|l| l.replace('-', "_"))
                .collect();
            fail(format!(
                "--config {}: unknown setting {key:?} (the settings are: {})",
                path.display(),
                keys.join(", ")
            ));
        };
        // Flags and the environment win over the file.
        if matches!(
            matches.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let value = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => fail(format!(
                "--config {}: {key} must be a string, a number or a boolean, got {}",
                path.display(),
                other.type_str()
            )),
        };
        // One token, so a value starting with `-` is not read as a flag.
        let long = arg.get_long().unwrap_or(key.as_str());
        from_file.push(format!("--{long}={value}").into());
    }
    let mut full = vec![argv[0].clone()];
    full.extend(from_file);
    full.extend(argv.into_iter().skip(1));
    Args::try_parse_from(full).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    let args = parse_args();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("visage-server: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "stopped with an error");
            eprintln!("visage-server: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), visage_server::BoxError> {
    // Install the handlers first: a signal that arrives during startup must
    // shut down gracefully, not kill the process.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    // Settings that can be wrong are checked before the data directory opens.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsIdentity::load(cert, key)?),
        (None, None) => None,
        (Some(_), None) => return Err("--tls-cert needs --tls-key (or VISAGE_TLS_KEY)".into()),
        (None, Some(_)) => return Err("--tls-key needs --tls-cert (or VISAGE_TLS_CERT)".into()),
    };
    let api_keys = match &args.api_keys {
        Some(path) => Some(ApiKeys::load(path)?),
        None => None,
    };
    if api_keys.is_some() && tls.is_none() {
        tracing::warn!(
            "API keys without TLS: keys travel in clear text (add --tls-cert and --tls-key)"
        );
    }
    #[cfg(unix)]
    if let Some(path) = &args.api_keys
        && let Ok(meta) = std::fs::metadata(path)
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(file = %path.display(), "the API key file is readable by every user; chmod 600 it");
        }
    }

    let clustered = match (&args.nats, &args.etcd) {
        (None, None) => false,
        (Some(_), Some(_)) => true,
        _ => return Err("cluster mode needs both --nats and --etcd".into()),
    };
    #[cfg(not(feature = "cluster"))]
    if clustered {
        return Err("this build has no cluster mode: build visage-server with `--features cluster` (it needs protoc)".into());
    }
    if clustered && args.node_id.is_none() {
        return Err("cluster mode needs --node-id (a stable id for this node)".into());
    }
    if clustered && args.api_keys.is_some() && args.cluster_key_file.is_none() {
        return Err("cluster mode with --api-keys needs --cluster-key-file (the key, of the node role, this node presents to the others)".into());
    }
    if clustered && args.tls_cert.is_some() && args.cluster_ca.is_none() {
        return Err("cluster mode with TLS needs --cluster-ca (the CA the nodes' certificates are checked against)".into());
    }
    if args.etcd_user.is_some() != args.etcd_password.is_some() {
        return Err("--etcd-user and --etcd-password go together".into());
    }

    let mut opts = EngineOptions::default();
    opts.gallery.backup_root = Some(args.backup_root.clone());
    opts.gallery.durability = match args.durability {
        DurabilityArg::PowerLoss => Durability::PowerLoss,
        DurabilityArg::ProcessCrash => Durability::ProcessCrash,
    };
    if clustered {
        // The replicated log is the durable copy of every write; a replica
        // that loses its unflushed tail applies it again from the log.
        opts.gallery.durability = Durability::ProcessCrash;
    }
    let dir = args.data_dir.clone();
    tracing::info!(data_dir = %dir.display(), durability = ?args.durability, "opening data directory");
    let engine = tokio::task::spawn_blocking(move || Engine::open(&dir, opts))
        .await?
        .map_err(|e| {
            format!(
                "cannot open data directory {}: {e}",
                args.data_dir.display()
            )
        })?;
    let engine = Arc::new(engine);
    tracing::info!(
        galleries = engine.list_galleries().len(),
        "data directory open"
    );

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    let metrics = match args.metrics_listen {
        Some(at) => Some(
            tokio::net::TcpListener::bind(at)
                .await
                .map_err(|e| format!("cannot listen on {at} (--metrics-listen): {e}"))?,
        ),
        None => None,
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "visage-server listening on {addr}")?;
        if let Some(m) = &metrics {
            writeln!(out, "visage-server metrics on {}", m.local_addr()?)?;
        }
        out.flush()?;
    }
    if let Some(m) = &metrics {
        tracing::info!(addr = %m.local_addr()?, "serving Prometheus metrics at /metrics");
    }
    tracing::info!(%addr, "serving visage.v1.Visage, grpc.health.v1.Health and reflection");

    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    };
    #[cfg(feature = "cluster")]
    let cluster = if clustered {
        Some(join_cluster(&args, addr, engine.clone()).await?)
    } else {
        None
    };
    let server_opts = ServerOptions {
        max_message_bytes: args.max_message_bytes,
        shutdown_grace: Duration::from_secs(args.shutdown_timeout),
        tls,
        api_keys,
        max_connections: args.max_connections,
        idle_timeout: Duration::from_secs(args.idle_timeout),
        stream_idle_timeout: Duration::from_secs(args.stream_idle_timeout),
        backup_bytes_per_sec: (args.backup_rate > 0)
            .then_some(args.backup_rate.saturating_mul(1 << 20)),
        import_root: args.import_root.clone(),
        #[cfg(feature = "cluster")]
        cluster,
    };
    visage_server::serve_with_metrics(engine, listener, metrics, server_opts, shutdown).await
}

/// Join the cluster: connect to NATS and etcd, register, start the replicas.
#[cfg(feature = "cluster")]
async fn join_cluster(
    args: &Args,
    addr: std::net::SocketAddr,
    engine: Arc<Engine>,
) -> Result<
    (
        Arc<visage_cluster::node::Node>,
        visage_server::cluster::PeerOptions,
    ),
    visage_server::BoxError,
> {
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {what} {}: {e}", p.display()))
    };
    let key = match &args.cluster_key_file {
        Some(p) => Some(read("--cluster-key-file", p)?.trim().to_owned()),
        None => None,
    };
    if key.is_none() && args.api_keys.is_some() {
        return Err("cluster mode with --api-keys needs --cluster-key-file (the key, of the node role, this node presents to the others)".into());
    }
    let tls = match &args.cluster_ca {
        Some(p) => Some(tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(read("--cluster-ca", p)?),
        )),
        None if args.tls_cert.is_some() => {
            return Err("cluster mode with TLS needs --cluster-ca (the CA the nodes' certificates are checked against)".into());
        }
        None => None,
    };
    let etcd_user = match (&args.etcd_user, &args.etcd_password) {
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        (None, None) => None,
        _ => return Err("--etcd-user and --etcd-password go together".into()),
    };
    let cfg = visage_cluster::node::NodeConfig {
        id: args.node_id.clone().unwrap_or_default(),
        advertise: args.advertise.clone().unwrap_or_else(|| addr.to_string()),
        nats: args.nats.clone().unwrap_or_default(),
        nats_token: args.nats_token.clone(),
        etcd: args
            .etcd
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        etcd_user,
        log_replicas: args.log_replicas,
        lease: Duration::from_secs(5),
    };
    tracing::info!(?cfg, "joining the cluster");
    let node = visage_cluster::node::Node::start(cfg, engine)
        .await
        .map_err(|e| format!("cannot join the cluster: {e}"))?;
    tracing::info!(node = node.id(), "joined the cluster");
    Ok((node, visage_server::cluster::PeerOptions { key, tls }))
}

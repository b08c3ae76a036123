//! `visage`: the command-line client of a visage server.
//!
//! ```text
//! visage gallery create staff
//! visage gallery create staff512 --dim 512 --model arcface-r100 --normalize
//! visage insert staff --vectors faces.npy --subjects names.txt
//! visage search staff --probes probe.npy -k 5
//! visage train-head staff
//! visage identify staff --probes probe.npy
//! visage verify staff --a probe.npy --b-subjects claimed.txt
//! visage calibration-report staff --probes probes.npy --truth truth.txt
//! visage delete staff --subjects emp-00123
//! visage compact staff
//! visage gallery create big --shards 8 --replicas 3   # cluster mode
//! visage search big --probes probe.npy --min-seq 4711  # read your writes
//! visage cluster status
//! visage cluster erasure-status doors
//! ```
//! `--server` (or `VISAGE_SERVER`) picks the server; `--json` prints JSON.
//! Vector files are checked against the gallery's dimension before anything
//! is sent; `--model` on insert, search, identify and verify names the model
//! of the vectors, and the server refuses them if the gallery's differs.
//! `--tls-ca` (or `VISAGE_TLS_CA`) trusts a CA for an `https://` server;
//! `VISAGE_API_KEY` (or `--api-key-file`) sends an API key with every call.
//! In cluster mode, insert and delete print the write's position in the
//! gallery's log (`seq`), and `--min-seq SEQ` on get, search, identify and
//! verify reads from replicas that have applied it.
//! Errors are printed as one line on stderr and the exit code is 1.
//!
//! Two commands need no server: `visage synth` writes the engine's synthetic
//! face-like data as files the others read, and `visage demo` runs the whole
//! story on an embedded engine.

mod cluster;
mod demo;
mod output;
mod plot;
mod report;
mod synth;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use output::{Table, bytes, count, distance, probability};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use visage_client::npy::{self, Matrix};
use visage_client::proto::{ClaimScore, DetPoint, OpenSetModel};
use visage_client::{
    Against, Client, ConnectOptions, DeleteOutcome, Gallery, GalleryInfo, GallerySpec,
    GalleryStats, HeadInfo, InsertOutcome, Maintenance, Rows, SearchOptions, Threshold, TrainHead,
};
use visage_engine::Limits;

/// Command-line client for a visage server (galleries of face embeddings).
#[derive(Debug, Parser)]
#[command(name = "visage", version, about, propagate_version = true)]
struct Cli {
    /// Server address.
    #[arg(
        long,
        env = "VISAGE_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    server: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// CA certificate (PEM) to trust for the server's TLS certificate; implies
    /// TLS (an address without a scheme becomes https://).
    #[arg(long, env = "VISAGE_TLS_CA", value_name = "PATH", global = true)]
    tls_ca: Option<PathBuf>,
    /// Name the server's certificate must carry, if not the address's host.
    #[arg(long, env = "VISAGE_TLS_DOMAIN", value_name = "NAME", global = true)]
    tls_domain: Option<String>,
    /// API key sent with every call. Prefer the environment variable
    /// VISAGE_API_KEY or --api-key-file: a flag lands in shell history.
    #[arg(
        long,
        env = "VISAGE_API_KEY",
        value_name = "KEY",
        hide_env_values = true,
        global = true
    )]
    api_key: Option<String>,
    /// File holding the API key (its first line).
    #[arg(long, env = "VISAGE_API_KEY_FILE", value_name = "PATH", global = true)]
    api_key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, drop, list and describe galleries.
    #[command(subcommand)]
    Gallery(GalleryCommand),
    /// Insert (upsert) embeddings from an .npy file of float32 [N, D] (D: the gallery's dimension).
    Insert(InsertArgs),
    /// Nearest embeddings of each probe.
    Search(SearchArgs),
    /// The best distinct subjects for each probe (who is this?).
    Identify(IdentifyArgs),
    /// Same person or not, with probability and distance, for pairs (is this the same person?).
    Verify(VerifyArgs),
    /// Fetch embeddings by id.
    Get(GetArgs),
    /// Every subject of a gallery with its number of embeddings, in byte
    /// order (--json: a list of {subject, embeddings}).
    Subjects(SubjectsArgs),
    /// Write every embedding of a gallery to DIR: embeddings.npy (float32
    /// [N, D]), ids.npy (uint64 [N]) and subjects.txt (one a line), which
    /// `visage insert --vectors --subjects --ids` reads back (admin role: it
    /// hands out biometric data in bulk).
    Export(ExportArgs),
    /// Delete embeddings by id and every embedding of some subjects.
    Delete(DeleteArgs),
    /// Rewrite the gallery's files without deleted embeddings (a progress
    /// bar with ETA on a terminal).
    Compact(GalleryArg),
    /// Back up a gallery while it serves, as NAME under the server's backup
    /// root (admin role; a progress bar with ETA on a terminal). The backup
    /// holds biometric data: see README, Operations.
    Backup(BackupArgs),
    /// Bulk-import a gallery's rows from files the server reads (admin role):
    /// written straight into segments, far faster than inserting, and shown
    /// all at once when done; a progress bar with ETA on a terminal. Paths are
    /// made absolute here; the server must see the same files (same machine
    /// or a shared file system; its --import-root may restrict where).
    Import(ImportArgs),
    /// Restore backup NAME as a new gallery (admin role): every checksum is
    /// verified first, and people erased since the backup stay erased.
    Restore(RestoreArgs),
    /// Write in-memory rows of the gallery to a segment file.
    Flush(GalleryArg),
    /// Train the gallery's scoring head on its own subjects and calibrate the
    /// 1:1 (verify) and open-set (identify) thresholds.
    TrainHead(TrainHeadArgs),
    /// Show the gallery's scoring head and thresholds, the calibration's
    /// probabilities, claims and open-set thresholds for the current number
    /// of enrolled subjects (--plot: DET and FPIR charts as SVG).
    HeadInfo(HeadInfoArgs),
    /// Measure the gallery's calibrated decisions on labelled probes: verify
    /// and identify error rates with 95% intervals, against the target FAR.
    CalibrationReport(report::ReportArgs),
    /// The same as train-head and head-info, as `head train` and `head info`.
    #[command(subcommand)]
    Head(HeadCommand),
    /// Whether the server is serving (exit code 0 if so).
    Health,
    /// Cluster mode: the nodes, and each gallery's log and shard replicas.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Write synthetic face-like embeddings and probes as .npy and text files
    /// (no server needed).
    Synth(synth::SynthArgs),
    /// Enrol a synthetic organisation in an embedded engine, train the head,
    /// identify probes, delete a person and compact, with a report (no server
    /// needed; --server is not used).
    Demo(demo::DemoArgs),
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// The live nodes, and for each gallery its shards, its log's first and
    /// last position, and each shard's replicas: node, live or dead, the log
    /// position applied and flushed, and the lag behind the log (admin role;
    /// a single-node server refuses it).
    Status,
    /// For each gallery (or GALLERY), each delete by subject or id and where
    /// its erasure stands: waiting for replicas to compact (Compact), the
    /// log's messages erased and log members to rebuild, or done (no
    /// replica and no log member holds the rows). Admin role.
    ErasureStatus {
        /// Only this gallery.
        gallery: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum HeadCommand {
    /// Train the head on the gallery's own subjects and calibrate thresholds (= train-head).
    Train(TrainHeadArgs),
    /// Show the head and thresholds (= head-info).
    Info(HeadInfoArgs),
}

#[derive(Debug, Args)]
struct HeadInfoArgs {
    /// Gallery name.
    gallery: String,
    /// Also draw the calibration as an SVG file: DET curves of the head and
    /// of plain distance on held-out pairs, and the false-positive
    /// identification rate against the number of enrolled subjects.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct TrainHeadArgs {
    /// Gallery name.
    gallery: String,
    /// False-accept rate to calibrate for (server default 0.001).
    #[arg(long)]
    target_far: Option<f32>,
    /// Upper bound on the pairs drawn (server default 200,000).
    #[arg(long)]
    max_pairs: Option<u32>,
    /// Seed of the pair sampling (server default 1).
    #[arg(long)]
    seed: Option<u64>,
    /// Prior P(same person) the reported probabilities are stated at, in
    /// (0, 1) (server default 0.5). Changes probabilities, not decisions.
    #[arg(long)]
    prior: Option<f64>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Rank {
    /// Smallest squared distance first.
    Distance,
    /// Highest head probability first (needs a trained head).
    Head,
}

#[derive(Debug, Subcommand)]
enum GalleryCommand {
    /// Create an empty gallery.
    Create {
        /// Gallery name (1-64 of A-Z a-z 0-9 _ -).
        name: String,
        /// Values per vector: a multiple of 16 from 16 to 2048 (128 for
        /// dlib, FaceNet-128, OpenFace, SFace; 512 for ArcFace-class models).
        #[arg(long, default_value_t = 128)]
        dim: u32,
        /// The model that makes the gallery's vectors (free text, e.g.
        /// arcface-r100@insightface-0.7.3); requests naming another are refused.
        #[arg(long, value_name = "NAME", default_value = "")]
        model: String,
        /// Store unit vectors and normalise probes (for models compared by
        /// cosine); results then show the cosine similarity.
        #[arg(long)]
        normalize: bool,
        /// Cluster mode only: split the subjects among N shards, by a hash
        /// of the subject (all images of a person in one shard); fixed for
        /// the gallery's life. Default: 1 shard.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        shards: Option<u32>,
        /// Cluster mode only: keep R copies of each shard, on R of the live
        /// nodes. Default: the server's (2, or 1 in a one-node cluster).
        #[arg(long, value_name = "R", value_parser = clap::value_parser!(u32).range(1..))]
        replicas: Option<u32>,
    },
    /// Drop a gallery and delete all its data.
    Drop {
        /// Gallery name.
        name: String,
        /// Confirm: the gallery's embeddings are deleted for good.
        #[arg(long)]
        yes: bool,
    },
    /// List galleries with their sizes.
    List,
    /// Show one gallery's statistics.
    Info {
        /// Gallery name.
        name: String,
    },
}

#[derive(Debug, Args)]
struct GalleryArg {
    /// Gallery name.
    gallery: String,
}

#[derive(Debug, Args)]
struct BackupArgs {
    /// Gallery to back up.
    gallery: String,
    /// Name of the backup (letters, digits, '_' and '-').
    name: String,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// Gallery to import into (it must exist: `visage gallery create`).
    gallery: String,
    /// Vectors: .npy of shape (N, D), float32 or float64, C order.
    #[arg(long)]
    vectors: PathBuf,
    /// Subjects: a text file of N lines, one subject a row.
    #[arg(long)]
    subjects: PathBuf,
    /// Ids: .npy of N integers (none negative, none twice). Without it the
    /// gallery assigns consecutive fresh ids in row order.
    #[arg(long)]
    ids: Option<PathBuf>,
    /// Replace the rows of ids the gallery already holds (without it, an
    /// import naming any of them is refused whole).
    #[arg(long)]
    replace: bool,
}

#[derive(Debug, Args)]
struct RestoreArgs {
    /// Name of the backup under the server's backup root.
    name: String,
    /// The gallery to create from it (a name no gallery has).
    #[arg(long)]
    gallery: String,
}

/// Whether `insert` looks for double enrolments.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ConflictsArg {
    Off,
    Report,
    Reject,
}

#[derive(Debug, Args)]
struct InsertArgs {
    /// Gallery name.
    gallery: String,
    /// Vectors: .npy float32 (or float64) of shape [N, D], D the gallery's dimension.
    #[arg(long, value_name = "FILE.npy")]
    vectors: PathBuf,
    #[command(flatten)]
    model: ModelArg,
    /// Subjects: a text file with one subject per line (N lines).
    #[arg(long, value_name = "FILE")]
    subjects: PathBuf,
    /// Ids: .npy of integers or a text file with one id per line (N ids).
    /// Without it (and without --assign-ids), ids are sequential from
    /// --start-id.
    #[arg(long, value_name = "FILE")]
    ids: Option<PathBuf>,
    /// First id when ids are sequential.
    #[arg(long, default_value_t = 0, conflicts_with = "ids")]
    start_id: u64,
    /// Let the gallery assign fresh ids (each above every id it has held or
    /// assigned, never reused); see --ids-out.
    #[arg(long, conflicts_with_all = ["ids", "start_id"])]
    assign_ids: bool,
    /// Write the rows' ids (given, sequential or assigned) to this .npy
    /// file (uint64, one per vector, in input order).
    #[arg(long, value_name = "FILE.npy")]
    ids_out: Option<PathBuf>,
    /// Embeddings per request (default: about 4 MiB of vectors, 8,192 of
    /// 128 values, 2,048 of 512).
    #[arg(long)]
    batch: Option<usize>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = visage_client::DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Send all batches through one streaming call instead of separate requests.
    #[arg(long)]
    stream: bool,
    /// Look for double enrolments first: each new embedding against the
    /// gallery's other subjects (its open-set decision for its size) and the
    /// batch's other rows. report: insert and list them; reject: refuse a
    /// batch that has any (earlier batches stay committed).
    #[arg(long, value_enum, default_value = "off", conflicts_with = "stream")]
    conflicts: ConflictsArg,
    /// Do not draw a progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, Args)]
struct SearchArgs {
    /// Gallery name.
    gallery: String,
    /// Probes: .npy float32 of shape [P, D] (or [D]), D the gallery's dimension.
    #[arg(long, value_name = "FILE.npy")]
    probes: PathBuf,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    min_seq: MinSeqArg,
    /// Hits per probe.
    #[arg(short, long, default_value_t = 10)]
    k: u32,
    /// Drop hits farther than this squared L2 distance.
    #[arg(long)]
    max_distance: Option<f32>,
    /// Ranking.
    #[arg(long, value_enum, default_value = "distance")]
    rank_by: Rank,
    /// Scan the 8-bit codes first, then re-rank the best exactly (distances stay exact).
    #[arg(long)]
    quantized: bool,
}

#[derive(Debug, Args)]
struct IdentifyArgs {
    /// Gallery name.
    gallery: String,
    /// Probes: .npy float32 of shape [P, D] (or [D]), D the gallery's dimension.
    #[arg(long, value_name = "FILE.npy")]
    probes: PathBuf,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    min_seq: MinSeqArg,
    /// Candidate subjects per probe.
    #[arg(short, long, default_value_t = 5)]
    k: u32,
    /// Known only if the best candidate is within this squared distance
    /// (default: the gallery's calibrated threshold).
    #[arg(long)]
    max_distance: Option<f32>,
    /// Known only if the best candidate's probability (calibrated P(same
    /// person) of one comparison, at the gallery's prior) is at least this.
    #[arg(long)]
    min_probability: Option<f32>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("other").required(true).multiple(false))]
struct VerifyArgs {
    /// Gallery name.
    gallery: String,
    /// First vector of every pair: .npy float32 [N, D], D the gallery's dimension.
    #[arg(long, value_name = "FILE.npy")]
    a: PathBuf,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    min_seq: MinSeqArg,
    /// Second vector of every pair: .npy float32 [N, D].
    #[arg(long, value_name = "FILE.npy", group = "other")]
    b: Option<PathBuf>,
    /// Or: enrolled embedding ids to compare with (.npy or text, N ids).
    #[arg(long, value_name = "FILE", group = "other")]
    b_ids: Option<PathBuf>,
    /// Or: enrolled subjects to compare with (text, one per line, N subjects).
    #[arg(long, value_name = "FILE", group = "other")]
    b_subjects: Option<PathBuf>,
    /// Same person iff the distance is at most this (default: the gallery's
    /// calibrated threshold).
    #[arg(long)]
    max_distance: Option<f32>,
    /// Same person iff the head's probability (calibrated P(same person) at
    /// the gallery's prior) is at least this.
    #[arg(long)]
    min_probability: Option<f32>,
}

/// `--min-seq`: read your writes in cluster mode.
#[derive(Debug, Args)]
pub(crate) struct MinSeqArg {
    /// Cluster mode: answer only from replicas that have applied the
    /// gallery's log up to SEQ (printed by insert and delete), waiting for
    /// them. Ignored by a single node.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    min_seq: u64,
}

/// `--model`: the model that made a command's vectors.
#[derive(Debug, Args)]
pub(crate) struct ModelArg {
    /// The model that made these vectors: the server refuses them
    /// (FAILED_PRECONDITION, nothing changes) unless it is the gallery's.
    /// Not given: not checked.
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
}

impl ModelArg {
    /// A handle on `gallery` whose requests name this model.
    pub(crate) fn gallery(&self, client: &Client, gallery: &str) -> Gallery {
        client
            .gallery(gallery)
            .with_model(self.model.clone().unwrap_or_default())
    }
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// Gallery name.
    gallery: String,
    /// Directory to write the three files to (created if needed).
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct SubjectsArgs {
    /// Gallery name.
    gallery: String,
    /// Subjects per request (1 to 10,000; 0: the server's default, 1,000).
    #[arg(long, default_value_t = 0)]
    page_size: u32,
}

#[derive(Debug, Args)]
struct GetArgs {
    /// Gallery name.
    gallery: String,
    /// Ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    ids: Vec<u64>,
    /// Also write the vectors found to this .npy file (float32 [N, D]; in a
    /// normalising gallery, the stored unit vectors).
    #[arg(long, value_name = "FILE.npy")]
    out: Option<PathBuf>,
    #[command(flatten)]
    min_seq: MinSeqArg,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).multiple(true).args(["ids", "subjects", "subjects_file"]))]
struct DeleteArgs {
    /// Gallery name.
    gallery: String,
    /// Ids, comma-separated.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    ids: Vec<u64>,
    /// Subjects, comma-separated: every embedding of each is deleted.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    subjects: Vec<String>,
    /// Subjects from a text file, one per line (for names holding commas).
    #[arg(long, value_name = "FILE")]
    subjects_file: Option<PathBuf>,
}

/// An error of this tool: one line.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

type Res<T = ()> = Result<T, Failure>;

/// Output piped into a command that stops reading (`visage search … | head`)
/// makes `println!` panic with "Broken pipe": end quietly instead, as a Unix
/// tool killed by SIGPIPE would (exit status 141), and leave other panics alone.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    let local = match cli.command {
        Command::Synth(a) => synth::run(a, cli.json),
        Command::Demo(a) => demo::run(a, cli.json),
        command => return remote(Cli { command, ..cli }),
    };
    match local {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Run a command against the server.
fn remote(cli: Cli) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(Failure(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(v: &Value) -> Res {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// TLS and API key settings from the flags and environment.
fn connect_options(cli: &Cli) -> Res<ConnectOptions> {
    let ca_cert_pem = match &cli.tls_ca {
        Some(p) => Some(
            std::fs::read(p)
                .map_err(|e| Failure(format!("cannot read --tls-ca {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let api_key = match (&cli.api_key, &cli.api_key_file) {
        (Some(_), Some(_)) => {
            return Err(Failure(
                "give the API key once: --api-key (VISAGE_API_KEY) or --api-key-file (VISAGE_API_KEY_FILE)"
                    .into(),
            ));
        }
        (Some(k), None) => Some(k.clone()),
        (None, Some(p)) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Failure(format!("cannot read --api-key-file {}: {e}", p.display())))?;
            let key = text.lines().next().unwrap_or_default().trim().to_owned();
            if key.is_empty() {
                return Err(Failure(format!(
                    "--api-key-file {}: the first line is empty",
                    p.display()
                )));
            }
            Some(key)
        }
        (None, None) => None,
    };
    Ok(ConnectOptions {
        ca_cert_pem,
        domain: cli.tls_domain.clone(),
        api_key,
    })
}

async fn run(cli: Cli) -> Res<ExitCode> {
    let client = Client::connect_with(&cli.server, connect_options(&cli)?).await?;
    let json = cli.json;
    match cli.command {
        Command::Gallery(g) => gallery(&client, g, json).await?,
        Command::Insert(a) => insert(&client, a, json).await?,
        Command::Search(a) => search(&client, a, json).await?,
        Command::Identify(a) => identify(&client, a, json).await?,
        Command::Verify(a) => verify(&client, a, json).await?,
        Command::Get(a) => get(&client, a, json).await?,
        Command::Subjects(a) => subjects(&client, a, json).await?,
        Command::Export(a) => export(&client, a, json).await?,
        Command::Delete(a) => delete(&client, a, json).await?,
        Command::Compact(a) => {
            let t = Instant::now();
            let g = client.gallery(&a.gallery);
            let r = with_progress(&g, "compaction", json, g.compact()).await?;
            maintenance("compacted", &a.gallery, r, t, json)?;
        }
        Command::Import(a) => {
            let t = Instant::now();
            let abs = |p: &Path| -> Res<String> {
                Ok(std::path::absolute(p)
                    .map_err(|e| format!("{}: {e}", p.display()))?
                    .to_string_lossy()
                    .into_owned())
            };
            let (vectors, subjects) = (abs(&a.vectors)?, abs(&a.subjects)?);
            let ids = a.ids.as_deref().map(abs).transpose()?;
            let g = client.gallery(&a.gallery);
            let call = client.import(&a.gallery, &vectors, &subjects, ids.as_deref(), a.replace);
            let r = with_progress(&g, "import", json, call).await?;
            let secs = t.elapsed().as_secs_f64();
            if json {
                print_json(&json!({
                    "gallery": a.gallery, "seconds": secs, "embeddings": r.rows,
                    "replaced": r.replaced, "segments": r.segments, "bytes": r.bytes,
                    "first_id": (r.first_id > 0 || ids.is_none()).then_some(r.first_id),
                    "subjects": r.subjects,
                }))?;
            } else {
                let assigned = if ids.is_none() {
                    format!(", ids {}..={}", r.first_id, r.first_id + r.rows - 1)
                } else {
                    String::new()
                };
                println!(
                    "imported {} embeddings into {} in {secs:.2} s ({}/s): {} segments, {}{assigned}; \
                     {} replaced; the gallery has {} subjects",
                    count(r.rows),
                    a.gallery,
                    count((r.rows as f64 / secs.max(1e-9)) as u64),
                    r.segments,
                    bytes(r.bytes),
                    count(r.replaced),
                    count(r.subjects),
                );
            }
        }
        Command::Backup(a) => {
            let t = Instant::now();
            let g = client.gallery(&a.gallery);
            let r = with_progress(&g, "backup", json, client.backup(&a.gallery, &a.name)).await?;
            let secs = t.elapsed().as_secs_f64();
            if json {
                print_json(&json!({
                    "name": r.name, "gallery": a.gallery, "seconds": secs,
                    "embeddings": r.rows, "subjects": r.subjects, "files": r.files,
                    "linked_files": r.linked_files, "bytes": r.bytes,
                    "wal_file": r.wal_file, "wal_offset": r.wal_offset,
                }))?;
            } else {
                println!(
                    "backed up {} as {} in {secs:.2} s: {} embeddings of {} subjects, {} files \
                     ({} hard-linked), {}",
                    a.gallery,
                    r.name,
                    count(r.rows),
                    count(r.subjects),
                    r.files,
                    r.linked_files,
                    bytes(r.bytes)
                );
            }
        }
        Command::Restore(a) => {
            let t = Instant::now();
            let r = client.restore(&a.name, &a.gallery).await?;
            let secs = t.elapsed().as_secs_f64();
            let live = r.gallery.as_ref().map_or(0, |g| g.live);
            if json {
                print_json(&json!({
                    "name": a.name, "gallery": a.gallery, "seconds": secs,
                    "source_gallery": r.source_gallery, "embeddings": live,
                    "erasures_applied": r.erasures_applied, "embeddings_erased": r.rows_erased,
                }))?;
            } else {
                println!(
                    "restored {} (a backup of {}) as {} in {secs:.2} s: {} embeddings; \
                     {} erasures since the backup applied, {} embeddings erased",
                    a.name,
                    r.source_gallery,
                    a.gallery,
                    count(live),
                    r.erasures_applied,
                    r.rows_erased
                );
            }
        }
        Command::Flush(a) => {
            let t = Instant::now();
            let r = client.gallery(&a.gallery).flush().await?;
            maintenance("flushed", &a.gallery, r, t, json)?;
        }
        Command::TrainHead(a) | Command::Head(HeadCommand::Train(a)) => {
            let opts = TrainHead {
                target_far: a.target_far,
                max_pairs: a.max_pairs,
                seed: a.seed,
                prior: a.prior,
            };
            let h = client.gallery(&a.gallery).train_head(&opts).await?;
            head(&a.gallery, &h, json)?;
        }
        Command::HeadInfo(a) | Command::Head(HeadCommand::Info(a)) => {
            let h = client.gallery(&a.gallery).head().await?;
            // Refuse before printing anything when there is nothing to plot.
            let plot = match &a.plot {
                Some(path) => Some((path, plot::calibration(&a.gallery, &h)?)),
                None => None,
            };
            head(&a.gallery, &h, json)?;
            if let Some((path, data)) = plot {
                plot::render(&data, path)?;
                if !json {
                    println!("plot written to {}", path.display());
                }
            }
        }
        Command::CalibrationReport(a) => report::run(&client, a, json).await?,
        Command::Cluster(ClusterCommand::Status) => {
            let status = client.cluster_status().await?;
            if json {
                print_json(&cluster::status_json(&status))?;
            } else {
                print!("{}", cluster::status_text(&status));
            }
        }
        Command::Cluster(ClusterCommand::ErasureStatus { gallery }) => {
            let status = client.cluster_status().await?;
            if json {
                print_json(&cluster::erasures_json(&status, gallery.as_deref()))?;
            } else {
                print!("{}", cluster::erasures_text(&status, gallery.as_deref()));
            }
        }
        Command::Synth(_) | Command::Demo(_) => unreachable!("run without a server"),
        Command::Health => {
            let serving = client.serving().await?;
            if json {
                print_json(&json!({ "serving": serving }))?;
            } else {
                println!("{}", if serving { "SERVING" } else { "NOT_SERVING" });
            }
            if !serving {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn info_json(g: &GalleryInfo) -> Value {
    json!({
        "name": g.name, "dim": g.dim, "model": g.model, "normalize": g.normalize,
        "shards": g.shards, "replicas": g.replicas,
        "live": g.live, "deleted": g.deleted,
        "subjects": g.subjects, "segments": g.segments, "memtable_rows": g.memtable_rows,
        "bytes_on_disk": g.bytes_on_disk, "head_trained": g.head_trained,
        "open_logit_threshold": g.open_logit_threshold,
        "open_distance_threshold": g.open_distance_threshold,
        "open_trusted": g.open_trusted,
        "exception_rows": g.exception_rows,
        "outdated_segments": g.outdated_segments,
        "scans": g.scans.as_ref().map(|c| json!({
            "first_pass": c.first_pass, "widened": c.widened,
            "f32_batch": c.f32_batch, "direct": c.direct,
        })),
        "segment_details": g.segment_details.iter().map(|x| json!({
            "file_no": x.file_no, "rows": x.rows, "deleted": x.deleted,
            "exceptions": x.exceptions, "format_version": x.format_version,
        })).collect::<Vec<_>>(),
    })
}

fn stats_json(s: &GalleryStats) -> Value {
    json!({
        "live": s.live, "deleted": s.deleted, "subjects": s.subjects, "segments": s.segments,
        "memtable_rows": s.memtable_rows, "bytes_on_disk": s.bytes_on_disk,
    })
}

fn info_text(g: &GalleryInfo) -> String {
    let mut t = Table::new(&["", ""], &[false, true]);
    for (k, v) in [
        ("live embeddings", count(g.live)),
        ("deleted (until compaction)", count(g.deleted)),
        ("subjects", count(g.subjects)),
        ("segments", count(g.segments)),
        ("in memory (not in a segment)", count(g.memtable_rows)),
        ("on disk", bytes(g.bytes_on_disk)),
        ("dimension", g.dim.to_string()),
        (
            "model",
            if g.model.is_empty() {
                "none recorded".to_string()
            } else {
                g.model.clone()
            },
        ),
        (
            "normalised",
            if g.normalize {
                "yes: unit vectors, cosine similarity = 1 - d/2"
            } else {
                "no"
            }
            .to_string(),
        ),
        (
            "scoring head",
            if g.head_trained { "trained" } else { "none" }.to_string(),
        ),
    ] {
        t.row(vec![k.to_string(), v]);
    }
    if clustered(g) {
        t.row(vec![
            "cluster".to_string(),
            format!(
                "{} {}, {} {} each",
                g.shards,
                plural(g.shards, "shard", "shards"),
                g.replicas,
                plural(g.replicas, "replica", "replicas")
            ),
        ]);
    }
    let open = match (g.open_logit_threshold, g.open_distance_threshold) {
        (Some(l), _) => Some(format!("logit >= {l:.4}")),
        (None, Some(d)) => Some(format!("d <= {d:.4}")),
        (None, None) => None,
    };
    if let Some(o) = open {
        let trusted = if g.open_trusted {
            ""
        } else {
            " (extrapolated at this size: see head-info)"
        };
        t.row(vec![
            format!("identify threshold for {} subjects", count(g.subjects)),
            format!("{o}{trusted}"),
        ]);
    }
    t.row(vec![
        "exception rows (outliers, scanned in f32)".to_string(),
        count(g.exception_rows),
    ]);
    if g.outdated_segments > 0 {
        t.row(vec![
            "segments of an older format".to_string(),
            format!(
                "{} (an outlier there slows every search: `visage compact` rewrites them)",
                count(g.outdated_segments)
            ),
        ]);
    }
    if let Some(c) = &g.scans {
        let later = c.widened + c.f32_batch + c.direct;
        let all = c.first_pass + later;
        t.row(vec![
            "exact scans since open".to_string(),
            format!(
                "{} probes: {} proved from the codes' first pass, {} widened, {} by the f32 batch scan, {} scanned directly",
                count(all),
                count(c.first_pass),
                count(c.widened),
                count(c.f32_batch),
                count(c.direct)
            ),
        ]);
    }
    // Skip the empty header line.
    let mut out: String = t
        .render()
        .lines()
        .skip(1)
        .map(|l| format!("  {l}\n"))
        .collect();
    if !g.segment_details.is_empty() {
        let mut seg = Table::new(
            &["SEGMENT", "ROWS", "DELETED", "EXCEPTIONS", "FORMAT"],
            &[false, true, true, true, true],
        );
        for x in &g.segment_details {
            seg.row(vec![
                format!("seg-{}", x.file_no),
                count(x.rows),
                count(x.deleted),
                count(x.exceptions),
                format!("v{}", x.format_version),
            ]);
        }
        out.push('\n');
        out.extend(seg.render().lines().map(|l| format!("  {l}\n")));
    }
    out
}

async fn gallery(client: &Client, cmd: GalleryCommand, json: bool) -> Res {
    match cmd {
        GalleryCommand::Create {
            name,
            dim,
            model,
            normalize,
            shards,
            replicas,
        } => {
            let spec = GallerySpec {
                dim,
                model,
                normalize,
                shards: shards.unwrap_or(0),
                replicas: replicas.unwrap_or(0),
            };
            let g = client.create_gallery_with(&name, &spec).await?;
            if json {
                print_json(&info_json(&g))?;
            } else {
                println!("created gallery {}{}", g.name, spec_text(&g));
            }
        }
        GalleryCommand::Drop { name, yes } => {
            if !yes {
                return Err(Failure(format!(
                    "dropping gallery {name} deletes all of its embeddings; add --yes to confirm"
                )));
            }
            let g = client.drop_gallery(&name).await?;
            if json {
                print_json(&info_json(&g))?;
            } else {
                println!(
                    "dropped gallery {name} ({} embeddings of {} subjects)",
                    count(g.live),
                    count(g.subjects)
                );
            }
        }
        GalleryCommand::List => {
            let all = client.list_galleries().await?;
            if json {
                print_json(&Value::Array(all.iter().map(info_json).collect()))?;
            } else if all.is_empty() {
                println!("no galleries (create one with: visage gallery create NAME)");
            } else {
                // Cluster mode: the shards and replicas too, before MODEL.
                let cluster = all.iter().any(clustered);
                let mut headers = vec![
                    "NAME",
                    "LIVE",
                    "DELETED",
                    "SUBJECTS",
                    "SEGMENTS",
                    "ON DISK",
                    "HEAD",
                    "DIM",
                    "NORMALISED",
                ];
                let mut right = vec![false, true, true, true, true, true, false, true, false];
                if cluster {
                    headers.extend(["SHARDS", "REPLICAS"]);
                    right.extend([true, true]);
                }
                headers.push("MODEL");
                right.push(false);
                let mut t = Table::new(&headers, &right);
                for g in &all {
                    let mut row = vec![
                        g.name.clone(),
                        count(g.live),
                        count(g.deleted),
                        count(g.subjects),
                        count(g.segments),
                        bytes(g.bytes_on_disk),
                        if g.head_trained { "trained" } else { "none" }.into(),
                        g.dim.to_string(),
                        if g.normalize { "yes" } else { "no" }.into(),
                    ];
                    if cluster {
                        row.extend([g.shards.to_string(), g.replicas.to_string()]);
                    }
                    row.push(if g.model.is_empty() {
                        "-".into()
                    } else {
                        g.model.clone()
                    });
                    t.row(row);
                }
                print!("{}", t.render());
            }
        }
        GalleryCommand::Info { name } => {
            let g = client.gallery(&name).stats().await?;
            if json {
                print_json(&info_json(&g))?;
            } else {
                println!("gallery {}", g.name);
                print!("{}", info_text(&g));
            }
        }
    }
    Ok(())
}

/// Lines of a text file, with the line number of each (1-based); blank lines are errors.
fn read_lines(path: &Path, what: &str) -> Res<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure(format!("{}: cannot read {what}: {e}", path.display())))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let l = l.strip_suffix('\r').unwrap_or(l);
            if l.is_empty() {
                Err(Failure(format!(
                    "{}:{}: empty {what}",
                    path.display(),
                    i + 1
                )))
            } else {
                Ok(l.to_owned())
            }
        })
        .collect()
}

/// Ids from an .npy file or a text file with one id per line.
fn read_ids(path: &Path) -> Res<Vec<u64>> {
    if path.extension().is_some_and(|e| e == "npy") {
        return Ok(npy::read_ids(path)?);
    }
    read_lines(path, "id")?
        .iter()
        .enumerate()
        .map(|(i, l)| {
            l.trim().parse::<u64>().map_err(|_| {
                Failure(format!(
                    "{}:{}: {l:?} is not an id (a non-negative integer)",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

/// ` (512-d, model "m", normalising)` for a gallery of other than the
/// default kind, else nothing.
fn spec_text(g: &GalleryInfo) -> String {
    let mut parts = Vec::new();
    if g.dim != 128 {
        parts.push(format!("{}-d", g.dim));
    }
    if !g.model.is_empty() {
        parts.push(format!("model {:?}", g.model));
    }
    if g.normalize {
        parts.push("normalising: cosine similarity".into());
    }
    if clustered(g) {
        parts.push(format!(
            "{} {} of {} {}",
            g.shards,
            plural(g.shards, "shard", "shards"),
            g.replicas,
            plural(g.replicas, "replica", "replicas")
        ));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// Whether `g` is a cluster gallery of more than one shard or copy (a
/// single node reports 1 and 1, or 0 and 0 before it knew of them).
fn clustered(g: &GalleryInfo) -> bool {
    g.shards > 1 || g.replicas > 1
}

fn plural(n: u32, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

/// Vectors from an .npy file for gallery `g`, as many values a vector as its
/// dimension (else an error naming the file, its shape and the dimension).
fn read_vectors(path: &Path, g: &GalleryInfo) -> Res<Matrix> {
    Ok(npy::read_vectors(
        path,
        g.dim as usize,
        &format!("gallery {}", g.name),
    )?)
}

/// A similarity for tables: `-` when absent.
fn similarity(s: Option<f32>) -> String {
    s.map_or("-".into(), |s| format!("{s:.4}"))
}

/// Await `call` while a bar shows the gallery's operation `kind` (from
/// GetGallery's `operations`, asked four times a second) on a terminal.
async fn with_progress<T>(
    g: &visage_client::Gallery,
    kind: &str,
    json: bool,
    call: impl std::future::Future<Output = visage_client::Result<T>>,
) -> visage_client::Result<T> {
    use std::io::IsTerminal;
    let hidden = json || !std::io::stderr().is_terminal();
    let pb = progress_bar(0, hidden);
    pb.set_message(kind.to_owned());
    let poll = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            if let Ok(info) = g.stats().await
                && let Some(op) = info.operations.iter().find(|o| o.kind == kind)
            {
                pb.set_length(op.bytes_total);
                pb.set_position(op.bytes_done);
            }
        }
    };
    let out = if hidden {
        call.await
    } else {
        tokio::select! {
            out = call => out,
            () = poll => unreachable!("the poll never ends"),
        }
    };
    pb.finish_and_clear();
    out
}

fn progress_bar(len: u64, hidden: bool) -> ProgressBar {
    let target = if hidden {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let pb = ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg} [{bar:32}] {human_pos}/{human_len} {per_sec} ETA {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

async fn insert(client: &Client, a: InsertArgs, json: bool) -> Res {
    let g = a.model.gallery(client, &a.gallery);
    // Fail early and clearly if the gallery does not exist; its dimension
    // checks the file and the batch size.
    let info = g.stats().await?;
    let limit = Limits::for_dim(info.dim as usize).insert_batch;
    let batch = a
        .batch
        .unwrap_or_else(|| visage_client::default_batch(info.dim as usize));
    if batch == 0 || batch > limit {
        return Err(Failure(format!(
            "--batch must be 1 to {limit} for gallery {} ({}-d), got {}",
            a.gallery, info.dim, batch
        )));
    }
    let m = read_vectors(&a.vectors, &info)?;
    let n = m.rows;
    let subjects = read_lines(&a.subjects, "subject")?;
    if subjects.len() != n {
        return Err(Failure(format!(
            "{} has {} subjects but {} has {n} vectors (one subject per line, one per vector)",
            a.subjects.display(),
            subjects.len(),
            a.vectors.display()
        )));
    }
    let ids = match &a.ids {
        _ if a.assign_ids => None,
        Some(p) => {
            let ids = read_ids(p)?;
            if ids.len() != n {
                return Err(Failure(format!(
                    "{} has {} ids but {} has {n} vectors",
                    p.display(),
                    ids.len(),
                    a.vectors.display()
                )));
            }
            Some(ids)
        }
        None => {
            let last = a.start_id.checked_add(n as u64);
            if last.is_none() {
                return Err(Failure(
                    "--start-id + number of vectors overflows a u64".into(),
                ));
            }
            Some((a.start_id..a.start_id + n as u64).collect())
        }
    };
    let dim = m.cols;
    // Packed batches: the vectors as they came from the file, no message
    // per vector.
    let data = Arc::new((m, subjects, ids));
    let make = {
        let data = data.clone();
        move |start: usize| -> Rows {
            let (m, subjects, ids) = &*data;
            let end = (start + batch).min(m.rows);
            Rows {
                vectors: m.data[start * dim..end * dim].to_vec(),
                dim: dim as u32,
                subjects: subjects[start..end].to_vec(),
                ids: ids.as_ref().map(|ids| ids[start..end].to_vec()),
            }
        }
    };
    let pb = progress_bar(n as u64, a.no_progress || json);
    pb.set_message(format!("inserting into {}", a.gallery));
    let t = Instant::now();
    let mut conflicts = Vec::new();
    let check = match a.conflicts {
        ConflictsArg::Off => None,
        ConflictsArg::Report => Some(visage_client::proto::ConflictCheck::Report),
        ConflictsArg::Reject => Some(visage_client::proto::ConflictCheck::Reject),
    };
    let result: Result<(InsertOutcome, Vec<u64>), visage_client::Error> = if let Some(check) = check
    {
        g.insert_rows_checked(
            (0..n).step_by(batch).map(make),
            a.concurrency,
            check,
            |len| {
                pb.inc(len);
            },
        )
        .await
        .map(|(out, ids, found)| {
            conflicts = found;
            (out, ids)
        })
    } else if a.stream {
        let pb2 = pb.clone();
        let batches = (0..n)
            .step_by(batch)
            .map(make)
            .inspect(move |b| pb2.inc(b.len() as u64));
        g.insert_rows_stream(tokio_stream::iter(batches)).await
    } else {
        g.insert_rows((0..n).step_by(batch).map(make), a.concurrency, |len| {
            pb.inc(len);
        })
        .await
    };
    pb.finish_and_clear();
    let (out, assigned) = result?;
    if let Some(path) = &a.ids_out {
        let ids = data.2.as_deref().unwrap_or(&assigned);
        npy::write_ids(path, ids)
            .map_err(|e| Failure(format!("cannot write {}: {e}", path.display())))?;
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = if secs > 0.0 { n as f64 / secs } else { 0.0 };
    if json {
        let found: Vec<Value> = conflicts
            .iter()
            .map(|c| {
                json!({
                    "position": c.position, "subject": c.subject, "other_subject": c.other_subject,
                    "other_id": c.other_id, "other_position": c.other_position,
                    "distance": c.distance, "probability": c.probability,
                })
            })
            .collect();
        print_json(&json!({
            "gallery": a.gallery, "inserted": out.inserted, "replaced": out.replaced,
            "batches": out.batches, "seconds": secs, "per_second": rate,
            "seq": out.seq, "conflicts": found,
        }))?;
    } else {
        println!("{}", insert_text(&a.gallery, &out, secs, rate));
        if check.is_some() {
            println!(
                "{} possible double enrolments{}",
                count(conflicts.len() as u64),
                if conflicts.is_empty() { "" } else { ":" }
            );
            if !conflicts.is_empty() {
                let mut t = Table::new(
                    &[
                        "ROW",
                        "SUBJECT",
                        "LOOKS LIKE",
                        "ID",
                        "DISTANCE",
                        "PROBABILITY",
                    ],
                    &[true, false, false, true, true, true],
                );
                for c in &conflicts {
                    t.row(vec![
                        c.position.to_string(),
                        c.subject.clone(),
                        c.other_subject.clone(),
                        match c.other_position {
                            Some(p) => format!("row {p}"),
                            None => c.other_id.to_string(),
                        },
                        distance(c.distance),
                        probability(c.probability),
                    ]);
                }
                print!("{}", t.render());
            }
        }
    }
    Ok(())
}

/// What `visage insert` prints. In cluster mode (a non-zero `seq`) the rows
/// are acknowledged once logged, so new and replaced are not known: the log
/// position is printed instead.
fn insert_text(gallery: &str, out: &InsertOutcome, secs: f64, rate: f64) -> String {
    let head = format!("inserted {} embeddings into {gallery}", count(out.total()));
    let speed = format!("in {secs:.2} s ({}/s)", count(rate as u64));
    if out.seq == 0 {
        format!(
            "{head} ({} new, {} replaced) {speed}",
            count(out.inserted),
            count(out.replaced)
        )
    } else {
        format!(
            "{head} {speed}, up to log seq {seq} (read them with --min-seq {seq})",
            seq = out.seq
        )
    }
}

async fn search(client: &Client, a: SearchArgs, json: bool) -> Res {
    let g = a.model.gallery(client, &a.gallery);
    let info = g.stats().await?;
    let probes = read_vectors(&a.probes, &info)?;
    let rows: Vec<&[f32]> = probes.rows().collect();
    let opts = SearchOptions {
        k: a.k,
        rank_by_head: matches!(a.rank_by, Rank::Head),
        max_distance: a.max_distance,
        quantized: a.quantized,
        min_seq: a.min_seq.min_seq,
    };
    let results = g.search_with(&rows, &opts).await?;
    if json {
        let v: Vec<Value> = results
            .iter()
            .enumerate()
            .map(|(p, hits)| {
                let hits: Vec<Value> = hits
                    .iter()
                    .map(|h| {
                        json!({"id": h.id, "subject": h.subject, "distance": h.distance, "probability": h.probability, "similarity": h.similarity})
                    })
                    .collect();
                json!({ "probe": p, "hits": hits })
            })
            .collect();
        return print_json(&Value::Array(v));
    }
    // A normalising gallery's hits also show their cosine similarity.
    let cosine = info.normalize;
    let mut headers = vec!["PROBE", "RANK", "ID", "SUBJECT", "DISTANCE"];
    headers.extend(cosine.then_some("SIMILARITY"));
    headers.push("PROBABILITY");
    let mut right = vec![true; headers.len()];
    right[3] = false;
    let mut t = Table::new(&headers, &right);
    for (p, hits) in results.iter().enumerate() {
        if hits.is_empty() {
            let mut row = vec![p.to_string(), "-".into(), "-".into(), "(no hit)".into()];
            row.extend(dashes(headers.len() - 4));
            t.row(row);
        }
        for (r, h) in hits.iter().enumerate() {
            let mut row = vec![
                p.to_string(),
                (r + 1).to_string(),
                h.id.to_string(),
                h.subject.clone(),
                distance(h.distance),
            ];
            row.extend(cosine.then(|| similarity(h.similarity)));
            row.push(probability(h.probability));
            t.row(row);
        }
    }
    print!("{}", t.render());
    Ok(())
}

fn dashes(n: usize) -> impl Iterator<Item = String> {
    std::iter::repeat_n("-".to_string(), n)
}

async fn identify(client: &Client, a: IdentifyArgs, json: bool) -> Res {
    let g = a
        .model
        .gallery(client, &a.gallery)
        .with_min_seq(a.min_seq.min_seq);
    let info = g.stats().await?;
    let probes = read_vectors(&a.probes, &info)?;
    let rows: Vec<&[f32]> = probes.rows().collect();
    let threshold = Threshold {
        max_distance: a.max_distance,
        min_probability: a.min_probability,
    };
    let results = g.identify_with(&rows, a.k, threshold).await?;
    if json {
        let v: Vec<Value> = results
            .iter()
            .enumerate()
            .map(|(p, r)| {
                let candidates: Vec<Value> = r
                    .candidates
                    .iter()
                    .map(|c| {
                        json!({"subject": c.subject, "id": c.id, "distance": c.distance, "probability": c.probability, "similarity": c.similarity})
                    })
                    .collect();
                json!({ "probe": p, "known": r.known, "subject": r.subject, "candidates": candidates })
            })
            .collect();
        return print_json(&Value::Array(v));
    }
    let cosine = info.normalize;
    let mut headers = vec!["PROBE", "ANSWER", "RANK", "SUBJECT", "ID", "DISTANCE"];
    headers.extend(cosine.then_some("SIMILARITY"));
    headers.push("PROBABILITY");
    let mut right = vec![true; headers.len()];
    (right[1], right[3]) = (false, false);
    let mut t = Table::new(&headers, &right);
    for (p, r) in results.iter().enumerate() {
        let answer = if r.known {
            r.subject.clone()
        } else {
            "unknown".into()
        };
        if r.candidates.is_empty() {
            let mut row = vec![p.to_string(), answer.clone()];
            row.extend(dashes(headers.len() - 2));
            t.row(row);
        }
        for (i, c) in r.candidates.iter().enumerate() {
            let answer = if i == 0 {
                answer.clone()
            } else {
                String::new()
            };
            let mut row = vec![
                p.to_string(),
                answer,
                (i + 1).to_string(),
                c.subject.clone(),
                c.id.to_string(),
                distance(c.distance),
            ];
            row.extend(cosine.then(|| similarity(c.similarity)));
            row.push(probability(c.probability));
            t.row(row);
        }
    }
    print!("{}", t.render());
    Ok(())
}

async fn verify(client: &Client, a: VerifyArgs, json: bool) -> Res {
    let g = a
        .model
        .gallery(client, &a.gallery)
        .with_min_seq(a.min_seq.min_seq);
    let info = g.stats().await?;
    let left = read_vectors(&a.a, &info)?;
    let others: Vec<Against> = match (&a.b, &a.b_ids, &a.b_subjects) {
        (Some(p), _, _) => read_vectors(p, &info)?
            .rows()
            .map(|r| Against::Vector(r.to_vec()))
            .collect(),
        (None, Some(p), _) => read_ids(p)?.into_iter().map(Against::Id).collect(),
        (None, None, Some(p)) => read_lines(p, "subject")?
            .into_iter()
            .map(Against::Subject)
            .collect(),
        (None, None, None) => {
            return Err(Failure(
                "give --b FILE.npy, --b-ids FILE or --b-subjects FILE".into(),
            ));
        }
    };
    if others.len() != left.rows {
        return Err(Failure(format!(
            "{} has {} vectors but the other side has {} (pairs are taken row by row)",
            a.a.display(),
            left.rows,
            others.len()
        )));
    }
    let pairs: Vec<(Vec<f32>, Against)> = left.rows().map(<[f32]>::to_vec).zip(others).collect();
    let threshold = Threshold {
        max_distance: a.max_distance,
        min_probability: a.min_probability,
    };
    let verdicts = g.verify_with(&pairs, threshold).await?;
    if json {
        let v: Vec<Value> = verdicts
            .iter()
            .enumerate()
            .map(|(i, v)| {
                json!({"pair": i, "same": v.same, "distance": v.distance, "probability": v.probability, "similarity": v.similarity, "matched_id": v.matched_id})
            })
            .collect();
        return print_json(&Value::Array(v));
    }
    let cosine = info.normalize;
    let mut headers = vec!["PAIR", "SAME", "DISTANCE"];
    headers.extend(cosine.then_some("SIMILARITY"));
    headers.extend(["PROBABILITY", "MATCHED ID"]);
    let mut right = vec![true; headers.len()];
    right[1] = false;
    let mut t = Table::new(&headers, &right);
    for (i, v) in verdicts.iter().enumerate() {
        let mut row = vec![
            i.to_string(),
            if v.same { "yes" } else { "no" }.into(),
            distance(v.distance),
        ];
        row.extend(cosine.then(|| similarity(v.similarity)));
        row.push(probability(v.probability));
        row.push(v.matched_id.map_or("-".into(), |id| id.to_string()));
        t.row(row);
    }
    print!("{}", t.render());
    Ok(())
}

async fn export(client: &Client, a: ExportArgs, json: bool) -> Res {
    let g = client.gallery(&a.gallery);
    // The dimension, also for an empty gallery.
    let dim = g.stats().await?.dim as usize;
    let t = Instant::now();
    let rows = g.export(0).await?;
    let ids = rows.ids.unwrap_or_default();
    std::fs::create_dir_all(&a.dir)
        .map_err(|e| Failure(format!("cannot create {}: {e}", a.dir.display())))?;
    let m = Matrix {
        rows: ids.len(),
        cols: dim,
        data: rows.vectors,
    };
    npy::write_matrix(a.dir.join("embeddings.npy"), &m)?;
    npy::write_ids(a.dir.join("ids.npy"), &ids)?;
    let mut text = rows.subjects.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    let path = a.dir.join("subjects.txt");
    std::fs::write(&path, text)
        .map_err(|e| Failure(format!("cannot write {}: {e}", path.display())))?;
    let secs = t.elapsed().as_secs_f64();
    if json {
        return print_json(&json!({
            "gallery": a.gallery, "embeddings": ids.len(), "dim": dim,
            "dir": a.dir.display().to_string(), "seconds": secs,
        }));
    }
    println!(
        "exported {} embeddings of {} to {} (embeddings.npy, ids.npy, subjects.txt) in {secs:.2} s",
        count(ids.len() as u64),
        a.gallery,
        a.dir.display()
    );
    Ok(())
}

async fn subjects(client: &Client, a: SubjectsArgs, json: bool) -> Res {
    let all = client.gallery(&a.gallery).subjects(a.page_size).await?;
    if json {
        let v: Vec<Value> = all
            .iter()
            .map(|s| json!({"subject": s.subject, "embeddings": s.embeddings}))
            .collect();
        return print_json(&Value::Array(v));
    }
    let mut t = Table::new(&["SUBJECT", "EMBEDDINGS"], &[false, true]);
    for s in &all {
        t.row(vec![s.subject.clone(), count(s.embeddings)]);
    }
    print!("{}", t.render());
    Ok(())
}

async fn get(client: &Client, a: GetArgs, json: bool) -> Res {
    let g = client.gallery(&a.gallery).with_min_seq(a.min_seq.min_seq);
    let found = g.get(&a.ids).await?;
    if let Some(out) = &a.out {
        // The gallery's dimension, also when no id was found.
        let dim = match found.first() {
            Some(e) => e.vector.len(),
            None => g.stats().await?.dim as usize,
        };
        let m = Matrix {
            rows: found.len(),
            cols: dim,
            data: found
                .iter()
                .flat_map(|e| e.vector.iter().copied())
                .collect(),
        };
        npy::write_matrix(out, &m)?;
    }
    if json {
        let v: Vec<Value> = found
            .iter()
            .map(|e| json!({"id": e.id, "subject": e.subject, "vector": e.vector}))
            .collect();
        return print_json(&Value::Array(v));
    }
    let mut t = Table::new(&["ID", "SUBJECT", "VECTOR"], &[true, false, false]);
    for e in &found {
        let head: Vec<String> = e.vector.iter().take(4).map(|x| format!("{x:.4}")).collect();
        t.row(vec![
            e.id.to_string(),
            e.subject.clone(),
            format!("[{}, ...]", head.join(", ")),
        ]);
    }
    print!("{}", t.render());
    let missing = a.ids.len() - found.len();
    if missing > 0 {
        eprintln!("{missing} of {} ids not found", a.ids.len());
    }
    Ok(())
}

async fn delete(client: &Client, a: DeleteArgs, json: bool) -> Res {
    let mut subjects = a.subjects;
    if let Some(p) = &a.subjects_file {
        subjects.extend(read_lines(p, "subject")?);
    }
    let d = client
        .gallery(&a.gallery)
        .delete_outcome(&a.ids, &subjects)
        .await?;
    if json {
        print_json(&json!({"gallery": a.gallery, "deleted": d.deleted, "seq": d.seq}))?;
    } else {
        println!("{}", delete_text(&a.gallery, &d));
    }
    Ok(())
}

/// What `visage delete` prints: on a single node the embeddings removed; in
/// cluster mode (a non-zero `seq`) the delete's log position, since the
/// replicas remove the rows only as they apply it.
fn delete_text(gallery: &str, d: &DeleteOutcome) -> String {
    if d.seq == 0 {
        format!("deleted {} embeddings from {gallery}", count(d.deleted))
    } else {
        format!(
            "deleted from {gallery} at log seq {seq} (reads with --min-seq {seq} no longer see them)",
            seq = d.seq
        )
    }
}

fn maintenance(verb: &str, gallery: &str, r: Maintenance, t: Instant, json: bool) -> Res {
    let secs = t.elapsed().as_secs_f64();
    if json {
        return print_json(&json!({
            "gallery": gallery, "seconds": secs,
            "before": stats_json(&r.before), "after": stats_json(&r.after),
        }));
    }
    println!("{verb} {gallery} in {secs:.2} s");
    let mut t = Table::new(&["", "BEFORE", "AFTER"], &[false, true, true]);
    let (b, a) = (r.before, r.after);
    for (k, x, y) in [
        ("live", count(b.live), count(a.live)),
        ("deleted", count(b.deleted), count(a.deleted)),
        ("subjects", count(b.subjects), count(a.subjects)),
        ("segments", count(b.segments), count(a.segments)),
        ("in memory", count(b.memtable_rows), count(a.memtable_rows)),
        ("on disk", bytes(b.bytes_on_disk), bytes(a.bytes_on_disk)),
    ] {
        t.row(vec![k.into(), x, y]);
    }
    print!("{}", t.render());
    Ok(())
}

/// A head as JSON: every field of `HeadInfo`.
fn head_json(h: &HeadInfo) -> Value {
    let det = |d: &[DetPoint]| -> Value {
        d.iter()
            .map(|p| json!({"far": p.far, "frr": p.frr}))
            .collect()
    };
    let op = |p: &Option<DetPoint>| p.as_ref().map(|p| json!({"far": p.far, "frr": p.frr}));
    let model = |m: &Option<OpenSetModel>| {
        m.as_ref().map(|m| {
            json!({
                "subjects": m.subjects, "trusted_up_to": m.trusted_up_to,
                "points": m.points.iter().map(|p| json!({
                    "subjects": p.subjects, "threshold": p.threshold, "fpir_fixed": p.fpir_fixed,
                })).collect::<Vec<_>>(),
            })
        })
    };
    let mut v = json!({
        "trained": h.trained, "weights": h.weights, "distance_weight": h.distance_weight,
        "bias": h.bias, "threshold": h.threshold, "logit_threshold": h.logit_threshold,
        "target_far": h.target_far, "auc": h.auc, "tar_at_far": h.tar_at_far, "eer": h.eer,
        "pairs": h.pairs, "distance_threshold": h.distance_threshold,
        "distance_auc": h.distance_auc, "distance_tar_at_far": h.distance_tar_at_far,
        "distance_eer": h.distance_eer, "heldout_genuine": h.heldout_genuine,
        "heldout_impostor": h.heldout_impostor, "seed": h.seed,
        "open_logit_threshold": h.open_logit_threshold,
        "open_distance_threshold": h.open_distance_threshold,
        "open_tar": h.open_tar, "open_distance_tar": h.open_distance_tar,
        "open_probes": h.open_probes,
    });
    // In two parts: one json! of every field passes the macro's recursion limit.
    let calibration = json!({
        "calibration_current": h.calibration_current,
        "prior": h.prior,
        "probability_calibrated": h.probability_calibrated,
        "platt_a": h.platt_a, "platt_b": h.platt_b,
        "claim_score": claim_score_name(h),
        "claim_logit_thresholds": h.claim_logit_thresholds,
        "claim_distance_thresholds": h.claim_distance_thresholds,
        "claim_images": h.claim_images, "claim_tar": h.claim_tar,
        "claim_tar_other": h.claim_tar_other, "claim_distance_tar": h.claim_distance_tar,
        "open_head_model": model(&h.open_head_model),
        "open_distance_model": model(&h.open_distance_model),
        "det_head": det(&h.det_head), "det_distance": det(&h.det_distance),
        "op_head": op(&h.op_head), "op_distance": op(&h.op_distance),
        "current_subjects": h.current_subjects,
        "current_open_logit_threshold": h.current_open_logit_threshold,
        "current_open_distance_threshold": h.current_open_distance_threshold,
        "current_open_trusted": h.current_open_trusted,
    });
    if let (Value::Object(all), Value::Object(more)) = (&mut v, calibration) {
        all.extend(more);
    }
    v
}

/// `best` or `mean`: how a claim against a subject scores its images.
fn claim_score_name(h: &HeadInfo) -> &'static str {
    match h.claim_score() {
        ClaimScore::Best => "best",
        ClaimScore::Mean => "mean",
    }
}

/// The probability the head reports for logit `z`: calibrated at the prior
/// when the head has Platt scaling, else (older heads) the raw sigmoid.
fn probability_of(h: &HeadInfo, z: f32) -> f64 {
    let x = if h.probability_calibrated {
        h.platt_a * f64::from(z) + h.platt_b + (h.prior / (1.0 - h.prior)).ln()
    } else {
        f64::from(z)
    };
    1.0 / (1.0 + (-x).exp())
}

/// A rate, or `-` when it was not measured.
fn rate4(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.4}")
    }
}

/// A head's thresholds and quality, head against plain distance, as a table
/// and a few lines.
fn head_text(h: &HeadInfo) -> String {
    let mut t = Table::new(&["", "HEAD", "DISTANCE"], &[false, true, true]);
    let head_col = |v: String| if h.trained { v } else { "-".into() };
    let p_at = |logit: f32| format!("p >= {:.6} (logit >= {logit:.3})", probability_of(h, logit));
    t.row(vec![
        format!("1:1 threshold (verify; FAR {})", h.target_far),
        head_col(p_at(h.logit_threshold)),
        format!("d <= {:.4}", h.distance_threshold),
    ]);
    t.row(vec![
        "  TAR at that FAR".into(),
        head_col(format!("{:.4}", h.tar_at_far)),
        format!("{:.4}", h.distance_tar_at_far),
    ]);
    t.row(vec![
        "  AUC".into(),
        head_col(format!("{:.4}", h.auc)),
        format!("{:.4}", h.distance_auc),
    ]);
    t.row(vec![
        "  EER".into(),
        head_col(format!("{:.4}", h.eer)),
        format!("{:.4}", h.distance_eer),
    ]);
    let m = h.claim_images as usize;
    if m > 0 {
        // The thresholds at the image count the rates were measured at.
        let at = |v: &[f32]| v.get(m.min(v.len()).max(1) - 1).copied();
        let score = claim_score_name(h);
        let other = if score == "best" { "mean" } else { "best" };
        t.row(vec![
            format!(
                "claim threshold (verify a subject of {m} images; FAR {})",
                h.target_far
            ),
            head_col(
                at(&h.claim_logit_thresholds).map_or("-".into(), |l| match h.claim_score() {
                    ClaimScore::Best => format!("best {}", p_at(l)),
                    ClaimScore::Mean => format!("mean logit >= {l:.3}"),
                }),
            ),
            at(&h.claim_distance_thresholds).map_or("-".into(), |d| format!("nearest d <= {d:.4}")),
        ]);
        t.row(vec![
            format!(
                "  claim TAR ({score} of {m}; {other}: {})",
                rate4(h.claim_tar_other)
            ),
            head_col(rate4(h.claim_tar)),
            rate4(h.claim_distance_tar),
        ]);
    }
    let rule = (
        h.current_open_logit_threshold,
        h.current_open_distance_threshold,
    );
    if rule.0.is_some() || rule.1.is_some() {
        t.row(vec![
            format!(
                "open-set threshold (identify; FPIR {}; N = {} now)",
                h.target_far,
                count(h.current_subjects)
            ),
            head_col(rule.0.map_or("-".into(), p_at)),
            rule.1.map_or("-".into(), |d| format!("d <= {d:.4}")),
        ]);
    }
    let training_n = h
        .open_head_model
        .as_ref()
        .or(h.open_distance_model.as_ref())
        .map(|m| m.subjects);
    if h.open_probes > 0 {
        if let Some(n0) = training_n {
            t.row(vec![
                format!("  at training N = {}", count(n0)),
                head_col(p_at(h.open_logit_threshold)),
                format!("d <= {:.4}", h.open_distance_threshold),
            ]);
        }
        t.row(vec![
            "  open-set TAR (at training N)".into(),
            head_col(format!("{:.4}", h.open_tar)),
            format!("{:.4}", h.open_distance_tar),
        ]);
    }
    let mut out = t.render();
    if h.trained {
        let (lo, hi) = h
            .weights
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), w| {
                (lo.min(*w), hi.max(*w))
            });
        out.push_str(&format!(
            "logit z = sum_k w_k |a_k - b_k| + w_d |a - b|^2 + bias: {} weights in [{lo:.3}, {hi:.3}], w_d = {:.4}, bias = {:.4}\n",
            h.weights.len(),
            h.distance_weight,
            h.bias
        ));
        if h.probability_calibrated {
            out.push_str(&format!(
                "probabilities: calibrated P(same person) for one comparison at prior {}: \
                 p = sigmoid({:.4} z + {:.4} + ln(prior / (1 - prior)))\n",
                h.prior, h.platt_a, h.platt_b
            ));
        } else {
            out.push_str(
                "probabilities: uncalibrated, p = sigmoid(z) (older head file: retrain to calibrate them)\n",
            );
        }
        out.push_str(&format!(
            "trained on {} pairs; calibrated on {} genuine and {} impostor held-out pairs",
            count(h.pairs),
            count(h.heldout_genuine),
            count(h.heldout_impostor),
        ));
    } else {
        out.push_str(&format!(
            "calibrated on {} genuine and {} impostor held-out pairs",
            count(h.heldout_genuine),
            count(h.heldout_impostor),
        ));
    }
    if h.open_probes > 0 {
        out.push_str(&format!(
            " and {} held-out probes (open set)",
            count(h.open_probes)
        ));
    }
    out.push_str(&format!(" (seed {})\n", h.seed));
    if !h.calibration_current {
        out.push_str(
            "calibration of an older head file: no claim thresholds, fixed open-set thresholds, \
             uncalibrated probabilities (retrain to get them)\n",
        );
    } else if let Some(m) = h
        .open_head_model
        .as_ref()
        .or(h.open_distance_model.as_ref())
    {
        out.push_str(&format!(
            "identification thresholds follow the enrolled subjects: set for N = {} now \
             (training N = {}; backed by observed scores up to N = {})\n",
            count(h.current_subjects),
            count(m.subjects),
            count(m.trusted_up_to),
        ));
        if !h.current_open_trusted {
            let remedy = if h.current_subjects > m.subjects {
                "retrain to calibrate at this size"
            } else {
                "too few held-out probes to observe the target rate at this size \
                 (a larger gallery or target FAR backs it by observed scores)"
            };
            out.push_str(&format!(
                "  N = {} is beyond that: its threshold rests on the fitted tail of the scores; {remedy}\n",
                count(h.current_subjects)
            ));
        }
    }
    out
}

fn head(gallery: &str, h: &HeadInfo, json: bool) -> Res {
    if json {
        return print_json(&head_json(h));
    }
    if !h.trained && h.distance_threshold == 0.0 {
        println!(
            "gallery {gallery} has no head and no calibrated threshold (train one with: visage train-head {gallery})"
        );
        return Ok(());
    }
    println!(
        "gallery {gallery}: {}",
        if h.trained {
            "trained scoring head"
        } else {
            "no head; distance thresholds calibrated"
        }
    );
    print!("{}", head_text(h));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("visage").chain(args.iter().copied()))
    }

    #[test]
    fn create_takes_shards_and_replicas() {
        let cli = parse(&["gallery", "create", "g", "--shards", "8", "--replicas", "3"]).unwrap();
        let Command::Gallery(GalleryCommand::Create {
            shards, replicas, ..
        }) = cli.command
        else {
            panic!("not gallery create: {cli:?}");
        };
        assert_eq!((shards, replicas), (Some(8), Some(3)));
        // Not given: the server's defaults (sent as 0).
        let cli = parse(&["gallery", "create", "g"]).unwrap();
        let Command::Gallery(GalleryCommand::Create {
            shards, replicas, ..
        }) = cli.command
        else {
            panic!("not gallery create: {cli:?}");
        };
        assert_eq!((shards, replicas), (None, None));
        // 0 is not a count of shards or copies.
        assert!(parse(&["gallery", "create", "g", "--shards", "0"]).is_err());
        assert!(parse(&["gallery", "create", "g", "--replicas", "0"]).is_err());
    }

    #[test]
    fn reads_take_min_seq() {
        let seq = |args: &[&str]| match parse(args).unwrap().command {
            Command::Search(a) => a.min_seq.min_seq,
            Command::Identify(a) => a.min_seq.min_seq,
            Command::Verify(a) => a.min_seq.min_seq,
            Command::Get(a) => a.min_seq.min_seq,
            c => panic!("not a read: {c:?}"),
        };
        assert_eq!(
            seq(&["search", "g", "--probes", "p.npy", "--min-seq", "42"]),
            42
        );
        assert_eq!(seq(&["search", "g", "--probes", "p.npy"]), 0);
        assert_eq!(
            seq(&["identify", "g", "--probes", "p.npy", "--min-seq", "7"]),
            7
        );
        assert_eq!(
            seq(&[
                "verify",
                "g",
                "--a",
                "a.npy",
                "--b-ids",
                "b.txt",
                "--min-seq",
                "9"
            ]),
            9
        );
        assert_eq!(
            seq(&[
                "get",
                "g",
                "--ids",
                "1,2",
                "--min-seq",
                "18446744073709551615"
            ]),
            u64::MAX
        );
        assert!(parse(&["get", "g", "--ids", "1", "--min-seq", "-1"]).is_err());
    }

    #[test]
    fn cluster_status_parses_with_json() {
        let cli = parse(&["cluster", "status", "--json"]).unwrap();
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::Status)
        ));
    }

    #[test]
    fn writes_print_their_log_seq_in_cluster_mode() {
        let single = InsertOutcome {
            inserted: 1500,
            replaced: 2,
            batches: 4,
            seq: 0,
        };
        assert_eq!(
            insert_text("staff", &single, 0.5, 3004.0),
            "inserted 1,502 embeddings into staff (1,500 new, 2 replaced) in 0.50 s (3,004/s)"
        );
        let logged = InsertOutcome {
            inserted: 1500,
            replaced: 0,
            batches: 4,
            seq: 4711,
        };
        assert_eq!(
            insert_text("staff", &logged, 0.5, 3000.0),
            "inserted 1,500 embeddings into staff in 0.50 s (3,000/s), up to log seq 4711 \
             (read them with --min-seq 4711)"
        );
        assert_eq!(
            delete_text(
                "staff",
                &DeleteOutcome {
                    deleted: 12,
                    seq: 0
                }
            ),
            "deleted 12 embeddings from staff"
        );
        assert_eq!(
            delete_text(
                "staff",
                &DeleteOutcome {
                    deleted: 0,
                    seq: 99
                }
            ),
            "deleted from staff at log seq 99 (reads with --min-seq 99 no longer see them)"
        );
    }

    #[test]
    fn gallery_text_shows_shards_only_in_cluster_mode() {
        let single = GalleryInfo {
            name: "staff".into(),
            dim: 128,
            shards: 1,
            replicas: 1,
            ..GalleryInfo::default()
        };
        assert_eq!(spec_text(&single), "");
        assert!(!info_text(&single).contains("cluster"));
        let old = GalleryInfo {
            shards: 0,
            replicas: 0,
            ..single.clone()
        };
        assert_eq!(spec_text(&old), "");
        let big = GalleryInfo {
            dim: 512,
            shards: 8,
            replicas: 1,
            ..single.clone()
        };
        assert_eq!(spec_text(&big), " (512-d, 8 shards of 1 replica)");
        assert!(
            info_text(&big).contains("8 shards, 1 replica each"),
            "{}",
            info_text(&big)
        );
        assert_eq!(info_json(&big)["shards"], 8);
        assert_eq!(info_json(&big)["replicas"], 1);
    }
}

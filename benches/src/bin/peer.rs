//! The Rust side of the Python benchmarks (`benches/python/bench_python.py`):
//! the same work as the Python package does, through the Rust client on the
//! same server or through the engine in-process on the same data directory,
//! timed the same way. Each command prints one JSON line.
//!
//! ```sh
//! peer client-insert --server 127.0.0.1:50051 --gallery g --vectors base.npy
//! peer client-search --server 127.0.0.1:50051 --gallery g --probes probes.npy -k 10 --runs 3
//! peer engine-search --data-dir DIR --gallery g --probes probes.npy -k 10 --runs 3
//! peer engine-insert --data-dir DIR --gallery g --vectors base.npy
//! ```
//!
//! Inserts leave the ids to the gallery (as the Python package's `add`
//! without `ids` does) and name row `i`'s subject `s{i / 10}` (ten images a
//! person), in batches of `--batch` rows with `--concurrency` requests in
//! flight (the client) or one after another (the engine).

use clap::{Parser, Subcommand};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;
use visage_client::npy;
use visage_client::{Client, Rows};
use visage_engine::{Engine, EngineOptions, SearchOptions};

#[derive(Parser)]
#[command(about = "The Rust client and engine beside the Python package, on the same data")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Insert every row of --vectors into an existing gallery through the client.
    ClientInsert {
        #[arg(long)]
        server: String,
        #[arg(long)]
        gallery: String,
        #[arg(long)]
        vectors: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Search all of --probes in one call through the client, --runs times.
    ClientSearch {
        #[arg(long)]
        server: String,
        #[arg(long)]
        gallery: String,
        #[arg(long)]
        probes: PathBuf,
        #[arg(short, default_value_t = 10)]
        k: u32,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Search all of --probes in one call through the engine, --runs times.
    EngineSearch {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        gallery: String,
        #[arg(long)]
        probes: PathBuf,
        #[arg(short, default_value_t = 10)]
        k: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Insert every row of --vectors into a new gallery of the engine
    /// in-process (durable, as the server runs it).
    EngineInsert {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        gallery: String,
        #[arg(long)]
        vectors: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
    },
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `search` timed `runs` times: the JSON line of its median rate.
fn timed_searches(
    probes: usize,
    runs: usize,
    mut search: impl FnMut() -> usize,
) -> serde_json::Value {
    let times: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            let answered = search();
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(answered, probes, "one result per probe");
            secs
        })
        .collect();
    let s = median(times.clone());
    json!({"probes": probes, "seconds": s, "per_second": probes as f64 / s, "runs": times})
}

fn subjects(start: usize, end: usize) -> Vec<String> {
    (start..end).map(|i| format!("s{}", i / 10)).collect()
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let out = match cli.cmd {
        Cmd::ClientInsert {
            server,
            gallery,
            vectors,
            batch,
            concurrency,
        } => {
            let m = npy::read_f32(&vectors).expect("vectors");
            let dim = m.cols;
            rt.block_on(async {
                let c = Client::connect(&format!("http://{server}"))
                    .await
                    .expect("connect");
                let g = c.gallery(&gallery);
                let t = Instant::now();
                let batches = (0..m.rows).step_by(batch).map(|s| {
                    let e = (s + batch).min(m.rows);
                    Rows {
                        vectors: m.data[s * dim..e * dim].to_vec(),
                        dim: dim as u32,
                        subjects: subjects(s, e),
                        ids: None,
                    }
                });
                let (o, ids) = g
                    .insert_rows(batches, concurrency, |_| {})
                    .await
                    .expect("insert");
                let secs = t.elapsed().as_secs_f64();
                assert_eq!((o.total(), ids.len()), (m.rows as u64, m.rows));
                json!({"rows": m.rows, "seconds": secs, "per_second": m.rows as f64 / secs})
            })
        }
        Cmd::ClientSearch {
            server,
            gallery,
            probes,
            k,
            runs,
        } => {
            let p = npy::read_f32(&probes).expect("probes");
            let rows: Vec<&[f32]> = p.rows().collect();
            let c = rt
                .block_on(Client::connect(&format!("http://{server}")))
                .expect("connect");
            let g = c.gallery(&gallery);
            timed_searches(rows.len(), runs, || {
                rt.block_on(g.search(&rows, k)).expect("search").len()
            })
        }
        Cmd::EngineSearch {
            data_dir,
            gallery,
            probes,
            k,
            runs,
        } => {
            let p = npy::read_f32(&probes).expect("probes");
            let rows: Vec<&[f32]> = p.rows().collect();
            let engine = Engine::open(&data_dir, EngineOptions::default()).expect("open");
            let g = engine.gallery(&gallery).expect("gallery");
            let opts = SearchOptions {
                k,
                ..SearchOptions::default()
            };
            timed_searches(rows.len(), runs, || {
                g.search_with(&rows, &opts).expect("search").len()
            })
        }
        Cmd::EngineInsert {
            data_dir,
            gallery,
            vectors,
            batch,
        } => {
            let m = npy::read_f32(&vectors).expect("vectors");
            let dim = m.cols;
            let engine = Engine::open(&data_dir, EngineOptions::default()).expect("open");
            let g = engine
                .create_gallery_with(&gallery, &visage_engine::GallerySpec::with_dim(dim))
                .expect("create");
            let t = Instant::now();
            for s in (0..m.rows).step_by(batch) {
                let e = (s + batch).min(m.rows);
                g.insert_rows(None, &subjects(s, e), &m.data[s * dim..e * dim])
                    .expect("insert");
            }
            let secs = t.elapsed().as_secs_f64();
            json!({"rows": m.rows, "seconds": secs, "per_second": m.rows as f64 / secs})
        }
    };
    println!("{out}");
}

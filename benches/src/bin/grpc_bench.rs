//! gRPC benchmark: the release `visage-server` over loopback against the
//! engine in the same process, in the same run.
//!
//! ```text
//! cargo build --release -p visage-server -p visage-bench
//! target/release/grpc_bench                       # full run (500k insert, 10k and 100k search)
//! target/release/grpc_bench --insert 20000 --sizes 10000 --queries 500   # quick smoke run
//! ```
//!
//! Measures, on synthetic face-like embeddings (`visage_engine::synth`):
//! - insert throughput with batches of `--batch` (8,192: the client's default
//!   at 128 values a vector) in the default durable
//!   mode (WAL fsynced before each acknowledgement): the engine in-process
//!   and the server over gRPC, each with one batch in flight and with
//!   `--inflight` (4) batches in flight, and the ratio gRPC / engine;
//! - single-probe search (k = 10) over galleries of each `--sizes` (10,000
//!   and 100,000): QPS and latency p50 / p99 end to end with 1 and 8
//!   concurrent clients (each its own connection), next to the engine's
//!   in-process single-probe latency on the same data.
//!
//! Prints a table (or `--json`). The machine is shared: do not run it beside
//! builds or other benchmarks.

use clap::Parser;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use visage_bench::server::ServerProc;
use visage_client::{Client, Embedding as WireEmbedding, InsertOptions};
use visage_engine::synth::{SynthConfig, SynthGallery};
use visage_engine::{Embedding, Engine, EngineOptions};

/// gRPC insert and search benchmark of visage-server against the in-process engine.
#[derive(Debug, Parser)]
struct Args {
    /// The server binary (default: visage-server next to this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Embeddings inserted in the insert measurement.
    #[arg(long, default_value_t = 500_000)]
    insert: usize,
    /// Embeddings per insert batch.
    #[arg(long, default_value_t = visage_client::default_batch(128))]
    batch: usize,
    /// Batches in flight in the concurrent insert measurement.
    #[arg(long, default_value_t = 4)]
    inflight: usize,
    /// Runs of each insert measurement (engine and gRPC in turn); the
    /// medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Gallery sizes for the search measurement, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    sizes: Vec<usize>,
    /// Single-probe searches per measurement (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 4000)]
    queries: usize,
    /// Concurrent clients for the search measurement, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    clients: Vec<usize>,
    /// Hits per search.
    #[arg(short, default_value_t = 10)]
    k: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn synth(n: usize, seed: u64) -> Vec<Embedding> {
    let mut e = SynthGallery::generate(SynthConfig {
        subjects: n.div_ceil(10),
        min_images: 10,
        max_images: 10,
        seed,
        ..Default::default()
    })
    .embeddings;
    e.truncate(n);
    e
}

fn wire(e: &[Embedding]) -> Vec<WireEmbedding> {
    e.iter()
        .map(|e| WireEmbedding {
            id: e.id,
            subject: e.subject.clone(),
            vector: e.vector.clone(),
        })
        .collect()
}

/// Embeddings per second inserting `data` into a fresh in-process engine
/// (default durable options) with `inflight` threads taking batches in turn.
fn engine_insert(data: &Arc<Vec<Embedding>>, batch: usize, inflight: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open engine");
    let g = engine.create_gallery("bench").expect("create");
    let batches: Vec<(usize, usize)> = (0..data.len())
        .step_by(batch)
        .map(|s| (s, (s + batch).min(data.len())))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..inflight {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(a, b)) = batches.get(i) else { break };
                    g.insert(&data[a..b]).expect("insert");
                }
            });
        }
    });
    data.len() as f64 / t.elapsed().as_secs_f64()
}

/// Embeddings per second inserting `data` over gRPC into a fresh gallery.
async fn grpc_insert(
    client: &Client,
    name: &str,
    data: &[WireEmbedding],
    batch: usize,
    inflight: usize,
) -> f64 {
    client.create_gallery(name).await.expect("create gallery");
    let g = client.gallery(name);
    let t = Instant::now();
    let out = g
        .insert_with(
            data,
            InsertOptions {
                batch,
                concurrency: inflight,
            },
            |_| {},
        )
        .await
        .expect("insert");
    assert_eq!(out.total(), data.len() as u64);
    data.len() as f64 / t.elapsed().as_secs_f64()
}

struct Latencies {
    qps: f64,
    p50_us: f64,
    p99_us: f64,
}

fn summarise(mut lat: Vec<Duration>, wall: Duration) -> Latencies {
    lat.sort_unstable();
    let pick = |q: f64| -> f64 {
        let i = ((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1e6
    };
    Latencies {
        qps: lat.len() as f64 / wall.as_secs_f64(),
        p50_us: pick(0.50),
        p99_us: pick(0.99),
    }
}

/// Single-probe searches from `clients` connections, `total` in all.
async fn grpc_search(
    url: &str,
    name: &str,
    probes: &Arc<Vec<Vec<f32>>>,
    total: usize,
    clients: usize,
    k: u32,
) -> Latencies {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(Client::connect(url).await.expect("connect").gallery(name));
    }
    // Warm-up.
    for (i, g) in conns.iter().enumerate() {
        for j in 0..(total / 10 / clients).max(5) {
            let q = &probes[(i * 7919 + j) % probes.len()];
            g.search(&[q], k).await.expect("search");
        }
    }
    let per = total.div_ceil(clients);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, g) in conns.into_iter().enumerate() {
        let probes = probes.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for j in 0..per {
                let q = &probes[(i * per + j) % probes.len()];
                let s = Instant::now();
                let r = g.search(&[q], k).await.expect("search");
                lat.push(s.elapsed());
                assert_eq!(r[0].len(), k as usize);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("search task"));
    }
    summarise(all, t.elapsed())
}

/// The engine's own single-probe latency on `data` (in process, one thread).
fn engine_search(data: &[Embedding], probes: &[Vec<f32>], total: usize, k: usize) -> Latencies {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = EngineOptions::default();
    opts.gallery.durability = visage_engine::Durability::ProcessCrash;
    let engine = Engine::open(dir.path(), opts).expect("open engine");
    let g = engine.create_gallery("bench").expect("create");
    for c in data.chunks(10_000) {
        g.insert(c).expect("insert");
    }
    g.flush().expect("flush");
    for q in probes.iter().take(total / 10) {
        g.search(&[q], k).expect("search");
    }
    let mut lat = Vec::with_capacity(total);
    let t = Instant::now();
    for j in 0..total {
        let s = Instant::now();
        g.search(&[&probes[j % probes.len()]], k).expect("search");
        lat.push(s.elapsed());
    }
    summarise(lat, t.elapsed())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args = Args::parse();
    let server_bin = ServerProc::binary(args.server_bin.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = ServerProc::start(&server_bin);
    let url = server.url();
    let client = rt.block_on(Client::connect(&url)).expect("connect");
    let mut report = serde_json::Map::new();

    // Insert: the same data, the same batch size, engine then gRPC, in turn
    // `--runs` times; the medians (the machine is shared and noisy).
    let data = Arc::new(synth(args.insert, 1));
    let wire_data = wire(&data);
    let mut insert_rows = Vec::new();
    for inflight in [1, args.inflight] {
        let (mut engine_rates, mut grpc_rates) = (Vec::new(), Vec::new());
        for run in 0..args.runs.max(1) {
            engine_rates.push(engine_insert(&data, args.batch, inflight));
            let name = format!("insert-{inflight}-{run}");
            grpc_rates.push(rt.block_on(grpc_insert(
                &client, &name, &wire_data, args.batch, inflight,
            )));
            rt.block_on(client.drop_gallery(&name)).expect("drop");
        }
        insert_rows.push((inflight, median(engine_rates), median(grpc_rates)));
    }
    report.insert(
        "insert".into(),
        json!(insert_rows
            .iter()
            .map(|(f, e, g)| json!({"batch": args.batch, "inflight": f, "engine_per_s": e, "grpc_per_s": g, "ratio": g / e}))
            .collect::<Vec<_>>()),
    );

    // Search: galleries of each size, loaded over gRPC and flushed to segments.
    let probe_set = SynthGallery::generate(SynthConfig {
        subjects: 100,
        seed: 99,
        ..Default::default()
    });
    let probes: Arc<Vec<Vec<f32>>> = Arc::new(
        probe_set
            .embeddings
            .iter()
            .take(1000)
            .map(|e| e.vector.clone())
            .collect(),
    );
    let mut search_rows = Vec::new();
    for &size in &args.sizes {
        let data = synth(size, 7 + size as u64);
        let name = format!("search-{size}");
        rt.block_on(async {
            client.create_gallery(&name).await.expect("create");
            let g = client.gallery(&name);
            g.insert_with(
                &wire(&data),
                InsertOptions {
                    batch: 5000,
                    concurrency: 2,
                },
                |_| {},
            )
            .await
            .expect("load");
            g.flush().await.expect("flush");
        });
        let inproc = engine_search(&data, &probes, args.queries, args.k as usize);
        search_rows.push((size, 0usize, inproc));
        for &c in &args.clients {
            let l = rt.block_on(grpc_search(&url, &name, &probes, args.queries, c, args.k));
            search_rows.push((size, c, l));
        }
        rt.block_on(client.drop_gallery(&name)).expect("drop");
    }
    report.insert(
        "search".into(),
        json!(search_rows
            .iter()
            .map(|(n, c, l)| json!({"gallery": n, "clients": c, "via": if *c == 0 { "engine" } else { "grpc" }, "qps": l.qps, "p50_us": l.p50_us, "p99_us": l.p99_us}))
            .collect::<Vec<_>>()),
    );
    drop(client);
    drop(server);

    if args.json {
        println!("{}", serde_json::Value::Object(report));
        return;
    }
    println!(
        "gRPC insert, batches of {} (durable: WAL fsynced before each ack), {} embeddings, median of {} runs",
        args.batch, args.insert, args.runs
    );
    println!("  in flight   engine (emb/s)   gRPC (emb/s)   gRPC / engine");
    for (f, e, g) in &insert_rows {
        println!(
            "  {f:>9}   {e:>14.0}   {g:>12.0}   {:>12.0}%",
            100.0 * g / e
        );
    }
    println!();
    println!(
        "single-probe search, k = {}, {} queries per row",
        args.k, args.queries
    );
    println!("  gallery   via      clients        QPS   p50 (ms)   p99 (ms)");
    for (n, c, l) in &search_rows {
        let (via, clients) = if *c == 0 {
            ("engine", "-".to_string())
        } else {
            ("gRPC", c.to_string())
        };
        println!(
            "  {n:>7}   {via:<6}   {clients:>7}   {:>8.0}   {:>8.3}   {:>8.3}",
            l.qps,
            l.p50_us / 1000.0,
            l.p99_us / 1000.0
        );
    }
}

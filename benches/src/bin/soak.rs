//! Soak: sustained mixed load on the release `visage-server` over loopback,
//! watching throughput, latency, errors and the server's resident memory.
//!
//! ```text
//! cargo build --release -p visage-server -p visage-bench
//! target/release/soak                          # 3 minutes, a line every 10 s
//! target/release/soak --minutes 30 --interval 30 --clients 8 --gallery 200000
//! ```
//!
//! A fresh server (its own temporary data directory, default durable mode) is
//! filled to `--gallery` embeddings, then `--clients` connections run a mix
//! of inserts of new ids, upserts, deletes (by id, and now and then every
//! embedding of a subject), single-probe searches and identifications for
//! `--minutes`. Each client owns its ids and keeps its share of the gallery
//! near `--gallery / --clients`: it inserts below its share and deletes at or
//! above it, so after the fill the gallery's size stays flat and so should
//! the server's memory, while flushes and background compaction keep going.
//! Every search probes one of the client's own live vectors and must find it
//! first at distance 0; a miss counts as an error.
//!
//! Every `--interval` seconds one line: elapsed time, per kind ops/s and
//! p50/p99 latency, the server's VmRSS (from `/proc/PID/status`), live rows
//! and segments, errors. At the end a summary with the RSS of the first and
//! last thirds of the samples, and the exit status: non-zero if any call
//! failed, a search missed, or the server did not stop cleanly (SIGTERM,
//! exit 0). The machine is shared: do not run it beside builds or other
//! benchmarks if the figures matter.

use clap::Parser;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use visage_bench::Rng;
use visage_bench::server::ServerProc;
use visage_client::{Client, Embedding, Gallery, InsertOptions, Threshold};

/// Sustained mixed load against visage-server, with per-interval rates,
/// latencies, errors and the server's resident memory.
#[derive(Debug, Parser)]
struct Args {
    /// Minutes of mixed load (after the initial fill).
    #[arg(long, default_value_t = 3.0)]
    minutes: f64,
    /// Seconds between report lines.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Concurrent clients, each its own connection.
    #[arg(long, default_value_t = 4)]
    clients: u64,
    /// Embeddings the gallery holds through the run.
    #[arg(long, default_value_t = 50_000)]
    gallery: u64,
    /// Embeddings per insert, upsert or delete-by-id call.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Seed of the data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The server binary (default: visage-server next to this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

const GALLERY: &str = "soak";
const KINDS: [&str; 5] = ["insert", "upsert", "delete", "search", "identify"];
const INSERT: usize = 0;
const UPSERT: usize = 1;
const DELETE: usize = 2;
const SEARCH: usize = 3;
const IDENTIFY: usize = 4;
/// Embeddings per subject (ids `10 s .. 10 s + 9` are subject `s`).
const PER_SUBJECT: u64 = 10;

/// Latencies (µs) and errors, per kind: of the current interval and of the run.
#[derive(Default)]
struct Stats {
    interval: [Vec<u32>; 5],
    total: [Vec<u32>; 5],
    errors: [u64; 5],
}

impl Stats {
    fn record(&mut self, kind: usize, t: Duration) {
        let us = t.as_micros().min(u32::MAX as u128) as u32;
        self.interval[kind].push(us);
        self.total[kind].push(us);
    }
}

/// p-quantile of latencies in µs, in ms (sorts `v`).
fn quantile_ms(v: &mut [u32], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i] as f64 / 1000.0
}

struct Shared {
    stats: Mutex<Stats>,
    stop: AtomicBool,
    errors_shown: AtomicU64,
}

impl Shared {
    fn error(&self, kind: usize, what: String) {
        self.stats.lock().expect("stats").errors[kind] += 1;
        // The first few in full; then only counted.
        if self.errors_shown.fetch_add(1, Ordering::Relaxed) < 10 {
            eprintln!("soak: {} error: {what}", KINDS[kind]);
        }
    }
}

/// One client: its ids are `w << 40 ..`, its live rows in a map.
struct Worker {
    w: u64,
    rng: Rng,
    live: BTreeMap<u64, Vec<f32>>,
    next: u64,
    share: u64,
    batch: u64,
}

impl Worker {
    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn base(&self) -> u64 {
        self.w << 40
    }

    fn subject(&self, id: u64) -> String {
        format!("c{}-{:08}", self.w, (id - self.base()) / PER_SUBJECT)
    }

    fn fresh(&mut self, n: u64) -> Vec<Embedding> {
        (0..n)
            .map(|_| {
                let id = self.base() + self.next;
                self.next += 1;
                Embedding {
                    id,
                    subject: self.subject(id),
                    vector: self.rng.vector(),
                }
            })
            .collect()
    }

    /// A live id at random.
    fn some_live(&mut self) -> Option<u64> {
        let (&lo, _) = self.live.first_key_value()?;
        let (&hi, _) = self.live.last_key_value()?;
        let pick = lo + self.below(hi - lo + 1);
        self.live.range(pick..).next().map(|(&id, _)| id)
    }

    async fn step(&mut self, g: &Gallery, sh: &Shared) {
        let roll = self.below(100);
        if roll < 50 {
            // Writes: upserts, and inserts or deletes to hold the share.
            if roll < 15 && !self.live.is_empty() {
                let mut b = Vec::new();
                for _ in 0..self.batch {
                    if let Some(id) = self.some_live()
                        && !b.iter().any(|e: &Embedding| e.id == id)
                    {
                        b.push(Embedding {
                            id,
                            subject: self.subject(id),
                            vector: self.rng.vector(),
                        });
                    }
                }
                let t = Instant::now();
                match g.insert(&b).await {
                    Ok(o) if o.replaced == b.len() as u64 => {
                        sh.stats.lock().expect("stats").record(UPSERT, t.elapsed());
                        for e in b {
                            self.live.insert(e.id, e.vector);
                        }
                    }
                    Ok(o) => sh.error(UPSERT, format!("{o:?} for {} existing ids", b.len())),
                    Err(e) => sh.error(UPSERT, e.to_string()),
                }
            } else if (self.live.len() as u64) < self.share {
                let b = self.fresh(self.batch);
                let t = Instant::now();
                match g.insert(&b).await {
                    Ok(o) if o.inserted == b.len() as u64 => {
                        sh.stats.lock().expect("stats").record(INSERT, t.elapsed());
                        for e in b {
                            self.live.insert(e.id, e.vector);
                        }
                    }
                    Ok(o) => sh.error(INSERT, format!("{o:?} for {} new ids", b.len())),
                    Err(e) => sh.error(INSERT, e.to_string()),
                }
            } else {
                // The oldest ids; one time in five, the oldest subject whole.
                let (ids, subjects) = if self.below(5) == 0 {
                    let first = *self.live.keys().next().expect("live rows");
                    let s = (first - self.base()) / PER_SUBJECT;
                    let range = self.base() + s * PER_SUBJECT..self.base() + (s + 1) * PER_SUBJECT;
                    let ids: Vec<u64> = self.live.range(range).map(|(&id, _)| id).collect();
                    (ids, vec![self.subject(first)])
                } else {
                    let ids: Vec<u64> = self
                        .live
                        .keys()
                        .take(self.batch as usize)
                        .copied()
                        .collect();
                    (ids, vec![])
                };
                let t = Instant::now();
                let by_subject = !subjects.is_empty();
                let r = if by_subject {
                    g.delete(&[], &subjects).await
                } else {
                    g.delete(&ids, &[]).await
                };
                match r {
                    Ok(n) if n == ids.len() as u64 => {
                        sh.stats.lock().expect("stats").record(DELETE, t.elapsed());
                        for id in ids {
                            self.live.remove(&id);
                        }
                    }
                    Ok(n) => sh.error(
                        DELETE,
                        format!(
                            "deleted {n}, expected {} (by subject: {by_subject})",
                            ids.len()
                        ),
                    ),
                    Err(e) => sh.error(DELETE, e.to_string()),
                }
            }
        } else if roll < 80 {
            let Some(id) = self.some_live() else { return };
            let probe = self.live[&id].clone();
            let t = Instant::now();
            match g.search(&[&probe], 10).await {
                Ok(r) => {
                    let elapsed = t.elapsed();
                    match r.first().and_then(|h| h.first()) {
                        Some(h) if h.id == id && h.distance == 0.0 => {
                            sh.stats.lock().expect("stats").record(SEARCH, elapsed);
                        }
                        other => sh.error(
                            SEARCH,
                            format!("probe of live id {id} found {other:?} first"),
                        ),
                    }
                }
                Err(e) => sh.error(SEARCH, e.to_string()),
            }
        } else {
            // Half the probes are enrolled vectors, half strangers.
            let probe = match self.some_live() {
                Some(id) if self.below(2) == 0 => self.live[&id].clone(),
                _ => self.rng.vector(),
            };
            let t = Instant::now();
            let threshold = Threshold {
                max_distance: Some(1.0),
                min_probability: None,
            };
            match g.identify_with(&[&probe], 5, threshold).await {
                Ok(r) if r.len() == 1 && !r[0].candidates.is_empty() => sh
                    .stats
                    .lock()
                    .expect("stats")
                    .record(IDENTIFY, t.elapsed()),
                Ok(r) => sh.error(IDENTIFY, format!("no candidates: {r:?}")),
                Err(e) => sh.error(IDENTIFY, e.to_string()),
            }
        }
    }
}

async fn client_loop(mut wk: Worker, url: String, sh: Arc<Shared>) -> Worker {
    let c = match Client::connect(&url).await {
        Ok(c) => c,
        Err(e) => {
            sh.error(SEARCH, format!("connect: {e}"));
            return wk;
        }
    };
    let g = c.gallery(GALLERY);
    while !sh.stop.load(Ordering::Relaxed) {
        wk.step(&g, &sh).await;
    }
    wk
}

fn mb(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn main() -> ExitCode {
    let args = Args::parse();
    let server_bin = ServerProc::binary(args.server_bin.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut server = ServerProc::start(&server_bin);
    let url = server.url();
    let clients = args.clients.max(1);
    let share = args.gallery / clients;
    let batch = args.batch.max(1);

    // Fill: each client's share, over gRPC, not measured.
    let t = Instant::now();
    let mut workers: Vec<Worker> = (0..clients)
        .map(|w| Worker {
            w,
            rng: Rng(args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (w + 1)),
            live: BTreeMap::new(),
            next: 0,
            share,
            batch,
        })
        .collect();
    rt.block_on(async {
        let c = Client::connect(&url).await.expect("connect");
        c.create_gallery(GALLERY).await.expect("create gallery");
        let g = c.gallery(GALLERY);
        for wk in &mut workers {
            let rows = wk.fresh(share);
            g.insert_with(
                &rows,
                InsertOptions {
                    batch: 1000,
                    concurrency: 2,
                },
                |_| {},
            )
            .await
            .expect("fill");
            wk.live.extend(rows.into_iter().map(|e| (e.id, e.vector)));
        }
    });
    println!(
        "soak: {} embeddings filled in {:.1} s; {} clients, batches of {batch}, {} min, \
         server pid {}, RSS {:.1} MB",
        share * clients,
        t.elapsed().as_secs_f64(),
        clients,
        args.minutes,
        server.pid(),
        mb(server.rss().unwrap_or(0))
    );

    let sh = Arc::new(Shared {
        stats: Mutex::new(Stats::default()),
        stop: AtomicBool::new(false),
        errors_shown: AtomicU64::new(0),
    });
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|wk| rt.spawn(client_loop(wk, url.clone(), sh.clone())))
        .collect();
    let stats_client = rt
        .block_on(Client::connect(&url))
        .expect("connect")
        .gallery(GALLERY);

    let start = Instant::now();
    let run = Duration::from_secs_f64(args.minutes.max(0.0) * 60.0);
    let interval = Duration::from_secs(args.interval.max(1));
    let mut rss_samples: Vec<u64> = Vec::new();
    let mut rss_all: Vec<u64> = Vec::new();
    let mut last = start;
    let mut server_died = false;
    println!(
        "{:>6}  {}  {:>9}  {:>8} {:>4}  errors",
        "time",
        KINDS
            .iter()
            .map(|k| format!("{:>10} {:>7} {:>7}", format!("{k}/s"), "p50 ms", "p99 ms"))
            .collect::<Vec<_>>()
            .join("  "),
        "RSS MB",
        "live",
        "segs"
    );
    while start.elapsed() < run {
        let next = (last + interval).min(start + run);
        // Sample the resident memory every second: it rises and falls with
        // each memtable fill and flush, and the summary compares bands.
        while Instant::now() < next {
            let left = next.saturating_duration_since(Instant::now());
            std::thread::sleep(left.min(Duration::from_secs(1)));
            if let Some(r) = server.rss() {
                rss_all.push(r);
            }
        }
        let now = Instant::now();
        let secs = now.duration_since(last).as_secs_f64();
        last = now;
        let (mut lat, errors) = {
            let mut s = sh.stats.lock().expect("stats");
            let lat: Vec<Vec<u32>> = s.interval.iter_mut().map(std::mem::take).collect();
            (lat, s.errors.iter().sum::<u64>())
        };
        if !server.alive() {
            server_died = true;
            eprintln!("soak: the server exited during the run");
            break;
        }
        let rss = server.rss().unwrap_or(0);
        rss_samples.push(rss);
        let info = rt.block_on(stats_client.stats());
        let (live, segs) = match &info {
            Ok(i) => (i.live.to_string(), i.segments.to_string()),
            Err(_) => ("?".into(), "?".into()),
        };
        let cols: Vec<String> = lat
            .iter_mut()
            .map(|v| {
                format!(
                    "{:>10.0} {:>7.2} {:>7.2}",
                    v.len() as f64 / secs,
                    quantile_ms(v, 0.50),
                    quantile_ms(v, 0.99)
                )
            })
            .collect();
        println!(
            "{:>5.0}s  {}  {:>9.1}  {:>8} {:>4}  {errors}",
            now.duration_since(start).as_secs_f64(),
            cols.join("  "),
            mb(rss),
            live,
            segs
        );
    }
    sh.stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for t in tasks {
        if rt.block_on(t).is_err() {
            sh.error(SEARCH, "a client task panicked".into());
        }
    }
    drop(stats_client);
    let clean_stop = !server_died && server.stop();

    let mut s = sh.stats.lock().expect("stats");
    let errors: u64 = s.errors.iter().sum();
    println!("summary over {elapsed:.0} s:");
    for (k, kind) in KINDS.iter().enumerate() {
        let n = s.total[k].len();
        let e = s.errors[k];
        let (p50, p99) = (
            quantile_ms(&mut s.total[k], 0.50),
            quantile_ms(&mut s.total[k], 0.99),
        );
        println!(
            "  {kind:<8} {n:>9} ok  {:>8.0} ops/s  p50 {p50:.2} ms  p99 {p99:.2} ms  {e} errors",
            n as f64 / elapsed
        );
    }
    if rss_samples.len() >= 3 {
        let third = rss_samples.len() / 3;
        let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len() as f64;
        let first = avg(&rss_samples[..third]);
        let last = avg(&rss_samples[rss_samples.len() - third..]);
        // Time between the middles of the first and last thirds.
        let span_min = (rss_samples.len() - third) as f64 * interval.as_secs_f64() / 60.0;
        println!(
            "  server RSS: first third {:.1} MB, last third {:.1} MB, change {:+.1} MB \
             ({:+.1}%, {:+.2} MB/min); min {:.1} MB, max {:.1} MB",
            mb(first as u64),
            mb(last as u64),
            (last - first) / (1u64 << 20) as f64,
            100.0 * (last - first) / first.max(1.0),
            (last - first) / (1u64 << 20) as f64 / span_min.max(1e-9),
            mb(*rss_samples.iter().min().unwrap_or(&0)),
            mb(*rss_samples.iter().max().unwrap_or(&0)),
        );
    } else {
        println!(
            "  server RSS: {} samples, too few for a slope (run longer or lower --interval)",
            rss_samples.len()
        );
    }
    if rss_all.len() >= 3 {
        let third = rss_all.len() / 3;
        let bands: Vec<String> = [
            &rss_all[..third],
            &rss_all[third..rss_all.len() - third],
            &rss_all[rss_all.len() - third..],
        ]
        .iter()
        .map(|part| {
            let mut v = part.to_vec();
            v.sort_unstable();
            format!(
                "{:.0}/{:.0}/{:.0}",
                mb(v[0]),
                mb(v[v.len() / 2]),
                mb(v[v.len() - 1])
            )
        })
        .collect();
        println!(
            "  server RSS sampled every second, min/median/max MB by third of the run: {}",
            bands.join(", ")
        );
    }
    println!("  total errors: {errors}; server stopped cleanly (SIGTERM, exit 0): {clean_stop}");
    if errors > 0 || !clean_stop {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

//! Engine benchmarks of the engine issue: insert throughput (durable and not)
//! beside the raw write + fdatasync bound, exact single-probe top-10 at 100k
//! and 1M beside the memory-read bound, and open time at 1M.
//!
//! Run: `cargo bench -p visage-bench --bench engine` (builds cached galleries
//! under `target/bench-data` the first time).

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::io::Write;
use std::time::{Duration, Instant};
use visage_bench::{Rng, cached_gallery, embeddings, memory_read_time, quiet_options, wal_record};
use visage_engine::{Durability, Engine, ScanMode, SearchOptions, VerifyChecksums};

const BATCH: usize = 1000;

fn insert(c: &mut Criterion) {
    let mut g = c.benchmark_group("insert");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(30).measurement_time(Duration::from_secs(8));
    let mut rng = Rng(1);
    let batches: Vec<_> = (0..64)
        .map(|i| embeddings(&mut rng, i * BATCH as u64, BATCH))
        .collect();
    for (label, durability) in [
        ("durable", Durability::PowerLoss),
        ("not_durable", Durability::ProcessCrash),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = quiet_options(durability);
        // Flushes are part of sustained insert cost: let the background thread do them.
        opts.gallery.background = true;
        let engine = Engine::open(dir.path(), opts).expect("open");
        let gal = engine.create_gallery("bench").expect("create");
        let mut i = 0u64;
        g.bench_function(BenchmarkId::new(label, BATCH), |b| {
            b.iter_batched(
                || {
                    // Fresh ids every time: pure inserts, no replacements.
                    // Made outside the timing, as the bound's record is.
                    let mut batch = batches[(i % 64) as usize].clone();
                    for (j, e) in batch.iter_mut().enumerate() {
                        e.id = i * BATCH as u64 + j as u64;
                    }
                    i += 1;
                    batch
                },
                |batch| gal.insert(&batch).expect("insert"),
                BatchSize::SmallInput,
            );
        });
    }
    // The foreground write path alone: WAL write (with and without fdatasync)
    // and memtable, with no flush running (a fresh gallery every 100 batches,
    // not timed).
    for (label, durability) in [
        ("durable_no_flush", Durability::PowerLoss),
        ("not_durable_no_flush", Durability::ProcessCrash),
    ] {
        g.bench_function(BenchmarkId::new(label, BATCH), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0u64;
                while done < iters {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let mut opts = quiet_options(durability);
                    opts.gallery.memtable_rows = usize::MAX;
                    let engine = Engine::open(dir.path(), opts).expect("open");
                    let gal = engine.create_gallery("bench").expect("create");
                    let n = (iters - done).min(100);
                    for k in 0..n {
                        let batch = &batches[(k % 64) as usize];
                        let mut batch = batch.clone();
                        for (j, e) in batch.iter_mut().enumerate() {
                            e.id = k * BATCH as u64 + j as u64;
                        }
                        let t = Instant::now();
                        std::hint::black_box(gal.insert(&batch).expect("insert"));
                        total += t.elapsed();
                    }
                    done += n;
                }
                total
            });
        });
    }
    // The bound: the same bytes (one WAL record of 1,000 embeddings), written and fdatasync'ed.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = std::fs::File::create(dir.path().join("raw")).expect("create");
    let record = wal_record(&batches[0]);
    g.bench_function(BenchmarkId::new("bound_write_fdatasync", BATCH), |b| {
        b.iter(|| {
            f.write_all(&record).expect("write");
            f.sync_data().expect("fdatasync");
        });
    });
    g.finish();
}

fn search(c: &mut Criterion) {
    let mut g = c.benchmark_group("search_top10");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    let mut rng = Rng(99);
    let probes: Vec<Vec<f32>> = (0..64).map(|_| rng.vector()).collect();
    for n in [100_000usize, 1_000_000] {
        let (engine, _) = cached_gallery(n);
        let gal = engine.gallery("bench").expect("gallery");
        let mut i = 0;
        g.bench_function(BenchmarkId::new("exact_single_probe", n), |b| {
            b.iter(|| {
                i += 1;
                gal.search(&probes[i % 64..i % 64 + 1], 10).expect("search")
            });
        });
        g.bench_function(BenchmarkId::new("sq8_single_probe", n), |b| {
            let opts = SearchOptions {
                k: 10,
                mode: ScanMode::Quantized,
                ..Default::default()
            };
            b.iter(|| {
                i += 1;
                gal.search_with(&probes[i % 64..i % 64 + 1], &opts)
                    .expect("search")
            });
        });
        // The floor: reading the vectors once from memory, with every core.
        let bytes = n * 512;
        g.bench_function(BenchmarkId::new("bound_memory_read", n), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| memory_read_time(bytes, 1)).sum());
        });
    }
    g.finish();
}

fn search_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("search_batch_top10");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    let mut rng = Rng(7);
    let probes: Vec<Vec<f32>> = (0..1000).map(|_| rng.vector()).collect();
    for n in [100_000usize, 1_000_000] {
        let (engine, _) = cached_gallery(n);
        let gal = engine.gallery("bench").expect("gallery");
        for batch in [10usize, 100, 1000] {
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_function(BenchmarkId::new(format!("exact_{n}"), batch), |b| {
                b.iter(|| gal.search(&probes[..batch], 10).expect("search"));
            });
        }
    }
    g.finish();
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open");
    g.sample_size(10);
    let (engine, dir) = cached_gallery(1_000_000);
    drop(engine);
    for (label, verify) in [
        ("metadata_checksums", VerifyChecksums::Metadata),
        ("full_checksums", VerifyChecksums::Full),
    ] {
        g.bench_function(BenchmarkId::new(label, 1_000_000), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut o = quiet_options(Durability::PowerLoss);
                    o.gallery.verify = verify;
                    let t = Instant::now();
                    let e = Engine::open(&dir, o).expect("open");
                    total += t.elapsed();
                    drop(e);
                }
                total
            });
        });
    }
    g.finish();
}

fn memory_bound_sanity(_c: &mut Criterion) {
    // Printed once so the README figures can quote the bound beside the scans.
    let t = memory_read_time(512 << 20, 5);
    println!(
        "memory read of 512 MiB with all cores: median {:.1} ms ({:.1} GB/s)",
        t.as_secs_f64() * 1e3,
        512.0 * 1.048_576 / 1e3 / t.as_secs_f64()
    );
}

criterion_group!(
    benches,
    memory_bound_sanity,
    insert,
    search,
    search_batch,
    open
);
criterion_main!(benches);

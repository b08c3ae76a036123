//! `visage-bench`: measure visage on your own embeddings.
//!
//! ```text
//! visage-bench search --base BASE.npy --probes PROBES.npy [--k 10] [--mode exact|sq8]
//!                     [--out-ids IDS.npy] [--json] [--batch N] [--single N] [--data-dir DIR]
//! visage-bench gen    --n N --probes P --out DIR [--seed S] [--isotropic] [--dim D]
//! visage-bench bounds [--bytes B] [--json]
//! visage-bench conflicts [--subjects N] [--batch B] [--runs R] [--json]
//! visage-bench insert-bound [--rounds R] [--seconds S] [--batch B] [--json]
//! visage-bench scale-gen    --rows N [--start S --count C] --out X.npy [--subjects S.txt] [--seed S]
//! visage-bench scale-gen    --rows N --probes P --out P.npy [--seed S]
//! visage-bench scale-build  --data-dir D --rows N [--vectors X.npy --subjects S.txt] [--seed S]
//! visage-bench scale-search --data-dir D --probes P.npy [--k 10] [--single 200] [--batch 1000]
//!                           [--identify 1000] [--out-ids IDS.npy] [--json]
//! visage-bench scale-truth  --rows N --probes P.npy [--sample 20] [--k 10] --out T.npy [--seed S]
//! ```
//!
//! `search` loads BASE (float32 `[N, D]`, D the gallery's dimension, row `i` gets id `i`) into a data
//! directory cached under `target/visage-bench-data/` (keyed by the file's
//! canonical path, size and modification time), or reopens the one built
//! before, then measures single-probe latency, batch throughput and resident
//! memory. See `benches/harness/README.md`.
//!
//! The `scale-*` commands are the scale benchmark's steps (`benches/harness/scale.sh`),
//! over the generated gallery of `visage_bench::scale`: any rows of it written
//! as `.npy`, a gallery imported from it, measured, and its exact answers
//! computed independently.

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};
use visage_bench::measure::{ProcMemory, ProcUsage, millis, percentile, reset_hwm, segment_bytes};
use visage_bench::{bounds, quiet_options, scale};
use visage_client::npy;
use visage_engine::synth::{Nuisance, SynthConfig, SynthGallery};
use visage_engine::{
    DIM, Durability, Embedding, Engine, GallerySpec, Limits, ScanMode, SearchOptions,
};

#[derive(Parser)]
#[command(
    name = "visage-bench",
    version,
    about = "Measure visage's exact search on .npy galleries; generate data; measure the machine's bounds"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load a gallery from BASE.npy and measure search with PROBES.npy.
    Search(SearchArgs),
    /// Write a synthetic gallery and probes as .npy files.
    Gen(GenArgs),
    /// Measure memory read bandwidth and the FMA peak with every core.
    Bounds(BoundsArgs),
    /// Measure the false-accept rates of a gallery's calibrated decisions on
    /// fresh synthetic probes (the calibration scenario) and print the table.
    Calibration(CalibrationArgs),
    /// Exact search on the same gallery with outlier rows planted, and with
    /// far-away probes mixed into the batch, beside the clean gallery in one
    /// run: speed as a share of the clean gallery's, every answer checked
    /// against the direct scan.
    Robust(RobustArgs),
    /// The cost of Insert's conflict check: batches of new people inserted
    /// with and without the check in turn into one trained gallery, and the
    /// conflicts it reports on strangers (false) and on new photos of
    /// enrolled people under new names (caught).
    Conflicts(ConflictsArgs),
    /// Sustained durable insert (background flushes on) and its bound, the
    /// write + fdatasync of the same bytes, timed in turns on the same disk
    /// (a cloud disk's speed changes with what was written before: two
    /// measurements minutes apart are not comparable); and the bound beside
    /// the flushes' writes, the most an insert costing no CPU could reach.
    InsertBound(InsertBoundArgs),
    /// Scale benchmark: write rows of the generated face-like gallery (or
    /// its probes) as .npy, streamed.
    ScaleGen(ScaleGenArgs),
    /// Scale benchmark: create (or replace) the gallery `scale` and import
    /// the generated rows into it, from the generator or from files.
    ScaleBuild(ScaleBuildArgs),
    /// Scale benchmark: open the gallery `scale` and measure the open,
    /// single probes, a batch, an identification batch, memory and disk.
    ScaleSearch(ScaleSearchArgs),
    /// Scale benchmark: the exact top-k of the first probes by brute force
    /// over the regenerated rows, in f64 (the independent reference).
    ScaleTruth(ScaleTruthArgs),
}

/// The generated gallery of the scale benchmark (see `visage_bench::scale`).
#[derive(clap::Args)]
struct ScaleData {
    /// Rows of the gallery (ten images a subject).
    #[arg(long)]
    rows: usize,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Values per vector.
    #[arg(long, default_value_t = DIM)]
    dim: usize,
}

impl ScaleData {
    fn generator(&self) -> Res<scale::Generator> {
        if let Some(why) = GallerySpec::with_dim(self.dim).problem() {
            return Err(format!("--dim: {why}"));
        }
        if self.rows == 0 {
            return Err("--rows must be at least 1".into());
        }
        Ok(scale::Generator {
            rows: self.rows,
            dim: self.dim,
            seed: self.seed,
        })
    }
}

#[derive(clap::Args)]
struct ScaleGenArgs {
    #[command(flatten)]
    data: ScaleData,
    /// First row to write.
    #[arg(long, default_value_t = 0)]
    start: usize,
    /// Rows to write (default: from --start to the end).
    #[arg(long)]
    count: Option<usize>,
    /// Write this many probes instead of rows (even ones new images of
    /// enrolled subjects, odd ones strangers).
    #[arg(long)]
    probes: Option<usize>,
    /// The float32 .npy to write.
    #[arg(long)]
    out: PathBuf,
    /// Also write the rows' subjects here, one a line.
    #[arg(long)]
    subjects: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ScaleBuildArgs {
    #[command(flatten)]
    data: ScaleData,
    /// The engine's data directory (created if needed; only the gallery
    /// `scale` in it is replaced).
    #[arg(long)]
    data_dir: PathBuf,
    /// Import from this .npy (written by scale-gen with the same --rows and
    /// --seed) instead of the generator; needs --subjects.
    #[arg(long, requires = "subjects")]
    vectors: Option<PathBuf>,
    /// The subjects of --vectors, one a line.
    #[arg(long, requires = "vectors")]
    subjects: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ScaleSearchArgs {
    /// The data directory scale-build built.
    #[arg(long)]
    data_dir: PathBuf,
    /// Probes: float32 .npy [P, D] (scale-gen --probes).
    #[arg(long)]
    probes: PathBuf,
    /// Results per probe.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Untimed single probes before timing.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Single probes timed (p50 and p99).
    #[arg(long, default_value_t = 200)]
    single: usize,
    /// Probes in the batch call (its ids go to --out-ids).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Probes in the identification call (subject-level top k).
    #[arg(long, default_value_t = 1000)]
    identify: usize,
    /// A batch or identification taking less than this is timed 3 times (median).
    #[arg(long, default_value_t = 60.0)]
    repeat_under: f64,
    /// Write the batch's top-k row numbers as int64 .npy [batch, k] (-1 where fewer).
    #[arg(long)]
    out_ids: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ScaleTruthArgs {
    #[command(flatten)]
    data: ScaleData,
    /// Probes: float32 .npy [P, D]; the first --sample are answered.
    #[arg(long)]
    probes: PathBuf,
    /// Probes answered.
    #[arg(long, default_value_t = 20)]
    sample: usize,
    /// Results per probe.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Write the top-k row numbers as int64 .npy [sample, k].
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct ConflictsArgs {
    /// Enrolled subjects, 10 images each.
    #[arg(long, default_value_t = 10_000)]
    subjects: usize,
    /// Rows per batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Timed batches of each kind (in turn; the medians are reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Target false-accept rate of the head's calibration (the open-set
    /// threshold is set for this false-positive rate per probe).
    #[arg(long, default_value_t = 0.001)]
    target_far: f64,
    /// Seed of the data.
    #[arg(long, default_value_t = 16)]
    seed: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct InsertBoundArgs {
    /// Rounds; each times the bound and the insert once, in alternating order.
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Seconds of each turn.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Rows a batch (one insert call, one WAL record, one fdatasync).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Memtable rows that start a flush (default: the engine's).
    #[arg(long)]
    memtable_rows: Option<usize>,
    /// Bytes a write of the ceilings' flush-like writer (the engine's segment
    /// writer writes 4 MiB).
    #[arg(long, default_value_t = 4 << 20)]
    ceiling_piece: usize,
    /// Keep the ceilings' flush-like writer to this many MB a second
    /// (default: as fast as the disk takes its writes, as the engine's).
    #[arg(long)]
    ceiling_pace_mb: Option<f64>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct RobustArgs {
    /// The data (the batch is the first 1,000 probes).
    #[command(flatten)]
    data: DataArgs,
    /// Probes searched one at a time for latency.
    #[arg(long, default_value_t = 200)]
    single: usize,
    /// Timed batch runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    batch_runs: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CalibrationArgs {
    /// Enrolled subjects at training time.
    #[arg(long, default_value_t = 4000)]
    subjects: usize,
    /// Images per subject.
    #[arg(long, default_value_t = 10)]
    images: usize,
    /// Target false-accept rate of training.
    #[arg(long, default_value_t = 0.01)]
    target_far: f64,
    /// Decisions per measured rate.
    #[arg(long, default_value_t = 20_000)]
    decisions: usize,
    /// Seed of the data.
    #[arg(long, default_value_t = 12)]
    seed: u64,
    /// Spread the images' noise over every coordinate alike (default: the
    /// anisotropic noise, where some images lie near many people).
    #[arg(long)]
    isotropic: bool,
}

/// One insert turn of `insert-bound`.
struct InsertTurn {
    /// Rows a second, the wait for the turn's flush included.
    rate: f64,
    /// Rows a second over the insert calls alone (the rows acknowledged
    /// while the flush ran beside them).
    acknowledged: f64,
    /// The mean WAL fdatasync of a group commit, in µs.
    fsync_us: f64,
    /// CPU time (every thread) a row, in µs.
    cpu_us: Option<f64>,
    /// Bytes written to storage a row.
    written: Option<f64>,
}

/// See [`Cmd::InsertBound`]. Each round runs four turns, in an order that
/// turns with the rounds so a drift of the disk's speed falls on all alike:
/// the bound, the insert, and two ceilings, the bound beside the writes of
/// the flushes its rows would cause (with this format's bytes a row in a
/// segment, and without the vectors' bytes). It prints each round's ratios.
///
/// The insert turn times the `insert` calls only (the batches are made
/// outside the timing, as the bound's record is), and at its end it waits
/// for the flush its rows started to finish, inside its time: the bound's
/// turn that follows gets a quiet disk, and every flush the insert caused is
/// paid by it. The gallery grows from round to round, as a real one does.
fn insert_bound_cmd(a: InsertBoundArgs) -> Res<ExitCode> {
    use std::io::Write;
    if a.rounds == 0 || a.batch == 0 || a.seconds <= 0.0 || a.ceiling_piece == 0 {
        return Err("--rounds, --seconds, --batch and --ceiling-piece must be positive".into());
    }
    if a.ceiling_pace_mb.is_some_and(|p| p.is_nan() || p <= 0.0) {
        return Err("--ceiling-pace-mb must be positive".into());
    }
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let root = tempfile::tempdir_in(visage_bench::target_dir()).map_err(|x| e(&x))?;
    let mut opts = quiet_options(Durability::PowerLoss);
    opts.gallery.background = true;
    if let Some(m) = a.memtable_rows {
        opts.gallery.memtable_rows = m;
        opts.gallery.memtable_bytes = opts.gallery.memtable_bytes.max(m * DIM * 4);
        opts.gallery.max_unflushed_rows = opts.gallery.max_unflushed_rows.max(2 * m);
    }
    let memtable_rows = opts.gallery.memtable_rows as u64;
    let engine = Engine::open(root.path().join("engine"), opts).map_err(|x| e(&x))?;
    let gal = engine.create_gallery("bench").map_err(|x| e(&x))?;
    let mut rng = visage_bench::Rng(1);
    let batches: Vec<Vec<Embedding>> = (0..64)
        .map(|i| visage_bench::embeddings(&mut rng, i * a.batch as u64, a.batch))
        .collect();
    let record = visage_bench::wal_record(&batches[0]);
    let turn = Duration::from_secs_f64(a.seconds);
    // The next batch to insert: one of the 64, with fresh ids.
    let mut next = 0u64;
    let next_batch = |next: &mut u64| {
        let mut batch = batches[(*next % 64) as usize].clone();
        for (j, r) in batch.iter_mut().enumerate() {
            r.id = *next * a.batch as u64 + j as u64;
        }
        *next += 1;
        batch
    };
    // Warm-up, untimed: insert until the first flush has written its
    // segment. It tells how many rows a flush writes and how many bytes a
    // row takes in a segment, which the ceiling turns write beside the bound.
    let mut warm = 0usize;
    while gal.segments().is_empty() || !gal.progress().is_empty() {
        if warm > 64 * memtable_rows as usize {
            return Err("the warm-up's rows started no flush".into());
        }
        let batch = next_batch(&mut next);
        warm += batch.len();
        gal.insert(&batch).map_err(|x| e(&x))?;
    }
    let flush_rows = gal.segments()[0].rows;
    let segment_row_bytes = segment_bytes(gal.dir()) as f64 / flush_rows as f64;
    let vector_bytes = (DIM * 4) as f64;
    // The bound: the insert's WAL record written and fdatasync'ed in a loop.
    // With `beside` bytes a row, the same with a flush's writes beside it:
    // every `flush_rows` rows the loop has written, another thread writes
    // `beside` bytes a row to a new file as a flush writes a segment (direct
    // writes of 4 MiB, one in flight, then fdatasync), and the turn waits for
    // the last one. With the segment's own bytes a row this is what an insert
    // costing no CPU could reach with the present format; without the
    // vectors' bytes, with a format whose segments keep the vectors where the
    // WAL wrote them.
    let bound_turn = |beside: Option<f64>| -> Res<f64> {
        let path = root.path().join("raw");
        let mut f = std::fs::File::create(&path).map_err(|x| e(&x))?;
        let flusher = beside.map(|row_bytes| {
            let (tx, rx) = std::sync::mpsc::channel::<u64>();
            let dir = root.path().to_owned();
            let how = visage_bench::FlushLike {
                piece: a.ceiling_piece,
                pace: a.ceiling_pace_mb.map(|mb| mb * 1e6),
            };
            let writer =
                std::thread::spawn(move || visage_bench::flush_like_writes(&dir, &rx, how));
            (tx, writer, (flush_rows as f64 * row_bytes) as u64)
        });
        let (t0, mut n, mut unflushed) = (Instant::now(), 0u64, 0u64);
        while t0.elapsed() < turn {
            f.write_all(&record).map_err(|x| e(&x))?;
            f.sync_data().map_err(|x| e(&x))?;
            n += 1;
            unflushed += a.batch as u64;
            if let Some((tx, _, bytes)) = &flusher
                && unflushed >= flush_rows
            {
                // A closed channel means the writer failed: its join says why.
                let _ = tx.send(*bytes);
                unflushed -= flush_rows;
            }
        }
        if let Some((tx, writer, _)) = flusher {
            drop(tx);
            writer
                .join()
                .map_err(|_| "the flush-like writer panicked".to_string())?
                .map_err(|x| e(&x))?;
        }
        let rate = (n * a.batch as u64) as f64 / t0.elapsed().as_secs_f64();
        drop(f);
        std::fs::remove_file(&path).map_err(|x| e(&x))?;
        Ok(rate)
    };
    let mut insert_turn = || -> Res<InsertTurn> {
        let before = ProcUsage::now();
        let synced = gal.counters().wal_fsync_seconds;
        let (t0, mut busy, mut rows) = (Instant::now(), Duration::ZERO, 0u64);
        while t0.elapsed() < turn {
            let batch = next_batch(&mut next);
            let t = Instant::now();
            gal.insert(&batch).map_err(|x| e(&x))?;
            busy += t.elapsed();
            rows += batch.len() as u64;
        }
        let acknowledging = busy;
        // The flush these rows started (a full memtable, frozen or being
        // written) finishes inside the insert's time.
        let t = Instant::now();
        while !gal.progress().is_empty() || gal.stats().memtable_rows >= memtable_rows {
            if t.elapsed() > Duration::from_secs(300) {
                return Err("the flush of the insert's rows did not finish in 300 s".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        busy += t.elapsed();
        let used = ProcUsage::now().since(&before);
        let fsync = gal.counters().wal_fsync_seconds;
        let per_row = |x: f64| x / rows as f64;
        Ok(InsertTurn {
            rate: rows as f64 / busy.as_secs_f64(),
            acknowledged: rows as f64 / acknowledging.as_secs_f64(),
            fsync_us: 1e6 * (fsync.sum - synced.sum)
                / (fsync.counts.iter().sum::<u64>() - synced.counts.iter().sum::<u64>()).max(1)
                    as f64,
            cpu_us: used.cpu.map(|c| per_row(c.as_secs_f64() * 1e6)),
            written: used.written.map(|w| per_row(w as f64)),
        })
    };
    let mut table: Vec<(f64, InsertTurn)> = Vec::new();
    // The bound beside a flush of the present format's bytes a row, and of
    // those bytes without the vectors.
    let mut ceilings: Vec<(f64, f64)> = Vec::new();
    for r in 0..a.rounds {
        // The four turns in an order that turns with the rounds, so a drift
        // of the disk's speed falls on each alike.
        let (mut bound, mut insert, mut present, mut once) = (0.0, None, 0.0, 0.0);
        for k in 0..4 {
            match (k + r) % 4 {
                0 => bound = bound_turn(None)?,
                1 => insert = Some(insert_turn()?),
                2 => present = bound_turn(Some(segment_row_bytes))?,
                _ => once = bound_turn(Some(segment_row_bytes - vector_bytes))?,
            }
        }
        let insert = insert.ok_or("no insert turn ran")?;
        if !a.json {
            let show = |x: Option<f64>, decimals: usize, unit: &str| {
                x.map_or("n/a".into(), |x| format!("{x:.decimals$}{unit}"))
            };
            println!(
                "round {}: bound {:>9.0} rows/s, durable insert {:>9.0} rows/s: {:.0}% \
                 (acknowledged at {:.0} rows/s: {:.0}%; a batch's WAL fdatasync {:.0} µs against \
                 the bound's {:.0} µs for write and fdatasync; {} of CPU and {} written to storage a row)",
                r + 1,
                bound,
                insert.rate,
                100.0 * insert.rate / bound,
                insert.acknowledged,
                100.0 * insert.acknowledged / bound,
                insert.fsync_us,
                1e6 * a.batch as f64 / bound,
                show(insert.cpu_us, 2, " µs"),
                show(insert.written, 0, " bytes"),
            );
            println!(
                "         ceilings, the bound beside a flush's writes: of {segment_row_bytes:.0} bytes a row \
                 (this format) {present:>9.0} rows/s: {:.0}%; of {:.0} bytes a row (vectors written once) \
                 {once:>9.0} rows/s: {:.0}%",
                100.0 * present / bound,
                segment_row_bytes - vector_bytes,
                100.0 * once / bound,
            );
        }
        table.push((bound, insert));
        ceilings.push((present, once));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        }
    };
    let bound = median(table.iter().map(|t| t.0).collect());
    let insert = median(table.iter().map(|t| t.1.rate).collect());
    let ratio = median(table.iter().map(|t| t.1.rate / t.0).collect());
    let acknowledged = median(table.iter().map(|t| t.1.acknowledged / t.0).collect());
    let fsync_us = median(table.iter().map(|t| t.1.fsync_us).collect());
    // Medians of the columns every round could measure (`None` if one could not).
    let cpu = table
        .iter()
        .map(|t| t.1.cpu_us)
        .collect::<Option<Vec<f64>>>()
        .map(median);
    let written = table
        .iter()
        .map(|t| t.1.written)
        .collect::<Option<Vec<f64>>>()
        .map(median);
    // A ceiling's median rate and the median of its ratios to the rounds' bounds.
    let ceiling = |pick: fn(&(f64, f64)) -> f64| {
        let ratios = table.iter().zip(&ceilings).map(|(t, c)| pick(c) / t.0);
        (
            median(ceilings.iter().map(pick).collect()),
            median(ratios.collect()),
        )
    };
    let (present, present_ratio) = ceiling(|c| c.0);
    let (once, once_ratio) = ceiling(|c| c.1);
    let stats = gal.stats();
    if a.json {
        let rounds: Vec<Value> = table
            .iter()
            .map(|(b, i)| {
                json!({
                    "bound_rows_per_s": b,
                    "insert_rows_per_s": i.rate,
                    "acknowledged_rows_per_s": i.acknowledged,
                    "insert_wal_fsync_us": i.fsync_us,
                })
            })
            .zip(&ceilings)
            .map(|(mut v, c)| {
                v["ceiling_present_format_rows_per_s"] = json!(c.0);
                v["ceiling_vectors_once_rows_per_s"] = json!(c.1);
                v
            })
            .collect();
        println!(
            "{}",
            json!({
                "batch": a.batch,
                "seconds_per_turn": a.seconds,
                "rounds": rounds,
                "median_bound_rows_per_s": bound,
                "median_insert_rows_per_s": insert,
                "median_ratio": ratio,
                "median_acknowledged_ratio": acknowledged,
                "median_insert_wal_fsync_us": fsync_us,
                "median_insert_cpu_us_per_row": cpu,
                "median_insert_bytes_written_per_row": written,
                "flush_rows": flush_rows,
                "segment_bytes_per_row": segment_row_bytes,
                "median_ceiling_present_format_rows_per_s": present,
                "median_ceiling_present_format_ratio": present_ratio,
                "median_ceiling_vectors_once_rows_per_s": once,
                "median_ceiling_vectors_once_ratio": once_ratio,
                "rows_at_end": stats.live,
                "segments_at_end": stats.segments,
            })
        );
    } else {
        println!(
            "median: bound {bound:.0} rows/s, durable insert {insert:.0} rows/s; median of the rounds' ratios {:.0}% \
             (acknowledged: {:.0}%); a batch's WAL fdatasync {fsync_us:.0} µs against the bound's {:.0} µs \
             for write and fdatasync ({} rows in {} segments at the end)",
            100.0 * ratio,
            100.0 * acknowledged,
            1e6 * a.batch as f64 / bound,
            stats.live,
            stats.segments
        );
        if let (Some(cpu), Some(written)) = (cpu, written) {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            println!(
                "the insert, medians: {cpu:.2} µs of CPU and {written:.0} bytes written to storage a row; \
                 {cores} cores give at most {:.0} rows/s at that CPU, and 80% of the median bound \
                 needs {:.2} GB/s of writes",
                cores as f64 / cpu * 1e6,
                0.8 * bound * written / 1e9
            );
        }
        println!(
            "ceilings, medians (a flush writes {flush_rows} rows): the bound beside a flush of this \
             format's {segment_row_bytes:.0} bytes a row {present:.0} rows/s ({:.0}% of the bound); beside \
             a flush without the vectors' {vector_bytes:.0} bytes {once:.0} rows/s ({:.0}%)",
            100.0 * present_ratio,
            100.0 * once_ratio,
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn conflicts_cmd(a: ConflictsArgs) -> Res<ExitCode> {
    let synth = SynthGallery::generate(SynthConfig {
        subjects: a.subjects,
        min_images: 10,
        max_images: 10,
        seed: a.seed,
        ..Default::default()
    });
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let engine = Engine::open(dir.path(), Default::default()).map_err(|e| e.to_string())?;
    let g = engine.create_gallery("bench").map_err(|e| e.to_string())?;
    for c in synth.embeddings.chunks(10_000) {
        g.insert(c).map_err(|e| e.to_string())?;
    }
    g.flush().map_err(|e| e.to_string())?;
    let t = Instant::now();
    g.train_head(&visage_engine::TrainOptions {
        target_far: a.target_far,
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    let train_s = t.elapsed().as_secs_f64();
    // Strangers (people never enrolled, one image each, under new names),
    // and new photos of enrolled people under new names.
    let strangers: Vec<Vec<f32>> = synth
        .probes(0, 2 * a.runs * a.batch, a.seed + 1)
        .into_iter()
        .map(|p| p.vector)
        .collect();
    let twins = synth.probes(a.batch, 0, a.seed + 2);
    let rows = |vs: &[Vec<f32>], tag: &str| -> (Vec<String>, Vec<f32>) {
        let names = (0..vs.len()).map(|i| format!("{tag}-{i}")).collect();
        (names, vs.concat())
    };
    let (mut plain, mut checked, mut check_only) = (Vec::new(), Vec::new(), Vec::new());
    let mut identify = Vec::new();
    let mut false_conflicts = 0usize;
    for (r, pair) in strangers.chunks(2 * a.batch).enumerate() {
        let (names, flat) = rows(&pair[..a.batch], &format!("plain{r}"));
        let t = Instant::now();
        g.insert_rows(None, &names, &flat)
            .map_err(|e| e.to_string())?;
        plain.push(t.elapsed().as_secs_f64());
        let (names, flat) = rows(&pair[a.batch..], &format!("checked{r}"));
        let t = Instant::now();
        let found = g.conflicts(&[], &names, &flat).map_err(|e| e.to_string())?;
        check_only.push(t.elapsed().as_secs_f64());
        g.insert_rows(None, &names, &flat)
            .map_err(|e| e.to_string())?;
        checked.push(t.elapsed().as_secs_f64());
        // The same batch through Identify's open-set decision (k = 4, as the check).
        let probes: Vec<&[f32]> = flat.chunks_exact(synth.config.dim).collect();
        let t = Instant::now();
        g.identify_open(
            &probes,
            &visage_engine::IdentifyOptions {
                k: 4,
                ..Default::default()
            },
        )
        .map_err(|e| e.to_string())?;
        identify.push(t.elapsed().as_secs_f64());
        let mut rows_flagged: Vec<usize> = found.iter().map(|c| c.position).collect();
        rows_flagged.dedup();
        false_conflicts += rows_flagged.len();
    }
    let vs: Vec<Vec<f32>> = twins.iter().map(|p| p.vector.clone()).collect();
    let (names, flat) = rows(&vs, "twin");
    let found = g.conflicts(&[], &names, &flat).map_err(|e| e.to_string())?;
    let mut caught: Vec<usize> = found
        .iter()
        .filter(|c| c.other_position.is_none())
        .map(|c| c.position)
        .collect();
    caught.dedup();
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (p, c, k) = (med(&mut plain), med(&mut checked), med(&mut check_only));
    let id = med(&mut identify);
    let strangers_checked = a.runs * a.batch;
    let expected = strangers_checked as f64 * a.target_far;
    if a.json {
        println!(
            "{}",
            json!({
                "subjects": a.subjects, "rows": a.subjects * 10, "batch": a.batch,
                "runs": a.runs, "target_far": a.target_far, "train_seconds": train_s,
                "plain_insert_ms": p * 1e3, "checked_insert_ms": c * 1e3,
                "check_ms": k * 1e3, "cost_ratio": c / p, "identify_ms": id * 1e3,
                "strangers_checked": strangers_checked, "false_conflicts": false_conflicts,
                "expected_false_conflicts": expected,
                "twins": a.batch, "twins_caught": caught.len(),
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} subjects x 10 images, head trained at FAR {} in {train_s:.1} s; batches of {} new people, median of {}\n",
        a.subjects, a.target_far, a.batch, a.runs
    );
    println!("| measurement | result |\n|---|---|");
    println!("| insert, no check | {:.1} ms a batch |", p * 1e3);
    println!(
        "| insert with conflict_check | {:.1} ms a batch ({:.1} ms of it the check): {:.2}x |",
        c * 1e3,
        k * 1e3,
        c / p
    );
    println!(
        "| Identify of the same batch (open set, k = 4) | {:.1} ms: the check costs {:.2}x an Identify |",
        id * 1e3,
        k / id
    );
    println!(
        "| strangers flagged (false conflicts) | {false_conflicts} of {strangers_checked} (the calibration predicts about {expected:.1}) |"
    );
    println!(
        "| new photos of enrolled people under new names, caught | {} of {} |",
        caught.len(),
        a.batch
    );
    Ok(ExitCode::SUCCESS)
}

fn calibration_cmd(a: CalibrationArgs) -> Res<ExitCode> {
    use visage_tests::calibration::{Scenario, run, table};
    let s = Scenario {
        subjects: a.subjects,
        images: a.images,
        target_far: a.target_far,
        decisions: a.decisions,
        seed: a.seed,
        nuisance: if a.isotropic {
            visage_tests::calibration::ISOTROPIC
        } else {
            visage_tests::calibration::NUISANCE
        },
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let t = std::time::Instant::now();
    let m = run(dir.path(), &s, visage_engine::TrainOptions::default());
    println!(
        "{} subjects x {} images, target {}, genuine cosine {:.3}, training {:.1} s, all {:.0} s\n",
        s.subjects,
        s.images,
        s.target_far,
        m.genuine_cosine,
        m.train_seconds,
        t.elapsed().as_secs_f64()
    );
    print!("{}", table(&m, s.target_far));
    println!(
        "\nexpected calibration error of the probabilities (fresh pairs, prior 0.5): {:.4}",
        m.ece
    );
    if let Some(c) = &m.head.calibrated {
        for (name, model) in [("head", &c.open_head), ("distance", &c.open_distance)] {
            if let Some(model) = model {
                println!(
                    "\nopen-set model of the {name}: calibrated at {} subjects, trusted up to {}",
                    model.subjects, model.trusted_up_to
                );
                println!(
                    "| subjects | threshold | predicted FPIR at the training threshold |\n|---|---|---|"
                );
                for p in model.points.iter().step_by(4) {
                    println!(
                        "| {} | {:.4} | {:.4} |",
                        p.subjects, p.threshold, p.fpir_fixed
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Scan every f32 vector.
    Exact,
    /// Scan 8-bit codes, re-rank exactly.
    Sq8,
}

impl Mode {
    fn scan(self) -> ScanMode {
        match self {
            Mode::Exact => ScanMode::Exact,
            Mode::Sq8 => ScanMode::Quantized,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Mode::Exact => "exact",
            Mode::Sq8 => "sq8",
        }
    }
}

/// The gallery, the probes and k, as `search` and `robust` take them.
#[derive(clap::Args)]
struct DataArgs {
    /// Gallery: float32 .npy of shape [N, D] (D a multiple of 16 from 16 to
    /// 2,048: the gallery's dimension); row i is stored with id i.
    #[arg(long)]
    base: PathBuf,
    /// Probes: float32 .npy of shape [P, D].
    #[arg(long)]
    probes: PathBuf,
    /// Results per probe.
    #[arg(long, default_value_t = 10)]
    k: usize,
}

#[derive(clap::Args)]
struct SearchArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Scan mode.
    #[arg(long, value_enum, default_value_t = Mode::Exact)]
    mode: Mode,
    /// Write the batch run's top-k row indices of BASE as int64 .npy [probes, k]
    /// (-1 where a probe has fewer than k results).
    #[arg(long)]
    out_ids: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Probes in the batch call: the first N (default: all, at most 10,000).
    #[arg(long)]
    batch: Option<usize>,
    /// Timed batch runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    batch_runs: usize,
    /// Probes searched one at a time for latency (default: all).
    #[arg(long)]
    single: Option<usize>,
    /// Stop the single-probe loop after this many seconds (the count used is reported).
    #[arg(long, default_value_t = 120.0)]
    single_budget: f64,
    /// Untimed single-probe searches before timing.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Data directory for the gallery (default: cached under target/visage-bench-data/).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Rebuild the data directory even if a matching one exists.
    #[arg(long)]
    rebuild: bool,
    /// Consecutive rows that share a subject (subject = row / this).
    #[arg(long, default_value_t = 10)]
    rows_per_subject: usize,
    /// Build time carried from the building process to the measuring one (internal).
    #[arg(long, hide = true)]
    built_secs: Option<f64>,
    /// .npy read time carried likewise (internal).
    #[arg(long, hide = true)]
    read_secs: Option<f64>,
}

#[derive(clap::Args)]
struct GenArgs {
    /// Gallery embeddings.
    #[arg(long)]
    n: usize,
    /// Probes (half new images of enrolled subjects, half strangers).
    #[arg(long, default_value_t = 1000)]
    probes: usize,
    /// Output directory (base.npy and probes.npy are written there).
    #[arg(long)]
    out: PathBuf,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Isotropic image-to-image noise (default: anisotropic, like pose and light).
    #[arg(long)]
    isotropic: bool,
    /// Values per vector (a multiple of 16 from 16 to 2,048).
    #[arg(long, default_value_t = DIM)]
    dim: usize,
}

#[derive(clap::Args)]
struct BoundsArgs {
    /// Buffer read for the bandwidth.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: usize,
    /// Reads of the buffer (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Seconds per run of the FMA loop.
    #[arg(long, default_value_t = 0.5)]
    fma_secs: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Search(a) => search(a),
        Cmd::Gen(a) => gen_data(a),
        Cmd::Bounds(a) => bounds_cmd(a),
        Cmd::Calibration(a) => calibration_cmd(a),
        Cmd::Robust(a) => robust_cmd(a),
        Cmd::Conflicts(a) => conflicts_cmd(a),
        Cmd::InsertBound(a) => insert_bound_cmd(a),
        Cmd::ScaleGen(a) => scale_gen(a),
        Cmd::ScaleBuild(a) => scale_build(a),
        Cmd::ScaleSearch(a) => scale_search(a),
        Cmd::ScaleTruth(a) => scale_truth(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("visage-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------- search

const GALLERY: &str = "bench";
/// Written into a data directory when a build starts; only directories holding
/// it (or empty ones) are ever wiped.
const MARKER: &str = "visage-bench.json";
const INSERT_BATCH: usize = 10_000;

/// What the cached data directory was built from.
fn source_key(base: &Path, rows_per_subject: usize) -> Res<Value> {
    let canon = base
        .canonicalize()
        .map_err(|e| format!("{}: {e}", base.display()))?;
    let meta = std::fs::metadata(&canon).map_err(|e| format!("{}: {e}", canon.display()))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    Ok(json!({
        "base": canon.display().to_string(),
        "size": meta.len(),
        "mtime_ns": mtime_ns,
        "rows_per_subject": rows_per_subject,
    }))
}

/// FNV-1a, for a directory name that stays the same across builds of this tool.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether `dir` holds a complete build of `key` with `rows` embeddings.
fn cached(dir: &Path, key: &Value, rows: Option<u64>) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(MARKER)) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else {
        return false;
    };
    v.get("source") == Some(key)
        && v.get("complete") == Some(&Value::Bool(true))
        && rows.is_none_or(|r| v.get("rows").and_then(Value::as_u64) == Some(r))
}

/// Empty `dir` for a fresh build, refusing to touch a directory this tool did not make.
fn prepare_dir(dir: &Path) -> Res<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .next()
            .is_none();
        if !empty && !dir.join(MARKER).exists() {
            return Err(format!(
                "{} exists and was not made by visage-bench; choose another --data-dir",
                dir.display()
            ));
        }
        std::fs::remove_dir_all(dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

fn write_marker(dir: &Path, key: &Value, rows: usize, complete: bool) -> Res<()> {
    let v = json!({ "source": key, "rows": rows, "complete": complete });
    std::fs::write(dir.join(MARKER), format!("{v:#}\n"))
        .map_err(|e| format!("{}: {e}", dir.join(MARKER).display()))
}

/// Insert BASE (ids = row numbers) in batches of 10,000 and compact; returns the time.
fn build(dir: &Path, base: &npy::Array2<f32>, rows_per_subject: usize) -> Res<Duration> {
    let opts = quiet_options(Durability::ProcessCrash);
    let flush_at = opts.gallery.memtable_rows as u64;
    let t = Instant::now();
    let engine = Engine::open(dir, opts).map_err(|e| format!("opening {}: {e}", dir.display()))?;
    let g = engine
        .create_gallery_with(GALLERY, &GallerySpec::with_dim(base.cols))
        .map_err(|e| format!("creating the gallery: {e}"))?;
    let mut last_report = Instant::now();
    for start in (0..base.rows).step_by(INSERT_BATCH) {
        let end = (start + INSERT_BATCH).min(base.rows);
        let batch: Vec<Embedding> = (start..end)
            .map(|i| Embedding {
                id: i as u64,
                subject: format!("s{}", i / rows_per_subject.max(1)),
                vector: base.row(i).to_vec(),
            })
            .collect();
        g.insert(&batch)
            .map_err(|e| format!("inserting rows {start}..{end} of BASE: {e}"))?;
        if g.stats().memtable_rows >= flush_at {
            g.flush().map_err(|e| format!("flush: {e}"))?;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!("  inserted {end} of {} rows", base.rows);
            last_report = Instant::now();
        }
    }
    g.compact().map_err(|e| format!("compact: {e}"))?;
    let elapsed = t.elapsed();
    drop(g);
    drop(engine);
    Ok(elapsed)
}

fn search(a: SearchArgs) -> Res<ExitCode> {
    if a.data.k == 0 {
        return Err("--k must be at least 1".into());
    }
    let key = source_key(&a.data.base, a.rows_per_subject)?;
    let key_text = key.to_string();
    let dir = a.data_dir.clone().unwrap_or_else(|| {
        let root = visage_bench::target_dir();
        root.canonicalize()
            .unwrap_or(root)
            .join("visage-bench-data")
            .join(format!("{:016x}", fnv1a(&key_text)))
    });

    let mut build_secs = a.built_secs;
    let mut read_secs = a.read_secs;
    let measuring_child = a.built_secs.is_some();
    if !measuring_child && (a.rebuild || !cached(&dir, &key, None)) {
        // Build in this process, then measure in a fresh one that never held the
        // data, so its resident memory is the engine's alone.
        let t = Instant::now();
        let base = npy::read_f32(&a.data.base).map_err(|e| e.to_string())?;
        let read = t.elapsed();
        if let Some(why) = GallerySpec::with_dim(base.cols).problem() {
            return Err(format!(
                "{}: vectors of {} values: {why}",
                a.data.base.display(),
                base.cols
            ));
        }
        eprintln!(
            "building {} ({} rows) from {}",
            dir.display(),
            base.rows,
            a.data.base.display()
        );
        prepare_dir(&dir)?;
        write_marker(&dir, &key, base.rows, false)?;
        let took = build(&dir, &base, a.rows_per_subject)?;
        write_marker(&dir, &key, base.rows, true)?;
        eprintln!("  built in {:.1} s", took.as_secs_f64());
        drop(base);
        let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
        let mut args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|s| s != "--rebuild")
            .collect();
        args.extend([
            "--built-secs".into(),
            took.as_secs_f64().to_string(),
            "--read-secs".into(),
            read.as_secs_f64().to_string(),
        ]);
        let status = std::process::Command::new(exe)
            .args(&args)
            .status()
            .map_err(|e| format!("re-running to measure: {e}"))?;
        if status.success() {
            return Ok(ExitCode::SUCCESS);
        }
        // Measure here instead (the resident memory may then include freed heap).
        eprintln!("the measuring process failed ({status}); measuring in this one");
        build_secs = Some(took.as_secs_f64());
        read_secs = Some(read.as_secs_f64());
    }

    let t = Instant::now();
    let probes = npy::read_f32(&a.data.probes).map_err(|e| e.to_string())?;
    let probes_read = t.elapsed();
    if probes.rows == 0 {
        return Err(format!("{}: no probes", a.data.probes.display()));
    }

    let t = Instant::now();
    let engine = Engine::open(&dir, quiet_options(Durability::ProcessCrash))
        .map_err(|e| format!("opening {}: {e}", dir.display()))?;
    let g = engine
        .gallery(GALLERY)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let open = t.elapsed();
    let dim = g.dim();
    if probes.cols != dim {
        return Err(format!(
            "{}: probes have {} values; the gallery built from {} has {dim}",
            a.data.probes.display(),
            probes.cols,
            a.data.base.display()
        ));
    }
    let stats = g.stats();
    if !cached(&dir, &key, Some(stats.live)) || stats.memtable_rows != 0 {
        return Err(format!(
            "{} holds {} live rows ({} unflushed), not the complete build its {MARKER} \
             describes (rerun with --rebuild)",
            dir.display(),
            stats.live,
            stats.memtable_rows
        ));
    }
    let hwm_reset = reset_hwm();
    let (load_kind, load_secs) = match build_secs {
        Some(b) => ("built", b),
        None => ("reopened", open.as_secs_f64()),
    };

    let opts = SearchOptions {
        k: a.data.k,
        mode: a.mode.scan(),
        ..Default::default()
    };
    let search_err = |e: visage_engine::Error| format!("search: {e}");

    // Single probes.
    let n_single = a.single.unwrap_or(probes.rows).min(probes.rows);
    for i in 0..a.warmup.min(probes.rows) {
        g.search_with(&[probes.row(i)], &opts).map_err(search_err)?;
    }
    let mut lat = Vec::with_capacity(n_single);
    let loop_start = Instant::now();
    for i in 0..n_single {
        let t = Instant::now();
        let hits = g.search_with(&[probes.row(i)], &opts).map_err(search_err)?;
        lat.push(t.elapsed());
        std::hint::black_box(hits);
        if loop_start.elapsed().as_secs_f64() > a.single_budget {
            eprintln!(
                "  single-probe budget of {} s reached after {} probes",
                a.single_budget,
                lat.len()
            );
            break;
        }
    }
    let mean = lat.iter().sum::<Duration>() / lat.len().max(1) as u32;
    lat.sort();
    let (p50, p99) = (percentile(&lat, 0.50), percentile(&lat, 0.99));

    // One batch call.
    let n_batch = a
        .batch
        .unwrap_or(probes.rows)
        .min(probes.rows)
        .min(Limits::for_dim(dim).probes);
    if n_batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let batch: Vec<&[f32]> = (0..n_batch).map(|i| probes.row(i)).collect();
    let mut runs = Vec::new();
    let mut last = Vec::new();
    for _ in 0..a.batch_runs.max(1) {
        let t = Instant::now();
        last = g.search_with(&batch, &opts).map_err(search_err)?;
        runs.push(t.elapsed());
    }
    let mut sorted_runs = runs.clone();
    sorted_runs.sort();
    let batch_median = sorted_runs[sorted_runs.len() / 2];
    let throughput = n_batch as f64 / batch_median.as_secs_f64();

    let ProcMemory {
        rss: vm_rss,
        hwm: vm_hwm,
        ..
    } = ProcMemory::now();
    let mapped = segment_bytes(g.dir());
    let vectors_bytes = stats.live * (dim as u64) * 4;

    if let Some(path) = &a.out_ids {
        let mut ids = vec![-1i64; n_batch * a.data.k];
        for (i, hits) in last.iter().enumerate() {
            for (j, h) in hits.iter().take(a.data.k).enumerate() {
                ids[i * a.data.k + j] = i64::try_from(h.id).expect("ids are row numbers");
            }
        }
        npy::write_i64(path, &ids, &[n_batch, a.data.k]).map_err(|e| e.to_string())?;
    }

    let ratio = |x: Option<u64>| x.map(|x| x as f64 / mapped.max(1) as f64);
    let out = json!({
        "engine": "visage",
        "mode": a.mode.name(),
        "k": a.data.k,
        "rows": stats.live,
        "dim": dim,
        "segments": stats.segments,
        "threads": rayon::current_num_threads(),
        "base": a.data.base.display().to_string(),
        "probes_file": a.data.probes.display().to_string(),
        "data_dir": dir.display().to_string(),
        "load": {
            "kind": load_kind,
            "secs": load_secs,
            "build_secs": build_secs,
            "open_secs": open.as_secs_f64(),
            "read_base_npy_secs": read_secs,
            "read_probes_npy_secs": probes_read.as_secs_f64(),
        },
        "single": {
            "probes": lat.len(),
            "warmup": a.warmup.min(probes.rows),
            "p50_ms": millis(p50),
            "p99_ms": millis(p99),
            "mean_ms": millis(mean),
            "min_ms": millis(lat.first().copied().unwrap_or_default()),
            "max_ms": millis(lat.last().copied().unwrap_or_default()),
        },
        "batch": {
            "probes": n_batch,
            "runs_secs": runs.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
            "median_secs": batch_median.as_secs_f64(),
            "probes_per_sec": throughput,
        },
        "memory": {
            "vm_rss_bytes": vm_rss,
            "vm_hwm_bytes": vm_hwm,
            "hwm_reset_after_open": hwm_reset,
            "mapped_segment_bytes": mapped,
            "vector_bytes": vectors_bytes,
            "rss_over_mapped": ratio(vm_rss),
            "hwm_over_mapped": ratio(vm_hwm),
        },
        "out_ids": a.out_ids.as_ref().map(|p| p.display().to_string()),
    });
    if a.json {
        println!("{out}");
    } else {
        let mib = |b: Option<u64>| {
            b.map_or("?".to_string(), |b| {
                format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
            })
        };
        println!(
            "visage {} search, k = {}, {} rows × {dim} in {} segment(s), {} threads",
            a.mode.name(),
            a.data.k,
            stats.live,
            stats.segments,
            rayon::current_num_threads()
        );
        println!("  data directory   {}", dir.display());
        match build_secs {
            Some(b) => println!(
                "  load             {b:.2} s (built: insert + compact; reopen {:.3} s)",
                open.as_secs_f64()
            ),
            None => println!(
                "  load             {:.3} s (reopened a directory built before)",
                open.as_secs_f64()
            ),
        }
        println!(
            "  single probe     p50 {:.3} ms, p99 {:.3} ms, mean {:.3} ms over {} probes",
            millis(p50),
            millis(p99),
            millis(mean),
            lat.len()
        );
        println!(
            "  batch            {throughput:.1} probes/s ({n_batch} probes in one call, median {:.3} s of {})",
            batch_median.as_secs_f64(),
            runs.len()
        );
        println!(
            "  resident memory  VmRSS {}, VmHWM {}; segments mapped {} ({:.2}× RSS/mapped)",
            mib(vm_rss),
            mib(vm_hwm),
            mib(Some(mapped)),
            ratio(vm_rss).unwrap_or(f64::NAN)
        );
        if let Some(p) = &a.out_ids {
            println!(
                "  ids              {} [{n_batch}, {}] int64",
                p.display(),
                a.data.k
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- gen

fn gen_data(a: GenArgs) -> Res<ExitCode> {
    if a.n == 0 {
        return Err("--n must be at least 1".into());
    }
    let nuisance = if a.isotropic {
        Nuisance::isotropic_matching(Nuisance::ANISOTROPIC)
    } else {
        Nuisance::ANISOTROPIC
    };
    let t = Instant::now();
    // About ten images per subject; subjects are generated in order from one
    // stream, so more subjects only extend the same prefix.
    if let Some(why) = GallerySpec::with_dim(a.dim).problem() {
        return Err(format!("--dim: {why}"));
    }
    let dim = a.dim;
    let mut subjects = (a.n / 10).max(1);
    let g = loop {
        let g = SynthGallery::generate(SynthConfig {
            dim,
            subjects,
            nuisance,
            seed: a.seed,
            ..Default::default()
        });
        if g.embeddings.len() >= a.n {
            break g;
        }
        subjects += (a.n - g.embeddings.len()).div_ceil(8);
    };
    let probes = g.probes(
        a.probes / 2,
        a.probes - a.probes / 2,
        a.seed.wrapping_add(1),
    );
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let base: Vec<f32> = g.embeddings[..a.n]
        .iter()
        .flat_map(|e| e.vector.iter().copied())
        .collect();
    drop(g);
    let pv: Vec<f32> = probes
        .iter()
        .flat_map(|p| p.vector.iter().copied())
        .collect();
    let bp = a.out.join("base.npy");
    let pp = a.out.join("probes.npy");
    npy::write_f32(&bp, &base, &[a.n, dim]).map_err(|e| e.to_string())?;
    npy::write_f32(&pp, &pv, &[probes.len(), dim]).map_err(|e| e.to_string())?;
    eprintln!(
        "wrote {} [{}, {dim}] and {} [{}, {dim}] in {:.1} s",
        bp.display(),
        a.n,
        pp.display(),
        probes.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- bounds

fn bounds_cmd(a: BoundsArgs) -> Res<ExitCode> {
    if a.bytes < 1 << 20 {
        return Err("--bytes must be at least 1 MiB".into());
    }
    let bw = bounds::memory_read_bandwidth(a.bytes, a.reps);
    let fma = bounds::fma_peak(a.fma_secs, 3);
    if a.json {
        println!(
            "{}",
            json!({
                "memory_read": {
                    "bytes": bw.bytes,
                    "reps": a.reps,
                    "threads": bw.threads,
                    "median_secs": bw.median.as_secs_f64(),
                    "bytes_per_sec": bw.bytes_per_sec(),
                },
                "fma": {
                    "isa": fma.isa.name(),
                    "threads": fma.threads,
                    "flops_per_sec": fma.flops_per_sec,
                    "flop_convention": "a fused multiply-add counts 2 flops",
                },
            })
        );
    } else {
        println!(
            "memory read bandwidth  {:.2} GB/s ({} threads, {:.0} MiB buffer, median of {})",
            bw.bytes_per_sec() / 1e9,
            bw.threads,
            bw.bytes as f64 / (1 << 20) as f64,
            a.reps
        );
        println!(
            "FMA peak               {:.1} GFLOP/s ({}, {} threads; multiply-add = 2 flops)",
            fma.flops_per_sec / 1e9,
            fma.isa.name(),
            fma.threads
        );
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- robust

/// One gallery of the robustness run: `rows` rows (evenly spread, the first
/// at 17) with one coordinate set to `value`, or the clean gallery with
/// `far` of the batch's probes moved far away (coordinates × 1,000).
struct Variant {
    name: String,
    rows: usize,
    value: f32,
    far: usize,
}

fn variants() -> Vec<Variant> {
    let v = |name: &str, rows: usize, value: f32, far: usize| Variant {
        name: name.to_owned(),
        rows,
        value,
        far,
    };
    vec![
        v("clean", 0, 0.0, 0),
        v("1 row with one coordinate = 50", 1, 50.0, 0),
        v("10 rows with one coordinate = 1,000", 10, 1000.0, 0),
        v("10 rows with one coordinate = 1e6", 10, 1e6, 0),
        v("1,000 rows (0.1%) with one coordinate = 50", 1000, 50.0, 0),
        v(
            "clean; batch of 990 probes and 10 far (× 1,000)",
            0,
            0.0,
            10,
        ),
    ]
}

fn robust_cmd(a: RobustArgs) -> Res<ExitCode> {
    let base = npy::read_f32(&a.data.base).map_err(|e| e.to_string())?;
    let probes = npy::read_f32(&a.data.probes).map_err(|e| e.to_string())?;
    if probes.cols != base.cols || probes.rows == 0 || base.rows < 1000 {
        return Err("need at least 1,000 base rows and probes of the same dimension".into());
    }
    let key = source_key(&a.data.base, 10)?;
    let dim = base.cols;
    let n_batch = probes.rows.min(1000);
    let opts = SearchOptions {
        k: a.data.k,
        mode: ScanMode::Exact,
        ..Default::default()
    };
    let mut results = Vec::new();
    for v in variants() {
        // The gallery: the base with the variant's rows planted (cached).
        let mut planted = base.clone();
        let stride = base.rows / v.rows.max(1);
        let rows: Vec<usize> = (0..v.rows).map(|i| (17 + i * stride) % base.rows).collect();
        for &r in &rows {
            planted.data[r * dim + r % dim] = v.value;
        }
        let vkey = json!({ "robust": key, "rows": rows.len(), "value": v.value });
        let root = visage_bench::target_dir();
        let dir = root
            .canonicalize()
            .unwrap_or(root)
            .join("visage-bench-data")
            .join(format!("robust-{:016x}", fnv1a(&vkey.to_string())));
        if !cached(&dir, &vkey, None) {
            eprintln!("building {} ({})", dir.display(), v.name);
            prepare_dir(&dir)?;
            write_marker(&dir, &vkey, planted.rows, false)?;
            build(&dir, &planted, 10)?;
            write_marker(&dir, &vkey, planted.rows, true)?;
        }
        drop(planted);
        let engine = Engine::open(&dir, quiet_options(Durability::ProcessCrash))
            .map_err(|e| format!("opening {}: {e}", dir.display()))?;
        let g = engine.gallery(GALLERY).map_err(|e| e.to_string())?;
        // The batch: the first probes, the last `far` of them moved far away.
        let mut batch_data: Vec<f32> = probes.data[..n_batch * dim].to_vec();
        for p in n_batch - v.far..n_batch {
            for x in &mut batch_data[p * dim..(p + 1) * dim] {
                *x *= 1000.0;
            }
        }
        let batch: Vec<&[f32]> = batch_data.chunks_exact(dim).collect();
        // The reference, and time for the codes' statistics to be computed.
        let want = visage_engine::fuzzing::search_direct(&g, &batch_data, a.data.k);
        let search_err = |e: visage_engine::Error| format!("search: {e}");
        let n_single = a.single.min(n_batch);
        let mut lat = Vec::with_capacity(n_single);
        let mut equal = true;
        let same = |hits: &[visage_engine::Hit], w: &[(u64, f32)]| {
            hits.len() == w.len()
                && hits
                    .iter()
                    .zip(w)
                    .all(|(h, w)| h.id == w.0 && h.distance.to_bits() == w.1.to_bits())
        };
        // Warm up: the files into the page cache, the codes' statistics computed.
        for q in batch.iter().take(50) {
            g.search_with(&[*q], &opts).map_err(search_err)?;
        }
        g.search_with(&batch, &opts).map_err(search_err)?;
        let before = g.stats().scans;
        for i in 0..n_single {
            let t = Instant::now();
            let hits = g.search_with(&[batch[i]], &opts).map_err(search_err)?;
            lat.push(t.elapsed());
            equal &= same(&hits[0], &want[i]);
        }
        lat.sort();
        let single_scans = g.stats().scans;
        let mut runs = Vec::new();
        for _ in 0..a.batch_runs.max(1) {
            let t = Instant::now();
            let got = g.search_with(&batch, &opts).map_err(search_err)?;
            runs.push(t.elapsed());
            equal &= got.iter().zip(&want).all(|(h, w)| same(h, w));
        }
        runs.sort();
        let after = g.stats();
        let per_batch = |x: u64, y: u64| (x - y) as f64 / a.batch_runs.max(1) as f64;
        results.push(json!({
            "variant": v.name,
            "single_p50_ms": millis(percentile(&lat, 0.5)),
            "batch_probes_per_sec": n_batch as f64 / runs[runs.len() / 2].as_secs_f64(),
            "exception_rows": after.exception_rows,
            "single_settled": {
                "first_pass": single_scans.first_pass - before.first_pass,
                "widened": single_scans.widened - before.widened,
                "direct": single_scans.direct - before.direct,
            },
            "batch_settled_per_run": {
                "first_pass": per_batch(after.scans.first_pass, single_scans.first_pass),
                "f32_batch": per_batch(after.scans.f32_batch, single_scans.f32_batch),
                "direct": per_batch(after.scans.direct, single_scans.direct),
            },
            "answers_equal_direct": equal,
        }));
    }
    let clean = (
        results[0]["single_p50_ms"].as_f64().unwrap_or(f64::NAN),
        results[0]["batch_probes_per_sec"]
            .as_f64()
            .unwrap_or(f64::NAN),
    );
    let all_equal = results
        .iter()
        .all(|r| r["answers_equal_direct"] == json!(true));
    if a.json {
        println!(
            "{:#}",
            json!({ "rows": base.rows, "dim": dim, "k": a.data.k, "batch": n_batch, "variants": results })
        );
    } else {
        println!(
            "exact search, {} rows × {dim}, k = {}, {} single probes (p50), batch of {n_batch} (median of {})\n",
            base.rows,
            a.data.k,
            a.single.min(n_batch),
            a.batch_runs.max(1)
        );
        println!(
            "| gallery | single probe p50 | batch (probes/s) | exception rows | batch probes settled: codes / f32 batch / direct | answers = direct scan |"
        );
        println!("|---|---|---|---|---|---|");
        for r in &results {
            let s = r["single_p50_ms"].as_f64().unwrap_or(f64::NAN);
            let b = r["batch_probes_per_sec"].as_f64().unwrap_or(f64::NAN);
            let bs = &r["batch_settled_per_run"];
            println!(
                "| {} | {s:.2} ms ({:.0}%) | {b:.0} ({:.0}%) | {} | {} / {} / {} | {} |",
                r["variant"].as_str().unwrap_or(""),
                100.0 * clean.0 / s,
                100.0 * b / clean.1,
                r["exception_rows"],
                bs["first_pass"],
                bs["f32_batch"],
                bs["direct"],
                if r["answers_equal_direct"] == json!(true) {
                    "yes"
                } else {
                    "NO"
                },
            );
        }
        println!(
            "\n(single-probe % is the clean gallery's time over this one's: above 100% is faster)"
        );
    }
    Ok(if all_equal {
        ExitCode::SUCCESS
    } else {
        eprintln!("visage-bench: some answers differ from the direct scan");
        ExitCode::FAILURE
    })
}

// ---------------------------------------------------------------- scale

fn scale_gen(a: ScaleGenArgs) -> Res<ExitCode> {
    let g = a.data.generator()?;
    let t = Instant::now();
    let (what, rows) = if let Some(p) = a.probes {
        if a.subjects.is_some() {
            return Err("--subjects goes with rows, not --probes".into());
        }
        let v = g.probes(p);
        npy::write_f32(&a.out, &v, &[p, g.dim]).map_err(|e| e.to_string())?;
        ("probes", p)
    } else {
        let count = a.count.unwrap_or(g.rows.saturating_sub(a.start));
        let end = a
            .start
            .checked_add(count)
            .filter(|&e| e <= g.rows && count > 0)
            .ok_or_else(|| {
                format!(
                    "rows {}..{}+{count} are not within the {} rows",
                    a.start, a.start, g.rows
                )
            })?;
        g.write(a.start..end, &a.out, a.subjects.as_deref())?;
        ("rows", count)
    };
    let secs = t.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&a.out).map_or(0, |m| m.len());
    println!(
        "{}",
        json!({
            "wrote": what, "rows": rows, "dim": g.dim, "out": a.out.display().to_string(),
            "bytes": bytes, "seconds": secs, "rows_per_sec": rows as f64 / secs,
            "threads": rayon::current_num_threads(),
        })
    );
    Ok(ExitCode::SUCCESS)
}

fn scale_build(a: ScaleBuildArgs) -> Res<ExitCode> {
    let g = a.data.generator()?;
    let source = match (&a.vectors, &a.subjects) {
        (Some(vectors), Some(subjects)) => scale::BuildSource::Files {
            generator: g,
            vectors,
            subjects,
        },
        _ => scale::BuildSource::Generator(g),
    };
    let report = scale::build(&a.data_dir, &source)?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

fn scale_search(a: ScaleSearchArgs) -> Res<ExitCode> {
    let probes = npy::read_f32(&a.probes).map_err(|e| e.to_string())?;
    let limit = Limits::for_dim(probes.cols).probes;
    if a.batch == 0 || a.batch > limit || a.identify > limit {
        return Err(format!(
            "--batch must be 1 to {limit}, --identify at most {limit}"
        ));
    }
    let plan = scale::SearchPlan {
        data_dir: &a.data_dir,
        probes: &probes,
        k: a.k,
        warmup: a.warmup,
        single: a.single,
        batch: a.batch,
        identify: a.identify,
        repeat_under_secs: a.repeat_under,
    };
    let (report, ids) = scale::search(&plan)?;
    if let Some(p) = &a.out_ids {
        npy::write_i64(p, &ids, &[a.batch, a.k]).map_err(|e| e.to_string())?;
    }
    if a.json {
        println!("{report}");
    } else {
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let mib = |v: &Value| {
            v.as_f64()
                .map_or("?".into(), |b| format!("{:.0} MiB", b / 1_048_576.0))
        };
        let m = &report["memory"]["after_batch"];
        println!(
            "visage exact, k = {}, {} rows in {} segments",
            a.k, report["rows"], report["segments"]
        );
        println!(
            "  open             {:.3} s, first search {:.3} s",
            f(&report["open"]["open_secs"]),
            f(&report["open"]["first_search_secs"])
        );
        let ratio = &report["single"]["ratio_to_codes_read"];
        println!(
            "  single probe     p50 {:.2} ms, p99 {:.2} ms over {}; against the codes' read \
             time measured beside each round: {:.2}× (median of the rounds; {:.2}–{:.2}×)",
            f(&report["single"]["p50_ms"]),
            f(&report["single"]["p99_ms"]),
            report["single"]["probes"],
            f(&ratio["median"]),
            f(&ratio["min"]),
            f(&ratio["max"]),
        );
        println!(
            "  batch            {:.0} probes/s; identify {:.0} probes/s",
            f(&report["batch"]["probes_per_sec"]),
            f(&report["identify"]["probes_per_sec"])
        );
        println!(
            "  memory           anon {}, file {}, peak {}; disk {}",
            mib(&m["rss_anon_bytes"]),
            mib(&m["rss_file_bytes"]),
            mib(&m["vm_hwm_bytes"]),
            mib(&report["disk"]["bytes_on_disk"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn scale_truth(a: ScaleTruthArgs) -> Res<ExitCode> {
    let g = a.data.generator()?;
    let probes = npy::read_f32(&a.probes).map_err(|e| e.to_string())?;
    if probes.cols != g.dim {
        return Err(format!(
            "{}: probes of {} values, the gallery has {}",
            a.probes.display(),
            probes.cols,
            g.dim
        ));
    }
    let sample = a.sample.min(probes.rows);
    if sample == 0 || a.k == 0 || a.k >= g.rows {
        return Err("need at least one probe, and 0 < k < rows".into());
    }
    let t = Instant::now();
    // One more than k: the gap between the k-th and the next says whether
    // the top k is a set distances decide (no tie at its edge).
    let top = g.exact_top_k(&probes.data[..sample * g.dim], a.k + 1);
    let secs = t.elapsed().as_secs_f64();
    let mut ids = Vec::with_capacity(sample * a.k);
    let mut min_gap = f64::INFINITY;
    let mut kth = Vec::new();
    for t in &top {
        ids.extend(
            t[..a.k]
                .iter()
                .map(|c| i64::try_from(c.1).expect("row numbers fit i64")),
        );
        min_gap = min_gap.min(t[a.k].0 - t[a.k - 1].0);
        kth.push(t[a.k - 1].0);
    }
    npy::write_i64(&a.out, &ids, &[sample, a.k]).map_err(|e| e.to_string())?;
    println!(
        "{}",
        json!({
            "rows": g.rows, "probes": sample, "k": a.k, "seconds": secs,
            "rows_per_sec": g.rows as f64 / secs, "threads": rayon::current_num_threads(),
            "kth_distance": kth, "min_gap_kth_to_next": min_gap,
            "out": a.out.display().to_string(),
        })
    );
    Ok(ExitCode::SUCCESS)
}

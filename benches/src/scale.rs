//! The scale benchmark's data (issue 18: tens of millions of faces on one
//! machine, exactly, beyond its memory): a face-like gallery of any size,
//! generated row by row, so that any range of rows can be regenerated
//! anywhere (by the import, by `scale-gen` into a file, by the independent
//! brute force of `scale-truth`) without ever holding the gallery.
//!
//! Row `r` of a [`Generator`] `{ rows, dim, seed }`:
//! - its subject is `r / 10` (ten images a subject), named
//!   [`subject_name`] (`s000000123`);
//! - the subject's centre is a standard normal vector of `dim` values scaled
//!   to unit length, drawn from a stream seeded by `(seed, subject)`;
//! - the image is `normalise(centre + σ/√dim · noise)`, the noise standard
//!   normal from a stream seeded by `(seed, r)`, with σ = [`SIGMA`] (the
//!   normals are sums of four uniforms, for speed): two
//!   images of one subject then have cosine ≈ 1/(1 + σ²) ≈ 0.65 (squared L2
//!   ≈ 0.70), strangers cosine ≈ 0 ± 1/√dim (squared L2 ≈ 2), like the
//!   embeddings of a face model.
//!
//! Probe `j` of [`Generator::probe`] (interleaved, so any prefix is half and
//! half): even `j`, a new image of an enrolled subject (a subject drawn from
//! a stream seeded by `(seed, j)`, its noise seeded by row number `rows + j`,
//! beyond every row of the gallery); odd `j`, an image (centre and noise alike)
//! of subject `2⁴⁰ + j`, never enrolled at any size.
//!
//! Every number comes from the engine's one PRNG ([`visage_engine::rng`]):
//! each stream is an [`Rng`] seeded by mixing `(seed, kind, index)` with
//! [`splitmix64`], so a row's values do not depend on which rows are
//! generated with it, in what order, or on how many threads.

use rayon::prelude::*;
use std::borrow::Cow;
use std::io::Write;
use std::ops::Range;
use std::path::Path;
use visage_client::npy::F32Writer;
use visage_engine::ImportSource;
use visage_engine::rng::{Rng, splitmix64};

/// Images per subject: row `r` is an image of subject `r / IMAGES_PER_SUBJECT`.
pub const IMAGES_PER_SUBJECT: usize = 10;
/// Length of the noise added to a unit centre (each of the `dim` values has
/// standard deviation `SIGMA / √dim`): genuine pairs have cosine ≈ 1/(1 + σ²).
pub const SIGMA: f32 = 0.73;
/// Subjects from this number on are never enrolled: the strangers among the probes.
pub const STRANGERS_FROM: u64 = 1 << 40;
/// Rows generated together (one task, one subject's centre computed once for
/// its ten images); a multiple of [`IMAGES_PER_SUBJECT`].
const BLOCK: usize = 2000;
/// Rows `scale-gen` writes at a time.
pub const CHUNK: usize = 1 << 16;

/// Kinds of stream, mixed into their seeds so that no two kinds share one.
const CENTRE: u64 = 0xC3A5_C85C_97CB_3127;
const NOISE: u64 = 0xB492_B66F_BE98_F273;
const PICK: u64 = 0x9AE1_6A3B_2F90_404F;

/// The generator of `rows` rows of `dim` values with `seed` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generator {
    /// Rows of the gallery.
    pub rows: usize,
    /// Values per vector.
    pub dim: usize,
    /// Seed of every stream.
    pub seed: u64,
}

/// The stream of `kind` number `index`.
fn stream(seed: u64, kind: u64, index: u64) -> Rng {
    let mut s = seed ^ kind;
    let base = splitmix64(&mut s);
    let mut s = base ^ index;
    Rng::new(splitmix64(&mut s))
}

/// A standard normal, approximately: the sum of the four 16-bit uniforms of
/// one 64-bit draw (Irwin–Hall), centred and scaled to unit variance. Its
/// tails stop at ±√12 ≈ 3.5σ, which a face embedding's noise does not miss;
/// it costs one draw, where [`Rng::normal`]'s Box–Muller costs a logarithm,
/// a square root and a sine and cosine in f64 for two, too slow to generate
/// millions of rows a second.
#[inline]
fn normal(rng: &mut Rng) -> f32 {
    let x = rng.next_u64();
    let sum = (x & 0xFFFF) + ((x >> 16) & 0xFFFF) + ((x >> 32) & 0xFFFF) + (x >> 48);
    // Each value is (v + ½)/65536, of variance 1/12: the sum's mean is 2.
    (sum as f32 - 131_070.0) * (1.732_050_8 / 65_536.0)
}

/// Scale `v` to unit length (it is never zero: a sum of normals).
fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let inv = 1.0 / n.max(f32::MIN_POSITIVE);
    for x in v {
        *x *= inv;
    }
}

/// The subject's name: `s` and nine digits (`s000000123`), more digits above 10⁹.
pub fn subject_name(subject: u64) -> String {
    format!("s{subject:09}")
}

impl Generator {
    /// Subjects with an image in the gallery.
    pub fn subjects(&self) -> u64 {
        self.rows.div_ceil(IMAGES_PER_SUBJECT) as u64
    }

    /// Subject `subject`'s centre, a unit vector, into `out`.
    pub fn centre(&self, subject: u64, out: &mut [f32]) {
        let mut rng = stream(self.seed, CENTRE, subject);
        for x in out.iter_mut() {
            *x = normal(&mut rng);
        }
        normalise(out);
    }

    /// The image with noise number `noise` of the subject whose centre is `centre`.
    fn image(&self, centre: &[f32], noise: u64, out: &mut [f32]) {
        let mut rng = stream(self.seed, NOISE, noise);
        let s = SIGMA / (self.dim as f32).sqrt();
        for (o, c) in out.iter_mut().zip(centre) {
            *o = c + s * normal(&mut rng);
        }
        normalise(out);
    }

    /// Row `row`'s vector into `out` (`dim` values).
    pub fn row(&self, row: usize, out: &mut [f32]) {
        let mut c = vec![0f32; self.dim];
        self.centre((row / IMAGES_PER_SUBJECT) as u64, &mut c);
        self.image(&c, row as u64, out);
    }

    /// Rows `range` into `out` (`range.len() × dim` values), in parallel.
    /// Equal, value for value, to [`Generator::row`] of each.
    pub fn rows_into(&self, range: Range<usize>, out: &mut [f32]) {
        let dim = self.dim;
        assert_eq!(out.len(), range.len() * dim, "output of the rows' size");
        // Tasks of whole blocks (aligned to BLOCK, so to subjects).
        let mut tasks: Vec<(Range<usize>, &mut [f32])> = Vec::new();
        let mut rest = out;
        let mut r = range.start;
        while r < range.end {
            let end = range.end.min((r / BLOCK + 1) * BLOCK);
            let (head, tail) = rest.split_at_mut((end - r) * dim);
            tasks.push((r..end, head));
            rest = tail;
            r = end;
        }
        tasks.into_par_iter().for_each(|(rows, out)| {
            let mut centre = vec![0f32; dim];
            let mut subject = None;
            for (row, o) in rows.zip(out.chunks_exact_mut(dim)) {
                let s = (row / IMAGES_PER_SUBJECT) as u64;
                if subject != Some(s) {
                    self.centre(s, &mut centre);
                    subject = Some(s);
                }
                self.image(&centre, row as u64, o);
            }
        });
    }

    /// Rows `range` as a new vector.
    pub fn rows_vec(&self, range: Range<usize>) -> Vec<f32> {
        let mut v = vec![0f32; range.len() * self.dim];
        self.rows_into(range, &mut v);
        v
    }

    /// Probe `j` into `out` (see the module docs): a new image of an enrolled
    /// subject for even `j`, a stranger's image for odd `j`.
    pub fn probe(&self, j: usize, out: &mut [f32]) {
        let mut c = vec![0f32; self.dim];
        let subject = if j.is_multiple_of(2) {
            stream(self.seed, PICK, j as u64).below(self.subjects().max(1) as usize) as u64
        } else {
            STRANGERS_FROM + j as u64
        };
        self.centre(subject, &mut c);
        self.image(&c, (self.rows + j) as u64, out);
    }

    /// The first `count` probes, row after row.
    pub fn probes(&self, count: usize) -> Vec<f32> {
        let mut v = vec![0f32; count * self.dim];
        v.par_chunks_exact_mut(self.dim)
            .enumerate()
            .for_each(|(j, o)| self.probe(j, o));
        v
    }

    /// Write rows `range` as a float32 `.npy` of shape `[range.len(), dim]`
    /// at `vectors`, and their subjects (one a line) at `subjects` if given.
    /// Streams: a chunk is generated (on every core) while the one before is
    /// written; two chunks are held, whatever the size.
    pub fn write(
        &self,
        range: Range<usize>,
        vectors: &Path,
        subjects: Option<&Path>,
    ) -> Result<(), String> {
        let mut w = F32Writer::create(vectors, range.len(), self.dim).map_err(|e| e.to_string())?;
        let mut names = match subjects {
            Some(p) => Some((
                p,
                std::io::BufWriter::with_capacity(
                    1 << 20,
                    std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?,
                ),
            )),
            None => None,
        };
        let chunks: Vec<Range<usize>> = range
            .clone()
            .step_by(CHUNK)
            .map(|s| s..range.end.min(s + CHUNK))
            .collect();
        // Two buffers go round: one filled while the other is written.
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(Range<usize>, Vec<f32>)>(1);
            let (back_tx, back_rx) = std::sync::mpsc::sync_channel::<Vec<f32>>(2);
            let producer = scope.spawn(move || {
                let mut fresh = 2;
                for c in chunks {
                    let mut v = if fresh > 0 {
                        fresh -= 1;
                        Vec::new()
                    } else {
                        match back_rx.recv() {
                            Ok(v) => v,
                            Err(_) => return, // the writer stopped on an error
                        }
                    };
                    v.resize(c.len() * self.dim, 0.0);
                    self.rows_into(c.clone(), &mut v);
                    if tx.send((c, v)).is_err() {
                        return;
                    }
                }
            });
            let written = (|| -> Result<(), String> {
                for (rows, v) in rx {
                    w.write_rows(&v).map_err(|e| e.to_string())?;
                    let _ = back_tx.try_send(v);
                    if let Some((p, f)) = &mut names {
                        let io = |e: std::io::Error| format!("{}: {e}", p.display());
                        let mut line = String::new();
                        let mut subject = None;
                        for r in rows {
                            let s = (r / IMAGES_PER_SUBJECT) as u64;
                            if subject != Some(s) {
                                line = subject_name(s) + "\n";
                                subject = Some(s);
                            }
                            f.write_all(line.as_bytes()).map_err(io)?;
                        }
                    }
                }
                Ok(())
            })();
            drop(back_tx); // a producer waiting for a buffer stops
            producer
                .join()
                .map_err(|_| "the generating thread panicked".to_string())?;
            written
        })?;
        w.finish().map_err(|e| e.to_string())?;
        if let Some((p, mut f)) = names {
            f.flush().map_err(|e| format!("{}: {e}", p.display()))?;
        }
        Ok(())
    }

    /// The exact `k` nearest rows of each probe (`probes` row after row) by
    /// squared L2 computed in f64 from the regenerated rows, ascending by
    /// (distance, row): an independent brute force, in parallel over blocks
    /// of rows, holding a block a thread.
    pub fn exact_top_k(&self, probes: &[f32], k: usize) -> Vec<Vec<(f64, u64)>> {
        let dim = self.dim;
        let q: Vec<f64> = probes.iter().map(|&x| f64::from(x)).collect();
        let nq = q.len() / dim;
        let blocks = self.rows.div_ceil(BLOCK);
        let empty = || vec![Vec::with_capacity(k + 1); nq];
        (0..blocks)
            .into_par_iter()
            .fold(empty, |mut best, b| {
                let rows = b * BLOCK..self.rows.min((b + 1) * BLOCK);
                let v = self.rows_vec(rows.clone());
                for (row, x) in rows.zip(v.chunks_exact(dim)) {
                    for (top, qv) in best.iter_mut().zip(q.chunks_exact(dim)) {
                        push_top(top, (squared_l2_f64(x, qv), row as u64), k);
                    }
                }
                best
            })
            .reduce(empty, |mut a, b| {
                for (ta, tb) in a.iter_mut().zip(b) {
                    for c in tb {
                        push_top(ta, c, k);
                    }
                }
                a
            })
    }
}

/// Squared L2 in f64, with eight partial sums (a fixed order: the same
/// value on every machine and thread count).
fn squared_l2_f64(x: &[f32], q: &[f64]) -> f64 {
    let mut acc = [0f64; 8];
    let (xc, xr) = x.split_at(x.len() / 8 * 8);
    let (qc, qr) = q.split_at(xc.len());
    for (xs, qs) in xc.chunks_exact(8).zip(qc.chunks_exact(8)) {
        for i in 0..8 {
            let d = f64::from(xs[i]) - qs[i];
            acc[i] += d * d;
        }
    }
    let mut s = acc.iter().sum::<f64>();
    for (&a, &b) in xr.iter().zip(qr) {
        let d = f64::from(a) - b;
        s += d * d;
    }
    s
}

/// Keep `top` the `k` smallest by (distance, row), ascending.
fn push_top(top: &mut Vec<(f64, u64)>, c: (f64, u64), k: usize) {
    let less = |a: &(f64, u64), b: &(f64, u64)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    if top.len() == k && top.last().is_some_and(|w| less(w, &c).is_lt()) {
        return;
    }
    let at = top.partition_point(|e| less(e, &c).is_lt());
    top.insert(at, c);
    top.truncate(k);
}

/// The generated gallery as an import source: each row generated when the
/// import reads it (on whichever thread reads it; the import reads blocks of
/// rows in parallel, twice), each thread keeping the centre of the subject it
/// generated last, so the ten images of a subject share one. Ids are left to
/// the gallery ([`ImportSource::ids`] is `None`): a fresh gallery gives row
/// `r` the id `first + r`, `first` being the import's `first_assigned_id`.
pub struct GenSource {
    generator: Generator,
}

impl GenSource {
    /// The rows of `generator`.
    pub fn new(generator: Generator) -> GenSource {
        GenSource { generator }
    }
}

thread_local! {
    /// The last centre this thread generated: (seed, dimension, subject) and its values.
    static LAST_CENTRE: std::cell::RefCell<((u64, usize, u64), Vec<f32>)> =
        const { std::cell::RefCell::new(((0, 0, u64::MAX), Vec::new())) };
}

impl ImportSource for GenSource {
    fn rows(&self) -> usize {
        self.generator.rows
    }

    fn dim(&self) -> usize {
        self.generator.dim
    }

    fn vector(&self, row: usize, out: &mut [f32]) {
        let g = &self.generator;
        let key = (g.seed, g.dim, (row / IMAGES_PER_SUBJECT) as u64);
        LAST_CENTRE.with_borrow_mut(|(k, centre)| {
            if *k != key {
                centre.resize(g.dim, 0.0);
                g.centre(key.2, centre);
                *k = key;
            }
            g.image(centre, row as u64, out);
        });
    }

    fn subjects(&self, range: Range<usize>) -> visage_engine::Result<Vec<String>> {
        Ok(range
            .map(|r| subject_name((r / IMAGES_PER_SUBJECT) as u64))
            .collect())
    }

    fn ids(&self) -> visage_engine::Result<Option<Cow<'_, [u64]>>> {
        Ok(None)
    }
}

// ---------------------------------------------------------------- build and search

/// The gallery the scale benchmark builds in its data directory.
pub const GALLERY: &str = "scale";
/// What `scale-build` built, written beside the engine's files in the data
/// directory: the rows, the generator's seed and the first id assigned, so
/// that `scale-search` can turn ids back into row numbers.
pub const MARKER: &str = "visage-scale.json";

/// Where `scale-build` takes its rows from.
pub enum BuildSource<'a> {
    /// The generator itself (no file).
    Generator(Generator),
    /// A `.npy` of vectors and a subjects file (written by `scale-gen` from
    /// the generator of `generator`, which the marker records).
    Files {
        /// The generator the files hold.
        generator: Generator,
        /// The vectors.
        vectors: &'a Path,
        /// The subjects, one a line.
        subjects: &'a Path,
    },
}

/// Create (or replace) the gallery [`GALLERY`] in `data_dir` and import
/// every row of `source` into it. Returns the report as JSON.
pub fn build(data_dir: &Path, source: &BuildSource<'_>) -> Result<serde_json::Value, String> {
    use visage_engine::{Durability, Engine, GallerySpec, ImportOptions};
    let (generator, from) = match source {
        BuildSource::Generator(g) => (*g, "generator".to_string()),
        BuildSource::Files {
            generator, vectors, ..
        } => (*generator, vectors.display().to_string()),
    };
    let src: Box<dyn ImportSource> = match source {
        BuildSource::Generator(g) => Box::new(GenSource::new(*g)),
        // The server's source: the .npy and the subjects memory-mapped, as
        // `visage import` reads them.
        BuildSource::Files {
            vectors, subjects, ..
        } => Box::new(
            visage_server::import::FileSource::open(vectors, subjects, None)
                .map_err(|e| format!("opening the files: {e}"))?,
        ),
    };
    if src.rows() != generator.rows || src.dim() != generator.dim {
        return Err(format!(
            "{from} holds [{}, {}], expected [{}, {}]",
            src.rows(),
            src.dim(),
            generator.rows,
            generator.dim
        ));
    }
    let _ = std::fs::remove_file(data_dir.join(MARKER));
    let engine = Engine::open(data_dir, crate::quiet_options(Durability::ProcessCrash))
        .map_err(|e| format!("opening {}: {e}", data_dir.display()))?;
    match engine.drop_gallery(GALLERY) {
        Ok(()) | Err(visage_engine::Error::GalleryNotFound(_)) => {}
        Err(e) => return Err(format!("dropping the old gallery: {e}")),
    }
    let g = engine
        .create_gallery_with(GALLERY, &GallerySpec::with_dim(generator.dim))
        .map_err(|e| format!("creating the gallery: {e}"))?;
    crate::measure::reset_hwm();
    let before = crate::measure::ProcMemory::now();
    let t = std::time::Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    let report = std::thread::scope(|s| {
        s.spawn(|| {
            // Progress every 30 s (the import reports it a segment at a time).
            let mut last = std::time::Instant::now();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(200));
                if last.elapsed().as_secs() >= 30 {
                    last = std::time::Instant::now();
                    for p in g.progress().iter().filter(|p| p.kind == "import") {
                        eprintln!(
                            "  import: {} of {} rows written ({:.0} s)",
                            p.rows_done,
                            p.rows_total,
                            p.elapsed.as_secs_f64()
                        );
                    }
                }
            }
        });
        let r = g.import(&*src, ImportOptions { replace: false });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    });
    let report = report.map_err(|e| format!("import from {from}: {e}"))?;
    let seconds = t.elapsed().as_secs_f64();
    let after = crate::measure::ProcMemory::now();
    let stats = g.stats();
    let first_id = report
        .first_assigned_id
        .ok_or("the gallery assigned no ids")?;
    let marker = serde_json::json!({
        "gallery": GALLERY,
        "rows": generator.rows,
        "dim": generator.dim,
        "seed": generator.seed,
        "first_id": first_id,
        "source": from,
    });
    std::fs::write(data_dir.join(MARKER), format!("{marker:#}\n"))
        .map_err(|e| format!("{}: {e}", data_dir.join(MARKER).display()))?;
    Ok(serde_json::json!({
        "rows": report.rows,
        "source": from,
        "seconds": seconds,
        "import_seconds": report.seconds,
        "rows_per_sec": report.rows as f64 / seconds,
        "segments": report.segments,
        "segment_bytes": report.bytes,
        "bytes_on_disk": stats.bytes_on_disk,
        "subjects": report.subjects,
        "first_assigned_id": first_id,
        "memory_before": before.json(),
        "memory": after.json(),
        "peak_rss_bytes": after.hwm,
    }))
}

/// What `scale-search` measures (see [`search`]).
pub struct SearchPlan<'a> {
    /// The data directory `scale-build` built.
    pub data_dir: &'a Path,
    /// Probes, row after row.
    pub probes: &'a visage_client::npy::Matrix,
    /// Results per probe.
    pub k: usize,
    /// Untimed single probes first.
    pub warmup: usize,
    /// Single probes timed.
    pub single: usize,
    /// Probes in the batch call.
    pub batch: usize,
    /// Probes in the identify call.
    pub identify: usize,
    /// A batch or identify call taking less than this many seconds is timed
    /// three times (the median reported), else once.
    pub repeat_under_secs: f64,
}

/// A call timed once, or three times (the median) if it took less than
/// `repeat_under` seconds; returns its result and the times.
fn timed<T>(
    repeat_under: f64,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<(T, Vec<f64>), String> {
    let t = std::time::Instant::now();
    let mut last = f()?;
    let mut times = vec![t.elapsed().as_secs_f64()];
    if times[0] < repeat_under {
        for _ in 0..2 {
            let t = std::time::Instant::now();
            last = f()?;
            times.push(t.elapsed().as_secs_f64());
        }
    }
    Ok((last, times))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn scan_diff(a: visage_engine::ScanCounts, b: visage_engine::ScanCounts) -> serde_json::Value {
    serde_json::json!({
        "first_pass": b.first_pass - a.first_pass,
        "screened": b.screened - a.screened,
        "int_tiled": b.int_tiled - a.int_tiled,
        "widened": b.widened - a.widened,
        "f32_batch": b.f32_batch - a.f32_batch,
        "direct": b.direct - a.direct,
        "fallbacks": b.fallbacks - a.fallbacks,
    })
}

/// Rounds the single probes are timed in, each after its own measure of
/// the memory read speed.
const SINGLE_ROUNDS: usize = 5;
/// Bytes read with every core to measure the memory read speed beside each
/// round (far above any cache; small beside the page cache at 50M).
const SINGLE_BOUND_BYTES: usize = 256 << 20;

/// Open the gallery `scale-build` built and measure: the open (engine and
/// gallery, then the first search), single-probe latency, one batch, one
/// identification batch, the resident memory after each phase, the disk
/// bytes. Returns the JSON report and the batch's top-k row numbers
/// (`batch × k`, -1 where fewer).
pub fn search(plan: &SearchPlan<'_>) -> Result<(serde_json::Value, Vec<i64>), String> {
    use crate::measure::{ProcMemory, millis, percentile};
    use std::time::{Duration, Instant};
    use visage_engine::{Durability, Engine, SearchOptions};
    let marker_path = plan.data_dir.join(MARKER);
    let marker: serde_json::Value = std::fs::read_to_string(&marker_path)
        .map_err(|e| format!("{}: {e} (run scale-build first)", marker_path.display()))
        .and_then(|t| {
            serde_json::from_str(&t).map_err(|e| format!("{}: {e}", marker_path.display()))
        })?;
    let first_id = marker["first_id"]
        .as_u64()
        .ok_or_else(|| format!("{}: no first_id", marker_path.display()))?;
    let probes = plan.probes;
    if probes.rows == 0 || plan.k == 0 {
        return Err("no probes, or k = 0".into());
    }
    let row = |i: usize| probes.row(i % probes.rows);
    let at_start = ProcMemory::now();

    let t = Instant::now();
    let engine = Engine::open(
        plan.data_dir,
        crate::quiet_options(Durability::ProcessCrash),
    )
    .map_err(|e| format!("opening {}: {e}", plan.data_dir.display()))?;
    let g = engine
        .gallery(GALLERY)
        .map_err(|e| format!("{}: {e}", plan.data_dir.display()))?;
    let open = t.elapsed();
    let stats = g.stats();
    if Some(stats.live) != marker["rows"].as_u64() || g.dim() != probes.cols {
        return Err(format!(
            "the gallery holds {} rows of {} values; {} says {} rows, the probes have {} values",
            stats.live,
            g.dim(),
            MARKER,
            marker["rows"],
            probes.cols
        ));
    }
    let opts = SearchOptions {
        k: plan.k,
        ..Default::default()
    };
    let err = |e: visage_engine::Error| format!("search: {e}");
    let t = Instant::now();
    g.search_with(&[row(0)], &opts).map_err(err)?;
    let first = t.elapsed();
    let after_open = ProcMemory::now();

    // Single probes.
    for i in 0..plan.warmup {
        g.search_with(&[row(i)], &opts).map_err(err)?;
    }
    // Timed in rounds, each after a read of memory with every core: the
    // bound (the codes' read time) is measured beside the probes it is
    // compared with, as the machine's memory speed moves by the minute.
    let s0 = g.stats().scans;
    let codes_bytes = (stats.live as usize * g.dim()) as f64;
    let buf = crate::memory_buffer(SINGLE_BOUND_BYTES);
    let mut lat = Vec::with_capacity(plan.single);
    let mut rounds = Vec::new();
    let per_round = plan.single.div_ceil(SINGLE_ROUNDS).max(1);
    let mut i = 0;
    while i < plan.single {
        let read = crate::memory_reads(&buf, 3);
        let bytes_per_sec = (buf.len() * 8) as f64 / read.as_secs_f64();
        let codes_read = Duration::from_secs_f64(codes_bytes / bytes_per_sec);
        let mut round = Vec::with_capacity(per_round);
        for _ in 0..per_round.min(plan.single - i) {
            let t = Instant::now();
            std::hint::black_box(g.search_with(&[row(i)], &opts).map_err(err)?);
            round.push(t.elapsed());
            i += 1;
        }
        lat.extend_from_slice(&round);
        round.sort();
        let p50 = percentile(&round, 0.50);
        rounds.push(serde_json::json!({
            "probes": round.len(),
            "p50_ms": millis(p50),
            "memory_read_bytes_per_sec": bytes_per_sec,
            "codes_read_ms": millis(codes_read),
            "ratio": p50.as_secs_f64() / codes_read.as_secs_f64(),
        }));
    }
    drop(buf);
    let ratios: Vec<f64> = rounds.iter().filter_map(|r| r["ratio"].as_f64()).collect();
    let mean = lat.iter().sum::<Duration>() / lat.len().max(1) as u32;
    lat.sort();
    let s1 = g.stats().scans;
    let after_single = ProcMemory::now();

    // One batch.
    let batch: Vec<&[f32]> = (0..plan.batch).map(row).collect();
    let (hits, batch_times) = timed(plan.repeat_under_secs, || {
        g.search_with(&batch, &opts).map_err(err)
    })?;
    let s2 = g.stats().scans;
    let after_batch = ProcMemory::now();
    let mut ids = vec![-1i64; plan.batch * plan.k];
    for (i, hs) in hits.iter().enumerate() {
        for (j, h) in hs.iter().take(plan.k).enumerate() {
            ids[i * plan.k + j] = i64::try_from(h.id - first_id).map_err(|e| e.to_string())?;
        }
    }

    // One identification batch (subject-level top k).
    let ident: Vec<&[f32]> = (0..plan.identify).map(row).collect();
    let (_, ident_times) = if ident.is_empty() {
        ((), vec![f64::NAN])
    } else {
        let (_, t) = timed(plan.repeat_under_secs, || {
            g.identify(&ident, plan.k).map_err(err)
        })?;
        ((), t)
    };
    let s3 = g.stats().scans;
    let after_identify = ProcMemory::now();
    let stats = g.stats();
    let segment_bytes = crate::measure::segment_bytes(g.dir());
    let bm = median(&batch_times);
    let im = median(&ident_times);
    let report = serde_json::json!({
        "engine": "visage",
        "rows": stats.live,
        "dim": g.dim(),
        "k": plan.k,
        "segments": stats.segments,
        "threads": rayon::current_num_threads(),
        "data_dir": plan.data_dir.display().to_string(),
        "open": {
            "open_secs": open.as_secs_f64(),
            "first_search_secs": first.as_secs_f64(),
            "to_first_answer_secs": (open + first).as_secs_f64(),
        },
        "single": {
            "probes": lat.len(),
            "warmup": plan.warmup,
            "p50_ms": millis(percentile(&lat, 0.50)),
            "p99_ms": millis(percentile(&lat, 0.99)),
            "mean_ms": millis(mean),
            "max_ms": millis(lat.last().copied().unwrap_or_default()),
            "scans": scan_diff(s0, s1),
            "rounds": rounds,
            "ratio_to_codes_read": {
                "median": if ratios.is_empty() { f64::NAN } else { median(&ratios) },
                "min": ratios.iter().copied().fold(f64::INFINITY, f64::min),
                "max": ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            },
        },
        "batch": {
            "probes": plan.batch,
            "runs_secs": batch_times,
            "median_secs": bm,
            "probes_per_sec": plan.batch as f64 / bm,
            "scans": scan_diff(s1, s2),
        },
        "identify": {
            "probes": plan.identify,
            "runs_secs": ident_times,
            "median_secs": im,
            "probes_per_sec": plan.identify as f64 / im,
            "scans": scan_diff(s2, s3),
        },
        "memory": {
            "at_start": at_start.json(),
            "after_open": after_open.json(),
            "after_single": after_single.json(),
            "after_batch": after_batch.json(),
            "after_identify": after_identify.json(),
        },
        "disk": {
            "bytes_on_disk": stats.bytes_on_disk,
            "segment_bytes": segment_bytes,
            "exception_rows": stats.exception_rows,
        },
        "scans_since_open": {
            "first_pass": stats.scans.first_pass,
            "widened": stats.scans.widened,
            "f32_batch": stats.scans.f32_batch,
            "direct": stats.scans.direct,
            "fallbacks": stats.scans.fallbacks,
        },
    });
    Ok((report, ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum()
    }

    #[test]
    fn rows_are_the_same_however_they_are_generated() {
        let g = Generator {
            rows: 10_000,
            dim: 128,
            seed: 3,
        };
        let all = g.rows_vec(0..g.rows);
        let part = g.rows_vec(1_997..4_013);
        assert_eq!(&all[1_997 * 128..4_013 * 128], &part[..]);
        let mut one = vec![0f32; 128];
        for r in [0, 9, 10, 1_999, 2_000, 9_999] {
            g.row(r, &mut one);
            assert_eq!(&all[r * 128..(r + 1) * 128], &one[..], "row {r}");
        }
        let src = GenSource::new(g);
        for r in [5, 70_000 % g.rows, 9_999, 0, 4_321] {
            src.vector(r, &mut one);
            assert_eq!(&all[r * 128..(r + 1) * 128], &one[..], "source row {r}");
        }
        assert_eq!(
            src.subjects(19..22).unwrap(),
            ["s000000001", "s000000002", "s000000002"]
        );
        let other = Generator { seed: 4, ..g };
        assert_ne!(other.rows_vec(0..1), all[..128]);
    }

    /// Two images of one subject: cosine 0.6–0.7; strangers: about 0.
    #[test]
    fn images_look_like_face_embeddings() {
        let g = Generator {
            rows: 20_000,
            dim: 128,
            seed: 1,
        };
        let v = g.rows_vec(0..g.rows);
        let row = |r: usize| &v[r * 128..(r + 1) * 128];
        for r in [0, 777, 19_999] {
            assert!((dot(row(r), row(r)) - 1.0).abs() < 1e-5);
        }
        let (mut genuine, mut strangers) = (Vec::new(), Vec::new());
        for s in 0..1000 {
            genuine.push(dot(row(s * 10), row(s * 10 + 3)));
            strangers.push(dot(row(s * 10), row(((s + 500) % 2000) * 10 + 1)));
        }
        let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
        let (gm, sm) = (mean(&genuine), mean(&strangers));
        assert!((0.6..0.7).contains(&gm), "genuine cosine {gm}");
        assert!(sm.abs() < 0.02, "stranger cosine {sm}");
        // Probes: even ones resemble their subject, odd ones nobody.
        let p = g.probes(40);
        for j in 0..40 {
            let q = &p[j * 128..(j + 1) * 128];
            let best = (0..g.rows).map(|r| dot(q, row(r))).fold(f64::MIN, f64::max);
            if j % 2 == 0 {
                assert!(best > 0.45, "probe {j}: best cosine {best}");
            } else {
                assert!(best < 0.45, "stranger probe {j}: best cosine {best}");
            }
        }
    }

    #[test]
    fn the_brute_force_is_exact() {
        let g = Generator {
            rows: 5_003,
            dim: 32,
            seed: 9,
        };
        let probes = g.probes(6);
        let got = g.exact_top_k(&probes, 7);
        let v = g.rows_vec(0..g.rows);
        for (j, q) in probes.chunks_exact(32).enumerate() {
            let mut all: Vec<(f64, u64)> = v
                .chunks_exact(32)
                .enumerate()
                .map(|(r, x)| {
                    let d = x
                        .iter()
                        .zip(q)
                        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                        .sum::<f64>();
                    (d, r as u64)
                })
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let want: Vec<u64> = all[..7].iter().map(|c| c.1).collect();
            let have: Vec<u64> = got[j].iter().map(|c| c.1).collect();
            assert_eq!(have, want, "probe {j}");
            for (a, b) in got[j].iter().zip(&all) {
                assert!((a.0 - b.0).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn writes_rows_and_subjects_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let g = Generator {
            rows: CHUNK * 2 + 5,
            dim: 16,
            seed: 2,
        };
        let (v, s) = (dir.path().join("v.npy"), dir.path().join("s.txt"));
        g.write(7..g.rows, &v, Some(&s)).unwrap();
        let m = visage_client::npy::read_f32(&v).unwrap();
        assert_eq!((m.rows, m.cols), (g.rows - 7, 16));
        assert_eq!(m.data, g.rows_vec(7..g.rows));
        let names = std::fs::read_to_string(&s).unwrap();
        let names: Vec<&str> = names.lines().collect();
        assert_eq!(names.len(), g.rows - 7);
        assert_eq!(names[0], "s000000000");
        assert_eq!(names[3], "s000000001");
        assert_eq!(
            *names.last().unwrap(),
            subject_name(((g.rows - 1) / 10) as u64)
        );
    }
}

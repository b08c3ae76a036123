//! Shared pieces of the benchmarks: seeded data, cached galleries and machine
//! bounds ([`bounds`]). `.npy` files are read and written with
//! [`visage_client::npy`].

pub mod bounds;
pub mod measure;
pub mod scale;
pub mod server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use visage_engine::{Durability, Embedding, Engine, EngineOptions};

/// The tests' splitmix64 generator, for reproducible data.
pub use visage_tests::Rng;

/// `n` embeddings with ids `first..first + n`, ten per subject.
pub fn embeddings(rng: &mut Rng, first: u64, n: usize) -> Vec<Embedding> {
    (0..n as u64)
        .map(|i| Embedding {
            id: first + i,
            subject: format!("subject-{:08}", (first + i) / 10),
            vector: rng.vector(),
        })
        .collect()
}

/// The bytes the engine's write-ahead log appends for `batch`: one framed
/// insert record (the bound a durable insert is measured against writes
/// and syncs these).
pub fn wal_record(batch: &[Embedding]) -> Vec<u8> {
    let mut payload = Vec::new();
    visage_engine::format::encode_insert(
        batch
            .iter()
            .map(|e| (e.id, e.subject.as_str(), e.vector.as_slice())),
        &mut payload,
    );
    let mut record = Vec::with_capacity(payload.len() + visage_engine::format::RECORD_FRAME_LEN);
    visage_engine::format::frame_record(0, &payload, &mut record);
    record
}

/// How [`flush_like_writes`] writes.
#[derive(Debug, Clone, Copy)]
pub struct FlushLike {
    /// Bytes a write, rounded up to a multiple of 4,096 (the engine's
    /// segment writer writes 4 MiB).
    pub piece: usize,
    /// Bytes a second to keep to, waiting before a write that would run
    /// ahead of it (`None`: as fast as the disk takes them, as the engine's).
    pub pace: Option<f64>,
}

/// Write as a flush writes a segment, once for each byte count received
/// until `sizes` closes: a new file in `dir`, written with direct writes of
/// `how.piece` bytes (the last one padded to the block size), one in flight,
/// then `fdatasync`; the file is removed after. The bytes are not a
/// segment's: only their number and the way they go to the disk are. The
/// first error ends it.
pub fn flush_like_writes(
    dir: &Path,
    sizes: &std::sync::mpsc::Receiver<u64>,
    how: FlushLike,
) -> std::io::Result<()> {
    use visage_engine::io::{DIRECT_ALIGN, FileSystem, RealFs};
    let piece = how.piece.next_multiple_of(DIRECT_ALIGN).max(DIRECT_ALIGN);
    // A window of `piece` bytes aligned to `DIRECT_ALIGN`, as direct writes need.
    let raw = vec![0x5au8; piece + DIRECT_ALIGN];
    let skip = raw.as_ptr().align_offset(DIRECT_ALIGN);
    let buf = &raw[skip..skip + piece];
    for (n, bytes) in sizes.iter().enumerate() {
        let path = dir.join(format!("flush-like-{n}"));
        let file = RealFs.create_direct(&path)?;
        let (t0, mut at) = (Instant::now(), 0u64);
        while at < bytes {
            if let Some(pace) = how.pace {
                let due = Duration::from_secs_f64(at as f64 / pace);
                if let Some(wait) = due.checked_sub(t0.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            let len = (bytes - at).min(piece as u64) as usize;
            file.write_all_at(&buf[..len.next_multiple_of(DIRECT_ALIGN)], at)?;
            at += len as u64;
        }
        file.sync_data()?;
        drop(file);
        std::fs::remove_file(&path)?;
    }
    Ok(())
}

/// The workspace's target directory (`CARGO_TARGET_DIR` when set).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        })
}

/// Where cached benchmark galleries live (under the target directory).
pub fn data_root() -> PathBuf {
    // Keyed by format version: a cache written by an older build lacks newer sections.
    target_dir().join(format!(
        "bench-data-v{}",
        visage_engine::format::FORMAT_VERSION
    ))
}

/// Options for benchmarks: no background work, so timings are of the measured path alone.
pub fn quiet_options(durability: Durability) -> EngineOptions {
    let mut o = EngineOptions::default();
    o.gallery.durability = durability;
    o.gallery.background = false;
    o
}

/// Open the data directory for a gallery of `n` random embeddings (seed 42),
/// building it (one compacted segment) the first time.
pub fn cached_gallery(n: usize) -> (Engine, PathBuf) {
    let dir = data_root().join(format!("gallery-{n}"));
    let name = "bench";
    if let Ok(engine) = Engine::open(&dir, quiet_options(Durability::ProcessCrash))
        && let Ok(g) = engine.gallery(name)
        && g.stats().live == n as u64
        && g.stats().memtable_rows == 0
    {
        return (engine, dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let engine =
        Engine::open(&dir, quiet_options(Durability::ProcessCrash)).expect("open bench dir");
    let g = engine.create_gallery(name).expect("create");
    let mut rng = Rng(42);
    let mut done = 0;
    while done < n {
        let b = (n - done).min(10_000);
        g.insert(&embeddings(&mut rng, done as u64, b))
            .expect("insert");
        done += b;
        if g.stats().memtable_rows >= 1 << 18 {
            g.flush().expect("flush");
        }
    }
    g.compact().expect("compact");
    drop(g);
    (engine, dir)
}

/// Time to read `bytes` of memory once with every core (the floor of an exact
/// single-probe scan, which must read every vector once): median of `reps`.
pub fn memory_read_time(bytes: usize, reps: usize) -> Duration {
    memory_reads(&memory_buffer(bytes), reps)
}

/// A buffer of `bytes` (rounded down to 8) for [`memory_reads`], every page written.
pub fn memory_buffer(bytes: usize) -> Vec<u64> {
    (0..bytes / 8).map(|i| i as u64).collect()
}

/// Time to read `buf` once with every core: median of `reps` reads.
pub fn memory_reads(buf: &[u64], reps: usize) -> Duration {
    use rayon::prelude::*;
    let mut times = Vec::new();
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let x = buf
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0u64, |a, &b| a ^ b))
            .reduce(|| 0, |a, b| a ^ b);
        std::hint::black_box(x);
        times.push(t.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

//! The gallery's operational counters: group commit sizes, WAL sync times,
//! flush and compaction runs, their times and the bytes they wrote. Plain
//! atomics in fixed buckets, read by `Gallery::counters` as
//! [`GalleryCounters`]; the write path and maintenance add to them with one
//! call each. Counted since the gallery was opened.

use crate::api::{GalleryCounters, HistogramCounts, MaintenanceCounts};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bucket bounds of group sizes (batches or records a group commit wrote).
const GROUP_SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// Bucket bounds of WAL sync times, in seconds.
const FSYNC_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Bucket bounds of flush and compaction times, in seconds.
const MAINTENANCE_SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A histogram of fixed buckets. The sum is kept in integer units (items, or
/// nanoseconds), `scale` converts it.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
    scale: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64], scale: f64) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    /// Record `units` (items, or nanoseconds).
    fn observe(&self, units: u64) {
        let v = units as f64 * self.scale;
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(units, Ordering::Relaxed);
    }

    fn observe_time(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    fn get(&self) -> HistogramCounts {
        HistogramCounts {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum.load(Ordering::Relaxed) as f64 * self.scale,
        }
    }
}

#[derive(Debug)]
struct Maintenance {
    runs: AtomicU64,
    seconds: Histogram,
    bytes: AtomicU64,
}

impl Maintenance {
    fn new() -> Maintenance {
        Maintenance {
            runs: AtomicU64::new(0),
            seconds: Histogram::new(MAINTENANCE_SECONDS, 1e-9),
            bytes: AtomicU64::new(0),
        }
    }

    fn get(&self) -> MaintenanceCounts {
        MaintenanceCounts {
            runs: self.runs.load(Ordering::Relaxed),
            seconds: self.seconds.get(),
            bytes_written: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// What a maintenance run was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Job {
    Flush,
    Compaction,
    Import,
}

impl Job {
    /// "flush" or "compaction" (in messages).
    pub(super) fn name(self) -> &'static str {
        match self {
            Job::Flush => "flush",
            Job::Compaction => "compaction",
            Job::Import => "import",
        }
    }
}

/// The counters of one gallery.
#[derive(Debug)]
pub(super) struct Counters {
    group_batches: Histogram,
    group_records: Histogram,
    fsync: Histogram,
    flush: Maintenance,
    compaction: Maintenance,
    import: Maintenance,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            group_batches: Histogram::new(GROUP_SIZES, 1.0),
            group_records: Histogram::new(GROUP_SIZES, 1.0),
            fsync: Histogram::new(FSYNC_SECONDS, 1e-9),
            flush: Maintenance::new(),
            compaction: Maintenance::new(),
            import: Maintenance::new(),
        }
    }
}

impl Counters {
    /// A group commit wrote `batches` batches as `records` WAL records.
    pub(super) fn group_commit(&self, batches: usize, records: usize) {
        self.group_batches.observe(batches as u64);
        self.group_records.observe(records as u64);
    }

    /// Run `sync` (a WAL sync) and record how long it took.
    pub(super) fn timed_fsync<T>(&self, sync: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let r = sync();
        self.fsync.observe_time(start.elapsed());
        r
    }

    fn job(&self, job: Job) -> &Maintenance {
        match job {
            Job::Flush => &self.flush,
            Job::Compaction => &self.compaction,
            Job::Import => &self.import,
        }
    }

    /// A flush or compaction wrote a segment file of `bytes` bytes.
    pub(super) fn wrote(&self, job: Job, bytes: u64) {
        self.job(job).bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A flush or compaction that started at `start` finished.
    pub(super) fn finished(&self, job: Job, start: Instant) {
        let m = self.job(job);
        m.runs.fetch_add(1, Ordering::Relaxed);
        m.seconds.observe_time(start.elapsed());
    }

    pub(super) fn get(&self) -> GalleryCounters {
        GalleryCounters {
            wal_group_batches: self.group_batches.get(),
            wal_group_records: self.group_records.get(),
            wal_fsync_seconds: self.fsync.get(),
            flush: self.flush.get(),
            compaction: self.compaction.get(),
            import: self.import.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        let h = Histogram::new(GROUP_SIZES, 1.0);
        for v in [1, 2, 3, 512, 513, 10_000] {
            h.observe(v);
        }
        let c = h.get();
        assert_eq!(c.counts.len(), GROUP_SIZES.len() + 1);
        assert_eq!(c.counts[0], 1); // 1
        assert_eq!(c.counts[1], 1); // 2
        assert_eq!(c.counts[2], 1); // 3 ≤ 4
        assert_eq!(c.counts[GROUP_SIZES.len() - 1], 1); // 512
        assert_eq!(c.counts[GROUP_SIZES.len()], 2); // beyond the last bound
        assert_eq!(c.count(), 6);
        assert_eq!(c.sum, 11_031.0);
    }

    #[test]
    fn times_are_kept_in_seconds() {
        let c = Counters::default();
        c.finished(Job::Flush, Instant::now());
        c.wrote(Job::Flush, 4096);
        let r: u32 = c.timed_fsync(|| 7);
        assert_eq!(r, 7);
        c.group_commit(3, 2);
        let g = c.get();
        assert_eq!(g.flush.runs, 1);
        assert_eq!(g.flush.bytes_written, 4096);
        assert_eq!(g.flush.seconds.count(), 1);
        assert!(g.flush.seconds.sum < 1.0);
        assert_eq!(
            g.compaction,
            MaintenanceCounts {
                seconds: HistogramCounts {
                    bounds: MAINTENANCE_SECONDS,
                    counts: vec![0; MAINTENANCE_SECONDS.len() + 1],
                    sum: 0.0
                },
                ..MaintenanceCounts::default()
            }
        );
        assert_eq!(g.wal_fsync_seconds.count(), 1);
        assert_eq!(g.wal_group_batches.sum, 3.0);
        assert_eq!(g.wal_group_records.counts[1], 1);
    }
}

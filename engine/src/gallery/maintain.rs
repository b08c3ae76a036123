//! Keeping a gallery in shape: statistics, flush (memtable to segment),
//! compaction runs of the policy's plans, and the background thread that
//! does both.

use super::backup::ProgressCell;
use super::counters::Job;
use super::{Failure, Gallery, MANIFEST, lock, parse_file_no, seg_name};
use crate::api::*;
use crate::compaction::{self, CompactionPolicy, SegmentStat};
use crate::error::Result;
use crate::snapshot::SegState;
use crate::snapshot::tombstones::Tombstones;
use crate::storage::format::{self, ManifestData};
use crate::storage::segment::{
    self, RowRef, Segment, SegmentRows, VerifyChecksums, row_bytes_estimate,
};
use crate::storage::wal::WalWriter;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

impl Gallery {
    /// Current statistics.
    pub fn stats(&self) -> GalleryStats {
        let snap = self.snapshot();
        let bytes = self
            .fs
            .read_dir(&self.dir)
            .map_or(0, |entries| entries.iter().map(|e| e.len).sum());
        // Every engine test that reads statistics checks the writer's count.
        debug_assert_eq!(
            snap.subjects(),
            snap.count_subjects() as u64,
            "the writer's subject count drifted from the rows"
        );
        GalleryStats {
            live: snap.live_rows() as u64,
            deleted: snap.deleted_rows() as u64,
            subjects: snap.subjects(),
            segments: snap.segments.len() as u64,
            memtable_rows: snap.chunks.iter().map(|c| c.chunk.ids.len() as u64).sum(),
            bytes_on_disk: bytes,
            exception_rows: snap
                .segments
                .iter()
                .map(|s| s.seg.exceptions().len() as u64)
                .sum(),
            outdated_segments: snap
                .segments
                .iter()
                .filter(|s| s.seg.version() < crate::storage::format::ROBUST_CODES_VERSION)
                .count() as u64,
            scans: snap.scans.get(),
        }
    }

    /// Each segment: rows, deletions, exceptions and format version, in the
    /// order the scans read them.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.snapshot()
            .segments
            .iter()
            .map(|s| SegmentInfo {
                file_no: s.seg.file_no(),
                rows: s.seg.rows() as u64,
                deleted: s.tomb.count() as u64,
                exceptions: s.seg.exceptions().len() as u64,
                format_version: s.seg.version(),
            })
            .collect()
    }

    /// Write the memtable to a segment and drop the WAL it came from.
    pub fn flush(&self) -> Result<MaintenanceReport> {
        let _f = lock(&self.flushing);
        self.check_writable()?;
        let before = self.stats();
        let progress = self.start_progress("flush");
        self.flush_locked(&progress.cell)?;
        Ok(MaintenanceReport {
            before,
            after: self.stats(),
        })
    }

    /// Flush, then rewrite every segment holding deleted rows and merge small
    /// segments. Afterwards no file of the gallery holds a deleted vector.
    pub fn compact(&self) -> Result<MaintenanceReport> {
        let _c = lock(&self.compacting);
        self.check_writable()?;
        let before = self.stats();
        let progress = self.start_progress("compaction");
        {
            let _f = lock(&self.flushing);
            self.flush_locked(&progress.cell)?;
        }
        let stats = self.segment_stats();
        let plan = compaction::plan(&stats, &self.policy(), true);
        planned(&progress.cell, &stats, &plan, self.spec.dim);
        for group in plan {
            self.merge_locked(&group, &progress.cell)?;
        }
        Ok(MaintenanceReport {
            before,
            after: self.stats(),
        })
    }

    /// The compaction policy, its row limit lowered to the byte limit at
    /// this gallery's dimension.
    pub(super) fn policy(&self) -> CompactionPolicy {
        let mut p = self.opts.compaction.clone();
        p.max_segment_rows = self.segment_row_limit() as u64;
        p
    }

    pub(super) fn segment_stats(&self) -> Vec<SegmentStat> {
        let st = lock(&self.state);
        st.segments
            .iter()
            .map(|s| SegmentStat {
                file_no: s.seg.file_no(),
                rows: s.seg.rows() as u64,
                deleted: s.tomb.count() as u64,
                outdated: s.seg.version() < crate::storage::format::ROBUST_CODES_VERSION,
            })
            .collect()
    }

    /// Persist a new manifest that names `new_seg` (just written). If the
    /// manifest cannot be written, the segment is removed; if it was renamed
    /// into place but the directory sync failed, the gallery is poisoned and
    /// the segment kept: the new manifest may be the one a reopen finds.
    pub(super) fn write_manifest(&self, m: &ManifestData, new_seg: Option<&Segment>) -> Result<()> {
        match crate::storage::fs::atomic_write(
            &*self.fs,
            &self.dir.join(MANIFEST),
            &format::encode_manifest(m),
        ) {
            Ok(()) => Ok(()),
            Err(e) if e.renamed => {
                Err(self.set_poison(Failure::of("manifest directory sync failed", &e.error)))
            }
            Err(e) => {
                if let Some(seg) = new_seg {
                    let _ = self.fs.remove_file(seg.path());
                }
                Err(e.error)
            }
        }
    }

    /// Caller holds the flush lock; `progress` counts the rows written.
    pub(super) fn flush_locked(&self, progress: &ProgressCell) -> Result<()> {
        let started = Instant::now();
        // 1. Freeze: rotate the WAL so the frozen memtable's records are exactly the older files.
        {
            let mut st = lock(&self.state);
            self.check_writable()?;
            if st.frozen.is_none() {
                if st.active.rows() == 0 {
                    return Ok(());
                }
                st.wal.sync().map_err(|e| {
                    self.set_poison(Failure::io("WAL sync before rotation failed".into(), &e))
                })?;
                let n = st.alloc_file_no(&self.dir)?;
                let new_wal = WalWriter::create(&*self.fs, &self.dir, n, self.spec.dim)?;
                st.wal = new_wal;
                let frozen = std::mem::take(&mut st.active);
                st.frozen = Some(frozen);
                st.frozen_seq = st.applied_seq;
                self.publish(&st);
            }
        }
        // 2. Write the frozen rows that are live now (outside the state lock).
        let (chunks, file_no) = {
            let mut st = lock(&self.state);
            let chunks = st
                .frozen
                .as_ref()
                .map(|f| f.chunks.clone())
                .unwrap_or_default();
            (chunks, st.alloc_file_no(&self.dir)?)
        };
        let dim = self.spec.dim;
        let mut map = Vec::new();
        let mut rows = Vec::new();
        for (c, mc) in chunks.iter().enumerate() {
            for r in 0..mc.chunk.ids.len() {
                if !mc.tomb.get(r) {
                    map.push((c, r));
                    rows.push(RowRef {
                        id: mc.chunk.ids[r],
                        subject: &mc.chunk.subjects[r],
                        vector: &mc.chunk.vectors[r * dim..(r + 1) * dim],
                    });
                }
            }
        }
        let estimate = segment_estimate(rows.as_slice(), dim);
        progress.add_total(rows.len() as u64, estimate);
        let new_seg = self.write_new_segment(Job::Flush, file_no, rows.as_slice())?;
        progress.add_done(rows.len() as u64, estimate);
        // 3. Install: carry over deletes that happened meanwhile, write the manifest, publish.
        let (old_wal_start, wal_start);
        {
            let mut st = lock(&self.state);
            // A write that failed while the segment was written poisoned the
            // gallery after applying its batch to `st`: installing now would
            // publish that batch and persist its tombstones.
            if let Err(e) = self.check_writable() {
                if let Some(seg) = new_seg {
                    let _ = self.fs.remove_file(seg.path());
                }
                return Err(e);
            }
            let mut segments = st.segments.clone();
            if let Some(seg) = new_seg.clone() {
                let mut tomb = Tombstones::new(seg.rows());
                if let Some(f) = &st.frozen {
                    for (new_row, &(c, r)) in map.iter().enumerate() {
                        if f.chunks[c].tomb.get(r) {
                            tomb.set(new_row);
                        }
                    }
                }
                segments.push(SegState {
                    seg,
                    tomb: Arc::new(tomb),
                });
            }
            wal_start = st.wal.file_no();
            let m = st.manifest(&segments, wal_start, st.frozen_seq);
            self.write_manifest(&m, new_seg.as_deref())?;
            st.segments_seq = st.frozen_seq;
            st.generation = m.generation;
            st.segments = segments;
            st.frozen = None;
            old_wal_start = st.wal_start;
            st.wal_start = wal_start;
            self.publish(&st);
        }
        // 4. The old WAL files are covered by the manifest now. They are
        // removed without the state lock (unlinking a large file takes tens
        // of milliseconds, which writers would wait): nothing reads a WAL
        // file below `wal_start` (a backup copies from it up), and the next
        // flush waits for this one. They are found by listing the directory,
        // not by trying every number from the old start: file numbers need
        // not be dense (a counter far ahead made that loop run for ever).
        for (n, p) in self.wal_files() {
            if !(old_wal_start..wal_start).contains(&n) {
                continue;
            }
            match self.fs.remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "could not remove covered WAL file");
                }
            }
        }
        crate::storage::fs::fsync_dir(&*self.fs, &self.dir)
            .map(|()| self.counters.finished(Job::Flush, started))
    }

    /// The WAL files in the gallery's directory, with their numbers (none if it cannot be listed).
    pub(super) fn wal_files(&self) -> Vec<(u64, PathBuf)> {
        let Ok(entries) = self.fs.read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .iter()
            .filter_map(|e| {
                let n = parse_file_no(&e.name.to_string_lossy(), "wal-", ".log")?;
                Some((n, self.dir.join(&e.name)))
            })
            .collect()
    }

    /// Write `rows` as segment `file_no`, sync it and the directory, and open it.
    /// Refuses with [`Error::NoSpace`] before writing anything when the disk
    /// has not room for the segment (an estimate from the rows, with slack).
    pub(super) fn write_new_segment<R: SegmentRows + ?Sized>(
        &self,
        job: Job,
        file_no: u64,
        rows: &R,
    ) -> Result<Option<Arc<Segment>>> {
        if rows.is_empty() {
            return Ok(None);
        }
        // Per row: the vector, its 8-bit code, id, norm, subject index and
        // offsets; plus the subject strings, headers and the manifest after.
        let dim = self.spec.dim;
        let needed = segment_estimate(rows, dim) + (1 << 20);
        crate::storage::fs::check_space(&*self.fs, &self.dir, job.name(), needed)?;
        let path = self.dir.join(seg_name(file_no));
        let coder = crate::search::kernels::selected().row_coder();
        let res =
            segment::write_segment(&*self.fs, &path, file_no, rows, dim, coder).and_then(|len| {
                self.counters.wrote(job, len);
                crate::storage::fs::fsync_dir(&*self.fs, &self.dir)?;
                Segment::open(&*self.fs, &path, file_no, VerifyChecksums::Metadata, dim)
            });
        match res {
            Ok(seg) => {
                let seg = Arc::new(seg);
                Segment::warm(&seg);
                Ok(Some(seg))
            }
            Err(e) => {
                let _ = self.fs.remove_file(&path);
                Err(e)
            }
        }
    }

    /// Rewrite the segments `inputs` into one without their deleted rows.
    /// Caller holds the compaction lock (flushes may run meanwhile: they
    /// only add segments, and the install below starts from the segments
    /// current then); `progress` counts the rows written (its totals were
    /// raised by [`planned`]).
    pub(super) fn merge_locked(&self, inputs: &[u64], progress: &ProgressCell) -> Result<()> {
        let started = Instant::now();
        let (captured, file_no) = {
            let mut st = lock(&self.state);
            let cap: Vec<SegState> = st
                .segments
                .iter()
                .filter(|s| inputs.contains(&s.seg.file_no()))
                .cloned()
                .collect();
            (cap, st.alloc_file_no(&self.dir)?)
        };
        let dim = self.spec.dim;
        let mut map = Vec::new();
        let mut rows = Vec::new();
        for (i, ss) in captured.iter().enumerate() {
            ss.seg.advise_sequential();
            let (ids, vecs) = (ss.seg.ids(), ss.seg.vectors());
            for r in 0..ss.seg.rows() {
                if !ss.tomb.get(r) {
                    map.push((i, r));
                    rows.push(RowRef {
                        id: ids[r],
                        subject: ss.seg.row_subject(r),
                        vector: &vecs[r * dim..(r + 1) * dim],
                    });
                }
            }
        }
        let new_seg = self.write_new_segment(Job::Compaction, file_no, rows.as_slice())?;
        progress.add_done(
            rows.len() as u64,
            rows.len() as u64 * row_bytes_estimate(dim, 16),
        );
        let mut st = lock(&self.state);
        // As in `flush_locked`: never install over the state a failed write left.
        if let Err(e) = self.check_writable() {
            if let Some(seg) = new_seg {
                let _ = self.fs.remove_file(seg.path());
            }
            return Err(e);
        }
        let current: Vec<Arc<Tombstones>> = captured
            .iter()
            .map(|c| {
                st.segments
                    .iter()
                    .find(|s| Arc::ptr_eq(&s.seg, &c.seg))
                    .map(|s| s.tomb.clone())
                    .unwrap_or_else(|| c.tomb.clone())
            })
            .collect();
        let mut segments: Vec<SegState> = st
            .segments
            .iter()
            .filter(|s| !inputs.contains(&s.seg.file_no()))
            .cloned()
            .collect();
        if let Some(seg) = new_seg.clone() {
            let mut tomb = Tombstones::new(seg.rows());
            for (new_row, &(i, r)) in map.iter().enumerate() {
                if current[i].get(r) {
                    tomb.set(new_row);
                }
            }
            segments.push(SegState {
                seg,
                tomb: Arc::new(tomb),
            });
        }
        let m = st.manifest(&segments, st.wal_start, st.segments_seq);
        self.write_manifest(&m, new_seg.as_deref())?;
        st.generation = m.generation;
        st.segments = segments;
        self.publish(&st);
        drop(st);
        for c in &captured {
            // Unlinking keeps the mapping of readers that still hold the old snapshot valid.
            if let Err(e) = self.fs.remove_file(c.seg.path()) {
                tracing::warn!(file = %c.seg.path().display(), error = %e, "could not remove compacted segment");
            }
        }
        crate::storage::fs::fsync_dir(&*self.fs, &self.dir)
            .map(|()| self.counters.finished(Job::Compaction, started))
    }

    /// The background flusher's round: flush a full memtable. Whether it
    /// wrote one.
    fn maintain_flush(&self) -> Result<bool> {
        let _f = lock(&self.flushing);
        if self.check_writable().is_err() {
            return Ok(false);
        }
        let need_flush = {
            let st = lock(&self.state);
            st.frozen.is_some() || st.active.rows() >= self.memtable_limit()
        };
        if need_flush {
            let progress = self.start_progress("flush");
            self.flush_locked(&progress.cell)?;
        }
        Ok(need_flush)
    }

    /// The background compactor's round: apply the policy.
    fn maintain_compaction(&self) -> Result<()> {
        let _c = lock(&self.compacting);
        if self.check_writable().is_err() {
            return Ok(());
        }
        let stats = self.segment_stats();
        let plan = compaction::plan(&stats, &self.policy(), false);
        if !plan.is_empty() {
            let progress = self.start_progress("compaction");
            planned(&progress.cell, &stats, &plan, self.spec.dim);
            for group in plan {
                self.merge_locked(&group, &progress.cell)?;
            }
        }
        Ok(())
    }
}

/// Bytes a segment of `rows` takes, about: per row the vector, its 8-bit
/// code, id, norm, subject index and offsets, plus the subject strings.
fn segment_estimate<R: SegmentRows + ?Sized>(rows: &R, dim: usize) -> u64 {
    let strings: u64 = (0..rows.len()).map(|i| rows.subject(i).len() as u64).sum();
    rows.len() as u64 * row_bytes_estimate(dim, 0) + strings
}

/// Raise `progress`'s totals by the live rows of the merges `plan` will
/// write (and their bytes, estimated as [`segment_estimate`] does, with an
/// average subject of 16 bytes).
fn planned(progress: &ProgressCell, stats: &[SegmentStat], plan: &[Vec<u64>], dim: usize) {
    let rows: u64 = plan
        .iter()
        .flatten()
        .filter_map(|n| stats.iter().find(|s| s.file_no == *n))
        .map(|s| s.rows - s.deleted)
        .sum();
    progress.add_total(rows, rows * row_bytes_estimate(dim, 16));
}

/// The two background threads of a gallery: one flushes, the other merges
/// segments, so that a merge never holds up the flushes inserts wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Background {
    Flush,
    Compaction,
}

impl Background {
    /// The thread's name, without the gallery's.
    pub(super) fn thread(self) -> &'static str {
        match self {
            Background::Flush => "flush",
            Background::Compaction => "compact",
        }
    }
}

pub(super) fn maintenance_loop(gallery: Weak<Gallery>, job: Background) {
    // A failure that persists (a full disk) is retried every second but
    // logged again only when it changes or once a minute.
    let mut last_failure: Option<(String, std::time::Instant)> = None;
    let signal = match gallery.upgrade() {
        Some(g) => match job {
            Background::Flush => g.flush_signal.clone(),
            Background::Compaction => g.compaction_signal.clone(),
        },
        None => return,
    };
    loop {
        signal.wait(Duration::from_secs(1));
        let Some(g) = gallery.upgrade() else { return };
        if g.closed.load(Ordering::Acquire) {
            return;
        }
        let (result, failure) = match job {
            Background::Flush => (
                g.maintain_flush().map(|flushed| {
                    if flushed {
                        g.compaction_signal.raise();
                    }
                }),
                &g.flush_failure,
            ),
            Background::Compaction => (g.maintain_compaction(), &g.compaction_failure),
        };
        match result {
            Ok(()) => {
                *lock(failure) = None;
                if last_failure.take().is_some() {
                    tracing::info!(gallery = %g.name, job = job.thread(), "background maintenance works again");
                }
            }
            Err(e) => {
                let msg = e.to_string();
                *lock(failure) = Some(Failure {
                    reason: msg.clone(),
                    disk_full: e.is_no_space(),
                });
                let repeat = last_failure
                    .as_ref()
                    .is_some_and(|(m, at)| *m == msg && at.elapsed() < Duration::from_secs(60));
                if !repeat {
                    tracing::error!(gallery = %g.name, job = job.thread(), error = %msg, "background maintenance failed; retrying every second");
                    last_failure = Some((msg, std::time::Instant::now()));
                }
            }
        }
    }
}

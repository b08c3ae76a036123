//! Bulk import: rows from a source (memory-mapped files, a generator) written
//! straight into segments, bypassing the WAL and the memtable, and installed
//! with one manifest, so they appear all at once.
//!
//! 1. **Check** what can be checked without reading the vectors: the
//!    dimension, the row count of every part, the ids (none twice; none
//!    already in the gallery unless `replace`).
//! 2. **Write** the rows as segments of at most the policy's segment size,
//!    each fsynced, checking every vector (finite; normalised where the
//!    gallery normalises) and subject as it goes. Nothing names these files
//!    yet: a crash leaves orphans that opening removes, and an error removes
//!    them at once. The gallery serves and takes writes meanwhile.
//! 3. **Install**, under the compaction and flush locks: flush the memtable, then under
//!    the state lock write the few rows that arrived since as one more segment,
//!    rotate the WAL, tombstone the rows the import replaces, and write one
//!    manifest naming everything with the new WAL as its start. The WAL then
//!    holds nothing the manifest does not already reflect, so replaying it can
//!    never apply an older write on top of the import. Writers wait for this
//!    step only (one small segment and a manifest).
//!
//! A killed import leaves the gallery exactly as before (its segments are
//! orphans until the manifest's rename, which is the commit point); an
//! interrupted one starts over.

use super::counters::Job;
use super::write::{check_subject, check_values, live_in_segments};
use super::{Gallery, lock};
use crate::error::{Error, Result};
use crate::snapshot::SegState;
use crate::snapshot::tombstones::Tombstones;
use crate::storage::segment::row_bytes_estimate;
use crate::storage::segment::{RowRef, Segment, SegmentRows};
use crate::storage::wal::WalWriter;
use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

/// Rows to import, read by row number. Implemented over memory-mapped
/// `.npy` and text files by the server, and over generators by benchmarks.
pub trait ImportSource: Sync {
    /// Rows in the source.
    fn rows(&self) -> usize;
    /// Values of each vector.
    fn dim(&self) -> usize;
    /// Write row `row`'s vector (`dim` values, as stored in the source) into
    /// `out`. Called twice per row (the vectors, then their codes); the
    /// import checks the values.
    fn vector(&self, row: usize, out: &mut [f32]);
    /// The subjects of `range`: called once per range, with consecutive
    /// ranges from row 0 up, so a source may read its subjects in one
    /// sequential pass. An error (a malformed file) names the row.
    fn subjects(&self, range: Range<usize>) -> Result<Vec<String>>;
    /// Every row's id, or `None` to have the gallery assign fresh ids.
    fn ids(&self) -> Result<Option<Cow<'_, [u64]>>>;
}

/// How an import treats ids the gallery already holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Replace the rows of ids already in the gallery; without it, such an
    /// import is refused whole ([`Error::IdsExist`]).
    pub replace: bool,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportReport {
    /// Rows imported.
    pub rows: u64,
    /// Rows of the gallery the import replaced (with `replace`).
    pub replaced: u64,
    /// Segment files written.
    pub segments: u64,
    /// Bytes of the segment files written.
    pub bytes: u64,
    /// With ids assigned by the gallery: the first (rows got consecutive ids
    /// from it, in source order).
    pub first_assigned_id: Option<u64>,
    /// Subjects with a live row after the import.
    pub subjects: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// One segment's rows of the source, checked as the writer reads them.
struct Part<'a> {
    src: &'a dyn ImportSource,
    start: usize,
    ids: Vec<u64>,
    subjects: Vec<String>,
    /// The gallery normalises its vectors.
    normalize: bool,
}

impl SegmentRows for Part<'_> {
    fn len(&self) -> usize {
        self.ids.len()
    }
    fn id(&self, i: usize) -> u64 {
        self.ids[i]
    }
    fn subject(&self, i: usize) -> &str {
        &self.subjects[i]
    }
    fn vector(&self, i: usize, buf: &mut [f32]) -> Result<()> {
        let row = self.start + i;
        self.src.vector(row, buf);
        check_values(self.normalize, "vectors", row, buf)
    }
}

impl Gallery {
    /// Import every row of `src` (see the module docs): written as segments
    /// without the WAL, then installed at once. A bad row (its position
    /// named), ids twice in the source, or ids the gallery holds (without
    /// `replace`) refuse the whole import and change nothing; so does a
    /// failure or a crash at any point before the install's manifest.
    pub fn import(&self, src: &dyn ImportSource, opts: ImportOptions) -> Result<ImportReport> {
        let started = Instant::now();
        self.check_writable()?;
        let dim = self.spec.dim;
        let n = src.rows();
        if src.dim() != dim {
            return Err(Error::DimensionMismatch {
                what: "vectors",
                index: 0,
                expected: dim,
                got: src.dim(),
            });
        }
        if n == 0 {
            return Err(Error::BatchShape {
                what: "import",
                reason: "the source has no rows".into(),
            });
        }
        // The whole import's segments must fit (with subjects of 16 bytes on
        // average), said before anything is written.
        let needed = n as u64 * row_bytes_estimate(dim, 16) + (1 << 20);
        crate::storage::fs::check_space(&*self.fs, &self.dir, "import", needed)?;
        let given = src.ids()?;
        let first_assigned_id = match &given {
            Some(ids) => {
                if ids.len() != n {
                    return Err(Error::BatchShape {
                        what: "ids",
                        reason: format!("{} ids for {n} vectors", ids.len()),
                    });
                }
                check_unique(ids)?;
                if !opts.replace {
                    let st = lock(&self.state);
                    refuse_held(ids, |id| st.find_live(id).is_some())?;
                }
                if let Some(&max) = ids.iter().max() {
                    self.ids.hold(max);
                }
                None
            }
            None => Some(
                self.ids
                    .assign(n as u64)
                    .ok_or_else(|| Error::IdsExhausted {
                        gallery: self.name.clone(),
                        wanted: n as u64,
                        highest: self.ids.highest(),
                    })?,
            ),
        };
        let id_of = |row: usize| match (&given, first_assigned_id) {
            (Some(ids), _) => ids[row],
            (None, Some(first)) => first + row as u64,
            (None, None) => unreachable!("ids are given or assigned"),
        };

        let per_segment = self.segment_row_limit();
        let progress = self.start_progress("import");
        progress
            .cell
            .add_total(n as u64, n as u64 * row_bytes_estimate(dim, 16));
        let remove_written = |written: &[Arc<Segment>]| {
            for seg in written {
                let _ = self.fs.remove_file(seg.path());
            }
        };
        // Two segments in flight: one is synced (its tail written back to the
        // disk) while the next is read and coded. Subjects are read in order.
        let mut written: Vec<Arc<Segment>> = Vec::new();
        let mut failure: Option<Error> = None;
        std::thread::scope(|scope| {
            let mut inflight = std::collections::VecDeque::new();
            let join = |h: std::thread::ScopedJoinHandle<'_, Result<Option<Arc<Segment>>>>,
                        rows: usize,
                        written: &mut Vec<Arc<Segment>>,
                        failure: &mut Option<Error>| {
                match h.join() {
                    Ok(Ok(Some(seg))) => written.push(seg),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        failure.get_or_insert(e);
                    }
                    Err(_) => {
                        failure.get_or_insert(Error::Poisoned {
                            gallery: self.name.clone(),
                            reason: "an import's segment writer panicked".into(),
                            disk_full: false,
                        });
                    }
                }
                progress
                    .cell
                    .add_done(rows as u64, rows as u64 * row_bytes_estimate(dim, 16));
            };
            let mut start = 0;
            while start < n && failure.is_none() {
                let end = n.min(start + per_segment);
                let part = self.import_part(src, start..end, &id_of).and_then(|p| {
                    self.check_writable()?;
                    let file_no = lock(&self.state).alloc_file_no(&self.dir)?;
                    Ok((p, file_no))
                });
                let (part, file_no) = match part {
                    Ok(p) => p,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                };
                if inflight.len() == 2 {
                    let (h, rows) = inflight.pop_front().expect("two in flight");
                    join(h, rows, &mut written, &mut failure);
                }
                let h = scope.spawn(move || self.write_new_segment(Job::Import, file_no, &part));
                inflight.push_back((h, end - start));
                start = end;
            }
            for (h, rows) in inflight {
                join(h, rows, &mut written, &mut failure);
            }
        });
        if let Some(e) = failure {
            remove_written(&written);
            return Err(e);
        }
        let bytes: u64 = written.iter().map(|seg| seg.file_len()).sum();
        let (replaced, subjects) = match self.install_import(&written, opts.replace, started) {
            Ok(r) => r,
            Err(e) => {
                remove_written(&written);
                return Err(e);
            }
        };
        Ok(ImportReport {
            rows: n as u64,
            replaced,
            segments: written.len() as u64,
            bytes,
            first_assigned_id,
            subjects,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The rows of `range`: their ids and checked subjects.
    fn import_part<'a>(
        &self,
        src: &'a dyn ImportSource,
        range: Range<usize>,
        id_of: &dyn Fn(usize) -> u64,
    ) -> Result<Part<'a>> {
        let subjects = src.subjects(range.clone())?;
        if subjects.len() != range.len() {
            return Err(Error::BatchShape {
                what: "subjects",
                reason: format!(
                    "{} subjects for rows {}..{} (one per vector)",
                    subjects.len(),
                    range.start,
                    range.end
                ),
            });
        }
        for (i, s) in subjects.iter().enumerate() {
            check_subject("subjects", range.start + i, s)?;
        }
        Ok(Part {
            src,
            start: range.start,
            ids: range.clone().map(id_of).collect(),
            subjects,
            normalize: self.spec.normalize,
        })
    }

    /// Rows in one segment written by an import or a merge: the policy's
    /// row limit, and its byte limit at this gallery's dimension.
    pub(super) fn segment_row_limit(&self) -> usize {
        let per_row = row_bytes_estimate(self.spec.dim, 16).max(1);
        let p = &self.opts.compaction;
        let rows = p.max_segment_rows.min(p.max_segment_bytes / per_row).max(1);
        usize::try_from(rows).unwrap_or(usize::MAX)
    }

    /// Step 3 of the module docs. Returns the rows replaced and the subjects
    /// after. On error the caller removes `imported`; a failure after the WAL
    /// rotation poisons the gallery (a reopen recovers from the files).
    fn install_import(
        &self,
        imported: &[Arc<Segment>],
        replace: bool,
        started: Instant,
    ) -> Result<(u64, u64)> {
        let _c = lock(&self.compacting);
        let _f = lock(&self.flushing);
        let progress = self.start_progress("flush");
        self.flush_locked(&progress.cell)?;
        drop(progress);
        let mut st = lock(&self.state);
        self.check_writable()?;
        if st.frozen.is_some() {
            return Err(Error::Poisoned {
                gallery: self.name.clone(),
                reason: "a flush left a frozen memtable behind".into(),
                disk_full: false,
            });
        }
        // Refuse before anything changes: ids the gallery holds now.
        if !replace {
            let mut offset = 0;
            for seg in imported {
                refuse_held(seg.ids(), |id| st.find_live(id).is_some()).map_err(|e| match e {
                    Error::IdsExist { id, row, count } => Error::IdsExist {
                        id,
                        row: row + offset,
                        count,
                    },
                    e => e,
                })?;
                offset += seg.rows();
            }
        }
        // From here on a failure leaves the in-memory state ahead of the
        // files: poison, so that only a reopen (from the old manifest and
        // WAL, which are intact until the new manifest names the new WAL)
        // goes on.
        let poison = |what: &str, e: Error| {
            self.set_poison(super::Failure::of(&format!("import: {what}"), &e))
        };
        st.wal
            .sync()
            .map_err(|e| poison("WAL sync", Error::io(self.dir.join("wal"), e)))?;
        let wal_no = st.alloc_file_no(&self.dir)?;
        let new_wal = WalWriter::create(&*self.fs, &self.dir, wal_no, self.spec.dim)
            .map_err(|e| poison("WAL rotation", e))?;
        st.wal = new_wal;
        // The rows written since the flush, as one more segment.
        let active = std::mem::take(&mut st.active);
        let dim = self.spec.dim;
        let mut rows = Vec::new();
        for mc in &active.chunks {
            for r in 0..mc.chunk.ids.len() {
                if !mc.tomb.get(r) {
                    rows.push(RowRef {
                        id: mc.chunk.ids[r],
                        subject: &mc.chunk.subjects[r],
                        vector: &mc.chunk.vectors[r * dim..(r + 1) * dim],
                    });
                }
            }
        }
        let mut segments = st.segments.clone();
        let recent = if rows.is_empty() {
            None
        } else {
            let file_no = st.alloc_file_no(&self.dir)?;
            self.write_new_segment(Job::Flush, file_no, rows.as_slice())
                .map_err(|e| poison("writing the rows written meanwhile", e))?
        };
        drop(rows);
        drop(active);
        if let Some(seg) = &recent {
            segments.push(SegState {
                tomb: Arc::new(Tombstones::new(seg.rows())),
                seg: seg.clone(),
            });
        }
        // Tombstone the rows the import replaces (every id is live at most once).
        let mut replaced = 0u64;
        let mut lost_subjects: Vec<String> = Vec::new();
        for ss in &mut segments {
            let (Some(lo), Some(hi)) = (ss.seg.min_id(), ss.seg.max_id()) else {
                continue;
            };
            let mut tomb: Option<Tombstones> = None;
            for seg in imported {
                for &id in seg.ids() {
                    if id < lo || id > hi {
                        continue;
                    }
                    if let Some(r) = ss.seg.find_id(id)
                        && !ss.tomb.get(r)
                    {
                        let t = tomb.get_or_insert_with(|| (*ss.tomb).clone());
                        if !t.get(r) {
                            t.set(r);
                            replaced += 1;
                            lost_subjects.push(ss.seg.row_subject(r).to_owned());
                        }
                    }
                }
            }
            if let Some(t) = tomb {
                ss.tomb = Arc::new(t);
            }
        }
        // The subject count: subjects whose last row was replaced leave,
        // imported subjects no other live row holds arrive.
        let mut subjects = st.subjects;
        lost_subjects.sort_unstable();
        lost_subjects.dedup();
        for s in &lost_subjects {
            if !live_in_segments(&segments, s) {
                subjects -= 1;
            }
        }
        let mut new_subjects: Vec<&str> = imported
            .iter()
            .flat_map(|seg| (0..seg.subject_count()).map(|o| seg.subject_at(o)))
            .collect();
        new_subjects.sort_unstable();
        new_subjects.dedup();
        for s in new_subjects {
            if !live_in_segments(&segments, s) {
                subjects += 1;
            }
        }
        for seg in imported {
            segments.push(SegState {
                tomb: Arc::new(Tombstones::new(seg.rows())),
                seg: seg.clone(),
            });
        }
        st.subjects = subjects;
        let m = st.manifest(&segments, wal_no, st.applied_seq);
        if let Err(e) = self.write_manifest(&m, recent.as_deref()) {
            return Err(poison("manifest", e));
        }
        st.generation = m.generation;
        st.segments = segments;
        st.segments_seq = st.applied_seq;
        let old_wal_start = st.wal_start;
        st.wal_start = wal_no;
        self.publish(&st);
        drop(st);
        for (no, p) in self.wal_files() {
            if (old_wal_start..wal_no).contains(&no) {
                let _ = self.fs.remove_file(&p);
            }
        }
        crate::storage::fs::fsync_dir(&*self.fs, &self.dir)?;
        self.counters.finished(Job::Import, started);
        Ok((replaced, subjects))
    }
}

/// Refuse ids given twice, naming both rows.
fn check_unique(ids: &[u64]) -> Result<()> {
    let mut order: Vec<u32> = (0..u32::try_from(ids.len()).map_err(|_| Error::TooLarge {
        what: "rows in one import",
        got: ids.len(),
        limit: u32::MAX as usize,
    })?)
        .collect();
    order.sort_unstable_by_key(|&r| (ids[r as usize], r));
    for w in order.windows(2) {
        let (a, b) = (w[0] as usize, w[1] as usize);
        if ids[a] == ids[b] {
            return Err(Error::DuplicateId {
                what: "ids",
                id: ids[a],
                first: a,
                second: b,
            });
        }
    }
    Ok(())
}

/// Refuse the import if `held` says the gallery holds any of `ids`,
/// naming the first and counting them.
fn refuse_held(ids: &[u64], held: impl Fn(u64) -> bool) -> Result<()> {
    let mut first = None;
    let mut count = 0u64;
    for (row, &id) in ids.iter().enumerate() {
        if held(id) {
            count += 1;
            first.get_or_insert((row, id));
        }
    }
    match first {
        None => Ok(()),
        Some((row, id)) => Err(Error::IdsExist { id, row, count }),
    }
}

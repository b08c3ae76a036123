//! Creating a gallery's files, and opening them: read the manifest, map the
//! segments, remove what interrupted flushes and compactions left, replay the
//! WAL (truncating a torn tail, refusing corruption), load the head.

use super::maintain::{Background, maintenance_loop};
use super::write::{IdCounter, WriteState};
use super::{Gallery, GalleryOptions, HEAD, MANIFEST, Signal, parse_file_no, seg_name};
use crate::api::GallerySpec;
use crate::error::{Error, Result};
use crate::head::HeadInfo;
use crate::snapshot::memtable::Memtable;
use crate::snapshot::tombstones::Tombstones;
use crate::snapshot::{SegState, Snapshot};
use crate::storage::format::{self, ManifestData};
use crate::storage::io::FileSystem;
use crate::storage::segment::Segment;
use crate::storage::wal::{self, WalWriter};
use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, RwLock};

impl Gallery {
    /// Create the files of an empty gallery in `dir` (which must not exist).
    pub(crate) fn create_files(fs: &dyn FileSystem, dir: &Path, spec: &GallerySpec) -> Result<()> {
        fs.create_dir(dir).map_err(|e| Error::io(dir, e))?;
        WalWriter::create(fs, dir, 1, spec.dim)?;
        let m = ManifestData {
            generation: 1,
            next_file_no: 2,
            wal_start: 1,
            segments: vec![],
            subjects: Some(0),
            spec: spec.clone(),
            highest_id: 0,
            applied_seq: 0,
        };
        crate::storage::fs::atomic_write(fs, &dir.join(MANIFEST), &format::encode_manifest(&m))
            .map_err(|e| e.error)?;
        Ok(())
    }

    /// Open (and recover) the gallery in `dir`.
    pub(crate) fn open(
        fs_handle: Arc<dyn FileSystem>,
        name: &str,
        dir: &Path,
        opts: GalleryOptions,
    ) -> Result<Arc<Gallery>> {
        let fs = &*fs_handle;
        let mpath = dir.join(MANIFEST);
        let mbytes = fs.read(&mpath).map_err(|e| Error::io(&mpath, e))?;
        let manifest = format::decode_manifest(&mpath, &mbytes)?;
        let mut listed: HashSet<u64> = HashSet::new();
        let mut segments = Vec::with_capacity(manifest.segments.len());
        for ms in &manifest.segments {
            let path = dir.join(seg_name(ms.file_no));
            if !fs.exists(&path).map_err(|e| Error::io(&path, e))? {
                return Err(Error::corrupt(
                    &mpath,
                    0,
                    format!(
                        "manifest lists segment {} but the file is missing",
                        path.display()
                    ),
                ));
            }
            let seg = Segment::open(fs, &path, ms.file_no, opts.verify, manifest.spec.dim)?;
            if seg.rows() as u64 != ms.rows {
                return Err(Error::corrupt(
                    &path,
                    16,
                    format!("segment has {} rows, manifest says {}", seg.rows(), ms.rows),
                ));
            }
            let tomb = Tombstones::from_rows(seg.rows(), &ms.deleted);
            listed.insert(ms.file_no);
            let seg = Arc::new(seg);
            Segment::warm(&seg);
            segments.push(SegState {
                seg,
                tomb: Arc::new(tomb),
            });
        }
        // Classify files: remove orphans of interrupted flushes and compactions.
        let mut wals = Vec::new();
        let mut max_no = 0u64;
        for entry in fs.read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let fname = entry.name.to_string_lossy().into_owned();
            let path = dir.join(&entry.name);
            if fname.ends_with(crate::storage::fs::TMP_SUFFIX) {
                tracing::info!(file = %path.display(), "removing temporary file left by an interrupted write");
                fs.remove_file(&path).map_err(|e| Error::io(&path, e))?;
            } else if let Some(n) = parse_file_no(&fname, "seg-", ".vseg") {
                // Only kept files reserve their numbers: a removed orphan cannot
                // collide, and a stray `seg-ffffffffffffffff.vseg` must not push
                // the counter to overflow.
                if listed.contains(&n) {
                    max_no = max_no.max(n);
                } else {
                    tracing::info!(file = %path.display(), "removing segment not in the manifest (interrupted flush or compaction)");
                    fs.remove_file(&path).map_err(|e| Error::io(&path, e))?;
                }
            } else if let Some(n) = parse_file_no(&fname, "wal-", ".log") {
                if n < manifest.wal_start {
                    tracing::info!(file = %path.display(), "removing WAL already covered by segments");
                    fs.remove_file(&path).map_err(|e| Error::io(&path, e))?;
                } else {
                    max_no = max_no.max(n);
                    wals.push(n);
                }
            }
        }
        wals.sort_unstable();
        if wals.first() != Some(&manifest.wal_start) {
            return Err(Error::corrupt(
                &mpath,
                0,
                format!(
                    "manifest says to replay from {}, which is missing",
                    wal::file_name(manifest.wal_start)
                ),
            ));
        }
        let next_file_no = manifest.next_file_no.max(max_no.saturating_add(1));
        // Replay.
        let mut active = Memtable::default();
        // The subjects with a live row in the segments, counted from their
        // postings (a pass the open's checks of the postings already make
        // cheap): galleries written before the count (format 1 and 2) take it
        // from here, later ones must agree with it. A manifest that passes its
        // checksum with another count was written wrong, and every subject
        // count and open-set threshold after it would be too.
        let counted = Snapshot {
            segments: segments.clone(),
            dim: manifest.spec.dim,
            ..Snapshot::default()
        }
        .count_subjects() as u64;
        if let Some(n) = manifest.subjects.filter(|&n| n != counted) {
            return Err(Error::corrupt(
                &mpath,
                0,
                format!(
                    "manifest counts {n} subjects with a live row in its segments, \
                     their rows hold {counted}"
                ),
            ));
        }
        let subjects = counted;
        // The id counter: the manifest's, raised to every id the segments
        // hold (deleted rows too; a manifest before version 6 has none), then
        // by every id the WAL replays.
        let seg_ids = segments.iter().filter_map(|s| s.seg.max_id());
        let ids = Arc::new(IdCounter::new(seg_ids.fold(manifest.highest_id, u64::max)));
        let mut tmp = WriteState {
            wal: WalWriter::reopen(fs, &dir.join(wal::file_name(wals[0])), wals[0], 0, 0)?,
            segments,
            frozen: None,
            active: std::mem::take(&mut active),
            next_file_no,
            generation: manifest.generation,
            wal_start: manifest.wal_start,
            subjects,
            spec: manifest.spec.clone(),
            scans: Default::default(),
            ids: Arc::clone(&ids),
            applied_seq: manifest.applied_seq,
            segments_seq: manifest.applied_seq,
            frozen_seq: manifest.applied_seq,
        };
        let mut writer = None;
        for (i, &n) in wals.iter().enumerate() {
            let path = dir.join(wal::file_name(n));
            let is_last = i + 1 == wals.len();
            let r = wal::replay(fs, &path, n, is_last, manifest.spec.dim)?;
            for op in &r.ops {
                tmp.apply_op(op);
            }
            if is_last {
                if r.valid_len == 0 {
                    // Crash while creating this WAL: nothing in it was acknowledged.
                    fs.remove_file(&path).map_err(|e| Error::io(&path, e))?;
                    writer = Some(WalWriter::create(fs, dir, n, manifest.spec.dim)?);
                } else {
                    if r.valid_len < r.file_len {
                        tracing::warn!(file = %path.display(), offset = r.valid_len, dropped = r.file_len - r.valid_len,
                            "truncating torn WAL tail (a write that was never acknowledged)");
                        let f = fs.open_append(&path).map_err(|e| Error::io(&path, e))?;
                        f.set_len(r.valid_len).map_err(|e| Error::io(&path, e))?;
                        f.sync_all().map_err(|e| Error::io(&path, e))?;
                    }
                    writer = Some(WalWriter::reopen(fs, &path, n, r.salt, r.valid_len)?);
                }
            }
        }
        if let Some(w) = writer {
            tmp.wal = w;
        }
        let head_path = dir.join(HEAD);
        let head_info = match fs.read(&head_path) {
            Ok(bytes) => {
                let data = format::decode_head(&head_path, &bytes)?;
                if data.weights.len() != manifest.spec.dim {
                    return Err(Error::corrupt(
                        &head_path,
                        0,
                        format!(
                            "head of {} weights in a gallery of {} values a vector",
                            data.weights.len(),
                            manifest.spec.dim
                        ),
                    ));
                }
                Some(HeadInfo::from_data(&data))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&head_path, e)),
        };
        let snapshot = Arc::new(tmp.snapshot());
        let gallery = Arc::new(Gallery {
            fs: fs_handle.clone(),
            name: name.to_owned(),
            dir: dir.to_owned(),
            spec: manifest.spec,
            ids,
            opts,
            state: Mutex::new(tmp),
            published: RwLock::new(snapshot),
            queue: Mutex::new(VecDeque::new()),
            queue_cv: Condvar::new(),
            flushing: Mutex::new(()),
            compacting: Mutex::new(()),
            poison: Mutex::new(None),
            closed: AtomicBool::new(false),
            flush_signal: Arc::new(Signal::default()),
            compaction_signal: Arc::new(Signal::default()),
            flush_failure: Mutex::new(None),
            compaction_failure: Mutex::new(None),
            head: RwLock::new(head_info.map(Arc::new)),
            head_lock: Mutex::new(()),
            erasure: Mutex::new(None),
            operations: Mutex::new(Vec::new()),
            counters: Default::default(),
        });
        if gallery.opts.background {
            for job in [Background::Flush, Background::Compaction] {
                let weak = Arc::downgrade(&gallery);
                std::thread::Builder::new()
                    .name(format!("visage-{}-{name}", job.thread()))
                    .spawn(move || maintenance_loop(weak, job))
                    .map_err(|e| Error::io(dir, e))?;
            }
        }
        Ok(gallery)
    }
}

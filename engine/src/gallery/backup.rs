//! Online backups, the erasure log, and the progress of long operations.
//!
//! # A backup
//! Under the erasure and state locks (a few system calls, no copying) the
//! backup fixes its cut, the end of the last acknowledged write: it reads
//! the manifest and the head, hard-links the manifest's segments into the
//! backup (or opens them, when the backup root is on another file system),
//! and opens every WAL file from the manifest's start, noting the active
//! one's length. Writes, flushes and compactions then go on: open files stay
//! readable after a compaction unlinks them, and only the WAL's first bytes
//! up to the cut are copied. Every file is checksummed by blocks as it is
//! copied (linked segments are read once for that) and synced; the
//! checksummed `BACKUP` manifest is written last, so a backup interrupted
//! by a crash has none and is refused at restore.
//!
//! # Erasures
//! Every delete first appends, and syncs, one record per subject and per id
//! to the gallery's `ERASURES` log: an HMAC-SHA-256 of the subject or the id
//! under the gallery's secret key (`ERASURE-KEY`), never a name, an id or a
//! vector. Once a gallery has been backed up, the log is mirrored to
//! `erasures/LINEAGE.log` under the backup root (the key is not: the hashes
//! there let nobody test guesses of names). A backup records how many
//! records the log held at its cut; a restore hashes every restored row
//! with the backup's copy of the key, deletes the rows that match a record
//! logged after the cut, and compacts, before the gallery serves. The
//! erasure lock is held from the log's append to the delete's commit and by
//! the backup's cut, so a cut never falls between the two.

use super::write::Op;
use super::{Gallery, HEAD, MANIFEST, lock, seg_name};
use crate::api::*;
use crate::error::{Error, Result};
use crate::storage::format::{self, BackupFile, BackupManifest, ErasureKind, ErasureRecord};
use crate::storage::fs::atomic_write;
use crate::storage::io::Create;
use ring::hmac;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The erasure log's file name in a gallery.
pub(crate) const ERASURES: &str = "ERASURES";
/// The erasure key's file name in a gallery and in a backup.
pub(crate) const ERASURE_KEY: &str = "ERASURE-KEY";
/// The backup manifest's file name.
pub(crate) const BACKUP: &str = "BACKUP";
/// Folder of the mirrored erasure logs under the backup root.
pub(crate) const ERASURES_DIR: &str = "erasures";

/// The erasure log's state, loaded at the first delete or backup.
pub(super) struct Erasures {
    lineage: [u8; 16],
    raw_key: [u8; 32],
    key: hmac::Key,
    /// Records in the log.
    records: u64,
    /// Bytes of the log up to its last whole record.
    valid_len: u64,
}

/// The path of the mirrored erasure log of `lineage` under `root`.
pub(crate) fn mirror_path(root: &Path, lineage: &[u8; 16]) -> PathBuf {
    let hex: String = lineage.iter().map(|b| format!("{b:02x}")).collect();
    root.join(ERASURES_DIR).join(format!("{hex}.log"))
}

fn random<const N: usize>(what: &Path) -> Result<[u8; N]> {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| Error::io(what, std::io::Error::other("no random bytes from the OS")))?;
    Ok(b)
}

/// The keyed hash of a subject or an id.
pub(crate) fn erasure_hash(key: &hmac::Key, kind: ErasureKind, data: &[u8]) -> [u8; 32] {
    let mut c = hmac::Context::with_key(key);
    c.update(&[kind as u8]);
    c.update(data);
    let tag = c.sign();
    let mut h = [0u8; 32];
    h.copy_from_slice(tag.as_ref());
    h
}

/// The progress of one long operation (see [`OperationProgress`]).
#[derive(Debug)]
pub(super) struct ProgressCell {
    kind: &'static str,
    started: Instant,
    pub(super) rows_done: AtomicU64,
    pub(super) rows_total: AtomicU64,
    pub(super) bytes_done: AtomicU64,
    pub(super) bytes_total: AtomicU64,
}

impl ProgressCell {
    pub(super) fn add_total(&self, rows: u64, bytes: u64) {
        self.rows_total.fetch_add(rows, Ordering::Relaxed);
        self.bytes_total.fetch_add(bytes, Ordering::Relaxed);
    }
    pub(super) fn add_done(&self, rows: u64, bytes: u64) {
        self.rows_done.fetch_add(rows, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Registers an operation's progress while it lives.
pub(super) struct ProgressGuard<'a> {
    gallery: &'a Gallery,
    pub(super) cell: Arc<ProgressCell>,
}

impl Drop for ProgressGuard<'_> {
    fn drop(&mut self) {
        lock(&self.gallery.operations).retain(|c| !Arc::ptr_eq(c, &self.cell));
    }
}

/// One file the backup copies, opened at the cut.
struct Source {
    name: String,
    /// Open at the cut (`None`: hard-linked into the backup, read there).
    file: Option<std::fs::File>,
    len: u64,
    rows: u64,
}

/// Copies at most `max_bytes_per_sec`.
struct Pace {
    started: Instant,
    bytes: u64,
    rate: Option<u64>,
}

impl Pace {
    fn step(&mut self, n: u64) {
        self.bytes += n;
        if let Some(rate) = self.rate.filter(|&r| r > 0) {
            let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            let spent = self.started.elapsed();
            if due > spent {
                std::thread::sleep(due - spent);
            }
        }
    }
}

impl Gallery {
    /// Long operations in progress (compaction, backup), oldest first.
    pub fn progress(&self) -> Vec<OperationProgress> {
        lock(&self.operations)
            .iter()
            .map(|c| OperationProgress {
                kind: c.kind,
                rows_done: c.rows_done.load(Ordering::Relaxed),
                rows_total: c.rows_total.load(Ordering::Relaxed),
                bytes_done: c.bytes_done.load(Ordering::Relaxed),
                bytes_total: c.bytes_total.load(Ordering::Relaxed),
                elapsed: c.started.elapsed(),
            })
            .collect()
    }

    pub(super) fn start_progress(&self, kind: &'static str) -> ProgressGuard<'_> {
        let cell = Arc::new(ProgressCell {
            kind,
            started: Instant::now(),
            rows_done: AtomicU64::new(0),
            rows_total: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
        });
        lock(&self.operations).push(cell.clone());
        ProgressGuard {
            gallery: self,
            cell,
        }
    }

    /// The erasure log's state, loading (or creating) the key and the log.
    pub(super) fn erasures<'a>(&self, slot: &'a mut Option<Erasures>) -> Result<&'a mut Erasures> {
        if slot.is_none() {
            *slot = Some(self.load_erasures()?);
        }
        Ok(slot.as_mut().expect("loaded above"))
    }

    fn load_erasures(&self) -> Result<Erasures> {
        let fs = &*self.fs;
        let kpath = self.dir.join(ERASURE_KEY);
        let lpath = self.dir.join(ERASURES);
        let (lineage, raw_key) = match fs.read(&kpath) {
            Ok(b) => format::decode_erasure_key(&kpath, &b)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // First use. A log without a key is left by a crash between
                // the two writes below, before any record: start afresh.
                let lineage = random::<16>(&kpath)?;
                let key = random::<32>(&kpath)?;
                atomic_write(fs, &lpath, &format::encode_erasures_header(&lineage))
                    .map_err(|e| e.error)?;
                atomic_write(fs, &kpath, &format::encode_erasure_key(&lineage, &key))
                    .map_err(|e| e.error)?;
                (lineage, key)
            }
            Err(e) => return Err(Error::io(&kpath, e)),
        };
        let (records, valid_len) = match fs.read(&lpath) {
            Ok(b) => {
                let log = format::decode_erasures(&lpath, &b)?;
                if log.lineage != lineage {
                    return Err(Error::corrupt(
                        &lpath,
                        12,
                        "erasure log belongs to another key than ERASURE-KEY's",
                    ));
                }
                (log.records.len() as u64, log.valid_len)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                atomic_write(fs, &lpath, &format::encode_erasures_header(&lineage))
                    .map_err(|e| e.error)?;
                (0, format::ERASURES_HEADER_LEN as u64)
            }
            Err(e) => return Err(Error::io(&lpath, e)),
        };
        Ok(Erasures {
            lineage,
            raw_key,
            key: hmac::Key::new(hmac::HMAC_SHA256, &raw_key),
            records,
            valid_len,
        })
    }

    /// Log the erasure of `ids` and `subjects` (synced, and mirrored when the
    /// gallery has been backed up) before they are deleted.
    pub(super) fn log_erasures(
        &self,
        e: &mut Erasures,
        ids: &[u64],
        subjects: &[String],
    ) -> Result<()> {
        let recs: Vec<ErasureRecord> = subjects
            .iter()
            .map(|s| {
                let h = erasure_hash(&e.key, ErasureKind::Subject, s.as_bytes());
                (ErasureKind::Subject, h)
            })
            .chain(ids.iter().map(|id| {
                let h = erasure_hash(&e.key, ErasureKind::Id, &id.to_le_bytes());
                (ErasureKind::Id, h)
            }))
            .collect();
        let mut buf = Vec::with_capacity(recs.len() * format::ERASURE_RECORD_LEN);
        format::encode_erasure_records(&recs, &mut buf);
        let lpath = self.dir.join(ERASURES);
        self.append_at(&lpath, e.valid_len, &buf)?;
        if let Some(root) = &self.opts.backup_root {
            let mpath = mirror_path(root, &e.lineage);
            if self.fs.exists(&mpath).map_err(|x| Error::io(&mpath, x))? {
                // The mirror holds what the log held before this append (the
                // backup that made it, and every append since, kept it so).
                self.append_at(&mpath, e.valid_len, &buf)?;
            }
        }
        e.records += recs.len() as u64;
        e.valid_len += buf.len() as u64;
        Ok(())
    }

    /// Append `buf` at `at` (cutting whatever a failed append left past it), and sync.
    fn append_at(&self, path: &Path, at: u64, buf: &[u8]) -> Result<()> {
        let io = |e| Error::io(path, e);
        let mut f = self.fs.open_append(path).map_err(io)?;
        f.set_len(at).map_err(io)?;
        f.write_all(buf).map_err(io)?;
        f.sync_data().map_err(io)
    }

    /// Make the mirror of the erasure log under `root` equal to the log.
    fn sync_mirror(&self, e: &Erasures, root: &Path) -> Result<()> {
        let fs = &*self.fs;
        let dir = root.join(ERASURES_DIR);
        fs.create_dir_all(&dir).map_err(|x| Error::io(&dir, x))?;
        let mpath = mirror_path(root, &e.lineage);
        let current = match fs.read(&mpath) {
            Ok(b) => format::decode_erasures(&mpath, &b)
                .ok()
                .filter(|l| l.lineage == e.lineage)
                .map(|l| l.valid_len),
            Err(_) => None,
        };
        if current != Some(e.valid_len) {
            let lpath = self.dir.join(ERASURES);
            let log = fs.read(&lpath).map_err(|x| Error::io(&lpath, x))?;
            let end = usize::try_from(e.valid_len)
                .unwrap_or(usize::MAX)
                .min(log.len());
            atomic_write(fs, &mpath, &log[..end]).map_err(|x| x.error)?;
        }
        Ok(())
    }

    /// Take a backup into `dest` (which must not exist), mirroring the
    /// erasure log under `root`. See the module docs.
    pub(crate) fn backup_to(
        &self,
        dest: &Path,
        root: &Path,
        opts: &BackupOptions,
    ) -> Result<BackupReport> {
        let fs = &*self.fs;
        let progress = self.start_progress("backup");
        fs.create_dir_all(root).map_err(|e| Error::io(root, e))?;
        fs.create_dir(dest).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                // Another backup of that name began meanwhile.
                Error::BackupRefused {
                    name: dest
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                    reason: format!("{} exists already", dest.display()),
                }
            } else {
                Error::io(dest, e)
            }
        })?;
        let res = self.backup_files(dest, root, opts, &progress.cell);
        if res.is_err() {
            let _ = fs.remove_dir_all(dest);
        }
        res
    }

    fn backup_files(
        &self,
        dest: &Path,
        root: &Path,
        opts: &BackupOptions,
        progress: &ProgressCell,
    ) -> Result<BackupReport> {
        let fs = &*self.fs;
        // 1. The cut, under the erasure and state locks.
        let mut slot = lock(&self.erasure);
        let e = self.erasures(&mut slot)?;
        self.sync_mirror(e, root)?;
        let key_file = format::encode_erasure_key(&e.lineage, &e.raw_key);
        let (lineage, erasure_position) = (e.lineage, e.records);
        let (manifest, head, mut sources, cut, rows, subjects) = {
            let st = lock(&self.state);
            self.check_writable()?;
            let mpath = self.dir.join(MANIFEST);
            let manifest = fs.read(&mpath).map_err(|e| Error::io(&mpath, e))?;
            let m = format::decode_manifest(&mpath, &manifest)?;
            let hpath = self.dir.join(HEAD);
            let head = match fs.read(&hpath) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(Error::io(&hpath, e)),
            };
            let mut sources = Vec::new();
            for ms in &m.segments {
                let name = seg_name(ms.file_no);
                let from = self.dir.join(&name);
                let to = dest.join(&name);
                let file = match fs.hard_link(&from, &to) {
                    Ok(()) => None,
                    Err(_) => Some(fs.open_read(&from).map_err(|e| Error::io(&from, e))?),
                };
                let len = match &file {
                    Some(f) => f.metadata().map_err(|e| Error::io(&from, e))?.len(),
                    None => std::fs::metadata(&to).map_err(|e| Error::io(&to, e))?.len(),
                };
                sources.push(Source {
                    name,
                    file,
                    len,
                    rows: ms.rows,
                });
            }
            let mut wals = self.wal_files();
            wals.sort_unstable();
            let memtable_rows =
                st.active.rows() as u64 + st.frozen.as_ref().map_or(0, |f| f.rows() as u64);
            for (n, path) in wals.into_iter().filter(|(n, _)| *n >= st.wal_start) {
                let f = fs.open_read(&path).map_err(|e| Error::io(&path, e))?;
                let len = if n == st.wal.file_no() {
                    st.wal.len()
                } else {
                    f.metadata().map_err(|e| Error::io(&path, e))?.len()
                };
                sources.push(Source {
                    name: crate::storage::wal::file_name(n),
                    file: Some(f),
                    len,
                    rows: 0,
                });
            }
            if let Some(last) = sources.last_mut().filter(|s| s.name.starts_with("wal-")) {
                last.rows = memtable_rows;
            }
            let snap = self.snapshot();
            (
                manifest,
                head,
                sources,
                (st.wal.file_no(), st.wal.len()),
                snap.live_rows() as u64,
                st.subjects,
            )
        };
        drop(slot);
        // 2. Copy and checksum, outside every lock.
        let small = manifest.len() + head.as_ref().map_or(0, Vec::len) + key_file.len();
        progress.add_total(
            sources.iter().map(|s| s.rows).sum(),
            sources.iter().map(|s| s.len).sum::<u64>() + small as u64,
        );
        let mut pace = Pace {
            started: Instant::now(),
            bytes: 0,
            rate: opts.max_bytes_per_sec,
        };
        let block = format::BACKUP_BLOCK;
        let mut files = Vec::new();
        let mut linked = 0u64;
        for s in &mut sources {
            let to = dest.join(&s.name);
            let crcs = match s.file.take() {
                Some(f) => copy_checksummed(fs, f, s.len, &to, block, &mut pace, progress)?,
                None => {
                    linked += 1;
                    let f = fs.open_read(&to).map_err(|e| Error::io(&to, e))?;
                    checksum_file(f, &to, s.len, block, &mut pace, progress)?
                }
            };
            progress.add_done(s.rows, 0);
            files.push(BackupFile {
                name: s.name.clone(),
                len: s.len,
                crcs,
            });
        }
        let mut small_files = vec![(MANIFEST, manifest), (ERASURE_KEY, key_file.to_vec())];
        if let Some(h) = head {
            small_files.push((HEAD, h));
        }
        for (name, bytes) in small_files {
            let to = dest.join(name);
            write_synced(fs, &to, &bytes)?;
            progress.add_done(0, bytes.len() as u64);
            files.push(BackupFile {
                name: name.to_owned(),
                len: bytes.len() as u64,
                crcs: bytes.chunks(block as usize).map(crc32fast::hash).collect(),
            });
        }
        // 3. The manifest of the backup, last.
        let m = BackupManifest {
            created_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            wal_file_no: cut.0,
            wal_offset: cut.1,
            erasure_position,
            lineage,
            rows,
            subjects,
            block,
            gallery: self.name.clone(),
            files,
        };
        crate::storage::fs::fsync_dir(fs, dest)?;
        atomic_write(fs, &dest.join(BACKUP), &format::encode_backup(&m)).map_err(|e| e.error)?;
        if let Some(parent) = dest.parent() {
            crate::storage::fs::fsync_dir(fs, parent)?;
        }
        Ok(BackupReport {
            dir: dest.to_owned(),
            wal_file_no: cut.0,
            wal_offset: cut.1,
            rows,
            subjects,
            files: m.files.len() as u64,
            linked,
            bytes: m.files.iter().map(|f| f.len).sum(),
        })
    }

    /// Delete every row whose id or subject hashes (under `key`) to one of
    /// `records`; the restore's erasure step. Returns the rows deleted.
    pub(crate) fn erase_matching(&self, key: &[u8; 32], records: &[ErasureRecord]) -> Result<u64> {
        if records.is_empty() {
            return Ok(0);
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, key);
        let wanted: HashSet<&ErasureRecord> = records.iter().collect();
        let mut subject_hit: HashMap<String, bool> = HashMap::new();
        let mut doomed = Vec::new();
        let mut export = self.export();
        while let Some(b) = export.next_batch(65_536) {
            for (id, s) in b.ids.iter().zip(&b.subjects) {
                let by_id = wanted.contains(&(
                    ErasureKind::Id,
                    erasure_hash(&key, ErasureKind::Id, &id.to_le_bytes()),
                ));
                let by_subject = *subject_hit.entry(s.clone()).or_insert_with(|| {
                    wanted.contains(&(
                        ErasureKind::Subject,
                        erasure_hash(&key, ErasureKind::Subject, s.as_bytes()),
                    ))
                });
                if by_id || by_subject {
                    doomed.push(*id);
                }
            }
        }
        let mut erased = 0;
        // One WAL record a chunk (a delete's ids are logged in one record).
        for chunk in doomed.chunks(format::MAX_DELETE_IDS.min(MAX_DELETE_BATCH)) {
            match self.submit(Op::Delete {
                ids: chunk.to_vec(),
                subjects: Vec::new(),
                seq: None,
            })? {
                super::write::Outcome::Delete(n) => erased += n,
                _ => unreachable!("a delete without a log position yields a delete outcome"),
            }
        }
        Ok(erased)
    }
}

/// Copy the first `len` bytes of `from` to a new file `to`, synced, with a
/// CRC-32 per `block` bytes.
fn copy_checksummed(
    fs: &dyn crate::storage::io::FileSystem,
    mut from: std::fs::File,
    len: u64,
    to: &Path,
    block: u32,
    pace: &mut Pace,
    progress: &ProgressCell,
) -> Result<Vec<u32>> {
    let io = |e| Error::io(to, e);
    let mut out = fs.create(to, Create::New).map_err(io)?;
    let mut buf = vec![0u8; block as usize];
    let mut crcs = Vec::new();
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(u64::from(block))).unwrap_or(block as usize);
        from.read_exact(&mut buf[..n]).map_err(io)?;
        out.write_all(&buf[..n]).map_err(io)?;
        crcs.push(crc32fast::hash(&buf[..n]));
        left -= n as u64;
        progress.add_done(0, n as u64);
        pace.step(n as u64);
    }
    out.sync_all().map_err(io)?;
    Ok(crcs)
}

/// A CRC-32 per `block` bytes of the first `len` bytes of `f`.
fn checksum_file(
    mut f: std::fs::File,
    path: &Path,
    len: u64,
    block: u32,
    pace: &mut Pace,
    progress: &ProgressCell,
) -> Result<Vec<u32>> {
    let mut buf = vec![0u8; block as usize];
    let mut crcs = Vec::new();
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(u64::from(block))).unwrap_or(block as usize);
        f.read_exact(&mut buf[..n])
            .map_err(|e| Error::io(path, e))?;
        crcs.push(crc32fast::hash(&buf[..n]));
        left -= n as u64;
        progress.add_done(0, n as u64);
        pace.step(n as u64);
    }
    Ok(crcs)
}

/// Copy the file `from` to a new file `to`, synced, a block at a time.
pub(crate) fn copy_synced(
    fs: &dyn crate::storage::io::FileSystem,
    from: &Path,
    to: &Path,
) -> Result<()> {
    let mut src = fs.open_read(from).map_err(|e| Error::io(from, e))?;
    let io = |e| Error::io(to, e);
    let mut out = fs.create(to, Create::New).map_err(io)?;
    let mut buf = vec![0u8; format::BACKUP_BLOCK as usize];
    loop {
        let n = src.read(&mut buf).map_err(|e| Error::io(from, e))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(io)?;
    }
    out.sync_all().map_err(io)
}

/// Write `bytes` to a new file `path` and sync it.
fn write_synced(fs: &dyn crate::storage::io::FileSystem, path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |e| Error::io(path, e);
    let mut f = fs.create(path, Create::New).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Check every file `m` lists in `dir` against its length and checksums.
pub(crate) fn verify_backup_files(dir: &Path, m: &BackupManifest) -> Result<()> {
    let mut buf = vec![0u8; m.block as usize];
    for f in &m.files {
        let path = dir.join(&f.name);
        let mut file = match std::fs::File::open(&path) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::corrupt(
                    &path,
                    0,
                    "file listed in the backup manifest is missing",
                ));
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let actual = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if actual != f.len {
            return Err(Error::corrupt(
                &path,
                actual.min(f.len),
                format!("file is {actual} bytes, the backup manifest says {}", f.len),
            ));
        }
        let mut at = 0u64;
        for &want in &f.crcs {
            let n = usize::try_from((f.len - at).min(u64::from(m.block))).unwrap_or(0);
            file.read_exact(&mut buf[..n])
                .map_err(|e| Error::io(&path, e))?;
            let got = crc32fast::hash(&buf[..n]);
            if got != want {
                // Name the first damaged byte's block.
                return Err(Error::corrupt(
                    &path,
                    at,
                    format!(
                        "the {n} bytes from offset {at} do not match their checksum in the backup \
                         manifest (expected {want:#010x}, computed {got:#010x})"
                    ),
                ));
            }
            at += n as u64;
        }
    }
    Ok(())
}

//! The write-ahead log: append-only files of framed batch records.
//!
//! [`WalWriter`] appends records to a plain file (never through an mmap) and
//! syncs on request; [`replay`] reads a file back, truncating a torn tail and
//! reporting corruption. Grouping of concurrent batches into one write and one
//! fsync (group commit) is the gallery's; record layout is [`crate::storage::format`]'s.

use super::io::{Create, FileSystem, WritableFile};
use crate::error::{Error, Result};
use crate::storage::format::{self, Frame, WalOp};
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};

/// File name of WAL number `n`.
pub(crate) fn file_name(n: u64) -> String {
    format!("wal-{n:016x}.log")
}

/// An open WAL file being appended to.
#[derive(Debug)]
pub(crate) struct WalWriter {
    file: Box<dyn WritableFile>,
    path: PathBuf,
    file_no: u64,
    salt: u32,
    len: u64,
    /// Bytes allocated on disk for this file (`len` ≤ `reserved`), see [`WalWriter::reserve`].
    reserved: u64,
    /// False once the file system said it cannot preallocate.
    can_reserve: bool,
    /// False once the file system refused [`WalWriter::start_writeback`].
    can_start_writeback: bool,
}

/// One record of a group: a payload, and the CRC state of that payload (which
/// the caller computes outside any lock; the writer adds its salt and length).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    pub payload: &'a [u8],
    pub crc: &'a crc32fast::Hasher,
}

impl Record<'_> {
    /// Bytes the record takes in the file, frame included.
    pub(crate) fn framed_len(payload_len: usize) -> u64 {
        (format::RECORD_FRAME_LEN + payload_len) as u64
    }
}

/// Disk space is reserved for the WAL ahead of appends in steps of this size.
const RESERVE_STEP: u64 = 8 << 20;

#[allow(
    clippy::cast_possible_truncation,
    reason = "any 32 bits of the hash make a salt"
)]
fn random_salt(file_no: u64) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(file_no);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    (h.finish() >> 16) as u32
}

impl WalWriter {
    /// Create WAL file `file_no` in `dir`, for vectors of `dim` values, with a
    /// fresh salt; header synced, directory synced.
    pub(crate) fn create(
        fs: &dyn FileSystem,
        dir: &Path,
        file_no: u64,
        dim: usize,
    ) -> Result<WalWriter> {
        let path = dir.join(file_name(file_no));
        let salt = random_salt(file_no);
        let mut file = fs
            .create(&path, Create::New)
            .map_err(|e| Error::io(&path, e))?;
        let written = file
            .write_all(&format::encode_wal_header(salt, file_no, dim_u32(dim)))
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(&path, e))
            .and_then(|()| crate::storage::fs::fsync_dir(fs, dir));
        if let Err(e) = written {
            // A WAL with a partial header is only harmless as the last file:
            // remove it so a later WAL cannot follow it (e.g. on a full disk).
            drop(file);
            let _ = fs.remove_file(&path);
            return Err(e);
        }
        let len = format::WAL_HEADER_LEN as u64;
        Ok(WalWriter {
            file,
            path,
            file_no,
            salt,
            len,
            reserved: len,
            can_reserve: true,
            can_start_writeback: true,
        })
    }

    /// Reopen an existing WAL for appending at `len` (after replay validated it up to there).
    pub(crate) fn reopen(
        fs: &dyn FileSystem,
        path: &Path,
        file_no: u64,
        salt: u32,
        len: u64,
    ) -> Result<WalWriter> {
        let file = fs.open_append(path).map_err(|e| Error::io(path, e))?;
        Ok(WalWriter {
            file,
            path: path.to_owned(),
            file_no,
            salt,
            len,
            reserved: len,
            can_reserve: true,
            can_start_writeback: true,
        })
    }

    /// Make sure the next `extra` bytes appended cannot fail for lack of
    /// space: allocate disk blocks past the end of the file without changing
    /// its size (`fallocate` with `FALLOC_FL_KEEP_SIZE`), a step at a time.
    ///
    /// The gallery calls this *before* it applies a batch, so a full disk
    /// rejects the batch cleanly (nothing applied, nothing written, the
    /// gallery stays writable) instead of failing the append half-way, which
    /// could only be answered by refusing all writes until a reopen. File
    /// systems without preallocation get `Ok` and the old behaviour.
    pub(crate) fn reserve(&mut self, extra: u64) -> std::io::Result<()> {
        let want = self.len + extra;
        if want <= self.reserved || !self.can_reserve {
            return Ok(());
        }
        let stepped = want.div_ceil(RESERVE_STEP) * RESERVE_STEP;
        match self.file.allocate(self.len, stepped - self.len) {
            Ok(()) => self.reserved = stepped,
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                tracing::warn!(file = %self.path.display(), "the file system cannot preallocate: a full disk will stop writes until the gallery is reopened");
                self.can_reserve = false;
            }
            // Not room for a whole step: try for exactly what is needed.
            Err(_) => {
                self.file.allocate(self.len, want - self.len)?;
                self.reserved = want;
            }
        }
        Ok(())
    }

    /// File number.
    pub(crate) fn file_no(&self) -> u64 {
        self.file_no
    }
    /// Bytes written so far (the end of the last record appended).
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
    /// Path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Frame `records` with this file's salt and append them in order, with
    /// as few `writev` calls as the OS allows. Not synced: see [`WalWriter::sync`].
    /// On an error, any prefix of the bytes may have reached the file (a torn
    /// tail that replay drops); the caller must not append again.
    pub(crate) fn append_group(&mut self, records: &[Record<'_>]) -> std::io::Result<()> {
        let frames: Vec<[u8; format::RECORD_FRAME_LEN]> = records
            .iter()
            .map(|r| format::frame_header(self.salt, r.payload.len(), r.crc))
            .collect();
        let mut parts = Vec::with_capacity(records.len() * 2);
        for (frame, r) in frames.iter().zip(records) {
            parts.push(IoSlice::new(frame));
            parts.push(IoSlice::new(r.payload));
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut parts = &mut parts[..];
        while !parts.is_empty() {
            let n = self.file.write_vectored(parts)?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut parts, n);
        }
        self.len += total as u64;
        self.reserved = self.reserved.max(self.len);
        Ok(())
    }

    /// Ask the disk to start writing back what was appended from byte
    /// `from` on, without waiting for it: work done before [`WalWriter::sync`]
    /// then overlaps the write-back, and the sync waits for less. A hint: a
    /// file system that cannot take it is not asked again, and the sync
    /// still makes everything durable.
    pub(crate) fn start_writeback(&mut self, from: u64) {
        if !self.can_start_writeback || from >= self.len {
            return;
        }
        if let Err(e) = self.file.start_writeback(from, self.len - from) {
            tracing::debug!(file = %self.path.display(), error = %e, "no early write-back of the WAL");
            self.can_start_writeback = false;
        }
    }

    /// Make everything appended durable (`fdatasync`).
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// What a replayed WAL file held.
#[derive(Debug)]
pub(crate) struct Replayed {
    pub salt: u32,
    pub ops: Vec<WalOp>,
    /// Length of the valid prefix.
    pub valid_len: u64,
    /// Length of the file as found.
    pub file_len: u64,
}

/// A gallery's dimension as the WAL header stores it.
fn dim_u32(dim: usize) -> u32 {
    // A gallery's dimension is at most MAX_DIM (2,048).
    u32::try_from(dim).unwrap_or(u32::MAX)
}

/// Read WAL file `path` (number `file_no`) of a gallery of `dim` values a
/// vector. A torn tail is reported through `valid_len < file_len` when
/// `is_last`; otherwise it is corruption. A bad record followed by a valid
/// one is always corruption.
pub(crate) fn replay(
    fs: &dyn FileSystem,
    path: &Path,
    file_no: u64,
    is_last: bool,
    dim: usize,
) -> Result<Replayed> {
    let buf = fs.read(path).map_err(|e| Error::io(path, e))?;
    replay_bytes(path, &buf, file_no, is_last, dim)
}

/// [`replay`] of the bytes `buf` of WAL file `path`, already read.
pub(crate) fn replay_bytes(
    path: &Path,
    buf: &[u8],
    file_no: u64,
    is_last: bool,
    dim: usize,
) -> Result<Replayed> {
    if buf.len() < format::WAL_HEADER_LEN && is_last {
        // A crash while creating the file: no record can have been acknowledged in it.
        return Ok(Replayed {
            salt: 0,
            ops: Vec::new(),
            valid_len: 0,
            file_len: buf.len() as u64,
        });
    }
    let (salt, n, file_dim) = format::decode_wal_header(path, buf)?;
    if n != file_no {
        return Err(Error::corrupt(
            path,
            16,
            format!("header says WAL {n:016x}, expected {file_no:016x}"),
        ));
    }
    if file_dim as usize != dim {
        return Err(Error::corrupt(
            path,
            24,
            format!("WAL of vectors of {file_dim} values in a gallery of {dim}"),
        ));
    }
    let mut at = format::WAL_HEADER_LEN;
    let mut ops = Vec::new();
    loop {
        match format::read_frame(salt, buf, at) {
            Frame::End => break,
            Frame::Record { payload, next } => {
                ops.push(format::decode_op(
                    path,
                    (at + format::RECORD_FRAME_LEN) as u64,
                    payload,
                    dim,
                )?);
                at = next;
            }
            Frame::Bad(why) => {
                if !is_last {
                    return Err(Error::corrupt(
                        path,
                        at as u64,
                        format!("{why} in a WAL file that was sealed"),
                    ));
                }
                if let Some(later) = find_valid_record_after(salt, buf, at) {
                    return Err(Error::corrupt(
                        path,
                        at as u64,
                        format!(
                            "{why}, but a valid record follows at offset {later}: not a torn tail"
                        ),
                    ));
                }
                break;
            }
        }
    }
    Ok(Replayed {
        salt,
        ops,
        valid_len: at as u64,
        file_len: buf.len() as u64,
    })
}

/// Offset of any valid record starting after `bad` (records are byte-aligned, so try every offset).
fn find_valid_record_after(salt: u32, buf: &[u8], bad: usize) -> Option<usize> {
    (bad + 1..buf.len().saturating_sub(format::RECORD_FRAME_LEN))
        .find(|&at| matches!(format::read_frame(salt, buf, at), Frame::Record { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::format::encode_delete;
    use crate::storage::io::RealFs;

    /// Append one delete record of `ids`.
    fn append_delete(w: &mut WalWriter, ids: &[u64]) {
        let mut p = Vec::new();
        encode_delete(ids, &mut p);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&p);
        w.append_group(&[Record {
            payload: &p,
            crc: &crc,
        }])
        .unwrap();
    }

    fn write_records(dir: &Path, n: usize) -> (PathBuf, Vec<u64>) {
        let mut w = WalWriter::create(&RealFs, dir, 5, 128).unwrap();
        let mut ends = vec![];
        for i in 0..n {
            append_delete(&mut w, &[i as u64]);
            ends.push(w.len());
        }
        w.sync().unwrap();
        (w.path().to_owned(), ends)
    }

    #[test]
    fn every_truncation_is_a_torn_tail_keeping_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ends) = write_records(dir.path(), 4);
        let full = std::fs::read(&path).unwrap();
        for cut in format::WAL_HEADER_LEN..=full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let r = replay(&RealFs, &path, 5, true, 128).unwrap();
            let whole = ends.iter().filter(|&&e| e <= cut as u64).count();
            assert_eq!(r.ops.len(), whole, "cut at {cut}");
            assert_eq!(
                r.valid_len,
                if whole == 0 {
                    format::WAL_HEADER_LEN as u64
                } else {
                    ends[whole - 1]
                }
            );
        }
    }

    #[test]
    fn garbage_tail_is_torn_but_damage_before_a_valid_record_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ends) = write_records(dir.path(), 3);
        let mut full = std::fs::read(&path).unwrap();
        full.extend_from_slice(&[0xAB; 37]);
        std::fs::write(&path, &full).unwrap();
        let r = replay(&RealFs, &path, 5, true, 128).unwrap();
        assert_eq!((r.ops.len(), r.valid_len), (3, ends[2]));
        // The same garbage in a sealed file is corruption.
        assert!(replay(&RealFs, &path, 5, false, 128).is_err());
        // Damage in the middle record, with a valid record after it.
        let mut mid = std::fs::read(&path).unwrap();
        mid[usize::try_from(ends[0]).unwrap() + 10] ^= 1;
        std::fs::write(&path, &mid).unwrap();
        let err = replay(&RealFs, &path, 5, true, 128).unwrap_err();
        assert!(
            err.to_string().contains(&format!("offset {}", ends[0])),
            "{err}"
        );
    }

    #[test]
    fn early_writeback_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(&RealFs, dir.path(), 5, 128).unwrap();
        let mut written = vec![];
        for i in 0..40u64 {
            let from = w.len();
            // Deletes of 0 to 975 ids: records of 5 bytes to 7.8 KB, across pages.
            let ids: Vec<u64> = (0..i * 25).map(|j| i << 20 | j).collect();
            append_delete(&mut w, &ids);
            w.start_writeback(from);
            // Past the end: nothing to ask for.
            w.start_writeback(w.len());
            written.push(ids);
            if i % 3 == 2 {
                w.sync().unwrap();
            }
        }
        w.sync().unwrap();
        assert!(w.can_start_writeback, "the local file system took the hint");
        let r = replay(&RealFs, w.path(), 5, true, 128).unwrap();
        assert_eq!(r.valid_len, w.len());
        let replayed: Vec<Vec<u64>> = r
            .ops
            .iter()
            .map(|op| match op {
                WalOp::Delete(ids) => ids.clone(),
                other => panic!("not a delete: {other:?}"),
            })
            .collect();
        assert_eq!(replayed, written);
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ends) = write_records(dir.path(), 2);
        let mut full = std::fs::read(&path).unwrap();
        full.extend_from_slice(&[0; 4096]);
        std::fs::write(&path, &full).unwrap();
        let r = replay(&RealFs, &path, 5, true, 128).unwrap();
        assert_eq!((r.ops.len(), r.valid_len), (2, ends[1]));
    }
}

//! File-system protocol: atomic replacement, directory fsync, free space and
//! the data-directory lock, on top of the [`FileSystem`] seam.
//!
//! `atomic_write` means: create a temporary file in the same directory, write,
//! `sync_data`, rename over the target, then fsync the directory, so that after
//! a crash the target holds either the old or the new contents, never a mix.

use super::io::{Create, FileSystem};
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// Suffix of temporary files; any left over after a crash are removed at open.
pub const TMP_SUFFIX: &str = ".tmp";

/// Make the directory entry changes in `dir` durable.
pub fn fsync_dir(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    fs.sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// Bytes available to this process on the file system holding `dir` (`statvfs`).
pub fn available_space(fs: &dyn FileSystem, dir: &Path) -> Result<u64> {
    fs.available_space(dir).map_err(|e| Error::io(dir, e))
}

/// Refuse `what` with [`Error::NoSpace`] unless `needed` bytes are free in `dir`.
pub fn check_space(fs: &dyn FileSystem, dir: &Path, what: &'static str, needed: u64) -> Result<()> {
    let available = available_space(fs, dir)?;
    if available < needed {
        return Err(Error::NoSpace {
            what,
            path: dir.to_owned(),
            needed,
            available,
        });
    }
    Ok(())
}

/// Why an atomic write failed, and whether the new contents may already be in place.
#[derive(Debug)]
pub struct AtomicWriteError {
    /// The failure.
    pub error: Error,
    /// True when the rename happened but the directory fsync failed: the
    /// target may hold either version after a crash, so the caller must not
    /// act as if the old one were still authoritative, nor the new one durable.
    pub renamed: bool,
}

/// Replace `path` with `bytes` atomically and durably (see module docs).
pub fn atomic_write(
    fs: &dyn FileSystem,
    path: &Path,
    bytes: &[u8],
) -> std::result::Result<(), AtomicWriteError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    let res = (|| {
        let mut f = fs
            .create(&tmp, Create::Truncate)
            .map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_data().map_err(|e| Error::io(&tmp, e))
    })();
    if let Err(error) = res {
        let _ = fs.remove_file(&tmp);
        return Err(AtomicWriteError {
            error,
            renamed: false,
        });
    }
    if let Err(e) = fs.rename(&tmp, path) {
        let _ = fs.remove_file(&tmp);
        return Err(AtomicWriteError {
            error: Error::io(path, e),
            renamed: false,
        });
    }
    fsync_dir(fs, dir).map_err(|error| AtomicWriteError {
        error,
        renamed: true,
    })
}

/// An exclusive lock on a data directory, held for the life of the value.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Take the lock file `LOCK` in `dir`, or fail with [`Error::Locked`].
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // flock belongs to the open file description, which a fork shares until
        // the child execs: a process that spawns a child just as it releases the
        // lock can leave it held for a moment. Retry briefly before giving up.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(DirLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked { path }),
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
        }
    }
}

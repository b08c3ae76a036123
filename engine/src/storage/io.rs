//! The seam between the engine and the file system: every effect the engine
//! has on files goes through [`FileSystem`] and the [`WritableFile`]s it
//! opens, so a test can put a fault-injecting implementation in its place
//! (a failed fsync, a short write at any byte, a full disk, a failing rename
//! or directory sync) without flags on the production types.
//!
//! [`RealFs`] is the production implementation: plain `std::fs` calls,
//! `fallocate` for reservations, `statvfs` for free space, and the one memory
//! map of `storage::mmap`. What the engine *means* by these calls (atomic
//! replacement, the WAL's append protocol, sealing a segment) is the business
//! of the modules above: [`super::fs`], `wal`, `segment`.
//!
//! The data directory's lock file ([`super::fs::DirLock`]) is the one thing
//! outside the seam: it guards against other processes, not against the disk.

pub use super::mmap::MappedFile;
use std::ffi::OsString;
use std::fmt::Debug;
use std::io::{self, Write};
use std::path::Path;

/// A file opened for writing: appended to (the WAL) or written once and
/// sealed (segments, temporary files of atomic replacements).
pub trait WritableFile: Write + Send + Sync + Debug {
    /// Write `buf` at `offset` without moving the append position (a segment
    /// writes its header last, at offset 0).
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make the written data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Make the written data and the metadata durable (`fsync`).
    fn sync_all(&self) -> io::Result<()>;
    /// Allocate disk blocks for `len` bytes from `offset` without changing the
    /// file's size (`fallocate` with `FALLOC_FL_KEEP_SIZE`). A file system that
    /// cannot preallocate answers with [`io::ErrorKind::Unsupported`].
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Truncate or extend the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Start writing back the `len` bytes written from `offset`, without
    /// waiting for them (`posix_fadvise(POSIX_FADV_DONTNEED)`: Linux starts
    /// the write-back of the range's dirty pages, and drops only its pages
    /// already clean). A hint: it makes nothing durable and loses nothing.
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Whether the file bypasses the page cache (opened by
    /// [`FileSystem::create_direct`] on a file system that allows it): then
    /// every write must start at a multiple of [`DIRECT_ALIGN`], from memory
    /// aligned to it, and cover a multiple of it.
    fn direct(&self) -> bool {
        false
    }
}

/// The alignment of offsets, lengths and memory that writes to a
/// [`WritableFile::direct`] file keep (the largest logical block size of
/// common devices).
pub const DIRECT_ALIGN: usize = 4096;

/// How [`FileSystem::create`] treats an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Fail with [`io::ErrorKind::AlreadyExists`] if the file exists.
    New,
    /// Truncate an existing file.
    Truncate,
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// File name (no directory).
    pub name: OsString,
    /// Size in bytes (0 if it could not be read).
    pub len: u64,
    /// Whether it is a directory.
    pub is_dir: bool,
}

/// Everything the engine does to files.
pub trait FileSystem: Send + Sync + Debug {
    /// Create a directory (its parent must exist).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Create a directory and any missing parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Remove a directory and everything in it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The entries of a directory, in no particular order.
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// The whole contents of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Create a file for writing.
    fn create(&self, path: &Path, how: Create) -> io::Result<Box<dyn WritableFile>>;
    /// Create a new file (failing if it exists) for writing once,
    /// sequentially, in large aligned pieces, bypassing the page cache where
    /// the file system allows it (`O_DIRECT`; see [`WritableFile::direct`]).
    /// Segments are written so: the bytes go to the disk without a copy into
    /// memory the kernel must then write back, and without evicting the
    /// pages searches use. Elsewhere, a file like [`FileSystem::create`]'s.
    fn create_direct(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.create(path, Create::New)
    }
    /// Open an existing file for appending.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Rename `from` to `to`, replacing `to` (atomic on POSIX file systems).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Unlink a file (mappings of it stay valid).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Make the entries of a directory durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Bytes available to this process on the file system holding `dir`.
    fn available_space(&self, dir: &Path) -> io::Result<u64>;
    /// Map a sealed file read-only.
    fn map(&self, path: &Path) -> io::Result<MappedFile>;
    /// Open a file for reading (backups copy through it; an open file stays
    /// readable after it is unlinked).
    fn open_read(&self, path: &Path) -> io::Result<std::fs::File> {
        std::fs::File::open(path)
    }
    /// Make `to` a second name of the file `from` (a hard link). File systems
    /// that cannot (another device, or a test double) say so, and the caller
    /// copies instead.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let _ = (from, to);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// The operating system's file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile(std::fs::File, bool);

impl Write for RealFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl WritableFile for RealFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        match rustix::fs::fallocate(&self.0, rustix::fs::FallocateFlags::KEEP_SIZE, offset, len) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::NOSYS) => {
                Err(io::ErrorKind::Unsupported.into())
            }
            Err(e) => Err(e.into()),
        }
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        let Some(len) = std::num::NonZeroU64::new(len) else {
            return Ok(());
        };
        rustix::fs::fadvise(&self.0, offset, Some(len), rustix::fs::Advice::DontNeed)?;
        Ok(())
    }
    fn direct(&self) -> bool {
        self.1
    }
}

impl FileSystem for RealFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        std::fs::read_dir(dir)?
            .map(|e| {
                let e = e?;
                Ok(DirEntry {
                    name: e.file_name(),
                    len: e.metadata().map_or(0, |m| m.len()),
                    // Following a symbolic link, as `Path::is_dir` does.
                    is_dir: e.path().is_dir(),
                })
            })
            .collect()
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        std::fs::exists(path)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn create(&self, path: &Path, how: Create) -> io::Result<Box<dyn WritableFile>> {
        let mut o = std::fs::OpenOptions::new();
        o.write(true);
        match how {
            Create::New => o.create_new(true),
            Create::Truncate => o.create(true).truncate(true),
        };
        Ok(Box::new(RealFile(o.open(path)?, false)))
    }
    fn create_direct(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        use std::os::unix::fs::OpenOptionsExt;
        #[allow(
            clippy::cast_possible_wrap,
            reason = "open(2)'s flags are a C int; O_DIRECT is a small bit"
        )]
        let direct = rustix::fs::OFlags::DIRECT.bits() as i32;
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(direct)
            .open(path);
        match opened {
            Ok(f) => Ok(Box::new(RealFile(f, true))),
            // A file system without direct I/O refuses the flag, possibly
            // after creating the file (an existing one gives EEXIST first):
            // open it without.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(path)?;
                Ok(Box::new(RealFile(f, false)))
            }
            Err(e) => Err(e),
        }
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let f = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(Box::new(RealFile(f, false)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
    fn available_space(&self, dir: &Path) -> io::Result<u64> {
        let s = rustix::fs::statvfs(dir)?;
        Ok(s.f_bavail.saturating_mul(s.f_frsize))
    }
    fn map(&self, path: &Path) -> io::Result<MappedFile> {
        MappedFile::open(path)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }
}

//! A fault-injecting [`FileSystem`] for tests: the real file system, except
//! for the operations a test asks to fail.
//!
//! A test opens the engine with [`Engine::open_with_fs`](visage_engine::Engine::open_with_fs)
//! on a [`FaultyFs`], then arms faults in one line each:
//!
//! ```ignore
//! fs.inject(Fault::on(Op::Sync, "wal-"));                         // the next WAL fsync fails
//! fs.inject(Fault::on(Op::Write, "wal-").short(8));               // a WAL append stops after 8 bytes
//! fs.inject(Fault::on(Op::Allocate, "wal-").no_space());          // the WAL cannot reserve space
//! fs.inject(Fault::on(Op::Create, "seg-").always());              // segment files cannot be created
//! fs.inject(Fault::on(Op::Rename, "MANIFEST"));                   // the manifest's atomic rename fails
//! fs.inject(Fault::on(Op::SyncDir, "galleries/g").after(Op::Rename, "MANIFEST"));
//! ```
//!
//! A fault matches a path when the path contains its pattern. Files keep the
//! shared fault list, so a fault armed after a file was opened (the WAL is
//! opened when the gallery is) still reaches it.

use std::io::{self, IoSlice, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use visage_engine::io::{Create, DirEntry, FileSystem, MappedFile, RealFs, WritableFile};

/// The operations a fault can break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Creating a file.
    Create,
    /// Writing to a file (appends and positioned writes).
    Write,
    /// `fsync` / `fdatasync` of a file.
    Sync,
    /// Preallocating space for a file.
    Allocate,
    /// Renaming onto a path.
    Rename,
    /// Unlinking a file.
    Remove,
    /// `fsync` of a directory.
    SyncDir,
}

/// One fault: which operation on which paths, how often, and what it does.
#[derive(Debug, Clone)]
pub struct Fault {
    op: Op,
    pattern: String,
    /// `None`: until [`FaultyFs::clear`].
    times: Option<usize>,
    /// For writes: bytes that still go through before the failure.
    short: usize,
    no_space: bool,
    /// Armed only once this operation succeeded on a matching path.
    after: Option<(Op, String)>,
}

impl Fault {
    /// Fail the next `op` on a path containing `pattern`, once.
    pub fn on(op: Op, pattern: &str) -> Fault {
        Fault {
            op,
            pattern: pattern.to_owned(),
            times: Some(1),
            short: 0,
            no_space: false,
            after: None,
        }
    }
    /// Fail every matching operation until the faults are cleared.
    pub fn always(mut self) -> Fault {
        self.times = None;
        self
    }
    /// For [`Op::Write`]: let `bytes` bytes through first (a short write), then fail.
    pub fn short(mut self, bytes: usize) -> Fault {
        self.short = bytes;
        self
    }
    /// Fail with ENOSPC (a full disk) instead of EIO.
    pub fn no_space(mut self) -> Fault {
        self.no_space = true;
        self
    }
    /// Arm the fault only after `op` succeeded on a path containing `pattern`.
    pub fn after(mut self, op: Op, pattern: &str) -> Fault {
        self.after = Some((op, pattern.to_owned()));
        self
    }

    fn error(&self) -> io::Error {
        if self.no_space {
            return io::Error::from_raw_os_error(28);
        }
        match self.op {
            // What a dying disk answers to a write: EIO.
            Op::Write => io::Error::from_raw_os_error(5),
            Op::Sync => io::Error::other("injected fsync failure"),
            Op::SyncDir => io::Error::other("injected directory fsync failure"),
            op => io::Error::other(format!("injected {op:?} failure").to_lowercase()),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    faults: Mutex<Vec<Fault>>,
    /// How many faults fired so far.
    fired: Mutex<usize>,
    /// Creations held until released (see [`FaultyFs::hold`]).
    holds: Mutex<Vec<Arc<Hold>>>,
    /// Free space to report instead of the real file system's (see
    /// [`FaultyFs::set_available`]).
    available: Mutex<Option<u64>>,
}

/// A creation of a file whose path contains `pattern`, held (the creating
/// thread waits) until [`Hold::release`]: a test sees an operation stopped
/// at a known point, with no sleep.
#[derive(Debug)]
pub struct Hold {
    pattern: String,
    /// (reached, released)
    state: Mutex<(bool, bool)>,
    cv: std::sync::Condvar,
}

impl Hold {
    /// Wait until a creation reached the hold.
    pub fn wait_reached(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !st.0 {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
    /// Let the held creation (and every later one) go on.
    pub fn release(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.cv.notify_all();
    }
    fn pass(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 = true;
        self.cv.notify_all();
        while !st.1 {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Shared {
    fn faults(&self) -> MutexGuard<'_, Vec<Fault>> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before `op` on `path`: the error to fail with, if a fault fires.
    /// For writes, `len` is the size of the write; a short write answers
    /// `Ok(n)` with the bytes that may still go through.
    fn check(&self, op: Op, path: &Path, len: usize) -> io::Result<usize> {
        let path = path.to_string_lossy();
        let mut faults = self.faults();
        let Some(i) = faults
            .iter()
            .position(|f| f.op == op && f.after.is_none() && path.contains(&f.pattern))
        else {
            return Ok(len);
        };
        let f = &mut faults[i];
        if f.short > 0 {
            let n = f.short.min(len);
            f.short -= n;
            return Ok(n);
        }
        let err = f.error();
        match &mut f.times {
            Some(1) => {
                faults.remove(i);
            }
            Some(n) => *n -= 1,
            None => {}
        }
        *self.fired.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Err(err)
    }

    /// After `op` succeeded on `path`: arm the faults waiting for it.
    fn done(&self, op: Op, path: &Path) {
        let path = path.to_string_lossy();
        for f in self.faults().iter_mut() {
            if f.after
                .as_ref()
                .is_some_and(|(o, p)| *o == op && path.contains(p.as_str()))
            {
                f.after = None;
            }
        }
    }

    fn run<T>(&self, op: Op, path: &Path, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        self.check(op, path, 0)?;
        let out = f()?;
        self.done(op, path);
        Ok(out)
    }
}

/// The real file system with faults on request.
#[derive(Debug, Default)]
pub struct FaultyFs {
    shared: Arc<Shared>,
}

impl FaultyFs {
    /// A file system with no fault armed.
    pub fn new() -> Arc<FaultyFs> {
        Arc::new(FaultyFs::default())
    }
    /// Arm a fault.
    pub fn inject(&self, fault: Fault) {
        self.shared.faults().push(fault);
    }
    /// Disarm every fault.
    pub fn clear(&self) {
        self.shared.faults().clear();
    }
    /// Hold the next creations of files whose path contains `pattern`
    /// until the returned hold is released.
    pub fn hold(&self, pattern: &str) -> Arc<Hold> {
        let h = Arc::new(Hold {
            pattern: pattern.to_owned(),
            state: Mutex::new((false, false)),
            cv: std::sync::Condvar::new(),
        });
        self.shared
            .holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(h.clone());
        h
    }
    /// Report `bytes` free on every directory (`None`: the real figure).
    pub fn set_available(&self, bytes: Option<u64>) {
        *self
            .shared
            .available
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = bytes;
    }
    /// How many faults have fired.
    pub fn fired(&self) -> usize {
        *self.shared.fired.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Box<dyn WritableFile>,
    path: std::path::PathBuf,
    shared: Arc<Shared>,
}

impl Write for FaultyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.shared.check(Op::Write, &self.path, buf.len())?;
        self.inner.write(&buf[..n])
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let total = bufs.iter().map(|b| b.len()).sum();
        let n = self.shared.check(Op::Write, &self.path, total)?;
        if n == total {
            return self.inner.write_vectored(bufs);
        }
        // A short write: the first `n` bytes of the slices, then the caller
        // comes back for the rest and gets the error.
        let prefix: Vec<u8> = bufs
            .iter()
            .flat_map(|b| b.iter().copied())
            .take(n)
            .collect();
        self.inner.write(&prefix)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl WritableFile for FaultyFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let n = self.shared.check(Op::Write, &self.path, buf.len())?;
        self.inner.write_all_at(&buf[..n], offset)?;
        if n < buf.len() {
            return Err(io::Error::from_raw_os_error(5));
        }
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.shared
            .run(Op::Sync, &self.path, || self.inner.sync_data())
    }
    fn sync_all(&self) -> io::Result<()> {
        self.shared
            .run(Op::Sync, &self.path, || self.inner.sync_all())
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.shared.run(Op::Allocate, &self.path, || {
            self.inner.allocate(offset, len)
        })
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

impl FileSystem for FaultyFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        RealFs.create_dir(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        RealFs.create_dir_all(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        RealFs.remove_dir_all(path)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        RealFs.read_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        RealFs.exists(path)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        RealFs.read(path)
    }
    fn create(&self, path: &Path, how: Create) -> io::Result<Box<dyn WritableFile>> {
        let text = path.to_string_lossy();
        let hold = self
            .shared
            .holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|h| text.contains(&h.pattern))
            .cloned();
        if let Some(h) = hold {
            h.pass();
        }
        let inner = self
            .shared
            .run(Op::Create, path, || RealFs.create(path, how))?;
        Ok(Box::new(FaultyFile {
            inner,
            path: path.to_owned(),
            shared: self.shared.clone(),
        }))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        Ok(Box::new(FaultyFile {
            inner: RealFs.open_append(path)?,
            path: path.to_owned(),
            shared: self.shared.clone(),
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.shared.run(Op::Rename, to, || RealFs.rename(from, to))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.shared
            .run(Op::Remove, path, || RealFs.remove_file(path))
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.shared.run(Op::SyncDir, dir, || RealFs.sync_dir(dir))
    }
    fn available_space(&self, dir: &Path) -> io::Result<u64> {
        let set = *self
            .shared
            .available
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        set.map_or_else(|| RealFs.available_space(dir), Ok)
    }
    fn map(&self, path: &Path) -> io::Result<MappedFile> {
        RealFs.map(path)
    }
}

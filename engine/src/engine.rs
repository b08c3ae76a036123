//! The engine: a data directory holding many galleries, under an exclusive lock.
//!
//! Layout: `DIR/LOCK` (the lock file) and `DIR/galleries/NAME/` (one directory
//! per gallery, see [`crate::storage::format`]). Creating a gallery writes its first
//! WAL and manifest before the directory counts; a directory without a
//! manifest is a creation that crashed and is removed at open. Dropping renames
//! the directory to `NAME.dropping` (durably) and then removes it, so a crash
//! mid-drop cannot leave a half-deleted gallery that opens.

use crate::api::{BackupOptions, BackupReport, GallerySpec, RestoreReport};
use crate::error::{Error, Result, shown};
use crate::gallery::{BACKUP, ERASURE_KEY, Gallery, GalleryOptions, MANIFEST};
use crate::storage::format;
use crate::storage::fs::{DirLock, fsync_dir};
use crate::storage::io::{FileSystem, RealFs};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Settings of an engine (applied to every gallery).
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Settings of each gallery.
    pub gallery: GalleryOptions,
}

const DROPPING: &str = ".dropping";
/// Suffix of a gallery being restored (removed at open if a crash interrupted it).
const RESTORING: &str = ".restoring";

/// Check a backup name: the rules of gallery names (so it cannot leave the
/// backup root), and not `erasures` (the root's folder of erasure logs).
pub fn check_backup_name(name: &str) -> Result<()> {
    match check_gallery_name(name) {
        Err(Error::InvalidName { name, reason }) => Err(Error::InvalidBackupName { name, reason }),
        Err(e) => Err(e),
        Ok(()) if name == crate::gallery::ERASURES_DIR => Err(Error::InvalidBackupName {
            name: name.to_owned(),
            reason: "is the backup root's folder of erasure logs",
        }),
        Ok(()) => Ok(()),
    }
}

/// An open data directory.
#[derive(Debug)]
pub struct Engine {
    root: PathBuf,
    galleries_dir: PathBuf,
    opts: EngineOptions,
    galleries: RwLock<BTreeMap<String, Arc<Gallery>>>,
    /// Names being restored: taken, but not yet galleries.
    restoring: std::sync::Mutex<std::collections::BTreeSet<String>>,
    fs: Arc<dyn FileSystem>,
    _lock: DirLock,
}

/// Check a gallery name: 1 to 64 characters from `A-Z a-z 0-9 _ -`, starting with a letter or digit.
pub fn check_gallery_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "is empty"
    } else if name.len() > 64 {
        "is longer than 64 characters"
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        "may hold only letters, digits, '_' and '-'"
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        "must start with a letter or digit"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: shown(name),
        reason,
    })
}

impl Engine {
    /// Open (creating if needed) the data directory `root` and every gallery in it.
    pub fn open(root: impl AsRef<Path>, opts: EngineOptions) -> Result<Engine> {
        Self::open_with_fs(root, opts, Arc::new(RealFs))
    }

    /// [`Engine::open`] with every file operation going through `fs` (tests
    /// pass a fault-injecting implementation). The directory lock is taken on
    /// the real file system.
    pub fn open_with_fs(
        root: impl AsRef<Path>,
        opts: EngineOptions,
        fs: Arc<dyn FileSystem>,
    ) -> Result<Engine> {
        let root = root.as_ref().to_owned();
        fs.create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        let lock = DirLock::acquire(&root)?;
        let galleries_dir = root.join("galleries");
        fs.create_dir_all(&galleries_dir)
            .map_err(|e| Error::io(&galleries_dir, e))?;
        let mut galleries = BTreeMap::new();
        let entries = fs
            .read_dir(&galleries_dir)
            .map_err(|e| Error::io(&galleries_dir, e))?;
        for entry in entries {
            let name = entry.name.to_string_lossy().into_owned();
            let path = galleries_dir.join(&entry.name);
            if !entry.is_dir {
                continue;
            }
            if name.ends_with(RESTORING) {
                tracing::info!(dir = %path.display(), "removing a restore that was interrupted");
                fs.remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
                continue;
            }
            if name.ends_with(DROPPING) {
                tracing::info!(dir = %path.display(), "finishing an interrupted gallery drop");
                fs.remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
                continue;
            }
            if check_gallery_name(&name).is_err() {
                tracing::warn!(dir = %path.display(), "ignoring directory that is not a gallery");
                continue;
            }
            let manifest = path.join(MANIFEST);
            if !fs.exists(&manifest).map_err(|e| Error::io(&manifest, e))? {
                tracing::info!(dir = %path.display(), "removing gallery whose creation was interrupted");
                fs.remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
                continue;
            }
            let g = Gallery::open(fs.clone(), &name, &path, opts.gallery.clone())?;
            galleries.insert(name, g);
        }
        fsync_dir(&*fs, &galleries_dir)?;
        Ok(Engine {
            root,
            galleries_dir,
            opts,
            galleries: RwLock::new(galleries),
            restoring: Default::default(),
            fs,
            _lock: lock,
        })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Create an empty gallery of the default spec: 128 values a vector, no
    /// model recorded, not normalising.
    pub fn create_gallery(&self, name: &str) -> Result<Arc<Gallery>> {
        self.create_gallery_with(name, &GallerySpec::default())
    }

    /// Create an empty gallery for vectors of `spec.dim` values made by
    /// `spec.model`, normalised if `spec.normalize`; all three are fixed for
    /// the gallery's life.
    pub fn create_gallery_with(&self, name: &str, spec: &GallerySpec) -> Result<Arc<Gallery>> {
        check_gallery_name(name)?;
        if let Some(reason) = spec.problem() {
            return Err(Error::InvalidSpec { reason });
        }
        let mut map = self.galleries.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(name) || self.lock_restoring().contains(name) {
            return Err(Error::GalleryExists(name.to_owned()));
        }
        let dir = self.galleries_dir.join(name);
        let fs = &*self.fs;
        if fs.exists(&dir).map_err(|e| Error::io(&dir, e))? {
            // Left behind by a creation that crashed after the last open: start over.
            fs.remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        if let Err(e) = Gallery::create_files(fs, &dir, spec) {
            let _ = fs.remove_dir_all(&dir);
            return Err(e);
        }
        fsync_dir(fs, &self.galleries_dir)?;
        let g = Gallery::open(self.fs.clone(), name, &dir, self.opts.gallery.clone())?;
        map.insert(name.to_owned(), g.clone());
        Ok(g)
    }

    /// Drop a gallery and delete its files.
    pub fn drop_gallery(&self, name: &str) -> Result<()> {
        let mut map = self.galleries.write().unwrap_or_else(|e| e.into_inner());
        let g = map
            .get(name)
            .cloned()
            .ok_or_else(|| Error::GalleryNotFound(shown(name)))?;
        g.close();
        let dir = self.galleries_dir.join(name);
        let doomed = self.galleries_dir.join(format!("{name}{DROPPING}"));
        let fs = &*self.fs;
        fs.rename(&dir, &doomed).map_err(|e| Error::io(&dir, e))?;
        map.remove(name);
        fsync_dir(fs, &self.galleries_dir)?;
        fs.remove_dir_all(&doomed)
            .map_err(|e| Error::io(&doomed, e))?;
        Ok(())
    }

    /// The gallery called `name`.
    pub fn gallery(&self, name: &str) -> Result<Arc<Gallery>> {
        self.galleries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| Error::GalleryNotFound(shown(name)))
    }

    /// The backup root (`GalleryOptions::backup_root`), if backups are on.
    pub fn backup_root(&self) -> Option<&Path> {
        self.opts.gallery.backup_root.as_deref()
    }

    fn backup_dir(&self, name: &str) -> Result<PathBuf> {
        check_backup_name(name)?;
        let root = self.backup_root().ok_or_else(|| Error::BackupRefused {
            name: name.to_owned(),
            reason: "backups are off: no backup root is set".into(),
        })?;
        Ok(root.join(name))
    }

    /// Back up gallery `gallery` as `name` under the backup root while it
    /// serves: a consistent copy as of one WAL position (see
    /// `gallery/backup.rs`). Refused if a backup of that name exists (even
    /// an interrupted one: remove it first).
    pub fn backup(&self, gallery: &str, name: &str, opts: &BackupOptions) -> Result<BackupReport> {
        let dest = self.backup_dir(name)?;
        let g = self.gallery(gallery)?;
        if self.fs.exists(&dest).map_err(|e| Error::io(&dest, e))? {
            let complete = self
                .fs
                .exists(&dest.join(BACKUP))
                .map_err(|e| Error::io(&dest, e))?;
            return Err(Error::BackupRefused {
                name: name.to_owned(),
                reason: if complete {
                    format!("{} exists already", dest.display())
                } else {
                    format!(
                        "{} exists already, left by an interrupted backup (no {BACKUP} in it): \
                         remove it first",
                        dest.display()
                    )
                },
            });
        }
        let root = dest.parent().unwrap_or(Path::new(".")).to_owned();
        g.backup_to(&dest, &root, opts)
    }

    /// Check backup `name`: its manifest, and every byte of every file it
    /// lists against their checksums. Returns its manifest.
    pub fn verify_backup(&self, name: &str) -> Result<format::BackupManifest> {
        let dir = self.backup_dir(name)?;
        if !self.fs.exists(&dir).map_err(|e| Error::io(&dir, e))? {
            return Err(Error::BackupNotFound(shown(name)));
        }
        let mpath = dir.join(BACKUP);
        let bytes = match self.fs.read(&mpath) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::corrupt(
                    &mpath,
                    0,
                    "the backup is incomplete: it has no backup manifest (the backup was \
                     interrupted before it finished)",
                ));
            }
            Err(e) => return Err(Error::io(&mpath, e)),
        };
        let m = format::decode_backup(&mpath, &bytes)?;
        crate::gallery::verify_backup_files(&dir, &m)?;
        for needed in [MANIFEST, ERASURE_KEY] {
            if !m.files.iter().any(|f| f.name == needed) {
                return Err(Error::corrupt(
                    &mpath,
                    0,
                    format!("the backup manifest lists no {needed}"),
                ));
            }
        }
        Ok(m)
    }

    /// Restore backup `name` as a new gallery `gallery` (a name no gallery
    /// has: a new one, or one dropped). Every checksum is verified before
    /// anything is installed; the erasures logged after the backup's cut
    /// (in the mirrored erasure log under the backup root) are applied and
    /// the gallery compacted before it is opened for service. The restored
    /// gallery starts an erasure log of its own.
    pub fn restore(&self, name: &str, gallery: &str) -> Result<RestoreReport> {
        check_gallery_name(gallery)?;
        let src = self.backup_dir(name)?;
        if self
            .galleries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(gallery)
        {
            return Err(Error::GalleryExists(gallery.to_owned()));
        }
        let m = self.verify_backup(name)?;
        let fs = &*self.fs;
        let kpath = src.join(ERASURE_KEY);
        let kbytes = fs.read(&kpath).map_err(|e| Error::io(&kpath, e))?;
        let (lineage, key) = format::decode_erasure_key(&kpath, &kbytes)?;
        if lineage != m.lineage {
            return Err(Error::corrupt(
                &kpath,
                12,
                "the erasure key belongs to another gallery than the backup manifest's",
            ));
        }
        let root = src.parent().unwrap_or(Path::new(".")).to_owned();
        let lpath = crate::gallery::mirror_path(&root, &lineage);
        let log = match fs.read(&lpath) {
            Ok(b) => format::decode_erasures(&lpath, &b)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::BackupRefused {
                    name: name.to_owned(),
                    reason: format!(
                        "its gallery's erasure log {} is missing: restoring could bring back \
                         people erased since the backup",
                        lpath.display()
                    ),
                });
            }
            Err(e) => return Err(Error::io(&lpath, e)),
        };
        let position = usize::try_from(m.erasure_position).unwrap_or(usize::MAX);
        if log.lineage != lineage || log.records.len() < position {
            return Err(Error::BackupRefused {
                name: name.to_owned(),
                reason: format!(
                    "the erasure log {} holds {} records, fewer than the {} it held at the \
                     backup: it is not this gallery's or was cut",
                    lpath.display(),
                    log.records.len(),
                    m.erasure_position
                ),
            });
        }
        let pending = &log.records[position..];
        // Take the name (no gallery may be created under it meanwhile); the
        // other galleries serve on while the files are copied and erased.
        {
            let map = self.galleries.read().unwrap_or_else(|e| e.into_inner());
            if map.contains_key(gallery) || !self.lock_restoring().insert(gallery.to_owned()) {
                return Err(Error::GalleryExists(gallery.to_owned()));
            }
        }
        let _taken = Taken(self, gallery);
        let dir = self.galleries_dir.join(gallery);
        let staging = self.galleries_dir.join(format!("{gallery}{RESTORING}"));
        let res = (|| -> Result<(u64, u64)> {
            for p in [&dir, &staging] {
                if fs.exists(p).map_err(|e| Error::io(p, e))? {
                    // Left by a creation or restore that crashed.
                    fs.remove_dir_all(p).map_err(|e| Error::io(p, e))?;
                }
            }
            fs.create_dir(&staging)
                .map_err(|e| Error::io(&staging, e))?;
            for f in &m.files {
                if f.name == ERASURE_KEY {
                    continue;
                }
                let (from, to) = (src.join(&f.name), staging.join(&f.name));
                // Segments are immutable: share them with the backup when the
                // file system can. The WAL is appended to: always a copy.
                let linked = f.name.starts_with("seg-") && fs.hard_link(&from, &to).is_ok();
                if !linked {
                    crate::gallery::copy_synced(fs, &from, &to)?;
                }
            }
            fsync_dir(fs, &staging)?;
            let opts = GalleryOptions {
                background: false,
                ..self.opts.gallery.clone()
            };
            let g = Gallery::open(self.fs.clone(), gallery, &staging, opts)?;
            let erased = g.erase_matching(&key, pending)?;
            if erased > 0 {
                g.compact()?;
            }
            g.close();
            drop(g);
            fs.rename(&staging, &dir)
                .map_err(|e| Error::io(&staging, e))?;
            fsync_dir(fs, &self.galleries_dir)?;
            Ok((pending.len() as u64, erased))
        })();
        let (applied, erased) = match res {
            Ok(x) => x,
            Err(e) => {
                let _ = fs.remove_dir_all(&staging);
                return Err(e);
            }
        };
        let g = Gallery::open(self.fs.clone(), gallery, &dir, self.opts.gallery.clone())?;
        self.galleries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(gallery.to_owned(), g.clone());
        Ok(RestoreReport {
            source_gallery: m.gallery,
            erasures_applied: applied,
            rows_erased: erased,
            stats: g.stats(),
        })
    }

    /// The files of complete backup `name`, as paths relative to the
    /// backup root, in an order that recreates it safely elsewhere: its
    /// files, the gallery's erasure-log mirror, and the backup manifest
    /// last (a copy without it is refused as incomplete). A cluster node
    /// sends these to a node that starts a shard from a copy.
    pub fn backup_files(&self, name: &str) -> Result<Vec<String>> {
        let m = self.verify_backup(name)?;
        let mut out: Vec<String> = m
            .files
            .iter()
            .map(|f| format!("{name}/{}", f.name))
            .collect();
        let mirror = crate::gallery::mirror_path(Path::new(""), &m.lineage);
        out.push(mirror.to_string_lossy().into_owned());
        out.push(format!("{name}/{BACKUP}"));
        Ok(out)
    }

    /// Remove backup `name` (its directory; the erasure-log mirror stays,
    /// other backups of the gallery may need it). Nothing if it is absent.
    pub fn remove_backup(&self, name: &str) -> Result<()> {
        let dir = self.backup_dir(name)?;
        match self.fs.remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&dir, e)),
        }
    }

    fn lock_restoring(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.restoring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Names of all galleries, sorted.
    pub fn list_galleries(&self) -> Vec<String> {
        self.galleries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

/// A name taken by a restore, released when the restore ends.
struct Taken<'a>(&'a Engine, &'a str);

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.0.lock_restoring().remove(self.1);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Stop background work and refuse further writes through handles that
        // outlive the engine: the directory lock is released with `self`.
        for g in self
            .galleries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            g.close();
        }
    }
}

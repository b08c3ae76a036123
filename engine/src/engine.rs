//! The engine: a data directory holding many galleries, under an exclusive lock.
//!
//! Layout: `DIR/LOCK` (the lock file) and `DIR/galleries/NAME/` (one directory
//! per gallery, see [`crate::storage::format`]). Creating a gallery writes its first
//! WAL and manifest before the directory counts; a directory without a
//! manifest is a creation that crashed and is removed at open. Dropping renames
//! the directory to `NAME.dropping` (durably) and then removes it, so a crash
//! mid-drop cannot leave a half-deleted gallery that opens.

use crate::api::GallerySpec;
use crate::error::{Error, Result, shown};
use crate::gallery::{Gallery, GalleryOptions, MANIFEST};
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

/// An open data directory.
#[derive(Debug)]
pub struct Engine {
    root: PathBuf,
    galleries_dir: PathBuf,
    opts: EngineOptions,
    galleries: RwLock<BTreeMap<String, Arc<Gallery>>>,
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
        if map.contains_key(name) {
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

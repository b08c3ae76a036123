//! The only memory-mapping code in the engine.
//!
//! # Safety
//! A memory map is sound only while nobody truncates or rewrites the file
//! beneath it. The engine maps only *sealed* segment files: written once,
//! fsynced, never opened for writing again, and removed by unlinking (which
//! keeps existing mappings valid). Every gallery directory is guarded by the
//! data directory's exclusive lock ([`crate::storage::fs::DirLock`]), so no other visage
//! process writes there. A user who edits segment files by hand while the
//! engine runs is outside what we can defend against; checksums catch it at
//! the next open. Typed views are made with `bytemuck::try_cast_slice`, which
//! checks length and alignment, so no `unsafe` is needed beyond the map itself.
#![allow(unsafe_code)]

use crate::error::{Error, Result};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The page size advice is rounded to (Linux's on x86-64 and aarch64).
const PAGE: usize = 4096;

/// A read-only mapping of a sealed file, made by
/// [`FileSystem::map`](super::io::FileSystem::map).
#[derive(Debug)]
pub struct MappedFile {
    map: memmap2::Mmap,
    path: PathBuf,
}

impl MappedFile {
    /// Map `path` read-only.
    pub(crate) fn open(path: &Path) -> std::io::Result<MappedFile> {
        let file = File::open(path)?;
        // SAFETY: the file is a sealed segment (see the module's Safety note): it is never
        // written or truncated while mapped, and the directory lock keeps other visage
        // processes out.
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }?;
        Ok(MappedFile {
            map,
            path: path.to_owned(),
        })
    }

    /// Map a file a caller gives to read, such as a bulk import's input:
    /// the caller promises not to change it while it is mapped (the import's
    /// documentation says so; a changed input reads as garbage values, which
    /// the import's checks see as bad rows, or as a fault).
    pub fn open_input(path: &Path) -> std::io::Result<MappedFile> {
        let file = File::open(path)?;
        // SAFETY: a read-only private mapping; the file is not written through
        // it, and the caller promises nobody truncates or rewrites it while
        // mapped (see above).
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }?;
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(MappedFile {
            map,
            path: path.to_owned(),
        })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Tell the kernel that `range` of the file is read at random (no
    /// read-ahead around each fault): the vectors of a segment larger than
    /// memory, of which a search reads only its candidates' rows. Advice only:
    /// a failure changes nothing but speed.
    pub(crate) fn advise_random(&self, range: Range<usize>) {
        self.advise(memmap2::Advice::Random, range);
    }

    /// Tell the kernel that `range` is about to be read in order (a merge
    /// reading a segment's rows): read ahead again.
    pub(crate) fn advise_sequential(&self, range: Range<usize>) {
        self.advise(memmap2::Advice::Sequential, range);
    }

    /// Tell the kernel that the pages of `ranges` (byte ranges ascending by
    /// start) are about to be read, so it reads them all at once instead of
    /// one fault at a time: the rows a search re-ranks, when the vectors
    /// exceed memory. Ranges sharing or touching a page are advised as one.
    /// Advice only: a failure changes nothing but speed.
    pub(crate) fn advise_will_need(&self, ranges: impl IntoIterator<Item = Range<usize>>) {
        for run in page_runs(ranges) {
            self.advise(memmap2::Advice::WillNeed, run);
        }
    }

    fn advise(&self, advice: memmap2::Advice, range: Range<usize>) {
        let start = range.start / PAGE * PAGE;
        let end = range.end.min(self.map.len());
        if start < end {
            let _ = self.map.advise_range(advice, start, end - start);
        }
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// The page-aligned runs that cover `ranges` (ascending by start): ranges
/// that share or touch a page make one run.
fn page_runs(ranges: impl IntoIterator<Item = Range<usize>>) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for r in ranges.into_iter().filter(|r| !r.is_empty()) {
        let (start, end) = (r.start / PAGE * PAGE, r.end.div_ceil(PAGE) * PAGE);
        match runs.last_mut() {
            Some(run) if start <= run.end => run.end = run.end.max(end),
            _ => runs.push(start..end),
        }
    }
    runs
}

/// View `bytes` as a slice of `T`, or say why not.
pub(crate) fn cast<'a, T: bytemuck::Pod>(
    path: &Path,
    offset: u64,
    bytes: &'a [u8],
) -> Result<&'a [T]> {
    bytemuck::try_cast_slice(bytes).map_err(|e| {
        Error::corrupt(
            path,
            offset,
            format!(
                "section cannot be viewed as {}: {e:?}",
                std::any::type_name::<T>()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_runs_cover_every_range_and_merge_those_sharing_or_touching_a_page() {
        // 512-byte rows from byte 100: rows 0, 1, 2 lie in page 0; row 7
        // spans pages 0 and 1; row 16 is in page 2, touching that run's end;
        // row 100 (page 12) stands alone; an empty range is skipped.
        let row = |r: usize| 100 + r * 512..100 + (r + 1) * 512;
        let rows = [
            row(0),
            row(1),
            row(2),
            row(7),
            row(16),
            9000..9000,
            row(100),
        ];
        let runs = page_runs(rows.clone());
        assert_eq!(runs, [0..3 * PAGE, 12 * PAGE..13 * PAGE]);
        for r in rows.into_iter().filter(|r| !r.is_empty()) {
            assert!(
                runs.iter().any(|x| x.start <= r.start && r.end <= x.end),
                "{r:?} covered"
            );
        }
        assert!(page_runs([]).is_empty());
        // One byte at the end of a page, one at the start of the next: touching.
        assert_eq!(
            page_runs([PAGE - 1..PAGE, PAGE..PAGE + 1]),
            vec![0..2 * PAGE]
        );
        // Two pages apart: separate.
        assert_eq!(
            page_runs([0..1, 2 * PAGE..2 * PAGE + 1]),
            [0..PAGE, 2 * PAGE..3 * PAGE]
        );
    }
}

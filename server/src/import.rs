//! The files of a bulk import, as the engine's [`ImportSource`]: vectors from
//! a memory-mapped `.npy` file (read in place, never loaded), subjects from a
//! memory-mapped text file (one per line, read in one pass), ids from an
//! `.npy` file (loaded: 8 bytes a row).
//!
//! Everything that can be checked without reading every vector is checked
//! when the files are opened: the shapes, the dtype, the subjects' line count,
//! the ids' signs. Each error names the file and what is wrong, and the row
//! where it is about one.

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use visage_client::npy::{self, Dtype};
use visage_engine::io::MappedFile;
use visage_engine::{Error, ImportSource, Result};

/// The files of one import, opened and checked.
#[derive(Debug)]
pub struct FileSource {
    vectors: MappedFile,
    /// Offset of the vectors' data in `vectors`.
    offset: usize,
    /// 8 for float64, 4 for float32.
    width: usize,
    rows: usize,
    dim: usize,
    subjects: MappedFile,
    subjects_path: PathBuf,
    /// The next row's subject starts at this byte (subjects are read in order).
    cursor: Mutex<(usize, usize)>,
    ids: Option<Vec<u64>>,
}

fn bad(what: &'static str, reason: String) -> Error {
    Error::BatchShape { what, reason }
}

impl FileSource {
    /// Open and check the files of an import.
    pub fn open(vectors: &Path, subjects: &Path, ids: Option<&Path>) -> Result<FileSource> {
        let (h, offset) = npy::layout(vectors).map_err(|e| bad("vectors", e.to_string()))?;
        let width = match h.dtype {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            other => {
                return Err(bad(
                    "vectors",
                    format!(
                        "{}: dtype {} (vectors must be float32 or float64)",
                        vectors.display(),
                        other.name()
                    ),
                ));
            }
        };
        if h.big_endian || h.fortran_order {
            return Err(bad(
                "vectors",
                format!(
                    "{}: {} (an import maps the file as it is: convert it with \
                     numpy.ascontiguousarray(x, dtype='<f4') and numpy.save)",
                    vectors.display(),
                    if h.big_endian {
                        "big-endian data"
                    } else {
                        "Fortran (column-major) order"
                    }
                ),
            ));
        }
        let [rows, dim] = h.shape[..] else {
            return Err(bad(
                "vectors",
                format!(
                    "{}: shape {:?}, expected (rows, dimension)",
                    vectors.display(),
                    h.shape
                ),
            ));
        };
        let map_err = |what: &'static str, p: &Path, e: std::io::Error| {
            bad(what, format!("{}: cannot map: {e}", p.display()))
        };
        let vmap = MappedFile::open_input(vectors).map_err(|e| map_err("vectors", vectors, e))?;
        let smap =
            MappedFile::open_input(subjects).map_err(|e| map_err("subjects", subjects, e))?;
        let lines = count_lines(smap.bytes());
        if lines != rows {
            return Err(bad(
                "subjects",
                format!(
                    "{} has {lines} lines for {rows} vectors in {} (one subject a line, a line a vector)",
                    subjects.display(),
                    vectors.display()
                ),
            ));
        }
        let ids = match ids {
            None => None,
            Some(p) => {
                let ids = npy::read_ids(p).map_err(|e| bad("ids", e.to_string()))?;
                if ids.len() != rows {
                    return Err(bad(
                        "ids",
                        format!(
                            "{} holds {} ids for {rows} vectors in {}",
                            p.display(),
                            ids.len(),
                            vectors.display()
                        ),
                    ));
                }
                Some(ids)
            }
        };
        Ok(FileSource {
            vectors: vmap,
            offset,
            width,
            rows,
            dim,
            subjects: smap,
            subjects_path: subjects.to_owned(),
            cursor: Mutex::new((0, 0)),
            ids,
        })
    }
}

/// Lines of a text file: its newlines, plus a last line without one.
fn count_lines(b: &[u8]) -> usize {
    let n = b.iter().filter(|&&c| c == b'\n').count();
    n + usize::from(b.last().is_some_and(|&c| c != b'\n'))
}

impl ImportSource for FileSource {
    fn rows(&self) -> usize {
        self.rows
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn vector(&self, row: usize, out: &mut [f32]) {
        let start = self.offset + row * self.dim * self.width;
        let bytes = &self.vectors.bytes()[start..start + self.dim * self.width];
        if self.width == 4 {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        } else {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                // Values beyond f32's range become infinite, which the import refuses.
                *o = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32;
            }
        }
    }

    fn subjects(&self, range: Range<usize>) -> Result<Vec<String>> {
        let mut cursor = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let (next_row, mut pos) = *cursor;
        if next_row != range.start {
            return Err(bad(
                "subjects",
                format!(
                    "rows {}..{} asked for after row {next_row} (subjects are read in order)",
                    range.start, range.end
                ),
            ));
        }
        let bytes = self.subjects.bytes();
        let mut out = Vec::with_capacity(range.len());
        for row in range.clone() {
            let end = bytes[pos..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(bytes.len(), |i| pos + i);
            let mut line = &bytes[pos..end];
            // Files written on Windows: the line ends with "\r\n".
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            let s = std::str::from_utf8(line).map_err(|e| {
                bad(
                    "subjects",
                    format!(
                        "{} line {} (row {row}) is not UTF-8: {e}",
                        self.subjects_path.display(),
                        row + 1
                    ),
                )
            })?;
            out.push(s.to_owned());
            pos = (end + 1).min(bytes.len());
        }
        *cursor = (range.end, pos);
        Ok(out)
    }

    fn ids(&self) -> Result<Option<Cow<'_, [u64]>>> {
        Ok(self.ids.as_deref().map(Cow::Borrowed))
    }
}

#[cfg(test)]
mod tests {
    use super::count_lines;

    #[test]
    fn lines_are_counted_with_or_without_a_last_newline() {
        assert_eq!(count_lines(b""), 0);
        assert_eq!(count_lines(b"a"), 1);
        assert_eq!(count_lines(b"a\n"), 1);
        assert_eq!(count_lines(b"a\nb"), 2);
        assert_eq!(count_lines(b"a\n\n"), 2);
    }
}

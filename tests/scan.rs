//! Searching the files of a data directory for bytes that must (or must not)
//! be there: the erasure tests of the engine and of the server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Length of the windows [`Windows`] looks for.
pub const WINDOW: usize = 64;

/// A vector as the little-endian bytes the files hold.
pub fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Whether `needle` occurs anywhere in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every [`WINDOW`]-byte window of some needles, indexed by its first 8 bytes.
pub struct Windows<'a> {
    needles: &'a [Vec<u8>],
    index: HashMap<[u8; 8], Vec<(usize, usize)>>,
}

impl<'a> Windows<'a> {
    /// Index the windows of `needles` (each at least [`WINDOW`] bytes).
    pub fn new(needles: &'a [Vec<u8>]) -> Windows<'a> {
        let mut index: HashMap<[u8; 8], Vec<(usize, usize)>> = HashMap::new();
        for (n, b) in needles.iter().enumerate() {
            for off in 0..=b.len() - WINDOW {
                let key: [u8; 8] = b[off..off + 8].try_into().expect("8 bytes");
                index.entry(key).or_default().push((n, off));
            }
        }
        Windows { needles, index }
    }

    /// (needle, offset in needle, offset in hay) of every window found in `hay`.
    pub fn find(&self, hay: &[u8]) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        for p in 0..hay.len().saturating_sub(WINDOW - 1) {
            let key: [u8; 8] = hay[p..p + 8].try_into().expect("8 bytes");
            if let Some(cands) = self.index.get(&key) {
                for &(n, off) in cands {
                    if hay[p..p + WINDOW] == self.needles[n][off..off + WINDOW] {
                        out.push((n, off, p));
                    }
                }
            }
        }
        out
    }
}

/// Every regular file under `dir`, recursively, with its bytes, sorted by path.
pub fn read_tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("dir entry");
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push((e.path(), std::fs::read(e.path()).expect("read file")));
            }
        }
    }
    out.sort();
    out
}

//! Tombstones: a deletion bitmap per segment or memtable chunk.
//!
//! Bitmaps are shared between the writer and published snapshots through
//! `Arc`; the writer changes them copy-on-write (`Arc::make_mut`), so a reader's
//! snapshot never changes under it. On disk they are stored in the manifest as
//! sorted row lists (see [`crate::storage::format`]).

/// A fixed-length bitmap of deleted rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tombstones {
    words: Vec<u64>,
    len: usize,
    count: usize,
}

impl Tombstones {
    /// No row deleted, `len` rows.
    pub(crate) fn new(len: usize) -> Tombstones {
        Tombstones {
            words: vec![0; len.div_ceil(64)],
            len,
            count: 0,
        }
    }

    /// Bitmap from a sorted list of rows; rows are checked by the manifest decoder.
    pub(crate) fn from_rows(len: usize, rows: &[u32]) -> Tombstones {
        let mut t = Tombstones::new(len);
        for &r in rows {
            t.set(r as usize);
        }
        t
    }

    /// Grow to `len` rows (new rows live).
    pub(crate) fn grow(&mut self, len: usize) {
        if len > self.len {
            self.len = len;
            self.words.resize(len.div_ceil(64), 0);
        }
    }

    /// Rows covered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Deleted rows.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Whether `row` is deleted.
    #[inline]
    pub(crate) fn get(&self, row: usize) -> bool {
        self.words
            .get(row / 64)
            .is_some_and(|w| w >> (row % 64) & 1 == 1)
    }

    /// Mark `row` deleted; returns whether it was live.
    pub(crate) fn set(&mut self, row: usize) -> bool {
        debug_assert!(row < self.len);
        let w = &mut self.words[row / 64];
        let bit = 1u64 << (row % 64);
        let was_live = *w & bit == 0;
        *w |= bit;
        // A branch, not `count += usize::from(was_live)`: rustc 1.95 at
        // opt-level 2 and above, without debug assertions, miscompiles that
        // form here once inlined (the unit test below counted 0 for 3 in the
        // release profile). CI runs the unit tests in that profile too.
        if was_live {
            self.count += 1;
        }
        was_live
    }

    /// Deleted rows in ascending order.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "rows are below `len`, a segment's (≤ u32::MAX, checked on open) or a chunk's row count"
    )]
    pub(crate) fn rows(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.count);
        for (i, &w) in self.words.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let b = w.trailing_zeros() as usize;
                out.push((i * 64 + b) as u32);
                w &= w - 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_rows_round_trip() {
        let mut t = Tombstones::new(130);
        assert!(t.set(0));
        assert!(t.set(64));
        assert!(t.set(129));
        assert!(!t.set(64));
        assert_eq!(t.count(), 3);
        assert!(t.get(129) && !t.get(128) && !t.get(1000));
        assert_eq!(t.rows(), vec![0, 64, 129]);
        assert_eq!(Tombstones::from_rows(130, &[0, 64, 129]), t);
        t.grow(200);
        assert_eq!(t.len(), 200);
        assert!(t.set(199));
    }
}

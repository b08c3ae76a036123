//! The memtable: embeddings acknowledged since the last flush, searchable at once.
//!
//! Rows live in immutable, `Arc`-shared chunks so that a published snapshot
//! keeps seeing exactly what it saw; the writer appends by adding a chunk (or,
//! for a small last chunk, by copy-on-write) and deletes by setting tombstone
//! bits copy-on-write. The id and subject indexes are the writer's alone.
//! The WAL owns durability and the gallery owns when to freeze and flush.

use super::tombstones::Tombstones;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

/// A last chunk smaller than this grows in place (copy-on-write) instead of
/// starting a new chunk, so single-row inserts do not make one chunk each.
const MERGE_BELOW: usize = 256;

/// Hashes u64 ids with a per-map random key and the splitmix64 finaliser:
/// far cheaper than SipHash for the write path, and not predictable by a
/// client choosing ids.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdHashBuilder(u64);

impl Default for IdHashBuilder {
    fn default() -> Self {
        IdHashBuilder(std::collections::hash_map::RandomState::new().hash_one(0x5EED_u64))
    }
}

impl BuildHasher for IdHashBuilder {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher { h: self.0 }
    }
}

/// See [`IdHashBuilder`]: the state starts from the map's random key, so which
/// inputs collide depends on a key the client cannot see.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdHasher {
    h: u64,
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.h = (self.h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.h = (self.h ^ x)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }
    fn finish(&self) -> u64 {
        let mut z = self.h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A map keyed by embedding id.
pub(crate) type IdMap<V> = HashMap<u64, V, IdHashBuilder>;

/// A block of rows, never changed once published.
#[derive(Debug, Clone, Default)]
pub(crate) struct Chunk {
    pub ids: Vec<u64>,
    pub subjects: Vec<Arc<str>>,
    /// Row-major vectors, the gallery's dimension a row.
    pub vectors: Vec<f32>,
    /// (id, row) sorted by id, for lookups from snapshots.
    pub sorted: Vec<(u64, u32)>,
}

impl Chunk {
    /// A chunk of rows (ids unique within it); builds the sorted index.
    ///
    /// Rows are numbered in u32 here and in [`MemLoc`]: a chunk holds one
    /// insert batch (at most `MAX_INSERT_BATCH`) or one WAL record (at most
    /// `MAX_RECORD_LEN` bytes, over 512 per row), and [`Memtable::append`]
    /// merges only chunks under `MERGE_BELOW` rows.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "a chunk's rows fit in u32 (see above)"
    )]
    pub(crate) fn new(ids: Vec<u64>, subjects: Vec<Arc<str>>, vectors: Vec<f32>) -> Chunk {
        debug_assert!(u32::try_from(ids.len()).is_ok());
        let mut sorted: Vec<(u64, u32)> = ids
            .iter()
            .enumerate()
            .map(|(r, &id)| (id, r as u32))
            .collect();
        sorted.sort_unstable();
        Chunk {
            ids,
            subjects,
            vectors,
            sorted,
        }
    }

    /// Rows.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// The live row holding `id` (ids are unique among live rows only, so
    /// deleted rows with the same id are skipped).
    pub(crate) fn find_live(&self, id: u64, tomb: &Tombstones) -> Option<usize> {
        let start = self.sorted.partition_point(|&(i, _)| i < id);
        self.sorted[start..]
            .iter()
            .take_while(|&&(i, _)| i == id)
            .map(|&(_, r)| r as usize)
            .find(|&r| !tomb.get(r))
    }
}

/// A chunk with its deletions.
#[derive(Debug, Clone)]
pub(crate) struct MemChunk {
    pub chunk: Arc<Chunk>,
    pub tomb: Arc<Tombstones>,
}

/// Location of a live memtable row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemLoc {
    pub chunk: u32,
    pub row: u32,
}

/// The writer's memtable.
#[derive(Debug, Default)]
pub(crate) struct Memtable {
    pub chunks: Vec<MemChunk>,
    index: IdMap<MemLoc>,
    by_subject: HashMap<Arc<str>, Vec<u64>, IdHashBuilder>,
    rows: usize,
    /// The highest id appended (deleted rows included).
    max_id: Option<u64>,
}

impl Memtable {
    /// Rows stored, deleted ones included.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }
    /// Live rows.
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.index.len()
    }
    /// The highest id any row appended here has had (deleted or not): no
    /// id above it is live here.
    pub(crate) fn max_id(&self) -> Option<u64> {
        self.max_id
    }
    /// Location of live `id`.
    pub(crate) fn find(&self, id: u64) -> Option<MemLoc> {
        self.index.get(&id).copied()
    }
    /// Live ids of `subject`.
    pub(crate) fn subject_ids(&self, subject: &str) -> impl Iterator<Item = u64> + '_ {
        self.by_subject.get(subject).into_iter().flatten().copied()
    }

    /// Subjects with a live row here.
    pub(crate) fn subjects(&self) -> impl Iterator<Item = &str> + '_ {
        self.by_subject.keys().map(|s| &**s)
    }
    /// Subject of the row at `loc`.
    pub(crate) fn subject(&self, loc: MemLoc) -> &Arc<str> {
        &self.chunks[loc.chunk as usize].chunk.subjects[loc.row as usize]
    }

    /// Append a chunk whose ids are not live anywhere (the caller removed old versions).
    pub(crate) fn append(&mut self, new: Chunk) {
        let n = new.len();
        if n == 0 {
            return;
        }
        let top = new.sorted.last().map(|&(id, _)| id);
        self.max_id = self.max_id.max(top);
        let merge = n < MERGE_BELOW
            && self
                .chunks
                .last()
                .is_some_and(|c| c.chunk.len() < MERGE_BELOW);
        let (ci, first_row) = if merge {
            let ci = self.chunks.len() - 1;
            let mc = &mut self.chunks[ci];
            let chunk = Arc::make_mut(&mut mc.chunk);
            let first = chunk.len();
            chunk.ids.extend_from_slice(&new.ids);
            chunk.subjects.extend(new.subjects.iter().cloned());
            chunk.vectors.extend_from_slice(&new.vectors);
            #[allow(
                clippy::cast_possible_truncation,
                reason = "`first` is below MERGE_BELOW"
            )]
            let first32 = first as u32;
            chunk
                .sorted
                .extend(new.sorted.iter().map(|&(id, r)| (id, r + first32)));
            chunk.sorted.sort_unstable();
            Arc::make_mut(&mut mc.tomb).grow(chunk.len());
            (ci, first)
        } else {
            self.chunks.push(MemChunk {
                chunk: Arc::new(new),
                tomb: Arc::new(Tombstones::new(n)),
            });
            (self.chunks.len() - 1, 0)
        };
        let chunk = &self.chunks[ci].chunk;
        self.index.reserve(n);
        #[allow(
            clippy::cast_possible_truncation,
            reason = "a chunk's rows fit in u32 (see `Chunk::new`); there are fewer \
                      chunks than rows in memory, each over 512 bytes, so far fewer than 2^32"
        )]
        for r in first_row..first_row + n {
            let id = chunk.ids[r];
            self.index.insert(
                id,
                MemLoc {
                    chunk: ci as u32,
                    row: r as u32,
                },
            );
            match self.by_subject.get_mut(&*chunk.subjects[r]) {
                Some(v) => v.push(id),
                None => {
                    self.by_subject.insert(chunk.subjects[r].clone(), vec![id]);
                }
            }
        }
        self.rows += n;
    }

    /// Delete the live row at `loc`.
    pub(crate) fn delete(&mut self, loc: MemLoc) {
        let mc = &mut self.chunks[loc.chunk as usize];
        let id = mc.chunk.ids[loc.row as usize];
        let subject = mc.chunk.subjects[loc.row as usize].clone();
        Arc::make_mut(&mut mc.tomb).set(loc.row as usize);
        self.index.remove(&id);
        if let Some(ids) = self.by_subject.get_mut(&*subject) {
            if let Some(i) = ids.iter().position(|&x| x == id) {
                ids.swap_remove(i);
            }
            if ids.is_empty() {
                self.by_subject.remove(&*subject);
            }
        }
    }

    /// Live rows in chunk order, as (chunk, row).
    #[cfg(test)]
    pub(crate) fn live_rows(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.chunks.iter().enumerate().flat_map(|(c, mc)| {
            (0..mc.chunk.ids.len())
                .filter(|&r| !mc.tomb.get(r))
                .map(move |r| (c, r))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(rows: &[(u64, &str, &[f32])]) -> Chunk {
        Chunk::new(
            rows.iter().map(|r| r.0).collect(),
            rows.iter().map(|r| Arc::from(r.1)).collect(),
            rows.iter().flat_map(|r| r.2.iter().copied()).collect(),
        )
    }

    #[test]
    fn append_find_delete() {
        let mut m = Memtable::default();
        let v = [1.0; 16];
        m.append(chunk(&[(1, "a", &v), (2, "b", &v)]));
        m.append(chunk(&[(3, "a", &v)]));
        assert_eq!(m.chunks.len(), 1, "small chunks merge");
        assert_eq!(m.live(), 3);
        let loc = m.find(1).unwrap();
        m.delete(loc);
        assert_eq!(m.find(1), None);
        assert_eq!(m.subject_ids("a").collect::<Vec<_>>(), vec![3]);
        assert_eq!(m.rows(), 3);
        assert_eq!(m.live_rows().count(), 2);
        let c = &m.chunks[0];
        assert_eq!(c.chunk.find_live(3, &c.tomb), Some(2));
        assert_eq!(c.chunk.find_live(1, &c.tomb), None);
    }

    #[test]
    fn snapshot_chunks_do_not_change_under_readers() {
        let mut m = Memtable::default();
        let v = [1.0; 16];
        m.append(chunk(&[(1, "a", &v)]));
        let seen = m.chunks.clone();
        m.append(chunk(&[(2, "a", &v)]));
        m.delete(m.find(1).unwrap());
        assert_eq!(seen[0].chunk.ids, vec![1]);
        assert!(!seen[0].tomb.get(0));
        assert_eq!(m.chunks[0].chunk.ids, vec![1, 2]);
    }
}

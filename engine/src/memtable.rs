//! The memtable: embeddings acknowledged since the last flush, searchable at once.
//!
//! Rows live in immutable, `Arc`-shared chunks so that a published snapshot
//! keeps seeing exactly what it saw; the writer appends by adding a chunk (or,
//! for a small last chunk, by copy-on-write) and deletes by setting tombstone
//! bits copy-on-write. The id and subject indexes are the writer's alone.
//! The WAL owns durability and the gallery owns when to freeze and flush.

use crate::DIM;
use crate::tombstones::Tombstones;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A last chunk smaller than this grows in place (copy-on-write) instead of
/// starting a new chunk, so single-row inserts do not make one chunk each.
const MERGE_BELOW: usize = 256;

/// A block of rows, never changed once published.
#[derive(Debug, Clone, Default)]
pub(crate) struct Chunk {
    pub ids: Vec<u64>,
    pub subjects: Vec<Arc<str>>,
    pub vectors: Vec<[f32; DIM]>,
    /// (id, row) sorted by id, for lookups from snapshots.
    pub sorted: Vec<(u64, u32)>,
}

impl Chunk {
    /// Row holding `id`, deleted or not (ids are unique among live rows only,
    /// so the caller checks tombstones; the last match is the newest).
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
    index: HashMap<u64, MemLoc>,
    by_subject: HashMap<Arc<str>, HashSet<u64>>,
    rows: usize,
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
    /// Location of live `id`.
    pub(crate) fn find(&self, id: u64) -> Option<MemLoc> {
        self.index.get(&id).copied()
    }
    /// Live ids of `subject`.
    pub(crate) fn subject_ids(&self, subject: &str) -> impl Iterator<Item = u64> + '_ {
        self.by_subject.get(subject).into_iter().flatten().copied()
    }

    /// Append rows whose ids are not live anywhere (the caller removed old versions).
    pub(crate) fn append(&mut self, rows: &[(u64, &str, &[f32; DIM])]) {
        if rows.is_empty() {
            return;
        }
        let merge = self
            .chunks
            .last()
            .is_some_and(|c| c.chunk.ids.len() < MERGE_BELOW);
        if !merge {
            self.chunks.push(MemChunk {
                chunk: Arc::new(Chunk::default()),
                tomb: Arc::new(Tombstones::new(0)),
            });
        }
        let ci = self.chunks.len() - 1;
        let mc = &mut self.chunks[ci];
        let chunk = Arc::make_mut(&mut mc.chunk);
        chunk.ids.reserve(rows.len());
        chunk.vectors.reserve(rows.len());
        for &(id, subject, v) in rows {
            let row = chunk.ids.len() as u32;
            let subject = match self.by_subject.get_key_value(subject) {
                Some((k, _)) => k.clone(),
                None => Arc::<str>::from(subject),
            };
            chunk.ids.push(id);
            chunk.vectors.push(*v);
            chunk.sorted.push((id, row));
            chunk.subjects.push(subject.clone());
            self.index.insert(
                id,
                MemLoc {
                    chunk: ci as u32,
                    row,
                },
            );
            self.by_subject.entry(subject).or_default().insert(id);
        }
        chunk.sorted.sort_unstable();
        Arc::make_mut(&mut mc.tomb).grow(chunk.ids.len());
        self.rows += rows.len();
    }

    /// Delete the live row at `loc`.
    pub(crate) fn delete(&mut self, loc: MemLoc) {
        let mc = &mut self.chunks[loc.chunk as usize];
        let id = mc.chunk.ids[loc.row as usize];
        let subject = mc.chunk.subjects[loc.row as usize].clone();
        Arc::make_mut(&mut mc.tomb).set(loc.row as usize);
        self.index.remove(&id);
        if let Some(set) = self.by_subject.get_mut(&subject) {
            set.remove(&id);
            if set.is_empty() {
                self.by_subject.remove(&subject);
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

    #[test]
    fn append_find_delete() {
        let mut m = Memtable::default();
        let v = [1.0; DIM];
        m.append(&[(1, "a", &v), (2, "b", &v)]);
        m.append(&[(3, "a", &v)]);
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
        let v = [1.0; DIM];
        m.append(&[(1, "a", &v)]);
        let seen = m.chunks.clone();
        m.append(&[(2, "a", &v)]);
        m.delete(m.find(1).unwrap());
        assert_eq!(seen[0].chunk.ids, vec![1]);
        assert!(!seen[0].tomb.get(0));
        assert_eq!(m.chunks[0].chunk.ids, vec![1, 2]);
    }
}

//! A logged batch: one message of a gallery's stream is one Insert or one
//! Delete, whole, in the single-node API's terms; each shard applies its
//! share ([`LogBatch::share`]) at the message's sequence.

use crate::shard::shard_of;

/// One Insert (upsert) or one Delete, as published to the log (protobuf).
/// An insert carries its ids (assigned by the node that published it, so
/// every replica stores the same ids).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogBatch {
    /// Insert: one id a row.
    #[prost(uint64, repeated, tag = "1")]
    pub ids: Vec<u64>,
    /// Insert: one subject a row.
    #[prost(string, repeated, tag = "2")]
    pub subjects: Vec<String>,
    /// Insert: the rows' values, little-endian f32, `dim` a row.
    #[prost(bytes = "vec", tag = "3")]
    pub vectors: Vec<u8>,
    /// Values a row.
    #[prost(uint32, tag = "4")]
    pub dim: u32,
    /// Delete: ids.
    #[prost(uint64, repeated, tag = "5")]
    pub delete_ids: Vec<u64>,
    /// Delete: every embedding of these subjects.
    #[prost(string, repeated, tag = "6")]
    pub delete_subjects: Vec<String>,
}

/// What one shard applies of a batch: first the deletes, then the inserts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Share {
    /// Ids to delete where this shard holds them: a delete's ids, and the
    /// ids an upsert moves to a subject of another shard.
    pub delete_ids: Vec<u64>,
    /// Subjects of this shard to delete.
    pub delete_subjects: Vec<String>,
    /// Rows of this shard to insert.
    pub ids: Vec<u64>,
    /// Their subjects.
    pub subjects: Vec<String>,
    /// Their values, `dim` a row.
    pub vectors: Vec<f32>,
}

impl LogBatch {
    /// An insert of `ids`, `subjects` and row-major `vectors` of `dim` values.
    pub fn insert(ids: Vec<u64>, subjects: Vec<String>, vectors: &[f32], dim: usize) -> LogBatch {
        LogBatch {
            ids,
            subjects,
            vectors: vectors.iter().flat_map(|v| v.to_le_bytes()).collect(),
            dim: u32::try_from(dim).unwrap_or(u32::MAX),
            ..LogBatch::default()
        }
    }

    /// A delete of `ids` and of every embedding of `subjects`.
    pub fn delete(ids: Vec<u64>, subjects: Vec<String>) -> LogBatch {
        LogBatch {
            delete_ids: ids,
            delete_subjects: subjects,
            ..LogBatch::default()
        }
    }

    /// Whether the columns agree (every published batch does; a message
    /// that does not is refused by the replica).
    pub fn problem(&self) -> Option<String> {
        let n = self.ids.len();
        let dim = self.dim as usize;
        if self.subjects.len() != n {
            return Some(format!("{n} ids and {} subjects", self.subjects.len()));
        }
        if self.vectors.len() != n * dim * 4 {
            return Some(format!(
                "{} bytes of vectors for {n} rows of {dim} values",
                self.vectors.len()
            ));
        }
        if n > 0 && !(self.delete_ids.is_empty() && self.delete_subjects.is_empty()) {
            return Some("both an insert and a delete".into());
        }
        None
    }

    /// The share of shard `shard` of `shards`.
    pub fn share(&self, shard: u32, shards: u32) -> Share {
        let dim = self.dim as usize;
        let mut s = Share {
            delete_ids: self.delete_ids.clone(),
            delete_subjects: self
                .delete_subjects
                .iter()
                .filter(|x| shard_of(x, shards) == shard)
                .cloned()
                .collect(),
            ..Share::default()
        };
        for (i, (id, subject)) in self.ids.iter().zip(&self.subjects).enumerate() {
            if shard_of(subject, shards) == shard {
                s.ids.push(*id);
                s.subjects.push(subject.clone());
                let row = &self.vectors[i * dim * 4..(i + 1) * dim * 4];
                s.vectors.extend(
                    row.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                );
            } else {
                s.delete_ids.push(*id);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn shares_split_rows_by_subject_and_move_upserted_ids() {
        let subjects: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
        let ids: Vec<u64> = (100..140).collect();
        let vectors: Vec<f32> = (0..40 * 16).map(|i| i as f32 * 0.5).collect();
        let b = LogBatch::insert(ids.clone(), subjects.clone(), &vectors, 16);
        assert_eq!(b.problem(), None);
        let b = LogBatch::decode(b.encode_to_vec().as_slice()).unwrap();
        let shares: Vec<Share> = (0..4).map(|k| b.share(k, 4)).collect();
        let mut all: Vec<u64> = shares.iter().flat_map(|s| s.ids.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, ids, "every row in exactly one shard");
        for (k, s) in shares.iter().enumerate() {
            for (i, id) in s.ids.iter().enumerate() {
                let row = (id - 100) as usize;
                assert_eq!(shard_of(&subjects[row], 4), k as u32);
                assert_eq!(
                    s.vectors[i * 16..(i + 1) * 16],
                    vectors[row * 16..(row + 1) * 16]
                );
            }
            // The other shards' ids are deleted here if present (moved upserts).
            assert_eq!(s.ids.len() + s.delete_ids.len(), 40);
        }
        let d = LogBatch::delete(vec![1, 2], subjects[..10].to_vec());
        let n: usize = (0..4).map(|k| d.share(k, 4).delete_subjects.len()).sum();
        assert_eq!(n, 10);
        assert!(
            LogBatch {
                dim: 3,
                ..b.clone()
            }
            .problem()
            .is_some()
        );
    }
}

//! Exact answers across shards. A subject lives in one shard, so a shard's
//! `k` nearest embeddings (or best subjects) include every one of the
//! gallery's `k` nearest that it holds: merging the shards' lists by
//! (distance, id), the order a single gallery ranks by, and keeping `k`
//! gives the single gallery's answer.

use visage_engine::Hit;

/// Merge per-shard answers (`shards[s][q]`: shard `s`'s hits for query `q`,
/// each list in ascending (distance, id)) into the `k` best for each query.
pub fn merge_hits(shards: Vec<Vec<Vec<Hit>>>, k: usize) -> Vec<Vec<Hit>> {
    merge_by(shards, k, |h| (h.distance, h.id))
}

/// Merge per-shard lists (`shards[s][q]`: shard `s`'s list for query `q`)
/// by `key` (ascending: the ranking key a single gallery sorts by, then the
/// id), keeping the `k` first of each query.
pub fn merge_by<T>(
    shards: Vec<Vec<Vec<T>>>,
    k: usize,
    key: impl Fn(&T) -> (f32, u64),
) -> Vec<Vec<T>> {
    let queries = shards.first().map_or(0, Vec::len);
    let mut out: Vec<Vec<T>> = (0..queries).map(|_| Vec::new()).collect();
    for shard in shards {
        for (q, hits) in shard.into_iter().enumerate() {
            if let Some(o) = out.get_mut(q) {
                o.extend(hits);
            }
        }
    }
    for hits in &mut out {
        hits.sort_by(|a, b| {
            let (da, ia) = key(a);
            let (db, ib) = key(b);
            da.total_cmp(&db).then(ia.cmp(&ib))
        });
        hits.truncate(k);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: u64, distance: f32) -> Hit {
        Hit {
            id,
            subject: format!("s{id}"),
            distance,
            probability: None,
            similarity: None,
            rank_key: None,
        }
    }

    #[test]
    fn merges_by_distance_then_id() {
        let a = vec![vec![hit(4, 0.5), hit(9, 1.0)], vec![hit(1, 0.1)]];
        let b = vec![vec![hit(2, 0.5), hit(3, 0.7)], vec![]];
        let m = merge_hits(vec![a, b], 3);
        let ids: Vec<Vec<u64>> = m.iter().map(|h| h.iter().map(|x| x.id).collect()).collect();
        assert_eq!(ids, vec![vec![2, 4, 3], vec![1]]);
    }
}

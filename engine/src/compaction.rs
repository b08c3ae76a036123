//! Compaction policy: a pure function from segment statistics to merge plans.
//!
//! Executing a plan (writing the merged segment, carrying over deletes that
//! happen meanwhile, swapping the manifest) is the gallery's; this module only
//! decides, so it is tested without I/O.

/// Statistics of one segment, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentStat {
    /// File number.
    pub file_no: u64,
    /// Rows stored.
    pub rows: u64,
    /// Rows deleted.
    pub deleted: u64,
    /// Written by an older format version (its quantiser not robust to
    /// outliers): forced compaction rewrites it.
    pub outdated: bool,
}

impl SegmentStat {
    fn live(&self) -> u64 {
        self.rows - self.deleted.min(self.rows)
    }
}

/// When segments are rewritten.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactionPolicy {
    /// Background: rewrite a segment once this fraction of its rows is deleted.
    pub max_deleted_ratio: f64,
    /// Background: segments with fewer live rows than this are "small".
    pub small_segment_rows: u64,
    /// Background: merge small segments once there are at least this many.
    pub min_small_to_merge: usize,
    /// No merge produces a segment with more live rows than this.
    pub max_segment_rows: u64,
    /// No merge or import writes a segment larger than this, about (its
    /// rows are capped at this over the bytes of a row at the gallery's
    /// dimension): compaction rewrites one segment at a time, so it needs
    /// free space for one segment, never for the whole gallery.
    pub max_segment_bytes: u64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy {
            max_deleted_ratio: 0.2,
            small_segment_rows: 1 << 18,
            min_small_to_merge: 4,
            max_segment_rows: 1 << 22,
            max_segment_bytes: 2 << 30,
        }
    }
}

/// Groups of segments (file numbers) to rewrite, each group into one new segment.
///
/// `force` (compaction on request) rewrites every segment that holds any
/// deleted row, so that deleted vectors leave the disk, every segment of an
/// older format version (so its codes are re-encoded), and merges every
/// segment below `max_segment_rows`. The background policy rewrites segments
/// past `max_deleted_ratio` and merges small ones once `min_small_to_merge`
/// have accumulated. A group of one segment without deletes is never planned.
pub fn plan(stats: &[SegmentStat], p: &CompactionPolicy, force: bool) -> Vec<Vec<u64>> {
    let dirty = |s: &SegmentStat| {
        if force {
            s.deleted > 0 || s.outdated
        } else {
            s.rows > 0 && s.deleted as f64 / s.rows as f64 > p.max_deleted_ratio
        }
    };
    let small_limit = if force {
        p.max_segment_rows
    } else {
        p.small_segment_rows
    };
    let small = |s: &SegmentStat| s.live() < small_limit;
    let n_small = stats.iter().filter(|s| small(s)).count();
    let merge_small = force || n_small >= p.min_small_to_merge.max(2);
    let mut cands: Vec<SegmentStat> = stats
        .iter()
        .filter(|s| dirty(s) || (merge_small && small(s)))
        .copied()
        .collect();
    cands.sort_by_key(|s| (s.live(), s.file_no));
    let mut groups: Vec<Vec<SegmentStat>> = Vec::new();
    let mut cur: Vec<SegmentStat> = Vec::new();
    let mut cur_live = 0u64;
    for s in cands {
        if !cur.is_empty()
            && (cur_live + s.live() > p.max_segment_rows || !(merge_small && small(&s)))
        {
            groups.push(std::mem::take(&mut cur));
            cur_live = 0;
        }
        cur_live += s.live();
        cur.push(s);
    }
    if !cur.is_empty() {
        groups.push(cur);
    }
    groups
        .into_iter()
        .filter(|g| g.len() > 1 || g.iter().any(dirty))
        .map(|g| g.iter().map(|s| s.file_no).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(file_no: u64, rows: u64, deleted: u64) -> SegmentStat {
        SegmentStat {
            file_no,
            rows,
            deleted,
            outdated: false,
        }
    }

    #[test]
    fn nothing_to_do_on_clean_large_segments() {
        let p = CompactionPolicy::default();
        let big = p.max_segment_rows;
        assert!(plan(&[s(1, big, 0), s(2, big, 0)], &p, false).is_empty());
        assert!(plan(&[s(1, big, 0), s(2, big, 0)], &p, true).is_empty());
        assert!(plan(&[], &p, true).is_empty());
    }

    #[test]
    fn forced_compaction_rewrites_every_segment_with_deletes() {
        let p = CompactionPolicy::default();
        let big = p.max_segment_rows;
        let g = plan(&[s(1, big, 1), s(2, big, 0), s(3, big, 5)], &p, true);
        let mut all: Vec<u64> = g.concat();
        all.sort();
        assert_eq!(all, vec![1, 3]);
        assert!(
            g.iter().all(|g| g.len() == 1),
            "big segments are rewritten alone: {g:?}"
        );
    }

    #[test]
    fn forced_compaction_rewrites_segments_of_an_older_format() {
        let p = CompactionPolicy::default();
        let big = p.max_segment_rows;
        let old = SegmentStat {
            outdated: true,
            ..s(2, big, 0)
        };
        assert_eq!(plan(&[s(1, big, 0), old], &p, true), vec![vec![2]]);
        // The background policy leaves it (rewriting every older segment at
        // once after an upgrade is the operator's call).
        assert!(plan(&[s(1, big, 0), old], &p, false).is_empty());
    }

    #[test]
    fn background_rewrites_past_the_deleted_ratio_only() {
        let p = CompactionPolicy::default();
        let big = p.max_segment_rows;
        assert!(plan(&[s(1, big, big / 10)], &p, false).is_empty());
        assert_eq!(plan(&[s(1, big, big / 2)], &p, false), vec![vec![1]]);
    }

    #[test]
    fn small_segments_merge_once_enough_accumulate_within_the_size_cap() {
        let p = CompactionPolicy {
            small_segment_rows: 100,
            min_small_to_merge: 3,
            max_segment_rows: 250,
            ..Default::default()
        };
        assert!(plan(&[s(1, 90, 0), s(2, 90, 0)], &p, false).is_empty());
        let g = plan(
            &[s(1, 90, 0), s(2, 90, 0), s(3, 80, 0), s(4, 1000, 0)],
            &p,
            false,
        );
        // Smallest first, packed up to 250 live rows; the leftover single clean segment waits.
        assert_eq!(g, vec![vec![3, 1]]);
    }

    #[test]
    fn fully_deleted_segment_is_planned() {
        let p = CompactionPolicy::default();
        assert_eq!(plan(&[s(7, 10, 10)], &p, false), vec![vec![7]]);
    }
}

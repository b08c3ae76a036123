//! Pair sampling: the labelled pairs training and calibration draw from a
//! snapshot. Subjects are shuffled with the seeded [`Rng`] and split into a
//! training and a held-out set; training gets genuine pairs within subjects
//! and impostor pairs, random and hard (the nearest rows of other subjects,
//! found with the engine's own exact search); the held-out set gets genuine
//! and impostor pairs for 1:1 calibration and rows to probe the gallery with
//! for open-set calibration. Also the features `|a − b|` of a pair.

use super::TrainOptions;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::search::{self, Metric};
use crate::snapshot::Snapshot;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};

/// A labelled pair of rows: (source, row) of each side.
pub(super) type RowRef = (u32, u32);

/// Training and calibration pairs drawn from a snapshot.
#[derive(Debug, Default)]
pub(crate) struct Pairs {
    pub train: Vec<(RowRef, RowRef, bool)>,
    pub heldout: Vec<(RowRef, RowRef, bool)>,
    /// Held-out rows to probe the gallery with for the subject-level
    /// calibration, with the index of their subject in `groups`.
    pub open_probes: Vec<(RowRef, usize)>,
    /// Live rows of each subject.
    pub groups: Vec<Vec<RowRef>>,
}

/// Most probes of the subject-level calibration: the false positives of
/// identification come from the few strangers nearest to many people, so
/// the probes must sample that upper tail well.
const OPEN_PROBES: usize = 10_000;

/// Live rows grouped by subject, in a deterministic order.
fn rows_by_subject(snap: &Snapshot) -> Vec<Vec<RowRef>> {
    let mut map: HashMap<&str, Vec<RowRef>> = HashMap::new();
    for s in 0..snap.source_count() {
        for row in 0..snap.vectors(s).len() / snap.dim {
            if !snap.deleted(s, row) {
                map.entry(snap.subject(s, row))
                    .or_default()
                    .push((s as u32, row as u32));
            }
        }
    }
    let mut v: Vec<(&str, Vec<RowRef>)> = map.into_iter().collect();
    v.sort_unstable_by(|a, b| a.0.cmp(b.0));
    v.into_iter().map(|(_, rows)| rows).collect()
}

/// Draw the pairs: training positives, random and hard negatives; held-out genuine and impostor pairs.
pub(crate) fn sample_pairs(
    snap: &Snapshot,
    opts: &TrainOptions,
    with_training: bool,
) -> Result<Pairs> {
    let groups = rows_by_subject(snap);
    let mut rng = Rng::new(opts.seed);
    let mut order: Vec<usize> = (0..groups.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let n_held = ((groups.len() as f64 * opts.heldout_fraction).round() as usize)
        .clamp(1, groups.len().saturating_sub(1).max(1));
    let (held, train) = order.split_at(n_held.min(order.len()));
    let multi = |set: &[usize]| set.iter().filter(|&&s| groups[s].len() >= 2).count();
    if held.len() < 2 || multi(held) < 1 || (with_training && (train.len() < 2 || multi(train) < 1))
    {
        return Err(Error::CannotTrain {
            reason: format!(
                "the gallery has {} subjects; training and calibration need at least 4, several with two or more embeddings",
                groups.len()
            ),
        });
    }
    let held_budget = if with_training {
        opts.max_pairs / 4
    } else {
        opts.max_pairs
    };
    let train_budget = opts.max_pairs - held_budget;
    let mut pairs = Pairs::default();
    let genuine =
        |rng: &mut Rng, set: &[usize], out: &mut Vec<(RowRef, RowRef, bool)>, n: usize| {
            let multi: Vec<usize> = set
                .iter()
                .copied()
                .filter(|&s| groups[s].len() >= 2)
                .collect();
            let available: usize = multi
                .iter()
                .map(|&s| groups[s].len() * (groups[s].len() - 1) / 2)
                .sum();
            if available <= n {
                for &s in &multi {
                    let g = &groups[s];
                    for i in 0..g.len() {
                        for j in i + 1..g.len() {
                            out.push((g[i], g[j], true));
                        }
                    }
                }
            } else {
                for _ in 0..n {
                    let g = &groups[multi[rng.below(multi.len())]];
                    let i = rng.below(g.len());
                    let j = (i + 1 + rng.below(g.len() - 1)) % g.len();
                    out.push((g[i], g[j], true));
                }
            }
        };
    let impostor =
        |rng: &mut Rng, set: &[usize], out: &mut Vec<(RowRef, RowRef, bool)>, n: usize| {
            for _ in 0..n {
                let a = set[rng.below(set.len())];
                let b = loop {
                    let b = set[rng.below(set.len())];
                    if b != a {
                        break b;
                    }
                };
                let (ga, gb) = (&groups[a], &groups[b]);
                out.push((ga[rng.below(ga.len())], gb[rng.below(gb.len())], false));
            }
        };
    if with_training {
        genuine(&mut rng, train, &mut pairs.train, train_budget / 2);
        let n_pos = pairs.train.len();
        let n_neg = train_budget.saturating_sub(n_pos).max(n_pos);
        // Hard negatives: the nearest rows of other training subjects to random training rows.
        let n_hard = n_neg / 3;
        let per_query = 16usize;
        let n_queries = n_hard.div_ceil(per_query - 1).min(256);
        let train_set: HashSet<usize> = train.iter().copied().collect();
        let mut subject_of: HashMap<RowRef, usize> = HashMap::new();
        for &s in train {
            for &r in &groups[s] {
                subject_of.insert(r, s);
            }
        }
        let queries: Vec<(RowRef, usize)> = (0..n_queries)
            .map(|_| {
                let s = train[rng.below(train.len())];
                (groups[s][rng.below(groups[s].len())], s)
            })
            .collect();
        let qv: Vec<f32> = queries
            .iter()
            .flat_map(|&((src, row), _)| snap.vector(src as usize, row as usize).iter().copied())
            .collect();
        let tops = search::top_k(snap, &qv, per_query, Metric::L2);
        let mut hard = 0;
        for (&(q, s), cands) in queries.iter().zip(&tops) {
            for c in cands {
                let r = (c.src, c.row);
                if let Some(&other) = subject_of.get(&r)
                    && other != s
                    && train_set.contains(&other)
                {
                    pairs.train.push((q, r, false));
                    hard += 1;
                }
            }
        }
        impostor(
            &mut rng,
            train,
            &mut pairs.train,
            n_neg.saturating_sub(hard),
        );
    }
    // Open-set probes: one row of each held-out subject with two or more rows, in turn.
    for round in 0.. {
        let before = pairs.open_probes.len();
        for &s in held {
            if pairs.open_probes.len() >= OPEN_PROBES {
                break;
            }
            if let Some(&r) = groups[s].get(round).filter(|_| groups[s].len() >= 2) {
                pairs.open_probes.push((r, s));
            }
        }
        if pairs.open_probes.len() == before || pairs.open_probes.len() >= OPEN_PROBES {
            break;
        }
    }
    genuine(&mut rng, held, &mut pairs.heldout, held_budget / 4);
    let n_gen = pairs.heldout.len();
    impostor(
        &mut rng,
        held,
        &mut pairs.heldout,
        held_budget.saturating_sub(n_gen).max(held_budget / 2),
    );
    pairs.groups = groups;
    Ok(pairs)
}

/// |a − b| for each pair (row-major, the snapshot's dimension a pair), with labels.
pub(crate) fn features(snap: &Snapshot, pairs: &[(RowRef, RowRef, bool)]) -> (Vec<f32>, Vec<bool>) {
    let dim = snap.dim;
    let mut x = vec![0f32; pairs.len() * dim];
    x.par_chunks_mut(dim)
        .zip(pairs)
        .for_each(|(out, &((sa, ra), (sb, rb), _))| {
            let a = snap.vector(sa as usize, ra as usize);
            let b = snap.vector(sb as usize, rb as usize);
            for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
                *o = (x - y).abs();
            }
        });
    (x, pairs.iter().map(|p| p.2).collect())
}

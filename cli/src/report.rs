//! `visage calibration-report`: on the operator's own labelled probes, the
//! error rates of the gallery's default decisions (its calibrated
//! thresholds), each with a 95% Wilson score interval, against the target
//! false-accept rate the thresholds were calibrated for.
//!
//! ```text
//! visage calibration-report staff --probes probes.npy --truth truth.txt
//! ```
//!
//! The truth file holds one line per probe: its true subject, or an empty
//! line or `-` for a stranger. A named subject the gallery does not hold is a
//! stranger too (the server is asked: a Verify against a subject that is not
//! enrolled fails with NOT_FOUND naming the pair). Every unnamed stranger
//! counts as a person of their own.
//!
//! Six measurements, all with the server's default decisions:
//! - Verify, vector against vector: impostor pairs (different people,
//!   strangers included) accepted, the FAR; genuine pairs (the same person)
//!   rejected, the FRR. All pairs when there are at most `--pairs`, else
//!   `--pairs` distinct pairs drawn with the seed.
//! - Verify, vector against an enrolled subject: each probe claims an
//!   enrolled subject of the truth file that is not its own (drawn with the
//!   seed), accepted: FAR; each enrolled probe claims its own, rejected: FRR.
//! - Identify: strangers reported known (FPIR); enrolled probes not
//!   identified as their true subject (FNIR).

use crate::output::{Table, count};
use crate::{Failure, ModelArg, Res, print_json, read_vectors};
use clap::Args;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use visage_client::npy::Matrix;
use visage_client::{Against, Client, Gallery, Threshold, code_name};
use visage_engine::rng::Rng;
use visage_engine::{Limits, MAX_PROBES};

/// Most probes or pairs per Identify or Verify request: within the server's
/// limit (`MAX_PROBES` up to 128 values a vector), and about 2 MB for vector
/// pairs of 128 values, far below the default message limit. Galleries of
/// larger vectors take fewer ([`batch_for`]).
const BATCH: usize = 2_000;
const _: () = assert!(BATCH <= MAX_PROBES);

/// Probes or pairs per request for a gallery of dimension `dim`: [`BATCH`],
/// or the server's limit at that dimension if lower.
fn batch_for(dim: usize) -> usize {
    BATCH.min(Limits::for_dim(dim).probes)
}

/// The normal quantile of a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// Longest subject the server accepts, in bytes.
const MAX_SUBJECT_BYTES: usize = 256;

/// Arguments of `visage calibration-report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Gallery name.
    gallery: String,
    /// Probes: .npy float32 of shape [N, D], D the gallery's dimension.
    #[arg(long, value_name = "FILE.npy")]
    probes: PathBuf,
    #[command(flatten)]
    model: ModelArg,
    /// True subject of each probe: a text file of N lines; an empty line or
    /// `-` (or a subject the gallery does not hold) is a stranger.
    #[arg(long, value_name = "FILE")]
    truth: PathBuf,
    /// Impostor (and genuine) vector pairs to verify, at most: all of them
    /// when there are fewer, else this many drawn with --seed.
    #[arg(long, default_value_t = 20_000)]
    pairs: usize,
    /// Seed of the pairs and claims drawn.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// One measured rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Machine name (`verify_pairs_far`).
    key: &'static str,
    /// What is counted, for the table.
    label: &'static str,
    decisions: u64,
    errors: u64,
    /// The rate the gallery was calibrated for, if this row has one.
    target: Option<f32>,
}

impl Row {
    fn rate(&self) -> Option<f64> {
        (self.decisions > 0).then(|| self.errors as f64 / self.decisions as f64)
    }
}

/// The 95% Wilson score interval of `errors` out of `n` (`n > 0`): the
/// proportions p with (errors/n − p)² ≤ z²·p(1 − p)/n.
pub fn wilson(errors: u64, n: u64) -> (f64, f64) {
    let (k, n) = (errors as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    // The ends are exactly 0 and 1 when no or every decision is an error.
    let low = if errors == 0 {
        0.0
    } else {
        (centre - half).clamp(0.0, 1.0)
    };
    let high = if errors as f64 >= n {
        1.0
    } else {
        (centre + half).clamp(0.0, 1.0)
    };
    (low, high)
}

/// A probe's true subject as the truth file gives it.
fn truth_lines(path: &Path) -> Res<Vec<Option<String>>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure(format!(
            "{}: cannot read the truth file: {e}",
            path.display()
        ))
    })?;
    Ok(text
        .lines()
        .map(|l| {
            let l = l.strip_suffix('\r').unwrap_or(l);
            (!l.is_empty() && l != "-").then(|| l.to_owned())
        })
        .collect())
}

/// Whether the server could hold `s` as a subject at all.
fn valid_subject(s: &str) -> bool {
    s.len() <= MAX_SUBJECT_BYTES && !s.chars().any(char::is_control)
}

/// The index `i` of a NOT_FOUND message `pairs[i].subject: no embedding of subject …`.
fn unknown_subject_index(e: &visage_client::Error) -> Option<usize> {
    if e.code().map(code_name) != Some("NOT_FOUND") {
        return None;
    }
    let rest = e.message()?.strip_prefix("pairs[")?;
    let end = rest.find("].subject")?;
    rest[..end].parse().ok()
}

/// Which of `subjects` the gallery holds: each is verified against `probe`
/// in batches; a subject the gallery does not hold fails its batch with
/// NOT_FOUND naming its position, and the batch is sent again without it.
async fn enrolled(
    g: &Gallery,
    batch: usize,
    subjects: &[String],
    probe: &[f32],
) -> Res<BTreeSet<String>> {
    let mut held = BTreeSet::new();
    for chunk in subjects.chunks(batch) {
        let mut left: Vec<&String> = chunk.iter().collect();
        while !left.is_empty() {
            let pairs: Vec<(Vec<f32>, Against)> = left
                .iter()
                .map(|s| (probe.to_vec(), Against::Subject((*s).clone())))
                .collect();
            match g.verify_with(&pairs, Threshold::default()).await {
                Ok(_) => {
                    held.extend(left.drain(..).cloned());
                }
                Err(e) => match unknown_subject_index(&e) {
                    Some(i) if i < left.len() => {
                        left.remove(i);
                    }
                    _ => return Err(e.into()),
                },
            }
        }
    }
    Ok(held)
}

/// `n` distinct unordered pairs of a set of `total`: all of them (listed by
/// `all`) when `total <= n`; chosen among all of them when there are few
/// enough to list; else drawn one by one with `draw` (which returns a
/// member, `i < j`), repeats skipped.
fn choose_pairs(
    total: u64,
    n: usize,
    rng: &mut Rng,
    all: impl FnOnce() -> Vec<(usize, usize)>,
    mut draw: impl FnMut(&mut Rng) -> (usize, usize),
) -> Vec<(usize, usize)> {
    if total <= n as u64 {
        return all();
    }
    if total <= (n as u64).saturating_mul(4) {
        // A partial Fisher–Yates shuffle: the first n of a random order.
        let mut v = all();
        for i in 0..n {
            let j = i + rng.below(v.len() - i);
            v.swap(i, j);
        }
        v.truncate(n);
        return v;
    }
    // Fewer than a quarter of the pairs: a draw is new at least 3 times in 4.
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let p = draw(rng);
        if seen.insert(p) {
            out.push(p);
        }
    }
    out
}

fn pairs_of(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

/// Verify pairs of probes (rows of `m`) in batches; how many were accepted.
async fn accepted_pairs(
    g: &Gallery,
    batch: usize,
    m: &Matrix,
    pairs: &[(usize, usize)],
) -> Res<u64> {
    let mut n = 0;
    for chunk in pairs.chunks(batch) {
        let req: Vec<(Vec<f32>, Against)> = chunk
            .iter()
            .map(|&(i, j)| (m.row(i).to_vec(), Against::Vector(m.row(j).to_vec())))
            .collect();
        n += same_count(g, &req).await?;
    }
    Ok(n)
}

/// Verify probes against claimed subjects in batches; how many were accepted.
async fn accepted_claims(
    g: &Gallery,
    batch: usize,
    m: &Matrix,
    claims: &[(usize, &str)],
) -> Res<u64> {
    let mut n = 0;
    for chunk in claims.chunks(batch) {
        let req: Vec<(Vec<f32>, Against)> = chunk
            .iter()
            .map(|&(i, s)| (m.row(i).to_vec(), Against::Subject(s.to_owned())))
            .collect();
        n += same_count(g, &req).await?;
    }
    Ok(n)
}

async fn same_count(g: &Gallery, req: &[(Vec<f32>, Against)]) -> Res<u64> {
    let verdicts = g.verify_with(req, Threshold::default()).await?;
    if verdicts.len() != req.len() {
        return Err(Failure(format!(
            "the server answered {} verdicts for {} pairs",
            verdicts.len(),
            req.len()
        )));
    }
    Ok(verdicts.iter().filter(|v| v.same).count() as u64)
}

/// Identify probes (k = 1) in batches with the default decision: for each,
/// the subject it was identified as, or `None` when unknown.
async fn identified(
    g: &Gallery,
    batch: usize,
    m: &Matrix,
    probes: &[usize],
) -> Res<Vec<Option<String>>> {
    let mut out = Vec::with_capacity(probes.len());
    for chunk in probes.chunks(batch) {
        let rows: Vec<&[f32]> = chunk.iter().map(|&i| m.row(i)).collect();
        let r = g.identify_with(&rows, 1, Threshold::default()).await?;
        if r.len() != rows.len() {
            return Err(Failure(format!(
                "the server answered {} identifications for {} probes",
                r.len(),
                rows.len()
            )));
        }
        out.extend(r.into_iter().map(|r| r.known.then_some(r.subject)));
    }
    Ok(out)
}

/// Run `visage calibration-report`.
pub async fn run(client: &Client, a: ReportArgs, json: bool) -> Res {
    let g = a.model.gallery(client, &a.gallery);
    let info = g.stats().await?;
    let batch = batch_for(info.dim as usize);
    let m = read_vectors(&a.probes, &info)?;
    let truth = truth_lines(&a.truth)?;
    if truth.len() != m.rows {
        return Err(Failure(format!(
            "{} has {} probes but {} has {} lines (one true subject per probe, `-` or empty for a stranger)",
            a.probes.display(),
            count(m.rows as u64),
            a.truth.display(),
            count(truth.len() as u64)
        )));
    }
    if m.rows == 0 {
        return Err(Failure(format!("{} holds no probe", a.probes.display())));
    }
    let head = g.head().await?;
    if !head.trained && head.distance_threshold == 0.0 {
        return Err(Failure(format!(
            "gallery {} has no calibrated threshold: its decisions have no target to check \
             (calibrate them with: visage train-head {})",
            a.gallery, a.gallery
        )));
    }
    let target = head.target_far;

    // Which probes are of enrolled subjects.
    let named: Vec<String> = truth
        .iter()
        .flatten()
        .filter(|s| valid_subject(s))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let held = enrolled(&g, batch, &named, m.row(0)).await?;
    let is_enrolled = |i: usize| truth[i].as_ref().is_some_and(|s| held.contains(s));
    let enrolled_probes: Vec<usize> = (0..m.rows).filter(|&i| is_enrolled(i)).collect();
    let strangers: Vec<usize> = (0..m.rows).filter(|&i| !is_enrolled(i)).collect();

    // Each probe's person: its named subject, or a person of its own.
    let mut person_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut person = Vec::with_capacity(m.rows);
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (i, t) in truth.iter().enumerate() {
        let p = match t {
            Some(s) => *person_of.entry(s.as_str()).or_insert_with(|| {
                members.push(Vec::new());
                members.len() - 1
            }),
            None => {
                members.push(Vec::new());
                members.len() - 1
            }
        };
        members[p].push(i);
        person.push(p);
    }
    let genuine_total: u64 = members.iter().map(|v| pairs_of(v.len() as u64)).sum();
    let impostor_total = pairs_of(m.rows as u64) - genuine_total;

    // Impostor pairs: two probes of different people.
    let n = m.rows;
    let mut rng = Rng::new(a.seed ^ 0x1A90_5703);
    let impostor = choose_pairs(
        impostor_total,
        a.pairs,
        &mut rng,
        || {
            let mut v = Vec::new();
            for i in 0..n {
                for j in i + 1..n {
                    if person[i] != person[j] {
                        v.push((i, j));
                    }
                }
            }
            v
        },
        |rng| loop {
            let (i, j) = (rng.below(n), rng.below(n));
            if person[i] != person[j] {
                return (i.min(j), i.max(j));
            }
        },
    );
    // Genuine pairs: two probes of the same person, drawn uniformly: a
    // person with weight its number of pairs, then two of their probes.
    let mut cumulative = Vec::with_capacity(members.len());
    let mut acc = 0u64;
    for v in &members {
        acc += pairs_of(v.len() as u64);
        cumulative.push(acc);
    }
    let mut rng = Rng::new(a.seed ^ 0x6E_0017E);
    let genuine = choose_pairs(
        genuine_total,
        a.pairs,
        &mut rng,
        || {
            let mut v = Vec::new();
            for ps in &members {
                for (x, &i) in ps.iter().enumerate() {
                    for &j in &ps[x + 1..] {
                        v.push((i, j));
                    }
                }
            }
            v
        },
        |rng| {
            let r = rng.below(genuine_total as usize) as u64;
            let p = cumulative.partition_point(|&c| c <= r);
            let ps = &members[p];
            let x = rng.below(ps.len());
            let mut y = rng.below(ps.len() - 1);
            if y >= x {
                y += 1;
            }
            (ps[x.min(y)], ps[x.max(y)])
        },
    );

    // Claims: each probe claims an enrolled subject of the truth file that
    // is not its own; each enrolled probe claims its own.
    let claimable: Vec<&str> = held.iter().map(String::as_str).collect();
    let mut rng = Rng::new(a.seed ^ 0xC1A1_3500);
    let mut impostor_claims = Vec::new();
    for (i, t) in truth.iter().enumerate() {
        let own = t.as_deref().and_then(|s| claimable.binary_search(&s).ok());
        let choices = claimable.len() - usize::from(own.is_some());
        if choices == 0 {
            continue;
        }
        let mut c = rng.below(choices);
        if own.is_some_and(|o| c >= o) {
            c += 1;
        }
        impostor_claims.push((i, claimable[c]));
    }
    let genuine_claims: Vec<(usize, &str)> = enrolled_probes
        .iter()
        .filter_map(|&i| truth[i].as_deref().map(|s| (i, s)))
        .collect();

    let impostor_accepted = accepted_pairs(&g, batch, &m, &impostor).await?;
    let genuine_accepted = accepted_pairs(&g, batch, &m, &genuine).await?;
    let claims_accepted = accepted_claims(&g, batch, &m, &impostor_claims).await?;
    let own_accepted = accepted_claims(&g, batch, &m, &genuine_claims).await?;
    let strangers_known = identified(&g, batch, &m, &strangers)
        .await?
        .iter()
        .filter(|s| s.is_some())
        .count() as u64;
    let answers = identified(&g, batch, &m, &enrolled_probes).await?;
    let enrolled_right = answers
        .iter()
        .zip(&enrolled_probes)
        .filter(|&(got, &i)| got.is_some() && *got == truth[i])
        .count() as u64;

    let len = |v: usize| v as u64;
    let rows = [
        Row {
            key: "verify_pairs_far",
            label: "verify pairs, impostor accepted (FAR)",
            decisions: len(impostor.len()),
            errors: impostor_accepted,
            target: Some(target),
        },
        Row {
            key: "verify_pairs_frr",
            label: "verify pairs, genuine rejected (FRR)",
            decisions: len(genuine.len()),
            errors: len(genuine.len()) - genuine_accepted,
            target: None,
        },
        Row {
            key: "verify_claims_far",
            label: "verify claims, impostor accepted (FAR)",
            decisions: len(impostor_claims.len()),
            errors: claims_accepted,
            target: Some(target),
        },
        Row {
            key: "verify_claims_frr",
            label: "verify claims, genuine rejected (FRR)",
            decisions: len(genuine_claims.len()),
            errors: len(genuine_claims.len()) - own_accepted,
            target: None,
        },
        Row {
            key: "identify_fpir",
            label: "identify strangers, known (FPIR)",
            decisions: len(strangers.len()),
            errors: strangers_known,
            target: Some(target),
        },
        Row {
            key: "identify_fnir",
            label: "identify enrolled, not found (FNIR)",
            decisions: len(enrolled_probes.len()),
            errors: len(enrolled_probes.len()) - enrolled_right,
            target: None,
        },
    ];

    if json {
        return print_json(&json!({
            "gallery": a.gallery,
            "target": short_f64(target),
            "rows": rows.iter().map(row_json).collect::<Vec<Value>>(),
            "probes": m.rows,
            "strangers": strangers.len(),
            "enrolled": enrolled_probes.len(),
        }));
    }
    println!(
        "gallery {}: {} probes, {} enrolled, {} strangers; decisions calibrated for FAR {target} ({})",
        a.gallery,
        count(m.rows as u64),
        count(enrolled_probes.len() as u64),
        count(strangers.len() as u64),
        if head.trained {
            "scoring head"
        } else {
            "distance, no head"
        }
    );
    if head.open_probes == 0 {
        println!("identify has no open-set calibration and decides with the 1:1 threshold");
    }
    print!("{}", table(&rows));
    Ok(())
}

/// An f32 as the f64 of its shortest decimal form (0.05, not 0.0500000007…).
fn short_f64(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

fn row_json(r: &Row) -> Value {
    let (low, high) = match r.decisions {
        0 => (None, None),
        n => {
            let (l, h) = wilson(r.errors, n);
            (Some(l), Some(h))
        }
    };
    json!({
        "decision": r.key, "decisions": r.decisions, "errors": r.errors,
        "rate": r.rate(), "low": low, "high": high, "target": r.target.map(short_f64),
    })
}

/// Where the target lies against the interval.
fn against(r: &Row) -> &'static str {
    match (r.target, r.decisions) {
        (None, _) | (_, 0) => "-",
        (Some(t), n) => {
            let (low, high) = wilson(r.errors, n);
            let t = short_f64(t);
            if high <= t {
                "below"
            } else if low > t {
                "ABOVE"
            } else {
                "consistent"
            }
        }
    }
}

fn table(rows: &[Row]) -> String {
    let mut t = Table::new(
        &[
            "DECISION",
            "DECISIONS",
            "ERRORS",
            "RATE",
            "95% INTERVAL",
            "TARGET",
            "VS TARGET",
        ],
        &[false, true, true, true, false, true, false],
    );
    for r in rows {
        let (rate, interval) = match r.rate() {
            None => ("-".into(), "-".into()),
            Some(rate) => {
                let (l, h) = wilson(r.errors, r.decisions);
                (format!("{rate:.6}"), format!("[{l:.6}, {h:.6}]"))
            }
        };
        t.row(vec![
            r.label.into(),
            count(r.decisions),
            count(r.errors),
            rate,
            interval,
            r.target.map_or("-".into(), |t| t.to_string()),
            against(r).into(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_published_values() {
        // Newcombe (1998), Table I: 81/263 → 0.2553–0.3662; 15/148 → 0.0624–0.1605;
        // 0/20 → 0–0.1611; 1/29 → 0.0061–0.1718.
        for (k, n, lo, hi) in [
            (81, 263, 0.2553, 0.3662),
            (15, 148, 0.0624, 0.1605),
            (0, 20, 0.0, 0.1611),
            (1, 29, 0.0061, 0.1718),
        ] {
            let (l, h) = wilson(k, n);
            assert!(
                (l - lo).abs() < 5e-5 && (h - hi).abs() < 5e-5,
                "{k}/{n}: {l} {h}"
            );
        }
        assert_eq!(wilson(7, 7).1, 1.0);
    }

    #[test]
    fn pairs_are_all_listed_or_distinct_draws() {
        let mut rng = Rng::new(3);
        let all = || {
            (0..10)
                .flat_map(|i| (i + 1..10).map(move |j| (i, j)))
                .collect()
        };
        let draw = |r: &mut Rng| {
            let (i, j) = (r.below(10), r.below(9));
            let j = if j >= i { j + 1 } else { j };
            (i.min(j), i.max(j))
        };
        assert_eq!(choose_pairs(45, 45, &mut rng, all, draw).len(), 45);
        for n in [20, 5] {
            let v = choose_pairs(45, n, &mut rng, all, draw);
            let set: HashSet<_> = v.iter().collect();
            assert_eq!((v.len(), set.len()), (n, n));
            assert!(v.iter().all(|&(i, j)| i < j && j < 10));
        }
    }
}

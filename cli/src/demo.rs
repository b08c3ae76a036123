//! `visage demo`: the whole story in one command, on an embedded engine in a
//! temporary directory (no server): generate a synthetic organisation, enrol
//! it durably and flush it to a segment, train the scoring head, identify
//! probes (half enrolled, half strangers) with the head and with plain
//! distance, delete a person and show they are gone, compact.
//!
//! Plain distance is measured on the same gallery: [`Gallery::identify`]
//! ranks subjects by exact distance and a probe counts as known iff its best
//! candidate is within the gallery's calibrated open-set distance threshold,
//! which is exactly what `identify_open` decides on a gallery without a head.

use crate::output::{Table, bytes, count};
use crate::synth::{config, nuisance_name, probes};
use crate::{Failure, Res, head_json, head_text, print_json};
use clap::Args;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Instant;
use visage_engine::synth::{Probe, SynthGallery};
use visage_engine::{
    DIM, Engine, EngineOptions, Gallery, GallerySpec, GalleryStats, IdentifyOptions, Limits,
    TrainOptions, VerifyOptions, VerifyPair, VerifyTarget,
};
use visage_server::convert::head_out;

/// Embeddings per durable insert (fewer for large vectors: the gallery's
/// limit, `Limits::for_dim`).
const ENROL_BATCH: usize = 10_000;
/// Candidates per probe.
const K: usize = 5;

/// Arguments of `visage demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// People to enrol (8 to 12 images each).
    #[arg(long, default_value_t = 10_000)]
    subjects: usize,
    /// Probes to identify: half new images of enrolled people, half strangers.
    #[arg(long, default_value_t = 2_000)]
    probes: usize,
    /// Seed of the data and of the head's pair sampling.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Values per vector: a multiple of 16 from 16 to 2048.
    #[arg(long, default_value_t = DIM)]
    dim: usize,
    /// Pairs drawn to train and calibrate the head (the engine's default).
    #[arg(long, default_value_t = TrainOptions::default().max_pairs)]
    max_pairs: usize,
    /// Isotropic nuisance (every coordinate varies alike) instead of anisotropic.
    #[arg(long)]
    isotropic: bool,
    /// Keep the data directory here instead of a temporary one (created; must not hold a gallery named `demo`).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Also draw the head's calibration as an SVG file (as `visage head-info
    /// --plot`): DET curves of head and distance, FPIR against enrolled subjects.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

/// One probe's answer, whatever decided it.
#[derive(Debug, Clone)]
struct Answer {
    known: bool,
    subject: Option<String>,
    /// First candidate's subject.
    best: Option<String>,
}

/// How a set of answers scores against the truth.
#[derive(Debug, Default, Clone, Copy)]
struct Rates {
    enrolled: usize,
    strangers: usize,
    /// Enrolled probes whose first candidate is their subject.
    rank1: usize,
    /// Enrolled probes declared known and correct.
    known_correct: usize,
    /// Enrolled probes declared known as somebody else.
    known_wrong: usize,
    /// Strangers declared known.
    strangers_accepted: usize,
    seconds: f64,
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

impl Rates {
    fn of(truth: &[Probe], answers: &[Answer], seconds: f64) -> Rates {
        let mut r = Rates {
            seconds,
            ..Rates::default()
        };
        for (p, a) in truth.iter().zip(answers) {
            match &p.subject {
                Some(s) => {
                    r.enrolled += 1;
                    r.rank1 += usize::from(a.best.as_ref() == Some(s));
                    if a.known {
                        if a.subject.as_ref() == Some(s) {
                            r.known_correct += 1;
                        } else {
                            r.known_wrong += 1;
                        }
                    }
                }
                None => {
                    r.strangers += 1;
                    r.strangers_accepted += usize::from(a.known);
                }
            }
        }
        r
    }

    fn probes_per_second(&self) -> f64 {
        ratio(self.enrolled + self.strangers, 1) / self.seconds.max(1e-9)
    }

    fn json(&self) -> Value {
        json!({
            "rank1_rate": ratio(self.rank1, self.enrolled),
            "known_correct_rate": ratio(self.known_correct, self.enrolled),
            "known_wrong_rate": ratio(self.known_wrong, self.enrolled),
            "stranger_far": ratio(self.strangers_accepted, self.strangers),
            "rank1": self.rank1,
            "known_correct": self.known_correct,
            "known_wrong": self.known_wrong,
            "strangers_accepted": self.strangers_accepted,
            "seconds": self.seconds,
            "probes_per_second": self.probes_per_second(),
        })
    }
}

fn stats_json(s: &GalleryStats) -> Value {
    json!({
        "live": s.live, "deleted": s.deleted, "subjects": s.subjects, "segments": s.segments,
        "memtable_rows": s.memtable_rows, "bytes_on_disk": s.bytes_on_disk,
    })
}

/// Identify in batches of at most the gallery's probe limit with the head
/// (or the gallery's calibrated decision).
fn identify_head(g: &Gallery, vs: &[&[f32]]) -> Res<Vec<Answer>> {
    let mut out = Vec::with_capacity(vs.len());
    for chunk in vs.chunks(Limits::for_dim(g.dim()).probes) {
        let opts = IdentifyOptions {
            k: K,
            ..IdentifyOptions::default()
        };
        for r in g.identify_open(chunk, &opts)? {
            out.push(Answer {
                known: r.known,
                best: r.candidates.first().map(|c| c.subject.clone()),
                subject: r.subject,
            });
        }
    }
    Ok(out)
}

/// Identify by exact distance, known iff the best is within `threshold`.
fn identify_distance(g: &Gallery, vs: &[&[f32]], threshold: f32) -> Res<Vec<Answer>> {
    let mut out = Vec::with_capacity(vs.len());
    for chunk in vs.chunks(Limits::for_dim(g.dim()).probes) {
        for cands in g.identify(chunk, K)? {
            let best = cands.first();
            let known = best.is_some_and(|b| b.distance <= threshold);
            out.push(Answer {
                known,
                subject: best.filter(|_| known).map(|b| b.subject.clone()),
                best: best.map(|b| b.subject.clone()),
            });
        }
    }
    Ok(out)
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

fn rate(n: usize, s: f64) -> String {
    count((n as f64 / s.max(1e-9)) as u64)
}

/// Run `visage demo`.
pub fn run(a: DemoArgs, json: bool) -> Res {
    if a.subjects < 10 {
        return Err(Failure(
            "--subjects must be at least 10 (the head trains and calibrates on held-out subjects)"
                .into(),
        ));
    }
    if a.probes < 2 {
        return Err(Failure(
            "--probes must be at least 2 (half enrolled, half strangers)".into(),
        ));
    }
    let total = Instant::now();
    let say = |line: String| {
        if !json {
            println!("{line}");
        }
    };

    // Data.
    let t = Instant::now();
    let cfg = config(a.subjects, a.seed, a.isotropic, a.dim)?;
    let data = SynthGallery::generate(cfg);
    let ps = probes(&data, a.probes);
    let generate_s = secs(t);
    let n = data.embeddings.len();
    let known_probes = ps.iter().filter(|p| p.subject.is_some()).count();

    // Engine.
    let tmp;
    let root = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("visage-demo-").tempdir()?;
            tmp.path().to_owned()
        }
    };
    let engine = Engine::open(&root, EngineOptions::default())?;
    let g = engine.create_gallery_with("demo", &GallerySpec::with_dim(a.dim))?;
    let enrol_batch = ENROL_BATCH.min(Limits::for_dim(a.dim).insert_batch);
    say(format!(
        "visage demo: embedded engine in {}{}",
        root.display(),
        if a.dir.is_some() {
            ""
        } else {
            " (removed at exit)"
        }
    ));
    say(format!(
        "data:     {} subjects, {} embeddings of {} values ({}-{} images each, {} nuisance, seed {}), generated in {generate_s:.2} s",
        count(a.subjects as u64),
        count(n as u64),
        a.dim,
        cfg.min_images,
        cfg.max_images,
        nuisance_name(cfg.nuisance),
        a.seed
    ));
    say(format!(
        "          {} probes: {} new images of enrolled people, {} strangers",
        count(ps.len() as u64),
        count(known_probes as u64),
        count((ps.len() - known_probes) as u64)
    ));

    // Enrol.
    let t = Instant::now();
    let mut batches = 0;
    for chunk in data.embeddings.chunks(enrol_batch) {
        g.insert(chunk)?;
        batches += 1;
    }
    let enrol_s = secs(t);
    say(format!(
        "enrol:    {} embeddings in {batches} durable batches of up to {}: {enrol_s:.2} s ({} embeddings/s)",
        count(n as u64),
        count(enrol_batch as u64),
        rate(n, enrol_s)
    ));
    // The rows are in the WAL and memtable; write them to a segment, as the
    // server does once the memtable fills, so searches scan the segment form.
    let t = Instant::now();
    let flushed = g.flush()?;
    let flush_s = secs(t);
    say(format!(
        "flush:    memtable to {} segment(s), {} on disk: {flush_s:.2} s",
        flushed.after.segments,
        bytes(flushed.after.bytes_on_disk)
    ));

    // Train.
    let t = Instant::now();
    let opts = TrainOptions {
        max_pairs: a.max_pairs,
        seed: a.seed,
        ..TrainOptions::default()
    };
    let head = g.train_head(&opts)?;
    let train_s = secs(t);
    // The wire message, as the server converts it, so it prints (and plots)
    // like `visage head-info`.
    let enrolled = g.stats().subjects;
    let hp = head_out(Some(&head), enrolled);
    say(format!(
        "head:     trained and calibrated in {train_s:.2} s (max_pairs {})",
        count(a.max_pairs as u64)
    ));
    if !json {
        for l in head_text(&hp).lines() {
            println!("          {l}");
        }
    }
    if let Some(path) = &a.plot {
        crate::plot::render(&crate::plot::calibration("demo", &hp)?, path)?;
        say(format!("plot:     written to {}", path.display()));
    }

    // Identify: head, then plain distance.
    let vs: Vec<&[f32]> = ps.iter().map(|p| p.vector.as_slice()).collect();
    let t = Instant::now();
    let by_head = identify_head(&g, &vs)?;
    let head_rates = Rates::of(&ps, &by_head, secs(t));
    // The open-set distance threshold for the gallery's current size, as
    // identify_open takes it without a head.
    let dist_threshold = head
        .open_rule(enrolled)
        .and_then(|r| r.distance)
        .unwrap_or(head.distance_threshold);
    let t = Instant::now();
    let by_distance = identify_distance(&g, &vs, dist_threshold)?;
    let dist_rates = Rates::of(&ps, &by_distance, secs(t));
    say(format!(
        "identify: {} probes in one batch, k = {K}; head: identify_open (ranked by probability, its open-set threshold \
         for N = {}); distance: exact distance ranking, known iff d <= {dist_threshold:.4}",
        count(ps.len() as u64),
        count(enrolled)
    ));
    if !json {
        let mut t = Table::new(&["", "HEAD", "DISTANCE"], &[false, true, true]);
        let pct = |a: usize, b: usize| format!("{:.4}", ratio(a, b));
        let (h, d) = (&head_rates, &dist_rates);
        t.row(vec![
            "rank-1 identification rate (enrolled)".into(),
            pct(h.rank1, h.enrolled),
            pct(d.rank1, d.enrolled),
        ]);
        t.row(vec![
            "known and correct (enrolled)".into(),
            pct(h.known_correct, h.enrolled),
            pct(d.known_correct, d.enrolled),
        ]);
        t.row(vec![
            "known as someone else (enrolled)".into(),
            pct(h.known_wrong, h.enrolled),
            pct(d.known_wrong, d.enrolled),
        ]);
        t.row(vec![
            "false-accept rate (strangers known)".into(),
            format!(
                "{} ({})",
                pct(h.strangers_accepted, h.strangers),
                h.strangers_accepted
            ),
            format!(
                "{} ({})",
                pct(d.strangers_accepted, d.strangers),
                d.strangers_accepted
            ),
        ]);
        t.row(vec![
            "probes/s".into(),
            rate(ps.len(), h.seconds),
            rate(ps.len(), d.seconds),
        ]);
        for l in t.render().lines() {
            println!("          {l}");
        }
    }

    // Delete someone a probe identified, and show they are gone.
    let pick = ps
        .iter()
        .zip(&by_head)
        .position(|(p, r)| r.known && p.subject.is_some() && r.subject == p.subject)
        .or_else(|| ps.iter().position(|p| p.subject.is_some()));
    let Some(i) = pick else {
        return Err(Failure("no probe of an enrolled person".into()));
    };
    let who = ps[i].subject.clone().unwrap_or_default();
    let probe = [ps[i].vector.as_slice()];
    let opts = IdentifyOptions {
        k: K,
        ..IdentifyOptions::default()
    };
    let before = g
        .identify_open(&probe, &opts)?
        .pop()
        .ok_or_else(|| Failure("no identification".into()))?;
    let t = Instant::now();
    let deleted = g.delete(&[], std::slice::from_ref(&who))?;
    let delete_s = secs(t);
    let after = g
        .identify_open(&probe, &opts)?
        .pop()
        .ok_or_else(|| Failure("no identification".into()))?;
    let still_found = after.candidates.iter().any(|c| c.subject == who);
    let verify_after = match g.verify(
        &[VerifyPair {
            a: ps[i].vector.clone(),
            b: VerifyTarget::Subject(who.clone()),
        }],
        &VerifyOptions::default(),
    ) {
        Ok(v) => format!(
            "still verifiable (same = {})",
            v.first().is_some_and(|v| v.same)
        ),
        Err(e) => e.to_string(),
    };
    // Candidates' probabilities: the calibrated P(same person) of the one
    // comparison with the candidate's best image, at the gallery's prior.
    // Identification asks more of the best of N subjects than of one
    // comparison: a high probability can still be "unknown".
    let prior = head
        .calibrated
        .as_ref()
        .filter(|c| c.platt.is_some())
        .map(|c| c.prior);
    let (n_before, n_after) = (enrolled, g.stats().subjects);
    let describe = |r: &visage_engine::Identification, n: u64| -> String {
        let best = r.candidates.first().map_or("no candidate".into(), |c| {
            let p = match (c.probability, prior) {
                (Some(p), Some(prior)) => format!("P(same) = {p:.4} at prior {prior}"),
                (Some(p), None) => format!("p = {p:.4}, uncalibrated"),
                (None, _) => "no probability".into(),
            };
            format!("{} ({p}, d = {:.4})", c.subject, c.distance)
        });
        if r.known {
            format!("known: {best}")
        } else {
            format!(
                "unknown (below the identification threshold for N = {}); best candidate {best}",
                count(n)
            )
        }
    };
    say(format!(
        "delete:   probe {i} showed {who}: {}",
        describe(&before, n_before)
    ));
    say(format!(
        "          deleted subject {who} ({deleted} embeddings) in {:.3} s",
        delete_s
    ));
    say(format!(
        "          probe {i} now: {}; {who} {} its {K} candidates",
        describe(&after, n_after),
        if still_found {
            "IS STILL among"
        } else {
            "is not among"
        }
    ));
    say(format!("          verify against {who}: {verify_after}"));

    // Compact.
    let t = Instant::now();
    let report = g.compact()?;
    let compact_s = secs(t);
    say(format!("compact:  {compact_s:.2} s"));
    if !json {
        let mut t = Table::new(&["", "BEFORE", "AFTER"], &[false, true, true]);
        let (b, c) = (report.before, report.after);
        for (k, x, y) in [
            ("live", count(b.live), count(c.live)),
            ("deleted", count(b.deleted), count(c.deleted)),
            ("subjects", count(b.subjects), count(c.subjects)),
            ("segments", count(b.segments), count(c.segments)),
            ("in memory", count(b.memtable_rows), count(c.memtable_rows)),
            ("on disk", bytes(b.bytes_on_disk), bytes(c.bytes_on_disk)),
        ] {
            t.row(vec![k.into(), x, y]);
        }
        for l in t.render().lines() {
            println!("          {l}");
        }
    }
    let total_s = secs(total);
    say(format!(
        "total:    {total_s:.1} s (generate {generate_s:.1}, enrol {enrol_s:.1}, flush {flush_s:.1}, \
         train {train_s:.1}, identify {:.1} + {:.1}, compact {compact_s:.1})",
        head_rates.seconds, dist_rates.seconds
    ));
    if json {
        print_json(&json!({
            "config": {
                "subjects": a.subjects, "embeddings": n, "probes": ps.len(),
                "enrolled_probes": known_probes, "stranger_probes": ps.len() - known_probes,
                "seed": a.seed, "nuisance": nuisance_name(cfg.nuisance),
                "max_pairs": a.max_pairs, "k": K, "enrol_batch": enrol_batch, "dim": a.dim,
            },
            "enrol": {
                "embeddings": n, "batches": batches, "seconds": enrol_s,
                "per_second": n as f64 / enrol_s.max(1e-9),
            },
            "head": head_json(&hp),
            "train_seconds": train_s,
            "identify": {
                "head": head_rates.json(),
                "distance": dist_rates.json(),
                "distance_threshold": dist_threshold,
            },
            "delete": {
                "probe": i,
                "subject": who,
                "deleted": deleted,
                "seconds": delete_s,
                "before": { "known": before.known, "subject": before.subject,
                            "best": before.candidates.first().map(|c| c.subject.clone()) },
                "after": { "known": after.known, "subject": after.subject,
                           "best": after.candidates.first().map(|c| c.subject.clone()) },
                "still_found": still_found,
                "verify_after": verify_after,
            },
            "compact": {
                "seconds": compact_s,
                "before": stats_json(&report.before),
                "after": stats_json(&report.after),
            },
            "timings": {
                "generate": generate_s, "enrol": enrol_s, "flush": flush_s, "train": train_s,
                "identify_head": head_rates.seconds, "identify_distance": dist_rates.seconds,
                "delete": delete_s, "compact": compact_s, "total": total_s,
            },
        }))?;
    }
    Ok(())
}

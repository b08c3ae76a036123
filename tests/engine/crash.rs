//! Process crashes: this test binary re-runs itself as a child that writes to a
//! gallery (background flushes and merges on a small memtable, an occasional
//! explicit compaction) from two threads, so batches also share group commits.
//! After each acknowledged batch a thread appends a line naming it to its own
//! acknowledgement log with `sync_data`. The parent kills the child with
//! SIGKILL at random moments, reopens the gallery, and checks it against a
//! model built from the acknowledged batches alone: every acknowledged insert
//! is there with identical bytes (unless later deleted or replaced), every
//! acknowledged delete is absent, and the batch each thread had in flight is
//! wholly present or wholly absent (each thread's id range must equal its
//! model with or without that batch). Threads use disjoint ids and subjects.
//!
//! Batches are regenerated from `(run seed, thread, batch number)`; each log
//! line also carries the batch's seed and a fingerprint of its contents, so
//! parent and child provably agree on what was written. The default durable
//! mode is tested with 30 kills, `Durability::ProcessCrash` (which promises to
//! survive exactly this) with 10; galleries of 512 values a vector (the other
//! size with specialised kernels) and 96 (the generic kernels) with fewer.

use crate::support::{
    Model, assert_same, check_search, create, mix, opts, rerun_self, subject_count,
};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use visage_engine::{Durability, Embedding, Engine};
use visage_tests::Rng;

const CHILD_ENV: &str = "VISAGE_CRASH_CHILD";
const GALLERY: &str = "crash";
/// Ids are drawn from this range, so upserts and deletes hit live ids often.
const ID_SPACE: u64 = 1500;
const SUBJECTS: u64 = 60;
/// Writer threads in the child.
const THREADS: u64 = 2;

enum Batch {
    Insert(Vec<Embedding>),
    Delete {
        ids: Vec<u64>,
        subjects: Vec<String>,
    },
}

/// Batch number `n` of thread `t` of the run: its seed and contents (vectors of `dim` values).
fn batch(run_seed: u64, t: u64, n: u64, dim: usize) -> (u64, Batch) {
    let bseed = mix(mix(run_seed, t), n);
    let mut rng = Rng(bseed);
    let base = t * ID_SPACE;
    if rng.below(4) == 0 {
        let ids = (0..1 + rng.below(6))
            .map(|_| base + rng.below(ID_SPACE))
            .collect();
        let subjects = if rng.below(6) == 0 {
            vec![format!("t{t}-s{}", rng.below(SUBJECTS))]
        } else {
            vec![]
        };
        return (bseed, Batch::Delete { ids, subjects });
    }
    let n = if rng.below(10) == 0 {
        100
    } else {
        1 + rng.below(16)
    };
    let mut ids = std::collections::BTreeSet::new();
    while (ids.len() as u64) < n {
        ids.insert(base + rng.below(ID_SPACE));
    }
    // Several embeddings of the same subject in one batch, in random id order.
    let subject = rng.below(SUBJECTS);
    let mut items: Vec<Embedding> = ids
        .into_iter()
        .map(|id| Embedding {
            id,
            subject: format!("t{t}-s{}", (subject + rng.below(3)) % SUBJECTS),
            vector: rng.vector_of(dim),
        })
        .collect();
    items.sort_by_key(|e| mix(e.id, 1));
    (bseed, Batch::Insert(items))
}

/// FNV-1a over everything the batch writes.
fn fingerprint(b: &Batch) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |bytes: &[u8]| {
        for &x in bytes {
            h = (h ^ x as u64).wrapping_mul(0x0000_0100_0000_01B3);
        }
    };
    match b {
        Batch::Insert(items) => {
            for e in items {
                eat(&e.id.to_le_bytes());
                eat(e.subject.as_bytes());
                for x in &e.vector {
                    eat(&x.to_le_bytes());
                }
            }
        }
        Batch::Delete { ids, subjects } => {
            for id in ids {
                eat(&id.to_le_bytes());
            }
            for s in subjects {
                eat(s.as_bytes());
            }
        }
    }
    h
}

fn ack_line(run_seed: u64, t: u64, n: u64, dim: usize) -> String {
    let (bseed, b) = batch(run_seed, t, n, dim);
    format!("{n} {bseed:016x} {:016x}\n", fingerprint(&b))
}

fn apply(model: &mut Model, b: &Batch) {
    match b {
        Batch::Insert(items) => {
            for e in items {
                model.insert(e.id, e.clone());
            }
        }
        Batch::Delete { ids, subjects } => {
            for id in ids {
                model.remove(id);
            }
            model.retain(|_, e| !subjects.contains(&e.subject));
        }
    }
}

fn ack_path(dir: &Path, t: u64) -> std::path::PathBuf {
    dir.join(format!("acks-{t}.log"))
}

fn durability(mode: &str) -> Durability {
    match mode {
        "power-loss" => Durability::PowerLoss,
        "process-crash" => Durability::ProcessCrash,
        m => panic!("unknown mode {m}"),
    }
}

/// The child: each thread writes its batches from `VISAGE_CRASH_START_<t>` on until killed.
#[test]
fn child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let env_u64 = |k: &str| std::env::var(k).unwrap().parse::<u64>().unwrap();
    let run_seed = env_u64("VISAGE_CRASH_SEED");
    let mut o = opts(true, 64);
    o.gallery.durability = durability(&std::env::var("VISAGE_CRASH_MODE").unwrap());
    o.gallery.compaction.min_small_to_merge = 3;
    let engine = Engine::open(dir.join("data"), o).expect("child: open");
    let g = engine.gallery(GALLERY).expect("child: gallery");
    let dim = g.dim();
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (g, start) = (&g, env_u64(&format!("VISAGE_CRASH_START_{t}")));
            scope.spawn(move || {
                let mut ack = OpenOptions::new()
                    .append(true)
                    .open(ack_path(dir, t))
                    .expect("child: ack log");
                let t0 = Instant::now();
                for n in start.. {
                    match batch(run_seed, t, n, dim).1 {
                        Batch::Insert(items) => {
                            g.insert(&items).expect("child: insert");
                        }
                        Batch::Delete { ids, subjects } => {
                            g.delete(&ids, &subjects).expect("child: delete");
                        }
                    }
                    ack.write_all(ack_line(run_seed, t, n, dim).as_bytes())
                        .unwrap();
                    ack.sync_data().unwrap();
                    if t == 0 && n % 50 == 49 {
                        g.compact().expect("child: compact");
                    }
                    if t0.elapsed() > Duration::from_secs(20) {
                        break; // never reached when the parent is alive: it kills much sooner
                    }
                }
            });
        }
    });
}

/// Read the complete lines of the acknowledgement log from batch `next` on,
/// checking that they name consecutive batches with the contents we regenerate.
fn read_acks(path: &Path, run_seed: u64, t: u64, next: u64, dim: usize) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut expect = next;
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break; // torn by the kill: that batch counts as in flight
        }
        let n: u64 = line.split(' ').next().unwrap().parse().unwrap();
        if n < next {
            continue;
        }
        assert_eq!(n, expect, "thread {t}: acknowledgement log skips a batch");
        assert_eq!(
            line,
            ack_line(run_seed, t, n, dim),
            "thread {t} batch {n}: child and parent disagree on its contents"
        );
        out.push(n);
        expect += 1;
    }
    out
}

/// Describe how `state` differs from `model`.
fn diff(state: &Model, model: &Model) -> String {
    let mut out = Vec::new();
    for id in 0..THREADS * ID_SPACE {
        match (state.get(&id), model.get(&id)) {
            (None, None) => {}
            (Some(_), None) => out.push(format!("id {id} present, model says deleted")),
            (None, Some(_)) => out.push(format!("id {id} missing")),
            (Some(a), Some(b)) => {
                if a.subject != b.subject
                    || crate::support::bits(&a.vector) != crate::support::bits(&b.vector)
                {
                    out.push(format!("id {id} has other contents"));
                }
            }
        }
    }
    out.truncate(12);
    out.join("; ")
}

fn same(state: &Model, model: &Model) -> bool {
    state.len() == model.len()
        && state.iter().zip(model).all(|((a, ea), (b, eb))| {
            a == b
                && ea.subject == eb.subject
                && crate::support::bits(&ea.vector) == crate::support::bits(&eb.vector)
        })
}

/// Kill the child `kills` times in mode `durability`, writing to a gallery of `dim`
/// values a vector, and verify after each kill.
fn run(durability: &str, kills: usize, dim: usize) {
    let run_seed: u64 = std::env::var("VISAGE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_C4A5);
    let mode = &format!("{durability} at {dim}");
    println!("{mode}: crash test run seed {run_seed} (set VISAGE_CRASH_SEED to repeat)");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    {
        let e = Engine::open(&data, opts(false, 64)).unwrap();
        create(&e, GALLERY, dim);
    }
    for t in 0..THREADS {
        std::fs::write(ack_path(dir, t), "").unwrap();
    }
    let mut rng = Rng(run_seed ^ 0xA11CE);
    let mut models = vec![Model::new(); THREADS as usize];
    let mut next = vec![0u64; THREADS as usize];
    let (mut in_flight_applied, mut productive_runs, mut max_segments) = (0, 0, 0);
    let t0 = Instant::now();
    for kill in 0..kills {
        let stderr_path = dir.join("child.stderr");
        let mut cmd = rerun_self("crash::child");
        cmd.env(CHILD_ENV, dir)
            .env("VISAGE_CRASH_SEED", run_seed.to_string())
            .env("VISAGE_CRASH_MODE", durability)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        for t in 0..THREADS {
            cmd.env(
                format!("VISAGE_CRASH_START_{t}"),
                next[t as usize].to_string(),
            );
        }
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(20 + rng.below(400)));
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "child exited by itself ({status}) before kill {kill}:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let engine = Engine::open(&data, opts(false, 64))
            .unwrap_or_else(|e| panic!("{mode}, kill {kill}: reopen after SIGKILL failed: {e}"));
        let g = engine.gallery(GALLERY).unwrap();
        assert_eq!(
            g.dim(),
            dim,
            "{mode}, kill {kill}: dimension after reopening"
        );
        let mut acked_any = false;
        for t in 0..THREADS {
            let ti = t as usize;
            let acked = read_acks(&ack_path(dir, t), run_seed, t, next[ti], dim);
            acked_any |= !acked.is_empty();
            for &n in &acked {
                apply(&mut models[ti], &batch(run_seed, t, n, dim).1);
            }
            next[ti] += acked.len() as u64;
            let ids: Vec<u64> = (t * ID_SPACE..(t + 1) * ID_SPACE).collect();
            let state: Model = g.get(&ids).into_iter().map(|e| (e.id, e)).collect();
            if !same(&state, &models[ti]) {
                // The batch in flight may have been committed before its acknowledgement was logged.
                let mut with_next = models[ti].clone();
                apply(&mut with_next, &batch(run_seed, t, next[ti], dim).1);
                assert!(
                    same(&state, &with_next),
                    "{mode}, kill {kill} (run seed {run_seed}), thread {t}: its ids match neither its {} \
                     acknowledged batches ({}) nor them plus batch {} in flight ({})",
                    next[ti],
                    diff(&state, &models[ti]),
                    next[ti],
                    diff(&state, &with_next),
                );
                models[ti] = with_next;
                next[ti] += 1;
                in_flight_applied += 1;
            }
            // Keep only whole lines, so the next child appends after a clean end.
            let lines: String = (0..next[ti])
                .map(|n| ack_line(run_seed, t, n, dim))
                .collect();
            std::fs::write(ack_path(dir, t), lines).unwrap();
        }
        if acked_any {
            productive_runs += 1;
        }
        let model: Model = models
            .iter()
            .flatten()
            .map(|(&k, v)| (k, v.clone()))
            .collect();
        let all: Vec<u64> = (0..THREADS * ID_SPACE).collect();
        for e in g.get(&all) {
            assert_same(&e, &model[&e.id], &format!("{mode}, kill {kill}"));
        }
        let s = g.stats();
        assert_eq!(s.live, model.len() as u64, "{mode}, kill {kill}: live");
        assert_eq!(
            s.subjects,
            subject_count(&model),
            "{mode}, kill {kill}: subjects"
        );
        max_segments = max_segments.max(s.segments);
        let probe = rng.vector_of(dim);
        let hits = g.search(std::slice::from_ref(&probe), 20).unwrap();
        check_search(
            &hits[0],
            &model,
            &probe,
            20,
            false,
            &format!("{mode}, kill {kill}"),
        );
    }
    let batches: u64 = next.iter().sum();
    println!(
        "{mode}: {kills} kills, {batches} batches verified ({in_flight_applied} in flight at a kill \
         were found committed), {productive_runs} runs acknowledged writes, up to {max_segments} \
         segments, {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        productive_runs >= kills / 2 && batches >= 20 * kills as u64,
        "too little was written to prove anything"
    );
}

#[test]
fn acknowledged_batches_survive_sigkill_and_none_is_half_applied() {
    run("power-loss", 30, 128);
}

#[test]
fn acknowledged_batches_survive_sigkill_and_none_is_half_applied_at_512() {
    run("power-loss", 20, 512);
}

#[test]
fn acknowledged_batches_survive_sigkill_and_none_is_half_applied_at_96() {
    run("power-loss", 10, 96);
}

#[test]
fn process_crash_mode_also_survives_sigkill() {
    run("process-crash", 10, 128);
}

#[test]
fn process_crash_mode_also_survives_sigkill_at_512() {
    run("process-crash", 6, 512);
}

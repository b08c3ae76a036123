//! The `visage` tool's scoring-head commands and the synthetic data: `synth`
//! writes reproducible unit-norm files that `insert` accepts; `demo` runs the
//! whole story embedded and reports consistent numbers; `train-head` over
//! gRPC, then `identify` and `verify` show probabilities and decide with the
//! calibrated thresholds.

use crate::cli::{Cli, p, write_vectors};
use crate::harness::{Server, TempData};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use visage_client::npy;

/// A CLI whose server does not exist: `synth` and `demo` must not need one.
fn offline() -> Cli {
    Cli {
        url: "http://127.0.0.1:1".into(),
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The head's logit for a pair from its JSON (`visage head-info --json`):
/// `sum_k w_k |a_k - b_k| + w_d ||a - b||^2 + bias`, in f64.
fn logit_of(h: &Value, a: &[f32], b: &[f32]) -> f64 {
    let num = |k: &str| h[k].as_f64().unwrap_or_else(|| panic!("{k} in {h}"));
    let weights = h["weights"].as_array().unwrap();
    let mut z = num("bias");
    let mut d2 = 0.0;
    for ((w, x), y) in weights.iter().zip(a).zip(b) {
        let diff = f64::from(*x) - f64::from(*y);
        z += w.as_f64().unwrap() * diff.abs();
        d2 += diff * diff;
    }
    z + num("distance_weight") * d2
}

/// The probability the head's JSON says a logit has: Platt-scaled at the
/// prior when calibrated, else the raw sigmoid.
fn probability(h: &Value, z: f64) -> f64 {
    let x = if h["probability_calibrated"].as_bool() == Some(true) {
        let num = |k: &str| h[k].as_f64().unwrap();
        let prior = num("prior");
        num("platt_a") * z + num("platt_b") + (prior / (1.0 - prior)).ln()
    } else {
        z
    };
    1.0 / (1.0 + (-x).exp())
}

const FILES: [&str; 5] = [
    "embeddings.npy",
    "subjects.txt",
    "ids.npy",
    "probes.npy",
    "probes_truth.txt",
];

#[test]
fn synth_writes_unit_norm_files_reproducible_by_seed() {
    let t = TempData::new();
    let dir = t.dir.path();
    let cli = offline();
    let synth = |out: &str, seed: &str, extra: &[&str]| -> Value {
        let out = dir.join(out);
        let mut args = vec![
            "synth",
            "--subjects",
            "40",
            "--probes",
            "21",
            "--seed",
            seed,
            "--out",
            p(&out),
        ];
        args.extend_from_slice(extra);
        cli.json(&args)
    };
    let v = synth("a", "7", &[]);
    let a = dir.join("a");
    let m = npy::read_matrix(a.join("embeddings.npy")).unwrap();
    let n = m.rows;
    assert_eq!(m.cols, 128);
    assert!(
        (320..=480).contains(&n),
        "8 to 12 images of 40 subjects: {n}"
    );
    assert_eq!(v["embeddings"].as_u64(), Some(n as u64));
    assert_eq!(v["subjects"].as_u64(), Some(40));
    assert_eq!(v["nuisance"].as_str(), Some("anisotropic"));
    for (i, r) in m.rows().enumerate() {
        let norm: f64 = r.iter().map(|x| f64::from(*x).powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-4, "row {i} has squared norm {norm}");
    }
    let subjects = lines(&a.join("subjects.txt"));
    assert_eq!(subjects.len(), n);
    let distinct: std::collections::BTreeSet<&String> = subjects.iter().collect();
    assert_eq!(distinct.len(), 40);
    // int64 ids 0..n, as `visage insert --ids` reads them.
    let raw = std::fs::read(a.join("ids.npy")).unwrap();
    assert!(raw.windows(5).any(|w| w == b"'<i8'"), "int64 ids");
    let ids = npy::read_ids(a.join("ids.npy")).unwrap();
    assert_eq!(ids, (0..n as u64).collect::<Vec<_>>());
    // Probes: 11 of enrolled subjects, 10 strangers, unit norm.
    let probes = npy::read_matrix(a.join("probes.npy")).unwrap();
    assert_eq!((probes.rows, probes.cols), (21, 128));
    for r in probes.rows() {
        let norm: f64 = r.iter().map(|x| f64::from(*x).powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    let truth = lines(&a.join("probes_truth.txt"));
    assert_eq!(truth.len(), 21);
    assert_eq!(truth.iter().filter(|s| *s == "-").count(), 10);
    assert!(
        truth
            .iter()
            .filter(|s| *s != "-")
            .all(|s| distinct.contains(s)),
        "{truth:?}"
    );
    assert_eq!(
        (v["known_probes"].as_u64(), v["stranger_probes"].as_u64()),
        (Some(11), Some(10))
    );
    // The same seed writes the same bytes; another seed or isotropic noise does not.
    synth("b", "7", &[]);
    synth("c", "8", &[]);
    let iso = synth("d", "7", &["--isotropic"]);
    assert_eq!(iso["nuisance"].as_str(), Some("isotropic"));
    for f in FILES {
        let bytes = |d: &str| std::fs::read(dir.join(d).join(f)).unwrap();
        assert_eq!(bytes("a"), bytes("b"), "{f} differs for the same seed");
        if f.ends_with(".npy") && f != "ids.npy" {
            assert_ne!(bytes("a"), bytes("c"), "{f} same for another seed");
            assert_ne!(bytes("a"), bytes("d"), "{f} same with isotropic noise");
        }
    }
    // The text report names the files and the insert command.
    let out = cli.ok(&[
        "synth",
        "--subjects",
        "3",
        "--probes",
        "0",
        "--out",
        p(&dir.join("e")),
    ]);
    assert!(
        out.contains("embeddings.npy") && out.contains("visage insert"),
        "{out}"
    );
    assert!(!dir.join("e").join("probes.npy").exists());
    assert!(
        cli.fails(&["synth", "--subjects", "0", "--out", p(&dir.join("f"))])
            .contains("--subjects")
    );
}

#[test]
fn demo_runs_embedded_and_its_numbers_are_consistent() {
    let cli = offline();
    let v = cli.json(&[
        "demo",
        "--subjects",
        "300",
        "--probes",
        "200",
        "--seed",
        "3",
    ]);
    let f = |path: &[&str]| -> f64 {
        let mut x = &v;
        for k in path {
            x = &x[*k];
        }
        x.as_f64()
            .unwrap_or_else(|| panic!("{path:?} missing in {v:#}"))
    };
    // Data and enrolment.
    let n = f(&["config", "embeddings"]);
    assert!((2400.0..=3600.0).contains(&n), "{n}");
    assert_eq!(f(&["enrol", "embeddings"]), n);
    assert_eq!(f(&["config", "enrolled_probes"]), 100.0);
    assert_eq!(f(&["config", "stranger_probes"]), 100.0);
    // The head: trained, calibrated for 1:1 and 1:N, better than distance on
    // anisotropic nuisance.
    assert_eq!(v["head"]["trained"].as_bool(), Some(true));
    assert_eq!(v["head"]["weights"].as_array().map(Vec::len), Some(128));
    assert!(f(&["head", "auc"]) > 0.99);
    assert!(f(&["head", "open_probes"]) > 0.0);
    assert!(f(&["head", "tar_at_far"]) >= f(&["head", "distance_tar_at_far"]));
    assert!(f(&["head", "open_tar"]) >= f(&["head", "open_distance_tar"]));
    assert!(
        f(&["head", "open_logit_threshold"]) > f(&["head", "logit_threshold"]),
        "the best of many impostors needs a stricter threshold than one impostor pair"
    );
    assert!(f(&["head", "open_distance_threshold"]) < f(&["head", "distance_threshold"]));
    // Identification, head and plain distance.
    for by in ["head", "distance"] {
        let r = |k: &str| f(&["identify", by, k]);
        assert!(r("rank1_rate") >= 0.9, "{by}: rank-1 {}", r("rank1_rate"));
        assert!(r("stranger_far") <= 0.03, "{by}: FAR {}", r("stranger_far"));
        assert!(r("known_correct_rate") + r("known_wrong_rate") <= 1.0);
        assert!(r("known_correct_rate") <= r("rank1_rate") + r("known_wrong_rate"));
        assert_eq!(r("rank1_rate"), r("rank1") / 100.0);
        assert_eq!(r("stranger_far"), r("strangers_accepted") / 100.0);
        assert!(r("probes_per_second") > 0.0);
    }
    assert!(f(&["identify", "head", "rank1_rate"]) >= f(&["identify", "distance", "rank1_rate"]));
    assert!(f(&["identify", "head", "known_correct_rate"]) >= 0.8);
    assert_eq!(
        f(&["identify", "distance_threshold"]),
        f(&["head", "open_distance_threshold"])
    );
    // The deleted subject: found before, gone after, no longer verifiable.
    let d = &v["delete"];
    let who = d["subject"].as_str().unwrap();
    assert_eq!(d["before"]["known"].as_bool(), Some(true));
    assert_eq!(d["before"]["subject"].as_str(), Some(who));
    assert_ne!(d["after"]["subject"].as_str(), Some(who));
    assert_ne!(d["after"]["best"].as_str(), Some(who));
    assert_eq!(d["still_found"].as_bool(), Some(false));
    assert!(
        d["verify_after"].as_str().unwrap().contains("no embedding"),
        "{d}"
    );
    let deleted = f(&["delete", "deleted"]);
    assert!((8.0..=12.0).contains(&deleted), "{deleted}");
    // Compaction: the deleted rows leave, the rest stay.
    assert_eq!(f(&["compact", "before", "deleted"]), deleted);
    assert_eq!(f(&["compact", "after", "deleted"]), 0.0);
    assert_eq!(f(&["compact", "before", "live"]), n - deleted);
    assert_eq!(f(&["compact", "after", "live"]), n - deleted);
    assert_eq!(f(&["compact", "after", "subjects"]), 299.0);
    assert!(f(&["compact", "after", "bytes_on_disk"]) < f(&["compact", "before", "bytes_on_disk"]));
    assert!(f(&["timings", "total"]) >= f(&["timings", "train"]));

    // The text report, small and quick.
    let out = cli.ok(&[
        "demo",
        "--subjects",
        "60",
        "--probes",
        "20",
        "--max-pairs",
        "20000",
    ]);
    for needle in [
        "enrol:",
        "head:",
        "open-set threshold",
        "rank-1 identification rate",
        "false-accept rate",
        "probes/s",
        "is not among",
        "compact:",
        "total:",
    ] {
        assert!(out.contains(needle), "no {needle:?} in\n{out}");
    }
    assert!(
        cli.fails(&["demo", "--subjects", "5"])
            .contains("--subjects")
    );
}

#[test]
fn train_head_then_identify_and_verify_show_probabilities() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let cli = Cli { url: server.url() };
    let dir = t.dir.path();
    let org = dir.join("org");
    cli.ok(&[
        "synth",
        "--subjects",
        "200",
        "--probes",
        "40",
        "--seed",
        "5",
        "--out",
        p(&org),
    ]);
    cli.ok(&["gallery", "create", "org"]);
    let v = cli.json(&[
        "insert",
        "org",
        "--vectors",
        p(&org.join("embeddings.npy")),
        "--subjects",
        p(&org.join("subjects.txt")),
        "--ids",
        p(&org.join("ids.npy")),
    ]);
    let n = npy::read_matrix(org.join("embeddings.npy")).unwrap().rows as u64;
    assert_eq!(v["inserted"].as_u64(), Some(n));

    // Before training: no head.
    let h = cli.json(&["head-info", "org"]);
    assert_eq!(h["trained"].as_bool(), Some(false));
    assert!(
        cli.ok(&["head-info", "org"])
            .contains("visage train-head org")
    );

    let h = cli.json(&["train-head", "org", "--max-pairs", "40000", "--seed", "2"]);
    assert_eq!(h["trained"].as_bool(), Some(true));
    assert_eq!(h["weights"].as_array().map(Vec::len), Some(128));
    assert_eq!(h["seed"].as_u64(), Some(2));
    assert!(h["auc"].as_f64().unwrap() > 0.99);
    assert!(h["open_probes"].as_u64().unwrap() > 0);
    for k in [
        "distance_weight",
        "logit_threshold",
        "open_logit_threshold",
        "open_distance_threshold",
        "open_tar",
        "open_distance_tar",
    ] {
        assert!(h[k].as_f64().is_some_and(|x| x != 0.0), "{k}: {h}");
    }
    // The threshold is on the scale of the reported probabilities: the
    // calibrated probability of the logit threshold at the prior.
    let threshold = h["threshold"].as_f64().unwrap();
    let logit = h["logit_threshold"].as_f64().unwrap();
    assert_eq!(h["probability_calibrated"].as_bool(), Some(true));
    assert_eq!(h["prior"].as_f64(), Some(0.5));
    assert!((threshold - probability(&h, logit)).abs() < 1e-6);
    // GetHead returns what TrainHead returned, under both spellings.
    assert_eq!(cli.json(&["head-info", "org"]), h);
    assert_eq!(cli.json(&["head", "info", "org"]), h);
    let text = cli.ok(&["head", "info", "org"]);
    for needle in [
        "trained scoring head",
        "1:1 threshold (verify",
        "open-set threshold (identify",
        "open-set TAR",
        "AUC",
    ] {
        assert!(text.contains(needle), "no {needle:?} in\n{text}");
    }

    // Identify the probes with the calibrated open-set threshold.
    let truth = lines(&org.join("probes_truth.txt"));
    let probes_file = org.join("probes.npy");
    let probes = p(&probes_file);
    let v = cli.json(&["identify", "org", "--probes", probes, "-k", "3"]);
    let results = v.as_array().unwrap();
    assert_eq!(results.len(), 40);
    let (mut right, mut strangers_known) = (0, 0);
    for (r, want) in results.iter().zip(&truth) {
        let cands = r["candidates"].as_array().unwrap();
        assert_eq!(cands.len(), 3);
        let ps: Vec<f64> = cands
            .iter()
            .map(|c| c["probability"].as_f64().expect("a probability"))
            .collect();
        assert!(ps.windows(2).all(|w| w[0] >= w[1]), "ranked by probability");
        assert!(ps.iter().all(|p| (0.0..=1.0).contains(p)));
        let known = r["known"].as_bool().unwrap();
        if want == "-" {
            strangers_known += usize::from(known);
        } else if known && r["subject"].as_str() == Some(want) {
            right += 1;
        }
        if known {
            assert_eq!(r["subject"], cands[0]["subject"]);
        } else {
            assert_eq!(r["subject"].as_str(), Some(""));
        }
    }
    assert!(
        right >= 15,
        "{right} of 20 enrolled probes known and correct"
    );
    assert!(strangers_known <= 1, "{strangers_known} strangers known");
    let table = cli.ok(&["identify", "org", "--probes", probes, "-k", "2"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "PROBE",
            "ANSWER",
            "RANK",
            "SUBJECT",
            "ID",
            "DISTANCE",
            "PROBABILITY"
        ]
    );
    assert!(table.contains("unknown"), "{table}");
    assert!(!table.lines().skip(1).any(|l| l.ends_with(" -")), "{table}");

    // Verify the enrolled probes against their own subject and a wrong one.
    let m = npy::read_matrix(org.join("probes.npy")).unwrap();
    let enrolled: Vec<usize> = (0..truth.len()).filter(|&i| truth[i] != "-").collect();
    let rows: Vec<Vec<f32>> = enrolled.iter().map(|&i| m.row(i).to_vec()).collect();
    write_vectors(&dir.join("a.npy"), &rows);
    let own: Vec<&str> = enrolled.iter().map(|&i| truth[i].as_str()).collect();
    std::fs::write(dir.join("own.txt"), own.join("\n") + "\n").unwrap();
    let other: Vec<&str> = own
        .iter()
        .map(|s| {
            if *s == "subj-000000" {
                "subj-000001"
            } else {
                "subj-000000"
            }
        })
        .collect();
    std::fs::write(dir.join("other.txt"), other.join("\n") + "\n").unwrap();
    let verdicts = |file: &str| -> Vec<(bool, f64, f64)> {
        cli.json(&[
            "verify",
            "org",
            "--a",
            p(&dir.join("a.npy")),
            "--b-subjects",
            p(&dir.join(file)),
        ])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["same"].as_bool().unwrap(),
                v["probability"].as_f64().expect("a probability"),
                v["distance"].as_f64().unwrap(),
            )
        })
        .collect()
    };
    let same = verdicts("own.txt");
    let diff = verdicts("other.txt");
    assert_eq!(same.len(), 20);
    let accepted = same.iter().filter(|v| v.0).count();
    assert!(
        accepted >= 18,
        "new images of enrolled subjects verify: {same:?}"
    );
    for ((s, ps, ds), (_, po, dd)) in diff.iter().zip(&same) {
        assert!(!s, "{diff:?}");
        assert!(ps < po && ds > dd);
    }
    // A claim against a subject is decided by the claim threshold for the
    // subject's image count, on the claim score (the best or the mean of the
    // logits over its images), and reports the probability of its best image:
    // all computed here from the published head and the enrolled files
    // (away from the threshold, where f32 rounding could decide either way).
    let enrolled_rows = npy::read_matrix(org.join("embeddings.npy")).unwrap();
    let mut images: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
    for (row, subject) in enrolled_rows.rows().zip(lines(&org.join("subjects.txt"))) {
        images.entry(subject).or_default().push(row.to_vec());
    }
    let claim_thresholds: Vec<f64> = h["claim_logit_thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect();
    assert!(!claim_thresholds.is_empty());
    let mean = match h["claim_score"].as_str() {
        Some("best") => false,
        Some("mean") => true,
        other => panic!("claim_score {other:?}"),
    };
    for (file, verdicts) in [(&own, &same), (&other, &diff)] {
        for ((row, subject), (s, prob, _)) in rows.iter().zip(file.iter()).zip(verdicts.iter()) {
            let logits: Vec<f64> = images[*subject]
                .iter()
                .map(|v| logit_of(&h, row, v))
                .collect();
            let best = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let score = if mean {
                logits.iter().sum::<f64>() / logits.len() as f64
            } else {
                best
            };
            let t = claim_thresholds[logits.len().min(claim_thresholds.len()) - 1];
            if (score - t).abs() > 1e-3 * t.abs().max(1.0) {
                assert_eq!(*s, score >= t, "claim against {subject}: {score} vs {t}");
            }
            assert!(
                (prob - probability(&h, best)).abs() < 1e-4,
                "{prob} vs logit {best}"
            );
        }
    }
    let table = cli.ok(&[
        "verify",
        "org",
        "--a",
        p(&dir.join("a.npy")),
        "--b-subjects",
        p(&dir.join("own.txt")),
    ]);
    let first = table
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(first[1], "yes", "{table}");
    assert!(
        first[3].parse::<f64>().is_ok(),
        "probability shown: {table}"
    );
}

//! `visage calibration-report` against the real server: its counts are those
//! the test makes itself with the client's Verify and Identify on the same
//! probes, its intervals are Wilson's, and malformed input is refused.

use crate::cli::{Cli, p};
use crate::harness::{Server, TempData};
use serde_json::Value;
use std::collections::BTreeSet;
use visage_client::npy;
use visage_client::{Against, Client};

/// The normal quantile of a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Accepted verdicts among `pairs`, one request.
async fn accepted(c: &Client, pairs: Vec<(Vec<f32>, Against)>) -> u64 {
    let v = c.gallery("org").verify(&pairs).await.expect("verify");
    assert_eq!(v.len(), pairs.len());
    v.iter().filter(|v| v.same).count() as u64
}

/// The report's row of `decision`.
fn row<'a>(report: &'a Value, decision: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["decision"] == decision)
        .unwrap_or_else(|| panic!("no row {decision} in {report:#}"))
}

fn counts(report: &Value, decision: &str) -> (u64, u64) {
    let r = row(report, decision);
    (
        r["decisions"].as_u64().expect("decisions"),
        r["errors"].as_u64().expect("errors"),
    )
}

/// A Wilson interval's ends are the roots in p of
/// (rate − p)² = z²·p(1 − p)/n; 0 (1) when no (every) decision is an error.
fn assert_wilson(r: &Value) {
    let (n, k) = (
        r["decisions"].as_u64().unwrap(),
        r["errors"].as_u64().unwrap(),
    );
    let (rate, low, high) = (
        r["rate"].as_f64().unwrap(),
        r["low"].as_f64().unwrap(),
        r["high"].as_f64().unwrap(),
    );
    assert_eq!(rate, k as f64 / n as f64, "{r}");
    assert!(
        low <= rate && rate <= high && (0.0..=1.0).contains(&low) && high <= 1.0,
        "{r}"
    );
    let root = |b: f64| {
        let lhs = (rate - b).powi(2);
        let rhs = Z95 * Z95 * b * (1.0 - b) / n as f64;
        (lhs - rhs).abs() <= 1e-12_f64.max(1e-9 * rhs)
    };
    assert!(
        if k == 0 {
            low == 0.0
        } else {
            root(low) && low < rate
        },
        "{r}"
    );
    assert!(
        if k == n {
            high == 1.0
        } else {
            root(high) && high > rate
        },
        "{r}"
    );
}

#[test]
fn calibration_report_counts_what_the_servers_decisions_count() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let cli = Cli { url: server.url() };
    let dir = t.dir.path();
    let org = dir.join("org");
    cli.ok(&[
        "synth",
        "--subjects",
        "120",
        "--probes",
        "60",
        "--seed",
        "9",
        "--out",
        p(&org),
    ]);
    cli.ok(&["gallery", "create", "org"]);
    cli.ok(&[
        "insert",
        "org",
        "--vectors",
        p(&org.join("embeddings.npy")),
        "--subjects",
        p(&org.join("subjects.txt")),
        "--ids",
        p(&org.join("ids.npy")),
    ]);
    let probes_file = org.join("probes.npy");
    let truth_file = org.join("probes_truth.txt");
    let report = |truth: &std::path::Path, extra: &[&str]| -> Value {
        let mut args = vec![
            "calibration-report",
            "org",
            "--probes",
            p(&probes_file),
            "--truth",
            p(truth),
        ];
        args.extend_from_slice(extra);
        cli.json(&args)
    };

    // Nothing calibrated yet: nothing to check against.
    let err = cli.fails(&[
        "calibration-report",
        "org",
        "--probes",
        p(&probes_file),
        "--truth",
        p(&truth_file),
    ]);
    assert!(err.contains("no calibrated threshold"), "{err}");
    assert!(err.contains("visage train-head org"), "{err}");

    let head = cli.json(&[
        "train-head",
        "org",
        "--target-far",
        "0.05",
        "--max-pairs",
        "20000",
        "--seed",
        "3",
    ]);
    assert_eq!(head["trained"].as_bool(), Some(true));
    let v = report(&truth_file, &[]);

    // The truth file: every named subject is enrolled (subjects.txt), `-` is a stranger.
    let truth = lines(&truth_file);
    let m = npy::read_matrix(&probes_file).unwrap();
    assert_eq!(truth.len(), m.rows);
    let held: BTreeSet<String> = lines(&org.join("subjects.txt")).into_iter().collect();
    let stranger = |i: usize| truth[i] == "-";
    assert!(truth.iter().all(|s| s == "-" || held.contains(s)));
    let n = m.rows;
    let strangers = (0..n).filter(|&i| stranger(i)).count();
    assert_eq!(
        (
            v["probes"].as_u64(),
            v["strangers"].as_u64(),
            v["enrolled"].as_u64()
        ),
        (
            Some(60),
            Some(strangers as u64),
            Some((n - strangers) as u64)
        )
    );
    assert_eq!(strangers, 30);
    assert_eq!(v["gallery"], "org");
    assert_eq!(v["target"].as_f64(), Some(0.05));

    // The test's own counts, with the server's default decisions.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c = rt.block_on(Client::connect(&server.url())).unwrap();
    let row_of = |i: usize| m.row(i).to_vec();
    // Every pair of probes: 1,770, fewer than --pairs (20,000), so the report takes them all.
    let (mut impostor, mut genuine) = (Vec::new(), Vec::new());
    for i in 0..n {
        for j in i + 1..n {
            let pair = (row_of(i), Against::Vector(row_of(j)));
            if stranger(i) || stranger(j) || truth[i] != truth[j] {
                impostor.push(pair);
            } else {
                genuine.push(pair);
            }
        }
    }
    assert!(!genuine.is_empty(), "some subject has two probes");
    let (ni, ng) = (impostor.len() as u64, genuine.len() as u64);
    let impostor_accepted = rt.block_on(accepted(&c, impostor));
    let genuine_accepted = rt.block_on(accepted(&c, genuine));
    assert_eq!(counts(&v, "verify_pairs_far"), (ni, impostor_accepted));
    assert_eq!(counts(&v, "verify_pairs_frr"), (ng, ng - genuine_accepted));
    assert!(
        impostor_accepted > 0,
        "at FAR 0.05 some of {ni} impostor pairs pass"
    );

    // Claims of the own subject; of another enrolled subject of the truth
    // file (the report draws one per probe: its errors lie between the probes
    // every wrong claim of which passes and those some wrong claim of which does).
    let enrolled: Vec<usize> = (0..n).filter(|&i| !stranger(i)).collect();
    let own: Vec<(Vec<f32>, Against)> = enrolled
        .iter()
        .map(|&i| (row_of(i), Against::Subject(truth[i].clone())))
        .collect();
    let own_accepted = rt.block_on(accepted(&c, own));
    let ne = enrolled.len() as u64;
    assert_eq!(counts(&v, "verify_claims_frr"), (ne, ne - own_accepted));
    let claimable: BTreeSet<&String> = enrolled.iter().map(|&i| &truth[i]).collect();
    let (mut all_pass, mut some_pass) = (0, 0);
    for (i, own) in truth.iter().enumerate() {
        let wrong: Vec<(Vec<f32>, Against)> = claimable
            .iter()
            .filter(|s| **s != own)
            .map(|s| (row_of(i), Against::Subject((*s).clone())))
            .collect();
        let k = rt.block_on(accepted(&c, wrong.clone()));
        all_pass += u64::from(k == wrong.len() as u64);
        some_pass += u64::from(k > 0);
    }
    let (claims, wrong_accepted) = counts(&v, "verify_claims_far");
    assert_eq!(claims, n as u64);
    assert!(
        (all_pass..=some_pass).contains(&wrong_accepted),
        "{wrong_accepted} not in {all_pass}..={some_pass}"
    );

    // Identification (k = 3; the decision is on the best candidate).
    let rows: Vec<Vec<f32>> = (0..n).map(row_of).collect();
    let ids = rt
        .block_on(c.gallery("org").identify(&rows, 3))
        .expect("identify");
    let strangers_known = (0..n).filter(|&i| stranger(i) && ids[i].known).count() as u64;
    let missed = enrolled
        .iter()
        .filter(|&&i| !(ids[i].known && ids[i].subject == truth[i]))
        .count() as u64;
    assert_eq!(
        counts(&v, "identify_fpir"),
        (strangers as u64, strangers_known)
    );
    assert_eq!(counts(&v, "identify_fnir"), (ne, missed));

    // Rates, intervals and targets.
    for r in v["rows"].as_array().unwrap() {
        assert_wilson(r);
        let far = ["verify_pairs_far", "verify_claims_far", "identify_fpir"]
            .contains(&r["decision"].as_str().unwrap());
        assert_eq!(r["target"].as_f64(), far.then_some(0.05), "{r}");
    }
    assert_eq!(v["rows"].as_array().unwrap().len(), 6);

    // Strangers named by a subject the gallery does not hold, or by an empty
    // line, are strangers too: the same report.
    let mut k = 0;
    let renamed: Vec<String> = truth
        .iter()
        .map(|s| {
            if s != "-" {
                return s.clone();
            }
            k += 1;
            match k % 3 {
                0 => String::new(),
                1 => format!("visitor-{k}"),
                _ => "-".into(),
            }
        })
        .collect();
    let renamed_file = dir.join("renamed.txt");
    std::fs::write(&renamed_file, renamed.join("\n") + "\n").unwrap();
    assert_eq!(report(&renamed_file, &[]), v);

    // Fewer pairs: that many drawn, the same for the same seed.
    let few = report(&truth_file, &["--pairs", "100", "--seed", "4"]);
    let (d, e) = counts(&few, "verify_pairs_far");
    assert_eq!(d, 100);
    assert!(e <= impostor_accepted);
    assert_eq!(report(&truth_file, &["--pairs", "100", "--seed", "4"]), few);
    assert_eq!(counts(&few, "identify_fpir"), counts(&v, "identify_fpir"));

    // The table.
    let text = cli.ok(&[
        "calibration-report",
        "org",
        "--probes",
        p(&probes_file),
        "--truth",
        p(&truth_file),
    ]);
    let header: Vec<&str> = text
        .lines()
        .nth(1)
        .unwrap()
        .split("  ")
        .filter(|s| !s.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        [
            "DECISION",
            "DECISIONS",
            "ERRORS",
            "RATE",
            "95% INTERVAL",
            "TARGET",
            "VS TARGET"
        ],
        "{text}"
    );
    assert!(
        text.starts_with("gallery org: 60 probes, 30 enrolled, 30 strangers"),
        "{text}"
    );
    assert!(text.contains("(FPIR)") && text.contains("(FNIR)"), "{text}");

    // A truth file of the wrong length is refused, naming both files and counts.
    let short_file = dir.join("short.txt");
    std::fs::write(&short_file, truth[..59].join("\n") + "\n").unwrap();
    let err = cli.fails(&[
        "calibration-report",
        "org",
        "--probes",
        p(&probes_file),
        "--truth",
        p(&short_file),
    ]);
    for needle in [p(&probes_file), "60 probes", p(&short_file), "59 lines"] {
        assert!(err.contains(needle), "no {needle:?} in {err}");
    }
}

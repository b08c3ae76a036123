//! `visage head-info --plot` and `visage demo --plot`: the SVG they write
//! parses as XML and draws the DET curve of the head and of plain distance
//! (one polyline each, as many points as the head's JSON lists) with their
//! legend; the calibration the head reports (prior, claims, the open-set
//! threshold for the current N) is in the text and JSON; a head from an
//! older HEAD file says it is uncalibrated and has nothing to plot.

use crate::cli::{Cli, p};
use crate::harness::{Server, TempData};
use roxmltree::Document;
use serde_json::Value;
use std::path::Path;

/// The plot's colours of the head's and plain distance's DET curves.
const HEAD_COLOUR: &str = "#1F77B4";
const DISTANCE_COLOUR: &str = "#D62728";

/// Every `<text>` of the SVG at `path`, after checking that it is an SVG
/// document drawing both DET curves of `head` (the head's JSON) in its left
/// half.
fn check_plot(path: &Path, head: &Value) -> Vec<String> {
    let svg = std::fs::read_to_string(path).expect("the plot file");
    let doc = Document::parse(&svg).unwrap_or_else(|e| panic!("not XML ({e}): {svg}"));
    let root = doc.root_element();
    assert!(
        root.has_tag_name(("http://www.w3.org/2000/svg", "svg")),
        "root {:?}",
        root.tag_name()
    );
    let width: f64 = root.attribute("width").unwrap().parse().unwrap();
    let polylines: Vec<(String, Vec<(f64, f64)>)> = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .map(|n| {
            let xy: Vec<f64> = n
                .attribute("points")
                .unwrap()
                .split([',', ' '])
                .filter(|t| !t.is_empty())
                .map(|t| t.parse().unwrap())
                .collect();
            let stroke = n.attribute("stroke").unwrap_or("").to_ascii_uppercase();
            (stroke, xy.chunks(2).map(|c| (c[0], c[1])).collect())
        })
        .collect();
    for (colour, key) in [(HEAD_COLOUR, "det_head"), (DISTANCE_COLOUR, "det_distance")] {
        let n = head[key].as_array().map_or(0, Vec::len);
        assert!(n >= 3, "{key}: {n} points");
        let curves = polylines
            .iter()
            .filter(|(stroke, ps)| stroke == colour && ps.len() == n)
            .filter(|(_, ps)| ps.iter().all(|p| p.0 < width / 2.0))
            .count();
        assert_eq!(
            curves, 1,
            "one {key} polyline of {n} points in the DET panel"
        );
    }
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_owned())
        .collect();
    for label in [
        "head",
        "distance",
        "false-accept rate",
        "enrolled subjects N",
    ] {
        assert!(
            texts.iter().any(|t| t == label),
            "no text {label:?} in {texts:?}"
        );
    }
    texts
}

/// Rewrite a version-4 to -8 `HEAD` file (the same layout) of a 128-value
/// gallery as the version-2 file an older release wrote: its first 664 bytes
/// (the fixed fields) with version 2 and the 128 weights at byte 16 (version
/// 4 keeps them, after their count, right before the CRC), and their CRC.
fn downgrade_head(path: &Path) {
    let b = std::fs::read(path).expect("HEAD");
    assert_eq!(&b[..8], b"\x89VHD\r\n\x1a\n");
    let version = u32::from_le_bytes(b[8..12].try_into().unwrap());
    assert!((4..=8).contains(&version), "HEAD version {version}");
    let n = b.len();
    let weights = &b[n - 4 - 512..n - 4];
    let count = u32::from_le_bytes(b[n - 8 - 512..n - 4 - 512].try_into().unwrap());
    assert_eq!(count, 128, "the weights' count");
    let mut old = b[..664].to_vec();
    assert!(
        old[16..528].iter().all(|&x| x == 0),
        "version 4: no weights at 16"
    );
    old[16..528].copy_from_slice(weights);
    old[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = visage_tests::crc32(&old);
    old.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(path, old).expect("write HEAD");
}

#[test]
fn cli_head_info_plot_draws_the_calibration() {
    assert_eq!(
        visage_tests::crc32(b"123456789"),
        0xCBF4_3926,
        "the CRC-32 check value"
    );
    let t = TempData::new();
    let server = Server::start(&t.data());
    let cli = Cli { url: server.url() };
    let dir = t.dir.path();
    let org = dir.join("org");
    cli.ok(&[
        "synth",
        "--subjects",
        "150",
        "--probes",
        "0",
        "--seed",
        "4",
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
    ]);
    let svg = dir.join("calibration.svg");
    let err = cli.fails(&["head-info", "org", "--plot", p(&svg)]);
    assert!(
        err.contains("nothing to plot") && err.contains("visage train-head org"),
        "{err}"
    );
    assert!(!svg.exists());

    let err = cli.fails(&["train-head", "org", "--prior", "1.5"]);
    assert!(err.contains("prior"), "{err}");
    let h = cli.json(&[
        "train-head",
        "org",
        "--max-pairs",
        "20000",
        "--seed",
        "2",
        "--prior",
        "0.2",
    ]);
    assert_eq!(h["prior"].as_f64(), Some(0.2));
    assert_eq!(h["calibration_current"].as_bool(), Some(true));
    assert_eq!(h["probability_calibrated"].as_bool(), Some(true));
    assert_eq!(h["current_subjects"].as_u64(), Some(150));
    assert_eq!(h["open_head_model"]["subjects"].as_u64(), Some(150));
    assert!(matches!(h["claim_score"].as_str(), Some("best" | "mean")));
    assert!(h["claim_images"].as_u64().unwrap() > 0);
    // Nothing has changed since training: the threshold in use is the one
    // for the training size.
    assert_eq!(h["current_open_logit_threshold"], h["open_logit_threshold"]);

    let text = cli.ok(&["head-info", "org", "--plot", p(&svg)]);
    for needle in [
        "calibrated P(same person) for one comparison at prior 0.2",
        "claim threshold (verify a subject of",
        "claim TAR (",
        "open-set threshold (identify; FPIR 0.001; N = 150 now)",
        "at training N = 150",
        "training N = 150; backed by observed scores up to N =",
        "plot written to",
    ] {
        assert!(text.contains(needle), "no {needle:?} in\n{text}");
    }
    let texts = check_plot(&svg, &h);
    for label in [
        "org: DET on held-out pairs",
        "head at threshold",
        "distance at threshold",
        "head: threshold fixed at training N (predicted)",
        "training N",
    ] {
        assert!(
            texts.iter().any(|t| t == label),
            "no text {label:?} in {texts:?}"
        );
    }
    // `head info` the same; with --json the output is the head's JSON alone.
    let svg2 = dir.join("again.svg");
    assert_eq!(cli.json(&["head", "info", "org", "--plot", p(&svg2)]), h);
    check_plot(&svg2, &h);

    // A head from an older HEAD file: the fixed open-set thresholds, raw
    // probabilities, and nothing to plot.
    assert!(server.terminate().success());
    downgrade_head(&t.data().join("galleries").join("org").join("HEAD"));
    let server = Server::start(&t.data());
    let cli = Cli { url: server.url() };
    let old = cli.json(&["head-info", "org"]);
    assert_eq!(old["trained"].as_bool(), Some(true));
    assert_eq!(old["weights"], h["weights"]);
    assert_eq!(old["calibration_current"].as_bool(), Some(false));
    assert_eq!(old["probability_calibrated"].as_bool(), Some(false));
    assert_eq!(old["current_subjects"].as_u64(), Some(150));
    assert_eq!(
        old["current_open_logit_threshold"],
        h["open_logit_threshold"]
    );
    assert_eq!(old["current_open_trusted"].as_bool(), Some(false));
    assert_eq!(old["det_head"].as_array().map(Vec::len), Some(0));
    assert!(old["open_head_model"].is_null());
    let text = cli.ok(&["head-info", "org"]);
    for needle in ["uncalibrated", "older head file", "retrain"] {
        assert!(text.contains(needle), "no {needle:?} in\n{text}");
    }
    let stale = dir.join("stale.svg");
    let err = cli.fails(&["head-info", "org", "--plot", p(&stale)]);
    assert!(
        err.contains("older version") && err.contains("visage train-head org"),
        "{err}"
    );
    assert!(!stale.exists());
}

#[test]
fn cli_demo_plot_draws_the_calibration() {
    let t = TempData::new();
    let dir = t.dir.path();
    // No server: the demo runs embedded.
    let cli = Cli {
        url: "http://127.0.0.1:1".into(),
    };
    let demo = |plot: &Path, json: bool| {
        let mut args = vec![
            "demo",
            "--subjects",
            "60",
            "--probes",
            "20",
            "--max-pairs",
            "20000",
            "--plot",
            p(plot),
        ];
        if json {
            args.insert(0, "--json");
        }
        cli.ok(&args)
    };
    let svg = dir.join("demo.svg");
    let v: Value = serde_json::from_str(&demo(&svg, true)).expect("JSON");
    assert_eq!(v["head"]["calibration_current"].as_bool(), Some(true));
    let texts = check_plot(&svg, &v["head"]);
    assert!(texts.iter().any(|t| t == "demo: DET on held-out pairs"));

    // The text says what its probabilities are.
    let svg = dir.join("demo-text.svg");
    let out = demo(&svg, false);
    for needle in [
        "calibrated P(same person) for one comparison at prior 0.5",
        "at prior 0.5, d = ",
        "plot:     written to",
    ] {
        assert!(out.contains(needle), "no {needle:?} in\n{out}");
    }
    check_plot(&svg, &v["head"]);
}

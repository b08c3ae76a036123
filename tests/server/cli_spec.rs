//! The `visage` tool with a 512-d cosine gallery pinned to a model: created
//! with `--dim --model --normalize`, described by `gallery info` and `list`,
//! searched with similarities that match a brute-force scan of the unit
//! vectors; a 128-d `.npy` file, another `--model` and a zero vector are each
//! refused with one clear line, and the gallery is unchanged after each.

use crate::cli::{Cli, p};
use crate::harness::{Server, TempData};
use crate::spec::{ARCFACE, Cosine, FACENET, unit, vector};
use serde_json::Value;
use std::path::Path;
use visage_client::Embedding;
use visage_client::npy::{self, Matrix};
use visage_tests::Rng;

const DIM: usize = 512;

fn write(path: &Path, rows: &[Vec<f32>]) {
    let cols = rows.first().map_or(DIM, Vec::len);
    let m = Matrix {
        rows: rows.len(),
        cols,
        data: rows.iter().flatten().copied().collect(),
    };
    npy::write_matrix(path, &m).unwrap();
}

/// The live count and the JSON answer of one search: what must not change.
fn state(cli: &Cli, probes: &Path) -> (Value, Value) {
    let info = cli.json(&["gallery", "info", "arc"]);
    let hits = cli.json(&["search", "arc", "--probes", p(probes), "-k", "8"]);
    (info["live"].clone(), hits)
}

#[test]
fn a_512_d_cosine_gallery_through_the_cli() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let cli = Cli { url: server.url() };
    let dir = t.dir.path();
    let file = |name: &str| dir.join(name);

    let out = cli.ok(&[
        "gallery",
        "create",
        "arc",
        "--dim",
        "512",
        "--model",
        ARCFACE,
        "--normalize",
    ]);
    assert_eq!(
        out.trim(),
        format!("created gallery arc (512-d, model {ARCFACE:?}, normalising: cosine similarity)")
    );
    let info = cli.ok(&["gallery", "info", "arc"]);
    let row = |name: &str| -> String {
        info.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row in {info}"))
            .trim_start()[name.len()..]
            .trim()
            .to_owned()
    };
    assert_eq!(row("dimension"), "512");
    assert_eq!(row("model"), ARCFACE);
    assert!(row("normalised").starts_with("yes"), "{info}");
    let v = cli.json(&["gallery", "info", "arc"]);
    assert_eq!(
        (
            v["dim"].as_u64(),
            v["model"].as_str(),
            v["normalize"].as_bool()
        ),
        (Some(512), Some(ARCFACE), Some(true))
    );

    // Enrol 400 embeddings of 40 people, naming the model.
    let mut rng = Rng(4);
    let n = 400;
    let vectors: Vec<Vec<f32>> = (0..n).map(|_| vector(&mut rng, DIM)).collect();
    let subjects: Vec<String> = (0..n).map(|i| format!("emp-{:02}", i % 40)).collect();
    write(&file("faces.npy"), &vectors);
    std::fs::write(file("names.txt"), subjects.join("\n") + "\n").unwrap();
    let out = cli.ok(&[
        "insert",
        "arc",
        "--vectors",
        p(&file("faces.npy")),
        "--subjects",
        p(&file("names.txt")),
        "--model",
        ARCFACE,
        "--batch",
        "150",
    ]);
    assert!(out.starts_with("inserted 400 embeddings into arc"), "{out}");
    let mut model = Cosine::default();
    model.insert(
        &(0..n)
            .map(|i| Embedding {
                id: i as u64,
                subject: subjects[i].clone(),
                vector: vectors[i].clone(),
            })
            .collect::<Vec<_>>(),
    );
    let list = cli.ok(&["gallery", "list"]);
    let cells: Vec<&str> = list.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(cells[0], "arc", "{list}");
    assert_eq!(&cells[cells.len() - 3..], ["512", "yes", ARCFACE], "{list}");

    // Search: an enrolled vector scaled, and fresh probes; exact against the
    // reference on unit vectors, with similarity = 1 - d/2.
    let mut probes = vec![vectors[17].iter().map(|x| x * 0.3).collect::<Vec<f32>>()];
    probes.extend((0..3).map(|_| vector(&mut rng, DIM)));
    write(&file("probes.npy"), &probes);
    let v = cli.json(&[
        "search",
        "arc",
        "--probes",
        p(&file("probes.npy")),
        "-k",
        "8",
        "--model",
        ARCFACE,
    ]);
    for (i, r) in v.as_array().unwrap().iter().enumerate() {
        let want = model.search(&probes[i], 8);
        let hits = r["hits"].as_array().unwrap();
        let ids: Vec<u64> = hits.iter().map(|h| h["id"].as_u64().unwrap()).collect();
        assert_eq!(
            ids,
            want.iter().map(|w| w.0).collect::<Vec<_>>(),
            "probe {i}"
        );
        for (h, w) in hits.iter().zip(&want) {
            let d = h["distance"].as_f64().unwrap();
            let s = h["similarity"].as_f64().unwrap();
            assert!((d - w.2).abs() < 1e-5, "probe {i}: distance {d} vs {}", w.2);
            assert!((-1.0..=1.0).contains(&s), "similarity {s}");
            assert!(
                (s - (1.0 - d / 2.0)).abs() < 1e-6,
                "similarity {s}, distance {d}"
            );
            assert!((s - w.3).abs() < 1e-5, "similarity {s} vs cosine {}", w.3);
        }
    }
    assert_eq!(v[0]["hits"][0]["id"].as_u64(), Some(17));
    // The table has a SIMILARITY column.
    let table = cli.ok(&[
        "search",
        "arc",
        "--probes",
        p(&file("probes.npy")),
        "-k",
        "1",
    ]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].split_whitespace().eq([
            "PROBE",
            "RANK",
            "ID",
            "SUBJECT",
            "DISTANCE",
            "SIMILARITY",
            "PROBABILITY"
        ]),
        "{table}"
    );
    let first: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&first[..4], ["0", "1", "17", "emp-17"], "{table}");
    assert_eq!(first[5], "1.0000", "{table}");
    // Identify and verify carry it too.
    let v = cli.json(&[
        "identify",
        "arc",
        "--probes",
        p(&file("probes.npy")),
        "--max-distance",
        "0.5",
        "--model",
        ARCFACE,
    ]);
    let c0 = &v[0]["candidates"][0];
    assert_eq!(
        (v[0]["known"].as_bool(), c0["subject"].as_str()),
        (Some(true), Some("emp-17"))
    );
    assert!(c0["similarity"].as_f64().unwrap() > 0.9999, "{v}");
    std::fs::write(file("ids.txt"), "17\n0\n1\n2\n").unwrap();
    let v = cli.json(&[
        "verify",
        "arc",
        "--a",
        p(&file("probes.npy")),
        "--b-ids",
        p(&file("ids.txt")),
        "--max-distance",
        "0.5",
    ]);
    for (i, (x, id)) in v
        .as_array()
        .unwrap()
        .iter()
        .zip([17u64, 0, 1, 2])
        .enumerate()
    {
        let d = x["distance"].as_f64().unwrap();
        let s = x["similarity"].as_f64().unwrap();
        let want = unit(&probes[i])
            .iter()
            .zip(unit(&vectors[id as usize]))
            .map(|(a, b)| a * b)
            .sum::<f64>();
        assert!((s - want).abs() < 1e-5, "pair {i}: {s} vs {want}");
        assert!((s - (1.0 - d / 2.0)).abs() < 1e-6);
        assert_eq!(x["same"].as_bool(), Some(d <= 0.5));
    }
    // Get returns the stored unit vectors.
    cli.ok(&["get", "arc", "--ids", "3,4", "--out", p(&file("got.npy"))]);
    let got = npy::read_matrix(file("got.npy")).unwrap();
    assert_eq!((got.rows, got.cols), (2, DIM));
    for (r, id) in got.rows().zip([3usize, 4]) {
        for (x, w) in r.iter().zip(unit(&vectors[id])) {
            assert!((f64::from(*x) - w).abs() < 1e-6);
        }
    }

    let before = state(&cli, &file("probes.npy"));
    assert_eq!(before.0, 400);

    // --batch is checked against the gallery's limit at 512 values.
    let e = cli.fails(&[
        "insert",
        "arc",
        "--vectors",
        p(&file("faces.npy")),
        "--subjects",
        p(&file("names.txt")),
        "--batch",
        "25001",
    ]);
    assert!(
        e.contains("--batch must be 1 to 25000 for gallery arc (512-d)"),
        "{e}"
    );

    // A 128-d file into the 512-d gallery: refused before anything is sent.
    let small: Vec<Vec<f32>> = (0..4).map(|_| rng.vector()).collect();
    write(&file("faces128.npy"), &small);
    std::fs::write(file("four.txt"), "a\nb\nc\nd\n").unwrap();
    let e = cli.fails(&[
        "insert",
        "arc",
        "--vectors",
        p(&file("faces128.npy")),
        "--subjects",
        p(&file("four.txt")),
        "--start-id",
        "1000",
    ]);
    assert_eq!(
        e,
        format!(
            "error: {}: shape [4, 128] holds vectors of 128 values, but gallery arc has \
             dimension 512 (expected shape [N, 512])",
            file("faces128.npy").display()
        )
    );
    assert_eq!(
        state(&cli, &file("probes.npy")),
        before,
        "a 128-d file changed the gallery"
    );
    for cmd in [
        vec!["search", "arc", "--probes"],
        vec!["identify", "arc", "--probes"],
        vec!["verify", "arc", "--b-ids", p(&file("ids.txt")), "--a"],
    ] {
        let mut args = cmd.clone();
        let f = file("faces128.npy");
        args.push(p(&f));
        let e = cli.fails(&args);
        assert!(
            e.contains("faces128.npy: shape [4, 128]")
                && e.contains("gallery arc has dimension 512"),
            "{cmd:?}: {e}"
        );
    }

    // Another model: refused by the server, naming both.
    let four: Vec<Vec<f32>> = (0..4).map(|_| vector(&mut rng, DIM)).collect();
    write(&file("four.npy"), &four);
    let e = cli.fails(&[
        "insert",
        "arc",
        "--vectors",
        p(&file("four.npy")),
        "--subjects",
        p(&file("four.txt")),
        "--start-id",
        "1000",
        "--model",
        FACENET,
    ]);
    assert!(
        e.contains("FAILED_PRECONDITION") && e.contains(ARCFACE) && e.contains(FACENET),
        "{e}"
    );
    assert_eq!(
        state(&cli, &file("probes.npy")),
        before,
        "another model changed the gallery"
    );
    for cmd in [
        vec!["search", "arc", "--probes"],
        vec!["identify", "arc", "--probes"],
        vec!["verify", "arc", "--b-ids", p(&file("ids.txt")), "--a"],
    ] {
        let mut args = cmd.clone();
        let f = file("probes.npy");
        args.extend([p(&f), "--model", FACENET]);
        let e = cli.fails(&args);
        assert!(
            e.starts_with("error: FAILED_PRECONDITION: ")
                && e.contains(ARCFACE)
                && e.contains(FACENET),
            "{cmd:?}: {e}"
        );
    }

    // A zero vector cannot be normalised: refused whole, naming its position.
    let mut zero = four.clone();
    zero[2] = vec![0.0; DIM];
    write(&file("zero.npy"), &zero);
    let e = cli.fails(&[
        "insert",
        "arc",
        "--vectors",
        p(&file("zero.npy")),
        "--subjects",
        p(&file("four.txt")),
        "--start-id",
        "1000",
        "--model",
        ARCFACE,
    ]);
    assert!(
        e.contains("INVALID_ARGUMENT") && e.contains("matrix[2]") && e.contains("zero vector"),
        "{e}"
    );
    assert_eq!(
        state(&cli, &file("probes.npy")),
        before,
        "a zero vector changed the gallery"
    );
    let e = cli.fails(&["search", "arc", "--probes", p(&file("zero.npy"))]);
    assert!(e.contains("matrix[2]") && e.contains("zero vector"), "{e}");

    // The same file, without the zero row, goes in.
    write(&file("three.npy"), &four[..3]);
    std::fs::write(file("three.txt"), "a\nb\nc\n").unwrap();
    cli.ok(&[
        "insert",
        "arc",
        "--vectors",
        p(&file("three.npy")),
        "--subjects",
        p(&file("three.txt")),
        "--start-id",
        "1000",
        "--model",
        ARCFACE,
    ]);
    assert_eq!(cli.json(&["gallery", "info", "arc"])["live"], 403);
}

#[test]
fn synth_and_demo_at_512_values() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let cli = Cli { url: server.url() };
    let dir = t.dir.path();
    let org = dir.join("org");
    let v = cli.json(&[
        "synth",
        "--subjects",
        "30",
        "--probes",
        "10",
        "--dim",
        "512",
        "--out",
        p(&org),
    ]);
    assert_eq!(v["dim"].as_u64(), Some(512));
    let m = npy::read_matrix(org.join("embeddings.npy")).unwrap();
    assert_eq!(
        (m.cols, v["embeddings"].as_u64()),
        (512, Some(m.rows as u64))
    );
    let probes = npy::read_matrix(org.join("probes.npy")).unwrap();
    assert_eq!((probes.rows, probes.cols), (10, 512));
    for r in m.rows().chain(probes.rows()) {
        let norm: f64 = r.iter().map(|x| f64::from(*x).powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-4, "squared norm {norm}");
    }
    let e = cli.fails(&["synth", "--subjects", "3", "--dim", "100", "--out", p(&org)]);
    assert!(e.contains("--dim") && e.contains("dimension 100"), "{e}");

    // The files go into a 512-d gallery (and not into a 128-d one), and its
    // enrolled probes are identified as their subjects.
    cli.ok(&["gallery", "create", "org", "--dim", "512", "--normalize"]);
    cli.ok(&["gallery", "create", "small"]);
    let files = |g: &str| -> Vec<String> {
        [
            "insert",
            g,
            "--vectors",
            p(&org.join("embeddings.npy")),
            "--subjects",
            p(&org.join("subjects.txt")),
            "--ids",
            p(&org.join("ids.npy")),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let args = files("small");
    let e = cli.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains("gallery small has dimension 128"), "{e}");
    let args = files("org");
    cli.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        cli.json(&["gallery", "info", "org"])["live"].as_u64(),
        Some(m.rows as u64)
    );
    let who = cli.json(&[
        "identify",
        "org",
        "--probes",
        p(&org.join("probes.npy")),
        "-k",
        "1",
        "--max-distance",
        "4",
    ]);
    let truth = std::fs::read_to_string(org.join("probes_truth.txt")).unwrap();
    let mut enrolled = 0;
    for (r, t) in who.as_array().unwrap().iter().zip(truth.lines()) {
        if t != "-" {
            enrolled += 1;
            assert_eq!(r["candidates"][0]["subject"].as_str(), Some(t), "{r}");
        }
    }
    assert_eq!(enrolled, 5);

    // The embedded demo at 512 values: a head of 512 weights that identifies.
    let v = cli.json(&[
        "demo",
        "--subjects",
        "60",
        "--probes",
        "40",
        // Few pairs: a 512-weight head trains slowly in a debug build.
        "--max-pairs",
        "2000",
        "--dim",
        "512",
    ]);
    assert_eq!(v["config"]["dim"].as_u64(), Some(512));
    assert_eq!(v["head"]["weights"].as_array().map(Vec::len), Some(512));
    let rank1 = v["identify"]["head"]["rank1_rate"].as_f64().unwrap();
    assert!(rank1 >= 0.9, "rank-1 {rank1}");
}

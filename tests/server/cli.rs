//! The `visage` command-line tool against the real server: insert a `.npy`
//! file, search it, delete, compact, each checked for its output.

use crate::harness::{Model, Server, TempData, binary};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use visage_client::Embedding;
use visage_client::npy::{self, Matrix};
use visage_tests::Rng;

pub(crate) struct Cli {
    pub url: String,
}

impl Cli {
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(binary("visage"))
            .args(["--server", &self.url])
            .args(args)
            .output()
            .expect("run visage")
    }

    /// Run, expect success, return stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "visage {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Run with --json, expect success, parse.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("JSON output")
    }

    /// Run, expect failure; return the one stderr line.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "visage {args:?} should fail");
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        assert!(err.starts_with("error: "), "{err}");
        err
    }
}

pub(crate) fn write_vectors(path: &Path, rows: &[Vec<f32>]) {
    let m = Matrix {
        rows: rows.len(),
        cols: 128,
        data: rows.iter().flatten().copied().collect(),
    };
    npy::write_matrix(path, &m).unwrap();
}

pub(crate) fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn insert_search_delete_compact_through_the_cli() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let cli = Cli { url: server.url() };
    let dir = t.dir.path();
    let mut rng = Rng(17);
    let n = 1500;
    let vectors: Vec<Vec<f32>> = (0..n).map(|_| rng.vector()).collect();
    let subjects: Vec<String> = (0..n).map(|i| format!("emp-{:03}", i % 150)).collect();
    write_vectors(&dir.join("faces.npy"), &vectors);
    std::fs::write(dir.join("names.txt"), subjects.join("\n") + "\n").unwrap();
    let mut model = Model::default();
    let start_id = 5000u64;
    model.insert(
        &(0..n)
            .map(|i| Embedding {
                id: start_id + i as u64,
                subject: subjects[i].clone(),
                vector: vectors[i].clone(),
            })
            .collect::<Vec<_>>(),
    );

    assert_eq!(
        cli.ok(&["gallery", "create", "staff"]).trim(),
        "created gallery staff"
    );
    let out = cli.ok(&[
        "insert",
        "staff",
        "--vectors",
        p(&dir.join("faces.npy")),
        "--subjects",
        p(&dir.join("names.txt")),
        "--start-id",
        "5000",
        "--batch",
        "400",
    ]);
    assert!(
        out.starts_with("inserted 1,500 embeddings into staff (1,500 new, 0 replaced)"),
        "{out}"
    );
    let list = cli.ok(&["gallery", "list"]);
    let row = list.lines().nth(1).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..4], ["staff", "1,500", "0", "150"], "{list}");

    // Search: probes are two enrolled vectors and a fresh one.
    let probes = vec![vectors[10].clone(), vectors[777].clone(), rng.vector()];
    write_vectors(&dir.join("probes.npy"), &probes);
    let v = cli.json(&[
        "search",
        "staff",
        "--probes",
        p(&dir.join("probes.npy")),
        "-k",
        "4",
    ]);
    let results = v.as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (i, r) in results.iter().enumerate() {
        let hits = r["hits"].as_array().unwrap();
        let want = model.search(&probes[i], 4);
        let got: Vec<u64> = hits.iter().map(|h| h["id"].as_u64().unwrap()).collect();
        assert_eq!(
            got,
            want.iter().map(|w| w.0).collect::<Vec<_>>(),
            "probe {i}"
        );
        for (h, w) in hits.iter().zip(&want) {
            assert_eq!(h["subject"].as_str().unwrap(), w.1);
            assert!((h["distance"].as_f64().unwrap() - w.2).abs() < 1e-3 * w.2.max(1.0));
        }
    }
    // The table: the header, then one line per hit with the enrolled match first.
    let table = cli.ok(&[
        "search",
        "staff",
        "--probes",
        p(&dir.join("probes.npy")),
        "-k",
        "2",
    ]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 1 + 3 * 2, "{table}");
    assert!(lines[0].split_whitespace().eq([
        "PROBE",
        "RANK",
        "ID",
        "SUBJECT",
        "DISTANCE",
        "PROBABILITY"
    ]));
    assert!(
        lines[1]
            .split_whitespace()
            .eq(["0", "1", "5010", "emp-010", "0.000000", "-"]),
        "{table}"
    );
    assert!(
        lines[3]
            .split_whitespace()
            .eq(["1", "1", "5777", "emp-027", "0.000000", "-"]),
        "{table}"
    );

    // Identify, open-set with a distance threshold.
    let v = cli.json(&[
        "identify",
        "staff",
        "--probes",
        p(&dir.join("probes.npy")),
        "-k",
        "3",
        "--max-distance",
        "1.0",
    ]);
    let r = v.as_array().unwrap();
    assert_eq!(
        (r[0]["known"].as_bool(), r[0]["subject"].as_str()),
        (Some(true), Some("emp-010"))
    );
    assert_eq!(
        (r[1]["known"].as_bool(), r[1]["subject"].as_str()),
        (Some(true), Some("emp-027"))
    );
    assert_eq!(r[2]["known"].as_bool(), Some(false));
    let want = model.identify(&probes[2], 3);
    let got: Vec<&str> = r[2]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["subject"].as_str().unwrap())
        .collect();
    assert_eq!(got, want.iter().map(|w| w.1.as_str()).collect::<Vec<_>>());

    // Verify the probes against enrolled ids (from a text file).
    std::fs::write(dir.join("ids.txt"), "5010\n5011\n5000\n").unwrap();
    let v = cli.json(&[
        "verify",
        "staff",
        "--a",
        p(&dir.join("probes.npy")),
        "--b-ids",
        p(&dir.join("ids.txt")),
        "--max-distance",
        "1.0",
    ]);
    let same: Vec<bool> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["same"].as_bool().unwrap())
        .collect();
    assert_eq!(same, [true, false, false]);

    // Delete by ids and a subject.
    let out = cli.ok(&[
        "delete",
        "staff",
        "--ids",
        "5000,5001,9999999",
        "--subjects",
        "emp-010",
    ]);
    let expected = model.delete(&[5000, 5001, 9_999_999], &["emp-010".into()]);
    assert_eq!(expected, 12);
    assert_eq!(
        out.trim(),
        format!("deleted {expected} embeddings from staff")
    );
    let v = cli.json(&[
        "search",
        "staff",
        "--probes",
        p(&dir.join("probes.npy")),
        "-k",
        "1",
    ]);
    assert_ne!(v[0]["hits"][0]["subject"].as_str(), Some("emp-010"));
    assert_eq!(
        v[0]["hits"][0]["id"].as_u64(),
        Some(model.search(&probes[0], 1)[0].0)
    );

    // Compact: before and after.
    let out = cli.ok(&["compact", "staff"]);
    assert!(out.starts_with("compacted staff in "), "{out}");
    let row = |name: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row in {out}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(row("live"), ["live", "1,488", "1,488"]);
    assert_eq!(row("deleted"), ["deleted", "12", "0"]);
    assert_eq!(row("subjects"), ["subjects", "149", "149"]);
    let v = cli.json(&["compact", "staff"]);
    assert_eq!(v["after"]["live"].as_u64(), Some(1488));
    assert_eq!(v["after"]["deleted"].as_u64(), Some(0));
    let info = cli.json(&["gallery", "info", "staff"]);
    assert_eq!(
        (info["live"].as_u64(), info["subjects"].as_u64()),
        (Some(1488), Some(149))
    );

    // Flush reports before/after too.
    let v = cli.json(&["flush", "staff"]);
    assert_eq!(v["after"]["memtable_rows"].as_u64(), Some(0));

    // Ids from an .npy file, and get.
    npy::write_ids(dir.join("ids.npy"), &[1, 2]).unwrap();
    write_vectors(&dir.join("two.npy"), &vectors[..2]);
    std::fs::write(dir.join("two.txt"), "a\nb\n").unwrap();
    cli.ok(&[
        "insert",
        "staff",
        "--vectors",
        p(&dir.join("two.npy")),
        "--subjects",
        p(&dir.join("two.txt")),
        "--ids",
        p(&dir.join("ids.npy")),
    ]);
    let v = cli.json(&["get", "staff", "--ids", "2,1,3"]);
    let got: Vec<(u64, &str)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_u64().unwrap(), e["subject"].as_str().unwrap()))
        .collect();
    assert_eq!(got, [(2, "b"), (1, "a")]);
    let back: Vec<f32> = v[0]["vector"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(back, vectors[1]);

    // Errors: one line, exit code 1.
    assert_eq!(
        cli.fails(&["gallery", "info", "nope"]),
        "error: NOT_FOUND: gallery \"nope\" does not exist"
    );
    assert!(
        cli.fails(&["gallery", "create", "staff"])
            .starts_with("error: ALREADY_EXISTS: ")
    );
    assert!(
        cli.fails(&[
            "search",
            "staff",
            "--probes",
            p(&dir.join("probes.npy")),
            "-k",
            "0"
        ])
        .contains("INVALID_ARGUMENT")
    );
    std::fs::write(dir.join("short.txt"), "a\n").unwrap();
    let e = cli.fails(&[
        "insert",
        "staff",
        "--vectors",
        p(&dir.join("two.npy")),
        "--subjects",
        p(&dir.join("short.txt")),
    ]);
    assert!(e.contains("1 subjects") && e.contains("2 vectors"), "{e}");
    let e = cli.fails(&[
        "insert",
        "staff",
        "--vectors",
        p(&dir.join("names.txt")),
        "--subjects",
        p(&dir.join("two.txt")),
    ]);
    assert!(e.contains("not an .npy file"), "{e}");
    assert!(cli.fails(&["gallery", "drop", "staff"]).contains("--yes"));
    assert!(
        cli.ok(&["gallery", "drop", "staff", "--yes"])
            .starts_with("dropped gallery staff (1,490 embeddings")
    );
    let e = Cli {
        url: "http://127.0.0.1:1".into(),
    }
    .fails(&["gallery", "list"]);
    assert!(e.contains("cannot connect to http://127.0.0.1:1"), "{e}");
}

/// `insert --assign-ids`: the gallery picks the ids (above every id it has
/// held), `--ids-out` writes them, in input order, through both the request
/// and the streaming paths.
#[test]
fn the_gallery_assigns_ids_and_the_cli_writes_them_out() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let cli = Cli { url: server.url() };
    let dir = t.dir.path();
    let mut rng = Rng(23);
    let vectors: Vec<Vec<f32>> = (0..250).map(|_| rng.vector()).collect();
    let subjects: Vec<String> = (0..250).map(|i| format!("p-{}", i % 25)).collect();
    write_vectors(&dir.join("faces.npy"), &vectors);
    std::fs::write(dir.join("names.txt"), subjects.join("\n") + "\n").unwrap();
    cli.ok(&["gallery", "create", "g"]);
    let (faces, names) = (dir.join("faces.npy"), dir.join("names.txt"));
    let insert = |extra: &[&str]| {
        let mut args = vec![
            "insert",
            "g",
            "--vectors",
            p(&faces),
            "--subjects",
            p(&names),
            "--batch",
            "60",
        ];
        args.extend_from_slice(extra);
        cli.ok(&args)
    };
    insert(&["--start-id", "700", "--ids-out", p(&dir.join("given.npy"))]);
    let given = npy::read_ids(dir.join("given.npy")).unwrap();
    assert_eq!(given, (700..950).collect::<Vec<u64>>());
    for (round, extra) in [&[][..], &["--stream"][..]].iter().enumerate() {
        let out = dir.join(format!("assigned-{round}.npy"));
        let mut args = vec!["--assign-ids", "--ids-out", p(&out)];
        args.extend_from_slice(extra);
        insert(&args);
        let ids = npy::read_ids(&out).unwrap();
        let first = 950 + 250 * round as u64;
        assert_eq!(ids.len(), 250, "{extra:?}");
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (first..first + 250).collect::<Vec<u64>>(),
            "{extra:?}: above every id held, each once"
        );
        // Row i of the file went in under ids[i].
        for i in [0, 61, 249] {
            let v = cli.json(&["get", "g", "--ids", &ids[i].to_string()]);
            assert_eq!(
                v[0]["subject"].as_str(),
                Some(subjects[i].as_str()),
                "{extra:?}"
            );
        }
    }
    assert_eq!(
        cli.json(&["gallery", "info", "g"])["live"].as_u64(),
        Some(750)
    );
    // Assigned ids and a start id contradict each other: a usage error.
    let out = cli.run(&[
        "insert",
        "g",
        "--vectors",
        "x.npy",
        "--subjects",
        "x.txt",
        "--assign-ids",
        "--start-id",
        "3",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--assign-ids"),
        "{err}"
    );
}

//! `visage gallery info` shows a degraded gallery: the exception rows of each
//! segment (outliers the codes do not bound) and how the exact scans settled
//! their probes, over gRPC from the real server.

use crate::cli::{Cli, p};
use crate::harness::{Server, TempData};
use visage_client::npy::{self, Matrix};
use visage_tests::Rng;

#[test]
fn gallery_info_shows_exception_rows_and_how_scans_settled() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let cli = Cli { url: server.url() };
    let dir = t.dir.path();
    // 300 embeddings of 128 values; two with one value far outside the rest.
    let mut rng = Rng(5);
    let n = 300;
    let mut data: Vec<f32> = (0..n).flat_map(|_| rng.vector()).collect();
    data[17 * 128 + 3] = 50.0;
    data[200 * 128 + 90] = -1000.0;
    let m = Matrix {
        rows: n,
        cols: 128,
        data,
    };
    npy::write_matrix(dir.join("faces.npy"), &m).unwrap();
    let names: Vec<String> = (0..n).map(|i| format!("p{}", i / 3)).collect();
    std::fs::write(dir.join("names.txt"), names.join("\n") + "\n").unwrap();
    cli.ok(&["gallery", "create", "g"]);
    cli.ok(&[
        "insert",
        "g",
        "--vectors",
        p(&dir.join("faces.npy")),
        "--subjects",
        p(&dir.join("names.txt")),
    ]);
    // Compaction flushes the memtable to a segment.
    cli.ok(&["compact", "g"]);
    let v = cli.json(&["gallery", "info", "g"]);
    assert_eq!(v["exception_rows"].as_u64(), Some(2), "{v}");
    assert_eq!(v["outdated_segments"].as_u64(), Some(0), "{v}");
    let segs = v["segment_details"].as_array().unwrap();
    assert_eq!(segs.len(), 1, "{v}");
    assert_eq!(
        (segs[0]["rows"].as_u64(), segs[0]["exceptions"].as_u64()),
        (Some(300), Some(2)),
        "{v}"
    );
    // Searches through the codes are counted: the outliers' own vectors
    // find them first (they are scored exactly).
    let probes = Matrix {
        rows: 2,
        cols: 128,
        data: [17usize, 200]
            .iter()
            .flat_map(|&r| m.data[r * 128..(r + 1) * 128].to_vec())
            .collect(),
    };
    npy::write_matrix(dir.join("probes.npy"), &probes).unwrap();
    let hits = cli.json(&[
        "search",
        "g",
        "--probes",
        p(&dir.join("probes.npy")),
        "-k",
        "3",
    ]);
    assert_eq!(hits[0]["hits"][0]["id"].as_u64(), Some(17), "{hits}");
    assert_eq!(hits[1]["hits"][0]["id"].as_u64(), Some(200), "{hits}");
    let v = cli.json(&["gallery", "info", "g"]);
    let s = &v["scans"];
    let settled: u64 = ["first_pass", "widened", "f32_batch", "direct"]
        .iter()
        .map(|k| s[k].as_u64().unwrap())
        .sum();
    assert_eq!(settled, 2, "{v}");
    // And the table says so.
    let text = cli.ok(&["gallery", "info", "g"]);
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("exception rows"))
        .unwrap_or_else(|| panic!("no exception row in {text}"));
    assert!(row.trim_end().ends_with(" 2"), "{row}");
    assert!(
        text.contains("exact scans since open") && text.contains("2 probes"),
        "{text}"
    );
    let seg = text
        .lines()
        .find(|l| l.trim_start().starts_with("seg-"))
        .unwrap_or_else(|| panic!("no segment line in {text}"));
    let cells: Vec<&str> = seg.split_whitespace().collect();
    let version = format!("v{}", visage_engine::format::FORMAT_VERSION);
    assert_eq!(&cells[1..], ["300", "0", "2", &version], "{text}");
}

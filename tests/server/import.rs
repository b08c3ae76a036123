//! `visage import` and the Import RPC on the real server: files under the
//! server's import root imported with and without ids; the answers equal
//! those of the same rows inserted; held ids refused whole unless
//! `--replace`; a NaN, a short subjects file and a path outside the import
//! root refused with what and where, changing nothing.

use crate::cli::{Cli, p, write_vectors};
use crate::harness::{Server, TempData};
use visage_client::npy;
use visage_tests::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_imports_files_the_server_reads() {
    let t = TempData::new();
    let root = t.dir.path().join("in");
    std::fs::create_dir_all(&root).unwrap();
    let server = Server::start_with(&t.data(), &["--import-root", p(&root)]);
    let cli = Cli { url: server.url() };
    let mut rng = Rng(41);
    let n = 3000;
    let vectors: Vec<Vec<f32>> = (0..n).map(|_| rng.vector()).collect();
    let subjects: Vec<String> = (0..n).map(|i| format!("p-{}", i % 300)).collect();
    let (faces, names, ids) = (
        root.join("faces.npy"),
        root.join("names.txt"),
        root.join("ids.npy"),
    );
    write_vectors(&faces, &vectors);
    std::fs::write(&names, subjects.join("\n") + "\n").unwrap();
    npy::write_ids(&ids, &(5000..5000 + n as u64).collect::<Vec<_>>()).unwrap();
    for g in ["ins", "imp", "auto"] {
        cli.ok(&["gallery", "create", g]);
    }
    cli.ok(&[
        "insert",
        "ins",
        "--vectors",
        p(&faces),
        "--subjects",
        p(&names),
        "--ids",
        p(&ids),
    ]);
    let files = ["--vectors", p(&faces), "--subjects", p(&names)];
    let mut args = vec!["import", "imp"];
    args.extend_from_slice(&files);
    args.extend_from_slice(&["--ids", p(&ids)]);
    let r = cli.json(&args);
    assert_eq!(
        (r["embeddings"].as_u64(), r["replaced"].as_u64()),
        (Some(n as u64), Some(0)),
        "{r}"
    );
    assert_eq!(r["subjects"].as_u64(), Some(300), "{r}");

    let c = server.client().await;
    let probes: Vec<Vec<f32>> = (0..20).map(|_| rng.vector()).collect();
    let (a, b) = (c.gallery("ins"), c.gallery("imp"));
    assert_eq!(
        a.search(&probes, 10).await.unwrap(),
        b.search(&probes, 10).await.unwrap()
    );

    // Held ids: refused whole, then replaced.
    let err = cli.fails(&args);
    assert!(
        err.contains("id 5000 (row 0) is already in the gallery") && err.contains("2999 more"),
        "{err}"
    );
    let mut replace = args.clone();
    replace.push("--replace");
    let r = cli.json(&replace);
    assert_eq!(r["replaced"].as_u64(), Some(n as u64), "{r}");
    assert_eq!(b.stats().await.unwrap().live, n as u64);

    // Without ids the gallery assigns consecutive ones.
    let mut auto = vec!["import", "auto"];
    auto.extend_from_slice(&files);
    let r = cli.json(&auto);
    let first = r["first_id"].as_u64().unwrap();
    let got = c
        .gallery("auto")
        .get(&[first, first + n as u64 - 1])
        .await
        .unwrap();
    assert_eq!(got.len(), 2, "{r}");
    assert_eq!(got[1].subject, subjects[n - 1]);

    // Bad input: nothing changes, the error says what and where.
    let live = b.stats().await.unwrap().live;
    let mut bad = vectors.clone();
    bad[1234][7] = f32::NAN;
    let bad_faces = root.join("bad.npy");
    write_vectors(&bad_faces, &bad);
    let err = cli.fails(&[
        "import",
        "imp",
        "--vectors",
        p(&bad_faces),
        "--subjects",
        p(&names),
    ]);
    assert!(err.contains("vectors[1234]: value 7 is NaN"), "{err}");
    let short = root.join("short.txt");
    std::fs::write(&short, subjects[..n - 1].join("\n")).unwrap();
    let err = cli.fails(&[
        "import",
        "imp",
        "--vectors",
        p(&faces),
        "--subjects",
        p(&short),
    ]);
    assert!(err.contains("2999 lines for 3000 vectors"), "{err}");
    let outside = t.dir.path().join("outside.npy");
    write_vectors(&outside, &vectors);
    let err = cli.fails(&[
        "import",
        "imp",
        "--vectors",
        p(&outside),
        "--subjects",
        p(&names),
    ]);
    assert!(err.contains("not under the server's import root"), "{err}");
    assert_eq!(b.stats().await.unwrap().live, live, "nothing was imported");
}

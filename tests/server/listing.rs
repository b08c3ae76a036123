//! ListSubjects over gRPC and `visage subjects` against a model of the live
//! rows: every page size gives the same subjects and counts, in byte order;
//! bad page sizes and tokens are refused.

use crate::cli::Cli;
use crate::harness::{Model, Server, TempData, assert_status, batch};
use std::collections::BTreeMap;
use tonic::Code;
use visage_client::proto;
use visage_tests::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_are_listed_page_by_page_as_the_model_counts_them() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    c.create_gallery("g").await.unwrap();
    let g = c.gallery("g");
    let mut rng = Rng(41);
    let mut model = Model::default();
    // Three segments and the memtable; deletes by id and by subject.
    for round in 0..4u64 {
        let rows = batch(&mut rng, round * 250, 400, 70, "émp");
        g.insert(&rows).await.unwrap();
        model.insert(&rows);
        let ids: Vec<u64> = (0..40).map(|i| round * 250 + i * 3).collect();
        let subjects = vec![format!("émp-{}", round * 7)];
        g.delete(&ids, &subjects).await.unwrap();
        model.delete(&ids, &subjects);
        if round < 3 {
            g.flush().await.unwrap();
        }
    }
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (s, _) in model.rows.values() {
        *want.entry(s.clone()).or_default() += 1;
    }
    let want: Vec<(String, u64)> = want.into_iter().collect();
    for size in [0, 1, 6, 64, 10_000] {
        let got: Vec<(String, u64)> = g
            .subjects(size)
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.subject, s.embeddings))
            .collect();
        assert_eq!(got, want, "pages of {size}");
    }
    // One page, and the token of the next.
    let (page, token) = g.subjects_page(5, "").await.unwrap();
    assert_eq!(page.len(), 5);
    assert!(!token.is_empty());
    let (next, _) = g.subjects_page(5, &token).await.unwrap();
    assert_eq!(next[0].subject, want[5].0);

    let mut rpc = c.rpc();
    for (size, token, field) in [
        (10_001, String::new(), "page_size"),
        (5, "not-a-token".to_string(), "page_token"),
        (5, "c3".to_string(), "page_token"),
    ] {
        let r = rpc
            .list_subjects(proto::ListSubjectsRequest {
                gallery: "g".into(),
                page_size: size,
                page_token: token,
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(visage_client::Error::from);
        assert_status(r, Code::InvalidArgument, &[field]);
    }
    assert_status(
        c.gallery("nope").subjects(0).await,
        Code::NotFound,
        &["nope"],
    );

    // The CLI: every subject, as JSON and as a table.
    let cli = Cli { url: server.url() };
    let v = cli.json(&["subjects", "g", "--page-size", "7"]);
    let got: Vec<(String, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["subject"].as_str().unwrap().to_owned(),
                s["embeddings"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want);
    let table = cli.ok(&["subjects", "g"]);
    assert_eq!(table.lines().count(), 1 + want.len(), "{table}");
    assert!(
        table.lines().nth(1).unwrap().starts_with(&want[0].0),
        "{table}"
    );
    assert!(server.terminate().success());
}

/// `visage export` writes what `visage insert` reads back: a second gallery
/// made from the files holds the same embeddings, bit for bit, and the same
/// subjects; the export reads one snapshot of rows in segments and in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_insert_round_trips_a_gallery() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    c.create_gallery_with(
        "src",
        &visage_client::GallerySpec {
            dim: 64,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let g = c.gallery("src");
    let mut rng = Rng(43);
    let mut model: BTreeMap<u64, (String, Vec<f32>)> = BTreeMap::new();
    for round in 0..3u64 {
        let rows: Vec<visage_client::Embedding> = (0..3000)
            .map(|i| visage_client::Embedding {
                id: round * 2000 + i,
                subject: format!("exp-{}", (round * 2000 + i) % 300),
                vector: rng.vector_of(64),
            })
            .collect();
        g.insert(&rows).await.unwrap();
        for e in rows {
            model.insert(e.id, (e.subject, e.vector));
        }
        let gone: Vec<u64> = (0..100).map(|i| round * 2000 + i * 7).collect();
        g.delete(&gone, &[]).await.unwrap();
        for id in &gone {
            model.remove(id);
        }
        if round < 2 {
            g.flush().await.unwrap();
        }
    }
    let cli = Cli { url: server.url() };
    let dir = t.dir.path().join("export");
    let v = cli.json(&["export", "src", dir.to_str().unwrap()]);
    assert_eq!(v["embeddings"].as_u64(), Some(model.len() as u64));
    // Read back through the files: ids, subjects and vectors as stored.
    let ids = visage_client::npy::read_ids(dir.join("ids.npy")).unwrap();
    let m = visage_client::npy::read_f32(dir.join("embeddings.npy")).unwrap();
    let subjects = std::fs::read_to_string(dir.join("subjects.txt")).unwrap();
    let subjects: Vec<&str> = subjects.lines().collect();
    assert_eq!(
        (ids.len(), m.rows, m.cols, subjects.len()),
        (model.len(), model.len(), 64, model.len())
    );
    for (i, id) in ids.iter().enumerate() {
        let (s, v) = &model[id];
        assert_eq!(subjects[i], s, "id {id}");
        assert_eq!(m.row(i), &v[..], "id {id}");
    }
    // ... and into a second gallery with the CLI.
    cli.ok(&["gallery", "create", "dst", "--dim", "64"]);
    let p = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    cli.ok(&[
        "insert",
        "dst",
        "--vectors",
        &p("embeddings.npy"),
        "--subjects",
        &p("subjects.txt"),
        "--ids",
        &p("ids.npy"),
    ]);
    let all: Vec<u64> = (0..6000).collect();
    for chunk in all.chunks(2000) {
        assert_eq!(
            c.gallery("dst").get(chunk).await.unwrap(),
            g.get(chunk).await.unwrap()
        );
    }
    assert_eq!(
        c.gallery("dst").subjects(0).await.unwrap(),
        g.subjects(0).await.unwrap()
    );
    // An empty gallery exports three empty files.
    cli.ok(&["gallery", "create", "empty"]);
    let empty = t.dir.path().join("empty");
    cli.ok(&["export", "empty", empty.to_str().unwrap()]);
    assert_eq!(
        visage_client::npy::read_f32(empty.join("embeddings.npy"))
            .unwrap()
            .rows,
        0
    );
    assert!(
        std::fs::read_to_string(empty.join("subjects.txt"))
            .unwrap()
            .is_empty()
    );
    assert!(server.terminate().success());
}

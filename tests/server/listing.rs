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

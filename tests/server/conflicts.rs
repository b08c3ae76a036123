//! Enrolment conflicts (Insert's `conflict_check`) on the real server: a new
//! embedding is reported exactly when Identify, the same search and open-set
//! decision, would call it another subject; rows of one batch are checked
//! against each other; REJECT refuses the whole batch and changes nothing.

use crate::cli::{Cli, p};
use crate::harness::{Server, TempData, assert_status};
use tonic::Code;
use visage_client::proto::ConflictCheck;
use visage_client::{Client, Rows};
use visage_engine::synth::{SynthConfig, SynthGallery};

fn rows(vectors: &[Vec<f32>], subjects: &[String]) -> Rows {
    Rows {
        vectors: vectors.concat(),
        dim: 128,
        subjects: subjects.to_vec(),
        ids: None,
    }
}

async fn live(c: &Client) -> u64 {
    c.gallery("g").stats().await.unwrap().live
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_what_identify_decides_and_reject_changes_nothing() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = server.client().await;
    c.create_gallery("g").await.unwrap();
    let g = c.gallery("g");
    let synth = SynthGallery::generate(SynthConfig {
        subjects: 300,
        seed: 5,
        ..Default::default()
    });
    let wire: Vec<visage_client::Embedding> = synth
        .embeddings
        .iter()
        .map(|e| visage_client::Embedding {
            id: e.id + 1,
            subject: e.subject.clone(),
            vector: e.vector.clone(),
        })
        .collect();
    g.insert(&wire).await.unwrap();
    g.flush().await.unwrap();

    // New photos of enrolled people under new names, and strangers: each
    // checked alone, so the reference is Identify's decision for it.
    let probes = synth.probes(40, 200, 77);
    let (mut reported, mut strangers_reported) = (0, 0);
    for (i, probe) in probes.iter().enumerate() {
        let who = g
            .identify(std::slice::from_ref(&probe.vector), 1)
            .await
            .unwrap()
            .remove(0);
        let name = format!("new-{i}");
        let (_, ids, found) = g
            .insert_rows_checked(
                [rows(
                    std::slice::from_ref(&probe.vector),
                    std::slice::from_ref(&name),
                )],
                1,
                ConflictCheck::Report,
                |_| {},
            )
            .await
            .unwrap();
        assert_eq!(ids.len(), 1, "REPORT inserts");
        assert_eq!(
            found.len(),
            usize::from(who.known),
            "probe {i}: {found:?} vs {who:?}"
        );
        if let Some(f) = found.first() {
            assert_eq!(f.position, 0);
            assert_eq!(f.subject, name);
            assert_eq!(Some(&f.other_subject), Some(&who.subject));
            assert_eq!(f.other_id, who.candidates[0].id);
            assert!((f.distance - who.candidates[0].distance).abs() <= 1e-5);
            reported += 1;
            if probe.subject.is_none() {
                strangers_reported += 1;
            }
        }
        // Remove it again: the next probe sees the enrolled gallery only.
        g.delete(&ids, &[]).await.unwrap();
    }
    // Every report above was Identify's decision. How many photos of
    // enrolled people are caught is the open-set true-accept rate of plain
    // distance at the default FAR (0.001) on this data: 17 of 40 with this
    // seed (a trained head catches more). Strangers are flagged at about the
    // false-accept rate: none of 200 here.
    println!(
        "conflicts: {reported} of {} probes ({} of 40 known people, {strangers_reported} of 200 strangers)",
        probes.len(),
        reported - strangers_reported
    );
    assert!(reported - strangers_reported >= 10, "{reported}");
    assert!(
        strangers_reported <= 2,
        "{strangers_reported} strangers flagged"
    );

    // Two rows of one batch, one face under two names, far from everyone
    // enrolled: each reports the other.
    let stranger = probes.iter().find(|p| p.subject.is_none()).unwrap();
    let before = live(&c).await;
    let twins = rows(
        &[stranger.vector.clone(), stranger.vector.clone()],
        &["twin-a".to_string(), "twin-b".to_string()],
    );
    let (_, ids, found) = g
        .insert_rows_checked([twins.clone()], 1, ConflictCheck::Report, |_| {})
        .await
        .unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(
        (found[0].other_position, found[1].other_position),
        (Some(1), Some(0))
    );
    assert_eq!(found[0].other_subject, "twin-b");
    assert_eq!(found[0].distance, 0.0);
    g.delete(&ids, &[]).await.unwrap();
    assert_eq!(live(&c).await, before);

    // REJECT: a clean row and a known face under a new name; nothing goes in.
    let known = probes.iter().find(|p| p.subject.is_some()).unwrap();
    let batch = rows(
        &[stranger.vector.clone(), known.vector.clone()],
        &["clean".to_string(), "alias".to_string()],
    );
    let e = g
        .insert_rows_checked([batch], 1, ConflictCheck::Reject, |_| {})
        .await;
    let e = assert_status(
        e,
        Code::FailedPrecondition,
        &[
            "conflict_check",
            "matrix[1]",
            "\"alias\"",
            known.subject.as_deref().unwrap(),
        ],
    );
    assert!(e.to_string().contains("nothing was inserted"), "{e}");
    assert_eq!(live(&c).await, before);
    assert!(
        g.subjects(0)
            .await
            .unwrap()
            .iter()
            .all(|s| s.subject != "clean")
    );

    // The CLI: --conflicts report lists them (JSON), reject refuses.
    let cli = Cli { url: server.url() };
    let dir = t.dir.path();
    crate::cli::write_vectors(
        &dir.join("two.npy"),
        &[stranger.vector.clone(), known.vector.clone()],
    );
    std::fs::write(dir.join("two.txt"), "clean\nalias\n").unwrap();
    let args = |mode: &'static str| {
        vec![
            "insert".to_string(),
            "g".into(),
            "--vectors".into(),
            p(&dir.join("two.npy")).into(),
            "--subjects".into(),
            p(&dir.join("two.txt")).into(),
            "--assign-ids".into(),
            "--conflicts".into(),
            mode.into(),
        ]
    };
    let reject: Vec<String> = args("reject");
    let err = cli.fails(&reject.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err.contains("FAILED_PRECONDITION") && err.contains("alias"),
        "{err}"
    );
    assert_eq!(live(&c).await, before);
    let report: Vec<String> = args("report");
    let mut with_json = vec!["--json"];
    with_json.extend(report.iter().map(String::as_str));
    let out = cli.ok(&with_json);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let found = v["conflicts"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{out}");
    assert_eq!(found[0]["position"].as_u64(), Some(1));
    assert_eq!(found[0]["subject"].as_str(), Some("alias"));
    assert_eq!(live(&c).await, before + 2);
    assert!(server.terminate().success());
}

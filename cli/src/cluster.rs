//! `visage cluster status`: the cluster's nodes and each gallery's log and
//! shard replicas, as text or JSON.

use crate::output::{Table, count};
use serde_json::{Value, json};
use visage_client::{ClusterGallery, ClusterStatus};

/// The status as JSON: every field of the response, by its wire name.
pub fn status_json(s: &ClusterStatus) -> Value {
    json!({
        "node_id": s.node_id,
        "nodes": s.nodes.iter().map(|n| json!({"id": n.id, "advertise": n.advertise}))
            .collect::<Vec<_>>(),
        "galleries": s.galleries.iter().map(|g| json!({
            "name": g.name, "shards": g.shards,
            "log_first_seq": g.log_first_seq, "log_last_seq": g.log_last_seq,
            "replicas": g.replicas.iter().map(|r| json!({
                "shard": r.shard, "node_id": r.node_id, "live": r.live,
                "applied_seq": r.applied_seq, "flushed_seq": r.flushed_seq, "lag": r.lag,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The status as text: the live nodes, then for each gallery a line with its
/// shards and log and a table of its replicas, one row per shard and node,
/// and a line for each shard no live node holds. Log positions are printed
/// without separators, as `--min-seq` takes them.
pub fn status_text(s: &ClusterStatus) -> String {
    let mut out = format!(
        "cluster status from node {}: {} live {}\n",
        s.node_id,
        s.nodes.len(),
        if s.nodes.len() == 1 { "node" } else { "nodes" }
    );
    if !s.nodes.is_empty() {
        let mut t = Table::new(&["NODE", "ADDRESS"], &[false, false]);
        for n in &s.nodes {
            t.row(vec![n.id.clone(), n.advertise.clone()]);
        }
        out.extend(t.render().lines().map(|l| format!("  {l}\n")));
    }
    if s.galleries.is_empty() {
        out.push_str("\nno galleries\n");
    }
    for g in &s.galleries {
        out.push('\n');
        out.push_str(&gallery_text(g));
    }
    out
}

fn gallery_text(g: &ClusterGallery) -> String {
    let mut out = format!(
        "gallery {}: {} {}, {}\n",
        g.name,
        g.shards,
        if g.shards == 1 { "shard" } else { "shards" },
        log_text(g)
    );
    if !g.replicas.is_empty() {
        let mut t = Table::new(
            &["SHARD", "NODE", "STATE", "APPLIED", "FLUSHED", "LAG"],
            &[true, false, false, true, true, true],
        );
        for r in &g.replicas {
            t.row(vec![
                r.shard.to_string(),
                r.node_id.clone(),
                if r.live { "live" } else { "dead" }.into(),
                r.applied_seq.to_string(),
                r.flushed_seq.to_string(),
                count(r.lag),
            ]);
        }
        out.extend(t.render().lines().map(|l| format!("  {l}\n")));
    }
    for shard in 0..g.shards {
        if !g.replicas.iter().any(|r| r.shard == shard && r.live) {
            out.push_str(&format!(
                "  shard {shard} has no live replica: its subjects cannot be read until one returns\n"
            ));
        }
    }
    out
}

/// `log seq 1 to 1234`, or `log empty` (with the last position, if any
/// message was trimmed away).
fn log_text(g: &ClusterGallery) -> String {
    if g.log_last_seq == 0 {
        "log empty".into()
    } else if g.log_first_seq > g.log_last_seq {
        format!("log empty (last seq {})", g.log_last_seq)
    } else {
        format!("log seq {} to {}", g.log_first_seq, g.log_last_seq)
    }
}

/// The erasures of every gallery (or `only`), as JSON.
pub fn erasures_json(s: &ClusterStatus, only: Option<&str>) -> Value {
    json!(
        s.galleries
            .iter()
            .filter(|g| only.is_none_or(|o| o == g.name))
            .map(|g| json!({
                "gallery": g.name,
                "erasures": g.erasures.iter().map(|e| json!({
                    "seq": e.seq, "subjects": e.subjects, "ids": e.ids, "state": e.state,
                    "waiting_for": e.waiting_for, "messages_erased": e.messages_erased,
                })).collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>()
    )
}

/// The erasures of every gallery (or `only`): one line each, with what it
/// waits for.
pub fn erasures_text(s: &ClusterStatus, only: Option<&str>) -> String {
    let mut out = String::new();
    for g in s
        .galleries
        .iter()
        .filter(|g| only.is_none_or(|o| o == g.name))
    {
        if g.erasures.is_empty() {
            out.push_str(&format!("gallery {}: no erasures\n", g.name));
            continue;
        }
        out.push_str(&format!("gallery {}:\n", g.name));
        for e in &g.erasures {
            let what = match e.state.as_str() {
                "done" => format!(
                    "done: no replica and no log member holds them ({} log messages erased)",
                    e.messages_erased
                ),
                "log" => format!(
                    "{} log messages erased; log members to rebuild once back: {}",
                    e.messages_erased,
                    e.waiting_for.join(", ")
                ),
                _ => format!(
                    "waiting for the replicas to apply, flush and compact (run compact): {}",
                    e.waiting_for.join(", ")
                ),
            };
            out.push_str(&format!(
                "  delete at {} ({} subjects, {} ids): {what}\n",
                e.seq, e.subjects, e.ids
            ));
        }
    }
    if out.is_empty() {
        out.push_str("no such gallery\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use visage_client::proto::ErasureStatus;
    use visage_client::{ClusterNode, ShardReplica};

    fn replica(shard: u32, node: &str, live: bool, applied: u64, flushed: u64) -> ShardReplica {
        ShardReplica {
            shard,
            node_id: node.into(),
            live,
            applied_seq: applied,
            flushed_seq: flushed,
            lag: 1234 - applied,
        }
    }

    fn status() -> ClusterStatus {
        ClusterStatus {
            node_id: "node-a".into(),
            nodes: vec![
                ClusterNode {
                    id: "node-a".into(),
                    advertise: "10.0.0.1:50051".into(),
                },
                ClusterNode {
                    id: "node-b".into(),
                    advertise: "10.0.0.2:50051".into(),
                },
            ],
            galleries: vec![
                ClusterGallery {
                    name: "staff".into(),
                    shards: 2,
                    log_first_seq: 1,
                    log_last_seq: 1234,
                    replicas: vec![
                        replica(0, "node-a", true, 1234, 1200),
                        replica(0, "node-c", false, 0, 0),
                        replica(1, "node-b", true, 1000, 1000),
                    ],
                    erasures: vec![
                        ErasureStatus {
                            seq: 900,
                            subjects: 1,
                            ids: 0,
                            state: "replicas".into(),
                            waiting_for: vec!["shard 0 on node node-c".into()],
                            messages_erased: 0,
                        },
                        ErasureStatus {
                            seq: 700,
                            subjects: 2,
                            ids: 3,
                            state: "done".into(),
                            waiting_for: Vec::new(),
                            messages_erased: 4,
                        },
                    ],
                },
                ClusterGallery {
                    name: "visitors".into(),
                    shards: 3,
                    log_first_seq: 0,
                    log_last_seq: 0,
                    replicas: vec![
                        ShardReplica {
                            lag: 0,
                            ..replica(0, "node-a", true, 0, 0)
                        },
                        ShardReplica {
                            lag: 0,
                            ..replica(1, "node-c", false, 0, 0)
                        },
                    ],
                    erasures: Vec::new(),
                },
            ],
        }
    }

    #[test]
    fn status_prints_nodes_galleries_and_replicas() {
        let want = "\
cluster status from node node-a: 2 live nodes
  NODE    ADDRESS
  node-a  10.0.0.1:50051
  node-b  10.0.0.2:50051

gallery staff: 2 shards, log seq 1 to 1234
  SHARD  NODE    STATE  APPLIED  FLUSHED    LAG
      0  node-a  live      1234     1200      0
      0  node-c  dead         0        0  1,234
      1  node-b  live      1000     1000    234

gallery visitors: 3 shards, log empty
  SHARD  NODE    STATE  APPLIED  FLUSHED  LAG
      0  node-a  live         0        0    0
      1  node-c  dead         0        0    0
  shard 1 has no live replica: its subjects cannot be read until one returns
  shard 2 has no live replica: its subjects cannot be read until one returns
";
        assert_eq!(status_text(&status()), want);
    }

    #[test]
    fn empty_clusters_and_trimmed_logs_print_plainly() {
        let s = ClusterStatus {
            node_id: "n1".into(),
            nodes: vec![ClusterNode {
                id: "n1".into(),
                advertise: "h:1".into(),
            }],
            galleries: Vec::new(),
        };
        assert_eq!(
            status_text(&s),
            "cluster status from node n1: 1 live node\n  NODE  ADDRESS\n  n1    h:1\n\nno galleries\n"
        );
        let trimmed = ClusterGallery {
            name: "g".into(),
            shards: 1,
            log_first_seq: 11,
            log_last_seq: 10,
            replicas: vec![ShardReplica {
                lag: 0,
                ..replica(0, "n1", true, 10, 10)
            }],
            erasures: Vec::new(),
        };
        assert_eq!(
            gallery_text(&trimmed).lines().next(),
            Some("gallery g: 1 shard, log empty (last seq 10)")
        );
    }

    #[test]
    fn status_json_keeps_every_field() {
        let v = status_json(&status());
        assert_eq!(v["node_id"], "node-a");
        assert_eq!(v["nodes"][1]["advertise"], "10.0.0.2:50051");
        let g = &v["galleries"][0];
        assert_eq!(g["name"], "staff");
        assert_eq!(g["shards"], 2);
        assert_eq!(
            (g["log_first_seq"].as_u64(), g["log_last_seq"].as_u64()),
            (Some(1), Some(1234))
        );
        let r = &g["replicas"][1];
        assert_eq!(r["node_id"], "node-c");
        assert_eq!(r["live"], false);
        assert_eq!(r["lag"], 1234);
        assert_eq!(r["applied_seq"], 0);
        assert_eq!(g["replicas"][0]["flushed_seq"], 1200);
        assert_eq!(
            v["galleries"][1]["replicas"].as_array().map(Vec::len),
            Some(2)
        );
    }

    #[test]
    fn erasure_status_says_what_each_waits_for() {
        let s = status();
        let text = erasures_text(&s, Some("staff"));
        assert_eq!(
            text,
            "gallery staff:\n  delete at 900 (1 subjects, 0 ids): waiting for the replicas to apply, flush and compact (run compact): shard 0 on node node-c\n  delete at 700 (2 subjects, 3 ids): done: no replica and no log member holds them (4 log messages erased)\n"
        );
        assert_eq!(
            erasures_text(&s, Some("visitors")),
            "gallery visitors: no erasures\n"
        );
        assert_eq!(erasures_text(&s, Some("nope")), "no such gallery\n");
        let j = erasures_json(&s, None);
        assert_eq!(j[0]["erasures"][1]["state"], "done");
        assert_eq!(j[1]["erasures"].as_array().map(Vec::len), Some(0));
    }
}

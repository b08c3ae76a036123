//! Erasure of a person's log messages on a real 3-member NATS cluster: the
//! messages that carried the person's vector are erased with
//! `Log::erase`, and then no file of any member's store holds the vector's
//! bytes, while other messages' vectors are still there. One member is
//! killed before the erasure; it comes back still holding the bytes in its
//! stream files (it catches up from a snapshot, which deletes without
//! overwriting), and `Log::resync_replica` rebuilds it without them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use visage_cluster::batch::LogBatch;
use visage_cluster::log::{Log, stream_name};
use visage_tests::Rng;
use visage_tests::cluster::READY_TIMEOUT;
use visage_tests::cluster::{NatsCluster, require_cluster_tools};

const DIM: usize = 16;
const GALLERY: &str = "people";

/// Every file under `dir` whose bytes contain `needle`, relative to `dir`.
fn files_holding(dir: &Path, needle: &[u8]) -> BTreeSet<PathBuf> {
    assert!(!needle.is_empty());
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                out.insert(p.strip_prefix(dir).unwrap_or(&p).to_path_buf());
            }
        }
    }
    out
}

/// The little-endian bytes of a vector (as a `LogBatch` carries them).
fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// An insert of 8 random rows, row 3 replaced by `extra` if given.
fn batch(rng: &mut Rng, first_id: u64, extra: Option<&[f32]>) -> LogBatch {
    let mut v: Vec<f32> = (0..8 * DIM).map(|_| rng.unit()).collect();
    if let Some(x) = extra {
        v[3 * DIM..4 * DIM].copy_from_slice(x);
    }
    let ids: Vec<u64> = (first_id..first_id + 8).collect();
    let subjects = ids.iter().map(|i| format!("p{i}")).collect();
    LogBatch::insert(ids, subjects, &v, DIM)
}

/// Poll `ok` until it holds or [`READY_TIMEOUT`] passes; then panic with
/// `what` and the last `state`.
fn wait_until<T: std::fmt::Debug>(
    what: &str,
    mut state: impl FnMut() -> T,
    ok: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let s = state();
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: still {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Files of member `i` holding `needle`: (in the stream's own files, in
/// its raft group's files).
fn where_held(nats: &NatsCluster, i: usize, needle: &[u8]) -> (usize, usize) {
    let files = files_holding(&nats.store_dir(i), needle);
    let stream = files
        .iter()
        .filter(|f| f.starts_with(format!("jetstream/$G/streams/{}", stream_name(GALLERY))))
        .count();
    (stream, files.len() - stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_removes_the_vectors_from_every_members_files() {
    if !require_cluster_tools("erase_removes_the_vectors_from_every_members_files") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsCluster::start(&dir.path().join("nats"), 3);
    let log = Log::connect(&nats.url_list(), None, 3).await.unwrap();
    log.ensure_stream(GALLERY).await.unwrap();
    let mut rng = Rng(7);
    // Random values: 64 bytes found nowhere else.
    let marker_row: Vec<f32> = (0..DIM).map(|_| rng.unit()).collect();
    let keep_row: Vec<f32> = (0..DIM).map(|_| rng.unit()).collect();
    let (marker, keep) = (bytes_of(&marker_row), bytes_of(&keep_row));
    let mut marked = vec![];
    let mut last = 0;
    for i in 0..12u64 {
        let extra = match i {
            3 | 8 => Some(&marker_row[..]),
            5 => Some(&keep_row[..]),
            _ => None,
        };
        last = log
            .publish(GALLERY, &batch(&mut rng, i * 8, extra), &format!("b{i}"))
            .await
            .unwrap();
        if matches!(i, 3 | 8) {
            marked.push(last);
        }
    }

    // The scan finds both vectors on every member, in the stream's files
    // and in its raft log's.
    for i in 0..3 {
        wait_until(
            &format!("n{} stores the batches", i + 1),
            || (where_held(&nats, i, &marker), where_held(&nats, i, &keep)),
            |&((ms, mr), (ks, kr))| ms > 0 && mr > 0 && ks > 0 && kr > 0,
        );
    }

    // A member other than the stream's leader goes down, then the erasure.
    let leader = nats.stream_leader(&stream_name(GALLERY)).expect("a leader");
    let down = (leader + 1) % 3;
    nats.kill(down);
    let started = Instant::now();
    let behind = log.erase(GALLERY, &marked).await.unwrap();
    eprintln!("erase took {:?}; behind: {behind:?}", started.elapsed());
    assert_eq!(behind, vec![format!("n{}", down + 1)]);
    // A retried erasure succeeds (the messages are already gone).
    log.erase_messages(GALLERY, &marked).await.unwrap();

    // The running members hold no copy, and still hold the other vector.
    for i in (0..3).filter(|&i| i != down) {
        let started = Instant::now();
        wait_until(
            &format!("n{} drops the marker", i + 1),
            || where_held(&nats, i, &marker),
            |&held| held == (0, 0),
        );
        eprintln!("n{} clean after {:?}", i + 1, started.elapsed());
        assert!(
            where_held(&nats, i, &keep).0 > 0,
            "n{} lost the other vector",
            i + 1
        );
    }
    let stream = log
        .context()
        .get_stream(stream_name(GALLERY))
        .await
        .unwrap();
    for &seq in &marked {
        assert!(
            stream.get_raw_message(seq).await.is_err(),
            "message {seq} is still readable"
        );
    }
    assert!(stream.get_raw_message(marked[0] + 2).await.is_ok());
    // The member that was down still holds them.
    let (s, r) = where_held(&nats, down, &marker);
    assert!(
        s > 0 && r > 0,
        "the down member's files: {s} stream, {r} raft"
    );

    // Back, it catches up from a snapshot: its raft log's copy goes, its
    // stream files keep the bytes (deleted, not overwritten).
    nats.restart(down);
    let started = Instant::now();
    let name = stream_name(GALLERY);
    wait_until(
        "the restarted member catches up",
        || {
            let d = nats.stream_detail(down, &name);
            let seq = d
                .as_ref()
                .and_then(|d| d.pointer("/state/last_seq")?.as_u64());
            (seq, where_held(&nats, down, &marker))
        },
        |&(seq, (_, raft))| seq.is_some_and(|s| s > last) && raft == 0,
    );
    eprintln!("n{} caught up after {:?}", down + 1, started.elapsed());
    assert!(
        where_held(&nats, down, &marker).0 > 0,
        "the restarted member overwrote the bytes itself"
    );

    // Rebuilt from the others, it holds the other vector and not the marker.
    let started = Instant::now();
    log.resync_replica(GALLERY, &format!("n{}", down + 1))
        .await
        .unwrap();
    wait_until(
        "the resynced member holds the stream without the marker",
        || {
            (
                where_held(&nats, down, &marker),
                where_held(&nats, down, &keep),
            )
        },
        |&(m, k)| m == (0, 0) && k.0 > 0,
    );
    eprintln!("n{} resynced after {:?}", down + 1, started.elapsed());
    for i in 0..3 {
        assert_eq!(where_held(&nats, i, &marker), (0, 0), "n{}", i + 1);
        assert!(where_held(&nats, i, &keep).0 > 0, "n{}", i + 1);
    }
}

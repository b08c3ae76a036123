//! Hostile input over gRPC: each class gets a clear status, the server stays
//! up (a normal call works afterwards) and its resident memory stays bounded.
//! Oversized messages and batches, and the per-field limits, are in
//! `errors.rs`; this file adds what a hostile client does on top.

use crate::harness::{Server, TempData, assert_status, batch, counts};
use bytes::{Buf, BufMut};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use visage_client::{Client, proto};
use visage_tests::Rng;

/// The server's resident memory in bytes (VmRSS).
fn rss(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("server /proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS line");
    kb * 1024
}

/// A normal call still works.
async fn still_serving(server: &Server) {
    let c = server.client().await;
    let hits = c
        .gallery("g")
        .search(&[vec![0.0f32; 128]], 1)
        .await
        .expect("a normal search after the hostile input");
    assert_eq!(hits.len(), 1);
}

async fn setup(server: &Server) -> Client {
    let c = server.client().await;
    c.create_gallery("g").await.expect("create");
    let mut rng = Rng(77);
    c.gallery("g")
        .insert(&batch(&mut rng, 0, 100, 10, "s"))
        .await
        .expect("insert");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_k_long_strings_and_millions_of_ids() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = setup(&server).await;
    let g = c.gallery("g");
    let q = vec![0.5f32; 128];
    let rss0 = rss(&server);

    for k in [u32::MAX, 1 << 31, 10_001] {
        assert_status(g.search(&[&q], k).await, Code::InvalidArgument, &["k"]);
        assert_status(g.identify(&[&q], k).await, Code::InvalidArgument, &["k"]);
    }

    // A megabyte-long name or subject: refused, and the message quotes at
    // most a short prefix (a megabyte-long status would not fit in trailers).
    let long = "x".repeat(1 << 20);
    let short_msg = |e: visage_client::Error, ctx: &str| {
        let m = e.message().unwrap_or_default().len();
        assert!(m < 400, "{ctx}: a {m}-byte message");
    };
    short_msg(
        assert_status(
            c.create_gallery(&long).await,
            Code::InvalidArgument,
            &["invalid gallery name", "1048576 bytes"],
        ),
        "create",
    );
    short_msg(
        assert_status(
            c.gallery(&long).search(&[&q], 1).await,
            Code::InvalidArgument,
            &["1048576 bytes"],
        ),
        "search",
    );
    let mut rng = Rng(5);
    let mut e = batch(&mut rng, 1_000, 2, 1, "s");
    e[1].subject = long.clone();
    short_msg(
        assert_status(
            g.insert(&e).await,
            Code::InvalidArgument,
            &["subjects[1]", "1048576 bytes"],
        ),
        "insert",
    );
    short_msg(
        assert_status(
            g.delete(&[], std::slice::from_ref(&long)).await,
            Code::InvalidArgument,
            &["subjects[0]"],
        ),
        "delete",
    );
    short_msg(
        assert_status(
            g.verify(&[(q.clone(), visage_client::Against::Subject(long.clone()))])
                .await,
            Code::InvalidArgument,
            &["subject"],
        ),
        "verify",
    );

    // A million ids in one delete (the limit): done, and only what existed goes.
    let million: Vec<u64> = (50..1_000_050).collect();
    let t0 = Instant::now();
    assert_eq!(g.delete(&million, &[]).await.expect("delete 1M ids"), 50);
    println!("delete of 1,000,000 ids: {:?}", t0.elapsed());
    // Past the limit: refused whole, nothing deleted.
    let over: Vec<u64> = (0..3_000_000).collect();
    assert_status(
        g.delete(&over, &[]).await,
        Code::ResourceExhausted,
        &["3000000", "1000000"],
    );
    assert_eq!(counts(&c, "g").await.0, 50);
    still_serving(&server).await;
    let grown = rss(&server).saturating_sub(rss0);
    println!(
        "server resident memory: {} MB before, {} MB after",
        rss0 >> 20,
        rss(&server) >> 20
    );
    assert!(
        grown < 512 << 20,
        "resident memory grew by {} MB",
        grown >> 20
    );
}

/// Sends and receives raw bytes as a gRPC message.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;
impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}
impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}
impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_bytes_are_refused_and_change_nothing() {
    let t = TempData::new();
    let server = Server::start(&t.data());
    let c = setup(&server).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut valid = Vec::new();
    prost::Message::encode(
        &proto::InsertRequest {
            gallery: "g".into(),
            embeddings: batch(&mut Rng(9), 500, 3, 1, "m"),
            ..Default::default()
        },
        &mut valid,
    )
    .expect("encode");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "random bytes",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect(),
        ),
        ("a truncated message", valid[..valid.len() / 2].to_vec()),
        // Field 1 (gallery, a string) sent as a varint.
        ("a wrong wire type", vec![0x08, 0x01]),
        // Field 2 (embeddings) claiming 4 GB that never come.
        (
            "a huge length prefix",
            vec![0x12, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01],
        ),
        // Tag with field number 0.
        ("field number zero", vec![0x02, 0x00]),
        // A varint longer than ten bytes.
        (
            "an overlong varint",
            vec![0x18; 1].into_iter().chain([0xff; 11]).collect(),
        ),
    ];
    for method in ["Insert", "Search", "Delete", "CreateGallery"] {
        for (what, bytes) in &cases {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.expect("ready");
            let path = PathAndQuery::try_from(format!("/visage.v1.Visage/{method}")).expect("path");
            let r = grpc
                .unary(tonic::Request::new(bytes.clone()), path, Raw)
                .await;
            let s = r.expect_err(&format!("{method} accepted {what}"));
            assert!(
                matches!(s.code(), Code::Internal | Code::InvalidArgument),
                "{method}, {what}: {s:?}"
            );
            assert!(
                s.message().contains("decode"),
                "{method}, {what}: unclear message {:?}",
                s.message()
            );
        }
    }
    // The valid bytes work through the same path (the raw route is sound).
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("ready");
    grpc.unary(
        tonic::Request::new(valid),
        PathAndQuery::from_static("/visage.v1.Visage/Insert"),
        Raw,
    )
    .await
    .expect("valid bytes");
    assert_eq!(counts(&c, "g").await.0, 103);
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_stalled_and_abandoned_streams() {
    let t = TempData::new();
    let server = Server::start_with(&t.data(), &["--stream-idle-timeout", "1"]);
    let c = setup(&server).await;
    let mut rng = Rng(11);

    // Stalled: one message, then nothing. Ended with DEADLINE_EXCEEDED; the
    // message sent is committed and the status says so.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(proto::InsertRequest {
        gallery: "g".into(),
        embeddings: batch(&mut rng, 10_000, 7, 1, "st"),
        ..Default::default()
    })
    .await
    .expect("send");
    let t0 = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        c.rpc()
            .insert_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("a stalled stream was never ended");
    let s = r.expect_err("a stalled stream succeeded");
    assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
    assert!(
        s.message().contains("no message arrived for 1 s")
            && s.message().contains("1 earlier messages (7 embeddings)"),
        "{}",
        s.message()
    );
    println!(
        "stalled stream ended after {:?}: {}",
        t0.elapsed(),
        s.message()
    );
    assert_eq!(
        c.gallery("g")
            .get(&[10_000, 10_006])
            .await
            .expect("get")
            .len(),
        2
    );
    drop(tx);

    // Slow but within the timeout: served to the end.
    let slow = {
        let mut rng = rng.clone();
        async_stream(move |i| {
            (i < 4).then(|| proto::InsertRequest {
                gallery: "g".into(),
                embeddings: batch(&mut rng, 20_000 + i * 10, 10, 1, "sl"),
                ..Default::default()
            })
        })
    };
    let r = c.rpc().insert_stream(slow).await.expect("slow stream");
    assert_eq!(r.into_inner().batches, 4);

    // Abandoned: 40 clients each send a batch and vanish mid-stream (their
    // connection dropped). Each batch is committed whole or not at all.
    let rss0 = rss(&server);
    for i in 0..40u64 {
        let url = server.url();
        let rows = batch(&mut rng, 100_000 + i * 100, 25, 1, &format!("ab{i}"));
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(proto::InsertRequest {
            gallery: "g".into(),
            embeddings: rows,
            ..Default::default()
        })
        .await
        .expect("send");
        let task = tokio::spawn(async move {
            let client = Client::connect(&url).await.expect("connect");
            let _ = client
                .rpc()
                .insert_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        task.abort();
        drop(tx);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut whole = 0;
    for i in 0..40u64 {
        let ids: Vec<u64> = (0..25).map(|j| 100_000 + i * 100 + j).collect();
        let n = c.gallery("g").get(&ids).await.expect("get").len();
        assert!(n == 0 || n == 25, "abandoned stream {i}: {n} of 25 rows");
        whole += usize::from(n == 25);
    }
    println!("abandoned streams: {whole} of 40 batches committed whole, none in part");
    still_serving(&server).await;
    assert!(rss(&server) < rss0 + (256 << 20), "memory grew");
}

/// A request stream yielding `next(i)` every 300 ms until it returns `None`.
fn async_stream<F>(mut next: F) -> impl tokio_stream::Stream<Item = proto::InsertRequest>
where
    F: FnMut(u64) -> Option<proto::InsertRequest> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut i = 0;
        while let Some(m) = next(i) {
            if tx.send(m).await.is_err() {
                return;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connections() {
    let t = TempData::new();
    let server = Server::start_with(
        &t.data(),
        &["--max-connections", "200", "--idle-timeout", "2"],
    );
    setup(&server).await;
    let rss0 = rss(&server);

    // 2,000 connections that never speak: 200 are served (and closed when
    // idle), the rest closed at once. The server stays up and bounded.
    let mut raw = Vec::new();
    for _ in 0..2_000 {
        match tokio::net::TcpStream::connect(&server.addr).await {
            Ok(s) => raw.push(s),
            Err(e) => panic!("connect {}: {e}", raw.len()),
        }
    }
    let held_rss = rss(&server);
    // Every silent connection is closed within the idle timeout (plus slack).
    let t0 = Instant::now();
    let mut closed = 0;
    for s in &mut raw {
        let mut b = [0u8; 64];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed += 1;
                    break;
                }
                Ok(Ok(_)) => continue, // the server's HTTP/2 settings
                Err(_) => break,
            }
        }
    }
    assert_eq!(closed, 2_000, "silent connections left open");
    println!(
        "2,000 silent connections all closed after {:?}; server RSS {} MB idle, {} MB holding them",
        t0.elapsed(),
        rss0 >> 20,
        held_rss >> 20
    );
    drop(raw);
    still_serving(&server).await;

    // 1,000 real clients at once (own connections), within a 200 limit: the
    // ones shed retry, and every call completes.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1_000u64 {
        let url = server.url();
        tasks.spawn(async move {
            let t0 = Instant::now();
            loop {
                let r = async {
                    let c = Client::connect(&url).await?;
                    c.gallery("g")
                        .search(&[vec![i as f32 / 1000.0; 128]], 3)
                        .await
                }
                .await;
                match r {
                    Ok(h) => return h[0].len(),
                    Err(e) if t0.elapsed() < Duration::from_secs(60) => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("client {i} never got through: {e}"),
                }
            }
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.expect("client task"), 3);
        ok += 1;
    }
    assert_eq!(ok, 1_000);
    let peak = rss(&server);
    println!(
        "1,000 concurrent clients served; server RSS {} MB",
        peak >> 20
    );
    assert!(
        peak < rss0 + (512 << 20),
        "memory grew to {} MB",
        peak >> 20
    );
    still_serving(&server).await;
}

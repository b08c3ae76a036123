//! WAL records: the frame reader (`read_frame`) and the payload decoder
//! (`decode_op`) on arbitrary bytes.
//!
//! Input: the whole input is decoded as one payload; then a salt (4 bytes)
//! followed by records is read frame by frame (unless bit 0 of the first byte
//! is set, the frame CRCs are recomputed first so the payloads behind them
//! are reached). Every payload is decoded as a gallery of 128, 16 and 512
//! values a vector would decode it. Checks: no panic, no allocation beyond
//! what the bytes can hold, and every accepted payload or frame re-encodes to
//! the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use visage_engine::format::{self, Frame};
use visage_fuzz::encode_op;

fn round_trip(payload: &[u8]) {
    for dim in [128, 16, 512] {
        if let Ok(op) = format::decode_op(Path::new("wal"), 0, payload, dim) {
            assert_eq!(
                encode_op(&op),
                payload,
                "decode_op at dimension {dim} accepted bytes it does not re-encode"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip(data);
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    if rest.len() < 4 {
        return;
    }
    let salt = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let mut buf = rest[4..].to_vec();
    if flags & 1 == 0 {
        // Frame CRCs recomputed along the chain the reader will follow.
        let mut at = 0;
        while at + format::RECORD_FRAME_LEN <= buf.len() {
            let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
            let start = at + format::RECORD_FRAME_LEN;
            if len == 0 || len > format::MAX_RECORD_LEN || start + len > buf.len() {
                break;
            }
            let crc =
                format::record_crc(salt, (len as u32).to_le_bytes(), &buf[start..start + len]);
            buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
            at = start + len;
        }
    }
    let mut at = 0;
    loop {
        match format::read_frame(salt, &buf, at) {
            Frame::Record { payload, next } => {
                assert!(
                    next > at && next <= buf.len(),
                    "frame end {next} out of range"
                );
                let mut framed = Vec::new();
                format::frame_record(salt, payload, &mut framed);
                assert_eq!(
                    &framed[..],
                    &buf[at..next],
                    "an accepted frame re-encodes differently"
                );
                round_trip(payload);
                at = next;
            }
            Frame::End => {
                assert!(at >= buf.len());
                break;
            }
            Frame::Bad(_) => break,
        }
    }
});

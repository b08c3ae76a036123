//! WAL files (`.log`): the header, record framing, insert and delete records. No I/O.
//!
//! # WAL file (`.log`), version 4 (1 to 3: bytes 24..28 reserved, 0, and records of 128 values)
//!
//! | offset | size | type | meaning |
//! |---|---|---|---|
//! | 0 | 8 | `[u8; 8]` | magic `89 56 57 4C 0D 0A 1A 0A` (`\x89VWL\r\n\x1a\n`) |
//! | 8 | 4 | u32 | format version (1) |
//! | 12 | 4 | u32 | salt: random seed of every record CRC in this file |
//! | 16 | 8 | u64 | WAL file number |
//! | 24 | 4 | u32 | dimension `D` of every vector in the file (the gallery's) |
//! | 28 | 4 | u32 | crc32 of bytes 0..28 |
//!
//! Then records, each one whole batch (applied entirely or not at all):
//!
//! | size | type | meaning |
//! |---|---|---|
//! | 4 | u32 | payload length `n` (1 ..= [`MAX_RECORD_LEN`]) |
//! | 4 | u32 | crc32 seeded with the salt, over the length field and the payload |
//! | n | payload | kind u8, then the body |
//!
//! Kind 1, insert (upsert): count u32, then per embedding id u64, subject
//! length u16, subject bytes, D × f32. Kind 2, delete: count u32, then count × id u64
//! (deletes by subject are logged as the ids they resolved to). Kind 3
//! (format 7), a batch applied from a replicated log: the log's sequence
//! number u64, then a kind 1 or kind 2 payload; replay restores the
//! gallery's applied sequence from it, in the same record as the batch.
//!
//! The salt means a stale record left in a reused or preallocated file can never
//! validate. Recovery reads records until the end; a record that is cut short,
//! has length 0 or fails its CRC is a *torn tail* if no valid record follows it
//! in the last WAL file, and is truncated; a bad record followed by a valid one,
//! or a bad record in an older WAL file, is corruption and an error.

use super::{
    Cursor, FORMAT_VERSION, check_version, check_zero, get_u32, get_u64, put_u32, put_u64,
    subject_problem,
};
use crate::api::GallerySpec;
use crate::error::{Error, Result};
use std::path::Path;

/// Magic number of WAL files.
pub const WAL_MAGIC: [u8; 8] = *b"\x89VWL\r\n\x1a\n";
/// Longest WAL record payload (a batch) in bytes.
pub const MAX_RECORD_LEN: usize = 256 << 20;
// Every payload length `read_frame` accepts fits the frame's u32 length field.
const _: () = assert!(MAX_RECORD_LEN <= u32::MAX as usize);

/// Most ids one delete record holds: its payload (kind byte, u32 count, the
/// ids) stays within [`MAX_RECORD_LEN`]. The gallery refuses a delete that
/// resolves to more (a record `read_frame` would refuse is never written).
pub const MAX_DELETE_IDS: usize = (MAX_RECORD_LEN - 5) / 8;
const _: () = assert!(5 + 8 * MAX_DELETE_IDS <= MAX_RECORD_LEN);
const _: () = assert!(5 + 8 * (MAX_DELETE_IDS + 1) > MAX_RECORD_LEN);

/// Length of the WAL file header.
pub const WAL_HEADER_LEN: usize = 32;
/// Length of a WAL record's frame (length + CRC).
pub const RECORD_FRAME_LEN: usize = 8;

/// Encode a WAL file header for records of `dim` values a vector.
pub fn encode_wal_header(salt: u32, file_no: u64, dim: u32) -> [u8; WAL_HEADER_LEN] {
    let mut b = [0u8; WAL_HEADER_LEN];
    b[..8].copy_from_slice(&WAL_MAGIC);
    put_u32(&mut b, 8, FORMAT_VERSION);
    put_u32(&mut b, 12, salt);
    put_u64(&mut b, 16, file_no);
    put_u32(&mut b, 24, dim);
    let crc = crc32fast::hash(&b[..28]);
    put_u32(&mut b, 28, crc);
    b
}

/// Decode a WAL file header; returns `(salt, file number, dimension)`.
pub fn decode_wal_header(path: &Path, b: &[u8]) -> Result<(u32, u64, u32)> {
    if b.len() < WAL_HEADER_LEN {
        return Err(Error::corrupt(
            path,
            0,
            format!("WAL file is {} bytes, shorter than its header", b.len()),
        ));
    }
    if b[..8] != WAL_MAGIC {
        return Err(Error::corrupt(
            path,
            0,
            "not a visage WAL file (bad magic number)",
        ));
    }
    let stored = get_u32(b, 28);
    let computed = crc32fast::hash(&b[..28]);
    if stored != computed {
        return Err(Error::ChecksumMismatch {
            path: path.into(),
            section: "WAL header".into(),
            expected: stored,
            got: computed,
        });
    }
    let version = get_u32(b, 8);
    check_version(path, version)?;
    // Up to version 3 the field was reserved and every vector had 128 values.
    let dim = if version >= 4 {
        let dim = get_u32(b, 24);
        if let Some(why) = GallerySpec::with_dim(dim as usize).problem() {
            return Err(Error::corrupt(path, 24, why));
        }
        dim
    } else {
        check_zero(path, b, 24..28)?;
        128
    };
    Ok((get_u32(b, 12), get_u64(b, 16), dim))
}

/// CRC of a record: seeded with the file's salt, over the length field and payload.
pub fn record_crc(salt: u32, len_field: [u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(salt);
    h.update(&len_field);
    h.update(payload);
    h.finalize()
}

/// The 8-byte frame of a record, from a CRC state already fed the payload
/// (started with `crc32fast::Hasher::new()`), so the payload's CRC can be
/// computed by the thread that encoded it and only combined here.
pub fn frame_header(
    salt: u32,
    payload_len: usize,
    payload_crc: &crc32fast::Hasher,
) -> [u8; RECORD_FRAME_LEN] {
    // Callers keep payloads within MAX_RECORD_LEN (< 2^32, asserted above), the
    // most `read_frame` accepts, so the length always fits its u32 field.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "payloads are at most MAX_RECORD_LEN < 2^32"
    )]
    let len = (payload_len as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new_with_initial(salt);
    h.update(&len);
    h.combine(payload_crc);
    let crc = h.finalize().to_le_bytes();
    [
        len[0], len[1], len[2], len[3], crc[0], crc[1], crc[2], crc[3],
    ]
}

/// Append one framed record holding `payload` to `out`.
pub fn frame_record(salt: u32, payload: &[u8], out: &mut Vec<u8>) {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "payloads are at most MAX_RECORD_LEN < 2^32, as in `frame_header`"
    )]
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&record_crc(salt, len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Outcome of reading one record frame at some offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A valid record; `next` is the offset just past it.
    Record {
        /// The payload.
        payload: &'a [u8],
        /// Offset after the record.
        next: usize,
    },
    /// No more bytes.
    End,
    /// Bytes that are not a valid record (cut short, zero length, or bad CRC).
    Bad(&'static str),
}

/// Read the record frame starting at `at` in `buf` (a whole WAL file).
pub fn read_frame(salt: u32, buf: &[u8], at: usize) -> Frame<'_> {
    if at >= buf.len() {
        return Frame::End;
    }
    let Some(frame) = buf.get(at..at + RECORD_FRAME_LEN) else {
        return Frame::Bad("record frame cut short");
    };
    let len_field: [u8; 4] = [frame[0], frame[1], frame[2], frame[3]];
    let len = u32::from_le_bytes(len_field) as usize;
    if len == 0 || len > MAX_RECORD_LEN {
        return Frame::Bad("record length out of range");
    }
    let start = at + RECORD_FRAME_LEN;
    let Some(payload) = buf.get(start..start + len) else {
        return Frame::Bad("record cut short");
    };
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if record_crc(salt, len_field, payload) != crc {
        return Frame::Bad("record checksum mismatch");
    }
    Frame::Record {
        payload,
        next: start + len,
    }
}

/// WAL record kind: insert (upsert) batch.
pub const KIND_INSERT: u8 = 1;
/// WAL record kind: delete batch.
pub const KIND_DELETE: u8 = 2;
/// WAL record kind (format 7): a batch applied from a replicated log, with
/// the log's sequence number: `3`, the sequence (u64), then the payload of an
/// insert or a delete record.
pub const KIND_AT: u8 = 3;

/// One embedding as carried in a WAL record.
#[derive(Debug, Clone, PartialEq)]
pub struct WalEmbedding {
    /// Id.
    pub id: u64,
    /// Subject.
    pub subject: String,
    /// Vector.
    pub vector: Vec<f32>,
}

/// A decoded WAL record.
#[derive(Debug, Clone, PartialEq)]
pub enum WalOp {
    /// Insert (upsert) a batch.
    Insert(Vec<WalEmbedding>),
    /// Delete ids.
    Delete(Vec<u64>),
    /// A batch (an insert or a delete, never another `At`) applied from a
    /// replicated log at its sequence number `seq`.
    At {
        /// The log's sequence number of the batch.
        seq: u64,
        /// The batch.
        op: Box<WalOp>,
    },
}

/// Start the payload of a batch applied from a log at `seq` ([`KIND_AT`]):
/// the insert's or delete's own payload follows.
pub fn encode_at(seq: u64, out: &mut Vec<u8>) {
    out.push(KIND_AT);
    out.extend_from_slice(&seq.to_le_bytes());
}

/// Encode an insert payload.
pub fn encode_insert<'a>(
    items: impl ExactSizeIterator<Item = (u64, &'a str, &'a [f32])>,
    out: &mut Vec<u8>,
) {
    out.push(KIND_INSERT);
    #[allow(
        clippy::cast_possible_truncation,
        reason = "a record holds at most MAX_RECORD_LEN bytes, so fewer than 2^32 embeddings"
    )]
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for (id, subject, v) in items {
        out.extend_from_slice(&id.to_le_bytes());
        #[allow(
            clippy::cast_possible_truncation,
            reason = "the write path refuses subjects longer than MAX_SUBJECT_LEN (256)"
        )]
        out.extend_from_slice(&(subject.len() as u16).to_le_bytes());
        out.extend_from_slice(subject.as_bytes());
        // f32 bytes in memory order are little-endian: big-endian targets are refused at compile time.
        out.extend_from_slice(bytemuck::cast_slice(v));
    }
}

/// Encode a delete payload.
pub fn encode_delete(ids: &[u64], out: &mut Vec<u8>) {
    out.push(KIND_DELETE);
    #[allow(
        clippy::cast_possible_truncation,
        reason = "a record holds at most MAX_RECORD_LEN bytes, so fewer than 2^32 ids"
    )]
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

/// Decode a record payload of a file of `dim` values a vector; `offset` is
/// the payload's position in `path`, for errors.
///
/// A record holds only what the write path accepts: an insert's subjects pass
/// [`subject_problem`], its values are finite and its ids distinct. A record
/// that passes its CRC but breaks these rules is corruption, refused here
/// rather than carried into the memtable and the next segment.
pub fn decode_op(path: &Path, offset: u64, payload: &[u8], dim: usize) -> Result<WalOp> {
    let vector_bytes = 4 * dim;
    let mut c = Cursor {
        buf: payload,
        at: 0,
        path,
        base: offset,
    };
    let kind = c.u8()?;
    if kind == KIND_AT {
        let seq = c.u64()?;
        let inner = &payload[c.at..];
        if inner.first() == Some(&KIND_AT) {
            return Err(c.err("a log position record inside another".into()));
        }
        let op = decode_op(path, offset + c.at as u64, inner, dim)?;
        return Ok(WalOp::At {
            seq,
            op: Box::new(op),
        });
    }
    let count = c.u32()? as usize;
    match kind {
        KIND_INSERT => {
            // Each embedding takes at least 8 + 2 + 4·dim bytes: bound the allocation by the payload.
            if count > payload.len() / (10 + vector_bytes) {
                return Err(c.err(format!(
                    "insert record claims {count} embeddings in {} bytes",
                    payload.len()
                )));
            }
            let mut items = Vec::with_capacity(count);
            for i in 0..count {
                let id = c.u64()?;
                let slen = usize::from(c.u16()?);
                let at = c.at;
                let subject = std::str::from_utf8(c.take(slen)?)
                    .map_err(|_| Error::corrupt(path, offset + at as u64, "subject is not UTF-8"))?
                    .to_owned();
                if let Some(why) = subject_problem(&subject) {
                    return Err(Error::corrupt(
                        path,
                        offset + at as u64,
                        format!("embedding {i}: subject {why}"),
                    ));
                }
                let mut vector = vec![0f32; dim];
                let at = c.at;
                let raw = c.take(vector_bytes)?;
                for (dst, src) in vector.iter_mut().zip(raw.chunks_exact(4)) {
                    *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
                }
                if let Some(d) = vector.iter().position(|x| !x.is_finite()) {
                    return Err(Error::corrupt(
                        path,
                        offset + (at + 4 * d) as u64,
                        format!("embedding {i}: value {d} is {}", vector[d]),
                    ));
                }
                items.push(WalEmbedding {
                    id,
                    subject,
                    vector,
                });
            }
            c.finish()?;
            let mut ids: Vec<u64> = items.iter().map(|e| e.id).collect();
            ids.sort_unstable();
            if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
                return Err(Error::corrupt(
                    path,
                    offset,
                    format!("insert record holds id {} twice", w[0]),
                ));
            }
            Ok(WalOp::Insert(items))
        }
        KIND_DELETE => {
            if count > payload.len() / 8 {
                return Err(c.err(format!(
                    "delete record claims {count} ids in {} bytes",
                    payload.len()
                )));
            }
            let mut ids = Vec::with_capacity(count);
            for _ in 0..count {
                ids.push(c.u64()?);
            }
            c.finish()?;
            Ok(WalOp::Delete(ids))
        }
        k => Err(Error::corrupt(
            path,
            offset,
            format!("unknown WAL record kind {k}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DIM;
    use crate::storage::format::test_support::reseal;

    #[test]
    fn wal_header_and_records_round_trip() {
        let h = encode_wal_header(0xdead_beef, 7, 512);
        assert_eq!(
            decode_wal_header(Path::new("w"), &h).unwrap(),
            (0xdead_beef, 7, 512)
        );
        assert_eq!(&h[24..28], &[0, 2, 0, 0]);
        let v = vec![0.5f32; 512];
        let mut payload = Vec::new();
        encode_insert([(9u64, "emp-1", &v[..])].into_iter(), &mut payload);
        let mut file = Vec::new();
        frame_record(0xdead_beef, &payload, &mut file);
        let mut del = Vec::new();
        encode_delete(&[1, 2, 3], &mut del);
        frame_record(0xdead_beef, &del, &mut file);
        let Frame::Record { payload: p, next } = read_frame(0xdead_beef, &file, 0) else {
            panic!()
        };
        assert_eq!(
            decode_op(Path::new("w"), 8, p, 512).unwrap(),
            WalOp::Insert(vec![WalEmbedding {
                id: 9,
                subject: "emp-1".into(),
                vector: v
            }])
        );
        // Read at another dimension, the record does not parse.
        assert!(decode_op(Path::new("w"), 8, p, 128).is_err());
        let Frame::Record {
            payload: p,
            next: end,
        } = read_frame(0xdead_beef, &file, next)
        else {
            panic!()
        };
        assert_eq!(
            decode_op(Path::new("w"), 0, p, 512).unwrap(),
            WalOp::Delete(vec![1, 2, 3])
        );
        assert_eq!(read_frame(0xdead_beef, &file, end), Frame::End);
        // A CRC computed in two parts and combined gives the same frame.
        let mut h = crc32fast::Hasher::new();
        h.update(&del);
        assert_eq!(
            &frame_header(0xdead_beef, del.len(), &h)[..],
            &file[next..next + 8]
        );
        // Another salt never validates the same bytes.
        assert!(matches!(read_frame(0x1234, &file, 0), Frame::Bad(_)));
        // Every truncation is a bad frame, never a panic.
        for cut in 1..next {
            assert!(
                matches!(read_frame(0xdead_beef, &file[..cut], 0), Frame::Bad(_)),
                "cut {cut}"
            );
        }
    }

    /// Found by the `manifest` fuzz target: decoders accepted non-zero reserved
    /// bytes under a valid CRC, so an accepted file did not re-encode to itself.
    #[test]
    fn reserved_bytes_must_be_zero_even_under_a_valid_crc() {
        // Version 3 and before: bytes 24..28 reserved, the dimension 128.
        let mut w = encode_wal_header(1, 2, 0);
        w[8] = 3;
        reseal(&mut w);
        assert_eq!(decode_wal_header(Path::new("w"), &w).unwrap(), (1, 2, 128));
        let mut bad = w;
        bad[25] = 1;
        reseal(&mut bad);
        assert!(decode_wal_header(Path::new("w"), &bad).is_err());
        // Version 4: a dimension no gallery can have is corruption.
        for dim in [0, 100, 4096] {
            let b = encode_wal_header(1, 2, dim);
            assert!(decode_wal_header(Path::new("w"), &b).is_err(), "{dim}");
        }
    }

    #[test]
    fn decode_op_rejects_garbage_without_panicking() {
        let mut payload = Vec::new();
        encode_insert([(1u64, "a", &[1.0; DIM][..])].into_iter(), &mut payload);
        for cut in 0..payload.len() {
            assert!(decode_op(Path::new("w"), 0, &payload[..cut], DIM).is_err());
        }
        let mut huge = vec![KIND_INSERT];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_op(Path::new("w"), 0, &huge, DIM).is_err());
    }
}

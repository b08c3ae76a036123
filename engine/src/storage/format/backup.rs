//! Backups and erasures: the backup manifest (`BACKUP`), the erasure log
//! (`ERASURES`, mirrored to the backup root) and the erasure key
//! (`ERASURE-KEY`). Layouts, encoders and decoders. No I/O.
//!
//! # Backup manifest (`BACKUP`)
//!
//! Written last into a backup's directory (atomically): a backup without it
//! was interrupted and is refused. It lists every other file of the backup
//! with its length and one CRC-32 per [`BACKUP_BLOCK`] bytes, so a restore
//! checks every byte before installing anything and names the file and the
//! offset of a damaged block.
//!
//! | offset | size | type | meaning |
//! |---|---|---|---|
//! | 0 | 8 | `[u8; 8]` | magic `89 56 42 4B 0D 0A 1A 0A` (`\x89VBK\r\n\x1a\n`) |
//! | 8 | 4 | u32 | format version |
//! | 12 | 4 | u32 | reserved, zero |
//! | 16 | 8 | u64 | created, milliseconds since the Unix epoch |
//! | 24 | 8 | u64 | the cut: file number of the last WAL copied |
//! | 32 | 8 | u64 | the cut: bytes of that WAL copied (the end of the last acknowledged write) |
//! | 40 | 8 | u64 | erasure records the gallery had logged at the cut |
//! | 48 | 16 | `[u8; 16]` | the gallery's erasure lineage (names its erasure log) |
//! | 64 | 8 | u64 | live embeddings at the cut |
//! | 72 | 8 | u64 | subjects at the cut |
//! | 80 | 4 | u32 | block size of the checksums ([`BACKUP_BLOCK`]) |
//! | 84 | 4 | u32 | `n`, files listed |
//! | 88 | 2 + … | u16, bytes | the gallery's name |
//! | … | n × … | | per file: name (u16 length, bytes), length u64, then one u32 CRC-32 per block (`⌈length / block⌉` of them) |
//! | end − 4 | 4 | u32 | crc32 of everything before it |
//!
//! File names are plain names (`A-Z a-z 0-9 . _ -`, not starting with a
//! dot): a damaged or hostile manifest cannot name a path outside the backup.
//!
//! # Erasure log (`ERASURES`, and `erasures/LINEAGE.log` under the backup root)
//!
//! Every delete (by subject and by id) appends, before it is applied, one
//! record per subject and per id: a keyed hash (HMAC-SHA-256 under the
//! gallery's secret key), never the name, the id or a vector. A restore
//! re-applies the records logged after the backup's cut.
//!
//! | offset | size | type | meaning |
//! |---|---|---|---|
//! | 0 | 8 | `[u8; 8]` | magic `89 56 45 52 0D 0A 1A 0A` (`\x89VER\r\n\x1a\n`) |
//! | 8 | 4 | u32 | format version |
//! | 12 | 16 | `[u8; 16]` | the lineage |
//! | 28 | 4 | u32 | crc32 of bytes 0..28 |
//! | 32 | 40 × r | | records: kind u8 (1 subject, 2 id), 3 reserved zero bytes, the 32-byte hash, crc32 of the record's first 36 bytes |
//!
//! An incomplete or unchecksummed *last* record is a torn append (the delete
//! it announced was never acknowledged) and is ignored; a bad record before
//! a good one is corruption.
//!
//! # Erasure key (`ERASURE-KEY`)
//!
//! | offset | size | type | meaning |
//! |---|---|---|---|
//! | 0 | 8 | `[u8; 8]` | magic `89 56 45 4B 0D 0A 1A 0A` (`\x89VEK\r\n\x1a\n`) |
//! | 8 | 4 | u32 | format version |
//! | 12 | 16 | `[u8; 16]` | the lineage |
//! | 28 | 32 | `[u8; 32]` | the HMAC key |
//! | 60 | 4 | u32 | crc32 of bytes 0..60 |
//!
//! The key is kept in the gallery and copied into each backup, never into the
//! mirrored log: the hashes under the backup root alone do not let anyone
//! test guesses of names.

use super::{Cursor, FORMAT_VERSION, check_version, check_zero, get_u32, put_u32};
use crate::error::{Error, Result};
use std::path::Path;

/// Magic number of the backup manifest.
pub const BACKUP_MAGIC: [u8; 8] = *b"\x89VBK\r\n\x1a\n";
/// Magic number of an erasure log.
pub const ERASURES_MAGIC: [u8; 8] = *b"\x89VER\r\n\x1a\n";
/// Magic number of the erasure key file.
pub const ERASURE_KEY_MAGIC: [u8; 8] = *b"\x89VEK\r\n\x1a\n";
/// Bytes covered by one checksum of a backed-up file.
pub const BACKUP_BLOCK: u32 = 1 << 20;
/// Bytes of an erasure log's header.
pub const ERASURES_HEADER_LEN: usize = 32;
/// Bytes of one erasure record.
pub const ERASURE_RECORD_LEN: usize = 40;
/// Bytes of the erasure key file.
pub const ERASURE_KEY_LEN: usize = 64;

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFile {
    /// Its name in the backup directory (and in the restored gallery's).
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
    /// CRC-32 of each block of [`BackupManifest::block`] bytes.
    pub crcs: Vec<u32>,
}

/// The contents of a `BACKUP` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupManifest {
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The cut: the last WAL file copied and the bytes of it copied.
    pub wal_file_no: u64,
    /// See `wal_file_no`.
    pub wal_offset: u64,
    /// Erasure records logged at the cut.
    pub erasure_position: u64,
    /// The gallery's erasure lineage.
    pub lineage: [u8; 16],
    /// Live embeddings at the cut.
    pub rows: u64,
    /// Subjects at the cut.
    pub subjects: u64,
    /// Block size of the checksums.
    pub block: u32,
    /// The gallery's name.
    pub gallery: String,
    /// Every other file, in the order written.
    pub files: Vec<BackupFile>,
}

/// Whether `name` may name a file of a backup.
pub fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Encode a backup manifest.
pub fn encode_backup(m: &BackupManifest) -> Vec<u8> {
    let mut b = Vec::with_capacity(128 + m.files.len() * 64);
    b.extend_from_slice(&BACKUP_MAGIC);
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for v in [
        m.created_ms,
        m.wal_file_no,
        m.wal_offset,
        m.erasure_position,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&m.lineage);
    b.extend_from_slice(&m.rows.to_le_bytes());
    b.extend_from_slice(&m.subjects.to_le_bytes());
    b.extend_from_slice(&m.block.to_le_bytes());
    #[allow(
        clippy::cast_possible_truncation,
        reason = "a gallery's files number far fewer than 2^32"
    )]
    b.extend_from_slice(&(m.files.len() as u32).to_le_bytes());
    put_str(&mut b, &m.gallery);
    for f in &m.files {
        put_str(&mut b, &f.name);
        b.extend_from_slice(&f.len.to_le_bytes());
        for c in &f.crcs {
            b.extend_from_slice(&c.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "names here are file names (at most 255 bytes) or gallery names (at most 64)"
)]
fn put_str(b: &mut Vec<u8>, s: &str) {
    debug_assert!(s.len() <= 255);
    b.extend_from_slice(&(s.len() as u16).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// Decode a backup manifest, checking its checksum first.
pub fn decode_backup(path: &Path, b: &[u8]) -> Result<BackupManifest> {
    if b.len() < 92 {
        return Err(Error::corrupt(
            path,
            b.len() as u64,
            format!("backup manifest cut short: {} bytes", b.len()),
        ));
    }
    if b[..8] != BACKUP_MAGIC {
        return Err(Error::corrupt(path, 0, "not a backup manifest (bad magic)"));
    }
    let n = b.len() - 4;
    if get_u32(b, n) != crc32fast::hash(&b[..n]) {
        return Err(Error::corrupt(
            path,
            n as u64,
            "backup manifest checksum does not match its bytes",
        ));
    }
    check_version(path, get_u32(b, 8))?;
    check_zero(path, b, 12..16)?;
    let mut c = Cursor {
        buf: &b[..n],
        at: 16,
        path,
        base: 0,
    };
    let created_ms = c.u64()?;
    let wal_file_no = c.u64()?;
    let wal_offset = c.u64()?;
    let erasure_position = c.u64()?;
    let mut lineage = [0u8; 16];
    lineage.copy_from_slice(c.take(16)?);
    let rows = c.u64()?;
    let subjects = c.u64()?;
    let block = c.u32()?;
    if block == 0 {
        return Err(c.err("checksum block size is zero".into()));
    }
    let count = c.u32()? as usize;
    let gallery = str_at(&mut c)?;
    let mut files = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let at = c.at;
        let name = str_at(&mut c)?;
        if !plain_file_name(&name) {
            return Err(Error::corrupt(
                path,
                at as u64,
                format!("file name {name:?} is not a plain file name"),
            ));
        }
        let len = c.u64()?;
        let blocks = len.div_ceil(u64::from(block));
        let bytes = c.take(usize::try_from(blocks.saturating_mul(4)).unwrap_or(usize::MAX))?;
        let crcs = bytes
            .chunks_exact(4)
            .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
            .collect();
        files.push(BackupFile { name, len, crcs });
    }
    c.finish()?;
    Ok(BackupManifest {
        created_ms,
        wal_file_no,
        wal_offset,
        erasure_position,
        lineage,
        rows,
        subjects,
        block,
        gallery,
        files,
    })
}

fn str_at(c: &mut Cursor<'_>) -> Result<String> {
    let len = c.u16()? as usize;
    let at = c.at;
    let bytes = c.take(len)?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Error::corrupt(c.path, at as u64, "name is not UTF-8"))
}

/// What an erasure record erases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErasureKind {
    /// Every embedding of a subject.
    Subject = 1,
    /// One embedding, by id.
    Id = 2,
}

/// One record of an erasure log: a kind and a keyed hash.
pub type ErasureRecord = (ErasureKind, [u8; 32]);

/// The header of a new erasure log of `lineage`.
pub fn encode_erasures_header(lineage: &[u8; 16]) -> [u8; ERASURES_HEADER_LEN] {
    let mut b = [0u8; ERASURES_HEADER_LEN];
    b[..8].copy_from_slice(&ERASURES_MAGIC);
    put_u32(&mut b, 8, FORMAT_VERSION);
    b[12..28].copy_from_slice(lineage);
    let crc = crc32fast::hash(&b[..28]);
    put_u32(&mut b, 28, crc);
    b
}

/// Append the bytes of `records` to `out`.
pub fn encode_erasure_records(records: &[ErasureRecord], out: &mut Vec<u8>) {
    for (kind, hash) in records {
        let at = out.len();
        out.push(*kind as u8);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(hash);
        let crc = crc32fast::hash(&out[at..at + 36]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
}

/// An erasure log read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureLog {
    /// The lineage in its header.
    pub lineage: [u8; 16],
    /// Its records, in the order logged.
    pub records: Vec<ErasureRecord>,
    /// Bytes up to the end of the last whole record (appends go here).
    pub valid_len: u64,
}

/// Decode an erasure log (see the module docs for torn tails).
pub fn decode_erasures(path: &Path, b: &[u8]) -> Result<ErasureLog> {
    if b.len() < ERASURES_HEADER_LEN {
        return Err(Error::corrupt(
            path,
            b.len() as u64,
            "erasure log header cut short",
        ));
    }
    if b[..8] != ERASURES_MAGIC {
        return Err(Error::corrupt(path, 0, "not an erasure log (bad magic)"));
    }
    if get_u32(b, 28) != crc32fast::hash(&b[..28]) {
        return Err(Error::corrupt(
            path,
            28,
            "erasure log header checksum does not match",
        ));
    }
    check_version(path, get_u32(b, 8))?;
    let mut lineage = [0u8; 16];
    lineage.copy_from_slice(&b[12..28]);
    let mut records = Vec::new();
    let mut at = ERASURES_HEADER_LEN;
    while at < b.len() {
        let Some(r) = b.get(at..at + ERASURE_RECORD_LEN) else {
            break; // torn append
        };
        let good = get_u32(r, 36) == crc32fast::hash(&r[..36]);
        let kind = match r[0] {
            1 => Some(ErasureKind::Subject),
            2 => Some(ErasureKind::Id),
            _ => None,
        };
        match (good, kind) {
            (true, Some(kind)) if r[1..4] == [0; 3] => {
                let mut h = [0u8; 32];
                h.copy_from_slice(&r[4..36]);
                records.push((kind, h));
                at += ERASURE_RECORD_LEN;
            }
            _ if at + ERASURE_RECORD_LEN >= b.len() => break, // torn last record
            _ => {
                return Err(Error::corrupt(
                    path,
                    at as u64,
                    "erasure record does not match its checksum",
                ));
            }
        }
    }
    Ok(ErasureLog {
        lineage,
        records,
        valid_len: at as u64,
    })
}

/// Encode the erasure key file.
pub fn encode_erasure_key(lineage: &[u8; 16], key: &[u8; 32]) -> [u8; ERASURE_KEY_LEN] {
    let mut b = [0u8; ERASURE_KEY_LEN];
    b[..8].copy_from_slice(&ERASURE_KEY_MAGIC);
    put_u32(&mut b, 8, FORMAT_VERSION);
    b[12..28].copy_from_slice(lineage);
    b[28..60].copy_from_slice(key);
    let crc = crc32fast::hash(&b[..60]);
    put_u32(&mut b, 60, crc);
    b
}

/// Decode the erasure key file: (lineage, key).
pub fn decode_erasure_key(path: &Path, b: &[u8]) -> Result<([u8; 16], [u8; 32])> {
    if b.len() != ERASURE_KEY_LEN {
        return Err(Error::corrupt(
            path,
            b.len().min(ERASURE_KEY_LEN) as u64,
            format!(
                "erasure key file is {} bytes, not {ERASURE_KEY_LEN}",
                b.len()
            ),
        ));
    }
    if b[..8] != ERASURE_KEY_MAGIC {
        return Err(Error::corrupt(
            path,
            0,
            "not an erasure key file (bad magic)",
        ));
    }
    if get_u32(b, 60) != crc32fast::hash(&b[..60]) {
        return Err(Error::corrupt(
            path,
            60,
            "erasure key checksum does not match",
        ));
    }
    check_version(path, get_u32(b, 8))?;
    let mut lineage = [0u8; 16];
    lineage.copy_from_slice(&b[12..28]);
    let mut key = [0u8; 32];
    key.copy_from_slice(&b[28..60]);
    Ok((lineage, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BackupManifest {
        BackupManifest {
            created_ms: 1_700_000_000_000,
            wal_file_no: 11,
            wal_offset: 4096,
            erasure_position: 3,
            lineage: [7; 16],
            rows: 1000,
            subjects: 100,
            block: 8,
            gallery: "doors".into(),
            files: vec![
                BackupFile {
                    name: "MANIFEST".into(),
                    len: 17,
                    crcs: vec![1, 2, 3],
                },
                BackupFile {
                    name: "wal-000000000000000b.log".into(),
                    len: 0,
                    crcs: vec![],
                },
            ],
        }
    }

    #[test]
    fn backup_manifest_round_trips_and_refuses_damage() {
        let p = Path::new("BACKUP");
        let b = encode_backup(&sample());
        assert_eq!(decode_backup(p, &b).unwrap(), sample());
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x10;
            assert!(decode_backup(p, &d).is_err(), "flip at {i} accepted");
        }
        for n in 0..b.len() {
            assert!(decode_backup(p, &b[..n]).is_err(), "cut at {n} accepted");
        }
    }

    #[test]
    fn backup_manifest_refuses_names_that_leave_the_directory() {
        let mut m = sample();
        m.files[0].name = "../MANIFEST".into();
        let b = encode_backup(&m);
        let e = decode_backup(Path::new("BACKUP"), &b).unwrap_err();
        assert!(e.to_string().contains("plain file name"), "{e}");
        for bad in ["", ".", "..", "a/b", ".hidden", "x\0y"] {
            assert!(!plain_file_name(bad), "{bad:?}");
        }
        assert!(plain_file_name("seg-0000000000000007.vseg"));
    }

    #[test]
    fn erasure_log_round_trips_with_torn_tails_and_refuses_damage_before_the_end() {
        let p = Path::new("ERASURES");
        let mut b = encode_erasures_header(&[3; 16]).to_vec();
        let recs = vec![
            (ErasureKind::Subject, [1u8; 32]),
            (ErasureKind::Id, [2u8; 32]),
            (ErasureKind::Subject, [9u8; 32]),
        ];
        encode_erasure_records(&recs, &mut b);
        let log = decode_erasures(p, &b).unwrap();
        assert_eq!(log.records, recs);
        assert_eq!(log.lineage, [3; 16]);
        assert_eq!(log.valid_len, b.len() as u64);
        // Every cut keeps the whole records before it.
        for n in ERASURES_HEADER_LEN..b.len() {
            let log = decode_erasures(p, &b[..n]).unwrap();
            let whole = (n - ERASURES_HEADER_LEN) / ERASURE_RECORD_LEN;
            assert_eq!(log.records, recs[..whole]);
        }
        // A flipped byte in the last record is a torn append; before it, corruption.
        let last = b.len() - 10;
        let mut d = b.clone();
        d[last] ^= 1;
        assert_eq!(decode_erasures(p, &d).unwrap().records, recs[..2]);
        let mut d = b.clone();
        d[ERASURES_HEADER_LEN + 5] ^= 1;
        let e = decode_erasures(p, &d).unwrap_err();
        assert!(e.to_string().contains("offset 32"), "{e}");
        let mut d = b.clone();
        d[13] ^= 1;
        assert!(decode_erasures(p, &d).is_err());
    }

    #[test]
    fn erasure_key_round_trips_and_refuses_damage() {
        let p = Path::new("ERASURE-KEY");
        let b = encode_erasure_key(&[5; 16], &[6; 32]);
        assert_eq!(decode_erasure_key(p, &b).unwrap(), ([5; 16], [6; 32]));
        for i in 0..b.len() {
            let mut d = b;
            d[i] ^= 4;
            assert!(decode_erasure_key(p, &d).is_err(), "flip at {i}");
        }
        assert!(decode_erasure_key(p, &b[..63]).is_err());
    }
}

//! The decoders of backups and erasures: the backup manifest (`BACKUP`), the
//! erasure log (`ERASURES` and its mirror) and the erasure key file.
//!
//! Input: a selector byte (0 backup manifest, 1 erasure log, 2 erasure key;
//! others modulo 3), then the file.
//!
//! Checks: no panic; whatever is accepted re-encodes to the same bytes (the
//! erasure log: its records up to the valid length, a torn tail dropped),
//! but for the version field; every file name an accepted manifest lists is
//! a plain name (it cannot leave the backup directory).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use visage_engine::format;

/// `b` with its version field (bytes 8..12, in every one of these files)
/// set to the version this build writes.
fn current_version(b: &[u8]) -> Vec<u8> {
    let mut b = b.to_vec();
    if b.len() >= 12 {
        b[8..12].copy_from_slice(&format::FORMAT_VERSION.to_le_bytes());
    }
    b
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, buf)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => {
            let Ok(m) = format::decode_backup(Path::new("BACKUP"), buf) else {
                return;
            };
            for f in &m.files {
                assert!(format::plain_file_name(&f.name), "accepted name {:?}", f.name);
                assert_eq!(f.crcs.len() as u64, f.len.div_ceil(u64::from(m.block)));
            }
            // The CRC covers the version: compare the bodies.
            let again = format::encode_backup(&m);
            let n = buf.len() - 4;
            assert_eq!(current_version(&buf[..n]), again[..again.len() - 4]);
        }
        1 => {
            let Ok(log) = format::decode_erasures(Path::new("ERASURES"), buf) else {
                return;
            };
            let mut again = format::encode_erasures_header(&log.lineage).to_vec();
            format::encode_erasure_records(&log.records, &mut again);
            assert_eq!(again.len() as u64, log.valid_len);
            let valid = &buf[..log.valid_len as usize];
            // The header's CRC covers the version: compare the lineage and
            // the records.
            assert_eq!(valid[12..28], again[12..28]);
            assert_eq!(valid[32..], again[32..]);
        }
        _ => {
            let Ok((lineage, key)) = format::decode_erasure_key(Path::new("ERASURE-KEY"), buf)
            else {
                return;
            };
            let again = format::encode_erasure_key(&lineage, &key);
            assert_eq!(buf[12..60], again[12..60]);
        }
    }
});

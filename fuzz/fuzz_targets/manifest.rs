//! The manifest decoder, and opening a gallery under a decoded manifest.
//!
//! Input: a flag byte, then the file. Flags: bit 0 keep the CRC as given
//! (clear: recompute it first, so mutations reach the decoder behind it);
//! bit 1 also open the template gallery (two segments, a WAL, a head) with
//! this manifest in place of its own; bit 2 there, also identify and verify
//! without thresholds.
//!
//! Checks: no panic, no allocation driven by a count field; an accepted
//! manifest re-encodes to the same bytes (but for the version field) if it is of
//! the newest version, and an older one upgrades to a newest-version file
//! that re-encodes to itself; with bit 1, opening either fails
//! with an error or gives a gallery that searches, flushes, compacts and
//! reopens with the same contents.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use visage_engine::Engine;
use visage_engine::format;
use visage_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let Some((flags, buf)) = file_input(data, fix_manifest_crc) else {
        return;
    };
    let Ok(m) = format::decode_manifest(Path::new("MANIFEST"), &buf) else {
        return;
    };
    assert_reencodes_or_upgrades(
        &buf,
        &format::encode_manifest(&m),
        fix_manifest_crc,
        |b| {
            format::decode_manifest(Path::new("MANIFEST"), b)
                .ok()
                .map(|x| format::encode_manifest(&x))
        },
        || format!("manifest {m:?}"),
    );
    if flags & 2 == 0 {
        return;
    }
    let t = template();
    let mut files = t.files.clone();
    files.insert("MANIFEST".into(), buf);
    let root = write_gallery("manifest", &files);
    let Ok(engine) = Engine::open(&root, engine_options()) else {
        return;
    };
    let ids: Vec<u64> = t.embeddings.keys().copied().collect();
    maintain_and_reopen(
        engine,
        &root,
        &ids,
        Checks {
            calibrate: flags & 4 != 0,
            tiled_is_exact: true,
        },
    );
});

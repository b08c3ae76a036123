//! The head file decoder, and a gallery scoring with a decoded head.
//!
//! Input: a flag byte, then the file. Flags: bit 0 keep the CRC as given
//! (clear: recompute it first, so mutations reach the decoder behind it);
//! bit 1 also open the template gallery with this head file in place of its
//! own and search, identify and verify with it; bit 2 also without thresholds.
//!
//! Checks: no panic; an accepted head re-encodes to the same bytes (but for
//! the version field); with bit 1, the gallery opens and every probability it
//! reports is in [0, 1].
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use visage_engine::Engine;
use visage_engine::format;
use visage_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let Some((flags, buf)) = file_input(data, fix_head_crc) else {
        return;
    };
    let Ok(h) = format::decode_head(Path::new("HEAD"), &buf) else {
        return;
    };
    assert_reencodes_or_upgrades(
        &buf,
        &format::encode_head(&h),
        fix_head_crc,
        |b| {
            format::decode_head(Path::new("HEAD"), b)
                .ok()
                .map(|x| format::encode_head(&x))
        },
        || format!("head {h:?}"),
    );
    if flags & 2 == 0 {
        return;
    }
    let t = template();
    let mut files = t.files.clone();
    files.insert("HEAD".into(), buf);
    let root = write_gallery("head", &files);
    let opened = Engine::open(&root, engine_options());
    if h.weights.len() != visage_engine::DIM {
        // The template's gallery has 128 values a vector: a head of another
        // dimension is refused, naming the mismatch.
        let err = opened.expect_err("a gallery opened with a head of another dimension");
        assert!(err.to_string().contains("weights"), "{err}");
        return;
    }
    let engine =
        opened.unwrap_or_else(|e| panic!("a gallery refused a head file that decodes: {e}"));
    let g = engine.gallery(GALLERY).expect("the gallery is there");
    let e = t
        .embeddings
        .values()
        .next()
        .expect("the template has embeddings");
    let probes = vec![e.vector.clone(), sample_probes(1, 5, visage_engine::DIM).remove(0)];
    let checks = Checks {
        calibrate: flags & 4 != 0,
        tiled_is_exact: true,
    };
    exercise(&g, &probes, Some(e.id), Some(&e.subject), checks);
});

//! Segment files: the header decoder, opening (mapping, section bounds and
//! alignment, CRCs, every stored index), the accessors, and the scans over them.
//!
//! Input: a flag byte, then the file. Flags: bit 0 keep the CRCs as given
//! (clear: recompute the section and header CRCs first); bit 1 verify every
//! section (`VerifyChecksums::Full`) instead of the metadata only; bit 2 also
//! open a gallery whose only segment is this file; bit 3 there, also identify
//! and verify without thresholds (which calibrates them on the segment's rows).
//!
//! Checks: no panic, no unbounded allocation; an accepted header re-encodes to
//! the same 512 bytes; a segment opens only if its header decodes; every row
//! is readable. With bit 2: the gallery opens, answers exact, 8-bit, tiled,
//! head-ranked searches, identification and verification, flushes, compacts
//! (rewriting the segment), and reopens with the same contents.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use visage_engine::format::{self, ManifestData, ManifestSegment, SegmentHeader};
use visage_engine::{Engine, VerifyChecksums, fuzzing};
use visage_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let Some((flags, buf)) = file_input(data, fix_segment_crcs) else {
        return;
    };
    let verify = if flags & 2 != 0 {
        VerifyChecksums::Full
    } else {
        VerifyChecksums::Metadata
    };
    let header = SegmentHeader::decode(Path::new("seg"), &buf, buf.len() as u64);
    if let Ok(h) = &header {
        assert!(
            h.encode()[..] == buf[..format::SEGMENT_HEADER_LEN],
            "an accepted segment header re-encodes differently"
        );
    }
    let file_no = header.as_ref().map_or(2, |h| h.file_no);
    let root = fresh_dir("segment");
    let dir = root.join("galleries").join(GALLERY);
    std::fs::create_dir_all(&dir).expect("create the gallery directory");
    let path = dir.join(segment_name(file_no));
    std::fs::write(&path, &buf).expect("write the segment");
    let Ok(contents) = fuzzing::open_segment(&path, file_no, verify) else {
        return;
    };
    let h = header.expect("a segment opened although its header does not decode");
    assert_eq!(contents.rows.len() as u64, h.rows);
    assert_eq!(contents.subjects as u64, h.subjects);

    if flags & 4 == 0 || file_no >= 1 << 32 {
        return;
    }
    let manifest = ManifestData {
        generation: 1,
        next_file_no: file_no + 2,
        wal_start: file_no + 1,
        segments: vec![ManifestSegment {
            file_no,
            rows: h.rows,
            deleted: vec![],
        }],
        subjects: None,
        spec: visage_engine::GallerySpec::with_dim(h.dim as usize),
        highest_id: 0,
        applied_seq: 0,
    };
    std::fs::write(dir.join("MANIFEST"), format::encode_manifest(&manifest)).expect("write");
    std::fs::write(
        dir.join(wal_name(file_no + 1)),
        format::encode_wal_header(7, file_no + 1, h.dim),
    )
    .expect("write");
    let mut opts = engine_options();
    opts.gallery.verify = verify;
    let engine = Engine::open(&root, opts)
        .unwrap_or_else(|e| panic!("a gallery refused a segment that opens alone: {e}"));
    let mut ids: Vec<u64> = contents.rows.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    maintain_and_reopen(
        engine,
        &root,
        &ids,
        Checks {
            calibrate: flags & 8 != 0,
            tiled_is_exact: verify == VerifyChecksums::Full,
        },
    );
});

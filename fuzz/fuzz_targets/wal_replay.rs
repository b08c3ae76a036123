//! The recovery scan of a whole WAL file, and recovery of a gallery from it.
//!
//! Input: a flag byte, then the file. Flags: bit 0 keep the CRCs as given
//! (clear: recompute the header and record CRCs first); bit 1 treat the file
//! as sealed (not the newest); bit 2 expect another file number than the
//! header's; bit 3 also recover a gallery whose only WAL is this file; bit 4
//! there, also identify and verify without thresholds (which calibrates them
//! on the recovered gallery).
//!
//! Checks: no panic and no unbounded allocation; an accepted file re-encodes
//! (header, then each decoded record framed with the file's salt) to exactly
//! its valid prefix; a sealed file is accepted only whole; the valid prefix
//! replays the same as a sealed file. With bit 3: the gallery opens, holds
//! exactly what the records say (upserts and deletes in order), answers
//! searches, flushes, compacts, and reopens with the same contents.
#![no_main]

use libfuzzer_sys::fuzz_target;
use visage_engine::format::{self, ManifestData};
use visage_engine::{Engine, fuzzing};
use visage_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let Some((flags, buf)) = file_input(data, fix_wal_crcs) else {
        return;
    };
    let is_last = flags & 2 == 0;
    let header_no = buf
        .get(16..24)
        .map_or(1, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    let file_no = if flags & 4 != 0 {
        header_no.wrapping_add(1)
    } else {
        header_no
    };
    let Ok(r) = fuzzing::replay_wal(&buf, file_no, is_last) else {
        return;
    };
    assert_eq!(r.file_len, buf.len() as u64);
    assert!(r.valid_len <= r.file_len);
    if !is_last {
        assert_eq!(
            r.valid_len, r.file_len,
            "a sealed file was accepted with a torn tail"
        );
    }
    let valid = r.valid_len as usize;
    let mut payloads = Vec::new();
    if valid == 0 {
        assert!(r.ops.is_empty());
    } else {
        let mut re = buf[..format::WAL_HEADER_LEN].to_vec();
        for op in &r.ops {
            let p = encode_op(op);
            format::frame_record(r.salt, &p, &mut re);
            payloads.push(p);
        }
        assert!(
            re == buf[..valid],
            "the accepted records do not re-encode to the valid prefix"
        );
        let again = fuzzing::replay_wal(&buf[..valid], file_no, false)
            .unwrap_or_else(|e| panic!("the valid prefix does not replay as a sealed file: {e}"));
        assert_eq!(again.valid_len, r.valid_len);
        assert!(again.ops.iter().map(encode_op).eq(payloads.iter().cloned()));
    }

    if flags & 8 == 0 || !is_last || file_no > 1 << 32 {
        return;
    }
    let mut model = State::new();
    apply_ops(&mut model, &r.ops);
    let mut ids: Vec<u64> = r
        .ops
        .iter()
        .flat_map(|op| {
            let op = match op {
                format::WalOp::At { op, .. } => op,
                op => op,
            };
            match op {
                format::WalOp::Insert(items) => items.iter().map(|e| e.id).collect::<Vec<_>>(),
                format::WalOp::Delete(ids) => ids.clone(),
                format::WalOp::At { .. } => unreachable!("no log position inside another"),
            }
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    // The gallery's dimension is the one the WAL's header states.
    let dim = format::decode_wal_header(std::path::Path::new("wal"), &buf)
        .map_or(visage_engine::DIM, |(_, _, d)| d as usize);
    let manifest = ManifestData {
        generation: 1,
        next_file_no: file_no + 1,
        wal_start: file_no,
        segments: vec![],
        subjects: Some(0),
        spec: visage_engine::GallerySpec::with_dim(dim),
        highest_id: 0,
        applied_seq: 0,
    };
    let mut files = Files::new();
    files.insert("MANIFEST".into(), format::encode_manifest(&manifest));
    files.insert(wal_name(file_no), buf);
    let root = write_gallery("wal", &files);
    let engine = Engine::open(&root, engine_options())
        .unwrap_or_else(|e| panic!("recovery refused a WAL its scan accepts: {e}"));
    let g = engine.gallery(GALLERY).expect("the gallery is there");
    assert_eq!(
        state(&g, &ids),
        model,
        "recovery does not hold what the records say"
    );
    assert_eq!(g.stats().live as usize, model.len(), "live count");
    drop(g);
    maintain_and_reopen(
        engine,
        &root,
        &ids,
        Checks {
            calibrate: flags & 16 != 0,
            tiled_is_exact: true,
        },
    );
});

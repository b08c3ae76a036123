//! What fuzzing found (`fuzz/regress/` keeps the inputs), as plain tests that
//! each failed before its fix; with them, the cases of the same kind found
//! while fixing those (marked "same kind").
//!
//! - A WAL record passes its CRC but holds what the write path never writes:
//!   a NaN (found by `wal_replay`; the gallery then served a NaN vector), and
//!   of the same kind an empty or control-character subject (the next flush
//!   wrote a segment that could not be opened) or one id twice (two live rows
//!   for one id). Now `Error::Corruption`.
//! - A segment whose sections pass their CRCs but disagree with each other: an
//!   id that is not the one its sorted index says (compaction then changed the
//!   gallery's contents: `segment` target with CRCs recomputed), and of the same
//!   kind a posting list holding another subject's row, a stored norm that is
//!   not its vector's (the tiled scan trusts it). A stored subject with a control
//!   character (found by `segment`: it could not be deleted or verified by
//!   name). Now refused at open (norms and finite values with
//!   `VerifyChecksums::Full`, the mode that reads the vectors).
//! - A manifest whose file counter is far ahead (flush then tried to remove
//!   every WAL number up to it, for ever) or at `u64::MAX` (overflow), or whose
//!   generation is at `u64::MAX` (overflow): found by `manifest`.
//! - `max_pairs` of 241 million in TrainHead: 120 GB of features (found by
//!   `requests`).
//!
//! Files are edited as `engine/src/storage/format/` documents them (section table at byte 48,
//! 24 bytes a slot; CRCs recomputed), independently of the engine's code.

use crate::support::{Model, check_search, files_like, gallery_dir, last_wal, opts};
use std::path::{Path, PathBuf};
use visage_engine::format::{self, encode_insert, frame_record};
use visage_engine::{DIM, Embedding, Engine, EngineOptions, Error, VerifyChecksums};
use visage_tests::{Rng, embedding};

const G: &str = "g";

/// A gallery holding `rows` (flushed to a segment when `flush`); returns its data directory.
fn gallery_with(rows: &[Embedding], flush: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), opts(false, 1 << 17)).unwrap();
    let g = e.create_gallery(G).unwrap();
    if !rows.is_empty() {
        g.insert(rows).unwrap();
    }
    if flush {
        g.flush().unwrap();
    }
    dir
}

/// Append one record with `payload` to the gallery's last WAL, framed with the file's salt.
fn append_record(root: &Path, payload: &[u8]) {
    let wal = last_wal(&gallery_dir(root, G));
    let mut bytes = std::fs::read(&wal).unwrap();
    let salt = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
    frame_record(salt, payload, &mut bytes);
    std::fs::write(&wal, bytes).unwrap();
}

fn insert_payload(items: &[(u64, &str, [f32; DIM])]) -> Vec<u8> {
    let mut p = Vec::new();
    encode_insert(items.iter().map(|(id, s, v)| (*id, *s, &v[..])), &mut p);
    p
}

#[track_caller]
fn assert_corrupt(root: &Path, o: EngineOptions, what: &str) {
    match Engine::open(root, o) {
        Err(Error::Corruption { reason, .. }) => {
            assert!(reason.contains(what), "{reason:?} does not say {what:?}");
        }
        Err(e) => panic!("expected a corruption error about {what:?}, got {e}"),
        Ok(_) => panic!("opened a gallery with {what:?}"),
    }
}

#[test]
fn wal_record_with_a_non_finite_value_is_corruption() {
    let dir = gallery_with(&[], false);
    let mut v = [0.25f32; DIM];
    v[8] = f32::NAN;
    append_record(dir.path(), &insert_payload(&[(1, "ada", v)]));
    assert_corrupt(dir.path(), opts(false, 1 << 17), "value 8 is NaN");
    let mut v = [0.25f32; DIM];
    v[0] = f32::INFINITY;
    let dir = gallery_with(&[], false);
    append_record(dir.path(), &insert_payload(&[(1, "ada", v)]));
    assert_corrupt(dir.path(), opts(false, 1 << 17), "value 0 is inf");
}

#[test]
fn wal_record_with_an_empty_or_control_character_subject_is_corruption() {
    for (subject, why) in [("", "is empty"), ("a\nb", "control character")] {
        let dir = gallery_with(&[], false);
        append_record(dir.path(), &insert_payload(&[(1, subject, [0.5; DIM])]));
        assert_corrupt(dir.path(), opts(false, 1 << 17), why);
    }
}

#[test]
fn wal_record_holding_an_id_twice_is_corruption() {
    let dir = gallery_with(&[], false);
    let payload = insert_payload(&[(7, "ada", [0.5; DIM]), (7, "bob", [0.25; DIM])]);
    append_record(dir.path(), &payload);
    assert_corrupt(dir.path(), opts(false, 1 << 17), "id 7 twice");
}

/// The gallery's only segment.
fn only_segment(root: &Path) -> PathBuf {
    let segs = files_like(&gallery_dir(root, G), "seg-", ".vseg");
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs[0].clone()
}

/// (offset, length) of section `slot`, from the header's table.
fn section(seg: &[u8], slot: usize) -> (usize, usize) {
    let at = 48 + 24 * slot;
    let off = u64::from_le_bytes(seg[at..at + 8].try_into().unwrap()) as usize;
    let len = u64::from_le_bytes(seg[at + 8..at + 16].try_into().unwrap()) as usize;
    (off, len)
}

/// CRC-32 (IEEE, reflected), bit by bit: the checksum `storage/format/mod.rs` documents.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Edit section `slot` of the gallery's segment and recompute its CRC and the header's.
fn edit_section(root: &Path, slot: usize, f: impl FnOnce(&mut [u8])) {
    let path = only_segment(root);
    let mut seg = std::fs::read(&path).unwrap();
    let (off, len) = section(&seg, slot);
    f(&mut seg[off..off + len]);
    let crc = crc32(&seg[off..off + len]);
    let at = 48 + 24 * slot + 16;
    seg[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32(&seg[..508]);
    seg[508..512].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, seg).unwrap();
}

fn rows(n: u64) -> Vec<Embedding> {
    let mut rng = Rng(0xF022);
    (0..n)
        .map(|i| embedding(&mut rng, 10 + i, ["ada", "bob", "cy"][i as usize % 3]))
        .collect()
}

fn full() -> EngineOptions {
    let mut o = opts(false, 1 << 17);
    o.gallery.verify = VerifyChecksums::Full;
    o
}

#[test]
fn segment_ids_that_disagree_with_the_sorted_index_are_refused() {
    let dir = gallery_with(&rows(6), true);
    // Row 0's id 10 becomes 11: the sorted index still says 10 is at row 0,
    // and 11 now appears twice. Before the fix the segment opened; compaction
    // then wrote a segment holding id 11 twice, which could not be opened.
    edit_section(dir.path(), 1, |ids| ids[0] = 11);
    assert_corrupt(dir.path(), opts(false, 1 << 17), "holds another id");
}

#[test]
fn segment_posting_lists_that_disagree_with_the_rows_are_refused() {
    let dir = gallery_with(&rows(6), true);
    // Row 0 (of "ada", ordinal 0) is relabelled "bob" (ordinal 1) in the ordinals,
    // while the posting lists still file it under "ada": delete-by-subject
    // would then remove rows the searches attribute to another subject.
    edit_section(dir.path(), 2, |ords| ords[0] = 1);
    assert_corrupt(dir.path(), opts(false, 1 << 17), "of another subject");
}

#[test]
fn segment_norms_that_disagree_with_the_vectors_are_refused_by_full_verification() {
    let dir = gallery_with(&rows(40), true);
    edit_section(dir.path(), 3, |norms| norms[4 * 5 + 3] ^= 0x40);
    // Metadata verification does not read the vectors (its documented trade-off)…
    drop(Engine::open(dir.path(), opts(false, 1 << 17)).unwrap());
    // … full verification does, and now checks the norms the tiled scan relies on.
    assert_corrupt(dir.path(), full(), "row 5 has norm");
}

#[test]
fn segment_codes_that_disagree_with_the_vectors_are_refused_by_full_verification() {
    let dir = gallery_with(&rows(40), true);
    // Row 7's code of value 9 moves by one step: the screened exact scan's
    // bound (each code within half a step of its value) no longer holds.
    edit_section(dir.path(), 11, |codes| {
        let at = 7 * DIM + 9;
        codes[at] = if codes[at] == 0 { 1 } else { codes[at] - 1 };
    });
    drop(Engine::open(dir.path(), opts(false, 1 << 17)).unwrap());
    assert_corrupt(dir.path(), full(), "row 7 value 9 is coded");
}

#[test]
fn rows_of_a_trusted_segment_with_nan_values_are_never_returned_by_any_scan() {
    // Found by fuzzing: a segment opened with metadata verification (which does
    // not read the vectors) may hold NaN values. The direct scan never offers
    // such a row; the 8-bit codes gave it a finite estimate, so the screened and
    // batch scans re-ranked it and returned it with a NaN distance (first, for a
    // NaN with the sign bit set), and the two disagreed.
    let all = rows(40);
    let dir = gallery_with(&all, true);
    edit_section(dir.path(), 0, |vectors| {
        for (row, bits) in [(5usize, 0xFFFF_E000u32), (17, 0x7FC0_0000)] {
            let at = (row * DIM + 3) * 4;
            vectors[at..at + 4].copy_from_slice(&bits.to_le_bytes());
        }
    });
    let engine = Engine::open(dir.path(), opts(false, 1 << 17)).unwrap();
    let g = engine.gallery(G).unwrap();
    let model: Model = all
        .iter()
        .filter(|e| e.id != 15 && e.id != 27)
        .map(|e| (e.id, e.clone()))
        .collect();
    let probes: Vec<Vec<f32>> = all.iter().step_by(3).map(|e| e.vector.clone()).collect();
    for k in [1usize, 5, 38, 40] {
        let batch = g.search(&probes, k).unwrap();
        for (i, p) in probes.iter().enumerate() {
            let single = g.search(std::slice::from_ref(p), k).unwrap();
            assert_eq!(
                single[0], batch[i],
                "k {k} probe {i}: one probe and a batch differ"
            );
            check_search(&single[0], &model, p, k, false, &format!("k {k} probe {i}"));
        }
    }
}

#[test]
fn segments_the_engine_writes_pass_the_new_checks() {
    // The checks must not refuse what the engine itself writes: a segment of
    // many subjects and ids in no order opens in both modes.
    let mut rng = Rng(5);
    let many: Vec<Embedding> = (0..200u64)
        .map(|i| embedding(&mut rng, (i * 7919) % 1009, &format!("s{}", i % 17)))
        .collect();
    let dir = gallery_with(&many, true);
    for o in [opts(false, 1 << 17), full()] {
        let e = Engine::open(dir.path(), o).unwrap();
        assert_eq!(e.gallery(G).unwrap().stats().live, 200);
    }
}

/// Run `f` on another thread and fail if it takes longer than `secs` (a hang
/// must fail the test, not stall the suite).
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not finish in {secs} s"))
}

#[test]
fn flush_after_a_far_ahead_file_counter_finishes() {
    // A manifest whose next file number is far ahead of its WAL: a flush
    // created WAL 2^40 and then tried to remove every WAL number from the old
    // start up to it, one at a time.
    let dir = gallery_with(&rows(3), false);
    let mpath = gallery_dir(dir.path(), G).join("MANIFEST");
    let mut m = format::decode_manifest(&mpath, &std::fs::read(&mpath).unwrap()).unwrap();
    m.next_file_no = 1 << 40;
    std::fs::write(&mpath, format::encode_manifest(&m)).unwrap();
    let root = dir.path().to_owned();
    within(60, "flush", move || {
        let e = Engine::open(&root, opts(false, 1 << 17)).unwrap();
        let g = e.gallery(G).unwrap();
        g.flush().unwrap();
        g.insert(&rows(5)[3..]).unwrap();
        g.flush().unwrap();
        assert_eq!(g.stats().live, 5);
        drop(g);
        drop(e);
        let e = Engine::open(&root, opts(false, 1 << 17)).unwrap();
        assert_eq!(e.gallery(G).unwrap().stats().live, 5);
    });
}

#[test]
fn file_counter_at_its_maximum_is_an_error_not_an_overflow() {
    // The counter at u64::MAX: the next flush overflowed it (a panic with
    // overflow checks; silently number 0 again without).
    let dir = gallery_with(&rows(3), false);
    let mpath = gallery_dir(dir.path(), G).join("MANIFEST");
    let mut m = format::decode_manifest(&mpath, &std::fs::read(&mpath).unwrap()).unwrap();
    m.next_file_no = u64::MAX;
    std::fs::write(&mpath, format::encode_manifest(&m)).unwrap();
    let e = Engine::open(dir.path(), opts(false, 1 << 17)).unwrap();
    let g = e.gallery(G).unwrap();
    let err = g.flush().unwrap_err();
    assert!(
        matches!(&err, Error::Corruption { reason, .. } if reason.contains("no file numbers")),
        "{err}"
    );
    // Nothing was lost: the rows are still there, reads work.
    assert_eq!(g.stats().live, 3);
}

#[test]
fn generation_at_its_maximum_does_not_overflow() {
    let dir = gallery_with(&rows(3), false);
    let mpath = gallery_dir(dir.path(), G).join("MANIFEST");
    let mut m = format::decode_manifest(&mpath, &std::fs::read(&mpath).unwrap()).unwrap();
    m.generation = u64::MAX;
    std::fs::write(&mpath, format::encode_manifest(&m)).unwrap();
    let e = Engine::open(dir.path(), opts(false, 1 << 17)).unwrap();
    e.gallery(G).unwrap().flush().unwrap();
    drop(e);
    let e = Engine::open(dir.path(), opts(false, 1 << 17)).unwrap();
    assert_eq!(e.gallery(G).unwrap().stats().live, 3);
}

#[test]
fn training_refuses_more_pairs_than_the_limit() {
    // TrainHead's max_pairs is a uint32 on the wire: 241,172,479 pairs asked
    // for 120 GB of features. Now refused before anything is drawn.
    let mut rng = Rng(3);
    let many: Vec<Embedding> = (0..40u64)
        .map(|i| embedding(&mut rng, i, &format!("s{}", i % 8)))
        .collect();
    let dir = gallery_with(&many, false);
    let root = dir.path().to_owned();
    within(60, "train_head", move || {
        let e = Engine::open(&root, opts(false, 1 << 17)).unwrap();
        let g = e.gallery(G).unwrap();
        for max_pairs in [241_172_479, visage_engine::MAX_TRAIN_PAIRS + 1] {
            let err = g
                .train_head(&visage_engine::TrainOptions {
                    max_pairs,
                    ..Default::default()
                })
                .unwrap_err();
            assert!(
                matches!(
                    &err,
                    Error::OutOfRange {
                        option: "max_pairs",
                        ..
                    }
                ),
                "{err}"
            );
        }
        assert!(g.head().is_none(), "a refused training left a head");
    });
}

#[test]
fn segment_subject_the_write_path_refuses_is_refused() {
    // "ada" becomes "a\0a" (still in order): the segment opened, and its
    // subject could then be neither deleted nor verified against by name.
    let dir = gallery_with(&rows(6), true);
    edit_section(dir.path(), 7, |bytes| bytes[1] = 0);
    assert_corrupt(dir.path(), opts(false, 1 << 17), "control character");
}

#[test]
fn segment_non_finite_value_is_refused_by_full_verification() {
    let dir = gallery_with(&rows(4), true);
    edit_section(dir.path(), 0, |v| {
        v[4 * 130..4 * 131].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert_corrupt(dir.path(), full(), "row 1 value 2 is NaN");
}

//! Damaged files at gallery level: torn and corrupted WAL tails, flipped bytes
//! in segments and the manifest, and orphan files.
//!
//! - A WAL cut mid-record, or followed by garbage, is a torn tail: every whole
//!   acknowledged record is replayed, the tail is dropped and the file is
//!   truncated to the last whole record (later writes append after it).
//! - A damaged record followed by a valid one is `Error::Corruption` naming
//!   the WAL file and the record's offset; a damaged *last* record cannot be
//!   told from a torn write and is dropped like one.
//! - A flipped byte in a segment's header or metadata sections fails the open
//!   with `ChecksumMismatch` (or `Corruption`) naming the file and section.
//!   A flipped byte in the vector section is caught only with
//!   `VerifyChecksums::Full`: the default (`Metadata`) keeps open O(1) in the
//!   vector count and does not read the vectors, so it opens and serves the
//!   damaged value. This test pins that documented trade-off.
//! - A damaged manifest, or one listing a missing segment, is a clear error.
//! - Segments not in the manifest and `*.tmp` files are removed at open.
//!
//! Section offsets are read from the segment header as `storage/format/segment.rs` documents
//! it (table at byte 48, 24 bytes a slot), independently of the engine's code.

use crate::support::{Model, assert_contents, files_like, gallery_dir, last_wal, opts};
use std::path::{Path, PathBuf};
use visage_engine::{Embedding, Engine, EngineOptions, Error, VerifyChecksums};
use visage_tests::{Rng, embedding};

const G: &str = "g";

/// A gallery with one flushed segment and four WAL records after it.
struct Pristine {
    dir: tempfile::TempDir,
    /// `models[i]`: the state after WAL record `i` (0: segment only).
    models: Vec<Model>,
    /// `ends[i]`: length of the WAL after record `i` (0: its header only).
    ends: Vec<u64>,
}

fn pristine() -> Pristine {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0xC0DE);
    let mut model = Model::new();
    let mut models = Vec::new();
    let mut ends = Vec::new();
    {
        let e = Engine::open(dir.path(), opts(false, 1 << 17)).unwrap();
        let g = e.create_gallery(G).unwrap();
        let a: Vec<Embedding> = (0..30)
            .map(|i| embedding(&mut rng, i, &format!("p{}", i % 5)))
            .collect();
        g.insert(&a).unwrap();
        model.extend(a.into_iter().map(|e| (e.id, e)));
        g.flush().unwrap();
        let gdir = gallery_dir(dir.path(), G);
        let wal_len = || std::fs::metadata(last_wal(&gdir)).unwrap().len();
        models.push(model.clone());
        ends.push(wal_len());
        // Record 1: insert (one upsert of a segment row); 2: delete; 3, 4: inserts.
        let b1 = vec![
            embedding(&mut rng, 100, "p0"),
            embedding(&mut rng, 3, "moved"),
        ];
        g.insert(&b1).unwrap();
        model.extend(b1.into_iter().map(|e| (e.id, e)));
        models.push(model.clone());
        ends.push(wal_len());
        g.delete(&[4, 5, 100], &[]).unwrap();
        for id in [4, 5, 100] {
            model.remove(&id);
        }
        models.push(model.clone());
        ends.push(wal_len());
        for r in 0..2 {
            let b: Vec<Embedding> = (0..3)
                .map(|i| embedding(&mut rng, 200 + r * 10 + i, "late"))
                .collect();
            g.insert(&b).unwrap();
            model.extend(b.into_iter().map(|e| (e.id, e)));
            models.push(model.clone());
            ends.push(wal_len());
        }
    }
    assert!(ends.windows(2).all(|w| w[0] < w[1]), "{ends:?}");
    Pristine { dir, models, ends }
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let to = dst.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &to);
        } else {
            std::fs::copy(&p, &to).unwrap();
        }
    }
}

/// A copy of the pristine directory to damage.
fn scratch(p: &Pristine) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    copy_dir(p.dir.path(), d.path());
    d
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = std::fs::read(path).unwrap();
    f(&mut b);
    std::fs::write(path, b).unwrap();
}

fn all_ids() -> Vec<u64> {
    (0..300).collect()
}

fn open_ok(root: &Path, o: EngineOptions, model: &Model, ctx: &str) -> Engine {
    let e = Engine::open(root, o).unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
    assert_contents(&e.gallery(G).unwrap(), model, all_ids(), ctx);
    e
}

fn open_err(root: &Path, o: EngineOptions, ctx: &str) -> Error {
    match Engine::open(root, o) {
        Ok(_) => panic!("{ctx}: opened a damaged gallery"),
        Err(e) => {
            assert!(e.is_corruption(), "{ctx}: not reported as corruption: {e}");
            e
        }
    }
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn torn_wal_tails_are_truncated_to_the_last_whole_record() {
    let p = pristine();
    let (e3, e4) = (p.ends[3], p.ends[4]);
    // Cuts inside the last record's frame and payload, and junk after the last record.
    let cuts = [
        ("cut 1 byte into the frame", e3 + 1),
        ("cut inside the crc", e3 + 6),
        ("cut after the frame", e3 + 8),
        ("cut mid-payload", (e3 + e4) / 2),
        ("cut 1 byte short", e4 - 1),
    ];
    for (what, cut) in cuts {
        let d = scratch(&p);
        let wal = last_wal(&gallery_dir(d.path(), G));
        edit(&wal, |b| b.truncate(cut as usize));
        let e = open_ok(d.path(), opts(false, 1 << 17), &p.models[3], what);
        assert_eq!(
            std::fs::metadata(&wal).unwrap().len(),
            e3,
            "{what}: truncated"
        );
        // New writes append after the last whole record and survive a reopen.
        let mut m = p.models[3].clone();
        let late = embedding(&mut Rng(5), 299, "after-recovery");
        e.gallery(G)
            .unwrap()
            .insert(std::slice::from_ref(&late))
            .unwrap();
        m.insert(late.id, late);
        drop(e);
        open_ok(
            d.path(),
            opts(false, 1 << 17),
            &m,
            &format!("{what}, then a write"),
        );
    }
    let junk: Vec<(&str, Vec<u8>)> = vec![
        (
            "random garbage",
            (0..300).map(|i| (i * 7 + 3) as u8).collect(),
        ),
        ("zero fill", vec![0; 4096]),
        ("0xff fill", vec![0xff; 100]),
        ("a frame claiming 16 bytes and nothing after", {
            let mut v = 16u32.to_le_bytes().to_vec();
            v.extend_from_slice(&[1, 2, 3, 4]);
            v
        }),
        ("half a frame", vec![9, 0]),
    ];
    for (what, tail) in junk {
        let d = scratch(&p);
        let wal = last_wal(&gallery_dir(d.path(), G));
        edit(&wal, |b| b.extend_from_slice(&tail));
        open_ok(d.path(), opts(false, 1 << 17), &p.models[4], what);
        assert_eq!(
            std::fs::metadata(&wal).unwrap().len(),
            e4,
            "{what}: truncated"
        );
    }
}

#[test]
fn damage_before_a_valid_record_is_corruption_naming_file_and_offset() {
    let p = pristine();
    // (record, byte within it): length field, crc field, payload; in records 1 and 2.
    for (rec, at) in [
        (1usize, 0u64),
        (1, 5),
        (1, 40),
        (2, 1),
        (2, 4),
        (2, 9),
        (3, 100),
    ] {
        let d = scratch(&p);
        let wal = last_wal(&gallery_dir(d.path(), G));
        let start = p.ends[rec - 1];
        edit(&wal, |b| b[(start + at) as usize] ^= 0x20);
        let ctx = format!("record {rec} byte {at}");
        let err = open_err(d.path(), opts(false, 1 << 17), &ctx);
        match &err {
            Error::Corruption { path, offset, .. } => {
                assert_eq!(path, &wal, "{ctx}: {err}");
                assert_eq!(*offset, start, "{ctx}: offset of the damaged record: {err}");
            }
            other => panic!("{ctx}: expected Corruption, got {other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&name(&wal)) && msg.contains(&format!("offset {start}")),
            "{ctx}: the message names file and offset: {msg}"
        );
    }
}

#[test]
fn damage_in_the_last_record_is_a_torn_tail() {
    // Without a valid record after it, a damaged last record looks exactly
    // like a torn write and is dropped like one (it may never have been acknowledged).
    let p = pristine();
    let d = scratch(&p);
    let wal = last_wal(&gallery_dir(d.path(), G));
    edit(&wal, |b| b[p.ends[3] as usize + 30] ^= 1);
    open_ok(
        d.path(),
        opts(false, 1 << 17),
        &p.models[3],
        "last record damaged",
    );
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), p.ends[3]);
}

#[test]
fn damaged_wal_header_is_an_error_naming_the_file() {
    let p = pristine();
    for at in [0usize, 9, 13, 17, 30] {
        let d = scratch(&p);
        let wal = last_wal(&gallery_dir(d.path(), G));
        edit(&wal, |b| b[at] ^= 0x01);
        let err = open_err(
            d.path(),
            opts(false, 1 << 17),
            &format!("WAL header byte {at}"),
        );
        assert!(err.to_string().contains(&name(&wal)), "{err}");
    }
}

/// (offset, length) of each section slot, read from the header per `storage/format/segment.rs`.
fn sections(seg: &[u8]) -> Vec<(usize, usize)> {
    (0..10)
        .map(|i| {
            let at = 48 + 24 * i;
            let off = u64::from_le_bytes(seg[at..at + 8].try_into().unwrap()) as usize;
            let len = u64::from_le_bytes(seg[at + 8..at + 16].try_into().unwrap()) as usize;
            (off, len)
        })
        .collect()
}

const SECTION_NAMES: [&str; 10] = [
    "vectors",
    "ids",
    "subject_ords",
    "norms",
    "sorted_ids",
    "sorted_rows",
    "subject_offsets",
    "subject_bytes",
    "posting_offsets",
    "posting_rows",
];

fn only_segment(root: &Path) -> PathBuf {
    let segs = files_like(&gallery_dir(root, G), "seg-", ".vseg");
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs[0].clone()
}

fn full() -> EngineOptions {
    let mut o = opts(false, 1 << 17);
    o.gallery.verify = VerifyChecksums::Full;
    o
}

#[test]
fn flipped_segment_header_or_metadata_byte_fails_the_open() {
    let p = pristine();
    let seg_bytes = std::fs::read(only_segment(p.dir.path())).unwrap();
    let secs = sections(&seg_bytes);
    assert_eq!(secs[0].1, 30 * 512, "the vector section holds 30 rows");
    // Header bytes: version, rows, a section offset, the header CRC.
    for at in [9usize, 17, 49, 300, 509] {
        let d = scratch(&p);
        let seg = only_segment(d.path());
        edit(&seg, |b| b[at] ^= 0x04);
        for o in [opts(false, 1 << 17), full()] {
            let err = open_err(d.path(), o, &format!("header byte {at}"));
            match &err {
                Error::ChecksumMismatch { path, section, .. } => {
                    assert_eq!(path, &seg);
                    assert!(section.contains("header"), "{err}");
                }
                other => panic!("header byte {at}: expected ChecksumMismatch, got {other}"),
            }
            assert!(err.to_string().contains(&name(&seg)), "{err}");
        }
    }
    // The magic number: not a segment at all.
    let d = scratch(&p);
    let seg = only_segment(d.path());
    edit(&seg, |b| b[1] = b'X');
    let err = open_err(d.path(), opts(false, 1 << 17), "magic");
    assert!(
        matches!(&err, Error::Corruption { path, offset: 0, .. } if path == &seg),
        "{err}"
    );
    // One byte in the middle of each metadata section.
    for (slot, &(off, len)) in secs.iter().enumerate().skip(1) {
        assert!(len > 0, "section {slot} is empty");
        let d = scratch(&p);
        let seg = only_segment(d.path());
        edit(&seg, |b| b[off + len / 2] ^= 0x10);
        for o in [opts(false, 1 << 17), full()] {
            let err = open_err(d.path(), o, SECTION_NAMES[slot]);
            match &err {
                Error::ChecksumMismatch { path, section, .. } => {
                    assert_eq!(path, &seg);
                    assert!(section.contains(SECTION_NAMES[slot]), "{err}");
                }
                other => panic!(
                    "{}: expected ChecksumMismatch, got {other}",
                    SECTION_NAMES[slot]
                ),
            }
        }
    }
}

#[test]
fn flipped_vector_byte_is_caught_by_full_verification_only() {
    let p = pristine();
    let d = scratch(&p);
    let seg = only_segment(d.path());
    let (off, _) = sections(&std::fs::read(&seg).unwrap())[0];
    // Row 7, value 3: byte 3 of the f32 (sign and high exponent bits).
    edit(&seg, |b| b[off + 7 * 512 + 3 * 4 + 3] ^= 0x80);
    let err = open_err(d.path(), full(), "vector byte, Full");
    match &err {
        Error::ChecksumMismatch { path, section, .. } => {
            assert_eq!(path, &seg);
            assert!(section.contains("vectors"), "{err}");
        }
        other => panic!("expected ChecksumMismatch, got {other}"),
    }
    // Documented trade-off: Metadata verification (the default) does not read
    // the vectors, so the gallery opens and serves the damaged value.
    let e = Engine::open(d.path(), opts(false, 1 << 17)).unwrap();
    let g = e.gallery(G).unwrap();
    let want = &p.models[4][&7];
    let got = &g.get(&[7])[0];
    assert_eq!(got.vector[3], -want.vector[3]);
    assert_eq!(got.vector[..3], want.vector[..3]);
    assert_eq!(got.vector[4..], want.vector[4..]);
}

#[test]
fn damaged_or_inconsistent_manifest_is_a_clear_error() {
    let p = pristine();
    let manifest = |root: &Path| gallery_dir(root, G).join("MANIFEST");
    let len = std::fs::metadata(manifest(p.dir.path())).unwrap().len() as usize;
    for at in [0, 8, 16, 24, 40, len / 2, len - 1] {
        let d = scratch(&p);
        edit(&manifest(d.path()), |b| b[at] ^= 0x02);
        let err = open_err(
            d.path(),
            opts(false, 1 << 17),
            &format!("manifest byte {at}"),
        );
        assert!(
            err.to_string().contains("MANIFEST"),
            "byte {at}: names the manifest: {err}"
        );
    }
    for keep in [0, 10, len - 1] {
        let d = scratch(&p);
        edit(&manifest(d.path()), |b| b.truncate(keep));
        let err = open_err(
            d.path(),
            opts(false, 1 << 17),
            &format!("manifest cut to {keep}"),
        );
        assert!(err.to_string().contains("MANIFEST"), "{err}");
    }
    // A manifest whose checksum is right but whose subject count disagrees
    // with its segments' rows (a manifest written wrong): refused, naming both.
    let d = scratch(&p);
    let path = manifest(d.path());
    let mut m = visage_engine::format::decode_manifest(&path, &std::fs::read(&path).unwrap())
        .expect("the pristine manifest decodes");
    let counted = m.subjects.expect("a version-4 manifest counts subjects");
    assert!(counted > 0);
    for wrong in [0, counted - 1, counted + 1] {
        m.subjects = Some(wrong);
        std::fs::write(&path, visage_engine::format::encode_manifest(&m)).unwrap();
        let err = open_err(d.path(), opts(false, 1 << 17), &format!("{wrong} subjects"));
        assert!(
            matches!(err, Error::Corruption { .. })
                && err.to_string().contains("MANIFEST")
                && err
                    .to_string()
                    .contains(&format!("counts {wrong} subjects with a live row"))
                && err.to_string().contains(&format!("rows hold {counted}")),
            "{err}"
        );
    }
    m.subjects = Some(counted);
    std::fs::write(&path, visage_engine::format::encode_manifest(&m)).unwrap();
    drop(open_ok(
        d.path(),
        opts(false, 1 << 17),
        p.models.last().unwrap(),
        "the right count",
    ));
    // A segment the manifest lists is missing.
    let d = scratch(&p);
    let seg = only_segment(d.path());
    std::fs::remove_file(&seg).unwrap();
    let err = open_err(d.path(), opts(false, 1 << 17), "missing segment");
    assert!(err.to_string().contains(&name(&seg)), "{err}");
}

#[test]
fn orphan_segments_and_temporary_files_are_removed_at_open() {
    let p = pristine();
    let d = scratch(&p);
    let gdir = gallery_dir(d.path(), G);
    let real = only_segment(d.path());
    let orphans = [
        gdir.join("seg-00000000000000ff.vseg"),
        gdir.join("seg-0000000000000100.vseg"),
        gdir.join("seg-ffffffffffffffff.vseg"),
        gdir.join("MANIFEST.tmp"),
        gdir.join("leftover.tmp"),
    ];
    std::fs::write(&orphans[0], b"half-written segment").unwrap();
    std::fs::copy(&real, &orphans[1]).unwrap();
    std::fs::write(&orphans[2], b"").unwrap();
    std::fs::write(&orphans[3], b"new manifest never renamed").unwrap();
    std::fs::write(&orphans[4], [0u8; 10]).unwrap();
    {
        let e = open_ok(d.path(), opts(false, 1 << 17), &p.models[4], "orphans");
        for o in &orphans {
            assert!(!o.exists(), "{} survived the open", o.display());
        }
        assert!(real.exists());
        // The gallery keeps working: flush and compact write new files.
        let g = e.gallery(G).unwrap();
        g.flush().unwrap();
        g.compact().unwrap();
    }
    open_ok(
        d.path(),
        opts(false, 1 << 17),
        &p.models[4],
        "reopen after orphans",
    );
}

#[test]
fn interrupted_gallery_creations_and_drops_are_cleaned_up_at_open() {
    let p = pristine();
    let d = scratch(&p);
    let galleries = d.path().join("galleries");
    // A creation that crashed before its manifest, and a drop that crashed after the rename.
    std::fs::create_dir(galleries.join("half-created")).unwrap();
    std::fs::write(
        galleries
            .join("half-created")
            .join("wal-0000000000000001.log"),
        b"",
    )
    .unwrap();
    copy_dir(&galleries.join(G), &galleries.join("gone.dropping"));
    // Neither a gallery nor ours to delete.
    std::fs::create_dir(galleries.join("not a gallery")).unwrap();
    std::fs::write(galleries.join("stray-file"), b"x").unwrap();
    let e = open_ok(d.path(), opts(false, 1 << 17), &p.models[4], "leftovers");
    assert_eq!(e.list_galleries(), vec![G.to_string()]);
    assert!(!galleries.join("half-created").exists());
    assert!(!galleries.join("gone.dropping").exists());
    assert!(galleries.join("not a gallery").exists());
    // The name of the half-created gallery is free again.
    e.create_gallery("half-created").unwrap();
}

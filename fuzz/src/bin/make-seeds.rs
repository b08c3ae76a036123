//! Writes the seed corpora of the fuzz targets, `fuzz/seeds/TARGET/`, from
//! real files: the template gallery the engine makes (segments, WAL, manifest,
//! head), the version-1 fixture of `tests/fixtures/format-v1`, and encoded
//! requests of every message type.
//!
//! Run from the repository root after a format change:
//! `cargo run --manifest-path fuzz/Cargo.toml --bin make-seeds`
//! Seeds are named by content, so running it again adds no duplicates.

use prost::Message;
use std::path::{Path, PathBuf};
use visage_engine::{DIM, Engine};
use visage_engine::format::{self, ManifestData, ManifestSegment};
use visage_fuzz::*;
use visage_proto::v1 as pb;

/// Write one seed. For the file targets, a seed with flags 0 (CRCs recomputed
/// by the harness) is also written with flag bit 0 set (CRCs kept as they
/// are), so the CRC checks themselves are fuzzed from real files too.
fn seed(target: &str, flags: Option<u8>, bytes: &[u8]) {
    let file_target = ["segment", "wal_replay", "manifest", "head"].contains(&target);
    if file_target && flags == Some(0) {
        write_seed(target, Some(1), bytes);
    }
    write_seed(target, flags, bytes);
}

fn write_seed(target: &str, flags: Option<u8>, bytes: &[u8]) {
    let dir = PathBuf::from("fuzz/seeds").join(target);
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    let mut data = Vec::with_capacity(bytes.len() + 1);
    data.extend(flags);
    data.extend_from_slice(bytes);
    let name = format!("{:08x}-{}", crc32fast::hash(&data), data.len());
    std::fs::write(dir.join(name), &data).expect("write a seed");
}

fn vector(seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
    (0..DIM).map(|_| r.unit()).collect()
}

/// Rows packed as the wire's `Matrix`.
fn packed(rows: &[Vec<f32>]) -> pb::Matrix {
    pb::Matrix {
        rows: rows.len() as u32,
        dim: rows.first().map_or(0, Vec::len) as u32,
        f32_le: rows.iter().flatten().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn main() {
    assert!(
        Path::new("fuzz/Cargo.toml").exists(),
        "run from the repository root"
    );
    let t = template();
    let by_prefix = |p: &str| -> Vec<(&String, &Vec<u8>)> {
        t.files.iter().filter(|(n, _)| n.starts_with(p)).collect()
    };
    let v1_dir = Path::new("tests/fixtures/format-v1/galleries/fixture");
    let v1 = |name: &str| std::fs::read(v1_dir.join(name)).expect("read the v1 fixture");

    // Segments: the template's (version 2) and the version-1 fixture's; alone,
    // verified fully, and in a gallery.
    for (_, bytes) in by_prefix("seg-") {
        for flags in [0, 2, 4] {
            seed("segment", Some(flags), bytes);
        }
    }
    let v1_seg = v1("seg-0000000000000003.vseg");
    seed("segment", Some(0), &v1_seg);
    seed("segment", Some(4), &v1_seg);
    // A version-5 segment with exceptions: 200 rows, three with a value far
    // outside the others (the template's segments are too small to have any).
    let mut rows = sample_embeddings(200, 20, 11);
    for (r, v) in [(5usize, 50.0f32), (77, -1000.0), (150, 1e6)] {
        let at = r % rows[r].vector.len();
        rows[r].vector[at] = v;
    }
    let root = fresh_dir("seeds-exceptions");
    {
        let engine = Engine::open(&root, engine_options()).expect("open");
        let g = engine.create_gallery(GALLERY).expect("create");
        g.insert(&rows).expect("insert");
        g.flush().expect("flush");
        assert_eq!(g.stats().exception_rows, 3, "the outliers are exceptions");
    }
    let gdir = root.join("galleries").join(GALLERY);
    for e in std::fs::read_dir(&gdir).expect("list") {
        let p = e.expect("list").path();
        if p.extension().is_some_and(|x| x == "vseg") {
            let bytes = std::fs::read(&p).expect("read");
            for flags in [0, 2, 4] {
                seed("segment", Some(flags), &bytes);
            }
        }
    }

    // WAL files: the template's (inserts and a delete), the fixture's, a torn tail.
    for (_, bytes) in by_prefix("wal-") {
        seed("wal_replay", Some(0), bytes);
        seed("wal_replay", Some(8), bytes);
        seed("wal_replay", Some(2), bytes);
        if bytes.len() > format::WAL_HEADER_LEN + 100 {
            seed("wal_replay", Some(8), &bytes[..bytes.len() - 100]);
        }
        // Records alone for the record target: salt, then the frames.
        let salt = &bytes[12..16];
        let mut framed = salt.to_vec();
        framed.extend_from_slice(&bytes[format::WAL_HEADER_LEN..]);
        seed("wal_record", Some(0), &framed);
    }
    seed("wal_replay", Some(8), &v1("wal-0000000000000002.log"));
    let v = [vector(1), vector(2)];
    let mut insert = Vec::new();
    format::encode_insert(
        [(1u64, "ada", &v[0][..]), (2, "émile", &v[1][..])].into_iter(),
        &mut insert,
    );
    let mut delete = Vec::new();
    format::encode_delete(&[1, 5, 9], &mut delete);
    // Format 7: the same batches applied from a log at a sequence.
    let mut insert_at = Vec::new();
    format::encode_at(41, &mut insert_at);
    insert_at.extend_from_slice(&insert);
    let mut delete_at = Vec::new();
    format::encode_at(42, &mut delete_at);
    delete_at.extend_from_slice(&delete);
    for p in [&insert, &delete, &insert_at, &delete_at] {
        // `decode_op` on the whole input: no flag byte.
        std::fs::create_dir_all("fuzz/seeds/wal_record").expect("create");
        std::fs::write(
            format!("fuzz/seeds/wal_record/payload-{:08x}", crc32fast::hash(p)),
            p,
        )
        .expect("write");
    }
    let mut wal = format::encode_wal_header(0x5a17, 9, DIM as u32).to_vec();
    format::frame_record(0x5a17, &insert, &mut wal);
    format::frame_record(0x5a17, &delete, &mut wal);
    seed("wal_replay", Some(8), &wal);
    let mut wal = format::encode_wal_header(0x5a17, 9, DIM as u32).to_vec();
    format::frame_record(0x5a17, &insert_at, &mut wal);
    format::frame_record(0x5a17, &delete_at, &mut wal);
    seed("wal_replay", Some(8), &wal);
    // A WAL of a 512-value gallery (format 4 records the dimension in its header).
    let wide: Vec<f32> = (0..512).map(|i| (i as f32 / 512.0).sin()).collect();
    let mut insert512 = Vec::new();
    format::encode_insert([(7u64, "wide", &wide[..])].into_iter(), &mut insert512);
    let mut wal = format::encode_wal_header(0x5a17, 9, 512).to_vec();
    format::frame_record(0x5a17, &insert512, &mut wal);
    format::frame_record(0x5a17, &delete, &mut wal);
    seed("wal_replay", Some(8), &wal);
    let mut wal = format::encode_wal_header(0x5a17, 9, DIM as u32).to_vec();
    format::frame_record(0x5a17, &insert_at, &mut wal);
    format::frame_record(0x5a17, &delete_at, &mut wal);
    seed("wal_replay", Some(8), &wal);

    // Manifests: the template's (two segments, tombstones), the fixture's, one with more tombstones.
    let manifest = &t.files["MANIFEST"];
    seed("manifest", Some(0), manifest);
    seed("manifest", Some(2), manifest);
    seed("manifest", Some(0), &v1("MANIFEST"));
    let mut m = format::decode_manifest(Path::new("MANIFEST"), manifest).expect("decode");
    for s in &mut m.segments {
        s.deleted = (0..s.rows as u32).step_by(3).collect();
    }
    seed("manifest", Some(2), &format::encode_manifest(&m));
    let empty = ManifestData {
        generation: 1,
        next_file_no: 2,
        wal_start: 1,
        segments: vec![ManifestSegment {
            file_no: 4,
            rows: 3,
            deleted: vec![0, 2],
        }],
        ..ManifestData::default()
    };
    seed("manifest", Some(0), &format::encode_manifest(&empty));
    // A cosine gallery of 512 values with its model pinned.
    let spec = visage_engine::GallerySpec {
        dim: 512,
        model: "arcface-r100@insightface-0.7.3".into(),
        normalize: true,
    };
    seed(
        "manifest",
        Some(0),
        &format::encode_manifest(&ManifestData { spec, ..empty }),
    );

    // The head file: trained, as the template trains it.
    seed("head", Some(0), &t.files["HEAD"]);
    seed("head", Some(2), &t.files["HEAD"]);
    // A head of 512 weights (a 512-value gallery's; the template's gallery refuses it).
    let mut wide = format::decode_head(Path::new("HEAD"), &t.files["HEAD"]).expect("decode");
    wide.weights = (0..512).map(|i| ((i % 7) as f32 - 3.0) / 10.0).collect();
    seed("head", Some(2), &format::encode_head(&wide));

    // Backups and erasures: a backup manifest as a backup writes it, an
    // erasure log with records of both kinds, an erasure key.
    let bm = format::BackupManifest {
        created_ms: 1_765_000_000_000,
        wal_file_no: 11,
        wal_offset: 4096,
        erasure_position: 2,
        lineage: [7; 16],
        rows: 1000,
        subjects: 100,
        block: format::BACKUP_BLOCK,
        gallery: GALLERY.into(),
        files: vec![
            format::BackupFile {
                name: "MANIFEST".into(),
                len: 200,
                crcs: vec![0x1234_5678],
            },
            format::BackupFile {
                name: "seg-0000000000000007.vseg".into(),
                len: (1 << 20) + 5,
                crcs: vec![1, 2],
            },
            format::BackupFile {
                name: "wal-000000000000000b.log".into(),
                len: 0,
                crcs: vec![],
            },
        ],
    };
    let mut backup = vec![0u8];
    backup.extend(format::encode_backup(&bm));
    seed("backup", None, &backup);
    let mut log = vec![1u8];
    log.extend(format::encode_erasures_header(&[3; 16]));
    format::encode_erasure_records(
        &[
            (format::ErasureKind::Subject, [1; 32]),
            (format::ErasureKind::Id, [2; 32]),
        ],
        &mut log,
    );
    seed("backup", None, &log);
    let mut key = vec![2u8];
    key.extend(format::encode_erasure_key(&[3; 16], &[9; 32]));
    seed("backup", None, &key);

    // Requests, one byte for the message type (the order of `KINDS` in requests.rs).
    let g = || GALLERY.to_string();
    let e = |id: u64, s: &str, seed: u64| pb::Embedding {
        id,
        subject: s.into(),
        vector: vector(seed),
    };
    let known = t.embeddings.values().next().expect("embeddings");
    let q = |v: Vec<f32>| pb::Vector { values: v };
    let reqs: Vec<(u8, Vec<u8>)> = vec![
        (
            0,
            pb::CreateGalleryRequest {
                name: "staff-2".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            0,
            pb::CreateGalleryRequest {
                name: "arc-512".into(),
                dim: 512,
                model: "arcface-r100@insightface-0.7.3".into(),
                normalize: true,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (1, pb::DropGalleryRequest { name: g() }.encode_to_vec()),
        (2, pb::GetGalleryRequest { name: g() }.encode_to_vec()),
        (3, pb::ListGalleriesRequest {}.encode_to_vec()),
        (
            4,
            pb::InsertRequest {
                gallery: g(),
                embeddings: vec![e(1, "ada", 1), e(known.id, "émile", 2)],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            // A model the template gallery was not created for: refused.
            4,
            pb::InsertRequest {
                gallery: g(),
                embeddings: vec![e(2, "ada", 7)],
                model: "facenet512".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            5,
            pb::DeleteRequest {
                gallery: g(),
                ids: vec![known.id, 12345],
                subjects: vec!["person-03".into()],
            }
            .encode_to_vec(),
        ),
        (
            6,
            pb::GetRequest {
                gallery: g(),
                ids: vec![known.id, 1, 105],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            7,
            pb::SearchRequest {
                gallery: g(),
                queries: vec![q(known.vector.clone()), q(vector(3))],
                k: 5,
                rank_by: 0,
                max_distance: None,
                mode: 0,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            7,
            pb::SearchRequest {
                gallery: g(),
                queries: vec![q(known.vector.clone())],
                k: 3,
                rank_by: 1,
                max_distance: Some(2.5),
                mode: 1,
                model: "facenet512".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            8,
            pb::IdentifyRequest {
                gallery: g(),
                probes: vec![q(known.vector.clone()), q(vector(4))],
                k: 3,
                min_probability: None,
                max_distance: Some(1.0),
                model: "facenet512".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            9,
            pb::VerifyRequest {
                gallery: g(),
                pairs: vec![
                    pb::VerifyPair {
                        a: Some(q(known.vector.clone())),
                        b: Some(pb::verify_pair::B::Id(known.id)),
                    },
                    pb::VerifyPair {
                        a: Some(q(vector(5))),
                        b: Some(pb::verify_pair::B::Subject(known.subject.clone())),
                    },
                    pb::VerifyPair {
                        a: Some(q(vector(5))),
                        b: Some(pb::verify_pair::B::Vector(q(vector(6)))),
                    },
                ],
                max_distance: None,
                min_probability: Some(0.5),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            10,
            pb::TrainHeadRequest {
                gallery: g(),
                target_far: 0.01,
                max_pairs: 1000,
                seed: Some(3),
                prior: Some(0.25),
            }
            .encode_to_vec(),
        ),
        // The packed forms: a matrix with ids, one without (the gallery
        // assigns them), packed queries, probes and pairs.
        (
            4,
            pb::InsertRequest {
                gallery: g(),
                matrix: Some(packed(&[vector(8), vector(9)])),
                ids: vec![40, known.id],
                subjects: vec!["ada".into(), "émile".into()],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            4,
            pb::InsertRequest {
                gallery: g(),
                matrix: Some(packed(&[vector(10)])),
                subjects: vec!["new".into()],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            7,
            pb::SearchRequest {
                gallery: g(),
                matrix: Some(packed(&[known.vector.clone(), vector(3)])),
                k: 40,
                with_subjects: true,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            8,
            pb::IdentifyRequest {
                gallery: g(),
                matrix: Some(packed(&[vector(4)])),
                k: 2,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            9,
            pb::VerifyRequest {
                gallery: g(),
                matrix: Some(packed(&[known.vector.clone(), vector(5)])),
                b_subjects: vec![known.subject.clone(), "person-03".into()],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (11, pb::GetHeadRequest { gallery: g() }.encode_to_vec()),
        (
            14,
            pb::ListSubjectsRequest {
                gallery: g(),
                page_size: 3,
                page_token: "706572736f6e2d3031".into(),
            }
            .encode_to_vec(),
        ),
        (12, pb::CompactRequest { gallery: g() }.encode_to_vec()),
        (13, pb::FlushRequest { gallery: g() }.encode_to_vec()),
    ];
    for (kind, bytes) in reqs {
        seed("requests", Some(kind), &bytes);
    }

    // The embeddings target takes structured input (`arbitrary`); a few byte
    // strings give it a start with several steps.
    let mut r = Rng(11);
    for n in [64, 256, 1024] {
        let bytes: Vec<u8> = (0..n).map(|_| r.next_u64() as u8).collect();
        seed("embeddings", None, &bytes);
    }
    let _ = std::fs::remove_dir_all(scratch_root());
    println!("seeds written under fuzz/seeds/");
}

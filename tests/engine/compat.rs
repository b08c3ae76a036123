//! Every released on-disk format version keeps opening: one committed data
//! directory per format version (`tests/fixtures/format-vN/`), written by the
//! build of that version, opened and checked by every later build. From
//! version 4 (dimension, model and normalisation recorded per gallery) a
//! second directory (`tests/fixtures/dims-vN/`) holds galleries of other
//! dimensions: 512 values with a model, and 96 normalising.
//!
//! To write the fixtures of the current version (only when the format version
//! changes): `cargo test -p visage-tests --test engine write_fixture -- --ignored`.

use std::path::{Path, PathBuf};
use visage_engine::{Embedding, Engine, EngineOptions, GallerySpec};

/// The fixture's contents: 40 embeddings of 8 subjects with exactly
/// representable values; ids 1..=40; ids 5 and 6 deleted after the flush;
/// ids 41..=44 only in the WAL.
fn contents() -> Vec<Embedding> {
    contents_of(128)
}

/// [`contents`] with vectors of `dim` values.
fn contents_of(dim: usize) -> Vec<Embedding> {
    (1..=44u64)
        .map(|id| Embedding {
            id,
            subject: format!("person-{}", id % 8),
            vector: (0..dim)
                .map(|d| ((id as usize * 7 + d * 3) % 17) as f32 * 0.125 - 1.0)
                .collect(),
        })
        .collect()
}

/// The same ids and subjects with unit vectors of `dim` values, exactly: 16
/// values of ±1/4 (their squares sum to 1), so normalising leaves them as
/// they are.
fn unit_contents_of(dim: usize) -> Vec<Embedding> {
    (1..=44u64)
        .map(|id| {
            let mut vector = vec![0.0f32; dim];
            for j in 0..16 {
                let at = (id as usize * 5 + j * 11) % dim;
                vector[at] = if (id as usize + j).is_multiple_of(3) {
                    -0.25
                } else {
                    0.25
                };
            }
            Embedding {
                id,
                subject: format!("person-{}", id % 8),
                vector,
            }
        })
        .collect()
}

/// The galleries of `dims-vN`: name, spec and contents.
fn dims_galleries() -> Vec<(&'static str, GallerySpec, Vec<Embedding>)> {
    vec![
        (
            "d512",
            GallerySpec {
                dim: 512,
                model: "fixture-model@1".into(),
                normalize: false,
            },
            contents_of(512),
        ),
        (
            "d96-cosine",
            GallerySpec {
                dim: 96,
                model: String::new(),
                normalize: true,
            },
            unit_contents_of(96),
        ),
    ]
}

fn fixture(version: u32) -> PathBuf {
    fixture_named(&format!("format-v{version}"))
}

fn dims_fixture(version: u32) -> PathBuf {
    fixture_named(&format!("dims-v{version}"))
}

fn fixture_named(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn opts() -> EngineOptions {
    let mut o = EngineOptions::default();
    o.gallery.background = false;
    o
}

/// Write a fixture gallery: all but the last 4 rows flushed, ids 5 and 6
/// deleted, the last 4 rows only in the WAL.
fn write_gallery(engine: &Engine, name: &str, spec: &GallerySpec, all: &[Embedding]) {
    let g = engine.create_gallery_with(name, spec).unwrap();
    g.insert(&all[..40]).unwrap();
    g.flush().unwrap();
    g.delete(&[5, 6], &[]).unwrap();
    g.insert(&all[40..]).unwrap();
}

#[test]
#[ignore = "writes the fixtures of the current format version; run only when the version changes"]
fn write_fixture_of_the_current_version() {
    let version = visage_engine::format::FORMAT_VERSION;
    let dir = fixture(version);
    let _ = std::fs::remove_dir_all(&dir);
    let engine = Engine::open(&dir, opts()).unwrap();
    write_gallery(&engine, "fixture", &GallerySpec::default(), &contents());
    drop(engine);
    std::fs::remove_file(dir.join("LOCK")).unwrap();

    let dir = dims_fixture(version);
    let _ = std::fs::remove_dir_all(&dir);
    let engine = Engine::open(&dir, opts()).unwrap();
    for (name, spec, all) in dims_galleries() {
        write_gallery(&engine, name, &spec, &all);
    }
    drop(engine);
    std::fs::remove_file(dir.join("LOCK")).unwrap();
}

/// Open a copy of the data directory `src` (opening may truncate or create files).
fn open_copy(src: &Path) -> (tempfile::TempDir, Engine) {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(src, tmp.path());
    let engine =
        Engine::open(tmp.path(), opts()).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    (tmp, engine)
}

/// The gallery holds `all` but ids 5 and 6, and finds each by itself.
#[track_caller]
fn check_contents(g: &visage_engine::Gallery, all: Vec<Embedding>, what: &str) {
    let want: Vec<Embedding> = all.into_iter().filter(|e| e.id != 5 && e.id != 6).collect();
    let ids: Vec<u64> = (1..=44).collect();
    assert_eq!(g.get(&ids), want, "{what}");
    assert_eq!(g.stats().live, 42, "{what}");
    // Versions before 3 do not record the subject count: opening counts it.
    assert_eq!(g.stats().subjects, 8, "{what}");
    let hits = g.search(&[want[0].vector.clone()], 1).unwrap();
    assert_eq!(hits[0][0].id, want[0].id, "{what}");
}

#[test]
fn every_committed_format_version_opens_with_its_contents() {
    let mut opened = Vec::new();
    for version in
        visage_engine::format::OLDEST_SUPPORTED_VERSION..=visage_engine::format::FORMAT_VERSION
    {
        let src = fixture(version);
        if !src.exists() {
            continue;
        }
        let (_tmp, engine) = open_copy(&src);
        let g = engine.gallery("fixture").unwrap();
        // Every format before the dimension was recorded is 128-d, no model.
        assert_eq!(g.dim(), 128, "format v{version}");
        assert_eq!(g.spec(), &GallerySpec::default(), "format v{version}");
        check_contents(&g, contents(), &format!("format v{version}"));
        // Forced compaction re-encodes segments older than the robust
        // quantiser in the current format; the contents stay.
        let robust = visage_engine::format::ROBUST_CODES_VERSION;
        if version < robust {
            assert!(g.stats().outdated_segments >= 1, "format v{version}");
        }
        g.compact().unwrap();
        assert_eq!(g.stats().outdated_segments, 0, "format v{version}");
        assert!(
            g.segments().iter().all(|s| s.format_version >= robust),
            "format v{version}: {:?}",
            g.segments()
        );
        check_contents(&g, contents(), &format!("format v{version}, compacted"));
        // The ids it assigns are above every id it held (1 to 44): from the
        // segments and the WAL where the manifest predates the counter.
        let (_, ids) = g
            .insert_rows(None, &["new"], &contents()[0].vector)
            .unwrap();
        assert_eq!(ids, [45], "format v{version}");
        opened.push(version);
    }
    for v in 1..=3 {
        assert!(
            opened.contains(&v),
            "fixture format-v{v} missing: opened {opened:?}"
        );
    }
}

#[test]
fn galleries_of_other_dimensions_of_every_committed_version_open_with_their_contents() {
    let mut opened = 0;
    for version in 4..=visage_engine::format::FORMAT_VERSION {
        let src = dims_fixture(version);
        if !src.exists() {
            continue;
        }
        let (_tmp, engine) = open_copy(&src);
        for (name, spec, all) in dims_galleries() {
            let what = format!("dims-v{version}, gallery {name}");
            let g = engine.gallery(name).unwrap();
            assert_eq!(g.spec(), &spec, "{what}");
            check_contents(&g, all, &what);
        }
        opened += 1;
    }
    assert!(opened >= 1, "no dims-vN fixture found under tests/fixtures");
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

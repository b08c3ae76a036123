//! Every released on-disk format version keeps opening: one committed data
//! directory per format version (`tests/fixtures/format-vN/`), written by the
//! build of that version, opened and checked by every later build.
//!
//! To write the fixture of the current version (only when the format version
//! changes): `cargo test -p visage-tests --test engine write_fixture -- --ignored`.

use std::path::{Path, PathBuf};
use visage_engine::{Embedding, Engine, EngineOptions};

/// The fixture's contents: 40 embeddings of 8 subjects with exactly
/// representable values; ids 1..=40; ids 5 and 6 deleted after the flush;
/// ids 41..=44 only in the WAL.
fn contents() -> Vec<Embedding> {
    (1..=44u64)
        .map(|id| Embedding {
            id,
            subject: format!("person-{}", id % 8),
            vector: (0..128)
                .map(|d| ((id as usize * 7 + d * 3) % 17) as f32 * 0.125 - 1.0)
                .collect(),
        })
        .collect()
}

fn fixture(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("format-v{version}"))
}

fn opts() -> EngineOptions {
    let mut o = EngineOptions::default();
    o.gallery.background = false;
    o
}

#[test]
#[ignore = "writes the fixture of the current format version; run only when the version changes"]
fn write_fixture_of_the_current_version() {
    let dir = fixture(visage_engine::format::FORMAT_VERSION);
    let _ = std::fs::remove_dir_all(&dir);
    let engine = Engine::open(&dir, opts()).unwrap();
    let g = engine.create_gallery("fixture").unwrap();
    let all = contents();
    g.insert(&all[..40]).unwrap();
    g.flush().unwrap();
    g.delete(&[5, 6], &[]).unwrap();
    g.insert(&all[40..]).unwrap();
    drop(g);
    drop(engine);
    std::fs::remove_file(dir.join("LOCK")).unwrap();
}

#[test]
fn every_committed_format_version_opens_with_its_contents() {
    let mut opened = 0;
    for version in
        visage_engine::format::OLDEST_SUPPORTED_VERSION..=visage_engine::format::FORMAT_VERSION
    {
        let src = fixture(version);
        if !src.exists() {
            continue;
        }
        // Open a copy: opening may truncate or create files.
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(&src, tmp.path());
        let engine =
            Engine::open(tmp.path(), opts()).unwrap_or_else(|e| panic!("format v{version}: {e}"));
        let g = engine.gallery("fixture").unwrap();
        let want: Vec<Embedding> = contents()
            .into_iter()
            .filter(|e| e.id != 5 && e.id != 6)
            .collect();
        let ids: Vec<u64> = (1..=44).collect();
        assert_eq!(g.get(&ids), want, "format v{version}");
        assert_eq!(g.stats().live, 42);
        // Versions before 3 do not record the subject count: opening counts it.
        assert_eq!(g.stats().subjects, 8, "format v{version}");
        let hits = g.search(&[want[0].vector.clone()], 1).unwrap();
        assert_eq!(hits[0][0].id, want[0].id);
        opened += 1;
    }
    assert!(opened >= 1, "no fixture found under tests/fixtures");
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

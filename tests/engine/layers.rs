//! The engine's modules form layers, and every `crate::` path points down
//! (ARCHITECTURE.md, "Engine modules"): storage never reaches the snapshot,
//! search never reaches the gallery, nothing reaches the data directory's
//! `engine` module. Doc comments and comments are not imports and are skipped.

use std::path::{Path, PathBuf};

/// The layer of each top-level engine module: a module may name `crate::X`
/// only where X is its own module or sits in a lower layer.
fn layer(module: &str) -> Option<u32> {
    Some(match module {
        "api" | "error" | "rng" | "quantizer" | "compaction" => 0,
        "storage" | "synth" => 1,
        "snapshot" => 2,
        "search" => 3,
        "head" => 4,
        "gallery" => 5,
        "engine" => 6,
        // The crate root re-exports, the fuzzing entry points reach anything.
        "lib" | "fuzzing" => return None,
        other => panic!("engine module {other:?} has no layer: add it to this test"),
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn engine_modules_only_import_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut paths = 0;
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel.iter().next().unwrap().to_string_lossy();
        let me = top.trim_end_matches(".rs");
        let Some(my_layer) = layer(me) else { continue };
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                // `crate::DIM`, `crate::{DIM, Embedding}`: the root's re-exports of `api`.
                if name.is_empty() {
                    continue;
                }
                paths += 1;
                let theirs = layer(&name).unwrap_or(u32::MAX);
                assert!(
                    name == me || theirs < my_layer,
                    "{}:{}: `{me}` (layer {my_layer}) uses `crate::{name}` (layer {theirs}): \
                     an import upward or sideways",
                    rel.display(),
                    n + 1
                );
            }
        }
    }
    assert!(
        paths > 50,
        "only {paths} crate:: paths found: the scan is broken"
    );
}

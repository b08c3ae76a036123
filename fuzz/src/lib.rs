//! Shared pieces of the fuzz targets: checksum fixers (so mutations reach the
//! decoders behind the CRCs), scratch directories on tmpfs, a small real
//! gallery made once per process as a template, and the checks run on a
//! gallery that opened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use visage_engine::format::{self, WalOp};
use visage_engine::{
    DIM, Durability, Embedding, Engine, EngineOptions, Error, Gallery, IdentifyOptions, RankBy,
    ScanMode, SearchOptions, TrainOptions, VerifyOptions, VerifyPair, VerifyTarget,
};

/// Name of the gallery every target builds.
pub const GALLERY: &str = "g";

// ---- checksum fixers ------------------------------------------------------
//
// Most inputs a mutator makes fail their CRC at once. Each target therefore
// takes a flag byte first; unless its bit 0 is set, the harness recomputes the
// CRCs of the mutated bytes before decoding, so the fuzzer explores what lies
// behind them (with bit 0 set, the checks of the CRCs themselves are fuzzed).
// The offsets below are those documented in `visage_engine::format`.

/// Offset of the section table in a segment header.
const SEG_TABLE_OFF: usize = 48;
/// Bytes of one entry of the section table.
const SEG_ENTRY_LEN: usize = 24;

fn get_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
fn get_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// Recompute the CRC of every section that lies inside `b`, then the header's.
pub fn fix_segment_crcs(b: &mut [u8]) {
    if b.len() < format::SEGMENT_HEADER_LEN {
        return;
    }
    for slot in 0..format::SECTION_SLOTS {
        let at = SEG_TABLE_OFF + slot * SEG_ENTRY_LEN;
        let (Some(off), Some(len)) = (get_u64(b, at), get_u64(b, at + 8)) else {
            continue;
        };
        let range = usize::try_from(off)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, l)| Some(o..o.checked_add(l)?));
        if let Some(crc) = range.and_then(|r| b.get(r)).map(crc32fast::hash) {
            put_u32(b, at + 16, crc);
        }
    }
    let end = format::SEGMENT_HEADER_LEN - 4;
    let crc = crc32fast::hash(&b[..end]);
    put_u32(b, end, crc);
}

/// Recompute the WAL header's CRC and the CRC of every record frame that can
/// be followed from the header, with the file's own salt.
pub fn fix_wal_crcs(b: &mut [u8]) {
    if b.len() < format::WAL_HEADER_LEN {
        return;
    }
    let crc = crc32fast::hash(&b[..28]);
    put_u32(b, 28, crc);
    let salt = get_u32(b, 12).unwrap_or(0);
    let mut at = format::WAL_HEADER_LEN;
    while let Some(len) = get_u32(b, at) {
        let len = len as usize;
        let start = at + format::RECORD_FRAME_LEN;
        if len == 0 || len > format::MAX_RECORD_LEN || start + len > b.len() {
            return;
        }
        let crc = format::record_crc(salt, (len as u32).to_le_bytes(), &b[start..start + len]);
        put_u32(b, at + 4, crc);
        at = start + len;
    }
}

/// Recompute the trailing CRC of a manifest.
pub fn fix_manifest_crc(b: &mut [u8]) {
    if b.len() >= 4 {
        let end = b.len() - 4;
        let crc = crc32fast::hash(&b[..end]);
        put_u32(b, end, crc);
    }
}

/// Recompute the CRC of a head file.
pub fn fix_head_crc(b: &mut [u8]) {
    // Every version keeps its CRC in the last 4 bytes (versions 1 and 2 are
    // exactly HEAD_LEN long, version 3 longer).
    if b.len() >= format::HEAD_LEN {
        fix_manifest_crc(b);
    }
}

/// Split a target's input into its flag byte and the bytes under test.
pub fn split_flags(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(f, rest)| (*f, rest))
}

/// The file-decoder targets' input: the flag byte and a copy of the file,
/// whose CRCs `fix` recomputes unless flag bit 0 asks to keep them as given
/// (so mutations reach the decoders behind the checksums).
pub fn file_input(data: &[u8], fix: fn(&mut [u8])) -> Option<(u8, Vec<u8>)> {
    let (flags, bytes) = split_flags(data)?;
    let mut buf = bytes.to_vec();
    if flags & 1 == 0 {
        fix(&mut buf);
    }
    Some((flags, buf))
}

/// An accepted file must re-encode to its own bytes, but for the version field
/// (bytes 8..12, which the encoders always write as the newest) and so the CRC
/// (`fix`). `what` describes the decoded value, for the failure message only.
/// The format version a file's header (bytes 8..12) names.
pub fn version_of(buf: &[u8]) -> u32 {
    buf.get(8..12)
        .map_or(0, |v| u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
}

/// What an accepted file re-encodes to: itself (but for the version field)
/// if it is of the newest version; an older one upgrades to a newest-version
/// file that decodes and re-encodes to itself.
pub fn assert_reencodes_or_upgrades(
    buf: &[u8],
    encoded: &[u8],
    fix: fn(&mut [u8]),
    reencode: impl Fn(&[u8]) -> Option<Vec<u8>>,
    what: impl FnOnce() -> String,
) {
    if version_of(buf) == format::FORMAT_VERSION {
        assert_reencodes(buf, encoded, fix, what);
        return;
    }
    let again = reencode(encoded);
    assert!(
        again.as_deref() == Some(encoded),
        "an older {} does not upgrade to a file that re-encodes to itself",
        what()
    );
}

pub fn assert_reencodes(
    buf: &[u8],
    encoded: &[u8],
    fix: fn(&mut [u8]),
    what: impl FnOnce() -> String,
) {
    let mut expect = buf.to_vec();
    expect[8..12].copy_from_slice(&format::FORMAT_VERSION.to_le_bytes());
    fix(&mut expect);
    assert!(
        encoded == expect,
        "an accepted {} re-encodes differently",
        what()
    );
}

// ---- scratch directories -------------------------------------------------

/// A directory for this process's files: under `$VISAGE_FUZZ_SCRATCH` when set
/// (`run.sh` sets it and removes it at the end), else on tmpfs when there is one.
/// libFuzzer ends the process with `exit`, so nothing here cleans up.
pub fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if let Some(dir) = std::env::var_os("VISAGE_FUZZ_SCRATCH") {
            PathBuf::from(dir)
        } else if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("visage-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        dir
    })
}

/// An empty directory `name` under the scratch root (emptied if it existed).
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = scratch_root().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// Engine options of every target: no background thread (deterministic), no
/// fsync (tmpfs anyway), memtable limit never reached by itself.
pub fn engine_options() -> EngineOptions {
    let mut o = EngineOptions::default();
    o.gallery.background = false;
    o.gallery.durability = Durability::ProcessCrash;
    o
}

/// The files of one gallery directory, by name.
pub type Files = BTreeMap<String, Vec<u8>>;

/// Write `files` as gallery [`GALLERY`] of a fresh data directory `name`; returns the data directory.
pub fn write_gallery(name: &str, files: &Files) -> PathBuf {
    let root = fresh_dir(name);
    let dir = root.join("galleries").join(GALLERY);
    std::fs::create_dir_all(&dir).expect("create the gallery directory");
    for (f, bytes) in files {
        std::fs::write(dir.join(f), bytes).expect("write a gallery file");
    }
    root
}

/// File name of segment `n`.
pub fn segment_name(n: u64) -> String {
    format!("seg-{n:016x}.vseg")
}

/// File name of WAL `n`.
pub fn wal_name(n: u64) -> String {
    format!("wal-{n:016x}.log")
}

// ---- deterministic data --------------------------------------------------

/// The tests' splitmix64 generator (`unit()` is uniform in [-1, 1)).
pub use visage_tests::Rng;

/// `n` embeddings of `subjects` people (id = 100 + i), vectors near a centre per person.
pub fn sample_embeddings(n: usize, subjects: usize, seed: u64) -> Vec<Embedding> {
    let mut rng = Rng(seed);
    let centres: Vec<Vec<f32>> = (0..subjects)
        .map(|_| (0..DIM).map(|_| rng.unit()).collect())
        .collect();
    (0..n)
        .map(|i| Embedding {
            id: 100 + i as u64,
            subject: format!("person-{:02}", i % subjects),
            vector: centres[i % subjects]
                .iter()
                .map(|c| c + 0.1 * rng.unit())
                .collect(),
        })
        .collect()
}

/// `n` random probes of `dim` values.
pub fn sample_probes(n: usize, seed: u64, dim: usize) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| (0..dim).map(|_| rng.unit()).collect())
        .collect()
}

// ---- the template gallery ---------------------------------------------------

/// A real gallery made by the engine: 32 embeddings of 8 people, 20 of them in
/// segment files (two flushes) and 12 in the WAL, with a trained head. Its files
/// seed every target that needs a gallery around the bytes under test.
pub struct Template {
    /// The gallery directory's files.
    pub files: Files,
    /// Its embeddings, by id.
    pub embeddings: BTreeMap<u64, Embedding>,
}

/// The template, made once per process.
pub fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let root = fresh_dir("template");
        let all = sample_embeddings(32, 8, 7);
        {
            let engine = Engine::open(&root, engine_options()).expect("open the template engine");
            let g = engine
                .create_gallery(GALLERY)
                .expect("create the template gallery");
            g.insert(&all[..12]).expect("insert");
            g.flush().expect("flush");
            g.insert(&all[12..20]).expect("insert");
            g.flush().expect("flush");
            g.delete(&[103], &[]).expect("delete");
            g.insert(&all[20..]).expect("insert");
            g.train_head(&TrainOptions {
                max_pairs: 2000,
                ..TrainOptions::default()
            })
            .expect("train the template head");
        }
        let dir = root.join("galleries").join(GALLERY);
        let mut files = Files::new();
        for e in std::fs::read_dir(&dir).expect("list the template") {
            let e = e.expect("list the template");
            let name = e.file_name().to_string_lossy().into_owned();
            files.insert(name, std::fs::read(e.path()).expect("read the template"));
        }
        let mut embeddings: BTreeMap<u64, Embedding> = all.into_iter().map(|e| (e.id, e)).collect();
        embeddings.remove(&103);
        Template { files, embeddings }
    })
}

// ---- checks on an open gallery --------------------------------------------

/// What `get` returns for each of `ids`, by id (vectors as bit patterns, so NaNs compare).
pub type State = BTreeMap<u64, (String, Vec<u32>)>;

/// The live embeddings among `ids`.
pub fn state(g: &Gallery, ids: &[u64]) -> State {
    g.get(ids)
        .into_iter()
        .map(|e| {
            assert_eq!(
                e.vector.len(),
                g.dim(),
                "get returned a vector of {}",
                e.vector.len()
            );
            (
                e.id,
                (e.subject, e.vector.iter().map(|x| x.to_bits()).collect()),
            )
        })
        .collect()
}

fn check_probability(p: Option<f32>, what: &str) {
    if let Some(p) = p {
        assert!((0.0..=1.0).contains(&p), "{what}: probability {p}");
    }
}

/// Search, identify and verify every way the server can, and check the answers'
/// shape: as many results as probes, at most k each, ascending, probabilities in [0, 1].
/// With `checks.calibrate`, also identify and verify without a threshold, which
/// calibrates one on the gallery (slow: sampling and scoring pairs). With
/// `checks.tiled_is_exact`, the tiled batch scan must return exactly what the
/// per-probe scan does (it trusts stored norms, which only
/// `VerifyChecksums::Full` checks against the vectors).
pub fn exercise(
    g: &Gallery,
    probes: &[Vec<f32>],
    some_id: Option<u64>,
    some_subject: Option<&str>,
    checks: Checks,
) {
    let calibrate = checks.calibrate;
    let thresholds: &[Option<f32>] = if calibrate {
        &[Some(1.0), None]
    } else {
        &[Some(1.0)]
    };
    let head = g.head();
    let trained = head.as_ref().is_some_and(|h| h.trained);
    let mut batch: Vec<Vec<f32>> = Vec::new();
    while batch.len() < 40 {
        batch.extend(probes.iter().cloned());
        if probes.is_empty() {
            break;
        }
    }
    for (rank_by, mode, qs) in [
        (RankBy::Distance, ScanMode::Exact, probes),
        (RankBy::Distance, ScanMode::Quantized, probes),
        // 32 probes or more: the tiled scan.
        (RankBy::Distance, ScanMode::Exact, &batch[..]),
        (RankBy::Head, ScanMode::Exact, probes),
    ] {
        let opts = SearchOptions {
            k: 5,
            rank_by,
            max_distance: None,
            mode,
        };
        match g.search_with(qs, &opts) {
            Ok(res) => {
                assert_eq!(res.len(), qs.len(), "one result list per probe");
                for hits in &res {
                    assert!(hits.len() <= 5, "more than k hits");
                    for h in hits {
                        check_probability(h.probability, "search");
                    }
                    if rank_by == RankBy::Distance {
                        for w in hits.windows(2) {
                            assert!(
                                w[0].distance
                                    .total_cmp(&w[1].distance)
                                    .then(w[0].id.cmp(&w[1].id))
                                    == std::cmp::Ordering::Less,
                                "hits out of order: {w:?}"
                            );
                        }
                    }
                }
            }
            Err(e) => assert!(
                rank_by == RankBy::Head && !trained,
                "search ({rank_by:?}, {mode:?}) failed: {e}"
            ),
        }
    }
    if checks.tiled_is_exact && !probes.is_empty() {
        // The tiled batch scan (40 probes), and the screened scan (one probe),
        // both read the 8-bit codes and must prove their answers equal to the
        // direct scan's, which reads every vector.
        let opts = SearchOptions {
            k: 5,
            ..SearchOptions::default()
        };
        let key = |hits: &Vec<visage_engine::Hit>| -> Vec<(u64, u32)> {
            hits.iter().map(|h| (h.id, h.distance.to_bits())).collect()
        };
        // Only probes of the gallery's dimension can be searched directly.
        let arrays: Vec<&[f32]> = batch
            .iter()
            .map(Vec::as_slice)
            .filter(|p| p.len() == g.dim())
            .collect();
        let flat = arrays.concat();
        let direct: Vec<Vec<(u64, u32)>> = visage_engine::fuzzing::search_direct(g, &flat, 5)
            .into_iter()
            .map(|hits| hits.into_iter().map(|(id, d)| (id, d.to_bits())).collect())
            .collect();
        let tiled = g.search_with(&batch, &opts).expect("batch search");
        for (i, hits) in tiled.iter().enumerate() {
            let one = g.search_with(&[&batch[i]], &opts).expect("single search");
            if let Some(want) = direct.get(i).filter(|_| arrays.len() == batch.len()) {
                assert_eq!(
                    &key(hits),
                    want,
                    "the tiled scan differs from the direct scan"
                );
                assert_eq!(
                    &key(&one[0]),
                    want,
                    "the screened scan differs from the direct scan"
                );
            }
        }
    }
    // With a distance threshold identification must work; with none it needs a
    // calibration, which a gallery of too few people cannot have (a caller error).
    for &max_distance in thresholds {
        let opts = IdentifyOptions {
            max_distance,
            ..IdentifyOptions::default()
        };
        match g.identify_open(probes, &opts) {
            Ok(res) => {
                assert_eq!(res.len(), probes.len());
                for r in &res {
                    assert!(r.candidates.len() <= 5);
                    for c in &r.candidates {
                        check_probability(c.probability, "identify");
                    }
                }
            }
            Err(e) if max_distance.is_none() && e.is_caller_error() => {}
            Err(e) => panic!("identify failed: {e}"),
        }
    }
    let mut pairs: Vec<VerifyPair> = probes
        .iter()
        .map(|p| VerifyPair {
            a: p.clone(),
            b: VerifyTarget::Vector(probes[0].clone()),
        })
        .collect();
    if let (Some(id), Some(p)) = (some_id, probes.first()) {
        pairs.push(VerifyPair {
            a: p.clone(),
            b: VerifyTarget::Id(id),
        });
    }
    if let (Some(s), Some(p)) = (some_subject, probes.first()) {
        pairs.push(VerifyPair {
            a: p.clone(),
            b: VerifyTarget::Subject(s.to_owned()),
        });
    }
    // With a distance threshold verification must work but for an id or subject
    // that is not live (NotFound); with none it may lack a calibration, as above.
    for &max_distance in thresholds {
        let opts = VerifyOptions {
            max_distance,
            ..VerifyOptions::default()
        };
        match g.verify(&pairs, &opts) {
            Ok(v) => {
                assert_eq!(v.len(), pairs.len());
                for x in &v {
                    check_probability(x.probability, "verify");
                }
            }
            Err(
                visage_engine::Error::UnknownId { .. } | visage_engine::Error::UnknownSubject { .. },
            ) => {}
            Err(e) if max_distance.is_none() && e.is_caller_error() => {}
            Err(e) => panic!("verify failed: {e}"),
        }
    }
}

/// Which of the slower or conditional checks [`exercise`] makes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checks {
    /// Identify and verify without thresholds (a calibration on the gallery).
    pub calibrate: bool,
    /// The tiled batch scan returns exactly the per-probe scan's answers.
    pub tiled_is_exact: bool,
}

/// Close `engine`, open `root` again, and return gallery [`GALLERY`].
pub fn reopen(engine: Engine, root: &Path) -> (Engine, Arc<Gallery>) {
    drop(engine);
    let engine = Engine::open(root, engine_options()).unwrap_or_else(|e| {
        panic!("a gallery that opened and was maintained does not reopen: {e}")
    });
    let g = engine.gallery(GALLERY).expect("the gallery is there");
    (engine, g)
}

/// After a successful open: exercise the gallery, then flush, compact (with a
/// delete so compaction rewrites), reopen, and check nothing changed but the delete.
pub fn maintain_and_reopen(engine: Engine, root: &Path, ids: &[u64], checks: Checks) {
    let g = engine.gallery(GALLERY).expect("the gallery is there");
    let before = state(&g, ids);
    assert!(
        g.stats().live as usize >= before.len(),
        "stats count fewer live rows than get finds"
    );
    // Probes: two stored vectors (finite ones: a probe must be) and a stranger.
    let probes: Vec<Vec<f32>> = before
        .values()
        .map(|(_, v)| v.iter().map(|&b| f32::from_bits(b)).collect::<Vec<f32>>())
        .filter(|v| v.iter().all(|x| x.is_finite()))
        .take(2)
        .chain(sample_probes(1, 3, g.dim()))
        .collect();
    // An id and subject to verify against: one whose stored vector is finite
    // (segment vectors are not checked at open, see `VerifyChecksums`).
    let some = before
        .iter()
        .find(|(_, (_, v))| v.iter().all(|&b| f32::from_bits(b).is_finite()))
        .map(|(id, (s, _))| (*id, s.clone()));
    exercise(
        &g,
        &probes,
        some.as_ref().map(|x| x.0),
        some.as_ref().map(|x| x.1.as_str()),
        checks,
    );
    // A damaged manifest may leave maintenance nothing it can do safely (a file
    // counter at its maximum): that is a corruption error, with the contents intact.
    if let Err(e) = g.flush() {
        assert!(matches!(e, Error::Corruption { .. }), "flush failed: {e}");
        assert_eq!(
            state(&g, ids),
            before,
            "a failed flush changed the contents"
        );
        return;
    }
    assert_eq!(state(&g, ids), before, "flush changed the contents");
    let mut expect = before.clone();
    if let Some((id, _)) = &some {
        g.delete(&[*id], &[]).expect("delete one id");
        expect.remove(id);
    }
    if let Err(e) = g.compact() {
        assert!(matches!(e, Error::Corruption { .. }), "compact failed: {e}");
        assert_eq!(
            state(&g, ids),
            expect,
            "a failed compaction changed the contents"
        );
        return;
    }
    assert_eq!(state(&g, ids), expect, "compaction changed the contents");
    drop(g);
    let (engine, g) = reopen(engine, root);
    assert_eq!(state(&g, ids), expect, "contents changed across a reopen");
    // A segment holding the deleted row was rewritten by the engine, with
    // norms it computed; without a delete, the stored norms are still trusted.
    let after = Checks {
        calibrate: false,
        tiled_is_exact: checks.tiled_is_exact || some.is_some(),
    };
    exercise(&g, &probes, None, None, after);
    drop(g);
    drop(engine);
}

/// Apply WAL operations to a model, as recovery should.
pub fn apply_ops(model: &mut State, ops: &[WalOp]) {
    for op in ops {
        // A batch applied from a log is its batch (the position aside).
        let op = match op {
            WalOp::At { op, .. } => op,
            op => op,
        };
        match op {
            WalOp::Insert(items) => {
                for e in items {
                    model.insert(
                        e.id,
                        (
                            e.subject.clone(),
                            e.vector.iter().map(|x| x.to_bits()).collect(),
                        ),
                    );
                }
            }
            WalOp::Delete(ids) => {
                for id in ids {
                    model.remove(id);
                }
            }
            WalOp::At { .. } => unreachable!("the decoder refuses a log position inside another"),
        }
    }
}

/// Re-encode a decoded WAL operation as a record payload.
pub fn encode_op(op: &WalOp) -> Vec<u8> {
    let mut out = Vec::new();
    let op = match op {
        WalOp::At { seq, op } => {
            format::encode_at(*seq, &mut out);
            &**op
        }
        op => op,
    };
    match op {
        WalOp::Insert(items) => format::encode_insert(
            items.iter().map(|e| (e.id, e.subject.as_str(), &e.vector[..])),
            &mut out,
        ),
        WalOp::Delete(ids) => format::encode_delete(ids, &mut out),
        WalOp::At { .. } => unreachable!("the decoder refuses a log position inside another"),
    }
    out
}

//! `visage._native`: the engine embedded in a Python process.
//!
//! A thin layer: one frozen class, [`Engine`], whose methods take a gallery
//! name and numpy arrays (float32, C order, already checked by the Python
//! layer in `visage/_api.py`, and checked again here) and return numpy
//! arrays, lists and dicts. The Python layer turns them into the package's
//! one API, shared with the gRPC client (`visage/_remote.py`), which returns
//! the same shapes.
//!
//! Every engine call runs with the GIL released (`py.detach`). The engine sits
//! behind a read-write lock: calls hold it shared, `close` exclusively, so a
//! close waits for the calls in flight and every call after it raises
//! `visage.errors.Closed`. Engine errors are raised as the class of
//! `visage.errors` named after their kind (`NotFound`, `InvalidArgument`, ...)
//! with the engine's message, as the gRPC client raises them for the
//! server's status codes.

use numpy::ndarray::Array2;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use visage_engine as ve;

/// The Python exception for an engine error: the class of `visage.errors`
/// named after the error's kind, carrying the engine's message.
fn raise(py: Python<'_>, code: &str, message: String) -> PyErr {
    let made = py
        .import("visage.errors")
        .and_then(|m| m.call_method1("_from_code", (code, message)));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        // The package is broken (no visage.errors): still say what failed.
        Err(e) => e,
    }
}

fn engine_err(py: Python<'_>, e: &ve::Error) -> PyErr {
    raise(py, e.kind().name(), e.to_string())
}

/// A float32 matrix in C order, or a TypeError/ValueError saying what to do.
fn matrix<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<PyReadonlyArray2<'py, f32>> {
    let arr = obj.cast::<PyArray2<f32>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} must be a float32 numpy array of shape (N, D); \
             use np.ascontiguousarray({what}, dtype=np.float32)"
        ))
    })?;
    if !arr.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{what} must be C-contiguous (row-major); \
             use np.ascontiguousarray({what}, dtype=np.float32)"
        )));
    }
    arr.try_readonly()
        .map_err(|e| PyValueError::new_err(format!("{what}: {e}")))
}

/// A uint64 vector in C order.
fn id_vector<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<PyReadonlyArray1<'py, u64>> {
    let arr = obj.cast::<PyArray1<u64>>().map_err(|_| {
        PyTypeError::new_err(format!("{what} must be a uint64 numpy array of shape (N,)"))
    })?;
    if !arr.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{what} must be C-contiguous"
        )));
    }
    arr.try_readonly()
        .map_err(|e| PyValueError::new_err(format!("{what}: {e}")))
}

/// Rows of a checked matrix as slices.
fn rows(data: &[f32], dim: usize) -> Vec<&[f32]> {
    if dim == 0 {
        return Vec::new();
    }
    data.chunks_exact(dim).collect()
}

fn grid<T: numpy::Element>(
    py: Python<'_>,
    n: usize,
    k: usize,
    v: Vec<T>,
) -> PyResult<Bound<'_, PyArray2<T>>> {
    Array2::from_shape_vec((n, k), v)
        .map(|a| a.into_pyarray(py))
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

fn gallery_info<'py>(py: Python<'py>, i: &Info) -> PyResult<Bound<'py, PyDict>> {
    let s = &i.stats;
    let head = i.head.as_ref();
    let rule = head.and_then(|h| h.open_rule(s.subjects));
    let spec = &i.spec;
    let d = PyDict::new(py);
    d.set_item("name", &i.name)?;
    d.set_item("dim", spec.dim)?;
    d.set_item("model", &spec.model)?;
    d.set_item("normalize", spec.normalize)?;
    d.set_item("live", s.live)?;
    d.set_item("deleted", s.deleted)?;
    d.set_item("subjects", s.subjects)?;
    d.set_item("segments", s.segments)?;
    d.set_item("bytes_on_disk", s.bytes_on_disk)?;
    d.set_item("memtable_rows", s.memtable_rows)?;
    d.set_item("head_trained", head.is_some_and(|h| h.trained))?;
    d.set_item("open_logit_threshold", rule.and_then(|r| r.logit))?;
    d.set_item("open_distance_threshold", rule.and_then(|r| r.distance))?;
    d.set_item("open_trusted", rule.is_some_and(|r| r.trusted))?;
    d.set_item("exception_rows", s.exception_rows)?;
    d.set_item("outdated_segments", s.outdated_segments)?;
    Ok(d)
}

/// A head as the dict `visage.HeadInfo` is made from; the same fields and
/// values as the server's `HeadInfo` message (`server/src/convert.rs`).
fn head_info<'py>(
    py: Python<'py>,
    h: Option<&ve::HeadInfo>,
    subjects: u64,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("current_subjects", subjects)?;
    let Some(h) = h else {
        d.set_item("trained", false)?;
        return Ok(d);
    };
    let cal = h.calibrated.as_ref();
    let platt = cal.and_then(|c| c.platt).filter(|_| h.trained);
    let rule = h.open_rule(subjects);
    d.set_item("trained", h.trained)?;
    let weights = if h.trained {
        h.weights.clone()
    } else {
        Vec::new()
    };
    d.set_item("weights", weights.into_pyarray(py))?;
    d.set_item("bias", h.bias)?;
    d.set_item("distance_weight", h.distance_weight)?;
    d.set_item("threshold", h.threshold)?;
    d.set_item("logit_threshold", h.logit_threshold)?;
    // f32 on the wire: the same values in both modes.
    d.set_item("target_far", h.target_far as f32)?;
    d.set_item("auc", h.auc as f32)?;
    d.set_item("tar_at_far", h.tar_at_far as f32)?;
    d.set_item("eer", h.eer as f32)?;
    d.set_item("pairs", h.pairs)?;
    d.set_item("distance_threshold", h.distance_threshold)?;
    d.set_item("distance_auc", h.distance_auc as f32)?;
    d.set_item("distance_tar_at_far", h.distance_tar_at_far as f32)?;
    d.set_item("distance_eer", h.distance_eer as f32)?;
    d.set_item("heldout_genuine", h.heldout_genuine)?;
    d.set_item("heldout_impostor", h.heldout_impostor)?;
    d.set_item("seed", h.seed)?;
    d.set_item("open_probes", h.open_probes)?;
    d.set_item("calibration_current", cal.is_some())?;
    d.set_item("prior", cal.map_or(0.0, |c| c.prior))?;
    d.set_item("probability_calibrated", platt.is_some())?;
    d.set_item("current_open_logit_threshold", rule.and_then(|r| r.logit))?;
    d.set_item(
        "current_open_distance_threshold",
        rule.and_then(|r| r.distance),
    )?;
    d.set_item("current_open_trusted", rule.is_some_and(|r| r.trusted))?;
    Ok(d)
}

/// An open data directory of galleries, embedded in this process.
///
/// Internal: use `visage.open(path)`, which wraps it in the package's API.
#[pyclass(frozen, module = "visage._native")]
struct Engine {
    inner: RwLock<Option<ve::Engine>>,
    path: PathBuf,
}

/// Why a call failed, before the GIL is taken again to raise it.
enum Fail {
    Closed,
    Engine(ve::Error),
}

impl From<ve::Error> for Fail {
    fn from(e: ve::Error) -> Self {
        Fail::Engine(e)
    }
}

/// A gallery's statistics and head, read without the GIL.
struct Info {
    name: String,
    spec: ve::GallerySpec,
    stats: ve::GalleryStats,
    head: Option<Arc<ve::HeadInfo>>,
}

impl Info {
    fn of(g: &ve::Gallery) -> Info {
        Info {
            name: g.name().to_owned(),
            spec: g.spec().clone(),
            stats: g.stats(),
            head: g.head(),
        }
    }
}

impl Engine {
    /// Run `f` on the engine with the GIL released, holding the engine open
    /// (the lock shared) for the call: `close` waits for it. The lock is
    /// taken and released without the GIL, so a thread waiting for it never
    /// holds the GIL another thread needs to finish.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&ve::Engine) -> Result<T, Fail> + Send,
    ) -> PyResult<T> {
        let r = py.detach(|| {
            let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
            match guard.as_ref() {
                Some(engine) => f(engine),
                None => Err(Fail::Closed),
            }
        });
        r.map_err(|f| match f {
            Fail::Closed => raise(
                py,
                "CLOSED",
                format!("the database {} is closed", self.path.display()),
            ),
            Fail::Engine(e) => engine_err(py, &e),
        })
    }

    /// Run `f` on the named gallery, as [`Engine::run`].
    fn with_gallery<T: Send>(
        &self,
        py: Python<'_>,
        name: &str,
        f: impl FnOnce(&ve::Gallery) -> ve::Result<T> + Send,
    ) -> PyResult<T> {
        self.run(py, |e| Ok(f(&*e.gallery(name)?)?))
    }
}

#[pymethods]
impl Engine {
    /// Open (creating if needed) the data directory `path`.
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let p = path.clone();
        let engine = py
            .detach(|| ve::Engine::open(&p, ve::EngineOptions::default()))
            .map_err(|e| engine_err(py, &e))?;
        Ok(Engine {
            inner: RwLock::new(Some(engine)),
            path,
        })
    }

    /// The data directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Close the engine: waits for the calls in flight, stops background
    /// work and releases the directory lock. Idempotent.
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            let taken = self.inner.write().unwrap_or_else(|e| e.into_inner()).take();
            // Dropping the last handle closes every gallery and unlocks.
            drop(taken);
        });
    }

    /// Create a gallery; returns its info dict.
    fn create_gallery<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        dim: usize,
        model: String,
        normalize: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let spec = ve::GallerySpec {
            dim,
            model,
            normalize,
        };
        let info = self.run(py, |e| Ok(Info::of(&*e.create_gallery_with(name, &spec)?)))?;
        gallery_info(py, &info)
    }

    /// One gallery's info dict.
    fn gallery_info<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
        let info = self.with_gallery(py, name, |g| Ok(Info::of(g)))?;
        gallery_info(py, &info)
    }

    /// Every gallery's info dict, sorted by name.
    fn list_galleries<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let infos = self.run(py, |e| {
            Ok(e.list_galleries()
                .iter()
                // Dropped by another thread since the listing: skipped.
                .filter_map(|name| e.gallery(name).ok())
                .map(|g| Info::of(&g))
                .collect::<Vec<_>>())
        })?;
        infos.iter().map(|i| gallery_info(py, i)).collect()
    }

    /// Drop a gallery and delete its files.
    fn drop_gallery(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.run(py, |e| Ok(e.drop_gallery(name)?))
    }

    /// Insert one batch: `vectors` float32 (N, D) in C order, `subjects` N
    /// strings (or one, for every row), `ids` a uint64 array of N or None
    /// (the gallery assigns fresh ids). Returns the rows' ids.
    #[pyo3(signature = (name, vectors, subjects, ids=None))]
    fn insert<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        vectors: &Bound<'py, PyAny>,
        subjects: Vec<String>,
        ids: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let vectors = matrix(vectors, "vectors")?;
        let n = vectors.shape()[0];
        let ids = ids.map(|i| id_vector(i, "ids")).transpose()?;
        let data = vectors.as_slice()?;
        let id_slice = match &ids {
            Some(i) => Some(i.as_slice()?),
            None => None,
        };
        let subject_refs: Vec<&str> = if subjects.len() == 1 && n != 1 {
            vec![subjects[0].as_str(); n]
        } else {
            subjects.iter().map(String::as_str).collect()
        };
        let (_, assigned) =
            self.with_gallery(py, name, |g| g.insert_rows(id_slice, &subject_refs, data))?;
        Ok(assigned.into_pyarray(py))
    }

    /// Exact (or quantised-first) top-k of each probe. Returns `(ids, distances,
    /// subjects, probabilities, similarities)`: (n, k) arrays padded with id 0
    /// and distance +inf (probability and similarity NaN); subjects a flat
    /// list of n * k strings ("" as padding) when asked for, else None.
    #[pyo3(signature = (name, probes, k, max_distance=None, with_subjects=false, exact=true))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn search<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        probes: &Bound<'py, PyAny>,
        k: usize,
        max_distance: Option<f32>,
        with_subjects: bool,
        exact: bool,
    ) -> PyResult<(
        Bound<'py, PyArray2<u64>>,
        Bound<'py, PyArray2<f32>>,
        Option<Bound<'py, PyList>>,
        Bound<'py, PyArray2<f32>>,
        Bound<'py, PyArray2<f32>>,
    )> {
        let probes = matrix(probes, "probes")?;
        let (n, dim) = (probes.shape()[0], probes.shape()[1]);
        let data = probes.as_slice()?;
        let opts = ve::SearchOptions {
            k,
            rank_by: ve::RankBy::Distance,
            max_distance,
            mode: if exact {
                ve::ScanMode::Exact
            } else {
                ve::ScanMode::Quantized
            },
        };
        let hits = self.with_gallery(py, name, |g| g.search_with(&rows(data, dim), &opts))?;
        let slots = n * k;
        let mut ids = vec![0u64; slots];
        let mut dist = vec![f32::INFINITY; slots];
        let mut prob = vec![f32::NAN; slots];
        let mut sim = vec![f32::NAN; slots];
        let mut subj: Vec<&str> = if with_subjects {
            vec![""; slots]
        } else {
            Vec::new()
        };
        for (q, hs) in hits.iter().enumerate() {
            for (j, h) in hs.iter().take(k).enumerate() {
                let at = q * k + j;
                ids[at] = h.id;
                dist[at] = h.distance;
                prob[at] = h.probability.unwrap_or(f32::NAN);
                sim[at] = h.similarity.unwrap_or(f32::NAN);
                if with_subjects {
                    subj[at] = &h.subject;
                }
            }
        }
        let subjects = if with_subjects {
            Some(PyList::new(py, subj)?)
        } else {
            None
        };
        Ok((
            grid(py, n, k, ids)?,
            grid(py, n, k, dist)?,
            subjects,
            grid(py, n, k, prob)?,
            grid(py, n, k, sim)?,
        ))
    }

    /// Open-set identification. Returns `(known, subject, candidate_subjects,
    /// candidate_ids, candidate_distances, candidate_probabilities,
    /// candidate_similarities)`: known bool (n,), subject a list of n (None
    /// when unknown), candidate_subjects a flat list of n * k ("" padding),
    /// the rest (n, k) arrays padded with 0, +inf, NaN, NaN.
    #[pyo3(signature = (name, probes, k, min_probability=None, max_distance=None))]
    #[allow(clippy::type_complexity)]
    fn identify<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        probes: &Bound<'py, PyAny>,
        k: usize,
        min_probability: Option<f32>,
        max_distance: Option<f32>,
    ) -> PyResult<(
        Bound<'py, PyArray1<bool>>,
        Bound<'py, PyList>,
        Bound<'py, PyList>,
        Bound<'py, PyArray2<u64>>,
        Bound<'py, PyArray2<f32>>,
        Bound<'py, PyArray2<f32>>,
        Bound<'py, PyArray2<f32>>,
    )> {
        let probes = matrix(probes, "probes")?;
        let (n, dim) = (probes.shape()[0], probes.shape()[1]);
        let data = probes.as_slice()?;
        let opts = ve::IdentifyOptions {
            k,
            min_probability,
            max_distance,
        };
        let found = self.with_gallery(py, name, |g| g.identify_open(&rows(data, dim), &opts))?;
        let slots = n * k;
        let mut known = Vec::with_capacity(n);
        let mut subject: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut cs: Vec<&str> = vec![""; slots];
        let mut ids = vec![0u64; slots];
        let mut dist = vec![f32::INFINITY; slots];
        let mut prob = vec![f32::NAN; slots];
        let mut sim = vec![f32::NAN; slots];
        for (q, r) in found.iter().enumerate() {
            known.push(r.known);
            subject.push(r.subject.as_deref());
            for (j, h) in r.candidates.iter().take(k).enumerate() {
                let at = q * k + j;
                cs[at] = &h.subject;
                ids[at] = h.id;
                dist[at] = h.distance;
                prob[at] = h.probability.unwrap_or(f32::NAN);
                sim[at] = h.similarity.unwrap_or(f32::NAN);
            }
        }
        Ok((
            known.into_pyarray(py),
            PyList::new(py, subject)?,
            PyList::new(py, cs)?,
            grid(py, n, k, ids)?,
            grid(py, n, k, dist)?,
            grid(py, n, k, prob)?,
            grid(py, n, k, sim)?,
        ))
    }

    /// 1:1 verification of each row of `a` against exactly one of: the
    /// rows of `b_vectors`, the ids `b_ids`, the subjects `b_subjects`.
    /// Returns `(same, distance, threshold, rule, probability, similarity,
    /// matched_id)`: arrays of n (probability and similarity NaN where
    /// absent, matched_id 0 for a vector), rule a list of n strings.
    #[pyo3(signature = (name, a, b_vectors=None, b_ids=None, b_subjects=None, max_distance=None, min_probability=None))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn verify<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        a: &Bound<'py, PyAny>,
        b_vectors: Option<&Bound<'py, PyAny>>,
        b_ids: Option<&Bound<'py, PyAny>>,
        b_subjects: Option<Vec<String>>,
        max_distance: Option<f32>,
        min_probability: Option<f32>,
    ) -> PyResult<(
        Bound<'py, PyArray1<bool>>,
        Bound<'py, PyArray1<f32>>,
        Bound<'py, PyArray1<f32>>,
        Bound<'py, PyList>,
        Bound<'py, PyArray1<f32>>,
        Bound<'py, PyArray1<f32>>,
        Bound<'py, PyArray1<u64>>,
    )> {
        let a = matrix(a, "a")?;
        let (n, dim) = (a.shape()[0], a.shape()[1]);
        let a_rows = rows(a.as_slice()?, dim);
        let targets: Vec<ve::VerifyTarget> = match (b_vectors, b_ids, b_subjects) {
            (Some(b), None, None) => {
                let b = matrix(b, "b")?;
                rows(b.as_slice()?, b.shape()[1])
                    .into_iter()
                    .map(|r| ve::VerifyTarget::Vector(r.to_vec()))
                    .collect()
            }
            (None, Some(b), None) => {
                let b = id_vector(b, "b")?;
                b.as_slice()?
                    .iter()
                    .map(|&id| ve::VerifyTarget::Id(id))
                    .collect()
            }
            (None, None, Some(b)) => b.into_iter().map(ve::VerifyTarget::Subject).collect(),
            _ => {
                return Err(PyValueError::new_err(
                    "give exactly one of b_vectors, b_ids, b_subjects",
                ));
            }
        };
        if targets.len() != n {
            return Err(raise(
                py,
                "INVALID_ARGUMENT",
                format!("b: {} entries for {n} rows of a", targets.len()),
            ));
        }
        let pairs: Vec<ve::VerifyPair> = a_rows
            .into_iter()
            .zip(targets)
            .map(|(a, b)| ve::VerifyPair { a: a.to_vec(), b })
            .collect();
        let opts = ve::VerifyOptions {
            min_probability,
            max_distance,
        };
        let verdicts = self.with_gallery(py, name, |g| g.verify(&pairs, &opts))?;
        let same: Vec<bool> = verdicts.iter().map(|v| v.same).collect();
        let distance: Vec<f32> = verdicts.iter().map(|v| v.distance).collect();
        let threshold: Vec<f32> = verdicts.iter().map(|v| v.threshold).collect();
        let rule: Vec<&str> = verdicts.iter().map(|v| rule_name(v.rule)).collect();
        let probability: Vec<f32> = verdicts
            .iter()
            .map(|v| v.probability.unwrap_or(f32::NAN))
            .collect();
        let similarity: Vec<f32> = verdicts
            .iter()
            .map(|v| v.similarity.unwrap_or(f32::NAN))
            .collect();
        let matched: Vec<u64> = verdicts.iter().map(|v| v.matched_id.unwrap_or(0)).collect();
        Ok((
            same.into_pyarray(py),
            distance.into_pyarray(py),
            threshold.into_pyarray(py),
            PyList::new(py, rule)?,
            probability.into_pyarray(py),
            similarity.into_pyarray(py),
            matched.into_pyarray(py),
        ))
    }

    /// Delete by id and every embedding of the given subjects; returns how
    /// many live embeddings were removed.
    fn delete(
        &self,
        py: Python<'_>,
        name: &str,
        ids: &Bound<'_, PyAny>,
        subjects: Vec<String>,
    ) -> PyResult<u64> {
        let ids = id_vector(ids, "ids")?;
        let ids = ids.as_slice()?;
        self.with_gallery(py, name, |g| g.delete(ids, &subjects))
    }

    /// Flush, then rewrite segments without their deleted rows.
    fn compact(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.with_gallery(py, name, |g| g.compact().map(drop))
    }

    /// Write the in-memory rows to a segment.
    fn flush(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.with_gallery(py, name, |g| g.flush().map(drop))
    }

    /// Train the scoring head; returns the head's info dict.
    #[pyo3(signature = (name, target_far=None, max_pairs=None, seed=None, prior=None))]
    fn train_head<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        target_far: Option<f64>,
        max_pairs: Option<usize>,
        seed: Option<u64>,
        prior: Option<f64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let d = ve::TrainOptions::default();
        let opts = ve::TrainOptions {
            target_far: target_far.unwrap_or(d.target_far),
            max_pairs: max_pairs.unwrap_or(d.max_pairs),
            seed: seed.unwrap_or(d.seed),
            prior: prior.unwrap_or(d.prior),
            ..d
        };
        let (h, subjects) =
            self.with_gallery(py, name, |g| Ok((g.train_head(&opts)?, g.stats().subjects)))?;
        head_info(py, Some(&h), subjects)
    }

    /// The gallery's head info dict (`trained` False without a head).
    fn head<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
        let (h, subjects) = self.with_gallery(py, name, |g| Ok((g.head(), g.stats().subjects)))?;
        head_info(py, h.as_deref(), subjects)
    }

    /// The embeddings of the ids that exist, in request order: `(vectors
    /// float32 (m, D), subjects list, ids uint64 (m,))`.
    #[allow(clippy::type_complexity)]
    fn get<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        ids: &Bound<'py, PyAny>,
    ) -> PyResult<(
        Bound<'py, PyArray2<f32>>,
        Bound<'py, PyList>,
        Bound<'py, PyArray1<u64>>,
    )> {
        let ids = id_vector(ids, "ids")?;
        let ids = ids.as_slice()?;
        let (found, dim) = self.with_gallery(py, name, |g| Ok((g.get(ids), g.dim())))?;
        let mut vectors = Vec::with_capacity(found.len() * dim);
        let mut out_ids = Vec::with_capacity(found.len());
        for e in &found {
            vectors.extend_from_slice(&e.vector);
            out_ids.push(e.id);
        }
        Ok((
            grid(py, found.len(), dim, vectors)?,
            PyList::new(py, found.iter().map(|e| e.subject.as_str()))?,
            out_ids.into_pyarray(py),
        ))
    }
}

/// How a verdict decided, as the Python API spells it.
fn rule_name(rule: ve::VerdictRule) -> &'static str {
    match rule {
        ve::VerdictRule::Distance => "distance",
        ve::VerdictRule::Probability => "probability",
        ve::VerdictRule::MeanProbability => "mean_probability",
    }
}

/// The engine of the `visage` package, embedded.
#[pymodule]
#[pyo3(name = "_native")]
fn visage_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

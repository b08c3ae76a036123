"""The one API of the package, over either backend: the embedded engine
(``visage._native.Engine``) or the gRPC client (``visage._remote.Remote``).

Both backends have the same methods, taking a gallery name and checked numpy
arrays (float32, C order) and returning arrays, lists and dicts; everything a
user sees (argument checks, batching, padding, result types, errors) is made
here, once, so the two modes behave alike.
"""

from __future__ import annotations

import collections
import math
import re
import sys
import threading
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import errors
from ._types import GalleryInfo, HeadInfo, Identification, Verification

__all__ = ["Database", "Gallery"]

# The engine's per-call limits (visage_engine::Limits::for_dim and the
# constants beside it); the counts hold at 128 values a vector and shrink in
# proportion above it.
MAX_INSERT_BATCH = 100_000
MAX_PROBES = 10_000
MAX_K = 10_000
MAX_IDENTIFY_K = 1_000
# The server refuses a search whose queries * k exceed this.
MAX_SLOTS = 1_000_000
MAX_SUBJECT_BYTES = 256
MAX_TRAIN_PAIRS = 1_000_000
_U64_MAX = (1 << 64) - 1

# Unicode's control characters (category Cc), as Rust's char::is_control.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

ArrayLike = Any


def _scaled(n: int, dim: int) -> int:
    return max(1, n * 128 // max(dim, 128))


def insert_limit(dim: int) -> int:
    """Most rows one insert call takes at dimension ``dim``."""
    return _scaled(MAX_INSERT_BATCH, dim)


def probe_limit(dim: int) -> int:
    """Most probes one search, identify or verify call takes at ``dim``."""
    return _scaled(MAX_PROBES, dim)


# ---------------------------------------------------------------- checks


def _fix(what: str) -> str:
    return f"np.ascontiguousarray({what}, dtype=np.float32)"


def _as_matrix(x: ArrayLike, dim: int, what: str, *, normalize: bool = False) -> np.ndarray:
    """``x`` as a float32 C-order array of shape (N, dim), or the error.

    float32 must already be C-contiguous (no hidden copy); float64 (what
    face_recognition and deepface hand out) is converted once, in any layout;
    every other dtype is a TypeError. A 1-D array of ``dim`` values is one row.
    """
    if not isinstance(x, np.ndarray):
        if isinstance(x, (str, bytes)) or x is None:
            raise TypeError(
                f"{what} must be a float32 numpy array of shape (N, {dim}), got "
                f"{type(x).__name__}; use {_fix(what)}"
            )
        x = np.asarray(x)
    if x.dtype == np.float64:
        if x.ndim in (1, 2):
            x = np.ascontiguousarray(x, dtype=np.float32)
    elif x.dtype != np.float32:
        raise TypeError(
            f"{what} must be a float32 numpy array of shape (N, {dim}) (float64 is "
            f"converted), got a {x.dtype} array of shape {x.shape}; use {_fix(what)}"
        )
    if x.ndim == 1:
        if x.shape[0] != dim:
            raise errors.InvalidArgument(
                f"{what}: a 1-D array is one vector of {dim} values (the gallery's "
                f"dimension), got {x.shape[0]} values"
            )
        x = x.reshape(1, dim)
    elif x.ndim != 2:
        raise errors.InvalidArgument(
            f"{what} must be a 2-D array of shape (N, {dim}) (or 1-D for one vector), "
            f"got a {x.ndim}-D array of shape {x.shape}"
        )
    if x.shape[1] != dim:
        raise errors.InvalidArgument(
            f"{what}: expected {dim} values a row (the gallery's dimension), "
            f"got an array of shape {x.shape}"
        )
    if not x.flags.c_contiguous:
        raise errors.InvalidArgument(
            f"{what} must be C-contiguous (row-major); got a "
            f"{'Fortran-order' if x.flags.f_contiguous else 'strided'} array of "
            f"shape {x.shape}; use {_fix(what)}"
        )
    if x.size and not math.isfinite(float(x.sum(dtype=np.float64))):
        bad = np.argwhere(~np.isfinite(x))[0]
        i, j = int(bad[0]), int(bad[1])
        raise errors.InvalidArgument(
            f"{what}[{i}]: value {j} is {_f32(x[i, j])} (every value must be finite)"
        )
    if normalize and x.size:
        zero = ~x.any(axis=1)
        if zero.any():
            i = int(np.argmax(zero))
            raise errors.InvalidArgument(
                f"{what}[{i}]: is a zero vector, which cannot be normalised "
                f"(gallery normalises)"
            )
    return x


def _f32(v: Any) -> str:
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(v)


def _subject_problem(s: Any) -> Optional[str]:
    if not isinstance(s, str):
        return f"must be a str, got {type(s).__name__}"
    if not s:
        return "is empty"
    n = len(s.encode("utf-8", "surrogatepass"))
    if n > MAX_SUBJECT_BYTES:
        return f"is {n} bytes, longer than {MAX_SUBJECT_BYTES}"
    m = _CONTROL.search(s)
    if m:
        return f"holds control character {m.group()!r}"
    return None


def _as_subjects(subjects: Union[str, Sequence[str]], n: int, what: str) -> List[str]:
    """One str for every row (returned as a list of one), or n strs."""
    if isinstance(subjects, str):
        problem = _subject_problem(subjects)
        if problem:
            raise errors.InvalidArgument(f"{what}: {problem}")
        return [subjects]
    if isinstance(subjects, np.ndarray):
        subjects = subjects.tolist()
    try:
        subjects = list(subjects)
    except TypeError:
        raise TypeError(
            f"{what} must be a str or a sequence of {n} str, got {type(subjects).__name__}"
        ) from None
    if len(subjects) != n:
        raise errors.InvalidArgument(f"{what}: {len(subjects)} subjects for {n} rows")
    # Each distinct subject is checked once (people have several images).
    checked = set()
    for i, s in enumerate(subjects):
        if isinstance(s, str) and s in checked:
            continue
        problem = _subject_problem(s)
        if problem:
            raise errors.InvalidArgument(f"{what}[{i}]: {problem}")
        checked.add(s)
    return subjects


def _as_ids(ids: ArrayLike, what: str) -> np.ndarray:
    """Integers in [0, 2**64) as a C-order uint64 array of one dimension."""
    if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
        ids = [ids]
    if not isinstance(ids, np.ndarray):
        try:
            ids = np.asarray(list(ids))
        except TypeError:
            raise TypeError(f"{what} must be a sequence of integers") from None
        if ids.dtype == object:
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in ids):
                raise TypeError(f"{what} must hold integers only")
            if any(v < 0 or v > _U64_MAX for v in ids):
                raise errors.InvalidArgument(f"{what}: ids must be in [0, 2**64 - 1]")
            ids = ids.astype(np.uint64)
        elif ids.size == 0:
            ids = ids.astype(np.uint64)
    if ids.ndim != 1:
        raise errors.InvalidArgument(
            f"{what} must be one-dimensional, got an array of shape {ids.shape}"
        )
    if ids.dtype.kind == "i":
        if ids.size and ids.min() < 0:
            i = int(np.argmax(ids < 0))
            raise errors.InvalidArgument(f"{what}[{i}]: {int(ids[i])} is negative")
    elif ids.dtype.kind != "u":
        raise TypeError(
            f"{what} must be integers (uint64), got a {ids.dtype} array; "
            f"use np.asarray({what}, dtype=np.uint64)"
        )
    return np.ascontiguousarray(ids, dtype=np.uint64)


def _check_distinct(ids: np.ndarray, what: str) -> None:
    if len(ids) < 2:
        return
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    dup = np.flatnonzero(s[1:] == s[:-1])
    if dup.size:
        # The earliest repetition, and the first occurrence of its id.
        second = int(order[dup + 1].min())
        first = int(np.flatnonzero(ids == ids[second])[0])
        raise errors.InvalidArgument(
            f"{what}[{second}]: id {int(ids[second])} already appears at "
            f"{what}[{first}] of the same batch"
        )


def _threshold(
    max_distance: Optional[float], tolerance: Optional[float]
) -> Optional[float]:
    """The squared-distance threshold from ``max_distance`` (squared L2) or
    ``tolerance`` (plain L2, squared here)."""
    if max_distance is not None and tolerance is not None:
        raise errors.InvalidArgument(
            "give max_distance (a squared L2 distance) or tolerance (a plain L2 "
            "distance, as face_recognition's tolerance=0.6), not both"
        )
    if tolerance is not None:
        t = _number(tolerance, "tolerance")
        if not (math.isfinite(t) and t >= 0):
            raise errors.InvalidArgument(f"tolerance must be a finite L2 distance >= 0, got {t}")
        return t * t
    if max_distance is not None:
        d = _number(max_distance, "max_distance")
        if not (math.isfinite(d) and d >= 0):
            raise errors.InvalidArgument(
                f"max_distance must be a finite squared L2 distance >= 0, got {d}"
            )
        return d
    return None


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number, got {type(v).__name__}")
    return float(v)


def _probability(p: Optional[float], what: str = "min_probability") -> Optional[float]:
    if p is None:
        return None
    v = _number(p, what)
    if not (0.0 <= v <= 1.0):
        raise errors.InvalidArgument(f"{what} must be in [0, 1], got {v}")
    return v


def _k(k: Any, limit: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    k = int(k)
    if k < 1:
        raise errors.InvalidArgument("k must be at least 1")
    if k > limit:
        raise errors.InvalidArgument(f"k: {k} exceeds the limit of {limit}")
    return k


def _quoted(s: str) -> str:
    """``s`` as the engine's messages quote a name: at most 64 bytes (then
    ``… (N bytes)``), in double quotes with Rust's escapes."""
    shown = s
    b = s.encode("utf-8", "surrogatepass")
    if len(b) > 64:
        shown = b[:64].decode("utf-8", "ignore")
    out = []
    for c in shown:
        if c in "\\\"":
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif _CONTROL.match(c):
            out.append("\\u{%x}" % ord(c))
        else:
            out.append(c)
    q = '"' + "".join(out) + '"'
    if len(b) > 64:
        q = f'"{"".join(out)}… ({len(b)} bytes)"'
    return q


_NAME = re.compile(r"[A-Za-z0-9_-]*")


def _check_name(name: Any) -> str:
    """A gallery name as the engine and the server accept it: 1 to 64
    characters from ``A-Z a-z 0-9 _ -``, starting with a letter or digit."""
    if not isinstance(name, str):
        raise TypeError(f"a gallery name must be a str, got {type(name).__name__}")
    if not name:
        reason = "is empty"
    elif len(name.encode("utf-8", "surrogatepass")) > 64:
        reason = "is longer than 64 characters"
    elif not _NAME.fullmatch(name):
        reason = "may hold only letters, digits, '_' and '-'"
    elif not name[0].isascii() or not name[0].isalnum():
        reason = "must start with a letter or digit"
    else:
        return name
    raise errors.InvalidArgument(f"invalid gallery name {_quoted(name)}: {reason}")


def _chunks(n: int, size: int) -> Iterable[Tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


# ---------------------------------------------------------------- API


class Database:
    """A data directory of galleries: embedded (:func:`visage.open`) or on a
    server (:func:`visage.connect`); the same methods either way.

    Thread-safe: share one across threads. Use it as a context manager, or
    call :meth:`close`; calls after closing raise :class:`visage.errors.Closed`.
    """

    def __init__(self, backend: Any, where: str, mode: str) -> None:
        self._backend = backend
        self._where = where
        self._mode = mode
        self._closed = False
        self._lock = threading.Lock()

    # --- lifecycle

    @property
    def mode(self) -> str:
        """``"embedded"`` or ``"remote"``."""
        return self._mode

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Close the database: embedded, wait for calls in flight, stop
        background work and unlock the directory; remote, close the channel.
        Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._backend.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<visage.Database {self._mode} {self._where!r} ({state})>"

    def _b(self) -> Any:
        if self._closed:
            what = "database" if self._mode == "embedded" else "connection to"
            raise errors.Closed(f"the {what} {self._where} is closed")
        return self._backend

    # --- galleries

    def create_gallery(
        self, name: str, dim: int = 128, model: str = "", normalize: bool = False
    ) -> "Gallery":
        """Create an empty gallery and return it.

        Args:
            name: 1 to 64 characters from ``A-Z a-z 0-9 _ -``, starting with a
                letter or digit.
            dim: values per vector, a multiple of 16 from 16 to 2,048 (128 for
                dlib/face_recognition, 512 for ArcFace-class models).
            model: the model that made the vectors (free text, "" for none).
            normalize: store unit vectors and normalise probes (for models
                compared by cosine); results then carry the cosine similarity.

        Raises:
            AlreadyExists: a gallery of that name exists.
            InvalidArgument: a bad name, dimension or model.
        """
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        _check_name(name)
        if not isinstance(model, str):
            raise TypeError(f"model must be a str, got {type(model).__name__}")
        if dim <= 0 or dim > 1 << 31:
            raise errors.InvalidArgument(
                f"invalid gallery specification: dimension {dim} is not a multiple "
                f"of 16 from 16 to 2048"
            )
        info = self._b().create_gallery(name, int(dim), model, bool(normalize))
        return Gallery(self, GalleryInfo._from_dict(info))

    def gallery(self, name: str) -> "Gallery":
        """The gallery called ``name``.

        Raises:
            NotFound: no gallery of that name.
        """
        _check_name(name)
        return Gallery(self, GalleryInfo._from_dict(self._b().gallery_info(name)))

    def galleries(self) -> List["Gallery"]:
        """Every gallery, sorted by name."""
        infos = [GalleryInfo._from_dict(d) for d in self._b().list_galleries()]
        return [Gallery(self, i) for i in sorted(infos, key=lambda i: i.name)]

    def drop_gallery(self, name: str) -> None:
        """Drop a gallery and delete all of its files.

        Raises:
            NotFound: no gallery of that name.
        """
        _check_name(name)
        self._b().drop_gallery(name)

    def __contains__(self, name: str) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.gallery(name)
        except (errors.NotFound, errors.InvalidArgument):
            return False
        return True


class Gallery:
    """A named collection of face embeddings of one dimension.

    Get one from :meth:`Database.create_gallery` or :meth:`Database.gallery`.
    Distances are SQUARED L2 everywhere (as faiss reports them); the
    ``tolerance`` arguments take a PLAIN L2 distance, as face_recognition's
    ``tolerance=0.6``, and square it. Thread-safe.
    """

    def __init__(self, db: Database, info: GalleryInfo) -> None:
        self._db = db
        self._name = info.name
        self._dim = info.dim
        self._model = info.model
        self._normalize = info.normalize

    @property
    def name(self) -> str:
        """The gallery's name."""
        return self._name

    @property
    def dim(self) -> int:
        """Values per vector."""
        return self._dim

    @property
    def model(self) -> str:
        """The model recorded at creation ("" for none)."""
        return self._model

    @property
    def normalize(self) -> bool:
        """Whether the gallery stores unit vectors and normalises probes."""
        return self._normalize

    def __repr__(self) -> str:
        return f"<visage.Gallery {self._name!r} dim={self._dim}>"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Gallery) and other._db is self._db and other._name == self._name
        )

    def __hash__(self) -> int:
        return hash((id(self._db), self._name))

    def __len__(self) -> int:
        """Live embeddings."""
        return self.info().live

    def _b(self) -> Any:
        return self._db._b()

    # --- information

    def info(self) -> GalleryInfo:
        """The gallery's statistics now."""
        return GalleryInfo._from_dict(self._b().gallery_info(self._name))

    def head(self) -> HeadInfo:
        """The gallery's scoring head and thresholds (``trained`` False
        without a head)."""
        return HeadInfo._from_dict(self._b().head(self._name))

    # --- writes

    def add(
        self,
        vectors: ArrayLike,
        subjects: Union[str, Sequence[str]],
        ids: Optional[ArrayLike] = None,
        *,
        batch_size: Optional[int] = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Enrol embeddings; returns their ids (uint64 [N]).

        Args:
            vectors: float32 [N, D] in C order (float64 is converted once; a
                1-D array of D values is one row). Other dtypes raise
                TypeError, other layouts InvalidArgument; both say the fix,
                ``np.ascontiguousarray(x, dtype=np.float32)``.
            subjects: N strings (the person of each row), or one str for all.
            ids: None, and the gallery assigns fresh ids (each above every id
                it has held or assigned, so never 0 and never reused, even
                after removes, compaction or a restart); or N distinct
                integers, where an existing id is replaced (upsert).
            batch_size: rows per call to the engine or server (default and
                maximum: the gallery's per-call limit, 100,000 rows at D <= 128,
                scaled by 128/D above; remote calls default to about 16 MiB).
            progress: show a tqdm bar on stderr, advanced per committed batch.

        Everything is checked before anything is written (shape, dtype,
        NaN/inf, zero vectors in a normalising gallery, subjects, duplicate
        ids): a bad input changes nothing. If a batch fails after earlier
        ones were committed (a full disk, the server going away), the error
        says how many rows were committed and carries it as
        ``err.committed_rows``.
        """
        x = _as_matrix(vectors, self._dim, "vectors", normalize=self._normalize)
        n = x.shape[0]
        subj = _as_subjects(subjects, n, "subjects")
        id_arr = None
        if ids is not None:
            id_arr = _as_ids(ids, "ids")
            if len(id_arr) != n:
                raise errors.InvalidArgument(f"ids: {len(id_arr)} ids for {n} rows")
            _check_distinct(id_arr, "ids")
        limit = insert_limit(self._dim)
        if batch_size is None:
            backend = self._b()
            per_row = self._dim * 4 + 12 + max((len(s) for s in set(subj)), default=0)
            size = min(limit, max(1, backend.request_bytes // per_row))
        else:
            if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
                raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
            size = int(batch_size)
            if not 1 <= size <= limit:
                raise errors.InvalidArgument(
                    f"batch_size must be from 1 to {limit} (the gallery's limit at "
                    f"{self._dim} values a vector), got {size}"
                )
        if n == 0:
            return np.zeros(0, dtype=np.uint64)
        backend = self._b()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, unit="rows", desc=f"adding to {self._name}", file=sys.stderr)
        try:
            return self._add_batches(backend, x, subj, id_arr, size, bar)
        finally:
            if bar is not None:
                bar.close()

    def _add_batches(
        self,
        backend: Any,
        x: np.ndarray,
        subj: List[str],
        ids: Optional[np.ndarray],
        size: int,
        bar: Any,
    ) -> np.ndarray:
        n = x.shape[0]
        spans = list(_chunks(n, size))
        out: List[Optional[np.ndarray]] = [None] * len(spans)
        window = max(1, int(backend.pipeline))
        pending: "collections.deque[Tuple[int, Any]]" = collections.deque()
        failure: Optional[BaseException] = None
        committed = 0

        def settle(i: int, fut: Any) -> None:
            nonlocal failure, committed
            try:
                got = fut.result()
            except BaseException as e:  # noqa: BLE001 - reported below
                if failure is None:
                    failure = e
                return
            out[i] = got
            a, b = spans[i]
            committed += b - a
            if bar is not None:
                bar.update(b - a)

        for i, (a, b) in enumerate(spans):
            if failure is not None:
                break
            s = subj if len(subj) == 1 else subj[a:b]
            fut = backend.insert_async(self._name, x[a:b], s, None if ids is None else ids[a:b])
            pending.append((i, fut))
            while len(pending) >= window or (pending and pending[0][1].done()):
                settle(*pending.popleft())
        while pending:
            settle(*pending.popleft())
        if failure is not None:
            if committed == 0 or not isinstance(failure, errors.Error):
                raise failure
            msg = (
                f"{failure.message} ({committed} of {n} rows were committed by "
                f"earlier batches and stay in the gallery; the other rows were not)"
            )
            err = type(failure)(msg, committed)
            err.code = failure.code
            raise err from failure
        done = [o for o in out if o is not None]
        return np.concatenate(done) if len(done) > 1 else done[0]

    def remove(
        self,
        ids: Optional[ArrayLike] = None,
        subjects: Optional[Union[str, Sequence[str]]] = None,
    ) -> int:
        """Delete embeddings by id and every embedding of the given subjects
        (a str or a sequence of str); returns how many live embeddings were
        removed. Their vectors leave the disk at the next :meth:`compact`."""
        id_arr = np.zeros(0, dtype=np.uint64) if ids is None else _as_ids(ids, "ids")
        if subjects is None:
            subj: List[str] = []
        elif isinstance(subjects, str):
            subj = [subjects]
        else:
            subj = list(subjects)
        for i, s in enumerate(subj):
            problem = _subject_problem(s)
            if problem:
                raise errors.InvalidArgument(f"subjects[{i}].subject: {problem}")
        if len(id_arr) == 0 and not subj:
            return 0
        return int(self._b().delete(self._name, id_arr, subj))

    def compact(self) -> None:
        """Flush, then rewrite segments without their deleted rows (afterwards
        no file of the gallery holds a removed vector) and merge small ones."""
        self._b().compact(self._name)

    def flush(self) -> None:
        """Write the rows held in memory to a segment file."""
        self._b().flush(self._name)

    def train_head(
        self,
        target_far: float = 0.001,
        max_pairs: Optional[int] = None,
        seed: Optional[int] = None,
        prior: Optional[float] = None,
    ) -> HeadInfo:
        """Train the gallery's scoring head on its own labels and calibrate its
        thresholds at ``target_far``; returns the head.

        Args:
            target_far: false-accept rate of the thresholds, in (0, 1).
            max_pairs: pairs drawn, 100 to 1,000,000 (None: 200,000).
            seed: seed of the pair sampling (None: 1). Same data, same seed,
                same head.
            prior: prior P(same person) the probabilities are stated at, in
                (0, 1) (None: 0.5).

        Raises:
            InvalidArgument: too few labelled subjects, or an option out of range.
        """
        tf = _number(target_far, "target_far")
        if not 0.0 < tf < 1.0:
            raise errors.InvalidArgument(f"target_far must be in (0, 1), got {tf}")
        if max_pairs is not None:
            if isinstance(max_pairs, bool) or not isinstance(max_pairs, (int, np.integer)):
                raise TypeError("max_pairs must be an int")
            if not 100 <= int(max_pairs) <= MAX_TRAIN_PAIRS:
                raise errors.InvalidArgument(
                    f"max_pairs must be from 100 to {MAX_TRAIN_PAIRS}, got {max_pairs}"
                )
            max_pairs = int(max_pairs)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise TypeError("seed must be an int")
            if not 0 <= int(seed) <= _U64_MAX:
                raise errors.InvalidArgument(f"seed must be in [0, 2**64 - 1], got {seed}")
            seed = int(seed)
        if prior is not None:
            pr = _number(prior, "prior")
            if not 0.0 < pr < 1.0:
                raise errors.InvalidArgument(f"prior must be in (0, 1), got {pr}")
            prior = pr
        return HeadInfo._from_dict(self._b().train_head(self._name, tf, max_pairs, seed, prior))

    # --- reads

    def get(self, ids: ArrayLike) -> Tuple[np.ndarray, List[str], np.ndarray]:
        """The embeddings of the ids that exist, in the order asked:
        ``(vectors float32 [m, D], subjects list of m str, ids uint64 [m])``;
        missing ids are skipped. In a normalising gallery the vectors are the
        stored unit vectors."""
        id_arr = _as_ids(ids, "ids")
        if len(id_arr) == 0:
            return np.zeros((0, self._dim), dtype=np.float32), [], id_arr
        vs: List[np.ndarray] = []
        ss: List[str] = []
        out: List[np.ndarray] = []
        b = self._b()
        for a, z in _chunks(len(id_arr), insert_limit(self._dim)):
            v, s, i = b.get(self._name, id_arr[a:z], self._dim)
            vs.append(np.asarray(v, dtype=np.float32).reshape(-1, self._dim))
            ss.extend(s)
            out.append(i)
        return np.concatenate(vs), ss, np.concatenate(out)

    def search(
        self,
        probes: ArrayLike,
        k: int,
        *,
        max_distance: Optional[float] = None,
        tolerance: Optional[float] = None,
        with_subjects: bool = False,
        exact: bool = True,
    ) -> Union[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The k nearest embeddings of each probe, faiss-style: ``D, I =
        g.search(probes, k)``.

        Args:
            probes: float32 [n, D] (float64 converted once; 1-D = one probe).
            k: hits per probe, 1 to 10,000.
            max_distance: drop hits farther than this SQUARED L2 distance.
            tolerance: the same as a PLAIN L2 distance (face_recognition's
                ``tolerance=0.6`` is ``max_distance=0.36``); not with max_distance.
            with_subjects: also return S, the hits' subjects.
            exact: True (default): the exact top-k. False: 8-bit codes first,
                then an exact re-rank (distances exact; may rarely miss a
                true neighbour).

        Returns:
            ``(D, I)`` or ``(D, I, S)``: D float32 [n, k] SQUARED L2
            distances ascending, I uint64 [n, k] ids (ties by ascending id),
            S object [n, k] of str. A row with fewer than k hits (fewer rows
            in the gallery, or ``max_distance``) is padded with id 0,
            distance +inf and subject "": auto-assigned ids start at 1, so
            id 0 is never a real hit of an auto-id gallery; test
            ``np.isfinite(D)`` to find the padding in any gallery.
        """
        k = _k(k, MAX_K)
        md = _threshold(max_distance, tolerance)
        x = _as_matrix(probes, self._dim, "probes", normalize=self._normalize)
        n = x.shape[0]
        b = self._b()
        per_call = min(probe_limit(self._dim), max(1, MAX_SLOTS // k))
        ds, is_, ss = [], [], []
        for a, z in _chunks(n, per_call):
            ids, dist, subj, _p, _s = b.search(
                self._name, x[a:z], k, md, bool(with_subjects), bool(exact)
            )
            ds.append(dist)
            is_.append(ids)
            if with_subjects:
                ss.extend(subj)
        if n == 0:
            D = np.zeros((0, k), dtype=np.float32)
            I = np.zeros((0, k), dtype=np.uint64)
        else:
            D = np.concatenate(ds) if len(ds) > 1 else ds[0]
            I = np.concatenate(is_) if len(is_) > 1 else is_[0]
        if not with_subjects:
            return D, I
        S = np.empty(n * k, dtype=object)
        S[:] = ss
        return D, I, S.reshape(n, k)

    def identify(
        self,
        probes: ArrayLike,
        k: int = 1,
        *,
        min_probability: Optional[float] = None,
        max_distance: Optional[float] = None,
        tolerance: Optional[float] = None,
    ) -> Identification:
        """Who is each probe? The k best distinct subjects of each, and
        whether the best one is known (1:N, open set).

        Args:
            probes: float32 [n, D] (float64 converted once; 1-D = one probe).
            k: candidate subjects per probe, 1 to 1,000.
            min_probability: known only if the best candidate's calibrated
                probability is at least this (needs a trained head).
            max_distance: known only if the best candidate is within this
                SQUARED L2 distance.
            tolerance: the same as a PLAIN L2 distance (squared here); not
                with max_distance.

        With no threshold the gallery's calibrated open-set threshold for its
        current size decides (calibrated on first use without a head;
        FailedPrecondition when the gallery is too small to calibrate one:
        pass max_distance or tolerance).
        """
        k = _k(k, MAX_IDENTIFY_K)
        md = _threshold(max_distance, tolerance)
        mp = _probability(min_probability)
        x = _as_matrix(probes, self._dim, "probes", normalize=self._normalize)
        n = x.shape[0]
        b = self._b()
        per_call = min(probe_limit(self._dim), max(1, MAX_SLOTS // k))
        parts = []
        for a, z in _chunks(n, per_call):
            parts.append(b.identify(self._name, x[a:z], k, mp, md))
        known = _cat([p[0] for p in parts], (0,), np.bool_)
        subject = np.empty(n, dtype=object)
        subject[:] = [s for p in parts for s in p[1]]
        cs = np.empty(n * k, dtype=object)
        cs[:] = [s for p in parts for s in p[2]]
        cids = _cat([p[3] for p in parts], (0, k), np.uint64)
        cdist = _cat([p[4] for p in parts], (0, k), np.float32)
        cprob = _cat([p[5] for p in parts], (0, k), np.float32)
        csim = _cat([p[6] for p in parts], (0, k), np.float32)
        return Identification(
            known=known,
            subject=subject,
            probability=cprob[:, 0].copy() if n else np.zeros(0, np.float32),
            distance=cdist[:, 0].copy() if n else np.zeros(0, np.float32),
            candidate_subjects=cs.reshape(n, k),
            candidate_ids=cids,
            candidate_distances=cdist,
            candidate_probabilities=cprob,
            candidate_similarities=csim,
        )

    def verify(
        self,
        a: ArrayLike,
        b: Any,
        *,
        max_distance: Optional[float] = None,
        tolerance: Optional[float] = None,
        min_probability: Optional[float] = None,
    ) -> Verification:
        """Is each row of ``a`` the same person as ``b``? (1:1, deepface-like.)

        Args:
            a: float32 [n, D] (float64 converted once; 1-D = one vector).
            b: one of: vectors float32 [n, D] (or one vector, compared with
                every row of a); enrolled ids (an integer array or list of n,
                or one int); a subject str (every row of a claims to be that
                person); a list of n subject strs. Against a subject the best
                of its embeddings is reported, and without a threshold the
                gallery decides with its claim rule for the subject's number
                of images.
            max_distance: same iff the SQUARED L2 distance is at most this.
            tolerance: the same as a PLAIN L2 distance (squared here); not
                with max_distance.
            min_probability: same iff the calibrated probability is at least
                this (needs a trained head); takes precedence over a distance.

        With no threshold the gallery's calibrated ones decide (FailedPrecondition
        when the gallery is too small to calibrate one). ``threshold`` and
        ``rule`` of the result say what each row was compared with.

        Raises:
            NotFound: an id or subject of b is not enrolled.
        """
        md = _threshold(max_distance, tolerance)
        mp = _probability(min_probability)
        x = _as_matrix(a, self._dim, "a", normalize=self._normalize)
        n = x.shape[0]
        kind, bb = self._verify_target(b, n)
        back = self._b()
        parts = []
        for s, z in _chunks(n, probe_limit(self._dim)):
            if kind == "vectors":
                bv = bb[s:z] if len(bb) == n else np.repeat(bb, z - s, axis=0)
                parts.append(back.verify(self._name, x[s:z], bv, None, None, md, mp))
            elif kind == "ids":
                bi = bb[s:z] if len(bb) == n else np.repeat(bb, z - s)
                parts.append(back.verify(self._name, x[s:z], None, bi, None, md, mp))
            else:
                bs = bb[s:z] if len(bb) == n else bb * (z - s)
                parts.append(back.verify(self._name, x[s:z], None, None, bs, md, mp))
        rule = np.empty(n, dtype=object)
        rule[:] = [r for p in parts for r in p[3]]
        return Verification(
            verified=_cat([p[0] for p in parts], (0,), np.bool_),
            distance=_cat([p[1] for p in parts], (0,), np.float32),
            threshold=_cat([p[2] for p in parts], (0,), np.float32),
            rule=rule,
            probability=_cat([p[4] for p in parts], (0,), np.float32),
            similarity=_cat([p[5] for p in parts], (0,), np.float32),
            matched_id=_cat([p[6] for p in parts], (0,), np.uint64),
        )

    def _verify_target(self, b: Any, n: int) -> Tuple[str, Any]:
        """What b is: ("vectors", float32 [n or 1, D]), ("ids", uint64 [n or
        1]) or ("subjects", list of n or 1 str)."""
        if isinstance(b, str):
            problem = _subject_problem(b)
            if problem:
                raise errors.InvalidArgument(f"b: {problem}")
            return "subjects", [b]
        if isinstance(b, (int, np.integer)) and not isinstance(b, bool):
            return "ids", _as_ids([b], "b")
        if isinstance(b, (list, tuple)) and b and all(isinstance(s, str) for s in b):
            subj = _as_subjects(b, n, "b") if len(b) != 1 or n == 1 else _as_subjects(b[0], 1, "b")
            return "subjects", subj
        arr = b if isinstance(b, np.ndarray) else np.asarray(b)
        if arr.dtype.kind in "iu":
            ids = _as_ids(arr, "b")
            if len(ids) not in (1, n):
                raise errors.InvalidArgument(f"b: {len(ids)} ids for {n} rows of a")
            return "ids", ids
        if arr.dtype.kind in "UO":
            return "subjects", _as_subjects(arr.tolist(), n, "b")
        v = _as_matrix(arr if isinstance(b, np.ndarray) else b, self._dim, "b",
                       normalize=self._normalize)
        if len(v) not in (1, n):
            raise errors.InvalidArgument(f"b: {len(v)} vectors for {n} rows of a")
        return "vectors", v


def _cat(parts: List[np.ndarray], empty_shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
    if not parts:
        return np.zeros(empty_shape, dtype=dtype)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]

"""The package's API, the same tests in both modes (the `db` fixture is
parametrised over embedded and remote): results against numpy brute force,
errors with their classes and messages, and bad inputs that change nothing."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import visage
from visage import errors


def sq_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared L2 distances [len(a), len(b)] in float64."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)


def brute_search(x, ids, q, k):
    """Exact top-k by (distance, id), padded as the API pads."""
    d = sq_l2(q, x)
    D = np.full((len(q), k), np.inf)
    I = np.zeros((len(q), k), dtype=np.uint64)
    for r in range(len(q)):
        order = np.lexsort((ids, d[r]))[:k]
        D[r, : len(order)] = d[r, order]
        I[r, : len(order)] = ids[order]
    return D, I


def people(rng, n_subjects, per, dim, spread=0.05):
    """Clustered vectors: n_subjects centres, `per` noisy images each."""
    centres = rng.standard_normal((n_subjects, dim)).astype(np.float32)
    x = np.repeat(centres, per, axis=0) + spread * rng.standard_normal(
        (n_subjects * per, dim)
    ).astype(np.float32)
    subjects = [f"p{i:04d}" for i in range(n_subjects) for _ in range(per)]
    return np.ascontiguousarray(x, dtype=np.float32), subjects, centres


# ------------------------------------------------------------ galleries


def test_create_list_get_drop(db):
    b = db.create_gallery("b-gallery", dim=32, model="m@1", normalize=True)
    a = db.create_gallery("a_gallery")
    assert (a.name, a.dim, a.model, a.normalize) == ("a_gallery", 128, "", False)
    assert (b.name, b.dim, b.model, b.normalize) == ("b-gallery", 32, "m@1", True)
    assert [g.name for g in db.galleries()] == ["a_gallery", "b-gallery"]
    again = db.gallery("b-gallery")
    assert (again.dim, again.model, again.normalize) == (32, "m@1", True)
    assert again == b and "b-gallery" in db and "nope" not in db
    info = b.info()
    assert isinstance(info, visage.GalleryInfo)
    assert (info.name, info.dim, info.live, info.subjects) == ("b-gallery", 32, 0, 0)
    assert len(b) == 0
    db.drop_gallery("b-gallery")
    assert [g.name for g in db.galleries()] == ["a_gallery"]
    with pytest.raises(visage.NotFound) as e:
        db.gallery("b-gallery")
    assert str(e.value) == 'gallery "b-gallery" does not exist'
    assert e.value.code == "NOT_FOUND" and isinstance(e.value, LookupError)
    with pytest.raises(visage.NotFound, match='gallery "b-gallery" does not exist'):
        b.info()
    with pytest.raises(visage.NotFound, match='gallery "b-gallery" does not exist'):
        db.drop_gallery("b-gallery")


def test_error_classes_and_messages(db, rng):
    g = db.create_gallery("g", dim=16)
    with pytest.raises(visage.AlreadyExists) as e:
        db.create_gallery("g", dim=16)
    assert str(e.value) == 'gallery "g" already exists'
    with pytest.raises(visage.InvalidArgument) as e:
        db.create_gallery("bad name!")
    assert str(e.value) == (
        "invalid gallery name \"bad name!\": may hold only letters, digits, '_' and '-'"
    )
    assert isinstance(e.value, ValueError) and e.value.code == "INVALID_ARGUMENT"
    with pytest.raises(visage.InvalidArgument, match="dimension 20 is not a multiple of 16"):
        db.create_gallery("odd", dim=20)
    x, subjects, _ = people(rng, 4, 3, 16)
    ids = g.add(x, subjects)
    # A threshold that needs a head the gallery does not have.
    with pytest.raises(visage.FailedPrecondition) as e:
        g.identify(x[:2], min_probability=0.5)
    assert 'gallery "g" has no trained head: min_probability needs one' in str(e.value)
    with pytest.raises(visage.FailedPrecondition, match="has no trained head"):
        g.verify(x[:1], x[1:2], min_probability=0.5)
    # Unknown ids and subjects in verify.
    with pytest.raises(visage.NotFound, match="no embedding with id 999"):
        g.verify(x[:1], [999], max_distance=1.0)
    with pytest.raises(visage.NotFound, match='no embedding of subject "nobody"'):
        g.verify(x[:1], "nobody", max_distance=1.0)
    # k out of range.
    with pytest.raises(visage.InvalidArgument, match="^k must be at least 1$"):
        g.search(x[:1], 0)
    with pytest.raises(visage.InvalidArgument, match="^k: 10001 exceeds the limit of 10000$"):
        g.search(x[:1], 10_001)
    assert len(g) == len(ids)


# ------------------------------------------------------------ add and ids


def test_add_given_and_assigned_ids(opener, rng):
    db = opener.open()
    g = db.create_gallery("ids", dim=16)
    x = rng.standard_normal((30, 16)).astype(np.float32)
    got = g.add(x[:10], "alice", ids=np.arange(100, 110))
    assert got.dtype == np.uint64 and got.tolist() == list(range(100, 110))
    auto = g.add(x[10:20], [f"s{i}" for i in range(10)])
    assert auto.dtype == np.uint64 and len(set(auto.tolist())) == 10
    assert auto.min() > 109, "assigned ids are above every id the gallery has held"
    # Python ints and lists are fine as ids; 1-D vectors are one row.
    assert g.add(x[20], "bob", ids=[5]).tolist() == [5]
    auto2 = g.add(x[21:25], "carol")
    assert auto2.min() > auto.max()
    assert len(g) == 25
    vec, subj, back = g.get(np.concatenate([auto2, np.array([123456], dtype=np.uint64)]))
    assert back.tolist() == auto2.tolist() and subj == ["carol"] * 4
    np.testing.assert_array_equal(vec, x[21:25])
    # Remove all, compact, reopen (a restart for the server): never reused.
    highest = int(auto2.max())
    assert g.remove(subjects=["alice", "bob", "carol"]) == 15
    assert g.remove(ids=auto) == 10
    assert len(g) == 0
    g.compact()
    db = opener.reopen(db)
    g = db.gallery("ids")
    assert len(g) == 0
    after = g.add(x[25:30], "dave")
    assert after.min() > highest, (after, highest)
    # An upsert by id replaces the row.
    g.add(x[0], "erin", ids=[int(after[0])])
    assert len(g) == 5
    assert g.get([int(after[0])])[1] == ["erin"]


def test_add_splits_into_batches_with_progress(db, rng, capsys):
    g = db.create_gallery("batches", dim=16)
    x = rng.standard_normal((1000, 16)).astype(np.float32)
    ids = g.add(x, [f"s{i % 97}" for i in range(1000)], batch_size=64, progress=True)
    err = capsys.readouterr().err
    assert "1000/1000" in err and "rows" in err, err
    assert len(ids) == 1000 and len(set(ids.tolist())) == 1000
    # Each batch's ids ascend in row order (batches in flight together on
    # a server may be assigned in either order).
    for start in range(0, 1000, 64):
        part = ids[start : start + 64].astype(np.int64)
        assert np.all(np.diff(part) == 1), part
    assert len(g) == 1000
    D, I = g.search(x[:5], 1)
    assert I[:, 0].tolist() == ids[:5].tolist()
    with pytest.raises(visage.InvalidArgument, match="batch_size must be from 1 to 100000"):
        g.add(x, "s", batch_size=100_001)


def test_a_later_batch_failing_reports_the_committed_rows(db, rng):
    g = db.create_gallery("partial", dim=16)
    backend = db._backend
    real = backend.insert_async
    calls = []

    class Failed:
        def done(self):
            return True

        def result(self):
            raise errors.Unavailable("the server is shutting down")

    def flaky(*args):
        calls.append(1)
        return Failed() if len(calls) == 3 else real(*args)

    backend.insert_async = flaky
    try:
        x = rng.standard_normal((100, 16)).astype(np.float32)
        with pytest.raises(visage.Unavailable) as e:
            g.add(x, "s", batch_size=20)
    finally:
        del backend.insert_async
    # Batches 1-2 committed, 3 failed, none after were sent (or all
    # were waited for, in the remote pipeline).
    c = e.value.committed_rows
    assert c is not None and c >= 40 and c % 20 == 0 and c < 100
    assert f"{c} of 100 rows were committed" in str(e.value)
    assert "the server is shutting down" in str(e.value)
    assert len(g) == c


BAD_INPUTS = [
    ("float16", lambda x: x.astype(np.float16), TypeError,
     "vectors must be a float32 numpy array of shape (N, 16) (float64 is converted), "
     "got a float16 array of shape (8, 16); use np.ascontiguousarray(vectors, dtype=np.float32)"),
    ("int", lambda x: (x * 10).astype(np.int32), TypeError, "got a int32 array of shape (8, 16)"),
    ("wrong D", lambda x: np.ascontiguousarray(x[:, :15]), visage.InvalidArgument,
     "vectors: expected 16 values a row (the gallery's dimension), got an array of shape (8, 15)"),
    ("non-contiguous", lambda x: np.repeat(x, 2, axis=1)[:, ::2], visage.InvalidArgument,
     "vectors must be C-contiguous (row-major); got a strided array of shape (8, 16); "
     "use np.ascontiguousarray(vectors, dtype=np.float32)"),
    ("Fortran order", lambda x: np.asfortranarray(x), visage.InvalidArgument,
     "got a Fortran-order array of shape (8, 16)"),
    ("NaN", lambda x: _put(x, 5, 3, np.nan), visage.InvalidArgument,
     "vectors[5]: value 3 is NaN (every value must be finite)"),
    ("inf", lambda x: _put(x, 7, 0, -np.inf), visage.InvalidArgument,
     "vectors[7]: value 0 is -inf (every value must be finite)"),
    ("3-D", lambda x: x.reshape(2, 4, 16), visage.InvalidArgument,
     "vectors must be a 2-D array of shape (N, 16) (or 1-D for one vector), "
     "got a 3-D array of shape (2, 4, 16)"),
    ("1-D wrong length", lambda x: x[0, :10].copy(), visage.InvalidArgument,
     "a 1-D array is one vector of 16 values"),
]


def _put(x, i, j, v):
    y = x.copy()
    y[i, j] = v
    return y


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_arrays_are_refused_and_change_nothing(db, rng, case):
    _, make, cls, message = case
    g = db.create_gallery("bad", dim=16)
    good = rng.standard_normal((8, 16)).astype(np.float32)
    g.add(good, "before")
    before = g.info()
    bad = make(good)
    with pytest.raises(cls) as e:
        g.add(bad, "x")
    assert message in str(e.value), str(e.value)
    # The same check guards every entry point that takes vectors.
    with pytest.raises(cls):
        g.search(bad, 1)
    after = g.info()
    assert (after.live, after.deleted, len(g)) == (before.live, before.deleted, 8)


def test_bad_rows_late_in_a_large_add_change_nothing(db, rng):
    g = db.create_gallery("late", dim=16)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    x[480, 2] = np.inf
    with pytest.raises(visage.InvalidArgument, match=r"vectors\[480\]: value 2 is inf"):
        g.add(x, "s", batch_size=50)
    assert len(g) == 0
    x[480, 2] = 0
    subjects = ["s"] * 500
    subjects[450] = ""
    with pytest.raises(visage.InvalidArgument, match=r"^subjects\[450\]: is empty$"):
        g.add(x, subjects, batch_size=50)
    subjects[450] = "bad\nname"
    with pytest.raises(visage.InvalidArgument, match=r"subjects\[450\]: holds control character"):
        g.add(x, subjects, batch_size=50)
    ids = np.arange(500, dtype=np.uint64)
    ids[499] = 7
    with pytest.raises(visage.InvalidArgument) as e:
        g.add(x, "s", ids=ids, batch_size=50)
    assert str(e.value) == "ids[499]: id 7 already appears at ids[7] of the same batch"
    with pytest.raises(visage.InvalidArgument, match=r"ids\[3\]: -1 is negative"):
        g.add(x[:4], "s", ids=[1, 2, 3, -1])
    with pytest.raises(visage.InvalidArgument, match="ids: 3 ids for 4 rows"):
        g.add(x[:4], "s", ids=[1, 2, 3])
    with pytest.raises(TypeError, match="ids must be integers"):
        g.add(x[:2], "s", ids=np.array([1.0, 2.0]))
    with pytest.raises(visage.InvalidArgument, match="subjects: 3 subjects for 4 rows"):
        g.add(x[:4], ["a", "b", "c"])
    assert len(g) == 0


def test_zero_vector_in_a_normalising_gallery(db, rng):
    g = db.create_gallery("cos", dim=16, normalize=True)
    x = rng.standard_normal((4, 16)).astype(np.float32)
    x[2] = 0
    with pytest.raises(visage.InvalidArgument, match=r"vectors\[2\]: is a zero vector"):
        g.add(x, "s")
    assert len(g) == 0
    x[2] = 1
    ids = g.add(x, "s")
    vec, _, _ = g.get(ids)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, rtol=1e-5)
    D, I, S = g.search(x[:2], 2, with_subjects=True)
    assert I[:, 0].tolist() == ids[:2].tolist()
    v = g.verify(x[0], x[0] * 3.0, max_distance=0.01)
    assert bool(v.verified[0]) and abs(float(v.similarity[0]) - 1.0) < 1e-5


def test_float64_is_converted_once(db, rng):
    g = db.create_gallery("f64", dim=16)
    x64 = rng.standard_normal((50, 16))
    ids = g.add(x64, "s")
    x32 = x64.astype(np.float32)
    D64, I64 = g.search(x64[:5], 3)
    D32, I32 = g.search(x32[:5], 3)
    np.testing.assert_array_equal(I64, I32)
    np.testing.assert_array_equal(D64, D32)
    assert D64.dtype == np.float32 and I64.dtype == np.uint64
    # A non-contiguous float64 array is fine too: it is copied anyway.
    D, I = g.search(np.asfortranarray(x64[:5]), 3)
    np.testing.assert_array_equal(I, I32)
    vec, _, _ = g.get(ids[:3])
    np.testing.assert_array_equal(vec, x32[:3])
    # A list of lists (float64) also works.
    D, I = g.search(x64[:2].tolist(), 3)
    np.testing.assert_array_equal(I, I32[:2])


# ------------------------------------------------------------ search


def test_search_is_exact_against_brute_force(db, rng):
    g = db.create_gallery("exact", dim=32)
    x = rng.standard_normal((400, 32)).astype(np.float32)
    # Ties: the same vector under several ids (ranked by ascending id).
    x[100:110] = x[7]
    ids = np.arange(1000, 1400, dtype=np.uint64)[::-1].copy()
    g.add(x, [f"s{i % 13}" for i in range(400)], ids=ids)
    q = np.concatenate([rng.standard_normal((30, 32)).astype(np.float32), x[[7, 3]]])
    for k in (1, 10, 50):
        D, I = g.search(q, k)
        assert D.shape == (32, k) and I.shape == (32, k)
        bD, bI = brute_search(x, ids, q, k)
        np.testing.assert_array_equal(I, bI)
        np.testing.assert_allclose(D, bD, rtol=1e-4, atol=1e-4)
    D, I = g.search(x[7], 11)
    assert sorted(ids[[7] + list(range(100, 110))].tolist()) == I[0].tolist()
    # Subjects come with the hits.
    D, I, S = g.search(q[:3], 4, with_subjects=True)
    by_id = {int(i): f"s{n % 13}" for n, i in enumerate(ids)}
    assert S.shape == (3, 4) and S.dtype == object
    assert S.tolist() == [[by_id[int(i)] for i in row] for row in I]
    # The quantised-first scan gives exact distances of what it finds.
    Dq, Iq = g.search(q, 10, exact=False)
    bD, bI = brute_search(x, ids, q, 10)
    assert (Iq == bI).mean() > 0.9


def test_search_pads_rows_with_fewer_than_k_hits(db, rng):
    g = db.create_gallery("pad", dim=16)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    ids = g.add(x, ["a", "b", "c"])
    D, I, S = g.search(x, 5, with_subjects=True)
    assert D.shape == (3, 5)
    assert np.isinf(D[:, 3:]).all() and np.isfinite(D[:, :3]).all()
    assert (I[:, 3:] == 0).all() and set(I[:, :3].ravel().tolist()) == set(ids.tolist())
    assert (S[:, 3:] == "").all()
    # max_distance drops far hits, padded the same way.
    D, I = g.search(x, 3, max_distance=0.0)
    assert I[:, 0].tolist() == ids.tolist() and (I[:, 1:] == 0).all()
    assert (D[:, 0] == 0).all() and np.isinf(D[:, 1:]).all()
    # An empty gallery: all padding. No probes: empty results.
    e = db.create_gallery("empty", dim=16)
    D, I = e.search(x[:2], 2)
    assert np.isinf(D).all() and (I == 0).all()
    D, I = g.search(np.zeros((0, 16), dtype=np.float32), 4)
    assert D.shape == (0, 4) and I.shape == (0, 4)


def test_tolerance_is_plain_l2(db, rng):
    g = db.create_gallery("tol", dim=16)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    ids = g.add(x, "s")
    q = x[:10] + 0.1 * rng.standard_normal((10, 16)).astype(np.float32)
    t = 1.5
    D1, I1 = g.search(q, 20, tolerance=t)
    D2, I2 = g.search(q, 20, max_distance=t * t)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)
    d = sq_l2(q, x)
    for r in range(10):
        within = int((d[r] <= t * t).sum())
        assert int(np.isfinite(D1[r]).sum()) == min(20, within)
    with pytest.raises(visage.InvalidArgument, match="not both"):
        g.search(q, 1, tolerance=0.6, max_distance=0.36)
    with pytest.raises(visage.InvalidArgument, match="tolerance must be a finite L2 distance"):
        g.search(q, 1, tolerance=-1)
    with pytest.raises(visage.InvalidArgument, match="max_distance must be a finite"):
        g.search(q, 1, max_distance=float("nan"))
    v1 = g.verify(q, ids[:10], tolerance=t)
    v2 = g.verify(q, ids[:10], max_distance=t * t)
    np.testing.assert_array_equal(v1.verified, v2.verified)
    np.testing.assert_array_equal(v1.threshold, np.float32(t * t))
    i1 = g.identify(q, 2, tolerance=0.3)
    i2 = g.identify(q, 2, max_distance=0.09)
    np.testing.assert_array_equal(i1.known, i2.known)


# ------------------------------------------------------------ identify, verify


def test_identify_against_brute_force(db, rng):
    g = db.create_gallery("who", dim=16)
    x, subjects, centres = people(rng, 20, 4, 16)
    ids = g.add(x, subjects)
    subj = np.array(subjects, dtype=object)
    probes = np.concatenate(
        [centres[:6] + 0.01, rng.standard_normal((3, 16)).astype(np.float32) * 5]
    ).astype(np.float32)
    k = 3
    r = g.identify(probes, k, max_distance=0.5)
    assert isinstance(r, visage.Identification) and len(r) == 9
    d = sq_l2(probes, x)
    for p in range(len(probes)):
        # The k best distinct subjects by (distance, id) of their best image.
        best = {}
        for j in np.lexsort((ids, d[p])):
            best.setdefault(subj[j], (d[p, j], int(ids[j])))
        top = sorted(best.items(), key=lambda kv: kv[1])[:k]
        assert r.candidate_subjects[p].tolist() == [s for s, _ in top]
        assert r.candidate_ids[p].tolist() == [i for _, (_, i) in top]
        np.testing.assert_allclose(r.candidate_distances[p], [dd for _, (dd, _) in top],
                                   rtol=1e-4, atol=1e-4)
        known = top[0][1][0] <= 0.5
        assert bool(r.known[p]) == known
        assert r.subject[p] == (top[0][0] if known else None)
        assert r.distance[p] == r.candidate_distances[p, 0]
    assert r.known[:6].all() and not r.known[6:].any()
    assert np.isnan(r.probability).all() and np.isnan(r.candidate_probabilities).all()
    assert r.candidate_ids.dtype == np.uint64 and r.known.dtype == np.bool_
    assert r.candidate_distances.dtype == np.float32
    # More candidates than subjects: padded with "", 0, +inf, NaN.
    r = g.identify(probes[:2], 25, max_distance=0.5)
    assert (r.candidate_subjects[:, 20:] == "").all()
    assert (r.candidate_ids[:, 20:] == 0).all()
    assert np.isinf(r.candidate_distances[:, 20:]).all()
    assert np.isnan(r.candidate_probabilities[:, 20:]).all()


def test_verify_against_numpy(db, rng):
    g = db.create_gallery("one", dim=16)
    x, subjects, centres = people(rng, 10, 3, 16)
    ids = g.add(x, subjects)
    a = centres[:4] + 0.01
    t = 0.5
    d = sq_l2(a, x)
    # b: vectors.
    v = g.verify(a, x[[0, 3, 6, 29]], max_distance=t)
    assert isinstance(v, visage.Verification) and len(v) == 4
    exp = d[np.arange(4), [0, 3, 6, 29]]
    np.testing.assert_allclose(v.distance, exp, rtol=1e-4, atol=1e-5)
    assert v.verified.tolist() == (exp <= t).tolist() == [True, True, True, False]
    assert v.rule.tolist() == ["distance"] * 4
    assert v.threshold.tolist() == [np.float32(t)] * 4
    assert (v.matched_id == 0).all() and np.isnan(v.probability).all()
    assert np.isnan(v.similarity).all()
    # b: ids (a numpy array or a list).
    v = g.verify(a, ids[[0, 3, 6, 29]], max_distance=t)
    assert v.matched_id.tolist() == ids[[0, 3, 6, 29]].tolist()
    np.testing.assert_allclose(v.distance, exp, rtol=1e-4, atol=1e-5)
    v2 = g.verify(a, [int(i) for i in ids[[0, 3, 6, 29]]], max_distance=t)
    np.testing.assert_array_equal(v2.distance, v.distance)
    # b: one subject for every row; the best of its images is reported.
    v = g.verify(a, "p0000", max_distance=t)
    best = d[:, 0:3].min(axis=1)
    np.testing.assert_allclose(v.distance, best, rtol=1e-4, atol=1e-5)
    assert v.verified.tolist() == [True, False, False, False]
    assert v.matched_id[0] == ids[int(np.argmin(d[0, 0:3]))]
    # b: a subject per row.
    v = g.verify(a, ["p0000", "p0001", "p0002", "p0000"], max_distance=t)
    assert v.verified.tolist() == [True, True, True, False]
    # b: one vector for every row, 1-D in and out.
    v = g.verify(a[0], x[0], max_distance=t)
    assert len(v) == 1 and bool(v.verified[0])
    with pytest.raises(visage.InvalidArgument, match="b: 2 ids for 4 rows of a"):
        g.verify(a, ids[:2], max_distance=t)


def test_head_training_and_probabilities(db, rng):
    g = db.create_gallery("head", dim=16)
    x, subjects, centres = people(rng, 60, 5, 16, spread=0.3)
    g.add(x, subjects)
    h0 = g.head()
    assert isinstance(h0, visage.HeadInfo) and not h0.trained
    assert h0.current_subjects == 60
    h = g.train_head(target_far=0.01, max_pairs=5000, seed=7)
    assert h.trained and h.target_far == pytest.approx(0.01)
    assert h.seed == 7 and h.weights.shape == (16,) and h.weights.dtype == np.float32
    assert 0.0 < h.threshold < 1.0 and h.probability_calibrated and h.calibration_current
    assert h.prior == 0.5 and h.pairs > 0
    h2 = g.head()
    assert (h2.threshold, h2.distance_threshold, h2.auc) == (h.threshold, h.distance_threshold, h.auc)
    assert g.info().head_trained
    probes = centres[:3] + 0.05
    r = g.identify(probes, 2)
    assert np.isfinite(r.probability).all()
    assert np.isfinite(r.candidate_probabilities).all()
    v = g.verify(probes, ["p0000", "p0001", "p0002"])
    assert set(v.rule.tolist()) <= {"probability", "mean_probability"}
    assert np.isfinite(v.probability).all()
    v = g.verify(probes, x[[0, 5, 10]], min_probability=0.5)
    assert v.rule.tolist() == ["probability"] * 3
    assert (v.threshold == np.float32(0.5)).all()
    assert v.verified.tolist() == (v.probability >= 0.5).tolist()
    with pytest.raises(visage.InvalidArgument, match=r"target_far must be in \(0, 1\)"):
        g.train_head(target_far=0)
    with pytest.raises(visage.InvalidArgument, match="max_pairs must be from 100"):
        g.train_head(max_pairs=10)
    few = db.create_gallery("few", dim=16)
    few.add(x[:5], "only-one")
    with pytest.raises(visage.InvalidArgument):
        few.train_head()


def test_remove_by_id_and_subject(db, rng):
    g = db.create_gallery("rm", dim=16)
    x, subjects, _ = people(rng, 5, 4, 16)
    ids = g.add(x, subjects)
    assert g.remove(ids=ids[:2]) == 2
    assert g.remove(ids=ids[:2]) == 0
    assert g.remove(subjects="p0001") == 4
    assert g.remove(ids=[ids[19]], subjects=["p0004"]) == 4
    assert len(g) == 10
    assert g.remove() == 0
    info = g.info()
    assert (info.live, info.subjects) == (10, 3)
    g.flush()
    g.compact()
    info = g.info()
    assert (info.live, info.deleted) == (10, 0)
    _, s, got = g.get(ids)
    assert got.tolist() == ids[2:4].tolist() + ids[8:16].tolist()


# ------------------------------------------------------------ lifecycle, threads


def test_close_and_context_manager(opener):
    with opener.open() as db:
        g = db.create_gallery("c", dim=16)
        assert not db.closed
    assert db.closed
    with pytest.raises(visage.Closed, match="is closed"):
        db.galleries()
    with pytest.raises(visage.Closed, match="is closed"):
        g.search(np.zeros((1, 16), dtype=np.float32), 1)
    db.close()  # idempotent
    db2 = opener.reopen(db)
    assert [x.name for x in db2.galleries()] == ["c"]


def test_threads_search_concurrently(db, rng):
    g = db.create_gallery("threads", dim=32)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    ids = g.add(x, [f"s{i % 50}" for i in range(3000)])
    qs = [rng.standard_normal((20, 32)).astype(np.float32) for _ in range(8)]
    expected = [brute_search(x, ids, q, 5)[1] for q in qs]
    results = [None] * 8
    failures = []
    start = threading.Barrier(8)

    def work(i):
        try:
            start.wait()
            for _ in range(5):
                D, I = g.search(qs[i], 5)
                np.testing.assert_array_equal(I, expected[i])
            results[i] = I
        except BaseException as e:  # noqa: BLE001
            failures.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not failures, failures
    assert all(r is not None for r in results)

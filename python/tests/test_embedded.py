"""What only the embedded mode has: the GIL released during engine calls,
and the data directory's lock."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import visage


def test_the_gil_is_released_during_a_search(tmp_path):
    """A Python thread keeps running while one long search runs in another:
    with the GIL held for the call it could not advance at all."""
    rng = np.random.default_rng(3)
    with visage.open(tmp_path / "data") as db:
        g = db.create_gallery("gil", dim=128)
        x = rng.standard_normal((100_000, 128)).astype(np.float32)
        g.add(x, "s", batch_size=50_000)
        ticks = [0]
        stop = threading.Event()

        def ticker():
            while not stop.is_set():
                ticks[0] += 1
                time.sleep(0.001)

        t = threading.Thread(target=ticker, daemon=True)
        t.start()
        try:
            n = 64
            while True:
                probes = rng.standard_normal((n, 128)).astype(np.float32)
                before = ticks[0]
                start = time.perf_counter()
                D, I = g.search(probes, 10)
                took = time.perf_counter() - start
                advanced = ticks[0] - before
                # Judge only a search long enough that a free thread ticks
                # many times; grow the batch until one is.
                if took > 0.1 or n >= 10_000:
                    break
                n = min(10_000, n * 4)
        finally:
            stop.set()
            t.join()
        assert took > 0.1, f"a search of {n} probes took only {took:.3f} s"
        assert advanced >= 3, f"the ticker advanced {advanced} times in a {took:.3f} s search"
        assert D.shape == (n, 10)


def test_the_directory_is_locked(tmp_path):
    with visage.open(tmp_path / "data"):
        with pytest.raises(visage.FailedPrecondition, match="is locked by another process"):
            visage.open(tmp_path / "data")
    # Closing released it.
    visage.open(tmp_path / "data").close()


def test_calls_in_flight_finish_before_close(tmp_path):
    rng = np.random.default_rng(4)
    db = visage.open(tmp_path / "data")
    g = db.create_gallery("c", dim=64)
    x = rng.standard_normal((20_000, 64)).astype(np.float32)
    g.add(x, "s")
    results = []
    errors = []
    started = threading.Event()

    def search():
        started.set()
        for _ in range(50):
            try:
                results.append(g.search(x[:200], 5)[1])
            except visage.Closed as e:
                errors.append(e)
                return

    t = threading.Thread(target=search)
    t.start()
    started.wait()
    db.close()
    t.join()
    # Every search either finished with full results or saw Closed.
    assert all(r.shape == (200, 5) for r in results)
    assert len(results) + len(errors) >= 1

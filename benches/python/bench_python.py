"""The Python package beside its Rust peers, on the same data in the same run.

    bash benches/python/run-python-bench.sh [--rows 1000000] [--search-rows 100000] [--runs 3]

Measures, alternating the two sides of each comparison run by run and
reporting medians:

1. Insert of --rows embeddings over loopback into a fresh gallery of a
   release visage-server: the package's ``Gallery.add`` (ids assigned by the
   gallery) against the Rust client (``peer client-insert``: the same batches,
   the same requests in flight).
2. Search of --probes probes (one call, k = 10) at --search-rows rows on the
   same server: ``Gallery.search`` against the Rust client.
3. The same search with the engine embedded: ``visage.open`` in Python
   against the engine in a Rust process (``peer engine-search``) on the same
   data directory.
4. gRPC insert as a whole (the Rust client's rate of 1.) against the engine's
   durable insert in-process (``peer engine-insert``, the same batches).

The data are face-like: ten noisy views of each of rows / 10 identities.
Prints a table and one JSON line with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import visage

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "target" / "release"


def face_like(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    ids = max(1, n // 10)
    centres = rng.standard_normal((ids, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, 10, axis=0)[:n]
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(0.35 / np.sqrt(dim))
    return np.ascontiguousarray(x, dtype=np.float32)


class ServerProc:
    def __init__(self, data: Path) -> None:
        self.proc = subprocess.Popen(
            [str(RELEASE / "visage-server"), "--data-dir", str(data), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        prefix = "visage-server listening on "
        if not line.startswith(prefix):
            raise SystemExit(f"unexpected server output {line!r}")
        self.addr = line[len(prefix):]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        if self.proc.wait(timeout=120) != 0:
            raise SystemExit(f"server exited with {self.proc.returncode}")


def peer(*args: str) -> dict:
    out = subprocess.run(
        [str(RELEASE / "peer"), *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(xs: list) -> float:
    return float(statistics.median(xs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--search-rows", type=int, default=100_000)
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=10_000, help="rows per insert request, both sides")
    ap.add_argument("-k", type=int, default=10)
    a = ap.parse_args()

    rng = np.random.default_rng(7)
    base = face_like(rng, a.rows, a.dim)
    probes = face_like(np.random.default_rng(8), a.probes * 10, a.dim)[::10].copy()
    subjects = [f"s{i // 10}" for i in range(a.rows)]
    tmp = Path(tempfile.mkdtemp(prefix="visage-pybench-"))
    np.save(tmp / "base.npy", base)
    np.save(tmp / "search-base.npy", base[: a.search_rows])
    np.save(tmp / "probes.npy", probes)
    res: dict = {"rows": a.rows, "search_rows": a.search_rows, "probes": a.probes, "dim": a.dim}

    # 1, 4: inserts over loopback, and the engine in-process.
    server = ServerProc(tmp / "served")
    db = visage.connect(server.addr)
    py_ins, rs_ins, eng_ins = [], [], []
    for run in range(a.runs):
        g = db.create_gallery(f"py{run}", dim=a.dim)
        t = time.perf_counter()
        ids = g.add(base, subjects, batch_size=a.batch)
        py_ins.append(a.rows / (time.perf_counter() - t))
        assert len(ids) == a.rows
        db.drop_gallery(f"py{run}")
        db.create_gallery(f"rs{run}", dim=a.dim)
        r = peer("client-insert", "--server", server.addr, "--gallery", f"rs{run}",
                 "--vectors", str(tmp / "base.npy"), "--batch", str(a.batch), "--concurrency", "4")
        rs_ins.append(r["per_second"])
        db.drop_gallery(f"rs{run}")
        e = peer("engine-insert", "--data-dir", str(tmp / f"engine{run}"), "--gallery", "g",
                 "--vectors", str(tmp / "base.npy"), "--batch", str(a.batch))
        eng_ins.append(e["per_second"])
        subprocess.run(["rm", "-rf", str(tmp / f"engine{run}")], check=True)
        print(f"insert run {run}: python {py_ins[-1]:,.0f}/s, rust client {rs_ins[-1]:,.0f}/s, "
              f"engine in-process {eng_ins[-1]:,.0f}/s", file=sys.stderr)

    # 2: search at search_rows over loopback.
    g = db.create_gallery("search", dim=a.dim)
    g.add(base[: a.search_rows], subjects[: a.search_rows], batch_size=a.batch)
    g.flush()
    py_s, rs_s = [], []
    for run in range(a.runs):
        t = time.perf_counter()
        D, I = g.search(probes, a.k)
        py_s.append(a.probes / (time.perf_counter() - t))
        assert D.shape == (a.probes, a.k)
        r = peer("client-search", "--server", server.addr, "--gallery", "search",
                 "--probes", str(tmp / "probes.npy"), "-k", str(a.k), "--runs", "1")
        rs_s.append(r["per_second"])
    db.close()
    server.stop()

    # 3: the same search embedded: Python, then a Rust process, same directory.
    edir = tmp / "embedded"
    with visage.open(edir) as edb:
        eg = edb.create_gallery("search", dim=a.dim)
        eg.add(base[: a.search_rows], subjects[: a.search_rows], batch_size=a.batch)
        eg.flush()
    py_e, rs_e = [], []
    for run in range(a.runs):
        with visage.open(edir) as edb:
            eg = edb.gallery("search")
            eg.search(probes[:10], a.k)  # the segment's code statistics, as the peer's warm-up
            t = time.perf_counter()
            eg.search(probes, a.k)
            py_e.append(a.probes / (time.perf_counter() - t))
        r = peer("engine-search", "--data-dir", str(edir), "--gallery", "search",
                 "--probes", str(tmp / "probes.npy"), "-k", str(a.k), "--runs", "2")
        rs_e.append(r["probes"] / r["runs"][-1])
    subprocess.run(["rm", "-rf", str(tmp)], check=True)

    m = {k: median(v) for k, v in {
        "py_insert": py_ins, "rs_insert": rs_ins, "engine_insert": eng_ins,
        "py_search": py_s, "rs_search": rs_s, "py_embedded": py_e, "rs_embedded": rs_e,
    }.items()}
    res.update({"medians": m, "runs": {
        "py_insert": py_ins, "rs_insert": rs_ins, "engine_insert": eng_ins,
        "py_search": py_s, "rs_search": rs_s, "py_embedded": py_e, "rs_embedded": rs_e}})
    rows = [
        (f"insert {a.rows:,} over loopback (rows/s)", m["py_insert"], m["rs_insert"], "Python / Rust client", ">= 0.70"),
        (f"search {a.probes:,} probes at {a.search_rows:,} rows over loopback (probes/s)", m["py_search"], m["rs_search"], "Python / Rust client", ">= 0.80"),
        (f"search {a.probes:,} probes at {a.search_rows:,} rows, embedded (probes/s)", m["py_embedded"], m["rs_embedded"], "Python / Rust engine", ">= 0.90"),
        (f"insert {a.rows:,}: gRPC (Rust client) vs engine in-process, durable (rows/s)", m["rs_insert"], m["engine_insert"], "gRPC / in-process", ">= 0.60"),
    ]
    print(f"\n| measurement | this side | peer | ratio | target |\n|---|---|---|---|---|")
    for name, mine, other, label, target in rows:
        print(f"| {name} | {mine:,.0f} | {other:,.0f} | {mine / other:.2f} ({label}) | {target} |")
    print(json.dumps(res))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""visage beside faiss (and hnswlib) on the same data, in one run.

Run through run.sh, which makes the virtual environment and builds visage-bench:

    bash benches/harness/run.sh [--sizes 100000,1000000] [--hnsw] [--base B.npy --probes P.npy]

For each gallery size this script
  1. generates base.npy / probes.npy with `visage-bench gen` (or takes --base/--probes),
  2. runs `visage-bench search` in exact and sq8 modes (build, single-probe
     latency, a batch of probes in one call, resident memory, the batch's ids),
  3. runs faiss IndexFlatL2 in a separate process (so its resident memory is its
     own): build, single-probe latency at 1..cores threads, batch throughput at
     1..cores threads, each at its best thread count, and the exact neighbours,
  4. optionally (--hnsw) builds hnswlib (M = 32, ef_construction = 200) in a
     separate process and raises ef until recall@10 >= 0.99,
  5. scores every system's ids against exact neighbours (float64 distances,
     ties counted as hits),
and prints one markdown table (also written to --out), with the machine's
bounds from `visage-bench bounds` and how close each path gets to them.

Flop convention: a distance computed in the GEMM form |x|^2 + |q|^2 - 2 x.q
costs d multiply-adds = 2d flops (as BLAS counts); the norms are negligible.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def proc_status():
    """VmRSS and VmHWM of this process in bytes (Linux), else None."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                for key in ("VmRSS", "VmHWM"):
                    if line.startswith(key + ":"):
                        out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out.get("VmRSS"), out.get("VmHWM")


def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def percentile(sorted_vals, p):
    """Nearest-rank percentile (the same rule visage-bench uses)."""
    if not sorted_vals:
        return float("nan")
    import math

    rank = max(1, math.ceil(p * len(sorted_vals)))
    return sorted_vals[min(rank, len(sorted_vals)) - 1]


def time_single(search_one, n, warmup, budget):
    """Latencies (s) of search_one(i) for i < n, after `warmup` untimed calls."""
    for i in range(min(warmup, n)):
        search_one(i)
    lat = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        search_one(i)
        lat.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget:
            log(f"    single-probe budget of {budget} s reached after {len(lat)} probes")
            break
    lat.sort()
    return {
        "probes": len(lat),
        "p50_ms": percentile(lat, 0.50) * 1e3,
        "p99_ms": percentile(lat, 0.99) * 1e3,
        "mean_ms": statistics.fmean(lat) * 1e3,
    }


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- workers
# Each runs in its own process so its resident memory is measured alone.


def measure_faiss(faiss, index, xq, spec, batch_threads=None):
    """Single-probe latency of a faiss index at each thread count from 1 to the
    cores, and the batch of spec["batch"] probes in one call at each of
    batch_threads (default: the same counts), spec["batch_runs"] times each,
    or once if a run takes spec["repeat_under"] seconds or more.
    Returns (single by threads, best, batch by threads, best, the best batch's ids)."""
    k, nb = spec["k"], min(spec["batch"], len(xq))
    threads = list(range(1, cores() + 1))
    single = {}
    for th in threads:
        faiss.omp_set_num_threads(th)
        log(f"    faiss single probes, {th} thread(s)")
        single[th] = time_single(
            lambda i: index.search(xq[i : i + 1], k),
            min(spec["single"], len(xq)),
            spec["warmup"],
            spec["single_budget"],
        )
    best_single = min(threads, key=lambda th: single[th]["p50_ms"])

    batch = {}
    ids_at = {}
    for th in batch_threads or threads:
        faiss.omp_set_num_threads(th)
        log(f"    faiss batch of {nb}, {th} thread(s)")
        runs = []
        for _ in range(spec["batch_runs"]):
            t = time.perf_counter()
            _, ids = index.search(xq[:nb], k)
            runs.append(time.perf_counter() - t)
            if runs[0] >= spec.get("repeat_under", float("inf")):
                break
        med = statistics.median(runs)
        batch[th] = {"runs_secs": runs, "median_secs": med, "probes_per_sec": nb / med}
        ids_at[th] = ids
    best_batch = max(batch, key=lambda th: batch[th]["probes_per_sec"])
    return single, best_single, batch, best_batch, ids_at[best_batch]


def blas_pools():
    """The BLAS thread pools this process loaded (threadpoolctl), for the report."""
    try:
        from threadpoolctl import threadpool_info

        return [
            {key: i.get(key) for key in ("internal_api", "version", "architecture", "num_threads", "filepath")}
            for i in threadpool_info()
        ]
    except Exception as e:  # noqa: BLE001 - informational only
        return [{"error": str(e)}]


def faiss_worker(spec):
    import faiss
    import numpy as np

    rss_baseline, _ = proc_status()
    t = time.perf_counter()
    xb = np.ascontiguousarray(np.load(spec["base"], mmap_mode="r"), dtype=np.float32)
    xq = np.ascontiguousarray(np.load(spec["probes"]), dtype=np.float32)
    read_secs = time.perf_counter() - t
    n, d = xb.shape
    k, nb = spec["k"], min(spec["batch"], len(xq))

    t = time.perf_counter()
    index = faiss.IndexFlatL2(d)
    index.add(xb)
    build_secs = time.perf_counter() - t
    del xb
    hwm_reset = reset_hwm()

    single, best_single, batch, best_batch, ids = measure_faiss(faiss, index, xq, spec)
    np.save(spec["out_ids"], ids.astype(np.int64))
    rss, hwm = proc_status()

    # Candidates for the exact neighbours (untimed): twice k, re-scored in float64
    # by the parent, so float32 rounding in faiss cannot decide the truth.
    faiss.omp_set_num_threads(cores())
    _, cand = index.search(xq[:nb], min(2 * k, n))
    np.save(spec["out_candidates"], cand.astype(np.int64))

    blas = blas_pools()
    return {
        "engine": "faiss IndexFlatL2",
        "faiss_version": faiss.__version__,
        "numpy_version": np.__version__,
        "threadpools": blas,
        "rows": n,
        "read_secs": read_secs,
        "build_secs": build_secs,
        "single": {"by_threads": single, "best_threads": best_single, **single[best_single]},
        "batch": {"probes": nb, "by_threads": batch, "best_threads": best_batch, **batch[best_batch]},
        "memory": {
            "vm_rss_bytes": rss,
            "vm_hwm_bytes": hwm,
            "hwm_reset_after_build": hwm_reset,
            "interpreter_baseline_rss_bytes": rss_baseline,
        },
    }


def hnsw_worker(spec):
    import hnswlib
    import numpy as np

    xb = np.ascontiguousarray(np.load(spec["base"], mmap_mode="r"), dtype=np.float32)
    xq = np.ascontiguousarray(np.load(spec["probes"]), dtype=np.float32)
    kth = np.load(spec["truth_kth"])
    n, d = xb.shape
    k, nb, th = spec["k"], min(spec["batch"], len(xq)), cores()

    t = time.perf_counter()
    index = hnswlib.Index(space="l2", dim=d)  # squared L2, like faiss and visage
    index.init_index(max_elements=n, M=spec["M"], ef_construction=spec["ef_construction"], random_seed=100)
    index.add_items(xb, np.arange(n), num_threads=th)
    build_secs = time.perf_counter() - t
    log(f"    hnswlib built in {build_secs:.1f} s")
    del xb
    hwm_reset = reset_hwm()

    def recall(dist):
        # A result counts if it is as close as the k-th exact neighbour (ties are hits);
        # hnswlib's float32 distances, with a relative tolerance for their rounding.
        return float(np.mean(dist <= kth[:nb, None] * (1 + 1e-5) + 1e-7))

    sweep = []
    chosen = None
    for ef in spec["efs"]:
        if ef < k:
            continue
        index.set_ef(ef)
        t = time.perf_counter()
        _, dist = index.knn_query(xq[:nb], k=k, num_threads=th)
        secs = time.perf_counter() - t
        r = recall(dist)
        sweep.append({"ef": ef, "recall": r, "probes_per_sec": nb / secs})
        log(f"    ef {ef}: recall@{k} {r:.4f}, {nb / secs:.0f} probes/s")
        if r >= spec["target_recall"]:
            chosen = ef
            break
    reached = chosen is not None
    if chosen is None:
        chosen = max(sweep, key=lambda s: s["recall"])["ef"]
    index.set_ef(chosen)
    single = time_single(
        lambda i: index.knn_query(xq[i : i + 1], k=k, num_threads=1),
        min(spec["single"], len(xq)),
        spec["warmup"],
        spec["single_budget"],
    )
    runs = []
    for _ in range(spec["batch_runs"]):
        t = time.perf_counter()
        ids, _ = index.knn_query(xq[:nb], k=k, num_threads=th)
        runs.append(time.perf_counter() - t)
    med = statistics.median(runs)
    np.save(spec["out_ids"], ids.astype(np.int64))
    rss, hwm = proc_status()
    return {
        "engine": f"hnswlib (M={spec['M']}, ef_construction={spec['ef_construction']})",
        "hnswlib_version": getattr(hnswlib, "__version__", "?"),
        "rows": n,
        "build_secs": build_secs,
        "ef": chosen,
        "target_reached": reached,
        "sweep": sweep,
        "single": {"threads": 1, **single},
        "batch": {"probes": nb, "threads": th, "runs_secs": runs, "median_secs": med, "probes_per_sec": nb / med},
        "memory": {"vm_rss_bytes": rss, "vm_hwm_bytes": hwm, "hwm_reset_after_build": hwm_reset},
    }


# --------------------------------------------------------------------------- parent


def run(cmd, timeout, what):
    log(f"  {what}: {' '.join(str(c) for c in cmd)}")
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"{what} took longer than {timeout} s (raise --step-timeout)")
    if p.returncode != 0:
        sys.exit(f"{what} failed with exit code {p.returncode}")
    return p.stdout


def run_worker(kind, spec, workdir, timeout, script=__file__):
    """Run `script --worker kind` in a fresh Python process on spec; its result."""
    spec_path = workdir / f"{kind}-spec.json"
    out_path = workdir / f"{kind}-result.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    run(
        [sys.executable, str(script), "--worker", kind, "--spec", str(spec_path), "--result", str(out_path)],
        timeout,
        f"{kind} worker",
    )
    return json.loads(out_path.read_text())


class Truth:
    """Exact neighbours from faiss's 2k candidates, re-scored in float64."""

    def __init__(self, base_path, probes_path, candidates, k):
        import numpy as np

        self.np = np
        self.xb = np.load(base_path, mmap_mode="r")
        self.xq = np.load(probes_path)[: len(candidates)].astype(np.float64)
        self.k = k
        d = self.dist(candidates)
        d.sort(axis=1)
        self.kth = d[:, k - 1]

    def dist(self, ids):
        np = self.np
        ids = np.asarray(ids)
        valid = ids >= 0
        rows = self.xb[np.where(valid, ids, 0).ravel()].astype(np.float64).reshape(*ids.shape, -1)
        d = ((rows - self.xq[: len(ids), None, :]) ** 2).sum(axis=2)
        return np.where(valid, d, np.inf)

    def recall(self, ids):
        """Mean fraction of the k results within the k-th exact distance (ties are hits)."""
        np = self.np
        d = self.dist(ids)
        tol = self.kth[: len(ids), None] * 1e-6 + 1e-9
        return float(np.mean(d <= self.kth[: len(ids), None] + tol))

    def overlap(self, ids, ref):
        """Mean fraction of ids that are also in ref (plain id overlap)."""
        hits = [len(set(a) & set(b)) for a, b in zip(ids.tolist(), ref.tolist())]
        return sum(hits) / (len(hits) * self.k)


def last_level_cache_bytes():
    """Size of the largest CPU cache (Linux sysfs), or None."""
    best = None
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (d / "size").read_text().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            size = int(text.rstrip("KMG")) * mult
        except ValueError:
            continue
        best = max(best or 0, size)
    return best


def fmt(x, digits=3):
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if x != x:  # NaN
        return "—"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.{digits}g}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def mib(b):
    return None if b is None else b / 2**20


def machine_line(repo):
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except OSError:
        commit = "?"
    return cpu, cores(), load, commit


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", required=False, help="the visage-bench binary")
    ap.add_argument("--work", default="target/side-by-side", help="data and intermediate files")
    ap.add_argument("--out", default="target/side_by_side.md", help="also write the table here")
    ap.add_argument("--sizes", default="100000,1000000", help="gallery sizes to generate")
    ap.add_argument("--base", help="use this gallery .npy instead of generating (with --probes)")
    ap.add_argument("--probes", help="probe .npy to go with --base")
    ap.add_argument("--n-probes", type=int, default=1000, help="probes to generate")
    ap.add_argument("--dim", type=int, default=128, help="values per generated vector (128: dlib, FaceNet; 512: ArcFace)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1000, help="probes in the batch call")
    ap.add_argument("--batch-runs", type=int, default=3)
    ap.add_argument("--single", type=int, default=1000, help="probes timed one at a time")
    ap.add_argument("--single-budget", type=float, default=120, help="seconds per single-probe loop")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--modes", default="exact,sq8", help="visage scan modes")
    ap.add_argument("--reuse", action="store_true", help="reuse visage's data directory (load = reopen) instead of rebuilding")
    ap.add_argument("--hnsw", action="store_true", help="also hnswlib (M=32, ef_construction=200) at sizes <= --hnsw-max")
    ap.add_argument("--hnsw-max", type=int, default=100000)
    ap.add_argument("--target-recall", type=float, default=0.99)
    ap.add_argument("--bounds-bytes", type=int, default=1 << 30)
    ap.add_argument("--step-timeout", type=float, default=3600, help="seconds any one step may take")
    ap.add_argument("--worker", choices=["faiss", "hnsw"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        spec = json.loads(Path(a.spec).read_text())
        res = (faiss_worker if a.worker == "faiss" else hnsw_worker)(spec)
        Path(a.result).write_text(json.dumps(res, indent=1))
        return
    if not a.bench:
        ap.error("--bench is required")
    if bool(a.base) != bool(a.probes):
        ap.error("--base and --probes go together")

    import numpy as np

    repo = Path(__file__).resolve().parents[2]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    cpu, ncores, load0, commit = machine_line(repo)

    log("measuring the machine's bounds")
    bounds = json.loads(run([a.bench, "bounds", "--json", "--bytes", str(a.bounds_bytes)], a.step_timeout, "bounds"))
    bw = bounds["memory_read"]["bytes_per_sec"]
    peak = bounds["fma"]["flops_per_sec"]
    log(f"  memory read {bw / 1e9:.1f} GB/s, FMA peak {peak / 1e9:.0f} GFLOP/s ({bounds['fma']['isa']})")

    if a.base:
        datasets = [(Path(a.base), Path(a.probes))]
    else:
        datasets = []
        for n in [int(s) for s in a.sizes.split(",") if s.strip()]:
            d = work / (f"n{n}-p{a.n_probes}" + ("" if a.dim == 128 else f"-d{a.dim}"))
            b, p = d / "base.npy", d / "probes.npy"
            ok = False
            if b.exists() and p.exists():
                ok = np.load(b, mmap_mode="r").shape == (n, a.dim) and np.load(p, mmap_mode="r").shape == (a.n_probes, a.dim)
            if not ok:
                log(f"generating {n} embeddings and {a.n_probes} probes of {a.dim} values")
                run([a.bench, "gen", "--n", str(n), "--probes", str(a.n_probes), "--dim", str(a.dim), "--out", str(d)],
                    a.step_timeout, "gen")
            datasets.append((b, p))

    modes = [m for m in a.modes.split(",") if m]
    results = []
    for base, probes in datasets:
        n, dim = np.load(base, mmap_mode="r").shape
        nq = np.load(probes, mmap_mode="r").shape[0]
        nb = min(a.batch, nq)
        tag = work / (f"run-n{n}" + ("" if dim == 128 else f"-d{dim}"))
        tag.mkdir(parents=True, exist_ok=True)
        log(f"N = {n:,}: {base}")
        r = {"n": n, "dim": dim, "probes": nq, "batch": nb, "visage": {}}

        for i, mode in enumerate(modes):
            ids_path = tag / f"visage-{mode}-ids.npy"
            cmd = [a.bench, "search", "--base", base, "--probes", probes, "--k", a.k, "--mode", mode,
                   "--json", "--out-ids", ids_path, "--batch", nb, "--batch-runs", a.batch_runs,
                   "--single", a.single, "--single-budget", a.single_budget, "--warmup", a.warmup]
            if i == 0 and not a.reuse:
                cmd.append("--rebuild")
            out = run([str(c) for c in cmd], a.step_timeout, f"visage {mode}")
            v = json.loads(out.strip().splitlines()[-1])
            v["ids"] = np.load(ids_path)
            r["visage"][mode] = v
            log(f"    p50 {v['single']['p50_ms']:.2f} ms, batch {v['batch']['probes_per_sec']:.0f} probes/s")

        spec = {"base": str(base), "probes": str(probes), "k": a.k, "batch": nb, "batch_runs": a.batch_runs,
                "single": a.single, "single_budget": a.single_budget, "warmup": a.warmup,
                "out_ids": str(tag / "faiss-ids.npy"), "out_candidates": str(tag / "faiss-candidates.npy")}
        f = run_worker("faiss", spec, tag, a.step_timeout)
        f["ids"] = np.load(spec["out_ids"])
        r["faiss"] = f
        log(f"    faiss p50 {f['single']['p50_ms']:.2f} ms ({f['single']['best_threads']} thr), "
            f"batch {f['batch']['probes_per_sec']:.0f} probes/s ({f['batch']['best_threads']} thr)")

        truth = Truth(base, probes, np.load(spec["out_candidates"]), a.k)
        np.save(tag / "truth-kth.npy", truth.kth)
        for mode, v in r["visage"].items():
            v["recall"] = truth.recall(v["ids"])
            v["overlap_with_faiss"] = truth.overlap(v["ids"], f["ids"])
        f["recall"] = truth.recall(f["ids"])

        if a.hnsw and n <= a.hnsw_max:
            hspec = {"base": str(base), "probes": str(probes), "k": a.k, "batch": nb, "batch_runs": a.batch_runs,
                     "single": a.single, "single_budget": a.single_budget, "warmup": a.warmup,
                     "M": 32, "ef_construction": 200, "target_recall": a.target_recall,
                     "efs": [10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048],
                     "truth_kth": str(tag / "truth-kth.npy"), "out_ids": str(tag / "hnsw-ids.npy")}
            h = run_worker("hnsw", hspec, tag, a.step_timeout)
            h["recall"] = truth.recall(np.load(hspec["out_ids"]))
            r["hnsw"] = h
        results.append(r)

    md = report(results, bounds, a, cpu, ncores, load0, commit)
    print(md)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(md + "\n")
    log(f"table written to {a.out}")
    raw = work / "side_by_side.json"
    for r in results:
        for v in [*r["visage"].values(), r["faiss"], r.get("hnsw", {})]:
            v.pop("ids", None)
    raw.write_text(json.dumps({"bounds": bounds, "results": results}, indent=1, default=str))
    log(f"raw numbers in {raw}")


def report(results, bounds, a, cpu, ncores, load0, commit):
    bw = bounds["memory_read"]["bytes_per_sec"]
    peak = bounds["fma"]["flops_per_sec"]
    k = a.k
    f0 = results[0]["faiss"]
    def owner(path):
        path = (path or "").lower()
        return "faiss's " if "faiss" in path else "numpy's " if "numpy" in path else ""

    blas = "; ".join(
        f"{owner(t.get('filepath'))}{t.get('internal_api')} {t.get('version')} "
        f"({t.get('architecture')} kernel, {t.get('num_threads')} threads)"
        for t in f0.get("threadpools", [])
        if t.get("internal_api") in ("openblas", "mkl", "blis")
    ) or "?"
    lines = [
        f"## visage vs faiss: top-{k} by squared L2, {results[0]['dim']}-d float32",
        "",
        f"Machine: {cpu}, {ncores} cores, load average {load0:.2f} at the start. "
        f"visage {commit}; faiss-cpu {f0['faiss_version']}, numpy {f0['numpy_version']}; BLAS: {blas}.",
        "",
    ]
    modes = list(results[0]["visage"].keys())
    head = ["N", "metric", *[f"visage {m}" for m in modes], "faiss IndexFlatL2", *[f"{m} ÷ faiss" for m in modes]]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in results:
        n, nb, f, dim = r["n"], r["batch"], r["faiss"], r["dim"]
        vs = [r["visage"][m] for m in modes]
        single_floor_ms = {m: n * (dim if m == "sq8" else 4 * dim) / bw * 1e3 for m in modes}
        faiss_floor_ms = n * 4 * dim / bw * 1e3
        batch_ceiling = peak / (n * 2 * dim)  # probes/s at the FMA peak

        def row(metric, vals, fval, show_ratio=True, fmt_fn=fmt):
            cells = [f"{n:,}", metric, *[fmt_fn(x) for x in vals], fmt_fn(fval)]
            cells += [ratio(x, fval) if show_ratio and not isinstance(x, str) else "—" for x in vals]
            lines.append("| " + " | ".join(cells) + " |")

        build = [
            v["load"]["build_secs"] if v["load"]["kind"] == "built" else "(reopened)" if i == 0 else "(same dir)"
            for i, v in enumerate(vs)
        ]
        row("build (s): visage insert + compact, faiss add", build, f["build_secs"])
        row("open an existing directory (s)", [v["load"]["open_secs"] for v in vs], None, False)
        fs = f["single"]
        row(f"single probe p50 (ms) [faiss at {fs['best_threads']} thr]", [v["single"]["p50_ms"] for v in vs], fs["p50_ms"])
        row("single probe p99 (ms)", [v["single"]["p99_ms"] for v in vs], fs["p99_ms"])
        fb = f["batch"]
        row(f"batch of {nb:,} in one call (probes/s) [faiss at {fb['best_threads']} thr]",
            [v["batch"]["probes_per_sec"] for v in vs], fb["probes_per_sec"])
        row(f"recall@{k} vs exact (ties count)", [v["recall"] for v in vs], f["recall"], fmt_fn=lambda x: f"{x:.4f}")
        row("resident memory after the scans (MiB, VmRSS)", [mib(v["memory"]["vm_rss_bytes"]) for v in vs], mib(f["memory"]["vm_rss_bytes"]))
        row("resident ÷ mapped segment files (after the scans)",
            [f"{v['memory']['vm_rss_bytes'] / v['memory']['mapped_segment_bytes']:.2f}×" for v in vs], "—", False)
        row("single p50: % of the bandwidth floor",
            [f"{single_floor_ms[m] / v['single']['p50_ms'] * 100:.0f}% of {fmt(single_floor_ms[m])} ms" for m, v in zip(modes, vs)],
            f"{faiss_floor_ms / fs['p50_ms'] * 100:.0f}% of {fmt(faiss_floor_ms)} ms", False)
        row("batch: % of the FMA ceiling",
            [f"{v['batch']['probes_per_sec'] / batch_ceiling * 100:.0f}% of {fmt(batch_ceiling)}/s" for v in vs],
            f"{fb['probes_per_sec'] / batch_ceiling * 100:.0f}% of {fmt(batch_ceiling)}/s", False)
    lines += [
        "",
        "Ratios are visage ÷ faiss: below 1 is better for times and memory, above 1 for throughput and recall. "
        "Medians throughout; latency percentiles are nearest-rank over "
        f"{results[0]['visage'][modes[0]]['single']['probes']} probes searched one at a time after {a.warmup} warm-up searches.",
        "",
        f"Bounds measured in this run with all {bounds['memory_read']['threads']} cores: memory read "
        f"{bw / 1e9:.1f} GB/s (median of reads of a {bounds['memory_read']['bytes'] / 2**30:.2g} GiB buffer); "
        f"FMA peak {peak / 1e9:.0f} GFLOP/s ({bounds['fma']['isa']}, {bounds['fma']['threads']} threads).",
        f"- Single-probe floor = bytes that must be read once / bandwidth: N × {4 * results[0]['dim']} B (f32 vectors) for exact and faiss, "
        f"N × {results[0]['dim']} B (the 8-bit codes alone, re-rank not counted) for sq8. visage's exact mode screens the 8-bit codes "
        "and proves its answer from an error bound (re-ranking in f32), so it reads about a quarter of the f32 floor's "
        "bytes and can run above 100% of it.",
        f"- Batch ceiling = FMA peak / (N × 2·{results[0]['dim']} flops) probes/s: the GEMM form costs one multiply-add (2 flops) "
        "per dimension per (probe, vector) pair, as BLAS counts. Where the CPU has AVX-512 VNNI, visage's batches "
        "multiply the codes by signed-byte probe weights in integers (64 multiply-adds per instruction against 16 for "
        "f32 FMA), so they can pass this f32 ceiling.",
        "",
    ]
    notes = []
    for r in results:
        f = r["faiss"]
        by = f["single"]["by_threads"]
        bb = f["batch"]["by_threads"]
        notes.append(
            f"- N = {r['n']:,}: faiss single p50 by threads: "
            + ", ".join(f"{t}: {by[t]['p50_ms']:.2f} ms" for t in by)
            + "; batch by threads: "
            + ", ".join(f"{t}: {bb[t]['probes_per_sec']:.0f}/s" for t in bb)
            + ". visage ids ∩ faiss ids: "
            + ", ".join(f"{m} {v['overlap_with_faiss']:.4f}" for m, v in r["visage"].items())
            + f". Memory: visage segments mapped {mib(next(iter(r['visage'].values()))['memory']['mapped_segment_bytes']):.0f} MiB; "
            f"faiss's process held {mib(f['memory']['interpreter_baseline_rss_bytes']):.0f} MiB (Python, numpy, faiss) before loading data."
        )
    llc = last_level_cache_bytes()
    for r in results:
        if llc and r["n"] * 4 * r["dim"] <= llc:
            notes.append(
                f"- N = {r['n']:,}: the vectors ({r['n'] * 4 * r['dim'] / 2**20:.0f} MiB) fit in the "
                f"{llc / 2**20:.0f} MiB last-level cache, so repeated scans are not bound by memory "
                "bandwidth and the floor above does not hold (hence over 100%)."
            )
    lines += ["Details:", *notes]

    hn = [r for r in results if "hnsw" in r]
    if hn:
        lines += [
            "",
            f"### When an approximate index stops paying: hnswlib at recall@{k} ≥ {a.target_recall}",
            "",
            "| N | path | recall@10 | build (s) | single p50 (ms) | single p99 (ms) | batch (probes/s) | RSS (MiB) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        sweeps = []
        for r in hn:
            h = r["hnsw"]
            for m, v in r["visage"].items():
                b = v["load"]["build_secs"]
                lines.append(
                    f"| {r['n']:,} | visage {m} | {v['recall']:.4f} | {fmt(b)} | {fmt(v['single']['p50_ms'])} | "
                    f"{fmt(v['single']['p99_ms'])} | {fmt(v['batch']['probes_per_sec'])} | {fmt(mib(v['memory']['vm_rss_bytes']))} |"
                )
            f = r["faiss"]
            lines.append(
                f"| {r['n']:,} | faiss IndexFlatL2 | {f['recall']:.4f} | {fmt(f['build_secs'])} | {fmt(f['single']['p50_ms'])} | "
                f"{fmt(f['single']['p99_ms'])} | {fmt(f['batch']['probes_per_sec'])} | {fmt(mib(f['memory']['vm_rss_bytes']))} |"
            )
            flag = "" if h["target_reached"] else " (target not reached; best ef)"
            lines.append(
                f"| {r['n']:,} | hnswlib M=32, efC=200, ef={h['ef']}{flag} | {h['recall']:.4f} | {fmt(h['build_secs'])} | "
                f"{fmt(h['single']['p50_ms'])} | {fmt(h['single']['p99_ms'])} | {fmt(h['batch']['probes_per_sec'])} | "
                f"{fmt(mib(h['memory']['vm_rss_bytes']))} |"
            )
            sweeps.append(
                f"- hnswlib ef sweep at N = {r['n']:,} (recall@{k} @ batch probes/s, {h['batch']['threads']} threads): "
                + ", ".join(f"ef {s['ef']}: {s['recall']:.3f} @ {s['probes_per_sec']:.0f}/s" for s in h["sweep"])
                + "."
            )
        lines += ["", "hnswlib's single probes run on 1 thread, its batches on every core.", *sweeps]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

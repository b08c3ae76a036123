#!/usr/bin/env bash
# visage beside faiss (and hnswlib) on the same data, in one run: one table.
#
#   bash benches/harness/run.sh [--sizes 100000,1000000] [--hnsw] [--base B.npy --probes P.npy]
#                               [any other option of side_by_side.py: --help lists them]
#
# Makes (or reuses) the virtual environment target/bench-venv from
# benches/harness/requirements.txt, builds visage-bench in release (env.sh), then
# runs side_by_side.py. Progress goes to stderr; the table to stdout and to
# target/side_by_side.md. Run it on a quiet machine: it measures with every core.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bench_setup

bench_python "$root/benches/harness/side_by_side.py" \
    --bench "$bench" \
    --work "$target/side-by-side" \
    --out "$target/side_by_side.md" \
    "$@"

#!/usr/bin/env bash
# visage beside faiss (and hnswlib) on the same data, in one run: one table.
#
#   bash benches/harness/run.sh [--sizes 100000,1000000] [--hnsw] [--base B.npy --probes P.npy]
#                               [any other option of side_by_side.py: --help lists them]
#
# Makes (or reuses) the virtual environment target/bench-venv from
# benches/harness/requirements.txt, builds visage-bench in release, then runs
# side_by_side.py. Progress goes to stderr; the table to stdout and to
# target/side_by_side.md. Run it on a quiet machine: it measures with every core.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
venv=$target/bench-venv
req=$root/benches/harness/requirements.txt

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv" >&2
    python3 -m venv "$venv"
fi
if ! cmp -s "$req" "$venv/.installed-requirements.txt"; then
    echo "installing $req into $venv" >&2
    "$venv/bin/python" -m pip install --quiet -r "$req" >&2
    cp "$req" "$venv/.installed-requirements.txt"
fi

echo "building visage-bench (release)" >&2
cargo build --release --quiet -p visage-bench --bin visage-bench --manifest-path "$root/Cargo.toml" >&2

# Some machines set OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for old OpenBLAS builds;
# they slow faiss's BLAS path, so this run (and only it) goes without them. The
# report names the BLAS kernel faiss then used (threadpoolctl).
exec env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
    "$venv/bin/python" "$root/benches/harness/side_by_side.py" \
    --bench "$target/release/visage-bench" \
    --work "$target/side-by-side" \
    --out "$target/side_by_side.md" \
    "$@"

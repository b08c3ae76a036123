#!/usr/bin/env bash
# The engine's scoring head against scikit-learn on the same pairs.
#
#   bash benches/python/run-head-check.sh [path/to/head_eval]
#
# Without an argument, builds target/release/head_eval (under $CARGO_TARGET_DIR
# if set; cargo does nothing if it is up to date). Runs it on $SUBJECTS (default 1000) synthetic subjects per
# data set with --export into $OUT (default target/head-check), creates (or
# reuses) a virtual environment at $VENV (default target/venv-head) with
# benches/python/requirements.txt from the package registry (wheels only), and
# runs head_vs_sklearn.py on the export. Exits non-zero if any check fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin="${1:-}"
if [ -z "$bin" ]; then
    bin="${CARGO_TARGET_DIR:-target}/release/head_eval"
    cargo build --release --locked -p visage-bench --bin head_eval
fi
if [ ! -x "$bin" ]; then
    echo "run-head-check: no head_eval binary at $bin (build it: cargo build --release -p visage-bench --bin head_eval)" >&2
    exit 1
fi

venv="${VENV:-target/venv-head}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
    -r benches/python/requirements.txt

out="${OUT:-target/head-check}"
rm -rf "$out"
mkdir -p "$out"
"$bin" --subjects "${SUBJECTS:-1000}" --export "$out"
"$venv/bin/python" benches/python/head_vs_sklearn.py "$out"

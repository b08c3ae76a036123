#!/usr/bin/env bash
# The Python package beside the Rust client and engine (a benchmark, not a test).
#
#   bash benches/python/run-python-bench.sh [--rows N] [--search-rows N] [--runs R]
#
# Builds the release server and the `peer` tool, installs the package from
# ./python into a virtual environment at $VENV (default target/venv-pybench),
# then runs bench_python.py with the arguments given. Do not run it beside a
# build: both sides share the machine's cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -p visage-server
cargo build --release --locked -p visage-bench --bin peer
venv="${VENV:-target/venv-pybench}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check ./python
exec "$venv/bin/python" benches/python/bench_python.py "$@"

#!/usr/bin/env bash
# The scale benchmark (issue 18): exact search over tens of millions of
# generated faces on one machine, beside faiss, checked against a brute force.
#
#   bash benches/harness/scale.sh [--sizes 10000000,50000000] [--work DIR] [--sample 20]
#                                 [any other option of scale.py: --help lists them]
#
# Makes (or reuses) the virtual environment and builds visage-bench in release
# (env.sh, as run.sh), then runs scale.py. Progress goes to stderr; the tables
# to stdout and to target/scale.md; every number to scale.json in the work
# directory (default target/scale). Big: see benches/harness/README.md for the
# time and disk each size takes. Run it on a quiet machine.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bench_setup

# A run takes hours: it measures with its own copy of the binary, so that a
# build in the same target directory meanwhile cannot swap it mid-run.
bin=$(mktemp "$target/visage-bench-scale.XXXXXX")
trap 'rm -f "$bin"' EXIT
cp "$bench" "$bin" && chmod u+x "$bin"

bench_python "$root/benches/harness/scale.py" \
    --bench "$bin" \
    --work "$target/scale" \
    --out "$target/scale.md" \
    "$@"

#!/usr/bin/env bash
# The cluster benchmark: 3 visage nodes on loopback (3 NATS JetStream members,
# 3 etcd members, a gallery of 4 shards x 2 copies) against one single-node
# server (power-loss durability), the same rows and probes, in one run:
# insert throughput, single-probe and batch search latency, and the catch-up
# of a node killed with SIGKILL (through the log, and through a peer's copy).
# Every cluster answer is checked against the single node's.
#
#   bash benches/cluster.sh
#   VISAGE_BENCH_ROWS=50000 VISAGE_BENCH_MORE=10000 bash benches/cluster.sh   # a quick run
#
# Needs nats-server, etcd and protoc (README, "Cluster mode"). Builds the
# release visage-server with cluster mode, then runs the ignored test
# `bench_three_nodes_against_one` (tests/cluster/bench.rs). Progress goes to
# stderr; the table to stdout and to target/cluster-bench.md. The numbers
# are noisy on a shared machine: do not run it beside builds.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
cd "$root"

echo "building visage-server (release, --features cluster) and the cluster tests" >&2
cargo build --release --quiet -p visage-server --features cluster >&2
cargo test --release --quiet -p visage-tests --test cluster --no-run >&2

export VISAGE_REQUIRE_CLUSTER=1
# Data on the build's disk (not a tmpfs /tmp), removed at the end.
export VISAGE_BENCH_DIR="${VISAGE_BENCH_DIR:-$target/cluster-bench-data}"
mkdir -p "$VISAGE_BENCH_DIR"
out=$target/cluster-bench.md
echo "running (several minutes)" >&2
cargo test --release --quiet -p visage-tests --test cluster -- --ignored --exact --nocapture \
    bench::bench_three_nodes_against_one | grep -v -e '^running [0-9]* test' -e '^test result' -e '^\.$' | tee "$out"
echo "table written to $out" >&2

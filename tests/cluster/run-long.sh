#!/usr/bin/env bash
# The long node-loss runs of cluster mode: 10 visage nodes killed with
# SIGKILL under load, then 5 JetStream members (the stream leader every
# other time), each run ending with every node's answers equal to a
# single-node gallery given the acknowledged writes. CI runs the same tests
# with 2 and 1 kills. Prints each run's counts and longest write pause.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -p visage-server --features cluster
export VISAGE_REQUIRE_CLUSTER=1
export VISAGE_NODE_KILLS="${VISAGE_NODE_KILLS:-10}"
export VISAGE_LOG_KILLS="${VISAGE_LOG_KILLS:-5}"
cargo test -p visage-tests --test cluster -- --test-threads 1 --nocapture \
    killed_nodes_lose_no_acknowledged_write_and_catch_up \
    killed_log_members_pause_writes_and_lose_nothing

#!/usr/bin/env bash
# Python client interoperability test against the real server.
#
#   bash tests/python/run-interop.sh [path/to/visage-server]
#
# Creates (or reuses) a virtual environment at $VENV (default target/venv),
# installs tests/python/requirements.txt from the package registry, starts the
# server (default target/release/visage-server, else target/debug/...) on a
# free port with a temporary data directory, runs interop.py against it, then
# stops the server with SIGTERM and checks that it exits 0.
set -euo pipefail
cd "$(dirname "$0")/../.."

server_bin="${1:-}"
if [ -z "$server_bin" ]; then
    if [ -x target/release/visage-server ]; then
        server_bin=target/release/visage-server
    else
        server_bin=target/debug/visage-server
    fi
fi
if [ ! -x "$server_bin" ]; then
    echo "run-interop: no server binary at $server_bin (build it: cargo build -p visage-server)" >&2
    exit 1
fi

venv="${VENV:-target/venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
    -r tests/python/requirements.txt

tmp="$(mktemp -d)"
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

: >"$tmp/stdout"
"$server_bin" --data-dir "$tmp/data" --listen 127.0.0.1:0 >>"$tmp/stdout" 2>"$tmp/server.log" &
pid=$!
addr=""
for _ in $(seq 1 600); do
    addr="$(sed -n 's/^visage-server listening on //p' "$tmp/stdout" || true)"
    [ -n "$addr" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "run-interop: the server exited at startup:" >&2
        cat "$tmp/server.log" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$addr" ]; then
    echo "run-interop: the server printed no address within 60 s" >&2
    cat "$tmp/server.log" >&2
    exit 1
fi
echo "run-interop: $server_bin listening on $addr"

status=0
"$venv/bin/python" tests/python/interop.py --server "$addr" || status=$?

kill -TERM "$pid"
server_status=0
wait "$pid" || server_status=$?
pid=""
if [ "$server_status" -ne 0 ]; then
    echo "run-interop: the server exited with status $server_status after SIGTERM:" >&2
    cat "$tmp/server.log" >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "run-interop: server log:" >&2
    cat "$tmp/server.log" >&2
fi
exit "$status"

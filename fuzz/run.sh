#!/usr/bin/env bash
# Fuzz every target for a short while, as CI does: `bash fuzz/run.sh [SECONDS]`.
#
# Installs cargo-fuzz if missing, builds every target once (stable toolchain:
# no sanitizer, so no nightly is needed), replays the committed regression
# inputs (fuzz/regress/TARGET) and seeds (fuzz/seeds/TARGET), then fuzzes each
# target for SECONDS (default 20) from a temporary copy of its seeds, so no new
# corpus file lands in the repository. Exits non-zero on any crash, timeout or
# out-of-memory; the failing input is kept under $VISAGE_FUZZ_OUT (default a
# temporary directory) and printed in base64.
#
# Longer local runs: `bash fuzz/run.sh 3600`, or for one target
# `cargo fuzz run --sanitizer none TARGET fuzz/corpus/TARGET fuzz/seeds/TARGET
# -- -max_total_time=3600 -rss_limit_mb=2048` (new inputs go to the first
# directory, fuzz/corpus/, which git ignores).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=$(ls fuzz_targets | sed -n 's/\.rs$//p' | sort)
host=$(rustc -vV | sed -n 's/^host: //p')
bin="target/$host/release"
out="${VISAGE_FUZZ_OUT:-$(mktemp -d -t visage-fuzz.XXXXXX)}"
mkdir -p "$out"
# The galleries each target builds go to tmpfs (fsyncs are free there) and are
# removed at the end, whatever happens.
shm=/dev/shm
[ -d "$shm" ] && [ -w "$shm" ] || shm="${TMPDIR:-/tmp}"
VISAGE_FUZZ_SCRATCH=$(mktemp -d -p "$shm" visage-fuzz.XXXXXX)
export VISAGE_FUZZ_SCRATCH
trap 'rm -rf "$VISAGE_FUZZ_SCRATCH"' EXIT
# Every target stops at the first failure; these catch allocations driven by a
# length field and inputs that take far longer than they should.
limits=(-rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=20)

start=$(date +%s)
echo "building the fuzz targets (cargo fuzz build --sanitizer none)"
cargo fuzz build --sanitizer none
built=$(date +%s)
echo "built in $((built - start)) s"

show_failure() {
    local t=$1 dir=$2
    for f in "$dir"/crash-* "$dir"/timeout-* "$dir"/oom-* "$dir"/leak-*; do
        [ -f "$f" ] || continue
        echo "$t: failing input $f (base64):"
        base64 -w 76 "$f"
    done
}

failed=()
for t in $targets; do
    inputs=()
    for d in regress/$t seeds/$t; do
        [ -d "$d" ] || continue
        while IFS= read -r f; do inputs+=("$f"); done < <(find "$d" -type f | sort)
    done
    [ ${#inputs[@]} -gt 0 ] || continue
    echo "== $t: replaying ${#inputs[@]} committed inputs"
    # Files (not directories) as arguments: libFuzzer runs each once and writes nothing.
    if ! "$bin/$t" "${limits[@]}" "${inputs[@]}" >"$out/$t.replay.log" 2>&1; then
        tail -n 40 "$out/$t.replay.log"
        failed+=("$t (replay)")
    fi
done

for t in $targets; do
    corpus="$out/corpus-$t"
    artifacts="$out/artifacts-$t"
    mkdir -p "$corpus" "$artifacts"
    if [ -d "seeds/$t" ]; then cp -r "seeds/$t/." "$corpus/"; fi
    echo "== $t: fuzzing for $seconds s"
    if ! "$bin/$t" "${limits[@]}" -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "$corpus" >"$out/$t.log" 2>&1; then
        tail -n 40 "$out/$t.log"
        show_failure "$t" "$artifacts"
        failed+=("$t")
    else
        echo "   $(grep -hE '^stat::(number_of_executed_units|average_exec_per_sec)' "$out/$t.log" | tr '\n' ' ' || true)"
    fi
done

echo "fuzzing took $(($(date +%s) - start)) s in all (build $((built - start)) s)"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]} (logs and inputs in $out)"
    exit 1
fi
# Nothing to keep from a clean run in a temporary directory of our own.
[ -n "${VISAGE_FUZZ_OUT:-}" ] || rm -rf "$out"
n=$(echo "$targets" | wc -w)
echo "fuzz: $n passed, 0 failed"

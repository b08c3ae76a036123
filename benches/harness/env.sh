# Shared by run.sh and scale.sh (sourced, not run): the virtual environment
# target/bench-venv from requirements.txt, and visage-bench built in release.
#
#   source benches/harness/env.sh && bench_setup
#
# sets root (the repository), target (CARGO_TARGET_DIR or root/target), venv
# and bench (the binary); bench_python runs the venv's Python the way the
# harnesses measure with (see run.sh).

bench_setup() {
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    target=${CARGO_TARGET_DIR:-$root/target}
    venv=$target/bench-venv
    bench=$target/release/visage-bench
    local req=$root/benches/harness/requirements.txt

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
}

# Some machines set OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for old OpenBLAS builds;
# they slow faiss's BLAS path, so the harnesses' Python (and only it) runs
# without them. The reports name the BLAS kernel faiss then used (threadpoolctl).
bench_python() {
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$venv/bin/python" "$@"
}

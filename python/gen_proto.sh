#!/usr/bin/env bash
# Regenerate the committed gRPC stubs of the Python package from the proto:
#
#   python/gen_proto.sh        (with grpcio-tools==1.85.4 in the python3 on PATH,
#                               or PYTHON=path/to/python)
#
# writes python/python/visage/v1/visage_pb2.py, visage_pb2.pyi and
# visage_pb2_grpc.py. The output depends on the grpcio-tools version, which
# also sets the package's floors (visage_pb2.py checks the protobuf runtime,
# visage_pb2_grpc.py refuses older grpcio): bump the pin here, in
# check_proto.sh's callers and the floors in pyproject.toml together.
set -euo pipefail
python="${PYTHON:-python3}"
# A relative path to an interpreter is the caller's, not this directory's.
case "$python" in
    /*) ;;
    */*) python="$PWD/$python" ;;
esac
cd "$(dirname "$0")"
want=1.85.4
have="$("$python" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))' 2>/dev/null || true)"
if [ "$have" != "$want" ]; then
    echo "gen_proto: needs grpcio-tools==$want in $python (found: ${have:-none});" \
        "pip install grpcio-tools==$want" >&2
    exit 1
fi
# The proto path mirrors the package (visage/v1/...), so the generated
# `from visage.v1 import visage_pb2` resolves inside the package.
"$python" -m grpc_tools.protoc -I ../proto \
    --python_out=python --pyi_out=python --grpc_python_out=python \
    ../proto/visage/v1/visage.proto

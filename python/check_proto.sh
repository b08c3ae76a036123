#!/usr/bin/env bash
# Check that the committed gRPC stubs are the ones the proto generates:
# regenerate them (gen_proto.sh) and fail if that changed anything.
set -euo pipefail
# gen_proto.sh resolves a relative PYTHON against the caller's directory.
here="$(dirname "$0")"
"$here/gen_proto.sh"
cd "$here"
if ! git diff --exit-code --stat -- python/visage/v1 \
    || [ -n "$(git status --porcelain -- python/visage/v1)" ]; then
    echo "check_proto: python/python/visage/v1 is stale: run python/gen_proto.sh and commit" >&2
    exit 1
fi
echo "check_proto: the stubs match proto/visage/v1/visage.proto"

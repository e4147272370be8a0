#!/usr/bin/env bash
# Fail when the committed Go code in proto/inference is not what
# hack/proto-gen.sh generates from proto/inference/*.proto.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
./hack/proto-gen.sh "$tmp" >/dev/null
./hack/gen-compare.sh proto-check proto/inference "$tmp" "make proto" '*.pb.go'
echo "proto-check: generated gRPC code is up to date"

#!/usr/bin/env bash
# Generate the Go code of proto/inference (the Open Inference Protocol's
# gRPC service) with Debian's protoc and the Go plugins pinned by their
# tool directives in go.mod (protoc-gen-go at the google.golang.org/protobuf
# version go.mod requires, protoc-gen-go-grpc at its own module's version).
# Usage: proto-gen.sh [OUTDIR] (default proto/inference; proto-check.sh
# generates elsewhere and compares).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-proto/inference}
if ! command -v protoc >/dev/null; then
	echo "proto-gen: protoc not found; install Debian's protobuf-compiler (hack/deps/proto.apt: make deps)" >&2
	exit 1
fi
# `go tool -n` builds the tool (cached) and prints its path, for protoc's --plugin.
gen_go=$(go tool -n protoc-gen-go)
gen_go_grpc=$(go tool -n protoc-gen-go-grpc)
grpc_version=$(go list -m -f '{{.Version}}' google.golang.org/grpc/cmd/protoc-gen-go-grpc)
pkg=github.com/pilotlight/pilotlight/proto/inference
mkdir -p "$out"
protoc -I proto/inference \
	--plugin=protoc-gen-go="$gen_go" --plugin=protoc-gen-go-grpc="$gen_go_grpc" \
	--go_out="$out" --go_opt=paths=source_relative --go_opt=Mopen_inference_grpc.proto="$pkg;inference" \
	--go-grpc_out="$out" --go-grpc_opt=paths=source_relative --go-grpc_opt=Mopen_inference_grpc.proto="$pkg;inference" \
	open_inference_grpc.proto
echo "proto-gen: wrote $out/open_inference_grpc.pb.go and $out/open_inference_grpc_grpc.pb.go (protoc $(protoc --version | cut -d' ' -f2), protoc-gen-go-grpc $grpc_version)"

#!/usr/bin/env bash
# Generate the Go code of proto/inference (the Open Inference Protocol's
# gRPC service) with Debian's protoc and the Go plugins at pinned versions:
# protoc-gen-go at the google.golang.org/protobuf version go.mod requires,
# protoc-gen-go-grpc at PROTOC_GEN_GO_GRPC below. Usage: proto-gen.sh [OUTDIR]
# (default proto/inference; proto-check.sh generates elsewhere and compares).
set -euo pipefail
cd "$(dirname "$0")/.."
PROTOC_GEN_GO_GRPC=v1.6.2
out=${1:-proto/inference}
if ! command -v protoc >/dev/null; then
	echo "proto-gen: protoc not found; install Debian's protobuf-compiler (hack/deps/proto.apt: sudo ./hack/install-deps.sh)" >&2
	exit 1
fi
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
GOBIN="$bin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC"
pkg=github.com/pilotlight/pilotlight/proto/inference
mkdir -p "$out"
protoc -I proto/inference \
	--plugin=protoc-gen-go="$bin/protoc-gen-go" --plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" \
	--go_out="$out" --go_opt=paths=source_relative --go_opt=Mopen_inference_grpc.proto="$pkg;inference" \
	--go-grpc_out="$out" --go-grpc_opt=paths=source_relative --go-grpc_opt=Mopen_inference_grpc.proto="$pkg;inference" \
	open_inference_grpc.proto
echo "proto-gen: wrote $out/open_inference_grpc.pb.go and $out/open_inference_grpc_grpc.pb.go (protoc $(protoc --version | cut -d' ' -f2), protoc-gen-go-grpc $PROTOC_GEN_GO_GRPC)"

#!/usr/bin/env bash
# Fail when the committed eBPF objects or bindings (bpf/*_bpfel.{o,go}) are
# not what bpf/*.bpf.c compiles to: regenerate into a temporary copy of
# bpf/ (another directory, so absolute paths leaking into the output would
# show up too) and compare byte for byte. Needs the tools bpf-gen.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
./hack/bpf-gen.sh --deps

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/bpf"
cp go.mod go.sum "$tmp/"
# Sources only: generated files are rebuilt, not copied.
find bpf -maxdepth 1 -type f ! -name '*_bpfel.o' ! -name '*_bpfel.go' -exec cp {} "$tmp/bpf/" \;
[ -d bpf/testdata ] && cp -r bpf/testdata "$tmp/bpf/"
(cd "$tmp" && go generate ./bpf/)

./hack/gen-compare.sh bpf-check bpf "$tmp/bpf" ./hack/bpf-gen.sh '*_bpfel.o *_bpfel.go'
echo "bpf-check: generated eBPF objects and bindings are up to date"

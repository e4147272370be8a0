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

status=0
for f in $( (cd bpf && ls *_bpfel.o *_bpfel.go; cd "$tmp/bpf" && ls *_bpfel.o *_bpfel.go) | sort -u); do
	if [ ! -f "bpf/$f" ]; then
		echo "bpf-check: bpf/$f is generated but not committed (run ./hack/bpf-gen.sh)" >&2
		status=1
	elif [ ! -f "$tmp/bpf/$f" ]; then
		echo "bpf-check: bpf/$f is committed but no source generates it (delete it)" >&2
		status=1
	elif ! cmp -s "bpf/$f" "$tmp/bpf/$f"; then
		echo "bpf-check: bpf/$f differs from what its source compiles to (run ./hack/bpf-gen.sh and commit)" >&2
		status=1
	fi
done
[ $status -eq 0 ] && echo "bpf-check: generated eBPF objects and bindings are up to date"
exit $status

#!/usr/bin/env bash
# Fail when the committed Go code in proto/inference is not what
# hack/proto-gen.sh generates from proto/inference/*.proto.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
./hack/proto-gen.sh "$tmp" >/dev/null
status=0
for f in $( (cd proto/inference && ls *.pb.go; cd "$tmp" && ls *.pb.go) | sort -u); do
	if [ ! -f "proto/inference/$f" ]; then
		echo "proto-check: proto/inference/$f is generated but not committed (run make proto)" >&2
		status=1
	elif [ ! -f "$tmp/$f" ]; then
		echo "proto-check: proto/inference/$f is committed but nothing generates it (delete it)" >&2
		status=1
	elif ! cmp -s "proto/inference/$f" "$tmp/$f"; then
		echo "proto-check: proto/inference/$f differs from what the .proto generates (run make proto and commit)" >&2
		status=1
	fi
done
[ $status -eq 0 ] && echo "proto-check: generated gRPC code is up to date"
exit $status

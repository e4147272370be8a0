#!/usr/bin/env bash
# Compare generated files byte for byte: the committed ones in COMMITTED
# against the ones just regenerated into FRESH. Says, for each file that is
# missing on one side or differs, what to do; exits 1 if any did.
# Used by bpf-check.sh and proto-check.sh (the regeneration is theirs).
#
#   gen-compare.sh NAME COMMITTED FRESH REGENERATE 'GLOB...'
#   e.g. gen-compare.sh proto-check proto/inference "$tmp" "make proto" '*.pb.go'
set -euo pipefail
if [ $# -ne 5 ]; then
	echo "usage: $0 NAME COMMITTED_DIR FRESH_DIR REGENERATE_COMMAND 'GLOB...'" >&2
	exit 2
fi
name=$1 committed=$2 fresh=$3 regen=$4 globs=$5
status=0
# The globs are word-split on purpose: 'a* b*' is two patterns.
# shellcheck disable=SC2086
for f in $( (cd "$committed" && ls $globs; cd "$fresh" && ls $globs) 2>/dev/null | sort -u); do
	if [ ! -f "$committed/$f" ]; then
		echo "$name: $committed/$f is generated but not committed (run $regen)" >&2
		status=1
	elif [ ! -f "$fresh/$f" ]; then
		echo "$name: $committed/$f is committed but nothing generates it (delete it)" >&2
		status=1
	elif ! cmp -s "$committed/$f" "$fresh/$f"; then
		echo "$name: $committed/$f differs from what its source generates (run $regen and commit)" >&2
		status=1
	fi
done
exit $status

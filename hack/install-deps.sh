#!/usr/bin/env bash
# Installs the Debian packages listed in hack/deps/*.apt that are missing.
# `make deps` runs it, and `make test` and `make bench` through it, so the
# README's two commands are all a fresh machine needs (this reverses an
# earlier rule that no make target runs apt-get). As root it installs what
# is missing; otherwise it prints the one command to run and fails.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t want < <(sed 's/#.*//' hack/deps/*.apt | tr -s ' \t' '\n' | sed '/^$/d' | sort -u)
missing=()
for p in "${want[@]}"; do
	# A command of the package's name counts as present (npm may come with the machine's Node.js).
	command -v "$p" >/dev/null && continue
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	echo "install-deps: all ${#want[@]} Debian packages present"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "install-deps: missing Debian packages ${missing[*]}; not root, so run:" >&2
	echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
	exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"

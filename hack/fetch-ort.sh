#!/usr/bin/env bash
# Fetches ONNX Runtime's shared library from the npm package onnxruntime-node
# (npm pack, no install scripts run) into .cache/onnxruntime/<version>/.
# Idempotent: a present, verified library is left alone.
set -euo pipefail
version=${ORT_VERSION:-1.24.1}
sha256=${ORT_SHA256:-53ef1ac028dd1b05554b8da28d9159eb3876f99868193d2aaa6e67f0243c23d4}
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cache/onnxruntime/$version"
lib="$dest/libonnxruntime.so.1"
if [ -f "$lib" ] && echo "$sha256  $lib" | sha256sum -c --status; then
  exit 0
fi
command -v npm >/dev/null || { echo "fetch-ort: npm is needed to fetch onnxruntime-node@$version (apt-get install npm)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-ort: npm pack onnxruntime-node@$version (about 85 MB)..." >&2
(cd "$tmp" && npm pack --ignore-scripts --silent "onnxruntime-node@$version" >/dev/null)
tar -xzf "$tmp"/onnxruntime-node-"$version".tgz -C "$tmp" package/bin/napi-v6/linux/x64/libonnxruntime.so.1
mkdir -p "$dest"
if ! echo "$sha256  $tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1" | sha256sum -c --status; then
  echo "fetch-ort: checksum mismatch for libonnxruntime.so.1 from onnxruntime-node@$version; refusing to use it" >&2
  exit 1
fi
mv "$tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1" "$lib"
echo "fetch-ort: $lib" >&2

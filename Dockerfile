# syntax=docker/dockerfile:1
# The Pilotlight image: both binaries, ONNX Runtime's shared library and the
# built-in functions' manifests and models.
#   docker build -t ghcr.io/pilotlight/pilotlight:0.1.0 .
# A function pod runs `pilotlight-runtime --function /functions/<name>
# --revision <rev>` (the entrypoint; the Knative manifests pass those args).
# pilotlight-runtime (cmd/pilotlight-runtime) links no Kubernetes or router
# package, so an instance starts without their package inits. The router
# Deployment runs `pilotlight serve` (cmd/pilotlight) from the same image.
# `make images` builds the same layout without a container engine.

# --- build: cgo is required, onnxruntime_go dlopens ONNX Runtime through C.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ENV CGO_ENABLED=1
RUN go build -trimpath -ldflags="-s -w" -o /out/ ./cmd/pilotlight ./cmd/pilotlight-runtime
# Only what a function needs at run time: function.yaml, models, notices,
# warm-up requests (function.yaml's warmup, named warmup*.json).
RUN find functions \( -name function.yaml -o -name '*.onnx' -o -name NOTICE -o -name 'warmup*.json' \) -print0 \
      | tar --null -cf - -T - | tar -xf - -C /out \
 && test -n "$(find /out/functions -name '*.onnx')" \
 || { echo "no models under functions/: run make models" >&2; exit 1; }

# --- ort: ONNX Runtime's shared library from the npm package, as
# hack/fetch-ort.sh does (no install scripts run; checksum verified).
FROM node:20-bookworm-slim AS ort
ARG ORT_VERSION=1.24.1
ARG ORT_SHA256=53ef1ac028dd1b05554b8da28d9159eb3876f99868193d2aaa6e67f0243c23d4
WORKDIR /ort
RUN npm pack onnxruntime-node@${ORT_VERSION} --ignore-scripts --silent \
 && tar -xzf onnxruntime-node-${ORT_VERSION}.tgz package/bin/napi-v6/linux/x64/libonnxruntime.so.1 \
 && echo "${ORT_SHA256}  package/bin/napi-v6/linux/x64/libonnxruntime.so.1" | sha256sum -c - \
 && mv package/bin/napi-v6/linux/x64/libonnxruntime.so.1 /ort/libonnxruntime.so.1 \
 && rm -rf package onnxruntime-node-${ORT_VERSION}.tgz

# --- runtime: glibc + libstdc++ (ONNX Runtime needs both), no shell, non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/pilotlight-runtime /usr/local/bin/pilotlight-runtime
COPY --from=build /out/pilotlight /usr/local/bin/pilotlight
# The runtime looks here when ONNXRUNTIME_LIB is unset.
COPY --from=ort /ort/libonnxruntime.so.1 /usr/local/lib/pilotlight/libonnxruntime.so.1
COPY --from=build /out/functions /functions
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["pilotlight-runtime"]
CMD ["--function", "/functions/fraud"]

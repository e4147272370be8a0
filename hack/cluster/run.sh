#!/usr/bin/env bash
# make cluster-test: the project's Knative path against a live control plane.
# Builds what is missing (hack/cluster/build.sh; cached by version under
# .cache/cluster), then runs hack/cluster's tests inside a network namespace
# of their own whose lo carries 10.244.0.0/24 (the API server's address, the
# autoscaler's POD_IP and the pod IPs kwok hands out). Nothing leaves the
# namespace; it and every process in it are removed at exit.
# Needs root (ip netns) and etcd (hack/deps/cluster.apt).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
t0=$SECONDS

if [ "$(id -u)" != 0 ]; then
	echo "cluster-test: needs root for its network namespace (ip netns add); run it as root (CI does)" >&2
	exit 1
fi
command -v etcd >/dev/null || { echo "cluster-test: etcd missing: run hack/install-deps.sh (etcd-server is in hack/deps/cluster.apt)" >&2; exit 1; }

bin=$(hack/cluster/build.sh)
echo "cluster-test: building bin/pilotlight and the test binary" >&2
CGO_ENABLED=1 go build -trimpath -o "$root/.cache/cluster/pilotlight" ./cmd/pilotlight
(cd hack/cluster && go test -c -o "$root/.cache/cluster/cluster.test" .)
mods() { (cd "$1" && go mod download "$2" && go list -m -f '{{.Dir}}' "$2"); }
export CLUSTER_BIN=$bin
export CLUSTER_PILOTLIGHT=$root/.cache/cluster/pilotlight
export CLUSTER_REPO=$root
export CLUSTER_SERVING_DIR=$(mods hack/cluster/knative knative.dev/serving)
export CLUSTER_NETWORKING_DIR=$(mods hack/cluster/knative knative.dev/networking)
export CLUSTER_CACHING_DIR=$(mods hack/cluster/knative knative.dev/caching)
export CLUSTER_KWOK_DIR=$(mods hack/cluster/kwok sigs.k8s.io/kwok)
echo "cluster-test: build and module lookups took $((SECONDS - t0))s" >&2

ns=pilotlight-cluster-$$
work=$(mktemp -d /tmp/cluster-test.XXXXXX)
cleanup() {
	# Processes we started, by pid, all inside our namespace.
	for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
	sleep 1
	for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
	ip netns del "$ns" 2>/dev/null || true
	rm -rf "/etc/netns/$ns"
	if [ "${KEEP:-}" = 1 ]; then echo "cluster-test: logs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" addr add 10.244.0.1/24 dev lo
# `ip netns exec` mounts /etc/netns/<ns>/hosts over /etc/hosts for what it
# runs: the tag URLs' hosts resolve to the function stand-in (cluster_test.go).
mkdir -p "/etc/netns/$ns"
cat > "/etc/netns/$ns/hosts" <<HOSTS
127.0.0.1 localhost
10.244.0.10 fraud.pilotlight.svc.cluster.local stable-fraud.pilotlight.svc.cluster.local canary-fraud.pilotlight.svc.cluster.local
HOSTS
export CLUSTER_WORK=$work
ip netns exec "$ns" "$root/.cache/cluster/cluster.test" -test.v -test.count=1 -test.timeout=20m "$@"

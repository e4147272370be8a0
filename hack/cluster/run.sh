#!/usr/bin/env bash
# make cluster-test: the project's Knative path against a live control plane.
# Builds what is missing (hack/cluster/build.sh; cached by version under
# .cache/cluster), then runs hack/cluster's tests inside a network namespace
# of their own whose lo carries 10.244.0.0/24 (the API server's address, the
# autoscaler's POD_IP and the pod IPs kwok hands out). Nothing leaves the
# namespace; it and every process in it are removed at exit.
# Needs root (ip netns) and etcd (hack/deps/cluster.apt).
#
# CLUSTER_NODE=1 (make cluster-test-node) runs a real node instead of kwok:
# containerd and runc, a CNI bridge, the kubelet and kube-proxy, with the
# images `make images` built imported into containerd. The node's pods live
# under the cgroup /pilotlight-cluster-<pid> in every v1 hierarchy; at exit
# every process in it is killed and the cgroups removed, and containerd's
# state (under the scratch dir) goes with it.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
t0=$SECONDS

if [ "$(id -u)" != 0 ]; then
	echo "cluster-test: needs root for its network namespace (ip netns add); run it as root (CI does)" >&2
	exit 1
fi
command -v etcd >/dev/null || { echo "cluster-test: etcd missing: run hack/install-deps.sh (etcd-server is in hack/deps/cluster.apt)" >&2; exit 1; }

node=${CLUSTER_NODE:-}
bin=$(CLUSTER_NODE=$node hack/cluster/build.sh)
if [ "$node" = 1 ]; then
	for c in containerd runc ctr iptables conntrack; do
		command -v $c >/dev/null || { echo "cluster-test: $c missing: run hack/install-deps.sh (hack/deps/cluster.apt)" >&2; exit 1; }
	done
	[ -x /usr/lib/cni/bridge ] || { echo "cluster-test: CNI plugins missing: containernetworking-plugins (hack/deps/cluster.apt)" >&2; exit 1; }
	./hack/images/build.sh
fi
echo "cluster-test: building bin/pilotlight and the test binary" >&2
CGO_ENABLED=1 go build -trimpath -o "$root/.cache/cluster/" ./cmd/pilotlight ./cmd/pilotlight-runtime
(cd hack/cluster && go test -c -o "$root/.cache/cluster/cluster.test" .)
mods() { (cd "$1" && go mod download "$2" && go list -m -f '{{.Dir}}' "$2"); }
export CLUSTER_BIN=$bin
export CLUSTER_PILOTLIGHT=$root/.cache/cluster/pilotlight
export CLUSTER_RUNTIME=$root/.cache/cluster/pilotlight-runtime
export CLUSTER_REPO=$root
export CLUSTER_SERVING_DIR=$(mods hack/cluster/knative knative.dev/serving)
export CLUSTER_NETWORKING_DIR=$(mods hack/cluster/knative knative.dev/networking)
export CLUSTER_CACHING_DIR=$(mods hack/cluster/knative knative.dev/caching)
export CLUSTER_KWOK_DIR=$(mods hack/cluster/kwok sigs.k8s.io/kwok)
echo "cluster-test: build and module lookups took $((SECONDS - t0))s" >&2

ns=pilotlight-cluster-$$
cgroot=/pilotlight-cluster-$$
work=$(mktemp -d /tmp/cluster-test.XXXXXX)
# The cgroup v1 hierarchies as this machine mounts them (mount point, type,
# options), to mount again inside the namespace: `ip netns exec` gives its
# command a fresh /sys without them.
cgmounts=$(awk '{for (i = 7; $i != "-"; i++); if ($(i+1) ~ /^cgroup2?$/) print $5, $(i+1), $(i+3)}' /proc/self/mountinfo)
cgdirs() { awk '{print $1}' <<<"$cgmounts"; }
cleanup() {
	# Processes we started, by pid, all inside our namespace.
	for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
	sleep 1
	for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
	if [ "$node" = 1 ]; then
		# The pods' processes live in their own network namespaces but
		# under our cgroup: kill them there, then remove the cgroups,
		# deepest first.
		for d in $(cgdirs); do
			[ -d "$d$cgroot" ] || continue
			find "$d$cgroot" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
		done
		sleep 1
		for d in $(cgdirs); do
			[ -d "$d$cgroot" ] && find "$d$cgroot" -depth -type d -exec rmdir {} + 2>/dev/null || true
		done
	fi
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
export CLUSTER_WORK=$work CLUSTER_NETNS=$ns
if [ "$node" != 1 ]; then
	ip netns exec "$ns" "$root/.cache/cluster/cluster.test" -test.v -test.count=1 -test.timeout=20m "$@"
	exit
fi
# Service addresses (10.96.0.0/16) need a route for a process of the
# namespace to send to them at all; kube-proxy's OUTPUT rules then rewrite
# the destination to a pod on cni0. The route is the namespace's own.
ip -n "$ns" route add 10.96.0.0/16 dev lo src 10.244.0.1
for d in $(cgdirs); do
	mkdir "$d$cgroot"
	# A new cpuset cgroup starts with no CPUs and no memory nodes.
	if [ -f "$d/cpuset.cpus" ]; then
		cat "$d/cpuset.cpus" > "$d$cgroot/cpuset.cpus"
		cat "$d/cpuset.mems" > "$d$cgroot/cpuset.mems"
	fi
done
export CLUSTER_NODE=1 CLUSTER_CGROUP_ROOT=$cgroot CLUSTER_IMAGES=$root/.cache/images.tar CLUSTER_HOSTS=/etc/netns/$ns/hosts
ip netns exec "$ns" bash -euc '
	mount -t tmpfs -o mode=755 cgroup_root /sys/fs/cgroup
	while read -r mp type opts; do
		mkdir -p "$mp"
		mount -t "$type" -o "$opts" "$type" "$mp"
	done <<<"$1"
	# The kubelet sets these machine-wide sysctls (kernel.panic=10,
	# panic_on_oops=1, vm.overcommit_memory=1...): it writes private
	# copies instead, bind-mounted over them in this mount namespace only.
	for s in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do
		copy="$2/sysctl-${s//\//.}"
		cat "/proc/sys/$s" > "$copy"
		mount --bind "$copy" "/proc/sys/$s"
	done
	shift 2
	exec "$@"
' cgroups "$cgmounts" "$work" "$root/.cache/cluster/cluster.test" -test.v -test.count=1 -test.timeout=30m -test.run "${CLUSTER_TEST_RUN:-TestRealNode}" "$@"

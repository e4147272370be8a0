#!/usr/bin/env bash
# Builds the live control plane's binaries once and caches them by version
# under .cache/cluster/ (gitignored): kube-apiserver, kube-controller-manager
# and kube-scheduler from k8s.io/kubernetes, kwok (the kubelet stand-in), and
# Knative serving's controller and autoscaler (hack/cluster/knative).
# A binary already built for its version is not built again.
#
#   hack/cluster/build.sh            build what is missing, print the bin dir
#   GOCACHE=/tmp/cold hack/cluster/build.sh   measure a cold build
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

K8S=v1.34.2
KWOK=v0.8.0
KNATIVE=v0.42.2
KN=v0.42.0 # knative.dev/client: the kn release of serving v0.42 (Knative 1.15)
bin=$root/.cache/cluster/bin
mkdir -p "$bin"

# Knative checks the server's version: stamp it as the release build does.
ver="-X k8s.io/component-base/version.gitVersion=$K8S -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34"
ver="$ver -X k8s.io/client-go/pkg/version.gitVersion=$K8S -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=34"

build() { # name version dir package [ldflags]
	local name=$1 version=$2 dir=$3 pkg=$4 ldflags=${5:-}
	local out=$bin/$name-$version
	if [ -x "$out" ]; then return; fi
	local t0=$SECONDS
	echo "cluster: building $name $version (first time only; minutes on a cold cache)" >&2
	(cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg")
	mv "$out.tmp" "$out"
	echo "cluster: built $name $version in $((SECONDS - t0))s" >&2
}

build kube-apiserver $K8S hack/cluster k8s.io/kubernetes/cmd/kube-apiserver "$ver"
build kube-controller-manager $K8S hack/cluster k8s.io/kubernetes/cmd/kube-controller-manager "$ver"
build kube-scheduler $K8S hack/cluster k8s.io/kubernetes/cmd/kube-scheduler "$ver"
# kwok's own go.mod (k8s.io 0.36) conflicts with the pinned v0.34 staging
# modules above, so it is built as `go install` would: from its own module.
build kwok $KWOK hack/cluster/kwok sigs.k8s.io/kwok/cmd/kwok
build knative-controller $KNATIVE hack/cluster/knative ./cmd/controller
build knative-autoscaler $KNATIVE hack/cluster/knative knative.dev/serving/cmd/autoscaler
if [ "${CLUSTER_NODE:-}" = 1 ]; then
	# The real node (make cluster-test-node): kubelet and kube-proxy from the
	# same tree, and Knative's data path (activator, queue-proxy) and webhook.
	build kubelet $K8S hack/cluster k8s.io/kubernetes/cmd/kubelet "$ver"
	build kube-proxy $K8S hack/cluster k8s.io/kubernetes/cmd/kube-proxy "$ver"
	build knative-activator $KNATIVE hack/cluster/knative knative.dev/serving/cmd/activator
	build knative-queue $KNATIVE hack/cluster/knative knative.dev/serving/cmd/queue
	build knative-webhook $KNATIVE hack/cluster/knative knative.dev/serving/cmd/webhook
	# kn, as a Knative user deploys by hand (its own module: the client's
	# k8s.io versions are older than serving's).
	build kn $KN hack/cluster/kn knative.dev/client/cmd/kn
fi
echo "$bin"

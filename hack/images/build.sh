#!/usr/bin/env bash
# make images: Pilotlight's OCI images without a container engine
# (go-containerregistry, hack/images), into .cache/images (an OCI layout)
# and .cache/images.tar (what `ctr -n k8s.io images import` loads).
#
#   runtime  ghcr.io/pilotlight/pilotlight:dev         lean runtime (cmd/pilotlight-runtime), ONNX Runtime, glibc/libstdc++, models layer
#   router   ghcr.io/pilotlight/pilotlight-router:dev  the platform binary (serve --backend knative), the functions layer
#   pause    registry.k8s.io/pause:3.10                the pod sandbox: pause.c from the k8s.io/kubernetes module, gcc -static
#   knative  ko.local/knative/{activator,queue,webhook,controller,autoscaler}:v0.42.2
#            from .cache/cluster/bin (hack/cluster/build.sh; CLUSTER_NODE=1 builds them)
#
# The images name their digests in .cache/images/digests.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
K8S=v1.34.2
KNATIVE=v0.42.2
ORT=$root/.cache/onnxruntime/1.24.1/libonnxruntime.so.1
out=$root/.cache/images
bin=$root/.cache/cluster/bin
work=$root/.cache/images-build
mkdir -p "$work"
t0=$SECONDS

[ -f "$ORT" ] || ./hack/fetch-ort.sh
CGO_ENABLED=1 go build -trimpath -ldflags="-s -w" -o "$work/" ./cmd/pilotlight ./cmd/pilotlight-runtime

# The sandbox every pod starts in: Kubernetes' own pause, built as its
# Makefile does (static, stripped) from the k8s.io/kubernetes module.
k8sdir=$(cd hack/cluster && go mod download k8s.io/kubernetes && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
if [ ! -x "$work/pause-$K8S" ]; then
	gcc -Os -Wall -Werror -static -DVERSION="$K8S" -o "$work/pause-$K8S.tmp" "$k8sdir/build/pause/linux/pause.c"
	strip "$work/pause-$K8S.tmp"
	mv "$work/pause-$K8S.tmp" "$work/pause-$K8S"
fi

specs=(
	-image "ghcr.io/pilotlight/pilotlight:dev=runtime:$work/pilotlight-runtime:$ORT:$root/functions"
	-image "ghcr.io/pilotlight/pilotlight-router:dev=router:$work/pilotlight:$root/functions"
	-image "registry.k8s.io/pause:3.10=static:$work/pause-$K8S:/pause"
)
for c in activator queue webhook controller autoscaler; do
	b=$bin/knative-$c-$KNATIVE
	if [ -x "$b" ]; then
		specs+=(-image "ko.local/knative/$c:$KNATIVE=static:$b:/ko-app/$c")
	else
		echo "images: no $b (CLUSTER_NODE=1 hack/cluster/build.sh builds it); skipping knative/$c" >&2
	fi
done
(cd hack/images && go run . -out "$out" "${specs[@]}")
echo "images: built in $((SECONDS - t0))s: $out ($(du -sh "$out.tar" | cut -f1) as $out.tar)" >&2

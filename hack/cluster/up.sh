#!/usr/bin/env bash
# make cluster-up / make cluster-down: the real node (make cluster-test-node's
# cluster) left running for a person, and taken down again.
#
#   hack/cluster/up.sh up     start it in the background (TestClusterUp under
#                             hack/cluster/run.sh), wait until fraud and the
#                             router serve, print how to reach them
#   hack/cluster/up.sh down   stop it: TestClusterUp returns, the control
#                             plane stops, and run.sh's cleanup removes the
#                             namespace, processes, cgroups, mounts and
#                             containerd's state
# State (pids, the admin kubeconfig, the log) lives in /run/pilotlight-cluster.
set -euo pipefail
cd "$(dirname "$0")/../.."
state=/run/pilotlight-cluster
running() { [ -f "$state/run.pid" ] && kill -0 "$(cat "$state/run.pid")" 2>/dev/null; }

case "${1:-}" in
up)
	if running; then
		echo "cluster-up: already running (make cluster-down stops it)" >&2
		cat "$state/info" 2>/dev/null || echo "(still starting: $state/log)"
		exit 0
	fi
	rm -rf "$state"
	mkdir -p "$state"
	# setsid: the cluster outlives this shell and make; its own session.
	CLUSTER_NODE=1 CLUSTER_UP=$state CLUSTER_TEST_RUN='^TestClusterUp$' \
		setsid hack/cluster/run.sh -test.timeout=0 >"$state/log" 2>&1 </dev/null &
	echo $! >"$state/run.pid"
	echo "cluster-up: starting (builds on first use; log: $state/log)" >&2
	t0=$SECONDS
	until [ -f "$state/info" ]; do
		if ! running; then
			echo "cluster-up: failed; the end of $state/log:" >&2
			tail -40 "$state/log" >&2
			exit 1
		fi
		sleep 2
	done
	echo "cluster-up: up in $((SECONDS - t0))s" >&2
	cat "$state/info"
	;;
down)
	if ! running; then
		echo "cluster-down: nothing running" >&2
		exit 0
	fi
	# TestClusterUp returns on SIGTERM; TestMain stops the plane and
	# run.sh's EXIT trap removes the rest.
	if [ -f "$state/test.pid" ]; then
		kill -TERM "$(cat "$state/test.pid")" 2>/dev/null || true
	else
		# Still starting: stop run.sh's test binary by its parent.
		pkill -TERM -P "$(cat "$state/run.pid")" 2>/dev/null || true
	fi
	for _ in $(seq 1 90); do
		running || break
		sleep 1
	done
	if running; then
		echo "cluster-down: run.sh (pid $(cat "$state/run.pid")) still running after 90s; see $state/log" >&2
		exit 1
	fi
	tail -3 "$state/log" >&2
	rm -rf "$state"
	echo "cluster-down: removed" >&2
	;;
*)
	echo "usage: $0 up|down" >&2
	exit 2
	;;
esac

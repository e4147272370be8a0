package cluster

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestClusterUp is `make cluster-up` (hack/cluster/up.sh): the real node
// with fraud deployed from empty and the router Deployment in front of it,
// left running for a person to poke at. It writes how to reach the cluster
// into $CLUSTER_UP/info and holds everything up until SIGTERM (make
// cluster-down), when TestMain and run.sh take it all down.
func TestClusterUp(t *testing.T) {
	state := os.Getenv("CLUSTER_UP")
	if state == "" || env.images == "" {
		t.Skip("make cluster-up runs this (CLUSTER_UP=<state dir>, CLUSTER_NODE=1)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	start := time.Now()
	testKnativeDataPath(t)
	if t.Failed() {
		return
	}
	url, key := deployRouter(t)
	admin, err := WriteKubeconfig(filepath.Join(state, "admin.kubeconfig"), plane.Host, plane.CA, plane.Admin.BearerToken)
	if err != nil {
		t.Fatal(err)
	}
	netns := os.Getenv("CLUSTER_NETNS")
	kn := filepath.Join(os.Getenv("CLUSTER_BIN"), "kn-"+knVersion)
	digests, _ := ImageDigests(env.images)
	info := fmt.Sprintf(`cluster-up: the real node is up in %s (network namespace %s).
Everything is reached from inside the namespace: prefix commands with
  ip netns exec %[2]s
  KUBECONFIG=%[3]s              (cluster admin; the API server %[4]s)
  router (2 replicas, Service)  %[5]s   API key %[6]s
  namespace pilotlight: fraud-00001 and fraud-00002 (Knative Services, 90/10 by the flag)
Try:
  ip netns exec %[2]s curl -s -H 'Authorization: Bearer %[6]s' -H 'X-User-ID: u1' -d '%[7]s' %[5]s/functions/fraud
  ip netns exec %[2]s %[8]s --kubeconfig %[3]s service list -n pilotlight
  ip netns exec %[2]s %[8]s --kubeconfig %[3]s service create recommend -n pilotlight --image %[9]s \
    --port h2c:8080 --arg --function=/functions/recommend --arg --revision=recommend-00001 \
    --revision-name recommend-00001 --security-context strict
Logs: %[10]s. Stop and remove everything: make cluster-down
`, time.Since(start).Round(time.Second), netns, admin, plane.Host, url, key, fraudTx, kn, digests["ghcr.io/pilotlight/pilotlight"], env.work)
	if err := os.WriteFile(filepath.Join(state, "info"), []byte(info), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(state, "test.pid"), []byte(fmt.Sprint(os.Getpid())), 0o600); err != nil {
		t.Fatal(err)
	}
	<-ctx.Done()
	t.Log("cluster-up: stopping (make cluster-down)")
}

package cluster

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Rollouts on the real node: the router Deployment testRouterDeployment
// left running (two pods of the router image on containerd, the flags in
// the pilotlight-flags ConfigMap, the Lease pilotlight-router, analysis
// through the pilotlight-router Service's EndpointSlices as the endpoints
// controller writes them), revisions on Knative (activator, queue-proxy,
// real ONNX Runtime). The same checks as TestClusterRollouts on the kwok
// tier, where the replicas were stand-in processes; here the leader's
// container is killed through containerd, and the kubelet restarts it.
//
// What the real node cannot do: a candidate that fails with errors. The
// router image ships the repository's functions, whose two fraud revisions
// both work, and Knative revisions run that image; the kwok tier's broken
// fraud-00003 (a model file that is not a model) exists only in its local
// engine's copy. Here the failing candidate fails a latency objective no
// request through the activator and queue-proxy meets (--max-p99 1ms): the
// same rollback path, on a different check.

// nodeRolloutFlags is fraud's flag with its two revisions, variant by
// default (stable or canary).
func nodeRolloutFlags(variant string) string {
	doc := strings.Replace(rolloutFlags, `, "broken": "fraud-00003"`, "", 1)
	return strings.Replace(doc, `"defaultVariant": "stable"`, fmt.Sprintf(`"defaultVariant": %q`, variant), 1)
}

// warmOnNode sends a request pinned to each revision through each router
// pod until every one answers 200: a revision Knative is scaling to zero
// when a request arrives can hold that request for the router's whole
// request timeout (docs/knative.md), and a rollout judges only answered
// requests.
func warmOnNode(t *testing.T, rig *rolloutRig, revisions ...string) {
	t.Helper()
	body := v2FraudBody(t)
	for _, rev := range revisions {
		for _, r := range rig.replicas {
			testPoll(t, rev+" to answer through "+r.name, 3*time.Minute, time.Second, func() bool {
				_, _, code := routerPost(t, r.base(), "/v2/models/fraud/versions/"+rev+"/infer", body, rig.appKey, nil)
				return code == 200
			})
		}
	}
}

// rolledBackOn says whether rollout output ends rolled back on check.
func rolledBackOn(out, check string) bool {
	return regexp.MustCompile(`rollback\s+` + check + `\s`).MatchString(out)
}

func testRolloutsOnNode(t *testing.T) {
	if routerOnNode.adminKey == "" {
		t.Fatal("the router Deployment is not running (RouterDeploymentAnswersAsLocalServe deploys it)")
	}
	ctx := context.Background()
	if err := plane.ApplyFiles(ctx, repoPath("config/security/namespaces.yaml"), repoPath("config/security/rbac.yaml")); err != nil {
		t.Fatal(err)
	}
	// A rollout judges its revisions under traffic: they stay up for it,
	// as under Knative's defaults in any cluster.
	autoscalerWindows(t, defaultWindows)
	t.Cleanup(func() { autoscalerWindows(t, shortWindows) })
	setFlags(t, nodeRolloutFlags("stable"))
	rig := &rolloutRig{adminKey: routerOnNode.adminKey, appKey: routerOnNode.key}
	pods, err := plane.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=pilotlight-router"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.PodIP != "" && podReady(&p) {
			rig.replicas = append(rig.replicas, &routerReplica{name: p.Name, ip: p.Status.PodIP, pod: true})
		}
	}
	if len(rig.replicas) != 2 {
		t.Fatalf("want the router Deployment's 2 ready pods, found %d: %s", len(rig.replicas), plane.podsSummary(ctx, ns))
	}
	lead := rig.leader(t, "")
	t.Logf("Lease %s held by pod %s (%s)", routerLease, lead.name, lead.ip)

	t.Run("CanaryPromotesWithAConcurrentWriter", func(t *testing.T) {
		warmOnNode(t, rig, "fraud-00001", "fraud-00002")
		hist := followFlags(t)
		stopTraffic := rig.traffic(20 * time.Millisecond)
		stopWriter := concurrentWriter(t, 300*time.Millisecond)
		start := time.Now()
		out, err := rig.cliRollout(t, lead, "start", "fraud", "--to", "fraud-00002", "--steps", "50,100", "--interval", "5s", "--min-requests", "10", "--max-p99", "30s")
		record("canary rollout on the real node: start → promoted (2 steps of 5 s)", time.Since(start))
		added := stopWriter()
		counts := stopTraffic()
		checkPromoted(t, rig, out, err, counts, hist, added)
	})

	t.Run("FailingCandidateRollsBack", func(t *testing.T) {
		setFlags(t, nodeRolloutFlags("canary"))
		warmOnNode(t, rig, "fraud-00002", "fraud-00001")
		lead = rig.leader(t, "")
		hist := followFlags(t)
		stopTraffic := rig.traffic(20 * time.Millisecond)
		out, err := rig.cliRollout(t, lead, "start", "fraud", "--to", "fraud-00001", "--steps", "50,100", "--interval", "5s", "--min-requests", "10", "--max-p99", "1ms")
		t.Logf("answers: %v", stopTraffic())
		if err == nil || !strings.Contains(out, "ended rolled_back; fraud-00002 serves") || !rolledBackOn(out, "p99") {
			t.Fatalf("rollout to a candidate missing its latency objective: %v; want it rolled back on p99", err)
		}
		time.Sleep(500 * time.Millisecond)
		if states, want := hist.fraudStates(t), []string{"default canary", "default canary; stable 50%", "default canary"}; !slices.Equal(states, want) {
			t.Errorf("flag states %q, want %q", states, want)
		}
	})

	t.Run("LeaderKilledMidRolloutHandsOver", func(t *testing.T) {
		setFlags(t, nodeRolloutFlags("canary"))
		warmOnNode(t, rig, "fraud-00002")
		lead = rig.leader(t, "")
		hist := followFlags(t)
		stopTraffic := rig.traffic(50 * time.Millisecond)
		defer stopTraffic()
		if _, err := rig.cliRollout(t, lead, "start", "fraud", "--to", "fraud-00001", "--steps", "20,50,100", "--interval", "60s", "--detach"); err != nil {
			t.Fatal(err)
		}
		testPoll(t, "the leader's first step in the ConfigMap", 30*time.Second, 20*time.Millisecond, func() bool {
			s := hist.fraudStates(t)
			return len(s) > 0 && s[len(s)-1] == "default canary; stable 20%"
		})
		restartsBefore := restarts(t, lead.name)
		killed := time.Now()
		killContainer(t, lead.name)
		testPoll(t, "the successor to roll the rollout back", 2*time.Minute, 20*time.Millisecond, func() bool {
			s := hist.fraudStates(t)
			return s[len(s)-1] == "default canary"
		})
		rolledBack := time.Since(killed)
		l, err := plane.Kube.CoordinationV1().Leases(ns).Get(context.Background(), routerLease, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			t.Fatalf("the Lease after the hand-over: %v", err)
		}
		successor := *l.Spec.HolderIdentity
		record("leader hand-over on the real node: container killed → rollout rolled back by the successor", rolledBack)
		// The kubelet reports the restart a moment after the new container runs.
		testPoll(t, "pod "+lead.name+"'s restart count to grow (the kill was real)", time.Minute, 200*time.Millisecond, func() bool { return restarts(t, lead.name) > restartsBefore })
		t.Logf("leader %s's container killed; %s holds the Lease and rolled the rollout back after %s (the killed pod restarted %d → %d times)",
			lead.name, successor, rolledBack.Round(time.Millisecond), restartsBefore, restarts(t, lead.name))
		time.Sleep(500 * time.Millisecond)
		if states, want := hist.fraudStates(t), []string{"default canary", "default canary; stable 20%", "default canary"}; !slices.Equal(states, want) {
			t.Errorf("flag states %q, want %q: each step once, none after the leader died", states, want)
		}
		cm, err := plane.Kube.CoreV1().ConfigMaps(ns).Get(context.Background(), flagsConfigMap, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if rec := cm.Annotations["rollouts.pilotlight.dev/fraud"]; !strings.Contains(rec, `"state":"rolled_back"`) || !strings.Contains(rec, successor) {
			t.Errorf("rollout record %s: want rolled_back by %s", rec, successor)
		}
		for _, r := range rig.replicas {
			if r.name == successor {
				lead = r
			}
		}
		if out, err := rig.cliRollout(t, lead, "status", "fraud"); err != nil || !strings.Contains(out, "leader") {
			t.Errorf("the successor's status does not say it rolled back for the dead leader: %v", err)
		}
	})

	t.Run("BlueGreenPrescalesOnRealPods", func(t *testing.T) { testBlueGreenOnNode(t, rig, false) })
	// Knative's autoscaler applies a raised min-scale to a revision only
	// once it has a metric for it: from zero, a pod reports none. The
	// short windows again, so the candidate reaches zero in seconds.
	t.Run("BlueGreenPrescalesFromZero", func(t *testing.T) {
		autoscalerWindows(t, shortWindows)
		testBlueGreenOnNode(t, rig, true)
	})
}

// testBlueGreenOnNode rolls fraud out from fraud-00002 (serving, on its
// pod, under traffic) to fraud-00001, pre-scaled to fraud-00002's ready
// pods before the one flag write (fromZero: once Knative scaled it to
// zero), then undoes it inside --keep-previous.
func testBlueGreenOnNode(t *testing.T, rig *rolloutRig, fromZero bool) {
	ctx := context.Background()
	// fraud-00002 serves on its pod, under traffic; fraud-00001 is the
	// candidate, pre-scaled to fraud-00002's ready pods before the one
	// flag write.
	setFlags(t, nodeRolloutFlags("canary"))
	if fromZero {
		waitZero(t, "fraud-00001")
	}
	warmOnNode(t, rig, "fraud-00002")
	lead := rig.leader(t, "")
	stopTraffic := rig.traffic(50 * time.Millisecond)
	defer stopTraffic()
	testPoll(t, "fraud-00002 to have a ready pod", 2*time.Minute, 200*time.Millisecond, func() bool { return readyRevisionPods(ctx, "fraud-00002") >= 1 })
	t.Cleanup(func() {
		for _, rev := range []string{"fraud-00001", "fraud-00002"} {
			p := `{"metadata":{"annotations":{"autoscaling.knative.dev/min-scale":"0"}}}`
			_, _ = plane.Dynamic.Resource(paGVR).Namespace(ns).Patch(context.Background(), rev, types.MergePatchType, []byte(p), metav1.PatchOptions{})
		}
	})
	serving, candidate := readyRevisionPods(ctx, "fraud-00002"), readyRevisionPods(ctx, "fraud-00001")
	start := time.Now()
	out, err := rig.cliRollout(t, lead, "start", "fraud", "--to", "fraud-00001", "--strategy", "bluegreen", "--keep-previous", "2m")
	took := time.Since(start)
	if err != nil || !strings.Contains(out, "fraud promoted: fraud-00001 serves") {
		t.Fatalf("blue-green did not promote: %v", err)
	}
	record(fmt.Sprintf("blue-green on the real node: pre-scale %d → %d pods and switch", candidate, serving), took)
	if n := readyRevisionPods(ctx, "fraud-00001"); n < serving {
		t.Errorf("the candidate has %d ready pods after the switch, want %d", n, serving)
	}
	undo := time.Now()
	if out, err := rig.cliRollout(t, lead, "undo", "fraud"); err != nil || !strings.Contains(out, "fraud-00002 serves again") {
		t.Fatalf("undo: %v", err)
	}
	record("blue-green undo on the real node: rollout undo answered", time.Since(undo))
	if n := readyRevisionPods(ctx, "fraud-00002"); n < 1 {
		t.Errorf("fraud-00002 has %d ready pods at the undo: it was not kept warm", n)
	}
	for _, r := range rig.replicas {
		testPoll(t, r.name+" to route fraud to fraud-00002 again", 30*time.Second, 20*time.Millisecond, func() bool {
			code, rev := rig.infer(r, "after-undo")
			return code == 200 && rev == "fraud-00002"
		})
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// restarts is the restart count of pod's container.
func restarts(t *testing.T, pod string) int32 {
	t.Helper()
	p, err := plane.Kube.CoreV1().Pods(ns).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil || len(p.Status.ContainerStatuses) == 0 {
		t.Fatalf("pod %s: %v", pod, err)
	}
	return p.Status.ContainerStatuses[0].RestartCount
}

// killContainer SIGKILLs pod's container through containerd, as a crash
// would end it: no SIGTERM, so the Lease is not released.
func killContainer(t *testing.T, pod string) {
	t.Helper()
	p, err := plane.Kube.CoreV1().Pods(ns).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil || len(p.Status.ContainerStatuses) == 0 {
		t.Fatalf("pod %s: %v", pod, err)
	}
	id, ok := strings.CutPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://")
	if !ok {
		t.Fatalf("pod %s's container id %q is not containerd's", pod, p.Status.ContainerStatuses[0].ContainerID)
	}
	sock := filepath.Join(plane.path("node"), "containerd", "containerd.sock") // startNode's
	if out, err := exec.Command("ctr", "--address", sock, "--namespace", "k8s.io", "tasks", "kill", "--signal", "SIGKILL", id).CombinedOutput(); err != nil {
		t.Fatalf("ctr tasks kill %s (pod %s): %v\n%s", id, pod, err, out)
	}
}

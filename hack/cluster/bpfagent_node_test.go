package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// agentPhases are the phases of a revision pod's cold start the agent
// reports, in order (bpf's Phase* names): container start -> exec -> listen
// -> ready (the send of the runtime's first answer saying ready) -> accept
// of the first request's connection -> its response's send. The runtime
// tags those two connections (runtime/server/coldtags.go), so queue-proxy's
// probe connections in between are not taken for the request's.
var agentPhases = []string{"container_start_to_exec", "exec_to_listen", "listen_to_ready", "ready_to_accept", "accept_to_first_write"}

// testBPFAgentTimeline runs the eBPF agent's DaemonSet as shipped
// (config/security/bpf-agent.yaml, the router image by digest) on the real
// node, wakes a fraud revision from zero, and reads the revision's cold-start
// timeline from the agent: in its /metrics under the names serve exports,
// and in /timelines (what the console shows), each phase present, in order,
// and together within the first response the test measured.
func testBPFAgentTimeline(t *testing.T) {
	ctx := context.Background()
	if err := plane.ApplyFiles(ctx, repoPath("config/security/namespaces.yaml"), repoPath("config/security/rbac.yaml")); err != nil {
		t.Fatal(err)
	}
	digests, err := ImageDigests(env.images)
	if err != nil {
		t.Fatal(err)
	}
	image := digests["ghcr.io/pilotlight/pilotlight-router"]
	objs, err := readObjects(repoPath("config/security/bpf-agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.GetKind() != "DaemonSet" {
			continue
		}
		c := o.Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
		c["image"], c["imagePullPolicy"] = image, "Never"
	}
	start := time.Now()
	if err := plane.Apply(ctx, plane.Dynamic, objs...); err != nil {
		t.Fatal(err)
	}
	var agentIP string
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := plane.Kube.CoreV1().Pods("pilotlight-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=pilotlight-bpf-agent"})
		if err != nil || len(pods.Items) != 1 {
			return false, nil
		}
		for _, c := range pods.Items[0].Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				agentIP = pods.Items[0].Status.PodIP
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("the bpf agent's pod never Ready: %v\npods: %s\n%s\nlogs:\n%s", err, plane.podsSummary(ctx, "pilotlight-system"),
			events(t, "pilotlight-system"), agentLogs())
	}
	record("bpf agent DaemonSet from apply to its pod Ready (real pod)", time.Since(start))
	// The later steps measure cold starts without the probes, as before.
	t.Cleanup(func() {
		_ = plane.Kube.AppsV1().DaemonSets("pilotlight-system").Delete(context.Background(), "pilotlight-bpf-agent", metav1.DeleteOptions{})
	})
	defer func() {
		if t.Failed() {
			t.Logf("agent logs:\n%s", agentLogs())
		}
	}()
	base := "http://" + agentIP + ":9464"
	before := phaseSums(t, base)

	// Whichever revision is at zero first: fraud-00001 has had no request
	// since its deploy, so it usually is already, and the step waits out
	// no drain.
	rev := ""
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		for _, r := range []string{"fraud-00001", "fraud-00002"} {
			if revisionPods(ctx, r) == 0 {
				rev = r
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("neither revision scaled to zero: %v (%s)", err, plane.podsSummary(ctx, ns))
	}
	// A draining pod still holds its CPU request: the cold start would
	// wait Pending behind it (router_node_test.go, waitNoneDraining).
	waitNoneDraining(t)
	waited := time.Since(start)
	t0 := time.Now()
	body, code, _ := revisionRequest(t, rev, "/", fraudTx)
	took := time.Since(t0)
	if code != http.StatusOK {
		t.Fatalf("cold start: %d %s", code, body)
	}
	logRuntimeCgroup(t, ctx, rev)

	// The agent's /metrics: one more observation of each phase for the revision.
	var got map[string]float64
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 45*time.Second, true, func(ctx context.Context) (bool, error) {
		after := phaseSums(t, base)
		got = map[string]float64{}
		for _, ph := range agentPhases {
			k := rev + "/" + ph
			if after[k].count < before[k].count+1 {
				return false, nil
			}
			got[ph] = after[k].sum - before[k].sum
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("the agent's /metrics never carried %s's cold start (phases %v); before %v, now %v", rev, agentPhases, before, phaseSums(t, base))
	}
	var total time.Duration
	for _, ph := range agentPhases {
		d := time.Duration(got[ph] * float64(time.Second))
		if d < 0 {
			t.Errorf("phase %s is negative: %s", ph, d)
		}
		total += d
	}
	if total > took {
		t.Errorf("the phases add up to %s, more than the first response the client measured (%s): %v", total, took, got)
	}
	t.Logf("%s was at zero %s after the agent's apply", rev, waited.Round(time.Millisecond))
	t.Logf("cold start of %s from zero through Knative: first response in %s; the agent's phases (s): %v, together %s", rev, took.Round(time.Millisecond), got, total.Round(time.Millisecond))
	record("first response from zero, the agent's run (client)", took)
	record("  of which the pod's own timeline as the agent saw it (container start to the response)", total)

	// /timelines: what the console shows, its events in order.
	var tls map[string]struct {
		Events []struct {
			Name     string  `json:"name"`
			OffsetMS float64 `json:"offset_ms"`
		} `json:"events"`
		Phases map[string]float64 `json:"phases_ms"`
	}
	b := get(t, base+"/timelines")
	if err := json.Unmarshal(b, &tls); err != nil {
		t.Fatalf("/timelines: %v: %s", err, b)
	}
	tl, ok := tls["fraud/"+rev]
	if !ok {
		t.Fatalf("/timelines has no fraud/%s: %s", rev, b)
	}
	order := []string{"container_start", "exec", "listen", "ready", "accept", "first_write"}
	at := map[string]float64{}
	for _, e := range tl.Events {
		at[e.Name] = e.OffsetMS
	}
	prev := ""
	for _, name := range order {
		v, ok := at[name]
		if !ok {
			t.Errorf("timeline lacks %s: %s", name, b)
			continue
		}
		if prev != "" && v < at[prev] {
			t.Errorf("timeline has %s (%.1f ms) before %s (%.1f ms)", name, v, prev, at[prev])
		}
		prev = name
	}
	t.Logf("the agent's timeline of fraud/%s (ms since exec): %v", rev, at)

	// The console in cluster mode: serve on the Knative backend, reading
	// the agents through their Service's EndpointSlices, shows the same
	// cold start as the revision's waterfall from the container's start.
	admin, err := WriteKubeconfig(filepath.Join(t.TempDir(), "admin.kubeconfig"), plane.Host, plane.CA, plane.Admin.BearerToken)
	if err != nil {
		t.Fatal(err)
	}
	base = startLocal(t, "serve --backend knative --bpf-agents", "http://127.0.0.1:18094", "/healthz", env.pilotlight,
		"serve", "--dev", "--addr", "127.0.0.1:18094", "--admin-addr", "", "--functions", repoPath("functions"),
		"--backend", "knative", "--knative-via", "service", "--namespace", ns, "--kubeconfig", admin,
		"--bpf-agents", "pilotlight-system/pilotlight-bpf-agent")
	var marks []string
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		var view struct {
			Functions []struct {
				Name      string `json:"name"`
				Revisions []struct {
					Name       string `json:"name"`
					ColdStarts []struct {
						Origin string `json:"origin"`
						Marks  []struct {
							Name string `json:"name"`
						} `json:"marks"`
					} `json:"cold_starts"`
				} `json:"revisions"`
			} `json:"functions"`
		}
		if err := json.Unmarshal(get(t, base+"/ui/api/state"), &view); err != nil {
			return false, err
		}
		for _, f := range view.Functions {
			for _, r := range f.Revisions {
				if f.Name != "fraud" || r.Name != rev || len(r.ColdStarts) == 0 || r.ColdStarts[0].Origin != "kernel" {
					continue
				}
				marks = nil
				for _, m := range r.ColdStarts[0].Marks {
					marks = append(marks, m.Name)
				}
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("the console (serve --backend knative --bpf-agents) never showed %s's cold start from the agent: %v", rev, err)
	}
	if len(marks) < 4 || marks[0] != "container_start" {
		t.Errorf("the console's waterfall of %s has marks %v, want container_start, exec, listen, ready…", rev, marks)
	}
	t.Logf("the console shows %s's cold start from the agent: %v", rev, marks)
}

type histSum struct {
	sum   float64
	count uint64
}

var phaseLine = regexp.MustCompile(`^pilotlight_bpf_cold_start_phase_seconds_(sum|count)\{(.*)\} (\S+)$`)

// phaseSums reads pilotlight_bpf_cold_start_phase_seconds for fraud from
// the agent's /metrics, keyed "revision/phase".
func phaseSums(t *testing.T, base string) map[string]histSum {
	t.Helper()
	out := map[string]histSum{}
	for _, line := range strings.Split(string(get(t, base+"/metrics")), "\n") {
		m := phaseLine.FindStringSubmatch(line)
		if m == nil || !strings.Contains(m[2], `function="fraud"`) {
			continue
		}
		lab := map[string]string{}
		for _, kv := range strings.Split(m[2], ",") {
			k, v, _ := strings.Cut(kv, "=")
			lab[k] = strings.Trim(v, `"`)
		}
		key := lab["revision"] + "/" + lab["phase"]
		h := out[key]
		v, _ := strconv.ParseFloat(m[3], 64)
		if m[1] == "sum" {
			h.sum = v
		} else {
			h.count = uint64(v)
		}
		out[key] = h
	}
	return out
}

func get(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return b
}

// logRuntimeCgroup shows where runc put the revision pod's runtime process
// on this machine: the v1 hierarchies carry the kubelet's pod path, and the
// unified (v2) line says whether bpf_get_current_cgroup_id could tell pods
// apart here.
func logRuntimeCgroup(t *testing.T, ctx context.Context, rev string) {
	pods, err := plane.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "serving.knative.dev/revision=" + rev})
	if err != nil || len(pods.Items) == 0 {
		return
	}
	uid := string(pods.Items[0].UID)
	procs, _ := filepath.Glob("/proc/[0-9]*/cgroup")
	for _, f := range procs {
		b, err := os.ReadFile(f)
		if err != nil || !strings.Contains(string(b), "pod"+uid) {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join(filepath.Dir(f), "comm"))
		if strings.TrimSpace(string(comm)) == "pilotlight-runt" {
			t.Logf("the runtime of pod %s (pid %s) is in the cgroups:\n%s", uid, filepath.Base(filepath.Dir(f)), b)
			return
		}
	}
}

// agentLogs reads the agent pod's container log where the kubelet writes it.
func agentLogs() string {
	m, _ := filepath.Glob(filepath.Join(env.work, "node", "pod-logs", "pilotlight-system_pilotlight-bpf-agent-*", "*", "*.log"))
	var out strings.Builder
	for _, f := range m {
		fmt.Fprintf(&out, "%s:\n%s\n", f, tail(f, 40))
	}
	return out.String()
}

package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
)

// fraudTx is the transaction every end-to-end check sends.
const fraudTx = `{"card_id": "c-1", "amount": 420.5, "avg_amount_30d": 60, "merchant_category": "electronics", "country": "GB", "home_country": "GB", "hour": 3, "device_new": true, "tx_last_24h": 7}`

// TestRealNode runs on the real node (make cluster-test-node): the node is
// containerd's, and a pod of the runtime image `make images` built, named
// by digest, serves fraud with the prediction a local instance gives.
func TestRealNode(t *testing.T) {
	if env.images == "" {
		t.Skip("the real node runs under make cluster-test-node (CLUSTER_NODE=1)")
	}
	ctx := context.Background()
	rv, err := plane.RuntimeVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rv, "containerd://") {
		t.Fatalf("node %s reports containerRuntimeVersion %q, want containerd://…", RealNodeName, rv)
	}
	t.Logf("node %s Ready on %s", RealNodeName, rv)
	for _, step := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"RuntimePodServesFraud", testRuntimePod},
		{"DeployAnswersThroughActivatorAndQueueProxy", testKnativeDataPath},
		{"BPFAgentTimeline", testBPFAgentTimeline},
		{"RouterDeploymentAnswersAsLocalServe", testRouterDeployment},
		{"KnServiceCreateServes", testKnCreatesRecommend},
		{"BenchClusterColdStart", testBenchClusterColdStart},
		{"ScaleToZeroAndBack", testScaleFromZero},
		{"RolloutsOnTheRouterDeployment", testRolloutsOnNode},
	} {
		if !t.Run(step.name, step.fn) {
			t.FailNow() // later steps build on this one
		}
	}
}

func testRuntimePod(t *testing.T) {
	ctx := context.Background()
	if err := plane.ApplyFiles(ctx, repoPath("config/security/namespaces.yaml")); err != nil {
		t.Fatal(err)
	}
	digests, err := ImageDigests(env.images)
	if err != nil {
		t.Fatal(err)
	}
	image := digests["ghcr.io/pilotlight/pilotlight"]
	if image == "" {
		t.Fatalf("no runtime image among %v", digests)
	}
	// The pod Knative's manifests describe, less Knative: the restricted
	// namespace admits it only with the manifests' security context.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "fraud-runtime", Namespace: ns, Labels: map[string]string{"app": "fraud-runtime"}},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken: ptr.To(false),
			EnableServiceLinks:           ptr.To(false),
			Containers: []corev1.Container{{
				Name: "runtime", Image: image, ImagePullPolicy: corev1.PullNever,
				Args:  []string{"--function", "/functions/fraud", "--revision", "fraud-00002"},
				Env:   []corev1.EnvVar{{Name: "GOMAXPROCS", Value: "2"}},
				Ports: []corev1.ContainerPort{{ContainerPort: 8080, Name: "http"}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
					Path: "/v2/health/ready", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
					RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](65532), RunAsGroup: ptr.To[int64](65532),
					Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
					SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
				},
			}},
		},
	}
	start := time.Now()
	if _, err := plane.Kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	var ip string
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := plane.Kube.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				ip = p.Status.PodIP
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		p, _ := plane.Kube.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		t.Fatalf("runtime pod never Ready: %v\nstatus: %s\n%s\nlogs:\n%s", err, podStatus(p), events(t, ns), podLogs(pod.Name))
	}
	record("runtime pod from create to Ready (real container)", time.Since(start))
	t.Logf("runtime pod Ready at %s in %s (image %s)", ip, time.Since(start).Round(time.Millisecond), image)

	// The same request to a local instance of the same revision.
	local := startLocalRuntime(t)
	for _, c := range []struct{ name, path, body string }{
		{"function", "/", fraudTx},
		{"v2 infer", "/v2/models/fraud/infer", v2FraudBody(t)},
	} {
		inPod, code := post(t, "http://"+ip+":8080"+c.path, c.body)
		if code != http.StatusOK {
			t.Fatalf("%s: pod answered %d: %s", c.name, code, inPod)
		}
		onHost, _ := post(t, local+c.path, c.body)
		if !sameJSONNumbers(t, inPod, onHost) {
			t.Errorf("%s: pod's answer %s differs from the local instance's %s", c.name, inPod, onHost)
		} else {
			t.Logf("%s: pod and local instance agree: %s", c.name, inPod)
		}
	}
}

func podStatus(p *corev1.Pod) string {
	if p == nil {
		return "no pod"
	}
	b, _ := json.Marshal(p.Status)
	return string(b)
}

// podLogs reads the pod's container logs where the kubelet writes them.
func podLogs(name string) string {
	m, _ := filepath.Glob(filepath.Join(env.work, "node", "pod-logs", ns+"_"+name+"_*", "*", "*.log"))
	var out strings.Builder
	for _, f := range m {
		fmt.Fprintf(&out, "%s:\n%s\n", f, tail(f, 20))
	}
	return out.String()
}

// startLocalRuntime runs the same revision from the repository on the
// test's loopback, as `serve` starts an instance.
func startLocalRuntime(t *testing.T) string {
	t.Helper()
	return startLocal(t, "local runtime", "http://127.0.0.1:18091", "/v2/health/ready", env.runtime,
		"--function", repoPath("functions/fraud"), "--revision", "fraud-00002", "--listen", "127.0.0.1", "--port", "18091")
}

// startLocal runs bin with args on the test's loopback (ONNX Runtime from
// the repository's cache), waits until base+ready answers 200, and stops it
// when the test ends, showing its log if the test failed.
func startLocal(t *testing.T, name, base, ready, bin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "ONNXRUNTIME_LIB="+repoPath(".cache/onnxruntime/1.24.1/libonnxruntime.so.1"))
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s:\n%s", name, lastLines(logs.String(), 20))
		}
	})
	waitHTTP(t, base+ready)
	return base
}

// v2FraudBody is the V2 request the fraud function's tests send.
func v2FraudBody(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(repoPath("functions/fraud/testdata/infer.json"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func post(t *testing.T, url, body string) (string, int) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode
}

// sameJSONNumbers compares two answers with their ids and timings left
// out: the predictions must be equal, number for number.
func sameJSONNumbers(t *testing.T, a, b string) bool {
	t.Helper()
	var x, y any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return a == b
	}
	return reflect.DeepEqual(stripVolatile(x), stripVolatile(y))
}

func stripVolatile(v any) any {
	switch m := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, x := range m {
			switch k {
			case "id", "prediction_id", "latency_ms", "duration_ms", "took_ms", "cold_start", "instance":
				continue
			}
			out[k] = stripVolatile(x)
		}
		return out
	case []any:
		out := make([]any, len(m))
		for i, x := range m {
			out[i] = stripVolatile(x)
		}
		return out
	}
	return v
}

// nodeFunctionsDir copies fraud's function directory with what this
// two-CPU node needs: one session per instance (the generated CPU request
// is half a CPU per session thread, and two revisions, their queue-proxies
// and the activator must fit on two CPUs), and pods kept 1s after the
// revision's last request, so scale to zero is measured in seconds.
func nodeFunctionsDir(t *testing.T) string {
	return fraudCopy(t, func(y string) string {
		return strings.Replace(y, "  scaleToZeroAfter: 30s\n", "  scaleToZeroAfter: 1s\n", 1)
	}, "scaleToZeroAfter: 1s")
}

// fraudCopy copies functions/fraud into a new functions root with one
// session per instance and edit applied to its function.yaml; the copy
// must then contain want (else the shipped file changed under the test).
func fraudCopy(t *testing.T, edit func(string) string, want string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "functions")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-r", repoPath("functions/fraud"), filepath.Join(dst, "fraud")).CombinedOutput(); err != nil {
		t.Fatalf("copy functions/fraud: %v %s", err, out)
	}
	f := filepath.Join(dst, "fraud", "function.yaml")
	raw, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	y := edit(strings.Replace(string(raw), "  sessions: 2\n", "  sessions: 1\n", 1))
	if !strings.Contains(y, "sessions: 1\n") || !strings.Contains(y, want) {
		t.Fatalf("functions/fraud/function.yaml no longer holds the lines this test edits (sessions, and what gives %q)", want)
	}
	if err := os.WriteFile(f, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

// revisionRequest sends fraudTx to a revision's Kubernetes Service as
// Knative's ingress would: the Service's address, with the headers the
// activator reads the revision from (KIngress is still the stand-in, so no
// gateway sets them).
func revisionRequest(t *testing.T, rev, path, body string) (string, int, http.Header) {
	t.Helper()
	svc, err := plane.Kube.CoreV1().Services(ns).Get(context.Background(), rev, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("revision Service %s: %v", rev, err)
	}
	// The revision's port: "http" (80), or "http2" (81) when its
	// container port is named h2c, as the runtime's is.
	addr := ""
	for _, p := range svc.Spec.Ports {
		if p.Name == "http" || (p.Name == "http2" && addr == "") {
			addr = net.JoinHostPort(svc.Spec.ClusterIP, fmt.Sprint(p.Port))
		}
	}
	if addr == "" {
		t.Fatalf("revision Service %s has no http or http2 port: %v", rev, svc.Spec.Ports)
	}
	c := &http.Client{Timeout: 2 * time.Minute}
	var resp *http.Response
	// kube-proxy writes a new Service's rules a moment after Knative
	// calls the revision Ready: a refused or unroutable dial is retried.
	for deadline := time.Now().Add(time.Minute); ; {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Knative-Serving-Revision", rev)
		req.Header.Set("Knative-Serving-Namespace", ns)
		resp, err = c.Do(req)
		var op *net.OpError
		if err == nil || !errors.As(err, &op) || op.Op != "dial" || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("POST %s through Service %s (%s): %v", path, rev, addr, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode, resp.Header
}

// Knative's autoscaler windows (config-autoscaler's stable-window and
// scale-to-zero-grace-period) the real node's steps run under.
type windows struct{ stable, grace string }

var (
	// shortWindows are Knative's shortest, so scale to zero takes seconds
	// (the scale-from-zero checks wait for it again and again).
	shortWindows = windows{"6s", "2s"}
	// defaultWindows are Knative's defaults, for steps whose revisions
	// must stay up under traffic. Under the short ones, a revision whose
	// traffic stalls for 8 s goes to zero, and on the 2-CPU node its next
	// pod waits Pending until the last one's 30 s drain frees its CPU
	// request: a rollout's paced requests, held that long, left its
	// steps without the requests to judge (CI, stop 34).
	defaultWindows = windows{"60s", "30s"}
)

// autoscalerWindows sets Knative's autoscaler windows; the KPA reconciler
// resyncs every PodAutoscaler on the change.
func autoscalerWindows(t *testing.T, w windows) {
	t.Helper()
	patch, _ := json.Marshal(map[string]any{"data": map[string]string{"stable-window": w.stable, "scale-to-zero-grace-period": w.grace}})
	if _, err := plane.Kube.CoreV1().ConfigMaps(KnativeNamespace).Patch(context.Background(), "config-autoscaler", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("set Knative's autoscaler windows (stable %s, grace %s): %v", w.stable, w.grace, err)
	}
}

func testKnativeDataPath(t *testing.T) {
	ctx := context.Background()
	if err := plane.ApplyFiles(ctx, repoPath("config/security/namespaces.yaml"), repoPath("config/security/rbac.yaml")); err != nil {
		t.Fatal(err)
	}
	autoscalerWindows(t, shortWindows)
	kc, _, err := plane.ServiceAccountKubeconfig(ctx, ns, "pilotlight-deployer")
	if err != nil {
		t.Fatal(err)
	}
	digests, err := ImageDigests(env.images)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, _, err := deploy(t, kc, "--image", digests["ghcr.io/pilotlight/pilotlight"], "--functions-dir", nodeFunctionsDir(t), "--timeout", "5m"); err != nil {
		t.Fatalf("deploy: %v\npods: %s\n%s", err, plane.podsSummary(ctx, ns), events(t, ns))
	}
	record("deploy fraud from empty to Ready (real pods, 00001 and 00002)", time.Since(start))
	t.Logf("pods: %s", plane.podsSummary(ctx, ns))

	local := startLocalRuntime(t)
	want, _ := post(t, local+"/", fraudTx)
	got, code, _ := revisionRequest(t, "fraud-00002", "/", fraudTx)
	if code != http.StatusOK || !sameJSONNumbers(t, got, want) {
		t.Fatalf("fraud-00002 through its Service answered %d %s; the local instance %s", code, got, want)
	}
	wantV2, _ := post(t, local+"/v2/models/fraud/infer", v2FraudBody(t))
	gotV2, code, _ := revisionRequest(t, "fraud-00002", "/v2/models/fraud/infer", v2FraudBody(t))
	if code != http.StatusOK || !sameJSONNumbers(t, gotV2, wantV2) {
		t.Fatalf("V2 infer through fraud-00002's Service answered %d %s; the local instance %s", code, gotV2, wantV2)
	}
	t.Logf("fraud-00002 through Knative (activator or queue-proxy): %s", got)
}

// revisionPods counts the revision's pods that could serve: not
// terminating, or still Ready. A pod Knative scaled away drains for up to
// 30s (queue-proxy's drain, then the runtime's) and answers while it is
// Ready, so the activator may still hold it as a backend; once it is
// neither, the revision is at zero and the next request is a cold start.
func revisionPods(ctx context.Context, rev string) int {
	pods, err := plane.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "serving.knative.dev/revision=" + rev})
	if err != nil {
		return -1
	}
	n := 0
	for _, p := range pods.Items {
		ready := false
		for _, c := range p.Status.Conditions {
			ready = ready || (c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue)
		}
		if p.DeletionTimestamp == nil || ready {
			n++
		}
	}
	return n
}

func testScaleFromZero(t *testing.T) {
	ctx := context.Background()
	n := 10
	if v := os.Getenv("CLUSTER_COLD_STARTS"); v != "" {
		fmt.Sscan(v, &n)
	}
	rev := "fraud-00002"
	var took []time.Duration
	for i := range n {
		start := time.Now()
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			return revisionPods(ctx, rev) == 0, nil
		})
		if err != nil {
			t.Fatalf("cold start %d: %s never scaled to zero: %v (%s)", i, rev, err, plane.podsSummary(ctx, ns))
		}
		if i == 0 {
			record("scale to zero after the last request", time.Since(start))
		}
		t0 := time.Now()
		body, code, _ := revisionRequest(t, rev, "/", fraudTx)
		d := time.Since(t0)
		if code != http.StatusOK {
			t.Fatalf("cold start %d: %d %s", i, code, body)
		}
		took = append(took, d)
		t.Logf("cold start %d: first response from zero in %s", i, d.Round(time.Millisecond))
	}
	slices.Sort(took)
	p50, p99 := quantile(took, 0.5), quantile(took, 0.99)
	record(fmt.Sprintf("first response from zero, p50 over %d cold starts", n), p50)
	record(fmt.Sprintf("first response from zero, p99 over %d cold starts", n), p99)
	t.Logf("first response from zero over %d cold starts: p50 %s p99 %s (min %s max %s)", n, p50.Round(time.Millisecond),
		p99.Round(time.Millisecond), took[0].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
}

// quantile of sorted durations, nearest rank.
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

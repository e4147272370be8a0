package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"k8s.io/client-go/util/retry"
)

// Flag-driven rollouts with two router replicas against the live API
// server: the flag state in the ConfigMap pilotlight-flags, rollouts
// driven by the holder of the Lease pilotlight-router, analysis reading
// both replicas through a Service's EndpointSlice.
//
// STAND-IN: the router Deployment's two pods. kwok runs no container, so
// the replicas are `pilotlight serve` processes in this network namespace
// (each on an address of its own, with its own POD_NAME, the router
// service account's token, and the Deployment's --flags-configmap and
// --lease), and the EndpointSlice the endpoints controller would write for
// them belongs to a selector-less Service of their own
// (routerStandInService): the real pilotlight-router Service's slices list
// the kwok pods, which serve nothing. The revisions run on the local
// engine (real runtime processes, real ONNX Runtime), so real traffic
// flows and a broken revision really fails.

const (
	flagsConfigMap       = "pilotlight-flags"  // the names the router's Role allows
	routerLease          = "pilotlight-router" // (config/security/rbac.yaml)
	routerStandInService = "pilotlight-router-replicas"
	routerHTTPPort       = "18080" // the autoscaler holds :8080 in this namespace
	routerAdminPort      = 19090
)

// rolloutFlags is the flag document of the rollout tests: fraud's three
// revisions (the third's model is broken on purpose), stable by default.
const rolloutFlags = `{"flags": {
  "fraud-revision": {"state": "ENABLED", "variants": {"stable": "fraud-00001", "canary": "fraud-00002", "broken": "fraud-00003"},
    "defaultVariant": "stable", "metadata": {"function": "fraud"}}}}`

type routerReplica struct {
	name, ip string
	cmd      *exec.Cmd
	logs     *syncBuffer
	args     []string
	env      []string
	// pod is set for a replica that is a pod of the router Deployment on
	// the real node (rollout_node_test.go): the kubelet runs it, on the
	// Deployment's ports, and restarts it when it dies.
	pod bool
}

func (r *routerReplica) base() string {
	if r.pod {
		return "http://" + r.ip + ":8080" // config/router/router.yaml's ports
	}
	return "http://" + r.ip + ":" + routerHTTPPort
}

func (r *routerReplica) admin() string {
	if r.pod {
		return "http://" + r.ip + ":9090"
	}
	return fmt.Sprintf("http://%s:%d", r.ip, routerAdminPort)
}

// up says whether the replica runs (a pod always does, or is restarted).
func (r *routerReplica) up() bool { return r.pod || r.cmd != nil }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// rolloutRig is what the rollout tests share.
type rolloutRig struct {
	replicas  []*routerReplica
	adminKey  string
	appKey    string
	functions string
}

// rolloutFunctionsDir copies fraud with one session per instance (two
// replicas, each with up to three revisions, on two CPUs) and adds
// fraud-00003, whose model file is not a model: its instances fail to
// load, and every request to it is answered 503.
func rolloutFunctionsDir(t *testing.T) string {
	dst := fraudCopy(t, func(y string) string {
		return strings.Replace(y, "    tag: canary\n", "    tag: canary\n  - name: fraud-00003 # broken on purpose: not an ONNX model\n    model: models/fraud-00003.onnx\n", 1)
	}, "fraud-00003")
	if err := os.WriteFile(filepath.Join(dst, "fraud", "models", "fraud-00003.onnx"), []byte("not an ONNX model\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

// setFlags writes doc as the flag ConfigMap's document (creating it).
func setFlags(t *testing.T, doc string) {
	t.Helper()
	ctx := context.Background()
	cms := plane.Kube.CoreV1().ConfigMaps(ns)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := cms.Get(ctx, flagsConfigMap, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: flagsConfigMap}, Data: map[string]string{"flags.json": doc}}, metav1.CreateOptions{})
			return err
		}
		if err != nil {
			return err
		}
		cm.Data = map[string]string{"flags.json": doc}
		cm.Annotations = nil // no rollout records from an earlier test
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("write the flag ConfigMap: %v", err)
	}
}

// startRouterReplicas starts the two replicas with the router
// Deployment's cluster arguments, and the selector-less Service and
// EndpointSlice that list them.
func startRouterReplicas(t *testing.T, backend []string, ips ...string) *rolloutRig {
	t.Helper()
	ctx := context.Background()
	if err := plane.ApplyFiles(ctx, repoPath("config/security/namespaces.yaml"), repoPath("config/security/rbac.yaml")); err != nil {
		t.Fatal(err)
	}
	kc, _, err := plane.ServiceAccountKubeconfig(ctx, ns, "pilotlight-router")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys.yaml")
	newKey := func(args ...string) string {
		out, err := exec.Command(env.pilotlight, append([]string{"keys", "new", "--file", keys}, args...)...).Output()
		if err != nil {
			t.Fatalf("keys new %v: %v", args, err)
		}
		return strings.TrimSpace(string(out))
	}
	rig := &rolloutRig{adminKey: newKey("--id", "ops", "--admin"), appKey: newKey("--id", "app", "--functions", "*", "--rps", "5000", "--burst", "10000")}
	mounted := filepath.Join(dir, "flags.json") // the mounted copy, the fallback
	if err := os.WriteFile(mounted, []byte(rolloutFlags), 0o644); err != nil {
		t.Fatal(err)
	}

	// The router Service's stand-in and its EndpointSlice: what the
	// endpoints controller writes for a Service that selects two ready pods.
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: routerStandInService, Namespace: ns},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "admin", Port: routerAdminPort}}}}
	if _, err := plane.Kube.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); IgnoreAlreadyExists(err) != nil {
		t.Fatal(err)
	}
	ready, port, portName := true, int32(routerAdminPort), "admin"
	dataPort, dataName := int32(18080), "http" // routerHTTPPort: outcomes are forwarded between replicas on it
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: routerStandInService + "-replicas", Namespace: ns,
			Labels: map[string]string{discoveryv1.LabelServiceName: routerStandInService, discoveryv1.LabelManagedBy: "cluster-test"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &port}, {Name: &dataName, Port: &dataPort}},
	}
	for i, ip := range ips {
		pod := fmt.Sprintf("pilotlight-router-stand-in-%d", i)
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod}})
	}
	_ = plane.Kube.DiscoveryV1().EndpointSlices(ns).Delete(ctx, slice.Name, metav1.DeleteOptions{})
	if _, err := plane.Kube.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// A router an earlier test killed (testServeResolves runs the
	// Deployment's arguments, --lease included) holds the Lease until it
	// expires; an admin deletes a dead holder's Lease rather than wait.
	if err := plane.Kube.CoordinationV1().Leases(ns).Delete(ctx, routerLease, metav1.DeleteOptions{}); IgnoreNotFound(err) != nil {
		t.Fatal(err)
	}
	for i, ip := range ips {
		r := &routerReplica{name: fmt.Sprintf("pilotlight-router-stand-in-%d", i), ip: ip, logs: &syncBuffer{}}
		r.args = append([]string{"serve",
			"--addr=" + ip + ":" + routerHTTPPort, fmt.Sprintf("--admin-addr=%s:%d", ip, routerAdminPort),
			"--keys-file=" + keys, "--flags=" + mounted, "--kubeconfig=" + kc,
			"--flags-configmap=" + ns + "/" + flagsConfigMap, "--lease=" + ns + "/" + routerLease,
			"--router-service=" + ns + "/" + routerStandInService}, backend...)
		r.env = append(os.Environ(), "POD_NAME="+r.name)
		if lib := repoPath(".cache/onnxruntime/1.24.1/libonnxruntime.so.1"); fileExists(lib) {
			r.env = append(r.env, "ONNXRUNTIME_LIB="+lib)
		}
		r.start(t)
		rig.replicas = append(rig.replicas, r)
	}
	t.Cleanup(func() {
		for _, r := range rig.replicas {
			r.stop()
			if t.Failed() {
				t.Logf("%s (%s):\n%s", r.name, r.ip, lastLines(r.logs.String(), 40))
			}
		}
	})
	for _, r := range rig.replicas {
		waitHTTP(t, r.base()+"/healthz")
	}
	return rig
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func (r *routerReplica) start(t *testing.T) {
	t.Helper()
	r.cmd = exec.Command(env.pilotlight, r.args...)
	r.cmd.Env = r.env
	r.cmd.Stdout, r.cmd.Stderr = r.logs, r.logs
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
}

// stop ends the replica as the kubelet does: SIGTERM, then SIGKILL.
func (r *routerReplica) stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = r.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = r.cmd.Process.Kill()
		<-done
	}
	r.cmd = nil
}

// leader waits for the Lease to name one of the replicas.
func (rig *rolloutRig) leader(t *testing.T, not string) *routerReplica {
	t.Helper()
	var out *routerReplica
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := plane.Kube.CoordinationV1().Leases(ns).Get(ctx, routerLease, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return false, nil
		}
		for _, r := range rig.replicas {
			if r.name == *l.Spec.HolderIdentity && r.name != not && r.up() {
				out = r
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no replica (other than %q) holds the Lease %s: %v", not, routerLease, err)
	}
	return out
}

// ofrep asks a replica which revision the flag gives targeting key key,
// through OFREP: the same flag state the replica routes by.
func (rig *rolloutRig) ofrep(r *routerReplica, key string) string {
	req, _ := http.NewRequest(http.MethodPost, r.base()+"/ofrep/v1/evaluate/flags/fraud-revision", strings.NewReader(fmt.Sprintf(`{"context":{"targetingKey":%q}}`, key)))
	req.Header.Set("Authorization", "Bearer "+rig.appKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var v struct {
		Value string `json:"value"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&v)
	return v.Value
}

// infer sends one fraud transaction through a replica as user and returns
// the status and the revision that served it.
func (rig *rolloutRig) infer(r *routerReplica, user string) (int, string) {
	req, _ := http.NewRequest(http.MethodPost, r.base()+"/functions/fraud", strings.NewReader(fraudTx))
	req.Header.Set("Authorization", "Bearer "+rig.appKey)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-User-ID", user)
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return 0, ""
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("X-Pilotlight-Revision")
}

// traffic sends requests through both replicas (one worker each, users
// spread over the fractional buckets) until stop is called; it returns
// the answers by replica, status and revision.
func (rig *rolloutRig) traffic(pacing time.Duration) (stop func() map[string]int) {
	var (
		mu     sync.Mutex
		counts = map[string]int{}
		quit   = make(chan struct{})
		wg     sync.WaitGroup
		seq    atomic.Int64
	)
	for _, r := range rig.replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-quit:
					return
				case <-time.After(pacing):
				}
				if !r.up() {
					continue
				}
				code, rev := rig.infer(r, fmt.Sprintf("user-%d", seq.Add(1)))
				mu.Lock()
				counts[fmt.Sprintf("%s %d %s", r.name, code, rev)]++
				mu.Unlock()
			}
		}()
	}
	return func() map[string]int {
		close(quit)
		wg.Wait()
		return counts
	}
}

// cliRollout runs `pilotlight rollout ARGS` against a replica's admin
// port with the admin key, as a person would.
func (rig *rolloutRig) cliRollout(t *testing.T, r *routerReplica, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(env.pilotlight, append([]string{"rollout"}, append(args, "--router", r.admin())...)...)
	cmd.Env = append(os.Environ(), "PILOTLIGHT_ADMIN_KEY="+rig.adminKey)
	out, err := cmd.CombinedOutput()
	t.Logf("pilotlight rollout %s → %v\n%s", strings.Join(args, " "), err, lastLines(string(out), 20))
	return string(out), err
}

// flagHistory follows the flag ConfigMap through a watch of its own and
// keeps every version's document and rollout records, in order.
type flagHistory struct {
	mu       sync.Mutex
	versions []*corev1.ConfigMap
	stop     func()
}

func followFlags(t *testing.T) *flagHistory {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cms := plane.Kube.CoreV1().ConfigMaps(ns)
	cm, err := cms.Get(ctx, flagsConfigMap, metav1.GetOptions{})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	h := &flagHistory{versions: []*corev1.ConfigMap{cm}}
	// A RetryWatcher resumes from the last version seen if the API
	// server ends the watch, so no version is missed.
	rw, err := watchtools.NewRetryWatcherWithContext(ctx, cm.ResourceVersion, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = "metadata.name=" + flagsConfigMap
			return cms.Watch(ctx, o)
		}})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range rw.ResultChan() {
			switch o := ev.Object.(type) {
			case *corev1.ConfigMap:
				h.mu.Lock()
				h.versions = append(h.versions, o)
				h.mu.Unlock()
			case *metav1.Status:
				t.Logf("flag ConfigMap watch: %s", o.Message)
			}
		}
	}()
	h.stop = func() { rw.Stop(); cancel(); <-done }
	t.Cleanup(h.stop)
	return h
}

// fraudStates are the distinct successive states of fraud's flag
// ("default canary", "default stable; canary 20%", ...).
func (h *flagHistory) fraudStates(t *testing.T) []string {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, cm := range h.versions {
		s := fraudState(t, cm.Data["flags.json"])
		if len(out) == 0 || out[len(out)-1] != s {
			out = append(out, s)
		}
	}
	return out
}

func fraudState(t *testing.T, doc string) string {
	t.Helper()
	var d struct {
		Flags map[string]struct {
			DefaultVariant string         `json:"defaultVariant"`
			Targeting      map[string]any `json:"targeting"`
		} `json:"flags"`
	}
	if err := json.Unmarshal([]byte(doc), &d); err != nil {
		t.Fatalf("flag ConfigMap document does not parse: %v", err)
	}
	f := d.Flags["fraud-revision"]
	s := "default " + f.DefaultVariant
	if fr, ok := f.Targeting["fractional"].([]any); ok {
		for _, b := range fr {
			if pair, ok := b.([]any); ok && len(pair) == 2 && pair[0] != f.DefaultVariant {
				s += fmt.Sprintf("; %v %v%%", pair[0], pair[1])
			}
		}
	}
	return s
}

// concurrentWriter adds a flag of its own to the document every period,
// with a read-modify-write carrying the resourceVersion (as kubectl edit
// does), retrying on conflict, until stop; it returns the flags it added.
func concurrentWriter(t *testing.T, period time.Duration) (stop func() []string) {
	t.Helper()
	quit := make(chan struct{})
	done := make(chan []string)
	go func() {
		var added []string
		cms := plane.Kube.CoreV1().ConfigMaps(ns)
		for i := 0; ; i++ {
			select {
			case <-quit:
				done <- added
				return
			case <-time.After(period):
			}
			name := fmt.Sprintf("writer-%d", i)
			err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
				cm, err := cms.Get(context.Background(), flagsConfigMap, metav1.GetOptions{})
				if err != nil {
					return err
				}
				var d map[string]any
				if err := json.Unmarshal([]byte(cm.Data["flags.json"]), &d); err != nil {
					return err
				}
				d["flags"].(map[string]any)[name] = map[string]any{"state": "ENABLED", "variants": map[string]any{"on": true, "off": false}, "defaultVariant": "on"}
				raw, _ := json.Marshal(d)
				cm.Data["flags.json"] = string(raw)
				_, err = cms.Update(context.Background(), cm, metav1.UpdateOptions{})
				return err
			})
			if err == nil {
				added = append(added, name)
			}
		}
	}()
	return func() []string { close(quit); return <-done }
}

// checkPromoted is what a canary rollout started beside a concurrent
// writer must leave: promoted, judged on both replicas' traffic (read
// through the EndpointSlice), the canary served by each, every flag state
// written once in order, and every concurrent write kept.
func checkPromoted(t *testing.T, rig *rolloutRig, out string, err error, counts map[string]int, hist *flagHistory, added []string) {
	t.Helper()
	t.Logf("answers (replica status revision): %v", counts)
	if err != nil || !strings.Contains(out, "fraud promoted: fraud-00002 serves") {
		t.Fatalf("rollout start did not promote: %v", err)
	}
	if !strings.Contains(out, "endpointslice 2/2") {
		t.Errorf("the decisions do not say they read both replicas through the EndpointSlice (endpointslice 2/2)")
	}
	for _, r := range rig.replicas {
		if counts[r.name+" 200 fraud-00002"] == 0 {
			t.Errorf("%s never served the canary: %v", r.name, counts)
		}
	}
	time.Sleep(500 * time.Millisecond) // the watch's last events
	states := hist.fraudStates(t)
	t.Logf("fraud's flag, every state the ConfigMap went through: %q", states)
	if want := []string{"default stable", "default stable; canary 50%", "default stable; canary 100%", "default canary"}; !slices.Equal(states, want) {
		t.Errorf("flag states %q, want %q", states, want)
	}
	final := finalDoc(t)
	for _, name := range added {
		if !strings.Contains(final, `"`+name+`"`) {
			t.Errorf("the concurrent writer's flag %s was lost", name)
		}
	}
	t.Logf("the concurrent writer added %d flags during the rollout; all are in the ConfigMap", len(added))
	if len(added) < 3 {
		t.Errorf("only %d concurrent writes landed during the rollout", len(added))
	}
}

func finalDoc(t *testing.T) string {
	t.Helper()
	cm, err := plane.Kube.CoreV1().ConfigMaps(ns).Get(context.Background(), flagsConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cm.Data["flags.json"]
}

func testPoll(t *testing.T, what string, within, every time.Duration, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), every, within, true, func(context.Context) (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

var paGVR = schema.GroupVersionResource{Group: "autoscaling.internal.knative.dev", Version: "v1alpha1", Resource: "podautoscalers"}

// readyRevisionPods counts rev's pods that report Ready (kwok marks them).
func readyRevisionPods(ctx context.Context, rev string) int {
	pods, err := plane.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "serving.knative.dev/revision=" + rev})
	if err != nil {
		return -1
	}
	n := 0
	for _, p := range pods.Items {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue && p.DeletionTimestamp == nil {
				n++
			}
		}
	}
	return n
}

// minScaleOf reads autoscaling.knative.dev/min-scale on rev's Revision
// and PodAutoscaler.
func minScaleOf(t *testing.T, rev string) (onRevision, onPA string) {
	t.Helper()
	ctx := context.Background()
	r, err := plane.Dynamic.Resource(revGVR).Namespace(ns).Get(ctx, rev, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pa, err := plane.Dynamic.Resource(paGVR).Namespace(ns).Get(ctx, rev, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetAnnotations()["autoscaling.knative.dev/min-scale"], pa.GetAnnotations()["autoscaling.knative.dev/min-scale"]
}

// TestKnativeBlueGreenPrescales runs a blue-green rollout on the Knative
// backend: the candidate revision is pre-scaled to the serving revision's
// ready pods with min-scale before the one flag write, the previous
// revision keeps its pods for --keep-previous, and undo finds it warm.
// Knative's real controller and autoscaler act on the annotation; kwok
// stands in for the kubelet, so "ready" is kwok's Ready pod.
func TestKnativeBlueGreenPrescales(t *testing.T) {
	ctx := context.Background()
	if err := plane.ApplyFiles(ctx, repoPath("config/security/namespaces.yaml"), repoPath("config/security/rbac.yaml")); err != nil {
		t.Fatal(err)
	}
	if revs := revisions(t); revs["fraud-00001"] != "True" || revs["fraud-00002"] != "True" {
		kc, _, err := plane.ServiceAccountKubeconfig(ctx, ns, "pilotlight-deployer")
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := deploy(t, kc); err != nil {
			t.Fatalf("deploy fraud: %v", err)
		}
	}
	// The serving revision under load, as the admin would see it: two
	// ready pods (held here with min-scale on its PodAutoscaler, which
	// Knative's autoscaler honours as it would honour its own decision).
	const servingPods = 2
	patchPA := func(rev, minScale string) {
		t.Helper()
		p := fmt.Sprintf(`{"metadata":{"annotations":{"autoscaling.knative.dev/min-scale":%q}}}`, minScale)
		if _, err := plane.Dynamic.Resource(paGVR).Namespace(ns).Patch(ctx, rev, types.MergePatchType, []byte(p), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	patchPA("fraud-00001", fmt.Sprint(servingPods))
	t.Cleanup(func() { patchPA("fraud-00001", "0"); patchPA("fraud-00002", "0") })
	testPoll(t, "fraud-00001 at 2 ready pods", 2*time.Minute, 200*time.Millisecond, func() bool { return readyRevisionPods(ctx, "fraud-00001") >= servingPods })

	setFlags(t, strings.Replace(rolloutFlags, `, "broken": "fraud-00003"`, "", 1))
	fns := filepath.Join(t.TempDir(), "functions")
	if out, err := exec.Command("mkdir", "-p", fns).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if out, err := exec.Command("cp", "-r", repoPath("functions/fraud"), fns).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	functionStandIn(t) // the tag URLs' hosts answer (run.sh's hosts file)
	rig := startRouterReplicas(t, []string{"--backend=knative", "--namespace=" + ns, "--functions=" + fns}, "10.244.0.23", "10.244.0.24")
	lead := rig.leader(t, "")

	// Watch the flag (through a replica's OFREP) and both revisions'
	// ready pods through the whole rollout: the candidate's at the moment
	// the flag switches, the previous revision's fewest after.
	var (
		mu           sync.Mutex
		switched     bool
		podsAtSwitch = -1 // fraud-00002's ready pods when the flag first gave it the traffic
		minPrev      = -1 // fraud-00001's fewest ready pods since the switch
	)
	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for watchCtx.Err() == nil {
			mu.Lock()
			sw := switched
			mu.Unlock()
			if !sw && rig.ofrep(rig.replicas[0], "u") == "fraud-00002" {
				n := readyRevisionPods(watchCtx, "fraud-00002")
				mu.Lock()
				switched, podsAtSwitch, sw = true, n, true
				mu.Unlock()
			}
			if sw {
				n := readyRevisionPods(watchCtx, "fraud-00001")
				mu.Lock()
				if n >= 0 && (minPrev < 0 || n < minPrev) {
					minPrev = n
				}
				mu.Unlock()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	defer func() { stopWatch(); <-watchDone }()

	// A candidate Knative scaled to zero takes longer: its autoscaler
	// applies a raised min-scale only once it has a metric for the
	// revision (kpa/scaler.go: "Metrics are not yet being collected").
	// This test runs before TestClusterRollouts, while the candidate
	// deployed by TestKnativePath (or just above) still has its pod.
	candidateBefore := readyRevisionPods(ctx, "fraud-00002")
	t.Logf("the candidate has %d ready pods before the rollout", candidateBefore)
	start := time.Now()
	out, err := rig.cliRollout(t, lead, "start", "fraud", "--to", "fraud-00002", "--strategy", "bluegreen", "--keep-previous", "2m")
	if err != nil || !strings.Contains(out, "fraud promoted: fraud-00002 serves") || !strings.Contains(out, "kept warm until") {
		t.Fatalf("blue-green did not promote with the previous revision kept warm: %v", err)
	}
	record(fmt.Sprintf("blue-green on Knative: pre-scale %d → 2 pods and switch", candidateBefore), time.Since(start))
	mu.Lock()
	atSwitch := podsAtSwitch
	mu.Unlock()
	if atSwitch < servingPods {
		t.Errorf("the candidate had %d ready pods when the flag switched to it, want %d: not pre-scaled before the switch", atSwitch, servingPods)
	}
	t.Logf("the candidate had %d ready pods when the flag switched to it", atSwitch)
	if onRev, onPA := minScaleOf(t, "fraud-00002"); onRev != "2" || onPA != "2" {
		t.Errorf("candidate min-scale: revision %q, PodAutoscaler %q; want 2 on both (the serving revision's ready pods)", onRev, onPA)
	}
	if n := readyRevisionPods(ctx, "fraud-00002"); n < servingPods {
		t.Errorf("candidate has %d ready pods after the switch, want %d", n, servingPods)
	}
	if onRev, onPA := minScaleOf(t, "fraud-00001"); onRev != "2" || onPA != "2" {
		t.Errorf("previous revision min-scale: revision %q, PodAutoscaler %q; want 2 kept for --keep-previous", onRev, onPA)
	}
	if code, rev := rig.infer(rig.replicas[1], "after-switch"); code != http.StatusOK || rev != "fraud-00002" {
		t.Errorf("after the switch: %d served by %q, want fraud-00002", code, rev)
	}

	time.Sleep(time.Second) // inside the keep-previous window, some time after the switch
	undoStart := time.Now()
	if out, err := rig.cliRollout(t, lead, "undo", "fraud"); err != nil || !strings.Contains(out, "fraud-00001 serves again") {
		t.Fatalf("undo: %v", err)
	}
	testPoll(t, "both replicas to route fraud to fraud-00001 again", 30*time.Second, 5*time.Millisecond, func() bool {
		return rig.ofrep(rig.replicas[0], "u") == "fraud-00001" && rig.ofrep(rig.replicas[1], "u") == "fraud-00001"
	})
	record("blue-green undo on Knative: rollout undo → both replicas route to the previous revision", time.Since(undoStart))
	mu.Lock()
	fewest := minPrev
	mu.Unlock()
	if fewest < 1 {
		t.Errorf("fraud-00001 had %d ready pods at some point between the switch and the undo: the undo would cold-start it", fewest)
	}
	t.Logf("fraud-00001 kept at least %d ready pods from the switch through the undo (no cold start)", fewest)
	for _, r := range rig.replicas {
		if code, rev := rig.infer(r, "after-undo"); code != http.StatusOK || rev != "fraud-00001" {
			t.Errorf("%s after the undo: %d served by %q", r.name, code, rev)
		}
	}
}

// TestClusterRollouts: canary promotes, a failing candidate rolls back,
// the leader killed mid-rollout hands over, every ConfigMap change seen.
func TestClusterRollouts(t *testing.T) {
	if err := plane.ApplyFiles(context.Background(), repoPath("config/security/namespaces.yaml"), repoPath("config/security/rbac.yaml")); err != nil {
		t.Fatal(err)
	}
	setFlags(t, rolloutFlags)
	rig := startRouterReplicas(t, []string{"--backend=local", "--functions=" + rolloutFunctionsDir(t), "--pool-size=0"}, "10.244.0.21", "10.244.0.22")
	lead := rig.leader(t, "")
	t.Logf("Lease %s held by %s", routerLease, lead.name)
	// Warm both good revisions on both replicas (a first request is a cold start).
	for _, r := range rig.replicas {
		for _, user := range []string{"warm-a", "warm-b"} {
			if code, _ := rig.infer(r, user); code != http.StatusOK {
				t.Fatalf("first request through %s answered %d", r.name, code)
			}
		}
	}

	t.Run("FlagChangeReachesBothReplicas", func(t *testing.T) {
		for _, want := range []struct{ variant, revision string }{{"canary", "fraud-00002"}, {"stable", "fraud-00001"}} {
			start := time.Now()
			setFlags(t, strings.Replace(rolloutFlags, `"defaultVariant": "stable"`, fmt.Sprintf(`"defaultVariant": %q`, want.variant), 1))
			testPoll(t, "both replicas to evaluate the flag to "+want.revision, 30*time.Second, 5*time.Millisecond, func() bool {
				return rig.ofrep(rig.replicas[0], "u") == want.revision && rig.ofrep(rig.replicas[1], "u") == want.revision
			})
			took := time.Since(start)
			record("flag propagation across 2 replicas (ConfigMap write → both route by it)", took)
			t.Logf("ConfigMap write → both replicas evaluate %s: %s", want.revision, took.Round(time.Millisecond))
			for _, r := range rig.replicas {
				if code, rev := rig.infer(r, "check"); code != http.StatusOK || rev != want.revision {
					t.Errorf("%s served %d by %q, want 200 by %s", r.name, code, rev, want.revision)
				}
			}
		}
	})

	t.Run("CanaryPromotesWithAConcurrentWriter", func(t *testing.T) {
		hist := followFlags(t)
		stopTraffic := rig.traffic(10 * time.Millisecond)
		stopWriter := concurrentWriter(t, 300*time.Millisecond)
		out, err := rig.cliRollout(t, lead, "start", "fraud", "--to", "fraud-00002", "--steps", "50,100", "--interval", "3s", "--min-requests", "10", "--max-p99", "2s")
		added := stopWriter()
		counts := stopTraffic()
		checkPromoted(t, rig, out, err, counts, hist, added)
	})

	t.Run("FailingCandidateRollsBack", func(t *testing.T) {
		hist := followFlags(t)
		stopTraffic := rig.traffic(10 * time.Millisecond)
		out, err := rig.cliRollout(t, lead, "start", "fraud", "--to", "fraud-00003", "--steps", "50,100", "--interval", "3s", "--min-requests", "10", "--max-p99", "5s")
		counts := stopTraffic()
		t.Logf("answers: %v", counts)
		if err == nil || !strings.Contains(out, "ended rolled_back; fraud-00002 serves") || !strings.Contains(out, "error_rate") {
			t.Fatalf("rollout to the broken revision: %v; want it rolled back on error_rate", err)
		}
		time.Sleep(500 * time.Millisecond)
		states := hist.fraudStates(t)
		if want := []string{"default canary", "default canary; broken 50%", "default canary"}; !slices.Equal(states, want) {
			t.Errorf("flag states %q, want %q", states, want)
		}
		for _, r := range rig.replicas {
			if code, rev := rig.infer(r, "after-rollback"); code != http.StatusOK || rev != "fraud-00002" {
				t.Errorf("%s after the rollback served %d by %q", r.name, code, rev)
			}
		}
	})

	t.Run("LeaderKilledMidRolloutHandsOver", func(t *testing.T) {
		hist := followFlags(t)
		stopTraffic := rig.traffic(20 * time.Millisecond)
		defer stopTraffic()
		if _, err := rig.cliRollout(t, lead, "start", "fraud", "--to", "fraud-00001", "--steps", "20,50,100", "--interval", "60s", "--detach"); err != nil {
			t.Fatal(err)
		}
		if err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
			s := hist.fraudStates(t)
			return len(s) > 0 && s[len(s)-1] == "default canary; stable 20%", nil
		}); err != nil {
			t.Fatalf("the leader's first step never reached the ConfigMap (states %q; document now %s): %v", hist.fraudStates(t), finalDoc(t), err)
		}
		killed := time.Now()
		if err := lead.cmd.Process.Kill(); err != nil { // a crash: no Lease release
			t.Fatal(err)
		}
		_ = lead.cmd.Wait()
		lead.cmd = nil
		next := rig.leader(t, lead.name)
		leaseTaken := time.Since(killed)
		testPoll(t, "the successor to roll the rollout back", time.Minute, 20*time.Millisecond, func() bool {
			s := hist.fraudStates(t)
			return len(s) > 0 && s[len(s)-1] == "default canary"
		})
		rolledBack := time.Since(killed)
		record("leader hand-over: SIGKILL → Lease taken by the other replica", leaseTaken)
		record("leader hand-over: SIGKILL → rollout rolled back by the successor", rolledBack)
		t.Logf("leader %s killed; %s took the Lease after %s and rolled the rollout back after %s", lead.name, next.name, leaseTaken.Round(time.Millisecond), rolledBack.Round(time.Millisecond))
		time.Sleep(500 * time.Millisecond)
		states := hist.fraudStates(t)
		if want := []string{"default canary", "default canary; stable 20%", "default canary"}; !slices.Equal(states, want) {
			t.Errorf("flag states %q, want %q: each step once, none after the leader died", states, want)
		}
		cm, err := plane.Kube.CoreV1().ConfigMaps(ns).Get(context.Background(), flagsConfigMap, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rec := cm.Annotations["rollouts.pilotlight.dev/fraud"]
		if !strings.Contains(rec, `"state":"rolled_back"`) || !strings.Contains(rec, next.name) {
			t.Errorf("rollout record %s: want rolled_back by %s", rec, next.name)
		}
		out, err := rig.cliRollout(t, next, "status", "fraud")
		if err != nil || !strings.Contains(out, "leader") || !strings.Contains(out, lead.name) {
			t.Errorf("the successor's status does not say it rolled back for the dead leader %s: %v", lead.name, err)
		}
		// The killed replica comes back as the Deployment would restart it.
		lead.start(t)
		waitHTTP(t, lead.base()+"/healthz")
	})
}

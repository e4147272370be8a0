package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

const ns = "pilotlight"

var (
	plane *Plane
	env   struct{ repo, pilotlight, runtime, work, images string }
	// timings for the report (printed at the end of TestMain).
	timingsMu sync.Mutex
	timings   []Timing
)

func record(phase string, d time.Duration) {
	timingsMu.Lock()
	defer timingsMu.Unlock()
	timings = append(timings, Timing{phase, d})
}

func TestMain(m *testing.M) {
	get := func(k string) string {
		v := os.Getenv(k)
		if v == "" {
			fmt.Fprintf(os.Stderr, "cluster-test: $%s is not set: run `make cluster-test` (hack/cluster/run.sh), which builds the control plane and runs these tests in a network namespace of their own\n", k)
			os.Exit(2)
		}
		return v
	}
	env.repo, env.pilotlight, env.work = get("CLUSTER_REPO"), get("CLUSTER_PILOTLIGHT"), get("CLUSTER_WORK")
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	cfg := Config{
		Bin: get("CLUSTER_BIN"), K8sVersion: "v1.34.2", KwokVer: "v0.8.0", KnativeVer: "v0.42.2",
		ServingDir: get("CLUSTER_SERVING_DIR"), NetworkingDir: get("CLUSTER_NETWORKING_DIR"),
		CachingDir: get("CLUSTER_CACHING_DIR"), KwokDir: get("CLUSTER_KWOK_DIR"),
		Dir: env.work, Log: log,
	}
	if os.Getenv("CLUSTER_NODE") == "1" {
		cfg.RealNode = true
		cfg.CgroupRoot = get("CLUSTER_CGROUP_ROOT")
		cfg.ImagesTar = get("CLUSTER_IMAGES")
		env.images = cfg.ImagesTar
		env.runtime = get("CLUSTER_RUNTIME")
		cfg.HostsFile = get("CLUSTER_HOSTS")
	}
	ctx, cancel := context.WithCancel(context.Background())
	start := time.Now()
	p, err := Start(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster-test: control plane did not start: %v\n(logs under %s; KEEP=1 make cluster-test keeps them)\n", err, env.work)
		cancel()
		os.Exit(1)
	}
	plane = p
	timings = append(timings, p.Timings...)
	record("control plane start (total)", time.Since(start))
	code := m.Run()
	cancel()
	p.Stop()
	fmt.Fprintln(os.Stderr, "cluster-test timings:")
	for _, t := range timings {
		fmt.Fprintf(os.Stderr, "  %-55s %s\n", t.Phase, t.Took.Round(time.Millisecond))
	}
	os.Exit(code)
}

var (
	ksvcGVR = schema.GroupVersionResource{Group: "serving.knative.dev", Version: "v1", Resource: "services"}
	revGVR  = schema.GroupVersionResource{Group: "serving.knative.dev", Version: "v1", Resource: "revisions"}
)

// TestKnativePath runs the project's Knative path against the live control
// plane, in order: each step starts from the state the previous one left.
func TestKnativePath(t *testing.T) {
	ctx := context.Background()
	if err := plane.ApplyFiles(ctx, repoPath("config/security/namespaces.yaml"), repoPath("config/security/rbac.yaml"),
		repoPath("config/security/networkpolicies.yaml"), repoPath("config/security/bpf-agent.yaml")); err != nil {
		t.Fatalf("apply config/security: %v", err)
	}
	deployer, _, err := plane.ServiceAccountKubeconfig(ctx, ns, "pilotlight-deployer")
	if err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		name string
		fn   func(t *testing.T, kubeconfig string)
	}{
		{"DeployFromEmpty", testDeployFromEmpty},
		{"RedeployChangesNothing", testRedeployChangesNothing},
		{"ChangedImageUnderExistingRevisionIsRefused", testChangedImageRefused},
		{"FlagChangeMovesOnlyTraffic", testFlagChangeMovesOnlyTraffic},
		{"ConcurrentWriterConflictIsRetried", testConflictRetried},
		{"ServeResolvesTagURLsFromTheLiveRoute", testServeResolves},
	}
	for _, s := range steps {
		if !t.Run(s.name, func(t *testing.T) { s.fn(t, deployer) }) {
			for _, dead := range plane.Exited() {
				t.Log(dead)
			}
			t.FailNow() // later steps build on this one
		}
	}
}

func repoPath(p string) string { return filepath.Join(env.repo, p) }

// deploy runs `pilotlight deploy fraud` as a user would, from the repository.
func deploy(t *testing.T, kubeconfig string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	full := append([]string{"deploy", "fraud", "--kubeconfig", kubeconfig, "--timeout", "3m"}, args...)
	cmd := exec.Command(env.pilotlight, full...)
	cmd.Dir = env.repo
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	t.Logf("pilotlight %s: err=%v\nstdout:\n%s\nstderr:\n%s", strings.Join(full, " "), err, o.String(), lastLines(e.String(), 40))
	return o.String(), e.String(), err
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func ksvc(t *testing.T) *unstructured.Unstructured {
	t.Helper()
	u, err := plane.Dynamic.Resource(ksvcGVR).Namespace(ns).Get(context.Background(), "fraud", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get ksvc fraud: %v", err)
	}
	return u
}

func revisions(t *testing.T) map[string]string {
	t.Helper()
	list, err := plane.Dynamic.Resource(revGVR).Namespace(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, r := range list.Items {
		out[r.GetName()] = readyOf(&r)
	}
	return out
}

func readyOf(u *unstructured.Unstructured) string {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		cm, _ := c.(map[string]any)
		if cm["type"] == "Ready" {
			return fmt.Sprint(cm["status"])
		}
	}
	return "missing"
}

// traffic renders spec.traffic or status.traffic as "tag=rev:pct[@url]".
func traffic(u *unstructured.Unstructured, field string, withURL bool) string {
	ts, _, _ := unstructured.NestedSlice(u.Object, field, "traffic")
	var out []string
	for _, x := range ts {
		m, _ := x.(map[string]any)
		s := fmt.Sprintf("%v=%v:%v", m["tag"], m["revisionName"], m["percent"])
		if withURL {
			s += fmt.Sprintf("@%v", m["url"])
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

func testDeployFromEmpty(t *testing.T, kc string) {
	start := time.Now()
	out, progress, err := deploy(t, kc)
	record("deploy fraud from empty to Ready (00001, 00002)", time.Since(start))
	if err != nil {
		t.Fatalf("deploy: %v", err)
	}
	for _, want := range []string{"fraud: create revision fraud-00001", "fraud: update revision fraud-00002", "Service fraud is ready at"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// The older revision is awaited on its own readiness, the Service only
	// for the last step, and each progress line names what it waits on.
	for _, want := range []string{"waiting for revision fraud-00001 to be Ready", "waiting for service fraud to be Ready with revision fraud-00002"} {
		if !strings.Contains(progress, want) {
			t.Errorf("progress lacks %q", want)
		}
	}
	if strings.Contains(progress, "service fraud to be Ready with revision fraud-00001") {
		t.Error("the intermediate step waited on the Service, not the revision")
	}
	if got := revisions(t); !jsonEqual(got, map[string]string{"fraud-00001": "True", "fraud-00002": "True"}) {
		t.Errorf("revisions %v, want fraud-00001 and fraud-00002 Ready", got)
	}
	svc := ksvc(t)
	if readyOf(svc) != "True" {
		t.Errorf("ksvc Ready=%s", readyOf(svc))
	}
	want := "canary=fraud-00002:10@http://canary-fraud.pilotlight.svc.cluster.local " +
		"stable=fraud-00001:90@http://stable-fraud.pilotlight.svc.cluster.local"
	if got := traffic(svc, "status", true); got != want {
		t.Errorf("status.traffic %q, want %q", got, want)
	}
}

func testRedeployChangesNothing(t *testing.T, kc string) {
	before := ksvc(t)
	revs := revisions(t)
	start := time.Now()
	out, _, err := deploy(t, kc)
	record("re-deploy with nothing changed", time.Since(start))
	if err != nil {
		t.Fatal(err)
	}
	after := ksvc(t)
	if after.GetResourceVersion() != before.GetResourceVersion() || after.GetGeneration() != before.GetGeneration() {
		t.Errorf("re-deploy wrote the Service: generation %d->%d, resourceVersion %s->%s",
			before.GetGeneration(), after.GetGeneration(), before.GetResourceVersion(), after.GetResourceVersion())
	}
	if !jsonEqual(revisions(t), revs) {
		t.Errorf("revisions changed: %v -> %v", revs, revisions(t))
	}
	if !strings.Contains(out, "unchanged revision fraud-00002") {
		t.Errorf("output does not say nothing changed: %q", out)
	}
}

func testChangedImageRefused(t *testing.T, kc string) {
	before := ksvc(t)
	_, stderr, err := deploy(t, kc, "--image", "ghcr.io/pilotlight/pilotlight:changed")
	if err == nil {
		t.Fatal("a changed image under the existing revision fraud-00002 was accepted")
	}
	if !strings.Contains(stderr, "revision fraud-00002 already exists") || !strings.Contains(stderr, "revisions are immutable") {
		t.Errorf("refusal does not say why: %q", lastLines(stderr, 3))
	}
	if ksvc(t).GetResourceVersion() != before.GetResourceVersion() {
		t.Error("the refused deploy wrote the Service")
	}
}

// flagFile writes config/flags/flags.json with fraud's fractional split
// replaced.
func flagFile(t *testing.T, stable, canary int) string {
	t.Helper()
	raw, err := os.ReadFile(repoPath("config/flags/flags.json"))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(raw), `["stable", 90],`, fmt.Sprintf(`["stable", %d],`, stable), 1)
	s = strings.Replace(s, `["canary", 10]`, fmt.Sprintf(`["canary", %d]`, canary), 1)
	if s == string(raw) && (stable != 90 || canary != 10) {
		t.Fatal("config/flags/flags.json no longer holds fraud's 90/10 split this test edits")
	}
	path := filepath.Join(t.TempDir(), "flags.json")
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func waitStatusTraffic(t *testing.T, want string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		u := ksvc(t)
		return traffic(u, "status", false) == want && readyOf(u) == "True", nil
	})
	if err != nil {
		t.Fatalf("status.traffic never became %q (is %q): %v", want, traffic(ksvc(t), "status", false), err)
	}
}

func testFlagChangeMovesOnlyTraffic(t *testing.T, kc string) {
	for _, c := range []struct {
		name           string
		stable, canary int
		want           string
	}{
		{"promote", 0, 100, "canary=fraud-00002:100 stable=fraud-00001:0"},
		{"roll back", 100, 0, "canary=fraud-00002:0 stable=fraud-00001:100"},
		{"restore 90/10", 90, 10, "canary=fraud-00002:10 stable=fraud-00001:90"},
	} {
		before := ksvc(t)
		revs := revisions(t)
		if _, _, err := deploy(t, kc, "--flags", flagFile(t, c.stable, c.canary)); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		after := ksvc(t)
		if got := traffic(after, "spec", false); got != c.want {
			t.Errorf("%s: spec.traffic %q, want %q", c.name, got, c.want)
		}
		// Only spec.traffic moved: the template, labels and annotations
		// are as they were, and no revision was created.
		bs, _, _ := unstructured.NestedMap(before.Object, "spec")
		as, _, _ := unstructured.NestedMap(after.Object, "spec")
		delete(bs, "traffic")
		delete(as, "traffic")
		if !jsonEqual(bs, as) || !jsonEqual(before.GetLabels(), after.GetLabels()) || !jsonEqual(before.GetAnnotations(), after.GetAnnotations()) {
			t.Errorf("%s changed more than spec.traffic:\nbefore %v\nafter  %v", c.name, bs, as)
		}
		if !jsonEqual(revisions(t), revs) {
			t.Errorf("%s created or changed revisions: %v -> %v", c.name, revs, revisions(t))
		}
		waitStatusTraffic(t, c.want)
	}
}

// conflictProxy sits between the deployer and the API server. On the first
// update of the fraud Service it lets a concurrent writer (the admin, adding
// an annotation) in first, so the deployer's update meets a real 409 from the
// real API server; it records what the API server answered.
type conflictProxy struct {
	mu       sync.Mutex
	statuses []int
	injected bool
}

func testConflictRetried(t *testing.T, kc string) {
	ctx := context.Background()
	target, _ := url.Parse(plane.Host)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(plane.CA)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	cp := &conflictProxy{}
	svcPath := "/apis/serving.knative.dev/v1/namespaces/pilotlight/services/fraud"
	rp.ModifyResponse = func(r *http.Response) error {
		if r.Request.Method == http.MethodPut && r.Request.URL.Path == svcPath {
			cp.mu.Lock()
			cp.statuses = append(cp.statuses, r.StatusCode)
			cp.mu.Unlock()
		}
		return nil
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Path == svcPath {
			cp.mu.Lock()
			first := !cp.injected
			cp.injected = true
			cp.mu.Unlock()
			if first {
				patch := []byte(`{"metadata":{"annotations":{"cluster-test/concurrent-writer":"was here"}}}`)
				if _, err := plane.Dynamic.Resource(ksvcGVR).Namespace(ns).Patch(ctx, "fraud", "application/merge-patch+json", patch, metav1.PatchOptions{}); err != nil {
					t.Errorf("concurrent writer: %v", err)
				}
			}
		}
		rp.ServeHTTP(w, r)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The proxy serves the API server's own certificate (valid for
	// 127.0.0.1), so the deployer's token only ever travels over TLS.
	srv := &http.Server{Handler: handler}
	go func() {
		_ = srv.ServeTLS(ln, filepath.Join(env.work, "apiserver.crt"), filepath.Join(env.work, "apiserver.key"))
	}()
	defer srv.Close()

	token := kubeconfigToken(t, kc)
	proxied, err := WriteKubeconfig(filepath.Join(t.TempDir(), "proxied.kubeconfig"), "https://"+ln.Addr().String(), plane.CA, token)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := deploy(t, proxied, "--flags", flagFile(t, 50, 50)); err != nil {
		t.Fatalf("deploy through a concurrent writer: %v", err)
	}
	cp.mu.Lock()
	statuses := slices.Clone(cp.statuses)
	cp.mu.Unlock()
	if len(statuses) < 2 || statuses[0] != http.StatusConflict || statuses[len(statuses)-1] != http.StatusOK {
		t.Errorf("API server answered the deployer's updates %v; want a 409 first, then 200 after a re-read", statuses)
	}
	svc := ksvc(t)
	if svc.GetAnnotations()["cluster-test/concurrent-writer"] != "was here" {
		t.Error("the retry dropped the concurrent writer's annotation")
	}
	if got := traffic(svc, "spec", false); got != "canary=fraud-00002:50 stable=fraud-00001:50" {
		t.Errorf("spec.traffic after the retry %q", got)
	}
	waitStatusTraffic(t, "canary=fraud-00002:50 stable=fraud-00001:50")
}

func kubeconfigToken(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "token: "); ok {
			return v
		}
	}
	t.Fatal("no token in " + path)
	return ""
}

// routerManifest reads config/router/router.yaml.
type routerManifest struct {
	deploy *appsv1.Deployment
	svc    *corev1.Service
	objs   []*unstructured.Unstructured
}

func loadRouterManifest(t *testing.T) routerManifest {
	t.Helper()
	raw, err := os.ReadFile(repoPath("config/router/router.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var out routerManifest
	for _, doc := range docSep.Split(string(raw), -1) {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil || m == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		out.objs = append(out.objs, u)
		switch u.GetKind() {
		case "Deployment":
			out.deploy = &appsv1.Deployment{}
			if err := yaml.UnmarshalStrict([]byte(doc), out.deploy); err != nil {
				t.Fatal(err)
			}
		case "Service":
			out.svc = &corev1.Service{}
			if err := yaml.UnmarshalStrict([]byte(doc), out.svc); err != nil {
				t.Fatal(err)
			}
		}
	}
	if out.deploy == nil || out.svc == nil {
		t.Fatal("config/router/router.yaml lacks the Deployment or the Service")
	}
	return out
}

// scrapedPort follows the ServiceMonitor's endpoint port name through the
// router Service to the container port it reaches.
func scrapedPort(t *testing.T, svc *corev1.Service, c corev1.Container) (int32, string) {
	t.Helper()
	raw, err := os.ReadFile(repoPath("config/monitoring/servicemonitor.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var sm struct {
		Spec struct {
			Selector  metav1.LabelSelector `json:"selector"`
			Endpoints []struct {
				Port string `json:"port"`
				Path string `json:"path"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal([]byte(docSep.Split(string(raw), -1)[0]), &sm); err != nil || len(sm.Spec.Endpoints) == 0 {
		t.Fatalf("servicemonitor.yaml: %v", err)
	}
	sel, _ := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if !sel.Matches(labels.Set(svc.Labels)) {
		t.Fatalf("the ServiceMonitor does not select the router Service")
	}
	ep := sm.Spec.Endpoints[0]
	for _, sp := range svc.Spec.Ports {
		if sp.Name != ep.Port {
			continue
		}
		if sp.TargetPort.Type == intstr.Int {
			return sp.TargetPort.IntVal, ep.Path
		}
		for _, cp := range c.Ports {
			if cp.Name == sp.TargetPort.StrVal {
				return cp.ContainerPort, ep.Path
			}
		}
	}
	t.Fatalf("ServiceMonitor port %q reaches no container port", ep.Port)
	return 0, ""
}

// functionStandIn is the STAND-IN for the function pods behind the tag URLs
// (no image runs here): /etc/hosts in the namespace (run.sh) sends the tag
// URLs' hosts to it, and it answers with the Host it was asked for.
func functionStandIn(t *testing.T) (hosts func() []string) {
	t.Helper()
	var mu sync.Mutex
	var seen []string
	ln, err := net.Listen("tcp", "10.244.0.10:80")
	if err != nil {
		t.Fatalf("function stand-in: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Host)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"served_by":%q}`, r.Host)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

// testServeResolves starts `pilotlight serve` with the router Deployment's
// own arguments (config/router/router.yaml), as the pilotlight-router service
// account, and sends requests through it: each revision's request reaches
// the tag URL Knative published in the live Route. Then Prometheus's scrape,
// followed from the ServiceMonitor through the Service to the container port,
// gets /metrics without credentials.
func testServeResolves(t *testing.T, _ string) {
	ctx := context.Background()
	rm := loadRouterManifest(t)
	c := rm.deploy.Spec.Template.Spec.Containers[0]
	kc, _, err := plane.ServiceAccountKubeconfig(ctx, ns, rm.deploy.Spec.Template.Spec.ServiceAccountName)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys.yaml")
	keyOut, err := exec.Command(env.pilotlight, "keys", "new", "--id", "cluster-test", "--functions", "fraud", "--file", keys).Output()
	if err != nil {
		t.Fatalf("keys new: %v", err)
	}
	key := strings.TrimSpace(string(keyOut))
	flagsPath := flagFile(t, 90, 10)
	seen := functionStandIn(t)

	adminPort, path := scrapedPort(t, rm.svc, c)
	// The manifest's arguments, with the pod's file paths and listen
	// addresses mapped onto this namespace.
	var args []string
	for _, a := range c.Args {
		k, _, _ := strings.Cut(a, "=")
		switch k {
		case "--functions":
			a = "--functions=" + repoPath("functions")
		case "--keys-file":
			a = "--keys-file=" + keys
		case "--flags":
			a = "--flags=" + flagsPath
		case "--addr":
			a = "--addr=10.244.0.3:18080" // the autoscaler holds :8080 in this namespace
		case "--admin-addr":
			_, port, _ := net.SplitHostPort(strings.TrimPrefix(a, "--admin-addr="))
			a = "--admin-addr=10.244.0.3:" + port
		}
		args = append(args, a)
	}
	args = append(args, "--kubeconfig="+kc)
	cmd := exec.Command(env.pilotlight, args...)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("serve %v:\n%s", args, lastLines(logs.String(), 30))
		}
	}()
	waitHTTP(t, "http://10.244.0.3:18080/healthz")

	send := func(email string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, "http://10.244.0.3:18080/functions/fraud",
			strings.NewReader(`{"amount": 912.40, "avg_amount_30d": 85.0, "tx_last_hour": 6, "new_merchant": 1, "foreign": 1, "night": 1}`))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-User-ID", "user-1")
		if email != "" {
			req.Header.Set("X-User-Email", email)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("request through serve: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// Staff go to canary by the flag's rule; user-1 falls in the 90% stable
	// bucket or the 10% canary one: whichever, the host must be that tag's.
	code, body := send("dev@pilotlight.dev")
	if code != http.StatusOK || !strings.Contains(body, "canary-fraud.pilotlight.svc.cluster.local") {
		t.Errorf("staff request: %d %s; want it served through canary's tag URL", code, body)
	}
	code, body = send("")
	if code != http.StatusOK || !strings.Contains(body, "-fraud.pilotlight.svc.cluster.local") {
		t.Errorf("user request: %d %s; want a tag URL", code, body)
	}
	t.Logf("function stand-in saw hosts %v", seen())

	// The scrape: no credentials, on the port the ServiceMonitor names.
	resp, err := http.Get(fmt.Sprintf("http://10.244.0.3:%d%s", adminPort, path))
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "pilotlight_requests_total") {
		t.Errorf("the ServiceMonitor's scrape of :%d%s got %d without pilotlight_requests_total", adminPort, path, resp.StatusCode)
	}
	resp, err = http.Get("http://10.244.0.3:18080/metrics")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("/metrics on the request port answered without credentials")
		}
	}
}

func waitHTTP(t *testing.T, u string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		resp, err := http.Get(u)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		t.Fatalf("%s never answered 200: %v", u, err)
	}
}

// TestRBACMatrix asks the API server what each Pilotlight account may do:
// SubjectAccessReview for the matrix, SelfSubjectRulesReview (with the
// account's own token) for "nothing more".
func TestRBACMatrix(t *testing.T) {
	ctx := context.Background()
	if err := plane.ApplyFiles(ctx, repoPath("config/security/namespaces.yaml"), repoPath("config/security/rbac.yaml")); err != nil {
		t.Fatal(err)
	}
	type check struct {
		ns, verb, group, resource string
		want                      bool
	}
	knative := "serving.knative.dev"
	matrix := map[string][]check{
		"pilotlight:pilotlight-router": {
			{ns, "get", knative, "services", true}, {ns, "list", knative, "services", true}, {ns, "watch", knative, "services", true},
			{ns, "get", knative, "routes", true}, {ns, "get", knative, "revisions", true},
			{ns, "create", knative, "services", false}, {ns, "update", knative, "services", false}, {ns, "delete", knative, "services", false},
			{ns, "get", "", "secrets", false}, {ns, "get", "", "configmaps", false}, {ns, "list", "", "pods", false},
			{"default", "get", knative, "services", false}, {"knative-serving", "get", "", "configmaps", false},
			{ns, "create", "coordination.k8s.io", "leases", true}, {ns, "delete", "coordination.k8s.io", "leases", false},
			{ns, "update", "", "configmaps", false}, {ns, "create", "", "configmaps", false},
			{ns, "list", "discovery.k8s.io", "endpointslices", true}, {ns, "watch", "discovery.k8s.io", "endpointslices", false},
			{ns, "update", "discovery.k8s.io", "endpointslices", false}, {"default", "list", "discovery.k8s.io", "endpointslices", false},
			{ns, "patch", knative, "revisions", true}, {ns, "update", knative, "revisions", false}, {ns, "delete", knative, "revisions", false},
			{ns, "patch", "autoscaling.internal.knative.dev", "podautoscalers", true}, {ns, "get", "autoscaling.internal.knative.dev", "podautoscalers", false},
			{ns, "patch", knative, "services", false},
		},
		"pilotlight:pilotlight-deployer": {
			{ns, "get", knative, "services", true}, {ns, "create", knative, "services", true}, {ns, "update", knative, "services", true},
			{ns, "patch", knative, "services", true}, {ns, "get", knative, "revisions", true}, {ns, "list", knative, "routes", true},
			{ns, "get", knative, "configurations", true},
			{ns, "delete", knative, "services", false}, {ns, "delete", knative, "revisions", false}, {ns, "update", knative, "revisions", false},
			{ns, "get", "", "secrets", false}, {ns, "create", "", "pods", false}, {ns, "create", "rbac.authorization.k8s.io", "rolebindings", false},
			{"default", "create", knative, "services", false},
		},
		"pilotlight-system:pilotlight-bpf-agent": {
			{"pilotlight-system", "get", "", "pods", false}, {"pilotlight-system", "list", "", "configmaps", false},
			{ns, "get", knative, "services", false}, {"", "list", "", "nodes", false},
			// The function pods' labels and readiness (the pod's cgroup names its UID).
			{ns, "watch", "", "pods", true}, {ns, "delete", "", "pods", false}, {"", "list", "", "pods", false},
		},
	}
	for sa, checks := range matrix {
		user := "system:serviceaccount:" + sa
		for _, c := range checks {
			r, err := plane.Kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
				User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + strings.Split(sa, ":")[0], "system:authenticated"},
				ResourceAttributes: &authzv1.ResourceAttributes{Namespace: c.ns, Verb: c.verb, Group: c.group, Resource: c.resource},
			}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if r.Status.Allowed != c.want {
				t.Errorf("%s: can %s %s.%s in %q = %v, want %v", sa, c.verb, c.resource, c.group, c.ns, r.Status.Allowed, c.want)
			}
		}
	}
	// The router's flag ConfigMap and Lease by name: those two objects, no others.
	for _, c := range []struct {
		verb, group, resource, name string
		want                        bool
	}{
		{"get", "", "configmaps", "pilotlight-flags", true}, {"watch", "", "configmaps", "pilotlight-flags", true},
		{"update", "", "configmaps", "pilotlight-flags", true}, {"update", "", "configmaps", "pilotlight-router-keys", false},
		{"get", "", "configmaps", "config-network", false}, {"delete", "", "configmaps", "pilotlight-flags", false},
		{"get", "coordination.k8s.io", "leases", "pilotlight-router", true}, {"update", "coordination.k8s.io", "leases", "pilotlight-router", true},
		{"update", "coordination.k8s.io", "leases", "kube-scheduler", false},
	} {
		r, err := plane.Kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User: "system:serviceaccount:pilotlight:pilotlight-router", Groups: []string{"system:serviceaccounts", "system:serviceaccounts:pilotlight", "system:authenticated"},
			ResourceAttributes: &authzv1.ResourceAttributes{Namespace: ns, Verb: c.verb, Group: c.group, Resource: c.resource, Name: c.name},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.Allowed != c.want {
			t.Errorf("pilotlight-router: can %s %s.%s %q = %v, want %v", c.verb, c.resource, c.group, c.name, r.Status.Allowed, c.want)
		}
	}

	// Nothing more: the rules each account holds, with its own token, are
	// exactly the Role's (beyond what every authenticated user may do).
	wantRules := map[string]map[string][]string{
		"pilotlight:pilotlight-router": {
			"serving.knative.dev/services": {"get", "list", "watch"}, "serving.knative.dev/routes": {"get", "list", "watch"},
			"serving.knative.dev/revisions":                   {"get", "list", "patch", "watch"},
			"autoscaling.internal.knative.dev/podautoscalers": {"patch"},
			"/configmaps": {"get", "list", "update", "watch"}, "coordination.k8s.io/leases": {"create", "get", "update"},
			"discovery.k8s.io/endpointslices": {"list"},
			"/services":                       {"get"}, // --knative-via=service
		},
		"pilotlight:pilotlight-deployer": {
			"serving.knative.dev/services":  {"create", "get", "list", "patch", "update", "watch"},
			"serving.knative.dev/revisions": {"get", "list", "watch"}, "serving.knative.dev/routes": {"get", "list", "watch"},
			"serving.knative.dev/configurations": {"get", "list", "watch"},
		},
		"pilotlight-system:pilotlight-bpf-agent": {},
	}
	// Rules a service account holds outside its own namespace.
	wantElsewhere := map[string]map[string]map[string][]string{
		"pilotlight-system:pilotlight-bpf-agent": {ns: {"/pods": {"get", "list", "watch"}}},
		// serve --bpf-agents: the agents' EndpointSlices, for the console.
		"pilotlight:pilotlight-router": {"pilotlight-system": {"discovery.k8s.io/endpointslices": {"list"}}},
	}
	for sa, want := range wantRules {
		saNS, name, _ := strings.Cut(sa, ":")
		_, token, err := plane.ServiceAccountKubeconfig(ctx, saNS, name)
		if err != nil {
			t.Fatal(err)
		}
		cfg := rest.CopyConfig(plane.Admin)
		cfg.BearerToken = token
		kc, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range []string{ns, "pilotlight-system", "default", "knative-serving"} {
			r, err := kc.AuthorizationV1().SelfSubjectRulesReviews().Create(ctx, &authzv1.SelfSubjectRulesReview{
				Spec: authzv1.SelfSubjectRulesReviewSpec{Namespace: in}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("%s: rules review in %s: %v", sa, in, err)
			}
			got := map[string][]string{}
			for _, rule := range r.Status.ResourceRules {
				for _, g := range rule.APIGroups {
					for _, res := range rule.Resources {
						key := g + "/" + res
						if g == "authorization.k8s.io" || g == "authentication.k8s.io" {
							continue // self reviews: every authenticated user may
						}
						got[key] = append(got[key], rule.Verbs...)
						slices.Sort(got[key])
					}
				}
			}
			expect := map[string][]string{}
			if in == saNS {
				expect = want
			}
			if w, ok := wantElsewhere[sa][in]; ok {
				expect = w
			}
			if !jsonEqual(got, expect) {
				t.Errorf("%s in namespace %s holds %v, want exactly %v", sa, in, got, expect)
			}
		}
	}
}

// TestBPFAgentSchedulesOnTheNode: the eBPF agent's DaemonSet, applied as
// shipped (privileged namespace, CAP_BPF/CAP_PERFMON, hostPID), gets a pod
// on the kwok node that kwok reports Ready.
func TestBPFAgentSchedulesOnTheNode(t *testing.T) {
	ctx := context.Background()
	if err := plane.ApplyFiles(ctx, repoPath("config/security/namespaces.yaml"), repoPath("config/security/rbac.yaml"),
		repoPath("config/security/bpf-agent.yaml")); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		ds, err := plane.Kube.AppsV1().DaemonSets("pilotlight-system").Get(ctx, "pilotlight-bpf-agent", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		return ds.Status.DesiredNumberScheduled == 1 && ds.Status.NumberReady == 1, nil
	})
	if err != nil {
		t.Fatalf("bpf agent DaemonSet never had its pod Ready on %s: %v (%s)", NodeName, err, events(t, "pilotlight-system"))
	}
	pods, err := plane.Kube.CoreV1().Pods("pilotlight-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=pilotlight-bpf-agent"})
	if err != nil || len(pods.Items) != 1 || pods.Items[0].Spec.NodeName != NodeName {
		t.Fatalf("bpf agent pods %v (err %v), want one on %s", podNames(pods), err, NodeName)
	}
}

// TestRouterDeploymentBecomesAvailable applies config/router/router.yaml
// as shipped (with its Secret and ConfigMap made as its header says) into
// the namespace that enforces the restricted Pod Security Standard.
func TestRouterDeploymentBecomesAvailable(t *testing.T) {
	ctx := context.Background()
	if err := plane.ApplyFiles(ctx, repoPath("config/security/namespaces.yaml"), repoPath("config/security/rbac.yaml"),
		repoPath("config/security/networkpolicies.yaml")); err != nil {
		t.Fatal(err)
	}
	// The namespace really enforces "restricted": a root pod is refused.
	bad := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "root-pod", Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "ghcr.io/pilotlight/pilotlight:0.1.0"}}}}
	if _, err := plane.Kube.CoreV1().Pods(ns).Create(ctx, bad, metav1.CreateOptions{DryRun: []string{"All"}}); err == nil ||
		!strings.Contains(err.Error(), "restricted") {
		t.Fatalf("a pod breaking the restricted standard was not refused in %s: %v", ns, err)
	}
	flags, err := os.ReadFile(repoPath("config/flags/flags.json"))
	if err != nil {
		t.Fatal(err)
	}
	keysOut := filepath.Join(t.TempDir(), "keys.yaml")
	if out, err := exec.Command(env.pilotlight, "keys", "new", "--id", "gateway", "--functions", "*", "--file", keysOut).CombinedOutput(); err != nil {
		t.Fatalf("keys new: %v %s", err, out)
	}
	keys, _ := os.ReadFile(keysOut)
	if _, err := plane.Kube.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "pilotlight-router-keys"},
		Data: map[string][]byte{"keys.yaml": keys}}, metav1.CreateOptions{}); IgnoreAlreadyExists(err) != nil {
		t.Fatal(err)
	}
	if _, err := plane.Kube.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "pilotlight-flags"},
		Data: map[string]string{"flags.json": string(flags)}}, metav1.CreateOptions{}); IgnoreAlreadyExists(err) != nil {
		t.Fatal(err)
	}
	if err := plane.ApplyFiles(ctx, repoPath("config/router/router.yaml")); err != nil {
		t.Fatalf("apply config/router/router.yaml: %v", err)
	}
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		d, err := plane.Kube.AppsV1().Deployments(ns).Get(ctx, "pilotlight-router", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range d.Status.Conditions {
			if c.Type == appsv1.DeploymentReplicaFailure && c.Status == corev1.ConditionTrue {
				return false, fmt.Errorf("replica failure: %s", c.Message)
			}
		}
		return d.Status.AvailableReplicas == 2 && d.Status.UpdatedReplicas == 2, nil
	})
	if err != nil {
		t.Fatalf("router Deployment never had 2 available replicas: %v (%s)", err, events(t, ns))
	}
	pods, err := plane.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=pilotlight-router"})
	if err != nil || len(pods.Items) != 2 {
		t.Fatalf("router pods %v: %v", podNames(pods), err)
	}

	// The NetworkPolicies select the live pods: the default deny and the
	// router's own.
	pols, err := plane.Kube.NetworkingV1().NetworkPolicies(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var selecting []string
	for _, p := range pols.Items {
		sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
		if err != nil {
			t.Fatal(err)
		}
		if sel.Matches(labels.Set(pods.Items[0].Labels)) {
			selecting = append(selecting, p.Name)
		}
	}
	slices.Sort(selecting)
	if !slices.Equal(selecting, []string{"default-deny", "router"}) {
		t.Errorf("NetworkPolicies selecting the router pods: %v, want [default-deny router]", selecting)
	}

	// The disruption budget is computed by the live disruption controller.
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		pdb, err := plane.Kube.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "pilotlight-router", metav1.GetOptions{})
		return err == nil && pdb.Status.CurrentHealthy == 2 && pdb.Status.DisruptionsAllowed == 1, nil
	})
	if err != nil {
		t.Errorf("PodDisruptionBudget never reported 2 healthy, 1 disruption allowed: %v", err)
	}

	// The Service's endpoints carry the scraped port: the ServiceMonitor's
	// port name resolves to the admin port on both pods.
	rm := loadRouterManifest(t)
	adminPort, _ := scrapedPort(t, rm.svc, rm.deploy.Spec.Template.Spec.Containers[0])
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		slices, err := plane.Kube.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=pilotlight-router"})
		if err != nil {
			return false, nil
		}
		ready := 0
		for _, s := range slices.Items {
			hasAdmin := false
			for _, p := range s.Ports {
				hasAdmin = hasAdmin || (p.Name != nil && *p.Name == "admin" && p.Port != nil && *p.Port == adminPort)
			}
			for _, e := range s.Endpoints {
				if hasAdmin && e.Conditions.Ready != nil && *e.Conditions.Ready {
					ready++
				}
			}
		}
		return ready == 2, nil
	})
	if err != nil {
		t.Errorf("router Service never had 2 ready endpoints on the admin port %d: %v", adminPort, err)
	}
}

func events(t *testing.T, namespace string) string {
	t.Helper()
	evs, err := plane.Kube.CoreV1().Events(namespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, e := range evs.Items {
		if e.Type == corev1.EventTypeWarning {
			out = append(out, fmt.Sprintf("%s %s: %s", e.InvolvedObject.Name, e.Reason, e.Message))
		}
	}
	b, _ := json.Marshal(out)
	return "warnings: " + string(b)
}

func podNames(pods *corev1.PodList) []string {
	if pods == nil {
		return nil
	}
	var out []string
	for _, p := range pods.Items {
		out = append(out, p.Name+"@"+p.Spec.NodeName+"/"+string(p.Status.Phase))
	}
	return out
}

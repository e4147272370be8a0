package router_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/admin"
	"github.com/pilotlight/pilotlight/engine"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/router"
)

const inferBody = `{"inputs":[{"name":"input_vectors","shape":[1,10],"datatype":"FP32","data":[1,2,3,4,5,6,7,8,9,10]}]}`

type platform struct {
	url string
	eng *engine.Engine
}

func quietLogger() *slog.Logger { return testbin.QuietLogger() }

// startPlatform runs a real engine (child processes) behind a real router on loopback.
func startPlatform(t *testing.T, ecfg engine.Config, timeout time.Duration, mutate func(*functions.Manifest)) *platform {
	t.Helper()
	m, err := functions.LoadDir(filepath.Join(testbin.Root(), "functions", "example-tensor"))
	if err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		mutate(m)
	}
	return startPlatformWith(t, ecfg, timeout, []*functions.Manifest{m})
}

func startPlatformB(b *testing.B, mutate func(*functions.Manifest)) *platform {
	m, err := functions.LoadDir(filepath.Join(testbin.Root(), "functions", "example-tensor"))
	if err != nil {
		b.Fatal(err)
	}
	mutate(m)
	return startPlatformWith(b, engine.Config{PoolSize: 0}, 20*time.Second, []*functions.Manifest{m})
}

func startPlatformWith(t testing.TB, ecfg engine.Config, timeout time.Duration, fns []*functions.Manifest) *platform {
	t.Helper()
	reg := prometheus.NewRegistry()
	ecfg.Functions = fns
	ecfg.Binary = testbin.Runtime(t)
	ecfg.Registerer = reg
	ecfg.Logger = quietLogger()
	ecfg.TickInterval = 20 * time.Millisecond
	eng, err := engine.New(ecfg)
	if err != nil {
		t.Fatal(err)
	}
	b := engine.Backend{Engine: eng}
	rt, err := router.New(router.Config{Functions: ecfg.Functions, Backend: b, RequestTimeout: timeout, Registry: reg, Logger: quietLogger(), Limits: testLimits()})
	if err != nil {
		t.Fatal(err)
	}
	admin.Mount(rt, admin.Config{Functions: ecfg.Functions, Source: b, Gatherer: reg})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	t.Cleanup(func() {
		rt.Close()
		cancel()
		<-done
	})
	url := serveRouter(t, rt)
	return &platform{url: url, eng: eng}
}

func post(t *testing.T, url, body string) (int, http.Header, map[string]any) {
	t.Helper()
	code, h, raw := postRaw(t, url, body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return code, h, out
}

// postRaw posts a JSON body and returns the answer's status, headers and body.
func postRaw(t *testing.T, url, body string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, raw
}

func TestRoutesHeadersAndErrors(t *testing.T) {
	p := startPlatform(t, engine.Config{PoolSize: 1}, 20*time.Second, func(m *functions.Manifest) { m.Runtime.MaxBodyBytes = 2048 })
	code, h, out := post(t, p.url+"/v2/models/example-tensor/infer", inferBody)
	if code != 200 || h.Get("X-Pilotlight-Revision") != "example-tensor-00001" {
		t.Fatalf("infer through the router: %d %v %v", code, h, out)
	}
	if h.Get("X-Pilotlight-Cold-Start") == "" {
		t.Error("the first request waited for a start but carries no X-Pilotlight-Cold-Start")
	}
	code, h, _ = post(t, p.url+"/v2/models/example-tensor/versions/example-tensor-00001/infer", inferBody)
	if code != 200 || h.Get("X-Pilotlight-Cold-Start") != "" {
		t.Errorf("warm request: %d, cold-start header %q (want none)", code, h.Get("X-Pilotlight-Cold-Start"))
	}
	// Host-header routing, as Knative: POST / with Host example-tensor.<anything>.
	req, _ := http.NewRequest("POST", p.url+"/", strings.NewReader(`{}`))
	req.Host = "example-tensor.default.example.com"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// example-tensor is V2 only: the instance answers its function endpoint with 404 naming the V2 route.
	if resp.StatusCode != 404 || resp.Header.Get("X-Pilotlight-Revision") != "example-tensor-00001" {
		t.Errorf("host-routed request: %d, revision %q; want the instance's answer (404, V2 only)", resp.StatusCode, resp.Header.Get("X-Pilotlight-Revision"))
	}
	for _, tc := range []struct {
		path, body string
		code       int
		mentions   string
	}{
		{"/functions/nope", `{}`, 404, "unknown function"},
		{"/v2/models/nope/infer", inferBody, 404, "unknown function"},
		{"/v2/models/example-tensor/versions/example-tensor-00042/infer", inferBody, 404, "no revision"},
		{"/v2/models/example-tensor/infer", strings.Repeat("x", 3000), 413, "larger than 2048"},
		{"/v2/models/example-tensor/infer", `{"inputs":[{"name":"bogus","shape":[1],"datatype":"FP32","data":[1]}]}`, 400, "bogus"},
	} {
		code, _, out := post(t, p.url+tc.path, tc.body)
		if code != tc.code || !strings.Contains(fmt.Sprint(out["error"]), tc.mentions) {
			t.Errorf("POST %s: %d %v, want %d mentioning %q", tc.path, code, out, tc.code, tc.mentions)
		}
	}
	var admin struct {
		Functions []struct {
			Name      string
			Revisions []struct {
				Name      string
				Weight    int
				Instances []struct {
					PID      int
					Port     int
					State    string
					Inflight int
				}
			}
		}
	}
	resp, err = http.Get(p.url + "/admin/functions")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&admin)
	resp.Body.Close()
	if len(admin.Functions) != 1 || admin.Functions[0].Revisions[0].Weight != 100 || len(admin.Functions[0].Revisions[0].Instances) != 1 {
		t.Fatalf("admin view = %+v", admin)
	}
	in := admin.Functions[0].Revisions[0].Instances[0]
	if in.PID <= 0 || in.Port <= 0 || in.State != "ready" {
		t.Errorf("admin instance = %+v", in)
	}
	for _, path := range []string{"/healthz", "/metrics", "/v2/health/ready"} {
		resp, err := http.Get(p.url + path)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("GET %s: %v %v", path, err, resp)
		}
		if resp != nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if path == "/metrics" && !strings.Contains(string(body), `pilotlight_requests_total{code="200",function="example-tensor",revision="example-tensor-00001"}`) {
				t.Error("/metrics lacks pilotlight_requests_total for the served requests")
			}
		}
	}
}

// TestInstanceKilledMidLoadLosesNoRequest SIGKILLs an instance while it has
// requests in flight: every request still succeeds (the router retries once
// elsewhere), the crash is seen (a retry or a crash exit counted), and the
// dead pid leaves the ready instances. Shared: the pid is a shared runtime
// process holding the revision's slot (minScale 2 puts the two slots in
// two processes), and killing it takes the slot the same way.
func TestInstanceKilledMidLoadLosesNoRequest(t *testing.T) {
	for _, isolation := range []string{functions.IsolationDedicated, functions.IsolationShared} {
		t.Run(isolation, func(t *testing.T) { instanceKilledMidLoad(t, isolation) })
	}
}

func instanceKilledMidLoad(t *testing.T, isolation string) {
	p := startPlatform(t, engine.Config{PoolSize: 1}, 20*time.Second, func(m *functions.Manifest) { m.Scaling.MinScale = 2; m.Isolation = isolation })
	instances := func() []engine.ProcessStatus { return p.eng.Statuses()[0].Instances }
	waitReady := func(n int, without int) []engine.ProcessStatus {
		t.Helper()
		var ready []engine.ProcessStatus
		testbin.WaitFor(t, fmt.Sprintf("%d ready instances without pid %d", n, without), 20*time.Second, func() bool {
			ready = ready[:0]
			for _, in := range instances() {
				if in.State == "ready" && in.PID != without {
					ready = append(ready, in)
				}
			}
			return len(ready) >= n
		})
		return ready
	}
	ready := waitReady(2, 0)
	victim := ready[0].PID
	if shared := isolation == functions.IsolationShared; ready[0].Shared != shared || ready[1].Shared != shared || ready[0].PID == ready[1].PID {
		t.Fatalf("isolation %s: instances %+v; want two in two processes, shared %v", isolation, ready, shared)
	}
	var ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := http.Post(p.url+"/v2/models/example-tensor/infer", "application/json", strings.NewReader(inferBody))
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					ok.Add(1)
				} else {
					failed.Add(1)
					t.Logf("status %d", resp.StatusCode)
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	// Kill only once the victim is seen serving requests.
	testbin.WaitFor(t, fmt.Sprintf("pid %d to have requests in flight", victim), 20*time.Second, func() bool {
		for _, in := range instances() {
			if in.PID == victim && in.Inflight > 0 {
				return true
			}
		}
		return false
	})
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The crash is noticed and handled: a request retried on another
	// instance, or the exit counted as a crash.
	testbin.WaitFor(t, "a router retry or a crash exit to be counted", 20*time.Second, func() bool {
		return metricSum(t, p.url, "pilotlight_router_retries_total", "") > 0 ||
			metricSum(t, p.url, "pilotlight_instance_exits_total", `reason="crashed"`) > 0
	})
	for _, in := range waitReady(2, victim) { // the crashed instance is replaced (minScale 2)
		if in.PID == victim {
			t.Fatalf("the killed pid %d is still listed as ready", victim)
		}
	}
	before := ok.Load()
	testbin.WaitFor(t, "requests to keep succeeding after the kill", 20*time.Second, func() bool { return ok.Load() > before+8 })
	close(stop)
	wg.Wait()
	stop = make(chan struct{}) // for the deferred close
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Fatalf("with an instance SIGKILLed under load: %d succeeded, %d failed; want no failure", ok.Load(), failed.Load())
	}
	for _, in := range instances() {
		if in.PID == victim && in.State == "ready" {
			t.Fatalf("the killed pid %d is listed as ready after the load", victim)
		}
	}
}

// metricSum adds the samples of a metric on the router's /metrics whose
// labels contain match.
func metricSum(t *testing.T, base, name, match string) float64 {
	t.Helper()
	sum := 0.0
	for _, line := range strings.Split(testbin.Scrape(t, base), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") || !strings.Contains(line, match) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// stuckFunction is a function whose model file is a FIFO nobody writes:
// its instance starts and never becomes ready, so requests stay held.
func stuckFunction(t *testing.T) *functions.Manifest {
	return modelFunction(t, "stuck", func(path string) error { return syscall.Mkfifo(path, 0o644) })
}

// modelFunction is a tensor function named name whose model.onnx is made by makeModel.
func modelFunction(t *testing.T, name string, makeModel func(path string) error) *functions.Manifest {
	t.Helper()
	dir := t.TempDir()
	if err := makeModel(filepath.Join(dir, "model.onnx")); err != nil {
		t.Fatal(err)
	}
	return testbin.WriteFunction(t, dir, "name: "+name+"\nhandler: tensor\nrevisions:\n  - name: "+name+"-00001\n    model: model.onnx\n")
}

func TestFloodBeyondQueueIsShedFastAndBounded(t *testing.T) {
	stuck := stuckFunction(t)
	p := startPlatformWith(t, engine.Config{PoolSize: 0, QueueCapacity: 4, StartTimeout: time.Minute}, 3*time.Second, []*functions.Manifest{stuck})
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	const flood = 300
	// order numbers the answers as they come back: shedding must not wait,
	// so every 503 comes back before any held request's 504.
	var order atomic.Int64
	type result struct {
		code  int
		order int64
	}
	results := make(chan result, flood)
	var wg sync.WaitGroup
	for i := 0; i < flood; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Post(p.url+"/functions/stuck", "application/json", strings.NewReader(`{}`))
			if err != nil {
				results <- result{-1, 0}
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 503 && (resp.Header.Get("Retry-After") == "" || resp.Header.Get(router.ShedHeader) == "") {
				results <- result{-2, 0}
				return
			}
			results <- result{resp.StatusCode, order.Add(1)}
		}()
	}
	// The router stays responsive during the flood.
	resp, err := http.Get(p.url + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz during flood: %v", err)
	}
	resp.Body.Close()
	wg.Wait()
	close(results)
	count := map[int]int{}
	var last503, first504 int64 = 0, flood + 1
	for r := range results {
		count[r.code]++
		if r.code == 503 {
			last503 = max(last503, r.order)
		}
		if r.code == 504 {
			first504 = min(first504, r.order)
		}
	}
	if count[503] != flood-4 || count[504] != 4 {
		t.Fatalf("flood of %d at a queue of 4 gave %v; want %d fast 503s with Retry-After and 4 held until the 504 timeout", flood, count, flood-4)
	}
	if last503 > first504 {
		t.Errorf("a 503 came back (answer %d) after a held request timed out (answer %d): shedding waited", last503, first504)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 64<<20 {
		t.Errorf("heap grew %d MiB during a flood of %d requests", grew>>20, flood)
	}
}

func TestTimeoutAndDisconnectWhileHeld(t *testing.T) {
	// A function that never becomes ready holds every request: the outcome
	// does not depend on how fast a cold start is.
	p := startPlatformWith(t, engine.Config{PoolSize: 0, QueueCapacity: 4, StartTimeout: time.Minute}, 5*time.Millisecond, []*functions.Manifest{stuckFunction(t)})
	code, _, out := post(t, p.url+"/v2/models/stuck/infer", inferBody)
	if code != 504 || !strings.Contains(fmt.Sprint(out["error"]), "request timeout") {
		t.Fatalf("held longer than the request timeout: %d %v, want 504", code, out)
	}
	p2 := startPlatformWith(t, engine.Config{PoolSize: 0, QueueCapacity: 1, StartTimeout: time.Minute}, 20*time.Second, []*functions.Manifest{stuckFunction(t)})
	queued := func() int { return p2.eng.Statuses()[0].Queued }
	hold := func() (cancel func(), answered <-chan struct{}) {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "POST", p2.url+"/v2/models/stuck/infer", strings.NewReader(inferBody))
		done := make(chan struct{})
		go func() {
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
			close(done)
		}()
		return cancel, done
	}
	cancel, done := hold()
	testbin.WaitFor(t, "the request to be held in the activator", 20*time.Second, func() bool { return queued() == 1 })
	cancel() // the client goes away while held
	<-done
	testbin.WaitFor(t, "the disconnected client's activator slot to be freed", 20*time.Second, func() bool { return queued() == 0 })
	// The slot is free: with a queue of 1, a new request is held again
	// instead of being shed with 503.
	cancel, done = hold()
	defer func() { cancel(); <-done }()
	testbin.WaitFor(t, "a new request to take the freed slot", 20*time.Second, func() bool { return queued() == 1 })
	select {
	case <-done:
		t.Fatal("the request after a disconnect was answered instead of held")
	default:
	}
}

// brokenFunction is a function whose model file is not an ONNX model.
func brokenFunction(t *testing.T) *functions.Manifest {
	return modelFunction(t, "broken", func(path string) error { return os.WriteFile(path, []byte("not a model"), 0o644) })
}

func TestBrokenModelIsReportedAndOthersKeepServing(t *testing.T) {
	good, err := functions.LoadDir(filepath.Join(testbin.Root(), "functions", "example-tensor"))
	if err != nil {
		t.Fatal(err)
	}
	p := startPlatformWith(t, engine.Config{PoolSize: 1}, 20*time.Second, []*functions.Manifest{good, brokenFunction(t)})
	code, h, out := post(t, p.url+"/v2/models/broken/infer", `{"inputs":[]}`)
	if code != 503 || !strings.Contains(fmt.Sprint(out["error"]), "broken-00001") || h.Get("Retry-After") == "" {
		t.Fatalf("broken function: %d %v, want 503 naming the revision and why", code, out)
	}
	if h.Get(router.ShedHeader) != "" {
		t.Error("a failed start is not overload shedding")
	}
	if code, _, out := post(t, p.url+"/v2/models/example-tensor/infer", inferBody); code != 200 {
		t.Fatalf("a healthy function next to a broken one: %d %v", code, out)
	}
}

func TestMissingONNXRuntimeIsOneClearReason(t *testing.T) {
	t.Setenv("ONNXRUNTIME_LIB", "/nonexistent/libonnxruntime.so.1")
	p := startPlatform(t, engine.Config{PoolSize: 1}, 20*time.Second, nil)
	code, _, out := post(t, p.url+"/v2/models/example-tensor/infer", inferBody)
	if code != 503 || !strings.Contains(fmt.Sprint(out["error"]), "make ort") {
		t.Fatalf("without ONNX Runtime: %d %v, want 503 naming `make ort`", code, out)
	}
	resp, err := http.Get(p.url + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("the router itself must stay up: %v", err)
	}
	resp.Body.Close()
}

// newTestServer serves h on loopback with the router's real listener limits.
func newTestServer(h http.Handler) *httptest.Server {
	limits := router.DefaultLimits()
	limits.ReadTimeout = 2 * time.Second
	ts := httptest.NewUnstartedServer(h)
	ts.Config = limits.Server(h, nil)
	ts.Start()
	return ts
}

// testLimits are the router's real listener limits, with a read timeout
// short enough for the slow-body test.
func testLimits() router.Limits {
	l := router.DefaultLimits()
	l.ReadTimeout = 2 * time.Second
	return l
}

// serveRouter runs rt's real front door (the fast listener) on loopback.
func serveRouter(t testing.TB, rt *router.Router) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rt.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = rt.Shutdown(ctx)
		<-done
	})
	return "http://" + ln.Addr().String()
}

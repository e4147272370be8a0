package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/runtime/ort"
	"github.com/pilotlight/pilotlight/runtime/server"
)

func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func requireORT(t testing.TB) {
	t.Helper()
	if _, err := ort.Init(); err != nil {
		t.Fatalf("ONNX Runtime must be available for runtime tests (make ort): %v", err)
	}
}

// loaded starts a server with the bring-your-own example model loaded.
func loaded(t testing.TB, mutate func(*functions.Manifest)) (*server.Server, *httptest.Server, *prometheus.Registry) {
	t.Helper()
	s, reg := loadExample(t, mutate)
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return s, ts, reg
}

// loadExample is a server, not yet serving, with example-tensor's first
// revision loaded after mutate (when not nil) changed its manifest.
func loadExample(t testing.TB, mutate func(*functions.Manifest)) (*server.Server, *prometheus.Registry) {
	t.Helper()
	requireORT(t)
	m, err := functions.LoadDir(filepath.Join(repoRoot(t), "functions", "example-tensor"))
	if err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		mutate(m)
	}
	reg := prometheus.NewRegistry()
	s := server.New(server.Config{Registry: reg})
	if err := s.Load(context.Background(), m, m.Revisions[0].Name); err != nil {
		t.Fatal(err)
	}
	return s, reg
}

func do(t testing.TB, method, url, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s: status %d, body is not JSON: %q", method, url, resp.StatusCode, raw)
	}
	return resp.StatusCode, out
}

func vec(rows int, v float64) string {
	var b strings.Builder
	b.WriteString("[")
	for i := 0; i < rows*10; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "%g", v)
	}
	b.WriteString("]")
	return b.String()
}

func TestV2MetadataAndInfer(t *testing.T) {
	_, ts, _ := loaded(t, nil)
	code, md := do(t, "GET", ts.URL+"/v2/models/example-tensor", "")
	if code != 200 {
		t.Fatalf("metadata: %d %v", code, md)
	}
	in := md["inputs"].([]any)[0].(map[string]any)
	if in["name"] != "input_vectors" || in["datatype"] != "FP32" || fmt.Sprint(in["shape"]) != "[-1 10]" {
		t.Errorf("input metadata from the model = %v", in)
	}
	if v := md["versions"].([]any); len(v) != 1 || v[0] != "example-tensor-00001" {
		t.Errorf("versions = %v", v)
	}
	for _, path := range []string{"/v2/models/example-tensor/infer", "/v2/models/example-tensor/versions/example-tensor-00001/infer"} {
		body := `{"id":"req-7","inputs":[{"name":"input_vectors","shape":[2,10],"datatype":"FP32","data":` + vec(2, 1) + `}]}`
		code, out := do(t, "POST", ts.URL+path, body)
		if code != 200 {
			t.Fatalf("%s: %d %v", path, code, out)
		}
		if out["id"] != "req-7" || out["model_version"] != "example-tensor-00001" {
			t.Errorf("id/version not echoed: %v", out)
		}
		o := out["outputs"].([]any)[0].(map[string]any)
		if o["name"] != "output_scalars" || fmt.Sprint(o["shape"]) != "[2]" || len(o["data"].([]any)) != 2 {
			t.Errorf("output = %v", o)
		}
	}
	// Nested data is accepted as row-major.
	nested := `{"inputs":[{"name":"input_vectors","shape":[1,10],"datatype":"FP32","data":[[1,2,3,4,5,6,7,8,9,10]]}],"outputs":[{"name":"output_scalars"}]}`
	if code, out := do(t, "POST", ts.URL+"/v2/models/example-tensor/infer", nested); code != 200 {
		t.Fatalf("nested data: %d %v", code, out)
	}
	for _, p := range []string{"/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/example-tensor/ready", "/v2/models/example-tensor/versions/example-tensor-00001/ready"} {
		if code, out := do(t, "GET", ts.URL+p, ""); code != 200 {
			t.Errorf("GET %s = %d %v", p, code, out)
		}
	}
}

func TestBadInputIsA4xxAndChangesNothing(t *testing.T) {
	_, ts, _ := loaded(t, func(m *functions.Manifest) { m.Runtime.MaxBodyBytes = 4096; m.Runtime.MaxRequestRows = 4 })
	url := ts.URL + "/v2/models/example-tensor/infer"
	good := func(shape, data string) string {
		return `{"inputs":[{"name":"input_vectors","shape":` + shape + `,"datatype":"FP32","data":` + data + `}]}`
	}
	cases := []struct {
		name, path, body string
		code             int
		mentions         string
	}{
		{"malformed JSON", url, `{"inputs":[`, 400, "malformed"},
		{"unknown model", ts.URL + "/v2/models/nope/infer", good("[1,10]", vec(1, 1)), 404, "nope"},
		{"unknown version", ts.URL + "/v2/models/example-tensor/versions/example-tensor-00009/infer", good("[1,10]", vec(1, 1)), 404, "example-tensor-00009"},
		{"wrong tensor name", url, `{"inputs":[{"name":"x","shape":[1,10],"datatype":"FP32","data":` + vec(1, 1) + `}]}`, 400, `"x"`},
		{"wrong datatype", url, `{"inputs":[{"name":"input_vectors","shape":[1,10],"datatype":"INT64","data":` + vec(1, 1) + `}]}`, 400, "datatype"},
		{"wrong rank", url, good("[10]", vec(1, 1)), 400, "dimensions"},
		{"wrong fixed dim", url, good("[1,9]", vec(1, 1)), 400, "dimension 1"},
		{"negative dim", url, good("[-1,10]", vec(1, 1)), 400, ">= 0"},
		{"huge shape", url, good("[100000000000,10]", vec(1, 1)), 400, "too large"},
		{"data shorter than shape", url, good("[2,10]", vec(1, 1)), 400, "shape needs 20"},
		{"data longer than shape", url, good("[1,10]", vec(2, 1)), 400, "more values"},
		{"NaN as string", url, good("[1,10]", `["NaN",1,1,1,1,1,1,1,1,1]`), 400, "finite"},
		{"Inf by overflow", url, good("[1,10]", `[1e999,1,1,1,1,1,1,1,1,1]`), 400, "finite"},
		{"float beyond FP32", url, good("[1,10]", `[1e300,1,1,1,1,1,1,1,1,1]`), 400, "finite"},
		{"missing input", url, `{"inputs":[]}`, 400, "no inputs"},
		{"unknown output", url, `{"inputs":[{"name":"input_vectors","shape":[1,10],"datatype":"FP32","data":` + vec(1, 1) + `}],"outputs":[{"name":"zzz"}]}`, 400, "zzz"},
		{"unknown field", url, `{"inputz":[]}`, 400, "inputz"},
		{"zero rows", url, good("[0,10]", "[]"), 400, "0 rows"},
		{"more rows than maxRequestRows", url, good("[5,10]", vec(5, 1)), 400, "maxRequestRows"},
		{"body over limit", url, good("[1,10]", vec(1, 1)) + strings.Repeat(" ", 5000), 413, "larger than 4096"},
		{"function endpoint on a V2-only model", ts.URL + "/", `{}`, 404, "V2 API only"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out := do(t, "POST", tc.path, tc.body)
			if code != tc.code {
				t.Fatalf("status %d, want %d: %v", code, tc.code, out)
			}
			if msg, _ := out["error"].(string); !strings.Contains(msg, tc.mentions) {
				t.Errorf("error %q does not mention %q", msg, tc.mentions)
			}
		})
	}
	// The server is unharmed: a good request still works.
	if code, out := do(t, "POST", url, good("[1,10]", vec(1, 1))); code != 200 {
		t.Fatalf("after bad input: %d %v", code, out)
	}
}

func TestConcurrentRequestsAreBatched(t *testing.T) {
	_, ts, reg := loaded(t, func(m *functions.Manifest) {
		m.Runtime.Sessions = 1
		m.Batching.MaxDelay = 20 * time.Millisecond
		m.Batching.MaxBatch = 64
	})
	const clients, each = 16, 30
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; j < each; j++ {
				v := float64(i*100 + j)
				body := `{"inputs":[{"name":"input_vectors","shape":[1,10],"datatype":"FP32","data":` + vec(1, v) + `}]}`
				resp, err := http.Post(ts.URL+"/v2/models/example-tensor/infer", "application/json", strings.NewReader(body))
				if err != nil {
					errs <- err
					return
				}
				var out struct {
					Outputs []struct{ Data []float64 } `json:"outputs"`
				}
				json.NewDecoder(resp.Body).Decode(&out)
				resp.Body.Close()
				if resp.StatusCode != 200 || len(out.Outputs) != 1 || len(out.Outputs[0].Data) != 1 {
					errs <- fmt.Errorf("client %d: status %d, %+v", i, resp.StatusCode, out)
					return
				}
				// The model sums its ten inputs: each client must get the sum of its own row.
				if got := out.Outputs[0].Data[0]; got != 10*v {
					errs <- fmt.Errorf("client %d sent ten %v and got %v: rows were mixed up", i, v, got)
					return
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Sixteen clients sending back to back: fewer ONNX calls than requests ran.
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "pilotlight_batch_size_rows" {
			h := mf.GetMetric()[0].GetHistogram()
			mean := h.GetSampleSum() / float64(h.GetSampleCount())
			// Timing on a shared machine varies; at least a tenth fewer calls than rows proves coalescing.
			if h.GetSampleSum() != clients*each || float64(h.GetSampleCount()) > 0.9*clients*each {
				t.Errorf("%v rows in %d calls (mean %.2f): want %d rows coalesced into clearly fewer calls", h.GetSampleSum(), h.GetSampleCount(), mean, clients*each)
			}
			return
		}
	}
	t.Fatal("pilotlight_batch_size_rows not exported")
}

func TestNotReadyUntilLoadedAndReasonOnFailure(t *testing.T) {
	requireORT(t)
	s := server.New(server.Config{})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	if code, _ := do(t, "GET", ts.URL+"/v2/health/live", ""); code != 200 {
		t.Fatalf("live = %d", code)
	}
	if code, out := do(t, "GET", ts.URL+"/v2/health/ready", ""); code != 503 || !strings.Contains(out["error"].(string), "no revision") {
		t.Fatalf("ready before load = %d %v", code, out)
	}
	m, err := functions.LoadDir(filepath.Join(repoRoot(t), "functions", "example-tensor"))
	if err != nil {
		t.Fatal(err)
	}
	m.Revisions[0].Model = "does-not-exist.onnx"
	if err := s.Load(context.Background(), m, m.Revisions[0].Name); err == nil {
		t.Fatal("loading a missing model succeeded")
	}
	code, out := do(t, "GET", ts.URL+"/v2/health/ready", "")
	if code != 503 || !strings.Contains(out["error"].(string), "does-not-exist.onnx") {
		t.Fatalf("ready after failed load = %d %v, want 503 naming the model", code, out)
	}
}

func TestDrainFinishesInFlightRequests(t *testing.T) {
	s, ts, reg := loaded(t, nil)
	// entered fires once a request is inside the handler chain: in flight.
	entered := make(chan struct{}, 1)
	e, ok := s.Handler().(*echo.Echo)
	if !ok {
		t.Fatalf("Handler is a %T; this test observes requests through echo middleware", s.Handler())
	}
	e.Use(func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			select {
			case entered <- struct{}{}:
			default:
			}
			return next(c)
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln, nil) }()
	// Half a request's body is sent, the request is seen in flight, then
	// SIGTERM (cancel) arrives, then the rest of the body: it must be served.
	body := `{"inputs":[{"name":"input_vectors","shape":[1,10],"datatype":"FP32","data":` + vec(1, 1) + `}]}`
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v2/models/example-tensor/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body[:len(body)/2])
	<-entered
	cancel()
	waitDraining(t, ts.URL)
	if _, err := io.WriteString(conn, body[len(body)/2:]); err != nil {
		t.Fatalf("finish the in-flight request's body during drain: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("in-flight request during drain: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("in-flight request during drain: status %d, want 200", resp.StatusCode)
	}
	if err := <-served; err != nil {
		t.Fatalf("serve: %v", err)
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), 200*time.Millisecond); err == nil {
		t.Error("still accepting connections after drain")
	}
	if n := testutil.CollectAndCount(reg, "pilotlight_runtime_requests_total"); n == 0 {
		t.Error("request not counted")
	}
}

// waitDraining waits until Serve has begun draining: readiness (asked on
// the test's other listener, since Serve's own is closing) answers 503.
func waitDraining(t *testing.T, base string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, _ := do(t, "GET", base+"/v2/health/ready", ""); code == http.StatusServiceUnavailable {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("readiness did not turn false after cancel")
		}
		time.Sleep(time.Millisecond)
	}
}

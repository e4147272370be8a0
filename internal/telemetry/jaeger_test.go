//go:build jaeger

// The end-to-end trace check against a real Jaeger (make trace-check). It is
// behind the jaeger build tag because Jaeger is a heavy build of its own
// (hack/jaeger, a nested module) that make test does not pay for.

package telemetry_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/internal/bench"
	"github.com/pilotlight/pilotlight/internal/loadgen"
	"github.com/pilotlight/pilotlight/internal/testbin"
)

const traceWait = 60 * time.Second

// jaegerSpan is a span as Jaeger's query API (/api/traces/{id}) returns it.
type jaegerSpan struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	ProcessID     string `json:"processID"`
	References    []struct {
		RefType string `json:"refType"`
		TraceID string `json:"traceID"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	Tags []struct {
		Key   string `json:"key"`
		Value any    `json:"value"`
	} `json:"tags"`
	Logs []struct {
		Fields []struct {
			Key   string `json:"key"`
			Value any    `json:"value"`
		} `json:"fields"`
	} `json:"logs"`
}

type jaegerTrace struct {
	Spans     []jaegerSpan `json:"spans"`
	Processes map[string]struct {
		ServiceName string `json:"serviceName"`
	} `json:"processes"`
}

func getTrace(base, id string) (*jaegerTrace, error) {
	resp, err := http.Get(base + "/api/traces/" + id)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out struct {
		Data []jaegerTrace `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	if len(out.Data) == 0 {
		return nil, fmt.Errorf("trace %s not found", id)
	}
	return &out.Data[0], nil
}

func (tr *jaegerTrace) byName(name string) []jaegerSpan {
	var out []jaegerSpan
	for _, s := range tr.Spans {
		if s.OperationName == name {
			out = append(out, s)
		}
	}
	return out
}

func (s jaegerSpan) parent() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

func (s jaegerSpan) tag(key string) any {
	for _, t := range s.Tags {
		if t.Key == key {
			return t.Value
		}
	}
	return nil
}

// TestTraceInJaeger sends one request with a traceparent through a real
// `pilotlight serve` exporting OTLP to a real Jaeger, and finds, through
// Jaeger's query API, one trace holding the router's and the instance's
// spans, plus the cold start's own trace linked from the request.
func TestTraceInJaeger(t *testing.T) {
	root := testbin.Root()
	jaegerURL, otlp := startJaeger(t)

	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
	t.Setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
	var serveLog bytes.Buffer
	serve, err := bench.StartServe(testbin.Pilotlight(t), []string{"--functions", filepath.Join(root, "functions"), "--flags", "", "--pool-size", "1", "--ebpf"}, &serveLog)
	if err != nil {
		t.Fatal(err)
	}
	defer serve.Stop()
	base := "http://" + serve.Addr
	// A V2 request from the function's testdata: asking the router for the
	// model's metadata would start an instance before the traced request.
	body, err := os.ReadFile(filepath.Join(root, "functions", "fraud", "testdata", "infer.json"))
	if err != nil {
		t.Fatal(err)
	}
	// Wait for the pilot light, so the cold start is a specialisation.
	for deadline := time.Now().Add(traceWait); ; time.Sleep(50 * time.Millisecond) {
		if a, err := bench.GetAdmin(base); err == nil && len(a.WarmPool) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no idle warm-pool process")
		}
	}

	raw := make([]byte, 24)
	_, _ = rand.Read(raw)
	traceID, parentID := hex.EncodeToString(raw[:16]), hex.EncodeToString(raw[16:])
	req, _ := http.NewRequest(http.MethodPost, base+"/v2/models/fraud/infer", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("traceparent", "00-"+traceID+"-"+parentID+"-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Pilotlight-Cold-Start") == "" {
		t.Fatalf("status %d, cold start %q: want a 200 that waited for a cold start", resp.StatusCode, resp.Header.Get("X-Pilotlight-Cold-Start"))
	}

	// Spans arrive in batches from two processes: wait until the trace has
	// every span this request should have made.
	want := []string{"router POST /v2/models/:model/infer", "activator wait", "proxy",
		"instance POST /v2/models/:model/infer", "decode", "batch wait", "onnx run", "encode"}
	var tr *jaegerTrace
	for deadline := time.Now().Add(traceWait); ; time.Sleep(200 * time.Millisecond) {
		tr, err = getTrace(jaegerURL, traceID)
		missing := []string{}
		if err == nil {
			for _, name := range want {
				if len(tr.byName(name)) == 0 {
					missing = append(missing, name)
				}
			}
		}
		if err == nil && len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s in Jaeger: err %v, missing spans %v\nserve log:\n%s", traceID, err, missing, serveLog.String())
		}
	}
	services := map[string]bool{}
	for _, s := range tr.Spans {
		services[tr.Processes[s.ProcessID].ServiceName] = true
	}
	if !services["pilotlight-router"] || !services["pilotlight-runtime"] {
		t.Errorf("services in the trace %v; want the router's and the instance's", services)
	}
	request := tr.byName("router POST /v2/models/:model/infer")[0]
	if request.parent() != parentID {
		t.Errorf("router span's parent %q; want the client's %s", request.parent(), parentID)
	}
	proxy := tr.byName("proxy")[0]
	instance := tr.byName("instance POST /v2/models/:model/infer")[0]
	if proxy.parent() != request.SpanID || instance.parent() != proxy.SpanID {
		t.Errorf("want request → proxy → instance; proxy's parent %s, instance's parent %s", proxy.parent(), instance.parent())
	}
	for _, name := range []string{"decode", "batch wait", "onnx run", "encode"} {
		if s := tr.byName(name)[0]; s.parent() != instance.SpanID {
			t.Errorf("%s is not a child of the instance span", name)
		}
	}
	if rows := tr.byName("batch wait")[0].tag("pilotlight.batch.rows"); rows == nil {
		t.Error("batch wait carries no pilotlight.batch.rows")
	}

	// The cold start is its own trace, linked from the request's activator wait.
	wait := tr.byName("activator wait")[0]
	if wait.tag("pilotlight.cold_start") != true || wait.tag("pilotlight.cold_start.source") != "pool" {
		t.Errorf("activator wait tags: cold_start %v source %v; want true, pool", wait.tag("pilotlight.cold_start"), wait.tag("pilotlight.cold_start.source"))
	}
	coldTrace := ""
	for _, r := range wait.References {
		if r.RefType == "FOLLOWS_FROM" && r.TraceID != traceID {
			coldTrace = r.TraceID
		}
	}
	if coldTrace == "" {
		t.Fatalf("activator wait has no link to a cold start trace: %+v", wait.References)
	}
	var cold *jaegerTrace
	for deadline := time.Now().Add(traceWait); ; time.Sleep(200 * time.Millisecond) {
		if cold, err = getTrace(jaegerURL, coldTrace); err == nil && len(cold.byName("cold start")) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cold start trace %s: %v", coldTrace, err)
		}
	}
	events := map[string]bool{}
	for _, l := range cold.byName("cold start")[0].Logs {
		for _, f := range l.Fields {
			if f.Key == "event" {
				events[fmt.Sprint(f.Value)] = true
			}
		}
	}
	if !events["ready"] {
		t.Errorf("cold start span events %v; want ready", events)
	}
	if strings.Contains(serveLog.String(), "eBPF probes attached") && !events["accept"] && !events["first_write"] {
		t.Errorf("eBPF is on but the cold start span has no kernel events: %v", events)
	}
	t.Logf("trace %s: %d spans from %v; cold start trace %s with events %v", traceID, len(tr.Spans), services, coldTrace, events)
}

// startJaeger runs Jaeger on free loopback ports and returns its query API's
// and its OTLP/HTTP endpoint's URLs.
func startJaeger(t *testing.T) (query, otlp string) {
	t.Helper()
	root := testbin.Root()
	jaegerBin := os.Getenv("JAEGER_BIN")
	if jaegerBin == "" {
		jaegerBin = filepath.Join(root, "bin", "jaeger")
	}
	if _, err := os.Stat(jaegerBin); err != nil {
		t.Fatalf("%v: build Jaeger first (make jaeger-bin), or set JAEGER_BIN", err)
	}
	queryPort, otlpPort := testbin.FreePort(t), testbin.FreePort(t)
	cmd := exec.Command(jaegerBin, "--config=file:"+filepath.Join(root, "hack", "jaeger", "config.yaml"))
	cmd.Env = append(os.Environ(), "JAEGER_QUERY_PORT="+queryPort, "JAEGER_OTLP_HTTP_PORT="+otlpPort,
		"JAEGER_OTLP_GRPC_PORT="+testbin.FreePort(t), "JAEGER_HEALTH_PORT="+testbin.FreePort(t), "JAEGER_QUERY_GRPC_PORT="+testbin.FreePort(t))
	query = "http://127.0.0.1:" + queryPort
	testbin.StartDaemon(t, cmd, query+"/api/services", traceWait, "make jaeger-bin builds it")
	return query, "http://127.0.0.1:" + otlpPort
}

// Bounds of the throughput comparison.
const (
	throughputRounds      = 3
	throughputRound       = 5 * time.Second
	throughputConcurrency = 16
)

// TestTracingThroughput measures requests per second through `pilotlight
// serve` (router and instance) with tracing off, and on at 1% and 100% of
// new traces exported to a real Jaeger, in interleaved rounds so the
// machine's load drifts equally over the three. It asserts only that every
// request succeeded; the figures go to the log (make bench-tracing).
func TestTracingThroughput(t *testing.T) {
	root := testbin.Root()
	_, otlp := startJaeger(t)
	body, err := os.ReadFile(filepath.Join(root, "functions", "fraud", "testdata", "infer.json"))
	if err != nil {
		t.Fatal(err)
	}
	modes := []struct {
		name string
		env  map[string]string
	}{
		{"off", map[string]string{"OTEL_TRACES_EXPORTER": "none"}},
		{"on, 1%", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": otlp, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}},
		{"on, 100%", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": otlp, "OTEL_TRACES_SAMPLER": "parentbased_always_on"}},
	}
	urls := make([]string, len(modes))
	for i, m := range modes {
		for _, k := range []string{"OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"} {
			t.Setenv(k, m.env[k])
		}
		serve, err := bench.StartServe(testbin.Pilotlight(t), []string{"--functions", filepath.Join(root, "functions"), "--flags", "", "--pool-size", "0"}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(serve.Stop)
		urls[i] = "http://" + serve.Addr + "/v2/models/fraud/infer"
		warm := loadgen.Run(context.Background(), loadgen.Config{URL: urls[i], Body: func(int, int) []byte { return body },
			Header: http.Header{"Content-Type": {"application/json"}}, Concurrency: 1, Requests: 20})
		if warm.Succeeded == 0 {
			t.Fatalf("%s: warm-up failed: %v", m.name, warm.Status)
		}
	}
	rps := make([][]float64, len(modes))
	for round := 0; round < throughputRounds; round++ {
		for i, m := range modes {
			res := loadgen.Run(context.Background(), loadgen.Config{URL: urls[i], Body: func(int, int) []byte { return body },
				Header: http.Header{"Content-Type": {"application/json"}}, Concurrency: throughputConcurrency, Duration: throughputRound})
			if res.Succeeded != res.Sent {
				t.Errorf("%s round %d: %d of %d requests failed: %v", m.name, round, res.Sent-res.Succeeded, res.Sent, res.Status)
			}
			rps[i] = append(rps[i], res.RPS())
			t.Logf("round %d %-9s %8.0f req/s  p50 %v p99 %v", round, m.name, res.RPS(), res.Quantile(0.5), res.Quantile(0.99))
		}
	}
	median := func(v []float64) float64 {
		s := append([]float64(nil), v...)
		for i := range s {
			for j := i + 1; j < len(s); j++ {
				if s[j] < s[i] {
					s[i], s[j] = s[j], s[i]
				}
			}
		}
		return s[len(s)/2]
	}
	off := median(rps[0])
	for i, m := range modes {
		t.Logf("%-9s median %8.0f req/s  ratio to off %.2f  (rounds %v)", m.name, median(rps[i]), median(rps[i])/off, rps[i])
	}
}

package router_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/metadata"

	"github.com/pilotlight/pilotlight/admin"
	"github.com/pilotlight/pilotlight/engine"
	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/telemetry"
	"github.com/pilotlight/pilotlight/internal/testbin"
	pb "github.com/pilotlight/pilotlight/proto/inference"
	"github.com/pilotlight/pilotlight/router"
)

const (
	clientTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientParent = "00f067aa0ba902b7"
)

// TestRouterSpans sends requests through a real router, engine (child
// processes, scale from zero through the warm pool) and flag picker with
// tracing on, and reads the router's spans from the console exporter.
func TestRouterSpans(t *testing.T) {
	dir := t.TempDir()
	fn := twoRevisions(t, dir, "demo", false)
	flagsPath := flagFile(t, dir, splitFlags)
	var out bytes.Buffer
	reg := prometheus.NewRegistry()
	tel, err := telemetry.Setup(telemetry.Config{Exporter: telemetry.ExporterConsole, Console: &out, ServiceName: "router-test", QueueSpans: 1024}, reg, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	eng, _, picker := flagPicking(t, []*functions.Manifest{fn}, flagsPath, reg)
	b := engine.Backend{Engine: eng}
	rt, err := router.New(router.Config{Functions: []*functions.Manifest{fn}, Backend: b, Picker: picker, Registry: reg, Logger: quietLogger(), Telemetry: tel})
	if err != nil {
		t.Fatal(err)
	}
	admin.Mount(rt, admin.Config{Functions: []*functions.Manifest{fn}, Picker: picker, Source: b, Gatherer: reg})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	ts := newTestServer(rt.Handler())
	defer func() {
		ts.Close()
		rt.Close()
		cancel()
		<-done
	}()

	send := func(traceparent string) *http.Response {
		req, _ := http.NewRequest(http.MethodPost, ts.URL+"/v2/models/demo/infer", strings.NewReader(inferBody))
		req.Header.Set("X-User-Email", "dev@pilotlight.dev") // the flag's targeting sends this user to the canary
		if traceparent != "" {
			req.Header.Set("traceparent", traceparent)
		}
		return testbin.DoOK(t, nil, req)
	}
	// A warm-pool process is specialised for the cold start (source pool) once one is idle.
	testbin.WaitFor(t, "a warm-pool process to become idle", time.Minute, func() bool { return len(eng.PoolStatus()) > 0 })
	first := send("00-" + clientTrace + "-" + clientParent + "-01") // scale from zero: a cold start
	if first.Header.Get("X-Pilotlight-Cold-Start") == "" {
		t.Fatal("the first request did not wait for a cold start; the test needs one")
	}
	// The latency histogram links to the trace (OpenMetrics exposition).
	// Read before the next requests: a bucket keeps only its latest
	// exemplar, and theirs (new traces) may land in the same bucket.
	req, _ := http.NewRequest(http.MethodGet, ts.URL+"/metrics", nil)
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(metrics, []byte(`# {trace_id="`+clientTrace+`"}`)) {
		t.Errorf("no exemplar with the client's trace id on pilotlight_request_duration_seconds")
	}

	send("00-not-a-trace-at-all")
	send("")

	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := testbin.DecodeSpans(t, out.Bytes())
	byName := map[string][]testbin.Span{}
	for _, s := range spans {
		byName[s.Name] = append(byName[s.Name], s)
	}
	requests := byName["router POST /v2/models/:model/infer"]
	if len(requests) != 3 {
		t.Fatalf("%d request spans, want 3; spans: %v", len(requests), names(spans))
	}
	var continued *testbin.Span
	for i, s := range requests {
		if s.SpanContext.TraceID == clientTrace {
			continued = &requests[i]
		}
	}
	if continued == nil || continued.Parent.SpanID != clientParent {
		t.Fatalf("no request span continues the client's traceparent")
	}
	for key, want := range map[string]any{
		"pilotlight.function": "demo", "pilotlight.revision": "demo-00002", "http.response.status_code": float64(200),
		"feature_flag.key": "demo-revision", "feature_flag.result.variant": "canary", "feature_flag.result.reason": "targeting_match",
		"feature_flag.provider.name": flags.ProviderName,
	} {
		if got := continued.Attr(key); got != want {
			t.Errorf("request span %s = %v, want %v", key, got, want)
		}
	}
	for _, s := range requests {
		if s.SpanContext.TraceID != clientTrace && (s.Parent.SpanID != "0000000000000000" && s.Parent.SpanID != "") {
			t.Errorf("a request without a valid traceparent has parent %s; want a new trace", s.Parent.SpanID)
		}
	}

	child := func(name string) testbin.Span {
		t.Helper()
		for _, s := range byName[name] {
			if s.Parent.SpanID == continued.SpanContext.SpanID {
				return s
			}
		}
		t.Fatalf("no %q span under the client's request span; spans: %v", name, names(spans))
		return testbin.Span{}
	}
	wait := child("activator wait")
	if wait.Attr("pilotlight.cold_start") != true || wait.Attr("pilotlight.cold_start.source") != "pool" {
		t.Errorf("activator wait: cold_start %v source %v; want true, pool", wait.Attr("pilotlight.cold_start"), wait.Attr("pilotlight.cold_start.source"))
	}
	if len(byName["cold start"]) != 1 {
		t.Fatalf("%d cold start spans, want 1", len(byName["cold start"]))
	}
	cold := byName["cold start"][0]
	if len(wait.Links) != 1 || wait.Links[0].SpanContext.SpanID != cold.SpanContext.SpanID {
		t.Errorf("activator wait links %v; want the cold start span %s", wait.Links, cold.SpanContext.SpanID)
	}
	if cold.SpanContext.TraceID == clientTrace || len(cold.Links) != 1 || cold.Links[0].SpanContext.SpanID != wait.SpanContext.SpanID {
		t.Errorf("cold start span: want its own trace, linked to the request that triggered it; got %+v", cold)
	}
	warm := 0
	for _, s := range byName["activator wait"] {
		if s.Attr("pilotlight.cold_start") == false {
			warm++
		}
	}
	if warm != 2 {
		t.Errorf("%d warm activator waits, want 2", warm)
	}
	proxy := child("proxy")
	if proxy.Attr("http.response.status_code") != float64(200) {
		t.Errorf("proxy span status %v", proxy.Attr("http.response.status_code"))
	}
}

func names(spans []testbin.Span) []string {
	out := make([]string, len(spans))
	for i, s := range spans {
		out[i] = s.Name
	}
	return out
}

// consoleTelemetry is tracing on with every span written to out.
func consoleTelemetry(t *testing.T, out io.Writer) *telemetry.Telemetry {
	t.Helper()
	tel, err := telemetry.Setup(telemetry.Config{Exporter: telemetry.ExporterConsole, Console: out, ServiceName: "router-test", QueueSpans: 1024}, prometheus.NewRegistry(), quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	return tel
}

// traceparentOf splits a W3C traceparent into its trace and parent ids.
func traceparentOf(t *testing.T, v string) (traceID, parentID string) {
	t.Helper()
	parts := strings.Split(v, "-")
	if len(parts) != 4 || len(parts[1]) != 32 || len(parts[2]) != 16 {
		t.Fatalf("traceparent %q is not W3C's", v)
	}
	return parts[1], parts[2]
}

// spanByID finds the span with id among spans.
func spanByID(t *testing.T, spans []testbin.Span, id string) testbin.Span {
	t.Helper()
	for _, s := range spans {
		if s.SpanContext.SpanID == id {
			return s
		}
	}
	t.Fatalf("no span %s among %v", id, names(spans))
	return testbin.Span{}
}

// TestFastPathTracePropagation sends requests through the real front door
// (fasthttp) to an instance that records the traceparent it was sent: the
// client's trace continues through the router's proxy span to the
// instance, a malformed traceparent starts a new trace and is no error,
// and a large (streamed) response still ends its spans.
func TestFastPathTracePropagation(t *testing.T) {
	var mu sync.Mutex
	var seen []string // traceparent of each call the instance got
	inst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("traceparent"))
		mu.Unlock()
		body, _ := io.ReadAll(r.Body)
		if string(body) == "big" {
			w.Write(bytes.Repeat([]byte("x"), 200<<10)) // over the proxy's buffered limit: streamed
			return
		}
		w.Write([]byte(`{"ok":true}`))
	}))
	defer inst.Close()
	var out bytes.Buffer
	tel := consoleTelemetry(t, &out)
	fn := &functions.Manifest{Name: "m", Handler: "tensor", Revisions: []functions.Revision{{Name: "m-00001"}}}
	fn.Runtime.MaxBodyBytes = 1000
	rt, err := router.New(router.Config{Functions: []*functions.Manifest{fn}, Registry: prometheus.NewRegistry(), Logger: quietLogger(), Telemetry: tel,
		Backend: &instanceBackend{addr: strings.TrimPrefix(inst.URL, "http://"), warm: map[string]bool{}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	base := serveRouter(t, rt)

	send := func(traceparent, body string) int {
		req, _ := http.NewRequest(http.MethodPost, base+"/v2/models/m/infer", strings.NewReader(body))
		if traceparent != "" {
			req.Header.Set("traceparent", traceparent)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("traceparent %q: status %d", traceparent, resp.StatusCode)
		}
		return int(n)
	}
	send("00-"+clientTrace+"-"+clientParent+"-01", "{}")
	send("00-"+clientTrace+"-zz-01", "{}") // malformed: a new trace
	if n := send("", "big"); n != 200<<10 {
		t.Fatalf("streamed response: %d bytes, want %d", n, 200<<10)
	}
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := testbin.DecodeSpans(t, out.Bytes())
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 {
		t.Fatalf("the instance got %d calls, want 3", len(seen))
	}
	for i, tp := range seen {
		traceID, parentID := traceparentOf(t, tp)
		proxy := spanByID(t, spans, parentID)
		if proxy.Name != "proxy" || proxy.SpanContext.TraceID != traceID || proxy.Attr("http.response.status_code") != float64(200) {
			t.Errorf("call %d: the instance's parent is %q (trace %s, status %v); want the router's proxy span, status 200", i, proxy.Name, proxy.SpanContext.TraceID, proxy.Attr("http.response.status_code"))
		}
		req := spanByID(t, spans, proxy.Parent.SpanID)
		if req.Name != "router POST /v2/models/:model/infer" || req.Attr("pilotlight.revision") != "m-00001" || req.Attr("http.response.status_code") != float64(200) {
			t.Errorf("call %d: the proxy span's parent is %q revision %v status %v", i, req.Name, req.Attr("pilotlight.revision"), req.Attr("http.response.status_code"))
		}
		switch i {
		case 0:
			if traceID != clientTrace || req.Parent.SpanID != clientParent {
				t.Errorf("call with a valid traceparent: instance in trace %s, request span's parent %s; want the client's %s/%s", traceID, req.Parent.SpanID, clientTrace, clientParent)
			}
		case 1:
			if traceID == clientTrace || (req.Parent.SpanID != "" && req.Parent.SpanID != "0000000000000000") {
				t.Errorf("call with a malformed traceparent continued trace %s (parent %s); want a new trace", traceID, req.Parent.SpanID)
			}
		}
	}
}

// TestGRPCSpans calls ModelInfer through the router with a traceparent in
// the metadata: the call's span continues the client's trace, and the
// instance (a grpc-go server) is called with the router's proxy span as
// its parent.
func TestGRPCSpans(t *testing.T) {
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) { testGRPCSpans(t, transport) })
	}
}

func testGRPCSpans(t *testing.T, transport string) {
	var out bytes.Buffer
	tel := consoleTelemetry(t, &out)
	c, _, inst, _ := grpcRouterOver(t, transport, func(cfg *router.Config) { cfg.Telemetry = tel })
	ctx := metadata.AppendToOutgoingContext(context.Background(), "traceparent", "00-"+clientTrace+"-"+clientParent+"-01")
	req := &pb.ModelInferRequest{ModelName: "m", Id: "r1", RawInputContents: [][]byte{[]byte("x")},
		Inputs: []*pb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1}}}}
	if _, err := c.ModelInfer(ctx, req); err != nil {
		t.Fatal(err)
	}
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := testbin.DecodeSpans(t, out.Bytes())
	tp := inst.last().Get("traceparent")
	if len(tp) != 1 {
		t.Fatalf("the instance got traceparent %v, want one", tp)
	}
	traceID, parentID := traceparentOf(t, tp[0])
	proxy := spanByID(t, spans, parentID)
	if proxy.Name != "proxy" || traceID != clientTrace || proxy.Attr("rpc.grpc.status_code") != float64(0) {
		t.Errorf("the instance's parent: %q in trace %s, grpc status %v; want the proxy span in the client's trace, status 0", proxy.Name, traceID, proxy.Attr("rpc.grpc.status_code"))
	}
	call := spanByID(t, spans, proxy.Parent.SpanID)
	for key, want := range map[string]any{"pilotlight.function": "m", "pilotlight.revision": "m-00002", "rpc.system": "grpc", "rpc.grpc.status_code": float64(0)} {
		if got := call.Attr(key); got != want {
			t.Errorf("call span %q: %s = %v, want %v", call.Name, key, got, want)
		}
	}
	if call.Name != "router inference.GRPCInferenceService/ModelInfer" || call.Parent.SpanID != clientParent {
		t.Errorf("call span %q with parent %s; want the ModelInfer call under the client's %s", call.Name, call.Parent.SpanID, clientParent)
	}
	var wait bool
	for _, s := range spans {
		if s.Name == "activator wait" && s.Parent.SpanID == call.SpanContext.SpanID {
			wait = s.Attr("pilotlight.cold_start") == true // instanceBackend's first acquire of a revision is cold
		}
	}
	if !wait {
		t.Errorf("no cold activator wait under the call span; spans: %v", names(spans))
	}
}

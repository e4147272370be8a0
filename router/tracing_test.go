package router_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/router"
	"github.com/pilotlight/pilotlight/router/engine"
	"github.com/pilotlight/pilotlight/telemetry"
)

// exportedSpan is a span as the console exporter writes it.
type exportedSpan struct {
	Name        string
	SpanContext struct{ TraceID, SpanID string }
	Parent      struct{ TraceID, SpanID string }
	Attributes  []struct {
		Key   string
		Value struct{ Value any }
	}
	Links []struct {
		SpanContext struct{ TraceID, SpanID string }
	}
	Events []struct{ Name string }
}

func (s exportedSpan) attr(key string) any {
	for _, a := range s.Attributes {
		if a.Key == key {
			return a.Value.Value
		}
	}
	return nil
}

func decodeSpans(t *testing.T, raw []byte) []exportedSpan {
	t.Helper()
	var out []exportedSpan
	dec := json.NewDecoder(bytes.NewReader(raw))
	for {
		var s exportedSpan
		if err := dec.Decode(&s); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("decoding the console exporter's output: %v", err)
		}
		out = append(out, s)
	}
}

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
	eng, err := engine.New(engine.Config{Functions: []*functions.Manifest{fn}, PoolSize: 1, Binary: testbin.Pilotlight(t), Registerer: reg, Logger: quietLogger(), TickInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w, err := flags.NewWatcher(flags.WatcherConfig{Path: flagsPath, Registerer: reg, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	picker, err := router.NewFlagPicker(w, flagsPath, reg)
	if err != nil {
		t.Fatal(err)
	}
	b := router.LocalBackend{Engine: eng}
	rt, err := router.New(router.Config{Functions: []*functions.Manifest{fn}, Backend: b, Admin: b, Picker: picker, Registry: reg, Logger: quietLogger(), Telemetry: tel})
	if err != nil {
		t.Fatal(err)
	}
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
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("traceparent %q: status %d", traceparent, resp.StatusCode)
		}
		return resp
	}
	// A warm-pool process is specialised for the cold start (source pool) once one is idle.
	for deadline := time.Now().Add(time.Minute); len(eng.PoolStatus()) == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no warm-pool process became idle within a minute")
		}
	}
	first := send("00-" + clientTrace + "-" + clientParent + "-01") // scale from zero: a cold start
	if first.Header.Get("X-Pilotlight-Cold-Start") == "" {
		t.Fatal("the first request did not wait for a cold start; the test needs one")
	}
	send("00-not-a-trace-at-all")
	send("")

	// The latency histogram links to the trace (OpenMetrics exposition).
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

	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := decodeSpans(t, out.Bytes())
	byName := map[string][]exportedSpan{}
	for _, s := range spans {
		byName[s.Name] = append(byName[s.Name], s)
	}
	requests := byName["router POST /v2/models/:model/infer"]
	if len(requests) != 3 {
		t.Fatalf("%d request spans, want 3; spans: %v", len(requests), names(spans))
	}
	var continued *exportedSpan
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
		if got := continued.attr(key); got != want {
			t.Errorf("request span %s = %v, want %v", key, got, want)
		}
	}
	for _, s := range requests {
		if s.SpanContext.TraceID != clientTrace && (s.Parent.SpanID != "0000000000000000" && s.Parent.SpanID != "") {
			t.Errorf("a request without a valid traceparent has parent %s; want a new trace", s.Parent.SpanID)
		}
	}

	child := func(name string) exportedSpan {
		t.Helper()
		for _, s := range byName[name] {
			if s.Parent.SpanID == continued.SpanContext.SpanID {
				return s
			}
		}
		t.Fatalf("no %q span under the client's request span; spans: %v", name, names(spans))
		return exportedSpan{}
	}
	wait := child("activator wait")
	if wait.attr("pilotlight.cold_start") != true || wait.attr("pilotlight.cold_start.source") != "pool" {
		t.Errorf("activator wait: cold_start %v source %v; want true, pool", wait.attr("pilotlight.cold_start"), wait.attr("pilotlight.cold_start.source"))
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
		if s.attr("pilotlight.cold_start") == false {
			warm++
		}
	}
	if warm != 2 {
		t.Errorf("%d warm activator waits, want 2", warm)
	}
	proxy := child("proxy")
	if proxy.attr("http.response.status_code") != float64(200) {
		t.Errorf("proxy span status %v", proxy.attr("http.response.status_code"))
	}
}

func names(spans []exportedSpan) []string {
	out := make([]string, len(spans))
	for i, s := range spans {
		out[i] = s.Name
	}
	return out
}

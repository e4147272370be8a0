package server_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/telemetry"
	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/runtime/server"
)

// TestInstanceSpans serves a real model with tracing on (console exporter)
// and checks the instance's spans continue the caller's traceparent.
func TestInstanceSpans(t *testing.T) {
	requireORT(t)
	m, err := functions.LoadDir(filepath.Join(repoRoot(t), "functions", "example-tensor"))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	reg := prometheus.NewRegistry()
	tel, err := telemetry.Setup(telemetry.Config{Exporter: telemetry.ExporterConsole, Console: &out, ServiceName: "instance-test", QueueSpans: 256}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := server.New(server.Config{Registry: reg, Telemetry: tel})
	if err := s.Load(context.Background(), m, m.Revisions[0].Name); err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	const trace, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	for _, tp := range []string{"00-" + trace + "-" + parent + "-01", "00-garbage"} {
		req, _ := http.NewRequest(http.MethodPost, ts.URL+"/v2/models/example-tensor/infer",
			strings.NewReader(`{"inputs":[{"name":"input_vectors","shape":[2,10],"datatype":"FP32","data":`+vec(2, 1)+`}]}`))
		req.Header.Set("traceparent", tp)
		testbin.DoOK(t, nil, req)
	}
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := testbin.DecodeSpans(t, out.Bytes())
	var root *testbin.Span
	for i, sp := range spans {
		if sp.Name == "instance POST /v2/models/:model/infer" && sp.SpanContext.TraceID == trace {
			root = &spans[i]
		}
	}
	if root == nil || root.Parent.SpanID != parent {
		t.Fatalf("no instance span continuing the caller's trace among %d spans", len(spans))
	}
	if root.Attr("pilotlight.function") != "example-tensor" || root.Attr("pilotlight.request.rows") != float64(2) {
		t.Errorf("instance span function %v rows %v", root.Attr("pilotlight.function"), root.Attr("pilotlight.request.rows"))
	}
	children := map[string]testbin.Span{}
	for _, sp := range spans {
		if sp.Parent.SpanID == root.SpanContext.SpanID {
			children[sp.Name] = sp
		}
	}
	for _, name := range []string{"decode", "batch wait", "onnx run", "encode"} {
		if _, ok := children[name]; !ok {
			t.Errorf("no %q span under the instance span", name)
		}
	}
	if w := children["batch wait"]; w.Attr("pilotlight.batch.rows") == nil || w.Attr("pilotlight.request.rows") != float64(2) {
		t.Errorf("batch wait: batch rows %v, request rows %v", w.Attr("pilotlight.batch.rows"), w.Attr("pilotlight.request.rows"))
	}
	fresh := 0
	for _, sp := range spans {
		if sp.Name == "instance POST /v2/models/:model/infer" && sp.SpanContext.TraceID != trace && strings.Trim(sp.Parent.SpanID, "0") == "" {
			fresh++
		}
	}
	if fresh != 1 {
		t.Errorf("%d new traces for the malformed traceparent; want 1", fresh)
	}
}

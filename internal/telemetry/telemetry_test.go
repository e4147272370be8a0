package telemetry

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/pilotlight/pilotlight/internal/testbin"
)

func env(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

func TestFromEnv(t *testing.T) {
	tests := []struct {
		name      string
		env       map[string]string
		exporter  string
		protocol  string
		sampler   string
		service   string
		wantError string
	}{
		{name: "off by default", env: nil, exporter: ExporterNone, protocol: ProtocolHTTP, sampler: "parentbased_always_on", service: "pilotlight-router"},
		{name: "endpoint alone means otlp", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, exporter: ExporterOTLP, protocol: ProtocolHTTP, sampler: "parentbased_always_on", service: "pilotlight-router"},
		{name: "console, 1% of new traces", env: map[string]string{"OTEL_TRACES_EXPORTER": "Console", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01", "OTEL_SERVICE_NAME": "edge"},
			exporter: ExporterConsole, protocol: ProtocolHTTP, sampler: "parentbased_traceidratio", service: "edge"},
		{name: "grpc", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, exporter: ExporterOTLP, protocol: ProtocolGRPC, sampler: "parentbased_always_on", service: "pilotlight-router"},
		{name: "traces protocol wins", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, exporter: ExporterOTLP, protocol: ProtocolHTTP, sampler: "parentbased_always_on", service: "pilotlight-router"},
		{name: "sdk disabled", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, exporter: ExporterNone, protocol: ProtocolHTTP, sampler: "parentbased_always_on", service: "pilotlight-router"},
		{name: "unknown exporter", env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, wantError: "use otlp, console or none"},
		{name: "http/json", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, wantError: "http/json is not supported"},
		{name: "unknown sampler", env: map[string]string{"OTEL_TRACES_SAMPLER": "sometimes"}, wantError: "OTEL_TRACES_SAMPLER"},
		{name: "ratio above one", env: map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, wantError: "between 0 and 1"},
		{name: "bad queue size", env: map[string]string{"OTEL_BSP_MAX_QUEUE_SIZE": "-1"}, wantError: "OTEL_BSP_MAX_QUEUE_SIZE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := FromEnv(env(tt.env), "pilotlight-router")
			if testbin.ExpectError(t, err, tt.wantError) {
				return
			}
			if cfg.Exporter != tt.exporter || cfg.Protocol != tt.protocol || cfg.SamplerName != tt.sampler || cfg.ServiceName != tt.service {
				t.Errorf("got exporter %q protocol %q sampler %q service %q", cfg.Exporter, cfg.Protocol, cfg.SamplerName, cfg.ServiceName)
			}
		})
	}
}

func TestSamplerRatio(t *testing.T) {
	cfg, err := FromEnv(env(map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}), "x")
	if err != nil {
		t.Fatal(err)
	}
	if d := cfg.Sampler.Description(); !strings.Contains(d, "0.01") {
		t.Errorf("sampler %q does not sample 1%%", d)
	}
}

func TestOffIsNil(t *testing.T) {
	reg := prometheus.NewRegistry()
	tel, err := Setup(Config{Exporter: ExporterNone}, reg, nil)
	if err != nil || tel != nil || tel.Enabled() {
		t.Fatalf("Setup(none) = %v, %v; want nil (off)", tel, err)
	}
	// Off still answers every call without a span.
	ctx := tel.Extract(context.Background(), propagation.HeaderCarrier{"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}})
	if trace.SpanContextFromContext(ctx).IsValid() {
		t.Error("a disabled Telemetry continued a trace")
	}
	if n := testutil.CollectAndCount(reg, "pilotlight_trace_spans_dropped_total"); n != 2 {
		t.Errorf("%d dropped series registered while off; want both reasons at zero", n)
	}
}

// TestConsoleExportsParentedSpans runs the console exporter for real: the
// client's traceparent is continued, and a malformed one starts a new trace.
func TestConsoleExportsParentedSpans(t *testing.T) {
	var out bytes.Buffer
	tel, err := Setup(Config{Exporter: ExporterConsole, Console: &out, ServiceName: "test", QueueSpans: 16}, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for _, tp := range []string{parent, "00-zz-not-a-trace-01", "garbage"} {
		ctx := tel.Extract(context.Background(), propagation.HeaderCarrier{"Traceparent": {tp}})
		_, span := tel.Tracer("test").Start(ctx, "span-"+tp[:5])
		if !span.SpanContext().IsValid() || !span.IsRecording() {
			t.Fatalf("traceparent %q: no recording span", tp)
		}
		got := span.SpanContext().TraceID().String()
		if tp == parent && got != "4bf92f3577b34da6a3ce929d0e0e4736" {
			t.Errorf("valid traceparent not continued: trace %s", got)
		}
		if tp != parent && got == "4bf92f3577b34da6a3ce929d0e0e4736" {
			t.Errorf("malformed traceparent %q continued a trace", tp)
		}
		h := propagation.HeaderCarrier{}
		tel.Inject(trace.ContextWithSpan(ctx, span), h)
		if want := "00-" + got + "-" + span.SpanContext().SpanID().String() + "-01"; h.Get("traceparent") != want {
			t.Errorf("injected traceparent %q, want %q", h.Get("traceparent"), want)
		}
		span.End()
	}
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"Name":"span-00-4b"`, `"Name":"span-garba"`, "4bf92f3577b34da6a3ce929d0e0e4736", `"service.name"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("console output lacks %s:\n%.600s", want, out.String())
		}
	}
}

// TestHungCollectorDropsNotBlocks points the real OTLP/HTTP exporter at a
// collector that accepts and never answers: ending spans must never block,
// and what cannot be queued is counted.
func TestHungCollectorDropsNotBlocks(t *testing.T) {
	hold := make(chan struct{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hold:
		case <-r.Context().Done():
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+ln.Addr().String())
	t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "300000")
	reg := prometheus.NewRegistry()
	const queue, spans = 64, 5000
	tel, err := Setup(Config{Exporter: ExporterOTLP, Protocol: ProtocolHTTP, ServiceName: "test", QueueSpans: queue}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := tel.Tracer("test")
	for i := 0; i < spans; i++ {
		_, s := tr.Start(context.Background(), "request")
		s.End() // would deadlock this test if OnEnd waited for the collector
	}
	dropped := testutil.ToFloat64(tel.queue.m.dropped.WithLabelValues(reasonQueueFull))
	// At most the queue plus one batch in the exporter's hands got through.
	if dropped < spans-queue-exportBatchSpans {
		t.Errorf("%v spans counted dropped; want at least %d of %d with a hung collector", dropped, spans-queue-exportBatchSpans, spans)
	}
	close(hold)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = tel.Shutdown(ctx) // nothing to wait for: the test is over
}

func TestObserveAttachesTraceID(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x_seconds", Buckets: []float64{1}})
	reg.MustRegister(h)
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	sampled := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	unsampled := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid}))
	Observe(unsampled, h, 0.5)
	Observe(context.Background(), h, 0.5)
	mfs, _ := reg.Gather()
	if ex := mfs[0].Metric[0].Histogram.Bucket[0].Exemplar; ex != nil {
		t.Fatalf("exemplar %v from an unsampled span", ex)
	}
	Observe(sampled, h, 0.5)
	mfs, _ = reg.Gather()
	ex := mfs[0].Metric[0].Histogram.Bucket[0].Exemplar
	if ex == nil || ex.Label[0].GetName() != ExemplarLabel || ex.Label[0].GetValue() != tid.String() {
		t.Fatalf("exemplar %v; want trace_id=%s", ex, tid)
	}
}

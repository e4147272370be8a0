// Package telemetry sets up OpenTelemetry tracing for the router and for
// every runtime instance from the standard OTEL_* variables, so one trace
// follows a request from the front door through the activator and the proxy
// into the instance's decode, batch wait, ONNX Run and encode. It is off
// unless asked for: a disabled Telemetry hands out no spans, and the request
// path pays one nil check. Spans leave through a bounded queue: a slow or
// unreachable collector costs dropped spans (counted in
// pilotlight_trace_spans_dropped_total), never a slower request.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// Exporters OTEL_TRACES_EXPORTER may name.
const (
	ExporterOTLP    = "otlp"
	ExporterConsole = "console"
	ExporterNone    = "none"
)

// OTLP protocols OTEL_EXPORTER_OTLP_PROTOCOL may name.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http/protobuf"
)

// Span attribute keys the router's and the instance's spans both carry, so
// one query finds a function's or a revision's spans on either side.
const (
	AttrFunction = attribute.Key("pilotlight.function")
	AttrRevision = attribute.Key("pilotlight.revision")
)

// DefaultQueueSpans bounds the spans waiting for export
// (OTEL_BSP_MAX_QUEUE_SIZE's default in the specification).
const DefaultQueueSpans = 2048

// Config is what the OTEL_* variables asked for.
type Config struct {
	// Exporter is otlp, console or none (off).
	Exporter string
	// Protocol is the OTLP protocol: grpc or http/protobuf.
	Protocol string
	// Sampler decides which new traces are recorded.
	Sampler sdktrace.Sampler
	// SamplerName is the OTEL_TRACES_SAMPLER value the sampler came from, for logs.
	SamplerName string
	// ServiceName is service.name (OTEL_SERVICE_NAME, else the component's default).
	ServiceName string
	// QueueSpans bounds the spans waiting for export (OTEL_BSP_MAX_QUEUE_SIZE).
	QueueSpans int
	// Console is where the console exporter writes (default stderr).
	Console io.Writer
}

// FromEnv reads the standard variables through getenv (os.Getenv in
// production). Tracing is off unless OTEL_TRACES_EXPORTER names an exporter
// or an OTLP endpoint is set: the specification's default exporter (otlp)
// would make every process try to reach a collector nobody started.
// OTEL_SDK_DISABLED=true turns it off whatever else is set.
func FromEnv(getenv func(string) string, defaultService string) (Config, error) {
	cfg := Config{ServiceName: defaultService, QueueSpans: DefaultQueueSpans, Protocol: ProtocolHTTP}
	if v := strings.TrimSpace(getenv("OTEL_SERVICE_NAME")); v != "" {
		cfg.ServiceName = v
	}
	exp := strings.ToLower(strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")))
	if exp == "" && (getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "") {
		exp = ExporterOTLP
	}
	if exp == "" || strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		exp = ExporterNone
	}
	switch exp {
	case ExporterOTLP, ExporterConsole, ExporterNone:
		cfg.Exporter = exp
	default:
		return cfg, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: use otlp, console or none", exp)
	}
	proto := strings.ToLower(strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")))
	if proto == "" {
		proto = strings.ToLower(strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_PROTOCOL")))
	}
	switch proto {
	case "":
	case ProtocolGRPC, ProtocolHTTP:
		cfg.Protocol = proto
	default:
		return cfg, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%q: use grpc or http/protobuf (http/json is not supported)", proto)
	}
	var err error
	if cfg.Sampler, cfg.SamplerName, err = samplerFromEnv(getenv); err != nil {
		return cfg, err
	}
	if v := strings.TrimSpace(getenv("OTEL_BSP_MAX_QUEUE_SIZE")); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return cfg, fmt.Errorf("OTEL_BSP_MAX_QUEUE_SIZE=%q: want a positive number of spans", v)
		}
		cfg.QueueSpans = n
	}
	return cfg, nil
}

// samplerFromEnv follows the specification's OTEL_TRACES_SAMPLER values;
// the default, parentbased_always_on, keeps a caller's sampling decision.
func samplerFromEnv(getenv func(string) string) (sdktrace.Sampler, string, error) {
	name := strings.ToLower(strings.TrimSpace(getenv("OTEL_TRACES_SAMPLER")))
	if name == "" {
		name = "parentbased_always_on"
	}
	ratio := 1.0
	if arg := strings.TrimSpace(getenv("OTEL_TRACES_SAMPLER_ARG")); arg != "" && strings.HasSuffix(name, "traceidratio") {
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || r < 0 || r > 1 {
			return nil, name, fmt.Errorf("OTEL_TRACES_SAMPLER_ARG=%q: want a ratio between 0 and 1 for %s", arg, name)
		}
		ratio = r
	}
	switch name {
	case "always_on":
		return sdktrace.AlwaysSample(), name, nil
	case "always_off":
		return sdktrace.NeverSample(), name, nil
	case "traceidratio":
		return sdktrace.TraceIDRatioBased(ratio), name, nil
	case "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), name, nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), name, nil
	case "parentbased_traceidratio":
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio)), name, nil
	}
	return nil, name, fmt.Errorf("OTEL_TRACES_SAMPLER=%q: use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio", name)
}

// Telemetry is one process's tracing. A nil *Telemetry is valid and off.
type Telemetry struct {
	provider   *sdktrace.TracerProvider
	propagator propagation.TextMapPropagator
	queue      *queueProcessor
}

// Setup builds tracing from cfg and registers the export counters with reg.
// With the exporter none it returns nil (off) and registers the counters
// anyway, so dashboards see zeros rather than nothing.
func Setup(cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Telemetry, error) {
	if log == nil {
		log = slog.Default()
	}
	m := newQueueMetrics(reg)
	if cfg.Exporter == ExporterNone || cfg.Exporter == "" {
		return nil, nil
	}
	exp, err := newExporter(cfg)
	if err != nil {
		return nil, err
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(semconv.ServiceName(cfg.ServiceName)))
	if err != nil {
		return nil, fmt.Errorf("build the trace resource: %w", err)
	}
	// OTEL_RESOURCE_ATTRIBUTES (and OTEL_SERVICE_NAME, already in cfg) last, so a user's attributes win.
	if envRes, err := resource.New(context.Background(), resource.WithFromEnv()); err == nil {
		if merged, err := resource.Merge(res, envRes); err == nil {
			res = merged
		}
	}
	if cfg.Sampler == nil {
		cfg.Sampler = sdktrace.ParentBased(sdktrace.AlwaysSample())
	}
	q := newQueueProcessor(exp, cfg.QueueSpans, m, log)
	t := &Telemetry{
		provider:   sdktrace.NewTracerProvider(sdktrace.WithSampler(cfg.Sampler), sdktrace.WithResource(res), sdktrace.WithSpanProcessor(q)),
		propagator: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		queue:      q,
	}
	log.Info("tracing on", "exporter", cfg.Exporter, "protocol", cfg.Protocol, "sampler", cfg.SamplerName,
		"service", cfg.ServiceName, "queue_spans", cfg.QueueSpans)
	return t, nil
}

// SetupFromEnv is Setup(FromEnv(os.Getenv, defaultService)).
func SetupFromEnv(defaultService string, reg prometheus.Registerer, log *slog.Logger) (*Telemetry, error) {
	cfg, err := FromEnv(os.Getenv, defaultService)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	t, err := Setup(cfg, reg, log)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	return t, nil
}

func newExporter(cfg Config) (sdktrace.SpanExporter, error) {
	switch cfg.Exporter {
	case ExporterConsole:
		w := cfg.Console
		if w == nil {
			w = os.Stderr
		}
		return stdouttrace.New(stdouttrace.WithWriter(w))
	case ExporterOTLP:
		// The exporters read OTEL_EXPORTER_OTLP_* (endpoint, headers,
		// certificates, timeout) themselves, as the specification says.
		ctx := context.Background()
		if cfg.Protocol == ProtocolGRPC {
			e, err := otlptracegrpc.New(ctx)
			if err != nil {
				return nil, fmt.Errorf("OTLP/gRPC exporter: %w (check OTEL_EXPORTER_OTLP_ENDPOINT)", err)
			}
			return e, nil
		}
		e, err := otlptracehttp.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("OTLP/HTTP exporter: %w (check OTEL_EXPORTER_OTLP_ENDPOINT)", err)
		}
		return e, nil
	}
	return nil, fmt.Errorf("no exporter %q", cfg.Exporter)
}

// Enabled reports whether spans are recorded at all.
func (t *Telemetry) Enabled() bool { return t != nil }

// Tracer is the named tracer (nil when off: callers check Enabled first).
func (t *Telemetry) Tracer(name string) trace.Tracer {
	if t == nil {
		return nil
	}
	return t.provider.Tracer(name)
}

// Extract continues the caller's trace from carrier (W3C traceparent and
// tracestate, and baggage). A missing or malformed traceparent yields ctx
// unchanged, so the next span starts a new trace: never an error.
func (t *Telemetry) Extract(ctx context.Context, carrier propagation.TextMapCarrier) context.Context {
	if t == nil {
		return ctx
	}
	return t.propagator.Extract(ctx, carrier)
}

// Inject writes ctx's span as traceparent/tracestate into carrier, replacing
// whatever the client sent.
func (t *Telemetry) Inject(ctx context.Context, carrier propagation.TextMapCarrier) {
	if t == nil {
		return
	}
	t.propagator.Inject(ctx, carrier)
}

// Shutdown exports what is queued (bounded by ctx) and stops the exporter.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	if err := t.provider.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("flush traces: %w", err)
	}
	return nil
}

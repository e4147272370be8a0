package router

// The router's spans, kept apart from the hot path so a different front end
// (fasthttp's RequestCtx is a context.Context too) can call the same
// functions. Each start* takes a context and the values it needs and returns
// a span; each end* takes that span and what happened. With tracing off
// (rt.tr == nil) they return the no-op span and do nothing.
//
//	request span  (server; function, revision, feature_flag.*)
//	├── activator wait  (cold start or not, pool or exec) ──link──▶ cold start span
//	└── proxy  (client; traceparent injected toward the instance)
//	      └── instance spans (runtime/server: decode, batch wait, onnx run, encode)
//
// A cold start is its own trace: one span from the arrival of the request
// that triggered it to the instance being ready, with the eBPF timeline's
// kernel phases as events when --ebpf is on, linked from every request that
// waited for it.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/open-feature/go-sdk/openfeature"
	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	grpccodes "google.golang.org/grpc/codes"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/telemetry"
)

const tracerName = "github.com/pilotlight/pilotlight/router"

// Span attribute keys (feature_flag.* are OpenTelemetry's semantic conventions).
const (
	attrFunction        = telemetry.AttrFunction // shared with the instance's spans
	attrRevision        = telemetry.AttrRevision
	attrColdStart       = attribute.Key("pilotlight.cold_start")
	attrColdStartSource = attribute.Key("pilotlight.cold_start.source")
	attrColdStartWait   = attribute.Key("pilotlight.cold_start.wait_seconds")
	attrInstancePID     = attribute.Key("pilotlight.instance.pid")
	attrFlagKey         = attribute.Key("feature_flag.key")
	attrFlagVariant     = attribute.Key("feature_flag.result.variant")
	attrFlagReason      = attribute.Key("feature_flag.result.reason")
	attrFlagProvider    = attribute.Key("feature_flag.provider.name")
	attrGRPCStatus      = attribute.Key("rpc.grpc.status_code")
)

// Bounds on the cold-start spans kept for linking, and on how long a cold
// start span waits for its eBPF timeline (complete once the first response is written).
const (
	coldStartsKept        = 256
	timelineWait          = 2 * time.Second
	timelinePollInterval  = 50 * time.Millisecond
	revisionHeader        = "X-Pilotlight-Revision"
	flagEvaluationEvent   = "feature_flag.evaluation"
	coldStartSpanName     = "cold start"
	activatorWaitSpanName = "activator wait"
	proxySpanName         = "proxy"
)

// ColdStartInfo is one cold start as the backend saw it.
type ColdStartInfo struct {
	Source  string // pool or exec
	PID     int
	Trigger time.Time // arrival of the request that asked for the instance
	Ready   time.Time
}

// ColdStartSource is what a backend offers for cold-start spans (the local
// engine does; a Knative backend cannot see its cold starts).
type ColdStartSource interface {
	LastColdStart(function, revision string) (ColdStartInfo, bool)
}

// TimelineSource offers the eBPF cold-start timelines by "function/revision".
type TimelineSource interface {
	ColdStartTimelines() map[string]any
}

// tracing is the router's tracer; nil when tracing is off.
type tracing struct {
	tel       *telemetry.Telemetry
	tracer    trace.Tracer
	colds     ColdStartSource
	timelines TimelineSource
	mu        sync.Mutex
	coldSpans map[string]trace.SpanContext // cold start key → its span, for linking
}

// newTracing returns nil when cfg has no telemetry; otherwise it also hooks
// the flag evaluation so its result lands on the request's span.
func newTracing(cfg Config) *tracing {
	if !cfg.Telemetry.Enabled() {
		return nil
	}
	tr := &tracing{tel: cfg.Telemetry, tracer: cfg.Telemetry.Tracer(tracerName), coldSpans: map[string]trace.SpanContext{}}
	tr.colds, _ = cfg.Backend.(ColdStartSource)
	tr.timelines, _ = cfg.Backend.(TimelineSource)
	if fp, ok := cfg.Picker.(*FlagPicker); ok {
		fp.client.AddHooks(flagSpanHook{})
		fp.hooked.Store(true)
	}
	return tr
}

var noSpan = trace.SpanFromContext(context.Background())

// startRequest opens the request's span, continuing the client's W3C trace
// context from carrier when it is valid and starting a new trace when it is
// missing or malformed.
func (tr *tracing) startRequest(ctx context.Context, carrier propagation.TextMapCarrier, method, route, function string) (context.Context, trace.Span) {
	if tr == nil {
		return ctx, noSpan
	}
	ctx = tr.tel.Extract(ctx, carrier)
	return tr.tracer.Start(ctx, "router "+method+" "+route, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attrFunction.String(function), attribute.String("http.request.method", method), attribute.String("http.route", route)))
}

// endRequest closes the request's span with the status sent and the revision that served it.
func (tr *tracing) endRequest(span trace.Span, status int, revision string, err error) {
	if tr == nil || !span.IsRecording() {
		return
	}
	if revision != "" {
		span.SetAttributes(attrRevision.String(revision))
	}
	span.SetAttributes(attribute.Int("http.response.status_code", status))
	if err != nil {
		span.RecordError(err)
	}
	if status >= 500 {
		span.SetStatus(codes.Error, http.StatusText(status))
	}
	span.End()
}

// startRequestSpan opens the request span of a proxied request (tracing
// on only: the caller checks rt.tr), continuing the client's traceparent
// from its headers, and returns parent with the span in it. The span ends
// in exchange.finish, once the status is known (a streamed response's at
// its end).
func (rt *Router) startRequestSpan(ctx *fasthttp.RequestCtx, x *exchange, rq route, fn *functions.Manifest, parent context.Context) context.Context {
	function := string(rq.name)
	if fn != nil {
		function = fn.Name
	}
	x.traceCtx, x.span = rt.tr.startRequest(parent, fastCarrier{&ctx.Request.Header}, string(ctx.Method()), routeTemplate(rq, ctx.Path()), function)
	return x.traceCtx
}

// routeTemplate names a proxied request's route with its parameters as
// names, as http.route and the span name want (low cardinality).
func routeTemplate(rq route, path []byte) string {
	if rq.kind == kindFunction {
		if bytes.HasPrefix(path, pathFunctions) {
			return "/functions/:function"
		}
		return "/" // Host routing
	}
	t := "/v2/models/:model"
	if len(rq.version) > 0 {
		t += "/versions/:version"
	}
	switch {
	case bytes.HasSuffix(path, []byte("/infer")):
		t += "/infer"
	case bytes.HasSuffix(path, []byte("/ready")):
		t += "/ready"
	}
	return t
}

// startGRPC opens the request span of a gRPC call that names a model,
// continuing the client's traceparent metadata. The function is known only
// once the message is read: endGRPC records it.
func (tr *tracing) startGRPC(ctx context.Context, path string, md propagation.TextMapCarrier) (context.Context, trace.Span) {
	ctx = tr.tel.Extract(ctx, md)
	method := strings.TrimPrefix(path, "/")
	service, name, _ := strings.Cut(method, "/")
	return tr.tracer.Start(ctx, "router "+method, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("rpc.system", "grpc"), attribute.String("rpc.service", service), attribute.String("rpc.method", name)))
}

// endGRPC closes a gRPC call's span with its function, revision and status code.
func (tr *tracing) endGRPC(span trace.Span, function, revision string, code grpccodes.Code) {
	if !span.IsRecording() {
		return
	}
	if function != "" {
		span.SetAttributes(attrFunction.String(function))
	}
	if revision != "" {
		span.SetAttributes(attrRevision.String(revision))
	}
	span.SetAttributes(attrGRPCStatus.Int(int(code)))
	switch code { // server errors, as OpenTelemetry's RPC conventions count them
	case grpccodes.Unknown, grpccodes.DeadlineExceeded, grpccodes.Unimplemented, grpccodes.Internal, grpccodes.Unavailable, grpccodes.DataLoss:
		span.SetStatus(codes.Error, code.String())
	}
	span.End()
}

// startWait opens the activator-wait span around acquiring an instance.
func (tr *tracing) startWait(ctx context.Context, function, revision string) trace.Span {
	if tr == nil {
		return noSpan
	}
	parent := trace.SpanFromContext(ctx)
	parent.SetAttributes(attrRevision.String(revision)) // known now, even if the request fails later
	_, span := tr.tracer.Start(ctx, activatorWaitSpanName, trace.WithAttributes(attrFunction.String(function), attrRevision.String(revision)))
	return span
}

// endWait closes the activator-wait span: cold start or not, its source,
// and a link to the cold start's own span (made by the first request that
// waited for it).
func (tr *tracing) endWait(ctx context.Context, span trace.Span, function, revision string, t Target, err error) {
	if tr == nil || !span.IsRecording() {
		return
	}
	defer span.End()
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return
	}
	span.SetAttributes(attrColdStart.Bool(t.ColdStart > 0))
	if t.ColdStart <= 0 {
		return
	}
	span.SetAttributes(attrColdStartWait.Float64(t.ColdStart.Seconds()))
	if tr.colds == nil {
		return
	}
	info, ok := tr.colds.LastColdStart(function, revision)
	// The latest cold start is this request's only if it became ready while the request waited.
	if !ok || info.Ready.Before(time.Now().Add(-t.ColdStart)) {
		return
	}
	span.SetAttributes(attrColdStartSource.String(info.Source), attrInstancePID.Int(info.PID))
	cold := tr.coldStartSpan(span.SpanContext(), function, revision, info)
	if cold.IsValid() {
		link := trace.Link{SpanContext: cold, Attributes: []attribute.KeyValue{attribute.String("pilotlight.link", "waited for")}}
		span.AddLink(link)
		trace.SpanFromContext(ctx).AddLink(link)
	}
}

// coldStartSpan returns the span of one cold start, creating it when this
// is the first request to see it.
func (tr *tracing) coldStartSpan(waiter trace.SpanContext, function, revision string, info ColdStartInfo) trace.SpanContext {
	key := function + "/" + revision + "/" + strconv.Itoa(info.PID) + "/" + strconv.FormatInt(info.Trigger.UnixNano(), 10)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if sc, ok := tr.coldSpans[key]; ok {
		return sc
	}
	if len(tr.coldSpans) >= coldStartsKept {
		clear(tr.coldSpans) // old cold starts have no more waiters
	}
	_, span := tr.tracer.Start(context.Background(), coldStartSpanName, trace.WithNewRoot(), trace.WithTimestamp(info.Trigger),
		trace.WithLinks(trace.Link{SpanContext: waiter, Attributes: []attribute.KeyValue{attribute.String("pilotlight.link", "triggered by")}}),
		trace.WithAttributes(attrFunction.String(function), attrRevision.String(revision), attrColdStartSource.String(info.Source),
			attrInstancePID.Int(info.PID), attribute.Float64("pilotlight.cold_start.seconds", info.Ready.Sub(info.Trigger).Seconds())))
	span.AddEvent("ready", trace.WithTimestamp(info.Ready))
	tr.coldSpans[key] = span.SpanContext()
	if tr.timelines == nil || tr.timelines.ColdStartTimelines() == nil {
		span.End(trace.WithTimestamp(info.Ready))
	} else {
		// The kernel timeline completes with the instance's first response:
		// wait for it off the request path, then end the span.
		go tr.addTimeline(span, function+"/"+revision, info)
	}
	return span.SpanContext()
}

// timeline is the part of the eBPF timeline (bpf.Timeline's JSON) a span needs.
type timeline struct {
	PID    int `json:"pid"`
	Events []struct {
		Name string    `json:"name"`
		Time time.Time `json:"time"`
	} `json:"events"`
	Phases map[string]float64 `json:"phases_ms"`
}

// addTimeline adds the eBPF timeline of info's instance as span events,
// waiting up to timelineWait for the timeline to complete, and ends span.
func (tr *tracing) addTimeline(span trace.Span, key string, info ColdStartInfo) {
	defer span.End(trace.WithTimestamp(info.Ready))
	deadline := time.Now().Add(timelineWait)
	for {
		if raw, ok := tr.timelines.ColdStartTimelines()[key]; ok {
			var tl timeline
			if b, err := json.Marshal(raw); err == nil && json.Unmarshal(b, &tl) == nil && tl.PID == info.PID {
				for _, ev := range tl.Events {
					if ev.Name == "ready" {
						continue // already an event of its own
					}
					span.AddEvent(ev.Name, trace.WithTimestamp(ev.Time), trace.WithAttributes(attribute.String("pilotlight.source", eventSource(ev.Name))))
				}
				for name, ms := range tl.Phases {
					span.SetAttributes(attribute.Float64("pilotlight.ebpf.phase."+name+"_ms", ms))
				}
				return
			}
		}
		if time.Now().After(deadline) {
			span.SetAttributes(attribute.String("pilotlight.ebpf", "no timeline within "+timelineWait.String()))
			return
		}
		time.Sleep(timelinePollInterval)
	}
}

// eventSource says whether a timeline point was seen by the kernel probes or marked by the engine.
func eventSource(name string) string {
	switch name {
	case "specialise_start", "request_arrival", "ready":
		return "engine"
	}
	return "kernel"
}

// startProxy opens the proxy span and writes its trace context into the
// outgoing headers (carrier), replacing the client's traceparent, so the
// instance's spans are its children.
func (tr *tracing) startProxy(ctx context.Context, carrier propagation.TextMapCarrier, baseURL string) trace.Span {
	if tr == nil {
		return noSpan
	}
	ctx, span := tr.tracer.Start(ctx, proxySpanName, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("server.address", strings.TrimPrefix(baseURL, "http://"))))
	tr.tel.Inject(ctx, carrier)
	return span
}

// endProxy closes the proxy span with the instance's status (0 when it could not be reached).
func (tr *tracing) endProxy(span trace.Span, status int, err error) {
	if tr == nil || !span.IsRecording() {
		return
	}
	if status > 0 {
		span.SetAttributes(attribute.Int("http.response.status_code", status))
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// flagSpanHook puts each flag evaluation on the request's span as
// OpenTelemetry's feature-flag attributes and event.
type flagSpanHook struct{ openfeature.UnimplementedHook }

// After implements openfeature.Hook.
func (flagSpanHook) After(ctx context.Context, hc openfeature.HookContext, d openfeature.InterfaceEvaluationDetails, _ openfeature.HookHints) error {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return nil
	}
	attrs := []attribute.KeyValue{attrFlagKey.String(hc.FlagKey()), attrFlagProvider.String(hc.ProviderMetadata().Name),
		attrFlagReason.String(strings.ToLower(string(d.Reason)))}
	if d.Variant != "" {
		attrs = append(attrs, attrFlagVariant.String(d.Variant))
	}
	span.SetAttributes(attrs...)
	span.AddEvent(flagEvaluationEvent, trace.WithAttributes(attrs...))
	return nil
}

// Error implements openfeature.Hook.
func (flagSpanHook) Error(ctx context.Context, hc openfeature.HookContext, err error, _ openfeature.HookHints) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	attrs := []attribute.KeyValue{attrFlagKey.String(hc.FlagKey()), attrFlagProvider.String(hc.ProviderMetadata().Name),
		attrFlagReason.String("error"), attribute.String("error.type", fmt.Sprint(err))}
	span.SetAttributes(attrs...)
	span.AddEvent(flagEvaluationEvent, trace.WithAttributes(attrs...))
}

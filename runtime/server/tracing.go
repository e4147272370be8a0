package server

import (
	"context"
	"net/http"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/pilotlight/pilotlight/internal/telemetry"
)

// tracerName is the instrumentation scope of the instance's spans.
const tracerName = "github.com/pilotlight/pilotlight/runtime/server"

// Span attribute keys shared with the router's spans (telemetry owns them).
const (
	attrFunction = telemetry.AttrFunction
	attrRevision = telemetry.AttrRevision
)

// traceRequests continues the caller's trace (the router's proxy span, via
// traceparent) with the instance's server span. Only POSTs are traced:
// health and readiness polls would bury the requests. Without telemetry it
// is not in the chain at all.
func (s *Server) traceRequests(next echo.HandlerFunc) echo.HandlerFunc {
	tel := s.cfg.Telemetry
	if !tel.Enabled() {
		return next
	}
	tracer := tel.Tracer(tracerName)
	return func(c echo.Context) error {
		r := c.Request()
		if r.Method != http.MethodPost {
			return next(c)
		}
		ctx := tel.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		attrs := []attribute.KeyValue{attribute.String("http.request.method", r.Method), attribute.String("http.route", c.Path())}
		if in := s.current(r.Context()); in != nil {
			attrs = append(attrs, attrFunction.String(in.Manifest.Name), attrRevision.String(in.Revision.Name))
		}
		ctx, span := tracer.Start(ctx, "instance "+r.Method+" "+c.Path(), trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
		defer span.End()
		c.SetRequest(r.WithContext(ctx))
		if err := next(c); err != nil {
			c.Error(err) // the error handler sets the status this span reports
			span.RecordError(err)
		}
		code := c.Response().Status
		span.SetAttributes(attribute.Int("http.response.status_code", code))
		if code >= 500 {
			span.SetStatus(codes.Error, http.StatusText(code))
		}
		return nil
	}
}

// phase starts a child span of the request's span for one step (decode,
// encode) and returns its end. Untraced requests get a no-op end and no span.
func phase(ctx context.Context, name string) func(error) {
	parent := trace.SpanFromContext(ctx)
	if !parent.IsRecording() {
		return noEnd
	}
	_, span := parent.TracerProvider().Tracer(tracerName).Start(ctx, name)
	return func(err error) {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
}

func noEnd(error) {}

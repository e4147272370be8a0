package router

import (
	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/propagation"
)

// fastCarrier is OpenTelemetry's TextMapCarrier over a fasthttp request's
// headers: the client's traceparent/tracestate are read from the incoming
// request, and the proxy span's are written into the upstream request.
type fastCarrier struct{ h *fasthttp.RequestHeader }

var _ propagation.TextMapCarrier = fastCarrier{}

// Get implements propagation.TextMapCarrier.
func (c fastCarrier) Get(key string) string { return string(c.h.Peek(key)) }

// Set implements propagation.TextMapCarrier, replacing any value of key.
func (c fastCarrier) Set(key, value string) { c.h.Set(key, value) }

// Keys implements propagation.TextMapCarrier.
func (c fastCarrier) Keys() []string {
	keys := make([]string, 0, c.h.Len())
	for k := range c.h.All() {
		keys = append(keys, string(k))
	}
	return keys
}

package telemetry

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
)

// ExemplarLabel names the trace id on a histogram's exemplar, as Grafana's
// "exemplars" data links and Prometheus's OpenMetrics exposition expect.
const ExemplarLabel = "trace_id"

// Observe records v in o, with the trace id of ctx's sampled span as the
// exemplar so a latency bucket links to a trace. Without a sampled span it
// is a plain Observe.
func Observe(ctx context.Context, o prometheus.Observer, v float64) {
	if sc := trace.SpanContextFromContext(ctx); sc.IsSampled() {
		if eo, ok := o.(prometheus.ExemplarObserver); ok {
			eo.ObserveWithExemplar(v, prometheus.Labels{ExemplarLabel: sc.TraceID().String()})
			return
		}
	}
	o.Observe(v)
}

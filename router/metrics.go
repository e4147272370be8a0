package router

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/internal/telemetry"
)

type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	retries  *prometheus.CounterVec

	// Children looked up once per (function, revision, code): hashing
	// three label values on every request costs more than counting.
	children sync.Map // seriesKey → *series
}

type seriesKey struct {
	function, revision string
	code               int
}

type series struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_requests_total",
			Help: "Requests the router answered, by function, revision and status code."}, []string{"function", "revision", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pilotlight_request_duration_seconds",
			Help:    "Time from the router receiving a request to the end of its response, cold starts included.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"function", "revision"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_router_retries_total",
			Help: "Requests retried on another instance because the first could not be reached."}, []string{"function", "revision"}),
	}
	reg.MustRegister(m.requests, m.duration, m.retries)
	return m
}

// observe records one answered request of a known function: the one place
// pilotlight_requests_total and the duration histogram are written.
// revision is "" for requests refused before a revision was picked. ctx
// is the request span's context (nil with tracing off): a sampled trace
// becomes the latency bucket's exemplar.
func (m *metrics) observe(ctx context.Context, function, revision string, code int, d time.Duration) {
	k := seriesKey{function, revision, code}
	v, ok := m.children.Load(k)
	if !ok {
		v, _ = m.children.LoadOrStore(k, &series{
			requests: m.requests.WithLabelValues(function, revision, strconv.Itoa(code)),
			duration: m.duration.WithLabelValues(function, revision),
		})
	}
	s := v.(*series)
	s.requests.Inc()
	if ctx != nil {
		telemetry.Observe(ctx, s.duration, d.Seconds())
		return
	}
	s.duration.Observe(d.Seconds())
}

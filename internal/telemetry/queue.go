package telemetry

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Export batching, named as the specification's OTEL_BSP_* settings.
const (
	exportBatchSpans    = 512
	exportInterval      = 2 * time.Second
	exportTimeout       = 10 * time.Second
	dropLogInterval     = time.Minute
	reasonQueueFull     = "queue_full"
	reasonExportFailure = "export_failed"
)

type queueMetrics struct {
	dropped  *prometheus.CounterVec
	exported prometheus.Counter
}

func newQueueMetrics(reg prometheus.Registerer) *queueMetrics {
	m := &queueMetrics{
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_trace_spans_dropped_total",
			Help: "Finished spans never exported: the export queue was full (a slow or unreachable collector), or the export failed."}, []string{"reason"}),
		exported: prometheus.NewCounter(prometheus.CounterOpts{Name: "pilotlight_trace_spans_exported_total",
			Help: "Spans the trace exporter accepted."}),
	}
	m.dropped.WithLabelValues(reasonQueueFull)
	m.dropped.WithLabelValues(reasonExportFailure)
	if reg != nil {
		reg.MustRegister(m.dropped, m.exported)
	}
	return m
}

// queueProcessor is a batch span processor whose queue never blocks the
// span's owner: OnEnd drops (and counts) a span when the queue is full. The
// SDK's own batch processor drops too, but does not say how many.
type queueProcessor struct {
	exp      sdktrace.SpanExporter
	m        *queueMetrics
	log      *slog.Logger
	queue    chan sdktrace.ReadOnlySpan
	flushReq chan chan struct{}
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once
	lastLog  atomic.Int64 // unix nanos of the last "dropping spans" warning
}

func newQueueProcessor(exp sdktrace.SpanExporter, size int, m *queueMetrics, log *slog.Logger) *queueProcessor {
	q := &queueProcessor{exp: exp, m: m, log: log, queue: make(chan sdktrace.ReadOnlySpan, size),
		flushReq: make(chan chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	go q.loop()
	return q
}

// OnStart implements sdktrace.SpanProcessor.
func (q *queueProcessor) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd implements sdktrace.SpanProcessor: queue the span, or drop it.
func (q *queueProcessor) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	select {
	case q.queue <- s:
	default:
		q.dropped(reasonQueueFull, 1, nil)
	}
}

func (q *queueProcessor) dropped(reason string, n int, err error) {
	q.m.dropped.WithLabelValues(reason).Add(float64(n))
	now := time.Now().UnixNano()
	last := q.lastLog.Load()
	if now-last > int64(dropLogInterval) && q.lastLog.CompareAndSwap(last, now) {
		q.log.Warn("dropping trace spans; is the collector at OTEL_EXPORTER_OTLP_ENDPOINT up? (count in pilotlight_trace_spans_dropped_total)",
			"reason", reason, "spans", n, "err", err)
	}
}

func (q *queueProcessor) loop() {
	defer close(q.done)
	ticker := time.NewTicker(exportInterval)
	defer ticker.Stop()
	batch := make([]sdktrace.ReadOnlySpan, 0, exportBatchSpans)
	export := func() {
		if len(batch) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), exportTimeout)
		err := q.exp.ExportSpans(ctx, batch)
		cancel()
		if err != nil {
			q.dropped(reasonExportFailure, len(batch), err)
		} else {
			q.m.exported.Add(float64(len(batch)))
		}
		clear(batch)
		batch = batch[:0]
	}
	add := func(s sdktrace.ReadOnlySpan) {
		batch = append(batch, s)
		if len(batch) == exportBatchSpans {
			export()
		}
	}
	drain := func() {
		for {
			select {
			case s := <-q.queue:
				add(s)
			default:
				export()
				return
			}
		}
	}
	for {
		select {
		case s := <-q.queue:
			add(s)
		case <-ticker.C:
			export()
		case ack := <-q.flushReq:
			drain()
			close(ack)
		case <-q.stop:
			drain()
			return
		}
	}
}

// ForceFlush implements sdktrace.SpanProcessor: export what is queued now.
func (q *queueProcessor) ForceFlush(ctx context.Context) error {
	ack := make(chan struct{})
	select {
	case q.flushReq <- ack:
	case <-q.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ack:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown implements sdktrace.SpanProcessor: export what is queued
// (bounded by ctx) and stop the exporter.
func (q *queueProcessor) Shutdown(ctx context.Context) error {
	q.once.Do(func() { close(q.stop) })
	select {
	case <-q.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return q.exp.Shutdown(ctx)
}

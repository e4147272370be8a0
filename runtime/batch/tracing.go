package batch

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

const tracerName = "github.com/pilotlight/pilotlight/runtime/batch"

// Attributes of the batch spans.
const (
	attrBatchRows     = attribute.Key("pilotlight.batch.rows")
	attrBatchRequests = attribute.Key("pilotlight.batch.requests")
	attrRequestRows   = attribute.Key("pilotlight.request.rows")
)

// traced reports whether the request's span is recorded; untraced requests
// cost the batcher this check and nothing else.
func traced(ctx context.Context) bool { return trace.SpanFromContext(ctx).IsRecording() }

func tracedBatch(batch []*call) bool {
	for _, c := range batch {
		if !c.queued.IsZero() {
			return true
		}
	}
	return false
}

// traceBatch gives every traced request of a batch two spans: the wait from
// joining the queue to the batch's ONNX Run (with the rows and requests of
// the batch it joined), and the Run itself, which it shared with the others.
func traceBatch(batch []*call, rows int, started, ended time.Time, err error) {
	shared := []attribute.KeyValue{attrBatchRows.Int(rows), attrBatchRequests.Int(len(batch))}
	for _, c := range batch {
		if c.queued.IsZero() {
			continue
		}
		tracer := trace.SpanFromContext(c.ctx).TracerProvider().Tracer(tracerName)
		mine := append(shared[:len(shared):len(shared)], attrRequestRows.Int(c.rows))
		_, wait := tracer.Start(c.ctx, "batch wait", trace.WithTimestamp(c.queued), trace.WithAttributes(mine...))
		wait.End(trace.WithTimestamp(started))
		_, run := tracer.Start(c.ctx, "onnx run", trace.WithTimestamp(started), trace.WithAttributes(mine...))
		if err != nil {
			run.RecordError(err)
			run.SetStatus(codes.Error, err.Error())
		}
		run.End(trace.WithTimestamp(ended))
	}
}

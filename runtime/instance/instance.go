// Package instance is one revision loaded into a runtime process: its
// function handler, its warm session pool and its dynamic batcher. A runtime
// process holds at most one instance (Knative's one-revision-per-container
// contract); a generic warm-pool process holds none until it is specialised.
package instance

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/functions/tensor"
	"github.com/pilotlight/pilotlight/runtime/batch"
	"github.com/pilotlight/pilotlight/runtime/ort"
	"github.com/pilotlight/pilotlight/runtime/sessions"
)

// Instance serves one revision of one function.
type Instance struct {
	Manifest *functions.Manifest
	Revision functions.Revision
	Handler  functions.Handler // nil for V2-only (tensor) functions
	Pool     *sessions.Pool
	Batcher  *batch.Batcher
	// LoadTime is how long creating and warming the session pool took.
	LoadTime time.Duration
	// batchable says whether every input and output has a dynamic first
	// dimension, so rows of several requests can share one call.
	batchable bool
}

// Observer receives the instance's measurements (the server wires them to Prometheus).
type Observer interface {
	Batch(rows, requests int, run time.Duration, err error)
}

// Load creates the revision's session pool (each session warmed) and batcher.
func Load(ctx context.Context, m *functions.Manifest, revision string, obs Observer, log *slog.Logger) (*Instance, error) {
	rev, ok := m.Revision(revision)
	if !ok {
		return nil, fmt.Errorf("function %s has no revision %q (known: %v)", m.Name, revision, functions.RevisionNames(m.Revisions))
	}
	h, err := functions.NewHandler(m)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	p, err := sessions.New(ctx, m.ModelPath(rev), m.Runtime.Sessions, ort.Options{Provider: m.Runtime.Provider, IntraOpThreads: m.Runtime.IntraOpThreads})
	if err != nil {
		return nil, fmt.Errorf("load %s/%s: %w", m.Name, revision, err)
	}
	in := &Instance{Manifest: m, Revision: rev, Handler: h, Pool: p, LoadTime: time.Since(start)}
	in.batchable = batchable(p.Inputs()) && batchable(p.Outputs())
	maxBatch := m.Batching.MaxBatch
	if !in.batchable {
		maxBatch = 1
	}
	in.Batcher = batch.New(batch.Config{MaxBatch: maxBatch, MaxDelay: m.Batching.MaxDelay, Parallel: p.Size(), Observe: func(rows, reqs int, run time.Duration, err error) {
		if obs != nil {
			obs.Batch(rows, reqs, run, err)
		}
	}}, p)
	// log already carries function and revision (the runtime command labels it).
	log.Info("revision loaded", "sessions", p.Size(), "provider", p.Provider,
		"fallback", p.Fallback, "batchable", in.batchable, "load_seconds", in.LoadTime.Seconds())
	return in, nil
}

func batchable(ios []ort.IO) bool {
	for _, io := range ios {
		if len(io.Shape) == 0 || io.Shape[0] >= 0 {
			return false
		}
		for _, d := range io.Shape[1:] {
			if d < 0 {
				return false
			}
		}
	}
	return true
}

// Infer runs inputs with rows rows through the batcher (or alone when the
// model cannot be batched).
func (in *Instance) Infer(ctx context.Context, inputs []*tensor.Tensor, rows int) (map[string]*tensor.Tensor, error) {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		// What the request's trace needs to explain its ONNX time.
		span.SetAttributes(attribute.Int("pilotlight.request.rows", rows), attribute.String("pilotlight.execution_provider", in.Pool.Provider),
			attribute.Int("pilotlight.sessions", in.Pool.Size()), attribute.Bool("pilotlight.batchable", in.batchable))
	}
	return in.Batcher.Submit(ctx, inputs, rows)
}

// Close stops the batcher (finishing queued work) and releases the sessions.
func (in *Instance) Close() error {
	in.Batcher.Stop()
	return in.Pool.Close()
}

// Package instance is one revision loaded into a runtime process: its
// function handler, its warm session pool and its dynamic batcher. A
// dedicated runtime process holds one instance (Knative's
// one-revision-per-container contract); a shared one holds many, each with
// its own pool and batcher; a generic warm-pool process holds none until it
// is specialised.
package instance

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
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
	// Batching is the batching decision made at load: whether rows of
	// several requests share one call, and why not when they do not.
	Batching Batching
}

// Batching is whether an instance concatenates requests, decided once at load.
type Batching struct {
	On       bool
	MaxBatch int    // rows per call: the manifest's maxBatch when On, else 1
	Reason   string // why it is off ("" when on)
}

// Options are what the loader's caller adds to the manifest.
type Options struct {
	// DecodeWarmup turns the function's warmup.json (a V2 infer request)
	// into inputs for the model's declarations; the server owns that format.
	DecodeWarmup func(body []byte, inputs, outputs []ort.IO) ([]*tensor.Tensor, error)
}

// Observer receives the instance's measurements (the server wires them to Prometheus).
type Observer interface {
	Batch(rows, requests int, run time.Duration, err error)
}

// Load creates the revision's session pool (each session warmed) and batcher.
func Load(ctx context.Context, m *functions.Manifest, revision string, obs Observer, log *slog.Logger, opts Options) (*Instance, error) {
	rev, ok := m.Revision(revision)
	if !ok {
		return nil, fmt.Errorf("function %s has no revision %q (known: %v)", m.Name, revision, functions.RevisionNames(m.Revisions))
	}
	h, err := functions.NewHandler(m)
	if err != nil {
		return nil, err
	}
	var warm sessions.Warmup
	if path := m.WarmupPath(); path != "" {
		if opts.DecodeWarmup == nil {
			return nil, fmt.Errorf("function %s names warm-up request %s, but this loader cannot read one", m.Name, path)
		}
		body, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("function %s: warm-up request: %w", m.Name, err)
		}
		warm = sessions.Warmup{Source: path, Inputs: func(inputs, outputs []ort.IO) ([]*tensor.Tensor, error) {
			return opts.DecodeWarmup(body, inputs, outputs)
		}}
	}
	sopts := ort.Options{Provider: m.Runtime.Provider, IntraOpThreads: m.Runtime.IntraOpThreads}
	if fi, err := os.Stat(m.ModelPath(rev)); err == nil {
		// On CUDA each session's arena is bounded by what the engine charges it.
		sopts.DeviceMemoryLimit = functions.DeviceArenaBytes(fi.Size())
	}
	start := time.Now()
	p, err := sessions.New(ctx, m.ModelPath(rev), m.Runtime.Sessions, sopts, warm)
	if err != nil {
		return nil, fmt.Errorf("load %s/%s: %w", m.Name, revision, err)
	}
	in := &Instance{Manifest: m, Revision: rev, Handler: h, Pool: p, LoadTime: time.Since(start)}
	if p.Unwarmed != "" {
		// log already carries function and revision (the runtime command labels it).
		log.Warn("synthetic warm-up failed; the sessions serve unwarmed (their first call is slower): name a V2 request in function.yaml's warmup to warm them",
			"err", p.Unwarmed, "inputs_synthesised", sessions.Guesses(p.Inputs()))
	}
	in.Batching = decideBatching(m.Batching, p.Inputs(), p.Outputs())
	if !in.Batching.On {
		log.Info("batching off for this function: each request runs alone", "reason", in.Batching.Reason)
	}
	in.Batcher = batch.New(batch.Config{MaxBatch: in.Batching.MaxBatch, MaxDelay: m.Batching.MaxDelay, Parallel: p.Size(), Observe: func(rows, reqs int, run time.Duration, err error) {
		if obs != nil {
			obs.Batch(rows, reqs, run, err)
		}
	}}, p)
	log.Info("revision loaded", "sessions", p.Size(), "provider", p.Provider,
		"provider_reason", in.ProviderReason(), "device_bytes", p.DeviceBytes, "batching", in.Batching.On, "warm", p.Unwarmed == "", "load_seconds", in.LoadTime.Seconds())
	return in, nil
}

// maxReasons bounds how many tensors the batching reason names.
const maxReasons = 4

// decideBatching says whether rows of several requests may be concatenated
// into one call of this model, from the model's own declarations: only when
// every input and output has a dynamic first dimension (the batch axis the
// batcher concatenates and splits along) and every other dimension fixed
// (so the rows of two requests always line up). A state tensor batched on
// another axis ([2, batch, 64]), a scalar, or a fixed-size input would be
// merged into one wrong tensor. `batching: none` turns it off regardless.
func decideBatching(b functions.Batching, inputs, outputs []ort.IO) Batching {
	off := func(format string, args ...any) Batching {
		return Batching{MaxBatch: 1, Reason: fmt.Sprintf(format, args...)}
	}
	if b.None {
		return off("function.yaml says batching: none")
	}
	sets := []struct {
		kind string
		ios  []ort.IO
	}{{"input", inputs}, {"output", outputs}}
	// Every tensor with no batch axis first is named (Silero VAD's scalar
	// and its state), before one whose other dimensions merely vary.
	var noAxis []string
	for _, set := range sets {
		for _, io := range set.ios {
			switch {
			case len(io.Shape) == 0:
				noAxis = append(noAxis, fmt.Sprintf("%s %q is a scalar", set.kind, io.Name))
			case io.Shape[0] >= 0:
				noAxis = append(noAxis, fmt.Sprintf("%s %q has a fixed first dimension (%v)", set.kind, io.Name, io.Shape))
			}
		}
	}
	if len(noAxis) > maxReasons {
		noAxis = append(noAxis[:maxReasons], fmt.Sprintf("%d more", len(noAxis)-maxReasons))
	}
	if len(noAxis) > 0 {
		return off("%s: requests cannot be concatenated along a first dimension every tensor lacks", strings.Join(noAxis, "; "))
	}
	for _, set := range sets {
		for _, io := range set.ios {
			for d, n := range io.Shape[1:] {
				if n < 0 {
					return off("%s %q has a dynamic dimension %d (%v) besides the first: only the first may vary", set.kind, io.Name, d+1, io.Shape)
				}
			}
		}
	}
	if b.MaxBatch <= 1 {
		return off("batching.maxBatch is 1")
	}
	return Batching{On: true, MaxBatch: b.MaxBatch}
}

// Infer runs inputs with rows rows through the batcher (or alone when the
// model cannot be batched).
func (in *Instance) Infer(ctx context.Context, inputs []*tensor.Tensor, rows int) (map[string]*tensor.Tensor, error) {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		// What the request's trace needs to explain its ONNX time.
		span.SetAttributes(attribute.Int("pilotlight.request.rows", rows), attribute.String("pilotlight.execution_provider", in.Pool.Provider),
			attribute.Int("pilotlight.sessions", in.Pool.Size()), attribute.Bool("pilotlight.batchable", in.Batching.On))
	}
	return in.Batcher.Submit(ctx, inputs, rows)
}

// ProviderReason says why the sessions got their execution provider.
func (in *Instance) ProviderReason() string {
	return ort.ProviderReason(in.Manifest.Runtime.Provider, in.Pool.Provider, in.Pool.Fallback)
}

// Close stops the batcher (finishing queued work) and releases the sessions.
func (in *Instance) Close() error {
	in.Batcher.Stop()
	return in.Pool.Close()
}

// Package sessions is the session pool inside one instance: N ONNX Runtime sessions
// for one revision, created and warmed before the instance reports ready, and
// lent to one batch at a time.
package sessions

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pilotlight/pilotlight/functions/tensor"
	"github.com/pilotlight/pilotlight/runtime/ort"
)

// Pool lends sessions of one model. Sessions run one call at a time each, so
// the pool size is the instance's inference parallelism.
type Pool struct {
	free     chan *ort.Session
	all      []*ort.Session
	inUse    atomic.Int64
	inputs   []ort.IO
	outputs  []ort.IO
	Provider string // the provider every session got
	Fallback string // why CUDA was not used, when it was asked for and not used
}

// New creates size sessions for the model at path and warms each with one
// inference of zeros (dynamic dimensions set to 1), so the first real request
// pays no lazy initialisation. The sessions are created and warmed at the
// same time, each on its own thread: a cold start waits for the slowest
// one, not for their sum.
func New(ctx context.Context, path string, size int, opts ort.Options) (*Pool, error) {
	if size < 1 {
		return nil, fmt.Errorf("session pool size %d: must be >= 1", size)
	}
	p := &Pool{free: make(chan *ort.Session, size), all: make([]*ort.Session, size)}
	errs := make([]error, size)
	var wg sync.WaitGroup
	for i := range size {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := ctx.Err(); err != nil {
				errs[i] = err
				return
			}
			s, err := ort.NewSession(path, opts)
			if err != nil {
				errs[i] = err
				return
			}
			p.all[i] = s
			if _, err := s.Run(WarmupInputs(s.Inputs())); err != nil {
				errs[i] = fmt.Errorf("warm-up inference on session %d of %s: %w", i, path, err)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs { // the first failure by session order, whichever finished first
		if err != nil {
			p.destroy()
			return nil, err
		}
	}
	first := p.all[0]
	p.inputs, p.outputs, p.Provider, p.Fallback = first.Inputs(), first.Outputs(), first.Provider, first.Fallback
	for _, s := range p.all {
		p.free <- s
	}
	return p, nil
}

// WarmupInputs builds one row of zeros (empty strings, false) for every
// input, with every dynamic dimension set to 1.
func WarmupInputs(ios []ort.IO) []*tensor.Tensor {
	out := make([]*tensor.Tensor, len(ios))
	for i, io := range ios {
		shape := make([]int64, len(io.Shape))
		n := 1
		for j, d := range io.Shape {
			if d < 1 {
				d = 1
			}
			shape[j] = d
			n *= int(d)
		}
		t := &tensor.Tensor{Name: io.Name, Datatype: io.Datatype, Shape: shape}
		switch io.Datatype {
		case tensor.FP32:
			t.Data = make([]float32, n)
		case tensor.FP64:
			t.Data = make([]float64, n)
		case tensor.INT64:
			t.Data = make([]int64, n)
		case tensor.INT32:
			t.Data = make([]int32, n)
		case tensor.BOOL:
			t.Data = make([]bool, n)
		case tensor.BYTES:
			t.Data = make([]string, n)
		}
		out[i] = t
	}
	return out
}

// Inputs are the model's inputs as it declares them.
func (p *Pool) Inputs() []ort.IO { return p.inputs }

// Outputs are the model's outputs as it declares them.
func (p *Pool) Outputs() []ort.IO { return p.outputs }

// Size is the number of sessions.
func (p *Pool) Size() int { return len(p.all) }

// InUse is the number of sessions running a call now.
func (p *Pool) InUse() int { return int(p.inUse.Load()) }

// Run borrows a session (waiting while all are busy, up to ctx), runs, and returns it.
func (p *Pool) Run(ctx context.Context, inputs []*tensor.Tensor) (map[string]*tensor.Tensor, time.Duration, error) {
	var s *ort.Session
	select {
	case s = <-p.free:
	case <-ctx.Done():
		return nil, 0, ctx.Err()
	}
	p.inUse.Add(1)
	start := time.Now()
	out, err := s.Run(inputs)
	elapsed := time.Since(start)
	p.inUse.Add(-1)
	p.free <- s
	return out, elapsed, err
}

// Close waits until no call holds a session, then destroys every session.
func (p *Pool) Close() error {
	for range len(p.all) {
		<-p.free
	}
	return p.destroy()
}

func (p *Pool) destroy() error {
	var errs []error
	for _, s := range p.all {
		if s != nil { // a session that failed to be created
			errs = append(errs, s.Close())
		}
	}
	p.all = nil
	return errors.Join(errs...)
}

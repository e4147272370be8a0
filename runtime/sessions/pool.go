// Package sessions is the session pool inside one instance: N ONNX Runtime sessions
// for one revision, created and warmed before the instance reports ready, and
// lent to one batch at a time.
package sessions

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	// DeviceBytes is the device memory the sessions may hold together
	// (each CUDA session's arena limit; 0 on the CPU).
	DeviceBytes int64
	// Unwarmed says why the synthetic warm-up failed ("" when every session
	// was warmed). The sessions still serve: an unwarmed session pays its
	// lazy initialisation on its first call instead of before readiness.
	Unwarmed string
}

// Warmup is what each session runs once before the pool is ready.
type Warmup struct {
	// Inputs, when set, builds the warm-up inputs from the model's own
	// declarations (the function's warmup.json, decoded as a V2 infer
	// request). Its failure, or the model's on its inputs, fails the pool:
	// the user asked for that warm-up.
	Inputs func(inputs, outputs []ort.IO) ([]*tensor.Tensor, error)
	// Source names Inputs in errors (the warm-up file).
	Source string
}

// New creates size sessions for the model at path and warms each with one
// inference, so the first real request pays no lazy initialisation: of
// warm.Inputs when set, else of zeros (dynamic dimensions set to 1). A model
// may refuse zeros (a sample rate it checks, an index out of range); then
// the pool is still made, with Unwarmed saying why, because an unwarmed
// session is slower on its first call, not broken. The sessions are created
// and warmed at the same time, each on its own thread: a cold start waits
// for the slowest one, not for their sum.
func New(ctx context.Context, path string, size int, opts ort.Options, warm Warmup) (*Pool, error) {
	if size < 1 {
		return nil, fmt.Errorf("session pool size %d: must be >= 1", size)
	}
	p := &Pool{free: make(chan *ort.Session, size), all: make([]*ort.Session, size)}
	errs := make([]error, size)
	synthErrs := make([]error, size)
	// The warm-up file is decoded once, by whichever session is made first
	// (every session describes the same model), and shared: Run only reads it.
	var given func(s *ort.Session) ([]*tensor.Tensor, error)
	if warm.Inputs != nil {
		var once sync.Once
		var ts []*tensor.Tensor
		var err error
		given = func(s *ort.Session) ([]*tensor.Tensor, error) {
			once.Do(func() { ts, err = warm.Inputs(s.Inputs(), s.Outputs()) })
			return ts, err
		}
	}
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
			if given == nil {
				if _, err := s.Run(WarmupInputs(s.Inputs())); err != nil {
					synthErrs[i] = err
				}
				return
			}
			ts, err := given(s)
			if err != nil {
				errs[i] = fmt.Errorf("warm-up request %s: %w", warm.Source, err)
				return
			}
			if _, err := s.Run(ts); err != nil {
				errs[i] = fmt.Errorf("warm-up inference (%s) on session %d of %s: %w", warm.Source, i, path, err)
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
		p.DeviceBytes += s.DeviceBytes
	}
	for _, err := range synthErrs { // every session runs the same zeros: the first reason says it
		if err != nil {
			p.Unwarmed = err.Error()
			break
		}
	}
	for _, s := range p.all {
		p.free <- s
	}
	return p, nil
}

// WarmupInputs builds one row of zeros (empty strings, false) for every
// input, with every dynamic dimension set to 1 (a scalar stays a scalar).
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
		out[i] = &tensor.Tensor{Name: io.Name, Datatype: io.Datatype, Shape: shape, Data: tensor.Zeros(io.Datatype, n)}
	}
	return out
}

// Guesses names the inputs whose synthetic warm-up value is a guess a model
// may refuse: a value it may check (a scalar, an integer: a sample rate, a
// length, an index) or a dynamic dimension set to 1. When zeros fail, these
// are the inputs a warmup.json has to give.
func Guesses(ios []ort.IO) []string {
	var out []string
	for _, io := range ios {
		why := ""
		switch {
		case len(io.Shape) == 0:
			why = "scalar 0"
		case io.Datatype != tensor.FP16 && io.Datatype != tensor.BF16 && io.Datatype != tensor.FP32 && io.Datatype != tensor.FP64:
			why = string(io.Datatype) + " zeros"
		case slices.ContainsFunc(io.Shape, func(d int64) bool { return d < 0 }):
			why = "dynamic dimensions set to 1"
		}
		if why != "" {
			out = append(out, fmt.Sprintf("%s (%s %v: %s)", io.Name, io.Datatype, io.Shape, why))
		}
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

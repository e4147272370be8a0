package engine

import (
	"sync"
	"time"
)

// warmPool is the pilot light: K generic runtime processes, started ahead of
// demand with ONNX Runtime initialised and no model, specialised on demand
// (Fission's pool manager). Taking one starts a replacement in the background.
type warmPool struct {
	e     *Engine
	size  int
	mu    sync.Mutex
	idle  []*Process
	spawn int // starts in progress
	// preload turns pre-loading on (Config.Preload); recent lists the
	// dedicated revisions most recently scaled to zero, newest first, at
	// most size: what the idle processes pre-load (preload.go).
	preload bool
	recent  []*revision
}

func newWarmPool(e *Engine, size int, preload bool) *warmPool {
	return &warmPool{e: e, size: size, preload: preload && size > 0}
}

// fill starts processes until idle + starting reaches the pool size.
func (p *warmPool) fill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.e.stopped.Load() {
		return
	}
	for len(p.idle)+p.spawn < p.size {
		p.spawn++
		go p.startOne()
	}
}

func (p *warmPool) refill() { p.fill() }

func (p *warmPool) startOne() {
	in := &Process{id: p.e.nextID.Add(1), exited: make(chan struct{}), source: sourcePool}
	in.setState(stateStarting)
	err := p.e.spawn(in, []string{"--generic", "--listen", "127.0.0.1", "--port", "0"}, childEnv())
	p.mu.Lock()
	p.spawn--
	if err != nil || p.e.stopped.Load() {
		p.mu.Unlock()
		if err != nil {
			p.e.log.Error("warm pool process failed to start; retrying", "err", err)
		}
		p.e.stopInstance(in, "pool")
		if err != nil && !p.e.stopped.Load() {
			time.AfterFunc(startRetryBackoff, p.fill)
		}
		return
	}
	in.setState(stateReady)
	p.idle = append(p.idle, in)
	p.mu.Unlock()
	p.e.m.poolIdle.Set(float64(p.idleCount()))
	p.assignPreloads()
}

// take hands out an idle generic process, or nil, and what it pre-loaded
// (nil: nothing). For r (nil: a shared process to be), it prefers one that
// pre-loaded r, then one that pre-loaded nothing: a pre-load is dropped only
// when every idle process holds another revision's.
func (p *warmPool) take(r *revision) (*Process, *preloadState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	rank := func(in *Process) int {
		switch {
		case in.preload == nil:
			return 1
		case r != nil && in.preload.r == r:
			return 0
		}
		return 2
	}
	for len(p.idle) > 0 {
		best := 0
		for i, in := range p.idle {
			if rank(in) < rank(p.idle[best]) {
				best = i
			}
		}
		in := p.idle[best]
		p.idle = append(p.idle[:best], p.idle[best+1:]...)
		st := in.preload
		in.preload = nil
		if in.alive() {
			p.e.m.poolIdle.Set(float64(len(p.idle)))
			p.e.m.preloadedBytes.Set(float64(p.preloadedBytesLocked()))
			return in, st
		}
	}
	return nil, nil
}

// forget drops a generic process that exited while idle, and replaces it.
func (p *warmPool) forget(in *Process) {
	p.mu.Lock()
	for i, x := range p.idle {
		if x == in {
			p.idle = append(p.idle[:i], p.idle[i+1:]...)
			break
		}
	}
	in.preload = nil
	p.e.m.preloadedBytes.Set(float64(p.preloadedBytesLocked()))
	p.mu.Unlock()
	p.e.m.poolIdle.Set(float64(p.idleCount()))
	if !p.e.stopped.Load() {
		time.AfterFunc(startRetryBackoff, p.fill)
	}
}

func (p *warmPool) idleCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// drainAll removes every idle process (for shutdown).
func (p *warmPool) drainAll() []*Process {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.idle
	p.idle = nil
	return out
}

func (p *warmPool) status() []ProcessStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]ProcessStatus, 0, len(p.idle))
	for _, in := range p.idle {
		out = append(out, ProcessStatus{PID: in.pid, Port: in.port, State: "idle", Source: sourcePool, Preload: in.preload.view()})
	}
	return out
}

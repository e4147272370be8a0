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
}

func newWarmPool(e *Engine, size int) *warmPool { return &warmPool{e: e, size: size} }

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
}

// take hands out an idle generic process, or nil.
func (p *warmPool) take() *Process {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.idle) > 0 {
		in := p.idle[0]
		p.idle = p.idle[1:]
		if in.alive() {
			p.e.m.poolIdle.Set(float64(len(p.idle)))
			return in
		}
	}
	return nil
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
		out = append(out, ProcessStatus{PID: in.pid, Port: in.port, State: "idle", Source: sourcePool})
	}
	return out
}

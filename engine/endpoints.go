package engine

import "sort"

// Endpoint is a live runtime process's HTTP address on loopback. Every
// child listens there (--listen 127.0.0.1 --port 0) even when the router
// reaches it over its framed Unix socket, so its /metrics is always there:
// this is what Prometheus's service discovery lists.
type Endpoint struct {
	Addr string // host:port on 127.0.0.1
	PID  int
	// Function and Revision are what the process serves; both are empty
	// for an idle process of the warm pool, and for a shared process
	// (Shared), whose metrics carry each revision's labels themselves.
	Function, Revision string
	Shared             bool
}

// Endpoints lists every live child that has an address: each revision's
// instances (starting, ready or draining; a starting one has listened but
// is not ready yet), then the idle processes of the warm pool. The order
// is stable (function, revision, pid), so two listings of the same
// processes compare equal.
func (e *Engine) Endpoints() []Endpoint {
	var out []Endpoint
	for _, r := range e.order {
		for _, in := range r.snapshotInstances() {
			if s := in.getState(); s == stateFailed || s == stateStopped || !in.alive() || in.slot {
				continue // a slot is its shared process's, listed once below
			}
			in.mu.Lock()
			addr, pid := in.addr, in.pid
			in.mu.Unlock()
			if addr == "" {
				continue // exec'd but not listening yet
			}
			out = append(out, Endpoint{Addr: addr, PID: pid, Function: r.fn.Name, Revision: r.rev.Name})
		}
	}
	e.placeMu.Lock()
	for _, h := range e.hosts {
		select {
		case <-h.ready:
			if h.err == nil && h.proc.alive() {
				out = append(out, Endpoint{Addr: h.proc.addr, PID: h.proc.pid, Shared: true})
			}
		default:
		}
	}
	e.placeMu.Unlock()
	var pool []Endpoint
	e.pool.mu.Lock()
	for _, in := range e.pool.idle {
		if in.alive() {
			pool = append(pool, Endpoint{Addr: in.addr, PID: in.pid})
		}
	}
	e.pool.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Function != b.Function {
			return a.Function < b.Function
		}
		if a.Revision != b.Revision {
			return a.Revision < b.Revision
		}
		return a.PID < b.PID
	})
	sort.Slice(pool, func(i, j int) bool { return pool[i].PID < pool[j].PID })
	return append(out, pool...)
}

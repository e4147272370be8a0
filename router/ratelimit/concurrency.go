package ratelimit

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultMaxConcurrent is the requests in flight per function when
// ConcurrencyConfig.Max is zero.
const DefaultMaxConcurrent = 1024

// ConcurrencyConfig configures a ConcurrencyLimiter.
type ConcurrencyConfig struct {
	// Max is the requests in flight per function; 0: DefaultMaxConcurrent.
	Max int
	// PerFunction overrides Max for named functions.
	PerFunction map[string]int
	// Registerer, when set, gets pilotlight_concurrency_shed_requests_total.
	Registerer prometheus.Registerer
}

// ConcurrencyLimiter caps the requests in flight per function. It holds a
// counter only for functions with a request in flight, so memory is bounded
// by the requests in flight whatever names clients send.
type ConcurrencyLimiter struct {
	cfg  ConcurrencyConfig
	shed prometheus.Counter

	mu       sync.RWMutex
	inFlight map[string]*atomic.Int64 // per function, created on first use and kept
}

// NewConcurrencyLimiter builds a ConcurrencyLimiter.
func NewConcurrencyLimiter(cfg ConcurrencyConfig) *ConcurrencyLimiter {
	if cfg.Max <= 0 {
		cfg.Max = DefaultMaxConcurrent
	}
	cl := &ConcurrencyLimiter{cfg: cfg, inFlight: map[string]*atomic.Int64{}}
	if cfg.Registerer != nil {
		cl.shed = prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pilotlight_concurrency_shed_requests_total",
			Help: "Requests answered 503 because their function already had its maximum of requests in flight.",
		})
		cfg.Registerer.MustRegister(cl.shed)
	}
	return cl
}

// Limit is the cap for fn.
func (cl *ConcurrencyLimiter) Limit(fn string) int {
	if n, ok := cl.cfg.PerFunction[fn]; ok && n > 0 {
		return n
	}
	return cl.cfg.Max
}

// Slot is a request's place in its function's limit; Release gives it
// back (once; a zero Slot's Release does nothing).
type Slot struct{ n *atomic.Int64 }

// Release gives the slot back.
func (s *Slot) Release() {
	if s.n != nil {
		s.n.Add(-1)
		s.n = nil
	}
}

// counter is fn's in-flight count (the read lock is the common path).
// Callers pass known function names only, so the map stays bounded.
func (cl *ConcurrencyLimiter) counter(fn string) *atomic.Int64 {
	cl.mu.RLock()
	n := cl.inFlight[fn]
	cl.mu.RUnlock()
	if n != nil {
		return n
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if n = cl.inFlight[fn]; n == nil {
		n = new(atomic.Int64)
		cl.inFlight[fn] = n
	}
	return n
}

// tryEnter takes a slot for fn; ok is false when fn is at its limit. It
// allocates nothing (the proxy's path).
func (cl *ConcurrencyLimiter) tryEnter(fn string) (s Slot, ok bool) {
	limit := int64(cl.Limit(fn))
	n := cl.counter(fn)
	for {
		cur := n.Load()
		if cur >= limit {
			return Slot{}, false
		}
		if n.CompareAndSwap(cur, cur+1) {
			return Slot{n: n}, true
		}
	}
}

// InFlight is the requests in flight for fn.
func (cl *ConcurrencyLimiter) InFlight(fn string) int {
	return int(cl.counter(fn).Load())
}

// Enter takes a slot of fn's limit; at the limit it counts the request as
// shed and returns a 503 Refusal. The slot must be released when r is nil
// (a second Release does nothing). It is the one entry point: the router's
// admission pipeline calls it for every protocol.
func (cl *ConcurrencyLimiter) Enter(fn string) (s Slot, r *Refusal) {
	s, ok := cl.tryEnter(fn)
	if ok {
		return s, nil
	}
	if cl.shed != nil {
		cl.shed.Inc()
	}
	return Slot{}, &Refusal{Status: http.StatusServiceUnavailable, RetryAfter: 1, shed: true,
		Msg: fmt.Sprintf("function %s has %d requests in flight, its maximum; retry shortly", fn, cl.Limit(fn))}
}

package ratelimit

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"

	"github.com/labstack/echo/v4"
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

	mu       sync.Mutex
	inFlight map[string]int
}

// NewConcurrencyLimiter builds a ConcurrencyLimiter.
func NewConcurrencyLimiter(cfg ConcurrencyConfig) *ConcurrencyLimiter {
	if cfg.Max <= 0 {
		cfg.Max = DefaultMaxConcurrent
	}
	cl := &ConcurrencyLimiter{cfg: cfg, inFlight: map[string]int{}}
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

// Acquire takes a slot for fn; ok is false when fn is at its limit.
// release must be called exactly once when ok.
func (cl *ConcurrencyLimiter) Acquire(fn string) (release func(), ok bool) {
	limit := cl.Limit(fn)
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.inFlight[fn] >= limit {
		return nil, false
	}
	cl.inFlight[fn]++
	var once sync.Once
	return func() {
		once.Do(func() {
			cl.mu.Lock()
			defer cl.mu.Unlock()
			if cl.inFlight[fn]--; cl.inFlight[fn] <= 0 {
				delete(cl.inFlight, fn)
			}
		})
	}, true
}

// CountShed counts a request Acquire refused outside Middleware (the
// router's gRPC side) in pilotlight_concurrency_shed_requests_total.
func (cl *ConcurrencyLimiter) CountShed() {
	if cl.shed != nil {
		cl.shed.Inc()
	}
}

// InFlight is the requests in flight for fn.
func (cl *ConcurrencyLimiter) InFlight(fn string) int {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.inFlight[fn]
}

// Enter takes a slot of fn's limit; at the limit it counts the request as
// shed and returns a 503 Refusal. release must be called exactly once when
// r is nil. It is the check Middleware makes, for front doors that are not echo.
func (cl *ConcurrencyLimiter) Enter(fn string) (release func(), r *Refusal) {
	release, ok := cl.Acquire(fn)
	if ok {
		return release, nil
	}
	if cl.shed != nil {
		cl.shed.Inc()
	}
	return nil, &Refusal{Status: http.StatusServiceUnavailable, RetryAfter: 1, shed: true,
		Msg: fmt.Sprintf("function %s has %d requests in flight, its maximum; retry shortly", fn, cl.Limit(fn))}
}

// shedError marks a 503 as deliberate load shedding; the router's
// HTTPErrorHandler finds it through errors.As and sets X-Pilotlight-Shed.
type shedError struct{}

func (shedError) Error() string { return "shed: concurrency limit" }
func (shedError) Shed() bool    { return true }

// Middleware holds a slot of functionOf(c)'s limit for the whole request;
// requests that target no function ("" : admin, metrics, probes) pass.
// At the limit: 503 {"error": ...} with Retry-After: 1, marked as shed.
func (cl *ConcurrencyLimiter) Middleware(functionOf func(echo.Context) string) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			fn := functionOf(c)
			if fn == "" {
				return next(c)
			}
			release, r := cl.Enter(fn)
			if r != nil {
				c.Response().Header().Set("Retry-After", strconv.Itoa(r.RetryAfter))
				return echo.NewHTTPError(r.Status, r.Msg).SetInternal(shedError{})
			}
			defer release()
			return next(c)
		}
	}
}

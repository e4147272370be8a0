// Package ratelimit is the router's admission control after authentication:
// a token bucket per API key (429 with Retry-After when a key spends its
// burst faster than its rate refills it), and a cap on the requests in
// flight per function (503 with Retry-After: 1 beyond it) so one hot
// function cannot take every connection and goroutine the router has.
package ratelimit

import (
	"container/list"
	"fmt"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Defaults for Config's zero fields.
const (
	DefaultRPS        = 100.0
	DefaultBurst      = 200
	DefaultMaxBuckets = 10000
)

// anonymousPrefix keys the buckets of requests without a key id (auth off
// in local development, or public paths) by the client's address. Key ids
// cannot contain ':' (router/auth), so the two never share a bucket.
const anonymousPrefix = "addr:"

// Config configures a Limiter.
type Config struct {
	// RPS and Burst apply to keys whose rateOf returns (0, 0).
	RPS   float64
	Burst int
	// MaxBuckets bounds memory: beyond it the least recently used bucket is
	// dropped. A dropped bucket comes back full, which only matters for a
	// key idle long enough to be least recently used among MaxBuckets.
	MaxBuckets int
	// Registerer, when set, gets pilotlight_ratelimit_rejected_requests_total{key}.
	Registerer prometheus.Registerer
	// Now is the clock (tests); nil: time.Now.
	Now func() time.Time
}

// Limiter holds one token bucket per key, least recently used first out.
type Limiter struct {
	cfg      Config
	rejected *prometheus.CounterVec

	mu      sync.Mutex
	buckets map[string]*list.Element // of *bucket
	lru     list.List                // front: most recently used
}

type bucket struct {
	key   string
	lim   *rate.Limiter
	rps   float64
	burst int
}

// New builds a Limiter.
func New(cfg Config) *Limiter {
	if cfg.RPS <= 0 || math.IsNaN(cfg.RPS) {
		cfg.RPS = DefaultRPS
	}
	if cfg.Burst <= 0 {
		cfg.Burst = DefaultBurst
	}
	if cfg.MaxBuckets <= 0 {
		cfg.MaxBuckets = DefaultMaxBuckets
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := &Limiter{cfg: cfg, buckets: map[string]*list.Element{}}
	if cfg.Registerer != nil {
		l.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pilotlight_ratelimit_rejected_requests_total",
			Help: "Requests answered 429 because their API key's token bucket was empty, by key id (\"anonymous\" without a key).",
		}, []string{"key"})
		cfg.Registerer.MustRegister(l.rejected)
	}
	return l
}

// Allow takes one token from key's bucket (created, or re-shaped, with rps
// and burst; zero values mean the configured default). When the bucket is
// empty it takes nothing and says how long until a token is there.
func (l *Limiter) Allow(key string, rps float64, burst int) (ok bool, retryAfter time.Duration) {
	if rps <= 0 || math.IsNaN(rps) {
		rps = l.cfg.RPS
	}
	if burst <= 0 {
		burst = l.cfg.Burst
	}
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var b *bucket
	if el, found := l.buckets[key]; found {
		l.lru.MoveToFront(el)
		b = el.Value.(*bucket)
		if b.rps != rps || b.burst != burst {
			// The key's rate changed (keys reloaded): keep its tokens, change the shape.
			b.lim.SetLimitAt(now, rate.Limit(rps))
			b.lim.SetBurstAt(now, burst)
			b.rps, b.burst = rps, burst
		}
	} else {
		b = &bucket{key: key, lim: rate.NewLimiter(rate.Limit(rps), burst), rps: rps, burst: burst}
		l.buckets[key] = l.lru.PushFront(b)
		for l.lru.Len() > l.cfg.MaxBuckets {
			oldest := l.lru.Back()
			l.lru.Remove(oldest)
			delete(l.buckets, oldest.Value.(*bucket).key)
		}
	}
	r := b.lim.ReserveN(now, 1)
	if !r.OK() {
		return false, time.Second // burst < 1 cannot happen here; be safe anyway
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now) // give the token back: a rejected request costs nothing
		return false, d
	}
	return true, 0
}

// Len is the number of buckets held.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}

// RetryAfterSeconds rounds a wait up to whole seconds, at least 1, as the
// Retry-After header wants.
func RetryAfterSeconds(d time.Duration) int {
	s := int(math.Ceil(d.Seconds()))
	if s < 1 {
		return 1
	}
	return s
}

// Refusal is a request over its limit: 429 (rate) or a shed 503
// (concurrency), with the Retry-After seconds to send.
type Refusal struct {
	Status     int
	Msg        string
	RetryAfter int
	shed       bool
}

func (r *Refusal) Error() string   { return r.Msg }
func (r *Refusal) HTTPStatus() int { return r.Status }
func (r *Refusal) Shed() bool      { return r.shed }

// Check takes a token from the bucket of key (the API key id; "" uses the
// client's address, so auth-off development still has a limit) shaped by
// (rps, burst) ((0, 0): the default); nil when allowed. It is the one
// entry point: the router's admission pipeline calls it for every protocol.
func (l *Limiter) Check(key, addr string, rps float64, burst int) *Refusal {
	label, who := "anonymous", ""
	if key == "" {
		key, who = anonymousPrefix+addr, "client "+addr
	} else {
		label, who = key, fmt.Sprintf("key %q", key)
	}
	ok, wait := l.Allow(key, rps, burst)
	if ok {
		return nil
	}
	if l.rejected != nil {
		l.rejected.WithLabelValues(label).Inc()
	}
	if rps <= 0 {
		rps, burst = l.cfg.RPS, l.cfg.Burst
	}
	secs := RetryAfterSeconds(wait)
	return &Refusal{Status: http.StatusTooManyRequests, RetryAfter: secs,
		Msg: fmt.Sprintf("rate limit exceeded for %s (%g requests/s, burst %d); retry after %d s", who, rps, burst, secs)}
}

package ratelimit_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/router/ratelimit"
)

// fakeClock is a settable clock for the token buckets.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock { return &fakeClock{now: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestAllow(t *testing.T) {
	type step struct {
		advance   time.Duration
		key       string
		wantOK    bool
		wantAfter time.Duration // when !wantOK
	}
	tests := []struct {
		name       string
		rps        float64
		burst      int
		steps      []step
		maxBuckets int
	}{
		{"burst then empty then refill", 1, 3, []step{
			{0, "a", true, 0}, {0, "a", true, 0}, {0, "a", true, 0},
			{0, "a", false, time.Second},
			{500 * time.Millisecond, "a", false, 500 * time.Millisecond},
			{500 * time.Millisecond, "a", true, 0},
			{0, "a", false, time.Second},
			{3 * time.Second, "a", true, 0}, {0, "a", true, 0}, {0, "a", true, 0}, // refilled to burst, not beyond
			{0, "a", false, time.Second},
		}, 0},
		{"buckets are per key", 1, 1, []step{
			{0, "a", true, 0}, {0, "a", false, time.Second},
			{0, "b", true, 0}, {0, "b", false, time.Second},
		}, 0},
		{"rejections cost nothing", 10, 1, []step{
			{0, "a", true, 0},
			{0, "a", false, 100 * time.Millisecond}, {0, "a", false, 100 * time.Millisecond},
			{100 * time.Millisecond, "a", true, 0},
		}, 0},
		{"evicted bucket comes back full", 1, 1, []step{
			{0, "a", true, 0}, {0, "a", false, time.Second},
			{0, "b", true, 0}, // evicts a (max 1 bucket)
			{0, "a", true, 0},
		}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			l := ratelimit.New(ratelimit.Config{RPS: tt.rps, Burst: tt.burst, MaxBuckets: tt.maxBuckets, Now: clk.Now})
			for i, s := range tt.steps {
				clk.Advance(s.advance)
				ok, after := l.Allow(s.key, 0, 0)
				if ok != s.wantOK {
					t.Fatalf("step %d (%s): allowed=%v, want %v", i, s.key, ok, s.wantOK)
				}
				if !ok && (after < s.wantAfter-time.Millisecond || after > s.wantAfter+time.Millisecond) {
					t.Fatalf("step %d (%s): retry after %v, want %v", i, s.key, after, s.wantAfter)
				}
			}
		})
	}
}

func TestAllowReshapesWhenTheKeysRateChanges(t *testing.T) {
	clk := newClock()
	l := ratelimit.New(ratelimit.Config{Now: clk.Now})
	if ok, _ := l.Allow("k", 1, 1); !ok {
		t.Fatal("first request refused")
	}
	if ok, _ := l.Allow("k", 1, 1); ok {
		t.Fatal("second request at 1 rps burst 1 allowed")
	}
	// A reload gives the key 1000 rps: the wait drops from ~1 s to ~1 ms.
	ok, after := l.Allow("k", 1000, 1)
	if ok || after > time.Millisecond {
		t.Fatalf("right after the rate went to 1000 rps: allowed=%v retry after %v, want refused with <= 1ms", ok, after)
	}
	clk.Advance(time.Millisecond)
	if ok, after := l.Allow("k", 1000, 1); !ok {
		t.Fatalf("1 ms later at 1000 rps, refused (retry after %v)", after)
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want int
	}{
		{0, 1}, {time.Nanosecond, 1}, {time.Second, 1}, {time.Second + time.Millisecond, 2}, {2500 * time.Millisecond, 3}, {time.Minute, 60},
	} {
		if got := ratelimit.RetryAfterSeconds(tt.d); got != tt.want {
			t.Errorf("RetryAfterSeconds(%v) = %d, want %d", tt.d, got, tt.want)
		}
	}
}

func TestBucketsAreBounded(t *testing.T) {
	l := ratelimit.New(ratelimit.Config{MaxBuckets: 100})
	for i := 0; i < 10_000; i++ {
		l.Allow(fmt.Sprintf("key-%d", i), 0, 0)
		if n := l.Len(); n > 100 {
			t.Fatalf("after %d keys: %d buckets, cap 100", i+1, n)
		}
	}
	if n := l.Len(); n != 100 {
		t.Fatalf("%d buckets, want exactly the cap 100", n)
	}
}

func TestBoundedKeepsRecentlyUsed(t *testing.T) {
	clk := newClock()
	l := ratelimit.New(ratelimit.Config{RPS: 1, Burst: 1, MaxBuckets: 3, Now: clk.Now})
	l.Allow("hot", 0, 0) // empties hot's bucket
	for i := 0; i < 10; i++ {
		l.Allow(fmt.Sprintf("cold-%d", i), 0, 0)
		// hot keeps being used, so it is never least recently used
		if ok, _ := l.Allow("hot", 0, 0); ok {
			t.Fatalf("hot key was evicted and got a fresh bucket after %d cold keys", i+1)
		}
	}
}

// TestCheck: a bucket per key, shaped by the key's own rate when it has
// one; without a key, a bucket per client address; a 429 names who is
// limited and how long to wait, and is counted by key.
func TestCheck(t *testing.T) {
	clk := newClock()
	reg := prometheus.NewRegistry()
	l := ratelimit.New(ratelimit.Config{RPS: 2, Burst: 4, Now: clk.Now, Registerer: reg})
	check := func(key, addr string) *ratelimit.Refusal {
		if key == "slow" {
			return l.Check(key, addr, 0.25, 1) // one request per 4 s
		}
		return l.Check(key, addr, 0, 0)
	}
	for i := 0; i < 4; i++ {
		if r := check("team-a", "192.0.2.9"); r != nil {
			t.Fatalf("request %d within burst: %v", i, r)
		}
	}
	r := check("team-a", "192.0.2.9")
	if r == nil || r.Status != http.StatusTooManyRequests || r.HTTPStatus() != http.StatusTooManyRequests {
		t.Fatalf("request past burst: %+v, want 429", r)
	}
	if r.RetryAfter < 1 || !strings.Contains(r.Msg, `key "team-a"`) {
		t.Fatalf("429 %+v, want Retry-After >= 1 and a message naming the key", r)
	}
	if r := check("team-b", "192.0.2.9"); r != nil {
		t.Fatalf("another key was limited by team-a's bucket: %v", r)
	}
	clk.Advance(time.Duration(r.RetryAfter) * time.Second)
	if r := check("team-a", "192.0.2.9"); r != nil {
		t.Fatalf("after waiting Retry-After: %v", r)
	}
	check("slow", "")
	if r := check("slow", ""); r == nil || r.RetryAfter != 4 {
		t.Fatalf("slow key: %+v, want 429 with Retry-After 4", r)
	}
	for i := 0; i < 4; i++ {
		check("", "192.0.2.1")
	}
	if r := check("", "192.0.2.1"); r == nil || !strings.Contains(r.Msg, "client 192.0.2.1") {
		t.Fatalf("anonymous client past burst: %+v, want 429 naming the address", r)
	}
	if r := check("", "192.0.2.2"); r != nil {
		t.Fatalf("another anonymous client: %v", r)
	}
	if got := testbin.Metric(t, reg, "pilotlight_ratelimit_rejected_requests_total", map[string]string{"key": "team-a"}); got != 1 {
		t.Errorf("rejected{key=team-a} = %v, want 1", got)
	}
	if got := testbin.Metric(t, reg, "pilotlight_ratelimit_rejected_requests_total", map[string]string{"key": "anonymous"}); got != 1 {
		t.Errorf("rejected{key=anonymous} = %v, want 1", got)
	}
}

// TestConcurrencyLimiter: a function's cap holds, another function has its
// own, a refusal is a shed 503 with Retry-After 1, and it is counted.
func TestConcurrencyLimiter(t *testing.T) {
	reg := prometheus.NewRegistry()
	cl := ratelimit.NewConcurrencyLimiter(ratelimit.ConcurrencyConfig{Max: 3, PerFunction: map[string]int{"fraud": 2}, Registerer: reg})
	a, r1 := cl.Enter("fraud")
	b, r2 := cl.Enter("fraud")
	if r1 != nil || r2 != nil || cl.InFlight("fraud") != 2 {
		t.Fatalf("two fraud slots: %v %v, in flight %d", r1, r2, cl.InFlight("fraud"))
	}
	_, r := cl.Enter("fraud")
	if r == nil || r.Status != http.StatusServiceUnavailable || r.RetryAfter != 1 || !r.Shed() || !strings.Contains(r.Msg, "2 requests in flight") {
		t.Fatalf("third fraud request: %+v, want a shed 503 with Retry-After 1", r)
	}
	if got := testbin.Metric(t, reg, "pilotlight_concurrency_shed_requests_total", nil); got != 1 {
		t.Errorf("shed counter %v, want 1", got)
	}
	c, r3 := cl.Enter("recommend")
	if r3 != nil {
		t.Fatalf("another function was limited by fraud's cap: %v", r3)
	}
	a.Release()
	b.Release()
	c.Release()
	if n := cl.InFlight("fraud"); n != 0 {
		t.Fatalf("in flight after release: %d", n)
	}
	if s, r := cl.Enter("fraud"); r != nil {
		t.Fatalf("after release: %v", r)
	} else {
		s.Release()
	}
}

// TestConcurrencyDefaultAndDoubleRelease: the default cap, and a slot
// released twice frees one place.
func TestConcurrencyDefaultAndDoubleRelease(t *testing.T) {
	cl := ratelimit.NewConcurrencyLimiter(ratelimit.ConcurrencyConfig{})
	if got := cl.Limit("any"); got != ratelimit.DefaultMaxConcurrent {
		t.Fatalf("default limit %d, want %d", got, ratelimit.DefaultMaxConcurrent)
	}
	var slots []ratelimit.Slot
	for i := 0; i < ratelimit.DefaultMaxConcurrent; i++ {
		s, r := cl.Enter("f")
		if r != nil {
			t.Fatalf("slot %d refused", i)
		}
		slots = append(slots, s)
	}
	if _, r := cl.Enter("f"); r == nil {
		t.Fatal("slot beyond the limit granted")
	}
	slots[0].Release()
	slots[0].Release() // double release must not free a second slot
	if _, r := cl.Enter("f"); r != nil {
		t.Fatal("slot not freed by release")
	}
	if _, r := cl.Enter("f"); r == nil {
		t.Fatal("double release freed two slots")
	}
}

// TestConcurrencySlotsUnderContention: slots taken and released from many
// goroutines at once never exceed the limit and all come back; a slot
// released twice frees one place.
func TestConcurrencySlotsUnderContention(t *testing.T) {
	cl := ratelimit.NewConcurrencyLimiter(ratelimit.ConcurrencyConfig{Max: 3})
	var inside, peak atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				s, ok := cl.Enter("f")
				if ok != nil {
					continue
				}
				n := inside.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				inside.Add(-1)
				s.Release()
			}
		}()
	}
	wg.Wait()
	if peak.Load() > 3 || peak.Load() < 1 {
		t.Errorf("peak in flight %d, want 1..3", peak.Load())
	}
	if n := cl.InFlight("f"); n != 0 {
		t.Fatalf("in flight after every release: %d", n)
	}
	s, _ := cl.Enter("f")
	s.Release()
	s.Release()
	if n := cl.InFlight("f"); n != 0 {
		t.Fatalf("a double Release: in flight %d, want 0", n)
	}
}

func BenchmarkAllow(b *testing.B) {
	l := ratelimit.New(ratelimit.Config{RPS: 1e9, Burst: 1 << 30})
	keys := make([]string, 64)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%d", i)
	}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			l.Allow(keys[i%len(keys)], 0, 0)
			i++
		}
	})
}

package ratelimit_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
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

// keyHeader stands in for auth.KeyID in these tests.
func keyHeader(c echo.Context) string { return c.Request().Header.Get("X-Test-Key") }

func newApp(l *ratelimit.Limiter, rateOf func(echo.Context) (float64, int)) *echo.Echo {
	// echo's own error handler: the limiter's message is in "message" here;
	// TestWiring checks the router's {"error": ...} rendering of it.
	e := echo.New()
	e.Use(l.Middleware(keyHeader, rateOf))
	e.POST("/functions/:function", func(c echo.Context) error { return c.NoContent(http.StatusOK) })
	return e
}

func do(e *echo.Echo, key, remote string) *httptest.ResponseRecorder {
	req := httptest.NewRequest("POST", "/functions/fraud", nil)
	if key != "" {
		req.Header.Set("X-Test-Key", key)
	}
	if remote != "" {
		req.RemoteAddr = remote
	}
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, req)
	return rec
}

func TestMiddleware(t *testing.T) {
	clk := newClock()
	reg := prometheus.NewRegistry()
	l := ratelimit.New(ratelimit.Config{RPS: 2, Burst: 4, Now: clk.Now, Registerer: reg})
	perKey := func(c echo.Context) (float64, int) {
		if keyHeader(c) == "slow" {
			return 0.25, 1 // one request per 4 s
		}
		return 0, 0
	}
	e := newApp(l, perKey)

	for i := 0; i < 4; i++ {
		if rec := do(e, "team-a", ""); rec.Code != 200 {
			t.Fatalf("request %d within burst: %d %s", i, rec.Code, rec.Body)
		}
	}
	rec := do(e, "team-a", "")
	if rec.Code != http.StatusTooManyRequests {
		t.Fatalf("request past burst: %d, want 429", rec.Code)
	}
	ra, err := strconv.Atoi(rec.Header().Get("Retry-After"))
	if err != nil || ra < 1 {
		t.Fatalf("Retry-After %q, want an integer >= 1", rec.Header().Get("Retry-After"))
	}
	var body map[string]string
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || !strings.Contains(body["message"], `key "team-a"`) {
		t.Fatalf("429 body %s, want a message naming the key", rec.Body)
	}
	if rec := do(e, "team-b", ""); rec.Code != 200 {
		t.Fatalf("another key was limited by team-a's bucket: %d", rec.Code)
	}
	clk.Advance(time.Duration(ra) * time.Second)
	if rec := do(e, "team-a", ""); rec.Code != 200 {
		t.Fatalf("after waiting Retry-After (%d s): %d, want 200", ra, rec.Code)
	}

	// The key's own rate: 0.25 rps, burst 1 -> Retry-After 4.
	do(e, "slow", "")
	rec = do(e, "slow", "")
	if rec.Code != 429 || rec.Header().Get("Retry-After") != "4" {
		t.Fatalf("slow key: %d Retry-After %q, want 429 and 4", rec.Code, rec.Header().Get("Retry-After"))
	}

	// No key: per client address.
	for i := 0; i < 4; i++ {
		do(e, "", "192.0.2.1:1234")
	}
	if rec := do(e, "", "192.0.2.1:5678"); rec.Code != 429 {
		t.Fatalf("anonymous client past burst from another port: %d, want 429", rec.Code)
	}
	if rec := do(e, "", "192.0.2.2:1234"); rec.Code != 200 {
		t.Fatalf("another anonymous client: %d, want 200", rec.Code)
	}
	if got := testbin.Metric(t, reg, "pilotlight_ratelimit_rejected_requests_total", map[string]string{"key": "team-a"}); got != 1 {
		t.Errorf("rejected{key=team-a} = %v, want 1", got)
	}
	if got := testbin.Metric(t, reg, "pilotlight_ratelimit_rejected_requests_total", map[string]string{"key": "anonymous"}); got != 1 {
		t.Errorf("rejected{key=anonymous} = %v, want 1", got)
	}
}

func TestMiddlewareSkipper(t *testing.T) {
	l := ratelimit.New(ratelimit.Config{RPS: 1, Burst: 1, Skipper: func(c echo.Context) bool { return c.Request().Header.Get("X-Probe") != "" }})
	e := newApp(l, nil)
	for i := 0; i < 5; i++ {
		req := httptest.NewRequest("POST", "/functions/fraud", nil)
		req.Header.Set("X-Probe", "1")
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		if rec.Code != 200 {
			t.Fatalf("skipped request %d: %d", i, rec.Code)
		}
	}
}

func TestConcurrencyLimiter(t *testing.T) {
	cl := ratelimit.NewConcurrencyLimiter(ratelimit.ConcurrencyConfig{Max: 3, PerFunction: map[string]int{"fraud": 2}})
	e := echo.New()
	var shedErr error
	e.HTTPErrorHandler = func(err error, c echo.Context) {
		shedErr = err
		e.DefaultHTTPErrorHandler(err, c)
	}
	release := make(chan struct{})
	entered := make(chan struct{}, 16)
	e.Use(cl.Middleware(func(c echo.Context) string { return c.Param("function") }))
	e.POST("/functions/:function", func(c echo.Context) error {
		entered <- struct{}{}
		<-release
		return c.NoContent(http.StatusOK)
	})
	e.GET("/metrics", func(c echo.Context) error { return c.NoContent(http.StatusOK) })
	srv := httptest.NewServer(e)
	defer srv.Close()

	post := func(fn string) *http.Response {
		resp, err := http.Post(srv.URL+"/functions/"+fn, "application/json", nil)
		if err != nil {
			t.Error(err)
			return nil
		}
		resp.Body.Close()
		return resp
	}
	var wg sync.WaitGroup
	codes := make(chan int, 8)
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); codes <- post("fraud").StatusCode }()
	}
	for i := 0; i < 2; i++ {
		<-entered
	}
	if n := cl.InFlight("fraud"); n != 2 {
		t.Fatalf("in flight %d, want 2", n)
	}
	resp := post("fraud")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("third fraud request: %d Retry-After %q, want 503 and 1", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	var shed interface{ Shed() bool }
	if !errors.As(shedErr, &shed) || !shed.Shed() {
		t.Fatalf("503 error %v does not say it is shedding (router sets X-Pilotlight-Shed from it)", shedErr)
	}
	// Another function has its own limit (the default 3); paths with no function are not limited.
	wg.Add(1)
	go func() { defer wg.Done(); codes <- post("recommend").StatusCode }()
	<-entered
	if resp, err := http.Get(srv.URL + "/metrics"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics while functions are full: %v %v", resp, err)
	}
	close(release)
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 200 {
			t.Errorf("admitted request finished %d", c)
		}
	}
	if n := cl.InFlight("fraud"); n != 0 {
		t.Fatalf("in flight after release: %d", n)
	}
	if resp := post("fraud"); resp.StatusCode != 200 {
		t.Fatalf("after release: %d", resp.StatusCode)
	}
}

func TestConcurrencyAcquire(t *testing.T) {
	cl := ratelimit.NewConcurrencyLimiter(ratelimit.ConcurrencyConfig{})
	if got := cl.Limit("any"); got != ratelimit.DefaultMaxConcurrent {
		t.Fatalf("default limit %d, want %d", got, ratelimit.DefaultMaxConcurrent)
	}
	var releases []func()
	for i := 0; i < ratelimit.DefaultMaxConcurrent; i++ {
		r, ok := cl.Acquire("f")
		if !ok {
			t.Fatalf("slot %d refused", i)
		}
		releases = append(releases, r)
	}
	if _, ok := cl.Acquire("f"); ok {
		t.Fatal("slot beyond the limit granted")
	}
	releases[0]()
	releases[0]() // double release must not free a second slot
	if _, ok := cl.Acquire("f"); !ok {
		t.Fatal("slot not freed by release")
	}
	if _, ok := cl.Acquire("f"); ok {
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
				s, ok := cl.TryEnter("f")
				if !ok {
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
	s, _ := cl.TryEnter("f")
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

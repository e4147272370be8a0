package loadgen

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestAccountsForEveryRequest(t *testing.T) {
	var n atomic.Int64
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch n.Add(1) % 4 {
		case 0:
			w.WriteHeader(503)
		case 1:
			// Hang up without a response: the request is lost.
			hj, _ := w.(http.Hijacker)
			c, _, _ := hj.Hijack()
			c.Close()
		default:
			w.Write([]byte("ok"))
		}
	}))
	defer ts.Close()
	res := Run(context.Background(), Config{URL: ts.URL, Concurrency: 4, Requests: 400, Body: func(int, int) []byte { return []byte("{}") }})
	if res.Sent != 400 {
		t.Fatalf("sent %d, want exactly 400", res.Sent)
	}
	if res.Succeeded+res.Status[503]+res.Lost != res.Sent {
		t.Fatalf("unaccounted requests: %s", res)
	}
	if res.Lost == 0 || res.Status[503] == 0 || res.Succeeded == 0 {
		t.Fatalf("each outcome should appear: %s", res)
	}
	if got, want := res.Unanswered(), res.Status[503]+res.Lost; got != want {
		t.Errorf("Unanswered %d, want %d (every 503 and every lost request)", got, want)
	}
	if res.Quantile(0.5) <= 0 || res.Quantile(1) < res.Quantile(0.5) {
		t.Errorf("quantiles: p50 %s max %s", res.Quantile(.5), res.Quantile(1))
	}
}

// TestDurationBound: with no request count, only Duration ends the run; that
// Run returns at all (the test's own timeout catches a hang), having run the
// whole window and accounted every request the server saw, is the behaviour.
func TestDurationBound(t *testing.T) {
	var arrived atomic.Int64
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { arrived.Add(1) }))
	defer ts.Close()
	const window = 200 * time.Millisecond
	res := Run(context.Background(), Config{URL: ts.URL, Concurrency: 2, Duration: window})
	if res.Sent == 0 || res.Lost != 0 {
		t.Fatalf("%s", res)
	}
	if res.Elapsed < window {
		t.Errorf("the run stopped after %s, before its %s window", res.Elapsed, window)
	}
	if n := arrived.Load(); n != int64(res.Sent) {
		t.Errorf("the server saw %d requests, the run reports %d sent: requests outlived Run", n, res.Sent)
	}
}

// Headers sets each request's own headers, after the shared ones.
func TestPerRequestHeaders(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]bool{}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.Header.Get("X-User-ID")+"/"+r.Header.Get("X-Shared")] = true
		mu.Unlock()
	}))
	defer ts.Close()
	res := Run(context.Background(), Config{URL: ts.URL, Concurrency: 3, Requests: 30, Header: http.Header{"X-Shared": {"s"}},
		Headers: func(w, i int, h http.Header) { h.Set("X-User-ID", fmt.Sprintf("%d-%d", w, i)) }})
	if res.Succeeded != 30 || len(seen) != 30 {
		t.Fatalf("%s; %d distinct user/shared pairs, want 30: %v", res, len(seen), seen)
	}
	for k := range seen {
		if !strings.HasSuffix(k, "/s") {
			t.Fatalf("shared header lost: %q", k)
		}
	}
}

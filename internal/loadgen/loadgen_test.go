package loadgen

import (
	"context"
	"net/http"
	"net/http/httptest"
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
	if res.Quantile(0.5) <= 0 || res.Quantile(1) < res.Quantile(0.5) {
		t.Errorf("quantiles: p50 %s max %s", res.Quantile(.5), res.Quantile(1))
	}
}

func TestDurationBound(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer ts.Close()
	begin := time.Now()
	res := Run(context.Background(), Config{URL: ts.URL, Concurrency: 2, Duration: 200 * time.Millisecond})
	if d := time.Since(begin); d > 2*time.Second {
		t.Fatalf("a 200 ms load ran %s", d)
	}
	if res.Sent == 0 || res.Lost != 0 {
		t.Fatalf("%s", res)
	}
}

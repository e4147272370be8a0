// Package loadgen is the platform's own closed-loop HTTP load generator,
// used by `pilotlight bench` and `pilotlight loadtest`: N workers send
// requests back to back against loopback, bounded in time and count, and
// every request is accounted for (answered by status, or lost: sent with no
// response).
package loadgen

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes one load.
type Config struct {
	Method string // default POST when Body is set, else GET
	URL    string
	Body   func(worker, i int) []byte // nil: no body
	Header http.Header
	// Headers, when set, adds per-request headers (after Header): a user
	// id per request, say.
	Headers     func(worker, i int, h http.Header)
	Concurrency int
	Duration    time.Duration // stop after this long (0: only Requests bounds it)
	Requests    int           // stop after this many (0: only Duration bounds it)
	Timeout     time.Duration // per request, default 30s
	// Interval, when set, paces each worker to one request per Interval (open loop per worker).
	Interval time.Duration
}

// Result accounts for every request sent.
type Result struct {
	Sent      int
	Succeeded int // 2xx
	Status    map[int]int
	Lost      int // sent, no response (transport error or timeout)
	LostErrs  map[string]int
	Elapsed   time.Duration
	latencies []time.Duration // of answered requests, sorted
}

// RPS is answered requests per second.
func (r *Result) RPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Sent-r.Lost) / r.Elapsed.Seconds()
}

// Quantile of answered requests' latency (q in [0,1]).
func (r *Result) Quantile(q float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(r.latencies)))) - 1
	if i < 0 {
		i = 0
	}
	return r.latencies[i]
}

// Latencies returns the sorted latencies of answered requests.
func (r *Result) Latencies() []time.Duration { return r.latencies }

// Failed counts non-2xx answers by status.
func (r *Result) Failed() map[int]int {
	out := map[int]int{}
	for code, n := range r.Status {
		if code < 200 || code > 299 {
			out[code] = n
		}
	}
	return out
}

// Unanswered counts the requests that got no 2xx answer: lost ones (no
// answer at all) and those answered with another status.
func (r *Result) Unanswered() int {
	n := r.Lost
	for code, c := range r.Status {
		if code < 200 || code > 299 {
			n += c
		}
	}
	return n
}

func (r *Result) String() string {
	return fmt.Sprintf("sent %d, ok %d, failed %v, lost %d, %.0f req/s, p50 %s, p99 %s, max %s",
		r.Sent, r.Succeeded, r.Failed(), r.Lost, r.RPS(), r.Quantile(.5), r.Quantile(.99), r.Quantile(1))
}

// Merge adds o's accounting to r (latencies included).
func (r *Result) Merge(o *Result) {
	r.Sent += o.Sent
	r.Succeeded += o.Succeeded
	r.Lost += o.Lost
	if r.Status == nil {
		r.Status = map[int]int{}
	}
	if r.LostErrs == nil {
		r.LostErrs = map[string]int{}
	}
	for k, v := range o.Status {
		r.Status[k] += v
	}
	for k, v := range o.LostErrs {
		r.LostErrs[k] += v
	}
	r.Elapsed += o.Elapsed
	r.latencies = append(r.latencies, o.latencies...)
	sort.Slice(r.latencies, func(i, j int) bool { return r.latencies[i] < r.latencies[j] })
}

// NewClient is a keep-alive client sized for n concurrent requests, loopback only.
func NewClient(n int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        n * 2,
		MaxIdleConnsPerHost: n * 2,
		IdleConnTimeout:     60 * time.Second,
		DisableCompression:  true,
	}}
}

// Run sends the load and waits for every request to finish.
func Run(ctx context.Context, cfg Config) *Result {
	return RunWith(ctx, NewClient(cfg.Concurrency), cfg)
}

// RunWith sends the load with client.
func RunWith(ctx context.Context, client *http.Client, cfg Config) *Result {
	if cfg.Concurrency < 1 {
		cfg.Concurrency = 1
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	method := cfg.Method
	if method == "" {
		method = http.MethodGet
		if cfg.Body != nil {
			method = http.MethodPost
		}
	}
	// The window is measured from the instant its deadline is set from, so
	// Elapsed is never shorter than Duration.
	start := time.Now()
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, start.Add(cfg.Duration))
		defer cancel()
	}
	var issued atomic.Int64
	type local struct {
		status   map[int]int
		lostErrs map[string]int
		lat      []time.Duration
		sent     int
		lost     int
	}
	locals := make([]*local, cfg.Concurrency)
	var wg sync.WaitGroup
	for w := 0; w < cfg.Concurrency; w++ {
		l := &local{status: map[int]int{}, lostErrs: map[string]int{}}
		locals[w] = l
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			next := time.Now()
			for i := 0; ; i++ {
				if ctx.Err() != nil {
					return
				}
				if cfg.Requests > 0 && issued.Add(1) > int64(cfg.Requests) {
					return
				}
				if cfg.Interval > 0 {
					if d := time.Until(next); d > 0 {
						select {
						case <-time.After(d):
						case <-ctx.Done():
							return
						}
					}
					next = next.Add(cfg.Interval)
				}
				var body io.Reader
				if cfg.Body != nil {
					body = bytes.NewReader(cfg.Body(w, i))
				}
				// A request, once sent, is not cut short by the load's end:
				// only its own timeout can lose it.
				rctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
				req, err := http.NewRequestWithContext(rctx, method, cfg.URL, body)
				if err != nil {
					cancel()
					panic(err)
				}
				for k, vs := range cfg.Header {
					req.Header[k] = vs
				}
				if cfg.Headers != nil {
					cfg.Headers(w, i, req.Header)
				}
				if cfg.Body != nil && req.Header.Get("Content-Type") == "" {
					req.Header.Set("Content-Type", "application/json")
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				l.sent++
				if err != nil {
					cancel()
					l.lost++
					l.lostErrs[errClass(err)]++
					continue
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				cancel()
				if err != nil {
					l.lost++
					l.lostErrs[errClass(err)]++
					continue
				}
				l.lat = append(l.lat, time.Since(t0))
				l.status[resp.StatusCode]++
			}
		}(w)
	}
	wg.Wait()
	res := &Result{Status: map[int]int{}, LostErrs: map[string]int{}, Elapsed: time.Since(start)}
	for _, l := range locals {
		res.Sent += l.sent
		res.Lost += l.lost
		for k, v := range l.status {
			res.Status[k] += v
			if k >= 200 && k <= 299 {
				res.Succeeded += v
			}
		}
		for k, v := range l.lostErrs {
			res.LostErrs[k] += v
		}
		res.latencies = append(res.latencies, l.lat...)
	}
	sort.Slice(res.latencies, func(i, j int) bool { return res.latencies[i] < res.latencies[j] })
	return res
}

func errClass(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return ""
	case asNetErr(err, &ne) && ne.Timeout():
		return "timeout"
	}
	s := err.Error()
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

func asNetErr(err error, target *net.Error) bool {
	for err != nil {
		if ne, ok := err.(net.Error); ok {
			*target = ne
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

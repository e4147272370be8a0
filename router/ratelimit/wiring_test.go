package ratelimit_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	_ "github.com/pilotlight/pilotlight/functions/all" // the fraud and recommend handlers
	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/router"
	"github.com/pilotlight/pilotlight/router/auth"
	"github.com/pilotlight/pilotlight/router/ratelimit"
)

// upstream stands in for a runtime instance (the gates under test answer
// before any instance is reached); hold, when set, keeps requests in flight
// until it is closed.
type upstream struct {
	srv     *httptest.Server
	reached atomic.Int64
	hold    chan struct{}
	held    chan struct{}
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{held: make(chan struct{}, 16)}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		u.reached.Add(1)
		if u.hold != nil {
			u.held <- struct{}{}
			<-u.hold
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{}`)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

// Acquire implements router.Backend: every revision is the upstream.
func (u *upstream) Acquire(ctx context.Context, function, revision string) (router.Target, error) {
	return router.Target{BaseURL: u.srv.URL, Release: func(bool) {}}, nil
}

// TestWiring checks the router's own middleware order, through router.New
// with Keys, RateLimit and Concurrency set: authentication answers 401/403
// before the per-key rate limit spends a token, the key's own burst applies,
// and the per-function concurrency cap sheds what exceeds it.
func TestWiring(t *testing.T) {
	const (
		limitedKey = "pl_wiring-test-limited-key-0123456789abcdefgh"
		openKey    = "pl_wiring-test-default-key-0123456789abcdefgh"
		burst      = 2
	)
	keys, err := auth.Parse([]byte(`{"keys":[
		{"id":"limited","hash":"`+auth.Sum(limitedKey)+`","functions":["fraud"],"rate":{"rps":0.001,"burst":2}},
		{"id":"open","hash":"`+auth.Sum(openKey)+`","functions":["*"]}]}`), "wiring")
	if err != nil {
		t.Fatal(err)
	}
	fns := testbin.Functions(t, "fraud", "recommend")
	clk := newClock() // never advanced: a spent token does not come back
	lim := ratelimit.New(ratelimit.Config{RPS: 1000, Burst: 1000, Now: clk.Now})
	conc := ratelimit.NewConcurrencyLimiter(ratelimit.ConcurrencyConfig{Max: 1})
	up := newUpstream(t)
	rt, err := router.New(router.Config{Functions: fns, Backend: up, Keys: keys, RateLimit: lim, Concurrency: conc,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	srv := httptest.NewServer(rt.Handler())
	defer srv.Close()

	send := func(key, fn string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", srv.URL+"/functions/"+fn, strings.NewReader(`{}`))
		if key != "" {
			req.Header.Set("X-API-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body.Error
	}
	expect := func(step, key, fn string, want int) {
		t.Helper()
		if got, msg := send(key, fn); got != want {
			t.Fatalf("%s: %s -> %s answered %d (%q), want %d", step, key, fn, got, msg, want)
		}
	}

	expect("no key", "", "fraud", http.StatusUnauthorized)
	// Refused keys must not spend the key's tokens: more 403s than the burst.
	for i := 0; i < 2*burst+1; i++ {
		expect("key without the function", limitedKey, "recommend", http.StatusForbidden)
	}
	if n := up.reached.Load(); n != 0 {
		t.Fatalf("%d requests reached an instance past 401/403", n)
	}
	for i := 0; i < burst; i++ {
		expect("within the key's burst", limitedKey, "fraud", http.StatusOK)
	}
	if code, msg := send(limitedKey, "fraud"); code != http.StatusTooManyRequests || !strings.Contains(msg, `key "limited"`) {
		t.Fatalf("past the key's burst (its own 2, not the default 1000): %d %q, want 429 with an error naming the key", code, msg)
	}
	expect("another key's bucket", openKey, "fraud", http.StatusOK)
	if n := lim.Len(); n != 2 {
		t.Fatalf("%d token buckets, want 2 (401 and 403 must not create one)", n)
	}

	// The concurrency cap: one fraud request held in the instance, the next
	// fraud request is shed, a recommend request is not.
	up.hold = make(chan struct{})
	release := sync.OnceFunc(func() { close(up.hold) })
	defer release() // a failure below must not leave the server waiting on held requests
	done := make(chan int, 1)
	go func() { code, _ := send(openKey, "fraud"); done <- code }()
	<-up.held
	// Authentication still answers first while the cap is reached.
	expect("no key while fraud is at its cap", "", "fraud", http.StatusUnauthorized)
	code, msg := send(openKey, "fraud")
	if code != http.StatusServiceUnavailable || msg == "" {
		t.Fatalf("second fraud request while one is in flight: %d %q, want 503 with a message", code, msg)
	}
	go func() { code, _ := send(openKey, "recommend"); done <- code }()
	<-up.held // recommend reached its instance: the cap is per function
	release()
	for i := 0; i < 2; i++ {
		if code := <-done; code != http.StatusOK {
			t.Fatalf("held request answered %d, want 200", code)
		}
	}
}

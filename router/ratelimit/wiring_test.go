package ratelimit_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/pilotlight/pilotlight/router/auth"
	"github.com/pilotlight/pilotlight/router/ratelimit"
)

// TestWiring runs the order the router is meant to use — recover, auth,
// per-key rate, per-function concurrency — and checks each gate answers
// before the next one spends anything.
func TestWiring(t *testing.T) {
	const (
		limitedKey = "pl_wiring-test-limited-key-0123456789abcdefgh"
		openKey    = "pl_wiring-test-default-key-0123456789abcdefgh"
	)
	keys, err := auth.Parse([]byte(`{"keys":[
		{"id":"limited","hash":"`+auth.Sum(limitedKey)+`","functions":["fraud"],"rate":{"rps":0.001,"burst":2}},
		{"id":"open","hash":"`+auth.Sum(openKey)+`","functions":["*"]}]}`), "wiring")
	if err != nil {
		t.Fatal(err)
	}
	clk := newClock()
	lim := ratelimit.New(ratelimit.Config{RPS: 1000, Burst: 1000, Now: clk.Now})
	conc := ratelimit.NewConcurrencyLimiter(ratelimit.ConcurrencyConfig{Max: 1})
	e := echo.New()
	e.HTTPErrorHandler = routerErrors
	e.Use(middleware.Recover(), keys.Middleware(auth.FunctionParam), lim.Middleware(auth.KeyID, auth.RateOf), conc.Middleware(auth.FunctionParam))
	e.POST("/functions/:function", func(c echo.Context) error { return c.NoContent(http.StatusOK) })

	send := func(key, fn string) int {
		req := httptest.NewRequest("POST", "/functions/"+fn, nil)
		if key != "" {
			req.Header.Set("X-API-Key", key)
		}
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		return rec.Code
	}
	steps := []struct {
		key, fn string
		want    int
	}{
		{"", "fraud", 401},
		{limitedKey, "recommend", 403}, // refused before it costs a token
		{limitedKey, "fraud", 200},
		{limitedKey, "fraud", 200},
		{limitedKey, "fraud", 429}, // the key's own burst of 2, not the default 1000
		{openKey, "fraud", 200},    // another key's bucket
		{openKey, "recommend", 200},
	}
	for i, s := range steps {
		if got := send(s.key, s.fn); got != s.want {
			t.Fatalf("step %d (%s -> %s): %d, want %d", i, s.key, s.fn, got, s.want)
		}
	}
	if n := lim.Len(); n != 2 {
		t.Fatalf("%d buckets, want 2 (401 and 403 must not create one)", n)
	}
}

package router

import (
	"net"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/pilotlight/pilotlight/router/auth"
)

// HeaderRequestID names a prediction on the function routes (the V2 routes
// also take the body's "id"): an outcome posted later names it.
const HeaderRequestID = "X-Request-Id"

// Recorder keeps predictions so that outcomes posted later (labels: a
// chargeback, a click) can be joined to them; the rollout side's outcome
// store satisfies it. Records is asked first, per request, and must be
// cheap: when it says no, the data path does nothing more (no copy, no
// allocation). Record runs on the request's goroutine for each buffered
// 200 answer, before it is written: the slices are reused after it
// returns, so it copies what it keeps.
type Recorder interface {
	Records(function string) bool
	Record(call PredictionCall)
}

// PredictionCall is one answered request, as Recorder sees it.
type PredictionCall struct {
	Function, Revision string
	V2                 bool   // a /v2/models/... request: Body and Response are V2 REST JSON
	RequestID          string // the X-Request-Id header ("" when absent)
	TargetingKey       string // the request's targeting key (TargetingKey), "" when it had none
	Body               []byte // valid during the call only
	Response           []byte // valid during the call only
}

// DataRoute serves h for method and path (echo's path syntax, with the
// function in :model or :function) on the data listener, behind the data
// path's key rules: a key that may call the function (403 otherwise, 401
// without one), spending a token of the key's rate. For endpoints that
// belong to a function but are not inference (outcomes).
func (rt *Router) DataRoute(method, path string, h echo.HandlerFunc) {
	rt.echo.Add(method, path, h, rt.spendRate)
}

// spendRate takes a token of the caller's rate, as admit does for the
// data path (authentication already ran, in the echo middleware).
func (rt *Router) spendRate(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if rt.cfg.RateLimit == nil {
			return next(c)
		}
		var keyID string
		var rps float64
		var burst int
		if id, ok := auth.IdentityOf(c); ok {
			keyID = id.ID
			if id.Rate != nil {
				rps, burst = id.Rate.RPS, id.Rate.Burst
			}
		}
		ip, _, err := net.SplitHostPort(c.Request().RemoteAddr)
		if err != nil {
			ip = c.Request().RemoteAddr
		}
		if r := rt.cfg.RateLimit.Check(keyID, ip, rps, burst); r != nil {
			return &httpErr{code: r.Status, msg: r.Msg, retry: strconv.Itoa(r.RetryAfter)}
		}
		return next(c)
	}
}

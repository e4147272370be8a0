package router

import (
	"net/http"
	"strconv"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/router/auth"
	"github.com/pilotlight/pilotlight/router/ratelimit"
)

// admission is the protocol-neutral view of a data-path request that the
// admission pipeline decides on. The fasthttp front door, the net/http
// adapter and the gRPC side each fill one in from their own request and
// translate admit's answer back (an HTTP status, or the gRPC code
// CodeForHTTP gives it): they decide nothing themselves, so the same
// request gets the same decision over every protocol.
type admission struct {
	authorization string // the Authorization header (gRPC: metadata)
	apiKey        string // X-API-Key
	remoteIP      string // the client's address, for the anonymous rate limit
	function      string // the function the request names
	wantMethod    string // the method the request's route takes ("": any) ...
	otherMethod   bool   // ... and the request was sent with another
	path          []byte // for the 405's message (not copied unless refused)
	bodyBytes     int64
	// malformed is set when the request could not be read far enough to
	// name a function (a gRPC message that does not parse): answered after
	// authentication, so a caller without a key learns nothing from it.
	malformed error
}

// admit runs the gates in their one order: authenticate the key; the
// function named and allowed to the key (a refusal spends no token); spend
// a token of the key's rate; the function known; the route's method; the
// function's body limit; a slot of its concurrency cap. It returns the function and the slot to release when the request
// is done, or the refusal (a StatusError) to answer with.
//
// What a caller learns about functions it may not call is decided here,
// once: a key limited to some functions gets the same 403 for a name that
// does not exist as for a function it may not call, so it cannot probe
// which functions exist; a key that may call every function (or any caller
// with authentication off) is told a name is unknown (404).
func (rt *Router) admit(a *admission) (*functions.Manifest, ratelimit.Slot, error) {
	var id *auth.Identity
	if rt.cfg.Keys != nil {
		var d *auth.Denial
		if id, d = rt.cfg.Keys.Authorize(a.authorization, a.apiKey, ""); d != nil {
			return nil, ratelimit.Slot{}, d
		}
	}
	if a.malformed != nil {
		return nil, ratelimit.Slot{}, a.malformed
	}
	if id != nil && !id.Allows(a.function) {
		return nil, ratelimit.Slot{}, &auth.Denial{Status: http.StatusForbidden, Msg: "key " + strconv.Quote(id.ID) + " may not call function " + strconv.Quote(a.function)}
	}
	if rt.cfg.RateLimit != nil {
		var keyID string
		var rps float64
		var burst int
		if id != nil {
			keyID = id.ID
			if id.Rate != nil {
				rps, burst = id.Rate.RPS, id.Rate.Burst
			}
		}
		if r := rt.cfg.RateLimit.Check(keyID, a.remoteIP, rps, burst); r != nil {
			return nil, ratelimit.Slot{}, &httpErr{code: r.Status, msg: r.Msg, retry: strconv.Itoa(r.RetryAfter)}
		}
	}
	fn := rt.fns[a.function]
	if fn == nil {
		return nil, ratelimit.Slot{}, errorf(http.StatusNotFound, "unknown function %q", a.function)
	}
	if a.wantMethod != "" && a.otherMethod {
		return nil, ratelimit.Slot{}, &methodErr{httpErr{code: http.StatusMethodNotAllowed, msg: string(a.path) + " takes " + a.wantMethod}, a.wantMethod}
	}
	if limit := fn.Runtime.MaxBodyBytes; a.bodyBytes > limit {
		return nil, ratelimit.Slot{}, errorf(http.StatusRequestEntityTooLarge, "request body larger than %d bytes (function %s's runtime.maxBodyBytes)", limit, fn.Name)
	}
	var slot ratelimit.Slot
	if rt.cfg.Concurrency != nil {
		var r *ratelimit.Refusal
		if slot, r = rt.cfg.Concurrency.Enter(fn.Name); r != nil {
			return nil, ratelimit.Slot{}, &httpErr{code: r.Status, msg: r.Msg, shed: true, retry: strconv.Itoa(r.RetryAfter)}
		}
	}
	return fn, slot, nil
}

// methodErr is a 405, with the method the route takes for the Allow header.
type methodErr struct {
	httpErr
	allow string
}

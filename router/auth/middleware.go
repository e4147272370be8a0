package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"path"
	"strings"

	"github.com/labstack/echo/v4"
)

// ContextKey is where Middleware stores the caller's *Identity in the echo.Context.
const ContextKey = "pilotlight.key"

// Challenge is the WWW-Authenticate value sent with every 401.
const Challenge = `Bearer realm="pilotlight"`

// publicPaths answer without a key: liveness and readiness probes (kubelet,
// load balancers) and the KServe V2 server metadata, which names no model.
var publicPaths = map[string]bool{
	"/healthz":          true,
	"/v2":               true,
	"/v2/health/live":   true,
	"/v2/health/ready":  true,
	"/v2/health/live/":  true,
	"/v2/health/ready/": true,
}

// IsAdminPath reports whether p is an admin endpoint (/admin, /admin/*, /metrics).
func IsAdminPath(p string) bool {
	p = cleanPath(p)
	return p == "/metrics" || p == "/admin" || strings.HasPrefix(p, "/admin/")
}

// IsPublicPath reports whether p answers without a key.
func IsPublicPath(p string) bool { return publicPaths[p] }

func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	c := path.Clean("/" + p)
	return c
}

// FunctionParam is the functionOf the router wants: the :function path
// parameter of POST /functions/:function, else the :model of the KServe V2
// routes. Middleware registered with e.Use runs after routing, so both are set.
func FunctionParam(c echo.Context) string {
	if fn := c.Param("function"); fn != "" {
		return fn
	}
	return c.Param("model")
}

// Middleware authenticates every request except the public probes:
//
//   - no key, or a key that matches none: 401 with WWW-Authenticate;
//   - /admin/* and /metrics: 403 unless the key has admin: true;
//   - a request for function F (functionOf(c) == F): 403 unless the key lists F or "*";
//   - any other path (an unknown route): authenticated is enough, the router answers 404.
//
// The caller's identity is stored under ContextKey; see KeyID and RateOf.
// Errors are *echo.HTTPError so the router's HTTPErrorHandler renders {"error": ...}.
func (k *Keys) Middleware(functionOf func(echo.Context) string) echo.MiddlewareFunc {
	if functionOf == nil {
		functionOf = FunctionParam
	}
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			r := c.Request()
			// Classify by both the matched route and the decoded URL path, so
			// "//admin/x", "/a/../admin/x" or "%2561dmin" cannot dodge the admin check.
			admin := IsAdminPath(c.Path()) || IsAdminPath(r.URL.Path)
			if !admin && IsPublicPath(r.URL.Path) && (c.Path() == "" || IsPublicPath(c.Path())) {
				return next(c)
			}
			id, err := k.Authorize(r.Header.Get(echo.HeaderAuthorization), r.Header.Get(HeaderAPIKey), "")
			if err != nil {
				return deny(c, err)
			}
			c.Set(ContextKey, id)
			if admin {
				if !id.Admin {
					return echo.NewHTTPError(http.StatusForbidden, fmt.Sprintf("key %q is not an admin key; %s needs a key with admin: true", id.ID, cleanPath(r.URL.Path)))
				}
				return next(c)
			}
			if fn := functionOf(c); fn != "" && !id.Allows(fn) {
				return echo.NewHTTPError(http.StatusForbidden, fmt.Sprintf("key %q may not call function %q", id.ID, fn))
			}
			return next(c)
		}
	}
}

// HeaderAPIKey is the other header a key may come in (besides Authorization: Bearer).
const HeaderAPIKey = "X-API-Key"

// Denial is a refused request: its status, the reason, and the
// WWW-Authenticate challenge a 401 carries.
type Denial struct {
	Status    int
	Msg       string
	Challenge string // "" unless Status is 401
}

func (d *Denial) Error() string   { return d.Msg }
func (d *Denial) HTTPStatus() int { return d.Status }
func (d *Denial) WWWAuth() string { return d.Challenge }

func deny(c echo.Context, d *Denial) error {
	if d.Challenge != "" {
		c.Response().Header().Set(echo.HeaderWWWAuthenticate, d.Challenge)
	}
	return echo.NewHTTPError(d.Status, d.Msg)
}

// Authorize checks the key presented in the Authorization and X-API-Key
// header values against the keys, and, when function is not "", that the
// key may call it. It is the check Middleware makes, for front doors that
// are not echo (the router's fast path).
func (k *Keys) Authorize(authorization, apiKey, function string) (*Identity, *Denial) {
	presented, err := presentedKey(authorization, apiKey)
	if err != nil {
		return nil, &Denial{http.StatusUnauthorized, err.Error(), Challenge + `, error="invalid_request"`}
	}
	if presented == "" {
		return nil, &Denial{http.StatusUnauthorized, "missing API key: send Authorization: Bearer <key> or X-API-Key: <key>", Challenge}
	}
	id := k.lookup(presented)
	if id == nil {
		return nil, &Denial{http.StatusUnauthorized, "invalid API key", Challenge + `, error="invalid_token"`}
	}
	if function != "" && !id.Allows(function) {
		return id, &Denial{Status: http.StatusForbidden, Msg: fmt.Sprintf("key %q may not call function %q", id.ID, function)}
	}
	return id, nil
}

// presentedKey reads the key from Authorization: Bearer or X-API-Key.
// Both may be sent only if they agree.
func presentedKey(authorization, apiKeyHeader string) (string, error) {
	var bearer string
	if h := authorization; h != "" {
		scheme, rest, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return "", fmt.Errorf("authorization header must be %q", "Bearer <key>")
		}
		bearer = strings.TrimSpace(rest)
		if bearer == "" {
			return "", fmt.Errorf("authorization header must be %q", "Bearer <key>")
		}
	}
	apiKey := strings.TrimSpace(apiKeyHeader)
	switch {
	case bearer != "" && apiKey != "" && subtle.ConstantTimeCompare([]byte(bearer), []byte(apiKey)) != 1:
		return "", fmt.Errorf("authorization and X-API-Key carry different keys; send one")
	case bearer != "":
		apiKey = bearer
	}
	if len(apiKey) > MaxKeyBytes {
		return "", fmt.Errorf("API key longer than %d bytes", MaxKeyBytes)
	}
	return apiKey, nil
}

// lookup hashes the presented key and compares the hash with every stored
// hash in constant time, without stopping at a match, so the time taken
// says nothing about which key (or how much of a hash) matched.
func (k *Keys) lookup(presented string) *Identity {
	sum := sha256.Sum256([]byte(presented))
	match := -1
	for i := range k.sums {
		eq := subtle.ConstantTimeCompare(sum[:], k.sums[i][:])
		match = subtle.ConstantTimeSelect(eq, i, match)
	}
	if match < 0 {
		return nil
	}
	return k.ids[match]
}

// Identify returns the identity of a presented key, or nil (for callers
// outside HTTP, such as tests and tools).
func (k *Keys) Identify(presented string) *Identity {
	if presented == "" || len(presented) > MaxKeyBytes {
		return nil
	}
	return k.lookup(presented)
}

// IdentityOf returns the identity Middleware stored, if any.
func IdentityOf(c echo.Context) (*Identity, bool) {
	id, ok := c.Get(ContextKey).(*Identity)
	return id, ok && id != nil
}

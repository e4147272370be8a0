// Package router is the platform's front door: it resolves a request to a
// function (path or Host header, as Knative does), lets the function's flag
// pick the revision, asks the backend (the local engine, or Knative) for a
// ready instance — held by the activator while one starts — and proxies to
// it over pooled loopback connections, retrying once elsewhere if the
// instance dies mid-request. It also serves /metrics, /healthz and
// GET /admin/functions.
package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/propagation"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/router/auth"
	"github.com/pilotlight/pilotlight/router/ratelimit"
	"github.com/pilotlight/pilotlight/router/rollout"
	"github.com/pilotlight/pilotlight/telemetry"
)

// Defaults for Config's zero fields.
const (
	DefaultRequestTimeout = 30 * time.Second
	DefaultMaxBodyBytes   = functions.DefaultMaxBodyBytes
)

// countedKey marks a request the proxy counts in pilotlight_requests_total itself.
const countedKey = "pilotlight.counted"

// ShedHeader marks a 503/429 answered on purpose to shed load.
const ShedHeader = "X-Pilotlight-Shed"

// Target is where one request goes: an instance's base URL (no trailing
// slash), how long the request waited for a cold start, and how to give
// the instance back (failed: it could not be reached).
type Target struct {
	BaseURL   string
	ColdStart time.Duration
	Release   func(failed bool)
}

// Backend finds a ready instance of a revision, waiting (bounded by ctx)
// while one starts. The local engine and the Knative backend satisfy it.
type Backend interface {
	Acquire(ctx context.Context, function, revision string) (Target, error)
}

// Picker chooses the revision that serves a request (the flags integration
// satisfies it); Weights reports the configured split for the admin view.
type Picker interface {
	Pick(fn *functions.Manifest, r *http.Request, body []byte) (string, error)
	Weights(fn *functions.Manifest) map[string]int
}

// StatusError lets a backend choose the HTTP status of its error.
type StatusError interface {
	error
	HTTPStatus() int
}

// Config configures the router.
type Config struct {
	Functions      []*functions.Manifest
	Backend        Backend
	Picker         Picker // nil: DefaultPicker
	RequestTimeout time.Duration
	Registry       *prometheus.Registry
	Logger         *slog.Logger
	// Admin, when set, adds extra per-revision detail to GET /admin/functions.
	Admin AdminSource
	// Rollouts, when set, serves /admin/rollouts (the canary controller).
	Rollouts *rollout.Controller
	// Keys turns authentication on (nil: off, local development only).
	Keys *auth.Keys
	// RateLimit limits requests per key (nil: no limit).
	RateLimit *ratelimit.Limiter
	// Concurrency caps requests in flight per function (nil: no cap).
	Concurrency *ratelimit.ConcurrencyLimiter
	// SeparateAdmin moves /metrics and /admin/* off the main handler to AdminHandler.
	SeparateAdmin bool
	// Telemetry turns tracing on (nil: off); see tracing.go.
	Telemetry *telemetry.Telemetry
}

// AdminSource supplies what the admin view shows beyond weights.
type AdminSource interface {
	AdminRevisions() map[string]any // "function/revision" → detail (instances, queue, cold starts)
	AdminExtra() map[string]any     // top-level additions (warm pool, probes)
}

// Router is the front door.
type Router struct {
	cfg       Config
	log       *slog.Logger
	echo      *echo.Echo
	admin     *echo.Echo // nil unless SeparateAdmin
	fns       map[string]*functions.Manifest
	transport *http.Transport
	m         *metrics
	bufs      sync.Pool // request bodies
	copyBufs  sync.Pool // response copies: io.Copy would allocate 32 KiB per request
	tr        *tracing  // nil: tracing off
}

// New builds the router.
func New(cfg Config) (*Router, error) {
	if cfg.Backend == nil {
		return nil, errors.New("router needs a backend")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.Picker == nil {
		cfg.Picker = DefaultPicker{}
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	rt := &Router{cfg: cfg, log: cfg.Logger, fns: map[string]*functions.Manifest{}, m: newMetrics(cfg.Registry), tr: newTracing(cfg)}
	for _, fn := range cfg.Functions {
		rt.fns[fn.Name] = fn
	}
	rt.transport = &http.Transport{
		Proxy:               nil, // loopback only: never through an environment proxy
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	rt.bufs.New = func() any { return new(bytes.Buffer) }
	rt.copyBufs.New = func() any { b := make([]byte, 8<<10); return &b }
	rt.echo = rt.routes()
	return rt, nil
}

// Handler is the router's http.Handler.
func (rt *Router) Handler() http.Handler { return rt.echo }

// AdminHandler serves /metrics, /admin/* and /healthz when SeparateAdmin is
// set (nil otherwise: they are on Handler).
func (rt *Router) AdminHandler() http.Handler {
	if rt.admin == nil {
		return nil
	}
	return rt.admin
}

// Close releases idle upstream connections.
func (rt *Router) Close() { rt.transport.CloseIdleConnections() }

func (rt *Router) newEcho() *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = rt.httpError
	return e
}

// routes builds the handler. Middleware order, outermost first: host
// routing rewrites the path before routing; recover wraps everything;
// authentication answers 401/403 before any limit spends a token; the
// per-key rate limit; the per-function concurrency cap; then the proxy.
func (rt *Router) routes() *echo.Echo {
	e := rt.newEcho()
	e.Pre(rt.hostRouting)
	e.Use(middleware.Recover())
	if rt.cfg.Keys != nil {
		e.Use(rt.cfg.Keys.Middleware(auth.FunctionParam))
	}
	if rt.cfg.RateLimit != nil {
		e.Use(rt.cfg.RateLimit.Middleware(auth.KeyID, auth.RateOf))
	}
	if rt.cfg.Concurrency != nil {
		e.Use(rt.cfg.Concurrency.Middleware(auth.FunctionParam))
	}

	admin := e
	if rt.cfg.SeparateAdmin {
		rt.admin = rt.newEcho()
		rt.admin.Use(middleware.Recover())
		admin = rt.admin
	}
	for _, a := range []*echo.Echo{e, admin} {
		a.GET("/healthz", func(c echo.Context) error { return c.JSON(http.StatusOK, map[string]string{"status": "ok"}) })
		if a == e && rt.admin != nil {
			continue
		}
		a.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(rt.cfg.Registry, promhttp.HandlerOpts{EnableOpenMetrics: true})))
		a.GET("/admin/functions", rt.adminFunctions)
		if rt.cfg.Rollouts != nil {
			a.GET("/admin/rollouts", rt.listRollouts)
			a.POST("/admin/rollouts", rt.startRollout)
			a.GET("/admin/rollouts/:function", rt.rolloutStatus)
			a.DELETE("/admin/rollouts/:function", rt.abortRollout)
		}
	}

	e.GET("/v2", func(c echo.Context) error {
		return c.JSON(http.StatusOK, map[string]any{"name": "pilotlight", "version": "router", "extensions": []string{}})
	})
	e.GET("/v2/health/live", func(c echo.Context) error { return c.JSON(http.StatusOK, map[string]bool{"live": true}) })
	e.GET("/v2/health/ready", func(c echo.Context) error { return c.JSON(http.StatusOK, map[string]bool{"ready": true}) })

	e.POST("/functions/:function", rt.proxy(kindFunction))
	for _, p := range []string{"/v2/models/:model", "/v2/models/:model/ready", "/v2/models/:model/versions/:version", "/v2/models/:model/versions/:version/ready"} {
		e.GET(p, rt.proxy(kindV2))
	}
	e.POST("/v2/models/:model/infer", rt.proxy(kindV2))
	e.POST("/v2/models/:model/versions/:version/infer", rt.proxy(kindV2))
	return e
}

// hostRouting sends POST / with Host "<function>.<anything>" to the function, as Knative routes by host.
func (rt *Router) hostRouting(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		if r.URL.Path == "/" {
			host := r.Host
			if h, _, err := net.SplitHostPort(host); err == nil {
				host = h
			}
			if name, _, ok := strings.Cut(host, "."); ok {
				if _, known := rt.fns[name]; known {
					r.URL.Path = "/functions/" + name
				}
			}
		}
		return next(c)
	}
}

type kind int

const (
	kindFunction kind = iota
	kindV2
)

// httpError writes {"error": ...} with the right status for every error.
func (rt *Router) httpError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	code, msg := http.StatusInternalServerError, err.Error()
	var he *echo.HTTPError
	var se StatusError
	switch {
	case errors.As(err, &se):
		code = se.HTTPStatus()
	case errors.As(err, &he):
		code = he.Code
		if m, ok := he.Message.(string); ok {
			msg = m
		} else {
			msg = http.StatusText(code)
		}
	}
	if code == http.StatusServiceUnavailable || code == http.StatusTooManyRequests {
		if c.Response().Header().Get("Retry-After") == "" {
			c.Response().Header().Set("Retry-After", "1")
		}
	}
	var shed interface{ Shed() bool }
	if errors.As(err, &shed) && shed.Shed() {
		// Deliberate overload shedding, as opposed to a failure.
		c.Response().Header().Set(ShedHeader, "overload")
	}
	if code >= 500 && code != http.StatusServiceUnavailable {
		rt.log.Warn("request failed", "path", c.Request().URL.Path, "status", code, "err", err)
	}
	if code == http.StatusInternalServerError && se == nil && he == nil {
		msg = "internal error; the platform log has the details" // a panic's value is not the client's business
	}
	// Requests refused before the proxy (auth, rate, concurrency, unknown
	// function) are counted here; the proxy counts what it answers itself.
	if c.Get(countedKey) == nil {
		if fn := auth.FunctionParam(c); fn != "" {
			if _, known := rt.fns[fn]; known {
				rt.m.requests.WithLabelValues(fn, "", strconv.Itoa(code)).Inc()
			}
		}
	}
	_ = c.JSON(code, map[string]string{"error": msg})
}

// errorf makes an error with an HTTP status.
func errorf(code int, format string, args ...any) error {
	return echo.NewHTTPError(code, fmt.Sprintf(format, args...))
}

func (rt *Router) proxy(k kind) echo.HandlerFunc {
	return rt.traceRequest(func(c echo.Context) error {
		start := time.Now()
		name := c.Param("function")
		if k == kindV2 {
			name = c.Param("model")
		}
		fn, ok := rt.fns[name]
		if !ok {
			return errorf(http.StatusNotFound, "unknown function %q", name)
		}
		buf := rt.bufs.Get().(*bytes.Buffer)
		buf.Reset()
		defer rt.bufs.Put(buf)
		if c.Request().Method == http.MethodPost {
			limit := fn.Runtime.MaxBodyBytes
			if c.Request().ContentLength > limit {
				return errorf(http.StatusRequestEntityTooLarge, "request body larger than %d bytes (function %s's runtime.maxBodyBytes)", limit, fn.Name)
			}
			n, err := buf.ReadFrom(io.LimitReader(c.Request().Body, limit+1))
			if err != nil {
				return errorf(http.StatusBadRequest, "reading request body: %v", err)
			}
			if n > limit {
				return errorf(http.StatusRequestEntityTooLarge, "request body larger than %d bytes (function %s's runtime.maxBodyBytes)", limit, fn.Name)
			}
		}
		body := buf.Bytes()
		revision := c.Param("version")
		if revision != "" {
			if _, ok := fn.Revision(revision); !ok {
				return errorf(http.StatusNotFound, "function %s has no revision %q", fn.Name, revision)
			}
		} else {
			var err error
			if revision, err = rt.cfg.Picker.Pick(fn, c.Request(), body); err != nil {
				return err
			}
		}
		c.Set(countedKey, true)
		code := rt.forward(c, fn, revision, k, body)
		rt.m.requests.WithLabelValues(fn.Name, revision, strconv.Itoa(code)).Inc()
		telemetry.Observe(c.Request().Context(), rt.m.duration.WithLabelValues(fn.Name, revision), time.Since(start).Seconds())
		return nil
	})
}

// forward acquires an instance and proxies, retrying once on another
// instance when the first could not be reached. It writes the response
// (or the error) itself and returns the status sent.
func (rt *Router) forward(c echo.Context, fn *functions.Manifest, revision string, k kind, body []byte) int {
	ctx, cancel := context.WithTimeout(c.Request().Context(), rt.cfg.RequestTimeout)
	defer cancel()
	var lastErr error
	var cold time.Duration
	for attempt := 0; attempt < 2; attempt++ {
		wait := rt.tr.startWait(ctx, fn.Name, revision)
		t, err := rt.cfg.Backend.Acquire(ctx, fn.Name, revision)
		rt.tr.endWait(ctx, wait, fn.Name, revision, t, err)
		if err != nil {
			return rt.fail(c, rt.acquireError(ctx, c, fn, revision, err))
		}
		cold += t.ColdStart
		ps := rt.tr.startProxy(ctx, propagation.HeaderCarrier(c.Request().Header), t.BaseURL)
		resp, err := rt.send(ctx, c.Request(), t.BaseURL, k, body)
		if err != nil {
			rt.tr.endProxy(ps, 0, err)
			// The request's own deadline or the client going away says
			// nothing about the instance; only a connection failure does.
			t.Release(ctx.Err() == nil)
			lastErr = err
			if ctx.Err() != nil {
				break
			}
			rt.m.retries.WithLabelValues(fn.Name, revision).Inc()
			rt.log.Warn("instance unreachable; retrying once on another instance", "function", fn.Name, "revision", revision, "err", err)
			continue
		}
		h := c.Response().Header()
		for key, vs := range resp.Header {
			if hopHeaders[key] {
				continue
			}
			h[key] = vs
		}
		h.Set("X-Pilotlight-Revision", revision)
		if cold > 0 {
			h.Set("X-Pilotlight-Cold-Start", strconv.FormatFloat(cold.Seconds(), 'f', 6, 64))
		}
		c.Response().WriteHeader(resp.StatusCode)
		cb := rt.copyBufs.Get().(*[]byte)
		_, copyErr := io.CopyBuffer(c.Response(), resp.Body, *cb)
		rt.copyBufs.Put(cb)
		resp.Body.Close()
		rt.tr.endProxy(ps, resp.StatusCode, copyErr)
		t.Release(false)
		if copyErr != nil {
			rt.log.Debug("copying response", "err", copyErr)
		}
		return resp.StatusCode
	}
	if ctx.Err() != nil {
		return rt.fail(c, rt.acquireError(ctx, c, fn, revision, ctx.Err()))
	}
	return rt.fail(c, errorf(http.StatusBadGateway, "revision %s/%s: instance unreachable twice: %v", fn.Name, revision, lastErr))
}

func (rt *Router) fail(c echo.Context, err error) int {
	rt.httpError(err, c)
	return c.Response().Status
}

func (rt *Router) acquireError(ctx context.Context, c echo.Context, fn *functions.Manifest, revision string, err error) error {
	var se StatusError
	switch {
	case errors.As(err, &se):
		return err
	case c.Request().Context().Err() != nil:
		return errorf(499, "client closed the request")
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
		return errorf(http.StatusGatewayTimeout, "revision %s/%s: no instance became ready within the request timeout %s", fn.Name, revision, rt.cfg.RequestTimeout)
	}
	return err
}

var hopHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true, "Proxy-Authorization": true,
	"Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true, "Content-Length": true,
}

func (rt *Router) send(ctx context.Context, in *http.Request, base string, k kind, body []byte) (*http.Response, error) {
	path := in.URL.Path
	if k == kindFunction {
		path = "/" // Knative style: an instance takes the function's JSON at POST /
	}
	out, err := http.NewRequestWithContext(ctx, in.Method, base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	out.URL.RawQuery = in.URL.RawQuery
	for key, vs := range in.Header {
		if !hopHeaders[key] {
			out.Header[key] = vs
		}
	}
	out.ContentLength = int64(len(body))
	return rt.transport.RoundTrip(out)
}

// DefaultPicker routes every request to the revision tagged "stable", else the newest.
type DefaultPicker struct{}

// Pick implements Picker.
func (DefaultPicker) Pick(fn *functions.Manifest, _ *http.Request, _ []byte) (string, error) {
	return DefaultRevision(fn), nil
}

// Weights implements Picker.
func (DefaultPicker) Weights(fn *functions.Manifest) map[string]int {
	return map[string]int{DefaultRevision(fn): 100}
}

// DefaultRevision is the revision tagged stable, else the newest.
func DefaultRevision(fn *functions.Manifest) string {
	for _, r := range fn.Revisions {
		if r.Tag == "stable" {
			return r.Name
		}
	}
	return fn.Revisions[len(fn.Revisions)-1].Name
}

func (rt *Router) adminFunctions(c echo.Context) error {
	var detail, extra map[string]any
	if rt.cfg.Admin != nil {
		detail, extra = rt.cfg.Admin.AdminRevisions(), rt.cfg.Admin.AdminExtra()
	}
	type revOut struct {
		Name   string `json:"name"`
		Weight int    `json:"weight"`
		Tag    string `json:"tag,omitempty"`
		any
	}
	fnsOut := make([]map[string]any, 0, len(rt.cfg.Functions))
	for _, fn := range rt.cfg.Functions {
		weights := rt.cfg.Picker.Weights(fn)
		revs := make([]map[string]any, 0, len(fn.Revisions))
		for _, r := range fn.Revisions {
			o := map[string]any{"name": r.Name, "weight": weights[r.Name], "instances": []any{}}
			if r.Tag != "" {
				o["tag"] = r.Tag
			}
			if d, ok := detail[fn.Name+"/"+r.Name].(map[string]any); ok {
				for k, v := range d {
					o[k] = v
				}
			}
			revs = append(revs, o)
		}
		fnsOut = append(fnsOut, map[string]any{"name": fn.Name, "handler": fn.Handler, "flag": fn.Flag, "revisions": revs})
	}
	out := map[string]any{"functions": fnsOut}
	for k, v := range extra {
		out[k] = v
	}
	return c.JSON(http.StatusOK, out)
}

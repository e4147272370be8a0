// Package router is the data plane, and only the data plane: the front door
// resolves a request to a function (path or Host header, as Knative does),
// one admission pipeline admits it (key, rate, function, body size,
// concurrency), the function's flag picks the revision, the Backend (the
// local engine, or Knative: both outside this package, behind the
// interface it declares) hands over a ready instance — held while one
// starts — and the router proxies to it over pooled keep-alive connections
// or framed sockets, retrying once elsewhere if the instance dies
// mid-request. The data path runs on fasthttp (proxy.go, frontdoor.go) and
// gRPC (grpc.go); the few other endpoints (/healthz, /v2 metadata, OFREP
// in ofrep.go) are an echo mux (this file), on which the admin side mounts
// its routes (MountAdmin, MountMetrics) and the rollout side its outcomes
// endpoint (DataRoute; predictions reach it through Recorder, record.go):
// the router imports no control plane.
package router

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/telemetry"
	"github.com/pilotlight/pilotlight/router/auth"
	"github.com/pilotlight/pilotlight/router/ratelimit"
)

// Defaults for Config's zero fields.
const (
	DefaultRequestTimeout = 30 * time.Second
	DefaultMaxBodyBytes   = functions.DefaultMaxBodyBytes
)

// ShedHeader marks a 503/429 answered on purpose to shed load.
const ShedHeader = "X-Pilotlight-Shed"

// Target is where one request goes: an instance's base URL (no trailing
// slash), how long the request waited for a cold start, and how to give
// the instance back (failed: it could not be reached).
type Target struct {
	BaseURL   string
	Socket    string // a local instance's framed Unix socket (package frame): used instead of BaseURL when set
	ColdStart time.Duration
	Release   func(failed bool)
	// Header is set on the request to the instance, over any the client
	// sent: the Knative backend names the revision this way when it sends
	// to the revision's Service, where Knative's activator may answer.
	Header [][2]string
}

// Backend finds a ready instance of a revision, waiting (bounded by ctx)
// while one starts. The local engine and the Knative backend satisfy it.
type Backend interface {
	Acquire(ctx context.Context, function, revision string) (Target, error)
}

// Picker chooses the revision that serves a request (FlagPicker, from the
// flag file; DefaultPicker without one), called the same way for every
// protocol and on the fast path; Weights reports the configured split for
// the admin view. Pick must not keep r or body past the call.
type Picker interface {
	Pick(ctx context.Context, fn *functions.Manifest, r RequestView, body []byte) (string, error)
	Weights(fn *functions.Manifest) map[string]int
}

// Shadow is told about every buffered proxied answer once it is known,
// before it is written to the client: the hook for copying a share of a
// revision's traffic to a candidate and comparing answers. It runs on the
// request's goroutine, so it must return at once (sample, copy what it
// keeps — the slices are reused after it returns — and hand off to its own
// goroutine). Large streamed answers (over 64 KiB, or of unknown length)
// are not shown to it. gRPC answers stream through the router, so the gRPC
// side keeps a copy only while Mirroring says the revision is mirrored.
type Shadow interface {
	Shadow(ctx context.Context, call ShadowCall)
	Mirroring(function, revision string) bool
}

// ShadowCall is one primary request and its answer, as Shadow sees it.
// For a gRPC call Path is the method's (/inference.GRPCInferenceService/
// ModelInfer), Body and Response are the length-prefixed messages, and
// Status is 200 when the call ended OK.
type ShadowCall struct {
	Function, Revision string
	Method, Path       string // Path as the client sent it (/functions/fraud, /v2/models/...)
	Query              string
	Body               []byte // the request body (valid during the call only)
	Status             int
	Response           []byte // the primary's response body (valid during the call only)
}

// Config configures the router.
type Config struct {
	Functions      []*functions.Manifest
	Backend        Backend
	Picker         Picker // nil: DefaultPicker
	RequestTimeout time.Duration
	Registry       *prometheus.Registry
	Logger         *slog.Logger
	// Limits are the front door's protections (zero: DefaultLimits).
	Limits Limits
	// Keys turns authentication on (nil: off, local development only).
	Keys *auth.Keys
	// RateLimit limits requests per key (nil: no limit).
	RateLimit *ratelimit.Limiter
	// Concurrency caps requests in flight per function (nil: no cap).
	Concurrency *ratelimit.ConcurrencyLimiter
	// SeparateAdmin moves /metrics and /admin/* off the main handler to AdminHandler.
	SeparateAdmin bool
	// HTTP2Handler, when set, serves the listener's HTTP/2 connections:
	// those opening with the HTTP/2 client preface on a plain listener
	// (h2c, prior knowledge), and those negotiating "h2" by ALPN under TLS.
	// HTTP/1.1 keeps the fast path. nil: the router's own, GRPCHandler over
	// Handler(): V2 gRPC, and REST over HTTP/2 for what is not gRPC.
	HTTP2Handler http.Handler
	// Shadow, when set, sees each primary answer (see Shadow).
	Shadow Shadow
	// Telemetry turns tracing on (nil: off); see tracing.go.
	Telemetry *telemetry.Telemetry
	// Recorder, when set, keeps predictions of the functions it records,
	// for outcomes posted later (record.go).
	Recorder Recorder
	// Flags, when set, is served over OFREP (ofrep.go): the flag state
	// the Picker routes by.
	Flags FlagSource
}

// Router is the front door.
type Router struct {
	cfg       Config
	log       *slog.Logger
	echo      *echo.Echo
	admin     *echo.Echo // nil unless SeparateAdmin
	slow      fasthttp.RequestHandler
	fns       map[string]*functions.Manifest
	maxBody   int64 // the largest maxBodyBytes of any function
	client    *fasthttp.Client
	frames    framePool // connections to local instances' framed sockets
	m         *metrics
	exchanges sync.Pool
	grpc      *grpcProxy // the gRPC side (GRPCHandler)
	tr        *tracing   // nil: tracing off
	selfAuth  []string   // paths mounted with MountAdminPage (set before serving)

	mu   sync.Mutex
	srvs []*frontDoor
	shut bool     // Shutdown ran: Serve serves nothing more
	open []string // paths open to scrapers on the admin listener (MountMetrics)
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
	if cfg.Limits == (Limits{}) {
		cfg.Limits = DefaultLimits()
	}
	rt := &Router{cfg: cfg, log: cfg.Logger, fns: map[string]*functions.Manifest{},
		m: newMetrics(cfg.Registry), maxBody: DefaultMaxBodyBytes}
	for _, fn := range cfg.Functions {
		rt.fns[fn.Name] = fn
		rt.maxBody = max(rt.maxBody, fn.Runtime.MaxBodyBytes)
	}
	rt.client = &fasthttp.Client{
		Name:                          "", // the client's User-Agent passes through
		NoDefaultUserAgentHeader:      true,
		MaxConnsPerHost:               1024,
		MaxIdleConnDuration:           90 * time.Second,
		MaxIdemponentCallAttempts:     1, // the router retries once itself, on another instance
		DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing:        true,
		ReadBufferSize:                16 << 10,
		Dial:                          (&fasthttp.TCPDialer{Concurrency: 0}).Dial,
	}
	rt.exchanges.New = func() any { return &exchange{rt: rt} }
	rt.echo = rt.routes()
	rt.slow = fasthttpadaptor.NewFastHTTPHandler(rt.echo)
	rt.grpc = newGRPCProxy(rt)
	rt.tr = newTracing(rt.cfg)
	if rt.cfg.HTTP2Handler == nil {
		rt.cfg.HTTP2Handler = rt.GRPCHandler(rt.Handler())
		rt.grpc.native = rt.grpc.newNativeServer()
	}
	return rt, nil
}

// Handler is the router over net/http: the same data path as the fast
// listener (adapted), plus the echo routes. Serve is the fast listener;
// Handler serves HTTP/2 and tests.
func (rt *Router) Handler() http.Handler { return http.HandlerFunc(rt.serveHTTP) }

// AdminHandler serves /metrics, /admin/* and /healthz when SeparateAdmin is
// set (nil otherwise: they are on Handler).
func (rt *Router) AdminHandler() http.Handler {
	if rt.admin == nil {
		return nil
	}
	return rt.admin
}

// MountAdmin serves h for GET path and everything under it (path ends in
// "/") on the admin endpoints: the admin listener, or the main one under
// --dev. With keys on, it needs an admin key like /admin/*.
func (rt *Router) MountAdmin(path string, h http.Handler) {
	rt.AdminRoute(http.MethodGet, path, echo.WrapHandler(h))
	if strings.HasSuffix(path, "/") {
		rt.AdminRoute(http.MethodGet, path+"*", echo.WrapHandler(h))
	}
}

// AdminRoute serves h for method and path (echo's path syntax) on the admin
// endpoints, behind an admin key when keys are on. Errors h returns are
// answered as the data path's are ({"error": ...}, the status a
// StatusError or *echo.HTTPError carries).
func (rt *Router) AdminRoute(method, path string, h echo.HandlerFunc) {
	rt.adminEcho().Add(method, path, h, rt.requireAdmin)
}

// MountMetrics serves h for GET path for scrapers: open on the admin
// listener (SECURITY.md), behind any valid key on the main listener when
// there is no admin listener and keys are on.
func (rt *Router) MountMetrics(path string, h http.Handler) {
	rt.ScrapeRoute(path, echo.WrapHandler(h))
}

// ScrapeRoute is MountMetrics for a handler that may fail: GET path, open
// to scrapers on the admin listener, its errors answered as AdminRoute's
// are ({"error": ...} with the status they carry).
func (rt *Router) ScrapeRoute(path string, h echo.HandlerFunc) {
	rt.mu.Lock()
	rt.open = append(rt.open, path)
	rt.mu.Unlock()
	rt.adminEcho().GET(path, h)
}

func (rt *Router) adminEcho() *echo.Echo {
	if rt.admin != nil {
		return rt.admin
	}
	return rt.echo
}

// openOnAdmin reports whether p is mounted with MountMetrics.
func (rt *Router) openOnAdmin(p string) bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for _, o := range rt.open {
		if p == o {
			return true
		}
	}
	return false
}

// MountAdminPage is MountAdmin for a handler that authenticates its own
// data requests (the console: its page and assets hold no data and ask the
// person for a key; its API checks for an admin key itself), so the router
// lets requests under path through without a key. Call it before serving.
func (rt *Router) MountAdminPage(path string, h http.Handler) {
	e := rt.adminEcho()
	rt.selfAuth = append(rt.selfAuth, path)
	e.GET(path, echo.WrapHandler(h))
	if strings.HasSuffix(path, "/") {
		e.GET(path+"*", echo.WrapHandler(h))
	}
}

// selfAuthenticated reports whether p is under a path mounted with
// MountAdminPage.
func (rt *Router) selfAuthenticated(p string) bool {
	for _, prefix := range rt.selfAuth {
		if p == prefix || strings.HasPrefix(p, prefix) {
			return true
		}
	}
	return false
}

// requireAdmin lets only admin keys through when keys are on (the auth
// middleware before it has already answered 401 to requests without one).
func (rt *Router) requireAdmin(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if rt.cfg.Keys == nil {
			return next(c)
		}
		if id, ok := auth.IdentityOf(c); !ok || !id.Admin {
			return errorf(http.StatusForbidden, "%s needs a key with admin: true", c.Request().URL.Path)
		}
		return next(c)
	}
}

// Close releases idle upstream connections.
func (rt *Router) Close() {
	rt.client.CloseIdleConnections()
	rt.frames.closeAll()
	rt.grpc.transport.CloseIdleConnections()
}

func (rt *Router) newEcho() *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = rt.httpError
	return e
}

// routes builds the echo mux for what is not the data path. Middleware
// order, outermost first: recover; authentication (401/403) on everything
// but the public probes. On the admin listener /metrics stays open for
// scrapers (SECURITY.md), /admin/* needs an admin key.
func (rt *Router) routes() *echo.Echo {
	e := rt.newEcho()
	e.Use(middleware.Recover())
	if rt.cfg.Keys != nil {
		mw := rt.cfg.Keys.Middleware(auth.FunctionParam)
		e.Use(func(next echo.HandlerFunc) echo.HandlerFunc {
			checked := mw(next)
			return func(c echo.Context) error {
				// Self-authenticated pages live on the main listener only
				// when there is no admin listener.
				if rt.admin == nil && rt.selfAuthenticated(c.Request().URL.Path) {
					return next(c)
				}
				return checked(c)
			}
		})
	}
	admin := e
	if rt.cfg.SeparateAdmin {
		rt.admin = rt.newEcho()
		rt.admin.Use(middleware.Recover())
		if rt.cfg.Keys != nil {
			mw := rt.cfg.Keys.Middleware(auth.FunctionParam)
			rt.admin.Use(func(next echo.HandlerFunc) echo.HandlerFunc {
				checked := mw(next)
				return func(c echo.Context) error {
					if p := c.Request().URL.Path; p == "/healthz" || rt.openOnAdmin(p) || rt.selfAuthenticated(p) {
						return next(c)
					}
					return checked(c)
				}
			})
		}
		admin = rt.admin
	}
	for _, a := range []*echo.Echo{e, admin} {
		a.GET("/healthz", func(c echo.Context) error { return c.JSON(http.StatusOK, map[string]string{"status": "ok"}) })
	}
	e.GET("/v2", func(c echo.Context) error {
		return c.JSON(http.StatusOK, map[string]any{"name": "pilotlight", "version": "router", "extensions": []string{}})
	})
	e.GET("/v2/health/live", func(c echo.Context) error { return c.JSON(http.StatusOK, map[string]bool{"live": true}) })
	e.GET("/v2/health/ready", func(c echo.Context) error { return c.JSON(http.StatusOK, map[string]bool{"ready": true}) })
	if rt.cfg.Flags != nil {
		rt.mountOFREP(e)
	}
	return e
}

// httpError writes {"error": ...} for the echo routes, with the status answerFor gives.
func (rt *Router) httpError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	a := answerFor(err)
	if a.retryAfter != "" && c.Response().Header().Get("Retry-After") == "" {
		c.Response().Header().Set("Retry-After", a.retryAfter)
	}
	if a.shed {
		c.Response().Header().Set(ShedHeader, "overload")
	}
	if a.code >= 500 && a.code != http.StatusServiceUnavailable {
		rt.log.Warn("request failed", "path", c.Request().URL.Path, "status", a.code, "err", err)
	}
	_ = c.JSON(a.code, map[string]string{"error": a.msg})
}

// serveHTTP is Handler: data-path requests go through the proxy (adapted
// from net/http), the rest to echo.
func (rt *Router) serveHTTP(w http.ResponseWriter, r *http.Request) {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	rq, ok := rt.match([]byte(r.Method), []byte(r.URL.Path), []byte(host))
	if !ok {
		rt.echo.ServeHTTP(w, r)
		return
	}
	ctx := new(fasthttp.RequestCtx)
	var conn net.Conn = &addrConn{remote: remoteAddr(r.RemoteAddr)}
	if r.TLS != nil {
		conn = &tlsAddrConn{addrConn{remote: remoteAddr(r.RemoteAddr)}, *r.TLS}
	}
	ctx.Init2(conn, fastLogger{rt.log}, false)
	req := &ctx.Request
	req.Header.SetMethod(r.Method)
	req.SetRequestURI(r.URL.RequestURI())
	req.Header.SetHost(r.Host)
	for k, vs := range r.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if err := readBody(req, r.Body, r.ContentLength, rt.maxBody); err != nil {
		rt.writeError(ctx, err)
	} else {
		rt.proxy(ctx, rq, r.Context(), nil, r)
	}
	resp := &ctx.Response
	h := w.Header()
	for k, v := range resp.Header.All() {
		switch string(k) {
		case "Content-Length", "Date", "Server":
			continue
		}
		h.Add(string(k), string(v))
	}
	if resp.IsBodyStream() {
		w.WriteHeader(resp.StatusCode())
		var buf [8 << 10]byte
		_, _ = io.CopyBuffer(w, resp.BodyStream(), buf[:])
		_ = resp.CloseBodyStream()
		return
	}
	h.Set("Content-Length", strconv.Itoa(len(resp.Body())))
	w.WriteHeader(resp.StatusCode())
	_, _ = w.Write(resp.Body())
}

// readBody reads a net/http request body into req, up to limit bytes.
func readBody(req *fasthttp.Request, body io.Reader, length, limit int64) error {
	if body == nil || body == http.NoBody {
		return nil
	}
	if length > limit {
		return errorf(http.StatusRequestEntityTooLarge, "request body larger than %d bytes", limit)
	}
	b, err := io.ReadAll(io.LimitReader(body, limit+1))
	switch {
	case err != nil:
		return errorf(http.StatusBadRequest, "reading request body: %v", err)
	case int64(len(b)) > limit:
		return errorf(http.StatusRequestEntityTooLarge, "request body larger than %d bytes", limit)
	}
	req.SetBodyRaw(b)
	return nil
}

// addrConn stands in for the connection of a request that came through
// net/http: the proxy reads only its addresses.
type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c *addrConn) RemoteAddr() net.Addr { return c.remote }
func (c *addrConn) LocalAddr() net.Addr  { return &net.TCPAddr{} }

// tlsAddrConn is an addrConn of a TLS request: fasthttp then reports IsTLS.
type tlsAddrConn struct {
	addrConn
	state tls.ConnectionState
}

func (c *tlsAddrConn) Handshake() error                     { return nil }
func (c *tlsAddrConn) ConnectionState() tls.ConnectionState { return c.state }

func remoteAddr(s string) net.Addr {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return &net.TCPAddr{}
	}
	return net.TCPAddrFromAddrPort(ap)
}

// DefaultPicker routes every request to the revision tagged "stable", else the newest.
type DefaultPicker struct{}

// Pick implements Picker.
func (DefaultPicker) Pick(_ context.Context, fn *functions.Manifest, _ RequestView, _ []byte) (string, error) {
	return DefaultRevision(fn), nil
}

// Weights implements Picker.
func (DefaultPicker) Weights(fn *functions.Manifest) map[string]int {
	return map[string]int{DefaultRevision(fn): 100}
}

// DefaultRevision is the manifest's DefaultRevision (the one rule lives there).
func DefaultRevision(fn *functions.Manifest) string { return fn.DefaultRevision() }

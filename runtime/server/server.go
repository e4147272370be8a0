// Package server is a runtime process's HTTP face: the Open Inference
// Protocol (KServe V2) REST endpoints, the function endpoint (POST / as
// Knative invokes it, and POST /functions/{name}), health and readiness, the
// warm-pool specialise call, Prometheus metrics, and graceful drain. It
// follows Knative's container contract: listen on $PORT, ready only after the
// sessions are warm, on SIGTERM stop accepting and finish what is in flight.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/functions/tensor"
	"github.com/pilotlight/pilotlight/internal/frame"
	"github.com/pilotlight/pilotlight/internal/listener"
	"github.com/pilotlight/pilotlight/internal/telemetry"
	pb "github.com/pilotlight/pilotlight/proto/inference"
	"github.com/pilotlight/pilotlight/runtime/instance"
	"github.com/pilotlight/pilotlight/runtime/ort"
)

// Version is reported by GET /v2.
var Version = "dev"

// Config configures a runtime server.
type Config struct {
	// MaxBodyBytes bounds a request body before a function is loaded (generic
	// processes); once specialised, the function's runtime.maxBodyBytes applies.
	MaxBodyBytes int64
	// AllowSpecialise enables POST /admin/specialise (warm-pool processes only).
	AllowSpecialise bool
	// DrainTimeout bounds how long shutdown waits for in-flight requests.
	DrainTimeout time.Duration
	Registry     *prometheus.Registry
	Logger       *slog.Logger
	Telemetry    *telemetry.Telemetry // nil: tracing off
	// TagColdStart tags the connections of the first ready answer and the
	// first request for the node agent's eBPF probes (coldtags.go): set
	// in a Knative pod (K_SERVICE).
	TagColdStart bool
}

// Server is one runtime process's HTTP server.
type Server struct {
	cfg     Config
	log     *slog.Logger
	echo    *echo.Echo
	metrics *metrics
	set     atomic.Pointer[revisionSet]
	loadErr atomic.Pointer[string]
	// shared is set by the first shared specialisation: the process then
	// loads and unloads many revisions (never set in a dedicated one).
	shared   atomic.Bool
	draining atomic.Bool
	specMu   sync.Mutex
	// pre is the revision a warm-pool process pre-loads while idle (nil:
	// none), guarded by preMu; the specialise call claims or drops it.
	preMu sync.Mutex
	pre   *preload
	// grpc serves inference.GRPCInferenceService; Load replaces it so its
	// message size limit is the function's runtime.maxBodyBytes.
	grpc atomic.Pointer[grpc.Server]
	tags coldTags
}

// New builds the server; it is live at once and ready after Load or Specialise.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = functions.DefaultMaxBodyBytes
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 30 * time.Second
	}
	s := &Server{cfg: cfg, log: cfg.Logger, metrics: newMetrics(cfg.Registry)}
	s.tags.on = cfg.TagColdStart
	s.set.Store(&revisionSet{})
	s.echo = s.routes()
	s.grpc.Store(s.newGRPC(cfg.MaxBodyBytes))
	return s
}

// Handler is the server's http.Handler (for tests and embedding): the echo
// router, whose first (Pre) step hands gRPC calls to the gRPC service.
func (s *Server) Handler() http.Handler { return s.echo }

// Load loads a revision of m and makes the server ready. A failure leaves the
// server live but not ready, with the reason reported by the readiness endpoints.
func (s *Server) Load(ctx context.Context, m *functions.Manifest, revision string) error {
	s.specMu.Lock()
	defer s.specMu.Unlock()
	return s.load(ctx, m, revision)
}

// load adds a revision (caller holds specMu): the only one of a dedicated
// process, one more of a shared one.
func (s *Server) load(ctx context.Context, m *functions.Manifest, revision string) error {
	rs := s.revisions()
	if cur := rs.only(); cur != nil && !s.shared.Load() {
		return fmt.Errorf("already serving %s/%s", cur.Manifest.Name, cur.Revision.Name)
	}
	if cur, ok := rs.byRev[revision]; ok {
		if cur.Manifest.Name == m.Name {
			return nil // loaded already: loading is idempotent
		}
		return fmt.Errorf("this process already serves a revision named %q (of function %s)", revision, cur.Manifest.Name)
	}
	log := s.logFor(m.Name, revision)
	in, err := s.build(ctx, m, revision)
	if err != nil {
		if !s.shared.Load() {
			msg := err.Error()
			s.loadErr.Store(&msg)
		}
		log.Error("revision failed to load; instance stays not ready", "err", err)
		return err
	}
	if s.shared.Load() {
		// What loading left behind (the model file's bytes, the parsed
		// graph) goes back to the kernel: the process's RSS is then what
		// the revision holds, the engine's measure of its cost.
		ort.TrimHeap()
	}
	s.install(in)
	return nil
}

// build creates a revision's instance (its sessions, warmed, and its
// batcher) without serving it: load serves it at once, a pre-load holds it
// until the specialise call that names it.
func (s *Server) build(ctx context.Context, m *functions.Manifest, revision string) (*instance.Instance, error) {
	return instance.Load(ctx, m, revision, s.metrics.observer(m.Name, revision), s.logFor(m.Name, revision), instance.Options{DecodeWarmup: decodeWarmup})
}

// install adds a built instance to what the process serves (caller holds specMu).
func (s *Server) install(in *instance.Instance) {
	rs := s.revisions()
	s.metrics.loaded(in)
	next := rs.with(in)
	if limit := next.maxBodyBytes(s.cfg.MaxBodyBytes); len(rs.order) == 0 || limit != rs.maxBodyBytes(s.cfg.MaxBodyBytes) {
		s.grpc.Store(s.newGRPC(limit))
	}
	s.set.Store(next)
	s.loadErr.Store(nil)
}

// logFor is the logger for lines about one revision, labelled with its
// function and revision once: the runtime command labels a dedicated
// process's logger itself (it knows its revision from the start); a
// warm-pool process's, generic until specialised and then perhaps shared,
// is labelled here, line by line's revision.
func (s *Server) logFor(function, revision string) *slog.Logger {
	if !s.cfg.AllowSpecialise {
		return s.log
	}
	return s.log.With("function", function, "revision", revision)
}

func (s *Server) routes() *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.httpError
	// gRPC first: before routing, recovery and the REST body limit, which are not its.
	e.Pre(func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if rev := c.Request().Header.Get(frame.RevisionHeader); rev != "" && s.shared.Load() && frame.RevisionFrom(c.Request().Context()) == "" {
				// An HTTP caller of a shared process names the revision as a frame does.
				c.SetRequest(c.Request().WithContext(frame.WithRevision(c.Request().Context(), rev)))
			}
			if r := c.Request(); pb.IsGRPC(r) {
				s.tagRequest(c, true)
				s.serveGRPC(c.Response().Writer, r)
				return nil
			}
			s.tagRequest(c, false)
			return next(c)
		}
	})
	// Order: recover first so nothing escapes, then the body limit so no handler reads more than allowed.
	e.Use(middleware.Recover())
	e.Use(s.bodyLimit)
	e.Use(s.traceRequests)

	e.GET("/v2", s.serverMetadata)
	e.GET("/v2/health/live", func(c echo.Context) error { return c.JSON(http.StatusOK, map[string]bool{"live": true}) })
	e.GET("/v2/health/ready", s.ready)
	e.GET("/v2/models/:model", s.modelMetadata)
	e.GET("/v2/models/:model/versions/:version", s.modelMetadata)
	e.GET("/v2/models/:model/ready", s.modelReady)
	e.GET("/v2/models/:model/versions/:version/ready", s.modelReady)
	e.POST("/v2/models/:model/infer", s.infer, s.measure("infer"))
	e.POST("/v2/models/:model/versions/:version/infer", s.infer, s.measure("infer"))
	e.POST("/", s.invoke, s.measure("function"))
	e.POST("/functions/:function", s.invoke, s.measure("function"))
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{EnableOpenMetrics: true})))
	if s.cfg.AllowSpecialise {
		e.POST("/admin/specialise", s.specialise)
		e.POST("/admin/unload", s.unload)
		e.POST("/admin/preload", s.preloadCall)
		e.DELETE("/admin/preload", s.dropPreloadCall)
	}
	return e
}

// httpError turns every error into {"error": "..."} with the right status.
func (s *Server) httpError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	code, msg := http.StatusInternalServerError, err.Error()
	var he *echo.HTTPError
	var bad *functions.BadRequest
	var maxErr *http.MaxBytesError
	switch {
	case errors.As(err, &bad):
		code = http.StatusBadRequest
	case errors.As(err, &maxErr):
		code, msg = http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", maxErr.Limit)
	case errors.As(err, &he):
		code = he.Code
		if m, ok := he.Message.(string); ok {
			msg = m
		} else {
			msg = http.StatusText(code)
		}
	case errors.Is(err, context.Canceled):
		code = 499 // client went away; nobody reads this
	case errors.Is(err, context.DeadlineExceeded):
		code = http.StatusGatewayTimeout
	}
	// A readiness probe answering 503 (loading, draining) is the probe
	// working, not a failure: the engine polls every few milliseconds
	// while an instance starts.
	if code >= 500 && (code != http.StatusServiceUnavailable || !strings.HasSuffix(c.Path(), "/ready")) {
		s.log.Error("request failed", "method", c.Request().Method, "path", c.Request().URL.Path, "status", code, "err", err)
	}
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(code)
		return
	}
	_ = c.JSON(code, map[string]string{"error": msg})
}

func (s *Server) bodyLimit(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		limit := s.bodyLimitBytes(r.Context())
		if r.ContentLength > limit {
			return &http.MaxBytesError{Limit: limit}
		}
		r.Body = http.MaxBytesReader(c.Response(), r.Body, limit)
		return next(c)
	}
}

func (s *Server) serverMetadata(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]any{"name": "pilotlight", "version": Version, "extensions": []string{}, "onnxruntime": ort.RuntimeVersion()})
}

func (s *Server) ready(c echo.Context) error {
	if s.draining.Load() {
		return echo.NewHTTPError(http.StatusServiceUnavailable, "draining")
	}
	rs := s.revisions()
	if s.shared.Load() {
		// A shared process is ready once shared; each revision has its own
		// readiness at /v2/models/{name}/versions/{revision}/ready.
		s.tagReady(c)
		return c.JSON(http.StatusOK, map[string]any{"ready": true, "shared": true, "revisions": rs.served(), "rss_bytes": RSSBytes()})
	}
	in := rs.only()
	if in == nil {
		reason := "no revision loaded yet"
		if e := s.loadErr.Load(); e != nil {
			reason = "revision failed to load: " + *e
		}
		return echo.NewHTTPError(http.StatusServiceUnavailable, reason)
	}
	s.tagReady(c)
	return c.JSON(http.StatusOK, providerOf(in, map[string]any{"ready": true, "function": in.Manifest.Name, "revision": in.Revision.Name}))
}

// model resolves :model and :version against the loaded revision.
func (s *Server) model(c echo.Context) (*instance.Instance, error) {
	name, version := c.Param("model"), c.Param("version")
	if name == "" {
		name = c.Param("function")
	}
	in, err := s.resolve(c.Request().Context(), name, version)
	if in != nil {
		c.Set(instanceKey, in) // the metrics' labels
	}
	return in, err
}

// instanceKey holds, in the echo context, the instance a request resolved to.
const instanceKey = "pilotlight.instance"

type tensorMetadata struct {
	Name     string  `json:"name"`
	Datatype string  `json:"datatype"`
	Shape    []int64 `json:"shape"`
}

func describe(ios []ort.IO) []tensorMetadata {
	out := make([]tensorMetadata, len(ios))
	for i, io := range ios {
		out[i] = tensorMetadata{Name: io.Name, Datatype: string(io.Datatype), Shape: io.Shape}
	}
	return out
}

func (s *Server) modelMetadata(c echo.Context) error {
	in, err := s.model(c)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{
		"name":       in.Manifest.Name,
		"versions":   []string{in.Revision.Name},
		"platform":   "onnxruntime_onnx",
		"inputs":     describe(in.Pool.Inputs()),
		"outputs":    describe(in.Pool.Outputs()),
		"parameters": modelParameters(in),
	})
}

// modelParameters are the model metadata's parameters, REST and gRPC alike:
// how the revision is served, including whether batching is on and why not.
func modelParameters(in *instance.Instance) map[string]string {
	p := map[string]string{
		"handler": in.Manifest.Handler, "provider": in.Pool.Provider, "sessions": strconv.Itoa(in.Pool.Size()),
		"max_batch": strconv.Itoa(in.Batching.MaxBatch), "max_delay": in.Manifest.Batching.MaxDelay.String(),
		"batching": "on", "warm": strconv.FormatBool(in.Pool.Unwarmed == ""),
	}
	if !in.Batching.On {
		p["batching"] = "off: " + in.Batching.Reason
	}
	return p
}

// decodeWarmup reads a function's warmup.json: a V2 infer request, checked
// against the model's declarations as a client's request would be.
func decodeWarmup(body []byte, inputs, outputs []ort.IO) ([]*tensor.Tensor, error) {
	if err := checkJSON(body); err != nil {
		return nil, err
	}
	_, ts, _, err := decodeInfer(body, inputs, outputs)
	return ts, err
}

func (s *Server) modelReady(c echo.Context) error {
	in, err := s.model(c)
	if err != nil {
		return err
	}
	if s.draining.Load() {
		return echo.NewHTTPError(http.StatusServiceUnavailable, "draining")
	}
	return c.JSON(http.StatusOK, map[string]any{"name": in.Manifest.Name, "version": in.Revision.Name, "ready": true})
}

// readJSON reads the request body (through the body limit) and checks it
// is JSON the decoders may parse.
func readJSON(c echo.Context) ([]byte, error) {
	body, err := io.ReadAll(c.Request().Body)
	if err != nil {
		return nil, err
	}
	return body, checkJSON(body)
}

// wantedOutputs names the outputs to answer: those the request asks for
// (name of each), else every output of the model, in the model's order.
func wantedOutputs[T any](requested []T, name func(T) string, in *instance.Instance) []string {
	wanted := make([]string, 0, max(len(requested), len(in.Pool.Outputs())))
	for _, o := range requested {
		wanted = append(wanted, name(o))
	}
	if len(wanted) == 0 {
		for _, o := range in.Pool.Outputs() {
			wanted = append(wanted, o.Name)
		}
	}
	return wanted
}

func (s *Server) infer(c echo.Context) error {
	in, err := s.model(c)
	if err != nil {
		return err
	}
	body, err := readJSON(c)
	if err != nil {
		return err
	}
	endDecode := phase(c.Request().Context(), "decode")
	req, inputs, rows, err := decodeInfer(body, in.Pool.Inputs(), in.Pool.Outputs())
	endDecode(err)
	if err != nil {
		return err
	}
	if err := checkRows(in, rows); err != nil {
		return err
	}
	outs, err := in.Infer(c.Request().Context(), inputs, rows)
	if err != nil {
		return err
	}
	defer phase(c.Request().Context(), "encode")(nil)
	b := make([]byte, 0, 256)
	b = append(b, `{"model_name":`...)
	b = strconv.AppendQuote(b, in.Manifest.Name)
	b = append(b, `,"model_version":`...)
	b = strconv.AppendQuote(b, in.Revision.Name)
	if req.ID != "" {
		b = append(b, `,"id":`...)
		b = strconv.AppendQuote(b, req.ID)
	}
	b = append(b, `,"outputs":[`...)
	for i, name := range wantedOutputs(req.Outputs, func(o requestOutput) string { return o.Name }, in) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendTensorJSON(b, outs[name])
	}
	b = append(b, "]}"...)
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, b)
}

func (s *Server) invoke(c echo.Context) error {
	in, err := s.model(c)
	if err != nil {
		return err
	}
	if in.Handler == nil {
		return echo.NewHTTPError(http.StatusNotFound, fmt.Sprintf("function %q uses handler %q, which is served through the V2 API only: POST /v2/models/%s/infer", in.Manifest.Name, in.Manifest.Handler, in.Manifest.Name))
	}
	body, err := readJSON(c)
	if err != nil {
		return err
	}
	endDecode := phase(c.Request().Context(), "decode")
	inv, err := in.Handler.Decode(body)
	endDecode(err)
	if err != nil {
		return err
	}
	if err := checkRows(in, inv.Rows); err != nil {
		return err
	}
	outs, err := in.Infer(c.Request().Context(), inv.Inputs, inv.Rows)
	if err != nil {
		return err
	}
	defer phase(c.Request().Context(), "encode")(nil)
	resp, err := inv.Encode(outs)
	if err != nil {
		return err
	}
	b, err := json.Marshal(resp)
	if err != nil {
		return err
	}
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, b)
}

// checkRows applies the function's runtime.maxRequestRows.
func checkRows(in *instance.Instance, rows int) error {
	if max := in.Manifest.Runtime.MaxRequestRows; rows > max {
		return functions.Badf("request has %d rows; function %s takes at most %d per request (runtime.maxRequestRows)", rows, in.Manifest.Name, max)
	}
	return nil
}

// SpecialiseRequest asks a generic warm-pool process to load a revision.
// Shared makes (or keeps) it a shared process, which then loads more
// revisions with further calls and unloads them with POST /admin/unload;
// without it the process serves that one revision for good.
type SpecialiseRequest struct {
	FunctionDir string `json:"function_dir"`
	Revision    string `json:"revision"`
	Shared      bool   `json:"shared,omitempty"`
}

func (s *Server) specialise(c echo.Context) error {
	var req SpecialiseRequest
	if err := decodeControl(c, &req); err != nil {
		return err
	}
	m, err := functions.LoadDir(req.FunctionDir)
	if err != nil {
		return functions.Badf("%v", err)
	}
	s.specMu.Lock()
	defer s.specMu.Unlock()
	switch rs := s.revisions(); {
	case len(rs.order) > 0 && !s.shared.Load():
		return echo.NewHTTPError(http.StatusConflict, "this process is already specialised")
	case s.shared.Load() && !req.Shared:
		return echo.NewHTTPError(http.StatusConflict, `this process is shared: it takes shared loads only ("shared": true)`)
	case req.Shared:
		s.shared.Store(true)
	}
	start, before := time.Now(), RSSBytes()
	path, p := s.claimPreload(req)
	if p != nil {
		in, pre, err := p.wait(c.Request().Context())
		if err == nil {
			s.install(in)
			s.logFor(m.Name, req.Revision).Info("specialised with the pre-loaded sessions", "preload", path, "waited_seconds", time.Since(start).Seconds())
			return c.JSON(http.StatusOK, providerOf(in, map[string]any{"function": m.Name, "revision": req.Revision, "preload": path,
				"load_seconds": time.Since(start).Seconds(), "rss_before_bytes": pre, "rss_bytes": RSSBytes()}))
		}
		// The pre-load failed: load as if there had been none (the same
		// error, if it is the revision's, comes back from the load).
		path = preloadFailed
	}
	if err := s.load(c.Request().Context(), m, req.Revision); err != nil {
		return echo.NewHTTPError(http.StatusUnprocessableEntity, err.Error())
	}
	return c.JSON(http.StatusOK, providerOf(s.revisions().byRev[req.Revision], map[string]any{"function": m.Name, "revision": req.Revision, "preload": path,
		"load_seconds": time.Since(start).Seconds(), "rss_before_bytes": before, "rss_bytes": RSSBytes()}))
}

// decodeControl reads a control call's JSON body into v (400 naming the problem).
func decodeControl(c echo.Context, v any) error {
	if err := json.NewDecoder(c.Request().Body).Decode(v); err != nil {
		return functions.Badf("malformed %s request: %v", strings.TrimPrefix(c.Path(), "/admin/"), err)
	}
	return nil
}

// Serve accepts on ln, and the local router's framed requests on frames
// (nil: none), until ctx is cancelled, then drains: readiness turns false,
// the listeners close, in-flight requests finish (up to DrainTimeout), and
// the revision's sessions are released. One listener takes HTTP/1.1 and h2c
// (HTTP/2 without TLS, as Knative's h2c port carries it): REST on both,
// gRPC on HTTP/2.
func (s *Server) Serve(ctx context.Context, ln, frames net.Listener) error {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := listener.DefaultLimits().Server(s.Handler(), nil)
	srv.Protocols = &protocols
	srv.ErrorLog = slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)
	if s.tags.on {
		srv.ConnContext = withConn
	}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	framesDone := make(chan struct{})
	if frames != nil {
		go func() {
			defer close(framesDone)
			if err := s.ServeFrames(ctx, frames); err != nil {
				errc <- fmt.Errorf("framed listener: %w", err)
			}
		}()
	} else {
		close(framesDone)
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.draining.Store(true)
	s.log.Info("draining: finishing in-flight requests", "timeout", s.cfg.DrainTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-framesDone // ServeFrames drains on the same ctx, bounded by DrainTimeout
	s.preMu.Lock()
	if s.pre != nil {
		s.dropLocked(s.pre, false)
	}
	s.preMu.Unlock()
	for _, in := range s.revisions().order {
		if cerr := in.Close(); cerr != nil {
			s.logFor(in.Manifest.Name, in.Revision.Name).Warn("closing sessions", "err", cerr)
		}
	}
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	return nil
}

// Package console is the platform's live picture for the people running
// it: GET /ui/ beside the admin endpoints shows every function and
// revision with its traffic weight and instances, the warm pool, a
// waterfall of each revision's latest cold starts, latency and request
// rate per revision, rollouts with their steps and verdicts, and the flag
// file in force. It reads what the router, engine, rollout controller and
// probes already expose (a Source, and the router's Prometheus registry),
// once a second, and serves one page whose HTML, CSS and JavaScript are
// embedded in the binary; the page polls GET /ui/api/state. It is not on
// the request path.
package console

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pilotlight/pilotlight/router/auth"
)

// Defaults for Config's zero fields.
const (
	// DefaultTick is how often the console reads the platform (and the
	// most often the page asks).
	DefaultTick = time.Second
	// DefaultStep is the spacing of the latency and rate charts' points.
	DefaultStep = 5 * time.Second
)

// Path is where the console is served.
const Path = "/ui/"

//go:embed assets
var assets embed.FS

// Config configures a Console.
type Config struct {
	Source Source
	// Gatherer is the router's registry (request rate and latency per
	// revision, flag reloads); nil: no charts.
	Gatherer prometheus.Gatherer
	// Keys, when set, makes the console's data need an admin key, as
	// /admin does; nil is local development.
	Keys   *auth.Keys
	Logger *slog.Logger
	Tick   time.Duration
	Step   time.Duration
}

// Console samples the platform and serves the page.
type Console struct {
	cfg    Config
	log    *slog.Logger
	hist   *history
	echo   *echo.Echo
	static fs.FS

	mu    sync.Mutex
	state []byte // the latest View, encoded
	seq   uint64

	cancel context.CancelFunc
	done   chan struct{}
}

// New reads the platform once and starts sampling it every tick until Close.
func New(cfg Config) (*Console, error) {
	if cfg.Source == nil {
		return nil, errors.New("console needs a source")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Tick <= 0 {
		cfg.Tick = DefaultTick
	}
	if cfg.Step <= 0 {
		cfg.Step = DefaultStep
	}
	static, err := fs.Sub(assets, "assets")
	if err != nil {
		return nil, err
	}
	c := &Console{cfg: cfg, log: cfg.Logger, hist: newHistory(cfg.Step), static: static, done: make(chan struct{})}
	c.echo = c.routes()
	c.sample(time.Now())
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go c.run(ctx)
	return c, nil
}

// Close stops sampling.
func (c *Console) Close() {
	c.cancel()
	<-c.done
}

func (c *Console) run(ctx context.Context) {
	defer close(c.done)
	t := time.NewTicker(c.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			c.sample(now)
		}
	}
}

// sample reads the platform and the registry and encodes the view.
func (c *Console) sample(now time.Time) {
	st := c.cfg.Source.Read()
	var mfs []*dto.MetricFamily
	if c.cfg.Gatherer != nil {
		var err error
		if mfs, err = c.cfg.Gatherer.Gather(); err != nil {
			// Gather returns what it could alongside the error.
			c.log.Warn("console: reading the metrics registry", "err", err)
		}
	}
	v := c.hist.observe(now, st, mfs)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	v.Seq = c.seq
	b, err := json.Marshal(v)
	if err != nil {
		c.log.Error("console: encoding the view", "err", err)
		return
	}
	c.state = b
}

// Wrap serves the console under /ui/ and everything else with next.
func (c *Console) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == strings.TrimSuffix(Path, "/") || strings.HasPrefix(r.URL.Path, Path) {
			c.echo.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// ServeHTTP serves the console alone.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) { c.echo.ServeHTTP(w, r) }

// contentSecurityPolicy keeps the page to its own origin: nothing is
// fetched from anywhere else, and no script runs that the binary did not embed.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func (c *Console) routes() *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = jsonError
	e.Use(func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(ec echo.Context) error {
			h := ec.Response().Header()
			h.Set("Content-Security-Policy", contentSecurityPolicy)
			h.Set("X-Content-Type-Options", "nosniff")
			h.Set("Referrer-Policy", "no-referrer")
			h.Set("Cache-Control", "no-store")
			return next(ec)
		}
	})
	e.GET(strings.TrimSuffix(Path, "/"), func(ec echo.Context) error {
		return ec.Redirect(http.StatusMovedPermanently, Path)
	})
	e.GET(Path, func(ec echo.Context) error { return c.asset(ec, "index.html") })
	api := e.Group(Path + "api")
	if c.cfg.Keys != nil {
		// The page itself holds no data; what it shows needs an admin key.
		api.Use(c.cfg.Keys.Middleware(func(echo.Context) string { return "" }), requireAdmin)
	}
	api.GET("/state", func(ec echo.Context) error {
		c.mu.Lock()
		b := c.state
		c.mu.Unlock()
		return ec.Blob(http.StatusOK, echo.MIMEApplicationJSON, b)
	})
	e.GET(Path+"*", func(ec echo.Context) error { return c.asset(ec, ec.Param("*")) })
	return e
}

// asset serves one embedded file.
func (c *Console) asset(ec echo.Context, name string) error {
	name = path.Clean(name)
	b, err := fs.ReadFile(c.static, name)
	if err != nil || strings.HasPrefix(name, ".") {
		return echo.NewHTTPError(http.StatusNotFound, fmt.Sprintf("no console asset %q", name))
	}
	ctype := "text/plain; charset=utf-8"
	switch path.Ext(name) {
	case ".html":
		ctype = echo.MIMETextHTMLCharsetUTF8
	case ".css":
		ctype = "text/css; charset=utf-8"
	case ".js":
		ctype = echo.MIMEApplicationJavaScriptCharsetUTF8
	}
	return ec.Blob(http.StatusOK, ctype, b)
}

// requireAdmin lets only admin keys through (the key middleware has
// authenticated the caller).
func requireAdmin(next echo.HandlerFunc) echo.HandlerFunc {
	return func(ec echo.Context) error {
		id, ok := auth.IdentityOf(ec)
		if !ok || !id.Admin {
			name := ""
			if ok {
				name = id.ID
			}
			return echo.NewHTTPError(http.StatusForbidden, fmt.Sprintf("key %q is not an admin key; the console needs a key with admin: true", name))
		}
		return next(ec)
	}
}

// jsonError writes {"error": ...} with the error's status.
func jsonError(err error, ec echo.Context) {
	if ec.Response().Committed {
		return
	}
	code, msg := http.StatusInternalServerError, "internal error"
	var he *echo.HTTPError
	if errors.As(err, &he) {
		code = he.Code
		if m, ok := he.Message.(string); ok {
			msg = m
		} else {
			msg = http.StatusText(code)
		}
	}
	_ = ec.JSON(code, map[string]string{"error": msg})
}

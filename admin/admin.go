// Package admin is the operators' side of the router, off the request
// path: the admin API (/admin/functions, /admin/rollouts), the metrics
// endpoint and Prometheus's service discovery for scrapers, and (in
// admin/console) the live console. It mounts its routes on the router's
// admin endpoints (router.AdminRoute, MountMetrics, ScrapeRoute), so the
// data plane knows nothing of what is served there.
package admin

import (
	"net/http"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/rollout"
	"github.com/pilotlight/pilotlight/router"
)

// Source supplies what the admin view shows beyond weights: the local
// engine's instances, queues and cold starts (engine.Backend satisfies it).
type Source interface {
	AdminRevisions() map[string]any // "function/revision" → detail (instances, queue, cold starts)
	AdminExtra() map[string]any     // top-level additions (warm pool, probes)
}

// Config is what the admin side serves.
type Config struct {
	Functions []*functions.Manifest
	// Picker reports each function's configured split (the router's).
	Picker router.Picker
	// Source, when set, adds per-revision detail to GET /admin/functions.
	Source Source
	// Rollouts, when set, serves /admin/rollouts (the rollout controller).
	Rollouts *rollout.Controller
	// Gatherer is what GET /metrics serves (nil: no /metrics, and no
	// service discovery at TargetsPath).
	Gatherer prometheus.Gatherer
	// Targets, when set, lists the runtime processes TargetsPath offers
	// Prometheus beside the router (the local engine's children).
	Targets func() []ScrapeTarget
}

// Mount serves the admin API, /metrics and Prometheus's service discovery
// (TargetsPath) on rt's admin endpoints.
func Mount(rt *router.Router, cfg Config) {
	if cfg.Picker == nil {
		cfg.Picker = router.DefaultPicker{}
	}
	if cfg.Gatherer != nil {
		rt.MountMetrics("/metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{EnableOpenMetrics: true}))
		rt.ScrapeRoute(TargetsPath, targets{cfg.Targets}.serve)
	}
	a := &api{cfg: cfg}
	rt.AdminRoute(http.MethodGet, "/admin/functions", a.functions)
	if cfg.Rollouts != nil {
		rt.AdminRoute(http.MethodGet, "/admin/rollouts", a.listRollouts)
		rt.AdminRoute(http.MethodPost, "/admin/rollouts", a.startRollout)
		rt.AdminRoute(http.MethodGet, "/admin/rollouts/:function", a.rolloutStatus)
		rt.AdminRoute(http.MethodDelete, "/admin/rollouts/:function", a.abortRollout)
		rt.AdminRoute(http.MethodPost, "/admin/rollouts/:function/undo", a.undoRollout)
	}
}

type api struct{ cfg Config }

// functions is GET /admin/functions: every function's revisions with their
// configured weight and, from the Source, what runs.
func (a *api) functions(c echo.Context) error {
	var detail, extra map[string]any
	if a.cfg.Source != nil {
		detail, extra = a.cfg.Source.AdminRevisions(), a.cfg.Source.AdminExtra()
	}
	fnsOut := make([]map[string]any, 0, len(a.cfg.Functions))
	for _, fn := range a.cfg.Functions {
		weights := a.cfg.Picker.Weights(fn)
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

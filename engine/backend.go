package engine

import (
	"context"
	"errors"
	"net/http"

	"github.com/pilotlight/pilotlight/router"
)

// Backend is the router's Backend on one machine: it serves revisions
// from the engine's child processes, and supplies the admin view and the
// cold-start spans with what the engine knows.
type Backend struct {
	Engine *Engine
	// Timelines, when set, adds the latest eBPF cold-start timeline per
	// "function/revision" to the admin view.
	Timelines func() map[string]any
	// Connections, when set, adds the last unexpected outbound connections
	// per "function/revision" the eBPF probes saw.
	Connections func() map[string]any
}

// Acquire implements Backend.
func (b Backend) Acquire(ctx context.Context, function, revision string) (router.Target, error) {
	l, err := b.Engine.Acquire(ctx, function, revision)
	if err != nil {
		var se *StartError
		var ce *CapacityError
		switch {
		case errors.As(err, &ce):
			return router.Target{}, router.Shed(http.StatusServiceUnavailable, "%s", ce.Error())
		case errors.Is(err, ErrQueueFull):
			return router.Target{}, router.Shed(http.StatusServiceUnavailable, "revision %s/%s: too many requests waiting for an instance to start; retry later", function, revision)
		case errors.As(err, &se):
			return router.Target{}, router.Errorf(http.StatusServiceUnavailable, "%s", se.Error())
		case errors.Is(err, ErrUnknownRevision):
			return router.Target{}, router.Errorf(http.StatusNotFound, "%s", err.Error())
		case errors.Is(err, ErrStopped):
			return router.Target{}, router.Errorf(http.StatusServiceUnavailable, "the platform is shutting down")
		}
		return router.Target{}, err
	}
	return router.Target{BaseURL: "http://" + l.Addr, Socket: l.Socket, ColdStart: l.ColdStart, Release: l.Release}, nil
}

// AdminRevisions implements admin.Source.
func (b Backend) AdminRevisions() map[string]any {
	var timelines, conns map[string]any
	if b.Timelines != nil {
		timelines = b.Timelines()
	}
	if b.Connections != nil {
		conns = b.Connections()
	}
	out := map[string]any{}
	for _, st := range b.Engine.Statuses() {
		key := st.Function + "/" + st.Revision
		d := map[string]any{"instances": st.Instances, "desired": st.Desired, "queued": st.Queued, "panic": st.Panic, "autoscaler": st.Reason}
		if st.LastCold != nil {
			d["last_cold_start"] = st.LastCold
		}
		if st.Loads != nil || st.Unloads != nil {
			d["loads"], d["unloads"] = st.Loads, st.Unloads
		}
		if tl, ok := timelines[key]; ok {
			d["cold_start_timeline"] = tl
		}
		if c, ok := conns[key]; ok {
			d["unexpected_connections"] = c
		}
		out[key] = d
	}
	return out
}

// AdminExtra implements admin.Source.
func (b Backend) AdminExtra() map[string]any {
	return map[string]any{"warm_pool": b.Engine.PoolStatus(), "processes": b.Engine.Processes()}
}

// LastColdStart implements router.ColdStartSource from the engine's record of each
// revision's latest cold start.
func (b Backend) LastColdStart(function, revision string) (router.ColdStartInfo, bool) {
	for _, st := range b.Engine.Statuses() {
		if st.Function == function && st.Revision == revision && st.LastCold != nil {
			c := st.LastCold
			return router.ColdStartInfo{Source: c.Source, PID: c.PID, Trigger: c.Trigger, Ready: c.Ready}, true
		}
	}
	return router.ColdStartInfo{}, false
}

// ColdStartTimelines implements router.TimelineSource (empty without --ebpf).
func (b Backend) ColdStartTimelines() map[string]any {
	if b.Timelines == nil {
		return nil
	}
	return b.Timelines()
}

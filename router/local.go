package router

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/pilotlight/pilotlight/router/engine"
)

// LocalBackend serves revisions from the local engine's child processes.
type LocalBackend struct {
	Engine *engine.Engine
	// Timelines, when set, adds the latest eBPF cold-start timeline per
	// "function/revision" to the admin view.
	Timelines func() map[string]any
	// Connections, when set, adds the last unexpected outbound connections
	// per "function/revision" the eBPF probes saw.
	Connections func() map[string]any
}

// Acquire implements Backend.
func (b LocalBackend) Acquire(ctx context.Context, function, revision string) (Target, error) {
	l, err := b.Engine.Acquire(ctx, function, revision)
	if err != nil {
		var se *engine.StartError
		switch {
		case errors.Is(err, engine.ErrQueueFull):
			return Target{}, &httpErr{code: http.StatusServiceUnavailable, shed: true, msg: fmt.Sprintf("revision %s/%s: too many requests waiting for an instance to start; retry later", function, revision)}
		case errors.As(err, &se):
			return Target{}, &httpErr{code: http.StatusServiceUnavailable, msg: se.Error()}
		case errors.Is(err, engine.ErrUnknownRevision):
			return Target{}, &httpErr{code: http.StatusNotFound, msg: err.Error()}
		case errors.Is(err, engine.ErrStopped):
			return Target{}, &httpErr{code: http.StatusServiceUnavailable, msg: "the platform is shutting down"}
		}
		return Target{}, err
	}
	return Target{BaseURL: "http://" + l.Addr, Socket: l.Socket, ColdStart: l.ColdStart, Release: l.Release}, nil
}

// AdminRevisions implements AdminSource.
func (b LocalBackend) AdminRevisions() map[string]any {
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

// AdminExtra implements AdminSource.
func (b LocalBackend) AdminExtra() map[string]any {
	return map[string]any{"warm_pool": b.Engine.PoolStatus()}
}

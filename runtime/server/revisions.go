package server

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/pilotlight/pilotlight/internal/frame"
	"github.com/pilotlight/pilotlight/internal/procmem"
	"github.com/pilotlight/pilotlight/runtime/instance"
	"github.com/pilotlight/pilotlight/runtime/ort"
)

// A runtime process serves one revision (dedicated: Knative's contract, and
// the local engine's dedicated isolation) or, once a warm-pool process is
// specialised as shared, many revisions' session pools in one ONNX Runtime
// environment. Each revision keeps its own instance: session pool, batcher,
// metrics, readiness; a request names its revision by the frame, by
// /v2/models/{name}/versions/{version}, or by its model name when that
// name has one revision here.

// revisionSet is what a process serves, replaced whole on each load and
// unload so a request reads it without a lock.
type revisionSet struct {
	byRev map[string]*instance.Instance // by revision name
	order []*instance.Instance          // load order
}

func (rs *revisionSet) with(in *instance.Instance) *revisionSet {
	n := &revisionSet{byRev: make(map[string]*instance.Instance, len(rs.order)+1)}
	for _, x := range rs.order {
		n.byRev[x.Revision.Name] = x
		n.order = append(n.order, x)
	}
	n.byRev[in.Revision.Name] = in
	n.order = append(n.order, in)
	return n
}

func (rs *revisionSet) without(rev string) *revisionSet {
	n := &revisionSet{byRev: make(map[string]*instance.Instance, len(rs.order))}
	for _, x := range rs.order {
		if x.Revision.Name != rev {
			n.byRev[x.Revision.Name] = x
			n.order = append(n.order, x)
		}
	}
	return n
}

// only is the one revision a process serves, or nil.
func (rs *revisionSet) only() *instance.Instance {
	if len(rs.order) == 1 {
		return rs.order[0]
	}
	return nil
}

func (s *Server) revisions() *revisionSet { return s.set.Load() }

// current is the instance a request is for when that is known before
// routing (the frame's revision, or the process's one): for the body
// limit, tracing and metrics labels. Nil in a shared process without a
// framed revision.
func (s *Server) current(ctx context.Context) *instance.Instance {
	rs := s.revisions()
	if rev := frame.RevisionFrom(ctx); rev != "" {
		return rs.byRev[rev]
	}
	return rs.only()
}

// resolve finds the revision a request is for, REST and gRPC alike: the
// frame's named revision first, else the version in the path, else the
// only revision of the model name loaded here ("" name: the only one).
func (s *Server) resolve(ctx context.Context, name, version string) (*instance.Instance, error) {
	rs := s.revisions()
	if len(rs.order) == 0 {
		if e := s.loadErr.Load(); e != nil {
			return nil, echo.NewHTTPError(http.StatusServiceUnavailable, fmt.Sprintf("model %q is not ready: %s", name, *e))
		}
		return nil, echo.NewHTTPError(http.StatusServiceUnavailable, fmt.Sprintf("model %q is not ready: no revision loaded yet", name))
	}
	if !s.shared.Load() {
		// Dedicated: the messages name what this instance serves.
		in := rs.order[0]
		if name != "" && name != in.Manifest.Name {
			return nil, echo.NewHTTPError(http.StatusNotFound, fmt.Sprintf("unknown model %q; this instance serves %q", name, in.Manifest.Name))
		}
		if version != "" && version != in.Revision.Name {
			return nil, echo.NewHTTPError(http.StatusNotFound, fmt.Sprintf("model %q has no version %q here; this instance serves %q", in.Manifest.Name, version, in.Revision.Name))
		}
		return in, nil
	}
	if rev := frame.RevisionFrom(ctx); rev != "" {
		in, ok := rs.byRev[rev]
		switch {
		case !ok:
			return nil, echo.NewHTTPError(http.StatusNotFound, fmt.Sprintf("revision %q is not loaded in this process", rev))
		case name != "" && name != in.Manifest.Name:
			return nil, echo.NewHTTPError(http.StatusNotFound, fmt.Sprintf("revision %q is of model %q, not %q", rev, in.Manifest.Name, name))
		case version != "" && version != rev:
			return nil, echo.NewHTTPError(http.StatusNotFound, fmt.Sprintf("the request names revision %q, its path version %q", rev, version))
		}
		return in, nil
	}
	var named []*instance.Instance
	for _, in := range rs.order {
		if (name == "" || in.Manifest.Name == name) && (version == "" || in.Revision.Name == version) {
			named = append(named, in)
		}
	}
	switch len(named) {
	case 1:
		return named[0], nil
	case 0:
		if version != "" {
			return nil, echo.NewHTTPError(http.StatusNotFound, fmt.Sprintf("model %q has no version %q loaded in this process (loaded: %s)", name, version, rs.names()))
		}
		return nil, echo.NewHTTPError(http.StatusNotFound, fmt.Sprintf("unknown model %q; this process serves %s", name, rs.names()))
	}
	return nil, functions400(name, named)
}

func functions400(name string, named []*instance.Instance) error {
	revs := make([]string, len(named))
	for i, in := range named {
		revs[i] = in.Revision.Name
	}
	if name == "" {
		name = "{name}"
	}
	return echo.NewHTTPError(http.StatusBadRequest, fmt.Sprintf("this process serves several revisions (%s): name one, /v2/models/%s/versions/{revision}", strings.Join(revs, ", "), name))
}

// names lists the loaded revisions as function/revision.
func (rs *revisionSet) names() string {
	if len(rs.order) == 0 {
		return "no revision"
	}
	out := make([]string, len(rs.order))
	for i, in := range rs.order {
		out[i] = in.Manifest.Name + "/" + in.Revision.Name
	}
	return strings.Join(out, ", ")
}

// maxBodyBytes is the largest runtime.maxBodyBytes among the loaded
// revisions (cfg's before any).
func (rs *revisionSet) maxBodyBytes(def int64) int64 {
	if len(rs.order) == 0 {
		return def
	}
	m := int64(0)
	for _, in := range rs.order {
		m = max(m, in.Manifest.Runtime.MaxBodyBytes)
	}
	return m
}

// UnloadRequest asks a shared process to release a revision's sessions.
type UnloadRequest struct {
	Revision string `json:"revision"`
	// Reason is recorded with the unload (scale_to_zero, lru).
	Reason string `json:"reason,omitempty"`
}

// Unload stops a revision's batcher and destroys its sessions, then hands
// the freed heap back to the kernel (ONNX Runtime frees into malloc, which
// keeps it otherwise), so the process's RSS falls.
func (s *Server) Unload(rev, reason string) (before, after int64, err error) {
	s.specMu.Lock()
	defer s.specMu.Unlock()
	in, ok := s.revisions().byRev[rev]
	if !ok {
		return 0, 0, echo.NewHTTPError(http.StatusNotFound, fmt.Sprintf("revision %q is not loaded in this process (loaded: %s)", rev, s.revisions().names()))
	}
	before = RSSBytes()
	s.set.Store(s.revisions().without(rev))
	s.metrics.unloaded(in)
	err = in.Close()
	ort.ReleaseMemory()
	after = RSSBytes()
	s.logFor(in.Manifest.Name, rev).Info("revision unloaded", "reason", reason,
		"rss_before_mb", before>>20, "rss_after_mb", after>>20)
	return before, after, err
}

func (s *Server) unload(c echo.Context) error {
	if !s.shared.Load() {
		return echo.NewHTTPError(http.StatusConflict, "only a shared process unloads revisions; a dedicated one stops")
	}
	var req UnloadRequest
	if err := decodeControl(c, &req); err != nil {
		return err
	}
	before, after, err := s.Unload(req.Revision, req.Reason)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"revision": req.Revision, "rss_before_bytes": before, "rss_bytes": after, "revisions": len(s.revisions().order)})
}

// RSSBytes is this process's resident set size (all of it: Go heap,
// ONNX Runtime's allocations, mapped libraries).
func RSSBytes() int64 { return procmem.RSS(0) }

// servedRevisions lists the loaded revisions for readiness answers.
func (rs *revisionSet) served() []map[string]any {
	out := make([]map[string]any, 0, len(rs.order))
	for _, in := range rs.order {
		out = append(out, providerOf(in, map[string]any{"function": in.Manifest.Name, "revision": in.Revision.Name}))
	}
	slices.SortFunc(out, func(a, b map[string]any) int { return strings.Compare(a["revision"].(string), b["revision"].(string)) })
	return out
}

// providerOf adds to m what the engine reads of a loaded revision's
// execution provider: which one, why, and the device memory its sessions
// may hold (0 on the CPU).
func providerOf(in *instance.Instance, m map[string]any) map[string]any {
	m["provider"], m["provider_reason"], m["device_bytes"] = in.Pool.Provider, in.ProviderReason(), in.Pool.DeviceBytes
	return m
}

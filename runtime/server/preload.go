package server

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/runtime/instance"
	"github.com/pilotlight/pilotlight/runtime/ort"
)

// Pre-loading. An idle warm-pool process may be asked (POST /admin/preload)
// to build the sessions of the revision most likely to wake next, before
// anything needs them: the local engine names the dedicated revision most
// recently scaled to zero. The sessions are created and warmed in the
// background and held aside, not served (the process stays generic and not
// ready). The specialise call that names the same revision takes them, and
// skips creating and warming its own; one that names another revision
// drops them first and loads as it always did; a specialise that arrives
// while the pre-load is still running joins it (what is left of a load
// already under way is never longer than a load from the start).

// How a specialisation used the pre-load: the "preload" field of its answer.
const (
	preloadHit     = "hit"     // the sessions were ready: none created
	preloadJoined  = "joined"  // the pre-load was running: it was waited for, not restarted
	preloadDropped = "dropped" // another revision was pre-loaded: dropped, then a load as without
	preloadNone    = "none"    // nothing was pre-loaded
	preloadFailed  = "failed"  // the pre-load of this revision had failed: a load as without
)

// errPreloadDropped is a pre-load's outcome when a specialise for another
// revision, a newer pre-load, or the engine dropped it.
var errPreloadDropped = errors.New("the pre-load was dropped before it was used")

// PreloadRequest asks an idle warm-pool process to pre-load a revision.
type PreloadRequest struct {
	FunctionDir string `json:"function_dir"`
	Revision    string `json:"revision"`
}

// preload is one pre-load; in, err, before, after and took are set before
// done closes, claimed and dropped under Server.preMu.
type preload struct {
	dir, revision string
	cancel        context.CancelFunc
	done          chan struct{}
	in            *instance.Instance
	err           error
	before, after int64 // the process's RSS around the load
	took          time.Duration
	claimed       bool // a specialise took it: the pre-load hands in over, never closes it
	dropped       bool // nobody will take it: the pre-load closes in
	// release hands the memory of a dropped pre-load back to the kernel
	// (malloc keeps it otherwise): not when a specialise drops it, whose
	// load reuses those pages at once.
	release bool
}

func (p *preload) ready() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait returns the claimed pre-load's instance once built, and the RSS
// before it. Should ctx end first, the instance is dropped when built.
func (p *preload) wait(ctx context.Context) (*instance.Instance, int64, error) {
	select {
	case <-p.done:
		return p.in, p.before, p.err
	case <-ctx.Done():
		go func() {
			<-p.done
			if p.in != nil {
				p.in.Close()
			}
		}()
		return nil, 0, ctx.Err()
	}
}

// preloadCall starts (or joins) a pre-load and answers once its sessions
// are warm: 200 with the RSS it added, 409 when it was dropped first or
// the process is specialised already, 422 when the revision cannot load.
func (s *Server) preloadCall(c echo.Context) error {
	var req PreloadRequest
	if err := decodeControl(c, &req); err != nil {
		return err
	}
	m, err := functions.LoadDir(req.FunctionDir)
	if err != nil {
		return functions.Badf("%v", err)
	}
	if _, ok := m.Revision(req.Revision); !ok {
		return functions.Badf("function %s has no revision %q (known: %v)", m.Name, req.Revision, functions.RevisionNames(m.Revisions))
	}
	s.specMu.Lock()
	if len(s.revisions().order) > 0 || s.shared.Load() {
		s.specMu.Unlock()
		return echo.NewHTTPError(http.StatusConflict, "this process is specialised already: only an idle warm-pool process pre-loads")
	}
	s.preMu.Lock()
	p := s.pre
	if p == nil || p.dir != req.FunctionDir || p.revision != req.Revision {
		if p != nil {
			s.dropLocked(p, true)
		}
		ctx, cancel := context.WithCancel(context.Background())
		p = &preload{dir: req.FunctionDir, revision: req.Revision, cancel: cancel, done: make(chan struct{})}
		s.pre = p
		go s.runPreload(ctx, p, m)
	}
	s.preMu.Unlock()
	s.specMu.Unlock()
	select {
	case <-p.done:
	case <-c.Request().Context().Done():
		return c.Request().Context().Err()
	}
	// A drop after done still writes p's err (dropLocked): read under preMu.
	s.preMu.Lock()
	perr, took, before, after := p.err, p.took, p.before, p.after
	s.preMu.Unlock()
	switch {
	case errors.Is(perr, errPreloadDropped):
		return echo.NewHTTPError(http.StatusConflict, perr.Error())
	case perr != nil:
		return echo.NewHTTPError(http.StatusUnprocessableEntity, perr.Error())
	}
	return c.JSON(http.StatusOK, map[string]any{"function": m.Name, "revision": req.Revision, "preloaded": true,
		"load_seconds": took.Seconds(), "rss_before_bytes": before, "rss_bytes": after})
}

// dropPreloadCall drops what the process pre-loaded, if anything (the
// engine needs the memory back).
func (s *Server) dropPreloadCall(c echo.Context) error {
	s.preMu.Lock()
	dropped := s.pre != nil
	if dropped {
		s.dropLocked(s.pre, true)
	}
	s.preMu.Unlock()
	return c.JSON(http.StatusOK, map[string]bool{"dropped": dropped})
}

// runPreload builds p's instance and hands it to whoever claims it, or
// closes it when p was dropped meanwhile.
func (s *Server) runPreload(ctx context.Context, p *preload, m *functions.Manifest) {
	log := s.logFor(m.Name, p.revision)
	start, before := time.Now(), RSSBytes()
	in, err := s.build(ctx, m, p.revision)
	took, after := time.Since(start), RSSBytes()
	s.preMu.Lock()
	dropped, release := p.dropped, p.release
	p.before, p.after, p.took = before, after, took
	switch {
	case dropped: // a load cancelled by the drop fails with the context's error: the drop is the outcome
		p.err = errPreloadDropped
	case err != nil:
		p.err = err
	default:
		p.in = in
	}
	close(p.done) // under preMu: dropLocked sees it built or not, never between
	s.preMu.Unlock()
	switch {
	case dropped && err != nil:
		log.Info("pre-load dropped while it loaded")
	case dropped:
		in.Close()
		if release {
			ort.ReleaseMemory()
		}
		log.Info("pre-load dropped as it finished: its sessions are released")
	case err != nil:
		log.Warn("pre-load failed; a specialise for the revision will load it as without one", "err", err)
	default:
		log.Info("pre-loaded: the sessions wait for a specialise that names the revision", "load_seconds", took.Seconds(), "rss_added_bytes", after-before)
	}
}

// dropLocked drops p (caller holds preMu): its instance is closed now if
// built, else by runPreload when it is; release hands its memory back to
// the kernel.
func (s *Server) dropLocked(p *preload, release bool) {
	if s.pre == p {
		s.pre = nil
	}
	if p.claimed || p.dropped {
		return
	}
	p.dropped, p.release = true, release
	p.cancel()
	if p.ready() && p.in != nil {
		in := p.in
		p.in, p.err = nil, errPreloadDropped
		start := time.Now()
		in.Close()
		if release {
			ort.ReleaseMemory()
		}
		s.logFor(in.Manifest.Name, in.Revision.Name).Info("pre-load dropped: its sessions are released", "close_seconds", time.Since(start).Seconds())
	}
}

// claimPreload decides what a specialise does with the pre-load (caller
// holds specMu): a dedicated one for the pre-loaded revision takes it (p,
// hit or joined); any other drops it and loads as it always did.
func (s *Server) claimPreload(req SpecialiseRequest) (string, *preload) {
	s.preMu.Lock()
	defer s.preMu.Unlock()
	p := s.pre
	switch {
	case p == nil:
		return preloadNone, nil
	case !req.Shared && p.dir == req.FunctionDir && p.revision == req.Revision:
		s.pre = nil
		p.claimed = true
		if p.ready() {
			return preloadHit, p
		}
		return preloadJoined, p
	default:
		s.dropLocked(p, false)
		return preloadDropped, nil
	}
}

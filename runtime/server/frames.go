package server

import (
	"context"
	"net"

	"github.com/pilotlight/pilotlight/internal/frame"
)

// ServeFrames serves the local router's framed requests (package frame) on
// ln, a Unix socket only serve's user can open, with the same handler
// chain as HTTP (routes, body limit, metrics, tracing, errors), until ctx
// ends; then it drains as Serve does. A frame carries the request the
// router would have sent over HTTP, credentials already stripped; a gRPC
// call in a frame gets what the same call gets over h2c.
func (s *Server) ServeFrames(ctx context.Context, ln net.Listener) error {
	fs := &frame.Server{Handler: s.echo, Limit: s.frameLimit, DrainTimeout: s.cfg.DrainTimeout, Log: s.log, Serves: s.serves}
	return fs.Serve(ctx, ln)
}

// serves reports whether a frame's named revision is this process's.
// Before a revision is loaded (a warm-pool process), frames go on to the
// handlers, which answer 503 as they do over HTTP; a shared process serves
// the revisions it has loaded.
func (s *Server) serves(revision []byte) bool {
	rs := s.revisions()
	if len(rs.order) == 0 && !s.shared.Load() {
		return true
	}
	_, ok := rs.byRev[string(revision)]
	return ok
}

// frameLimit bounds a request frame: the body limit plus room for the
// request line and headers (the router's own header limit is 64 KiB).
func (s *Server) frameLimit() int {
	return int(s.revisions().maxBodyBytes(s.cfg.MaxBodyBytes)) + 128<<10
}

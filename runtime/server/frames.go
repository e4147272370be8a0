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
// router would have sent over HTTP, credentials already stripped.
func (s *Server) ServeFrames(ctx context.Context, ln net.Listener) error {
	fs := &frame.Server{Handler: s.echo, Limit: s.frameLimit, DrainTimeout: s.cfg.DrainTimeout, Log: s.log}
	return fs.Serve(ctx, ln)
}

// frameLimit bounds a request frame: the body limit plus room for the
// request line and headers (the router's own header limit is 64 KiB).
func (s *Server) frameLimit() int { return int(s.bodyLimitBytes()) + 128<<10 }

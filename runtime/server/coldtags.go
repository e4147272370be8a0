package server

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/labstack/echo/v4"

	"github.com/pilotlight/pilotlight/internal/listener"
)

// coldTags tags two connections of a Knative pod's cold start for the node
// agent's eBPF probes (Config.TagColdStart): the connection of the first
// answer saying the runtime is ready, and of its first request, each with
// a socket priority (listener.ReadyPriority, RequestPriority) set just
// before that answer is written. Knative's queue-proxy probes the runtime
// on connections of their own (HTTP/1.1, one per probe) while the request
// comes on another (h2c): in the kernel all are accepts followed by sends,
// and only the runtime knows which answer is which. The probes read the
// priority at the send (bpf.Config.ReadyPriority), so "ready" and "first
// response" are the kernel's sends of these answers. Once each.
type coldTags struct {
	on             bool
	ready, request atomic.Bool
}

type connKey struct{}

// withConn is the HTTP server's ConnContext: each request's context
// carries its connection.
func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// tag gives the connection in ctx priority prio, unless done says it was
// given already.
func (t *coldTags) tag(ctx context.Context, done *atomic.Bool, prio int) {
	if !t.on || done.Load() {
		return
	}
	c, ok := ctx.Value(connKey{}).(syscall.Conn)
	if !ok || !done.CompareAndSwap(false, true) {
		return
	}
	if rc, err := c.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { setPriority(fd, prio) })
	}
}

// tagReady tags the connection of the first answer saying ready.
func (s *Server) tagReady(c echo.Context) {
	s.tags.tag(c.Request().Context(), &s.tags.ready, listener.ReadyPriority)
}

// tagRequest tags the connection of the first request that is neither a
// health probe nor a metrics scrape: a gRPC call now (grpc-go writes its
// own response), a REST request when its response begins.
func (s *Server) tagRequest(c echo.Context, grpc bool) {
	if !s.tags.on || s.tags.request.Load() {
		return
	}
	p := c.Request().URL.Path
	if strings.HasPrefix(p, "/v2/health/") || p == "/metrics" {
		return
	}
	if grpc {
		s.tags.tag(c.Request().Context(), &s.tags.request, listener.RequestPriority)
		return
	}
	ctx := c.Request().Context()
	c.Response().Before(func() { s.tags.tag(ctx, &s.tags.request, listener.RequestPriority) })
}

package router

import (
	"log/slog"
	"net/http"
	"time"
)

// Limits are the router listener's protections against slow or oversized
// clients; every one is a serve flag, and SECURITY.md lists the defaults.
type Limits struct {
	ReadHeaderTimeout time.Duration // slowloris headers
	ReadTimeout       time.Duration // slow bodies: the whole request must arrive within this
	WriteTimeout      time.Duration // must exceed the request timeout, cold starts included
	IdleTimeout       time.Duration // keep-alive connections with no request
	MaxHeaderBytes    int
}

// DefaultLimits are the defaults documented in SECURITY.md.
func DefaultLimits() Limits {
	return Limits{ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 60 * time.Second,
		IdleTimeout: 120 * time.Second, MaxHeaderBytes: 64 << 10}
}

// Server is an http.Server for h with these limits.
func (l Limits) Server(h http.Handler, log *slog.Logger) *http.Server {
	s := &http.Server{Handler: h, ReadHeaderTimeout: l.ReadHeaderTimeout, ReadTimeout: l.ReadTimeout,
		WriteTimeout: l.WriteTimeout, IdleTimeout: l.IdleTimeout, MaxHeaderBytes: l.MaxHeaderBytes}
	if log != nil {
		s.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	}
	return s
}

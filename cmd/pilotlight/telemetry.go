package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pilotlight/pilotlight/telemetry"
)

// telemetryFlushTimeout bounds how long exiting waits for the last spans.
const telemetryFlushTimeout = 5 * time.Second

// shutdownTelemetry exports the spans still queued; an unreachable
// collector delays exit by at most telemetryFlushTimeout.
func shutdownTelemetry(tel *telemetry.Telemetry, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), telemetryFlushTimeout)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil {
		log.Warn("last trace spans not exported", "err", err)
	}
}

// newObservability is a process's metrics registry (with the Go and process
// collectors) and its tracing from the OTEL_* variables as service; call
// the returned shutdown on exit to flush the last spans.
func newObservability(service string, log *slog.Logger) (*prometheus.Registry, *telemetry.Telemetry, func(), error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	tel, err := telemetry.SetupFromEnv(service, reg, log)
	if err != nil {
		return nil, nil, nil, err
	}
	return reg, tel, func() { shutdownTelemetry(tel, log) }, nil
}

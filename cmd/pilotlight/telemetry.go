package main

import (
	"context"
	"log/slog"
	"time"

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

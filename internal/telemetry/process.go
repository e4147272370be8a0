package telemetry

import (
	"context"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// flushTimeout bounds how long exiting waits for the last spans.
const flushTimeout = 5 * time.Second

// Logger is a process's logger: text for people, or JSON when
// PILOTLIGHT_LOG_FORMAT=json (the local engine sets it for its children so
// it can fold their records into the platform log with function and
// revision attached); debug level with PILOTLIGHT_DEBUG set.
func Logger() *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if os.Getenv("PILOTLIGHT_DEBUG") != "" {
		opts.Level = slog.LevelDebug
	}
	if os.Getenv("PILOTLIGHT_LOG_FORMAT") == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// TuneGC trades a little memory for less collection on the request path:
// instances and the router allocate per request and hold little live
// heap, so the default GOGC=100 collects far more often than it needs to.
// An explicit GOGC in the environment wins.
func TuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
}

// ForProcess is a process's metrics registry (with the Go and process
// collectors) and its tracing from the OTEL_* variables as service; call
// the returned shutdown on exit to flush the last spans (an unreachable
// collector delays exit by at most flushTimeout).
func ForProcess(service string, log *slog.Logger) (*prometheus.Registry, *Telemetry, func(), error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	tel, err := SetupFromEnv(service, reg, log)
	if err != nil {
		return nil, nil, nil, err
	}
	return reg, tel, func() {
		ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
		defer cancel()
		if err := tel.Shutdown(ctx); err != nil {
			log.Warn("last trace spans not exported", "err", err)
		}
	}, nil
}

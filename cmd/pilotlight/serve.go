package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/pilotlight/pilotlight/bpf"
	deployknative "github.com/pilotlight/pilotlight/deploy/knative"
	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/router"
	"github.com/pilotlight/pilotlight/router/auth"
	"github.com/pilotlight/pilotlight/router/engine"
	"github.com/pilotlight/pilotlight/router/knative"
	"github.com/pilotlight/pilotlight/router/ratelimit"
	"github.com/pilotlight/pilotlight/router/rollout"
	"github.com/pilotlight/pilotlight/telemetry"
)

func newServeCmd() *cobra.Command {
	var (
		addr, fnDir      string
		flagsPath        string
		withEBPF         bool
		dev              bool
		keysFile         string
		adminAddr        string
		tlsCert, tlsKey  string
		rateRPS          float64
		rateBurst        int
		maxConcurrent    int
		backendName      string
		namespace        string
		kubeconfig       string
		kubeContext      string
		cpuProfile       string
		limits           = router.DefaultLimits()
		poolSize         int
		scaleToZeroAfter time.Duration
		requestTimeout   time.Duration
		queueCapacity    int
		stableWindow     time.Duration
		panicWindow      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the platform on one machine: router, activator, autoscaler and warm pool over child runtime processes",
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := newLogger()
			tuneGC()
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return err
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			fns, err := functions.LoadAll(fnDir)
			if len(fns) == 0 {
				return fmt.Errorf("no function could be loaded from %s (each needs a valid function.yaml): %v", fnDir, err)
			}
			if err != nil {
				// One broken function must not take the others down.
				log.Error("some functions were skipped; fix their function.yaml and restart", "err", err)
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			tel, err := telemetry.SetupFromEnv("pilotlight-router", reg, log)
			if err != nil {
				return err
			}
			defer shutdownTelemetry(tel, log)
			var (
				eng     *engine.Engine
				backend router.Backend
				admin   router.AdminSource
			)
			if os.Getenv("PILOTLIGHT_EBPF") == "1" {
				withEBPF = true
			}
			probes := startProbes(withEBPF, reg, log)
			if probes != nil {
				defer probes.Close()
			}
			switch backendName {
			case "local":
				ecfg := engine.Config{
					Functions: fns, PoolSize: poolSize, ScaleToZeroAfter: scaleToZeroAfter, QueueCapacity: queueCapacity,
					StableWindow: stableWindow, PanicWindow: panicWindow, Logger: log, Registerer: reg,
				}
				lb := router.LocalBackend{}
				if probes != nil {
					// Only a live *Probes: a nil pointer in the interface would not be nil.
					ecfg.Probes = probes
					lb.Timelines = func() map[string]any {
						out := map[string]any{}
						for k, tl := range probes.LatestTimelines() {
							out[k] = tl
						}
						return out
					}
				}
				eng, err = engine.New(ecfg)
				if err != nil {
					return err
				}
				lb.Engine = eng
				backend, admin = lb, lb
			case "knative":
				client, host, err := deployknative.NewClient(kubeconfig, kubeContext)
				if err != nil {
					return fmt.Errorf("knative backend: %w", err)
				}
				log.Info("knative backend", "api_server", host, "namespace", namespace)
				backend = router.KnativeBackend{Resolver: knative.NewResolver(client, namespace, 0)}
			default:
				return fmt.Errorf("--backend %q: use local (child processes on this machine) or knative", backendName)
			}
			rcfg := router.Config{Functions: fns, Backend: backend, Admin: admin, RequestTimeout: requestTimeout, Registry: reg, Logger: log, Telemetry: tel,
				Concurrency: ratelimit.NewConcurrencyLimiter(ratelimit.ConcurrencyConfig{Max: maxConcurrent, Registerer: reg}),
			}
			authNote := "authentication off: local development"
			if dev {
				if !isLoopback(addr) {
					return fmt.Errorf("--dev turns authentication off, so it only listens on loopback; %s is not (drop --dev and pass --keys-file)", addr)
				}
			} else {
				keys, err := auth.LoadSources(keysFile, os.Getenv(auth.EnvVar))
				if err != nil {
					return fmt.Errorf("authentication is on outside local development: %w; create a key with `pilotlight keys new --id NAME --functions '*' --file keys.yaml` and pass --keys-file keys.yaml (or run `make run` / serve --dev on loopback)", err)
				}
				rcfg.Keys = keys
				// Rate limits are per API key, so they apply when keys do.
				rcfg.RateLimit = ratelimit.New(ratelimit.Config{RPS: rateRPS, Burst: rateBurst, Registerer: reg,
					Skipper: func(c echo.Context) bool { return auth.IsPublicPath(c.Path()) }})
				rcfg.SeparateAdmin = adminAddr != ""
				authNote = fmt.Sprintf("authentication on: %d API keys", keys.Len())
				log.Info("authentication on", "keys", keys.IDs(), "admin_addr", adminAddr)
			}
			if flagsPath != "" {
				w, err := flags.NewWatcher(flags.WatcherConfig{Path: flagsPath, Registerer: reg, Logger: log})
				if err != nil {
					return fmt.Errorf("flags: %w (fix the file, or pass --flags \"\" to send every request to each function's stable revision)", err)
				}
				wctx, wstop := context.WithCancel(context.Background())
				defer wstop()
				go func() {
					if err := w.Run(wctx); err != nil {
						log.Error("flag watcher stopped; the last good flags stay in force", "err", err)
					}
				}()
				picker, err := router.NewFlagPicker(w, flagsPath, reg)
				if err != nil {
					return err
				}
				rcfg.Picker = picker
				log.Info("flags", "file", flagsPath, "version", w.Set().Version())
				ctl := rollout.New(rollout.Config{FlagsPath: flagsPath, Functions: fns, Gatherer: reg, Registerer: reg, Logger: log})
				defer ctl.Close()
				rcfg.Rollouts = ctl
			}
			rt, err := router.New(rcfg)
			if err != nil {
				return err
			}
			defer rt.Close()
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("listen on %s: %w (is another pilotlight running? pass --addr)", addr, err)
			}
			names := make([]string, len(fns))
			for i, f := range fns {
				names[i] = f.Name
			}
			log.Info("pilotlight serving", "addr", ln.Addr().String(), "functions", names, "warm_pool", poolSize)
			scheme := "http"
			if tlsCert != "" {
				scheme = "https"
			}
			fmt.Fprintf(os.Stdout, "pilotlight: listening on %s://%s (functions: %v; %s)\n", scheme, ln.Addr(), names, authNote)
			engDone := make(chan error, 1)
			engCtx, engStop := context.WithCancel(context.Background())
			defer engStop()
			if eng != nil {
				go func() { engDone <- eng.Run(engCtx) }()
			} else {
				engDone <- nil
			}
			srv := limits.Server(rt.Handler(), log)
			srvDone := make(chan error, 1)
			go func() {
				if tlsCert != "" {
					srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
					srvDone <- srv.ServeTLS(ln, tlsCert, tlsKey)
					return
				}
				srvDone <- srv.Serve(ln)
			}()
			if h := rt.AdminHandler(); h != nil {
				aln, err := net.Listen("tcp", adminAddr)
				if err != nil {
					return fmt.Errorf("admin listener on %s: %w (pass --admin-addr)", adminAddr, err)
				}
				asrv := limits.Server(h, log)
				defer asrv.Close()
				go func() { _ = asrv.Serve(aln) }()
				log.Info("admin endpoints (/metrics, /admin) on their own listener", "addr", aln.Addr().String())
			}
			select {
			case <-ctx.Done():
			case err := <-srvDone:
				if !errors.Is(err, http.ErrServerClosed) {
					log.Error("router stopped", "err", err)
				}
			}
			log.Info("shutting down: draining requests, then instances")
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
			engStop()
			return <-engDone
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "127.0.0.1:8080", "router listen address")
	f.StringVar(&fnDir, "functions", "functions", "directory whose subdirectories hold function.yaml files")
	f.BoolVar(&withEBPF, "ebpf", false, "attach the eBPF probes (cold-start timelines, kernel latency per function); also PILOTLIGHT_EBPF=1")
	f.BoolVar(&dev, "dev", false, "local development: authentication off and admin endpoints on the main listener (loopback only; make run uses it)")
	f.StringVar(&keysFile, "keys-file", "", "API keys file (hashed at rest; see pilotlight keys new); keys in $PILOTLIGHT_API_KEYS are added")
	f.StringVar(&adminAddr, "admin-addr", "127.0.0.1:9090", "listener for /metrics and /admin outside --dev (empty: main listener, admin keys required)")
	f.StringVar(&tlsCert, "tls-cert", "", "serve TLS (1.2+) with this certificate (PEM)")
	f.StringVar(&tlsKey, "tls-key", "", "private key for --tls-cert (PEM)")
	f.Float64Var(&rateRPS, "rate-rps", 100, "requests per second per API key (a key's own rate in the keys file wins)")
	f.IntVar(&rateBurst, "rate-burst", 200, "burst per API key")
	f.IntVar(&maxConcurrent, "max-concurrent", ratelimit.DefaultMaxConcurrent, "requests in flight per function before 503s are shed")
	f.StringVar(&backendName, "backend", "local", "where instances run: local (child processes, scale to zero on this machine) or knative (a cluster's tag URLs)")
	f.StringVar(&namespace, "namespace", deployknative.DefaultNamespace, "knative backend: namespace of the functions' Services")
	f.StringVar(&kubeconfig, "kubeconfig", "", "knative backend: kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else in-cluster)")
	f.StringVar(&kubeContext, "context", "", "knative backend: kubeconfig context")
	f.StringVar(&flagsPath, "flags", "config/flags/flags.json", "flag file (flagd format) that picks each request's revision; empty: every request goes to the stable revision")
	f.IntVar(&poolSize, "pool-size", engine.DefaultPoolSize, "pre-started generic runtime processes (the pilot light); 0 disables")
	f.DurationVar(&scaleToZeroAfter, "scale-to-zero-after", 0, "override every function's scaling.scaleToZeroAfter (0 keeps each function's)")
	f.DurationVar(&requestTimeout, "request-timeout", router.DefaultRequestTimeout, "longest a request may take, cold start included (504 after)")
	f.IntVar(&queueCapacity, "queue-capacity", engine.DefaultQueueCapacity, "requests the activator holds per revision while an instance starts (503 beyond)")
	f.DurationVar(&stableWindow, "stable-window", 0, "autoscaler stable window (default 60s)")
	f.DurationVar(&limits.ReadHeaderTimeout, "read-header-timeout", limits.ReadHeaderTimeout, "longest a client may take to send request headers")
	f.DurationVar(&limits.ReadTimeout, "read-timeout", limits.ReadTimeout, "longest a client may take to send a whole request (slow bodies are cut off)")
	f.DurationVar(&limits.WriteTimeout, "write-timeout", limits.WriteTimeout, "longest a response may take, cold start included (keep above --request-timeout)")
	f.DurationVar(&limits.IdleTimeout, "idle-timeout", limits.IdleTimeout, "how long an idle keep-alive connection stays open")
	f.IntVar(&limits.MaxHeaderBytes, "max-header-bytes", limits.MaxHeaderBytes, "largest request header block accepted (431 beyond)")
	f.StringVar(&cpuProfile, "cpuprofile", "", "write the router's CPU profile to this file until serve exits (for profiling the hop)")
	f.DurationVar(&panicWindow, "panic-window", 0, "autoscaler panic window (default 6s)")
	return cmd
}

// isLoopback reports whether a listen address only binds loopback.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// startProbes attaches the eBPF probes when asked; without privilege or
// kernel support serving goes on and one line says why.
func startProbes(want bool, reg prometheus.Registerer, log *slog.Logger) *bpf.Probes {
	if !want {
		_ = bpf.Disabled(reg)
		return nil
	}
	p, err := bpf.New(bpf.Config{ParentPID: os.Getpid(), Registerer: reg, Logger: log})
	if err != nil {
		log.Warn(err.Error())
		_ = bpf.Disabled(reg)
		return nil
	}
	log.Info("eBPF probes attached: cold-start timelines in /admin/functions, kernel latency in /metrics")
	return p
}

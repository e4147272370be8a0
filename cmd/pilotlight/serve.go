package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pilotlight/pilotlight/admin"
	"github.com/pilotlight/pilotlight/admin/console"
	"github.com/pilotlight/pilotlight/bpf"
	"github.com/pilotlight/pilotlight/bpf/agent"
	"github.com/pilotlight/pilotlight/engine"
	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/listener"
	"github.com/pilotlight/pilotlight/internal/telemetry"
	"github.com/pilotlight/pilotlight/knative"
	"github.com/pilotlight/pilotlight/rollout"
	"github.com/pilotlight/pilotlight/router"
	"github.com/pilotlight/pilotlight/router/auth"
	"github.com/pilotlight/pilotlight/router/ratelimit"
)

// serveOptions are serve's flags.
type serveOptions struct {
	addr, fnDir, flagsPath       string
	withEBPF, dev                bool
	syscallLatency               bool
	socketQueue                  bool
	keysFile, adminAddr          string
	tlsCert, tlsKey              string
	rateRPS                      float64
	rateBurst, maxConcurrent     int
	backend, namespace           string
	kubeconfig, kubeContext      string
	knativeVia                   string
	flagsConfigMap, lease        string // NAMESPACE/NAME: the flag state in a ConfigMap, rollouts driven by the Lease holder
	prometheusURL                string // rollout analysis reads every replica's traffic from this Prometheus
	routerService                string // NAMESPACE/NAME: else from each endpoint of this Service (its EndpointSlices)
	bpfAgents                    string // NAMESPACE/NAME: the console's cold-start timelines from the nodes' eBPF agents
	cpuProfile, runtimeBin       string
	instanceHTTP                 bool
	runtimeMemory, machineMemory byteSize
	deviceMemory                 byteSize
	capacityWait                 time.Duration
	isolation                    string
	limits                       router.Limits
	poolSize, queueCapacity      int
	preload                      bool
	scaleToZeroAfter             time.Duration
	requestTimeout               time.Duration
	stableWindow, panicWindow    time.Duration
	// prescaler holds Knative revisions warm for blue-green rollouts
	// (set by newBackend with --backend knative).
	prescaler *knative.Prescaler
}

func newServeCmd() *cobra.Command {
	o := &serveOptions{limits: router.DefaultLimits()}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the platform on one machine: router, activator, autoscaler and warm pool over child runtime processes",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Getenv("PILOTLIGHT_EBPF") == "1" {
				o.withEBPF = true
			}
			if err := o.validate(); err != nil {
				return err
			}
			return o.run()
		},
	}
	o.register(cmd.Flags())
	return cmd
}

func (o *serveOptions) register(f *pflag.FlagSet) {
	f.StringVar(&o.addr, "addr", "127.0.0.1:8080", "router listen address")
	f.StringVar(&o.fnDir, "functions", "functions", "directory whose subdirectories hold function.yaml files")
	f.BoolVar(&o.withEBPF, "ebpf", false, "attach the eBPF probes (cold-start timelines, kernel latency and connections per function, over the framed socket or --instance-http alike); also PILOTLIGHT_EBPF=1")
	f.BoolVar(&o.syscallLatency, "ebpf-syscall-latency", false, "with --ebpf, also time network syscalls (keeps syscall tracepoints attached: costs throughput, see bpf/README.md)")
	f.BoolVar(&o.socketQueue, "ebpf-socket-queue", true, "with --ebpf, time request bytes in instances' socket receive queues (a program on every TCP read, and the timing in those on every packet and socket read, which stay for the Unix socket's connections: see bpf/README.md; =false drops them)")
	f.BoolVar(&o.dev, "dev", false, "local development: authentication off and admin endpoints on the main listener (loopback only; make run uses it)")
	f.StringVar(&o.keysFile, "keys-file", "", "API keys file (hashed at rest; see pilotlight keys new); keys in $PILOTLIGHT_API_KEYS are added")
	f.StringVar(&o.adminAddr, "admin-addr", "127.0.0.1:9090", "listener for /metrics (open to scrapers) and /admin (admin key) outside --dev (empty: main listener, admin keys required for both)")
	f.StringVar(&o.tlsCert, "tls-cert", "", "serve TLS (1.2+) with this certificate (PEM)")
	f.StringVar(&o.tlsKey, "tls-key", "", "private key for --tls-cert (PEM)")
	f.Float64Var(&o.rateRPS, "rate-rps", 100, "requests per second per API key (a key's own rate in the keys file wins)")
	f.IntVar(&o.rateBurst, "rate-burst", 200, "burst per API key")
	f.IntVar(&o.maxConcurrent, "max-concurrent", ratelimit.DefaultMaxConcurrent, "requests in flight per function before 503s are shed")
	f.StringVar(&o.backend, "backend", "local", "where instances run: local (child processes, scale to zero on this machine) or knative (a cluster's tag URLs)")
	f.StringVar(&o.namespace, "namespace", knative.DefaultNamespace, "knative backend: namespace of the functions' Services")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "knative backend: kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else in-cluster)")
	f.StringVar(&o.kubeContext, "context", "", "knative backend: kubeconfig context")
	f.StringVar(&o.knativeVia, "knative-via", "tag", "knative backend: reach a revision at its traffic tag's URL (tag: through the cluster's networking layer and DNS) or at its own Kubernetes Service's address (service: no networking layer, no DNS; Knative's activator still holds cold starts)")
	f.StringVar(&o.flagsPath, "flags", "config/flags/flags.json", "flag file (flagd format) that picks each request's revision; empty: every request goes to the stable revision")
	f.StringVar(&o.flagsConfigMap, "flags-configmap", "", "NAMESPACE/NAME: keep the flag state in this ConfigMap (key "+rollout.ConfigMapDataKey+"), written through the Kubernetes API and followed with a watch; --flags is the mounted copy, served only while the API is unreachable")
	f.StringVar(&o.lease, "lease", "", "NAMESPACE/NAME: of several router replicas, only the holder of this coordination Lease drives rollouts (identity: $POD_NAME, else the host name)")
	f.StringVar(&o.prometheusURL, "prometheus-url", "", "rollout analysis reads every router replica's traffic from this Prometheus (the queries: docs/flags-and-rollouts.md); wins over --router-service")
	f.StringVar(&o.routerService, "router-service", "", "NAMESPACE/NAME: rollout analysis scrapes /metrics of every ready endpoint of this Service (its EndpointSlices, port \""+rollout.AdminPortName+"\"); empty: this replica's own traffic only")
	f.StringVar(&o.bpfAgents, "bpf-agents", "", "NAMESPACE/NAME (e.g. pilotlight-system/pilotlight-bpf-agent): the console shows the cold-start timelines the eBPF agents on the nodes report, found through this Service's EndpointSlices (--backend knative)")
	f.IntVar(&o.poolSize, "pool-size", engine.DefaultPoolSize, "pre-started generic runtime processes (the pilot light); 0 disables")
	f.BoolVar(&o.preload, "warm-pool-preload", true, "idle warm-pool processes pre-load the sessions of the dedicated functions most recently scaled to zero (charged to --runtime-memory-total)")
	f.Var(&o.runtimeMemory, "runtime-memory", "memory one shared runtime process may give its revisions' sessions, e.g. 2Gi (default: 1/8 of the machine's); a revision that would exceed it unloads the least recently used idle ones first")
	f.Var(&o.machineMemory, "runtime-memory-total", "memory every runtime process together may hold, e.g. 16Gi (default: 3/4 of the machine's); past it, requests wait and then get 503 rather than an OOM kill")
	f.Var(&o.deviceMemory, "runtime-device-memory", "CUDA device memory every runtime process together may be charged, e.g. 14Gi (default: no bound); a process is charged its CUDA sessions' arena limits and one CUDA context; sessions on the CPU are charged nothing")
	f.DurationVar(&o.capacityWait, "capacity-wait", engine.DefaultCapacityWait, "how long a request waits for memory when no runtime process has room for its revision (and nothing idle can be unloaded) before it gets 503")
	f.StringVar(&o.isolation, "isolation", "", "override every function's isolation: shared or dedicated (default: each function.yaml's, else shared for models up to 64 MiB; dedicated with --ebpf)")
	f.BoolVar(&o.instanceHTTP, "instance-http", false, "reach local instances over HTTP on their port instead of their framed Unix socket (slower; for comparison, as bench hop does)")
	f.StringVar(&o.runtimeBin, "runtime-bin", "", "executable the local engine runs instances with (default: "+listener.RuntimeBinary+" beside this binary, else on PATH)")
	f.DurationVar(&o.scaleToZeroAfter, "scale-to-zero-after", 0, "override every function's scaling.scaleToZeroAfter (0 keeps each function's)")
	f.DurationVar(&o.requestTimeout, "request-timeout", router.DefaultRequestTimeout, "longest a request may take, cold start included (504 after)")
	f.IntVar(&o.queueCapacity, "queue-capacity", engine.DefaultQueueCapacity, "requests the activator holds per revision while an instance starts (503 beyond)")
	f.DurationVar(&o.stableWindow, "stable-window", 0, "autoscaler stable window (default 60s)")
	f.DurationVar(&o.panicWindow, "panic-window", 0, "autoscaler panic window (default 6s)")
	f.DurationVar(&o.limits.ReadHeaderTimeout, "read-header-timeout", o.limits.ReadHeaderTimeout, "longest a client may take to send request headers")
	f.DurationVar(&o.limits.ReadTimeout, "read-timeout", o.limits.ReadTimeout, "longest a client may take to send a request body (slow bodies are cut off)")
	f.DurationVar(&o.limits.WriteTimeout, "write-timeout", o.limits.WriteTimeout, "longest a response may take, cold start included (must exceed --request-timeout)")
	f.DurationVar(&o.limits.IdleTimeout, "idle-timeout", o.limits.IdleTimeout, "how long an idle keep-alive connection stays open")
	f.IntVar(&o.limits.MaxHeaderBytes, "max-header-bytes", o.limits.MaxHeaderBytes, "largest request header block accepted (431 beyond)")
	f.StringVar(&o.cpuProfile, "cpuprofile", "", "write the router's CPU profile to this file until serve exits (for profiling the hop)")
}

// validate refuses flag combinations that cannot work, saying why.
func (o *serveOptions) validate() error {
	if o.limits.WriteTimeout <= o.requestTimeout {
		return fmt.Errorf("--write-timeout %s must exceed --request-timeout %s: the connection's write deadline would cut off answers the router is still allowed to wait for (a cold start, a slow instance), so clients would see a dropped connection instead of the answer or a 504", o.limits.WriteTimeout, o.requestTimeout)
	}
	if o.dev && !isLoopback(o.addr) {
		return fmt.Errorf("--dev turns authentication off, so it only listens on loopback; %s is not (drop --dev and pass --keys-file)", o.addr)
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return fmt.Errorf("--tls-cert and --tls-key go together")
	}
	if o.backend != "local" && o.backend != "knative" {
		return fmt.Errorf("--backend %q: use local (child processes on this machine) or knative", o.backend)
	}
	if o.backend == "knative" && o.knativeVia != "tag" && o.knativeVia != "service" {
		return fmt.Errorf("--knative-via %q: use tag (the revision's tag URL) or service (the revision's Kubernetes Service)", o.knativeVia)
	}
	return nil
}

// run serves until SIGTERM or interrupt: functions, backend, router, listeners, then the drain.
func (o *serveOptions) run() error {
	log := telemetry.Logger()
	telemetry.TuneGC()
	if o.cpuProfile != "" {
		stop, err := startCPUProfile(o.cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	fns, err := o.loadFunctions(log)
	if err != nil {
		return err
	}
	reg, tel, shutdown, err := telemetry.ForProcess("pilotlight-router", log)
	if err != nil {
		return err
	}
	defer shutdown()
	probes := startProbes(o.withEBPF, bpf.Config{SyscallLatency: o.syscallLatency, SocketQueue: o.socketQueue}, reg, log)
	if probes != nil {
		defer probes.Close()
	}
	eng, rcfg, source, err := o.newBackend(fns, probes, reg, log)
	if err != nil {
		return err
	}
	rcfg.Telemetry = tel
	authNote, err := o.secure(&rcfg, reg, log)
	if err != nil {
		return err
	}
	wctx, wstop := context.WithCancel(context.Background())
	defer wstop()
	flagWatcher, rollouts, outcomes, closeFlags, err := o.withFlags(wctx, &rcfg, eng, fns, reg, log)
	if err != nil {
		return err
	}
	defer closeFlags()
	rt, err := router.New(rcfg)
	if err != nil {
		return err
	}
	defer rt.Close()
	if outcomes != nil {
		rollout.MountOutcomes(rt, fns, outcomes)
	}
	acfg := admin.Config{Functions: fns, Picker: rcfg.Picker, Source: source, Rollouts: rollouts, Gatherer: reg}
	if eng != nil {
		acfg.Targets = func() []admin.ScrapeTarget {
			var out []admin.ScrapeTarget
			for _, p := range eng.Endpoints() {
				out = append(out, admin.ScrapeTarget{Addr: p.Addr, PID: p.PID, Function: p.Function, Revision: p.Revision, Shared: p.Shared})
			}
			return out
		}
	}
	admin.Mount(rt, acfg)
	agentTimelines, stopAgents, err := o.agentTimelines()
	if err != nil {
		return err
	}
	defer stopAgents()
	ui, err := console.New(console.Config{Source: console.Platform{Functions: fns, Picker: rcfg.Picker, Engine: eng, Probes: probes,
		Timelines: agentTimelines, Rollouts: rollouts, Flags: flagWatcher, FlagsPath: o.flagsPath}, Gatherer: reg, Keys: rcfg.Keys, Logger: log})
	if err != nil {
		return fmt.Errorf("console: %w", err)
	}
	defer ui.Close()
	// The console sits beside /admin: on the admin listener, or on the main one under
	// --dev. Its page asks for a key; its API requires an admin key itself.
	rt.MountAdminPage(console.Path, ui)
	return o.listenAndServe(rt, eng, fns, authNote, log)
}

// loadFunctions loads every function.yaml; one broken function does not take the others down.
func (o *serveOptions) loadFunctions(log *slog.Logger) ([]*functions.Manifest, error) {
	fns, err := functions.LoadAll(o.fnDir)
	if len(fns) == 0 {
		return nil, fmt.Errorf("no function could be loaded from %s (each needs a valid function.yaml): %v", o.fnDir, err)
	}
	if err != nil {
		log.Error("some functions were skipped; fix their function.yaml and restart", "err", err)
	}
	return fns, nil
}

// newBackend builds where instances run: the local engine (returned, to
// run) or a Knative cluster's tag URLs; the router config around it; and
// what the admin view shows of it (nil for Knative).
func (o *serveOptions) newBackend(fns []*functions.Manifest, probes *bpf.Probes, reg *prometheus.Registry, log *slog.Logger) (*engine.Engine, router.Config, admin.Source, error) {
	rcfg := router.Config{Functions: fns, RequestTimeout: o.requestTimeout, Registry: reg, Logger: log, Limits: o.limits,
		Concurrency: ratelimit.NewConcurrencyLimiter(ratelimit.ConcurrencyConfig{Max: o.maxConcurrent, Registerer: reg})}
	if o.backend == "knative" {
		client, host, err := knative.NewClient(o.kubeconfig, o.kubeContext)
		if err != nil {
			return nil, rcfg, nil, fmt.Errorf("knative backend: %w", err)
		}
		log.Info("knative backend", "api_server", host, "namespace", o.namespace, "via", o.knativeVia)
		b := knative.Backend{Resolver: knative.NewResolver(client, o.namespace, 0)}
		if o.knativeVia == "service" {
			kube, _, err := knative.NewKubeClient(o.kubeconfig, o.kubeContext)
			if err != nil {
				return nil, rcfg, nil, fmt.Errorf("knative backend: %w", err)
			}
			b.Services = knative.NewRevisionServices(kube.CoreV1(), o.namespace, 0)
		}
		rcfg.Backend = b
		as, err := knative.NewAutoscalingClient(o.kubeconfig, o.kubeContext)
		if err != nil {
			return nil, rcfg, nil, fmt.Errorf("knative backend: %w", err)
		}
		o.prescaler = knative.NewPrescaler(&knative.Deployer{Client: client, Autoscaling: as, Log: log}, o.namespace, fns, log)
		return nil, rcfg, nil, nil
	}
	bin, err := o.instanceBinary()
	if err != nil {
		return nil, rcfg, nil, err
	}
	isolation := o.isolation
	if isolation == "" && probes != nil {
		// The probes attribute kernel events by pid, and a shared process's
		// pid holds many revisions: with them on, each revision gets its own.
		isolation = functions.IsolationDedicated
		log.Info("eBPF probes on: every revision runs dedicated (a process each) so its kernel events are its own; --isolation shared overrides")
	}
	ecfg := engine.Config{
		Functions: fns, Binary: bin, PoolSize: o.poolSize, ScaleToZeroAfter: o.scaleToZeroAfter, QueueCapacity: o.queueCapacity,
		StableWindow: o.stableWindow, PanicWindow: o.panicWindow, Logger: log, Registerer: reg,
		// The probes follow the framed socket as they follow TCP: --ebpf
		// changes no transport.
		HTTPOnly:      o.instanceHTTP,
		RuntimeMemory: int64(o.runtimeMemory), MachineMemory: int64(o.machineMemory), DeviceMemory: int64(o.deviceMemory),
		CapacityWait: o.capacityWait, Isolation: isolation, Preload: o.preload,
	}
	lb := engine.Backend{}
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
		lb.Connections = func() map[string]any {
			out := map[string]any{}
			for k, c := range probes.LatestConnections() {
				out[k] = c
			}
			return out
		}
	}
	eng, err := engine.New(ecfg)
	if err != nil {
		return nil, rcfg, nil, err
	}
	lb.Engine = eng
	rcfg.Backend = lb
	return eng, rcfg, lb, nil
}

// instanceBinary is what the local engine execs for instances:
// --runtime-bin, else pilotlight-runtime beside this binary (make build puts
// both in bin/), else on PATH.
func (o *serveOptions) instanceBinary() (string, error) {
	if o.runtimeBin != "" {
		return o.runtimeBin, nil
	}
	if exe, err := os.Executable(); err == nil {
		beside := filepath.Join(filepath.Dir(exe), listener.RuntimeBinary)
		if st, err := os.Stat(beside); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return beside, nil
		}
	}
	if p, err := exec.LookPath(listener.RuntimeBinary); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("no %s beside this binary or on PATH: run `make build` (it builds bin/pilotlight and bin/%s), or pass --runtime-bin", listener.RuntimeBinary, listener.RuntimeBinary)
}

// secure turns authentication, per-key rate limits and the admin listener
// on outside --dev, and says which in one line.
func (o *serveOptions) secure(rcfg *router.Config, reg prometheus.Registerer, log *slog.Logger) (string, error) {
	if o.dev {
		return "authentication off: local development", nil
	}
	keys, err := auth.LoadSources(o.keysFile, os.Getenv(auth.EnvVar))
	if err != nil {
		return "", fmt.Errorf("authentication is on outside local development: %w; create a key with `pilotlight keys new --id NAME --functions '*' --file keys.yaml` and pass --keys-file keys.yaml (or run `make run` / serve --dev on loopback)", err)
	}
	rcfg.Keys = keys
	// Rate limits are per API key, so they apply when keys do.
	rcfg.RateLimit = ratelimit.New(ratelimit.Config{RPS: o.rateRPS, Burst: o.rateBurst, Registerer: reg})
	rcfg.SeparateAdmin = o.adminAddr != ""
	log.Info("authentication on", "keys", keys.IDs(), "admin_addr", o.adminAddr)
	return fmt.Sprintf("authentication on: %d API keys", keys.Len()), nil
}

// withFlags makes the flag file pick revisions and serves rollouts (and
// OFREP, and the outcome store the rollouts gate on); the watcher runs
// until ctx ends.
func (o *serveOptions) withFlags(ctx context.Context, rcfg *router.Config, eng *engine.Engine, fns []*functions.Manifest, reg *prometheus.Registry, log *slog.Logger) (*flags.Watcher, *rollout.Controller, *rollout.Outcomes, func(), error) {
	if o.flagsPath == "" {
		return nil, nil, nil, func() {}, nil
	}
	cluster, err := o.clusterFlags(log)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	wcfg := flags.WatcherConfig{Path: o.flagsPath, Registerer: reg, Logger: log}
	if cluster.store != nil {
		wcfg.FileFallback = func() bool { return !cluster.apiUp.Load() }
	}
	w, err := flags.NewWatcher(wcfg)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("flags: %w (fix the file, or pass --flags \"\" to send every request to each function's stable revision)", err)
	}

	go func() {
		if err := w.Run(ctx); err != nil {
			log.Error("flag watcher stopped; the last good flags stay in force", "err", err)
		}
	}()
	picker, err := router.NewFlagPicker(w, o.flagsPath, reg)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	rcfg.Picker = picker
	rcfg.Flags = picker
	log.Info("flags", "file", o.flagsPath, "version", w.Set().Version())
	shadow, err := rollout.NewShadower(rollout.ShadowConfig{Functions: fns, Backend: rcfg.Backend, Registerer: reg, Logger: log})
	if err != nil {
		return nil, nil, nil, nil, err
	}
	rcfg.Shadow = shadow
	outcomes, err := rollout.NewOutcomes(rollout.OutcomesConfig{Functions: fns, Registerer: reg, Logger: log, Peers: cluster.peers})
	if err != nil {
		return nil, nil, nil, nil, err
	}
	rcfg.Recorder = outcomes
	rc := rollout.Config{FlagsPath: o.flagsPath, Functions: fns, Gatherer: reg, Registerer: reg, Logger: log,
		Shadow: shadow, Scaler: rolloutScaler(eng, o.prescaler), Reload: w.ReloadNow, Outcomes: outcomes}
	if cluster.store != nil {
		rc.Flags = cluster.store // the watch delivers each write to every replica, this one included
	}
	if cluster.leader != nil {
		rc.Leader = cluster.leader
	}
	switch {
	case o.prometheusURL != "":
		rc.Traffic = &rollout.PrometheusSource{URL: o.prometheusURL}
		log.Info("rollout analysis reads every replica through Prometheus", "url", o.prometheusURL)
	case cluster.traffic != nil:
		rc.Traffic = cluster.traffic
		log.Info("rollout analysis scrapes every replica through the Service's EndpointSlices", "service", o.routerService, "port", rollout.AdminPortName)
	}
	ctl := rollout.New(rc)
	if s := cluster.store; s != nil {
		s.OnRecords = ctl.FollowRecords // every replica copies its share of shadow traffic
		go func() {
			if err := s.Follow(ctx, func(raw []byte) error { return w.Apply(raw, "ConfigMap "+o.flagsConfigMap) }, cluster.apiUp.Store, log); err != nil {
				log.Error("following the flag ConfigMap stopped; the mounted file serves", "err", err)
			}
		}()
	}
	if l := cluster.leader; l != nil {
		l.OnLead(func(ctx context.Context) {
			if p := o.prescaler; p != nil {
				// Holds a dead leader left: released once their time has
				// passed, checked while this replica leads.
				go func() {
					tick := time.NewTicker(releaseExpiredEvery)
					defer tick.Stop()
					for {
						if revs, err := p.ReleaseExpired(ctx); len(revs) > 0 || err != nil {
							log.Info("released revisions a previous leader held warm past their time", "revisions", revs, "err", err)
						}
						select {
						case <-ctx.Done():
							return
						case <-tick.C:
						}
					}
				}()
			}
			if fns, err := ctl.Resume(ctx); err != nil {
				log.Error("taking over rollouts", "err", err)
			} else if len(fns) > 0 {
				log.Warn("rolled back rollouts the previous leader left running", "functions", fns)
			}
		})
		go l.Run(ctx)
	}
	return w, ctl, outcomes, func() { ctl.Close(); shadow.Close() }, nil
}

// agentTimelines follows the nodes' eBPF agents (--bpf-agents) for the
// console; nil without the flag.
func (o *serveOptions) agentTimelines() (func() map[string]bpf.Timeline, func(), error) {
	if o.bpfAgents == "" {
		return nil, func() {}, nil
	}
	ns, name, ok := strings.Cut(o.bpfAgents, "/")
	if !ok || ns == "" || name == "" {
		return nil, nil, fmt.Errorf("--bpf-agents %q: want NAMESPACE/NAME", o.bpfAgents)
	}
	client, _, err := knative.NewKubeClient(o.kubeconfig, o.kubeContext)
	if err != nil {
		return nil, nil, fmt.Errorf("--bpf-agents: %w", err)
	}
	r := &agent.Reader{Client: client, Namespace: ns, Service: name, Log: telemetry.Logger()}
	ctx, cancel := context.WithCancel(context.Background())
	go r.Run(ctx, 5*time.Second)
	return r.Latest, cancel, nil
}

// releaseExpiredEvery is how often the leader looks for min-scale holds
// on Knative revisions that outlived the router that set them.
const releaseExpiredEvery = time.Minute

// clusterState is what --flags-configmap and --lease build.
type clusterState struct {
	store  *rollout.ConfigMapStore // nil: the flag file alone
	apiUp  *atomic.Bool            // the ConfigMap is being followed through the API
	leader *rollout.Leader         // nil: this replica drives every rollout
	// traffic reads every replica's metrics (--router-service); nil: this replica's.
	traffic *rollout.EndpointSliceSource
	// peers are the other replicas, which join the outcomes of the
	// predictions they served (--router-service); nil: this one holds all.
	peers *rollout.OutcomePeers
}

// clusterFlags connects to the Kubernetes API when --flags-configmap or
// --lease asks for it.
func (o *serveOptions) clusterFlags(log *slog.Logger) (clusterState, error) {
	st := clusterState{apiUp: new(atomic.Bool)}
	if o.flagsConfigMap == "" && o.lease == "" && o.routerService == "" {
		return st, nil
	}
	client, host, err := knative.NewKubeClient(o.kubeconfig, o.kubeContext)
	if err != nil {
		return st, fmt.Errorf("--flags-configmap / --lease / --router-service: %w", err)
	}
	if o.routerService != "" {
		ns, name, ok := strings.Cut(o.routerService, "/")
		if !ok || ns == "" || name == "" {
			return st, fmt.Errorf("--router-service %q: want NAMESPACE/NAME", o.routerService)
		}
		st.traffic = &rollout.EndpointSliceSource{Client: client, Namespace: ns, Service: name}
		st.peers = &rollout.OutcomePeers{Client: client, Namespace: ns, Service: name, Self: replicaIdentity()}
		if o.tlsCert != "" {
			cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
			if err != nil {
				return st, fmt.Errorf("--tls-cert: %w", err)
			}
			st.peers.Certificate = &cert
		}
	}
	if o.flagsConfigMap != "" {
		ns, name, ok := strings.Cut(o.flagsConfigMap, "/")
		if !ok || ns == "" || name == "" {
			return st, fmt.Errorf("--flags-configmap %q: want NAMESPACE/NAME", o.flagsConfigMap)
		}
		st.store = &rollout.ConfigMapStore{Client: client, Namespace: ns, Name: name}
		log.Info("flags in a ConfigMap", "configmap", o.flagsConfigMap, "api_server", host, "fallback_file", o.flagsPath)
	}
	if o.lease != "" {
		ns, name, ok := strings.Cut(o.lease, "/")
		if !ok || ns == "" || name == "" {
			return st, fmt.Errorf("--lease %q: want NAMESPACE/NAME", o.lease)
		}
		id := replicaIdentity()
		if id == "" {
			return st, errors.New("--lease: this replica's identity: set POD_NAME")
		}
		if st.leader, err = rollout.NewLeader(rollout.LeaderConfig{Client: client, Namespace: ns, Name: name, Identity: id, Logger: log}); err != nil {
			return st, err
		}
	}
	return st, nil
}

// replicaIdentity is this router replica's name: its pod's (POD_NAME, as
// the Deployment sets it from the downward API), else the host's.
func replicaIdentity() string {
	if id := os.Getenv("POD_NAME"); id != "" {
		return id
	}
	id, _ := os.Hostname()
	return id
}

// listenAndServe opens the listeners, runs the engine, serves until a
// signal, then drains: requests first, instances after.
func (o *serveOptions) listenAndServe(rt *router.Router, eng *engine.Engine, fns []*functions.Manifest, authNote string, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (is another pilotlight running? pass --addr)", o.addr, err)
	}
	names := make([]string, len(fns))
	for i, f := range fns {
		names[i] = f.Name
	}
	attrs := []any{"addr", ln.Addr().String(), "functions", names, "backend", o.backend}
	if o.backend == "local" { // Knative scales a cluster's revisions: no pool of ours there
		attrs = append(attrs, "warm_pool", o.poolSize)
	}
	log.Info("pilotlight serving", attrs...)
	scheme := "http"
	if o.tlsCert != "" {
		scheme = "https"
	}
	fmt.Fprintf(os.Stdout, "pilotlight: listening on %s://%s (functions: %v; %s)\n", scheme, ln.Addr(), names, authNote)
	if rt.AdminHandler() == nil {
		fmt.Fprintf(os.Stdout, "pilotlight: console on %s://%s%s\n", scheme, ln.Addr(), console.Path)
	}
	engDone := make(chan error, 1)
	engCtx, engStop := context.WithCancel(context.Background())
	defer engStop()
	if eng != nil {
		go func() { engDone <- eng.Run(engCtx) }()
	} else {
		engDone <- nil
	}
	srvDone := make(chan error, 1)
	go func() {
		if o.tlsCert != "" {
			srvDone <- rt.ServeTLS(ln, o.tlsCert, o.tlsKey)
			return
		}
		srvDone <- rt.Serve(ln)
	}()
	if h := rt.AdminHandler(); h != nil {
		aln, err := net.Listen("tcp", o.adminAddr)
		if err != nil {
			return fmt.Errorf("admin listener on %s: %w (pass --admin-addr)", o.adminAddr, err)
		}
		asrv := o.limits.Server(h, log)
		fmt.Fprintf(os.Stdout, "pilotlight: console on http://%s%s\n", aln.Addr(), console.Path)
		defer asrv.Close()
		go func() { _ = asrv.Serve(aln) }()
		log.Info("admin endpoints (/metrics open, /admin with an admin key) on their own listener", "addr", aln.Addr().String())
	}
	select {
	case <-ctx.Done():
	case err := <-srvDone:
		if err != nil {
			log.Error("router stopped", "err", err)
		}
	}
	log.Info("shutting down: draining requests, then instances")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = rt.Shutdown(sctx)
	engStop()
	return <-engDone
}

// startCPUProfile writes a CPU profile to path until stop.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
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
func startProbes(want bool, cfg bpf.Config, reg prometheus.Registerer, log *slog.Logger) *bpf.Probes {
	if !want {
		_ = bpf.Disabled(reg)
		return nil
	}
	cfg.ParentPID, cfg.Registerer, cfg.Logger = os.Getpid(), reg, log
	p, err := bpf.New(cfg)
	if err != nil {
		log.Warn(err.Error())
		_ = bpf.Disabled(reg)
		return nil
	}
	log.Info("eBPF probes attached: cold-start timelines in /admin/functions, kernel latency in /metrics")
	return p
}

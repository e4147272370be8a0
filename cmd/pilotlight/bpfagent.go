package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pilotlight/pilotlight/bpf"
	"github.com/pilotlight/pilotlight/bpf/agent"
	"github.com/pilotlight/pilotlight/internal/listener"
	"github.com/pilotlight/pilotlight/internal/telemetry"
)

func newBPFCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "bpf", Short: "eBPF probes outside serve"}
	var (
		listen, procRoot string
		namespace        string
		interval         time.Duration
		syscallLatency   bool
		socketQueue      bool
	)
	agentCmd := &cobra.Command{
		Use:   "agent",
		Short: "Per-node agent (a Kubernetes DaemonSet): probe the node's function pods and export /metrics",
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := telemetry.Logger()
			reg := prometheus.NewRegistry()
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			kube, err := agentKube()
			if err != nil {
				log.Warn("bpf agent: no Kubernetes API; function and revision come from the processes' K_SERVICE/K_REVISION and cold starts are not followed", "err", err)
			}
			// The agent needs the probes and the probes report execs to the
			// agent: an exec before the agent exists is left to its scan.
			var a atomic.Pointer[agent.Agent]
			cfg := bpf.Config{Registerer: reg, Logger: log, SyscallLatency: syscallLatency, SocketQueue: socketQueue}
			if kube != nil {
				cfg.ExecComm = listener.RuntimeBinary[:min(15, len(listener.RuntimeBinary))]
				// The runtime tags its ready answer's and first request's
				// connections: ready and the first response are its own.
				cfg.ReadyPriority, cfg.RequestPriority = listener.ReadyPriority, listener.RequestPriority
				cfg.OnExec = func(pid int) {
					if ag := a.Load(); ag != nil {
						ag.OnExec(pid)
					}
				}
			}
			p, err := bpf.New(cfg)
			if err != nil {
				// The agent exists only to probe: without the capability it cannot do its job.
				return fmt.Errorf("%w (the DaemonSet grants CAP_BPF and CAP_PERFMON)", err)
			}
			defer p.Close()
			ag := agent.New(p, procRoot, kube != nil, log)
			a.Store(ag)
			if kube != nil {
				if err := agent.WatchPods(ctx, kube, namespace, os.Getenv("NODE_NAME"), ag); err != nil {
					return err
				}
			}
			go ag.Run(ctx, interval)
			mux := http.NewServeMux()
			mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
			// The console in cluster mode reads each node's latest timelines here.
			mux.HandleFunc("GET /timelines", func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_ = json.NewEncoder(w).Encode(p.LatestTimelines())
			})
			srv := &http.Server{Addr: listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
			go func() { <-ctx.Done(); _ = srv.Close() }()
			log.Info("bpf agent: metrics", "addr", listen, "node", os.Getenv("NODE_NAME"))
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	agentCmd.Flags().StringVar(&listen, "listen", ":9464", "metrics listener")
	agentCmd.Flags().StringVar(&procRoot, "proc", "/proc", "the host's /proc (the DaemonSet runs with hostPID)")
	agentCmd.Flags().StringVar(&namespace, "namespace", "pilotlight", "the functions' namespace, whose pods on this node (NODE_NAME) the agent watches")
	agentCmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "how often to look for new or gone function pods")
	agentCmd.Flags().BoolVar(&socketQueue, "socket-queue", true, "time request bytes in the instances' socket receive queues (two programs on every packet and TCP read of the node, ~0.6 µs per request: see bpf/README.md; =false drops them)")
	agentCmd.Flags().BoolVar(&syscallLatency, "syscall-latency", false, "also time network syscalls (keeps syscall tracepoints attached: costs every task on the node, see bpf/README.md)")
	cmd.AddCommand(agentCmd)
	return cmd
}

// agentKube is the agent's client in its pod (the DaemonSet's service
// account may get, list and watch pods); nil outside a cluster.
func agentKube() (kubernetes.Interface, error) {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

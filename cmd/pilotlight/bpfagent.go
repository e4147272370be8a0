package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/pilotlight/pilotlight/bpf"
	"github.com/pilotlight/pilotlight/bpf/agent"
	"github.com/pilotlight/pilotlight/internal/telemetry"
)

func newBPFCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "bpf", Short: "eBPF probes outside serve"}
	var (
		listen, procRoot string
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
			p, err := bpf.New(bpf.Config{Registerer: reg, Logger: log, SyscallLatency: syscallLatency, SocketQueue: socketQueue})
			if err != nil {
				// The agent exists only to probe: without the capability it cannot do its job.
				return fmt.Errorf("%w (the DaemonSet grants CAP_BPF and CAP_PERFMON)", err)
			}
			defer p.Close()
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			go agent.Run(ctx, p, procRoot, interval, log)
			srv := &http.Server{Addr: listen, Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 10 * time.Second}
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
	agentCmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "how often to look for new or gone function pods")
	agentCmd.Flags().BoolVar(&socketQueue, "socket-queue", true, "time request bytes in the instances' socket receive queues (two programs on every packet and TCP read of the node, ~0.6 µs per request: see bpf/README.md; =false drops them)")
	agentCmd.Flags().BoolVar(&syscallLatency, "syscall-latency", false, "also time network syscalls (keeps syscall tracepoints attached: costs every task on the node, see bpf/README.md)")
	cmd.AddCommand(agentCmd)
	return cmd
}

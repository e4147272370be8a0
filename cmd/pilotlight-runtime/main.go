// Command pilotlight-runtime is the runtime an instance runs: one revision
// of one function behind the Open Inference Protocol and the function's own
// JSON, on Knative's container contract ($PORT, ready after warm-up, drain
// on SIGTERM). It is the image's entrypoint and what the local engine
// execs; it links no router, control plane or Kubernetes package, so an
// instance starts without their package inits.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pilotlight/pilotlight/functions"
	_ "github.com/pilotlight/pilotlight/functions/all"
	"github.com/pilotlight/pilotlight/internal/listener"
	"github.com/pilotlight/pilotlight/internal/telemetry"
	"github.com/pilotlight/pilotlight/runtime/ort"
	"github.com/pilotlight/pilotlight/runtime/prewarm"
	"github.com/pilotlight/pilotlight/runtime/server"
)

func main() {
	if err := newRuntimeCmd().Execute(); err != nil {
		os.Exit(1)
	}
}

func newRuntimeCmd() *cobra.Command {
	var (
		dir, revision, listen string
		port                  int
		generic               bool
		drain                 time.Duration
		socket                string
	)
	cmd := &cobra.Command{
		Use:   "pilotlight-runtime",
		Short: "Run one function revision (Knative's container contract: $PORT, ready after warm-up, drain on SIGTERM)",
		Long: `Runs one instance: one revision of one function, served through the V2 API and
POST / (the function's own JSON). With --generic the process initialises ONNX Runtime
and waits, not ready, for POST /admin/specialise (the local engine's warm pool);
specialised with "shared": true it serves many revisions, loaded and unloaded
(POST /admin/unload) while it runs.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: false,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := listener.WaitStartGate(); err != nil {
				return err
			}
			log := telemetry.Logger()
			telemetry.TuneGC()
			if !cmd.Flags().Changed("port") {
				if p := os.Getenv("PORT"); p != "" {
					v, err := strconv.Atoi(p)
					if err != nil {
						return fmt.Errorf("PORT=%q is not a port number", p)
					}
					port = v
				}
			}
			if !generic && dir == "" {
				return fmt.Errorf("--function DIR is required (or --generic for a warm-pool process)")
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
			defer stop()

			var m *functions.Manifest
			if !generic {
				var err error
				if m, err = functions.LoadDir(dir); err != nil {
					return err
				}
				if revision == "" {
					revision = os.Getenv("K_REVISION")
				}
				if _, ok := m.Revision(revision); !ok {
					if revision != "" && os.Getenv("K_REVISION") != revision {
						return fmt.Errorf("function %s has no revision %q", m.Name, revision)
					}
					revision = m.Revisions[len(m.Revisions)-1].Name
				}
				log = log.With("function", m.Name, "revision", revision)
				if ks := os.Getenv("K_SERVICE"); ks != "" && ks != m.Name {
					log.Warn("K_SERVICE differs from the function name; serving the manifest's function", "k_service", ks)
				}
			}
			if lib, err := ort.Init(); err != nil {
				// Live but never ready: the reason is served by /v2/health/ready.
				log.Error("ONNX Runtime unavailable", "err", err)
			} else {
				log.Info("ONNX Runtime initialised", "library", lib, "version", ort.RuntimeVersion())
				if generic {
					// Pay ONNX Runtime's first-session costs now, while idle.
					if err := prewarm.Run(); err != nil {
						log.Warn("prewarm failed; the first specialisation will be slower", "err", err)
					}
				}
			}
			reg, tel, shutdown, err := telemetry.ForProcess("pilotlight-runtime", log)
			if err != nil {
				return err
			}
			defer shutdown()
			// In a Knative pod the node agent's probes follow the cold start:
			// the runtime tags its ready answer's and first request's connections.
			srv := server.New(server.Config{AllowSpecialise: generic, DrainTimeout: drain, Registry: reg, Logger: log, Telemetry: tel,
				TagColdStart: os.Getenv("K_SERVICE") != ""})
			ln, err := net.Listen("tcp", net.JoinHostPort(listen, strconv.Itoa(port)))
			if err != nil {
				return fmt.Errorf("listen on %s:%d: %w", listen, port, err)
			}
			var frames net.Listener
			if socket != "" {
				// Only serve's user may connect: the socket file is 0600 (umask may widen it).
				os.Remove(socket)
				if frames, err = net.Listen("unix", socket); err != nil {
					return fmt.Errorf("listen on the router's socket %s: %w", socket, err)
				}
				if err := os.Chmod(socket, 0o600); err != nil {
					return fmt.Errorf("restricting the router's socket %s: %w", socket, err)
				}
				defer os.Remove(socket)
			}
			fmt.Fprintf(os.Stdout, "%s%s\n", listener.ReadyPrefix, ln.Addr())
			if m != nil {
				go func() {
					if err := srv.Load(ctx, m, revision); err != nil {
						log.Error("instance will stay not ready", "err", err)
					}
				}()
			}
			return srv.Serve(ctx, ln, frames)
		},
	}
	cmd.Flags().StringVar(&dir, "function", "", "function directory holding function.yaml")
	cmd.Flags().StringVar(&revision, "revision", "", "revision to serve (default $K_REVISION, else the newest)")
	cmd.Flags().StringVar(&listen, "listen", "0.0.0.0", "address to listen on")
	cmd.Flags().StringVar(&socket, "socket", "", "also serve the local router's framed requests on this Unix socket (the local engine sets it; Knative does not)")
	cmd.Flags().IntVar(&port, "port", 8080, "port to listen on (default $PORT, else 8080; 0 picks a free port)")
	cmd.Flags().BoolVar(&generic, "generic", false, "start without a function and wait for POST /admin/specialise (warm pool)")
	cmd.Flags().DurationVar(&drain, "drain-timeout", 30*time.Second, "how long SIGTERM waits for in-flight requests")
	return cmd
}

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/bench"
	"github.com/pilotlight/pilotlight/knative"
)

func newBenchCmd() *cobra.Command {
	var (
		fnDir, fnRoot string
		flagsFile     string
		serveArgs     []string
		duration      time.Duration
		coldStarts    int
		density       bench.Density
		verbose       bool
		cluster       clusterBenchOptions
	)
	cmd := &cobra.Command{
		Use:       "bench [instance|coldstart|hop|platform|grpc|step|memory|ebpf|density|all|ebpf-programs|cluster-coldstart]...",
		Short:     "Measure the platform on loopback and print Markdown tables (make bench)",
		ValidArgs: []string{"instance", "coldstart", "hop", "platform", "grpc", "step", "memory", "ebpf", "all", "ebpf-programs", "density", "cluster-coldstart"},
		Args:      cobra.OnlyValidArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			bin, err := os.Executable()
			if err != nil {
				return err
			}
			if len(args) == 0 {
				args = []string{"all"}
			}
			if abs, err := filepath.Abs(fnDir); err == nil {
				fnDir = abs
			}
			logTo := io.Discard
			if verbose {
				logTo = os.Stderr
			}
			env := bench.Env{Bin: bin, Function: fnDir, Duration: duration, Log: logTo, FlagsFile: flagsFile, ServeArgs: serveArgs}
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			want := map[string]bool{}
			for _, a := range args {
				want[a] = true
			}
			all := want["all"]
			fmt.Fprintf(out, "pilotlight bench: %s, %s per load, on %s\n", fnDir, duration, time.Now().UTC().Format(time.RFC3339))
			run := func(name, title string, f func(context.Context) ([]bench.Row, error)) error {
				// ebpf-programs is a diagnosis, not a figure, and
				// cluster-coldstart needs a cluster: only when asked.
				if !want[name] && (!all || name == "ebpf-programs" || name == "cluster-coldstart") {
					return nil
				}
				fmt.Fprintf(os.Stderr, "bench: %s...\n", name)
				rows, err := f(ctx)
				if err != nil {
					return fmt.Errorf("bench %s: %w", name, err)
				}
				bench.Report(out, title, rows)
				return nil
			}
			steps := []struct {
				name, title string
				f           func(context.Context) ([]bench.Row, error)
			}{
				{"instance", "One instance (runtime only)", func(ctx context.Context) ([]bench.Row, error) { return bench.Instance(ctx, env) }},
				{"coldstart", "Scale from zero: warm pool, pre-load off (before)", func(ctx context.Context) ([]bench.Row, error) {
					return bench.ColdStart(ctx, env, 1, coldStarts, "--warm-pool-preload=false")
				}},
				{"coldstart", "Scale from zero: warm pool, pre-load on: hit and miss (same serve)", func(ctx context.Context) ([]bench.Row, error) {
					return bench.ColdStartPreload(ctx, env, coldStarts)
				}},
				{"coldstart", "Scale from zero: exec (no pool)", func(ctx context.Context) ([]bench.Row, error) { return bench.ColdStart(ctx, env, 0, coldStarts) }},
				{"coldstart", "Scale from zero: a burst, pre-load off and on", func(ctx context.Context) ([]bench.Row, error) { return bench.BurstPreload(env, fnRoot) }},
				{"hop", "Router hop", func(ctx context.Context) ([]bench.Row, error) { return bench.Hop(ctx, env) }},
				{"platform", "Through the platform (make run's flag file)", func(ctx context.Context) ([]bench.Row, error) { return bench.Platform(ctx, env) }},
				{"platform", "What the flag file costs, with realistic users (shipped flags vs none, same run)", func(ctx context.Context) ([]bench.Row, error) { return bench.PlatformUsers(ctx, env) }},
				{"grpc", "V2 over gRPC vs REST, direct, through nginx grpc_pass and through the router (same run)", func(ctx context.Context) ([]bench.Row, error) { return bench.GRPC(ctx, env) }},
				{"step", "Load step", func(ctx context.Context) ([]bench.Row, error) { return bench.Step(ctx, env) }},
				{"memory", "Memory", func(ctx context.Context) ([]bench.Row, error) { return bench.Memory(ctx, env, fnRoot) }},
				{"density", "Many functions per machine: shared vs dedicated runtime processes (same run)", func(ctx context.Context) ([]bench.Row, error) {
					return density.Run(ctx, env, fnRoot)
				}},
				{"ebpf", "eBPF probe overhead (probes on vs off, same run)", func(ctx context.Context) ([]bench.Row, error) {
					if os.Geteuid() != 0 {
						return []bench.Row{{Name: "eBPF overhead", Value: "skipped: the probes need root (CAP_BPF, CAP_PERFMON)"}}, nil
					}
					return bench.EBPF(ctx, env)
				}},
				{"ebpf-programs", "eBPF probe overhead by program (each attached alone, same run)", func(ctx context.Context) ([]bench.Row, error) {
					if os.Geteuid() != 0 {
						return []bench.Row{{Name: "eBPF overhead by program", Value: "skipped: the probes need root (CAP_BPF, CAP_PERFMON)"}}, nil
					}
					return bench.EBPFPrograms(ctx, env)
				}},
				{"cluster-coldstart", "Scale from zero: a Knative cluster beside local serve's warm pool and exec (same run)", func(ctx context.Context) ([]bench.Row, error) {
					return cluster.run(ctx, env, coldStarts, logTo)
				}},
			}
			for _, s := range steps {
				if err := run(s.name, s.title, s.f); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&fnDir, "function", "functions/fraud", "function directory to benchmark")
	f.StringVar(&fnRoot, "functions", "functions", "functions root for the memory figure (every function at zero), and where density finds fraud and recommend")
	f.IntVar(&density.Functions, "density-functions", 200, "density: functions served shared (copies of fraud and recommend)")
	f.IntVar(&density.Dedicated, "density-dedicated", 20, "density: functions served dedicated (their RSS is scaled to --density-functions)")
	f.IntVar(&density.Wakes, "density-wakes", 50, "density: first responses after an unload timed (and warm-pool and exec cold starts beside them)")
	f.IntVar(&density.Registered, "density-registered", 1000, "density: functions registered, all at zero, for serve's RSS and start time")
	f.StringArrayVar(&serveArgs, "serve-arg", nil, "an extra serve argument for the hop, grpc and ebpf figures, e.g. --serve-arg=--instance-http to reach the instance over HTTP instead of its framed socket")
	f.StringVar(&flagsFile, "flags-file", "config/flags/flags.json", "flag file the platform figure serves")
	f.DurationVar(&duration, "duration", 5*time.Second, "length of each load")
	f.IntVar(&coldStarts, "cold-starts", 20, "scale-from-zero cycles per source")
	f.BoolVar(&verbose, "v", false, "show the processes' logs")
	f.StringVar(&cluster.router, "router", "", "cluster-coldstart: the router Service's URL (make cluster-up prints it; run inside its network namespace)")
	f.StringVar(&cluster.key, "key", "", "cluster-coldstart: an API key the router accepts for the function")
	f.StringVar(&cluster.kubeconfig, "kubeconfig", "", "cluster-coldstart: kubeconfig to watch the revision's pods with (default: $KUBECONFIG, ~/.kube/config)")
	f.StringVar(&cluster.namespace, "namespace", knative.DefaultNamespace, "cluster-coldstart: the functions' namespace")
	f.StringVar(&cluster.revision, "revision", "", "cluster-coldstart: the revision to take from zero (default: the function's default revision)")
	return cmd
}

type clusterBenchOptions struct {
	router, key, kubeconfig, namespace, revision string
}

// run measures the first response from zero in the cluster and, in the
// same run, through local serve from its warm pool and by exec (the
// coldstart figures), and returns the rows side by side.
func (o clusterBenchOptions) run(ctx context.Context, env bench.Env, n int, log io.Writer) ([]bench.Row, error) {
	if o.router == "" || o.key == "" {
		return nil, fmt.Errorf("cluster-coldstart needs --router and --key: make cluster-up prints both; run the bench inside its network namespace (ip netns exec ...)")
	}
	m, err := functions.LoadDir(env.Function)
	if err != nil {
		return nil, err
	}
	body, err := os.ReadFile(filepath.Join(env.Function, "testdata", "infer.json"))
	if err != nil {
		return nil, fmt.Errorf("cluster-coldstart sends %s's V2 request from testdata/infer.json: %w", m.Name, err)
	}
	kube, _, err := knative.NewKubeClient(o.kubeconfig, "")
	if err != nil {
		return nil, err
	}
	rev := o.revision
	if rev == "" {
		rev = m.DefaultRevision()
	}
	rows, err := bench.ClusterColdStart(ctx, bench.Cluster{RouterURL: o.router, Key: o.key, Kube: kube, Namespace: o.namespace,
		Revision: rev, Function: m.Name, Body: body, Log: log}, n)
	if err != nil {
		return nil, err
	}
	for _, pool := range []int{1, 0} {
		local, err := bench.ColdStart(ctx, env, pool, n)
		if err != nil {
			return nil, err
		}
		rows = append(rows, local...)
	}
	return rows, nil
}

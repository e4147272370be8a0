package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/pilotlight/pilotlight/internal/telemetry"
	"github.com/pilotlight/pilotlight/knative"
)

func newDeployCmd() *cobra.Command {
	var (
		opts             knative.DeployOptions
		src              knative.Sources
		kubeconfig, kctx string
	)
	cmd := &cobra.Command{
		Use:   "deploy FUNCTION",
		Short: "Create or update a function's Knative Service, adding its revisions in order (like kn service create/update)",
		Long: `Deploys one function to a cluster with Knative Serving. Every revision up to
--revision (default the newest) that the cluster lacks is created in function.yaml
order, each by its own update of the Service's template, waiting for it to be Ready
before the next; then the traffic block is set from the function's flag (tags from
function.yaml, percents from the flag's fractional rule). Conflicting writes are
retried. The cluster comes from --kubeconfig, $KUBECONFIG, ~/.kube/config or, inside
a pod, the in-cluster service account. --dry-run prints the steps that cluster needs;
with no cluster configured, the steps an empty cluster would need (its first line
says which).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := src.Function(args[0])
			if err != nil {
				return err
			}
			if opts.Traffic, err = src.Split(m); err != nil {
				return err
			}
			client, host, err := knative.NewClient(kubeconfig, kctx)
			header := "# dry run against " + host + ": the steps this cluster needs, each Service as it would be applied"
			switch {
			case opts.DryRun && errors.Is(err, knative.ErrNoCluster):
				client = nil
				header = "# dry run without a cluster (none configured: --kubeconfig, $KUBECONFIG, ~/.kube/config or in-cluster): " +
					"the steps an EMPTY cluster would need, each Service as it would be applied"
			case err != nil:
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			d := &knative.Deployer{Client: client, Log: telemetry.Logger(), Progress: cmd.ErrOrStderr()}
			res, err := d.Deploy(ctx, m, opts)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if opts.DryRun {
				fmt.Fprintln(out, header)
			}
			for _, s := range res.Steps {
				if opts.DryRun {
					raw, err := knative.Render(s.Service, fmt.Sprintf("# step: %s %s (dry run)\n", s.Action, s.Revision))
					if err != nil {
						return err
					}
					fmt.Fprintf(out, "---\n%s", raw)
					continue
				}
				fmt.Fprintf(out, "%s: %s revision %s\n", m.Name, s.Action, s.Revision)
			}
			switch {
			case opts.DryRun:
			case res.URL != "":
				fmt.Fprintf(out, "Service %s is ready at %s\n", m.Name, res.URL)
			default:
				fmt.Fprintf(out, "Service %s applied; not waiting (kubectl -n %s get ksvc %s)\n", m.Name, opts.Namespace, m.Name)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&opts.Namespace, "namespace", "n", knative.DefaultNamespace, "namespace")
	f.StringVar(&opts.Image, "image", knative.DefaultImage, "runtime image reference (a digest is best)")
	f.StringVar(&opts.Revision, "revision", "", "revision to deploy up to (default the newest in function.yaml)")
	f.BoolVar(&opts.Public, "public", false, "expose on the external domain (default cluster-local: reached through the router)")
	f.BoolVar(&opts.DryRun, "dry-run", false, "validate with Knative's own checks and print each step's Service, change nothing")
	f.BoolVar(&opts.Wait, "wait", true, "wait for the Service to be Ready (older revisions are always waited for)")
	f.DurationVar(&opts.Timeout, "timeout", knative.DefaultDeployTimeout, "how long to wait for each revision")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG or ~/.kube/config; in-cluster when none)")
	f.StringVar(&kctx, "context", "", "kubeconfig context (default the current one)")
	f.StringVar(&src.FunctionsDir, "functions-dir", knative.DefaultFunctionsDir, "directory holding <function>/function.yaml")
	f.StringVar(&src.FlagsFile, "flags", knative.DefaultFlagsFile, "flagd flag file")
	return cmd
}

package main

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/spf13/cobra"

	"github.com/pilotlight/pilotlight/knative"
)

func newManifestsCmd() *cobra.Command {
	var (
		function, image, out, namespace string
		src                             knative.Sources
	)
	cmd := &cobra.Command{
		Use:   "manifests",
		Short: "Write the Knative Service of each function to config/knative (from function.yaml and flags.json)",
		Long: `Generates config/knative/<function>.yaml: a Knative Service whose template is the
function's newest revision and whose traffic block pins every revision by name with
its tag and the percent its flag gives untargeted traffic. The files are committed;
a test fails when they drift from function.yaml or flags.json. Older revisions must
exist before such a file is applied: ` + "`pilotlight deploy`" + ` creates them in order.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			files, err := knative.Generate(src, knative.Options{Image: image, Namespace: namespace}, function)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				return fmt.Errorf("create %s: %w", out, err)
			}
			for _, name := range slices.Sorted(maps.Keys(files)) {
				path := filepath.Join(out, name)
				if err := os.WriteFile(path, files[name], 0o644); err != nil {
					return fmt.Errorf("write %s: %w", path, err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), path)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&function, "function", "", "only this function (default: every function)")
	cmd.Flags().StringVar(&image, "image", knative.DefaultImage, "runtime image reference")
	cmd.Flags().StringVar(&namespace, "namespace", knative.DefaultNamespace, "namespace of the Services")
	cmd.Flags().StringVar(&out, "out", knative.DefaultManifestsDir, "directory to write <function>.yaml into")
	cmd.Flags().StringVar(&src.FunctionsDir, "functions-dir", knative.DefaultFunctionsDir, "directory holding <function>/function.yaml")
	cmd.Flags().StringVar(&src.FlagsFile, "flags", knative.DefaultFlagsFile, "flagd flag file")
	return cmd
}

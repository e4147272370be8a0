// Command pilotlight is the platform's CLI: `serve` runs the router and the
// local engine, and the other subcommands train models, evaluate flags,
// drive rollouts, deploy to Knative and measure. Instances run the other
// binary, cmd/pilotlight-runtime. main only wires subcommands; the logic
// lives in packages.
package main

import (
	"os"

	"github.com/spf13/cobra"

	_ "github.com/pilotlight/pilotlight/functions/all"
)

func main() {
	root := &cobra.Command{
		Use:           "pilotlight",
		Short:         "Serverless, scale-to-zero inference for ONNX models",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.AddCommand(newServeCmd(), newBenchCmd(), newLoadtestCmd(), newTrainCmd(), newRolloutCmd(), newManifestsCmd(),
		newDeployCmd(), newKeysCmd(), newFlagsCmd(), newBPFCmd())
	if err := root.Execute(); err != nil {
		os.Exit(1)
	}
}

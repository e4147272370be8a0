// Command pilotlight is the platform's one binary: `serve` runs the router and
// the local engine, `runtime` runs one function instance, and the other
// subcommands train models, evaluate flags, drive rollouts and produce the
// Knative manifests. main only wires subcommands; the logic lives in packages.
// `go build -tags runtimeonly` builds the lean instance binary: `runtime`
// only, without the router's and Kubernetes' packages and their inits.
package main

import (
	"os"

	"github.com/spf13/cobra"

	_ "github.com/pilotlight/pilotlight/functions/all"
)

func main() {
	handOff(os.Args)
	root := &cobra.Command{
		Use:           "pilotlight",
		Short:         "Serverless, scale-to-zero inference for ONNX models",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.AddCommand(newRuntimeCmd())
	root.AddCommand(platformCommands()...)
	if err := root.Execute(); err != nil {
		os.Exit(1)
	}
}

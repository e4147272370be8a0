//go:build !runtimeonly

package main

import "github.com/spf13/cobra"

// platformCommands are every subcommand but runtime: the router, the tools
// and the Kubernetes side. A build with -tags runtimeonly leaves them (and
// the packages they import) out, so an instance starts without their inits.
func platformCommands() []*cobra.Command {
	return []*cobra.Command{newServeCmd(), newBenchCmd(), newLoadtestCmd(), newTrainCmd(), newRolloutCmd(), newManifestsCmd(), newDeployCmd(), newKeysCmd(), newFlagsCmd(), newBPFCmd()}
}

// handOff is for the lean build; the full build runs every subcommand itself.
func handOff([]string) {}

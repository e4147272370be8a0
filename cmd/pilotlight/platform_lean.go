//go:build runtimeonly

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
)

// platformCommands is empty in the lean runtime build (make build's
// bin/pilotlight-runtime, the image's pilotlight): only `runtime` is linked.
func platformCommands() []*cobra.Command { return nil }

// platformBinary is the full build the image ships beside the lean one.
const platformBinary = "pilotlight-platform"

// handOff runs any other subcommand in the full build beside this one
// (the image's pilotlight is the lean build, so `pilotlight serve` still
// works there); it returns only when there is nothing to hand off to.
func handOff(args []string) {
	if len(args) < 2 {
		return
	}
	switch args[1] {
	case "runtime", "help", "-h", "--help", "completion", "__complete":
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	full := filepath.Join(filepath.Dir(exe), platformBinary)
	if _, err := os.Stat(full); err != nil {
		fmt.Fprintf(os.Stderr, "pilotlight: this is the lean runtime-only build; %q needs the full build (%s beside it, or bin/pilotlight from make build)\n", args[1], platformBinary)
		return
	}
	err = syscall.Exec(full, append([]string{full}, args[1:]...), os.Environ())
	fmt.Fprintf(os.Stderr, "pilotlight: run %s: %v\n", full, err)
}

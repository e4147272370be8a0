package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/pilotlight/pilotlight/functions/fraud"
	"github.com/pilotlight/pilotlight/functions/recommend"
)

// trainers are the built-in functions `pilotlight train` knows, in the order
// `train all` runs them.
var trainers = []struct {
	name  string
	train func(ctx context.Context, outDir string, progress io.Writer) error
}{
	{"fraud", fraud.Train},
	{"recommend", recommend.Train},
}

func newTrainCmd() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "train fraud|recommend|all",
		Short: "Train a built-in function's models from its synthetic data and export them to ONNX",
		Long: `Trains the models of the fraud or recommend function (or both) in pure Go,
single-threaded and seeded, and writes <revision>.onnx files. The same build on the
same architecture writes the same bytes every time; the committed models in
functions/<name>/models are checked against a fresh export by the packages' tests.

--out defaults to functions/<name>/models (relative to the working directory, so run
it from the repository root); with "all", --out DIR writes to DIR/<name>.`,
		ValidArgs: []string{"fraud", "recommend", "all"},
		Args:      cobra.MatchAll(cobra.ExactArgs(1), cobra.OnlyValidArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			progress := cmd.OutOrStdout()
			for _, t := range trainers {
				if args[0] != t.name && args[0] != "all" {
					continue
				}
				dir := filepath.Join("functions", t.name, "models")
				switch {
				case out != "" && args[0] == "all":
					dir = filepath.Join(out, t.name)
				case out != "":
					dir = out
				}
				start := time.Now()
				if err := t.train(ctx, dir, progress); err != nil {
					return fmt.Errorf("train %s: %w", t.name, err)
				}
				fmt.Fprintf(progress, "%s: done in %s\n", t.name, time.Since(start).Round(time.Millisecond))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "directory to write the .onnx files to (default functions/<name>/models)")
	return cmd
}

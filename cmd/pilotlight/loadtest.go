package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/pilotlight/pilotlight/internal/loadtest"
)

func newLoadtestCmd() *cobra.Command {
	var (
		cfg     loadtest.Config
		verbose bool
	)
	cmd := &cobra.Command{
		Use:   "loadtest",
		Short: "Load and fault suite against a real serve on loopback; exits 1 if a request is lost or a 5xx was not deliberate shedding",
		RunE: func(cmd *cobra.Command, _ []string) error {
			bin, err := os.Executable()
			if err != nil {
				return err
			}
			cfg.Bin = bin
			if cfg.Functions, err = filepath.Abs(cfg.Functions); err != nil {
				return err
			}
			cfg.Log = io.Discard
			if verbose {
				cfg.Log = os.Stderr
			}
			rep, err := loadtest.Run(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			rep.Print(cmd.OutOrStdout())
			if !rep.OK() {
				return fmt.Errorf("the platform lost requests or answered unexpected 5xx (see the table)")
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Functions, "functions", "functions", "functions root to serve")
	f.StringVar(&cfg.FlagsFile, "flags", "config/flags/flags.json", "flag file to copy and rewrite during the flags phase (empty skips it)")
	f.DurationVar(&cfg.Phase, "phase", 5*time.Second, "length of each load phase")
	f.IntVar(&cfg.Clients, "clients", 4, "steady concurrency (the step phase uses 10x)")
	f.BoolVar(&verbose, "v", false, "show serve's log")
	return cmd
}

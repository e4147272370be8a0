//go:build !runtimeonly

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"

	"github.com/pilotlight/pilotlight/router"
	"github.com/pilotlight/pilotlight/router/rollout"
)

func newRolloutCmd() *cobra.Command {
	var routerURL string
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Canary rollouts driven by the running platform: start, status, abort",
	}
	cmd.PersistentFlags().StringVar(&routerURL, "router", "http://127.0.0.1:8080", "the platform's admin URL")

	var (
		req           router.RolloutRequest
		steps         string
		interval, p99 time.Duration
		detach        bool
	)
	start := &cobra.Command{
		Use:   "start FUNCTION --to REVISION",
		Short: "Move FUNCTION's flag step by step to REVISION, promoting it or rolling back on a failed check",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Function = args[0]
			s, err := rollout.ParseSteps(steps)
			if err != nil {
				return err
			}
			req.Steps, req.Interval, req.MaxP99 = s, interval.String(), p99.String()
			body, _ := json.Marshal(req)
			var st rollout.Status
			if err := call(http.MethodPost, routerURL+"/admin/rollouts", body, &st); err != nil {
				return err
			}
			if detach {
				fmt.Fprintf(cmd.OutOrStdout(), "rollout of %s to %s started; follow it with `pilotlight rollout status %s`\n", req.Function, req.To, req.Function)
				return nil
			}
			return follow(cmd.OutOrStdout(), routerURL, req.Function)
		},
	}
	f := start.Flags()
	f.StringVar(&req.To, "to", "", "revision to roll out (required)")
	f.StringVar(&steps, "steps", "5,25,50,100", "canary weights in percent, increasing")
	f.DurationVar(&interval, "interval", rollout.DefaultInterval, "analysis interval per step")
	f.Float64Var(&req.MaxErrorRate, "max-error-rate", rollout.DefaultMaxErrorRate, "highest 5xx share of the canary's requests that passes")
	f.DurationVar(&p99, "max-p99", rollout.DefaultMaxP99, "highest canary p99 that passes")
	f.IntVar(&req.MinRequests, "min-requests", rollout.DefaultMinRequests, "canary requests needed per interval to judge")
	f.BoolVar(&detach, "detach", false, "return once started instead of following progress")
	_ = start.MarkFlagRequired("to")

	status := &cobra.Command{
		Use:   "status [FUNCTION]",
		Short: "Print a rollout's state and every decision with its numbers",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			url := routerURL + "/admin/rollouts"
			if len(args) == 1 {
				url += "/" + args[0]
			}
			var out json.RawMessage
			if err := call(http.MethodGet, url, nil, &out); err != nil {
				return err
			}
			var pretty bytes.Buffer
			_ = json.Indent(&pretty, out, "", "  ")
			fmt.Fprintln(cmd.OutOrStdout(), pretty.String())
			return nil
		},
	}
	abort := &cobra.Command{
		Use:   "abort FUNCTION",
		Short: "Stop a running rollout and route everything back to the stable revision",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var st rollout.Status
			if err := call(http.MethodDelete, routerURL+"/admin/rollouts/"+args[0], nil, &st); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rollout of %s to %s: %s\n", args[0], st.Spec.To, st.State)
			return nil
		},
	}
	cmd.AddCommand(start, status, abort)
	return cmd
}

// call sends one admin request and decodes the JSON answer; a non-2xx
// answer becomes an error carrying the platform's message.
func call(method, url string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if key := os.Getenv("PILOTLIGHT_ADMIN_KEY"); key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w (is `pilotlight serve` running? pass --router)", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		var e struct{ Error string }
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s", e.Error)
		}
		return fmt.Errorf("%s %s: %s", method, url, resp.Status)
	}
	return json.Unmarshal(raw, out)
}

// follow shows a live progress line until the rollout ends (a line per
// change when stdout is not a terminal), and fails unless it was promoted.
func follow(w io.Writer, base, function string) error {
	tty := false
	if f, ok := w.(*os.File); ok {
		tty = isatty.IsTerminal(f.Fd())
	}
	last := ""
	for {
		var st rollout.Status
		if err := call(http.MethodGet, base+"/admin/rollouts/"+function, nil, &st); err != nil {
			return err
		}
		line := progressLine(st)
		if tty {
			fmt.Fprintf(w, "\r\033[K%s", line)
		} else if line != last {
			fmt.Fprintln(w, line)
		}
		last = line
		if st.State != rollout.StateRunning {
			if tty {
				fmt.Fprintln(w)
			}
			for _, d := range st.Decisions {
				fmt.Fprintf(w, "  %s %-8s at %3d%%: %.0f requests, error rate %.4f, p99 %s — %s\n", d.At.Format("15:04:05"), d.Verdict, d.Weight, d.Requests, d.ErrorRate, d.P99, d.Reason)
			}
			if st.State != rollout.StatePromoted {
				return fmt.Errorf("rollout of %s to %s ended %s", function, st.Spec.To, st.State)
			}
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func progressLine(st rollout.Status) string {
	const width = 20
	filled := st.Weight * width / 100
	bar := strings.Repeat("█", filled) + strings.Repeat("░", width-filled)
	line := fmt.Sprintf("%s → %s  step %d/%d  %s %3d%%  %s", st.Spec.Function, st.Spec.To, st.Step+1, len(st.Spec.Steps), bar, st.Weight, st.State)
	if n := len(st.Decisions); n > 0 {
		d := st.Decisions[n-1]
		line += fmt.Sprintf("  last: %s (%.0f req, err %.2f%%, p99 %s)", d.Verdict, d.Requests, 100*d.ErrorRate, d.P99)
	}
	return line
}

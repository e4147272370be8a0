package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"

	"github.com/pilotlight/pilotlight/engine"
	"github.com/pilotlight/pilotlight/knative"
	"github.com/pilotlight/pilotlight/rollout"
)

// followPollInterval is how often `rollout start` asks for progress.
const followPollInterval = 500 * time.Millisecond

func newRolloutCmd() *cobra.Command {
	var routerURL string
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Rollouts driven by the running platform: start (canary or blue-green, with shadow traffic and prediction gates), status, abort, undo",
	}
	cmd.PersistentFlags().StringVar(&routerURL, "router", "http://127.0.0.1:8080", "the platform's admin URL (with authentication on, its --admin-addr; the key in PILOTLIGHT_ADMIN_KEY)")

	var (
		spec   rollout.Spec
		steps  string
		detach bool
	)
	start := &cobra.Command{
		Use:   "start FUNCTION --to REVISION",
		Short: "Roll FUNCTION out to REVISION, following progress to the verdict",
		Long: `Roll FUNCTION out to REVISION inside the running platform and follow it.

--strategy canary (the default) moves the function's flag through --steps,
judging each step for --interval; --strategy bluegreen pre-scales REVISION to
the serving revision's ready instances, then gives it 100% in one flag write
and keeps the previous revision warm for --keep-previous (see rollout undo).
--shadow N first copies N% of the serving revision's requests to REVISION
and compares the answers; --min-agreement and --max-score-delta roll back a
candidate whose predictions drift, even when its HTTP metrics are perfect.
--min-precision and --max-log-loss-delta judge the candidate's live answers
by their outcomes (labels posted to POST /v2/models/FUNCTION/outcomes; the
function records predictions when outcomes.maxPredictions is set in its
function.yaml), once --min-labelled outcomes were joined.
Exit status 0 when promoted, 1 otherwise.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec.Function = args[0]
			s, err := rollout.ParseSteps(steps)
			if err != nil {
				return err
			}
			spec.Steps = s // blue-green ignores them: one switch to 100%
			body, err := json.Marshal(spec)
			if err != nil {
				return err
			}
			var st rollout.Status
			if err := call(http.MethodPost, routerURL+"/admin/rollouts", body, &st); err != nil {
				return err
			}
			if detach {
				fmt.Fprintf(cmd.OutOrStdout(), "rollout of %s to %s started (%s); follow it with `pilotlight rollout status %s`\n", spec.Function, spec.To, st.Spec.Strategy, spec.Function)
				return nil
			}
			return follow(cmd.OutOrStdout(), routerURL, spec.Function)
		},
	}
	f := start.Flags()
	f.StringVar(&spec.To, "to", "", "revision to roll out (required)")
	f.StringVar(&spec.Strategy, "strategy", rollout.StrategyCanary, "canary (step by step) or bluegreen (one switch, instant undo)")
	f.StringVar(&steps, "steps", "5,25,50,100", "canary weights in percent, increasing")
	f.DurationVar(&spec.Interval, "interval", rollout.DefaultInterval, "analysis interval per step")
	f.Float64Var(&spec.MaxErrorRate, "max-error-rate", rollout.DefaultMaxErrorRate, "highest 5xx share of the candidate's requests that passes")
	f.DurationVar(&spec.MaxP99, "max-p99", rollout.DefaultMaxP99, "highest candidate p99 that passes")
	f.IntVar(&spec.MinRequests, "min-requests", rollout.DefaultMinRequests, "candidate requests (and compared shadow answers) needed per interval to judge")
	f.IntVar(&spec.Shadow, "shadow", 0, "percent of the serving revision's requests copied to the candidate before live traffic moves (0: no shadow phase)")
	f.Float64Var(&spec.MinAgreement, "min-agreement", 0, "lowest share of compared answers that must agree (fraud decisions, recommend top-k overlap, tensor outputs); 0: off")
	f.Float64Var(&spec.MaxScoreDelta, "max-score-delta", 0, "highest mean |Δ score| of compared answers (fraud probability, 1 - overlap, tensor output); 0: off")
	f.Float64Var(&spec.MinPrecision, "min-precision", 0, "lowest precision of the candidate's labelled live predictions, at the function's outcomes.threshold; 0: off")
	f.Float64Var(&spec.MaxLogLossDelta, "max-log-loss-delta", 0, "most the candidate's mean log loss over labelled predictions may exceed the serving revision's; 0: off")
	f.IntVar(&spec.MinLabelled, "min-labelled", 0, fmt.Sprintf("labelled outcomes needed (of each revision compared) before an outcome gate judges (0: %d)", rollout.DefaultMinLabelled))
	f.DurationVar(&spec.KeepPrevious, "keep-previous", 0, "keep the previous revision warm this long after promotion, for `rollout undo` (bluegreen default 10m)")
	f.BoolVar(&detach, "detach", false, "return once started instead of following progress")
	_ = start.MarkFlagRequired("to")

	var output string
	status := &cobra.Command{
		Use:   "status [FUNCTION]",
		Short: "Print rollouts as a table (every decision with its numbers for one function); -o json for scripts",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			w := cmd.OutOrStdout()
			if len(args) == 0 {
				var list struct {
					Rollouts []rollout.Status `json:"rollouts"`
				}
				if err := call(http.MethodGet, routerURL+"/admin/rollouts", nil, &list); err != nil {
					return err
				}
				if output == "json" {
					return writeIndented(w, list)
				}
				if len(list.Rollouts) == 0 {
					fmt.Fprintln(w, "no rollouts")
					return nil
				}
				writeRollouts(w, list.Rollouts)
				return nil
			}
			var st rollout.Status
			if err := call(http.MethodGet, routerURL+"/admin/rollouts/"+args[0], nil, &st); err != nil {
				return err
			}
			if output == "json" {
				return writeIndented(w, st)
			}
			writeRollouts(w, []rollout.Status{st})
			fmt.Fprintln(w)
			writeDecisions(w, st.Decisions)
			return nil
		},
	}
	status.Flags().StringVarP(&output, "output", "o", "table", "table or json")

	abort := &cobra.Command{
		Use:   "abort FUNCTION",
		Short: "Stop a running rollout and route everything back to the stable revision",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var st rollout.Status
			if err := call(http.MethodDelete, routerURL+"/admin/rollouts/"+args[0], nil, &st); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rollout of %s to %s: %s; %s serves\n", args[0], st.Spec.To, st.State, servingOf(st))
			return nil
		},
	}
	undo := &cobra.Command{
		Use:   "undo FUNCTION",
		Short: "Switch a promoted function back to its previous revision in one flag write (while it is kept warm)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var st rollout.Status
			if err := call(http.MethodPost, routerURL+"/admin/rollouts/"+args[0]+"/undo", nil, &st); err != nil {
				return err
			}
			last := ""
			if n := len(st.Decisions); n > 0 {
				last = " (" + st.Decisions[n-1].Reason + ")"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s serves again; %s is undone%s\n", args[0], st.From, st.Spec.To, last)
			return nil
		},
	}
	cmd.AddCommand(start, status, abort, undo)
	return cmd
}

// rolloutScaler is what pre-scales blue-green candidates and keeps the
// previous revision warm: the local engine, or on the Knative backend the
// Prescaler, which raises the revision's autoscaling.knative.dev/min-scale
// through the deployer and releases it when the hold ends.
func rolloutScaler(eng *engine.Engine, prescaler *knative.Prescaler) rollout.Scaler {
	switch {
	case eng != nil:
		return eng
	case prescaler != nil:
		return prescaler
	}
	return nil
}

// servingOf is the revision serving all untargeted traffic after a rollout ended.
func servingOf(st rollout.Status) string {
	if st.State == rollout.StatePromoted {
		return st.Spec.To
	}
	return st.From
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
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, url, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error string }
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s", e.Error)
		}
		return fmt.Errorf("%s %s: %s", method, url, resp.Status)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: the platform's answer does not decode (is the CLI older than the platform?): %w", method, url, err)
	}
	return nil
}

// follow shows a live progress line until the rollout ends (a line per
// change when stdout is not a terminal), then every decision, and fails
// unless it was promoted.
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
			writeDecisions(w, st.Decisions)
			if st.State != rollout.StatePromoted {
				return fmt.Errorf("rollout of %s to %s ended %s; %s serves", function, st.Spec.To, st.State, servingOf(st))
			}
			fmt.Fprintf(w, "%s promoted: %s serves", function, st.Spec.To)
			if !st.KeptUntil.IsZero() {
				fmt.Fprintf(w, "; %s kept warm until %s (`pilotlight rollout undo %s`)", st.From, st.KeptUntil.Format("15:04:05"), function)
			}
			fmt.Fprintln(w)
			return nil
		}
		time.Sleep(followPollInterval)
	}
}

func progressLine(st rollout.Status) string {
	const width = 20
	filled := st.Weight * width / 100
	bar := strings.Repeat("█", filled) + strings.Repeat("░", width-filled)
	line := fmt.Sprintf("%s → %s  %s  %-8s step %d/%d  %s %3d%%  %s", st.Spec.Function, st.Spec.To, st.Spec.Strategy, st.Phase, st.Step+1, len(st.Spec.Steps), bar, st.Weight, st.State)
	if n := len(st.Decisions); n > 0 {
		d := st.Decisions[n-1]
		line += fmt.Sprintf("  last: %s (%.0f req, err %.2f%%, p99 %s", d.Verdict, d.Requests, 100*d.ErrorRate, d.P99)
		if d.Compared > 0 {
			line += fmt.Sprintf(", %.0f compared, agreement %.3f, Δ %.4f", d.Compared, d.Agreement, d.ScoreDelta)
		}
		line += ")"
	}
	return line
}

func writeRollouts(w io.Writer, sts []rollout.Status) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FUNCTION\tSTRATEGY\tFROM\tTO\tSTATE\tPHASE\tWEIGHT\tSTEP\tSHADOW\tSTARTED\tUPDATED")
	for _, st := range sts {
		shadow := "-"
		if st.Spec.Shadow > 0 {
			shadow = fmt.Sprintf("%d%%", st.Spec.Shadow)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d%%\t%d/%d\t%s\t%s\t%s\n", st.Spec.Function, st.Spec.Strategy, st.From, st.Spec.To, st.State, st.Phase,
			st.Weight, st.Step+1, len(st.Spec.Steps), shadow, st.Started.Format("15:04:05"), st.Updated.Format("15:04:05"))
	}
	tw.Flush()
}

func writeDecisions(w io.Writer, ds []rollout.Decision) {
	if len(ds) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tPHASE\tVERDICT\tCHECK\tWEIGHT\tSOURCE\tREQUESTS\tERROR RATE\tP99\tCOMPARED\tAGREEMENT\tΔ SCORE\tREASON")
	for _, d := range ds {
		source := "-"
		if d.Source != "" {
			source = fmt.Sprintf("%s %d/%d", d.Source, d.Replicas, d.ReplicasListed)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d%%\t%s\t%.0f\t%.4f\t%s\t%.0f\t%.4f\t%.4f\t%s\n", d.At.Format("15:04:05"), d.Phase, d.Verdict, d.Check, d.Weight,
			source, d.Requests, d.ErrorRate, d.P99, d.Compared, d.Agreement, d.ScoreDelta, d.Reason)
	}
	tw.Flush()
}

func writeIndented(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

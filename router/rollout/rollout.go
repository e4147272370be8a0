// Package rollout is the canary controller (Flagger / Argo Rollouts style)
// that runs inside the platform: it moves a function's flag step by step
// toward a new revision, and between steps judges the canary by the
// router's own metrics (success rate and p99 over the step), promoting it at
// the end or rolling back to the stable revision on a failed check. Every
// decision is logged with its numbers and metered.
package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pilotlight/pilotlight/flags"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/functions"
)

// Defaults for a Spec's zero fields.
const (
	DefaultInterval     = 30 * time.Second
	DefaultMaxErrorRate = 0.01
	DefaultMaxP99       = 500 * time.Millisecond
	DefaultMinRequests  = 20
	// maxHolds is how many intervals in a row a step may lack traffic before the rollout fails.
	maxHolds = 5
)

// DefaultSteps are the canary weights, in percent.
var DefaultSteps = []int{5, 25, 50, 100}

// Spec asks for one rollout.
type Spec struct {
	Function     string        `json:"function"`
	To           string        `json:"to"`
	Steps        []int         `json:"steps"`
	Interval     time.Duration `json:"interval"`
	MaxErrorRate float64       `json:"max_error_rate"`
	MaxP99       time.Duration `json:"max_p99"`
	MinRequests  int           `json:"min_requests"`
}

// MarshalJSON writes durations as Go duration strings ("30s"), as the CLI takes them.
func (s Spec) MarshalJSON() ([]byte, error) {
	type plain Spec
	return json.Marshal(struct {
		plain
		Interval string `json:"interval"`
		MaxP99   string `json:"max_p99"`
	}{plain(s), s.Interval.String(), s.MaxP99.String()})
}

// UnmarshalJSON reads what MarshalJSON writes, so the CLI can decode the
// statuses the admin API returns.
func (s *Spec) UnmarshalJSON(b []byte) error {
	type plain Spec
	var v struct {
		plain
		Interval string `json:"interval"`
		MaxP99   string `json:"max_p99"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*s = Spec(v.plain)
	var err error
	if v.Interval != "" {
		if s.Interval, err = time.ParseDuration(v.Interval); err != nil {
			return fmt.Errorf("interval %q: %w", v.Interval, err)
		}
	}
	if v.MaxP99 != "" {
		if s.MaxP99, err = time.ParseDuration(v.MaxP99); err != nil {
			return fmt.Errorf("max_p99 %q: %w", v.MaxP99, err)
		}
	}
	return nil
}

// States of a rollout.
const (
	StateRunning    = "running"
	StatePromoted   = "promoted"
	StateRolledBack = "rolled_back"
	StateAborted    = "aborted"
	StateFailed     = "failed"
)

// Decision is one analysis and what the controller did about it.
type Decision struct {
	At        time.Time `json:"at"`
	Weight    int       `json:"weight"`
	Requests  float64   `json:"requests"`
	Errors    float64   `json:"errors"`
	ErrorRate float64   `json:"error_rate"`
	P99       string    `json:"p99"`
	Verdict   string    `json:"verdict"` // advance | hold | promote | rollback | abort
	Reason    string    `json:"reason"`
}

// Status is a rollout's progress.
type Status struct {
	Spec      Spec       `json:"spec"`
	From      string     `json:"from"`
	State     string     `json:"state"`
	Step      int        `json:"step"` // index into Spec.Steps
	Weight    int        `json:"weight"`
	Started   time.Time  `json:"started"`
	Updated   time.Time  `json:"updated"`
	Decisions []Decision `json:"decisions"`
}

// Config wires a controller to the platform.
type Config struct {
	FlagsPath  string
	Functions  []*functions.Manifest
	Gatherer   prometheus.Gatherer // the router's registry
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Controller runs at most one rollout per function.
type Controller struct {
	cfg       Config
	log       *slog.Logger
	fns       map[string]*functions.Manifest
	decisions *prometheus.CounterVec
	weight    *prometheus.GaugeVec
	mu        sync.Mutex
	runs      map[string]*run
	// fileMu serialises read-modify-write of the flag file: rollouts of two
	// functions edit the same file, and neither may lose the other's change.
	fileMu sync.Mutex
}

type run struct {
	mu     sync.Mutex
	status Status
	cancel context.CancelFunc
	abort  chan struct{}
	done   chan struct{}
}

// New builds a controller.
func New(cfg Config) *Controller {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &Controller{cfg: cfg, log: cfg.Logger, fns: map[string]*functions.Manifest{}, runs: map[string]*run{},
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_rollout_decisions_total",
			Help: "Rollout analyses by verdict (advance, hold, promote, rollback, abort)."}, []string{"function", "revision", "verdict"}),
		weight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pilotlight_rollout_canary_weight_percent",
			Help: "The canary's share of the fractional split set by the rollout controller."}, []string{"function", "revision"}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(c.decisions, c.weight)
	}
	for _, fn := range cfg.Functions {
		c.fns[fn.Name] = fn
	}
	return c
}

// SpecError is a bad rollout request (400 upstream).
type SpecError struct{ Msg string }

func (e *SpecError) Error() string { return e.Msg }

// ErrRunning says a rollout of the function is already under way (409 upstream).
var ErrRunning = errors.New("a rollout of this function is already running")

func (c *Controller) validate(s *Spec) (*functions.Manifest, error) {
	fn, ok := c.fns[s.Function]
	if !ok {
		return nil, &SpecError{fmt.Sprintf("unknown function %q", s.Function)}
	}
	if _, ok := fn.Revision(s.To); !ok {
		return nil, &SpecError{fmt.Sprintf("function %s has no revision %q", s.Function, s.To)}
	}
	if len(s.Steps) == 0 {
		s.Steps = DefaultSteps
	}
	prev := 0
	for i, w := range s.Steps {
		if w <= prev || w > 100 {
			return nil, &SpecError{fmt.Sprintf("steps[%d] = %d: steps must increase, each in (0, 100]", i, w)}
		}
		prev = w
	}
	if s.Steps[len(s.Steps)-1] != 100 {
		s.Steps = append(s.Steps, 100)
	}
	if s.Interval == 0 {
		s.Interval = DefaultInterval
	}
	if s.Interval < 100*time.Millisecond {
		return nil, &SpecError{fmt.Sprintf("interval %s is too short to judge anything (at least 100ms)", s.Interval)}
	}
	if s.MaxErrorRate == 0 {
		s.MaxErrorRate = DefaultMaxErrorRate
	}
	if s.MaxErrorRate < 0 || s.MaxErrorRate > 1 {
		return nil, &SpecError{fmt.Sprintf("max error rate %v must be in [0, 1]", s.MaxErrorRate)}
	}
	if s.MaxP99 == 0 {
		s.MaxP99 = DefaultMaxP99
	}
	if s.MaxP99 < 0 {
		return nil, &SpecError{"max p99 must be positive"}
	}
	if s.MinRequests == 0 {
		s.MinRequests = DefaultMinRequests
	}
	return fn, nil
}

// Start validates spec and runs the rollout in the background.
func (c *Controller) Start(spec Spec) (Status, error) {
	fn, err := c.validate(&spec)
	if err != nil {
		return Status{}, err
	}
	ff, err := flags.OpenFlagEdit(c.cfg.FlagsPath, fn.Flag)
	if err != nil {
		return Status{}, &SpecError{err.Error()}
	}
	from := ff.Variants()[ff.DefaultVariant()]
	if from == "" {
		return Status{}, &SpecError{fmt.Sprintf("flag %q has no defaultVariant naming the stable revision", fn.Flag)}
	}
	if from == spec.To {
		return Status{}, &SpecError{fmt.Sprintf("%s already serves %s by default: nothing to roll out", fn.Name, spec.To)}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if r, ok := c.runs[fn.Name]; ok {
		select {
		case <-r.done:
		default:
			return Status{}, ErrRunning
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{cancel: cancel, abort: make(chan struct{}), done: make(chan struct{}),
		status: Status{Spec: spec, From: from, State: StateRunning, Started: time.Now(), Updated: time.Now()}}
	c.runs[fn.Name] = r
	go c.drive(ctx, fn, r)
	return r.snapshot(), nil
}

// Status reports the latest rollout of a function.
func (c *Controller) Status(function string) (Status, bool) {
	c.mu.Lock()
	r, ok := c.runs[function]
	c.mu.Unlock()
	if !ok {
		return Status{}, false
	}
	return r.snapshot(), true
}

// List reports every function's latest rollout.
func (c *Controller) List() []Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Status, 0, len(c.runs))
	for _, r := range c.runs {
		out = append(out, r.snapshot())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Spec.Function < out[j].Spec.Function })
	return out
}

// Abort stops a running rollout and routes everything back to the stable revision.
func (c *Controller) Abort(function string) (Status, error) {
	c.mu.Lock()
	r, ok := c.runs[function]
	c.mu.Unlock()
	if !ok {
		return Status{}, &SpecError{fmt.Sprintf("no rollout of %q", function)}
	}
	select {
	case <-r.done:
		return r.snapshot(), nil
	default:
	}
	select {
	case <-r.abort:
	default:
		close(r.abort)
	}
	<-r.done
	return r.snapshot(), nil
}

// Close stops every rollout where it stands (the flag keeps its last split).
func (c *Controller) Close() {
	c.mu.Lock()
	runs := make([]*run, 0, len(c.runs))
	for _, r := range c.runs {
		runs = append(runs, r)
	}
	c.mu.Unlock()
	for _, r := range runs {
		r.cancel()
		<-r.done
	}
}

func (r *run) snapshot() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.Decisions = append([]Decision(nil), r.status.Decisions...)
	s.Spec.Steps = append([]int(nil), r.status.Spec.Steps...)
	return s
}

func (r *run) update(f func(*Status)) {
	r.mu.Lock()
	f(&r.status)
	r.status.Updated = time.Now()
	r.mu.Unlock()
}

// drive runs the steps: set the split, wait an interval, judge, repeat.
func (c *Controller) drive(ctx context.Context, fn *functions.Manifest, r *run) {
	defer close(r.done)
	spec := r.snapshot().Spec
	from := r.snapshot().From
	log := c.log.With("function", fn.Name, "revision", spec.To, "from", from)
	finish := func(state, verdict, reason string, d Decision) {
		d.Verdict, d.Reason, d.At = verdict, reason, time.Now()
		c.decisions.WithLabelValues(fn.Name, spec.To, verdict).Inc()
		var err error
		switch state {
		case StatePromoted:
			err = c.setStatic(fn, spec.To)
			c.weight.WithLabelValues(fn.Name, spec.To).Set(100)
		case StateRolledBack, StateAborted:
			err = c.setStatic(fn, from)
			c.weight.WithLabelValues(fn.Name, spec.To).Set(0)
		}
		if err != nil {
			state, d.Reason = StateFailed, reason+"; and the flag file could not be written: "+err.Error()
		}
		log.Info("rollout "+verdict, "state", state, "weight", d.Weight, "requests", d.Requests, "errors", d.Errors,
			"error_rate", d.ErrorRate, "p99", d.P99, "reason", d.Reason)
		r.update(func(s *Status) { s.State = state; s.Decisions = append(s.Decisions, d) })
	}
	for step, weight := range spec.Steps {
		if err := c.setSplit(fn, from, spec.To, weight); err != nil {
			finish(StateFailed, "rollback", "could not write the flag file: "+err.Error(), Decision{Weight: weight})
			return
		}
		c.weight.WithLabelValues(fn.Name, spec.To).Set(float64(weight))
		r.update(func(s *Status) { s.Step, s.Weight = step, weight })
		log.Info("rollout step", "step", step+1, "of", len(spec.Steps), "weight", weight)
		for holds := 0; ; holds++ {
			before, err := takeSample(c.cfg.Gatherer, fn.Name, spec.To)
			if err != nil {
				finish(StateFailed, "rollback", "reading the router's metrics: "+err.Error(), Decision{Weight: weight})
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-r.abort:
				finish(StateAborted, "abort", "aborted by request", Decision{Weight: weight})
				return
			case <-time.After(spec.Interval):
			}
			after, err := takeSample(c.cfg.Gatherer, fn.Name, spec.To)
			if err != nil {
				finish(StateFailed, "rollback", "reading the router's metrics: "+err.Error(), Decision{Weight: weight})
				return
			}
			w := between(before, after)
			d := Decision{Weight: weight, Requests: w.Requests, Errors: w.Errors, ErrorRate: w.ErrorRate(), P99: w.P99.String()}
			switch {
			case w.Requests > 0 && w.ErrorRate() > spec.MaxErrorRate:
				finish(StateRolledBack, "rollback", fmt.Sprintf("error rate %.4f over %.0f requests exceeds %.4f", w.ErrorRate(), w.Requests, spec.MaxErrorRate), d)
				return
			case w.Requests > 0 && w.P99 > spec.MaxP99:
				finish(StateRolledBack, "rollback", fmt.Sprintf("p99 %s exceeds %s", w.P99, spec.MaxP99), d)
				return
			case w.Requests < float64(spec.MinRequests):
				if holds+1 >= maxHolds {
					finish(StateRolledBack, "rollback", fmt.Sprintf("only %.0f canary requests in each of %d intervals (need %d): cannot judge", w.Requests, maxHolds, spec.MinRequests), d)
					return
				}
				d.Verdict, d.Reason, d.At = "hold", fmt.Sprintf("%.0f canary requests, need %d to judge; waiting", w.Requests, spec.MinRequests), time.Now()
				c.decisions.WithLabelValues(fn.Name, spec.To, "hold").Inc()
				log.Info("rollout hold", "weight", weight, "requests", w.Requests, "reason", d.Reason)
				r.update(func(s *Status) { s.Decisions = append(s.Decisions, d) })
				continue
			}
			if step == len(spec.Steps)-1 {
				finish(StatePromoted, "promote", fmt.Sprintf("healthy at 100%%: error rate %.4f, p99 %s", w.ErrorRate(), w.P99), d)
				return
			}
			d.Verdict, d.Reason, d.At = "advance", fmt.Sprintf("healthy at %d%%: error rate %.4f ≤ %.4f, p99 %s ≤ %s", weight, w.ErrorRate(), spec.MaxErrorRate, w.P99, spec.MaxP99), time.Now()
			c.decisions.WithLabelValues(fn.Name, spec.To, "advance").Inc()
			log.Info("rollout advance", "weight", weight, "requests", w.Requests, "error_rate", d.ErrorRate, "p99", d.P99)
			r.update(func(s *Status) { s.Decisions = append(s.Decisions, d) })
			break
		}
	}
}

func (c *Controller) setSplit(fn *functions.Manifest, from, to string, weight int) error {
	c.fileMu.Lock()
	defer c.fileMu.Unlock()
	ff, err := flags.OpenFlagEdit(c.cfg.FlagsPath, fn.Flag)
	if err != nil {
		return err
	}
	stable := ff.VariantFor(from)
	canary := ff.VariantFor(to)
	ff.SetSplit(stable, canary, weight)
	return ff.Write()
}

func (c *Controller) setStatic(fn *functions.Manifest, revision string) error {
	c.fileMu.Lock()
	defer c.fileMu.Unlock()
	ff, err := flags.OpenFlagEdit(c.cfg.FlagsPath, fn.Flag)
	if err != nil {
		return err
	}
	ff.SetStatic(ff.VariantFor(revision))
	return ff.Write()
}

// ParseSteps reads "5,25,50,100".
func ParseSteps(s string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(s, ",") {
		w, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil {
			return nil, fmt.Errorf("steps %q: %q is not a whole percent", s, part)
		}
		out = append(out, w)
	}
	return out, nil
}

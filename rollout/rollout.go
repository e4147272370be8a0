// Package rollout is the rollout controller (Flagger / Argo Rollouts style)
// that runs inside the platform. It judges a candidate revision by what the
// model answers as well as by HTTP health: an optional shadow phase copies
// a share of the serving revision's live requests to the candidate and
// compares the two answers (prediction gates: agreement, mean |Δ score|),
// then either moves the function's flag step by step (canary, judging the
// router's metrics, of every replica in a cluster (fleet.go), and a shadow
// copy of stable traffic at each step) or
// switches it in one flag write after pre-scaling the candidate
// (blue-green, with the previous revision kept warm for an instant undo).
// Every decision is logged with its numbers and metered.
package rollout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/functions"
)

const (
	// maxHolds is how many intervals in a row a step may lack traffic before the rollout fails.
	maxHolds = 5
	// prescaleTimeout bounds the wait for a blue-green candidate's instances.
	prescaleTimeout = 2 * time.Minute
	// readyPollInterval is how often the pre-scale wait looks at the ready count.
	readyPollInterval = 50 * time.Millisecond
)

// States of a rollout.
const (
	StateRunning    = "running"
	StatePromoted   = "promoted"
	StateRolledBack = "rolled_back"
	StateAborted    = "aborted"
	StateFailed     = "failed"
	StateUndone     = "undone"
)

// Verdicts of a Decision (the verdict label of pilotlight_rollout_decisions_total).
const (
	VerdictAdvance  = "advance"
	VerdictHold     = "hold"
	VerdictPromote  = "promote"
	VerdictRollback = "rollback"
	VerdictAbort    = "abort"
	VerdictUndo     = "undo"
)

// Checks name what decided (the check label of pilotlight_rollout_decisions_total).
const (
	CheckHealthy    = "healthy"
	CheckErrorRate  = "error_rate"
	CheckP99        = "p99"
	CheckTraffic    = "traffic"
	CheckAgreement  = "agreement"
	CheckScoreDelta = "score_delta"
	CheckPrecision  = "precision"
	CheckLogLoss    = "log_loss"
	CheckShadow     = "shadow_failures"
	CheckPrescale   = "prescale"
	CheckRequest    = "request"
	CheckFlagFile   = "flag_file"
	CheckLeader     = "leader"
)

// Phases of a rollout.
const (
	PhaseShadow   = "shadow"
	PhasePrescale = "prescale"
	PhaseCanary   = "canary"
	PhaseSwitched = "switched"
	PhaseDone     = "done"
)

// Decision is one analysis and what the controller did about it.
type Decision struct {
	At     time.Time `json:"at"`
	Phase  string    `json:"phase"`
	Weight int       `json:"weight"`
	// Source is where the live numbers came from (local, endpointslice,
	// prometheus); Replicas how many router replicas were read at both
	// ends of the interval, of ReplicasListed known to the source.
	Source         string  `json:"source,omitempty"`
	Replicas       int     `json:"replicas,omitempty"`
	ReplicasListed int     `json:"replicas_listed,omitempty"`
	Requests       float64 `json:"requests"`
	Errors         float64 `json:"errors"`
	ErrorRate      float64 `json:"error_rate"`
	P99            string  `json:"p99"`
	// Shadow comparisons over the interval (zero when none ran).
	Compared     float64 `json:"compared"`
	ShadowFailed float64 `json:"shadow_failed"`
	// ShadowIncomparable copies were answered but could not be compared
	// (the platform's problem, never a reason to roll back).
	ShadowIncomparable float64 `json:"shadow_incomparable"`
	Agreement          float64 `json:"agreement"`
	ScoreDelta         float64 `json:"score_delta"`
	// Outcomes joined since the rollout started (outcome gates only):
	// the candidate's labelled count, precision, recall and mean log loss,
	// and the serving revision's mean log loss.
	Labelled       float64 `json:"labelled,omitempty"`
	Precision      float64 `json:"precision,omitempty"`
	Recall         float64 `json:"recall,omitempty"`
	LogLoss        float64 `json:"log_loss,omitempty"`
	ServingLogLoss float64 `json:"serving_log_loss,omitempty"`
	Verdict        string  `json:"verdict"` // advance | hold | promote | rollback | abort | undo
	Check          string  `json:"check"`
	Reason         string  `json:"reason"`
}

// Status is a rollout's progress.
type Status struct {
	Spec      Spec       `json:"spec"`
	From      string     `json:"from"`
	State     string     `json:"state"`
	Phase     string     `json:"phase"`
	Step      int        `json:"step"` // index into Spec.Steps
	Weight    int        `json:"weight"`
	Started   time.Time  `json:"started"`
	Updated   time.Time  `json:"updated"`
	Finished  time.Time  `json:"finished,omitzero"`
	KeptUntil time.Time  `json:"kept_until,omitzero"` // the previous revision is warm until then
	Decisions []Decision `json:"decisions"`
}

// ShadowTotals are a candidate's cumulative shadow counters.
type ShadowTotals struct {
	Compared, Agreed, DeltaSum, Failed, Dropped float64
	// Incomparable copies were answered by the candidate, but an answer
	// could not be read for comparing: never evidence against the candidate.
	Incomparable float64
}

func (t ShadowTotals) sub(b ShadowTotals) ShadowTotals {
	return ShadowTotals{t.Compared - b.Compared, t.Agreed - b.Agreed, t.DeltaSum - b.DeltaSum, t.Failed - b.Failed, t.Dropped - b.Dropped, t.Incomparable - b.Incomparable}
}

func (t ShadowTotals) add(b ShadowTotals) ShadowTotals {
	return ShadowTotals{t.Compared + b.Compared, t.Agreed + b.Agreed, t.DeltaSum + b.DeltaSum, t.Failed + b.Failed, t.Dropped + b.Dropped, t.Incomparable + b.Incomparable}
}

// Shadow is what the controller needs of the shadow machinery (the
// router's Shadower satisfies it).
type Shadow interface {
	// Mirror copies percent of function's requests served by from to to.
	Mirror(function, from, to string, percent int)
	// StopMirror stops copying function's requests.
	StopMirror(function string)
	// Totals are the cumulative comparisons of function's answers by revision.
	Totals(function, revision string) ShadowTotals
}

// Scaler is what blue-green needs of the engine (engine.Engine satisfies it).
type Scaler interface {
	ReadyInstances(function, revision string) int
	Hold(function, revision string, n int, until time.Time) error
}

// Config wires a controller to the platform.
type Config struct {
	FlagsPath  string
	Functions  []*functions.Manifest
	Gatherer   prometheus.Gatherer // the router's registry
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Shadow, when set, enables --shadow and the prediction gates.
	Shadow Shadow
	// Scaler, when set, pre-scales blue-green candidates and keeps the
	// previous revision warm (without it, blue-green relies on shadow
	// traffic and the autoscaler).
	Scaler Scaler
	// Reload, when set, is called after each flag write so the router
	// serves it at once rather than after the file watcher's debounce
	// (flags.Watcher.ReloadNow): an undo is one write and one swap.
	Reload func()
	// Flags is where the flag state is read and written (nil: the file
	// at FlagsPath, with Reload after each write).
	Flags FlagStore
	// Leader, when set, says whether this replica drives rollouts (one
	// replica of several, holding the Lease); the others refuse to start one.
	Leader Leadership
	// Outcomes, when set, enables the outcome gates (MinPrecision,
	// MaxLogLossDelta): the labelled outcomes of each revision so far.
	Outcomes OutcomeSource
	// Traffic is where the analysis reads every router replica's
	// requests (nil: Gatherer, this replica alone; in a cluster a
	// PrometheusSource or an EndpointSliceSource).
	Traffic TrafficSource
}

// OutcomeSource is what the controller needs of the outcome store (an
// *Outcomes satisfies it).
type OutcomeSource interface {
	Records(function string) bool
	Totals(function, revision string) OutcomeTotals
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
	flags     FlagStore
	traffic   TrafficSource
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
			Help: "Rollout analyses by verdict (advance, hold, promote, rollback, abort, undo) and the check that decided (healthy, error_rate, p99, traffic, agreement, score_delta, shadow_failures, prescale, request, flag_file)."},
			[]string{"function", "revision", "verdict", "check"}),
		weight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pilotlight_rollout_canary_weight_percent",
			Help: "The candidate's share of the function's traffic set by the rollout controller."}, []string{"function", "revision"}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(c.decisions, c.weight)
	}
	for _, fn := range cfg.Functions {
		c.fns[fn.Name] = fn
	}
	c.traffic = cfg.Traffic
	if c.traffic == nil {
		c.traffic = GathererSource{Gatherer: cfg.Gatherer}
	}
	c.flags = cfg.Flags
	if c.flags == nil {
		c.flags = &FileStore{Path: cfg.FlagsPath, Reload: cfg.Reload}
	}
	return c
}

// SpecError is a bad rollout request (400 upstream).
type SpecError struct{ Msg string }

func (e *SpecError) Error() string { return e.Msg }

// ErrRunning says a rollout of the function is already under way (409 upstream).
var ErrRunning = errors.New("a rollout of this function is already running")

// ConflictError is a request that cannot apply to the rollout's state (409 upstream).
type ConflictError struct{ Msg string }

func (e *ConflictError) Error() string { return e.Msg }

// NotFoundError names a function with no rollout (404 upstream).
type NotFoundError struct{ Function string }

func (e *NotFoundError) Error() string { return fmt.Sprintf("no rollout of %q", e.Function) }

func (c *Controller) validate(s *Spec) (*functions.Manifest, error) {
	bad := func(format string, args ...any) (*functions.Manifest, error) {
		return nil, &SpecError{fmt.Sprintf(format, args...)}
	}
	fn, ok := c.fns[s.Function]
	if !ok {
		return bad("unknown function %q", s.Function)
	}
	if _, ok := fn.Revision(s.To); !ok {
		return bad("function %s has no revision %q (have %v)", s.Function, s.To, functions.RevisionNames(fn.Revisions))
	}
	switch s.Strategy {
	case "":
		s.Strategy = StrategyCanary
	case StrategyCanary, StrategyBlueGreen:
	default:
		return bad("strategy %q: want %s or %s", s.Strategy, StrategyCanary, StrategyBlueGreen)
	}
	if s.Strategy == StrategyBlueGreen {
		s.Steps = []int{100}
	}
	if len(s.Steps) == 0 {
		s.Steps = DefaultSteps
	}
	prev := 0
	for i, w := range s.Steps {
		if w <= prev || w > 100 {
			return bad("steps[%d] = %d: steps must increase, each in (0, 100]", i, w)
		}
		prev = w
	}
	if s.Steps[len(s.Steps)-1] != 100 {
		s.Steps = append(s.Steps, 100)
	}
	if s.Interval == 0 {
		s.Interval = DefaultInterval
	}
	if s.Interval < minInterval {
		return bad("interval %s is too short to judge anything (at least %s)", s.Interval, minInterval)
	}
	if s.MaxErrorRate == 0 {
		s.MaxErrorRate = DefaultMaxErrorRate
	}
	if s.MaxErrorRate < 0 || s.MaxErrorRate > 1 {
		return bad("max error rate %v must be in [0, 1]", s.MaxErrorRate)
	}
	if s.MaxP99 == 0 {
		s.MaxP99 = DefaultMaxP99
	}
	if s.MaxP99 < 0 {
		return bad("max p99 %s must be positive", s.MaxP99)
	}
	if s.MinRequests == 0 {
		s.MinRequests = DefaultMinRequests
	}
	if s.MinRequests < 0 {
		return bad("min requests %d must be positive", s.MinRequests)
	}
	if s.Shadow < 0 || s.Shadow > 100 {
		return bad("shadow %d%% must be in [0, 100]", s.Shadow)
	}
	if s.MinAgreement < 0 || s.MinAgreement > 1 {
		return bad("min agreement %v must be in [0, 1]", s.MinAgreement)
	}
	if s.MaxScoreDelta < 0 {
		return bad("max score delta %v must not be negative", s.MaxScoreDelta)
	}
	if (s.Shadow > 0 || s.gated()) && c.cfg.Shadow == nil {
		return bad("shadow traffic and prediction gates need the platform's shadow machinery, which this router runs without")
	}
	if s.MinPrecision < 0 || s.MinPrecision > 1 {
		return bad("min precision %v must be in [0, 1]", s.MinPrecision)
	}
	if s.MaxLogLossDelta < 0 {
		return bad("max log loss delta %v must not be negative", s.MaxLogLossDelta)
	}
	if s.MinLabelled < 0 {
		return bad("min labelled %d must not be negative", s.MinLabelled)
	}
	if s.outcomeGated() {
		if s.MinLabelled == 0 {
			s.MinLabelled = DefaultMinLabelled
		}
		if c.cfg.Outcomes == nil || !c.cfg.Outcomes.Records(fn.Name) {
			return bad("outcome gates need function %s to record predictions: set outcomes.maxPredictions in its function.yaml", fn.Name)
		}
	}
	if s.KeepPrevious < 0 {
		return bad("keep previous %s must not be negative", s.KeepPrevious)
	}
	if s.KeepPrevious == 0 && s.Strategy == StrategyBlueGreen {
		s.KeepPrevious = DefaultKeepPrevious
	}
	return fn, nil
}

// Start validates spec and runs the rollout in the background.
func (c *Controller) Start(spec Spec) (Status, error) {
	fn, err := c.validate(&spec)
	if err != nil {
		return Status{}, err
	}
	if l := c.cfg.Leader; l != nil && !l.Leading() {
		return Status{}, &ConflictError{fmt.Sprintf("this router replica does not drive rollouts; the leader (Lease holder) is %q: send the request to it", l.Holder())}
	}
	ff, err := c.flags.Open(context.Background(), fn.Flag)
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
	now := time.Now()
	r := &run{cancel: cancel, abort: make(chan struct{}), done: make(chan struct{}),
		status: Status{Spec: spec, From: from, State: StateRunning, Started: now, Updated: now}}
	c.runs[fn.Name] = r
	c.record(fn.Name, RolloutRecord{From: from, To: spec.To, State: StateRunning})
	go c.drive(ctx, fn, r)
	return r.snapshot(), nil
}

// latest is the function's latest rollout.
func (c *Controller) latest(function string) (*run, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.runs[function]
	if !ok {
		return nil, &NotFoundError{function}
	}
	return r, nil
}

// Status reports the latest rollout of a function.
func (c *Controller) Status(function string) (Status, bool) {
	r, err := c.latest(function)
	if err != nil {
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
	r, err := c.latest(function)
	if err != nil {
		return Status{}, err
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

// Undo switches a promoted function back to the revision it came from, in
// one flag write, while that revision is still kept warm (Spec.KeepPrevious).
func (c *Controller) Undo(function string) (Status, error) {
	r, err := c.latest(function)
	if err != nil {
		return Status{}, err
	}
	st := r.snapshot()
	switch {
	case st.State == StateRunning:
		return st, &ConflictError{fmt.Sprintf("the rollout of %s to %s is still running: abort it instead (`pilotlight rollout abort %s`)", function, st.Spec.To, function)}
	case st.State != StatePromoted:
		return st, &ConflictError{fmt.Sprintf("the rollout of %s to %s ended %s: %s still serves, nothing to undo", function, st.Spec.To, st.State, st.From)}
	case st.KeptUntil.IsZero() || time.Now().After(st.KeptUntil):
		return st, &ConflictError{fmt.Sprintf("%s is no longer kept warm (keep previous %s): start a rollout back instead (`pilotlight rollout start %s --to %s`)",
			st.From, st.Spec.KeepPrevious, function, st.From)}
	}
	fn := c.fns[function]
	start := time.Now()
	if err := c.setStatic(fn, st.From); err != nil {
		return st, fmt.Errorf("undo %s: write the flag file: %w", function, err)
	}
	d := Decision{At: time.Now(), Phase: PhaseDone, Verdict: VerdictUndo, Check: CheckRequest,
		Reason: fmt.Sprintf("undo by request: %s serves again (one flag write, %s)", st.From, time.Since(start).Round(time.Microsecond))}
	c.decisions.WithLabelValues(fn.Name, st.Spec.To, VerdictUndo, CheckRequest).Inc()
	c.weight.WithLabelValues(fn.Name, st.Spec.To).Set(0)
	c.log.Info("rollout undo", "function", fn.Name, "revision", st.Spec.To, "to", st.From, "reason", d.Reason)
	r.update(func(s *Status) { s.State, s.Weight = StateUndone, 0; s.Decisions = append(s.Decisions, d) })
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

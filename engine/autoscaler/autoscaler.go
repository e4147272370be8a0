// Package autoscaler decides how many instances one revision should run.
//
// It follows Knative's KPA (pkg/autoscaler/scaling): observed concurrency is
// averaged over a long stable window and a short panic window; a burst that
// would need PanicThreshold times the current instances switches to panic
// mode, which follows the panic window and never scales down until a stable
// window has passed without a new burst. The decision is a pure function of
// the recorded numbers and the arguments to Scale: it starts no goroutines,
// reads no clock and changes nothing outside itself. The local engine calls
// Record and Scale on every tick and acts on the Decision.
//
// One rule differs from Knative on purpose: going to zero is governed by the
// scale-to-zero grace alone (no request in flight for ScaleToZeroAfter), not by
// the stable window having averaged down to zero.
package autoscaler

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"time"
)

// maxInstances bounds every count so float-to-int conversions cannot overflow.
const maxInstances = math.MaxInt32

// Defaults, taken from Knative's autoscaler config where Knative has one.
const (
	DefaultTargetConcurrency = 100.0 // container-concurrency-target-default
	DefaultStableWindow      = 60 * time.Second
	DefaultPanicWindow       = 6 * time.Second // 10% of the stable window
	DefaultPanicThreshold    = 2.0             // panic-threshold-percentage 200
	DefaultScaleToZeroAfter  = 30 * time.Second
	DefaultMaxScaleUpRate    = 1000.0
	DefaultMaxScaleDownRate  = 2.0
)

// Config is one revision's scaling policy. Zero fields take the defaults
// (see WithDefaults).
type Config struct {
	TargetConcurrency  float64 // concurrent requests per instance, > 0
	MinScale, MaxScale int     // MaxScale 0 = unbounded
	StableWindow       time.Duration
	PanicWindow        time.Duration
	PanicThreshold     float64       // panic when panic-window desired / current >= this
	ScaleToZeroAfter   time.Duration // no request in flight this long -> MinScale
	MaxScaleUpRate     float64       // at most ceil(rate * current) instances in one decision
	MaxScaleDownRate   float64       // at least floor(current / rate) instances in one decision
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	c.TargetConcurrency = cmp.Or(c.TargetConcurrency, DefaultTargetConcurrency)
	c.StableWindow = cmp.Or(c.StableWindow, DefaultStableWindow)
	c.PanicWindow = cmp.Or(c.PanicWindow, DefaultPanicWindow)
	c.PanicThreshold = cmp.Or(c.PanicThreshold, DefaultPanicThreshold)
	c.ScaleToZeroAfter = cmp.Or(c.ScaleToZeroAfter, DefaultScaleToZeroAfter)
	c.MaxScaleUpRate = cmp.Or(c.MaxScaleUpRate, DefaultMaxScaleUpRate)
	c.MaxScaleDownRate = cmp.Or(c.MaxScaleDownRate, DefaultMaxScaleDownRate)
	return c
}

// Validate reports every field of c (after defaults) that cannot work.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("autoscaler config: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	if !(c.TargetConcurrency > 0) || math.IsInf(c.TargetConcurrency, 0) {
		bad("TargetConcurrency", "%v must be a positive number", c.TargetConcurrency)
	}
	if c.MinScale < 0 {
		bad("MinScale", "%d must be >= 0", c.MinScale)
	}
	if c.MaxScale < 0 {
		bad("MaxScale", "%d must be >= 0 (0 means unbounded)", c.MaxScale)
	}
	if c.MaxScale > 0 && c.MinScale > c.MaxScale {
		bad("MinScale", "%d is greater than MaxScale %d", c.MinScale, c.MaxScale)
	}
	if c.StableWindow < bucketDuration {
		bad("StableWindow", "%s must be at least %s", c.StableWindow, bucketDuration)
	}
	if c.PanicWindow < bucketDuration || c.PanicWindow > c.StableWindow {
		bad("PanicWindow", "%s must be between %s and StableWindow %s", c.PanicWindow, bucketDuration, c.StableWindow)
	}
	if !(c.PanicThreshold > 1) {
		bad("PanicThreshold", "%v must be > 1", c.PanicThreshold)
	}
	if c.ScaleToZeroAfter < 0 {
		bad("ScaleToZeroAfter", "%s must be >= 0", c.ScaleToZeroAfter)
	}
	if !(c.MaxScaleUpRate > 1) {
		bad("MaxScaleUpRate", "%v must be > 1", c.MaxScaleUpRate)
	}
	if !(c.MaxScaleDownRate > 1) {
		bad("MaxScaleDownRate", "%v must be > 1", c.MaxScaleDownRate)
	}
	return errors.Join(errs...)
}

// Decision is the recommendation for one tick.
type Decision struct {
	Desired           int     // instances the revision should have
	Panic             bool    // panic mode is on
	StableConcurrency float64 // average concurrency over the stable window
	PanicConcurrency  float64 // average concurrency over the panic window
	Reason            string  // one line with the numbers, for the log
}

// Autoscaler keeps one revision's observations and panic state. It is not
// safe for concurrent use: the engine owns it from one goroutine.
type Autoscaler struct {
	cfg    Config
	window *window

	latest float64 // newest observation; > 0 means requests in flight or queued

	panicSince   time.Time // last time the panic threshold was crossed; zero = not panicking
	maxPanicPods int       // highest count recommended during this panic
}

// New returns an autoscaler for cfg with defaults applied. An invalid config
// (see Config.Validate) still yields bounded decisions: MinScale wins over a
// smaller MaxScale, and non-positive rates or targets fall back to defaults.
func New(cfg Config) *Autoscaler {
	cfg = cfg.WithDefaults()
	if !(cfg.TargetConcurrency > 0) {
		cfg.TargetConcurrency = DefaultTargetConcurrency
	}
	if !(cfg.PanicThreshold > 1) {
		cfg.PanicThreshold = DefaultPanicThreshold
	}
	if !(cfg.MaxScaleUpRate > 1) {
		cfg.MaxScaleUpRate = DefaultMaxScaleUpRate
	}
	if !(cfg.MaxScaleDownRate > 1) {
		cfg.MaxScaleDownRate = DefaultMaxScaleDownRate
	}
	if cfg.StableWindow < bucketDuration {
		cfg.StableWindow = bucketDuration
	}
	if cfg.PanicWindow < bucketDuration {
		cfg.PanicWindow = bucketDuration
	}
	if cfg.PanicWindow > cfg.StableWindow {
		cfg.PanicWindow = cfg.StableWindow
	}
	if cfg.MinScale < 0 {
		cfg.MinScale = 0
	}
	if cfg.MaxScale < 0 {
		cfg.MaxScale = 0
	}
	return &Autoscaler{cfg: cfg, window: newWindow(cfg.StableWindow)}
}

// Config returns the configuration in use, defaults applied.
func (a *Autoscaler) Config() Config { return a.cfg }

// Record adds one observation of concurrency (requests in flight plus those
// queued in the activator) at now. Negative and NaN values count as zero.
func (a *Autoscaler) Record(now time.Time, concurrency float64) {
	if !(concurrency > 0) {
		concurrency = 0
	}
	if math.IsInf(concurrency, 1) {
		concurrency = math.MaxFloat64
	}
	a.latest = concurrency
	a.window.record(now, concurrency)
}

// Scale returns the recommendation at now, given the instances currently
// ready or starting and the last time any request was in flight (the zero
// time means never).
func (a *Autoscaler) Scale(now time.Time, current int, lastActive time.Time) Decision {
	cfg := a.cfg
	if current < 0 {
		current = 0
	}
	stable, _ := a.window.average(now, cfg.StableWindow)
	panicAvg, _ := a.window.average(now, cfg.PanicWindow)
	d := Decision{StableConcurrency: stable, PanicConcurrency: panicAvg}
	busy := a.latest > 0

	// Going to zero: nothing in flight now, and either nothing has been for
	// the grace period or nothing is running anyway.
	if !busy {
		idle := lastActive.IsZero() || now.Sub(lastActive) >= cfg.ScaleToZeroAfter
		if idle || current == 0 {
			a.endPanic()
			d.Desired = a.clamp(0)
			if idle {
				d.Reason = fmt.Sprintf("idle %s >= grace %s: scale to %d (minScale %d), current %d",
					idleFor(now, lastActive), cfg.ScaleToZeroAfter, d.Desired, cfg.MinScale, current)
			} else {
				d.Reason = fmt.Sprintf("no demand and no instances: stay at %d (minScale %d)", d.Desired, cfg.MinScale)
			}
			return d
		}
	}

	// Knative treats zero ready pods as one for rates and the panic ratio, so
	// a burst arriving at zero both panics and may jump straight to its size.
	ready := math.Max(1, float64(current))
	maxUp := math.Min(math.Ceil(cfg.MaxScaleUpRate*ready), maxInstances)
	maxDown := math.Floor(ready / cfg.MaxScaleDownRate)
	if current == 0 {
		maxDown = 0
	}
	wantStable := math.Ceil(stable / cfg.TargetConcurrency)
	wantPanic := math.Ceil(panicAvg / cfg.TargetConcurrency)
	stableCount := int(math.Min(math.Max(wantStable, maxDown), maxUp))
	panicCount := int(math.Min(math.Max(wantPanic, maxDown), maxUp))

	over := wantPanic/ready >= cfg.PanicThreshold
	switch {
	case over:
		a.panicSince = now // start, or extend, the panic
	case !a.panicSince.IsZero() && now.Sub(a.panicSince) >= cfg.StableWindow:
		// The burst has had a whole stable window to reach the stable average.
		a.endPanic()
	}

	desired := stableCount
	if !a.panicSince.IsZero() {
		d.Panic = true
		// Provision for the larger of the two windows, and never scale
		// down while panicking.
		desired = max(desired, panicCount, a.maxPanicPods)
		a.maxPanicPods = desired
	}
	// Within the grace period (or with requests in flight) zero is not an option:
	// the grace, not the stable window, decides when to go to zero.
	desired = max(desired, 1)
	d.Desired = a.clamp(desired)
	if busy && d.Desired < 1 {
		d.Desired = 1 // only reachable with MaxScale < 1, which Validate rejects
	}

	mode := "stable"
	if d.Panic {
		mode = "panic"
	}
	d.Reason = fmt.Sprintf("%s: concurrency stable %.2f panic %.2f / target %.4g -> stable %.0f panic %.0f; current %d, rate bounds [%.0f, %.0f], scale bounds [%d, %s] -> %d",
		mode, stable, panicAvg, cfg.TargetConcurrency, wantStable, wantPanic,
		current, maxDown, maxUp, cfg.MinScale, maxScaleString(cfg.MaxScale), d.Desired)
	return d
}

func (a *Autoscaler) endPanic() {
	a.panicSince = time.Time{}
	a.maxPanicPods = 0
}

// clamp keeps n within [MinScale, MaxScale]; MinScale wins if they cross.
func (a *Autoscaler) clamp(n int) int {
	if a.cfg.MaxScale > 0 && n > a.cfg.MaxScale {
		n = a.cfg.MaxScale
	}
	return max(n, a.cfg.MinScale)
}

func idleFor(now, lastActive time.Time) string {
	if lastActive.IsZero() {
		return "forever"
	}
	return now.Sub(lastActive).String()
}

func maxScaleString(n int) string {
	if n == 0 {
		return "inf"
	}
	return fmt.Sprint(n)
}

package rollout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/functions"
)

// errStopped ends drive without a verdict: the controller is closing.
var errStopped = errors.New("controller closing")

// driver is one rollout's run: the spec, where it came from, and how to
// record what it decided.
type driver struct {
	c    *Controller
	ctx  context.Context
	fn   *functions.Manifest
	r    *run
	spec Spec
	from string
	log  *slog.Logger
	// outcomesAtStart are the candidate's and the serving revision's
	// labelled outcomes when the rollout started: gates judge what came after.
	outcomesAtStart, servingAtStart OutcomeTotals
	// fleetAtStart and fleetServingAtStart are the same, per router
	// replica, when the analysis reads a fleet (fleet.go): every replica
	// joins the outcomes of the predictions it recorded.
	fleetAtStart, fleetServingAtStart fleetSample
}

// drive runs the phases: shadow (when asked), then canary steps or the
// blue-green switch, each judged; it ends promoted or rolled back.
func (c *Controller) drive(ctx context.Context, fn *functions.Manifest, r *run) {
	defer close(r.done)
	st := r.snapshot()
	d := &driver{c: c, ctx: ctx, fn: fn, r: r, spec: st.Spec, from: st.From,
		log: c.log.With("function", fn.Name, "revision", st.Spec.To, "from", st.From, "strategy", st.Spec.Strategy)}
	if c.cfg.Shadow != nil {
		defer c.cfg.Shadow.StopMirror(fn.Name)
	}
	if c.cfg.Outcomes != nil {
		d.outcomesAtStart, d.servingAtStart = c.cfg.Outcomes.Totals(fn.Name, d.spec.To), c.cfg.Outcomes.Totals(fn.Name, d.from)
	}
	if c.fleet() && d.spec.outcomeGated() {
		// A replica unread now counts from zero later (sinceStart): a
		// failed read here costs nothing but precision about restarts.
		d.fleetAtStart, _ = c.traffic.sample(ctx, fn.Name, d.spec.To)
		d.fleetServingAtStart, _ = c.traffic.sample(ctx, fn.Name, d.from)
	}
	if d.spec.Shadow > 0 {
		d.mirror(d.spec.Shadow)
		d.log.Info("rollout shadow phase", "percent", d.spec.Shadow)
		dec, reason, ok := d.judgeUntilPass(PhaseShadow, 0, true)
		if !ok {
			return
		}
		d.record(dec, VerdictAdvance, CheckHealthy, reason)
	}
	if d.spec.Strategy == StrategyBlueGreen {
		d.blueGreen()
		return
	}
	if d.spec.gated() {
		pct := d.spec.Shadow
		if pct == 0 {
			pct = DefaultGateShadowPercent
		}
		d.mirror(pct) // stable traffic copied to the canary at each step, on every replica
	}
	for step, weight := range d.spec.Steps {
		if err := c.setSplit(fn, d.from, d.spec.To, weight); err != nil {
			d.finish(StateFailed, VerdictRollback, CheckFlagFile, "could not write the flag file: "+err.Error(), Decision{Weight: weight})
			return
		}
		c.weight.WithLabelValues(fn.Name, d.spec.To).Set(float64(weight))
		r.update(func(s *Status) { s.Phase, s.Step, s.Weight = PhaseCanary, step, weight })
		d.log.Info("rollout step", "step", step+1, "of", len(d.spec.Steps), "weight", weight)
		dec, reason, ok := d.judgeUntilPass(PhaseCanary, weight, false)
		if !ok {
			return
		}
		if step == len(d.spec.Steps)-1 {
			d.promote(dec, reason)
			return
		}
		d.record(dec, VerdictAdvance, CheckHealthy, reason)
	}
}

// blueGreen pre-scales the candidate to the serving revision's ready count,
// switches the flag in one write, and keeps the previous revision warm.
func (d *driver) blueGreen() {
	c, fn := d.c, d.fn
	if sc := c.cfg.Scaler; sc != nil {
		n := max(sc.ReadyInstances(fn.Name, d.from), 1)
		d.r.update(func(s *Status) { s.Phase = PhasePrescale })
		d.log.Info("rollout pre-scale", "instances", n)
		if err := sc.Hold(fn.Name, d.spec.To, n, time.Now().Add(prescaleTimeout)); err != nil {
			d.finish(StateRolledBack, VerdictRollback, CheckPrescale, "pre-scale: "+err.Error(), Decision{Phase: PhasePrescale})
			return
		}
		deadline := time.NewTimer(prescaleTimeout)
		defer deadline.Stop()
		tick := time.NewTicker(readyPollInterval)
		defer tick.Stop()
		for sc.ReadyInstances(fn.Name, d.spec.To) < n {
			select {
			case <-d.ctx.Done():
				return
			case <-d.r.abort:
				d.finish(StateAborted, VerdictAbort, CheckRequest, "aborted by request", Decision{Phase: PhasePrescale})
				return
			case <-deadline.C:
				d.finish(StateRolledBack, VerdictRollback, CheckPrescale, fmt.Sprintf("%s did not reach %d ready instances within %s", d.spec.To, n, prescaleTimeout), Decision{Phase: PhasePrescale})
				return
			case <-tick.C:
			}
		}
	}
	d.promote(Decision{Phase: PhaseSwitched, Weight: 100}, "judged healthy; switched 100% in one flag write")
}

// promote gives the candidate 100% in one flag write and keeps the
// previous revision warm for an undo.
func (d *driver) promote(dec Decision, reason string) {
	c, fn := d.c, d.fn
	if d.spec.KeepPrevious > 0 && c.cfg.Scaler != nil {
		n := max(c.cfg.Scaler.ReadyInstances(fn.Name, d.from), 1)
		if err := c.cfg.Scaler.Hold(fn.Name, d.from, n, time.Now().Add(d.spec.KeepPrevious)); err != nil {
			d.log.Warn("could not keep the previous revision warm; undo will cold-start it", "err", err)
		}
	}
	dec.Weight = 100
	d.finish(StatePromoted, VerdictPromote, CheckHealthy, reason, dec)
}

// finish records the verdict, writes the flag (the candidate everywhere
// when promoted, the stable revision otherwise) and ends the rollout.
func (d *driver) finish(state, verdict, check, reason string, dec Decision) {
	c, fn := d.c, d.fn
	dec.Verdict, dec.Check, dec.Reason, dec.At = verdict, check, reason, time.Now()
	if dec.Phase == "" {
		dec.Phase = d.r.snapshot().Phase
	}
	c.decisions.WithLabelValues(fn.Name, d.spec.To, verdict, check).Inc()
	var err error
	weight := 0
	switch state {
	case StatePromoted:
		err = c.setStatic(fn, d.spec.To)
		weight = 100
	case StateRolledBack, StateAborted, StateFailed:
		err = c.setStatic(fn, d.from)
	}
	c.weight.WithLabelValues(fn.Name, d.spec.To).Set(float64(weight))
	if err != nil {
		state, dec.Reason = StateFailed, reason+"; and the flag file could not be written: "+err.Error()
	}
	d.log.Info("rollout "+verdict, "state", state, "check", check, "weight", dec.Weight, "source", dec.Source, "replicas", dec.Replicas, "replicas_listed", dec.ReplicasListed, "requests", dec.Requests, "errors", dec.Errors,
		"error_rate", dec.ErrorRate, "p99", dec.P99, "compared", dec.Compared, "agreement", dec.Agreement, "score_delta", dec.ScoreDelta, "reason", dec.Reason)
	if !errors.Is(err, errNotLeading) { // a replica without the Lease leaves the record to the leader
		c.record(fn.Name, RolloutRecord{From: d.from, To: d.spec.To, State: state})
	}
	d.r.update(func(s *Status) {
		s.State, s.Weight, s.Phase, s.Finished = state, weight, PhaseDone, time.Now()
		if state == StatePromoted && d.spec.KeepPrevious > 0 {
			s.KeptUntil = time.Now().Add(d.spec.KeepPrevious)
		}
		s.Decisions = append(s.Decisions, dec)
	})
}

// judgeUntilPass waits an interval at a time and judges it, holding while
// there is too little traffic, until the checks pass (true, with the
// passing interval's decision and reason) or the rollout ends (false:
// rolled back, aborted, or the controller is closing). onShadow judges
// shadow comparisons only (no live traffic has moved yet).
func (d *driver) judgeUntilPass(phase string, weight int, onShadow bool) (Decision, string, bool) {
	d.r.update(func(s *Status) { s.Phase, s.Weight = phase, weight })
	for holds := 0; ; holds++ {
		dec, verdict, check, reason, err := d.analyse(phase, weight, onShadow)
		switch {
		case errors.Is(err, errStopped):
			return dec, "", false
		case err != nil:
			d.finish(StateFailed, VerdictRollback, check, err.Error(), Decision{Weight: weight, Phase: phase})
			return dec, "", false
		}
		switch verdict {
		case VerdictAbort:
			d.finish(StateAborted, VerdictAbort, CheckRequest, "aborted by request", dec)
			return dec, "", false
		case VerdictRollback:
			d.finish(StateRolledBack, VerdictRollback, check, reason, dec)
			return dec, "", false
		case VerdictHold:
			if holds+1 >= maxHolds {
				d.finish(StateRolledBack, VerdictRollback, CheckTraffic, fmt.Sprintf("%s in each of %d intervals: cannot judge (%s)", reason, maxHolds, notJudgedHint), dec)
				return dec, "", false
			}
			d.record(dec, VerdictHold, CheckTraffic, reason+"; waiting")
			continue
		}
		return dec, reason, true
	}
}

// notJudgedHint is what to do about a rollout that could not be judged.
// A request counts once answered: one held through a revision's cold start
// (Knative's activator, a scheduler wait) counts late or not at all.
const notJudgedHint = "send the function more traffic, lengthen --interval, or lower --min-requests (--min-labelled for outcomes); " +
	"a request counts once answered, so one held by a cold start counts late"

func (d *driver) record(dec Decision, verdict, check, reason string) {
	dec.Verdict, dec.Check, dec.Reason, dec.At = verdict, check, reason, time.Now()
	d.c.decisions.WithLabelValues(d.fn.Name, d.spec.To, verdict, check).Inc()
	d.log.Info("rollout "+verdict, "phase", dec.Phase, "weight", dec.Weight, "source", dec.Source, "replicas", dec.Replicas, "replicas_listed", dec.ReplicasListed, "requests", dec.Requests, "error_rate", dec.ErrorRate, "p99", dec.P99,
		"compared", dec.Compared, "agreement", dec.Agreement, "score_delta", dec.ScoreDelta, "reason", reason)
	d.r.update(func(s *Status) { s.Decisions = append(s.Decisions, dec) })
}

// analyse samples the router's metrics and the shadow counters over one
// interval and judges them (Judge). err is errStopped when the controller
// closes; verdict is abort when the rollout was aborted.
func (d *driver) analyse(phase string, weight int, onShadow bool) (dec Decision, verdict, check, reason string, err error) {
	c, fn, to := d.c, d.fn, d.spec.To
	before, err := c.traffic.sample(d.ctx, fn.Name, to)
	if err != nil {
		return dec, "", CheckTraffic, "", fmt.Errorf("reading the candidate's traffic (%s): %w", c.trafficName(), err)
	}
	var shBefore ShadowTotals
	if c.cfg.Shadow != nil && !c.fleet() {
		shBefore = c.cfg.Shadow.Totals(fn.Name, to)
	}
	t := time.NewTimer(d.spec.Interval)
	defer t.Stop()
	select {
	case <-d.ctx.Done():
		return dec, "", "", "", errStopped
	case <-d.r.abort:
		return Decision{Weight: weight, Phase: phase}, VerdictAbort, CheckRequest, "", nil
	case <-t.C:
	}
	after, err := c.traffic.sample(d.ctx, fn.Name, to)
	if err != nil {
		return dec, "", CheckTraffic, "", fmt.Errorf("reading the candidate's traffic (%s): %w", c.trafficName(), err)
	}
	in := Interval{window: between(before, after)}
	// On one machine the shadow and outcome numbers are this process's;
	// in a cluster every replica mirrors and joins its own share, so they
	// are the fleet's, summed from the same reading as the traffic.
	var sh ShadowTotals
	switch {
	case c.fleet():
		sh = in.window.Shadow
	case c.cfg.Shadow != nil:
		sh = c.cfg.Shadow.Totals(fn.Name, to).sub(shBefore)
	}
	in.Compared, in.Agreed, in.DeltaSum, in.ShadowFailed, in.ShadowIncomparable = sh.Compared, sh.Agreed, sh.DeltaSum, sh.Failed, sh.Incomparable
	switch {
	case !d.spec.outcomeGated():
	case c.fleet():
		in.Outcomes = sinceStart(d.fleetAtStart, after)
		serving, err := c.traffic.sample(d.ctx, fn.Name, d.from)
		if err != nil {
			return dec, "", CheckTraffic, "", fmt.Errorf("reading the serving revision's outcomes (%s): %w", c.trafficName(), err)
		}
		in.ServingOutcomes = sinceStart(d.fleetServingAtStart, serving)
	case c.cfg.Outcomes != nil:
		in.Outcomes = c.cfg.Outcomes.Totals(fn.Name, to).Sub(d.outcomesAtStart)
		in.ServingOutcomes = c.cfg.Outcomes.Totals(fn.Name, d.from).Sub(d.servingAtStart)
	}
	verdict, check, reason = Judge(d.spec, in, onShadow, weight)
	reason += fmt.Sprintf(" [traffic from %s: %d of %d router replicas]", in.Source, in.Replicas, in.Listed)
	dec = Decision{Phase: phase, Weight: weight, Source: in.Source, Replicas: in.Replicas, ReplicasListed: in.Listed, Requests: in.Requests, Errors: in.Errors, ErrorRate: in.ErrorRate(), P99: Millis(in.P99),
		Compared: in.Compared, ShadowFailed: in.ShadowFailed, ShadowIncomparable: in.ShadowIncomparable, Agreement: in.Agreement(), ScoreDelta: in.MeanDelta(),
		Labelled: in.Outcomes.Labelled, Precision: in.Outcomes.Precision(), Recall: in.Outcomes.Recall(), LogLoss: in.Outcomes.LogLoss(), ServingLogLoss: in.ServingOutcomes.LogLoss()}
	return dec, verdict, check, reason, nil
}

func (c *Controller) setSplit(fn *functions.Manifest, from, to string, weight int) error {
	return c.editFlag(fn, func(ff *flags.FlagEdit) {
		ff.SetSplit(ff.VariantFor(from), ff.VariantFor(to), weight)
	})
}

// setStatic gives revision all of fn's traffic in one atomic flag write.
func (c *Controller) setStatic(fn *functions.Manifest, revision string) error {
	return c.editFlag(fn, func(ff *flags.FlagEdit) {
		ff.SetStatic(ff.VariantFor(revision))
	})
}

// errNotLeading refuses a flag write from a replica that no longer holds
// the Lease: another replica may be driving now, and two drivers must
// never both write.
var errNotLeading = errors.New("this replica no longer holds the rollout Lease; it stops without writing the flags")

// editFlag writes fn's flag through the store, only while this replica
// leads (when there is a Lease).
func (c *Controller) editFlag(fn *functions.Manifest, edit func(*flags.FlagEdit)) error {
	if l := c.cfg.Leader; l != nil && !l.Leading() {
		return errNotLeading
	}
	return c.flags.Edit(context.Background(), fn.Flag, edit)
}

package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// Hand-over between router replicas: the replica holding the Lease
// records each rollout it starts and ends beside the flags (an annotation
// on the flag ConfigMap), so a replica that takes the Lease over finds a
// rollout its predecessor left mid-way, and rolls it back: its analysis
// died with the previous leader, and judging it again from the start
// would drive it twice.

// RolloutRecorder is an optional capability of a FlagStore: it keeps the
// running rollouts beside the flags (ConfigMapStore does).
type RolloutRecorder interface {
	RecordRollout(ctx context.Context, function string, rec RolloutRecord) error
	RecordedRollouts(ctx context.Context) (map[string]RolloutRecord, error)
}

// RolloutRecord is what a successor needs to undo a rollout.
type RolloutRecord struct {
	From   string `json:"from"`
	To     string `json:"to"`
	State  string `json:"state"`
	Holder string `json:"holder,omitempty"` // the replica that drove it
	// Shadow is the share of the serving revision's requests every replica
	// copies to the candidate while the rollout runs (0: none): each
	// replica mirrors its own traffic (FollowRecords), so the shadow gates
	// judge the fleet's comparisons, not the leader's share.
	Shadow int `json:"shadow,omitempty"`
}

// rolloutAnnotation prefixes the flag ConfigMap's annotation per function.
const rolloutAnnotation = "rollouts.pilotlight.dev/"

// RecordRollout implements RolloutRecorder.
func (s *ConfigMapStore) RecordRollout(ctx context.Context, function string, rec RolloutRecord) error {
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := s.get(ctx)
		if err != nil {
			return err
		}
		cm = cm.DeepCopy()
		if cm.Annotations == nil {
			cm.Annotations = map[string]string{}
		}
		cm.Annotations[rolloutAnnotation+function] = string(raw)
		_, err = s.Client.CoreV1().ConfigMaps(s.Namespace).Update(ctx, cm, metav1.UpdateOptions{})
		return err
	})
}

// RecordedRollouts implements RolloutRecorder.
func (s *ConfigMapStore) RecordedRollouts(ctx context.Context) (map[string]RolloutRecord, error) {
	cm, err := s.get(ctx)
	if err != nil {
		return nil, err
	}
	return recordsOf(cm)
}

// recordsOf reads the rollout records of a flag ConfigMap.
func recordsOf(cm *corev1.ConfigMap) (map[string]RolloutRecord, error) {
	out := map[string]RolloutRecord{}
	for k, v := range cm.Annotations {
		fn, ok := strings.CutPrefix(k, rolloutAnnotation)
		if !ok {
			continue
		}
		var rec RolloutRecord
		if err := json.Unmarshal([]byte(v), &rec); err != nil {
			return nil, fmt.Errorf("annotation %s: %w", k, err)
		}
		out[fn] = rec
	}
	return out, nil
}

// record notes a rollout's state in the store, when it keeps them; a
// failure is logged, not fatal (the flags themselves are written).
func (c *Controller) record(function string, rec RolloutRecord) {
	rr, ok := c.flags.(RolloutRecorder)
	if !ok {
		return
	}
	if c.cfg.Leader != nil {
		rec.Holder = c.cfg.Leader.Holder()
	}
	if err := rr.RecordRollout(context.Background(), function, rec); err != nil {
		c.log.Warn("could not record the rollout beside the flags; a successor could not undo it", "function", function, "err", err)
	}
}

// Resume is called when this replica starts leading: every rollout
// recorded as running that this controller is not driving is rolled back
// to the revision it started from, in one flag write, and recorded so.
// It returns the functions it rolled back.
func (c *Controller) Resume(ctx context.Context) ([]string, error) {
	rr, ok := c.flags.(RolloutRecorder)
	if !ok {
		return nil, nil
	}
	recs, err := rr.RecordedRollouts(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the recorded rollouts: %w", err)
	}
	var rolledBack []string
	for name, rec := range recs {
		fn, known := c.fns[name]
		if rec.State != StateRunning || !known {
			continue
		}
		c.mu.Lock()
		r, mine := c.runs[name]
		c.mu.Unlock()
		if mine && r.snapshot().State == StateRunning {
			continue
		}
		reason := fmt.Sprintf("the replica driving it (%s) stopped holding the Lease mid-rollout; rolled back to %s by its successor", rec.Holder, rec.From)
		state := StateRolledBack
		if err := c.setStatic(fn, rec.From); err != nil {
			state, reason = StateFailed, reason+"; but the flags could not be written: "+err.Error()
		}
		now := time.Now()
		done := make(chan struct{})
		close(done)
		c.mu.Lock()
		c.runs[name] = &run{done: done, abort: make(chan struct{}), cancel: func() {}, status: Status{
			Spec: Spec{Function: name, To: rec.To}, From: rec.From, State: state, Phase: PhaseDone, Started: now, Updated: now, Finished: now,
			Decisions: []Decision{{At: now, Phase: PhaseDone, Verdict: VerdictRollback, Check: CheckLeader, Reason: reason}}}}
		c.mu.Unlock()
		c.decisions.WithLabelValues(name, rec.To, VerdictRollback, CheckLeader).Inc()
		c.record(name, RolloutRecord{From: rec.From, To: rec.To, State: state})
		c.log.Warn("rollout "+VerdictRollback, "function", name, "revision", rec.To, "check", CheckLeader, "reason", reason)
		rolledBack = append(rolledBack, name)
	}
	return rolledBack, nil
}

// mirror copies percent of the serving revision's requests to the
// candidate on this replica, and records it so every other replica
// copies its own share too (FollowRecords).
func (d *driver) mirror(percent int) {
	d.c.cfg.Shadow.Mirror(d.fn.Name, d.from, d.spec.To, percent)
	d.c.record(d.fn.Name, RolloutRecord{From: d.from, To: d.spec.To, State: StateRunning, Shadow: percent})
}

// FollowRecords is called on every replica with the rollout records as
// the flag ConfigMap's watch delivers them: a replica that is not driving
// a function's rollout mirrors what the record asks (the driver's share
// of copies is its own, set by mirror) and stops when the record does.
func (c *Controller) FollowRecords(recs map[string]RolloutRecord) {
	if c.cfg.Shadow == nil {
		return
	}
	for name := range c.fns {
		c.mu.Lock()
		r, mine := c.runs[name]
		c.mu.Unlock()
		if mine && r.snapshot().State == StateRunning {
			continue
		}
		rec, ok := recs[name]
		if ok && rec.State == StateRunning && rec.Shadow > 0 {
			c.cfg.Shadow.Mirror(name, rec.From, rec.To, rec.Shadow)
			continue
		}
		c.cfg.Shadow.StopMirror(name)
	}
}

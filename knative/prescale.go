package knative

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"knative.dev/serving/pkg/apis/autoscaling"

	"github.com/pilotlight/pilotlight/functions"
)

// Pre-scaling for blue-green rollouts on Knative. Knative's own knob for
// "keep this many pods" is the autoscaling.knative.dev/min-scale
// annotation. Set on a Service's template it would need a new revision
// (Knative refuses a changed template under the same name:
// RevisionTemplateSpec.VerifyNameChange), and an existing revision's
// annotation reaches its PodAutoscaler only when the PodAutoscaler is
// created (serving v0.42 reconcilePA updates the PA's spec alone). So the
// deployer writes min-scale on the Revision (what `kubectl get revision`
// shows, and what a re-created PodAutoscaler copies) and on its
// PodAutoscaler (what Knative's autoscaler reads, ScaleBounds), with the
// time it is held until; releasing restores function.yaml's min-scale.

// MinScaleAnnotation is Knative's lower bound of a revision's pods.
const MinScaleAnnotation = autoscaling.MinScaleAnnotationKey

// HeldUntilAnnotation records until when a rollout holds a revision's
// min-scale (RFC 3339), so a hold outlived by its router is visible and
// released by the next leader (ReleaseExpired).
const HeldUntilAnnotation = "pilotlight.dev/min-scale-held-until"

// SetMinScale writes minScale on revision and its PodAutoscaler in ns;
// heldUntil zero clears the hold record (a release).
func (d *Deployer) SetMinScale(ctx context.Context, ns, revision string, minScale int, heldUntil time.Time) error {
	if d.Client == nil {
		return fmt.Errorf("set min-scale of %s/%s: %w", ns, revision, ErrNoCluster)
	}
	var until any // null deletes the annotation in a merge patch
	if !heldUntil.IsZero() {
		until = heldUntil.UTC().Format(time.RFC3339)
	}
	revPatch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{
		MinScaleAnnotation: strconv.Itoa(minScale), HeldUntilAnnotation: until}}})
	if _, err := d.Client.Revisions(ns).Patch(ctx, revision, types.MergePatchType, revPatch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("set min-scale %d on revision %s/%s: %w", minScale, ns, revision, err)
	}
	if d.Autoscaling == nil {
		return nil
	}
	paPatch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{MinScaleAnnotation: strconv.Itoa(minScale)}}})
	if _, err := d.Autoscaling.PodAutoscalers(ns).Patch(ctx, revision, types.MergePatchType, paPatch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("set min-scale %d on the PodAutoscaler of %s/%s: %w", minScale, ns, revision, err)
	}
	return nil
}

// ReadyPods is how many of revision's pods Knative reports ready (the
// Revision's status.actualReplicas, from its PodAutoscaler).
func (d *Deployer) ReadyPods(ctx context.Context, ns, revision string) (int, error) {
	if d.Client == nil {
		return 0, fmt.Errorf("ready pods of %s/%s: %w", ns, revision, ErrNoCluster)
	}
	rev, err := d.Client.Revisions(ns).Get(ctx, revision, metav1.GetOptions{})
	if err != nil {
		return 0, fmt.Errorf("get revision %s/%s: %w", ns, revision, err)
	}
	if rev.Status.ActualReplicas == nil {
		return 0, nil
	}
	return int(*rev.Status.ActualReplicas), nil
}

// Prescaler is the rollout controller's Scaler on the Knative backend:
// Hold raises a revision's min-scale through the Deployer and releases it
// to function.yaml's min-scale when the hold ends.
type Prescaler struct {
	Deployer  *Deployer
	Namespace string
	Functions []*functions.Manifest
	Log       *slog.Logger

	mu     sync.Mutex
	timers map[string]*time.Timer // revision -> its pending release
	gen    map[string]int         // revision -> the latest Hold's number, so a superseded release does nothing
}

// NewPrescaler builds a Prescaler over the Knative API.
func NewPrescaler(d *Deployer, ns string, fns []*functions.Manifest, log *slog.Logger) *Prescaler {
	if log == nil {
		log = slog.Default()
	}
	return &Prescaler{Deployer: d, Namespace: ns, Functions: fns, Log: log, timers: map[string]*time.Timer{}, gen: map[string]int{}}
}

// ReadyInstances implements the rollout controller's Scaler (0 when the
// API does not answer: the pre-scale then waits, bounded).
func (p *Prescaler) ReadyInstances(function, revision string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := p.Deployer.ReadyPods(ctx, p.Namespace, revision)
	if err != nil {
		p.Log.Warn("reading ready pods", "function", function, "revision", revision, "err", err)
	}
	return n
}

// Hold implements the rollout controller's Scaler: revision keeps at
// least n pods until then.
func (p *Prescaler) Hold(function, revision string, n int, until time.Time) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Deployer.SetMinScale(ctx, p.Namespace, revision, n, until); err != nil {
		return err
	}
	p.Log.Info("holding revision warm", "function", function, "revision", revision, MinScaleAnnotation, n, "until", until.Format(time.RFC3339))
	p.mu.Lock()
	defer p.mu.Unlock()
	if t := p.timers[revision]; t != nil {
		t.Stop()
	}
	p.gen[revision]++
	g := p.gen[revision]
	p.timers[revision] = time.AfterFunc(time.Until(until), func() {
		p.mu.Lock()
		current := p.gen[revision] == g
		if current {
			delete(p.timers, revision) // a failed release is retried by ReleaseExpired
		}
		p.mu.Unlock()
		if current {
			p.release(function, revision)
		}
	})
	return nil
}

// release restores function.yaml's min-scale on revision.
func (p *Prescaler) release(function, revision string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	own := p.ownMinScale(function)
	if err := p.Deployer.SetMinScale(ctx, p.Namespace, revision, own, time.Time{}); err != nil {
		p.Log.Warn("could not release a held revision; its min-scale stays until the next leader releases it", "function", function, "revision", revision, "err", err)
		return
	}
	p.Log.Info("released revision", "function", function, "revision", revision, MinScaleAnnotation, own)
}

func (p *Prescaler) ownMinScale(function string) int {
	for _, fn := range p.Functions {
		if fn.Name == function {
			return fn.Scaling.MinScale
		}
	}
	return 0
}

// ReleaseExpired releases every revision of the functions whose recorded
// hold has ended and that this process holds no timer for (a router that
// died holding it); it returns the revisions released.
func (p *Prescaler) ReleaseExpired(ctx context.Context) ([]string, error) {
	var released []string
	for _, fn := range p.Functions {
		for _, r := range fn.Revisions {
			rev, err := p.Deployer.Client.Revisions(p.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
			if err != nil {
				continue // not deployed
			}
			raw, held := rev.Annotations[HeldUntilAnnotation]
			until, err := time.Parse(time.RFC3339, raw)
			if !held || err != nil || time.Now().Before(until) {
				continue
			}
			p.mu.Lock()
			_, mine := p.timers[r.Name]
			p.mu.Unlock()
			if mine {
				continue
			}
			p.release(fn.Name, r.Name)
			released = append(released, r.Name)
		}
	}
	return released, nil
}

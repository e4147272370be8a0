package knative

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/pilotlight/pilotlight/flags"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"knative.dev/pkg/apis"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	autoscalingclient "knative.dev/serving/pkg/client/clientset/versioned/typed/autoscaling/v1alpha1"
	servingclient "knative.dev/serving/pkg/client/clientset/versioned/typed/serving/v1"

	"github.com/pilotlight/pilotlight/functions"
)

// Deploy defaults.
const (
	DefaultDeployTimeout = 5 * time.Minute
	defaultPollInterval  = time.Second
	progressHeartbeat    = 10 * time.Second
)

// DeployOptions are Options plus how to apply them.
type DeployOptions struct {
	Options
	// DryRun builds and validates every step but changes nothing.
	DryRun bool
	// Wait waits for the Service to be Ready after the last step. Steps that
	// create an older revision always wait for it: the next step's traffic
	// block names it, and Knative must have created it first.
	Wait bool
	// Timeout bounds each wait (default DefaultDeployTimeout).
	Timeout time.Duration
}

// Step is one apply: a Service whose template is one revision.
type Step struct {
	Revision string // the template's revision
	Action   string // "create", "update", or "traffic" (template unchanged)
	Service  *servingv1.Service
}

// Result says what Deploy did (or, on a dry run, would do).
type Result struct {
	Steps []Step
	// URL is the Service's URL once Knative reported one (empty on a dry run
	// or without waiting).
	URL string
}

// Deployer creates or updates a function's Knative Service the way kn does,
// and adds revisions in order: Knative keeps one template per Service, so each
// revision missing in the cluster is created by its own apply, oldest first,
// and the traffic block only ever names revisions that exist.
type Deployer struct {
	// Client reaches the cluster; nil plans a dry run for an empty cluster.
	Client servingclient.ServingV1Interface
	// Autoscaling reaches the revisions' PodAutoscalers (SetMinScale);
	// nil: min-scale is written on the Revision alone.
	Autoscaling autoscalingclient.AutoscalingV1alpha1Interface
	Log         *slog.Logger
	// Progress receives a line whenever the awaited state changes, and every
	// 10s while it does not (nil: none).
	Progress io.Writer
	// PollInterval between status checks (default 1s).
	PollInterval time.Duration
}

// Deploy brings function m's Service to opts: every revision up to
// opts.Revision exists, the template is opts.Revision (unless a newer one is
// already there), and the traffic block is opts.Traffic.
func (d *Deployer) Deploy(ctx context.Context, m *functions.Manifest, opts DeployOptions) (*Result, error) {
	opts.Options = opts.Options.withDefaults(m)
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultDeployTimeout
	}
	log := d.logger().With("function", m.Name, "namespace", opts.Namespace)
	target := slices.IndexFunc(m.Revisions, func(r functions.Revision) bool { return r.Name == opts.Revision })
	if target < 0 {
		return nil, fmt.Errorf("deploy %s: no revision %q (have %v)", m.Name, opts.Revision, functions.RevisionNames(m.Revisions))
	}
	split := opts.Traffic
	if split == nil {
		split = flags.Split{opts.Revision: 100}
	}

	var current *servingv1.Service
	exists := map[string]bool{}
	if d.Client == nil {
		// No cluster: a dry run plans for an empty one.
		if !opts.DryRun {
			return nil, fmt.Errorf("deploy %s: %w", m.Name, ErrNoCluster)
		}
	} else {
		var err error
		current, err = d.Client.Services(opts.Namespace).Get(ctx, m.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			current = nil
		case err != nil:
			return nil, fmt.Errorf("deploy %s: get service %s/%s: %w", m.Name, opts.Namespace, m.Name, err)
		}
		if exists, err = d.existingRevisions(ctx, m, opts.Namespace, m.Revisions[:target+1]); err != nil {
			return nil, err
		}
	}

	// One step per missing revision, oldest first; if the target already
	// exists, a last step that only sets the traffic.
	var steps []string
	for _, r := range m.Revisions[:target+1] {
		if !exists[r.Name] {
			steps = append(steps, r.Name)
		}
	}
	if len(steps) == 0 || steps[len(steps)-1] != opts.Revision {
		steps = append(steps, opts.Revision)
	}

	res := &Result{}
	for i, rev := range steps {
		last := i == len(steps)-1
		idx := slices.IndexFunc(m.Revisions, func(r functions.Revision) bool { return r.Name == rev })
		names := functions.RevisionNames(m.Revisions[:idx+1])
		stepOpts := opts.Options
		stepOpts.Revision = rev
		stepOpts.Traffic = split.Restrict(names, rev)
		desired, err := Service(m, stepOpts)
		if err != nil {
			return res, fmt.Errorf("deploy %s: %w", m.Name, err)
		}
		action := "create"
		if current != nil {
			action = "update"
			if exists[rev] {
				// Revisions are immutable: an existing one is never rewritten,
				// and a template that moved on is not moved back. Knative
				// skips defaulting a template whose name is unchanged, so
				// sending ours again would read as a change: send the stored one.
				if current.Spec.Template.Name == rev {
					if drift := templateDrift(&desired.Spec.Template, &current.Spec.Template); len(drift) > 0 {
						return res, fmt.Errorf("deploy %s: revision %s already exists in %s with a different %s; revisions are immutable: add a new revision to function.yaml",
							m.Name, rev, opts.Namespace, strings.Join(drift, ", "))
					}
				}
				desired.Spec.Template = current.Spec.Template
				action = "traffic"
			}
			if err := validateUpdate(ctx, updateOf(current, desired), current); err != nil {
				return res, fmt.Errorf("deploy %s revision %s: Knative would refuse the update: %w", m.Name, rev, err)
			}
		} else if err := validateCreate(ctx, desired); err != nil {
			return res, fmt.Errorf("deploy %s revision %s: Knative would refuse the service: %w", m.Name, rev, err)
		}
		res.Steps = append(res.Steps, Step{Revision: rev, Action: action, Service: desired})
		if opts.DryRun {
			// Later steps see this one as applied.
			current, exists[rev] = desired, true
			continue
		}
		log.Info("apply knative service", "revision", rev, "action", action, "traffic", formatSplit(stepOpts.Traffic))
		applied, err := d.apply(ctx, desired)
		if err != nil {
			return res, fmt.Errorf("deploy %s revision %s: %w", m.Name, rev, err)
		}
		if applied == nil {
			// Nothing differed from the cluster: nothing was sent.
			res.Steps[len(res.Steps)-1].Action = "unchanged"
			log.Info("knative service already as wanted", "revision", rev)
		} else {
			current = applied
		}
		exists[rev] = true
		if last && !opts.Wait {
			break
		}
		if !last {
			// The next step's traffic block names this revision: it must
			// exist and be Ready itself. The Service as a whole may not be
			// Ready yet (its route waits on the networking layer), and
			// nothing in the next step depends on that.
			if err := d.waitRevisionReady(ctx, opts.Namespace, m.Name, desired.Spec.Template.Name, opts.Timeout); err != nil {
				return res, err
			}
			continue
		}
		ready, err := d.waitReady(ctx, opts.Namespace, m.Name, desired.Spec.Template.Name, opts.Timeout)
		if err != nil {
			return res, err
		}
		current = ready
		if ready.Status.URL != nil {
			res.URL = ready.Status.URL.String()
		}
	}
	return res, nil
}

// templateDrift names what function.yaml or the options set differently from
// a stored template of the same revision (the fields this package writes;
// Knative's defaults are left out of the comparison).
func templateDrift(desired, stored *servingv1.RevisionTemplateSpec) []string {
	var out []string
	for k, v := range desired.Annotations {
		if stored.Annotations[k] != v {
			out = append(out, "annotation "+k)
		}
	}
	d, s := desired.Spec, stored.Spec
	if !equality.Semantic.DeepEqual(d.ContainerConcurrency, s.ContainerConcurrency) {
		out = append(out, "containerConcurrency")
	}
	if len(d.Containers) != len(s.Containers) {
		return append(out, "container list")
	}
	for i := range d.Containers {
		dc, sc := d.Containers[i], s.Containers[i]
		if dc.Image != sc.Image {
			out = append(out, fmt.Sprintf("image (%s, was %s)", dc.Image, sc.Image))
		}
		if !slices.Equal(dc.Args, sc.Args) {
			out = append(out, "args")
		}
		if !equality.Semantic.DeepEqual(dc.Env, sc.Env) {
			out = append(out, "env")
		}
		if !equality.Semantic.DeepEqual(dc.Resources, sc.Resources) {
			out = append(out, "resources")
		}
	}
	slices.Sort(out)
	return out
}

// existingRevisions asks the cluster which of revs exist, and refuses
// revisions of the same name that belong to another Service.
func (d *Deployer) existingRevisions(ctx context.Context, m *functions.Manifest, ns string, revs []functions.Revision) (map[string]bool, error) {
	out := map[string]bool{}
	for _, r := range revs {
		got, err := d.Client.Revisions(ns).Get(ctx, r.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return nil, fmt.Errorf("deploy %s: get revision %s/%s: %w", m.Name, ns, r.Name, err)
		}
		if owner := got.Labels[serving.ServiceLabelKey]; owner != m.Name {
			return nil, fmt.Errorf("deploy %s: revision %s/%s exists but belongs to service %q, not %q", m.Name, ns, r.Name, owner, m.Name)
		}
		out[r.Name] = true
	}
	return out, nil
}

// apply creates or updates, re-reading and retrying when someone else
// changed the Service in between (409 Conflict), as kubectl apply would. It
// returns nil, nil when the Service already is as desired (nothing sent).
func (d *Deployer) apply(ctx context.Context, desired *servingv1.Service) (*servingv1.Service, error) {
	client := d.Client.Services(desired.Namespace)
	var out *servingv1.Service
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := client.Get(ctx, desired.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			out, err = client.Create(ctx, desired, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				// Created under us: retry as an update.
				return apierrors.NewConflict(servingv1.Resource("services"), desired.Name, err)
			}
			return err
		}
		if err != nil {
			return err
		}
		next := updateOf(cur, desired)
		if equality.Semantic.DeepEqual(next.ObjectMeta, cur.ObjectMeta) && equality.Semantic.DeepEqual(next.Spec, cur.Spec) {
			out = nil // a second deploy of the same thing writes nothing
			return nil
		}
		out, err = client.Update(ctx, next, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("apply service %s/%s: %w", desired.Namespace, desired.Name, err)
	}
	return out, nil
}

// updateOf is what apply sends to update cur to desired: cur's metadata
// with desired's labels and annotations merged in (so what others wrote
// stays, e.g. the serving.knative.dev/creator annotation Knative's webhook
// sets on create and refuses to see change), and desired's spec. The
// client-side validation checks this object, not desired alone.
func updateOf(cur, desired *servingv1.Service) *servingv1.Service {
	next := cur.DeepCopy()
	next.Labels = mergeMaps(cur.Labels, desired.Labels)
	if _, private := desired.Labels[VisibilityLabel]; !private {
		delete(next.Labels, VisibilityLabel) // --public: drop cluster-local
	}
	next.Annotations = mergeMaps(cur.Annotations, desired.Annotations)
	next.Spec = desired.Spec
	return next
}

// errWaitTimedOut is what poll returns when its timeout passes first.
var errWaitTimedOut = errors.New("wait timed out")

// poll calls look every PollInterval until it reports done or fails, the
// one wait loop of the deployer. It prints "prefix: state (elapsed)" once
// per change of state and every progressHeartbeat while a state lasts; a
// look that could not read anything returns state "" and prints nothing.
// It returns errWaitTimedOut when timeout passes first.
func (d *Deployer) poll(ctx context.Context, timeout time.Duration, prefix string, look func(context.Context) (done bool, state string, err error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	interval := d.PollInterval
	if interval <= 0 {
		interval = defaultPollInterval
	}
	start := time.Now()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var lastState string
	var lastPrint time.Time
	for {
		done, state, err := look(ctx)
		if state != "" && (state != lastState || time.Since(lastPrint) >= progressHeartbeat) {
			d.progress("%s: %s (%s)\n", prefix, state, time.Since(start).Round(time.Second))
			lastState, lastPrint = state, time.Now()
		}
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return errWaitTimedOut
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// waitReady polls until the Service has observed its spec, created the
// template's revision and is Ready; it fails early when Knative reports the
// current generation failed, and on timeout names what to look at.
func (d *Deployer) waitReady(ctx context.Context, ns, name, revision string, timeout time.Duration) (*servingv1.Service, error) {
	var last *servingv1.Service
	err := d.poll(ctx, timeout, fmt.Sprintf("%s: waiting for service %s to be Ready with revision %s", name, name, revision),
		func(ctx context.Context) (bool, string, error) {
			svc, err := d.Client.Services(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				if ctx.Err() == nil {
					d.logger().Warn("get service while waiting", "service", name, "err", err)
				}
				return false, "", nil
			}
			last = svc
			ready, state := readiness(svc, revision)
			if !ready && svc.IsFailed() && svc.Status.LatestCreatedRevisionName == revision {
				return false, state, notReady(ns, name, revision, svc, "failed")
			}
			return ready, state, nil
		})
	switch {
	case errors.Is(err, errWaitTimedOut):
		return nil, notReady(ns, name, revision, last, "not ready after "+timeout.String())
	case errors.Is(err, context.Canceled):
		return nil, fmt.Errorf("wait for service %s/%s: %w", ns, name, err)
	case err != nil:
		return nil, err
	}
	return last, nil
}

// waitRevisionReady polls until the Revision itself is Ready (an older
// revision, before the next step names it in the traffic block); it fails
// early when Knative reports the revision failed.
func (d *Deployer) waitRevisionReady(ctx context.Context, ns, service, revision string, timeout time.Duration) error {
	state := "never read"
	err := d.poll(ctx, timeout, fmt.Sprintf("%s: waiting for revision %s to be Ready", service, revision),
		func(ctx context.Context) (bool, string, error) {
			rev, err := d.Client.Revisions(ns).Get(ctx, revision, metav1.GetOptions{})
			switch {
			case err == nil:
				var ready, failed bool
				ready, failed, state = revisionReadiness(rev)
				if failed {
					return false, state, revisionNotReady(ns, service, revision, "failed: "+state)
				}
				return ready, state, nil
			case apierrors.IsNotFound(err):
				state = "not created yet"
				return false, state, nil
			case ctx.Err() == nil:
				d.logger().Warn("get revision while waiting", "revision", revision, "err", err)
			}
			return false, "", nil
		})
	switch {
	case errors.Is(err, errWaitTimedOut):
		return revisionNotReady(ns, service, revision, "not ready after "+timeout.String()+": "+state)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("wait for revision %s/%s: %w", ns, revision, err)
	}
	return err
}

func revisionReadiness(rev *servingv1.Revision) (ready, failed bool, state string) {
	if rev.Status.ObservedGeneration < rev.Generation {
		return false, false, fmt.Sprintf("generation %d not observed yet", rev.Generation)
	}
	c := rev.Status.GetCondition(servingv1.RevisionConditionReady)
	switch {
	case c == nil:
		return false, false, "Ready unknown"
	case c.IsTrue():
		return true, false, "Ready"
	case c.IsFalse():
		return false, true, fmt.Sprintf("Ready=False %s %s", c.Reason, c.Message)
	}
	return false, false, fmt.Sprintf("Ready=%s %s %s", c.Status, c.Reason, c.Message)
}

func revisionNotReady(ns, service, revision, what string) error {
	return fmt.Errorf("service %s/%s: revision %s %s; check `kubectl -n %s describe revision %s` and "+
		"`kubectl -n %s get pods -l serving.knative.dev/revision=%s` "+
		"(image pull errors, the readiness probe /v2/health/ready, missing model files under /functions/%s)",
		ns, service, revision, what, ns, revision, ns, revision, service)
}

func readiness(svc *servingv1.Service, revision string) (bool, string) {
	st := svc.Status
	if st.ObservedGeneration < svc.Generation {
		return false, fmt.Sprintf("generation %d not observed yet", svc.Generation)
	}
	if st.LatestCreatedRevisionName != revision && st.LatestReadyRevisionName != revision {
		return false, fmt.Sprintf("revision not created yet (latest created %q)", st.LatestCreatedRevisionName)
	}
	c := st.GetCondition(servingv1.ServiceConditionReady)
	if c == nil {
		return false, "Ready unknown"
	}
	if c.IsTrue() && st.LatestReadyRevisionName == revision {
		return true, "Ready"
	}
	return false, fmt.Sprintf("Ready=%s %s %s", c.Status, c.Reason, c.Message)
}

func notReady(ns, name, revision string, svc *servingv1.Service, what string) error {
	state := "never read its status"
	if svc != nil {
		_, state = readiness(svc, revision)
	}
	return fmt.Errorf("service %s/%s revision %s %s: %s; check `kubectl -n %s describe ksvc %s`, "+
		"`kubectl -n %s describe revision %s` and `kubectl -n %s get pods -l serving.knative.dev/revision=%s` "+
		"(image pull errors, the readiness probe /v2/health/ready, missing model files under /functions/%s)",
		ns, name, revision, what, state, ns, name, ns, revision, ns, revision, name)
}

// validateCreate and validateUpdate run Knative's webhook code path on the
// client: defaults, then validation, so a refused spec fails before it is sent.
func validateCreate(ctx context.Context, svc *servingv1.Service) error {
	s := svc.DeepCopy()
	ctx = apis.WithinCreate(ctx)
	s.SetDefaults(ctx)
	if err := s.Validate(ctx); err != nil {
		return err
	}
	return nil
}

func validateUpdate(ctx context.Context, svc, current *servingv1.Service) error {
	s := svc.DeepCopy()
	// A stored template is what the webhook defaulted when it was created;
	// Knative skips defaulting an unchanged template on update, so default
	// it here as the webhook did. (A cluster without the webhook, like the
	// live control plane of make cluster-test, stores it undefaulted, and
	// validating it raw refused a successThreshold of 0.)
	old := current.DeepCopy()
	if s.Spec.Template.Name == old.Spec.Template.Name {
		s.Spec.Template.SetDefaults(ctx)
		old.Spec.Template.SetDefaults(ctx)
	}
	ctx = apis.WithinUpdate(ctx, old)
	s.SetDefaults(ctx)
	if err := s.Validate(ctx); err != nil {
		return err
	}
	return nil
}

func (d *Deployer) progress(format string, args ...any) {
	if d.Progress != nil {
		fmt.Fprintf(d.Progress, format, args...)
	}
}

func (d *Deployer) logger() *slog.Logger {
	if d.Log != nil {
		return d.Log
	}
	return slog.New(slog.DiscardHandler)
}

func mergeMaps(base, over map[string]string) map[string]string {
	if len(base) == 0 && len(over) == 0 {
		return nil
	}
	out := maps.Clone(base)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, over)
	return out
}

func formatSplit(s flags.Split) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(s)) {
		parts = append(parts, fmt.Sprintf("%s=%d%%", k, s[k]))
	}
	return strings.Join(parts, ",")
}

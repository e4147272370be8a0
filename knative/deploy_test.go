package knative

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/functions"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
)

func deployer(c *cluster, progress *bytes.Buffer) *Deployer {
	d := &Deployer{Client: c.cs.ServingV1(), PollInterval: 5 * time.Millisecond}
	if progress != nil {
		d.Progress = progress
	}
	return d
}

func stepsOf(r *Result) []string {
	var out []string
	for _, s := range r.Steps {
		out = append(out, s.Action+" "+s.Revision)
	}
	return out
}

func trafficOf(svc *servingv1.Service) string {
	var parts []string
	for _, t := range svc.Spec.Traffic {
		parts = append(parts, t.Tag+"="+t.RevisionName+":"+strconv.FormatInt(*t.Percent, 10))
	}
	return strings.Join(parts, " ")
}

var errConcurrentWriter = errors.New("the object has been modified by another writer")

func TestDeployFirstTimeCreatesRevisionsInOrder(t *testing.T) {
	c := newCluster(t)
	m := fraudManifest(t)
	var progress bytes.Buffer
	res, err := deployer(c, &progress).Deploy(context.Background(), m, DeployOptions{Options: Options{Traffic: fraudSplit(t, m)}, Wait: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := stepsOf(res), []string{"create fraud-00001", "update fraud-00002"}; !slices.Equal(got, want) {
		t.Errorf("steps %v, want %v", got, want)
	}
	// The first step must not name fraud-00002: it does not exist yet.
	if got := trafficOf(res.Steps[0].Service); got != "stable=fraud-00001:100" {
		t.Errorf("first step traffic %q", got)
	}
	svc := c.service(t)
	if svc.Spec.Template.Name != "fraud-00002" {
		t.Errorf("template %s", svc.Spec.Template.Name)
	}
	if got := trafficOf(svc); got != "stable=fraud-00001:90 canary=fraud-00002:10" {
		t.Errorf("traffic %q", got)
	}
	if got := c.revisions(t); !slices.Equal(got, []string{"fraud-00001", "fraud-00002"}) {
		t.Errorf("revisions in cluster %v", got)
	}
	if res.URL != "http://fraud.pilotlight.svc.cluster.local" {
		t.Errorf("URL %q", res.URL)
	}
	// The older revision is awaited on its own readiness, the Service only at
	// the end; each line names what it waits on.
	for _, want := range []string{"fraud: waiting for revision fraud-00001 to be Ready: Ready",
		"fraud: waiting for service fraud to be Ready with revision fraud-00002: Ready"} {
		if !strings.Contains(progress.String(), want) {
			t.Errorf("no progress line %q in %q", want, progress.String())
		}
	}
	if strings.Contains(progress.String(), "service fraud to be Ready with revision fraud-00001") {
		t.Errorf("waited on the Service for the intermediate revision: %q", progress.String())
	}
}

// TestDeployWaitsOnTheRevisionForOlderSteps: a live cluster showed the
// older revision Ready=True while the Service still said Ready=Unknown
// IngressNotConfigured; the next step needs only the revision.
func TestDeployWaitsOnTheRevisionForOlderSteps(t *testing.T) {
	c := newCluster(t)
	c.routeLag = true
	m := fraudManifest(t)
	var progress bytes.Buffer
	res, err := deployer(c, &progress).Deploy(context.Background(), m, DeployOptions{Options: Options{Traffic: fraudSplit(t, m)}, Wait: true, Timeout: time.Second})
	if err != nil {
		t.Fatalf("deploy: %v (progress %q)", err, progress.String())
	}
	if got := stepsOf(res); !slices.Equal(got, []string{"create fraud-00001", "update fraud-00002"}) {
		t.Errorf("steps %v", got)
	}
	if strings.Contains(progress.String(), "IngressNotConfigured") {
		t.Errorf("the intermediate step waited on the Service's route: %q", progress.String())
	}
}

func TestDeployUpdateAddsOneRevision(t *testing.T) {
	c := newCluster(t)
	m := fraudManifest(t)
	d := deployer(c, nil)
	ctx := context.Background()
	deployFirstRevision(t, d, m)
	res, err := d.Deploy(ctx, m, DeployOptions{Options: Options{Traffic: fraudSplit(t, m)}, Wait: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if got := stepsOf(res); !slices.Equal(got, []string{"update fraud-00002"}) {
		t.Errorf("steps %v, want one update", got)
	}
	if got := trafficOf(c.service(t)); got != "stable=fraud-00001:90 canary=fraud-00002:10" {
		t.Errorf("traffic %q", got)
	}

	// Re-running with nothing changed sends nothing.
	gen, rv, updates := c.service(t).Generation, c.service(t).ResourceVersion, c.updates
	res, err = d.Deploy(ctx, m, DeployOptions{Options: Options{Traffic: fraudSplit(t, m)}, Wait: true, Timeout: time.Second})
	if err != nil {
		t.Fatalf("redeploy: %v", err)
	}
	if got := stepsOf(res); !slices.Equal(got, []string{"unchanged fraud-00002"}) {
		t.Errorf("redeploy steps %v", got)
	}
	if svc := c.service(t); svc.Generation != gen || svc.ResourceVersion != rv || c.updates != updates {
		t.Errorf("redeploying the same inputs wrote the Service (generation %d->%d, resourceVersion %s->%s, %d updates)",
			gen, svc.Generation, rv, svc.ResourceVersion, c.updates-updates)
	}
	// A flag change moves only traffic.
	if _, err := d.Deploy(ctx, m, DeployOptions{Options: Options{Traffic: flags.Split{"fraud-00001": 50, "fraud-00002": 50}}}); err != nil {
		t.Fatal(err)
	}
	if got := trafficOf(c.service(t)); got != "stable=fraud-00001:50 canary=fraud-00002:50" {
		t.Errorf("traffic after flag change %q", got)
	}
	// Rolling the template back is not done: fraud-00001 exists, only traffic moves.
	res, err = d.Deploy(ctx, m, DeployOptions{Options: Options{Revision: "fraud-00001"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := stepsOf(res); !slices.Equal(got, []string{"traffic fraud-00001"}) {
		t.Errorf("steps %v", got)
	}
	if svc := c.service(t); svc.Spec.Template.Name != "fraud-00002" || trafficOf(svc) != "stable=fraud-00001:100" {
		t.Errorf("template %s traffic %q", svc.Spec.Template.Name, trafficOf(svc))
	}
	// Going public drops the cluster-local label; going back restores it.
	if _, err := d.Deploy(ctx, m, DeployOptions{Options: Options{Traffic: fraudSplit(t, m), Public: true}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.service(t).Labels[VisibilityLabel]; ok {
		t.Error("--public left the service cluster-local")
	}
	if _, err := d.Deploy(ctx, m, DeployOptions{Options: Options{Traffic: fraudSplit(t, m)}}); err != nil {
		t.Fatal(err)
	}
	if c.service(t).Labels[VisibilityLabel] != VisibilityClusterLocal {
		t.Error("service not cluster-local again")
	}
	// A changed image under an existing revision name is refused before sending.
	updates = c.updates
	_, err = d.Deploy(ctx, m, DeployOptions{Options: Options{Image: "registry.example/other:1"}})
	if err == nil || !strings.Contains(err.Error(), "revision fraud-00002 already exists in pilotlight with a different image (registry.example/other:1") {
		t.Fatalf("err = %v, want a refusal to rewrite an existing revision", err)
	}
	if c.updates != updates {
		t.Error("a refused update was sent")
	}
}

func TestDeployRetriesOnConflict(t *testing.T) {
	c := newCluster(t)
	m := fraudManifest(t)
	d := deployer(c, nil)
	ctx := context.Background()
	if _, err := d.Deploy(ctx, m, DeployOptions{Options: Options{Revision: "fraud-00001"}, Wait: true, Timeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	conflicts := 0
	c.cs.PrependReactor("update", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		if conflicts == 0 {
			conflicts++
			return true, nil, apierrors.NewConflict(servingv1.Resource("services"), "fraud", errConcurrentWriter)
		}
		return false, nil, nil
	})
	updates := c.updates
	if _, err := d.Deploy(ctx, m, DeployOptions{Options: Options{Traffic: fraudSplit(t, m)}, Wait: true, Timeout: time.Second}); err != nil {
		t.Fatalf("deploy with one conflict: %v", err)
	}
	if conflicts != 1 || c.updates != updates+1 {
		t.Errorf("conflicts %d, updates reaching the server %d: want 1 and 1", conflicts, c.updates-updates)
	}
	if c.service(t).Spec.Template.Name != "fraud-00002" {
		t.Error("update lost after the conflict")
	}
}

func TestDeployNotReadyTimesOut(t *testing.T) {
	c := newCluster(t)
	c.ready = false
	m := fraudManifest(t)
	var progress bytes.Buffer
	_, err := deployer(c, &progress).Deploy(context.Background(), m, DeployOptions{Options: Options{Traffic: fraudSplit(t, m)}, Wait: true, Timeout: 100 * time.Millisecond})
	if err == nil {
		t.Fatal("deploy of a never-ready revision succeeded")
	}
	for _, want := range []string{"revision fraud-00001", "not ready after 100ms", "Deploying", "kubectl -n pilotlight describe revision fraud-00001", "/v2/health/ready"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// fraud-00002 must not be applied while fraud-00001 is not ready.
	if tmpl := c.service(t).Spec.Template.Name; tmpl != "fraud-00001" {
		t.Errorf("template moved on to %s before the first revision was ready", tmpl)
	}
	if !strings.Contains(progress.String(), "waiting for revision fraud-00001 to be Ready: Ready=Unknown Deploying") {
		t.Errorf("progress %q", progress.String())
	}
}

func TestDeployDryRunChangesNothing(t *testing.T) {
	c := newCluster(t)
	m := fraudManifest(t)
	res, err := deployer(c, nil).Deploy(context.Background(), m, DeployOptions{Options: Options{Traffic: fraudSplit(t, m)}, DryRun: true, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := stepsOf(res); !slices.Equal(got, []string{"create fraud-00001", "update fraud-00002"}) {
		t.Errorf("steps %v", got)
	}
	if c.creates+c.updates != 0 || len(c.revisions(t)) != 0 {
		t.Errorf("dry run wrote: %d creates, %d updates", c.creates, c.updates)
	}
}

func TestDeployRefusesForeignRevision(t *testing.T) {
	c := newCluster(t)
	m := fraudManifest(t)
	other := &servingv1.Revision{}
	other.Name, other.Namespace = "fraud-00001", DefaultNamespace
	other.Labels = map[string]string{"serving.knative.dev/service": "impostor"}
	if err := c.cs.Tracker().Add(other); err != nil {
		t.Fatal(err)
	}
	_, err := deployer(c, nil).Deploy(context.Background(), m, DeployOptions{})
	if err == nil || !strings.Contains(err.Error(), `belongs to service "impostor"`) {
		t.Fatalf("err = %v", err)
	}
}

// TestDryRunWithoutAClusterPlansForAnEmptyOne: with no cluster configured,
// NewClient says so (ErrNoCluster) and a dry run with no client plans every
// revision from scratch; a real deploy without a client is refused.
func TestDryRunWithoutAClusterPlansForAnEmptyOne(t *testing.T) {
	t.Setenv("KUBECONFIG", "")
	t.Setenv("HOME", t.TempDir())
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, _, err := NewClient("", ""); !errors.Is(err, ErrNoCluster) {
		t.Fatalf("NewClient with nothing configured: %v, want ErrNoCluster", err)
	}
	m := fraudManifest(t)
	d := &Deployer{}
	res, err := d.Deploy(context.Background(), m, DeployOptions{Options: Options{Traffic: fraudSplit(t, m)}, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := stepsOf(res); !slices.Equal(got, []string{"create fraud-00001", "update fraud-00002"}) {
		t.Errorf("dry run for an empty cluster: steps %v", got)
	}
	if got := trafficOf(res.Steps[1].Service); got != "stable=fraud-00001:90 canary=fraud-00002:10" {
		t.Errorf("last step's traffic %q", got)
	}
	if _, err := d.Deploy(context.Background(), m, DeployOptions{}); !errors.Is(err, ErrNoCluster) {
		t.Errorf("deploy without a cluster: %v, want ErrNoCluster", err)
	}
}

// TestRedeployOverAnUndefaultedTemplate: a cluster without Knative's webhook
// (the live control plane of make cluster-test) stores the template as sent,
// without defaults such as the readiness probe's successThreshold. A
// re-deploy must validate it as the webhook would have stored it, not refuse
// it.
func TestRedeployOverAnUndefaultedTemplate(t *testing.T) {
	c := newCluster(t)
	m := fraudManifest(t)
	svc, err := Service(m, Options{Traffic: fraudSplit(t, m)}.withDefaults(m))
	if err != nil {
		t.Fatal(err)
	}
	svc.Generation, svc.ResourceVersion = 1, "1"
	c.reconcile(svc)
	if err := c.cs.Tracker().Create(servicesGVR, svc, svc.Namespace); err != nil {
		t.Fatal(err)
	}
	first := svc.DeepCopy()
	first.Spec.Template.Name = "fraud-00001"
	c.reconcile(first) // fraud-00001's Revision exists too
	res, err := deployer(c, nil).Deploy(context.Background(), m, DeployOptions{Options: Options{Traffic: fraudSplit(t, m)}, Wait: true, Timeout: time.Second})
	if err != nil {
		t.Fatalf("re-deploy over an undefaulted stored template: %v", err)
	}
	if got := stepsOf(res); !slices.Equal(got, []string{"unchanged fraud-00002"}) {
		t.Errorf("steps %v", got)
	}
}

// TestDeployKeepsTheWebhooksCreator: Knative's webhook stamps
// serving.knative.dev/creator on create and refuses an update that changes
// or drops it. The next revision's update keeps it (the real node's webhook
// refused pilotlight deploy's second step before).
func TestDeployKeepsTheWebhooksCreator(t *testing.T) {
	c := newCluster(t)
	m := fraudManifest(t)
	d := deployer(c, nil)
	ctx := context.Background()
	deployFirstRevision(t, d, m)
	svc := c.service(t)
	svc.Annotations = mergeMaps(svc.Annotations, map[string]string{"serving.knative.dev/creator": "system:serviceaccount:pilotlight:pilotlight-deployer"})
	if err := c.cs.Tracker().Update(servicesGVR, svc, svc.Namespace); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Deploy(ctx, m, DeployOptions{Options: Options{Traffic: fraudSplit(t, m)}, Wait: true, Timeout: time.Second}); err != nil {
		t.Fatalf("deploy of the next revision over a Service the webhook stamped: %v", err)
	}
	if got := c.service(t).Annotations["serving.knative.dev/creator"]; got != "system:serviceaccount:pilotlight:pilotlight-deployer" {
		t.Errorf("creator annotation %q after the update", got)
	}
}

// deployFirstRevision deploys m with only its first revision, as a
// Service's first deploy does, so the next Deploy is an update.
func deployFirstRevision(t *testing.T, d *Deployer, m *functions.Manifest) {
	t.Helper()
	first := *m
	first.Revisions = m.Revisions[:1]
	if _, err := d.Deploy(context.Background(), &first, DeployOptions{Wait: true, Timeout: time.Second}); err != nil {
		t.Fatal(err)
	}
}

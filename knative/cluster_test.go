package knative

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"knative.dev/serving/pkg/client/clientset/versioned/fake"
)

// cluster stands in for the API server, Knative's webhook and Knative's
// controllers on top of the serving clientset's fake: it defaults and
// validates as the webhook does, enforces resourceVersion like the API server,
// bumps generation on spec changes, and (when ready) creates the template's
// revision and publishes status the way the service controller does.
type cluster struct {
	t  *testing.T
	cs *fake.Clientset

	mu    sync.Mutex
	ready bool // reconcile to Ready=True
	// routeLag keeps the Service's first generation Ready=Unknown
	// IngressNotConfigured while its revision is Ready, as a live cluster
	// does until the networking layer programs the route.
	routeLag bool
	urlFor   func(tag string) string // status URL for a tag ("" = the service URL)
	creates  int
	updates  int
}

var (
	servicesGVR  = servingv1.SchemeGroupVersion.WithResource("services")
	revisionsGVR = servingv1.SchemeGroupVersion.WithResource("revisions")
)

func newCluster(t *testing.T) *cluster {
	c := &cluster{t: t, cs: fake.NewSimpleClientset(), ready: true}
	c.urlFor = func(tag string) string {
		if tag == "" {
			return "http://fraud.pilotlight.svc.cluster.local"
		}
		return "http://" + tag + "-fraud.pilotlight.svc.cluster.local"
	}
	c.cs.PrependReactor("create", "services", c.createService)
	c.cs.PrependReactor("update", "services", c.updateService)
	return c
}

func (c *cluster) createService(a k8stesting.Action) (bool, runtime.Object, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.creates++
	svc := a.(k8stesting.CreateAction).GetObject().(*servingv1.Service).DeepCopy()
	ctx := apis.WithinCreate(context.Background())
	svc.SetDefaults(ctx)
	if err := svc.Validate(ctx); err != nil {
		return true, nil, apierrors.NewBadRequest("admission webhook denied the request: " + err.Error())
	}
	svc.Generation, svc.ResourceVersion = 1, "1"
	c.reconcile(svc)
	if err := c.cs.Tracker().Create(servicesGVR, svc, svc.Namespace); err != nil {
		return true, nil, err
	}
	return true, svc, nil
}

func (c *cluster) updateService(a k8stesting.Action) (bool, runtime.Object, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.updates++
	svc := a.(k8stesting.UpdateAction).GetObject().(*servingv1.Service).DeepCopy()
	obj, err := c.cs.Tracker().Get(servicesGVR, svc.Namespace, svc.Name)
	if err != nil {
		return true, nil, err
	}
	old := obj.(*servingv1.Service)
	if svc.ResourceVersion != old.ResourceVersion {
		return true, nil, apierrors.NewConflict(servingv1.Resource("services"), svc.Name, fmt.Errorf("resourceVersion %s is stale (now %s)", svc.ResourceVersion, old.ResourceVersion))
	}
	ctx := apis.WithinUpdate(context.Background(), old)
	svc.SetDefaults(ctx)
	if err := svc.Validate(ctx); err != nil {
		return true, nil, apierrors.NewBadRequest("admission webhook denied the request: " + err.Error())
	}
	rv, _ := strconv.ParseInt(old.ResourceVersion, 10, 64)
	svc.ResourceVersion = fmt.Sprint(rv + 1)
	svc.Generation = old.Generation
	if !equality.Semantic.DeepEqual(old.Spec, svc.Spec) {
		svc.Generation++
	}
	svc.Status = old.Status
	c.reconcile(svc)
	if err := c.cs.Tracker().Update(servicesGVR, svc, svc.Namespace); err != nil {
		return true, nil, err
	}
	return true, svc, nil
}

// reconcile is the part of Knative's controllers the Deployer can observe.
func (c *cluster) reconcile(svc *servingv1.Service) {
	tmpl := svc.Spec.Template.Name
	rev := &servingv1.Revision{ObjectMeta: metav1.ObjectMeta{
		Name: tmpl, Namespace: svc.Namespace,
		Labels: map[string]string{serving.ServiceLabelKey: svc.Name},
	}}
	revReady := corev1.ConditionUnknown
	if c.ready {
		revReady = corev1.ConditionTrue
	}
	rev.Status.Conditions = duckv1.Conditions{{Type: servingv1.RevisionConditionReady, Status: revReady}}
	if !c.ready {
		rev.Status.Conditions[0].Reason, rev.Status.Conditions[0].Message = "Deploying", "waiting for the deployment's pods"
	}
	if err := c.cs.Tracker().Create(revisionsGVR, rev, svc.Namespace); err != nil && !apierrors.IsAlreadyExists(err) {
		c.t.Errorf("create revision: %v", err)
	}
	svc.Status.ObservedGeneration = svc.Generation
	svc.Status.LatestCreatedRevisionName = tmpl
	if !c.ready {
		svc.Status.Conditions = duckv1.Conditions{{Type: servingv1.ServiceConditionReady, Status: corev1.ConditionUnknown,
			Reason: "RevisionMissing", Message: "Configuration is waiting for a Revision to become ready."}}
		return
	}
	svc.Status.LatestReadyRevisionName = tmpl
	if c.routeLag && svc.Generation == 1 {
		svc.Status.Conditions = duckv1.Conditions{{Type: servingv1.ServiceConditionReady, Status: corev1.ConditionUnknown,
			Reason: "IngressNotConfigured", Message: "Ingress has not yet been reconciled."}}
		return
	}
	svc.Status.Conditions = duckv1.Conditions{{Type: servingv1.ServiceConditionReady, Status: corev1.ConditionTrue}}
	svc.Status.URL, _ = apis.ParseURL(c.urlFor(""))
	svc.Status.Traffic = nil
	for _, t := range svc.Spec.Traffic {
		t := *t.DeepCopy()
		if t.Tag != "" {
			t.URL, _ = apis.ParseURL(c.urlFor(t.Tag))
		}
		svc.Status.Traffic = append(svc.Status.Traffic, t)
	}
}

// resync republishes the stored Service's status, as Knative's controllers
// do on their own when something they watch changes (urlFor, say).
func (c *cluster) resync(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	obj, err := c.cs.Tracker().Get(servicesGVR, DefaultNamespace, "fraud")
	if err != nil {
		t.Fatal(err)
	}
	svc := obj.(*servingv1.Service).DeepCopy()
	c.reconcile(svc)
	if err := c.cs.Tracker().Update(servicesGVR, svc, svc.Namespace); err != nil {
		t.Fatal(err)
	}
}

func (c *cluster) service(t *testing.T) *servingv1.Service {
	t.Helper()
	svc, err := c.cs.ServingV1().Services(DefaultNamespace).Get(context.Background(), "fraud", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get service: %v", err)
	}
	return svc
}

func (c *cluster) revisions(t *testing.T) []string {
	t.Helper()
	list, err := c.cs.ServingV1().Revisions(DefaultNamespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range list.Items {
		out = append(out, r.Name)
	}
	return out
}

package knative

import (
	"context"
	"log/slog"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	autoscalingv1alpha1 "knative.dev/serving/pkg/apis/autoscaling/v1alpha1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"knative.dev/serving/pkg/client/clientset/versioned/fake"

	"github.com/pilotlight/pilotlight/functions"
)

// The Prescaler writes min-scale on the Revision and its PodAutoscaler,
// and a release puts back function.yaml's own min-scale. (The live
// cluster test, hack/cluster/rollout_test.go, shows Knative's autoscaler
// acting on it.)
func TestPrescalerHoldsAndReleases(t *testing.T) {
	ready := int32(3)
	rev := func(name string) *servingv1.Revision {
		r := &servingv1.Revision{ObjectMeta: metav1.ObjectMeta{Namespace: "pilotlight", Name: name,
			Annotations: map[string]string{MinScaleAnnotation: "0"}}}
		r.Status.ActualReplicas = &ready
		return r
	}
	pa := func(name string) *autoscalingv1alpha1.PodAutoscaler {
		return &autoscalingv1alpha1.PodAutoscaler{ObjectMeta: metav1.ObjectMeta{Namespace: "pilotlight", Name: name,
			Annotations: map[string]string{MinScaleAnnotation: "0"}}}
	}
	cs := fake.NewSimpleClientset(rev("fraud-00001"), rev("fraud-00002"), pa("fraud-00001"), pa("fraud-00002"))
	fn := &functions.Manifest{Name: "fraud", Scaling: functions.Scaling{MinScale: 0},
		Revisions: []functions.Revision{{Name: "fraud-00001"}, {Name: "fraud-00002"}}}
	p := NewPrescaler(&Deployer{Client: cs.ServingV1(), Autoscaling: cs.AutoscalingV1alpha1()}, "pilotlight", []*functions.Manifest{fn}, slog.New(slog.DiscardHandler))
	ctx := context.Background()
	minScales := func(name string) (rev, pa, until string) {
		r, err := cs.ServingV1().Revisions("pilotlight").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		a, err := cs.AutoscalingV1alpha1().PodAutoscalers("pilotlight").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return r.Annotations[MinScaleAnnotation], a.Annotations[MinScaleAnnotation], r.Annotations[HeldUntilAnnotation]
	}

	if got := p.ReadyInstances("fraud", "fraud-00001"); got != 3 {
		t.Fatalf("ready instances %d, want the revision's actualReplicas 3", got)
	}
	if err := p.Hold("fraud", "fraud-00002", 3, time.Now().Add(300*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if r, a, until := minScales("fraud-00002"); r != "3" || a != "3" || until == "" {
		t.Fatalf("held: revision min-scale %q, PodAutoscaler %q, held until %q; want 3, 3 and a time", r, a, until)
	}
	if r, a, _ := minScales("fraud-00001"); r != "0" || a != "0" {
		t.Errorf("the other revision changed: %q %q", r, a)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, a, until := minScales("fraud-00002")
		if r == "0" && a == "0" && until == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not released after the hold: revision %q, PodAutoscaler %q, until %q", r, a, until)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A hold its router died with: recorded, expired, no timer here.
	other := NewPrescaler(p.Deployer, "pilotlight", []*functions.Manifest{fn}, slog.New(slog.DiscardHandler))
	if err := p.Deployer.SetMinScale(ctx, "pilotlight", "fraud-00001", 2, time.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	released, err := other.ReleaseExpired(ctx)
	if err != nil || len(released) != 1 || released[0] != "fraud-00001" {
		t.Fatalf("released %v (%v), want [fraud-00001]", released, err)
	}
	if r, a, until := minScales("fraud-00001"); r != "0" || a != "0" || until != "" {
		t.Errorf("after ReleaseExpired: %q %q %q", r, a, until)
	}
}

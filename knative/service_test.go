package knative

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pilotlight/pilotlight/flags"

	corev1 "k8s.io/api/core/v1"
	"knative.dev/pkg/apis"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/pilotlight/pilotlight/functions"
)

func loadManifest(t *testing.T, yaml string) *functions.Manifest {
	t.Helper()
	m, err := functions.Parse("testdata/function.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("parse manifest: %v", err)
	}
	return m
}

func fraudManifest(t *testing.T) *functions.Manifest {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "fraud.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return loadManifest(t, string(raw))
}

func fraudSplit(t *testing.T, m *functions.Manifest) flags.Split {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "flags.json"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := flags.SplitFromFlags(m, "testdata/flags.json", raw)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// validate runs what Knative's webhook runs on create: defaults, then validation.
func validate(t *testing.T, svc *servingv1.Service) {
	t.Helper()
	svc = svc.DeepCopy()
	ctx := apis.WithinCreate(context.Background())
	svc.SetDefaults(ctx)
	if err := svc.Validate(ctx); err != nil {
		t.Fatalf("Knative rejects the service: %v", err)
	}
}

func TestServiceFraudCanary(t *testing.T) {
	m := fraudManifest(t)
	svc, err := Service(m, Options{Traffic: fraudSplit(t, m)})
	if err != nil {
		t.Fatal(err)
	}
	validate(t, svc)

	tmpl := svc.Spec.Template
	if tmpl.Name != "fraud-00002" {
		t.Errorf("template name %q, want fraud-00002 (the newest revision)", tmpl.Name)
	}
	if svc.Namespace != DefaultNamespace {
		t.Errorf("namespace %q", svc.Namespace)
	}
	wantAnn := map[string]string{
		"autoscaling.knative.dev/class":                              "kpa.autoscaling.knative.dev",
		"autoscaling.knative.dev/target":                             "16",
		"autoscaling.knative.dev/min-scale":                          "0",
		"autoscaling.knative.dev/max-scale":                          "4",
		"autoscaling.knative.dev/scale-to-zero-pod-retention-period": "30s",
	}
	for k, v := range wantAnn {
		if got := tmpl.Annotations[k]; got != v {
			t.Errorf("annotation %s = %q, want %q", k, got, v)
		}
	}
	if _, ok := tmpl.Annotations["autoscaling.knative.dev/initial-scale"]; ok {
		t.Error("initial-scale written although function.yaml leaves it unset")
	}
	if *tmpl.Spec.ContainerConcurrency != 32 {
		t.Errorf("containerConcurrency %d", *tmpl.Spec.ContainerConcurrency)
	}
	c := tmpl.Spec.Containers[0]
	if got := strings.Join(append(c.Command, c.Args...), " "); got != "pilotlight-runtime --function /functions/fraud --revision fraud-00002" {
		t.Errorf("command and args %q", got)
	}
	if c.Ports[0].ContainerPort != 8080 || c.ReadinessProbe.HTTPGet.Path != "/v2/health/ready" {
		t.Errorf("port %d readiness %q", c.Ports[0].ContainerPort, c.ReadinessProbe.HTTPGet.Path)
	}
	sc := c.SecurityContext
	if !*sc.RunAsNonRoot || *sc.RunAsUser != 65532 || !*sc.ReadOnlyRootFilesystem || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities.Drop[0] != "ALL" || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("security context not hardened: %+v", sc)
	}
	if *tmpl.Spec.AutomountServiceAccountToken {
		t.Error("service account token mounted")
	}
	if _, ok := c.Resources.Limits[GPUResource]; ok {
		t.Error("GPU asked for by a provider: auto function")
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources missing: %+v", c.Resources)
	}

	want := []struct {
		rev, tag string
		pct      int64
	}{{"fraud-00001", "stable", 90}, {"fraud-00002", "canary", 10}}
	if len(svc.Spec.Traffic) != len(want) {
		t.Fatalf("traffic %+v", svc.Spec.Traffic)
	}
	for i, w := range want {
		tt := svc.Spec.Traffic[i]
		if tt.RevisionName != w.rev || tt.Tag != w.tag || *tt.Percent != w.pct || *tt.LatestRevision {
			t.Errorf("traffic[%d] = %s/%s/%d latest=%v, want %s/%s/%d latest=false", i, tt.RevisionName, tt.Tag, *tt.Percent, *tt.LatestRevision, w.rev, w.tag, w.pct)
		}
	}
}

func TestServiceOlderRevisionAndGPU(t *testing.T) {
	m := fraudManifest(t)
	m.Runtime.Provider = "cuda"
	m.Scaling.InitialScale = 1
	svc, err := Service(m, Options{Revision: "fraud-00001", Image: "registry.example/pilotlight@sha256:" + strings.Repeat("a", 64), Namespace: "ml"})
	if err != nil {
		t.Fatal(err)
	}
	validate(t, svc)
	if len(svc.Spec.Traffic) != 1 || svc.Spec.Traffic[0].RevisionName != "fraud-00001" || *svc.Spec.Traffic[0].Percent != 100 {
		t.Errorf("traffic %+v: want only fraud-00001 at 100%%", svc.Spec.Traffic)
	}
	c := svc.Spec.Template.Spec.Containers[0]
	if q := c.Resources.Limits[GPUResource]; q.Value() != 1 {
		t.Errorf("nvidia.com/gpu limit %v, want 1", q.String())
	}
	if svc.Spec.Template.Annotations["autoscaling.knative.dev/initial-scale"] != "1" {
		t.Error("initial-scale not written")
	}
}

func TestServiceErrors(t *testing.T) {
	m := fraudManifest(t)
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"unknown revision", Options{Revision: "fraud-00009"}, `no revision "fraud-00009"`},
		{"traffic to a future revision", Options{Revision: "fraud-00001", Traffic: flags.Split{"fraud-00001": 50, "fraud-00002": 50}}, `not among the revisions up to fraud-00001`},
		{"split not 100", Options{Traffic: flags.Split{"fraud-00001": 50}}, "sum to 50"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Service(m, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

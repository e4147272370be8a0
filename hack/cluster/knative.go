package cluster

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"
)

func b64(b []byte) string                { return base64.StdEncoding.EncodeToString(b) }
func mustQty(s string) resource.Quantity { return resource.MustParse(s) }

// KnativeNamespace is where Knative's own components live.
const KnativeNamespace = "knative-serving"

// QueueProxyImage is what config-deployment names for queue-proxy: Knative
// resolves tags to digests through the registry, and here there is none, so
// it must already be a digest. No queue-proxy runs (kwok plays the kubelet).
const QueueProxyImage = "gcr.io/knative-releases/knative.dev/serving/cmd/queue@sha256:" +
	"0000000000000000000000000000000000000000000000000000000000000000"

// installKnative applies Knative's CRDs and config maps from the serving,
// networking and caching modules' config/ folders, then starts Knative
// serving's controller and autoscaler.
func (p *Plane) installKnative(ctx context.Context) error {
	var files []string
	serving := filepath.Join(p.cfg.ServingDir, "config", "core")
	files = append(files, filepath.Join(serving, "100-namespace.yaml"))
	for _, g := range []string{
		filepath.Join(serving, "300-resources", "*.yaml"),
		filepath.Join(p.cfg.NetworkingDir, "config", "*.yaml"),
		filepath.Join(p.cfg.CachingDir, "config", "image.yaml"),
		filepath.Join(serving, "configmaps", "*.yaml"),
	} {
		m, err := filepath.Glob(g)
		if err != nil || len(m) == 0 {
			return fmt.Errorf("knative config: nothing matches %s (%v)", g, err)
		}
		files = append(files, m...)
	}
	if err := p.ApplyFiles(ctx, files...); err != nil {
		return err
	}
	// What this machine needs of Knative's settings: a queue-proxy digest,
	// no registry lookups for the function image, and the stand-in's
	// ingress class.
	for name, data := range map[string]map[string]string{
		"config-deployment": {"queue-sidecar-image": QueueProxyImage, "registries-skipping-tag-resolving": "ghcr.io,kind.local,ko.local,dev.local,registry.example"},
		"config-network":    {"ingress-class": IngressClass},
	} {
		patch, _ := json.Marshal(map[string]any{"data": data})
		if _, err := p.Kube.CoreV1().ConfigMaps(KnativeNamespace).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("configure knative %s: %w", name, err)
		}
	}

	kc, err := p.writeKubeconfig("knative", p.tokenFor("knative"))
	if err != nil {
		return err
	}
	common := []string{
		"SYSTEM_NAMESPACE=" + KnativeNamespace, "KUBECONFIG=" + kc,
		"CONFIG_LOGGING_NAME=config-logging", "CONFIG_OBSERVABILITY_NAME=config-observability",
		"KUBERNETES_MIN_VERSION=v1.28.0",
	}
	// The stock controller binds :8080 for health probes, as the
	// autoscaler's stats server does: hack/cluster/knative's controller
	// main turns probes off. Metrics and profiling ports move apart.
	if err := p.run("knative-controller", p.bin("knative-controller", p.cfg.KnativeVer), []string{"--kubeconfig=" + kc},
		append(slices.Clone(common), "POD_NAME=controller-0", "METRICS_DOMAIN=knative.dev/internal/serving",
			"METRICS_PROMETHEUS_PORT=9091", "PROFILING_PORT=8009")); err != nil {
		return err
	}
	if err := p.run("knative-autoscaler", p.bin("knative-autoscaler", p.cfg.KnativeVer), []string{"--kubeconfig=" + kc},
		append(slices.Clone(common), "POD_NAME=autoscaler-0", "POD_IP="+AutoscalerIP, "METRICS_DOMAIN=knative.dev/serving",
			"METRICS_PROMETHEUS_PORT=9092", "PROFILING_PORT=8010")); err != nil {
		return err
	}
	// Running means holding the leases of their reconcilers.
	return p.waitFor(ctx, "knative's controller and autoscaler to take their leader leases", 3*time.Minute, func(ctx context.Context) (bool, error) {
		leases, err := p.Kube.CoordinationV1().Leases(KnativeNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		var ctl, as bool
		for _, l := range leases.Items {
			ctl = ctl || strings.HasPrefix(l.Name, "controller.knative.dev.serving.pkg.reconciler.service")
			as = as || strings.HasPrefix(l.Name, "autoscaler")
		}
		return ctl && as, nil
	})
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// ApplyFiles server-side-applies every Kubernetes object in the YAML files,
// CRDs first (waiting for them to be established), as the cluster admin.
func (p *Plane) ApplyFiles(ctx context.Context, files ...string) error {
	objs, err := readObjects(files...)
	if err != nil {
		return err
	}
	return p.Apply(ctx, p.Dynamic, objs...)
}

// readObjects reads every Kubernetes object in the YAML files.
func readObjects(files ...string) ([]*unstructured.Unstructured, error) {
	var objs []*unstructured.Unstructured
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for _, doc := range docSep.Split(string(raw), -1) {
			var m map[string]any
			if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			if m == nil || m["kind"] == nil {
				continue
			}
			objs = append(objs, &unstructured.Unstructured{Object: m})
		}
	}
	return objs, nil
}

// Apply server-side-applies objects with client dc (a namespace and CRDs
// first).
func (p *Plane) Apply(ctx context.Context, dc dynamic.Interface, objs ...*unstructured.Unstructured) error {
	rank := func(o *unstructured.Unstructured) int {
		switch o.GetKind() {
		case "Namespace":
			return 0
		case "CustomResourceDefinition":
			return 1
		}
		return 2
	}
	slices.SortStableFunc(objs, func(a, b *unstructured.Unstructured) int { return rank(a) - rank(b) })
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(p.Kube.Discovery()))
	var crds []string
	for i, o := range objs {
		if i > 0 && rank(objs[i-1]) == 1 && rank(o) == 2 {
			if err := p.waitCRDs(ctx, crds); err != nil {
				return err
			}
			mapper.Reset()
		}
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("apply %s %s: %w", gvk, o.GetName(), err)
		}
		var ri dynamic.ResourceInterface = dc.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ns := o.GetNamespace()
			if ns == "" {
				ns = "default"
			}
			ri = dc.Resource(m.Resource).Namespace(ns)
		}
		body, err := json.Marshal(o.Object)
		if err != nil {
			return err
		}
		force := true
		if _, err := ri.Patch(ctx, o.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: "cluster-test", Force: &force}); err != nil {
			return fmt.Errorf("apply %s %s/%s: %w", gvk.Kind, o.GetNamespace(), o.GetName(), err)
		}
		if o.GetKind() == "CustomResourceDefinition" {
			crds = append(crds, o.GetName())
		}
	}
	return nil
}

func (p *Plane) waitCRDs(ctx context.Context, names []string) error {
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	return p.waitFor(ctx, fmt.Sprintf("%d CRDs to be established", len(names)), time.Minute, func(ctx context.Context) (bool, error) {
		for _, n := range names {
			crd, err := p.Dynamic.Resource(crdGVR).Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			est := false
			for _, c := range conds {
				cm, _ := c.(map[string]any)
				est = est || (cm["type"] == "Established" && cm["status"] == "True")
			}
			if !est {
				return false, nil
			}
		}
		return true, nil
	})
}

// IngressClass is the KIngress class config-network names; the stand-in
// marks every KIngress regardless.
const IngressClass = "kourier.ingress.networking.knative.dev"

var ingressGVR = schema.GroupVersionResource{Group: "networking.internal.knative.dev", Version: "v1alpha1", Resource: "ingresses"}

// MarkIngressesReady is the STAND-IN for Knative's networking layer
// (net-kourier and its Envoy gateways, which cannot run here): every
// KIngress whose generation it has not yet marked gets status Ready with the
// load balancer addresses net-kourier publishes. It programs nothing; no
// request flows through an ingress in these tests.
func MarkIngressesReady(ctx context.Context, dc dynamic.Interface, log *slog.Logger) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		list, err := dc.Resource(ingressGVR).List(ctx, metav1.ListOptions{})
		if err == nil {
			for i := range list.Items {
				markIngress(ctx, dc, &list.Items[i], log)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func markIngress(ctx context.Context, dc dynamic.Interface, ing *unstructured.Unstructured, log *slog.Logger) {
	observed, _, _ := unstructured.NestedInt64(ing.Object, "status", "observedGeneration")
	if observed == ing.GetGeneration() {
		return
	}
	now := metav1.Now().UTC().Format(time.RFC3339)
	cond := func(t string) map[string]any {
		return map[string]any{"type": t, "status": "True", "lastTransitionTime": now}
	}
	lb := func(host string) map[string]any {
		return map[string]any{"ingress": []any{map[string]any{"domainInternal": host}}}
	}
	st := map[string]any{
		"observedGeneration":  ing.GetGeneration(),
		"conditions":          []any{cond("LoadBalancerReady"), cond("NetworkConfigured"), cond("Ready")},
		"publicLoadBalancer":  lb("kourier.kourier-system.svc.cluster.local"),
		"privateLoadBalancer": lb("kourier-internal.kourier-system.svc.cluster.local"),
	}
	next := ing.DeepCopy()
	next.Object["status"] = st
	if _, err := dc.Resource(ingressGVR).Namespace(ing.GetNamespace()).UpdateStatus(ctx, next, metav1.UpdateOptions{}); err != nil {
		if !apierrors.IsConflict(err) && ctx.Err() == nil {
			log.Warn("kingress stand-in: mark ready", "ingress", ing.GetNamespace()+"/"+ing.GetName(), "err", err)
		}
		return
	}
	log.Info("kingress stand-in: marked Ready", "ingress", ing.GetNamespace()+"/"+ing.GetName(), "generation", ing.GetGeneration())
}

// jsonEqual compares two JSON-able values.
func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

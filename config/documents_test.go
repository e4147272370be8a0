package config

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/yaml"
)

// document is one YAML document of a file below config/.
type document struct {
	file  string // relative to config/
	index int    // position in the file
	raw   []byte
	kind  string // "apiVersion/Kind"
	obj   any    // the typed object, strictly decoded
}

func (d document) String() string { return fmt.Sprintf("%s#%d (%s)", d.file, d.index, d.kind) }

// ownDirs are the folders whose every document must be a known object;
// elsewhere in config/ a document without apiVersion/kind is some other
// file format (platform config) and is left to its own tests.
var ownDirs = []string{"knative", "security", "monitoring", "router"}

// nonKubernetes are files in ownDirs that are not Kubernetes objects.
var nonKubernetes = map[string]bool{"security/falco-rules.yaml": true, "monitoring/alerts.test.yaml": true, "monitoring/prometheus-local.yml": true}

// kinds maps apiVersion/Kind to a typed object. Types come from k8s.io/api and
// Knative where the module graph has them; the Prometheus Operator's are the
// local minimal structs in monitoring_test.go (its module is not a dependency).
var kinds = map[string]func() any{
	"v1/Namespace":                             func() any { return &corev1.Namespace{} },
	"v1/ServiceAccount":                        func() any { return &corev1.ServiceAccount{} },
	"v1/ConfigMap":                             func() any { return &corev1.ConfigMap{} },
	"rbac.authorization.k8s.io/v1/Role":        func() any { return &rbacv1.Role{} },
	"rbac.authorization.k8s.io/v1/RoleBinding": func() any { return &rbacv1.RoleBinding{} },
	"networking.k8s.io/v1/NetworkPolicy":       func() any { return &networkingv1.NetworkPolicy{} },
	"apps/v1/DaemonSet":                        func() any { return &appsv1.DaemonSet{} },
	"apps/v1/Deployment":                       func() any { return &appsv1.Deployment{} },
	"v1/Service":                               func() any { return &corev1.Service{} },
	"policy/v1/PodDisruptionBudget":            func() any { return &policyv1.PodDisruptionBudget{} },
	"serving.knative.dev/v1/Service":           func() any { return &servingv1.Service{} },
	"monitoring.coreos.com/v1/ServiceMonitor":  func() any { return &serviceMonitor{} },
	"monitoring.coreos.com/v1/PodMonitor":      func() any { return &podMonitor{} },
	"monitoring.coreos.com/v1/PrometheusRule":  func() any { return &prometheusRule{} },
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// loadDocuments reads and strictly decodes every YAML document below config/.
func loadDocuments(t *testing.T) []document {
	t.Helper()
	var docs []document
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if ext := filepath.Ext(path); ext != ".yaml" && ext != ".yml" {
			return nil
		}
		path = filepath.ToSlash(path)
		if nonKubernetes[path] {
			return nil
		}
		own := false
		for _, dir := range ownDirs {
			own = own || strings.HasPrefix(path, dir+"/")
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, part := range docSeparator.Split(string(raw), -1) {
			if len(bytes.TrimSpace(stripComments([]byte(part)))) == 0 {
				continue
			}
			doc := document{file: path, index: i, raw: []byte(part)}
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc.raw, &tm); err != nil {
				t.Errorf("%s#%d: not YAML: %v", path, i, err)
				continue
			}
			if tm.APIVersion == "" || tm.Kind == "" {
				if own {
					t.Errorf("%s#%d: no apiVersion/kind", path, i)
				}
				continue
			}
			doc.kind = tm.APIVersion + "/" + tm.Kind
			newObj, ok := kinds[doc.kind]
			if !ok {
				t.Errorf("%s: no typed decoder for %s; add it to kinds (cluster-wide kinds are not allowed)", doc, doc.kind)
				continue
			}
			doc.obj = newObj()
			if err := yaml.UnmarshalStrict(doc.raw, doc.obj); err != nil {
				t.Errorf("%s: strict decode: %v", doc, err)
				continue
			}
			docs = append(docs, doc)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return docs
}

func stripComments(b []byte) []byte {
	var out [][]byte
	for _, line := range bytes.Split(b, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(out, line)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func objectsOf[T any](docs []document) []T {
	var out []T
	for _, d := range docs {
		if o, ok := d.obj.(T); ok {
			out = append(out, o)
		}
	}
	return out
}

func TestEveryDocumentDecodesStrictly(t *testing.T) {
	docs := loadDocuments(t)
	seen := map[string]int{}
	for _, d := range docs {
		seen[d.kind]++
	}
	// The folders must hold what the platform needs, not just parse.
	for _, kind := range []string{"serving.knative.dev/v1/Service", "networking.k8s.io/v1/NetworkPolicy",
		"rbac.authorization.k8s.io/v1/Role", "apps/v1/DaemonSet", "apps/v1/Deployment", "v1/Service",
		"policy/v1/PodDisruptionBudget", "monitoring.coreos.com/v1/ServiceMonitor",
		"monitoring.coreos.com/v1/PrometheusRule"} {
		if seen[kind] == 0 {
			t.Errorf("no %s below config/", kind)
		}
	}
	t.Logf("decoded %d documents: %v", len(docs), seen)
}

// TestStrictDecodingCatchesTypos proves the decoder above is strict: a
// misspelt field must fail, not vanish.
func TestStrictDecodingCatchesTypos(t *testing.T) {
	tests := []struct {
		name, doc string
		obj       any
	}{
		{"network policy", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec:\n  podSelector: {}\n  polcyTypes: [Ingress]\n", &networkingv1.NetworkPolicy{}},
		{"knative service", "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      containerConcurency: 1\n", &servingv1.Service{}},
		{"prometheus rule", "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {name: x}\nspec:\n  groups:\n  - name: g\n    rules:\n    - alert: A\n      expr: up\n      fro: 5m\n", &prometheusRule{}},
		{"duplicate key", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x, name: y}\n", &corev1.ServiceAccount{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := yaml.UnmarshalStrict([]byte(tc.doc), tc.obj); err == nil {
				t.Fatal("strict decoding accepted a document with an unknown or duplicate field")
			}
		})
	}
}

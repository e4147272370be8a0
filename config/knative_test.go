package config

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"knative.dev/pkg/apis"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/yaml"

	_ "github.com/pilotlight/pilotlight/functions/all"
	"github.com/pilotlight/pilotlight/knative"
)

var update = flag.Bool("update", false, "rewrite config/knative from function.yaml and flags.json")

var sources = knative.Sources{FunctionsDir: "../functions", FlagsFile: "flags/flags.json"}

// TestKnativeManifestsUpToDate regenerates config/knative in memory and
// fails when a committed file differs, is missing or has no function.
func TestKnativeManifestsUpToDate(t *testing.T) {
	want, err := knative.Generate(sources, knative.Options{}, "")
	if err != nil {
		t.Fatalf("generate: %v", err)
	}
	if _, ok := want["fraud.yaml"]; !ok {
		t.Errorf("no Service generated for fraud (generated: %v)", slices.Sorted(maps.Keys(want)))
	}
	if *update {
		for name, raw := range want {
			if err := os.WriteFile(filepath.Join("knative", name), raw, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	have, _ := filepath.Glob(filepath.Join("knative", "*.yaml"))
	for _, path := range have {
		if _, ok := want[filepath.Base(path)]; !ok {
			t.Errorf("%s has no function.yaml behind it: delete it", path)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(want)) {
		got, err := os.ReadFile(filepath.Join("knative", name))
		if err != nil {
			t.Errorf("config/knative/%s missing: run `make manifests` (or go test ./config -update)", name)
			continue
		}
		if string(got) != string(want[name]) {
			t.Errorf("config/knative/%s drifted from function.yaml/flags.json: run `make manifests` (or go test ./config -update)\n%s",
				name, firstDifference(string(got), string(want[name])))
		}
	}
}

func firstDifference(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < max(len(g), len(w)); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return "line " + strconv.Itoa(i+1) + ":\n  committed: " + gl + "\n  generated: " + wl
		}
	}
	return ""
}

// TestKnativeServicesPassWebhook runs what Knative's admission webhook runs:
// SetDefaults, then Validate, in a create context.
func TestKnativeServicesPassWebhook(t *testing.T) {
	svcs := objectsOf[*servingv1.Service](loadDocuments(t))
	if len(svcs) == 0 {
		t.Fatal("no Knative Services in config/")
	}
	for _, svc := range svcs {
		t.Run(svc.Name, func(t *testing.T) {
			s := svc.DeepCopy()
			ctx := apis.WithinCreate(context.Background())
			s.SetDefaults(ctx)
			if err := s.Validate(ctx); err != nil {
				t.Fatalf("Knative's webhook would refuse %s: %v", svc.Name, err)
			}
			// And as the update it is on a cluster that holds the previous
			// revision (what `pilotlight deploy` sends after creating it).
			m, err := sources.Function(svc.Name)
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Revisions) < 2 {
				return
			}
			prev, err := knative.Service(m, knative.Options{Namespace: svc.Namespace, Revision: m.Revisions[len(m.Revisions)-2].Name})
			if err != nil {
				t.Fatal(err)
			}
			prev.SetDefaults(apis.WithinCreate(context.Background()))
			ctx = apis.WithinUpdate(context.Background(), prev)
			next := svc.DeepCopy()
			next.SetDefaults(ctx)
			if err := next.Validate(ctx); err != nil {
				t.Fatalf("Knative's webhook would refuse %s as an update from %s: %v", svc.Name, prev.Spec.Template.Name, err)
			}
		})
	}
}

// knativeSchema is the Service CRD's v1 schema from the knative.dev/serving
// module this repository builds against (config/core/300-resources/service.yaml).
type knativeSchema struct {
	structural *structuralschema.Structural
	validator  validation.SchemaValidator
	file       string
}

var (
	schemaOnce sync.Once
	schemaVal  *knativeSchema
	schemaErr  error
)

func loadKnativeSchema(t *testing.T) *knativeSchema {
	t.Helper()
	schemaOnce.Do(func() { schemaVal, schemaErr = readKnativeSchema() })
	if schemaErr != nil {
		t.Fatal(schemaErr)
	}
	return schemaVal
}

func readKnativeSchema() (*knativeSchema, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "knative.dev/serving").Output()
	if err != nil {
		return nil, fmt.Errorf("find the knative.dev/serving module: go list -m: %v", err)
	}
	file := filepath.Join(strings.TrimSpace(string(out)), "config", "core", "300-resources", "service.yaml")
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read Knative's Service CRD: %v", err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(raw, &crd); err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	var v1 *apiextensionsv1.CustomResourceValidation
	for _, v := range crd.Spec.Versions {
		if v.Name == "v1" {
			v1 = v.Schema
		}
	}
	if v1 == nil || v1.OpenAPIV3Schema == nil {
		return nil, fmt.Errorf("%s: no v1 openAPIV3Schema", file)
	}
	var internal apiextensions.JSONSchemaProps
	if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(v1.OpenAPIV3Schema, &internal, nil); err != nil {
		return nil, fmt.Errorf("%s: convert schema: %v", file, err)
	}
	structural, err := structuralschema.NewStructural(&internal)
	if err != nil {
		return nil, fmt.Errorf("%s: structural schema: %v", file, err)
	}
	if errs := structuralschema.ValidateStructural(nil, structural); len(errs) > 0 {
		return nil, fmt.Errorf("%s: schema is not structural: %v", file, errs.ToAggregate())
	}
	validator, _, err := validation.NewSchemaValidator(&internal)
	if err != nil {
		return nil, fmt.Errorf("%s: schema validator: %v", file, err)
	}
	return &knativeSchema{structural: structural, validator: validator, file: file}, nil
}

// check validates one object (JSON-decoded, as the API server holds it) the
// way the API server does for a custom resource: the OpenAPI schema, then
// pruning, where every field the schema does not know is reported (what
// kubectl's --validate=strict turns into an error).
func (s *knativeSchema) check(obj map[string]any) []string {
	var problems []string
	for _, e := range validation.ValidateCustomResource(nil, obj, s.validator) {
		problems = append(problems, e.Error())
	}
	opts := structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true}
	for _, p := range pruning.PruneWithOptions(obj, s.structural, true, opts) {
		problems = append(problems, "unknown field "+p)
	}
	return problems
}

func jsonObject(t *testing.T, doc []byte) map[string]any {
	t.Helper()
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	// k8s.io/apimachinery's json keeps integers as int64, as the API server does.
	if err := utiljson.Unmarshal(j, &obj); err != nil {
		t.Fatal(err)
	}
	return obj
}

func TestKnativeServicesMatchCRDSchema(t *testing.T) {
	schema := loadKnativeSchema(t)
	t.Logf("schema: %s", schema.file)
	n := 0
	for _, d := range loadDocuments(t) {
		if _, ok := d.obj.(*servingv1.Service); !ok {
			continue
		}
		n++
		if problems := schema.check(jsonObject(t, d.raw)); len(problems) > 0 {
			t.Errorf("%s does not match Knative's Service CRD:\n  %s", d, strings.Join(problems, "\n  "))
		}
	}
	if n == 0 {
		t.Fatal("no Knative Services checked")
	}
}

// TestCRDSchemaCheckCatchesMistakes proves the schema check is not vacuous.
func TestCRDSchemaCheckCatchesMistakes(t *testing.T) {
	schema := loadKnativeSchema(t)
	raw, err := os.ReadFile(filepath.Join("knative", "fraud.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		mutate func(obj map[string]any)
		want   string
	}{
		{"unknown container field", func(obj map[string]any) {
			container(obj)["gpus"] = int64(1)
		}, "unknown field spec.template.spec.containers[0].gpus"},
		{"wrong type", func(obj map[string]any) {
			tmplSpec(obj)["containerConcurrency"] = "lots"
		}, "containerConcurrency"},
		{"unknown traffic field", func(obj map[string]any) {
			obj["spec"].(map[string]any)["traffic"].([]any)[0].(map[string]any)["weight"] = int64(90)
		}, "unknown field spec.traffic[0].weight"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			obj := jsonObject(t, raw)
			tc.mutate(obj)
			problems := strings.Join(schema.check(obj), "\n")
			if !strings.Contains(problems, tc.want) {
				t.Fatalf("problems %q do not mention %q", problems, tc.want)
			}
		})
	}
}

func tmplSpec(obj map[string]any) map[string]any {
	return obj["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
}

func container(obj map[string]any) map[string]any {
	return tmplSpec(obj)["containers"].([]any)[0].(map[string]any)
}

package flags

import (
	"os"
	"strings"
	"testing"

	"github.com/pilotlight/pilotlight/functions"
)

func fraudManifest(t *testing.T) *functions.Manifest {
	t.Helper()
	raw, err := os.ReadFile("testdata/fraud.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := functions.Parse("testdata/function.yaml", raw)
	if err != nil {
		t.Fatalf("parse manifest: %v", err)
	}
	return m
}

func TestSplitFromFlags(t *testing.T) {
	m := fraudManifest(t)
	flag := func(targeting string) string {
		return `{"flags":{"fraud-revision":{"state":"ENABLED","variants":{"stable":"fraud-00001","canary":"fraud-00002"},"defaultVariant":"stable"` + targeting + `}},
		"$evaluators":{"half":{"fractional":[{"var":"user"},["stable"],["canary"]]}}}`
	}
	tests := []struct {
		name  string
		flags string
		want  Split
		err   string
	}{
		{"fractional after a targeting rule", flag(`,"targeting":{"if":[{"ends_with":[{"var":"email"},"@x"]},"canary",{"fractional":[["stable",90],["canary",10]]}]}`), Split{"fraud-00001": 90, "fraud-00002": 10}, ""},
		{"static flag", flag(``), Split{"fraud-00001": 100}, ""},
		{"if without else is the default", flag(`,"targeting":{"if":[{"ends_with":[{"var":"email"},"@x"]},"canary"]}`), Split{"fraud-00001": 100}, ""},
		{"else names a variant", flag(`,"targeting":{"if":[{"ends_with":[{"var":"email"},"@x"]},"stable","canary"]}`), Split{"fraud-00002": 100}, ""},
		{"uneven weights round to 100", flag(`,"targeting":{"fractional":[["stable",1],["canary",2]]}`), Split{"fraud-00001": 33, "fraud-00002": 67}, ""},
		{"$ref and default weights", flag(`,"targeting":{"$ref":"half"}`), Split{"fraud-00001": 50, "fraud-00002": 50}, ""},
		{"disabled flag", strings.Replace(flag(`,"targeting":{"fractional":[["canary",1]]}`), "ENABLED", "DISABLED", 1), Split{"fraud-00001": 100}, ""},
		// The one rule (ServingRevision), as the local router applies it:
		// no flag, a disabled flag or no usable variant is the manifest's
		// DefaultRevision (tagged stable), not the newest revision.
		{"no flag for the function", `{"flags":{}}`, Split{"fraud-00001": 100}, ""},
		{"variant names a missing revision: the default variant", strings.Replace(flag(`,"targeting":{"fractional":[["stable",50],["canary",50]]}`), `"fraud-00002"`, `"fraud-00009"`, 1), Split{"fraud-00001": 100}, ""},
		{"unknown variant in fractional: an ERROR, so DefaultRevision", flag(`,"targeting":{"fractional":[["stable",50],["beta",50]]}`), Split{"fraud-00001": 100}, ""},
		{"zero weights: null, the default variant", strings.Replace(flag(`,"targeting":{"fractional":[["stable",0],["canary",0]]}`), `"defaultVariant":"stable"`, `"defaultVariant":"canary"`, 1), Split{"fraud-00002": 100}, ""},
		{"negative weight counts 0", flag(`,"targeting":{"fractional":[["stable",-5],["canary",5]]}`), Split{"fraud-00001": 0, "fraud-00002": 100}, ""},
		{"missing $ref: PARSE_ERROR, so DefaultRevision", strings.Replace(flag(`,"targeting":{"$ref":"nope"}`), `"defaultVariant":"stable"`, `"defaultVariant":"canary"`, 1), Split{"fraud-00001": 100}, ""},
		{"not JSON", `{`, nil, "malformed JSON"},
		{"empty targeting (a static flag as the rollout controller writes it)", flag(`,"targeting":{}`), Split{"fraud-00001": 100}, ""},
		{"null defaultVariant with a fractional", strings.Replace(flag(`,"targeting":{"fractional":[["stable",100],["canary",0]]}`), `"defaultVariant":"stable"`, `"defaultVariant":null`, 1), Split{"fraud-00001": 100, "fraud-00002": 0}, ""},
		{"null defaultVariant and nothing else: DefaultRevision", strings.Replace(strings.Replace(flag(``), `"defaultVariant":"stable"`, `"defaultVariant":null`, 1), `"stable":"fraud-00001","canary":"fraud-00002"`, `"canary":"fraud-00002"`, 1), Split{"fraud-00001": 100}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SplitFromFlags(m, "flags.json", []byte(tc.flags))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.err)
				}
				if !strings.HasPrefix(err.Error(), "flags.json") {
					t.Errorf("error %q does not name the file", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("split %v, want %v", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Fatalf("split %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestSplitRestrict(t *testing.T) {
	s := Split{"a-1": 60, "a-2": 30, "a-3": 10}
	tests := []struct {
		available []string
		want      Split
	}{
		{[]string{"a-1"}, Split{"a-1": 100}},
		{[]string{"a-1", "a-2"}, Split{"a-1": 67, "a-2": 33}},
		{[]string{"a-1", "a-2", "a-3"}, s},
		{[]string{"a-9"}, Split{"a-9": 100}},
	}
	for _, tc := range tests {
		got := s.Restrict(tc.available, tc.available[len(tc.available)-1])
		if err := got.Check(); err != nil {
			t.Errorf("Restrict(%v): %v", tc.available, err)
		}
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("Restrict(%v) = %v, want %v", tc.available, got, tc.want)
			}
		}
	}
}

package flags

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestInputs(t *testing.T) {
	for _, tc := range []struct {
		rule string
		want []string // nil with ok false: not provable
		ok   bool
	}{
		{`{"var": "email"}`, []string{"email"}, true},
		{`{"ends_with": [{"var": "email"}, "@pilotlight.dev"]}`, []string{"email"}, true},
		{`{"fractional": [["a", 1], ["b", 1]]}`, []string{"targetingKey"}, true},
		{`{"fractional": [{"var": "email"}, ["a", 1], ["b", 1]]}`, []string{"email", "targetingKey"}, true},
		// every part of a path: the engine looks "x" up at the top when email is a string
		{`{"==": [{"var": "email.x"}, "1"]}`, []string{"email", "x"}, true},
		{`{"==": [{"var": "headers.x-beta"}, "yes"]}`, []string{"headers", "x-beta"}, true},
		{`{"var": ["region", {"var": "fallback"}]}`, []string{"fallback", "region"}, true},
		{`{"if": [{"sem_ver": [{"var": "version"}, ">=", "1.2.0"]}, "a", null]}`, []string{"version"}, true},
		{`{"cat": [{"var": "$flagd.flagKey"}, "x"]}`, nil, true},
		{`{"map": [{"var": "list"}, {"var": "n"}]}`, []string{"list", "n"}, true},
		{`{"a": {"var": "x"}, "b": 1}`, []string{"x"}, true}, // returned as is; walking it only adds
		{`"a"`, nil, true},
		{`{"var": "$flagd.timestamp"}`, nil, false},
		{`{">": [{"var": "$flagd.timestamp"}, 0]}`, nil, false},
		{`{"var": "$flagd"}`, nil, false},
		{`{"var": "$flagd.flagKey.timestamp"}`, nil, false}, // flagKey is a string: the engine then reads $flagd.timestamp
		{`{"var": "email.$flagd"}`, nil, false},
		{`{"var": ""}`, nil, false},
		{`{"var": []}`, nil, false},
		{`{"var": ".email"}`, nil, false},
		{`{"var": "email..x"}`, nil, false},
		{`{"var": 0}`, nil, false},
		{`{"var": {"cat": ["em", "ail"]}}`, nil, false},
		{`{"var": [{"cat": ["em", "ail"]}]}`, nil, false},
		{`{"missing": ["email"]}`, nil, false},
		{`{"missing_some": [1, ["email"]]}`, nil, false},
		{`{"set": [{}, "a", 1]}`, nil, false},
		{`{"if": [{"var": "email"}, {"var": "$flagd.timestamp"}, null]}`, nil, false},
	} {
		var rule any
		if err := json.Unmarshal([]byte(tc.rule), &rule); err != nil {
			t.Fatalf("%s: %v", tc.rule, err)
		}
		got, ok := ruleInputs(rule)
		if ok != tc.ok || (ok && !slices.Equal(got, tc.want)) {
			t.Errorf("%s: got %v, %v; want %v, %v", tc.rule, got, ok, tc.want, tc.ok)
		}
	}

	// Through a Set: context-free flags need nothing; a timestamp rule
	// behind a $ref is still seen.
	s := mustParse(t, `{"flags": {
	  "static": {"state": "ENABLED", "variants": {"a": "x"}, "defaultVariant": "a"},
	  "off": {"state": "DISABLED", "variants": {"a": "x"}, "defaultVariant": "a", "targeting": {"$ref": "clock"}},
	  "clock": {"state": "ENABLED", "variants": {"a": "x"}, "defaultVariant": "a", "targeting": {"if": [{"$ref": "clock"}, "a", null]}},
	  "staff": {"state": "ENABLED", "variants": {"a": "x"}, "defaultVariant": "a", "targeting": {"if": [{"$ref": "staff"}, "a", null]}}
	}, "$evaluators": {"clock": {">": [{"var": "$flagd.timestamp"}, 0]}, "staff": {"ends_with": [{"var": "email"}, "@x"]}}}`)
	for key, want := range map[string]struct {
		names []string
		ok    bool
	}{"static": {nil, true}, "off": {nil, true}, "missing": {nil, true}, "clock": {nil, false}, "staff": {[]string{"email"}, true}} {
		if names, ok := s.Inputs(key); ok != want.ok || !slices.Equal(names, want.names) {
			t.Errorf("Inputs(%s) = %v, %v; want %v, %v", key, names, ok, want.names, want.ok)
		}
	}
}

// inputsProbe are rules written to catch an Inputs that leaves out what
// the engine reads: nested paths through primitives, scopes of map and
// filter, var defaults, fractional on the targeting key.
const inputsProbe = `{"flags": {
  "through-primitive": {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a",
    "targeting": {"if": [{"==": [{"var": "email.region"}, "eu"]}, "b", null]}},
  "default-rule": {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a",
    "targeting": {"if": [{"==": [{"var": ["nothing", {"var": "region"}]}, "eu"]}, "b", "a"]}},
  "scoped": {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a",
    "targeting": {"if": [{"some": [{"var": "list"}, {"==": [{"var": "n"}, 1]}]}, "b", "a"]}},
  "mapped": {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a",
    "targeting": {"if": [{"in": [2, {"map": [{"var": "list"}, {"+": [{"var": "n"}, 1]}]}]}, "b", "a"]}},
  "split": {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a",
    "targeting": {"if": [{"starts_with": [{"var": "headers.x-beta"}, "y"]}, "b", {"fractional": [["a", 50], ["b", 50]]}]}},
  "by-email": {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a",
    "targeting": {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]}, ["a", 50], ["b", 50]]}},
  "semver": {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a",
    "targeting": {"if": [{"sem_ver": [{"var": "version"}, "^", "1.0.0"]}, "b", null]}}
}}`

// flagFiles are the flag files the tests hold the cache's rule against:
// the shipped one, this package's fuzz corpus, and the probes above.
func flagFiles(t *testing.T) map[string]*Set {
	t.Helper()
	out := map[string]*Set{"probe": mustParse(t, inputsProbe), "canary": mustParse(t, canaryFile)}
	raw, err := os.ReadFile("../config/flags/flags.json")
	if err != nil {
		t.Fatal(err)
	}
	out["config/flags/flags.json"] = mustParse(t, string(raw))
	corpus, _ := filepath.Glob("testdata/fuzz/FuzzParse/*")
	for _, path := range corpus {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		_, lit, _ := strings.Cut(string(b), "\n")
		lit = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(lit), "[]byte("), ")")
		text, err := strconv.Unquote(lit)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if s, err := Parse([]byte(text)); err == nil {
			out[path] = s
		}
	}
	return out
}

// randomContext draws attributes from small pools, so values repeat and
// rules take every branch; numbers, nested objects and lists included.
func randomContext(rng *rand.Rand) map[string]any {
	pick := func(vs ...any) any { return vs[rng.IntN(len(vs))] }
	ctx := map[string]any{}
	maybe := func(name string, v any) {
		if rng.IntN(4) > 0 {
			ctx[name] = v
		}
	}
	maybe("targetingKey", fmt.Sprintf("user-%d", rng.IntN(50)))
	maybe("email", pick("ada@pilotlight.dev", "bob@example.com", "", "x@x", map[string]any{"region": "eu"}, 3.0))
	maybe("region", pick("eu", "us", "", nil))
	maybe("function", pick("fraud", "demo"))
	maybe("version", pick("1.2.3", "0.9.0", "v1", 2.0, "junk"))
	maybe("n", pick(0.0, 1.0, 2.0, "1"))
	maybe("list", pick([]any{1.0, 2.0}, []any{0.0}, []any{}, "x"))
	maybe("headers", pick(map[string]any{"x-beta": "yes"}, map[string]any{"x-beta": "no"}, map[string]any{}))
	maybe("x", pick("1", "2"))
	maybe("x-beta", pick("yes", "no"))
	maybe("fallback", pick("eu", "us"))
	maybe("nothing", pick(nil, "eu"))
	maybe("unread", pick("a", "b", 1.0))
	return ctx
}

// Evaluating with only a flag's Inputs gives the same Result as with the
// whole context: what a cache keyed by them relies on.
func TestInputsDecideTheEvaluation(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 2))
	cached := 0
	for name, s := range flagFiles(t) {
		for _, key := range append(s.Keys(), "absent") {
			inputs, ok := s.Inputs(key)
			if !ok {
				continue
			}
			cached++
			for range 400 {
				ctx := randomContext(rng)
				only := map[string]any{}
				for _, in := range inputs {
					if v, has := ctx[in]; has {
						only[in] = v
					}
				}
				if s.ContextFree(key) {
					only = nil
				}
				full, narrow := s.Evaluate(key, ctx), s.Evaluate(key, only)
				if !reflect.DeepEqual(full, narrow) {
					t.Fatalf("%s: flag %s (inputs %v): context %v gives %+v, only its inputs %v give %+v", name, key, inputs, ctx, full, only, narrow)
				}
			}
		}
	}
	if cached < 10 {
		t.Fatalf("only %d flags with provable inputs: the test proves little", cached)
	}
}

// An owned context (converted in place, no copy) evaluates as a copied one,
// numbers of other Go types included.
func TestOwnedContextEvaluatesTheSame(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 3))
	for name, s := range flagFiles(t) {
		for _, key := range s.Keys() {
			for range 100 {
				ctx := randomContext(rng)
				if rng.IntN(2) == 0 {
					ctx["n"] = rng.IntN(3) // an int: jsonValue makes it 0, 1 or 2.0
				}
				owned := map[string]any{}
				for k, v := range ctx {
					owned[k] = v
				}
				want, got := s.Evaluate(key, ctx), s.evaluate(key, owned, true)
				if !reflect.DeepEqual(want, got) {
					t.Fatalf("%s: flag %s, context %v: copied %+v, owned %+v", name, key, ctx, want, got)
				}
				if r := s.ResolveStringOwned(key, "d", map[string]any{"email": "a"}); r.Reason == "" {
					t.Fatalf("%s: flag %s: ResolveStringOwned gave no reason", name, key)
				}
			}
		}
	}
}

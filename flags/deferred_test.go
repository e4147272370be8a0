package flags

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
)

// deferProbe holds rules EvaluateDeferred must take (a split on the key
// behind conditions, in several branches, nested, with odd weights and
// variant types, invalid splits, a condition the engine fails on) and
// rules it must refuse (the key read anywhere but as a split's bucketing).
const deferProbe = `{"flags": {
  "nested": {"state": "ENABLED", "variants": {"a": "A", "b": "B", "c": "C"}, "defaultVariant": "a",
    "targeting": {"if": [{"ends_with": [{"var": "email"}, "@pilotlight.dev"]}, {"fractional": [["b", 1], ["c", 3]]},
      {"==": [{"var": "region"}, "eu"]}, {"if": [{"var": "beta"}, {"fractional": [null, ["a", 0], ["b", 5], ["c"]]}, "c"]},
      {"fractional": [["a", 90], ["b", 10]]}]}},
  "ternary": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
    "targeting": {"?:": [{"==": [{"var": "region"}, "us"]}, {"fractional": [["on", 50], ["off", 50]]}, "off"]}},
  "no-else": {"state": "ENABLED", "variants": {"x": 1, "y": 2}, "defaultVariant": "y",
    "targeting": {"if": [{"var": "region"}, {"fractional": [["x", 2], ["y", 1], ["zzz", 1]]}]}},
  "zero-weights": {"state": "ENABLED", "variants": {"x": 1, "y": 2}, "defaultVariant": "y",
    "targeting": {"if": [{"var": "region"}, {"fractional": [["x", 0], ["y", 0]]}, {"fractional": [["x", 1.5], ["y", 1]]}]}},
  "bare": {"state": "ENABLED", "variants": {"x": "X", "y": "Y"},
    "targeting": {"fractional": [["x", 25], ["y", 75]]}},
  "engine-error": {"state": "ENABLED", "variants": {"x": "X", "y": "Y"}, "defaultVariant": "x",
    "targeting": {"if": [{"?:": [{"var": "region"}, true, false]}, {"fractional": [["x", 1], ["y", 1]]}, "y"]}},
  "key-in-condition": {"state": "ENABLED", "variants": {"x": "X", "y": "Y"}, "defaultVariant": "x",
    "targeting": {"if": [{"==": [{"var": "targetingKey"}, "u-1"]}, "y", {"fractional": [["x", 1], ["y", 1]]}]}},
  "computed-bucket": {"state": "ENABLED", "variants": {"x": "X", "y": "Y"}, "defaultVariant": "x",
    "targeting": {"fractional": [[{"var": "region"}, 1], ["y", 1]]}},
  "bucket-by": {"state": "ENABLED", "variants": {"x": "X", "y": "Y"}, "defaultVariant": "x",
    "targeting": {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "targetingKey"}]}, ["x", 1], ["y", 1]]}},
  "in-an-operator": {"state": "ENABLED", "variants": {"x": "X", "y": "Y"}, "defaultVariant": "x",
    "targeting": {"cat": [{"fractional": [["x", 1], ["y", 1]]}]}}
}}`

// For every key, the deferred evaluation's pick is exactly what Evaluate
// answers with that key: every flag of the probe and the shipped file,
// contexts drawn from small pools, keys random and empty.
func TestEvaluateDeferredAgrees(t *testing.T) {
	shipped, err := os.ReadFile("../config/flags/flags.json")
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(25, 7))
	deferred, splits := 0, 0
	for name, raw := range map[string][]byte{"probe": []byte(deferProbe), "config/flags/flags.json": shipped} {
		s, err := Parse(raw)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, key := range s.Keys() {
			if _, ok := s.DeferredInputs(key); !ok {
				continue
			}
			deferred++
			for range 40 {
				ctx := map[string]any{}
				if rng.IntN(2) == 0 {
					ctx["email"] = []string{"ada@pilotlight.dev", "bob@example.com"}[rng.IntN(2)]
				}
				if rng.IntN(2) == 0 {
					ctx["region"] = []any{"eu", "us", "", 3.0}[rng.IntN(4)]
				}
				if rng.IntN(2) == 0 {
					ctx["beta"] = rng.IntN(2) == 0
				}
				d, ok := s.EvaluateDeferred(key, cloneCtx(ctx))
				if !ok {
					t.Fatalf("%s: flag %s: DeferredInputs took it, EvaluateDeferred did not", name, key)
				}
				if len(d.Results) > 1 {
					splits++
				}
				for i := range 60 {
					tk := fmt.Sprintf("user-%d", rng.Uint64())
					if i == 0 {
						tk = ""
					}
					full := cloneCtx(ctx)
					full["targetingKey"] = tk
					want, got := s.Evaluate(key, full), d.Results[d.Index(tk)]
					if fmt.Sprint(want) != fmt.Sprint(got) {
						t.Fatalf("%s: flag %s, context %v, key %q:\n deferred %+v\n evaluated %+v", name, key, ctx, tk, got, want)
					}
				}
			}
		}
	}
	if deferred < 7 || splits == 0 {
		t.Fatalf("%d flags deferred, %d evaluations split: the test compared too little", deferred, splits)
	}
}

func cloneCtx(ctx map[string]any) map[string]any {
	out := make(map[string]any, len(ctx)+1)
	for k, v := range ctx {
		out[k] = v
	}
	return out
}

// The rules that read the key other than as a split's bucketing are
// evaluated whole; the others lose only the key from their inputs.
func TestDeferredInputs(t *testing.T) {
	s, err := Parse([]byte(deferProbe))
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string][]string{
		"nested": {"beta", "email", "region"}, "ternary": {"region"}, "no-else": {"region"},
		"zero-weights": {"region"}, "bare": nil, "engine-error": {"region"},
	} {
		got, ok := s.DeferredInputs(key)
		if !ok || !slices.Equal(got, want) {
			t.Errorf("%s: DeferredInputs %v %v, want %v true", key, got, ok, want)
		}
	}
	for _, key := range []string{"key-in-condition", "computed-bucket", "bucket-by", "in-an-operator", "absent"} {
		if got, ok := s.DeferredInputs(key); ok {
			t.Errorf("%s: deferred with inputs %v; it reads the key otherwise", key, got)
		}
		if _, ok := s.EvaluateDeferred(key, map[string]any{}); ok {
			t.Errorf("%s: EvaluateDeferred took it", key)
		}
	}
}

package flags

import (
	"strings"
	"testing"
)

// oddFile is a flag file flagd itself loads: ordinary flags beside odd ones.
// flagd serves every ordinary flag and evaluates each odd one by its own
// rules (flagd core/pkg/evaluator: fractional.go, semver.go,
// string_comparison.go, json.go).
const oddFile = `{
  "$evaluators": {"staff": {"ends_with": [{"var": "email"}, "@pilotlight.dev"]}},
  "flags": {
    "ordinary": {"state": "ENABLED", "variants": {"on": "fraud-00002", "off": "fraud-00001"}, "defaultVariant": "off",
      "targeting": {"if": [{"$ref": "staff"}, "on", null]}},
    "starts-with-arity": {"state": "ENABLED", "variants": {"on": "A", "off": "B"}, "defaultVariant": "off",
      "targeting": {"if": [{"starts_with": [{"var": "email"}, "ada", "extra"]}, "on", "off"]}},
    "ends-with-arity": {"state": "ENABLED", "variants": {"on": "A", "off": "B"}, "defaultVariant": "off",
      "targeting": {"ends_with": [{"var": "email"}]}},
    "sem-ver-arity": {"state": "ENABLED", "variants": {"on": "A", "off": "B"}, "defaultVariant": "off",
      "targeting": {"if": [{"sem_ver": [{"var": "version"}, ">="]}, "on", "off"]}},
    "sem-ver-operator": {"state": "ENABLED", "variants": {"on": "A", "off": "B"}, "defaultVariant": "off",
      "targeting": {"if": [{"sem_ver": [{"var": "version"}, "=>", "1.0.0"]}, "on", "off"]}},
    "negative-weight": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "a",
      "targeting": {"fractional": [["a", -50], ["b", 10]]}},
    "zero-weights": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "b",
      "targeting": {"fractional": [["a", 0], ["b", 0]]}},
    "missing-ref": {"state": "ENABLED", "variants": {"on": "A", "off": "B"}, "defaultVariant": "off",
      "targeting": {"if": [{"$ref": "staf"}, "on", null]}},
    "unknown-state": {"state": "ON", "variants": {"on": "A"}, "defaultVariant": "on"},
    "disabled-odd": {"state": "DISABLED", "variants": {"on": "A"}, "defaultVariant": "on",
      "targeting": {"if": [{"$ref": "nowhere"}, "on", null]}}
  }
}`

func TestFlagdToleratedOddities(t *testing.T) {
	set, err := Parse([]byte(oddFile))
	if err != nil {
		t.Fatalf("a file flagd loads was refused: %v", err)
	}
	// Every oddity is a warning with its JSON path; none is an error.
	wantWarnings := map[string]string{
		"$.flags.starts-with-arity.targeting.if[0].starts_with": "takes [value, prefix]",
		"$.flags.ends-with-arity.targeting.ends_with":           "takes [value, suffix]",
		"$.flags.sem-ver-arity.targeting.if[0].sem_ver":         "takes [version, operator, version]",
		"$.flags.sem-ver-operator.targeting.if[0].sem_ver[1]":   `unknown sem_ver operator "=>"`,
		"$.flags.negative-weight.targeting.fractional[0][1]":    "negative: flagd counts it as 0",
		"$.flags.zero-weights.targeting.fractional":             "all weights are 0",
		"$.flags.missing-ref.targeting.if[0].$ref":              `"staf" names no evaluator`,
		"$.flags.unknown-state.state":                           "serves the flag as ENABLED",
		"$.flags.disabled-odd.targeting.if[0].$ref":             `"nowhere" names no evaluator`,
	}
	got := map[string]string{}
	for _, p := range set.Warnings() {
		if p.Severity != SeverityWarning {
			t.Errorf("not a warning: %s", p)
		}
		got[p.Path] = p.Msg
	}
	for path, msg := range wantWarnings {
		if !strings.Contains(got[path], msg) {
			t.Errorf("warning at %s = %q, want it to say %q", path, got[path], msg)
		}
	}
	if len(got) != len(wantWarnings) {
		t.Errorf("warnings %v, want exactly %d", set.Warnings(), len(wantWarnings))
	}

	ada := map[string]any{"targetingKey": "user-1", "email": "ada@pilotlight.dev", "version": "2.0.0"}
	checkEvaluations(t, set, []evaluation{
		// Ordinary flags serve as usual beside the odd ones.
		{"ordinary", ada, "fraud-00002", "on", ReasonTargetingMatch, ""},
		{"ordinary", map[string]any{"email": "x@example.com"}, "fraud-00001", "off", ReasonDefault, ""},
		// An operator given the wrong number of arguments is null: "if"
		// takes its else branch, and a bare one gives the default variant.
		{"starts-with-arity", ada, "B", "off", ReasonTargetingMatch, ""},
		{"ends-with-arity", ada, "B", "off", ReasonDefault, ""},
		{"sem-ver-arity", ada, "B", "off", ReasonTargetingMatch, ""},
		// An unknown sem_ver operator is null too.
		{"sem-ver-operator", ada, "B", "off", ReasonTargetingMatch, ""},
		// A negative weight counts as 0: everyone gets b.
		{"negative-weight", ada, "B", "b", ReasonTargetingMatch, ""},
		{"negative-weight", map[string]any{"targetingKey": "user-2"}, "B", "b", ReasonTargetingMatch, ""},
		// All weights 0: fractional is null, the default variant.
		{"zero-weights", ada, "B", "b", ReasonDefault, ""},
		// A $ref to a missing evaluator: PARSE_ERROR for that flag only.
		{"missing-ref", ada, nil, "", ReasonError, ErrParse},
		// flagd serves any state but DISABLED as enabled.
		{"unknown-state", ada, "A", "on", ReasonStatic, ""},
		// DISABLED wins before targeting is looked at.
		{"disabled-odd", ada, nil, "", ReasonDisabled, ""},
		// Operators given invalid input (null) yield null: DEFAULT.
		{"sem-ver-operator", map[string]any{"version": nil}, "B", "off", ReasonTargetingMatch, ""},
		{"ends-with-arity", map[string]any{"email": nil}, "B", "off", ReasonDefault, ""},
	})
}

// TestOperatorsGivenNullAreDefault: each custom operator given null where
// it needs a value yields null, so the flag's default variant with reason
// DEFAULT (flagd's operators log and return nil on bad input).
func TestOperatorsGivenNullAreDefault(t *testing.T) {
	for _, rule := range []string{
		`{"starts_with": [{"var": "missing"}, "a"]}`,
		`{"ends_with": ["a", null]}`,
		`{"sem_ver": [null, "=", "1.0.0"]}`,
		`{"sem_ver": ["1.0.0", null, "1.0.0"]}`,
		`{"fractional": [null, ["a", 1]]}`, // no targeting key in the context
		`{"fractional": [["a", 1], ["b", 1]]}`,
	} {
		file := `{"flags": {"f": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "b", "targeting": ` + rule + `}}}`
		set, err := Parse([]byte(file))
		if err != nil {
			t.Fatalf("%s: %v", rule, err)
		}
		if r := set.Evaluate("f", map[string]any{"targetingKey": ""}); r.Variant != "b" || r.Reason != ReasonDefault {
			t.Errorf("%s: got %+v, want the default variant b with reason DEFAULT", rule, r)
		}
	}
}

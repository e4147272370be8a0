package flags

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/functions"
)

const (
	E = SeverityError
	W = SeverityWarning
)

// TestValidateReportsPaths: errors are what flagd refuses to load; every
// other oddity is a warning, and the file serves.
func TestValidateReportsPaths(t *testing.T) {
	tests := []struct {
		name string
		file string
		want []Problem // Path exact, Msg substring, Severity exact
	}{
		{"malformed JSON", "{\n  \"flags\": {\n    \"f\": {\"state\": \"ENABLED\",}\n  }\n}",
			[]Problem{{"$", "line 3 column", E}}},
		{"truncated JSON", `{"flags": {`, []Problem{{"$", "malformed JSON", E}}},
		{"empty", ``, []Problem{{"$", "empty file", E}}},
		{"trailing data", `{"flags": {}} {}`, []Problem{{"$", "after the top-level value", E}}},
		{"not an object", `[]`, []Problem{{"$", "must be a JSON object", E}}},
		{"no flags", `{}`, []Problem{{"$", `missing "flags"`, E}}},
		{"bad state", flagFile(`{"state": "ON", "variants": {"a": 1}, "defaultVariant": "a"}`),
			[]Problem{{"$.flags.f.state", `"ON" is neither ENABLED nor DISABLED`, W}}},
		{"missing state", flagFile(`{"variants": {"a": 1}, "defaultVariant": "a"}`),
			[]Problem{{"$.flags.f.state", "missing state", W}}},
		{"empty variants", flagFile(`{"state": "ENABLED", "variants": {}}`),
			[]Problem{{"$.flags.f.variants", "no variants", W}}},
		{"mixed variant types", flagFile(`{"state": "ENABLED", "variants": {"a": 1, "b": "two", "c": true}, "defaultVariant": "a"}`),
			[]Problem{{"$.flags.f.variants", "mix types: boolean (c), number (a), string (b)", W}}},
		{"array variant", flagFile(`{"state": "ENABLED", "variants": {"a": [1]}, "defaultVariant": "a"}`),
			[]Problem{{"$.flags.f.variants.a", "not an array", W}}},
		{"unsafe integer", flagFile(`{"state": "ENABLED", "variants": {"a": 9007199254740993}, "defaultVariant": "a"}`),
			[]Problem{{"$.flags.f.variants.a", "JSON-safe integer range", W}}},
		{"defaultVariant not a variant", `{"flags": {"fraud-revision": {"state": "ENABLED", "variants": {"stable": "fraud-00001"}, "defaultVariant": "stabel"}}}`,
			[]Problem{{"$.flags.fraud-revision.defaultVariant", `"stabel" is not one of the variants (stable)`, E}}},
		{"defaultVariant wrong type", flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": 1}`),
			[]Problem{{"$.flags.f.defaultVariant", "variant name or null", E}}},
		{"unknown operator", flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"if": [{"fractinal": []}, "a", null]}}`),
			[]Problem{{"$.flags.f.targeting.if[0].fractinal", `unknown JSONLogic operator "fractinal"`, W}}},
		{"targeting not an object", flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": "a"}`),
			[]Problem{{"$.flags.f.targeting", "should be a JSONLogic object", W}}},
		{"two operators in one object", flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"if": [true, "a"], "var": "x"}}`),
			[]Problem{{"$.flags.f.targeting", "exactly one operator key", W}}},
		{"ref to missing evaluator", `{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"if": [{"$ref": "staf"}, "a", null]}}},
			"$evaluators": {"staff": {"ends_with": [{"var": "email"}, "@x"]}}}`,
			[]Problem{{"$.flags.f.targeting.if[0].$ref", `"staf" names no evaluator in $evaluators (have: staff)`, W}}},
		{"ref cycle", `{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"$ref": "x"}}},
			"$evaluators": {"x": {"and": [{"$ref": "y"}]}, "y": {"or": [{"$ref": "x"}]}}}`,
			[]Problem{{"$.$evaluators.x.and[0].$ref.or[0].$ref", "refers to itself through x -> y -> x", W},
				{"$.$evaluators.y.or[0].$ref.and[0].$ref", "refers to itself", W},
				{"$.flags.f.targeting.$ref.and[0].$ref.or[0].$ref", `refers to itself through x -> y -> x: every evaluation of a flag using it is a PARSE_ERROR`, W}}},
		{"empty evaluator", `{"flags": {}, "$evaluators": {"e": {}}}`,
			[]Problem{{"$.$evaluators.e", "non-empty JSONLogic object", E}}},
		{"unknown operator in evaluator", `{"flags": {}, "$evaluators": {"e": {"ends_wiht": [{"var": "email"}, "@x"]}}}`,
			[]Problem{{"$.$evaluators.e.ends_wiht", "unknown JSONLogic operator", W}}},
		{"literal variant in if not defined", `{"flags": {"fraud-revision": {"state": "ENABLED", "variants": {"stable": "fraud-00001", "canary": "fraud-00002"}, "defaultVariant": "stable",
			"targeting": {"if": [{"ends_with": [{"var": "email"}, "@pilotlight.dev"]}, "canray", "stable"]}}}}`,
			[]Problem{{"$.flags.fraud-revision.targeting.if[1]", `targeting returns variant "canray", which flag "fraud-revision" does not define`, W}}},
		{"literal variant in else", flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"if": [{"var": "x"}, "a", "b"]}}`),
			[]Problem{{"$.flags.f.targeting.if[2]", `variant "b"`, W}}},
		{"literal variant in fractional", flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"fractional": [["a", 50], ["b", 50]]}}`),
			[]Problem{{"$.flags.f.targeting.fractional[1][0]", `variant "b"`, W}}},
		{"fractional weight not whole", flagFile(`{"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a", "targeting": {"fractional": [["a", 50.5], ["b", 49.5]]}}`),
			[]Problem{{"$.flags.f.targeting.fractional[0][1]", "not a whole number", W}, {"$.flags.f.targeting.fractional[1][1]", "not a whole number", W}}},
		{"fractional negative weight", flagFile(`{"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a", "targeting": {"fractional": [["a", -1], ["b", 1]]}}`),
			[]Problem{{"$.flags.f.targeting.fractional[0][1]", "negative", W}}},
		{"fractional weight string", flagFile(`{"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a", "targeting": {"fractional": [{"var": "k"}, ["a", "50"], ["b", 50]]}}`),
			[]Problem{{"$.flags.f.targeting.fractional[1][1]", "whole number", W}}},
		{"fractional bucket not an array", flagFile(`{"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a", "targeting": {"fractional": [["a", 1], 5]}}`),
			[]Problem{{"$.flags.f.targeting.fractional[1]", "[variant, weight]", W}}},
		{"fractional bucket too long", flagFile(`{"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a", "targeting": {"fractional": [["a", 1, 2], ["b"]]}}`),
			[]Problem{{"$.flags.f.targeting.fractional[0]", "not 3 elements", W}}},
		{"fractional no buckets", flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"fractional": [{"var": "email"}]}}`),
			[]Problem{{"$.flags.f.targeting.fractional", "at least one", W}}},
		{"fractional not an array", flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"fractional": "a"}}`),
			[]Problem{{"$.flags.f.targeting.fractional", "fractional takes", W}}},
		{"fractional numeric bucketing value", flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"fractional": [42, ["a", 1]]}}`),
			[]Problem{{"$.flags.f.targeting.fractional[0]", "bucketing value must be a string", W}}},
		{"fractional all zero", flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"fractional": [["a", 0]]}}`),
			[]Problem{{"$.flags.f.targeting.fractional", "all weights are 0", W}}},
		{"fractional weights overflow", flagFile(`{"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a", "targeting": {"fractional": [["a", 2147483647], ["b", 1]]}}`),
			[]Problem{{"$.flags.f.targeting.fractional", "more than flagd's maximum", W}}},
		{"sem_ver bad operator", flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"if": [{"sem_ver": [{"var": "v"}, "=>", "1.0.0"]}, "a", null]}}`),
			[]Problem{{"$.flags.f.targeting.if[0].sem_ver[1]", `unknown sem_ver operator "=>"`, W}}},
		{"sem_ver bad literal version", flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"if": [{"sem_ver": [{"var": "v"}, ">", "1.0.x"]}, "a", null]}}`),
			[]Problem{{"$.flags.f.targeting.if[0].sem_ver[2]", "not a semantic version", W}}},
		{"sem_ver arity", flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"if": [{"sem_ver": [{"var": "v"}, ">"]}, "a", null]}}`),
			[]Problem{{"$.flags.f.targeting.if[0].sem_ver", "takes [version, operator, version]", W}}},
		{"ends_with arity", flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"if": [{"ends_with": [{"var": "v"}]}, "a", null]}}`),
			[]Problem{{"$.flags.f.targeting.if[0].ends_with", "takes [value, suffix]", W}}},
		{"starts_with number literal", flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"if": [{"starts_with": [{"var": "v"}, 3]}, "a", null]}}`),
			[]Problem{{"$.flags.f.targeting.if[0].starts_with[1]", "compares strings", W}}},
		{"odd key quoted", `{"flags": {"a.b": {"state": "NOPE", "variants": {"x": 1}, "defaultVariant": "x"}}}`,
			[]Problem{{`$.flags["a.b"].state`, "neither", W}}},
		{"unknown flag property", flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "default": "a"}`),
			[]Problem{{"$.flags.f.default", "unknown flag property", W}}},
		{"metadata value", flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "metadata": {"x": [1]}}`),
			[]Problem{{"$.flags.f.metadata.x", "metadata values", W}}},
		{"every problem at once", `{"flags": {
			"a": {"state": "on", "variants": {"x": 1}, "defaultVariant": "y"},
			"b": {"state": "ENABLED", "variants": {}, "targeting": {"nope": 1}}}}`,
			[]Problem{{"$.flags.a.state", "neither", W}, {"$.flags.a.defaultVariant", "not one of", E}, {"$.flags.b.variants", "no variants", W}, {"$.flags.b.targeting.nope", "unknown", W}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Validate([]byte(tt.file))
			if len(got) != len(tt.want) {
				t.Fatalf("got %d problems %v, want %d %v", len(got), got, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if got[i].Path != w.Path || !strings.Contains(got[i].Msg, w.Msg) || got[i].Severity != w.Severity {
					t.Errorf("problem %d: got %s, want %s at path %s and message containing %q", i, got[i], w.Severity, w.Path, w.Msg)
				}
			}
			set, err := Parse([]byte(tt.file))
			errs := Errors(got)
			var pe ProblemsError
			switch {
			case len(errs) > 0 && (!errors.As(err, &pe) || len(pe) != len(errs)):
				t.Errorf("Parse error %v, want the same %d errors", err, len(errs))
			case len(errs) == 0 && err != nil:
				t.Errorf("Parse refused a file flagd loads: %v", err)
			case len(errs) == 0 && len(set.Warnings()) != len(got):
				t.Errorf("Set.Warnings() = %v, want the %d warnings", set.Warnings(), len(got))
			}
		})
	}
}

func TestValidFilesHaveNoProblems(t *testing.T) {
	for _, file := range []string{
		`{"flags": {}}`,
		`{"$schema": "https://flagd.dev/schema/v0/flags.json", "flags": {"f": {"state": "DISABLED", "variants": {"a": {"x": 1}}, "defaultVariant": null}}}`,
		flagFile(`{"state": "ENABLED", "variants": {"true": true, "false": false}, "defaultVariant": "false", "targeting": {"if": [{"in": ["@x", {"var": "email"}]}, true, null]}}`),
		flagFile(`{"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a", "targeting": {"fractional": [["a"], ["b", {"var": "w"}], [{"var": "n"}, 1]]}}`),
		// fractional used as a condition: its results are not the flag's variants.
		flagFile(`{"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"if": [{"==": [{"fractional": [["x", 1], ["y", 1]]}, "x"]}, "a", null]}}`),
	} {
		if p := Validate([]byte(file)); len(p) != 0 {
			t.Errorf("%s: %v", file, p)
		}
	}
}

func TestExampleFlagFile(t *testing.T) {
	raw, err := os.ReadFile("../config/flags/flags.json")
	if err != nil {
		t.Fatal(err)
	}
	s, err := Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	fraud := &functions.Manifest{Name: "fraud", Flag: functions.DefaultFlagKey("fraud"), Revisions: []functions.Revision{{Name: "fraud-00001", Tag: "stable"}, {Name: "fraud-00002"}}}
	recommend := &functions.Manifest{Name: "recommend", Flag: functions.DefaultFlagKey("recommend"), Revisions: []functions.Revision{{Name: "recommend-00001"}}}
	if c := s.PickRevision(fraud, map[string]any{"targetingKey": "u", "email": "ada@pilotlight.dev"}); c.Revision != "fraud-00002" || c.Reason != ReasonTargetingMatch {
		t.Errorf("staff: %+v", c)
	}
	if c := s.PickRevision(recommend, map[string]any{"targetingKey": "u"}); c.Revision != "recommend-00001" || c.Reason != ReasonStatic {
		t.Errorf("recommend: %+v", c)
	}
	if r := s.Evaluate("fraud-explanations", map[string]any{"email": "ada@pilotlight.dev"}); r.Reason != ReasonDisabled {
		t.Errorf("disabled example: %+v", r)
	}
}

func TestRefExpansionIsBounded(t *testing.T) {
	evs := `"e0": {"var": "x"}`
	for i := 1; i <= 40; i++ {
		evs += fmt.Sprintf(`, "e%d": {"and": [{"$ref": "e%d"}, {"$ref": "e%d"}]}`, i, i-1, i-1)
	}
	file := `{"flags": {}, "$evaluators": {` + evs + `}}`
	done := make(chan []Problem, 1)
	go func() { done <- Validate([]byte(file)) }()
	select {
	case p := <-done:
		if len(p) == 0 || !strings.Contains(p[0].Msg, "JSONLogic nodes") {
			t.Errorf("got %v", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("exponential $ref expansion not bounded")
	}
}

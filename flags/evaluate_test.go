package flags

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func mustParse(t testing.TB, raw string) *Set {
	t.Helper()
	s, err := Parse([]byte(raw))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return s
}

// flagFile wraps one flag definition (JSON) as flag "f" of a file.
func flagFile(def string) string { return `{"flags": {"f": ` + def + `}}` }

// The flagd testbed's known answers for fractional, "v2" generation
// (open-feature/flagd-testbed gherkin/targeting.feature, @fractional-v2
// examples, with flags/custom-ops.json): MurmurHash3 x86 32 seed 0 of the
// bucketing string, bucket = (hash * totalWeight) >> 32.
func TestFractionalKnownAnswers(t *testing.T) {
	const suits = `"variants": {"clubs": "clubs", "diamonds": "diamonds", "hearts": "hearts", "spades": "spades", "wild": "wild"}, "defaultVariant": "wild"`
	s := mustParse(t, `{"flags": {
		"fractional-flag": {"state": "ENABLED", `+suits+`, "targeting": {"fractional": [
			{"cat": [{"var": "$flagd.flagKey"}, {"var": "user.name"}]},
			["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25]]}},
		"fractional-flag-A-shared-seed": {"state": "ENABLED", `+suits+`, "targeting": {"fractional": [
			{"cat": ["shared-seed", {"var": "user.name"}]},
			["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25]]}},
		"fractional-flag-shorthand": {"state": "ENABLED", "variants": {"heads": "heads", "tails": "tails", "draw": "draw"},
			"defaultVariant": "draw", "targeting": {"fractional": [["heads"], ["tails", 1]]}},
		"fractional-hash-edge-flag": {"state": "ENABLED", "variants": {"lower": "lower", "upper": "upper"},
			"defaultVariant": "lower", "targeting": {"fractional": [{"var": "targetingKey"}, ["lower", 50], ["upper", 50]]}}
	}}`)
	user := func(name string) map[string]any { return map[string]any{"user": map[string]any{"name": name}} }
	tk := func(k string) map[string]any { return map[string]any{"targetingKey": k} }
	tests := []struct {
		flag string
		ctx  map[string]any
		want string
	}{
		{"fractional-flag", user("jack"), "hearts"},
		{"fractional-flag", user("queen"), "spades"},
		{"fractional-flag", user("ten"), "clubs"},
		{"fractional-flag", user("nine"), "diamonds"},
		{"fractional-flag", user("3"), "clubs"},
		{"fractional-flag-A-shared-seed", user("seven"), "hearts"},
		{"fractional-flag-A-shared-seed", user("eight"), "diamonds"},
		{"fractional-flag-A-shared-seed", user("nine"), "clubs"},
		{"fractional-flag-A-shared-seed", user("two"), "spades"},
		{"fractional-flag-shorthand", tk("jon@company.com"), "heads"},
		{"fractional-flag-shorthand", tk("jane@company.com"), "tails"},
		// Keys whose hashes are 0, 1, 2^31-1, 2^31 and 2^32-1.
		{"fractional-hash-edge-flag", tk("ejOoVL"), "lower"},
		{"fractional-hash-edge-flag", tk("bY9fO-"), "lower"},
		{"fractional-hash-edge-flag", tk("SI7p-"), "lower"},
		{"fractional-hash-edge-flag", tk("6LvT0"), "upper"},
		{"fractional-hash-edge-flag", tk("ceQdGm"), "upper"},
	}
	for _, tt := range tests {
		r := s.Evaluate(tt.flag, tt.ctx)
		if r.Value != tt.want || r.Reason != ReasonTargetingMatch {
			t.Errorf("%s %v: got %v (%s %s), want %s TARGETING_MATCH", tt.flag, tt.ctx, r.Value, r.Reason, r.ErrorMessage, tt.want)
		}
	}
}

// Hand-computed: murmur3("fraud-revisionuser-1") = 3786018764 and
// (3786018764*100)>>32 = 88, inside stable's [0, 90) but outside [0, 88);
// murmur3("fraud-revisionalice") = 3277700976, (3277700976*100)>>32 = 76.
func TestFractionalHandComputed(t *testing.T) {
	for _, tt := range []struct {
		weights string
		key     string
		want    string
	}{
		{`["stable", 90], ["canary", 10]`, "user-1", "stable"},
		{`["stable", 88], ["canary", 12]`, "user-1", "canary"}, // bucket 88 is the first canary one
		{`["stable", 89], ["canary", 11]`, "user-1", "stable"},
		{`["stable", 50], ["canary", 50]`, "alice", "canary"},
		{`["stable", 77], ["canary", 23]`, "alice", "stable"},
		{`["stable", 76], ["canary", 24]`, "alice", "canary"},
		// Weights need not sum to 100: total 4, (3277700976*4)>>32 = 3.
		{`["stable", 3], ["canary", 1]`, "alice", "canary"},
		{`["stable", 3], ["canary"]`, "alice", "canary"},
		{`["stable", 4], ["canary", 0]`, "alice", "stable"},
	} {
		s := mustParse(t, `{"flags": {"fraud-revision": {"state": "ENABLED", "variants": {"stable": "fraud-00001", "canary": "fraud-00002"},
			"defaultVariant": "stable", "targeting": {"fractional": [`+tt.weights+`]}}}}`)
		r := s.Evaluate("fraud-revision", map[string]any{"targetingKey": tt.key})
		if r.Variant != tt.want {
			t.Errorf("%s %s: got %q (%s), want %q", tt.weights, tt.key, r.Variant, r.Reason, tt.want)
		}
	}
}

func TestOperators(t *testing.T) {
	tests := []struct {
		name      string
		targeting string
		ctx       map[string]any
		want      string // variant; "" with reason DEFAULT: the default variant "none"
	}{
		{"starts_with yes", `{"if": [{"starts_with": [{"var": "id"}, "abc"]}, "yes", "no"]}`, map[string]any{"id": "abcdef"}, "yes"},
		{"starts_with no", `{"if": [{"starts_with": [{"var": "id"}, "abc"]}, "yes", "no"]}`, map[string]any{"id": "xabc"}, "no"},
		{"starts_with non-string is null", `{"starts_with": [{"var": "id"}, "abc"]}`, map[string]any{"id": 123}, ""},
		{"starts_with missing is null", `{"starts_with": [{"var": "id"}, "abc"]}`, map[string]any{}, ""},
		{"ends_with yes", `{"if": [{"ends_with": [{"var": "email"}, "@pilotlight.dev"]}, "yes", "no"]}`, map[string]any{"email": "ada@pilotlight.dev"}, "yes"},
		{"ends_with no", `{"if": [{"ends_with": [{"var": "email"}, "@pilotlight.dev"]}, "yes", "no"]}`, map[string]any{"email": "ada@example.com"}, "no"},
		{"ends_with non-string is null", `{"ends_with": [{"var": "n"}, "3"]}`, map[string]any{"n": 123}, ""},
		{"sem_ver =", `{"if": [{"sem_ver": [{"var": "v"}, "=", "2.0.0"]}, "yes", "no"]}`, map[string]any{"v": "2.0.0"}, "yes"},
		{"sem_ver = build ignored", `{"if": [{"sem_ver": [{"var": "v"}, "=", "1.0.0"]}, "yes", "no"]}`, map[string]any{"v": "1.0.0+other"}, "yes"},
		{"sem_ver != ", `{"if": [{"sem_ver": [{"var": "v"}, "!=", "2.0.0"]}, "yes", "no"]}`, map[string]any{"v": "2.0.1"}, "yes"},
		{"sem_ver <", `{"if": [{"sem_ver": [{"var": "v"}, "<", "2.0.0"]}, "yes", "no"]}`, map[string]any{"v": "2.0.0-alpha"}, "yes"},
		{"sem_ver < prerelease order", `{"if": [{"sem_ver": [{"var": "v"}, "<", "1.0.0-alpha.beta"]}, "yes", "no"]}`, map[string]any{"v": "1.0.0-alpha.1"}, "yes"},
		{"sem_ver < numeric ids", `{"if": [{"sem_ver": [{"var": "v"}, "<", "1.0.0-rc.10"]}, "yes", "no"]}`, map[string]any{"v": "1.0.0-rc.9"}, "yes"},
		{"sem_ver <=", `{"if": [{"sem_ver": [{"var": "v"}, "<=", "2.0.0"]}, "yes", "no"]}`, map[string]any{"v": "2.0.0"}, "yes"},
		{"sem_ver >", `{"if": [{"sem_ver": [{"var": "v"}, ">", "2.0.0"]}, "yes", "no"]}`, map[string]any{"v": "2.10.0"}, "yes"},
		{"sem_ver > no", `{"if": [{"sem_ver": [{"var": "v"}, ">", "2.0.0"]}, "yes", "no"]}`, map[string]any{"v": "1.99.99"}, "no"},
		{"sem_ver >=", `{"if": [{"sem_ver": [{"var": "v"}, ">=", "1.2.0"]}, "yes", "no"]}`, map[string]any{"v": "1.2.0"}, "yes"},
		{"sem_ver ^ same major", `{"if": [{"sem_ver": [{"var": "v"}, "^", "3.0.0"]}, "yes", "no"]}`, map[string]any{"v": "3.1.0"}, "yes"},
		{"sem_ver ^ other major", `{"if": [{"sem_ver": [{"var": "v"}, "^", "3.0.0"]}, "yes", "no"]}`, map[string]any{"v": "4.0.0"}, "no"},
		{"sem_ver ~ same minor", `{"if": [{"sem_ver": [{"var": "v"}, "~", "3.0.0"]}, "yes", "no"]}`, map[string]any{"v": "3.0.1"}, "yes"},
		{"sem_ver ~ other minor", `{"if": [{"sem_ver": [{"var": "v"}, "~", "3.0.0"]}, "yes", "no"]}`, map[string]any{"v": "3.1.0"}, "no"},
		{"sem_ver v prefix", `{"if": [{"sem_ver": [{"var": "v"}, "=", "1.0.0"]}, "yes", "no"]}`, map[string]any{"v": "v1.0.0"}, "yes"},
		{"sem_ver V prefix", `{"if": [{"sem_ver": [{"var": "v"}, "=", "v1.0.0"]}, "yes", "no"]}`, map[string]any{"v": "V1.0.0"}, "yes"},
		{"sem_ver partial", `{"if": [{"sem_ver": [{"var": "v"}, "=", "1.0.0"]}, "yes", "no"]}`, map[string]any{"v": "1"}, "yes"},
		{"sem_ver number context", `{"if": [{"sem_ver": [{"var": "v"}, ">=", "1.2.0"]}, "yes", "no"]}`, map[string]any{"v": 1.2}, "yes"},
		{"sem_ver int context", `{"if": [{"sem_ver": [{"var": "v"}, ">=", "1.2.0"]}, "yes", "no"]}`, map[string]any{"v": 1}, "no"},
		{"sem_ver invalid version is null", `{"sem_ver": [{"var": "v"}, "=", "1.0.0"]}`, map[string]any{"v": "not-a-version"}, ""},
		{"sem_ver four parts is null", `{"sem_ver": [{"var": "v"}, "=", "2.0.0"]}`, map[string]any{"v": "2.0.0.0"}, ""},
		{"fractional bucketing expression", `{"fractional": [{"var": "email"}, ["yes", 50], ["no", 50]]}`, map[string]any{"email": "6LvT0"}, "no"},
		{"fractional null bucket uses targetingKey", `{"fractional": [{"var": "missing"}, ["yes", 1], ["no", 1]]}`, map[string]any{"targetingKey": "jon@company.com"}, "yes"},
		{"fractional no bucketing value is null", `{"fractional": [["yes", 1], ["no", 1]]}`, map[string]any{}, ""},
		{"fractional number bucketing value is null", `{"fractional": [{"var": "n"}, ["yes", 1], ["no", 1]]}`, map[string]any{"n": 42, "targetingKey": "k"}, ""},
		{"fractional nested variant name", `{"fractional": [{"var": "targetingKey"}, [{"if": [{"==": [{"var": "tier"}, "premium"]}, "yes", "no"]}, 50], ["no", 50]]}`,
			map[string]any{"targetingKey": "ejOoVL", "tier": "premium"}, "yes"},
		{"fractional nested weight", `{"fractional": [{"var": "targetingKey"}, ["yes", {"if": [{"==": [{"var": "tier"}, "premium"]}, 100, 0]}], ["no", 10]]}`,
			map[string]any{"targetingKey": "ejOoVL", "tier": "premium"}, "yes"},
		{"fractional nested weight, last bucket", `{"fractional": [{"var": "targetingKey"}, ["yes", {"if": [{"==": [{"var": "tier"}, "premium"]}, 100, 0]}], ["no", 10]]}`,
			map[string]any{"targetingKey": "ceQdGm", "tier": "premium"}, "no"},
		{"fractional nested weight zero", `{"fractional": [{"var": "targetingKey"}, ["yes", {"if": [{"==": [{"var": "tier"}, "premium"]}, 100, 0]}], ["no", 10]]}`,
			map[string]any{"targetingKey": "ejOoVL", "tier": "basic"}, "no"},
		{"fractional negative weight counts 0", `{"fractional": [{"var": "targetingKey"}, ["yes", {"-": [0, 50]}], ["no", 50]]}`, map[string]any{"targetingKey": "ejOoVL"}, "no"},
		{"fractional all-zero weights is null", `{"fractional": [{"var": "targetingKey"}, ["yes", {"*": [0, 1]}], ["no", {"*": [0, 1]}]]}`, map[string]any{"targetingKey": "k"}, ""},
		{"fractional as condition", `{"if": [{"==": [{"fractional": [{"var": "targetingKey"}, ["a", 1], ["b", 1]]}, "a"]}, "yes", "no"]}`, map[string]any{"targetingKey": "ejOoVL"}, "yes"},
		{"flagd flagKey injected", `{"if": [{"==": [{"var": "$flagd.flagKey"}, "f"]}, "yes", "no"]}`, map[string]any{}, "yes"},
		{"flagd timestamp injected", `{"if": [{">": [{"var": "$flagd.timestamp"}, 1700000000]}, "yes", "no"]}`, map[string]any{}, "yes"},
		{"targetingKey visible", `{"if": [{"==": [{"var": "targetingKey"}, "u1"]}, "yes", "no"]}`, map[string]any{"targetingKey": "u1"}, "yes"},
		{"Go ints compare as numbers", `{"if": [{">": [{"var": "n"}, 41]}, "yes", "no"]}`, map[string]any{"n": int64(42)}, "yes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustParse(t, flagFile(`{"state": "ENABLED", "variants": {"yes": "Y", "no": "N", "none": "-"}, "defaultVariant": "none", "targeting": `+tt.targeting+`}`))
			r := s.Evaluate("f", tt.ctx)
			if r.ErrorCode != "" {
				t.Fatalf("error %s: %s", r.ErrorCode, r.ErrorMessage)
			}
			if tt.want == "" {
				if r.Reason != ReasonDefault || r.Variant != "none" {
					t.Fatalf("got %q (%s), want the default variant with reason DEFAULT", r.Variant, r.Reason)
				}
				return
			}
			if r.Variant != tt.want || r.Reason != ReasonTargetingMatch {
				t.Fatalf("got %q (%s), want %q TARGETING_MATCH", r.Variant, r.Reason, tt.want)
			}
		})
	}
}

func TestReasonsAndErrors(t *testing.T) {
	s := mustParse(t, `{"metadata": {"team": "ml"}, "flags": {
		"static": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "b", "metadata": {"owner": "fraud", "team": "risk"}},
		"static-empty": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a", "targeting": {}},
		"static-null-targeting": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a", "targeting": null},
		"targeted": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "b", "targeting": {"if": [{"==": [{"var": "k"}, 1]}, "a", null]}},
		"code-default": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": null, "targeting": {"if": [{"==": [{"var": "k"}, 1]}, "a", null]}},
		"code-default-absent": {"state": "ENABLED", "variants": {"a": "A"}},
		"disabled": {"state": "DISABLED", "variants": {"a": "A"}, "defaultVariant": "a"},
		"computed": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a", "targeting": {"var": "pick"}},
		"engine-fails": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a", "targeting": {"?:": [{"var": "c"}, "a", "a"]}},
		"booleans": {"state": "ENABLED", "variants": {"true": 2, "false": 1}, "defaultVariant": "false", "targeting": {"if": [true, true, false]}}
	}}`)
	checkEvaluations(t, s, []evaluation{
		{"static", nil, "B", "b", ReasonStatic, ""},
		{"static-empty", nil, "A", "a", ReasonStatic, ""},
		// flagd keeps "targeting": null as the raw JSON null, which is not
		// "{}", so it runs it: a null rule gives null, the default variant
		// with reason DEFAULT.
		{"static-null-targeting", nil, "A", "a", ReasonDefault, ""},
		{"targeted", map[string]any{"k": 1}, "A", "a", ReasonTargetingMatch, ""},
		{"targeted", map[string]any{"k": 2}, "B", "b", ReasonDefault, ""},
		{"code-default", map[string]any{"k": 1}, "A", "a", ReasonTargetingMatch, ""},
		{"code-default", map[string]any{"k": 2}, nil, "", ReasonDefault, ""},
		{"code-default-absent", nil, nil, "", ReasonDefault, ""},
		{"disabled", nil, nil, "", ReasonDisabled, ""},
		{"missing", nil, nil, "", ReasonError, ErrFlagNotFound},
		{"computed", map[string]any{"pick": "a"}, "A", "a", ReasonTargetingMatch, ""},
		{"computed", map[string]any{"pick": "zzz"}, nil, "", ReasonError, ErrGeneral},
		{"engine-fails", map[string]any{"c": "not a boolean"}, nil, "", ReasonError, ErrParse},
		{"booleans", nil, 2.0, "true", ReasonTargetingMatch, ""},
	})
	// Flag metadata overrides the set's; the set's shows through.
	if m := s.Evaluate("static", nil).Metadata; m["team"] != "risk" || m["owner"] != "fraud" {
		t.Errorf("metadata %v", m)
	}
	if m := s.Evaluate("disabled", nil).Metadata; m["team"] != "ml" {
		t.Errorf("metadata of a disabled flag %v", m)
	}
	if m := s.Evaluate("missing", nil).Metadata; m["team"] != "ml" {
		t.Errorf("metadata of a missing flag %v", m)
	}
}

// evaluation is one flag evaluated in a context and what flagd answers.
type evaluation struct {
	flag    string
	ctx     map[string]any
	value   any
	variant string
	reason  string
	code    string
}

// checkEvaluations evaluates each case in s; an error code must come with
// a message.
func checkEvaluations(t *testing.T, s *Set, cases []evaluation) {
	t.Helper()
	for _, tt := range cases {
		r := s.Evaluate(tt.flag, tt.ctx)
		if r.Value != tt.value || r.Variant != tt.variant || r.Reason != tt.reason || r.ErrorCode != tt.code {
			t.Errorf("%s %v: got %+v, want value %v variant %q reason %s code %q", tt.flag, tt.ctx, r, tt.value, tt.variant, tt.reason, tt.code)
		}
		if tt.code != "" && r.ErrorMessage == "" {
			t.Errorf("%s: error without a message", tt.flag)
		}
	}
}

func TestContextNotModified(t *testing.T) {
	s := mustParse(t, flagFile(`{"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a", "targeting": {"if": [{"var": "x"}, "a", null]}}`))
	ctx := map[string]any{"x": 1, "targetingKey": "u"}
	s.Evaluate("f", ctx)
	if len(ctx) != 2 || ctx["x"] != 1 {
		t.Fatalf("context changed: %v", ctx)
	}
}

func TestTimestampIsNow(t *testing.T) {
	s := mustParse(t, flagFile(`{"state": "ENABLED", "variants": {"early": 1, "late": 2}, "defaultVariant": "early",
		"targeting": {"if": [{">=": [{"var": "$flagd.timestamp"}, {"var": "at"}]}, "late", "early"]}}`))
	now := time.Now().Unix()
	if r := s.Evaluate("f", map[string]any{"at": now - 5}); r.Variant != "late" {
		t.Errorf("timestamp before now: %+v", r)
	}
	if r := s.Evaluate("f", map[string]any{"at": now + 3600}); r.Variant != "early" {
		t.Errorf("timestamp after now: %+v", r)
	}
}

// $flagd is built once a second per flag and shared: the next second
// sees the next timestamp, and each flag its own key.
func TestFlagdPropsFollowTheClock(t *testing.T) {
	s := mustParse(t, `{"flags": {
	  "f": {"state": "ENABLED", "variants": {"early": "early", "late": "late"}, "defaultVariant": "early",
	    "targeting": {"if": [{">=": [{"var": "$flagd.timestamp"}, {"var": "at"}]}, "late", "early"]}},
	  "g": {"state": "ENABLED", "variants": {"f": "f", "g": "g"}, "defaultVariant": "f", "targeting": {"var": "$flagd.flagKey"}}}}`)
	t0 := time.Now().Unix()
	if r := s.Evaluate("f", map[string]any{"at": t0}); r.Variant != "late" {
		t.Fatalf("at the current second: %+v", r)
	}
	for time.Now().Unix() == t0 {
		time.Sleep(10 * time.Millisecond)
	}
	if r := s.Evaluate("f", map[string]any{"at": t0 + 1}); r.Variant != "late" {
		t.Fatalf("a second later, $flagd.timestamp is stale: %+v", r)
	}
	if r := s.Evaluate("g", nil); r.Variant != "g" {
		t.Fatalf("$flagd.flagKey of g: %+v", r)
	}
}

func TestRefSubstitution(t *testing.T) {
	s := mustParse(t, `{"flags": {"f": {"state": "ENABLED", "variants": {"hi": "hi", "bye": "bye"}, "defaultVariant": "bye",
		"targeting": {"if": [{"$ref": "macrosoft"}, "hi", null]}}},
		"$evaluators": {"macrosoft": {"in": ["@macrosoft.com", {"var": "email"}]}}}`)
	if r := s.Evaluate("f", map[string]any{"email": "ballmer@macrosoft.com"}); r.Variant != "hi" {
		t.Errorf("got %+v", r)
	}
	if r := s.Evaluate("f", map[string]any{"email": "x@example.com"}); r.Variant != "bye" || r.Reason != ReasonDefault {
		t.Errorf("got %+v", r)
	}
	f, _ := s.Flag("f")
	if strings.Contains(string(f.Targeting), "$ref") {
		t.Errorf("Flag().Targeting still has the $ref: %s", f.Targeting)
	}
}

// TestReads: the attributes a flag's targeting can read, so a caller may
// leave the others out of the context without changing any answer.
func TestReads(t *testing.T) {
	file := `{"flags": {
	  "plain":   {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a"},
	  "email":   {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a", "targeting": {"if": [{"$ref": "staff"}, "b", null]}},
	  "header":  {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a", "targeting": {"if": [{"==": [{"var": ["headers.x-beta", "no"]}, "yes"]}, "b", null]}},
	  "frac":    {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a", "targeting": {"fractional": [["a", 50], ["b", 50]]}},
	  "dynamic": {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a", "targeting": {"if": [{"var": {"cat": ["head", "ers"]}}, "b", null]}},
	  "missing": {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a", "targeting": {"if": [{"missing": ["region"]}, "b", null]}}
	}, "$evaluators": {"staff": {"ends_with": [{"var": "email"}, "@pilotlight.dev"]}}}`
	s, err := Parse([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		flag, attr string
		want       bool
	}{
		{"plain", "headers", false}, {"email", "email", true}, {"email", "headers", false},
		{"header", "headers", true}, {"header", "email", false}, {"frac", "headers", false},
		{"dynamic", "headers", true}, {"missing", "headers", true}, {"absent", "headers", false},
	} {
		if got := s.Reads(c.flag, c.attr); got != c.want {
			t.Errorf("Reads(%s, %s) = %v, want %v", c.flag, c.attr, got, c.want)
		}
	}
	// Leaving out what a flag does not read changes nothing: same answer
	// with and without the unread attribute, for many keys.
	for i := 0; i < 200; i++ {
		key := fmt.Sprintf("user-%d", i)
		with := map[string]any{"targetingKey": key, "email": "x@example.com", "headers": map[string]any{"x-beta": "yes"}}
		without := map[string]any{"targetingKey": key, "email": "x@example.com"}
		for _, f := range []string{"email", "frac"} {
			if a, b := s.Evaluate(f, with), s.Evaluate(f, without); a.Variant != b.Variant || a.Reason != b.Reason {
				t.Fatalf("%s for %s: %v with headers, %v without", f, key, a, b)
			}
		}
	}
}

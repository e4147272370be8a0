package flags

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/open-feature/go-sdk/openfeature"

	"github.com/open-feature/go-sdk/openfeature/isolated"

	"github.com/pilotlight/pilotlight/functions"
)

const canaryFile = `{"flags": {
	"fraud-revision": {"state": "ENABLED", "variants": {"stable": "fraud-00001", "canary": "fraud-00002"}, "defaultVariant": "stable",
		"targeting": {"if": [{"ends_with": [{"var": "email"}, "@pilotlight.dev"]}, "canary", {"fractional": [["stable", 90], ["canary", 10]]}]},
		"metadata": {"function": "fraud"}},
	"bool": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
	"int": {"state": "ENABLED", "variants": {"ten": 10, "ten-point-oh": 10.0, "pi": 3.14, "big": 9007199254740991}, "defaultVariant": "ten",
		"targeting": {"if": [{"var": "pick"}, {"var": "pick"}, null]}},
	"obj": {"state": "ENABLED", "variants": {"a": {"color": "red", "n": 1}}, "defaultVariant": "a"},
	"disabled": {"state": "DISABLED", "variants": {"a": "A"}, "defaultVariant": "a"},
	"code-default": {"state": "ENABLED", "variants": {"a": "A"}}
}}`

func newClient(t testing.TB, p openfeature.FeatureProvider) *openfeature.Client {
	t.Helper()
	api := isolated.NewAPI()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := api.SetProviderAndWait(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = api.Shutdown(context.Background()) })
	return api.NewClient()
}

func TestProviderThroughOpenFeature(t *testing.T) {
	c := newClient(t, NewProvider(mustParse(t, canaryFile)))
	ctx := context.Background()
	staff := openfeature.NewEvaluationContext("u-1", map[string]any{"email": "ada@pilotlight.dev"})

	d, err := c.StringValueDetails(ctx, "fraud-revision", "fallback", staff)
	if err != nil || d.Value != "fraud-00002" || d.Variant != "canary" || d.Reason != openfeature.TargetingMatchReason {
		t.Errorf("string: %+v %v", d, err)
	}
	if v, _ := d.FlagMetadata.GetString("function"); v != "fraud" {
		t.Errorf("metadata %v", d.FlagMetadata)
	}
	// Typed mismatches: the caller's default and TYPE_MISMATCH.
	b, err := c.BooleanValueDetails(ctx, "fraud-revision", true, staff)
	if err == nil || b.Value != true || b.ErrorCode != openfeature.TypeMismatchCode || b.Reason != openfeature.ErrorReason {
		t.Errorf("bool of a string flag: %+v %v", b, err)
	}
	if b, _ := c.BooleanValueDetails(ctx, "bool", false, staff); b.Value != true || b.Reason != openfeature.StaticReason {
		t.Errorf("bool: %+v", b)
	}
	for _, tt := range []struct {
		pick  string
		i     int64
		iCode openfeature.ErrorCode
		f     float64
	}{
		{"", 10, "", 10},
		{"ten-point-oh", 10, "", 10},
		{"pi", -1, openfeature.TypeMismatchCode, 3.14},
		{"big", 9007199254740991, "", 9007199254740991},
	} {
		ec := openfeature.NewEvaluationContext("u", map[string]any{"pick": tt.pick})
		i, _ := c.IntValueDetails(ctx, "int", -1, ec)
		if i.Value != tt.i || i.ErrorCode != tt.iCode {
			t.Errorf("int %q: %+v", tt.pick, i)
		}
		f, _ := c.FloatValueDetails(ctx, "int", -1, ec)
		if f.Value != tt.f || f.ErrorCode != "" {
			t.Errorf("float %q: %+v", tt.pick, f)
		}
	}
	if _, ok := AsInt(math.Pow(2, 60)); ok {
		t.Error("AsInt accepted 2^60")
	}
	o, _ := c.ObjectValueDetails(ctx, "obj", nil, staff)
	if m, ok := o.Value.(map[string]any); !ok || m["color"] != "red" || o.Reason != openfeature.StaticReason {
		t.Errorf("object: %+v", o)
	}
	if o, _ := c.ObjectValueDetails(ctx, "bool", "def", staff); o.Value != "def" || o.ErrorCode != openfeature.TypeMismatchCode {
		t.Errorf("object of a bool flag: %+v", o)
	}
	if s, _ := c.StringValueDetails(ctx, "disabled", "mine", staff); s.Value != "mine" || s.Reason != openfeature.DisabledReason || s.ErrorCode != "" || s.Variant != "" {
		t.Errorf("disabled: %+v", s)
	}
	if s, _ := c.StringValueDetails(ctx, "code-default", "mine", staff); s.Value != "mine" || s.Reason != openfeature.DefaultReason || s.ErrorCode != "" {
		t.Errorf("code default: %+v", s)
	}
	if s, _ := c.StringValueDetails(ctx, "nope", "mine", staff); s.Value != "mine" || s.ErrorCode != openfeature.FlagNotFoundCode {
		t.Errorf("missing: %+v", s)
	}
}

func TestProviderSwapEmitsChanges(t *testing.T) {
	p := NewProvider(mustParse(t, canaryFile))
	c := newClient(t, p)
	got := make(chan openfeature.EventDetails, 4)
	cb := func(d openfeature.EventDetails) { got <- d }
	c.AddHandler(openfeature.ProviderConfigChange, &cb)

	next := mustParse(t, `{"flags": {
		"fraud-revision": {"state": "ENABLED", "variants": {"stable": "fraud-00001", "canary": "fraud-00002"}, "defaultVariant": "canary"},
		"bool": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}}}`)
	changed := p.Swap(next)
	want := []string{"code-default", "disabled", "fraud-revision", "int", "obj"}
	if fmt.Sprint(changed) != fmt.Sprint(want) {
		t.Errorf("changed %v, want %v", changed, want)
	}
	select {
	case d := <-got:
		if fmt.Sprint(d.FlagChanges) != fmt.Sprint(want) {
			t.Errorf("event changes %v", d.FlagChanges)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no PROVIDER_CONFIGURATION_CHANGED event")
	}
	if v, _ := c.StringValue(context.Background(), "fraud-revision", "x", openfeature.NewEvaluationContext("u", nil)); v != "fraud-00002" {
		t.Errorf("after swap: %s", v)
	}
}

func TestPickRevision(t *testing.T) {
	s := mustParse(t, `{"flags": {
		"fraud-revision": {"state": "ENABLED", "variants": {"stable": "fraud-00001", "canary": "fraud-00009"}, "defaultVariant": "stable",
			"targeting": {"if": [{"==": [{"var": "targetingKey"}, "c"]}, "canary", null]}},
		"typo-revision": {"state": "ENABLED", "variants": {"stable": "typo-0001"}, "defaultVariant": "stable"},
		"coded-revision": {"state": "ENABLED", "variants": {"canary": "fraud-00009"}, "targeting": {"if": [true, "canary", null]}},
		"off-revision": {"state": "DISABLED", "variants": {"stable": "fraud-00001"}, "defaultVariant": "stable"},
		"number-revision": {"state": "ENABLED", "variants": {"one": 1}, "defaultVariant": "one"}
	}}`)
	tests := []struct {
		flag, key string
		want      RevisionChoice
	}{
		{"fraud-revision", "a", RevisionChoice{Revision: "fraud-00001", Variant: "stable", Reason: ReasonDefault}},
		{"fraud-revision", "c", RevisionChoice{Revision: "fraud-00001", Variant: "stable", Reason: ReasonTargetingMatch, FellBack: true, Unknown: "fraud-00009"}},
		// Nothing usable: the manifest's DefaultRevision (tagged stable).
		{"typo-revision", "a", RevisionChoice{Revision: "fraud-00001", Reason: ReasonStatic, FellBack: true, Unknown: "typo-0001"}},
		{"coded-revision", "a", RevisionChoice{Revision: "fraud-00001", Reason: ReasonTargetingMatch, FellBack: true, Unknown: "fraud-00009"}},
		{"off-revision", "a", RevisionChoice{Revision: "fraud-00001", Reason: ReasonDisabled}},
		{"number-revision", "a", RevisionChoice{Revision: "fraud-00001", Reason: ReasonStatic}},
		{"missing-revision", "a", RevisionChoice{Revision: "fraud-00001", Reason: ReasonError, ErrorCode: ErrFlagNotFound}},
	}
	for _, tt := range tests {
		m := &functions.Manifest{Name: "fraud", Flag: tt.flag, Revisions: []functions.Revision{{Name: "fraud-00001", Tag: "stable"}, {Name: "fraud-00002"}}}
		if got := s.PickRevision(m, map[string]any{"targetingKey": tt.key}); got != tt.want {
			t.Errorf("%s %s: got %+v, want %+v", tt.flag, tt.key, got, tt.want)
		}
	}
}

// 10,000 distinct users through the 90/10 split: shares within ±1.5 points,
// every user on the same variant on repeat and after re-parsing the file.
func TestSplitShareAndStickiness(t *testing.T) {
	s := mustParse(t, canaryFile)
	again := mustParse(t, canaryFile)
	const users = 10000
	counts := map[string]int{}
	for i := range users {
		ctx := map[string]any{"targetingKey": fmt.Sprintf("user-%d", i), "email": fmt.Sprintf("user-%d@example.com", i)}
		r := s.Evaluate("fraud-revision", ctx)
		if r.Reason != ReasonTargetingMatch {
			t.Fatalf("user %d: %+v", i, r)
		}
		counts[r.Variant]++
		for _, other := range []Result{s.Evaluate("fraud-revision", ctx), again.Evaluate("fraud-revision", ctx)} {
			if other.Variant != r.Variant {
				t.Fatalf("user %d moved from %s to %s", i, r.Variant, other.Variant)
			}
		}
	}
	for variant, want := range map[string]float64{"stable": 90, "canary": 10} {
		share := 100 * float64(counts[variant]) / users
		if math.Abs(share-want) > 1.5 {
			t.Errorf("%s: %.2f%% of users, want %.0f%% ± 1.5", variant, share, want)
		}
		t.Logf("%s: %.2f%%", variant, share)
	}
}

// BenchmarkEvaluateFractional is one evaluation of the router's canary flag
// (targeted rule, then a 90/10 fractional) through the OpenFeature client,
// with a targeting key and an email attribute.
func BenchmarkEvaluateFractional(b *testing.B) {
	c := newClient(b, NewProvider(mustParse(b, canaryFile)))
	ctx := context.Background()
	evalCtxs := make([]openfeature.EvaluationContext, 1024)
	for i := range evalCtxs {
		evalCtxs[i] = openfeature.NewEvaluationContext(fmt.Sprintf("user-%d", i), map[string]any{"email": fmt.Sprintf("user-%d@example.com", i)})
	}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		d, err := c.StringValueDetails(ctx, "fraud-revision", "fraud-00001", evalCtxs[i&1023])
		if err != nil || d.Reason != openfeature.TargetingMatchReason {
			b.Fatalf("%+v %v", d, err)
		}
		i++
	}
}

// BenchmarkSetEvaluate is the same evaluation without the SDK around it.
func BenchmarkSetEvaluate(b *testing.B) {
	s := mustParse(b, canaryFile)
	ctx := map[string]any{"targetingKey": "user-1", "email": "user-1@example.com"}
	b.ReportAllocs()
	for b.Loop() {
		if r := s.Evaluate("fraud-revision", ctx); r.ErrorCode != "" {
			b.Fatal(r.ErrorMessage)
		}
	}
}

// Evaluations share the parsed rules; run them from many goroutines while
// the set is swapped (go test -race).
func TestConcurrentEvaluationAndSwap(t *testing.T) {
	p := NewProvider(mustParse(t, canaryFile))
	alt := mustParse(t, canaryFile+" ")
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 2000 {
				ctx := map[string]any{"targetingKey": fmt.Sprintf("u-%d-%d", g, i), "email": "x@pilotlight.dev", "pick": "pi"}
				if r := p.Set().Evaluate("fraud-revision", ctx); r.Variant != "canary" {
					t.Errorf("got %+v", r)
					return
				}
				p.IntEvaluation(context.Background(), "int", 0, ctx)
			}
		}()
	}
	for i := range 200 {
		if i%2 == 0 {
			p.Swap(alt)
		} else {
			p.Swap(mustParse(t, canaryFile))
		}
	}
	for range 4 {
		<-done
	}
}

package router_test

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/knative"
	"github.com/pilotlight/pilotlight/router"
)

// TestOneRevisionRuleLocalAndKnative runs the same flag file through both
// paths — the local router's picker (per request, users who match no
// targeting rule) and the generated Knative Service's traffic block — and
// requires the same revisions with the same shares in every state of the
// flag. The function lists its stable revision first and the newest last,
// so "stable" and "newest" differ and a disagreement shows.
func TestOneRevisionRuleLocalAndKnative(t *testing.T) {
	root := t.TempDir()
	fnDir := filepath.Join(root, "functions", "demo")
	if err := os.MkdirAll(fnDir, 0o755); err != nil {
		t.Fatal(err)
	}
	manifest := "name: demo\nhandler: tensor\nrevisions:\n  - name: demo-00001\n    model: a.onnx\n    tag: stable\n  - name: demo-00002\n    model: b.onnx\n    tag: canary\n"
	if err := os.WriteFile(filepath.Join(fnDir, functions.ManifestFile), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := functions.Parse(filepath.Join(fnDir, functions.ManifestFile), []byte(manifest))
	if err != nil {
		t.Fatal(err)
	}
	if m.DefaultRevision() != "demo-00001" {
		t.Fatalf("DefaultRevision %s, want the stable demo-00001", m.DefaultRevision())
	}
	flag := func(body string) string { return `{"flags": {"demo-revision": ` + body + `}}` }
	const variants = `"variants": {"stable": "demo-00001", "canary": "demo-00002", "ghost": "demo-00009"}`
	staff := `{"ends_with": [{"var": "email"}, "@pilotlight.dev"]}`
	tests := []struct {
		state string
		file  string
		want  map[string]int64 // percent per revision for untargeted users
	}{
		{"flag missing", `{"flags": {}}`, map[string]int64{"demo-00001": 100}},
		{"DISABLED", flag(`{"state": "DISABLED", ` + variants + `, "defaultVariant": "canary"}`), map[string]int64{"demo-00001": 100}},
		{"static", flag(`{"state": "ENABLED", ` + variants + `, "defaultVariant": "canary"}`), map[string]int64{"demo-00002": 100}},
		{"static, no defaultVariant", flag(`{"state": "ENABLED", ` + variants + `, "defaultVariant": null}`), map[string]int64{"demo-00001": 100}},
		{"fractional", flag(`{"state": "ENABLED", ` + variants + `, "defaultVariant": "stable", "targeting": {"fractional": [["stable", 70], ["canary", 30]]}}`),
			map[string]int64{"demo-00001": 70, "demo-00002": 30}},
		{"targeted, else a variant", flag(`{"state": "ENABLED", ` + variants + `, "defaultVariant": "stable", "targeting": {"if": [` + staff + `, "stable", "canary"]}}`),
			map[string]int64{"demo-00002": 100}},
		{"targeted, no else", flag(`{"state": "ENABLED", ` + variants + `, "defaultVariant": "canary", "targeting": {"if": [` + staff + `, "stable"]}}`),
			map[string]int64{"demo-00002": 100}},
		{"targeted then fractional", flag(`{"state": "ENABLED", ` + variants + `, "defaultVariant": "stable", "targeting": {"if": [` + staff + `, "canary", {"fractional": [["stable", 50], ["canary", 50]]}]}}`),
			map[string]int64{"demo-00001": 50, "demo-00002": 50}},
		{"variant names a missing revision", flag(`{"state": "ENABLED", ` + variants + `, "defaultVariant": "canary", "targeting": {"if": [` + staff + `, "stable", "ghost"]}}`),
			map[string]int64{"demo-00002": 100}},
		{"all weights 0", flag(`{"state": "ENABLED", ` + variants + `, "defaultVariant": "canary", "targeting": {"fractional": [["stable", 0], ["canary", 0]]}}`),
			map[string]int64{"demo-00002": 100}},
		{"PARSE_ERROR ($ref to a missing evaluator)", flag(`{"state": "ENABLED", ` + variants + `, "defaultVariant": "canary", "targeting": {"if": [{"$ref": "staf"}, "stable", "canary"]}}`),
			map[string]int64{"demo-00001": 100}},
	}
	for i, tt := range tests {
		t.Run(tt.state, func(t *testing.T) {
			path := filepath.Join(root, fmt.Sprintf("flags-%d.json", i))
			if err := os.WriteFile(path, []byte(tt.file), 0o644); err != nil {
				t.Fatal(err)
			}

			// Knative: the traffic block `pilotlight manifests` generates.
			split, err := knative.Sources{FunctionsDir: filepath.Join(root, "functions"), FlagsFile: path}.Split(m)
			if err != nil {
				t.Fatal(err)
			}
			svc, err := knative.Service(m, knative.Options{Traffic: split})
			if err != nil {
				t.Fatal(err)
			}
			knativeShare := map[string]int64{}
			for _, tr := range svc.Spec.Traffic {
				if *tr.Percent > 0 {
					knativeShare[tr.RevisionName] = *tr.Percent
				}
			}

			// Local: the router's picker, 4000 users matching no targeting rule.
			w, err := flags.NewWatcher(flags.WatcherConfig{Path: path, Logger: quietLogger()})
			if err != nil {
				t.Fatal(err)
			}
			reg := prometheus.NewRegistry()
			picker, err := router.NewFlagPicker(w, path, reg)
			if err != nil {
				t.Fatal(err)
			}
			// A flag whose answer cannot depend on the request is evaluated
			// without a context: the picker's revision and fallback count are
			// still those of flags' own full evaluation.
			set := w.Set()
			wantFree := tt.state == "flag missing" || tt.state == "DISABLED" || strings.HasPrefix(tt.state, "static") || strings.HasPrefix(tt.state, "PARSE_ERROR")
			if free := set.ContextFree(m.Flag); free != wantFree {
				t.Errorf("ContextFree %v, want %v for a %s flag", free, wantFree, tt.state)
			}
			if wantFree {
				before := testbin.Values(t, reg, "pilotlight_flags_fallback_total")
				got, _ := picker.Pick(context.Background(), m, headerView{httptest.NewRequest("POST", "/functions/demo", strings.NewReader("{}"))}, nil)
				counted := diff(before, testbin.Values(t, reg, "pilotlight_flags_fallback_total"))
				c := set.PickRevision(m, map[string]any{"targetingKey": "someone"})
				if got != c.Revision {
					t.Errorf("picker %s, full evaluation %s", got, c.Revision)
				}
				want := ""
				switch {
				case c.FellBack:
					want = "unknown_revision"
				case c.Variant == "" && c.ErrorCode != "":
					want = strings.ToLower(c.ErrorCode)
				case c.Variant == "":
					want = strings.ToLower(c.Reason)
				}
				if (want == "" && counted != "") || (want != "" && !strings.Contains(counted, `"`+want+`"`)) {
					t.Errorf("fallbacks counted %q, the full evaluation says %q", counted, want)
				}
			}
			const users = 4000
			count := map[string]int{}
			for u := range users {
				req := httptest.NewRequest("POST", "/functions/demo", strings.NewReader("{}"))
				req.Header.Set("X-User-ID", fmt.Sprintf("user-%d", u))
				rev, err := picker.Pick(context.Background(), m, headerView{req}, nil)
				if err != nil {
					t.Fatal(err)
				}
				count[rev]++
			}
			// Staff reach their targeted revision locally (Knative: via the tag URL).
			if strings.Contains(tt.state, "targeted") {
				req := httptest.NewRequest("POST", "/functions/demo", strings.NewReader("{}"))
				req.Header.Set("X-User-ID", "u")
				req.Header.Set("X-User-Email", "ada@pilotlight.dev")
				if rev, _ := picker.Pick(context.Background(), m, headerView{req}, nil); rev == "" {
					t.Error("staff got no revision")
				}
			}

			for rev, pct := range tt.want {
				if knativeShare[rev] != pct {
					t.Errorf("Knative traffic %v, want %v", knativeShare, tt.want)
					break
				}
			}
			if len(knativeShare) != len(tt.want) {
				t.Errorf("Knative traffic %v, want %v", knativeShare, tt.want)
			}
			for rev, n := range count {
				got := 100 * float64(n) / users
				if want := float64(knativeShare[rev]); math.Abs(got-want) > 3 {
					t.Errorf("local router: %s serves %.1f%% of users, the Knative block %.0f%% (local %v, Knative %v)", rev, got, want, count, knativeShare)
				}
			}
			// Deterministic states: every user, not most.
			if len(tt.want) == 1 {
				for rev := range tt.want {
					if count[rev] != users {
						t.Errorf("local router: %v, want all %d users on %s", count, users, rev)
					}
				}
			}
			if got := picker.Weights(m); fmt.Sprint(got) != fmt.Sprint(asInt(knativeShare, got)) {
				t.Errorf("admin weights %v differ from the Knative block %v", got, knativeShare)
			}
		})
	}
}

// asInt reads a percent split in the admin view's type, keeping the keys the
// admin view lists with 0%.
func asInt(split map[string]int64, like map[string]int) map[string]int {
	out := map[string]int{}
	for k := range like {
		out[k] = int(split[k])
	}
	for k, v := range split {
		out[k] = int(v)
	}
	return out
}

// diff names the series that grew from a to b, and by how much.
func diff(a, b map[string]float64) string {
	var out []string
	for k, v := range b {
		if v != a[k] {
			out = append(out, fmt.Sprintf("%s+%g", k, v-a[k]))
		}
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// headerView is a net/http request as the router.RequestView a Picker reads.
type headerView struct{ r *http.Request }

func (v headerView) Header(name string) string { return v.r.Header.Get(name) }

func (v headerView) Cookie(name string) string {
	if c, err := v.r.Cookie(name); err == nil {
		return c.Value
	}
	return ""
}

func (v headerView) EachHeader(f func(name, value string)) {
	for k, vs := range v.r.Header {
		if len(vs) > 0 {
			f(k, vs[0])
		}
	}
}

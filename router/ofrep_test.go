package router_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/router"
	"github.com/pilotlight/pilotlight/router/auth"
)

// ofrepFlags splits demo's traffic by email, a header and a fractional
// bucket, so the context the router builds matters; "greeting" belongs to
// no function, "dark-mode" is disabled.
const ofrepFlags = `{"flags": {
  "demo-revision": {"state": "ENABLED",
    "variants": {"stable": "demo-00001", "canary": "demo-00002"},
    "defaultVariant": "stable",
    "targeting": {"if": [{"ends_with": [{"var": "email"}, "@pilotlight.dev"]}, "canary",
                         {"==": [{"var": "headers.x-tier"}, "gold"]}, "canary",
                         {"fractional": [["stable", 70], ["canary", 30]]}]}},
  "greeting": {"state": "ENABLED", "variants": {"hi": "hello", "yo": "yo"}, "defaultVariant": "hi",
    "metadata": {"owner": "web"}},
  "dark-mode": {"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}}}`

// anyUpstream answers every request 200: the router's pick shows in X-Pilotlight-Revision.
type anyUpstream struct{ url string }

func (b anyUpstream) Acquire(context.Context, string, string) (router.Target, error) {
	return router.Target{BaseURL: b.url, Release: func(bool) {}}, nil
}

type ofrepPlatform struct {
	url          string
	fn           *functions.Manifest
	picker       *router.FlagPicker
	watcher      *flags.Watcher
	flagsPath    string
	all, limited string // keys: every function; only "other"
}

func startOFREP(t *testing.T) *ofrepPlatform {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"outputs":[]}`))
	}))
	t.Cleanup(up.Close)
	fn := &functions.Manifest{Name: "demo", Handler: "tensor", Flag: "demo-revision",
		Revisions: []functions.Revision{{Name: "demo-00001", Tag: "stable"}, {Name: "demo-00002"}},
		Runtime:   functions.Runtime{MaxBodyBytes: 1 << 20}}
	other := &functions.Manifest{Name: "other", Handler: "tensor", Flag: "other-revision",
		Revisions: []functions.Revision{{Name: "other-00001"}}, Runtime: functions.Runtime{MaxBodyBytes: 1 << 20}}
	path := flagFile(t, t.TempDir(), ofrepFlags)
	reg := prometheus.NewRegistry()
	w, err := flags.NewWatcher(flags.WatcherConfig{Path: path, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	picker, err := router.NewFlagPicker(w, path, reg)
	if err != nil {
		t.Fatal(err)
	}
	all, _ := auth.NewKey()
	limited, _ := auth.NewKey()
	keys, err := auth.Parse([]byte(fmt.Sprintf(`{"keys": [{"id": "all", "hash": %q, "functions": ["*"]},
		{"id": "other-only", "hash": %q, "functions": ["other"]}]}`, auth.Sum(all), auth.Sum(limited))), "test")
	if err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(router.Config{Functions: []*functions.Manifest{fn, other}, Backend: anyUpstream{up.URL},
		Picker: picker, Flags: picker, Keys: keys, Registry: reg, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	return &ofrepPlatform{url: serveRouter(t, rt), fn: fn, picker: picker, watcher: w, flagsPath: path, all: all, limited: limited}
}

func (p *ofrepPlatform) ofrep(t *testing.T, key, path, body string, header ...string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", p.url+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// TestOFREPAgreesWithTheRouterFor1000Keys evaluates the function's flag
// for 1,000 targeting keys both ways: the router's pick (the revision that
// served a proxied request) and OFREP with the context the router builds
// for that request, and with the context an application writes by hand
// from the documented attributes. All three must agree on every key.
func TestOFREPAgreesWithTheRouterFor1000Keys(t *testing.T) {
	p := startOFREP(t)
	set := p.watcher.Set()
	counts := map[string]int{}
	for i := range 1000 {
		user := fmt.Sprintf("user-%d", i)
		headers := map[string]string{"X-User-ID": user}
		hand := map[string]any{"targetingKey": user, "function": "demo"}
		if i%13 == 0 {
			headers["X-User-Email"] = user + "@pilotlight.dev"
			hand["email"] = headers["X-User-Email"]
		}
		if i%17 == 0 {
			headers["X-Tier"] = "gold"
			hand["headers"] = map[string]any{"x-tier": "gold"}
		}
		req, _ := http.NewRequest("POST", p.url+"/v2/models/demo/infer", strings.NewReader(inferBody))
		req.Header.Set("Authorization", "Bearer "+p.all)
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		picked := resp.Header.Get("X-Pilotlight-Revision")
		if resp.StatusCode != 200 || picked == "" {
			t.Fatalf("%s: status %d, revision %q", user, resp.StatusCode, picked)
		}
		counts[picked]++

		built := p.picker.EvaluationContext(p.fn, req, []byte(inferBody))
		for name, ctx := range map[string]map[string]any{"router's context": built, "hand-written context": hand} {
			body, _ := json.Marshal(map[string]any{"context": ctx})
			status, _, raw := p.ofrep(t, p.all, "/ofrep/v1/evaluate/flags/demo-revision", string(body))
			var ans flags.OFREPEvaluation
			if err := json.Unmarshal(raw, &ans); status != 200 || err != nil {
				t.Fatalf("%s, %s: OFREP %d %s", user, name, status, raw)
			}
			value, _ := ans.Value.(string)
			if rev, _, _ := set.ServingRevision(p.fn, value); rev != picked {
				t.Fatalf("%s, %s: OFREP says %q (variant %s, %s), the router picked %s", user, name, value, ans.Variant, ans.Reason, picked)
			}
		}
	}
	// Both revisions must get real shares, or agreement proves nothing.
	if counts["demo-00001"] < 400 || counts["demo-00002"] < 200 {
		t.Fatalf("split %v: expected about 65/35", counts)
	}
}

func TestOFREPAnswers(t *testing.T) {
	p := startOFREP(t)
	decode := func(t *testing.T, raw []byte) map[string]any {
		t.Helper()
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("not JSON: %s", raw)
		}
		return m
	}
	const one = "/ofrep/v1/evaluate/flags/"
	cases := []struct {
		name, key, path, body string
		status                int
		want                  map[string]any // fields that must be equal
		absent                []string
	}{
		{"static flag", p.all, one + "greeting", `{"context": {"targetingKey": "u1"}}`, 200,
			map[string]any{"key": "greeting", "value": "hello", "variant": "hi", "reason": "STATIC", "metadata": map[string]any{"owner": "web"}}, []string{"errorCode"}},
		{"no body is an empty context", p.all, one + "greeting", ``, 200, map[string]any{"value": "hello"}, nil},
		{"disabled: the code default, no value", p.all, one + "dark-mode", `{"context": {}}`, 200,
			map[string]any{"key": "dark-mode", "reason": "DISABLED"}, []string{"value", "variant"}},
		{"targeting match", p.all, one + "demo-revision", `{"context": {"targetingKey": "u", "email": "a@pilotlight.dev"}}`, 200,
			map[string]any{"value": "demo-00002", "variant": "canary", "reason": "TARGETING_MATCH"}, nil},
		{"unknown flag", p.all, one + "nope", `{"context": {}}`, 404,
			map[string]any{"key": "nope", "errorCode": "FLAG_NOT_FOUND", "error": `flag "nope" not found`}, []string{"value"}},
		{"a flag of a function the key may not call is not found", p.limited, one + "demo-revision", `{"context": {}}`, 404,
			map[string]any{"key": "demo-revision", "errorCode": "FLAG_NOT_FOUND", "error": `flag "demo-revision" not found`}, nil},
		{"a flag of no function is not found for a limited key", p.limited, one + "greeting", `{}`, 404,
			map[string]any{"errorCode": "FLAG_NOT_FOUND"}, nil},
		{"body not JSON", p.all, one + "greeting", `{"context":`, 400,
			map[string]any{"key": "greeting", "errorCode": "INVALID_CONTEXT"}, nil},
		{"context not an object", p.all, one + "greeting", `{"context": [1]}`, 400,
			map[string]any{"errorCode": "INVALID_CONTEXT", "error": `"context" must be a JSON object of attributes`}, nil},
		{"targetingKey not a string", p.all, one + "greeting", `{"context": {"targetingKey": 7}}`, 400,
			map[string]any{"errorCode": "INVALID_CONTEXT", "error": `"context.targetingKey" must be a string, not a number`}, nil},
		{"bulk context not an object", p.all, "/ofrep/v1/evaluate/flags", `{"context": "u1"}`, 400,
			map[string]any{"errorCode": "INVALID_CONTEXT"}, []string{"key"}},
		{"no key", "", one + "greeting", `{}`, 401, map[string]any{"error": "missing API key: send Authorization: Bearer <key> or X-API-Key: <key>"}, nil},
		{"wrong key", "pl_" + strings.Repeat("x", 43), one + "greeting", `{}`, 401, map[string]any{"error": "invalid API key"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, h, raw := p.ofrep(t, c.key, c.path, c.body)
			if status != c.status {
				t.Fatalf("status %d, want %d: %s", status, c.status, raw)
			}
			if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Fatalf("Content-Type %q", ct)
			}
			got := decode(t, raw)
			for k, v := range c.want {
				if fmt.Sprint(got[k]) != fmt.Sprint(v) {
					t.Errorf("%s = %v, want %v (body %s)", k, got[k], v, raw)
				}
			}
			for _, k := range c.absent {
				if _, ok := got[k]; ok {
					t.Errorf("%s present: %s", k, raw)
				}
			}
		})
	}
	// A limited key's 404 for a flag it may not see is byte for byte a missing flag's.
	_, _, hidden := p.ofrep(t, p.limited, one+"demo-revision", `{}`)
	_, _, missing := p.ofrep(t, p.limited, one+"demo-revisionX", `{}`)
	if string(hidden) != strings.ReplaceAll(string(missing), "demo-revisionX", "demo-revision") {
		t.Fatalf("hidden %s, missing %s", hidden, missing)
	}
}

func TestOFREPBulkETag(t *testing.T) {
	p := startOFREP(t)
	const bulk = "/ofrep/v1/evaluate/flags"
	ctx := `{"context": {"targetingKey": "user-1", "email": "a@pilotlight.dev"}}`
	status, h, raw := p.ofrep(t, p.all, bulk, ctx)
	if status != 200 {
		t.Fatalf("bulk %d %s", status, raw)
	}
	var got flags.OFREPBulk
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	byKey := map[string]flags.OFREPEvaluation{}
	for _, e := range got.Flags {
		byKey[e.Key] = e
	}
	if len(got.Flags) != 3 || byKey["demo-revision"].Value != "demo-00002" || byKey["greeting"].Value != "hello" || byKey["dark-mode"].Value != nil {
		t.Fatalf("bulk %s", raw)
	}
	etag := h.Get("ETag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	// The same context and flags: 304, no body. Another context: 200.
	if status, _, raw := p.ofrep(t, p.all, bulk, ctx, "If-None-Match", etag); status != 304 || len(raw) != 0 {
		t.Fatalf("If-None-Match with the same tag: %d %q", status, raw)
	}
	stable := ""
	for i := 0; stable == ""; i++ {
		if k := fmt.Sprintf("user-%d", i); p.watcher.Set().Evaluate("demo-revision", map[string]any{"targetingKey": k}).Variant == "stable" {
			stable = k
		}
	}
	if status, _, _ := p.ofrep(t, p.all, bulk, `{"context": {"targetingKey": "`+stable+`"}}`, "If-None-Match", etag); status != 200 {
		t.Fatalf("a context with another answer got %d", status)
	}
	// A limited key sees only its functions' flags (none of the file's here).
	if status, _, raw := p.ofrep(t, p.limited, bulk, ctx); status != 200 || string(raw) != `{"flags":[]}` {
		t.Fatalf("limited key's bulk: %d %s", status, raw)
	}
	// The flags change: the old tag no longer matches.
	if err := os.WriteFile(p.flagsPath, []byte(strings.Replace(ofrepFlags, `"hello"`, `"hello there"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	p.watcher.ReloadNow()
	status, h, raw = p.ofrep(t, p.all, bulk, ctx, "If-None-Match", etag)
	if status != 200 || h.Get("ETag") == etag || !strings.Contains(string(raw), "hello there") {
		t.Fatalf("after a flag change: %d %s %s", status, h.Get("ETag"), raw)
	}
}

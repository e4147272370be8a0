package router

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/testbin"
)

// TestPickPathsAgree: the picker answers the same through OpenFeature's
// SDK (taken when a hook such as tracing watches evaluations) and through
// the provider directly (otherwise), and the same from a net/http request
// and from the fast path's header read in place — for targeted, header-
// reading, fractional, missing, mistyped, static, disabled and unparseable
// flags (the last four answered without a context on the provider path).
func TestPickPathsAgree(t *testing.T) {
	const file = `{"flags": {
	  "demo-revision": {"state": "ENABLED", "variants": {"stable": "demo-00001", "canary": "demo-00002", "ghost": "demo-00009"}, "defaultVariant": "stable",
	    "targeting": {"if": [{"$ref": "staff"}, "canary",
	                         {"==": [{"var": "headers.x-beta"}, "yes"]}, "ghost",
	                         {"fractional": [["stable", 60], ["canary", 40]]}]}},
	  "typed-revision": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on", "targeting": {"if": [{"var": "email"}, "on", null]}},
	  "static-revision": {"state": "ENABLED", "variants": {"canary": "demo-00002"}, "defaultVariant": "canary"},
	  "off-revision": {"state": "DISABLED", "variants": {"canary": "demo-00002"}, "defaultVariant": "canary"},
	  "typed-static-revision": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"},
	  "broken-revision": {"state": "ENABLED", "variants": {"canary": "demo-00002"}, "defaultVariant": "canary", "targeting": {"if": [{"$ref": "nobody"}, "canary", null]}}
	}, "$evaluators": {"staff": {"ends_with": [{"var": "email"}, "@pilotlight.dev"]}}}`
	dir := t.TempDir()
	path := filepath.Join(dir, "flags.json")
	if err := os.WriteFile(path, []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := flags.NewWatcher(flags.WatcherConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	direct, err := NewFlagPicker(w, path, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	viaSDK, err := NewFlagPicker(w, path, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	viaSDK.hooked.Store(true)
	fast, err := NewFlagPicker(w, path, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	fns := map[string]*functions.Manifest{}
	for _, flag := range []string{"demo-revision", "typed-revision", "absent-revision", "static-revision", "off-revision", "typed-static-revision", "broken-revision"} {
		fns[flag] = &functions.Manifest{Name: "demo", Flag: flag, Revisions: []functions.Revision{{Name: "demo-00001", Tag: "stable"}, {Name: "demo-00002"}}}
	}
	seen := map[string]bool{}
	for i := 0; i < 300; i++ {
		hdrs := map[string]string{"X-User-ID": fmt.Sprintf("user-%d", i)}
		switch i % 5 {
		case 1:
			hdrs["X-User-Email"] = "ada@pilotlight.dev"
		case 2:
			hdrs["X-Beta"] = "yes"
		case 3:
			delete(hdrs, "X-User-ID")
			hdrs["Cookie"] = fmt.Sprintf("pl_uid=cookie-%d", i)
		}
		for flag, fn := range fns {
			r := httptest.NewRequest("POST", "/functions/demo", strings.NewReader("{}"))
			var fh fasthttp.RequestHeader
			fh.SetMethod("POST")
			fh.SetRequestURI("/functions/demo")
			for k, v := range hdrs {
				r.Header.Set(k, v)
				fh.Set(k, v)
			}
			a, _ := direct.Pick(context.Background(), fn, httpView{r}, nil)
			b, _ := viaSDK.Pick(context.Background(), fn, httpView{r}, nil)
			c, _ := fast.Pick(context.Background(), fn, fastView{&fh}, nil)
			if a != b || a != c {
				t.Fatalf("%s, user %d %v: provider %s, SDK %s, fast path %s", flag, i, hdrs, a, b, c)
			}
			seen[flag+"/"+a] = true
		}
	}
	for _, want := range []string{"demo-revision/demo-00001", "demo-revision/demo-00002", "typed-revision/demo-00001", "absent-revision/demo-00001",
		"static-revision/demo-00002", "off-revision/demo-00001", "typed-static-revision/demo-00001", "broken-revision/demo-00001"} {
		if !seen[want] {
			t.Errorf("no request answered %s; seen %v", want, seen)
		}
	}
	d, s, f := values(t, direct.fallbacks), values(t, viaSDK.fallbacks), values(t, fast.fallbacks)
	if len(d) == 0 || fmt.Sprint(d) != fmt.Sprint(s) || fmt.Sprint(d) != fmt.Sprint(f) {
		t.Errorf("fallbacks: provider path %v, SDK path %v, fast path %v (want equal, and some)", d, s, f)
	}
}

// values reads a counter vector's series by their labels.
func values(t *testing.T, c *prometheus.CounterVec) map[string]float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	return testbin.Values(t, reg, "pilotlight_flags_fallback_total")
}

package admin_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/admin"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/router"
	"github.com/pilotlight/pilotlight/router/auth"
)

type group struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// TestPrometheusTargets: the discovery answers Prometheus's http_sd format
// open on the admin listener while the rest of /admin needs an admin key,
// follows the list it is given, filters by role, and refuses what it does
// not understand with a 400 that says so.
func TestPrometheusTargets(t *testing.T) {
	const opsKey = "ops-key-0123456789abcdef0123456789"
	keys, err := auth.Parse([]byte("keys:\n  - id: ops\n    hash: "+auth.Sum(opsKey)+"\n    admin: true\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	fns := []*functions.Manifest{fraudManifest()}
	rt, err := router.New(router.Config{Functions: fns, Backend: unreachable{}, Registry: reg, Logger: testbin.QuietLogger(), Keys: keys, SeparateAdmin: true})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var live []admin.ScrapeTarget
	set := func(ts ...admin.ScrapeTarget) { mu.Lock(); live = ts; mu.Unlock() }
	admin.Mount(rt, admin.Config{Functions: fns, Gatherer: reg, Targets: func() []admin.ScrapeTarget {
		mu.Lock()
		defer mu.Unlock()
		return append([]admin.ScrapeTarget(nil), live...)
	}})
	main := httptest.NewServer(rt.Handler())
	t.Cleanup(main.Close)
	adm := httptest.NewServer(rt.AdminHandler())
	t.Cleanup(adm.Close)
	admHost := strings.TrimPrefix(adm.URL, "http://")

	get := func(base, path, key string) (int, string, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), b
	}
	discover := func(query string) []group {
		t.Helper()
		code, ctype, b := get(adm.URL, admin.TargetsPath+query, "")
		if code != http.StatusOK || !strings.HasPrefix(ctype, "application/json") {
			t.Fatalf("GET %s%s without a key on the admin listener: %d %s %s, want 200 JSON", admin.TargetsPath, query, code, ctype, b)
		}
		var gs []group
		if err := json.Unmarshal(b, &gs); err != nil {
			t.Fatalf("not http_sd JSON (a list of target groups): %v: %s", err, b)
		}
		return gs
	}
	router := group{Targets: []string{admHost}, Labels: map[string]string{"__meta_pilotlight_role": "router"}}

	// Nothing running: the router alone, at the address the request reached.
	if got := discover(""); !reflect.DeepEqual(got, []group{router}) {
		t.Errorf("no processes: %+v, want the router alone %+v", got, router)
	}
	// An idle pool process, then an instance beside it.
	set(admin.ScrapeTarget{Addr: "127.0.0.1:40001", PID: 101})
	pool := group{Targets: []string{"127.0.0.1:40001"}, Labels: map[string]string{"__meta_pilotlight_role": "pool", "pid": "101"}}
	if got := discover(""); !reflect.DeepEqual(got, []group{router, pool}) {
		t.Errorf("one pool process: %+v", got)
	}
	set(admin.ScrapeTarget{Addr: "127.0.0.1:40002", PID: 102, Function: "fraud", Revision: "fraud-00002"}, admin.ScrapeTarget{Addr: "127.0.0.1:40001", PID: 101})
	inst := group{Targets: []string{"127.0.0.1:40002"}, Labels: map[string]string{"__meta_pilotlight_role": "instance", "function": "fraud", "revision": "fraud-00002", "pid": "102"}}
	if got := discover(""); !reflect.DeepEqual(got, []group{router, inst, pool}) {
		t.Errorf("an instance and a pool process: %+v", got)
	}
	for q, want := range map[string][]group{
		"?role=router":                 {router},
		"?role=instance":               {inst},
		"?role=instance,pool":          {inst, pool},
		"?role=pool&role=router":       {router, pool},
		"?role=router,%20instance":     {router, inst},
		"?role=instance&role=instance": {inst},
	} {
		if got := discover(q); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: %+v, want %+v", q, got, want)
		}
	}
	// A shared process is one instance target, without function labels
	// (its series carry each revision's).
	set(admin.ScrapeTarget{Addr: "127.0.0.1:40003", PID: 103, Shared: true}, admin.ScrapeTarget{Addr: "127.0.0.1:40001", PID: 101})
	shared := group{Targets: []string{"127.0.0.1:40003"}, Labels: map[string]string{"__meta_pilotlight_role": "instance", "isolation": "shared", "pid": "103"}}
	if got := discover("?role=instance"); !reflect.DeepEqual(got, []group{shared}) {
		t.Errorf("a shared process: %+v, want %+v", got, shared)
	}
	// The instance scaled to zero: gone from the next answer.
	set(admin.ScrapeTarget{Addr: "127.0.0.1:40001", PID: 101})
	if got := discover("?role=instance"); len(got) != 0 {
		t.Errorf("after the instance went away, role=instance lists %+v", got)
	}
	if _, _, b := get(adm.URL, admin.TargetsPath+"?role=instance", ""); strings.TrimSpace(string(b)) != "[]" {
		t.Errorf("no targets must be an empty list (Prometheus refuses null), got %s", b)
	}

	for _, bad := range []struct{ query, msg string }{
		{"?role=instances", `unknown role "instances"`},
		{"?role=", `unknown role ""`},
		{"?role=router,", `unknown role ""`},
		{"?function=fraud", `unknown query parameter "function"`},
	} {
		code, ctype, b := get(adm.URL, admin.TargetsPath+bad.query, "")
		var out map[string]string
		_ = json.Unmarshal(b, &out)
		if code != http.StatusBadRequest || !strings.HasPrefix(ctype, "application/json") || !strings.Contains(out["error"], bad.msg) {
			t.Errorf("%s: %d %s %s, want 400 {\"error\"} saying %s", bad.query, code, ctype, b, bad.msg)
		}
	}

	// The rest of /admin still needs the admin key on the same listener.
	if code, _, _ := get(adm.URL, "/admin/functions", ""); code != http.StatusUnauthorized {
		t.Errorf("/admin/functions without a key on the admin listener: %d, want 401", code)
	}
	// The discovery is not on the public listener at all.
	if code, _, _ := get(main.URL, admin.TargetsPath, opsKey); code != http.StatusNotFound {
		t.Errorf("discovery on the public listener with an admin key: %d, want 404 (it lives on --admin-addr)", code)
	}
}

// TestPrometheusTargetsOnTheMainListener: without an admin listener the
// discovery sits beside /metrics on the public port, behind the same
// admin key (Prometheus sends it with http_sd_configs' authorization).
func TestPrometheusTargetsOnTheMainListener(t *testing.T) {
	const opsKey = "ops-key-0123456789abcdef0123456789"
	const clientKey = "client-key-0123456789abcdef012345"
	keys, err := auth.Parse([]byte("keys:\n  - id: ops\n    hash: "+auth.Sum(opsKey)+"\n    admin: true\n  - id: client\n    hash: "+auth.Sum(clientKey)+"\n    functions: [fraud]\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	fns := []*functions.Manifest{fraudManifest()}
	rt, err := router.New(router.Config{Functions: fns, Backend: unreachable{}, Registry: reg, Logger: testbin.QuietLogger(), Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	admin.Mount(rt, admin.Config{Functions: fns, Gatherer: reg})
	main := httptest.NewServer(rt.Handler())
	t.Cleanup(main.Close)
	for _, c := range []struct {
		key  string
		want int
	}{{"", http.StatusUnauthorized}, {clientKey, http.StatusForbidden}, {opsKey, http.StatusOK}} {
		req, _ := http.NewRequest(http.MethodGet, main.URL+admin.TargetsPath, nil)
		if c.key != "" {
			req.Header.Set("Authorization", "Bearer "+c.key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("key %q: %d %s, want %d", c.key, resp.StatusCode, b, c.want)
		}
	}
}

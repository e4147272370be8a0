package router_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/admin"
	"github.com/pilotlight/pilotlight/engine"
	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/rollout"
	"github.com/pilotlight/pilotlight/router"
)

// twoRevisions writes a function whose two revisions serve the
// example-tensor model (the second optionally a model that fails), so
// flags and rollouts have something real to split.
func twoRevisions(t *testing.T, root, name string, canaryFails bool) *functions.Manifest {
	t.Helper()
	dir := filepath.Join(root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	model, err := os.ReadFile(filepath.Join(testbin.Root(), "functions", "example-tensor", "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	canary := model
	if canaryFails {
		canary = []byte("this revision was built to fail: not an ONNX model")
	}
	os.WriteFile(filepath.Join(dir, "a.onnx"), model, 0o644)
	os.WriteFile(filepath.Join(dir, "b.onnx"), canary, 0o644)
	raw := fmt.Sprintf("name: %s\nhandler: tensor\nrevisions:\n  - name: %s-00001\n    model: a.onnx\n    tag: stable\n  - name: %s-00002\n    model: b.onnx\n    tag: canary\nscaling:\n  maxScale: 2\n", name, name, name)
	m := testbin.WriteFunction(t, dir, raw)
	if err := m.CheckModels(); err != nil {
		t.Fatal(err)
	}
	return m
}

func flagFile(t testing.TB, dir, doc string) string {
	t.Helper()
	p := filepath.Join(dir, "flags.json")
	if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

type flagPlatform struct {
	*platform
	reg      *prometheus.Registry
	rollouts *rollout.Controller
	shadow   *rollout.Shadower
	watcher  *flags.Watcher
	grpcAddr string // the router's h2c listener for gRPC
}

// startFlagPlatform runs engine, flag watcher, picker, rollout controller and router, as serve does.
func startFlagPlatform(t testing.TB, fns []*functions.Manifest, flagsPath string) *flagPlatform {
	t.Helper()
	reg := prometheus.NewRegistry()
	eng, w, picker := flagPicking(t, fns, flagsPath, reg)
	b := engine.Backend{Engine: eng}
	shadow, err := rollout.NewShadower(rollout.ShadowConfig{Functions: fns, Backend: b, Registerer: reg, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctl := rollout.New(rollout.Config{FlagsPath: flagsPath, Functions: fns, Gatherer: reg, Registerer: reg, Logger: quietLogger(), Shadow: shadow, Scaler: eng, Reload: w.ReloadNow})
	rt, err := router.New(router.Config{Functions: fns, Backend: b, Picker: picker, Registry: reg, Logger: quietLogger(), Shadow: shadow})
	if err != nil {
		t.Fatal(err)
	}
	admin.Mount(rt, admin.Config{Functions: fns, Picker: picker, Source: b, Rollouts: ctl, Gatherer: reg})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- eng.Run(ctx) }()
	go func() { done <- w.Run(ctx) }()
	ts := newTestServer(rt.Handler())
	grpcAddr := strings.TrimPrefix(serveRouter(t, rt), "http://")
	t.Cleanup(func() {
		ctl.Close()
		shadow.Close()
		ts.Close()
		rt.Close()
		cancel()
		<-done
		<-done
	})
	return &flagPlatform{platform: &platform{url: ts.URL, eng: eng}, grpcAddr: grpcAddr, reg: reg, rollouts: ctl, shadow: shadow, watcher: w}
}

// flagPicking builds what picks a revision by flag, as serve does: an
// engine (child processes from the real binary), a watcher on flagsPath and
// the picker reading it. The caller runs the engine and, if it wants
// reloads, the watcher.
func flagPicking(t testing.TB, fns []*functions.Manifest, flagsPath string, reg *prometheus.Registry) (*engine.Engine, *flags.Watcher, *router.FlagPicker) {
	t.Helper()
	eng, err := engine.New(engine.Config{Functions: fns, PoolSize: 1, Binary: testbin.Runtime(t), Registerer: reg, Logger: quietLogger(), TickInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w, err := flags.NewWatcher(flags.WatcherConfig{Path: flagsPath, Registerer: reg, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	picker, err := router.NewFlagPicker(w, flagsPath, reg)
	if err != nil {
		t.Fatal(err)
	}
	return eng, w, picker
}

const splitFlags = `{"flags": {"demo-revision": {"state": "ENABLED",
  "variants": {"stable": "demo-00001", "canary": "demo-00002", "ghost": "demo-00009"},
  "defaultVariant": "stable",
  "targeting": {"if": [{"ends_with": [{"var": "email"}, "@pilotlight.dev"]}, "canary",
                       {"==": [{"var": "region"}, "atlantis"]}, "ghost",
                       {"fractional": [["stable", 90], ["canary", 10]]}]}}}}`

func revisionFor(t *testing.T, client *http.Client, url string, headers map[string]string) string {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(inferBody))
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	return testbin.DoOK(t, client, req).Header.Get("X-Pilotlight-Revision")
}

func TestFlagSplitsUsersStickilyThroughThePlatform(t *testing.T) {
	dir := t.TempDir()
	m := twoRevisions(t, dir, "demo", false)
	path := flagFile(t, dir, splitFlags)
	p := startFlagPlatform(t, []*functions.Manifest{m}, path)
	url := p.url + "/v2/models/demo/infer"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}

	const users = 10000
	assigned := make([]string, users)
	var wg sync.WaitGroup
	work := make(chan int)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for u := range work {
				assigned[u] = revisionFor(t, client, url, map[string]string{"X-User-ID": fmt.Sprintf("user-%d", u)})
			}
		}()
	}
	for u := 0; u < users; u++ {
		work <- u
	}
	close(work)
	wg.Wait()
	canary := 0
	for _, rev := range assigned {
		if rev == "demo-00002" {
			canary++
		}
	}
	share := 100 * float64(canary) / users
	if share < 10-1.5 || share > 10+1.5 {
		t.Fatalf("canary share %.2f%% of %d users, want 10 ± 1.5", share, users)
	}
	// Sticky across repeats and across a reload of the same flags (a rewrite).
	p.rewrite(t, path, splitFlags+"\n", flags.ReloadSuccess)
	for u := 0; u < users; u += 10 {
		if got := revisionFor(t, client, url, map[string]string{"X-User-ID": fmt.Sprintf("user-%d", u)}); got != assigned[u] {
			t.Fatalf("user-%d moved from %s to %s", u, assigned[u], got)
		}
	}
	// Targeting: internal testers get the canary; a variant naming a missing revision never gets traffic.
	if got := revisionFor(t, client, url, map[string]string{"X-User-ID": "user-1", "X-User-Email": "ana@pilotlight.dev"}); got != "demo-00002" {
		t.Errorf("internal tester served by %s", got)
	}
	if got := revisionFor(t, client, url, map[string]string{"X-User-ID": "user-1", "X-Region": "atlantis"}); got != "demo-00001" {
		t.Errorf("a variant naming a missing revision: served by %s, want the default variant's demo-00001", got)
	}
	if n := testbin.Metric(t, p.reg, "pilotlight_flags_fallback_total", map[string]string{"function": "demo", "reason": "unknown_revision"}); n != 1 {
		t.Errorf("fallbacks counted %v, want 1", n)
	}
	// An invalid change is refused and the last good flags stay; so does a deleted file.
	p.rewrite(t, path, `{"flags": {"demo-revision": {"state": "ENABLED", "variants": `, flags.ReloadError)
	p.remove(t, path)
	for u := 0; u < 200; u++ {
		if got := revisionFor(t, client, url, map[string]string{"X-User-ID": fmt.Sprintf("user-%d", u)}); got != assigned[u] {
			t.Fatalf("after a bad write and a delete, user-%d moved from %s to %s", u, assigned[u], got)
		}
	}
	// The canary grows from 10% to 25%: every canary user stays on the
	// canary (flagd's buckets are ordered ranges, the canary's last), and
	// about 15% of the others join them.
	p.rewrite(t, path, strings.Replace(splitFlags, `[["stable", 90], ["canary", 10]]`, `[["stable", 75], ["canary", 25]]`, 1), flags.ReloadSuccess)
	grown := 0
	for u := 0; u < users; u++ {
		got := revisionFor(t, client, url, map[string]string{"X-User-ID": fmt.Sprintf("user-%d", u)})
		if assigned[u] == "demo-00002" && got != "demo-00002" {
			t.Fatalf("user-%d was on the canary at 10%% and moved to %s at 25%%", u, got)
		}
		if got == "demo-00002" {
			grown++
		}
	}
	if share := 100 * float64(grown) / users; share < 25-1.5 || share > 25+1.5 {
		t.Errorf("canary share %.2f%% at weight 25, want 25 ± 1.5", share)
	}
	// A valid change is served once reloaded: everyone to stable.
	p.rewrite(t, path, strings.Replace(splitFlags, `["canary", 10]`, `["canary", 0]`, 1), flags.ReloadSuccess)
	for u := 0; u < users; u += 10 {
		if got := revisionFor(t, client, url, map[string]string{"X-User-ID": fmt.Sprintf("user-%d", u)}); got != "demo-00001" {
			t.Fatalf("after the canary's weight went to 0, user-%d is on %s", u, got)
		}
	}
}

// reloads reads pilotlight_flags_reload_total{result}.
func (p *flagPlatform) reloads(t *testing.T, result string) float64 {
	t.Helper()
	return testbin.Metric(t, p.reg, "pilotlight_flags_reload_total", map[string]string{"result": result})
}

// rewrite writes doc to path in place and waits (bounded) until the watcher
// has reloaded it with the given result.
func (p *flagPlatform) rewrite(t *testing.T, path, doc, result string) {
	t.Helper()
	before := p.reloads(t, result)
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	testbin.WaitFor(t, "a flag reload with result "+result, 5*time.Second, func() bool { return p.reloads(t, result) > before })
}

// remove deletes the flag file and waits until the watcher has seen it go.
func (p *flagPlatform) remove(t *testing.T, path string) {
	t.Helper()
	before := p.reloads(t, flags.ReloadMissing)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	testbin.WaitFor(t, "the watcher to see the flag file gone", 5*time.Second, func() bool { return p.reloads(t, flags.ReloadMissing) > before })
}

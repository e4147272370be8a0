package flags

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// versionFile is a valid flag file whose fraud-revision defaults to variant.
func versionFile(variant string) []byte {
	return fmt.Appendf(nil, `{"flags": {"fraud-revision": {"state": "ENABLED",
		"variants": {"stable": "fraud-00001", "canary": "fraud-00002"}, "defaultVariant": %q}}}`, variant)
}

type watchRig struct {
	t       *testing.T
	path    string
	w       *Watcher
	reg     *prometheus.Registry
	logs    *testbin.SyncBuffer
	changes chan []string
}

func startWatcher(t *testing.T) *watchRig {
	t.Helper()
	dir := t.TempDir()
	r := &watchRig{t: t, path: filepath.Join(dir, "flags.json"), reg: prometheus.NewRegistry(), logs: &testbin.SyncBuffer{}, changes: make(chan []string, 16)}
	if err := os.WriteFile(r.path, versionFile("stable"), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := NewWatcher(WatcherConfig{Path: r.path, Registerer: r.reg, Logger: slog.New(slog.NewTextHandler(r.logs, nil)),
		OnChange: func(_ *Set, changed []string) { r.changes <- changed }})
	if err != nil {
		t.Fatal(err)
	}
	r.w = w
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	select { // Run watches the directory from here on
	case <-w.watching:
	case <-time.After(5 * time.Second):
		t.Fatal("the watcher did not start watching")
	}
	return r
}

func (r *watchRig) current() string {
	return r.w.Set().Evaluate("fraud-revision", nil).Variant
}

// waitBound only stops a test that would hang: how fast a reload is, is
// for benchmarks, not for tests on a shared machine.
const waitBound = 10 * time.Second

// waitFor polls until the current default variant is want and reports how
// long it took.
func (r *watchRig) waitFor(want string) time.Duration {
	r.t.Helper()
	start := time.Now()
	for time.Since(start) < waitBound {
		if r.current() == want {
			return time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.t.Fatalf("flags still say %q after %s, want %q", r.current(), waitBound, want)
	return 0
}

func (r *watchRig) count(result string) float64 {
	return testutil.ToFloat64(r.w.reloads.WithLabelValues(result))
}

// eventually waits (bounded) for the reload counter to reach n.
func (r *watchRig) eventually(result string, n float64) {
	r.t.Helper()
	deadline := time.Now().Add(waitBound)
	for time.Now().Before(deadline) && r.count(result) < n {
		time.Sleep(5 * time.Millisecond)
	}
	if got := r.count(result); got != n {
		r.t.Fatalf("pilotlight_flags_reload_total{result=%q} = %v, want %v", result, got, n)
	}
}

func atomicWrite(t *testing.T, path string, raw []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestWatcherReloadsInPlaceWrite(t *testing.T) {
	r := startWatcher(t)
	if r.current() != "stable" || r.count(ReloadSuccess) != 1 {
		t.Fatalf("start: %s, %v successes", r.current(), r.count(ReloadSuccess))
	}
	version := r.w.Set().Version()
	if err := os.WriteFile(r.path, versionFile("canary"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("change seen after %v", r.waitFor("canary"))
	if r.w.Set().Version() == version {
		t.Error("version did not change")
	}
	select {
	case changed := <-r.changes:
		if len(changed) != 1 || changed[0] != "fraud-revision" {
			t.Errorf("OnChange got %v", changed)
		}
	case <-time.After(waitBound):
		t.Error("OnChange not called")
	}
	r.eventually(ReloadSuccess, 2)
}

func TestWatcherReloadsAtomicRename(t *testing.T) {
	r := startWatcher(t)
	atomicWrite(t, r.path, versionFile("canary"))
	r.waitFor("canary")
	atomicWrite(t, r.path, versionFile("stable"))
	r.waitFor("stable")
}

func TestWatcherRejectsInvalidFile(t *testing.T) {
	r := startWatcher(t)
	atomicWrite(t, r.path, []byte(`{"flags": {"fraud-revision": {"state": "ENABLED", "variants": {"stable": "fraud-00001"}, "defaultVariant": "canary"}}}`))
	r.eventually(ReloadError, 1)
	if r.current() != "stable" {
		t.Errorf("invalid file replaced the flags: %s", r.current())
	}
	if !bytes.Contains([]byte(r.logs.String()), []byte("$.flags.fraud-revision.defaultVariant")) {
		t.Errorf("the log does not name the problem: %s", r.logs.String())
	}
	atomicWrite(t, r.path, []byte(`{"flags": `)) // malformed
	r.eventually(ReloadError, 2)
	// A good file afterwards is taken.
	atomicWrite(t, r.path, versionFile("canary"))
	r.waitFor("canary")
	// The metric is on the registry passed in.
	if n, err := testutil.GatherAndCount(r.reg, "pilotlight_flags_reload_total"); err != nil || n != 3 {
		t.Errorf("registry has %d series (%v), want 3", n, err)
	}
}

func TestWatcherKeepsFlagsWhenFileRemoved(t *testing.T) {
	r := startWatcher(t)
	if err := os.Remove(r.path); err != nil {
		t.Fatal(err)
	}
	r.eventually(ReloadMissing, 1)
	if r.current() != "stable" {
		t.Errorf("flags lost with the file: %q", r.current())
	}
	// The file comes back (recreated, as a deploy would).
	if err := os.WriteFile(r.path, versionFile("canary"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.waitFor("canary")
}

// Writers race: many rapid replacements. An atomic rename never exposes a
// half-written file, so rename-only writes must cause zero reload errors (a
// torn read would be one: it cannot show as a wrong value, since every
// complete version holds one of the two). In-place writes may be read torn;
// then the last good flags stay, and the watcher ends on the last content.
func TestWatcherWriteThenRenameRace(t *testing.T) {
	r := startWatcher(t)
	for i := range 40 {
		atomicWrite(t, r.path, versionFile([]string{"stable", "canary"}[i%2]))
		time.Sleep(time.Duration(i%4) * time.Millisecond) // vary the spacing against the debounce
	}
	atomicWrite(t, r.path, versionFile("canary"))
	r.waitFor("canary")
	if n := r.count(ReloadError); n != 0 {
		t.Errorf("%v reload errors for rename-only writes, want 0 (a torn read)", n)
	}
	renamed := r.count(ReloadSuccess)
	if renamed > 30 {
		t.Errorf("%v reloads for 41 writes: not debounced", renamed)
	}

	for i := range 40 {
		variant := []string{"stable", "canary"}[i%2]
		if i%3 == 0 {
			if err := os.WriteFile(r.path, versionFile(variant), 0o644); err != nil {
				t.Fatal(err)
			}
		} else {
			atomicWrite(t, r.path, versionFile(variant))
		}
		if v := r.current(); v != "stable" && v != "canary" {
			t.Fatalf("served %q", v)
		}
		time.Sleep(time.Duration(i%4) * time.Millisecond)
	}
	atomicWrite(t, r.path, versionFile("stable"))
	r.waitFor("stable")
	if n := r.count(ReloadSuccess) + r.count(ReloadError) - renamed; n > 30 {
		t.Errorf("%v reloads for 41 writes: not debounced", n)
	}
}

// TestWatcherLogsWarningsOncePerVersion: a file flagd loads with oddities
// is served, and each warning is logged once for that version of the file,
// however often the same bytes are written again.
func TestWatcherLogsWarningsOncePerVersion(t *testing.T) {
	r := startWatcher(t)
	odd := []byte(`{"flags": {"fraud-revision": {"state": "ENABLED", "variants": {"stable": "fraud-00001", "canary": "fraud-00002"},
		"defaultVariant": "canary", "targeting": {"fractional": [["stable", -5], ["canary", 0]]}}}}`)
	atomicWrite(t, r.path, odd)
	r.waitFor("canary")
	for range 3 { // the same bytes again: reloaded, not re-warned
		before := r.count(ReloadSuccess)
		atomicWrite(t, r.path, odd)
		r.eventually(ReloadSuccess, before+1)
	}
	logs := r.logs.String()
	for _, want := range []string{"weight -5 is negative", "all weights are 0"} {
		if n := strings.Count(logs, want); n != 1 {
			t.Errorf("warning %q logged %d times, want once:\n%s", want, n, logs)
		}
	}
	if !strings.Contains(logs, "path=$.flags.fraud-revision.targeting.fractional[0][1]") {
		t.Errorf("warning logged without its JSON path:\n%s", logs)
	}
}

func TestWatcherIdenticalReloadKeepsUsers(t *testing.T) {
	r := startWatcher(t)
	raw, _ := os.ReadFile(r.path)
	before := r.w.Set()
	atomicWrite(t, r.path, raw)
	r.eventually(ReloadSuccess, 2)
	if r.w.Set() != before {
		t.Error("an identical file replaced the set")
	}
	select {
	case c := <-r.changes:
		t.Errorf("OnChange for an identical file: %v", c)
	default:
	}
}

func TestNewWatcherNeedsAValidFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewWatcher(WatcherConfig{Path: filepath.Join(dir, "none.json")}); err == nil {
		t.Error("missing file accepted")
	}
	bad := filepath.Join(dir, "bad.json")
	// flagd refuses a defaultVariant that is not a variant; a state it does
	// not know is only a warning (served as ENABLED).
	_ = os.WriteFile(bad, []byte(`{"flags": {"f": {"state": "x", "variants": {"a": 1}, "defaultVariant": "b"}}}`), 0o644)
	if _, err := NewWatcher(WatcherConfig{Path: bad}); err == nil {
		t.Error("invalid file accepted")
	}
	// Two watchers may share a registry.
	good := filepath.Join(dir, "good.json")
	_ = os.WriteFile(good, versionFile("stable"), 0o644)
	reg := prometheus.NewRegistry()
	for range 2 {
		if _, err := NewWatcher(WatcherConfig{Path: good, Registerer: reg, Logger: slog.New(slog.DiscardHandler)}); err != nil {
			t.Fatal(err)
		}
	}
}

// ReloadNow serves a change as soon as it returns: no event, no debounce.
func TestWatcherReloadNow(t *testing.T) {
	r := startWatcher(t)
	atomicWrite(t, r.path, versionFile("canary"))
	r.w.ReloadNow()
	if got := r.current(); got != "canary" {
		t.Fatalf("after ReloadNow the flags say %q, want canary", got)
	}
	before := r.count(ReloadError)
	r.w.ReloadNow() // the same bytes again: nothing to do, nothing counted as an error
	if r.current() != "canary" || r.count(ReloadError) != before {
		t.Error("a second ReloadNow of the same file changed something")
	}
}

// TestWatcherFileIsFallbackWhileTheAPIServes: with another source in
// force (the ConfigMap through the API), the mounted file's late sync of
// an older version is not applied; once the API is unreachable, the file
// serves again. A document from the API that does not parse is refused.
func TestWatcherFileIsFallbackWhileTheAPIServes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "flags.json")
	if err := os.WriteFile(path, versionFile("stable"), 0o644); err != nil {
		t.Fatal(err)
	}
	var apiUp atomic.Bool
	apiUp.Store(true)
	w, err := NewWatcher(WatcherConfig{Path: path, Logger: slog.New(slog.NewTextHandler(&testbin.SyncBuffer{}, nil)),
		FileFallback: func() bool { return !apiUp.Load() }})
	if err != nil {
		t.Fatal(err)
	}
	def := func() string { return w.Set().Evaluate("fraud-revision", nil).Variant }
	if err := w.Apply(versionFile("canary"), "ConfigMap"); err != nil || def() != "canary" {
		t.Fatalf("Apply: %v, serving %s", err, def())
	}
	if err := w.Apply([]byte("{nope"), "ConfigMap"); err == nil || def() != "canary" {
		t.Fatalf("a bad document: %v, serving %s", err, def())
	}
	// The kubelet syncs the file late, to the older version: ignored.
	if err := os.WriteFile(path, versionFile("stable"), 0o644); err != nil {
		t.Fatal(err)
	}
	w.ReloadNow()
	if def() != "canary" {
		t.Fatal("the mounted file replaced the API's newer flags")
	}
	apiUp.Store(false)
	w.ReloadNow()
	if def() != "stable" {
		t.Fatal("with the API unreachable, the file did not serve")
	}
}

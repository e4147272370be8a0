package server_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/runtime/server"
)

// poolServer is a generic warm-pool server over HTTP.
func poolServer(t *testing.T) *httptest.Server {
	t.Helper()
	requireORT(t)
	s := server.New(server.Config{AllowSpecialise: true, Logger: testbin.QuietLogger()})
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return ts
}

// invokeRaw posts a function request and returns the answer's bytes.
func invokeRaw(t *testing.T, base, fn, body string) string {
	t.Helper()
	resp, err := http.Post(base+"/functions/"+fn, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %s: %s", fn, resp.Status, b)
	}
	return string(b)
}

// TestPreloadPaths: a specialise for the pre-loaded revision takes the
// pre-load (hit once built, joined while it runs), one for another
// revision drops it and answers exactly as a process that pre-loaded
// nothing; each answer says which path it took.
func TestPreloadPaths(t *testing.T) {
	fraudDir := filepath.Join(repoRoot(t), "functions", "fraud")
	recDir := filepath.Join(repoRoot(t), "functions", "recommend")
	preload := func(base, dir, rev string) (int, map[string]any) {
		return control(t, base, "preload", server.PreloadRequest{FunctionDir: dir, Revision: rev})
	}
	specialise := func(base, dir, rev string) map[string]any {
		t.Helper()
		code, out := control(t, base, "specialise", server.SpecialiseRequest{FunctionDir: dir, Revision: rev})
		if code != http.StatusOK {
			t.Fatalf("specialise %s: %d %v", rev, code, out)
		}
		return out
	}

	// The references: processes that pre-loaded nothing.
	ref := map[string]string{}
	for _, c := range []struct{ dir, fn, rev, body string }{{fraudDir, "fraud", "fraud-00001", fraudTx}, {recDir, "recommend", "recommend-00001", recommend}} {
		base := poolServer(t).URL
		if out := specialise(base, c.dir, c.rev); out["preload"] != "none" {
			t.Errorf("specialise with nothing pre-loaded said preload %v, want none", out["preload"])
		}
		ref[c.fn] = invokeRaw(t, base, c.fn, c.body)
	}

	t.Run("hit", func(t *testing.T) {
		base := poolServer(t).URL
		if code, out := preload(base, fraudDir, "fraud-00001"); code != http.StatusOK || out["preloaded"] != true {
			t.Fatalf("preload: %d %v", code, out)
		}
		if code, _ := do(t, http.MethodGet, base+"/v2/health/ready", ""); code != http.StatusServiceUnavailable {
			t.Errorf("a process that only pre-loaded answers ready %d, want 503: it serves nothing until specialised", code)
		}
		if out := specialise(base, fraudDir, "fraud-00001"); out["preload"] != "hit" {
			t.Errorf("specialise after the pre-load said preload %v, want hit", out["preload"])
		}
		if got := invokeRaw(t, base, "fraud", fraudTx); got != ref["fraud"] {
			t.Errorf("pre-loaded sessions answered %s, a plain load %s", got, ref["fraud"])
		}
	})

	t.Run("joined", func(t *testing.T) {
		base := poolServer(t).URL
		var wg sync.WaitGroup
		var code int
		wg.Add(1)
		go func() { defer wg.Done(); code, _ = preload(base, recDir, "recommend-00001") }()
		// The specialise may come before the pre-load starts (none), while
		// it runs (joined) or after (hit): never a second load beside it.
		out := specialise(base, recDir, "recommend-00001")
		wg.Wait()
		switch out["preload"] {
		case "joined", "hit":
			if code != http.StatusOK {
				t.Errorf("the pre-load taken by the specialise answered %d", code)
			}
		case "none":
			if code != http.StatusConflict {
				t.Errorf("a pre-load after the specialise answered %d, want 409", code)
			}
		default:
			t.Errorf("specialise said preload %v", out["preload"])
		}
		if got := invokeRaw(t, base, "recommend", recommend); got != ref["recommend"] {
			t.Errorf("answered %s, a plain load %s", got, ref["recommend"])
		}
	})

	t.Run("miss", func(t *testing.T) {
		base := poolServer(t).URL
		if code, out := preload(base, fraudDir, "fraud-00001"); code != http.StatusOK {
			t.Fatalf("preload: %d %v", code, out)
		}
		if out := specialise(base, recDir, "recommend-00001"); out["preload"] != "dropped" {
			t.Errorf("specialise for another revision said preload %v, want dropped", out["preload"])
		}
		if got := invokeRaw(t, base, "recommend", recommend); got != ref["recommend"] {
			t.Errorf("after the drop answered %s, a plain load %s", got, ref["recommend"])
		}
		if code, _ := do(t, http.MethodGet, base+"/v2/models/fraud/ready", ""); code != http.StatusNotFound {
			t.Errorf("the dropped pre-load's model answers ready %d, want 404", code)
		}
		if code, _ := preload(base, fraudDir, "fraud-00001"); code != http.StatusConflict {
			t.Errorf("a pre-load into a specialised process answered %d, want 409", code)
		}
	})

	t.Run("replaced", func(t *testing.T) {
		// A pre-load replaced by another, whether it had finished or was
		// still loading, answers 200 or 409 (dropped): never an error of
		// the revision's (a cancelled load's 422), which the engine would
		// book as a failed pre-load.
		for range 5 {
			base := poolServer(t).URL
			var wg sync.WaitGroup
			var first int
			var firstOut map[string]any
			wg.Add(1)
			go func() { defer wg.Done(); first, firstOut = preload(base, fraudDir, "fraud-00001") }()
			second, secondOut := preload(base, recDir, "recommend-00001")
			wg.Wait()
			for _, c := range []struct {
				code int
				out  map[string]any
			}{{first, firstOut}, {second, secondOut}} {
				if c.code != http.StatusOK && c.code != http.StatusConflict {
					t.Fatalf("a replaced pre-load answered %d %v, want 200 or 409", c.code, c.out)
				}
			}
			if first != http.StatusOK && second != http.StatusOK {
				t.Fatalf("neither pre-load answered 200 (%d, %d)", first, second)
			}
		}
	})

	t.Run("bad", func(t *testing.T) {
		base := poolServer(t).URL
		if code, out := preload(base, fraudDir, "fraud-99999"); code != http.StatusBadRequest || !strings.Contains(out["error"].(string), "fraud-99999") {
			t.Errorf("pre-load of an unknown revision: %d %v, want 400 naming it", code, out)
		}
		if code, _ := do(t, http.MethodDelete, base+"/admin/preload", ""); code != http.StatusOK {
			t.Errorf("drop with nothing pre-loaded: %d", code)
		}
	})
}

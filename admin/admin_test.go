package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/admin"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/rollout"
	"github.com/pilotlight/pilotlight/router"
)

// unreachable is a Backend with no instances: the admin API never needs one.
type unreachable struct{}

func (unreachable) Acquire(context.Context, string, string) (router.Target, error) {
	return router.Target{}, errors.New("no instances in the admin tests")
}

func fraudManifest() *functions.Manifest {
	return &functions.Manifest{Name: "fraud", Handler: "fraud", Flag: "fraud-revision", Runtime: functions.Runtime{MaxBodyBytes: 1 << 20},
		Revisions: []functions.Revision{{Name: "fraud-00001", Tag: "stable"}, {Name: "fraud-00002", Tag: "canary"}}}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRolloutAdminOverHTTP drives /admin/rollouts over HTTP on both
// listener layouts: the main handler (local development) and the separate
// admin handler (--admin-addr), where the main handler must not serve it.
func TestRolloutAdminOverHTTP(t *testing.T) {
	for _, separate := range []bool{false, true} {
		t.Run(fmt.Sprintf("separate admin %v", separate), func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "flags.json")
			writeFile(t, path, `{"flags": {"fraud-revision": {"state": "ENABLED", "variants": {"stable": "fraud-00001"}, "defaultVariant": "stable"}}}`)
			fns := []*functions.Manifest{fraudManifest()}
			backend := unreachable{}
			reg := prometheus.NewRegistry()
			ctl := rollout.New(rollout.Config{FlagsPath: path, Functions: fns, Gatherer: reg, Registerer: reg, Logger: testbin.QuietLogger()})
			t.Cleanup(ctl.Close)
			rt, err := router.New(router.Config{Functions: fns, Backend: backend, Registry: reg, Logger: testbin.QuietLogger(), SeparateAdmin: separate})
			if err != nil {
				t.Fatal(err)
			}
			admin.Mount(rt, admin.Config{Functions: fns, Rollouts: ctl, Gatherer: reg})
			main := httptest.NewServer(rt.Handler())
			t.Cleanup(main.Close)
			adm := main
			if separate {
				adm = httptest.NewServer(rt.AdminHandler())
				t.Cleanup(adm.Close)
			}
			do := func(base, method, path, body string) (int, map[string]any) {
				t.Helper()
				req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				var out map[string]any
				json.NewDecoder(resp.Body).Decode(&out)
				return resp.StatusCode, out
			}
			start := `{"function": "fraud", "to": "fraud-00002", "steps": [50, 100], "interval": "1h"}`
			if separate {
				if code, _ := do(main.URL, "POST", "/admin/rollouts", start); code != http.StatusNotFound {
					t.Errorf("the main listener served POST /admin/rollouts: %d", code)
				}
			}
			for _, bad := range []struct{ body, msg string }{
				{`{"function": "fraud", "to": `, "malformed rollout request"},
				{`{"function": "fraud", "to": "fraud-00002", "intervall": "1s"}`, "unknown field"},
				{`{"function": "fraud", "to": "fraud-00002", "interval": "soon"}`, "not a duration"},
				{`{"function": "fraud", "to": "fraud-00009"}`, `no revision "fraud-00009"`},
			} {
				code, out := do(adm.URL, "POST", "/admin/rollouts", bad.body)
				if msg, _ := out["error"].(string); code != http.StatusBadRequest || !strings.Contains(msg, bad.msg) {
					t.Errorf("POST %s: %d %v, want 400 saying %q", bad.body, code, out, bad.msg)
				}
			}
			code, out := do(adm.URL, "POST", "/admin/rollouts", start)
			if code != http.StatusAccepted || out["state"] != "running" || out["spec"].(map[string]any)["interval"] != "1h0m0s" {
				t.Fatalf("POST: %d %v", code, out)
			}
			if code, out := do(adm.URL, "POST", "/admin/rollouts", start); code != http.StatusConflict || out["error"] == nil {
				t.Errorf("second POST: %d %v, want 409", code, out)
			}
			if code, out := do(adm.URL, "POST", "/admin/rollouts/fraud/undo", ""); code != http.StatusConflict || !strings.Contains(fmt.Sprint(out["error"]), "abort it instead") {
				t.Errorf("undo while running: %d %v, want 409", code, out)
			}
			if code, out := do(adm.URL, "GET", "/admin/rollouts", ""); code != http.StatusOK || len(out["rollouts"].([]any)) != 1 {
				t.Errorf("GET list: %d %v", code, out)
			}
			code, out = do(adm.URL, "DELETE", "/admin/rollouts/fraud", "")
			if code != http.StatusOK || out["state"] != "aborted" {
				t.Fatalf("DELETE: %d %v", code, out)
			}
			if code, out := do(adm.URL, "DELETE", "/admin/rollouts/recommend", ""); code != http.StatusNotFound || out["error"] == nil {
				t.Errorf("DELETE of no rollout: %d %v, want 404", code, out)
			}
			if code, _ := do(adm.URL, "GET", "/admin/rollouts/fraud", ""); code != http.StatusOK {
				t.Errorf("GET status: %d", code)
			}
		})
	}
}

package server_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/internal/frame"
	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/runtime/server"
)

const (
	fraudTx   = `{"amount": 912.40, "avg_amount_30d": 85.0, "merchant_category": "electronics", "country": "RO", "home_country": "DE", "hour": 3, "device_new": true, "tx_last_24h": 9}`
	recommend = `{"user_id": 42, "k": 3}`
)

// sharedServer is a warm-pool server (specialise allowed), served over
// HTTP and over frames.
func sharedServer(t *testing.T) (*httptest.Server, *frameClient, *prometheus.Registry) {
	t.Helper()
	requireORT(t)
	reg := prometheus.NewRegistry()
	s := server.New(server.Config{AllowSpecialise: true, Registry: reg, Logger: testbin.QuietLogger()})
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	sock := filepath.Join(t.TempDir(), "frames.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go s.ServeFrames(t.Context(), ln)
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return ts, &frameClient{c: c, br: bufio.NewReader(c)}, reg
}

// control posts a control call to /admin/{what} and returns status and answer.
func control(t *testing.T, base, what string, req any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(req)
	return do(t, http.MethodPost, base+"/admin/"+what, string(b))
}

func specialiseShared(t *testing.T, base, dir, rev string) map[string]any {
	t.Helper()
	code, out := control(t, base, "specialise", server.SpecialiseRequest{FunctionDir: dir, Revision: rev, Shared: true})
	if code != http.StatusOK {
		t.Fatalf("load %s: %d %v", rev, code, out)
	}
	return out
}

// framed sends one request frame naming revision.
func (fc *frameClient) framed(t *testing.T, revision, uri, body string) (int, []byte) {
	t.Helper()
	fc.enc.StartRequest(revision, []byte(http.MethodPost), []byte(uri), 0)
	fc.enc.Header([]byte("Content-Type"), []byte("application/json"))
	f, err := fc.enc.Finish([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fc.c.Write(f); err != nil {
		t.Fatal(err)
	}
	var h frame.ResponseHead
	if err := frame.ReadResponseHead(fc.br, &fc.buf, 64<<10, &h); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, h.Body)
	if _, err := io.ReadFull(fc.br, b); err != nil {
		t.Fatal(err)
	}
	return h.Status, b
}

// TestSharedProcessServesManyRevisions: one process loads three revisions
// of two functions; a frame's revision picks the sessions, HTTP callers
// name one by its version path; one revision's bad input leaves the others
// serving; metrics are per revision; unloading one leaves the others.
func TestSharedProcessServesManyRevisions(t *testing.T) {
	ts, fc, reg := sharedServer(t)
	fraudDir := filepath.Join(repoRoot(t), "functions", "fraud")
	recDir := filepath.Join(repoRoot(t), "functions", "recommend")
	for _, l := range []struct{ dir, rev string }{{fraudDir, "fraud-00001"}, {fraudDir, "fraud-00002"}, {recDir, "recommend-00001"}} {
		specialiseShared(t, ts.URL, l.dir, l.rev)
	}
	code, ready := do(t, http.MethodGet, ts.URL+"/v2/health/ready", "")
	if code != 200 || len(ready["revisions"].([]any)) != 3 {
		t.Fatalf("ready: %d %v", code, ready)
	}
	for _, r := range ready["revisions"].([]any) { // no GPU here: the CPU, with its reason, and no device memory
		if r := r.(map[string]any); r["provider"] != "cpu" || r["provider_reason"] == "" || r["device_bytes"] != float64(0) {
			t.Errorf("a revision's provider in the ready answer: %v", r)
		}
	}
	// A dedicated load into a shared process is refused; so is a second revision name clash.
	if code, out := control(t, ts.URL, "specialise", server.SpecialiseRequest{FunctionDir: fraudDir, Revision: "fraud-00001"}); code != http.StatusConflict {
		t.Fatalf("dedicated load into a shared process: %d %v", code, out)
	}

	for _, rev := range []string{"fraud-00001", "fraud-00002"} {
		if code, b := fc.framed(t, rev, "/functions/fraud", fraudTx); code != 200 {
			t.Fatalf("frame for %s: %d %s", rev, code, b)
		}
	}
	if code, b := fc.framed(t, "recommend-00001", "/functions/recommend", recommend); code != 200 {
		t.Fatalf("recommend: %d %s", code, b)
	}
	// A frame naming a revision of another function is refused, not served by the wrong model.
	if code, b := fc.framed(t, "recommend-00001", "/functions/fraud", fraudTx); code != http.StatusNotFound {
		t.Fatalf("fraud body to recommend's revision: %d %s", code, b)
	}
	// Over HTTP: ambiguous without a version (400 naming both), served with one.
	if code, out := do(t, http.MethodPost, ts.URL+"/functions/fraud", fraudTx); code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(out["error"]), "fraud-00002") {
		t.Fatalf("ambiguous model: %d %v", code, out)
	}
	req, _ := http.NewRequest(http.MethodPost, ts.URL+"/functions/fraud", strings.NewReader(fraudTx))
	req.Header.Set(frame.RevisionHeader, "fraud-00002") // as the shadower names it
	if resp := testbin.DoOK(t, http.DefaultClient, req); resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("named by header: content type %q", resp.Header.Get("Content-Type"))
	}
	if code, out := do(t, http.MethodPost, ts.URL+"/functions/recommend", recommend); code != 200 {
		t.Fatalf("the only recommend revision by name: %d %v", code, out)
	}
	infer, err := os.ReadFile(filepath.Join(fraudDir, "testdata", "infer.json"))
	if err != nil {
		t.Fatal(err)
	}
	code, out := do(t, http.MethodPost, ts.URL+"/v2/models/fraud/versions/fraud-00002/infer", string(infer))
	if code != 200 || out["model_version"] != "fraud-00002" {
		t.Fatalf("infer by version: %d %v", code, out)
	}
	// One revision's bad input is its 400; the others keep serving.
	if code, b := fc.framed(t, "fraud-00001", "/functions/fraud", `{"amount": "lots"}`); code != http.StatusBadRequest {
		t.Fatalf("bad input: %d %s", code, b)
	}
	if code, b := fc.framed(t, "fraud-00002", "/functions/fraud", fraudTx); code != 200 {
		t.Fatalf("after another revision's bad input: %d %s", code, b)
	}
	for _, want := range []string{"fraud-00001", "fraud-00002", "recommend-00001"} {
		if n := testbin.Metric(t, reg, "pilotlight_runtime_requests_total", map[string]string{"revision": want, "route": "function", "code": "200"}); n < 1 {
			t.Errorf("no 200 counted for %s", want)
		}
	}

	code, out = control(t, ts.URL, "unload", server.UnloadRequest{Revision: "fraud-00001", Reason: "lru"})
	if code != 200 || out["revisions"] != float64(2) {
		t.Fatalf("unload: %d %v", code, out)
	}
	if code, b := fc.framed(t, "fraud-00001", "/functions/fraud", fraudTx); code != http.StatusNotFound {
		t.Fatalf("frame for an unloaded revision: %d %s", code, b)
	}
	if code, b := fc.framed(t, "fraud-00002", "/functions/fraud", fraudTx); code != 200 {
		t.Fatalf("a revision still loaded: %d %s", code, b)
	}
	if n := testbin.Series(t, reg, "pilotlight_session_pool_in_use", map[string]string{"revision": "fraud-00001"}); n != 0 {
		t.Errorf("the unloaded revision still has %d pool gauges", n)
	}
	if code, out := control(t, ts.URL, "unload", server.UnloadRequest{Revision: "fraud-00001"}); code != http.StatusNotFound {
		t.Fatalf("unloading twice: %d %v", code, out)
	}
	// Loading it again serves it again (a wake in a running process).
	specialiseShared(t, ts.URL, fraudDir, "fraud-00001")
	if code, b := fc.framed(t, "fraud-00001", "/functions/fraud", fraudTx); code != 200 {
		t.Fatalf("after reloading: %d %s", code, b)
	}
}

// TestUnloadReturnsMemory: unloading a revision destroys its ONNX Runtime
// sessions and the process's RSS (not only the Go heap) falls by about
// what loading added. The test process is the runtime here: ONNX Runtime
// runs in it.
func TestUnloadReturnsMemory(t *testing.T) {
	const n = 2048 // 16 MiB of weights, held by each of 2 sessions
	weights := int64(4 * n * n)
	// Four cycles: glibc's malloc once kept a later cycle's weights in
	// the heap (its mmap threshold rose with the first unload's frees).
	for cycle := 1; cycle <= 4; cycle++ {
		ts, _, _ := sharedServer(t)
		m := testbin.WriteMatMulFunction(t, "big", n, 2)
		out := specialiseShared(t, ts.URL, m.Dir, "big-00001")
		loadedRSS, before := int64(out["rss_bytes"].(float64)), int64(out["rss_before_bytes"].(float64))
		if loadedRSS-before < weights {
			t.Fatalf("cycle %d: loading 2 sessions of %d MiB of weights grew RSS by %d MiB only", cycle, weights>>20, (loadedRSS-before)>>20)
		}
		code, out := control(t, ts.URL, "unload", server.UnloadRequest{Revision: "big-00001", Reason: "scale_to_zero"})
		if code != 200 {
			t.Fatalf("cycle %d: unload: %d %v", cycle, code, out)
		}
		after := int64(out["rss_bytes"].(float64))
		t.Logf("cycle %d: RSS %d MiB before load, %d MiB loaded, %d MiB after unload", cycle, before>>20, loadedRSS>>20, after>>20)
		if freed := loadedRSS - after; freed < weights {
			t.Fatalf("cycle %d: unloading freed %d MiB of RSS; the sessions held at least %d MiB", cycle, freed>>20, weights>>20)
		}
	}
}

// TestSharedProcessLogsEachAttributeOnce: a shared process's lines about a
// revision (loaded, failed to load, unloaded) name its function and
// revision once each, in the JSON the engine folds into the platform log.
func TestSharedProcessLogsEachAttributeOnce(t *testing.T) {
	requireORT(t)
	var out testbin.SyncBuffer
	s := server.New(server.Config{AllowSpecialise: true, Registry: prometheus.NewRegistry(), Logger: slog.New(slog.NewJSONHandler(&out, nil))})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	fraudDir := filepath.Join(repoRoot(t), "functions", "fraud")
	specialiseShared(t, ts.URL, fraudDir, "fraud-00001")
	if code, _ := control(t, ts.URL, "specialise", server.SpecialiseRequest{FunctionDir: fraudDir, Revision: "fraud-09999", Shared: true}); code != http.StatusUnprocessableEntity {
		t.Fatalf("loading a revision fraud lacks: %d", code)
	}
	if code, out := control(t, ts.URL, "unload", server.UnloadRequest{Revision: "fraud-00001", Reason: "lru"}); code != 200 {
		t.Fatalf("unload: %d %v", code, out)
	}
	about := 0
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		fn, rev := strings.Count(line, `"function":`), strings.Count(line, `"revision":`)
		if fn > 1 || rev > 1 || fn != rev {
			t.Errorf("a line names function %d and revision %d times: %s", fn, rev, line)
		}
		if fn == 1 {
			about++
			if !strings.Contains(line, `"function":"fraud"`) {
				t.Errorf("a line names the wrong function: %s", line)
			}
		}
	}
	if about < 3 { // loaded, failed to load, unloaded
		t.Errorf("%d lines name a revision, want at least 3:\n%s", about, out.String())
	}
}

package router_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/router"
)

type capturingRecorder struct {
	mu    sync.Mutex
	calls []router.PredictionCall
}

func (c *capturingRecorder) Records(fn string) bool { return fn == "demo" }

func (c *capturingRecorder) Record(call router.PredictionCall) {
	c.mu.Lock()
	defer c.mu.Unlock()
	call.Body, call.Response = append([]byte(nil), call.Body...), append([]byte(nil), call.Response...)
	c.calls = append(c.calls, call)
}

// TestRecorderSeesAnsweredPredictions: each 200 answer of a function the
// Recorder records reaches it with its id, targeting key and bytes; an
// error answer, and any function it does not record, do not.
func TestRecorderSeesAnsweredPredictions(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if strings.Contains(string(body), "fail") {
			http.Error(w, `{"error": "model failed"}`, http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte(`{"answer": 1}`))
	}))
	defer up.Close()
	mk := func(name string) *functions.Manifest {
		return &functions.Manifest{Name: name, Handler: "tensor", Revisions: []functions.Revision{{Name: name + "-00001"}}, Runtime: functions.Runtime{MaxBodyBytes: 1 << 20}}
	}
	rec := &capturingRecorder{}
	rt, err := router.New(router.Config{Functions: []*functions.Manifest{mk("demo"), mk("other")}, Backend: anyUpstream{up.URL}, Recorder: rec, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	url := serveRouter(t, rt)
	send := func(path, body string, headers ...string) {
		req, _ := http.NewRequest("POST", url+path, strings.NewReader(body))
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	send("/v2/models/demo/infer", `{"id": "v2-1", "inputs": []}`, "X-User-ID", "u-1", router.HeaderRequestID, "req-1")
	send("/functions/demo", `{"card_id": "c-9"}`)
	send("/functions/demo", `{"x": 1}`) // no key at all: recorded without one, not with a random one
	send("/functions/demo", `{"fail": true}`, router.HeaderRequestID, "req-fail")
	send("/functions/other", `{}`, router.HeaderRequestID, "req-other")
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.calls) != 3 {
		t.Fatalf("%d calls recorded, want 3: %+v", len(rec.calls), rec.calls)
	}
	c := rec.calls[0]
	if !c.V2 || c.Function != "demo" || c.Revision != "demo-00001" || c.RequestID != "req-1" || c.TargetingKey != "u-1" ||
		string(c.Body) != `{"id": "v2-1", "inputs": []}` || string(c.Response) != `{"answer": 1}` {
		t.Fatalf("V2 call %+v", c)
	}
	if c := rec.calls[1]; c.V2 || c.TargetingKey != "c-9" || c.RequestID != "" {
		t.Fatalf("function call %+v", c)
	}
	if c := rec.calls[2]; c.TargetingKey != "" {
		t.Fatalf("a request without a key was recorded under %q", c.TargetingKey)
	}
}

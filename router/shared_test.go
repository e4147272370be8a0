package router_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/engine"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/testbin"
)

const fraudTx = `{"amount": 912.40, "avg_amount_30d": 85.0, "merchant_category": "electronics", "country": "RO", "home_country": "DE", "hour": 3, "device_new": true, "tx_last_24h": 9}`

// slowWidth and slowDepth make the slow function's model: a row costs
// 2·64·1024² ≈ 134 million floating point operations, so a batch of 256
// rows runs for about a second on one core of a quiet machine (1.5 s
// measured on this loaded one), against a few milliseconds for a row.
const (
	slowWidth = 1024
	slowDepth = 64
)

// slowInfer is a V2 infer body for the slow function: rows rows of value v.
func slowInfer(rows int, v string) string {
	row := strings.TrimSuffix(strings.Repeat(v+",", slowWidth), ",")
	data := strings.TrimSuffix(strings.Repeat(row+",", rows), ",")
	return fmt.Sprintf(`{"inputs":[{"name":"x","shape":[%d,%d],"datatype":"FP32","data":[%s]}]}`, rows, slowWidth, data)
}

// checkSlowAnswer says what is wrong with the slow function's answer to
// rows rows of value v ("" when right): each row's sum, slowWidth·v.
func checkSlowAnswer(raw []byte, rows int, v float64) string {
	var out struct {
		Outputs []struct {
			Shape []int     `json:"shape"`
			Data  []float64 `json:"data"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(raw, &out); err != nil || len(out.Outputs) != 1 {
		return fmt.Sprintf("not one output: %v %.200s", err, raw)
	}
	o := out.Outputs[0]
	if len(o.Data) != rows || len(o.Shape) != 2 || o.Shape[0] != rows || o.Shape[1] != 1 {
		return fmt.Sprintf("shape %v with %d values, want [%d 1]", o.Shape, len(o.Data), rows)
	}
	for i, got := range o.Data {
		if got != slowWidth*v {
			return fmt.Sprintf("row %d sums to %v, want %v", i, got, slowWidth*v)
		}
	}
	return ""
}

// TestSharedRevisionsDoNotBlockEachOther: two revisions in one shared
// runtime process (the same pid), through the router. While one of them
// runs a slow batch in ONNX Runtime (seen running by its session pool's
// in-use gauge) and is sent bad input, the other keeps answering, with the
// same answers as before: its answers, and the slow revision's 400s for
// the bad input, all complete before the slow call does. Each revision has
// its own batcher and session pool in the process; this is what proves
// nothing between them (the socket, the frame server, the handler chain,
// ONNX Runtime's environment) serialises one behind the other.
func TestSharedRevisionsDoNotBlockEachOther(t *testing.T) {
	fraud := testbin.Functions(t, "fraud")[0]
	fraud.Revisions = fraud.Revisions[:1] // one revision: the router needs no flag to pick it
	slow := testbin.WriteSlowFunction(t, "slow", slowWidth, slowDepth)
	slow.Runtime.MaxBodyBytes = 4 << 20 // 256 rows of 1024 values in JSON
	for _, m := range []*functions.Manifest{fraud, slow} {
		if m.IsolationOf(m.Revisions[0]) != functions.IsolationShared {
			t.Fatalf("%s is not shared by default", m.Name)
		}
	}
	p := startPlatformWith(t, engine.Config{PoolSize: 1}, 60*time.Second, []*functions.Manifest{fraud, slow})
	fraudURL, slowURL := p.url+"/functions/fraud", p.url+"/v2/models/slow/infer"

	code, _, want := postRaw(t, fraudURL, fraudTx)
	if code != 200 {
		t.Fatalf("fraud: %d %s", code, want)
	}
	if code, _, raw := postRaw(t, slowURL, slowInfer(1, "3")); code != 200 || checkSlowAnswer(raw, 1, 3) != "" {
		t.Fatalf("slow, one row: %d %s", code, checkSlowAnswer(raw, 1, 3))
	}
	// GET /admin/functions shows the one process holding both, and for
	// each revision its provider and why, and what it is charged (no GPU
	// here: the CPU, nothing on the device).
	var view struct {
		Processes []engine.ProcessView `json:"processes"`
	}
	resp, err := http.Get(p.url + "/admin/functions")
	if err != nil {
		t.Fatal(err)
	}
	err = json.NewDecoder(resp.Body).Decode(&view)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	var shared engine.ProcessView
	for _, pv := range view.Processes {
		if pv.Isolation == "shared" && len(pv.Revisions) == 2 {
			shared = pv
		}
	}
	if shared.PID == 0 {
		t.Fatalf("fraud and slow are not in one shared process: %+v", view.Processes)
	}
	for _, r := range shared.Revisions {
		if r.Provider != "cpu" || r.ProviderReason == "" || r.HostBytes <= 0 || r.DeviceBytes != 0 {
			t.Errorf("%s in /admin/functions: provider %q (%q), host %d bytes, device %d bytes", r.Revision, r.Provider, r.ProviderReason, r.HostBytes, r.DeviceBytes)
		}
	}
	if shared.DeviceBytes != 0 || shared.Charged <= 0 {
		t.Errorf("the shared process in /admin/functions: charged %d host bytes, %d device bytes", shared.Charged, shared.DeviceBytes)
	}
	var addr string
	for _, ep := range p.eng.Endpoints() {
		if ep.PID == shared.PID {
			addr = "http://" + ep.Addr
		}
	}

	const rows = 256
	type answer struct {
		code int
		raw  []byte
	}
	slowDone := make(chan answer, 1)
	go func() {
		resp, err := http.Post(slowURL, "application/json", strings.NewReader(slowInfer(rows, "2")))
		if err != nil {
			slowDone <- answer{code: -1, raw: []byte(err.Error())}
			return
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		slowDone <- answer{code: resp.StatusCode, raw: raw}
	}()
	// Ordering, not timing: an answer counts as given during the slow
	// batch when the slow revision's session, read after the answer came
	// back, is still inside its ONNX Runtime call.
	slowRunning := func() bool {
		return metricSum(t, addr, "pilotlight_session_pool_in_use", `revision="slow-00001"`) == 1
	}
	testbin.Poll(t, "the slow batch to be running in its session", 30*time.Second, time.Millisecond, slowRunning)
	begin := time.Now()
	bad := []struct{ url, body, says string }{
		{slowURL, `{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`, "shape"},
		{slowURL, `{"inputs": [`, "JSON"},
		{fraudURL, `{"amount": "lots"}`, "amount"},
	}
	fast, refused := 0, 0
	for i := 0; ; i++ {
		if i%4 == 3 { // now and then, a bad request for either revision
			b := bad[(i/4)%len(bad)]
			code, _, out := post(t, b.url, b.body)
			if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(out["error"]), b.says) {
				t.Errorf("bad input %.40s to %s: %d %v, want a 400 naming %q", b.body, b.url, code, out, b.says)
			}
			if !slowRunning() {
				break
			}
			refused++
			continue
		}
		code, _, got := postRaw(t, fraudURL, fraudTx)
		if code != 200 || string(got) != string(want) {
			t.Fatalf("fraud while slow runs: %d %s, want 200 %s", code, got, want)
		}
		if !slowRunning() {
			break
		}
		fast++
	}
	ran := time.Since(begin)
	slowAns := <-slowDone
	if slowAns.code != 200 {
		t.Fatalf("the slow batch: %d %.300s", slowAns.code, slowAns.raw)
	}
	if why := checkSlowAnswer(slowAns.raw, rows, 2); why != "" {
		t.Fatalf("the slow batch's answer: %s", why)
	}
	t.Logf("while the slow batch ran (about %s): %d fraud answers, %d bad requests refused", ran.Round(time.Millisecond), fast, refused)
	if fast < 5 || refused < 1 {
		t.Fatalf("only %d fraud answers and %d refusals of bad input completed while the slow batch ran in the same process: "+
			"one revision's slow batch held up another's requests", fast, refused)
	}
}

package engine_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/engine"
	"github.com/pilotlight/pilotlight/functions"
	_ "github.com/pilotlight/pilotlight/functions/all"
	"github.com/pilotlight/pilotlight/internal/frame"
	"github.com/pilotlight/pilotlight/internal/testbin"
)

const (
	fraudTx  = `{"amount": 912.40, "avg_amount_30d": 85.0, "merchant_category": "electronics", "country": "RO", "home_country": "DE", "hour": 3, "device_new": true, "tx_last_24h": 9}`
	recQuery = `{"user_id": 42, "k": 3}`
)

// framed sends one request over the lease's socket, naming its revision as
// the router does, and returns the status.
func framed(t *testing.T, l *engine.Lease, uri, body string) int {
	t.Helper()
	c, err := net.Dial("unix", l.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var enc frame.Encoder
	enc.StartRequest(l.Revision, []byte("POST"), []byte(uri), 0)
	f, _ := enc.Finish([]byte(body))
	if _, err := c.Write(f); err != nil {
		t.Fatal(err)
	}
	var h frame.ResponseHead
	var buf []byte
	if err := frame.ReadResponseHead(bufio.NewReader(c), &buf, 64<<10, &h); err != nil {
		t.Fatal(err)
	}
	return h.Status
}

func acquire(t *testing.T, e *engine.Engine, function, revision string) *engine.Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := e.Acquire(ctx, function, revision)
	if err != nil {
		t.Fatalf("acquire %s/%s: %v", function, revision, err)
	}
	return l
}

func statusOf(e *engine.Engine, revision string) engine.Status {
	for _, st := range e.Statuses() {
		if st.Revision == revision {
			return st
		}
	}
	return engine.Status{}
}

// sharedHolding is the shared process holding revision, if any.
func sharedHolding(e *engine.Engine, revision string) (engine.ProcessView, bool) {
	for _, p := range e.Processes() {
		if p.Isolation != "shared" {
			continue
		}
		for _, r := range p.Revisions {
			if r.Revision == revision {
				return p, true
			}
		}
	}
	return engine.ProcessView{}, false
}

// TestSharedPlacement: small revisions of two functions share one runtime
// process (each served by its own sessions, picked by the frame's
// revision); a dedicated one gets a process of its own; the admin view
// shows which process holds which revisions. A SIGKILL of the shared
// process takes every revision it held: each counts its crash, and comes
// back on a fresh placement.
func TestSharedPlacement(t *testing.T) {
	fns := testbin.Functions(t, "fraud", "recommend")
	fns = append(fns, manifest(t, func(m *functions.Manifest) { m.Isolation = functions.IsolationDedicated }))
	e, reg := start(t, engine.Config{Functions: fns, PoolSize: 1})
	leases := map[string]*engine.Lease{}
	for _, fr := range [][2]string{{"fraud", "fraud-00001"}, {"fraud", "fraud-00002"}, {"recommend", "recommend-00001"}, {fn, rev}} {
		leases[fr[1]] = acquire(t, e, fr[0], fr[1])
	}
	sharedPID := leases["fraud-00001"].PID
	for _, r := range []string{"fraud-00002", "recommend-00001"} {
		if leases[r].PID != sharedPID {
			t.Errorf("%s runs in pid %d, not in the shared process %d", r, leases[r].PID, sharedPID)
		}
	}
	if leases[rev].PID == sharedPID {
		t.Errorf("the dedicated revision %s runs in the shared process", rev)
	}
	for r, body := range map[string]string{"fraud-00001": fraudTx, "fraud-00002": fraudTx, "recommend-00001": recQuery} {
		if code := framed(t, leases[r], "/functions/"+leases[r].Function, body); code != 200 {
			t.Errorf("%s through the shared socket: %d", r, code)
		}
	}
	infer(t, leases[rev])
	for _, l := range leases {
		l.Release(false)
	}
	p, ok := sharedHolding(e, "fraud-00001")
	if !ok || p.PID != sharedPID || len(p.Revisions) != 3 || p.RSSBytes <= 0 || p.Charged <= 0 {
		t.Fatalf("the shared process in the admin view: %+v", p)
	}
	// No GPU here: every revision says it runs on the CPU and why, and the
	// device is charged nothing.
	for _, r := range p.Revisions {
		if r.Provider != "cpu" || r.ProviderReason == "" || r.DeviceBytes != 0 || r.HostBytes <= 0 {
			t.Errorf("%s in the admin view: provider %q (%q), %d device bytes, %d host bytes", r.Revision, r.Provider, r.ProviderReason, r.DeviceBytes, r.HostBytes)
		}
	}
	if p.DeviceBytes != 0 {
		t.Errorf("the shared process is charged %d device bytes on a machine with no GPU", p.DeviceBytes)
	}
	shares := 0
	for _, ep := range e.Endpoints() {
		if ep.PID == sharedPID && (!ep.Shared || ep.Function != "") {
			t.Errorf("the shared process's scrape endpoint %+v: want it Shared, without a function", ep)
		}
		if ep.PID == sharedPID {
			shares++
		}
	}
	if shares != 1 {
		t.Errorf("the shared process is listed %d times among the scrape endpoints, want once", shares)
	}
	dedicated := 0
	for _, p := range e.Processes() {
		if p.Isolation == "dedicated" && len(p.Revisions) == 1 && p.Revisions[0].Revision == rev && p.PID == leases[rev].PID {
			dedicated++
		}
	}
	if dedicated != 1 {
		t.Errorf("the admin view lists %d dedicated processes holding %s: %+v", dedicated, rev, e.Processes())
	}

	if err := syscall.Kill(sharedPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"fraud-00001", "fraud-00002", "recommend-00001"} {
		testbin.WaitFor(t, r+"'s crash to be counted", 10*time.Second, func() bool {
			return testbin.Metric(t, reg, "pilotlight_instance_exits_total", map[string]string{"revision": r, "reason": "crashed"}) == 1 &&
				testbin.Metric(t, reg, "pilotlight_revision_unloads_total", map[string]string{"revision": r, "reason": "crash"}) == 1
		})
		if n := len(statusOf(e, r).Instances); n != 0 {
			t.Errorf("%s still lists %d instances after its process died", r, n)
		}
	}
	l := acquire(t, e, "fraud", "fraud-00002")
	defer l.Release(false)
	if l.PID == sharedPID || framed(t, l, "/functions/fraud", fraudTx) != 200 {
		t.Fatalf("after the crash: pid %d (the dead one %d), not served", l.PID, sharedPID)
	}
	if got := testbin.Metric(t, reg, "pilotlight_revision_loads_total", map[string]string{"revision": "fraud-00002", "reason": "crash"}); got != 1 {
		t.Errorf("the load replacing the crashed one counted %v times with reason crash, want 1", got)
	}
}

// bigFunctions are three functions whose one revision each is charged
// about 20 MiB (a 16 MiB weights matrix, one session), so that a budget
// of 50 MiB holds two of them and not three.
const bigN = 2048

func bigFunctions(t *testing.T) []*functions.Manifest {
	var fns []*functions.Manifest
	for _, name := range []string{"big-a", "big-b", "big-c"} {
		fns = append(fns, testbin.WriteMatMulFunction(t, name, bigN, 1))
	}
	return fns
}

// TestLRUUnloadNeverTakesABusyRevision: loading a revision into a full
// shared process unloads the least recently used idle revision first, and
// never one with a request in flight, however long ago it was first used.
func TestLRUUnloadNeverTakesABusyRevision(t *testing.T) {
	e, reg := start(t, engine.Config{Functions: bigFunctions(t), PoolSize: 1, RuntimeMemory: 50 << 20, MachineMemory: 8 << 30})
	a := acquire(t, e, "big-a", "big-a-00001") // held: in flight, and the least recently used
	b := acquire(t, e, "big-b", "big-b-00001")
	b.Release(false)
	if a.PID != b.PID {
		t.Fatalf("two revisions that fit the budget went to two processes (%d, %d): %+v", a.PID, b.PID, e.Processes())
	}
	c := acquire(t, e, "big-c", "big-c-00001")
	if c.PID != a.PID {
		t.Fatalf("big-c went to pid %d, not into the shared process %d made roomy: %+v", c.PID, a.PID, e.Processes())
	}
	if got := testbin.Metric(t, reg, "pilotlight_revision_unloads_total", map[string]string{"revision": "big-b-00001", "reason": "lru"}); got != 1 {
		t.Errorf("big-b (idle) unloads for room = %v, want 1", got)
	}
	if got := testbin.Metric(t, reg, "pilotlight_revision_unloads_total", map[string]string{"revision": "big-a-00001", "reason": "lru"}); got != 0 {
		t.Errorf("big-a, busy, was unloaded for room")
	}
	if _, ok := sharedHolding(e, "big-b-00001"); ok {
		t.Errorf("big-b still held after its unload: %+v", e.Processes())
	}
	body := `{"inputs":[{"name":"x","shape":[1,2048],"datatype":"FP32","data":[` + strings.TrimSuffix(strings.Repeat("1,", bigN), ",") + `]}]}`
	if code := framed(t, a, "/v2/models/big-a/infer", body); code != 200 {
		t.Errorf("the busy revision's request after the unload of another: %d", code)
	}
	a.Release(false)
	c.Release(false)
	// Now big-a is idle and the least recently used: waking big-b unloads it.
	time.Sleep(10 * time.Millisecond)
	c = acquire(t, e, "big-c", "big-c-00001")
	c.Release(false)
	b = acquire(t, e, "big-b", "big-b-00001")
	b.Release(false)
	if got := testbin.Metric(t, reg, "pilotlight_revision_unloads_total", map[string]string{"revision": "big-a-00001", "reason": "lru"}); got != 1 {
		t.Errorf("big-a (idle, least recently used) unloads = %v, want 1: %+v", got, e.Processes())
	}
	if b.PID != a.PID {
		t.Errorf("big-b's wake went to pid %d, not the shared process %d", b.PID, a.PID)
	}
}

// TestPastTheMachineBudgetIsA503: when no process has room and nothing idle
// can be unloaded, and the machine's budget has no room for another
// process (one holds about 57 MiB before its first revision, 80 MiB with
// one, and the budget is 130 MiB), the request waits (CapacityWait) and is refused with the
// reason, a 503 through the router's Backend; once memory frees it loads.
func TestPastTheMachineBudgetIsA503(t *testing.T) {
	const wait = 600 * time.Millisecond
	e, _ := start(t, engine.Config{Functions: bigFunctions(t), PoolSize: 0, RuntimeMemory: 30 << 20, MachineMemory: 130 << 20, CapacityWait: wait})
	a := acquire(t, e, "big-a", "big-a-00001") // busy: cannot be unloaded
	begin := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := e.Acquire(ctx, "big-b", "big-b-00001")
	var ce *engine.CapacityError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "budget") {
		t.Fatalf("acquire past the budget: %v, want a CapacityError naming the budget (processes: %+v)", err, e.Processes())
	}
	if waited := time.Since(begin); waited < wait {
		t.Errorf("refused after %s; the request should wait %s for memory first", waited, wait)
	}
	_, err = engine.Backend{Engine: e}.Acquire(ctx, "big-b", "big-b-00001")
	var coded interface{ HTTPStatus() int }
	if !errors.As(err, &coded) || coded.HTTPStatus() != http.StatusServiceUnavailable || !strings.Contains(err.Error(), "budget") {
		t.Fatalf("through the Backend: %v, want a 503 naming the budget", err)
	}
	if n := len(e.Processes()); n != 1 {
		t.Errorf("%d runtime processes; the budget holds one: %+v", n, e.Processes())
	}
	// Memory frees when big-a's request ends: big-b then takes its place.
	a.Release(false)
	b := acquire(t, e, "big-b", "big-b-00001")
	defer b.Release(false)
	if b.PID != a.PID {
		t.Errorf("big-b went to pid %d, not into the process big-a left idle (%d)", b.PID, a.PID)
	}
}

// TestDedicatedPastTheMachineBudgetIsA503: the machine's budget governs
// dedicated processes too. With one dedicated process running (about 80
// MiB with its 16 MiB model) and a budget of 130 MiB, a second one would
// not fit: its request waits CapacityWait, then gets the shared path's
// 503 naming the budget, and no process is started for it. Once the first
// scales to zero, the second starts.
func TestDedicatedPastTheMachineBudgetIsA503(t *testing.T) {
	const wait = 600 * time.Millisecond
	fns := bigFunctions(t)
	for _, m := range fns {
		m.Isolation = functions.IsolationDedicated
	}
	e, _ := start(t, engine.Config{Functions: fns, PoolSize: 0, MachineMemory: 130 << 20, CapacityWait: wait, ScaleToZeroAfter: 300 * time.Millisecond})
	a := acquire(t, e, "big-a", "big-a-00001")
	begin := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := engine.Backend{Engine: e}.Acquire(ctx, "big-b", "big-b-00001")
	var coded interface{ HTTPStatus() int }
	if !errors.As(err, &coded) || coded.HTTPStatus() != http.StatusServiceUnavailable || !strings.Contains(err.Error(), "budget") || !strings.Contains(err.Error(), "dedicated") {
		t.Fatalf("a dedicated start past the machine's budget: %v, want a 503 naming the budget (processes: %+v)", err, e.Processes())
	}
	if waited := time.Since(begin); waited < wait {
		t.Errorf("refused after %s; the request should wait %s for memory first", waited, wait)
	}
	if ps := e.Processes(); len(ps) != 1 || ps[0].PID != a.PID || ps[0].Isolation != "dedicated" {
		t.Errorf("processes %+v: want only big-a's dedicated one", ps)
	}
	a.Release(false)
	testbin.WaitFor(t, "big-a to scale to zero", 20*time.Second, func() bool { return len(e.Processes()) == 0 })
	b := acquire(t, e, "big-b", "big-b-00001")
	b.Release(false)
	if b.PID == a.PID {
		t.Errorf("big-b got big-a's pid %d", b.PID)
	}
}

// TestEmptySharedProcessesStopButOne: a burst that needed two shared
// processes leaves one behind once its revisions are at zero: the other
// stops after EmptyHostLinger, and the one kept takes the next wake
// without a process start.
func TestEmptySharedProcessesStopButOne(t *testing.T) {
	e, _ := start(t, engine.Config{Functions: bigFunctions(t), PoolSize: 0, RuntimeMemory: 30 << 20, MachineMemory: 8 << 30,
		ScaleToZeroAfter: 300 * time.Millisecond, EmptyHostLinger: 300 * time.Millisecond})
	a := acquire(t, e, "big-a", "big-a-00001")
	b := acquire(t, e, "big-b", "big-b-00001") // a is busy and the budget holds one: a second process
	if a.PID == b.PID {
		t.Fatalf("two revisions over one process's budget share pid %d: %+v", a.PID, e.Processes())
	}
	a.Release(false)
	b.Release(false)
	shared := func() (pids []int) {
		for _, p := range e.Processes() {
			if p.Isolation == "shared" {
				pids = append(pids, p.PID)
			}
		}
		return pids
	}
	testbin.WaitFor(t, "one of the two empty shared processes to stop", 20*time.Second, func() bool { return len(shared()) == 1 })
	kept := shared()[0]
	if kept != a.PID && kept != b.PID {
		t.Fatalf("the process kept, %d, is neither of the two (%d, %d)", kept, a.PID, b.PID)
	}
	time.Sleep(600 * time.Millisecond) // twice the linger: the last one stays
	if got := shared(); len(got) != 1 || got[0] != kept {
		t.Fatalf("shared processes after the linger: %v, want only %d", got, kept)
	}
	c := acquire(t, e, "big-c", "big-c-00001")
	defer c.Release(false)
	if c.PID != kept {
		t.Errorf("the next wake went to pid %d, not the shared process kept (%d)", c.PID, kept)
	}
}

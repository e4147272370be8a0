package engine_test

import (
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/engine"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/procmem"
	"github.com/pilotlight/pilotlight/internal/testbin"
)

// The pre-load's functions: a 16 MiB matrix (its sessions are visible in
// RSS, and take long enough to build to catch a pre-load in progress) and
// the example model (another model: its answers differ).
const (
	bigFn, bigRev = "big-a", "big-a-00001"
	bigBody       = `{"inputs":[{"name":"x","shape":[1,2048],"datatype":"FP32","data":[`
)

func preloadFunctions(t *testing.T) []*functions.Manifest {
	big := testbin.WriteMatMulFunction(t, bigFn, bigN, 1)
	small := manifest(t, nil)
	for _, m := range []*functions.Manifest{big, small} {
		m.Isolation = functions.IsolationDedicated
	}
	return []*functions.Manifest{big, small}
}

// inferBody asks the lease's process (HTTP) for a prediction and returns the answer.
func inferBody(t *testing.T, l *engine.Lease) string {
	t.Helper()
	uri, body := "/v2/models/"+fn+"/infer", `{"inputs":[{"name":"input_vectors","shape":[1,10],"datatype":"FP32","data":[1,2,3,4,5,6,7,8,9,10]}]}`
	if l.Function == bigFn {
		vals := make([]string, bigN)
		for i := range vals {
			vals[i] = []string{"1", "0.5", "2"}[i%3]
		}
		uri, body = "/v2/models/"+bigFn+"/infer", bigBody+strings.Join(vals, ",")+`]}]}`
	}
	resp, err := http.Post("http://"+l.Addr+uri, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("infer %s: %s: %s", l.Function, resp.Status, b)
	}
	return string(b)
}

// wake takes a revision at zero through a cold start, and returns its
// answer, the cold start's record and the process's pid; it waits for it
// to be back at zero (its process gone).
func wake(t *testing.T, e *engine.Engine, function, revision string) (string, *engine.ColdStart, int) {
	t.Helper()
	l := acquire(t, e, function, revision)
	if l.ColdStart <= 0 {
		t.Fatalf("%s: a request at zero reported no cold start", function)
	}
	answer := inferBody(t, l)
	l.Release(false)
	c := statusOf(e, revision).LastCold
	if c == nil || c.PID != l.PID {
		t.Fatalf("%s: no cold start recorded for pid %d: %+v", function, l.PID, c)
	}
	testbin.WaitFor(t, function+" back at zero", 20*time.Second, func() bool { return len(statusOf(e, revision).Instances) == 0 && !alive(l.PID) })
	return answer, c, l.PID
}

// preloaded waits until the idle pool process has pre-loaded revision and
// returns it.
func preloaded(t *testing.T, e *engine.Engine, revision string) engine.ProcessStatus {
	t.Helper()
	var got engine.ProcessStatus
	testbin.WaitFor(t, "the pool process to pre-load "+revision, 20*time.Second, func() bool {
		for _, p := range e.PoolStatus() {
			if p.Preload != nil && p.Preload.Revision == revision && p.Preload.State == "ready" {
				got = p
				return true
			}
		}
		return false
	})
	return got
}

// TestPreloadHitAndMiss: after a dedicated revision scales to zero, the
// idle pool process pre-loads its sessions (charged: the gauge and the
// pool's view show what they hold); the next wake of that revision uses
// them (hit) and answers as its cold start without them did; a wake of
// another revision drops them (released: the process then holds only its
// own model) and answers exactly as before, from its own model.
func TestPreloadHitAndMiss(t *testing.T) {
	e, reg := start(t, engine.Config{Functions: preloadFunctions(t), PoolSize: 1, ScaleToZeroAfter: 300 * time.Millisecond,
		MachineMemory: 8 << 30, Preload: true})
	waitPool := func() {
		testbin.WaitFor(t, "the warm pool to fill", 20*time.Second, func() bool { return len(e.PoolStatus()) == 1 })
	}
	path := func(revision, preload string) float64 {
		return testbin.Metric(t, reg, "pilotlight_warm_pool_specialisations_total", map[string]string{"revision": revision, "preload": preload})
	}

	// The references: each revision's first cold start, nothing pre-loaded.
	waitPool()
	smallRef, c, _ := wake(t, e, fn, rev)
	if c.Source != "pool" || c.Preload != "none" {
		t.Fatalf("first wake of %s: source %s, preload %q; want pool, none", fn, c.Source, c.Preload)
	}
	waitPool()
	bigRef, c, _ := wake(t, e, bigFn, bigRev)
	if c.Preload != "none" && c.Preload != "dropped" { // the example's pre-load may be there by now
		t.Fatalf("first wake of %s: preload %q, want none or dropped", bigFn, c.Preload)
	}

	// Charged: big-a, the latest at zero, is pre-loaded and its sessions counted.
	p := preloaded(t, e, bigRev)
	if p.Preload.Function != bigFn || p.Preload.Bytes < 8<<20 {
		t.Errorf("pre-load %+v: want %s holding at least 8 MiB (a 16 MiB matrix)", p.Preload, bigFn)
	}
	if got := testbin.Metric(t, reg, "pilotlight_warm_pool_preloaded_bytes", nil); got != float64(p.Preload.Bytes) {
		t.Errorf("pilotlight_warm_pool_preloaded_bytes = %v, want the pre-load's %d", got, p.Preload.Bytes)
	}
	rssPreloaded := procmem.RSS(p.PID)

	// Hit: the same process, its sessions reused, the same answer.
	answer, c, pid := wake(t, e, bigFn, bigRev)
	if c.Preload != "hit" || pid != p.PID {
		t.Errorf("wake after the pre-load: preload %q in pid %d; want hit in the pre-loaded pid %d", c.Preload, pid, p.PID)
	}
	if path(bigRev, "hit") != 1 {
		t.Errorf("pilotlight_warm_pool_specialisations_total{preload=hit} = %v, want 1", path(bigRev, "hit"))
	}
	if answer != bigRef {
		t.Errorf("the pre-loaded sessions answered\n%.200s\nwhere a cold start without them answered\n%.200s", answer, bigRef)
	}
	if got := testbin.Metric(t, reg, "pilotlight_warm_pool_preloaded_bytes", nil); got != 0 {
		t.Errorf("pilotlight_warm_pool_preloaded_bytes = %v once the pre-load was taken, want 0", got)
	}

	// Miss: big-a pre-loaded again, the example wakes in that process.
	p = preloaded(t, e, bigRev)
	l := acquire(t, e, fn, rev)
	answer = inferBody(t, l)
	rssMiss := procmem.RSS(l.PID)
	l.Release(false)
	c = statusOf(e, rev).LastCold
	if c.Preload != "dropped" || l.PID != p.PID {
		t.Errorf("another revision's wake: preload %q in pid %d; want dropped in the pre-loaded pid %d", c.Preload, l.PID, p.PID)
	}
	if answer != smallRef {
		t.Errorf("after dropping the pre-load the process answered\n%s\nwhere %s's cold start answered\n%s", answer, fn, smallRef)
	}
	if !strings.Contains(answer, `"model_name":"`+fn+`"`) {
		t.Errorf("the answer after the drop is not %s's: %s", fn, answer)
	}
	// Released: the 16 MiB matrix is gone from the process that held it.
	if rssPreloaded > 0 && rssMiss > rssPreloaded+4<<20 {
		t.Errorf("RSS of the process after the drop %d MiB, with big-a pre-loaded %d MiB: the pre-load's sessions were not released", rssMiss>>20, rssPreloaded>>20)
	}
	if got := testbin.Metric(t, reg, "pilotlight_warm_pool_preloads_total", map[string]string{"revision": bigRev, "outcome": "loaded"}); got < 2 {
		t.Errorf("pilotlight_warm_pool_preloads_total{outcome=loaded} = %v, want 2", got)
	}
}

// TestPreloadKilledLosesNoRequest: a pool process killed while it
// pre-loads (or just after) is replaced, and the wake that needed it is
// served all the same.
func TestPreloadKilledLosesNoRequest(t *testing.T) {
	e, _ := start(t, engine.Config{Functions: preloadFunctions(t), PoolSize: 1, ScaleToZeroAfter: 300 * time.Millisecond,
		MachineMemory: 8 << 30, Preload: true})
	testbin.WaitFor(t, "the warm pool to fill", 20*time.Second, func() bool { return len(e.PoolStatus()) == 1 })
	ref, _, _ := wake(t, e, bigFn, bigRev)
	var victim int
	testbin.WaitFor(t, "a pre-load to start", 20*time.Second, func() bool {
		for _, p := range e.PoolStatus() {
			if p.Preload != nil {
				victim = p.PID
				return true
			}
		}
		return false
	})
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	answer, c, pid := wake(t, e, bigFn, bigRev) // at once: the process may not be reaped yet
	if pid == victim {
		t.Fatalf("the wake was served by pid %d, killed before it", pid)
	}
	if answer != ref {
		t.Errorf("after the kill the revision answered\n%.200s\nnot\n%.200s", answer, ref)
	}
	t.Logf("wake after the kill: source %s, preload %q", c.Source, c.Preload)
}

// TestPreloadGivesWayToAStart: a pre-load is charged to the machine's
// budget; a start that finds the budget full because of it drops it and
// starts, instead of waiting for memory and being refused.
func TestPreloadGivesWayToAStart(t *testing.T) {
	// A generic pool process's RSS, measured, to size the budget: room for
	// a pool process with one 16 MiB matrix pre-loaded (about +32 MiB), not
	// for that and another revision's start (charged about 20 MiB more).
	pool := poolProcessRSS(t)
	big := testbin.WriteMatMulFunction(t, "big-b", bigN, 1)
	big.Isolation = functions.IsolationDedicated
	fns := append(preloadFunctions(t), big)
	e, reg := start(t, engine.Config{Functions: fns, PoolSize: 1, ScaleToZeroAfter: 300 * time.Millisecond,
		MachineMemory: pool + 44<<20, CapacityWait: 10 * time.Second, Preload: true})
	testbin.WaitFor(t, "the warm pool to fill", 20*time.Second, func() bool { return len(e.PoolStatus()) == 1 })
	wake(t, e, bigFn, bigRev)
	preloaded(t, e, bigRev)
	l := acquire(t, e, "big-b", "big-b-00001")
	l.Release(false)
	if got := testbin.Metric(t, reg, "pilotlight_warm_pool_preloaded_bytes", nil); got != 0 {
		t.Errorf("pilotlight_warm_pool_preloaded_bytes = %v after the start that needed its room, want 0", got)
	}
	if c := statusOf(e, "big-b-00001").LastCold; c == nil || c.Source != "pool" {
		t.Errorf("big-b's start: %+v, want one from the pool", c)
	}
}

// TestPreloadSkippedWithoutRoom: a pre-load is never made past the
// machine's budget. big-a, the latest at zero, is pre-loaded while there is
// room; the example's wake then takes that process (dropping it) and holds
// it, and the replacement pool process finds no room for big-a: the
// pre-load is skipped (counted), the process stays generic and holds
// nothing, and nothing is charged for it.
func TestPreloadSkippedWithoutRoom(t *testing.T) {
	// A generic pool process's RSS, measured, to size the budget: room for
	// a pool process and big-a's 16 MiB matrix (charged 20 MiB, about
	// +32 MiB once built), not for two pool processes and the charge.
	pool := poolProcessRSS(t)
	const room, charge = 44 << 20, 20 << 20 // charge: big-a's cost, its matrix and the revision overhead
	if pool < room-charge+4<<20 {
		t.Skipf("a pool process holds %d MiB: too little for two of them to leave no room for a 20 MiB pre-load in a budget of one and %d MiB", pool>>20, room>>20)
	}
	e, reg := start(t, engine.Config{Functions: preloadFunctions(t), PoolSize: 1, ScaleToZeroAfter: 300 * time.Millisecond,
		MachineMemory: pool + room, Preload: true})
	outcome := func(o string) float64 {
		return testbin.Metric(t, reg, "pilotlight_warm_pool_preloads_total", map[string]string{"revision": bigRev, "outcome": o})
	}
	testbin.WaitFor(t, "the warm pool to fill", 20*time.Second, func() bool { return len(e.PoolStatus()) == 1 })
	wake(t, e, bigFn, bigRev)
	preloaded(t, e, bigRev) // room for it: loaded
	if outcome("skipped") != 0 {
		t.Fatalf("pilotlight_warm_pool_preloads_total{outcome=skipped} = %v with room to spare, want 0", outcome("skipped"))
	}

	l := acquire(t, e, fn, rev) // takes the only idle process, big-a's
	defer l.Release(false)
	testbin.WaitFor(t, "the replacement pool process's pre-load to be skipped", 20*time.Second, func() bool { return outcome("skipped") >= 1 })
	testbin.WaitFor(t, "the warm pool to fill", 20*time.Second, func() bool { return len(e.PoolStatus()) == 1 })
	if p := e.PoolStatus()[0]; p.Preload != nil {
		t.Errorf("the idle pool process holds a pre-load %+v with no room for it", p.Preload)
	}
	if got := testbin.Metric(t, reg, "pilotlight_warm_pool_preloaded_bytes", nil); got != 0 {
		t.Errorf("pilotlight_warm_pool_preloaded_bytes = %v after a skipped pre-load, want 0", got)
	}
	if got := outcome("loaded"); got != 1 {
		t.Errorf("pilotlight_warm_pool_preloads_total{outcome=loaded} = %v, want 1 (the first, with room)", got)
	}
	if answer := inferBody(t, l); !strings.Contains(answer, `"model_name":"`+fn+`"`) {
		t.Errorf("the example, woken in the process whose pre-load it dropped, answered %s", answer)
	}
}

// poolProcessRSS is a generic warm-pool process's RSS, measured in an
// engine of its own (the test skips when /proc cannot say).
func poolProcessRSS(t *testing.T) int64 {
	t.Helper()
	probe, _ := start(t, engine.Config{Functions: []*functions.Manifest{manifest(t, nil)}, PoolSize: 1})
	testbin.WaitFor(t, "the warm pool to fill", 20*time.Second, func() bool { return len(probe.PoolStatus()) == 1 })
	pool := procmem.RSS(probe.PoolStatus()[0].PID)
	if pool == 0 {
		t.Skip("cannot read a pool process's RSS from /proc")
	}
	return pool
}

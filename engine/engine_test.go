package engine_test

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/engine"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/frame"
	"github.com/pilotlight/pilotlight/internal/testbin"
)

const (
	fn  = "example-tensor"
	rev = "example-tensor-00001"
)

func manifest(t *testing.T, mutate func(*functions.Manifest)) *functions.Manifest {
	t.Helper()
	m, err := functions.LoadDir(filepath.Join(testbin.Root(), "functions", fn))
	if err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		mutate(m)
	}
	return m
}

// start runs an engine until the test ends, and checks every child is gone afterwards.
func start(t *testing.T, cfg engine.Config) (*engine.Engine, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Binary = testbin.Runtime(t)
	cfg.Registerer = reg
	cfg.Logger = slog.New(slog.NewTextHandler(testLogOut(), nil))
	if cfg.TickInterval == 0 {
		cfg.TickInterval = 20 * time.Millisecond
	}
	e, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		pids := allPIDs(e)
		cancel()
		if err := <-done; err != nil {
			t.Errorf("engine run: %v", err)
		}
		for _, pid := range pids {
			if alive(pid) {
				t.Errorf("child %d still running after the engine stopped", pid)
			}
		}
	})
	return e, reg
}

func allPIDs(e *engine.Engine) []int {
	var pids []int
	for _, st := range e.Statuses() {
		for _, in := range st.Instances {
			pids = append(pids, in.PID)
		}
	}
	for _, in := range e.PoolStatus() {
		pids = append(pids, in.PID)
	}
	return pids
}

func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	if err != nil {
		return false
	}
	// A zombie still answers kill 0; its /proc state says Z.
	return !strings.Contains(procState(pid), "Z")
}

func procState(pid int) string {
	b, err := readFile("/proc/" + itoa(pid) + "/stat")
	if err != nil {
		return "Z"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "Z"
	}
	return f[2]
}

func infer(t *testing.T, l *engine.Lease) {
	t.Helper()
	body := `{"inputs":[{"name":"input_vectors","shape":[1,10],"datatype":"FP32","data":[1,1,1,1,1,1,1,1,1,1]}]}`
	resp, err := http.Post("http://"+l.Addr+"/v2/models/"+fn+"/infer", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("infer on leased instance: %d", resp.StatusCode)
	}
	// The same request over the instance's framed socket, which only serve's user may open.
	if l.Socket == "" {
		t.Fatal("the lease has no framed socket; the engine gives every instance one unless HTTPOnly")
	}
	if fi, err := os.Stat(l.Socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %s: %v, mode %v; want 0600", l.Socket, err, fi.Mode().Perm())
	}
	c, err := net.Dial("unix", l.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var enc frame.Encoder
	enc.StartRequest("", []byte("POST"), []byte("/v2/models/"+fn+"/infer"), 0)
	f, _ := enc.Finish([]byte(body))
	if _, err := c.Write(f); err != nil {
		t.Fatal(err)
	}
	var h frame.ResponseHead
	var buf []byte
	if err := frame.ReadResponseHead(bufio.NewReader(c), &buf, 64<<10, &h); err != nil || h.Status != 200 {
		t.Fatalf("framed infer on leased instance: status %d, %v", h.Status, err)
	}
}

func status(e *engine.Engine) engine.Status {
	for _, st := range e.Statuses() {
		if st.Revision == rev {
			return st
		}
	}
	return engine.Status{}
}

// TestScaleFromZeroToZeroAndBack: a dedicated revision's process exits at
// zero and the next request starts another (from the pool, or exec'd); a
// shared revision's sessions are unloaded at zero and the next request
// loads them into the same process, still running.
func TestScaleFromZeroToZeroAndBack(t *testing.T) {
	for _, tc := range []struct {
		name, isolation string
		poolSize        int
		sources         [2]string // each cycle's cold-start source
	}{
		{"pool", functions.IsolationDedicated, 1, [2]string{"pool", "pool"}},
		{"exec", functions.IsolationDedicated, 0, [2]string{"exec", "exec"}},
		{"shared", functions.IsolationShared, 1, [2]string{"pool", "shared"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			shared := tc.isolation == functions.IsolationShared
			m := manifest(t, func(m *functions.Manifest) { m.Isolation = tc.isolation })
			e, reg := start(t, engine.Config{Functions: []*functions.Manifest{m}, PoolSize: tc.poolSize, ScaleToZeroAfter: 300 * time.Millisecond})
			waitPool := func() {
				if tc.poolSize > 0 { // each cycle must find a warm process, however slow the refill
					testbin.WaitFor(t, "the warm pool to fill", 20*time.Second, func() bool { return len(e.PoolStatus()) == 1 })
				}
			}
			if n := len(status(e).Instances); n != 0 {
				t.Fatalf("instances before any request = %d, want 0 (scale to zero from the start)", n)
			}
			var pids []int
			for cycle := 0; cycle < 2; cycle++ {
				if !shared || cycle == 0 {
					waitPool()
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				l, err := e.Acquire(ctx, fn, rev)
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				if l.ColdStart <= 0 {
					t.Errorf("cycle %d: a request at zero reported no cold start", cycle)
				}
				// Ready when handed out, with nothing more asked of it (a
				// pool specialisation's answer is taken as its readiness).
				if resp, err := http.Get("http://" + l.Addr + "/v2/health/ready"); err != nil {
					t.Errorf("cycle %d: readiness of the process handed out: %v", cycle, err)
				} else {
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						t.Errorf("cycle %d: the process handed out answers readiness %s, want 200", cycle, resp.Status)
					}
				}
				infer(t, l)
				l.Release(false)
				if c := status(e).LastCold; c == nil || c.PID != l.PID || c.FirstResponse.IsZero() || c.Launch.Before(c.Trigger) ||
					c.Launched.Before(c.Launch) || c.Ready.Before(c.Launched) || c.FirstResponse.Before(c.Ready) {
					t.Errorf("cycle %d: cold start marks missing or out of order (arrival, launch, launched, ready, first response): %+v", cycle, c)
				}
				if st := status(e); st.LastCold == nil || st.LastCold.Source != tc.sources[cycle] {
					t.Errorf("cycle %d: cold start %+v, want source %s", cycle, st.LastCold, tc.sources[cycle])
				}
				pids = append(pids, l.PID)
				testbin.WaitFor(t, "scale to zero", 10*time.Second, func() bool { return len(status(e).Instances) == 0 })
				if !shared {
					testbin.WaitFor(t, "the scaled-down process to exit", 5*time.Second, func() bool { return !alive(l.PID) })
				} else if !alive(l.PID) {
					t.Fatalf("cycle %d: the shared process %d exited at zero; only the revision's sessions should go", cycle, l.PID)
				}
			}
			if shared {
				if pids[0] != pids[1] {
					t.Errorf("the wake ran in pid %d, not in the shared process %d still running", pids[1], pids[0])
				}
				if got := testbin.Metric(t, reg, "pilotlight_revision_unloads_total", map[string]string{"reason": "scale_to_zero"}); got != 2 {
					t.Errorf("unloads at zero = %v, want 2", got)
				}
				if st := status(e); st.Unloads["scale_to_zero"] != 2 || st.Loads["scale_from_zero"] != 2 {
					t.Errorf("the admin view's loads %v and unloads %v, want 2 from zero and 2 to zero", st.Loads, st.Unloads)
				}
			} else if pids[0] == pids[1] {
				t.Errorf("the second cold start reused pid %d: the first process did not exit", pids[0])
			}
			for _, src := range []string{"pool", "exec", "shared"} {
				want := 0.0
				for _, s := range tc.sources {
					if s == src {
						want++
					}
				}
				if got := testbin.Metric(t, reg, "pilotlight_cold_starts_total", map[string]string{"source": src}); got != want {
					t.Errorf("pilotlight_cold_starts_total{source=%q} = %v, want %v", src, got, want)
				}
			}
		})
	}
}

func TestQueueBoundAndTimeout(t *testing.T) {
	e, _ := start(t, engine.Config{Functions: []*functions.Manifest{manifest(t, nil)}, PoolSize: 0, QueueCapacity: 2})
	// Exec cold starts take well over 1 ms: this request times out while held.
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	_, err := e.Acquire(ctx, fn, rev)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("held past its deadline: %v, want DeadlineExceeded", err)
	}
	testbin.WaitFor(t, "the timed-out request's slot to be given back", time.Second, func() bool { return status(e).Queued == 0 })

	// Scale back to zero is not needed: fill the queue while the instance starts.
	e2, _ := start(t, engine.Config{Functions: []*functions.Manifest{manifest(t, nil)}, PoolSize: 0, QueueCapacity: 2})
	var wg sync.WaitGroup
	results := make(chan error, 2)
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			l, err := e2.Acquire(ctx, fn, rev)
			if err == nil {
				l.Release(false)
			}
			results <- err
		}()
	}
	testbin.WaitFor(t, "two held requests", 5*time.Second, func() bool { return status(e2).Queued == 2 })
	// With no deadline on its context, the third request can only come back
	// by being refused at once: it is never queued.
	if _, err := e2.Acquire(context.Background(), fn, rev); !errors.Is(err, engine.ErrQueueFull) {
		t.Fatalf("third request with a queue of 2: %v, want ErrQueueFull", err)
	}
	if q := status(e2).Queued; q != 2 {
		t.Errorf("after refusing the third request the queue holds %d, want the 2 held ones", q)
	}
	wg.Wait()
	close(results)
	for err := range results {
		if err != nil {
			t.Errorf("held request: %v (held requests must be released once the instance is ready)", err)
		}
	}
}

func TestCrashedInstanceIsReplaced(t *testing.T) {
	m := manifest(t, func(m *functions.Manifest) { m.Scaling.MinScale = 1 })
	e, reg := start(t, engine.Config{Functions: []*functions.Manifest{m}, PoolSize: 1})
	first := readyPID(t, e)
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testbin.WaitFor(t, "a replacement instance", 20*time.Second, func() bool {
		st := status(e)
		return len(st.Instances) == 1 && st.Instances[0].State == "ready" && st.Instances[0].PID != first
	})
	if got := testbin.Metric(t, reg, "pilotlight_instance_exits_total", map[string]string{"reason": "crashed"}); got != 1 {
		t.Errorf("crashed exits = %v, want 1", got)
	}
}

func TestBrokenRevisionFailsHeldRequestsWithTheReason(t *testing.T) {
	// The child reads function.yaml itself, so the broken revision must be on disk.
	dir := t.TempDir()
	raw := "name: " + fn + "\nhandler: tensor\nrevisions:\n  - name: " + rev + "\n    model: missing.onnx\n"
	m := testbin.WriteFunction(t, dir, raw)
	e, _ := start(t, engine.Config{Functions: []*functions.Manifest{m}, PoolSize: 1})
	// A StartError, not the context's deadline: the held request fails as
	// soon as the start fails.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l, err := e.Acquire(ctx, fn, rev)
	if err == nil {
		l.Release(false)
	}
	var se *engine.StartError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "missing.onnx") {
		t.Fatalf("acquire on a revision whose model is missing: %v, want a StartError naming the file", err)
	}
	if _, err := e.Acquire(context.Background(), fn, "nope"); !errors.Is(err, engine.ErrUnknownRevision) {
		t.Errorf("unknown revision: %v", err)
	}
}

func TestStopDrainsInFlightRequestsFirst(t *testing.T) {
	// A drain timeout far longer than the test: stopping must follow the last
	// request's release, not the timeout.
	const drainTimeout = 2 * time.Minute
	reg := prometheus.NewRegistry()
	e, err := engine.New(engine.Config{Functions: []*functions.Manifest{manifest(t, nil)}, PoolSize: 0, Binary: testbin.Runtime(t),
		Registerer: reg, Logger: slog.New(slog.NewTextHandler(testLogOut(), nil)), TickInterval: 20 * time.Millisecond, DrainTimeout: drainTimeout})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	l, err := e.Acquire(context.Background(), fn, rev)
	if err != nil {
		t.Fatal(err)
	}
	cancel() // stop everything while a request is in flight on the instance
	testbin.WaitFor(t, "the instance to be draining", 20*time.Second, func() bool {
		in := status(e).Instances
		return len(in) == 1 && in[0].State == "draining"
	})
	select {
	case err := <-done:
		t.Fatalf("the engine stopped (%v) with a request still in flight", err)
	default:
	}
	if !alive(l.PID) {
		t.Fatal("the instance was stopped with a request still in flight")
	}
	infer(t, l) // the in-flight request can still complete
	l.Release(false)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(drainTimeout / 2):
		t.Fatalf("the engine still runs %s after the last request finished: it waited for the drain timeout", drainTimeout/2)
	}
	if alive(l.PID) {
		t.Fatal("the instance outlived the engine")
	}
	if _, err := os.Stat(filepath.Dir(l.Socket)); !os.IsNotExist(err) {
		t.Errorf("the instances' socket directory %s outlived the engine (%v)", filepath.Dir(l.Socket), err)
	}
}

func TestHungInstanceIsKilledAndReplaced(t *testing.T) {
	m := manifest(t, func(m *functions.Manifest) { m.Scaling.MinScale = 1 })
	e, _ := start(t, engine.Config{Functions: []*functions.Manifest{m}, PoolSize: 0, LivenessInterval: 100 * time.Millisecond})
	first := readyPID(t, e)
	// Stopped, not dead: the process is there but answers nothing.
	if err := syscall.Kill(first, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	testbin.WaitFor(t, "a replacement for the hung instance", 20*time.Second, func() bool {
		st := status(e)
		for _, in := range st.Instances {
			if in.State == "ready" && in.PID != first {
				return true
			}
		}
		return false
	})
	testbin.WaitFor(t, "the hung process to be gone", 5*time.Second, func() bool { return !alive(first) })
}

// readyPID waits for the revision's single instance to be ready and returns its pid.
func readyPID(t *testing.T, e *engine.Engine) int {
	t.Helper()
	var pid int
	testbin.WaitFor(t, "minScale instance ready", 20*time.Second, func() bool {
		st := status(e)
		if len(st.Instances) == 1 && st.Instances[0].State == "ready" {
			pid = st.Instances[0].PID
			return true
		}
		return false
	})
	return pid
}

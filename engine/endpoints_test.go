package engine_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/engine"
	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/testbin"
)

// TestCountersExistAtZero: the series alerts and increase() panels use are
// there, at 0, for every revision before anything happened to it.
func TestCountersExistAtZero(t *testing.T) {
	_, reg := start(t, engine.Config{Functions: []*functions.Manifest{manifest(t, nil)}, PoolSize: 0})
	for _, c := range []struct {
		name   string
		labels map[string]string
	}{
		{"pilotlight_instance_start_failures_total", nil},
		{"pilotlight_instance_exits_total", map[string]string{"reason": "crashed"}},
		{"pilotlight_instance_exits_total", map[string]string{"reason": "stopped"}},
		{"pilotlight_cold_starts_total", map[string]string{"source": "pool"}},
		{"pilotlight_cold_starts_total", map[string]string{"source": "exec"}},
		{"pilotlight_cold_start_duration_seconds", map[string]string{"source": "pool"}},
	} {
		labels := map[string]string{"function": fn, "revision": rev}
		for k, v := range c.labels {
			labels[k] = v
		}
		if n := testbin.Series(t, reg, c.name, labels); n != 1 {
			t.Errorf("%s%v: %d series before any event, want 1", c.name, labels, n)
		} else if v := testbin.Metric(t, reg, c.name, labels); v != 0 {
			t.Errorf("%s%v = %v before any event, want 0", c.name, labels, v)
		}
	}
}

// TestEndpointsFollowInstances: what Prometheus discovers follows the
// processes: the idle pool process, then the instance it became (reached
// by the router over its framed socket, yet with its /metrics on its
// loopback port), then nothing of that instance once it scaled to zero.
// Dedicated: a shared process is one endpoint whatever it holds
// (TestSharedPlacement).
func TestEndpointsFollowInstances(t *testing.T) {
	m := manifest(t, func(m *functions.Manifest) { m.Isolation = functions.IsolationDedicated })
	e, _ := start(t, engine.Config{Functions: []*functions.Manifest{m}, PoolSize: 1, ScaleToZeroAfter: 300 * time.Millisecond})
	testbin.WaitFor(t, "the warm pool to fill", 20*time.Second, func() bool { return len(e.PoolStatus()) == 1 })
	pool := e.PoolStatus()[0]
	if got := e.Endpoints(); len(got) != 1 || got[0].PID != pool.PID || got[0].Function != "" || got[0].Addr == "" {
		t.Fatalf("endpoints with one idle pool process %d: %+v, want that process alone, with no function", pool.PID, got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	l, err := e.Acquire(ctx, fn, rev)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	infer(t, l) // over HTTP and over the framed socket
	l.Release(false)
	var inst engine.Endpoint
	for _, p := range e.Endpoints() {
		if p.Function != "" {
			if inst.PID != 0 {
				t.Fatalf("two instances listed after one cold start: %+v", e.Endpoints())
			}
			inst = p
		}
	}
	if inst.PID != l.PID || inst.Function != fn || inst.Revision != rev || inst.Addr != l.Addr || !strings.HasPrefix(inst.Addr, "127.0.0.1:") {
		t.Fatalf("instance endpoint %+v, want pid %d, %s/%s on %s (loopback)", inst, l.PID, fn, rev, l.Addr)
	}
	if l.Socket == "" {
		t.Fatal("the router reaches this instance over HTTP: the test means to show metrics on the port of a framed-socket instance")
	}
	metrics := get(t, "http://"+inst.Addr+"/metrics")
	want := `pilotlight_runtime_requests_total{code="200",function="` + fn + `",revision="` + rev + `"`
	if !strings.Contains(metrics, want) {
		t.Fatalf("the instance's /metrics on %s lacks %s:\n%s", inst.Addr, want, metrics)
	}

	testbin.WaitFor(t, "scale to zero", 10*time.Second, func() bool { return len(status(e).Instances) == 0 })
	testbin.WaitFor(t, "the pool to refill", 20*time.Second, func() bool { return len(e.PoolStatus()) == 1 })
	got := e.Endpoints()
	for _, p := range got {
		if p.PID == inst.PID || p.Function != "" {
			t.Errorf("after scaling to zero, endpoints still list %+v", p)
		}
	}
	if len(got) != 1 || got[0].PID == pool.PID {
		t.Errorf("after scaling to zero: %+v, want only the refilled pool process (not %d, which became the instance)", got, pool.PID)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", url, resp.Status, b)
	}
	return string(b)
}

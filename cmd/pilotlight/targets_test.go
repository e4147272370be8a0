package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/internal/bench"
	"github.com/pilotlight/pilotlight/internal/testbin"
)

type sdGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// TestPrometheusTargetsFollowServe: a real serve's discovery lists the
// router and the warm pool, then the instance a request started (reached
// over its framed socket, with /metrics on the loopback port it lists),
// then no instance once it scaled to zero, and the process it named is gone.
func TestPrometheusTargetsFollowServe(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: starts serve and its instances")
	}
	// Dedicated: a revision's own process is discovered, and exits at zero
	// (a shared process is one target without function labels: engine's TestSharedPlacement).
	_, base := startServe(t, testbin.Pilotlight(t), "--flags", "", "--pool-size", "1", "--scale-to-zero-after", "1s", "--isolation", "dedicated")
	host := strings.TrimPrefix(base, "http://")
	discover := func() (router []sdGroup, instances []sdGroup, pool []sdGroup) {
		t.Helper()
		resp, err := http.Get(base + "/admin/prometheus/targets")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var gs []sdGroup
		if err := json.NewDecoder(resp.Body).Decode(&gs); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("discovery: %d %v", resp.StatusCode, err)
		}
		for _, g := range gs {
			if len(g.Targets) != 1 {
				t.Fatalf("a group with %d targets: %+v", len(g.Targets), g)
			}
			switch g.Labels["__meta_pilotlight_role"] {
			case "router":
				router = append(router, g)
			case "instance":
				instances = append(instances, g)
			case "pool":
				pool = append(pool, g)
			default:
				t.Fatalf("a group without a known role: %+v", g)
			}
		}
		return
	}
	metricsOf := func(addr string) string {
		t.Helper()
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatalf("scrape %s: %v", addr, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}

	testbin.Poll(t, "the warm pool process to be discovered", 30*time.Second, 50*time.Millisecond, func() bool {
		_, _, pool := discover()
		return len(pool) == 1
	})
	router, instances, pool := discover()
	if len(router) != 1 || router[0].Targets[0] != host || len(router[0].Labels) != 1 {
		t.Errorf("router: %+v, want one target at %s with the role label alone", router, host)
	}
	if len(instances) != 0 {
		t.Errorf("instances before any request: %+v", instances)
	}
	if !strings.Contains(metricsOf(router[0].Targets[0]), "pilotlight_warm_pool_idle_processes") {
		t.Errorf("the router target does not serve the router's metrics")
	}

	body, err := bench.V2Body(base, "fraud", 1)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(base+"/v2/models/fraud/infer", "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("infer: %s", resp.Status)
	}
	a, err := bench.GetAdmin(base)
	if err != nil {
		t.Fatal(err)
	}
	pids, ports, _ := a.Instances("fraud", "fraud-00001")
	if len(pids) != 1 {
		t.Fatalf("fraud-00001 instances after one request: %v", pids)
	}
	_, instances, _ = discover()
	if len(instances) != 1 {
		t.Fatalf("discovered instances after one cold start: %+v", instances)
	}
	inst := instances[0]
	if strconv.Itoa(pids[0]) != pool[0].Labels["pid"] {
		t.Errorf("the cold start took pid %d, not the idle pool process %s discovery listed", pids[0], pool[0].Labels["pid"])
	}
	want := map[string]string{"__meta_pilotlight_role": "instance", "function": "fraud", "revision": "fraud-00001", "pid": strconv.Itoa(pids[0])}
	if inst.Targets[0] != "127.0.0.1:"+strconv.Itoa(ports[0]) || len(inst.Labels) != len(want) {
		t.Errorf("instance %+v, want 127.0.0.1:%d with %v", inst, ports[0], want)
	}
	for k, v := range want {
		if inst.Labels[k] != v {
			t.Errorf("instance label %s = %q, want %q", k, inst.Labels[k], v)
		}
	}
	if m := metricsOf(inst.Targets[0]); !strings.Contains(m, `pilotlight_runtime_requests_total{code="200",function="fraud",revision="fraud-00001"`) {
		t.Errorf("the discovered instance's /metrics has no fraud request:\n%s", m)
	}

	testbin.Poll(t, "the instance to scale to zero and leave the discovery", 30*time.Second, 50*time.Millisecond, func() bool {
		_, instances, _ := discover()
		return len(instances) == 0
	})
	testbin.Poll(t, "the discovered process to exit", 10*time.Second, 50*time.Millisecond, func() bool { return !alive(pids[0]) })
	testbin.Poll(t, "the pool to be discovered again", 30*time.Second, 50*time.Millisecond, func() bool {
		_, _, pool := discover()
		return len(pool) == 1
	})
	if _, _, p := discover(); p[0].Labels["pid"] == pool[0].Labels["pid"] {
		t.Errorf("the pool process %s became the instance, yet is listed idle again", pool[0].Labels["pid"])
	}
}

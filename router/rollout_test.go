package router_test

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/rollout"
)

const rolloutFlags = `{"flags": {
  "good-revision": {"state": "ENABLED", "variants": {"stable": "good-00001", "canary": "good-00002"}, "defaultVariant": "stable", "targeting": {}},
  "shaky-revision": {"state": "ENABLED", "variants": {"stable": "shaky-00001", "canary": "shaky-00002"}, "defaultVariant": "stable", "targeting": {}}}}`

// TestRolloutPromotesAHealthyCanaryAndRollsBackAFailingOne drives two
// rollouts through the whole platform under load: one to a healthy
// revision (promoted), one to a revision built to fail (rolled back).
func TestRolloutPromotesAHealthyCanaryAndRollsBackAFailingOne(t *testing.T) {
	dir := t.TempDir()
	fns := []*functions.Manifest{twoRevisions(t, dir, "good", false), twoRevisions(t, dir, "shaky", true)}
	path := flagFile(t, dir, rolloutFlags)
	p := startFlagPlatform(t, fns, path)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				fn := []string{"good", "shaky"}[i%2]
				req, _ := http.NewRequest("POST", p.url+"/v2/models/"+fn+"/infer", strings.NewReader(inferBody))
				req.Header.Set("X-User-ID", fmt.Sprintf("u-%d", rand.IntN(100000)))
				if resp, err := client.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				time.Sleep(2 * time.Millisecond)
			}
		}(w)
	}
	defer func() { close(stop); wg.Wait() }()

	spec := func(fn string) rollout.Spec {
		return rollout.Spec{Function: fn, To: fn + "-00002", Steps: []int{20, 50, 100}, Interval: 800 * time.Millisecond,
			MaxErrorRate: 0.01, MaxP99: 10 * time.Second, MinRequests: 5} // p99 includes the canary's cold start on a loaded machine; the failing canary fails on errors
	}
	for _, fn := range []string{"good", "shaky"} {
		if _, err := p.rollouts.Start(spec(fn)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.rollouts.Start(spec("good")); err != rollout.ErrRunning {
		t.Errorf("a second rollout of the same function: %v, want ErrRunning", err)
	}
	good, shaky := waitRollout(t, p, "good"), waitRollout(t, p, "shaky")
	if good.State != rollout.StatePromoted {
		t.Errorf("healthy canary: %s, decisions %+v", good.State, good.Decisions)
	}
	if shaky.State != rollout.StateRolledBack {
		t.Errorf("failing canary: %s, decisions %+v", shaky.State, shaky.Decisions)
	}
	last := shaky.Decisions[len(shaky.Decisions)-1]
	if last.Verdict != "rollback" || last.ErrorRate <= 0.01 || !strings.Contains(last.Reason, "error rate") {
		t.Errorf("rollback decision %+v should carry the error rate that failed", last)
	}
	// The flag file says what happened: good now defaults to its canary, shaky back to stable only.
	raw, _ := os.ReadFile(path)
	var doc struct {
		Flags map[string]struct {
			DefaultVariant string         `json:"defaultVariant"`
			Variants       map[string]any `json:"variants"`
			Targeting      map[string]any `json:"targeting"`
		} `json:"flags"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if g := doc.Flags["good-revision"]; g.Variants[g.DefaultVariant] != "good-00002" || len(g.Targeting) != 0 {
		t.Errorf("after promotion the good flag is %+v", g)
	}
	if s := doc.Flags["shaky-revision"]; s.Variants[s.DefaultVariant] != "shaky-00001" || len(s.Targeting) != 0 {
		t.Errorf("after rollback the shaky flag is %+v", s)
	}
	// And traffic follows: once the watcher has served the promoted file,
	// every request goes to the new revision.
	deadline := time.Now().Add(5 * time.Second)
	for revisionFor(t, client, p.url+"/v2/models/good/infer", map[string]string{"X-User-ID": "probe"}) != "good-00002" {
		if time.Now().After(deadline) {
			t.Fatal("the promoted flag was not served within 5 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := 0; i < 20; i++ {
		if rev := revisionFor(t, client, p.url+"/v2/models/good/infer", map[string]string{"X-User-ID": fmt.Sprint(i)}); rev != "good-00002" {
			t.Fatalf("after promotion a request went to %s", rev)
		}
	}
}

package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pilotlight/pilotlight/functions"
)

// ColdStartPreload times warm-pool cold starts of two copies of the
// function, pool of one, dedicated, the same way with the pool's pre-load
// off (the same function woken again and again, as bench coldstart's warm
// pool row) and on (serve's default): hits (the function woken is the one
// last scaled to zero, pre-loaded by the idle pool process) and misses (the
// two woken in turn: each wake finds the other's sessions pre-loaded, drops
// them and loads its own). Each wake's path is read back from the admin
// view and counted.
func ColdStartPreload(ctx context.Context, e Env, n int) ([]Row, error) {
	m, err := e.manifest()
	if err != nil {
		return nil, err
	}
	root, names, err := preloadCopies(m, 2)
	defer os.RemoveAll(root)
	if err != nil {
		return nil, err
	}
	off, _, _, err := preloadRun(ctx, e, root, names, n, false)
	if err != nil {
		return nil, err
	}
	hits, misses, paths, err := preloadRun(ctx, e, root, names, n, true)
	if err != nil {
		return nil, err
	}
	p50 := quantile(hits, .5)
	goal := 5 * time.Millisecond // issue 25: from outside
	return []Row{
		{Name: fmt.Sprintf("scale from zero, warm pool, pre-load off, the same function again: first request p50 / p99 (n=%d)", n), Value: ms(quantile(off, .5)) + " / " + ms(quantile(off, .99))},
		{Name: fmt.Sprintf("scale from zero, warm pool, pre-load hit (the function last at zero): first request p50 (n=%d; paths %v)", n, paths["hit"]), Value: ms(p50), Goal: "≤ " + ms(goal), Met: met(p50 <= goal)},
		{Name: "scale from zero, warm pool, pre-load hit: first request p99", Value: ms(quantile(hits, .99))},
		{Name: fmt.Sprintf("scale from zero, warm pool, pre-load miss (the other function's dropped): first request p50 / p99 (n=%d; paths %v)", n, paths["miss"]),
			Value: ms(quantile(misses, .5)) + " / " + ms(quantile(misses, .99))},
	}, nil
}

// preloadRun is one serve of ColdStartPreload's: n wakes of names[0], each
// right after its own scale to zero, then (pre-load on) n wakes of the two
// in turn.
func preloadRun(ctx context.Context, e Env, root string, names []string, n int, on bool) (hits, misses []time.Duration, paths map[string]map[string]int, err error) {
	s, err := StartServe(e.Bin, []string{"--functions", root, "--pool-size", "1", "--flags", "", "--isolation", functions.IsolationDedicated, "--warm-pool-preload=" + strconv.FormatBool(on)}, e.Log)
	if err != nil {
		return nil, nil, nil, err
	}
	defer s.Stop()
	base := "http://" + s.Addr
	bodies := map[string][]byte{}
	for _, name := range names { // wakes each once: the first cold starts are neither
		if bodies[name], err = V2Body(base, name, 1); err != nil {
			return nil, nil, nil, err
		}
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	// wake times one cold start of target once every function is at zero,
	// the pool is full and other's sessions are pre-loaded (other "": the
	// pool full is enough); it returns the time to the first response and
	// the path the admin view reports.
	wake := func(target, other string) (time.Duration, string, error) {
		rev := target + "-00001"
		if err := waitFor(ctx, other+" pre-loaded, every function at zero", func() (bool, error) {
			a, err := GetAdmin(base)
			if err != nil {
				return false, err
			}
			for _, name := range names {
				if pids, _, _ := a.Instances(name, name+"-00001"); len(pids) > 0 {
					return false, nil
				}
			}
			return len(a.WarmPool) >= 1 && (other == "" || a.preloaded(other+"-00001")), nil
		}); err != nil {
			return 0, "", err
		}
		url := base + "/v2/models/" + target + "/versions/" + rev + "/infer"
		t0 := time.Now()
		resp, err := client.Post(url, "application/json", strings.NewReader(string(bodies[target])))
		if err != nil {
			return 0, "", err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		d := time.Since(t0)
		if resp.StatusCode != 200 {
			return 0, "", fmt.Errorf("cold request to %s: %s", target, resp.Status)
		}
		if cs, _ := strconv.ParseFloat(resp.Header.Get("X-Pilotlight-Cold-Start"), 64); cs == 0 {
			return 0, "", fmt.Errorf("a request to %s at zero did not wait for a start", target)
		}
		a, err := GetAdmin(base)
		if err != nil {
			return 0, "", err
		}
		path, _ := a.lastPreload(target, rev)
		return d, path, nil
	}
	// One wake first, whatever was pre-loaded, makes names[0] the latest at zero.
	if _, _, err := wake(names[0], ""); err != nil {
		return nil, nil, nil, err
	}
	paths = map[string]map[string]int{"hit": {}, "miss": {}}
	other := ""
	if on {
		other = names[0]
	}
	for range n {
		d, path, err := wake(names[0], other)
		if err != nil {
			return nil, nil, nil, err
		}
		hits = append(hits, d)
		paths["hit"][path]++
	}
	for i := 0; on && i < n; i++ {
		d, path, err := wake(names[(i+1)%2], names[i%2])
		if err != nil {
			return nil, nil, nil, err
		}
		misses = append(misses, d)
		paths["miss"][path]++
	}
	return hits, misses, paths, nil
}

// preloadCopies writes n copies of m under a new root (m's model, named
// <name>-p0, -p1, ...), dedicated, scaling to zero 50 ms after their last
// request, and returns the root and their names.
func preloadCopies(m *functions.Manifest, n int) (string, []string, error) {
	root, err := os.MkdirTemp("", "pilotlight-preload-")
	if err != nil {
		return "", nil, err
	}
	model, err := filepath.Abs(m.ModelPath(m.Revisions[0]))
	if err != nil {
		return root, nil, err
	}
	var names []string
	for i := range n {
		name := fmt.Sprintf("%s-p%d", m.Name, i)
		dir := filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return root, nil, err
		}
		raw := fmt.Sprintf("name: %s\nhandler: %s\nrevisions:\n  - name: %s-00001\n    model: %s\nruntime:\n  sessions: %d\n  intraOpThreads: %d\nbatching:\n  maxBatch: %d\n  maxDelay: %s\nscaling:\n  maxScale: 1\n  targetConcurrency: %d\n  scaleToZeroAfter: 50ms\n",
			name, m.Handler, name, model, m.Runtime.Sessions, m.Runtime.IntraOpThreads, m.Batching.MaxBatch, m.Batching.MaxDelay, m.Scaling.TargetConcurrency)
		if err := os.WriteFile(filepath.Join(dir, functions.ManifestFile), []byte(raw), 0o644); err != nil {
			return root, nil, err
		}
		names = append(names, name)
	}
	return root, names, nil
}

// BurstPreload times the burst (burstFunctions dedicated functions at zero
// woken at once, a warm pool of burstPool) with the pool's pre-load off
// and on, in one run: before and after.
func BurstPreload(e Env, fnRoot string) ([]Row, error) {
	var rows []Row
	for _, on := range []bool{false, true} {
		fmt.Fprintf(os.Stderr, "bench coldstart: a burst of %d wakes, pre-load %v...\n", burstFunctions, on)
		lat, err := Density{}.burst(e, fnRoot, functions.IsolationDedicated, "--warm-pool-preload="+strconv.FormatBool(on))
		if err != nil {
			return nil, err
		}
		rows = append(rows, Row{Name: fmt.Sprintf("burst: %d dedicated functions at zero woken at once, warm pool of %d, pre-load %s: first responses p50 / p99 (n=%d)",
			burstFunctions, burstPool, map[bool]string{false: "off (before)", true: "on (after)"}[on], len(lat)),
			Value: ms(quantile(lat, .5)) + " / " + ms(quantile(lat, .99))})
	}
	return rows, nil
}

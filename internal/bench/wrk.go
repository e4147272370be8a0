package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"
)

// wrk is a second load generator for the hop: a C event loop that takes
// far less of the two cores than the Go generator (internal/loadgen), so
// more of the machine goes to the path under test. Debian package wrk
// (hack/deps/bench.apt).
type wrk struct {
	bin    string
	script string
}

const wrkScript = `wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(%q); wrk.body = f:read("*a"); f:close()
done = function(summary, latency, requests)
  io.write(string.format("PILOTLIGHT %%d %%d %%d %%d\n", summary.requests, summary.duration, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, latency:percentile(50)))
end
`

// newWrk writes the request script for body into dir; an error says wrk is missing.
func newWrk(dir string, body []byte) (*wrk, error) {
	bin, err := exec.LookPath("wrk")
	if err != nil {
		return nil, fmt.Errorf("wrk is not installed (Debian package wrk, listed in hack/deps/bench.apt; run hack/install-deps.sh)")
	}
	bodyFile := filepath.Join(dir, "body.json")
	if err := os.WriteFile(bodyFile, body, 0o644); err != nil {
		return nil, err
	}
	script := filepath.Join(dir, "post.lua")
	if err := os.WriteFile(script, []byte(fmt.Sprintf(wrkScript, bodyFile)), 0o644); err != nil {
		return nil, err
	}
	return &wrk{bin: bin, script: script}, nil
}

var wrkResult = regexp.MustCompile(`PILOTLIGHT (\d+) (\d+) (\d+) (\d+)`)

// run loads url with one thread and 32 connections for d: req/s, p50, failures.
func (w *wrk) run(ctx context.Context, url string, d time.Duration) (rps float64, p50 time.Duration, failed int, err error) {
	out, err := exec.CommandContext(ctx, w.bin, "-t1", "-c32", "-d"+strconv.Itoa(int(d.Seconds()))+"s", "-s", w.script, url).CombinedOutput()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("wrk %s: %v: %s", url, err, out)
	}
	m := wrkResult.FindSubmatch(out)
	if m == nil {
		return 0, 0, 0, fmt.Errorf("wrk %s: no result line in %q", url, out)
	}
	n, _ := strconv.Atoi(string(m[1]))
	us, _ := strconv.Atoi(string(m[2]))
	failed, _ = strconv.Atoi(string(m[3]))
	p, _ := strconv.Atoi(string(m[4]))
	return float64(n) / (float64(us) / 1e6), time.Duration(p) * time.Microsecond, failed, nil
}

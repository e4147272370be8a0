package engine

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// waitReady polls GET /v2/health/ready until 200, the process exits, or StartTimeout.
func (e *Engine) waitReady(in *Process) error {
	deadline := time.Now().Add(e.cfg.StartTimeout)
	wait := 500 * time.Microsecond
	url := "http://" + in.addr + "/v2/health/ready"
	var last string
	for time.Now().Before(deadline) {
		if !in.alive() {
			return fmt.Errorf("runtime process %d exited while starting%s", in.pid, in.said())
		}
		resp, err := readyClient.Get(url)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				var rep loadReport
				if json.Unmarshal(body, &rep) == nil && rep.Provider != "" {
					if old := in.loadedAs.Load(); old != nil {
						rep.Preload = old.Preload // the specialise answer's, which readiness does not repeat
					}
					in.loadedAs.Store(&rep)
				}
				return nil
			}
			last = strings.TrimSpace(string(body))
			if strings.Contains(last, "failed to load") {
				return fmt.Errorf("%s", last)
			}
		} else {
			last = err.Error()
		}
		select {
		case <-time.After(wait):
		case <-in.exited:
		}
		if wait < 2*time.Millisecond { // a cap of 20 ms added up to 20 ms to an exec cold start (ready at 60 ms, seen at 71.5)
			wait *= 2
		}
	}
	return fmt.Errorf("not ready within %s: %s", e.cfg.StartTimeout, last)
}

// checkLiveness asks every ready instance GET /v2/health/live, each in its
// own goroutine so a hung one delays nothing. An instance that misses
// livenessFailures checks in a row is hung, not crashed (its process is
// still there): it is killed, and the autoscaler starts a replacement.
func (e *Engine) checkLiveness() {
	for _, r := range e.order {
		for _, in := range r.snapshotInstances() {
			if in.getState() != stateReady || !in.checking.CompareAndSwap(false, true) {
				continue
			}
			go func(r *revision, in *Process) {
				defer in.checking.Store(false)
				resp, err := liveClient.Get("http://" + in.addr + "/v2/health/live")
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						in.missed.Store(0)
						return
					}
				}
				if in.missed.Add(1) < livenessFailures || in.getState() != stateReady {
					return
				}
				e.log.Error("instance stopped answering its liveness check; killing it so it is replaced",
					"function", r.fn.Name, "revision", r.rev.Name, "pid", in.pid, "missed", livenessFailures, "err", err)
				// Its exit is then counted as a crash: it failed, the engine only ended it.
				in.setState(stateFailed)
				in.mu.Lock()
				cmd := in.cmd
				in.mu.Unlock()
				if cmd != nil && cmd.Process != nil {
					_ = cmd.Process.Kill()
				}
			}(r, in)
		}
	}
}

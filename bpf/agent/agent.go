// Package agent is the eBPF probes' home in a cluster: a per-node process
// (the DaemonSet in config/security/bpf-agent.yaml) that finds the node's
// Pilotlight runtime processes by their command line, reads the function
// and revision Knative gave them (K_SERVICE, K_REVISION in their
// environment), and tracks them, so kernel latency is attributed exactly as
// on one machine. It imports neither router nor runtime.
package agent

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/pilotlight/pilotlight/internal/listener"
)

// Tracker is what the agent drives (the eBPF probes satisfy it).
type Tracker interface {
	Track(pid int, function, revision string) error
	Untrack(pid int)
}

// Instance is a runtime process found on the node.
type Instance struct {
	PID                int
	Function, Revision string
}

// Scan lists the pilotlight-runtime processes under procRoot (normally
// /proc; the agent runs with hostPID) with their Knative labels. A process
// without K_SERVICE/K_REVISION is skipped: it is not a function pod.
func Scan(procRoot string) []Instance {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil
	}
	var out []Instance
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := bytes.Split(bytes.TrimRight(cmdline, "\x00"), []byte{0})
		if len(args) < 1 || filepath.Base(string(args[0])) != listener.RuntimeBinary {
			continue
		}
		environ, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "environ"))
		if err != nil {
			continue
		}
		var fn, rev string
		for _, kv := range bytes.Split(environ, []byte{0}) {
			switch {
			case bytes.HasPrefix(kv, []byte("K_SERVICE=")):
				fn = string(kv[len("K_SERVICE="):])
			case bytes.HasPrefix(kv, []byte("K_REVISION=")):
				rev = string(kv[len("K_REVISION="):])
			}
		}
		if fn != "" && rev != "" {
			out = append(out, Instance{PID: pid, Function: fn, Revision: rev})
		}
	}
	return out
}

// Run rescans every interval until ctx ends, tracking new instances and
// untracking the ones that went away.
func Run(ctx context.Context, t Tracker, procRoot string, interval time.Duration, log *slog.Logger) {
	tracked := map[int]Instance{}
	for {
		seen := map[int]bool{}
		for _, in := range Scan(procRoot) {
			seen[in.PID] = true
			if old, ok := tracked[in.PID]; ok && old == in {
				continue
			}
			if err := t.Track(in.PID, in.Function, in.Revision); err != nil {
				log.Warn("track instance", "pid", in.PID, "function", in.Function, "revision", in.Revision, "err", err)
				continue
			}
			tracked[in.PID] = in
			log.Info("tracking instance", "pid", in.PID, "function", in.Function, "revision", in.Revision)
		}
		for pid := range tracked {
			if !seen[pid] {
				t.Untrack(pid)
				delete(tracked, pid)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

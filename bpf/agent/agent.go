// Package agent is the eBPF probes' home in a cluster: a per-node process
// (the DaemonSet in config/security/bpf-agent.yaml) that finds the node's
// Pilotlight runtime processes, tells which Knative revision pod each
// belongs to by its cgroup (the kubelet names a pod's cgroup after the
// pod's UID; the pod's labels serving.knative.dev/service and
// serving.knative.dev/revision come from the API), and tracks them, so
// kernel latency and each revision pod's cold start are attributed exactly
// as on one machine. It imports neither router nor runtime.
//
// A cold start is followed from the runtime's exec, which the probes report
// as it happens (bpf.Config.ExecComm, OnExec): container start (runc forked
// the process) -> exec -> listen -> ready (the send of the runtime's first
// answer saying it is ready) -> accept of the first request's connection ->
// its response's send. The runtime tags those two connections with a
// socket priority (listener.ReadyPriority, RequestPriority), so Knative's
// probe connections in between are not taken for the request's. The pod's
// Ready condition, seen through the agent's watch, comes later (the kubelet
// probes queue-proxy, then the API): it is recorded as pod_ready, no phase.
package agent

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pilotlight/pilotlight/bpf"
	"github.com/pilotlight/pilotlight/internal/listener"
)

// Tracker is what the agent drives (the eBPF probes satisfy it).
type Tracker interface {
	Track(pid int, function, revision string) error
	Untrack(pid int)
	Mark(pid int, phase string, t time.Time)
}

// Pod is what the agent needs of a pod: its Knative labels and readiness.
type Pod struct {
	UID                string
	Function, Revision string // serving.knative.dev/service, serving.knative.dev/revision
	Ready              bool
}

// Knative's pod labels a revision pod carries.
const (
	LabelService  = "serving.knative.dev/service"
	LabelRevision = "serving.knative.dev/revision"
)

// Instance is a runtime process found on the node.
type Instance struct {
	PID                int
	PodUID             string // from its cgroup; "" outside a pod
	Function, Revision string
}

// Agent ties the probes to the node's pods. Its methods are safe for
// concurrent use: OnExec comes from the probes, PodChanged from the watch.
type Agent struct {
	t        Tracker
	procRoot string
	log      *slog.Logger
	// withPods: labels come from the API (PodChanged); without it (no API
	// reachable) from the process's K_SERVICE/K_REVISION.
	withPods bool

	mu      sync.Mutex
	pods    map[string]Pod          // by UID
	tracked map[int]Instance        // by pid
	execd   map[int]bool            // pids whose exec the probes reported, cold start not yet ready
	pending map[string]map[int]bool // pod UID -> exec'd pids waiting for the pod to be known
}

// New returns an agent reading procRoot (the host's /proc: the DaemonSet
// runs with hostPID). withPods says PodChanged will be fed from the API.
func New(t Tracker, procRoot string, withPods bool, log *slog.Logger) *Agent {
	return &Agent{t: t, procRoot: procRoot, log: log, withPods: withPods,
		pods: map[string]Pod{}, tracked: map[int]Instance{}, execd: map[int]bool{}, pending: map[string]map[int]bool{}}
}

// podUIDPattern finds the pod UID in a kubelet cgroup path: cgroupfs names
// it pod<uid> (.../kubepods/besteffort/pod0f1e.../<container>), systemd
// kubepods-besteffort-pod0f1e_....slice.
var podUIDPattern = regexp.MustCompile(`pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})`)

// PodUID reads the pod UID from the kubelet's cgroup path of pid
// (/proc/<pid>/cgroup, any hierarchy: on this cgroup v1 machine runc puts
// containers in every v1 hierarchy and leaves the unified one at the
// root, so the v1 lines carry it). "" when pid is in no pod.
func PodUID(procRoot string, pid int) string {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if m := podUIDPattern.FindStringSubmatch(line); m != nil {
			return strings.ReplaceAll(m[1], "_", "-")
		}
	}
	return ""
}

// Scan lists the pilotlight-runtime processes under procRoot with their
// pod UID and the Knative labels of their environment (K_SERVICE,
// K_REVISION).
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
		in, ok := inspect(procRoot, pid)
		if ok {
			out = append(out, in)
		}
	}
	return out
}

// inspect reads one process: a pilotlight-runtime, its pod and its labels.
func inspect(procRoot string, pid int) (Instance, bool) {
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil {
		return Instance{}, false
	}
	args := bytes.Split(bytes.TrimRight(cmdline, "\x00"), []byte{0})
	if len(args) < 1 || filepath.Base(string(args[0])) != listener.RuntimeBinary {
		return Instance{}, false
	}
	in := Instance{PID: pid, PodUID: PodUID(procRoot, pid)}
	if environ, err := os.ReadFile(filepath.Join(dir, "environ")); err == nil {
		for _, kv := range bytes.Split(environ, []byte{0}) {
			switch {
			case bytes.HasPrefix(kv, []byte("K_SERVICE=")):
				in.Function = string(kv[len("K_SERVICE="):])
			case bytes.HasPrefix(kv, []byte("K_REVISION=")):
				in.Revision = string(kv[len("K_REVISION="):])
			}
		}
	}
	return in, true
}

// labelled gives in its function and revision: the pod's labels from the
// API, or its environment's without the API. false: not a revision pod
// (or its pod is not known yet).
func (a *Agent) labelled(in Instance) (Instance, bool) {
	if !a.withPods {
		return in, in.Function != "" && in.Revision != ""
	}
	pod, ok := a.pods[in.PodUID]
	if !ok || pod.Function == "" || pod.Revision == "" {
		return in, false
	}
	in.Function, in.Revision = pod.Function, pod.Revision
	return in, true
}

// OnExec is bpf.Config.OnExec: a runtime process just exec'd somewhere on
// the node. A revision pod's is tracked now, so its listen, accept and
// first response are followed; any other's timeline is dropped.
func (a *Agent) OnExec(pid int) {
	in, ok := inspect(a.procRoot, pid)
	a.mu.Lock()
	defer a.mu.Unlock()
	if !ok || (a.withPods && in.PodUID == "") {
		a.t.Untrack(pid) // gone already, or a runtime outside any pod (a local serve's)
		return
	}
	if a.withPods {
		if _, known := a.pods[in.PodUID]; !known {
			// The watch has not shown the pod yet: PodChanged tracks it.
			if a.pending[in.PodUID] == nil {
				a.pending[in.PodUID] = map[int]bool{}
			}
			a.pending[in.PodUID][pid] = true
			return
		}
	}
	a.execd[pid] = true
	a.track(in)
}

// track starts tracking in when it is a revision pod's, and marks it ready
// at once if its pod is Ready already. Callers hold a.mu.
func (a *Agent) track(in Instance) {
	li, ok := a.labelled(in)
	if !ok {
		if a.execd[in.PID] {
			delete(a.execd, in.PID)
			a.t.Untrack(in.PID)
		}
		return
	}
	if old, ok := a.tracked[in.PID]; ok && old == li {
		return
	}
	if err := a.t.Track(li.PID, li.Function, li.Revision); err != nil {
		a.log.Warn("track instance", "pid", li.PID, "function", li.Function, "revision", li.Revision, "err", err)
		return
	}
	a.tracked[li.PID] = li
	a.log.Info("tracking instance", "pid", li.PID, "pod_uid", li.PodUID, "function", li.Function, "revision", li.Revision, "cold_start", a.execd[li.PID])
	if a.execd[li.PID] && a.pods[li.PodUID].Ready {
		a.ready(li.PID, time.Now())
	}
}

// ready records that pid's pod turned Ready (bpf.MarkPodReady): an
// observation beside the cold start, whose ready is the runtime's own
// tagged answer. Callers hold a.mu.
func (a *Agent) ready(pid int, at time.Time) {
	if !a.execd[pid] {
		return
	}
	delete(a.execd, pid)
	a.t.Mark(pid, bpf.MarkPodReady, at)
}

// PodChanged is fed by the watch on the node's pods. A pod turning Ready
// is recorded in its exec'd runtime's cold start (pod_ready): the kubelet
// saw queue-proxy ready, and the API told the agent, after the runtime
// answered ready.
func (a *Agent) PodChanged(pod Pod) {
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pods[pod.UID] = pod
	for pid := range a.pending[pod.UID] {
		a.execd[pid] = true
		if in, ok := inspect(a.procRoot, pid); ok {
			a.track(in)
		} else {
			delete(a.execd, pid)
			a.t.Untrack(pid)
		}
	}
	delete(a.pending, pod.UID)
	if !pod.Ready {
		return
	}
	for pid, in := range a.tracked {
		if in.PodUID == pod.UID {
			a.ready(pid, now)
		}
	}
}

// PodDeleted forgets a pod the watch saw deleted.
func (a *Agent) PodDeleted(uid string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.pods, uid)
	delete(a.pending, uid)
}

// Run rescans every interval until ctx ends, tracking the revision pods'
// runtime processes (those already running when the agent started, and
// any whose exec it missed) and untracking the ones that went away.
func (a *Agent) Run(ctx context.Context, interval time.Duration) {
	for {
		seen := map[int]bool{}
		found := Scan(a.procRoot)
		a.mu.Lock()
		for _, in := range found {
			seen[in.PID] = true
			a.track(in)
		}
		for pid := range a.tracked {
			if !seen[pid] {
				a.t.Untrack(pid)
				delete(a.tracked, pid)
				delete(a.execd, pid)
			}
		}
		// A pod the watch never shows (another namespace's, or another
		// cluster's on a shared machine) keeps its pids waiting only while
		// they run.
		for uid, pids := range a.pending {
			for pid := range pids {
				if !seen[pid] {
					delete(pids, pid)
					a.t.Untrack(pid)
				}
			}
			if len(pids) == 0 {
				delete(a.pending, uid)
			}
		}
		a.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

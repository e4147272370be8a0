package bpf

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestExecCommTimeline is the node agent's way in: no parent it knows, a
// process found by its command name as it execs (Config.ExecComm), whose
// container start (its fork) comes with the exec. Tracked from OnExec and
// marked ready, it gets the whole timeline: container_start, exec, listen,
// ready, accept, first_write, in that order.
func TestExecCommTimeline(t *testing.T) {
	p, pid, addr, execs := startExecComm(t, Config{})
	poll := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get(t, poll, "http://"+addr+"/v2/health/ready") // the readiness probe's connection
	p.Mark(pid, MarkReady, time.Now())
	get(t, poll, "http://"+addr+"/")
	tl := latestInOrder(t, p)
	// A stranger with another name opens nothing.
	other := exec.Command("true")
	if err := other.Run(); err != nil {
		t.Fatal(err)
	}
	select {
	case pid := <-execs:
		t.Errorf("OnExec(%d) for a command not named %s", pid, execTestComm)
	case <-time.After(200 * time.Millisecond):
	}
	t.Logf("phases (ms): %v", tl.Phases)
}

// TestExecCommTaggedTimeline is the node agent's timeline as a Knative pod
// gives it: no mark from user space; the instance tags the connection of its
// first ready answer and of its first request with socket priorities
// (Config.ReadyPriority, RequestPriority). Probe connections before ready,
// and between ready and the request, are not taken for the request's.
func TestExecCommTaggedTimeline(t *testing.T) {
	const readyPrio, requestPrio = 5, 6
	p, _, addr, _ := startExecComm(t, Config{ReadyPriority: readyPrio, RequestPriority: requestPrio})
	poll := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get(t, poll, "http://"+addr+"/v2/health/ready") // a probe before ready
	get(t, poll, fmt.Sprintf("http://%s/tag?prio=%d", addr, readyPrio))
	get(t, poll, "http://"+addr+"/v2/health/ready") // a probe after ready
	probed := time.Now()
	get(t, poll, fmt.Sprintf("http://%s/tag?prio=%d", addr, requestPrio))
	tl := latestInOrder(t, p)
	for _, e := range tl.Events {
		if e.Name == EventAccept && e.Time.Before(probed) {
			t.Errorf("accept at %s is the probe's connection, before %s", e.Time, probed)
		}
	}
	t.Logf("phases (ms): %v", tl.Phases)
}

const execTestComm = "plx-exec-test"

// startExecComm loads the probes with cfg and ExecComm, starts the test
// server under that name, and tracks it from its exec.
func startExecComm(t *testing.T, cfg Config) (p *Probes, pid int, addr string, execs chan int) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), execTestComm)
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	execs = make(chan int, 16)
	cfg.ExecComm, cfg.OnExec = execTestComm, func(pid int) { execs <- pid }
	cfg.Registerer, cfg.ReadInterval = prometheus.NewRegistry(), 100*time.Millisecond
	p = newProbesWith(t, cfg)

	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), serverEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	select {
	case pid := <-execs:
		if pid != cmd.Process.Pid {
			t.Fatalf("OnExec(%d), want the child %d", pid, cmd.Process.Pid)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnExec never called for the child's exec")
	}
	if err := p.Track(cmd.Process.Pid, "fraud", "fraud-00002"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return p, cmd.Process.Pid, strings.TrimSpace(strings.TrimPrefix(line, "listening ")), execs
}

// latestInOrder waits for fraud/fraud-00002's timeline and checks it has
// every point and phase of a container's cold start, in order.
func latestInOrder(t *testing.T, p *Probes) Timeline {
	t.Helper()
	var tl Timeline
	waitFor(t, "the timeline", 5*time.Second, func() bool {
		var ok bool
		tl, ok = p.LatestTimelines()["fraud/fraud-00002"]
		return ok
	})
	at := map[string]time.Time{}
	for _, e := range tl.Events {
		at[e.Name] = e.Time
	}
	order := []string{EventContainerStart, EventExec, EventListen, MarkReady, EventAccept, EventFirstWrite}
	for i, name := range order {
		if _, ok := at[name]; !ok {
			t.Fatalf("no %s in %+v", name, tl.Events)
		}
		if i > 0 && at[name].Before(at[order[i-1]]) {
			t.Errorf("%s at %s, before %s at %s", name, at[name], order[i-1], at[order[i-1]])
		}
	}
	for _, ph := range []string{PhaseStartToExec, PhaseExecToListen, PhaseListenToReady, PhaseReadyToAccept, PhaseAcceptToFirstWrite} {
		if _, ok := tl.Phases[ph]; !ok {
			t.Errorf("no phase %s in %v", ph, tl.Phases)
		}
	}
	return tl
}

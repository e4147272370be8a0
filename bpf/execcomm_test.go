package bpf

import (
	"bufio"
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
	const comm = "plx-exec-test"
	bin := filepath.Join(t.TempDir(), comm)
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	execs := make(chan int, 16)
	reg := prometheus.NewRegistry()
	p := newProbesWith(t, Config{ExecComm: comm, OnExec: func(pid int) { execs <- pid }, Registerer: reg, ReadInterval: 100 * time.Millisecond})

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
	addr := strings.TrimSpace(strings.TrimPrefix(line, "listening "))
	poll := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get(t, poll, "http://"+addr+"/v2/health/ready") // the readiness probe's connection
	p.Mark(cmd.Process.Pid, MarkReady, time.Now())
	get(t, poll, "http://"+addr+"/")
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
	// A stranger with another name opens nothing.
	other := exec.Command("true")
	if err := other.Run(); err != nil {
		t.Fatal(err)
	}
	select {
	case pid := <-execs:
		t.Errorf("OnExec(%d) for a command not named %s", pid, comm)
	case <-time.After(200 * time.Millisecond):
	}
	t.Logf("phases (ms): %v", tl.Phases)
}

package agent

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// fakeProc writes /proc-like entries: the agent reads only cmdline and environ.
func fakeProc(t *testing.T, root string, pid int, cmdline, environ []string) {
	t.Helper()
	dir := filepath.Join(root, strconv.Itoa(pid))
	os.MkdirAll(dir, 0o755)
	join := func(xs []string) []byte {
		var b []byte
		for _, x := range xs {
			b = append(append(b, x...), 0)
		}
		return b
	}
	os.WriteFile(filepath.Join(dir, "cmdline"), join(cmdline), 0o644)
	os.WriteFile(filepath.Join(dir, "environ"), join(environ), 0o644)
}

type recorder struct {
	mu      sync.Mutex
	tracked map[int]string
}

func (r *recorder) Track(pid int, fn, rev string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tracked[pid] = fn + "/" + rev
	return nil
}
func (r *recorder) Untrack(pid int) { r.mu.Lock(); delete(r.tracked, pid); r.mu.Unlock() }
func (r *recorder) get() map[int]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[int]string{}
	for k, v := range r.tracked {
		out[k] = v
	}
	return out
}

func TestFindsFunctionPodsAndFollowsThem(t *testing.T) {
	root := t.TempDir()
	fakeProc(t, root, 10, []string{"/usr/local/bin/pilotlight-runtime", "--function", "/functions/fraud"}, []string{"K_SERVICE=fraud", "K_REVISION=fraud-00002", "PORT=8080"})
	fakeProc(t, root, 11, []string{"/usr/local/bin/pilotlight", "serve"}, []string{"K_SERVICE=x", "K_REVISION=y"})
	fakeProc(t, root, 12, []string{"/usr/local/bin/pilotlight-runtime", "--generic"}, []string{"PATH=/bin"})
	fakeProc(t, root, 13, []string{"/bin/sh", "pilotlight-runtime"}, []string{"K_SERVICE=a", "K_REVISION=b"})
	got := Scan(root)
	if len(got) != 1 || got[0] != (Instance{PID: 10, Function: "fraud", Revision: "fraud-00002"}) {
		t.Fatalf("Scan = %+v, want only pid 10 as fraud/fraud-00002", got)
	}
	r := &recorder{tracked: map[int]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Run(ctx, r, root, 10*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	waitFor := func(want map[int]string) {
		deadline := time.Now().Add(2 * time.Second)
		for {
			got := r.get()
			if len(got) == len(want) {
				ok := true
				for k, v := range want {
					ok = ok && got[k] == v
				}
				if ok {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("tracked %v, want %v", got, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor(map[int]string{10: "fraud/fraud-00002"})
	fakeProc(t, root, 20, []string{"pilotlight-runtime"}, []string{"K_SERVICE=recommend", "K_REVISION=recommend-00001"})
	waitFor(map[int]string{10: "fraud/fraud-00002", 20: "recommend/recommend-00001"})
	os.RemoveAll(filepath.Join(root, "10"))
	waitFor(map[int]string{20: "recommend/recommend-00001"})
}

// TestScanRealProc finds a real process on this machine's /proc: a copy of
// yes(1) named pilotlight-runtime, with the
// environment Knative gives a function pod.
func TestScanRealProc(t *testing.T) {
	yes, err := exec.LookPath("yes")
	if err != nil {
		t.Skip("no yes(1) to stand in for a runtime process")
	}
	raw, err := os.ReadFile(yes)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "pilotlight-runtime")
	if err := os.WriteFile(bin, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	// No arguments: yes(1) would parse an option such as --generic, refuse it
	// and exit, and a zombie's cmdline is empty, so Scan would miss it.
	cmd := exec.Command(bin)
	cmd.Env = []string{"K_SERVICE=fraud", "K_REVISION=fraud-00001"}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	for _, in := range Scan("/proc") {
		if in.PID == cmd.Process.Pid {
			if in.Function != "fraud" || in.Revision != "fraud-00001" {
				t.Fatalf("found %+v", in)
			}
			return
		}
	}
	t.Fatalf("pid %d not found in /proc", cmd.Process.Pid)
}

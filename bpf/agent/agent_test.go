package agent

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
	marks   []string
}

func (r *recorder) Mark(pid int, phase string, _ time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.marks = append(r.marks, strconv.Itoa(pid)+":"+phase)
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
	if len(got) != 2 {
		t.Fatalf("Scan = %+v, want the runtimes 10 and 12 (11 and 13 are not)", got)
	}
	got = slices.DeleteFunc(got, func(in Instance) bool { return in.Function == "" })
	if len(got) != 1 || got[0] != (Instance{PID: 10, Function: "fraud", Revision: "fraud-00002"}) {
		t.Fatalf("Scan = %+v, want only pid 10 as fraud/fraud-00002", got)
	}
	r := &recorder{tracked: map[int]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go New(r, root, false, slog.New(slog.NewTextHandler(io.Discard, nil))).Run(ctx, 10*time.Millisecond)
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

// TestPodsByCgroup follows a revision pod's runtime from its exec: the pod
// is found by the UID in its cgroup path, labelled from the pod (not its
// environment), and marked pod_ready when the pod turns Ready; a runtime in no
// pod, or in a pod that is no revision's, is dropped.
func TestPodsByCgroup(t *testing.T) {
	root := t.TempDir()
	const uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
	fakeProc(t, root, 30, []string{"/ko-app/pilotlight-runtime"}, []string{"K_SERVICE=wrong", "K_REVISION=wrong-1"})
	cg := "12:pids:/pilotlight-cluster-1/kubepods/besteffort/pod" + uid + "/0123abcd\n0::/\n"
	os.WriteFile(filepath.Join(root, "30", "cgroup"), []byte(cg), 0o644)
	fakeProc(t, root, 31, []string{"/usr/bin/pilotlight-runtime"}, nil) // a local serve's instance: no pod
	os.WriteFile(filepath.Join(root, "31", "cgroup"), []byte("0::/user.slice\n"), 0o644)
	fakeProc(t, root, 32, []string{"/usr/bin/pilotlight-runtime"}, nil)
	os.WriteFile(filepath.Join(root, "32", "cgroup"), []byte("4:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod11111111_2222_3333_4444_555555555555.slice/x\n"), 0o644)
	if got := PodUID(root, 32); got != "11111111-2222-3333-4444-555555555555" {
		t.Fatalf("PodUID of a systemd-driver cgroup = %q", got)
	}
	r := &recorder{tracked: map[int]string{}}
	a := New(r, root, true, slog.New(slog.NewTextHandler(io.Discard, nil)))
	a.OnExec(30) // the watch has not shown the pod yet
	a.OnExec(31)
	if len(r.get()) != 0 {
		t.Fatalf("tracked %v before the pod was known", r.get())
	}
	a.PodChanged(Pod{UID: uid, Function: "fraud", Revision: "fraud-00002"})
	a.PodChanged(Pod{UID: "11111111-2222-3333-4444-555555555555"}) // no Knative labels
	a.OnExec(32)
	if got := r.get(); len(got) != 1 || got[30] != "fraud/fraud-00002" {
		t.Fatalf("tracked %v, want only pid 30 with its pod's labels", got)
	}
	a.PodChanged(Pod{UID: uid, Function: "fraud", Revision: "fraud-00002", Ready: true})
	a.PodChanged(Pod{UID: uid, Function: "fraud", Revision: "fraud-00002", Ready: true})
	r.mu.Lock()
	marks := slices.Clone(r.marks)
	r.mu.Unlock()
	if !slices.Equal(marks, []string{"30:pod_ready"}) {
		t.Fatalf("marks %v, want one pod_ready mark for pid 30", marks)
	}
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

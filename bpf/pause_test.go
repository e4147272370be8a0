package bpf

import (
	"os"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
)

// TestPauseDetachesEverything: bench ebpf alternates Pause and Resume to
// compare the machine with and without the programs, so Pause must leave
// nothing attached (the syscall programs of SyscallLatency included) and
// Resume must bring back what was there.
func TestPauseDetachesEverything(t *testing.T) {
	p := newProbesWith(t, Config{ParentPID: os.Getpid(), SyscallLatency: true})
	attached := func() (int, int) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.links), len(p.dynLinks)
	}
	links, dyn := attached()
	if links == 0 || dyn != len(syscallPrograms) {
		t.Fatalf("after New: %d programs and %d dynamic ones attached, want some and the %d syscall programs", links, dyn, len(syscallPrograms))
	}
	for range 2 {
		p.Pause()
		if l, d := attached(); l != 0 || d != 0 {
			t.Errorf("paused: %d programs and %d dynamic ones still attached", l, d)
		}
		if err := p.Resume(); err != nil {
			t.Fatal(err)
		}
		if l, d := attached(); l != links || d != dyn {
			t.Errorf("resumed: %d programs and %d dynamic ones attached, want %d and %d", l, d, links, dyn)
		}
	}
	// A cold start opened while paused gets its programs at Resume.
	c := startServer(t)
	p.Pause()
	if err := p.Track(c.pid, "f", "r"); err != nil {
		t.Fatal(err)
	}
	if _, d := attached(); d != 0 {
		t.Errorf("paused: a cold start attached %d programs", d)
	}
	if err := p.Resume(); err != nil {
		t.Fatal(err)
	}
	if n := attachedOf(p, coldStartPrograms); n != len(coldStartPrograms) {
		t.Errorf("resumed with a cold start open: %d of its programs attached, want %d", n, len(coldStartPrograms))
	}
}

// TestSocketQueueIsAnOption: the socket receive-queue programs run for
// every packet and TCP read on the machine, so they are attached, and the
// histogram exported, only with Config.SocketQueue.
func TestSocketQueueIsAnOption(t *testing.T) {
	for _, on := range []bool{false, true} {
		reg := prometheus.NewRegistry()
		p := newProbesWith(t, Config{ParentPID: os.Getpid(), Registerer: reg, SocketQueue: on})
		c := startServer(t)
		if err := p.Track(c.pid, "f", "r"); err != nil {
			t.Fatal(err)
		}
		p.mu.Lock()
		n := 0
		for _, l := range p.links {
			info, err := l.Info()
			if err != nil {
				t.Fatal(err)
			}
			prog, err := ebpf.NewProgramFromID(info.Program)
			if err != nil {
				t.Fatal(err)
			}
			pi, err := prog.Info()
			prog.Close()
			if err != nil {
				t.Fatal(err)
			}
			if slices.Contains(socketQueuePrograms, pi.Name) {
				n++
			}
		}
		p.mu.Unlock()
		want := 0
		if on {
			want = len(socketQueuePrograms)
		}
		if n != want {
			t.Errorf("SocketQueue %v: %d socket-queue programs attached, want %d", on, n, want)
		}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		exported := hasSeries(mfs, mSockq, map[string]string{"function": "f"})
		if exported != on {
			t.Errorf("SocketQueue %v: %s exported: %v", on, mSockq, exported)
		}
	}
}

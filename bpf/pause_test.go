package bpf

import (
	"net/http"
	"os"
	"testing"
	"time"

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
// histogram exported, only with Config.SocketQueue; on_tcp_read only while
// a tracked instance has an open TCP connection (over serve's framed
// socket the requests' TCP reads are the client's and the router's).
func TestSocketQueueIsAnOption(t *testing.T) {
	for _, on := range []bool{false, true} {
		reg := prometheus.NewRegistry()
		p := newProbesWith(t, Config{ParentPID: os.Getpid(), Registerer: reg, ReadInterval: 100 * time.Millisecond, SocketQueue: on})
		c := startServer(t)
		if err := p.Track(c.pid, "f", "r"); err != nil {
			t.Fatal(err)
		}
		if n := attachedOf(p, socketQueuePrograms); n != 0 {
			t.Errorf("SocketQueue %v, no TCP connection open: %d socket-queue programs attached, want 0", on, n)
		}
		client := &http.Client{Transport: &http.Transport{}}
		want := 0
		if on {
			want = len(socketQueuePrograms)
		}
		get(t, client, "http://"+c.addr+"/")
		waitFor(t, "the socket-queue programs attached while the connection is open", 5*time.Second, func() bool {
			return attachedOf(p, socketQueuePrograms) == want
		})
		for range 20 {
			get(t, client, "http://"+c.addr+"/")
		}
		client.CloseIdleConnections()
		waitFor(t, "the socket-queue programs detached once the connection closed", 5*time.Second, func() bool {
			return attachedOf(p, socketQueuePrograms) == 0
		})
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

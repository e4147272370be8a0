package engine

import (
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/functions"
)

// The device's books: a process on the CPU holds nothing there; the first
// revision whose sessions got CUDA brings the process's one context; a
// budget of 0 bounds nothing.
func TestDeviceArithmetic(t *testing.T) {
	const ctx = cudaContextBytes
	for _, c := range []struct {
		name                     string
		budget, used, held, cost int64
		extra                    int64
		fits                     bool
	}{
		{"CPU revision, no budget", 0, 0, 0, 0, 0, true},
		{"CPU revision, a full device", 1 << 30, 1 << 30, 0, 0, 0, true},
		{"first CUDA revision of a process: arena and context", 2 << 30, 0, 0, 100 << 20, 100<<20 + ctx, true},
		{"second CUDA revision: its arena only", 2 << 30, ctx + 100<<20, 100 << 20, 100 << 20, 100 << 20, true},
		{"the context does not fit", ctx + 50<<20, 0, 0, 100 << 20, 100<<20 + ctx, false},
		{"exactly the budget", ctx + 100<<20, 0, 0, 100 << 20, 100<<20 + ctx, true},
		{"no budget, any amount", 0, 1 << 40, 0, 1 << 40, 1<<40 + ctx, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := deviceExtra(c.held, c.cost); got != c.extra {
				t.Errorf("deviceExtra(%d, %d) = %d, want %d", c.held, c.cost, got, c.extra)
			}
			if got := deviceFits(c.budget, c.used, c.held, c.cost); got != c.fits {
				t.Errorf("deviceFits = %v, want %v", got, c.fits)
			}
		})
	}
	if processDeviceBytes(0) != 0 || processDeviceBytes(1) != 1+ctx {
		t.Errorf("processDeviceBytes: 0 → %d, 1 → %d", processDeviceBytes(0), processDeviceBytes(1))
	}
}

// cudaStandIn stands in for a revision whose latest load got the CUDA
// provider (there is no GPU here): its process reported sessions that may
// hold device bytes on the device, as runtime/ort's arena limits make it.
func cudaStandIn(name string, device int64) *revision {
	m := &functions.Manifest{Name: name, Revisions: []functions.Revision{{Name: name + "-00001"}}}
	m.Runtime.Sessions = 1
	r := &revision{fn: m, rev: m.Revisions[0], shared: true, modelBytes: 1 << 20}
	r.device.Store(device)
	r.deviceKnown.Store(true)
	return r
}

// readyHost is a running shared process on the books, with no real
// process behind it (placement reads only the books).
func readyHost(id int64) *host {
	h := &host{id: id, ready: make(chan struct{}), base: 60 << 20}
	h.proc = &Process{pid: int(id), exited: make(chan struct{})}
	close(h.ready)
	return h
}

// Placement charges the device: a revision on CUDA goes into a process
// whose device room (its arena; the context is there already) fits the
// device budget; with no room anywhere and nothing idle to unload, it is a
// CapacityError naming the device budget, and a CPU revision is placed
// regardless of the device.
func TestPlacementChargesTheDevice(t *testing.T) {
	const arena = 300 << 20
	e := &Engine{cfg: Config{RuntimeMemory: 1 << 30, MachineMemory: 8 << 30, DeviceMemory: cudaContextBytes + 2*arena, DrainTimeout: time.Second},
		log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), children: map[int]*os.Process{}}
	h := readyHost(1)
	e.hosts = []*host{h}
	a, b, c := cudaStandIn("a", arena), cudaStandIn("b", arena), cudaStandIn("c", arena)
	for _, r := range []*revision{a, b} {
		slot := e.reserve(r)
		got, victims, err := e.place(r, slot)
		if err != nil || got != h || len(victims) != 0 {
			t.Fatalf("placing %s: host %v, victims %d, err %v", r.fn.Name, got, len(victims), err)
		}
		slot.setState(stateReady)
		slot.inflight.Add(1) // busy: never unloaded for room
	}
	if want := int64(2 * arena); h.device != want || e.deviceUsed() != cudaContextBytes+want {
		t.Fatalf("device books: host %d, used %d; want %d and %d", h.device, e.deviceUsed(), want, cudaContextBytes+want)
	}
	_, _, err := e.place(c, e.reserve(c))
	var ce *CapacityError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "device memory budget") {
		t.Fatalf("a third CUDA revision past the device budget: %v", err)
	}
	cpu := cudaStandIn("cpu", 0)
	if got, _, err := e.place(cpu, e.reserve(cpu)); err != nil || got != h {
		t.Fatalf("a CPU revision with the device full: host %v, err %v", got, err)
	}
	// b goes idle: the third CUDA revision takes its device room.
	slotB := b.instances[0]
	slotB.inflight.Add(-1)
	got, victims, err := e.place(c, e.reserve(c))
	if err != nil || got != h || len(victims) != 1 || victims[0] != slotB {
		t.Fatalf("with b idle: host %v, victims %v, err %v; want b unloaded for c", got, victims, err)
	}
	if h.device != 2*arena {
		t.Errorf("after b's room went to c: host device %d, want %d", h.device, 2*arena)
	}
}

// Before its first load a revision is charged on the device what its
// sessions would hold on CUDA when there is a device budget (a GPU), unless
// function.yaml asks for the CPU; after, what its load reported.
func TestDeviceCostBeforeTheFirstLoad(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/model.onnx", make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	rev := func(provider string) *revision {
		m := &functions.Manifest{Name: "f", Dir: dir, Revisions: []functions.Revision{{Name: "f-00001", Model: "model.onnx"}}}
		m.Runtime.Sessions, m.Runtime.Provider = 2, provider
		return &revision{fn: m, rev: m.Revisions[0], shared: true}
	}
	onCUDA := 2 * functions.DeviceArenaBytes(1<<20)
	for _, c := range []struct {
		name     string
		provider string
		budget   int64
		want     int64
	}{
		{"auto, a device budget", "auto", 8 << 30, onCUDA},
		{"cuda, a device budget", "cuda", 8 << 30, onCUDA},
		{"cpu, a device budget", "cpu", 8 << 30, 0},
		{"auto, no device budget", "auto", 0, 0},
	} {
		if got := rev(c.provider).deviceCost(c.budget); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
	r := rev("auto")
	r.device.Store(0) // its load fell back to the CPU
	r.deviceKnown.Store(true)
	if got := r.deviceCost(8 << 30); got != 0 {
		t.Errorf("after a load on the CPU: %d, want 0", got)
	}
}

package sessions

import (
	"context"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/pilotlight/pilotlight/runtime/ort"
)

func model(t *testing.T) string {
	t.Helper()
	if _, err := ort.Init(); err != nil {
		t.Fatalf("ONNX Runtime must be available (make ort): %v", err)
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "functions", "example-tensor", "model.onnx")
}

// TestPoolCreatesEverySessionWarm: sessions created at the same time all
// end up in the pool, each usable, and one caller per session runs at once.
func TestPoolCreatesEverySessionWarm(t *testing.T) {
	p, err := New(context.Background(), model(t), 3, ort.Options{Provider: "cpu", IntraOpThreads: 1}, Warmup{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Size() != 3 || len(p.free) != 3 || p.Provider != "cpu" || len(p.Inputs()) == 0 || len(p.Outputs()) == 0 {
		t.Fatalf("pool: size %d, free %d, provider %q, %d inputs, %d outputs", p.Size(), len(p.free), p.Provider, len(p.Inputs()), len(p.Outputs()))
	}
	seen := map[*ort.Session]bool{}
	for _, s := range p.all {
		if s == nil || seen[s] {
			t.Fatalf("sessions %v: want three distinct", p.all)
		}
		seen[s] = true
	}
	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := p.Run(context.Background(), WarmupInputs(p.Inputs())); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestPoolFailsWhole: a model that cannot load fails the pool with the
// reason, and a cancelled context stops it; nothing is left half made.
func TestPoolFailsWhole(t *testing.T) {
	dir := t.TempDir()
	if _, err := New(context.Background(), filepath.Join(dir, "missing.onnx"), 2, ort.Options{Provider: "cpu"}, Warmup{}); err == nil || !strings.Contains(err.Error(), "missing.onnx") {
		t.Fatalf("missing model: %v, want an error naming it", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := New(ctx, model(t), 2, ort.Options{Provider: "cpu"}, Warmup{}); err != context.Canceled {
		t.Fatalf("cancelled: %v, want context.Canceled", err)
	}
	if _, err := New(context.Background(), model(t), 0, ort.Options{}, Warmup{}); err == nil {
		t.Fatal("size 0 accepted")
	}
}

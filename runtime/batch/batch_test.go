package batch

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/functions/tensor"
)

// doubler is a Runner that doubles its input "x" into output "y" and
// records each call's rows and width; it stands in for the session pool so
// the tests can hold calls and observe them (the pool itself is tested with
// ONNX Runtime in runtime/server).
type doubler struct {
	mu    sync.Mutex
	calls []int // rows per call
	// widths holds, per call, the trailing width of its tensor and every
	// distinct value its rows carried (tests fill a row with its width).
	widths []callWidths
	// gate, when set, holds every call until it is closed; entered receives
	// one value per call that reached the gate.
	gate    chan struct{}
	entered chan struct{}
}

type callWidths struct {
	shape  int64
	values map[float32]bool
}

func (d *doubler) Run(_ context.Context, in []*tensor.Tensor) (map[string]*tensor.Tensor, time.Duration, error) {
	x := in[0].Data.([]float32)
	y := make([]float32, len(x))
	seen := map[float32]bool{}
	for i, v := range x {
		y[i] = 2 * v
		seen[v] = true
	}
	d.mu.Lock()
	d.calls = append(d.calls, int(in[0].Shape[0]))
	d.widths = append(d.widths, callWidths{shape: in[0].Shape[1], values: seen})
	d.mu.Unlock()
	if d.gate != nil {
		d.entered <- struct{}{}
		<-d.gate
	}
	return map[string]*tensor.Tensor{"y": {Name: "y", Datatype: tensor.FP32, Shape: append([]int64(nil), in[0].Shape...), Data: y}}, 0, nil
}

// fakeTimer replaces the MaxDelay timer: armed records every wait the
// batcher starts, fire ends the current one.
type fakeTimer struct {
	mu    sync.Mutex
	armed []time.Duration
	c     chan time.Time
}

func newFakeTimer() *fakeTimer { return &fakeTimer{c: make(chan time.Time, 1)} }

func (ft *fakeTimer) after(d time.Duration) <-chan time.Time {
	ft.mu.Lock()
	ft.armed = append(ft.armed, d)
	ft.mu.Unlock()
	return ft.c
}

func (ft *fakeTimer) waits() []time.Duration {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	return append([]time.Duration(nil), ft.armed...)
}

// waitFor polls cond (no fixed sleep decides the outcome); the deadline only
// turns a hang into a failure.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func row(v float32, rows int) []*tensor.Tensor {
	data := make([]float32, rows*2)
	for i := range data {
		data[i] = v
	}
	return []*tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{int64(rows), 2}, Data: data}}
}

func TestRowsGoBackToTheirRequests(t *testing.T) {
	// The first call holds the one session until all 40 requests are under
	// way, so the rest must be coalesced behind it.
	d := &doubler{gate: make(chan struct{}), entered: make(chan struct{}, 64)}
	b := New(Config{MaxBatch: 64, MaxDelay: 10 * time.Millisecond, Parallel: 1}, d)
	defer b.Stop()
	var wg sync.WaitGroup
	for i := 1; i <= 40; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			rows := 1 + i%3
			out, err := b.Submit(context.Background(), row(float32(i), rows), rows)
			if err != nil {
				t.Error(err)
				return
			}
			y := out["y"]
			if y.Shape[0] != int64(rows) {
				t.Errorf("request %d got %d rows, sent %d", i, y.Shape[0], rows)
			}
			for _, v := range y.Data.([]float32) {
				if v != float32(2*i) {
					t.Errorf("request %d got %v: another request's rows", i, v)
					return
				}
			}
		}(i)
	}
	<-d.entered
	waitFor(t, "40 requests under way", func() bool { return b.pending.Load() == 40 })
	close(d.gate)
	wg.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	total := 0
	for _, c := range d.calls {
		total += c
		if c > 64 {
			t.Errorf("a call of %d rows exceeds MaxBatch 64", c)
		}
	}
	if len(d.calls) >= 40 {
		t.Errorf("%d calls for 40 concurrent requests: nothing was coalesced", len(d.calls))
	}
	if total != 80 {
		t.Errorf("%d rows ran, 80 were sent", total)
	}
}

// TestNeverWaitsLongerThanMaxDelay: with company expected, a lone request
// waits on a timer of exactly MaxDelay and runs alone when it fires (a fake
// timer: the test asserts what the batcher waits for, not how long it took).
func TestNeverWaitsLongerThanMaxDelay(t *testing.T) {
	d := &doubler{}
	const maxDelay = 30 * time.Millisecond
	ft := newFakeTimer()
	b := start(Config{MaxBatch: 1000, MaxDelay: maxDelay, Parallel: 1}, d, ft.after)
	defer b.Stop()
	// Make the batcher expect company: the previous batch held two requests.
	d.gate, d.entered = make(chan struct{}), make(chan struct{}, 8)
	go b.Submit(context.Background(), row(1, 1), 1) // holds the one session
	<-d.entered
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); b.Submit(context.Background(), row(1, 1), 1) }()
	}
	waitFor(t, "two requests queued behind the held one", func() bool { return b.pending.Load() == 3 })
	close(d.gate)      // later calls pass straight through
	ft.c <- time.Now() // the pair may wait for a third; let it go
	wg.Wait()
	d.mu.Lock()
	if last := d.calls[len(d.calls)-1]; last != 2 {
		t.Fatalf("the two queued requests ran as calls %v, want one call of 2 rows", d.calls)
	}
	d.mu.Unlock()

	done := make(chan error, 1)
	go func() { _, err := b.Submit(context.Background(), row(1, 1), 1); done <- err }()
	waitFor(t, "the lone request to wait for company", func() bool { return len(ft.waits()) == 2 })
	select {
	case err := <-done:
		t.Fatalf("the lone request finished (%v) before its MaxDelay timer fired", err)
	default:
	}
	if w := ft.waits()[1]; w != maxDelay {
		t.Fatalf("the lone request waits on a %s timer, want MaxDelay %s", w, maxDelay)
	}
	ft.c <- time.Now()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if last := d.calls[len(d.calls)-1]; last != 1 {
		t.Fatalf("the lone request ran in a call of %d rows, want 1", last)
	}
}

// TestLoneRequestsAtLowLoadDoNotWait: sequential requests never arm the
// MaxDelay timer (company is not coming).
func TestLoneRequestsAtLowLoadDoNotWait(t *testing.T) {
	d := &doubler{}
	ft := newFakeTimer()
	b := start(Config{MaxBatch: 32, MaxDelay: time.Hour, Parallel: 1}, d, ft.after)
	defer b.Stop()
	for i := 0; i < 10; i++ {
		if _, err := b.Submit(context.Background(), row(1, 1), 1); err != nil {
			t.Fatal(err)
		}
	}
	if w := ft.waits(); len(w) != 0 {
		t.Fatalf("10 sequential requests armed the MaxDelay timer %d times: they waited for company that never came", len(w))
	}
}

// TestIncompatibleShapesAreNotMixedAndStopDrains stops the batcher while
// submissions are held behind busy sessions: every one must get its own
// result, and no call may mix the two widths.
func TestIncompatibleShapesAreNotMixedAndStopDrains(t *testing.T) {
	d := &doubler{gate: make(chan struct{}), entered: make(chan struct{}, 64)}
	const parallel, n = 2, 20
	b := New(Config{MaxBatch: 64, MaxDelay: 5 * time.Millisecond, Parallel: parallel}, d)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			width := 2 + i%2 // two trailing shapes that cannot share a call
			data := make([]float32, width)
			for j := range data {
				data[j] = float32(width)
			}
			in := []*tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, int64(width)}, Data: data}}
			out, err := b.Submit(context.Background(), in, 1)
			if err != nil {
				errs <- fmt.Errorf("width %d: %w", width, err)
				return
			}
			y := out["y"]
			if y.Shape[0] != 1 || y.Shape[1] != int64(width) {
				errs <- fmt.Errorf("width %d came back with shape %v", width, y.Shape)
				return
			}
			for _, v := range y.Data.([]float32) {
				if v != float32(2*width) {
					errs <- fmt.Errorf("width %d got %v: another request's rows", width, v)
					return
				}
			}
		}(i)
	}
	// Both sessions busy and every submission accepted and waiting.
	for i := 0; i < parallel; i++ {
		<-d.entered
	}
	waitFor(t, "every submission to be accepted", func() bool { return b.accepted.Load() == n })
	stopped := make(chan struct{})
	go func() { b.Stop(); close(stopped) }()
	<-b.stop // Stop has begun while the submissions are held
	if _, err := b.Submit(context.Background(), row(1, 1), 1); err != ErrStopped {
		t.Errorf("submit after Stop: %v, want ErrStopped", err)
	}
	close(d.gate)
	wg.Wait()
	<-stopped
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	rows := 0
	for i, c := range d.widths {
		rows += d.calls[i]
		if len(c.values) != 1 || !c.values[float32(c.shape)] {
			t.Errorf("call %d (width %d, %d rows) mixed rows of widths %v", i, c.shape, d.calls[i], c.values)
		}
	}
	if rows != n {
		t.Errorf("%d rows ran, %d were submitted", rows, n)
	}
}

func TestCancelledRequestDoesNotBlockOthers(t *testing.T) {
	d := &doubler{gate: make(chan struct{}), entered: make(chan struct{}, 8)}
	b := New(Config{MaxBatch: 8, MaxDelay: time.Millisecond, Parallel: 1}, d)
	defer b.Stop()
	go b.Submit(context.Background(), row(1, 1), 1) // occupies the session
	<-d.entered
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := b.Submit(ctx, row(2, 1), 1); errc <- err }()
	waitFor(t, "the second request to queue", func() bool { return b.pending.Load() == 2 })
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("a cancelled request succeeded")
	}
	close(d.gate) // later calls pass straight through
	out, err := b.Submit(context.Background(), row(3, 1), 1)
	if err != nil || out["y"].Data.([]float32)[0] != 6 {
		t.Fatalf("after a cancellation: %v %v", out, err)
	}
}

// TestSignatureOfScalars: a request carrying a rank-0 tensor (Silero VAD's
// sr) is signed without slicing its empty shape, and a scalar never shares
// a signature with a one-element vector.
func TestSignatureOfScalars(t *testing.T) {
	scalar := []*tensor.Tensor{{Name: "sr", Datatype: tensor.INT64, Shape: []int64{}, Data: []int64{16000}}}
	vector := []*tensor.Tensor{{Name: "sr", Datatype: tensor.INT64, Shape: []int64{1}, Data: []int64{16000}}}
	if a, b := signature(scalar), signature(vector); a == b {
		t.Errorf("scalar and vector signed alike: %q", a)
	}
	b := New(Config{MaxBatch: 1}, runnerFunc(func(_ context.Context, in []*tensor.Tensor) (map[string]*tensor.Tensor, time.Duration, error) {
		return map[string]*tensor.Tensor{"sr": in[0]}, 0, nil
	}))
	defer b.Stop()
	out, err := b.Submit(context.Background(), scalar, 1)
	if err != nil || out["sr"].Data.([]int64)[0] != 16000 || len(out["sr"].Shape) != 0 {
		t.Fatalf("scalar through the batcher: %v %+v", err, out)
	}
}

type runnerFunc func(context.Context, []*tensor.Tensor) (map[string]*tensor.Tensor, time.Duration, error)

func (f runnerFunc) Run(ctx context.Context, in []*tensor.Tensor) (map[string]*tensor.Tensor, time.Duration, error) {
	return f(ctx, in)
}

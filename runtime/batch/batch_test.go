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
// records each call's rows; it stands in for the session pool so the tests
// can control and observe timing (the pool itself is tested with ONNX
// Runtime in runtime/server).
type doubler struct {
	mu    sync.Mutex
	calls []int
	delay time.Duration
}

func (d *doubler) Run(_ context.Context, in []*tensor.Tensor) (map[string]*tensor.Tensor, time.Duration, error) {
	time.Sleep(d.delay)
	x := in[0].Data.([]float32)
	y := make([]float32, len(x))
	for i, v := range x {
		y[i] = 2 * v
	}
	d.mu.Lock()
	d.calls = append(d.calls, int(in[0].Shape[0]))
	d.mu.Unlock()
	return map[string]*tensor.Tensor{"y": {Name: "y", Datatype: tensor.FP32, Shape: append([]int64(nil), in[0].Shape...), Data: y}}, d.delay, nil
}

func row(v float32, rows int) []*tensor.Tensor {
	data := make([]float32, rows*2)
	for i := range data {
		data[i] = v
	}
	return []*tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{int64(rows), 2}, Data: data}}
}

func TestRowsGoBackToTheirRequests(t *testing.T) {
	d := &doubler{delay: 5 * time.Millisecond}
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

func TestNeverWaitsLongerThanMaxDelay(t *testing.T) {
	d := &doubler{}
	const maxDelay = 30 * time.Millisecond
	b := New(Config{MaxBatch: 1000, MaxDelay: maxDelay, Parallel: 1}, d)
	defer b.Stop()
	// Make the batcher expect company (previous batch held two requests),
	// then send one request alone: it waits at most MaxDelay.
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); b.Submit(context.Background(), row(1, 1), 1) }()
	}
	wg.Wait()
	for i := 0; i < 5; i++ {
		begin := time.Now()
		if _, err := b.Submit(context.Background(), row(1, 1), 1); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(begin); took > maxDelay+20*time.Millisecond {
			t.Fatalf("a lone request took %s with MaxDelay %s", took, maxDelay)
		}
	}
}

func TestLoneRequestsAtLowLoadDoNotWait(t *testing.T) {
	d := &doubler{}
	b := New(Config{MaxBatch: 32, MaxDelay: 200 * time.Millisecond, Parallel: 1}, d)
	defer b.Stop()
	b.Submit(context.Background(), row(1, 1), 1)
	begin := time.Now()
	for i := 0; i < 10; i++ {
		if _, err := b.Submit(context.Background(), row(1, 1), 1); err != nil {
			t.Fatal(err)
		}
	}
	if took := time.Since(begin); took > 100*time.Millisecond {
		t.Fatalf("10 sequential requests took %s: each waited for company that never came", took)
	}
}

func TestIncompatibleShapesAreNotMixedAndStopDrains(t *testing.T) {
	d := &doubler{delay: 2 * time.Millisecond}
	b := New(Config{MaxBatch: 64, MaxDelay: 5 * time.Millisecond, Parallel: 2}, d)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			width := 2 + i%2 // two trailing shapes that cannot share a call
			data := make([]float32, width)
			in := []*tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, int64(width)}, Data: data}}
			out, err := b.Submit(context.Background(), in, 1)
			if err != nil {
				errs <- err
				return
			}
			if got := out["y"].Shape[1]; got != int64(width) {
				errs <- fmt.Errorf("width %d came back as %d", width, got)
			}
		}(i)
	}
	wg.Wait()
	b.Stop()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, err := b.Submit(context.Background(), row(1, 1), 1); err != ErrStopped {
		t.Errorf("submit after Stop: %v, want ErrStopped", err)
	}
}

func TestCancelledRequestDoesNotBlockOthers(t *testing.T) {
	d := &doubler{delay: 20 * time.Millisecond}
	b := New(Config{MaxBatch: 8, MaxDelay: time.Millisecond, Parallel: 1}, d)
	defer b.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	go b.Submit(context.Background(), row(1, 1), 1) // occupies the session
	time.Sleep(2 * time.Millisecond)
	if _, err := b.Submit(ctx, row(2, 1), 1); err == nil {
		t.Fatal("a request past its deadline succeeded")
	}
	out, err := b.Submit(context.Background(), row(3, 1), 1)
	if err != nil || out["y"].Data.([]float32)[0] != 6 {
		t.Fatalf("after a cancellation: %v %v", out, err)
	}
}

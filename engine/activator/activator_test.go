package activator

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestReleasesInArrivalOrder(t *testing.T) {
	q := New(10)
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := q.Wait(context.Background()); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
		}(i)
		for q.Len() != i+1 { // enqueue strictly one after another
			time.Sleep(time.Millisecond)
		}
	}
	for i := 0; i < 5; i++ {
		if n := q.Release(1); n != 1 {
			t.Fatalf("release %d released %d", i, n)
		}
		for {
			mu.Lock()
			done := len(order) == i+1
			mu.Unlock()
			if done {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	wg.Wait()
	for i, v := range order {
		if v != i {
			t.Fatalf("released out of order: %v", order)
		}
	}
}

func TestFullQueueRefusesAtOnce(t *testing.T) {
	q := New(2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < 2; i++ {
		go q.Wait(ctx)
	}
	for q.Len() != 2 { // wait for the two waiters, not for a fixed time
		time.Sleep(time.Millisecond)
	}
	// A context without deadline: the third waiter can only return by being
	// refused at once, and it never takes a place in the queue.
	if err := q.Wait(context.Background()); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("third waiter: %v, want ErrQueueFull", err)
	}
	if n := q.Len(); n != 2 {
		t.Errorf("after refusing the third waiter the queue holds %d, want 2", n)
	}
}

func TestCancelledWaiterGivesBackItsSlot(t *testing.T) {
	q := New(1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := q.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait: %v", err)
	}
	if q.Len() != 0 {
		t.Fatalf("len after cancel = %d, want 0", q.Len())
	}
	if !q.Oldest().IsZero() {
		t.Error("oldest of an empty queue should be zero")
	}
	go q.Wait(context.Background())
	for q.Len() != 1 {
		time.Sleep(time.Millisecond)
	}
	if n := q.Release(-1); n != 1 {
		t.Fatalf("release all = %d", n)
	}
}

// TestReleaseBeforeTheWaitIsNotLost: a release between the caller's look
// for an instance (epoch read) and its wait is the instance it looked for
// becoming ready: WaitSince returns at once instead of holding the caller
// until its context ends (the shared wake's 20 s flake under -race).
func TestReleaseBeforeTheWaitIsNotLost(t *testing.T) {
	q := New(4)
	epoch := q.Epoch()
	if n := q.Release(-1); n != 0 {
		t.Fatalf("released %d with nobody waiting", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := q.WaitSince(ctx, epoch); err != nil {
		t.Fatalf("a wait after a release it had not seen: %v, want nil at once", err)
	}
	// Nothing released since the epoch read now: the wait holds.
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if err := q.WaitSince(short, q.Epoch()); err != context.DeadlineExceeded {
		t.Errorf("a wait with no release since its epoch returned %v, want the deadline", err)
	}
	if q.Len() != 0 {
		t.Errorf("queue holds %d after the waits ended", q.Len())
	}
}

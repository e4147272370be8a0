// Package activator holds requests for a revision that has no ready
// instance: a bounded FIFO per revision, released in arrival order when an
// instance becomes ready (Knative's activator, in process). A full queue
// refuses at once, so a flood costs a fast 503, not memory.
package activator

import (
	"container/list"
	"context"
	"errors"
	"sync"
	"time"
)

// ErrQueueFull is returned by Wait when the revision's queue is at capacity.
var ErrQueueFull = errors.New("activator queue full")

// Queue is one revision's bounded FIFO of held requests.
type Queue struct {
	mu       sync.Mutex
	capacity int
	waiters  list.List // of *waiter
	// epoch counts Release calls, with or without waiters: a caller that
	// looked for an instance before a release and waits after it must not
	// wait for a release that has already happened (WaitSince).
	epoch uint64
}

type waiter struct {
	ready   chan struct{}
	arrival time.Time
}

// New makes a queue holding at most capacity requests.
func New(capacity int) *Queue {
	return &Queue{capacity: capacity}
}

// Epoch is the count of releases so far, read before looking for a ready
// instance and passed to WaitSince.
func (q *Queue) Epoch() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.epoch
}

// Wait holds the caller until Release reaches it (nil), its context ends
// (the slot is given back and ctx.Err is returned), or the queue is full.
func (q *Queue) Wait(ctx context.Context) error {
	return q.WaitSince(ctx, q.Epoch())
}

// WaitSince is Wait for a caller that read epoch (Epoch) before it looked
// for an instance: when a Release has come since, it returns nil at once,
// and the caller looks again. Without it, an instance that became ready
// (and released a queue still empty) between the look and the wait would
// leave the request held until its context ended: a start that answers in
// a millisecond or two (a shared process's load) can beat the request's
// own goroutine to the queue on a loaded machine.
func (q *Queue) WaitSince(ctx context.Context, epoch uint64) error {
	q.mu.Lock()
	if q.epoch != epoch {
		q.mu.Unlock()
		return nil
	}
	if q.waiters.Len() >= q.capacity {
		q.mu.Unlock()
		return ErrQueueFull
	}
	w := &waiter{ready: make(chan struct{}), arrival: time.Now()}
	e := q.waiters.PushBack(w)
	q.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		q.mu.Lock()
		select {
		case <-w.ready:
			// Released while giving up: take the release, the caller decides.
			q.mu.Unlock()
			return nil
		default:
		}
		q.waiters.Remove(e)
		q.mu.Unlock()
		return ctx.Err()
	}
}

// Release lets up to n held requests go, oldest first; n < 0 releases all.
// It returns how many were released.
func (q *Queue) Release(n int) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.epoch++
	released := 0
	for (n < 0 || released < n) && q.waiters.Len() > 0 {
		w := q.waiters.Remove(q.waiters.Front()).(*waiter)
		close(w.ready)
		released++
	}
	return released
}

// Len is the number of requests held now.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.waiters.Len()
}

// Oldest is the arrival time of the request held longest (zero when empty).
func (q *Queue) Oldest() time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.waiters.Len() == 0 {
		return time.Time{}
	}
	return q.waiters.Front().Value.(*waiter).arrival
}

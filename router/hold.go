package router

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// holdCtx is a request's context for acquiring an instance: it ends at the
// request deadline or when the client goes away. fasthttp keeps no
// per-request cancellation, and a timer plus a watcher for every request
// would cost more than the hop itself, so both start only when someone
// waits on Done: the activator does when the request is held for a cold
// start, a warm request never does.
type holdCtx struct {
	parent   context.Context // values (traces) and, on the net/http path, cancellation
	deadline time.Time
	conn     net.Conn // watched for the client leaving; nil: parent's Done covers it

	once    sync.Once
	started atomic.Bool
	inner   context.Context
	cancel  context.CancelCauseFunc
	stopW   func()
}

func (h *holdCtx) reset(parent context.Context, deadline time.Time, conn net.Conn) {
	*h = holdCtx{parent: parent, deadline: deadline, conn: conn}
}

func (h *holdCtx) start() {
	h.once.Do(func() {
		// On the fast path the parent is fasthttp's RequestCtx, which the
		// server reuses for the connection's next request: a cancellation
		// goroutine watching it could outlive this request and race with
		// that reuse. Its only cancellation is server shutdown, which ends
		// held requests through the engine anyway; so the client's leaving
		// (the watcher) and the deadline are what end this context there.
		cancelParent := h.parent
		if h.conn != nil {
			cancelParent = context.Background()
		}
		ctx, cancel := context.WithDeadline(cancelParent, h.deadline)
		inner, cancelCause := context.WithCancelCause(ctx)
		h.inner = inner
		h.cancel = func(cause error) { cancelCause(cause); cancel() }
		if h.conn != nil {
			h.stopW = watchPeer(h.conn, cancelCause)
		}
		h.started.Store(true)
	})
}

// Deadline implements context.Context.
func (h *holdCtx) Deadline() (time.Time, bool) { return h.deadline, true }

// Done implements context.Context; the first call arms the deadline and the watcher.
func (h *holdCtx) Done() <-chan struct{} {
	h.start()
	return h.inner.Done()
}

// Err implements context.Context.
func (h *holdCtx) Err() error {
	if h.started.Load() {
		return h.inner.Err()
	}
	if err := h.parent.Err(); err != nil {
		return err
	}
	if !time.Now().Before(h.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

// Value implements context.Context.
func (h *holdCtx) Value(key any) any {
	if h.started.Load() {
		if v := h.inner.Value(key); v != nil {
			return v // context.Cause finds the inner cancellation through it
		}
	}
	return h.parent.Value(key)
}

// cause is why the context ended (errClientGone when the watcher saw the client leave).
func (h *holdCtx) cause() error {
	if h.started.Load() {
		return context.Cause(h.inner)
	}
	return h.Err()
}

// end stops the watcher and releases the timer; the context is done after.
func (h *holdCtx) end() {
	if !h.started.Load() {
		return
	}
	if h.stopW != nil {
		h.stopW()
	}
	h.cancel(context.Canceled)
}

// netConner is a connection wrapping another (TLS, the protocol sniffer).
type netConner interface{ NetConn() net.Conn }

// watchPeer cancels with errClientGone when the peer closes c, without
// consuming anything from it: it peeks (MSG_PEEK) when the socket turns
// readable. Data in the socket (a pipelined request, a TLS record) ends the
// watch undecided; the request deadline still bounds the hold. stop ends
// the watch and returns once it has.
func watchPeer(c net.Conn, cancel context.CancelCauseFunc) (stop func()) {
	for {
		w, ok := c.(netConner)
		if !ok {
			break
		}
		c = w.NetConn()
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return func() {}
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var buf [1]byte
		gone := false
		_ = rc.Read(func(fd uintptr) bool {
			n, _, err := unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			switch {
			case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EINTR):
				return false // nothing yet: wait for readability
			case err != nil || n == 0:
				gone = true // reset, or an orderly close (EOF)
			}
			return true
		})
		if gone {
			cancel(errClientGone)
		}
	}()
	return func() {
		// A deadline in the past wakes the waiting Read; the server sets
		// its own deadline again before it reads the next request.
		_ = tc.SetReadDeadline(time.Unix(1, 0))
		<-done
		_ = tc.SetReadDeadline(time.Time{})
	}
}

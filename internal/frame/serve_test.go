package frame

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"
)

// A frame's timeout bounds the request's context on the instance: the
// handler of a request the router stopped waiting for sees its context
// end (and a batcher drops it), while a frame with no timeout has no
// deadline at all.
func TestServerEndsTheRequestAtTheFramesTimeout(t *testing.T) {
	type seen struct {
		deadline bool
		err      error
	}
	got := make(chan seen, 1)
	s := &Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, ok := r.Context().Deadline()
			if !ok {
				got <- seen{}
				return
			}
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
			got <- seen{deadline: true, err: r.Context().Err()}
			w.WriteHeader(http.StatusGatewayTimeout)
		}),
		Limit:        func() int { return 1 << 20 },
		DrainTimeout: time.Second,
		Log:          slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()
	defer func() { cancel(); <-served }()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	var (
		e   Encoder
		buf []byte
		h   ResponseHead
	)
	send := func(timeout time.Duration) (seen, int) {
		t.Helper()
		e.StartRequest([]byte("POST"), []byte("/v2/models/m/infer"), timeout)
		f, _ := e.Finish([]byte("{}"))
		if _, err := c.Write(f); err != nil {
			t.Fatal(err)
		}
		s := <-got
		if err := ReadResponseHead(br, &buf, 1<<20, &h); err != nil {
			t.Fatal(err)
		}
		if _, err := br.Discard(h.Body); err != nil {
			t.Fatal(err)
		}
		return s, h.Status
	}
	s1, status := send(50 * time.Millisecond)
	if !s1.deadline || !errors.Is(s1.err, context.DeadlineExceeded) || status != http.StatusGatewayTimeout {
		t.Fatalf("a frame with a 50ms timeout: handler saw deadline=%v err=%v, answered %d; want its context ended by the deadline", s1.deadline, s1.err, status)
	}
	if s2, status := send(0); s2.deadline || status != http.StatusOK {
		t.Fatalf("a frame with no timeout: handler saw a deadline (%v) or answered %d; want none and 200", s2.deadline, status)
	}
}

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
	"strings"
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
		e.StartRequest("", []byte("POST"), []byte("/v2/models/m/infer"), timeout)
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

// A framed gRPC call reaches the handler as the HTTP/2 request it stands
// for, and its trailers come back named with TrailerPrefix, whether the
// handler declared them (grpc-go does) or set them with the prefix (the
// runtime's ModelInfer does); a frame naming a revision the instance does
// not serve is answered 404 with a JSON error before any handler runs.
func TestServerCarriesTrailersAndRevisions(t *testing.T) {
	protos := make(chan int, 1)
	s := &Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			protos <- r.ProtoMajor
			h := w.Header()
			h.Add("Trailer", "Grpc-Status, Grpc-Message")
			h.Set("Content-Type", r.Header.Get("Content-Type"))
			w.(http.Flusher).Flush()
			w.Write([]byte("message"))
			h.Set("Grpc-Status", "3")
			h.Set("Grpc-Message", "bad input")
			h.Set(http.TrailerPrefix+"X-Extra", "kept")
		}),
		Limit:        func() int { return 1 << 20 },
		DrainTimeout: time.Second,
		Log:          slog.New(slog.NewTextHandler(io.Discard, nil)),
		Serves:       func(rev []byte) bool { return string(rev) == "m-00001" },
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
	send := func(revision, contentType string) (int, map[string]string, string) {
		t.Helper()
		e.StartRequest(revision, []byte("POST"), []byte("/inference.GRPCInferenceService/ModelInfer"), 0)
		e.HeaderString("Content-Type", contentType)
		f, _ := e.Finish([]byte("request"))
		if _, err := c.Write(f); err != nil {
			t.Fatal(err)
		}
		if err := ReadResponseHead(br, &buf, 1<<20, &h); err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, hd := range h.Headers {
			got[string(hd.Name)] = string(hd.Value)
		}
		body := make([]byte, h.Body)
		if _, err := io.ReadFull(br, body); err != nil {
			t.Fatal(err)
		}
		return h.Status, got, string(body)
	}
	for _, tc := range []struct {
		revision, contentType string
		proto                 int
	}{{"", "application/grpc", 2}, {"m-00001", "application/grpc+proto", 2}, {"m-00001", "application/json", 1}, {"", "application/grpcx", 1}} {
		status, hdr, body := send(tc.revision, tc.contentType)
		if p := <-protos; p != tc.proto {
			t.Errorf("%s: the handler saw HTTP/%d, want HTTP/%d", tc.contentType, p, tc.proto)
		}
		want := map[string]string{"Content-Type": tc.contentType, "Trailer:Grpc-Status": "3", "Trailer:Grpc-Message": "bad input", "Trailer:X-Extra": "kept"}
		if status != http.StatusOK || body != "message" || len(hdr) != len(want) {
			t.Fatalf("%q %s: %d %q %q, want 200 \"message\" with %q", tc.revision, tc.contentType, status, hdr, body, want)
		}
		for k, v := range want {
			if hdr[k] != v {
				t.Errorf("%s: %s = %q, want %q (all: %q)", tc.contentType, k, hdr[k], v, hdr)
			}
		}
	}
	status, hdr, body := send("m-00002", "application/grpc")
	if status != http.StatusNotFound || hdr["Content-Type"] != "application/json" || !strings.Contains(body, `"error":"revision \"m-00002\" is not served`) {
		t.Fatalf("a frame for another revision: %d %q %s, want 404 with a JSON error naming it", status, hdr, body)
	}
	select {
	case <-protos:
		t.Fatal("the handler ran for a revision the instance does not serve")
	default:
	}
}

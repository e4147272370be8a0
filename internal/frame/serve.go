package frame

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// Server serves framed requests with an http.Handler, so an instance
// answers a frame with the same handler chain as an HTTP request.
type Server struct {
	Handler http.Handler
	// Limit is the largest request frame accepted (body plus request line
	// and headers); larger ones close the connection.
	Limit func() int
	// DrainTimeout bounds how long Serve waits for frames in flight once
	// its context ends.
	DrainTimeout time.Duration
	Log          *slog.Logger
	// Serves reports whether the instance serves a request frame's named
	// revision (never asked about an empty one); a frame for one it does
	// not serve is answered 404 without reaching Handler. Nil: any.
	Serves func(revision []byte) bool
}

// Serve accepts on ln until ctx ends, then stops accepting and waits (up to
// DrainTimeout) for the frames in flight, which finish with a context that
// is not cancelled by ctx.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var (
		mu     sync.Mutex
		conns  = map[net.Conn]struct{}{}
		active sync.WaitGroup
	)
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
		}
		ln.Close()
	}()
	defer close(done)
	var err error
	for {
		var c net.Conn
		if c, err = ln.Accept(); err != nil {
			break
		}
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		active.Add(1)
		go func() {
			defer active.Done()
			s.serveConn(ctx, c)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		}()
	}
	if ctx.Err() == nil {
		return err
	}
	// Draining: a connection waiting between frames is woken and closed;
	// one inside a frame finishes it first.
	waited := make(chan struct{})
	go func() { active.Wait(); close(waited) }()
	mu.Lock()
	for c := range conns {
		c.SetReadDeadline(time.Now())
	}
	mu.Unlock()
	select {
	case <-waited:
	case <-time.After(s.DrainTimeout):
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	}
	return nil
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	reqCtx := context.WithoutCancel(ctx) // draining finishes the frame in flight
	br := bufio.NewReaderSize(c, 16<<10)
	bw := bufio.NewWriterSize(c, 16<<10)
	var (
		buf []byte
		req Request
		enc Encoder
		w   responseWriter
	)
	for ctx.Err() == nil {
		err := ReadRequest(br, &buf, s.Limit(), &req)
		var (
			r      *http.Request
			rctx   = reqCtx
			cancel = context.CancelFunc(func() {})
		)
		if err == nil {
			if req.Timeout > 0 {
				rctx, cancel = context.WithTimeout(reqCtx, req.Timeout)
			}
			if len(req.Revision) > 0 && s.Serves != nil {
				// A process serving several revisions picks the sessions by it.
				rctx = context.WithValue(rctx, revisionKey{}, string(req.Revision))
			}
			r, err = req.httpRequest(rctx)
		}
		if err != nil {
			cancel()
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
				s.Log.Warn("framed request refused; closing the router's connection", "err", err)
			}
			return
		}
		w.reset()
		if len(req.Revision) > 0 && s.Serves != nil && !s.Serves(req.Revision) {
			w.h.Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			msg, _ := json.Marshal(map[string]string{"error": fmt.Sprintf("revision %q is not served by this instance", req.Revision)})
			w.Write(append(msg, '\n'))
		} else {
			s.Handler.ServeHTTP(&w, r)
		}
		cancel()
		if w.status == 0 {
			w.status = http.StatusOK
		}
		if err := WriteResponse(bw, &enc, w.status, w.encodeHeaders, w.body.Bytes()); err != nil {
			return
		}
	}
}

// revisionKey carries a frame's named revision in its request's context.
type revisionKey struct{}

// RevisionFrom is the revision a framed request named ("" : none, or not a
// framed request). Set only when the Server has a Serves hook.
func RevisionFrom(ctx context.Context) string {
	s, _ := ctx.Value(revisionKey{}).(string)
	return s
}

// RevisionHeader names, on an HTTP request to a process serving several
// revisions, the revision it is for, as a request frame does (a V2 path
// may also name it as its version). A process serving one revision ignores it.
const RevisionHeader = "X-Pilotlight-Revision"

// WithRevision names the revision a request is for as a frame does, for a
// request that named it another way (an HTTP header).
func WithRevision(ctx context.Context, revision string) context.Context {
	return context.WithValue(ctx, revisionKey{}, revision)
}

// encodeHeaders adds the answer's headers to e, and its trailers as
// net/http would send them: the keys the Trailer header declared and those
// set with TrailerPrefix, named with TrailerPrefix (the Trailer header
// itself is a declaration, not sent).
func (w *responseWriter) encodeHeaders(e *Encoder) {
	declared := w.h["Trailer"]
	for k, vs := range w.h {
		switch {
		case k == "Trailer":
			continue
		case len(declared) > 0 && declares(declared, k):
			w.name = append(append(w.name[:0], TrailerPrefix...), k...)
			for _, v := range vs {
				e.Header(w.name, []byte(v))
			}
			continue
		}
		for _, v := range vs {
			e.HeaderString(k, v)
		}
	}
}

// declares reports whether the Trailer header values name key.
func declares(values []string, key string) bool {
	for _, v := range values {
		for _, name := range strings.Split(v, ",") {
			if http.CanonicalHeaderKey(strings.TrimSpace(name)) == key {
				return true
			}
		}
	}
	return false
}

// httpRequest is the http.Request a frame stands for; Host goes to r.Host
// as net/http's server puts it.
func (f *Request) httpRequest(ctx context.Context) (*http.Request, error) {
	u, err := url.ParseRequestURI(string(f.URI))
	if err != nil {
		return nil, err
	}
	r := &http.Request{Method: string(f.Method), URL: u, RequestURI: string(f.URI), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: make(http.Header, len(f.Headers)), Host: "localhost", RemoteAddr: "@router", ContentLength: int64(len(f.Body)),
		Body: io.NopCloser(bytes.NewReader(f.Body))}
	for _, hd := range f.Headers {
		k := http.CanonicalHeaderKey(string(hd.Name))
		if k == "Host" {
			r.Host = string(hd.Value)
			continue
		}
		r.Header[k] = append(r.Header[k], string(hd.Value))
	}
	if isGRPC(r.Header.Get("Content-Type")) {
		// gRPC runs on HTTP/2 only: the call is the HTTP/2 request it stands for.
		r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0
	}
	return r.WithContext(ctx), nil
}

// isGRPC reports a gRPC content type: application/grpc, alone or with a
// +subtype or parameters.
func isGRPC(ct string) bool {
	const g = "application/grpc"
	return strings.HasPrefix(ct, g) && (len(ct) == len(g) || ct[len(g)] == '+' || ct[len(g)] == ';')
}

// responseWriter buffers a framed request's answer, sent as one frame.
type responseWriter struct {
	h      http.Header
	status int
	body   bytes.Buffer
	name   []byte // scratch for trailer names
}

func (w *responseWriter) reset() {
	if w.h == nil {
		w.h = make(http.Header, 2)
	}
	clear(w.h) // the last answer's headers were written out; the map is reused
	w.status = 0
	w.body.Reset()
}

func (w *responseWriter) Header() http.Header { return w.h }

func (w *responseWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

// Flush is a no-op (the answer goes out as one frame); grpc-go's handler
// needs an http.Flusher, and flushing commits the status, as in net/http.
func (w *responseWriter) Flush() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.body.Write(p)
}

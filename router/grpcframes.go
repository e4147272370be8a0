package router

import (
	"context"
	"io"
	"net/http"
	"strings"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/pilotlight/pilotlight/internal/frame"
)

// The gRPC call to a local instance, framed: the router terminates the
// client's HTTP/2 and carries the unary call to the instance as one frame
// pair on its Unix socket (package frame), instead of opening a second
// HTTP/2 connection to its port. The request frame holds the method's
// path as its URI, the call's metadata as headers (credentials and
// hop-by-hop headers dropped as over h2c, the proxy span's traceparent
// injected), the length-prefixed message as its body and the router's
// remaining time as its timeout; the answer's trailers come back as
// headers named with frame.TrailerPrefix. The answer is handed on as an
// *http.Response, so copyResponse relays a framed answer exactly as it
// relays an h2c one. Remote (Knative) revisions keep h2c (send).

var (
	methodPost = []byte(http.MethodPost)
	teTrailers = "trailers"
)

// sendFrame sends the call on the instance's socket t.Socket. A
// connection kept from an earlier call that turns out closed before any
// answer is replaced once, as on the REST path (framePool.do).
func (p *grpcProxy) sendFrame(ctx context.Context, in modelCall, t Target, revision string, msg []byte) (*http.Response, trace.Span, error) {
	var traced propagation.HeaderCarrier
	var ps trace.Span
	if p.rt.tr != nil {
		traced = propagation.HeaderCarrier{}
		ps = p.rt.tr.startProxy(ctx, traced, t.BaseURL) // traceparent toward the instance
	}
	deadline, _ := ctx.Deadline()
	pool := &p.rt.frames
	for {
		c, reused, err := pool.get(t.Socket)
		if err != nil {
			return nil, ps, err
		}
		// As on the REST path, the exchange is bounded by the deadline (the
		// instance's too: the frame carries it), not by the client's
		// cancellation, which would cost a context registration per call.
		resp, err := c.grpcExchange(in, revision, msg, http.Header(traced), deadline)
		if err == nil {
			resp.Body = &frameBody{c: c, pool: pool}
			return resp, ps, nil
		}
		c.c.Close()
		if !reused || !closedBeforeAnswer(err) || ctx.Err() != nil {
			return nil, ps, err
		}
	}
}

// grpcExchange writes the call's frame and reads the answer's status and
// headers; the message is left on c.body.
func (c *frameConn) grpcExchange(in modelCall, revision string, msg []byte, traced http.Header, deadline time.Time) (*http.Response, error) {
	if err := c.c.SetDeadline(deadline); err != nil {
		return nil, err
	}
	var timeout time.Duration
	if !deadline.IsZero() {
		timeout = time.Until(deadline) // the instance drops the call when the router stops waiting
	}
	c.enc.StartRequest(revision, methodPost, []byte(in.Path()), timeout)
	in.EachMetadata(func(k string, vs []string) {
		if k = canonicalName(k); grpcDropHeaders[k] {
			return
		}
		if _, replaced := traced[k]; replaced {
			return
		}
		for _, v := range vs {
			c.enc.HeaderString(k, v)
		}
	})
	for k, vs := range traced {
		for _, v := range vs {
			c.enc.HeaderString(k, v)
		}
	}
	c.enc.HeaderString("Te", teTrailers)
	head, err := c.enc.Head(len(msg))
	if err != nil {
		return nil, err
	}
	c.vec[0], c.vec[1] = head, msg
	c.bufs = c.vec[:]
	if _, err := c.bufs.WriteTo(c.c); err != nil {
		return nil, err
	}
	if err := frame.ReadResponseHead(c.br, &c.buf, frameHeadLimit, &c.head); err != nil {
		return nil, err
	}
	resp := &http.Response{StatusCode: c.head.Status, Header: make(http.Header, len(c.head.Headers)), Trailer: http.Header{}}
	for _, hd := range c.head.Headers {
		h, name := resp.Header, internString(hd.Name)
		if t, ok := strings.CutPrefix(name, frame.TrailerPrefix); ok {
			h, name = resp.Trailer, t
		}
		name = http.CanonicalHeaderKey(name)
		if vs := h[name]; vs != nil {
			h[name] = append(vs, string(hd.Value))
		} else if v, ok := grpcCommonValues[string(hd.Value)]; ok {
			h[name] = v // shared: nothing downstream changes a value slice in place
		} else {
			h[name] = []string{string(hd.Value)}
		}
	}
	c.body = io.LimitedReader{R: c.br, N: int64(c.head.Body)}
	return resp, nil
}

// grpcCommonNames and grpcCommonValues are the header names and values
// every framed gRPC answer carries, kept once instead of per answer.
var (
	grpcCommonNames  = map[string]string{}
	grpcCommonValues = map[string][]string{}
)

func init() {
	for _, n := range []string{"Content-Type", frame.TrailerPrefix + "Grpc-Status", frame.TrailerPrefix + "Grpc-Message", HeaderRevision} {
		grpcCommonNames[n] = n
	}
	for _, v := range []string{"application/grpc", "0"} {
		grpcCommonValues[v] = []string{v}
	}
}

// internString is b as a string, allocated only when it is not a common name.
func internString(b []byte) string {
	if s, ok := grpcCommonNames[string(b)]; ok {
		return s
	}
	return string(b)
}

// frameBody is a framed answer's message; Close gives the connection back
// when the message was read to the end.
type frameBody struct {
	c    *frameConn
	pool *framePool
}

func (b *frameBody) Read(p []byte) (int, error) { return b.c.body.Read(p) }

func (b *frameBody) Close() error {
	if b.c == nil {
		return nil
	}
	b.pool.put(b.c) // closes it when the message was not read whole
	b.c = nil
	return nil
}

package router

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/pilotlight/pilotlight/internal/frame"
)

// The framed path to local instances: the same upstream request the HTTP
// client would send (headers already filtered, X-Forwarded-* set, trace
// context injected), written as one frame on the instance's Unix socket,
// and the answer read back into the same fasthttp response header, so
// everything after the exchange (status, header filtering, streaming of
// large answers, metrics) is shared with HTTP.

// frameConn is one connection to an instance's socket.
type frameConn struct {
	c        net.Conn
	sock     string
	br       *bufio.Reader
	vec      [2][]byte   // a request frame's head and body, written at once
	bufs     net.Buffers // over vec (a field, so writing it allocates nothing)
	enc      frame.Encoder
	buf      []byte
	head     frame.ResponseHead
	body     io.LimitedReader // the answer's body, read whole or streamed
	lastUsed time.Time
}

// framePool keeps idle connections per socket; idle ones are closed after
// maxIdle (an exited instance's socket is never asked for again).
type framePool struct {
	mu     sync.Mutex
	idle   map[string][]*frameConn
	swept  time.Time
	closed bool
}

const (
	frameMaxIdle     = 90 * time.Second
	frameIdlePerSock = 256
	frameHeadLimit   = 64 << 10 // an answer's header block, as the front door's own header limit
)

func (p *framePool) get(sock string) (*frameConn, bool, error) {
	p.mu.Lock()
	now := time.Now()
	if now.Sub(p.swept) > frameMaxIdle/3 {
		p.sweepLocked(now)
	}
	if l := p.idle[sock]; len(l) > 0 {
		c := l[len(l)-1]
		p.idle[sock] = l[:len(l)-1]
		p.mu.Unlock()
		return c, true, nil
	}
	p.mu.Unlock()
	c, err := net.Dial("unix", sock)
	if err != nil {
		return nil, false, err
	}
	return &frameConn{c: c, sock: sock, br: bufio.NewReaderSize(c, 16<<10)}, false, nil
}

// put keeps c for the next request when its answer was read to the end.
func (p *framePool) put(c *frameConn) {
	if c.body.N != 0 {
		c.c.Close() // the rest of the frame is still on the wire
		return
	}
	c.lastUsed = time.Now()
	p.mu.Lock()
	if p.idle == nil {
		p.idle = map[string][]*frameConn{}
	}
	if p.closed || len(p.idle[c.sock]) >= frameIdlePerSock {
		p.mu.Unlock()
		c.c.Close()
		return
	}
	p.idle[c.sock] = append(p.idle[c.sock], c)
	p.mu.Unlock()
}

func (p *framePool) sweepLocked(now time.Time) {
	p.swept = now
	for sock, l := range p.idle {
		keep := l[:0]
		for _, c := range l {
			if now.Sub(c.lastUsed) > frameMaxIdle {
				c.c.Close()
			} else {
				keep = append(keep, c)
			}
		}
		if len(keep) == 0 {
			delete(p.idle, sock)
		} else {
			p.idle[sock] = keep
		}
	}
}

// closeAll closes every idle connection; later ones are not kept.
func (p *framePool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, l := range p.idle {
		for _, c := range l {
			c.c.Close()
		}
	}
	p.idle = nil
}

var hdrContentLength = []byte("Content-Length")

// do sends x.out as a frame on sock and reads the answer's status and
// headers into x.in.Header; the body is left on x.fc.body. A connection
// kept from an earlier request that turns out closed before any answer
// (the instance restarted its side) is replaced once by a new one.
func (p *framePool) do(x *exchange, sock string, deadline time.Time) error {
	for {
		c, reused, err := p.get(sock)
		if err != nil {
			return err
		}
		err = c.exchange(x, deadline)
		if err == nil {
			x.fc = c
			return nil
		}
		c.c.Close()
		if !reused || !closedBeforeAnswer(err) {
			return err
		}
	}
}

func (c *frameConn) exchange(x *exchange, deadline time.Time) error {
	if err := c.c.SetDeadline(deadline); err != nil {
		return err
	}
	uri := x.out.URI()
	var timeout time.Duration
	if !deadline.IsZero() {
		timeout = time.Until(deadline) // the instance drops the request when the router stops waiting
	}
	c.enc.StartRequest(x.revision, x.out.Header.Method(), uri.RequestURI(), timeout)
	for k, v := range x.out.Header.All() {
		if bytes.EqualFold(k, hdrContentLength) {
			continue // the frame's length is the body's
		}
		c.enc.Header(k, v)
	}
	body := x.out.Body()
	head, err := c.enc.Head(len(body))
	if err != nil {
		return err
	}
	// One writev of the head and the body: the body is not copied.
	c.vec[0], c.vec[1] = head, body
	c.bufs = c.vec[:]
	if _, err := c.bufs.WriteTo(c.c); err != nil {
		return err
	}
	if err := frame.ReadResponseHead(c.br, &c.buf, frameHeadLimit, &c.head); err != nil {
		return err
	}
	h := &x.in.Header
	h.SetStatusCode(c.head.Status)
	for _, hd := range c.head.Headers {
		if bytes.EqualFold(hd.Name, hdrContentLength) {
			continue
		}
		h.AddBytesKV(hd.Name, hd.Value)
	}
	h.SetContentLength(c.head.Body)
	c.body = io.LimitedReader{R: c.br, N: int64(c.head.Body)}
	return nil
}

// closedBeforeAnswer reports an error that means the connection was
// already closed by the instance when the request was sent.
func closedBeforeAnswer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}

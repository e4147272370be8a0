package router

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// The front door: one listener. HTTP/1.1 goes to fasthttp, whose handler
// sends data-path requests straight to the proxy and the rest to echo
// (adapted). With Config.HTTP2Handler set, HTTP/2 connections go to it
// through net/http: on a plain listener those opening with the client
// preface (h2c, prior knowledge), under TLS those that negotiate "h2".

// http2Preface opens every HTTP/2 connection (RFC 9113 §3.4).
const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

type frontDoor struct {
	fast *fasthttp.Server
	h2   *http.Server // nil without HTTP2Handler
	h2ln *connListener
	// grpcln feeds grpc-go's transport the HTTP/2 connections whose first
	// request is gRPC (h2sniff.go); nil when HTTP2Handler is the caller's.
	grpcln *connListener
	outer  net.Listener
}

// Serve answers on ln until Shutdown (plain HTTP; h2c when HTTP2Handler is set).
func (rt *Router) Serve(ln net.Listener) error { return rt.serve(ln, nil) }

// ServeTLS answers on ln with TLS 1.2+ until Shutdown; ALPN offers h2
// when HTTP2Handler is set.
func (rt *Router) ServeTLS(ln net.Listener, certFile, keyFile string) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("load TLS certificate %s and key %s: %w", certFile, keyFile, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}
	if rt.cfg.HTTP2Handler != nil {
		cfg.NextProtos = []string{"h2", "http/1.1"}
	}
	return rt.serve(ln, cfg)
}

func (rt *Router) serve(ln net.Listener, tlsCfg *tls.Config) error {
	d := &frontDoor{fast: rt.fastServer(), outer: ln}
	if rt.cfg.HTTP2Handler != nil {
		d.h2ln = newConnListener(ln.Addr())
		d.h2 = rt.cfg.Limits.Server(rt.cfg.HTTP2Handler, rt.log)
		d.h2.Protocols = new(http.Protocols)
		d.h2.Protocols.SetUnencryptedHTTP2(tlsCfg == nil)
		d.h2.Protocols.SetHTTP2(tlsCfg != nil)
		if tlsCfg != nil {
			d.h2.TLSConfig = tlsCfg
		}
		if rt.grpc.native != nil {
			d.grpcln = newConnListener(ln.Addr())
		}
	}
	// Registered before anything serves, so a Shutdown from now on finds
	// this front door; one that came first leaves nothing to serve.
	rt.mu.Lock()
	if rt.shut {
		rt.mu.Unlock()
		return ln.Close()
	}
	rt.srvs = append(rt.srvs, d)
	rt.mu.Unlock()
	if d.h2 != nil {
		go func() { _ = d.h2.Serve(d.h2ln) }()
	}
	if d.grpcln != nil {
		go func() { _ = rt.grpc.native.Serve(d.grpcln) }()
	}
	switch {
	case d.h2 == nil && tlsCfg == nil:
		return d.fast.Serve(ln)
	case d.h2 == nil:
		return d.fast.Serve(tls.NewListener(ln, tlsCfg))
	}
	// HTTP/2 possible: each connection is classified on its own goroutine,
	// so a slow client cannot stall the accept loop.
	fastln := newConnListener(ln.Addr())
	errc := make(chan error, 1)
	go func() { errc <- d.fast.Serve(fastln) }()
	for {
		c, err := ln.Accept()
		if err != nil {
			fastln.Close()
			d.h2ln.Close()
			if d.grpcln != nil {
				d.grpcln.Close()
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go rt.classify(c, tlsCfg, fastln, d.h2ln, d.grpcln)
	}
}

// classify hands c to HTTP/2 (h2c: grpc-go's transport when grpc is set
// and the connection opens with a gRPC call) or to the fast path.
func (rt *Router) classify(c net.Conn, tlsCfg *tls.Config, fast, h2, grpc *connListener) {
	toH2 := func(c net.Conn, prefix []byte, deadline time.Time) {
		if grpc == nil {
			h2.put(&prefixConn{Conn: c, prefix: prefix})
			return
		}
		if sc, isGRPC := sniffH2(c, prefix, deadline); isGRPC {
			grpc.put(sc)
		} else {
			h2.put(sc)
		}
	}
	deadline := time.Now().Add(rt.cfg.Limits.ReadHeaderTimeout)
	if tlsCfg != nil {
		tc := tls.Server(c, tlsCfg)
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			rt.log.Debug("TLS handshake", "remote", c.RemoteAddr().String(), "err", err)
			_ = c.Close()
			return
		}
		if tc.ConnectionState().NegotiatedProtocol == "h2" {
			// net/http serves HTTP/2 under TLS only on the *tls.Conn itself,
			// so these are not sniffed: gRPC over TLS stays on net/http.
			h2.put(tc)
		} else {
			fast.put(tc)
		}
		return
	}
	// Read until the bytes differ from the preface or match all of it; an
	// HTTP/1 request differs at its first byte.
	_ = c.SetReadDeadline(deadline)
	var buf [len(http2Preface)]byte
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		n += m
		if !bytes.HasPrefix([]byte(http2Preface), buf[:n]) {
			break
		}
		if err != nil {
			_ = c.Close()
			return
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	prefix := append([]byte(nil), buf[:n]...)
	if n == len(buf) && string(buf[:]) == http2Preface {
		toH2(c, prefix, deadline)
		return
	}
	fast.put(&prefixConn{Conn: c, prefix: prefix})
}

// Shutdown stops accepting, lets requests in flight finish (bounded by
// ctx), then closes the connections.
func (rt *Router) Shutdown(ctx context.Context) error {
	rt.mu.Lock()
	srvs := rt.srvs
	rt.srvs, rt.shut = nil, true
	rt.mu.Unlock()
	var errs []error
	for _, d := range srvs {
		_ = d.outer.Close()
		if d.h2 != nil {
			errs = append(errs, d.h2.Shutdown(ctx))
		}
		errs = append(errs, d.fast.ShutdownWithContext(ctx))
	}
	if native := rt.grpc.native; native != nil && len(srvs) > 0 {
		done := make(chan struct{})
		go func() { native.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			native.Stop()
			errs = append(errs, ctx.Err())
		}
	}
	return errors.Join(errs...)
}

// fastServer is the fasthttp server for HTTP/1.1 with the router's limits:
// the request head within ReadHeaderTimeout of its first byte (or of the
// connection), the body within ReadTimeout after the head.
func (rt *Router) fastServer() *fasthttp.Server {
	l := rt.cfg.Limits
	return &fasthttp.Server{
		Handler:      rt.serveFast,
		ErrorHandler: rt.fastError,
		HeaderReceived: func(*fasthttp.RequestHeader) fasthttp.RequestConfig {
			return fasthttp.RequestConfig{ReadTimeout: l.ReadTimeout, MaxRequestBodySize: int(rt.maxBody)}
		},
		ReadTimeout:                  l.ReadHeaderTimeout,
		WriteTimeout:                 l.WriteTimeout,
		IdleTimeout:                  l.IdleTimeout,
		ReadBufferSize:               l.MaxHeaderBytes,
		MaxRequestBodySize:           int(rt.maxBody),
		NoDefaultServerHeader:        true,
		DisablePreParseMultipartForm: true,
		CloseOnShutdown:              true,
		Logger:                       fastLogger{rt.log},
	}
}

// serveFast is the fast listener's handler.
func (rt *Router) serveFast(ctx *fasthttp.RequestCtx) {
	rq, ok := rt.match(ctx.Method(), ctx.Path(), hostOnly(ctx.Host()))
	if !ok {
		rt.slow(ctx)
		return
	}
	rt.proxy(ctx, rq, ctx, ctx.Conn(), nil)
}

// fastError answers requests fasthttp could not read, as {"error": ...}.
func (rt *Router) fastError(ctx *fasthttp.RequestCtx, err error) {
	var code int
	var msg string
	var tooLarge *fasthttp.ErrSmallBuffer
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		code, msg = http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", rt.maxBody)
	case errors.As(err, &tooLarge):
		code, msg = http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("request headers larger than %d bytes", rt.cfg.Limits.MaxHeaderBytes)
	case isTimeout(err):
		code, msg = http.StatusRequestTimeout, "the request did not arrive within the read timeout"
	default:
		code, msg = http.StatusBadRequest, "malformed request: "+err.Error()
	}
	rt.writeError(ctx, errorf(code, "%s", msg))
	ctx.SetConnectionClose()
	if code == http.StatusRequestEntityTooLarge || code == http.StatusRequestHeaderFieldsTooLarge {
		lingerClose(ctx) // the client may still be sending what did not fit
	}
}

// lingerDrain bounds what lingerClose reads and discards.
const (
	lingerDrainBytes = 8 << 20
	lingerDrainTime  = 500 * time.Millisecond
)

// lingerClose sends the answer now, half-closes, and reads what the client
// is still sending for a moment before closing: closing a socket with
// unread data resets it, and the client, still writing its oversized body
// or headers, would see "connection reset" instead of the 413 or 431
// (net/http lingers the same way). fasthttp's own write of the answer afterwards fails on the closed
// connection, which is harmless.
func lingerClose(ctx *fasthttp.RequestCtx) {
	c := ctx.Conn()
	if _, err := ctx.Response.WriteTo(c); err != nil {
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	} else if w, ok := c.(netConner); ok {
		if cw, ok := w.NetConn().(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(lingerDrainTime))
	_, _ = io.CopyN(io.Discard, c, lingerDrainBytes)
	_ = c.Close()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func hostOnly(host []byte) []byte {
	if i := bytes.LastIndexByte(host, ':'); i >= 0 && bytes.IndexByte(host[i:], ']') < 0 {
		return host[:i]
	}
	return host
}

// fastLogger sends fasthttp's own messages to the platform log at debug.
type fastLogger struct{ log *slog.Logger }

func (l fastLogger) Printf(format string, args ...any) { l.log.Debug(fmt.Sprintf(format, args...)) }

// prefixConn replays the bytes read to classify a connection.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// NetConn is the classified connection itself.
func (c *prefixConn) NetConn() net.Conn { return c.Conn }

// connListener is a net.Listener fed with connections the front door classified.
type connListener struct {
	addr   net.Addr
	conns  chan net.Conn
	once   sync.Once
	closed chan struct{}
}

func newConnListener(addr net.Addr) *connListener {
	return &connListener{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *connListener) put(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.closed:
		_ = c.Close()
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.addr }

package router

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/router/auth"
)

// The proxy is the data path, written once against fasthttp's request and
// response types: the fast listener calls it directly, the net/http
// Handler (HTTP/2, tests) adapts to it. Per request, in order: match the
// route (path or Host), authenticate, rate limit, cap concurrency, check
// the body size, pick the revision, then acquire an instance (held while
// one starts) and forward, retrying once on another instance when the
// first could not be reached. Every answer, error or not, is counted in
// one place (finish).

type kind int

const (
	kindFunction kind = iota // POST /functions/{fn} and Host routing: the instance's POST /
	kindV2                   // /v2/models/{fn}/...: forwarded as is
)

// route is a request the proxy serves.
type route struct {
	kind    kind
	name    []byte // function named by the path or Host (valid during the request)
	version []byte // revision pinned by /versions/{v}, or empty
	method  string // the method the route takes
}

var (
	pathFunctions = []byte("/functions/")
	pathModels    = []byte("/v2/models/")
	segVersions   = []byte("versions")
	segInfer      = []byte("infer")
	segReady      = []byte("ready")
)

// match reports whether the request is for the proxy: POST /functions/{fn},
// the V2 model routes, or POST / with Host "{fn}.<anything>" naming a
// known function (Knative routes by host the same way).
func (rt *Router) match(method, path, host []byte) (route, bool) {
	switch {
	case bytes.HasPrefix(path, pathFunctions):
		name := path[len(pathFunctions):]
		if len(name) == 0 || bytes.IndexByte(name, '/') >= 0 {
			return route{}, false
		}
		return route{kind: kindFunction, name: name, method: http.MethodPost}, true
	case bytes.HasPrefix(path, pathModels):
		rest := path[len(pathModels):]
		var segs [4][]byte
		n := 0
		for len(rest) > 0 && n < len(segs) {
			i := bytes.IndexByte(rest, '/')
			if i < 0 {
				segs[n], rest = rest, nil
			} else {
				segs[n], rest = rest[:i], rest[i+1:]
			}
			if len(segs[n]) == 0 {
				return route{}, false
			}
			n++
		}
		if len(rest) > 0 || n == 0 {
			return route{}, false
		}
		r := route{kind: kindV2, name: segs[0], method: http.MethodGet}
		tail := segs[1:n]
		if len(tail) >= 2 && bytes.Equal(tail[0], segVersions) {
			r.version, tail = tail[1], tail[2:]
		}
		switch {
		case len(tail) == 0:
		case len(tail) == 1 && bytes.Equal(tail[0], segReady):
		case len(tail) == 1 && bytes.Equal(tail[0], segInfer):
			r.method = http.MethodPost
		default:
			return route{}, false
		}
		return r, true
	case len(path) == 1 && path[0] == '/' && string(method) == http.MethodPost:
		if i := bytes.IndexByte(host, '.'); i > 0 {
			if _, known := rt.fns[string(host[:i])]; known {
				return route{kind: kindFunction, name: host[:i], method: http.MethodPost}, true
			}
		}
	}
	return route{}, false
}

// exchange is one proxied request's state, pooled: the upstream request
// and response, the hold context, and what finish records.
type exchange struct {
	rt       *Router
	hold     holdCtx
	out      fasthttp.Request
	in       fasthttp.Response
	start    time.Time
	function string // "" until the function is known: such requests are not counted
	revision string
	lease    Target
	stream   io.Reader  // the upstream body while a large response streams
	fc       *frameConn // the framed connection the answer is read from (nil: HTTP)
	code     int
	httpReq  *http.Request // the original request on the net/http path (for the Picker)
	copyBuf  [8 << 10]byte

	// Tracing on only (rt.tr != nil): the request span and its context,
	// and a streaming response's proxy span, ended by Close.
	traceCtx  context.Context
	span      trace.Span
	proxySpan trace.Span
}

// maxBufferedResponse is the largest response read whole before it is
// sent; larger ones (and those of unknown length) stream through.
const maxBufferedResponse = 64 << 10

// proxy serves one matched request. parent is the request's context
// (values for traces; cancellation on the net/http path) and conn the
// client's connection to watch while the request is held (nil: parent's
// cancellation covers it).
func (rt *Router) proxy(ctx *fasthttp.RequestCtx, rq route, parent context.Context, conn net.Conn, httpReq *http.Request) {
	x := rt.exchanges.Get().(*exchange)
	x.start, x.httpReq = time.Now(), httpReq
	defer func() {
		if p := recover(); p != nil {
			rt.log.Error("panic in the proxy", "panic", p, "path", string(ctx.Path()))
			x.code = rt.writeError(ctx, errorf(http.StatusInternalServerError, "internal error; the platform log has the details"))
			x.stream = nil
		}
		if x.stream == nil {
			x.finish()
		}
	}()
	x.code = rt.handle(ctx, x, rq, parent, conn)
}

// handle runs the request's checks and the forward; it returns the status
// sent (x.stream is set when a large response is left streaming).
func (rt *Router) handle(ctx *fasthttp.RequestCtx, x *exchange, rq route, parent context.Context, conn net.Conn) int {
	fn := rt.fns[string(rq.name)]
	if fn != nil {
		x.function = fn.Name
	}
	if rt.tr != nil {
		parent = rt.startRequestSpan(ctx, x, rq, fn, parent)
	}
	a := admission{function: x.function, wantMethod: rq.method, otherMethod: string(ctx.Method()) != rq.method, path: ctx.Path(), bodyBytes: int64(len(ctx.PostBody()))}
	if fn == nil {
		a.function = string(rq.name)
	}
	if rt.cfg.Keys != nil {
		a.authorization, a.apiKey = string(ctx.Request.Header.Peek("Authorization")), string(ctx.Request.Header.Peek(auth.HeaderAPIKey))
	}
	if rt.cfg.RateLimit != nil {
		a.remoteIP = ctx.RemoteIP().String()
	}
	fn, slot, err := rt.admit(&a)
	if err != nil {
		var me *methodErr
		if errors.As(err, &me) {
			ctx.Response.Header.Set("Allow", me.allow)
		}
		return rt.writeError(ctx, err)
	}
	defer slot.Release()
	body := ctx.PostBody()
	if len(rq.version) > 0 {
		for _, r := range fn.Revisions {
			if r.Name == string(rq.version) {
				x.revision = r.Name
			}
		}
		if x.revision == "" {
			return rt.writeError(ctx, errorf(http.StatusNotFound, "function %s has no revision %q", fn.Name, rq.version))
		}
	} else {
		var view RequestView = fastView{&ctx.Request.Header}
		if x.httpReq != nil {
			view = httpView{x.httpReq}
		}
		rev, err := rt.cfg.Picker.Pick(parent, fn, view, body) // parent carries the request span, for the flag hook
		if err != nil {
			return rt.writeError(ctx, err)
		}
		x.revision = rev
	}
	return rt.forward(ctx, x, fn, rq.kind, body, parent, conn)
}

// forward acquires an instance and proxies, retrying once on another
// instance when the first could not be reached. It writes the response (or
// the error) into ctx and returns the status.
func (rt *Router) forward(ctx *fasthttp.RequestCtx, x *exchange, fn *functions.Manifest, k kind, body []byte, parent context.Context, conn net.Conn) int {
	deadline := x.start.Add(rt.cfg.RequestTimeout)
	x.hold.reset(parent, deadline, conn)
	defer x.hold.end()
	var cold time.Duration
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		var wait trace.Span
		if rt.tr != nil {
			wait = rt.tr.startWait(parent, fn.Name, x.revision)
		}
		t, err := rt.cfg.Backend.Acquire(&x.hold, fn.Name, x.revision)
		if rt.tr != nil {
			rt.tr.endWait(parent, wait, fn.Name, x.revision, t, err)
		}
		if err != nil {
			return rt.writeError(ctx, rt.holdError(&x.hold, fn.Name, x.revision, err))
		}
		cold += t.ColdStart
		rt.upstreamRequest(&x.out, ctx, t.BaseURL, k, body)
		for _, h := range t.Header {
			x.out.Header.Set(h[0], h[1])
		}
		var ps trace.Span
		if rt.tr != nil {
			ps = rt.tr.startProxy(parent, fastCarrier{&x.out.Header}, t.BaseURL)
		}
		x.in.Reset()
		if t.Socket != "" {
			err = rt.frames.do(x, t.Socket, deadline)
		} else {
			x.in.StreamBody = true
			err = rt.client.DoDeadline(&x.out, &x.in, deadline)
		}
		reached := err == nil
		buffered := true
		if err == nil {
			cl := x.in.Header.ContentLength()
			if cl >= 0 && cl <= maxBufferedResponse {
				// Read it whole now: a failure here can still be retried.
				ctx.Response.ResetBody()
				_, err = io.CopyBuffer(ctx.Response.BodyWriter(), x.upstreamBody(), x.copyBuf[:])
				if cerr := x.closeUpstream(); err == nil {
					err = cerr
				}
			} else {
				buffered = false
			}
		}
		if rt.tr != nil && (err != nil || buffered) {
			status := 0 // the instance could not be reached
			if reached {
				status = x.in.StatusCode()
			}
			rt.tr.endProxy(ps, status, err)
		}
		if err != nil {
			// The request's own deadline or the client going away says
			// nothing about the instance; only a connection failure does.
			alive := x.hold.Err() == nil
			t.Release(alive)
			lastErr = err
			if !alive {
				break
			}
			rt.m.retries.WithLabelValues(fn.Name, x.revision).Inc()
			rt.log.Warn("instance unreachable; retrying once on another instance", "function", fn.Name, "revision", x.revision, "err", err)
			continue
		}
		rt.responseHeaders(&ctx.Response.Header, &x.in.Header)
		ctx.Response.Header.Set(HeaderRevision, x.revision)
		if cold > 0 {
			ctx.Response.Header.Set(HeaderColdStart, strconv.FormatFloat(cold.Seconds(), 'f', 6, 64))
		}
		code := x.in.StatusCode()
		if !buffered {
			// A large answer streams through after the handler returns;
			// the instance is given back when it ends (exchange.Close).
			x.lease, x.stream, x.code, x.proxySpan = t, x.upstreamBody(), code, ps
			size := x.in.Header.ContentLength()
			if size < 0 {
				size = -1 // chunked, or until the instance closes: chunked to the client
			}
			ctx.Response.SetBodyStream(x, size)
			return code
		}
		t.Release(false)
		if rt.cfg.Shadow != nil {
			rt.cfg.Shadow.Shadow(ctx, ShadowCall{Function: fn.Name, Revision: x.revision, Method: string(ctx.Method()),
				Path: string(ctx.Path()), Query: string(ctx.URI().QueryString()), Body: body, Status: code, Response: ctx.Response.Body()})
		}
		if rec := rt.cfg.Recorder; rec != nil && code == http.StatusOK && rec.Records(fn.Name) {
			rt.record(rec, ctx, x, fn.Name, k, body)
		}
		return code
	}
	if x.hold.Err() != nil {
		err := x.hold.cause()
		if err == nil {
			err = x.hold.Err()
		}
		return rt.writeError(ctx, rt.holdError(&x.hold, fn.Name, x.revision, err))
	}
	return rt.writeError(ctx, errorf(http.StatusBadGateway, "revision %s/%s: instance unreachable twice: %v", fn.Name, x.revision, lastErr))
}

// record hands a buffered answer to the Recorder, with what names it: the
// X-Request-Id header and the targeting key (none when the request had
// none: a random key would join nothing).
func (rt *Router) record(rec Recorder, ctx *fasthttp.RequestCtx, x *exchange, fn string, k kind, body []byte) {
	var view RequestView = fastView{&ctx.Request.Header}
	if x.httpReq != nil {
		view = httpView{x.httpReq}
	}
	key, random := targetingKey(view, body)
	if random {
		key = ""
	}
	rec.Record(PredictionCall{Function: fn, Revision: x.revision, V2: k == kindV2, RequestID: view.Header(HeaderRequestID),
		TargetingKey: key, Body: body, Response: ctx.Response.Body()})
}

// Read streams a large upstream body to the client.
func (x *exchange) Read(p []byte) (int, error) { return x.stream.Read(p) }

// Close ends a streamed response: the upstream connection and the
// instance are given back and the request is counted.
func (x *exchange) Close() error {
	err := x.closeUpstream()
	if x.rt.tr != nil {
		x.rt.tr.endProxy(x.proxySpan, x.code, err)
	}
	x.lease.Release(false)
	x.stream = nil
	x.finish()
	return nil
}

// upstreamBody is the instance's answer's body.
func (x *exchange) upstreamBody() io.Reader {
	if x.fc != nil {
		return &x.fc.body
	}
	return x.in.BodyStream()
}

// closeUpstream ends reading the answer: a framed connection read to the
// end goes back to its pool, an HTTP one to fasthttp's.
func (x *exchange) closeUpstream() error {
	if x.fc != nil {
		x.rt.frames.put(x.fc)
		x.fc = nil
		return nil
	}
	return x.in.CloseBodyStream()
}

// finish counts the answered request (the one metrics path) and returns x to the pool.
func (x *exchange) finish() {
	rt := x.rt
	if x.function != "" {
		rt.m.observe(x.traceCtx, x.function, x.revision, x.code, time.Since(x.start))
	}
	if rt.tr != nil && x.span != nil { // nil: a panic before the span started
		rt.tr.endRequest(x.span, x.code, x.revision, nil)
		x.traceCtx, x.span, x.proxySpan = nil, nil, nil
	}
	if x.fc != nil { // a panic between the answer and its body
		x.fc.c.Close()
		x.fc = nil
	}
	x.function, x.revision, x.lease, x.stream, x.code, x.httpReq = "", "", Target{}, nil, 0, nil
	x.out.Reset()
	x.in.Reset()
	rt.exchanges.Put(x)
}

// Response headers a proxy never passes on (RFC 9110 §7.6.1), besides the
// ones the Connection header names.
var hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// credentials stop at the router: an instance never sees a platform key.
var credentials = []string{"Authorization", auth.HeaderAPIKey}

// HeaderRevision and HeaderColdStart are set on every proxied answer.
const (
	HeaderRevision  = "X-Pilotlight-Revision"
	HeaderColdStart = "X-Pilotlight-Cold-Start"
)

// upstreamRequest builds the instance's request: the client's headers
// without hop-by-hop ones, those Connection names and credentials, with
// X-Forwarded-For/-Proto; Knative-style POST / for function calls.
func (rt *Router) upstreamRequest(out *fasthttp.Request, ctx *fasthttp.RequestCtx, base string, k kind, body []byte) {
	out.Reset()
	in := &ctx.Request
	in.Header.CopyTo(&out.Header)
	for _, v := range in.Header.PeekAll("Connection") {
		dropNamed(v, out.Header.DelBytes)
	}
	for _, h := range hopByHop {
		out.Header.Del(h)
	}
	for _, h := range credentials {
		out.Header.Del(h)
	}
	out.Header.ResetConnectionClose()
	var ipBuf [64]byte
	ip := ctx.RemoteIP().To4()
	if ip == nil {
		ip = ctx.RemoteIP()
	}
	xff := ipBuf[:0]
	if prior := in.Header.Peek("X-Forwarded-For"); len(prior) > 0 {
		xff = append(append(xff, prior...), ", "...)
	}
	xff = appendIP(xff, ip)
	out.Header.SetBytesV("X-Forwarded-For", xff)
	if ctx.IsTLS() {
		out.Header.Set("X-Forwarded-Proto", "https")
	} else {
		out.Header.Set("X-Forwarded-Proto", "http")
	}
	scheme, hostPath, _ := strings.Cut(base, "://")
	host, prefix, _ := strings.Cut(hostPath, "/")
	u := out.URI()
	u.SetScheme(scheme)
	u.SetHost(host)
	path := ctx.Path()
	if k == kindFunction {
		path = []byte("/") // Knative style: an instance takes the function's JSON at POST /
	}
	if prefix != "" {
		p := append([]byte("/"+prefix), path...)
		path = p
	}
	u.SetPathBytes(path)
	u.SetQueryStringBytes(ctx.URI().QueryString())
	out.SetBodyRaw(body)
}

// responseHeaders copies the instance's answer's headers to the client's,
// without hop-by-hop ones and those Connection names.
func (rt *Router) responseHeaders(dst, src *fasthttp.ResponseHeader) {
	src.CopyTo(dst)
	for _, v := range src.PeekAll("Connection") {
		dropNamed(v, dst.DelBytes)
	}
	for _, h := range hopByHop {
		dst.Del(h)
	}
	dst.Del("Date") // the front door sets its own
	dst.ResetConnectionClose()
}

// dropNamed calls del for each header a Connection value names.
func dropNamed(v []byte, del func([]byte)) {
	for len(v) > 0 {
		var tok []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = v[:i], v[i+1:]
		} else {
			tok, v = v, nil
		}
		tok = bytes.TrimSpace(tok)
		if len(tok) == 0 || bytes.EqualFold(tok, []byte("close")) || bytes.EqualFold(tok, []byte("keep-alive")) {
			continue
		}
		del(tok)
	}
}

func appendIP(b []byte, ip net.IP) []byte {
	if len(ip) == net.IPv4len {
		for i, o := range ip {
			if i > 0 {
				b = append(b, '.')
			}
			b = strconv.AppendUint(b, uint64(o), 10)
		}
		return b
	}
	return append(b, ip.String()...)
}

// writeError writes {"error": ...} with the status answerFor gives and returns the status.
func (rt *Router) writeError(ctx *fasthttp.RequestCtx, err error) int {
	a := answerFor(err)
	h := &ctx.Response.Header
	if a.retryAfter != "" {
		h.Set("Retry-After", a.retryAfter)
	}
	if a.shed {
		h.Set(ShedHeader, "overload")
	}
	var ch interface{ WWWAuth() string }
	if errors.As(err, &ch) && ch.WWWAuth() != "" {
		h.Set("WWW-Authenticate", ch.WWWAuth())
	}
	if a.code >= 500 && a.code != http.StatusServiceUnavailable {
		rt.log.Warn("request failed", "path", string(ctx.Path()), "status", a.code, "err", err)
	}
	b, _ := json.Marshal(map[string]string{"error": a.msg})
	ctx.Response.ResetBody()
	ctx.SetStatusCode(a.code)
	ctx.SetContentType("application/json")
	ctx.Response.SetBody(append(b, '\n'))
	return a.code
}

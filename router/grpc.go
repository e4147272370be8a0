package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/reflection"

	"github.com/pilotlight/pilotlight/functions"
	pb "github.com/pilotlight/pilotlight/proto/inference"
	"github.com/pilotlight/pilotlight/router/auth"
)

// The router's gRPC side: the Open Inference Protocol's
// inference.GRPCInferenceService through the same gates as REST. The calls
// that name a model (ModelInfer, ModelMetadata, ModelReady) are proxied
// without decoding their tensors: the router reads fields 1 and 2
// (model_name and model_version, or name and version) and ModelInfer's
// "user_id" parameter from the protobuf wire format, lets the model's flag
// pick the revision, waits in the activator through a cold start, and
// forwards the message as it came to the instance, copying back headers,
// message and trailers: as one frame pair on a local instance's Unix socket
// (grpcframes.go), over h2c to a remote one. ServerLive, ServerReady,
// ServerMetadata and server reflection are the router's own, like GET /v2
// and the health paths.

var (
	grpcServicePath = "/" + pb.GRPCInferenceService_ServiceDesc.ServiceName + "/"
	// grpcModelCalls are the calls routed by model, with what their name field is called in errors.
	grpcModelCalls = map[string]string{
		grpcServicePath + "ModelInfer":    "model_name",
		grpcServicePath + "ModelMetadata": "name",
		grpcServicePath + "ModelReady":    "name",
	}
)

// grpcProxy is the gRPC half of the router.
type grpcProxy struct {
	rt  *Router
	own *grpc.Server // ServerLive, ServerReady, ServerMetadata, reflection
	// native serves the connections whose first call is gRPC on grpc-go's
	// own transport (grpcnative.go); nil when HTTP2Handler is the caller's.
	native    *grpc.Server
	transport *http.Transport
	maxBody   int64     // the largest runtime.maxBodyBytes of any function: nothing longer is read
	bufs      sync.Pool // request messages
	copyBufs  sync.Pool // response copies: io.Copy would allocate 32 KiB per call
}

func newGRPCProxy(rt *Router) *grpcProxy {
	p := &grpcProxy{rt: rt, maxBody: DefaultMaxBodyBytes}
	for _, fn := range rt.cfg.Functions {
		p.maxBody = max(p.maxBody, fn.Runtime.MaxBodyBytes)
	}
	var protocols http.Protocols
	protocols.SetHTTP2(true)            // https:// instances (TLS and ALPN)
	protocols.SetUnencryptedHTTP2(true) // http:// instances: h2c with prior knowledge, as Knative's h2c port speaks
	p.transport = &http.Transport{
		Proxy:              nil,
		DialContext:        (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		IdleConnTimeout:    90 * time.Second,
		DisableCompression: true,
		Protocols:          &protocols,
	}
	p.bufs.New = func() any { return new(bytes.Buffer) }
	p.copyBufs.New = func() any { b := make([]byte, 8<<10); return &b }
	p.own = grpc.NewServer(grpc.MaxRecvMsgSize(64 << 10))
	pb.RegisterGRPCInferenceServiceServer(p.own, routerService{})
	reflection.Register(p.own)
	return p
}

// routerService answers the calls that name no model.
type routerService struct {
	pb.UnimplementedGRPCInferenceServiceServer
}

func (routerService) ServerLive(context.Context, *pb.ServerLiveRequest) (*pb.ServerLiveResponse, error) {
	return &pb.ServerLiveResponse{Live: true}, nil
}

func (routerService) ServerReady(context.Context, *pb.ServerReadyRequest) (*pb.ServerReadyResponse, error) {
	return &pb.ServerReadyResponse{Ready: true}, nil
}

func (routerService) ServerMetadata(context.Context, *pb.ServerMetadataRequest) (*pb.ServerMetadataResponse, error) {
	return &pb.ServerMetadataResponse{Name: "pilotlight", Version: "router", Extensions: []string{}}, nil
}

// GRPCHandler serves gRPC calls and hands every other request to next (the
// REST handler): give it the HTTP/2 side of the listener (h2c, or TLS with
// ALPN h2). gRPC calls need HTTP/2; over HTTP/1.1 they reach next, which
// answers 404.
func (rt *Router) GRPCHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !pb.IsGRPC(r) {
			next.ServeHTTP(w, r)
			return
		}
		if field, ok := grpcModelCalls[r.URL.Path]; ok {
			rt.grpc.serveModelCall(httpAnswer{w}, httpCall{httpView{r}}, field)
			return
		}
		rt.grpc.own.ServeHTTP(w, r)
	})
}

// grpcError is a refusal: its code, its message, and headers that go with it.
type grpcError struct {
	code    codes.Code
	msg     string
	headers map[string]string
}

func (e *grpcError) Error() string { return e.msg }

func grpcErrorf(code codes.Code, format string, args ...any) *grpcError {
	return &grpcError{code: code, msg: fmt.Sprintf(format, args...)}
}

// modelCall is a call that names a model as serveModelCall reads it: its
// metadata (as a RequestView, for the gates, the flag pick and the trace
// context), path, peer and message. net/http's side (httpCall) and
// grpc-go's (nativeModelCall, grpcnative.go) each satisfy it on what they
// already have, so neither builds the other's request per call.
type modelCall interface {
	RequestView
	Context() context.Context
	Path() string
	RemoteHost() string // the peer's address without its port
	// EachMetadata calls f with each metadata name (any case) and its values,
	// the transport's own (pseudo-headers, grpc-timeout, encodings) left out.
	EachMetadata(f func(name string, vs []string))
	// ReadMessage reads the one length-prefixed message (prefix included)
	// into buf, refusing more than max bytes.
	ReadMessage(buf *bytes.Buffer, max int64) *grpcError
}

// httpCall is a call that came through net/http's HTTP/2 server; its
// headers are the metadata (httpView).
type httpCall struct{ httpView }

func (c httpCall) Context() context.Context { return c.r.Context() }
func (c httpCall) Path() string             { return c.r.URL.Path }
func (c httpCall) RemoteHost() string       { return remoteHost(c.r.RemoteAddr) }
func (c httpCall) ReadMessage(buf *bytes.Buffer, max int64) *grpcError {
	return readMessage(c.r, buf, max)
}
func (c httpCall) EachMetadata(f func(name string, vs []string)) {
	for k, vs := range c.r.Header {
		f(k, vs)
	}
}

// serveModelCall gates, routes and forwards one call that names a model.
// Order as REST's middleware: authenticate and rate-limit on the headers
// (before reading the message), then read the message, find the function,
// check the key may call it, cap its concurrency, pick the revision.
func (p *grpcProxy) serveModelCall(ans callAnswer, c modelCall, field string) {
	start := time.Now()
	fnName, revision := "", ""
	code := codes.OK
	ctx := c.Context()
	var traceCtx context.Context // the request span's (tracing on only)
	var span trace.Span
	if p.rt.tr != nil {
		traceCtx, span = p.rt.tr.startGRPC(ctx, c.Path(), viewCarrier{c})
		ctx = traceCtx
	}
	defer func() {
		if _, known := p.rt.fns[fnName]; known {
			p.rt.m.observe(traceCtx, fnName, revision, pb.HTTPStatusFor(code), time.Since(start))
		}
		if p.rt.tr != nil {
			p.rt.tr.endGRPC(span, fnName, revision, code)
		}
	}()
	fail := func(e *grpcError) {
		code = e.code
		ans.fail(e)
	}

	buf := p.bufs.Get().(*bytes.Buffer)
	buf.Reset()
	defer p.bufs.Put(buf)
	a := admission{authorization: c.Header("Authorization"), apiKey: c.Header(auth.HeaderAPIKey), remoteIP: c.RemoteHost()}
	var call pb.ModelCall
	var msg []byte
	if gerr := c.ReadMessage(buf, p.maxBody); gerr != nil {
		a.malformed = gerr
	} else {
		msg = buf.Bytes()
		a.bodyBytes = int64(len(msg) - pb.FrameHeaderBytes)
		var err error
		switch call, err = pb.ReadModelCall(msg[pb.FrameHeaderBytes:]); {
		case err != nil:
			a.malformed = grpcErrorf(codes.InvalidArgument, "malformed request: %v", err)
		case call.Name == "":
			a.malformed = grpcErrorf(codes.InvalidArgument, "%s is required: it names the function", field)
		}
		a.function = call.Name
	}
	if fn, ok := p.rt.fns[call.Name]; ok {
		fnName = fn.Name // counted in the metrics even when refused, as REST counts it
	}
	fn, slot, err := p.rt.admit(&a)
	if err != nil {
		fail(grpcErrorFor(err))
		return
	}
	defer slot.Release()
	if call.Version != "" {
		if _, ok := fn.Revision(call.Version); !ok {
			fail(grpcErrorf(codes.NotFound, "function %s has no revision %q", fn.Name, call.Version))
			return
		}
		revision = call.Version
	} else {
		// The targeting key: metadata x-user-id, else the request's user_id parameter.
		if revision, err = p.rt.cfg.Picker.Pick(ctx, fn, grpcView{c, call.UserID}, nil); err != nil {
			fail(grpcErrorFor(err))
			return
		}
	}
	var keep *shadowCopy
	if sh := p.rt.cfg.Shadow; sh != nil && call.Version == "" && c.Path() == grpcServicePath+"ModelInfer" && sh.Mirroring(fn.Name, revision) {
		keep = &shadowCopy{}
	}
	code = p.forward(ctx, ans, c, fn, revision, msg, fail, keep)
	if keep != nil && code == codes.OK && !keep.over {
		p.rt.cfg.Shadow.Shadow(ctx, ShadowCall{Function: fn.Name, Revision: revision, Method: http.MethodPost, Path: c.Path(),
			Body: msg, Status: http.StatusOK, Response: keep.buf.Bytes()})
	}
}

// callAnswer is where serveModelCall's answer goes: a refusal, or the
// instance's answer relayed (its grpc-status returned). httpAnswer writes
// it to net/http's side; nativeWriter (grpcnative.go) keeps it for grpc-go.
type callAnswer interface {
	fail(e *grpcError)
	relay(p *grpcProxy, resp *http.Response, revision string, cold time.Duration, keep *shadowCopy) codes.Code
}

type httpAnswer struct{ w http.ResponseWriter }

func (a httpAnswer) fail(e *grpcError) {
	h := a.w.Header()
	for k, v := range e.headers {
		h.Set(k, v)
	}
	if (e.code == codes.Unavailable || e.code == codes.ResourceExhausted) && h.Get("Retry-After") == "" {
		h.Set("Retry-After", "1")
	}
	pb.WriteStatus(a.w, e.code, e.msg)
}

func (a httpAnswer) relay(p *grpcProxy, resp *http.Response, revision string, cold time.Duration, keep *shadowCopy) codes.Code {
	return p.copyResponse(a.w, resp, revision, cold, keep)
}

// viewCarrier reads a call's trace context (traceparent, tracestate,
// baggage) from its metadata; the router never writes into it.
type viewCarrier struct{ v RequestView }

func (c viewCarrier) Get(key string) string { return c.v.Header(key) }
func (c viewCarrier) Set(string, string)    {}
func (c viewCarrier) Keys() []string {
	var keys []string
	c.v.EachHeader(func(k, _ string) { keys = append(keys, k) })
	return keys
}

// shadowCopy keeps a mirrored gRPC answer as it streams to the client, up
// to maxBufferedResponse (over: not shown to Shadow, as on REST).
type shadowCopy struct {
	buf  bytes.Buffer
	over bool
}

func (c *shadowCopy) Write(b []byte) (int, error) {
	if !c.over && c.buf.Len()+len(b) <= maxBufferedResponse {
		c.buf.Write(b)
	} else {
		c.over = true
	}
	return len(b), nil
}

// grpcView is a call's metadata as a RequestView, with the request's
// user_id parameter as X-User-ID when the metadata carries none.
type grpcView struct {
	RequestView
	userID string
}

// Header implements RequestView.
func (v grpcView) Header(name string) string {
	h := v.RequestView.Header(name)
	if h == "" && v.userID != "" && strings.EqualFold(name, UserIDHeader) {
		return v.userID
	}
	return h
}

// grpcErrorFor is the gRPC answer to an error the shared pipeline (or a
// backend) gives: the code of its HTTP status (CodeForHTTP), the same
// message, and the same Retry-After and shed headers REST sends.
func grpcErrorFor(err error) *grpcError {
	var ge *grpcError
	if errors.As(err, &ge) {
		return ge
	}
	a := answerFor(err)
	e := &grpcError{code: pb.CodeForHTTP(a.code), msg: a.msg}
	if a.retryAfter != "" || a.shed {
		e.headers = map[string]string{}
		if a.retryAfter != "" {
			e.headers["Retry-After"] = a.retryAfter
		}
		if a.shed {
			e.headers[ShedHeader] = "overload"
		}
	}
	return e
}

// remoteHost is the host part of a net/http RemoteAddr.
func remoteHost(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// readMessage reads the call's one length-prefixed message (prefix
// included) into buf, refusing more than any function accepts.
func readMessage(r *http.Request, buf *bytes.Buffer, maxBody int64) *grpcError {
	var hdr [pb.FrameHeaderBytes]byte
	if _, err := io.ReadFull(r.Body, hdr[:]); err != nil {
		return grpcErrorf(codes.InvalidArgument, "reading the request message: %v", err)
	}
	compressed, length := pb.ParseFrameHeader(hdr[:])
	if compressed {
		return grpcErrorf(codes.Unimplemented, "compressed requests are not accepted (grpc-encoding %q); send them uncompressed", r.Header.Get("Grpc-Encoding"))
	}
	if int64(length) > maxBody {
		return grpcErrorf(codes.ResourceExhausted, "request body larger than %d bytes", maxBody)
	}
	buf.Grow(pb.FrameHeaderBytes + int(length))
	buf.Write(hdr[:])
	m := buf.AvailableBuffer()[:length] // read in place: io.CopyN would allocate a LimitedReader
	n, err := io.ReadFull(r.Body, m)
	buf.Write(m[:n])
	if err != nil {
		return grpcErrorf(codes.InvalidArgument, "reading the request message: %d of %d bytes: %v", n, length, err)
	}
	var one [1]byte
	if n, _ := r.Body.Read(one[:]); n > 0 {
		return grpcErrorf(codes.InvalidArgument, "a unary call carries one message; more followed")
	}
	return nil
}

// forward acquires an instance (the activator holds the call through a
// cold start) and proxies the message, retrying once on another instance
// when the first could not be reached. It returns the call's final code.
func (p *grpcProxy) forward(callCtx context.Context, ans callAnswer, c modelCall, fn *functions.Manifest, revision string, msg []byte, fail func(*grpcError), keep *shadowCopy) codes.Code {
	rt := p.rt
	// A hold context as on REST: the deadline without a timer and a
	// cancellation registration per call, armed only if the activator
	// waits or the h2c transport asks for Done.
	ctx := &holdCtx{}
	ctx.reset(callCtx, time.Now().Add(rt.cfg.RequestTimeout), nil)
	defer ctx.end()
	var cold time.Duration
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		var wait trace.Span
		if rt.tr != nil {
			wait = rt.tr.startWait(ctx, fn.Name, revision)
		}
		t, err := rt.cfg.Backend.Acquire(ctx, fn.Name, revision)
		if rt.tr != nil {
			rt.tr.endWait(ctx, wait, fn.Name, revision, t, err)
		}
		if err != nil {
			e := p.acquireError(ctx, callCtx, fn, revision, err)
			fail(e)
			return e.code
		}
		cold += t.ColdStart
		var resp *http.Response
		var ps trace.Span
		if t.Socket != "" {
			resp, ps, err = p.sendFrame(ctx, c, t, revision, msg)
		} else {
			resp, ps, err = p.send(ctx, c, t, msg)
		}
		if err != nil {
			if rt.tr != nil {
				rt.tr.endProxy(ps, 0, err)
			}
			t.Release(ctx.Err() == nil)
			lastErr = err
			if ctx.Err() != nil {
				break
			}
			rt.m.retries.WithLabelValues(fn.Name, revision).Inc()
			rt.log.Warn("instance unreachable; retrying the gRPC call once on another instance", "function", fn.Name, "revision", revision, "err", err)
			continue
		}
		code := ans.relay(p, resp, revision, cold, keep)
		if rt.tr != nil {
			ps.SetAttributes(attrGRPCStatus.Int(int(code)))
			rt.tr.endProxy(ps, resp.StatusCode, nil)
		}
		t.Release(false)
		return code
	}
	if ctx.Err() != nil {
		e := p.acquireError(ctx, callCtx, fn, revision, ctx.Err())
		fail(e)
		return e.code
	}
	e := grpcErrorf(codes.Unavailable, "revision %s/%s: instance unreachable twice: %v", fn.Name, revision, lastErr)
	fail(e)
	return e.code
}

func (p *grpcProxy) acquireError(ctx, callCtx context.Context, fn *functions.Manifest, revision string, err error) *grpcError {
	var se StatusError
	var shed interface{ Shed() bool }
	switch {
	case errors.As(err, &se):
		e := grpcErrorf(pb.CodeForHTTP(se.HTTPStatus()), "%s", se.Error())
		if errors.As(err, &shed) && shed.Shed() {
			e.headers = map[string]string{ShedHeader: "overload"}
		}
		return e
	case errors.Is(callCtx.Err(), context.DeadlineExceeded):
		// The call's own deadline (grpc-timeout) passed before the router's.
		return grpcErrorf(codes.DeadlineExceeded, "revision %s/%s: the call's deadline passed while it waited for an instance", fn.Name, revision)
	case callCtx.Err() != nil:
		return grpcErrorf(codes.Canceled, "client closed the request")
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
		return grpcErrorf(codes.DeadlineExceeded, "revision %s/%s: no instance became ready within the request timeout %s", fn.Name, revision, p.rt.cfg.RequestTimeout)
	}
	return grpcErrorf(codes.Internal, "revision %s/%s: %v", fn.Name, revision, err)
}

// grpcDropHeaders are not passed on either way: hop-by-hop headers, the
// length (each side frames its own), and credentials, which stop at the router.
var grpcDropHeaders = func() map[string]bool {
	m := map[string]bool{"Content-Length": true, "Cookie": true}
	for _, h := range append(append([]string{}, hopByHop...), credentials...) {
		m[http.CanonicalHeaderKey(h)] = true
	}
	return m
}()

func (p *grpcProxy) send(ctx context.Context, in modelCall, t Target, msg []byte) (*http.Response, trace.Span, error) {
	base := t.BaseURL
	out, err := http.NewRequestWithContext(ctx, http.MethodPost, base+in.Path(), bytes.NewReader(msg))
	if err != nil {
		return nil, noSpan, err
	}
	in.EachMetadata(func(key string, vs []string) {
		if key = canonicalName(key); !grpcDropHeaders[key] {
			out.Header[key] = append(out.Header[key], vs...)
		}
	})
	for _, h := range t.Header {
		out.Header.Set(h[0], h[1])
	}
	out.Header.Set("Te", "trailers")
	out.ContentLength = int64(len(msg))
	var ps trace.Span
	if p.rt.tr != nil {
		ps = p.rt.tr.startProxy(ctx, propagation.HeaderCarrier(out.Header), base) // traceparent toward the instance
	}
	resp, err := p.transport.RoundTrip(out)
	return resp, ps, err
}

// grpcStatusKeys end a call; an instance may send them as headers
// (trailers-only) or trailers, and the router always sends them as trailers.
var (
	grpcStatusKeys     = [...]string{"Grpc-Status", "Grpc-Message", "Grpc-Status-Details-Bin"}
	grpcStatusTrailers = [...]string{http.TrailerPrefix + "Grpc-Status", http.TrailerPrefix + "Grpc-Message", http.TrailerPrefix + "Grpc-Status-Details-Bin"}
)

// copyResponse relays the instance's answer and returns its grpc-status.
func (p *grpcProxy) copyResponse(w http.ResponseWriter, resp *http.Response, revision string, cold time.Duration, keep *shadowCopy) codes.Code {
	defer resp.Body.Close()
	h := w.Header()
	var status [len(grpcStatusKeys)][]string // by grpcStatusKeys' index; nil: absent
	for key, vs := range resp.Header {
		if grpcDropHeaders[key] {
			continue
		}
		h[key] = vs
	}
	for i, k := range grpcStatusKeys {
		if vs, ok := h[k]; ok {
			status[i] = vs
			delete(h, k)
		}
	}
	h.Set(HeaderRevision, revision)
	if cold > 0 {
		h.Set(HeaderColdStart, strconv.FormatFloat(cold.Seconds(), 'f', 6, 64))
	}
	if resp.StatusCode != http.StatusOK {
		// Not a gRPC answer (an instance or ingress refusing at the HTTP level).
		for k := range h {
			delete(h, k)
		}
		h.Set(HeaderRevision, revision)
		code := pb.CodeForHTTP(resp.StatusCode)
		pb.WriteStatus(w, code, fmt.Sprintf("instance answered HTTP %d instead of gRPC", resp.StatusCode))
		return code
	}
	w.WriteHeader(http.StatusOK)
	cb := p.copyBufs.Get().(*[]byte)
	var dst io.Writer = w
	if keep != nil {
		dst = io.MultiWriter(w, keep)
	}
	_, copyErr := io.CopyBuffer(dst, resp.Body, *cb)
	p.copyBufs.Put(cb)
	if copyErr != nil {
		p.rt.log.Debug("copying gRPC response", "err", copyErr)
	}
	for key, vs := range resp.Trailer {
		if i := slices.Index(grpcStatusKeys[:], key); i >= 0 {
			status[i] = vs
		} else {
			h[http.TrailerPrefix+key] = vs
		}
	}
	code := codes.Unknown
	for i, vs := range status {
		if vs == nil {
			continue
		}
		h[grpcStatusTrailers[i]] = vs
		if i == 0 && len(vs) > 0 {
			if n, err := strconv.Atoi(vs[0]); err == nil {
				code = codes.Code(n)
			}
		}
	}
	return code
}

package router

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/pilotlight/pilotlight/proto/inference"
	"github.com/pilotlight/pilotlight/router/auth"
)

// The gRPC front door on grpc-go's own HTTP/2 transport. net/http's HTTP/2
// server spends about 70 µs of CPU on a unary call here (a goroutine
// hand-off per frame read, per handler and per write, and a flush per
// answer); grpc-go's transport about 18 (a trivial handler under h2load,
// 4 connections × 8 streams, 2026-12-07). The front door sends an HTTP/2
// connection whose first request is a gRPC call here (sniffH2); any other
// HTTP/2 connection goes to net/http, whose handler still answers gRPC
// (GRPCHandler), so a connection that mixes REST and gRPC is served too.
//
// A call that names a model runs the same serveModelCall as over net/http,
// with no HTTP request in between: serveModelCall reads a modelCall (the
// metadata where grpc-go keeps it, the message decoded straight into its
// buffer: nativeModelCall) and answers a callAnswer (nativeWriter keeps the
// instance's headers and trailers as metadata, its status as the call's
// error, its message as the answer). The message is never decoded: the
// codec passes its bytes through (passthroughCodec).

// rawMessage is a message's wire bytes, passed through undecoded: b, or
// when decoded into a buffer, the length prefix and the bytes appended to into.
type rawMessage struct {
	b    []byte
	into *bytes.Buffer
}

// passthroughCodec hands rawMessage's bytes through as they are and every
// other message (the router's own services, reflection) to protobuf.
type passthroughCodec struct{ proto encoding.CodecV2 }

func (c passthroughCodec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(*rawMessage); ok {
		return mem.BufferSlice{mem.SliceBuffer(m.b)}, nil
	}
	return c.proto.Marshal(v)
}

func (c passthroughCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if m, ok := v.(*rawMessage); ok {
		if m.into == nil {
			m.b = data.Materialize() // data is freed when Unmarshal returns
			return nil
		}
		n := data.Len()
		m.into.Grow(pb.FrameHeaderBytes + n)
		m.into.Write([]byte{0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
		for _, b := range data {
			m.into.Write(b.ReadOnlyData())
		}
		return nil
	}
	return c.proto.Unmarshal(data, v)
}

func (passthroughCodec) Name() string { return "proto" }

const (
	// nativeMaxStreams matches net/http's HTTP/2 default of concurrent streams per connection.
	nativeMaxStreams = 250
	// nativeStreamWorkers are goroutines kept to run calls (grpc-go starts a
	// new one per call when all are busy). A new goroutine's stack grows
	// through the call's frames every time: copying it was 8% of serve's
	// CPU under h2load's 32 calls in flight. Fewer workers than calls in
	// flight save nothing (GOMAXPROCS's 2 did not); these 64 cost about
	// 64 × 16 KiB of stack.
	nativeStreamWorkers = 64
	// nativeWindow is each stream's and each connection's receive window,
	// fixed, as net/http's HTTP/2 server has it (1 MiB each): grpc-go's
	// default instead estimates the bandwidth-delay product with a PING
	// after every burst of DATA, a frame each way for every few calls.
	nativeWindow = 1 << 20
)

// newNativeServer is the grpc-go server: the router's own services and
// reflection as on the net/http side, and the calls that name a model
// routed by serveNative.
func (p *grpcProxy) newNativeServer() *grpc.Server {
	l := p.rt.cfg.Limits
	s := grpc.NewServer(
		grpc.ForceServerCodecV2(passthroughCodec{proto: encoding.GetCodecV2("proto")}),
		grpc.MaxRecvMsgSize(int(p.maxBody)),
		grpc.MaxHeaderListSize(uint32(l.MaxHeaderBytes)),
		grpc.MaxConcurrentStreams(nativeMaxStreams),
		grpc.NumStreamWorkers(nativeStreamWorkers),
		grpc.StaticStreamWindowSize(nativeWindow),
		grpc.StaticConnWindowSize(nativeWindow),
		grpc.ConnectionTimeout(l.ReadHeaderTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: l.IdleTimeout}),
	)
	desc := pb.GRPCInferenceService_ServiceDesc
	desc.Methods = slices.Clone(desc.Methods)
	for i, m := range desc.Methods {
		path := grpcServicePath + m.MethodName
		if field, ok := grpcModelCalls[path]; ok {
			desc.Methods[i].Handler = func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				return p.serveNative(ctx, path, field, dec)
			}
		}
	}
	s.RegisterService(&desc, routerService{})
	reflection.Register(s)
	return s
}

// serveNative is one call that names a model, through serveModelCall: the
// call is read where grpc-go has it (nativeModelCall), the answer collected
// by nativeWriter.
func (p *grpcProxy) serveNative(ctx context.Context, path, field string, dec func(any) error) (any, error) {
	nc := nativeCalls.Get().(*nativeCall)
	defer nc.release()
	nc.c.ctx, nc.c.path, nc.c.dec = ctx, path, dec
	nc.c.md, _ = metadata.FromIncomingContext(ctx)
	p.serveModelCall(&nc.w, &nc.c, field)
	return nc.w.finish(ctx)
}

var contentTypeGRPC = []string{"application/grpc"}

// nativeCall is what serveNative needs per call, kept for the next: the
// call's view and the answer's collector. Nothing of it outlives the call
// (the answer's message is the collector's body, which is not kept).
type nativeCall struct {
	c nativeModelCall
	w nativeWriter
}

var nativeCalls = sync.Pool{New: func() any { return new(nativeCall) }}

func (nc *nativeCall) release() {
	nc.c = nativeModelCall{}
	nc.w.reset() // its metadata and message are grpc-go's now
	nativeCalls.Put(nc)
}

// nativeModelCall is a call on grpc-go's transport as a modelCall: its
// metadata read in place (names lower-case, as HTTP/2 sends them), its
// message decoded straight into serveModelCall's buffer.
type nativeModelCall struct {
	ctx  context.Context
	path string
	md   metadata.MD
	dec  func(any) error
	in   rawMessage
}

// transportMD is metadata that is the transport's, not the call's:
// pseudo-headers (":authority"); grpc-timeout is the context's deadline by
// now, and the message is decompressed.
func transportMD(k string) bool {
	return strings.HasPrefix(k, ":") || k == "grpc-encoding" || k == "grpc-accept-encoding"
}

func (c *nativeModelCall) Context() context.Context { return c.ctx }
func (c *nativeModelCall) Path() string             { return c.path }

func (c *nativeModelCall) values(name string) []string {
	k := lowerKey(name)
	if k == "content-type" {
		return contentTypeGRPC // the message is passed on uncompressed, as application/grpc
	}
	if transportMD(k) {
		return nil
	}
	return c.md[k]
}

// Header implements RequestView.
func (c *nativeModelCall) Header(name string) string {
	if vs := c.values(name); len(vs) > 0 {
		return vs[0]
	}
	return ""
}

// Cookie implements RequestView, reading the cookie metadata as net/http reads a Cookie header.
func (c *nativeModelCall) Cookie(name string) string {
	vs := c.values("cookie")
	if len(vs) == 0 {
		return ""
	}
	return httpView{&http.Request{Header: http.Header{"Cookie": vs}}}.Cookie(name)
}

// EachHeader implements RequestView.
func (c *nativeModelCall) EachHeader(f func(name, value string)) {
	c.EachMetadata(func(k string, vs []string) {
		if len(vs) > 0 {
			f(k, vs[0])
		}
	})
}

func (c *nativeModelCall) EachMetadata(f func(name string, vs []string)) {
	f("content-type", contentTypeGRPC)
	for k, vs := range c.md {
		if k != "content-type" && !transportMD(k) {
			f(k, vs)
		}
	}
}

func (c *nativeModelCall) RemoteHost() string {
	if pr, ok := peer.FromContext(c.ctx); ok && pr.Addr != nil {
		return remoteHost(pr.Addr.String())
	}
	return ""
}

// ReadMessage decodes the message grpc-go has read (within its
// MaxRecvMsgSize, which is max) into buf behind its length prefix.
func (c *nativeModelCall) ReadMessage(buf *bytes.Buffer, max int64) *grpcError {
	c.in = rawMessage{into: buf}
	if err := c.dec(&c.in); err != nil {
		return grpcErrorf(status.Code(err), "reading the request message: %v", status.Convert(err).Message())
	}
	if n := int64(buf.Len() - pb.FrameHeaderBytes); n > max {
		return grpcErrorf(codes.ResourceExhausted, "request body larger than %d bytes", max)
	}
	return nil
}

// nativeWriter keeps serveModelCall's answer for finish: header and
// trailer metadata, and the status error or the message.
type nativeWriter struct {
	header, trailer metadata.MD
	err             error
	msg             []byte // the message without its length prefix; nil until relayed
}

func (w *nativeWriter) reset() { *w = nativeWriter{} }

// fail is a refusal: its headers as header metadata, as net/http's side sends them.
func (w *nativeWriter) fail(e *grpcError) {
	retry := e.code == codes.Unavailable || e.code == codes.ResourceExhausted
	for k, v := range e.headers {
		key := lowerKey(http.CanonicalHeaderKey(k))
		retry = retry && key != "retry-after"
		w.header = appendMD(w.header, key, []string{v})
	}
	if retry {
		w.header = appendMD(w.header, "retry-after", retryAfterOne)
	}
	w.err = status.Error(e.code, e.msg)
}

var retryAfterOne = []string{"1"}

// relay takes the instance's answer: headers to header metadata (the
// transport's own and the status left out), the message read whole,
// trailers to trailer metadata, grpc-status and its message and details to
// the call's status. It returns the grpc-status, as copyResponse does.
func (w *nativeWriter) relay(p *grpcProxy, resp *http.Response, revision string, cold time.Duration, keep *shadowCopy) codes.Code {
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// Not a gRPC answer (an instance or ingress refusing at the HTTP level).
		w.header = metadata.MD{"x-pilotlight-revision": {revision}}
		code := pb.CodeForHTTP(resp.StatusCode)
		w.err = status.Errorf(code, "instance answered HTTP %d instead of gRPC", resp.StatusCode)
		return code
	}
	var st [len(grpcStatusKeys)][]string // by grpcStatusKeys' index; nil: absent
	for k, vs := range resp.Header {
		if i := slices.Index(grpcStatusKeys[:], k); i >= 0 {
			st[i] = vs
		} else if !grpcDropHeaders[k] && k != HeaderRevision && k != HeaderColdStart {
			w.header = relayMD(w.header, k, vs)
		}
	}
	w.header = appendMD(w.header, "x-pilotlight-revision", []string{revision})
	if cold > 0 {
		w.header = appendMD(w.header, "x-pilotlight-cold-start", []string{strconv.FormatFloat(cold.Seconds(), 'f', 6, 64)})
	}
	body, err := readAnswer(resp.Body)
	if err != nil {
		p.rt.log.Debug("reading gRPC response", "err", err)
	}
	if keep != nil {
		keep.Write(body)
	}
	for k, vs := range resp.Trailer {
		if i := slices.Index(grpcStatusKeys[:], k); i >= 0 {
			st[i] = vs
		} else {
			w.trailer = relayMD(w.trailer, k, vs)
		}
	}
	// What the client gets is what the metrics count: an answer the
	// router cannot relay is Internal to both.
	sc := -1
	if len(st[0]) > 0 {
		if v, err := strconv.Atoi(st[0][0]); err == nil {
			sc = v
		}
	}
	if sc < 0 {
		w.err = status.Error(codes.Internal, "the instance's answer carried no grpc-status")
		return codes.Internal
	}
	code := codes.Code(sc)
	if code != codes.OK {
		s := &spb.Status{Code: int32(code)}
		if len(st[1]) > 0 {
			s.Message = pb.DecodeMessage(st[1][0])
		}
		if len(st[2]) > 0 {
			if b, err := decodeBin(st[2][0]); err == nil && len(b) > 0 {
				if d := new(spb.Status); proto.Unmarshal(b, d) == nil {
					s.Details = d.Details
				}
			}
		}
		w.err = status.FromProto(s).Err()
		return code
	}
	if len(body) < pb.FrameHeaderBytes {
		w.err = status.Error(codes.Internal, "the instance answered OK without a message")
		return codes.Internal
	}
	compressed, n := pb.ParseFrameHeader(body)
	if compressed || len(body) != pb.FrameHeaderBytes+int(n) {
		w.err = status.Errorf(codes.Internal, "the instance's answer is not one uncompressed message (%d bytes, prefix says %d, compressed %v)", len(body)-pb.FrameHeaderBytes, n, compressed)
		return codes.Internal
	}
	w.msg = body[pb.FrameHeaderBytes:]
	return code
}

// relayMD adds one of the instance's headers or trailers to md unless it
// is the transport's own.
func relayMD(md metadata.MD, k string, vs []string) metadata.MD {
	key := lowerKey(k)
	if len(vs) == 0 || key == "content-type" || key == "content-length" || key == "trailer" || key == "te" || strings.HasPrefix(key, "grpc-") {
		return md
	}
	return appendMD(md, key, vs)
}

// readAnswer reads an answer's length-prefixed message whole, in one
// allocation when the answer is framed (its length is known).
func readAnswer(r io.Reader) ([]byte, error) {
	if fb, ok := r.(*frameBody); ok && fb.c != nil {
		b := make([]byte, fb.c.body.N)
		n, err := io.ReadFull(r, b)
		return b[:n], err
	}
	return io.ReadAll(r)
}

// finish hands the kept answer to grpc-go.
func (w *nativeWriter) finish(ctx context.Context) (any, error) {
	if w.header != nil {
		if err := grpc.SetHeader(ctx, w.header); err != nil {
			return nil, err
		}
	}
	if w.trailer != nil {
		if err := grpc.SetTrailer(ctx, w.trailer); err != nil {
			return nil, err
		}
	}
	if w.err != nil {
		return nil, w.err
	}
	if w.msg == nil {
		return nil, status.Error(codes.Internal, "the router gave the call no answer")
	}
	return &rawMessage{b: w.msg}, nil
}

// lowerKeys are the lower-case forms of the header names every answer
// carries, so finish does not allocate them per call.
var lowerKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"Grpc-Status", "Grpc-Message", "Grpc-Status-Details-Bin", "Content-Type", "Content-Length", "Trailer", "Te", HeaderRevision, HeaderColdStart,
		"Authorization", auth.HeaderAPIKey, UserIDHeader, "Cookie", "Traceparent", "Tracestate", "Baggage"} {
		m[k] = strings.ToLower(k)
	}
	return m
}()

func lowerKey(k string) string {
	if l, ok := lowerKeys[k]; ok {
		return l
	}
	return strings.ToLower(k)
}

// appendMD adds an HTTP header's values under key: a "-bin" key's values
// are base64 on HTTP/2 and bytes in metadata (the transport encodes them
// again); a value that does not decode is dropped.
func appendMD(md metadata.MD, key string, vs []string) metadata.MD {
	if md == nil {
		md = metadata.MD{}
	}
	if !strings.HasSuffix(key, "-bin") {
		md[key] = append(md[key], vs...)
		return md
	}
	for _, v := range vs {
		if b, err := decodeBin(v); err == nil {
			md[key] = append(md[key], string(b))
		}
	}
	return md
}

// decodeBin decodes a binary header's value, padded or not (gRPC senders
// may omit the padding).
func decodeBin(v string) ([]byte, error) {
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(v, "="))
}

// canonicalNames are the canonical forms of the metadata names most calls
// carry, so passing a call on does not allocate them per call.
var canonicalNames = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"Content-Type", "User-Agent", UserIDHeader, "Traceparent", "Tracestate", "Baggage", "Authorization", auth.HeaderAPIKey, "Te", "Grpc-Timeout"} {
		k = http.CanonicalHeaderKey(k)
		m[strings.ToLower(k)] = k
	}
	return m
}()

// canonicalName is a metadata name as an HTTP header's canonical name.
func canonicalName(k string) string {
	if c, ok := canonicalNames[k]; ok {
		return c
	}
	return http.CanonicalHeaderKey(k)
}

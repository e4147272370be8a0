package router

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"

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
// through an adapter: the call is an *http.Request (the method's path, the
// metadata as headers, the message length-prefixed as its body) and the
// answer an http.ResponseWriter whose headers become the call's header
// metadata, whose "Trailer:" headers become its trailers and status, and
// whose body is the message. The message is never decoded: the codec
// passes its bytes through (passthroughCodec).

// rawMessage is a message's wire bytes, passed through undecoded.
type rawMessage struct{ b []byte }

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
		m.b = data.Materialize() // data is freed when Unmarshal returns
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

// serveNative is one call that names a model, through serveModelCall.
func (p *grpcProxy) serveNative(ctx context.Context, path, field string, dec func(any) error) (any, error) {
	var in rawMessage
	if err := dec(&in); err != nil {
		return nil, err
	}
	md, _ := metadata.FromIncomingContext(ctx)
	nc := nativeCalls.Get().(*nativeCall)
	defer nc.release()
	h := nc.h
	for k, vs := range md {
		// Pseudo-headers (":authority") are the transport's; grpc-timeout is
		// the context's deadline by now, and the message is decompressed.
		if strings.HasPrefix(k, ":") || k == "grpc-encoding" || k == "grpc-accept-encoding" {
			continue
		}
		h[http.CanonicalHeaderKey(k)] = vs
	}
	h["Content-Type"] = contentTypeGRPC
	nc.url.Path = path
	nc.body = nativeBody{msg: in.b}
	nc.req = http.Request{Method: http.MethodPost, URL: &nc.url, Proto: "HTTP/2.0", ProtoMajor: 2,
		Header: h, Body: &nc.body, ContentLength: -1, RequestURI: path}
	r := nc.req.WithContext(ctx)
	if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
		r.RemoteAddr = pr.Addr.String()
	}
	p.serveModelCall(&nc.w, r, field)
	return nc.w.finish(ctx)
}

var contentTypeGRPC = []string{"application/grpc"}

// nativeCall is what serveNative builds per call, kept for the next: the
// request's header map, URL and body, and the answer's collector. Nothing
// of it outlives the call (the answer's message is the collector's
// body, which is not kept).
type nativeCall struct {
	h    http.Header
	url  url.URL
	body nativeBody
	req  http.Request
	w    nativeWriter
}

var nativeCalls = sync.Pool{New: func() any { return &nativeCall{h: http.Header{}, w: nativeWriter{h: http.Header{}}} }}

func (nc *nativeCall) release() {
	clear(nc.h)
	clear(nc.w.h)
	nc.w.body = nil // handed to grpc-go with the answer
	nc.body = nativeBody{}
	nc.req = http.Request{}
	nativeCalls.Put(nc)
}

// nativeBody is the call's message as net/http's side reads it: the
// 5-byte length prefix, then the message.
type nativeBody struct {
	prefix [pb.FrameHeaderBytes]byte
	at     int // bytes of prefix and message read
	msg    []byte
}

func (b *nativeBody) Read(p []byte) (int, error) {
	if b.at == 0 {
		n := uint32(len(b.msg))
		b.prefix[1], b.prefix[2], b.prefix[3], b.prefix[4] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	}
	n := 0
	if b.at < len(b.prefix) {
		n = copy(p, b.prefix[b.at:])
	}
	if off := b.at + n - len(b.prefix); off >= 0 && n < len(p) {
		n += copy(p[n:], b.msg[off:])
	}
	b.at += n
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

func (b *nativeBody) Close() error { return nil }

// nativeWriter collects serveModelCall's answer for finish.
type nativeWriter struct {
	h    http.Header
	body []byte // the length-prefixed message
}

func (w *nativeWriter) Header() http.Header { return w.h }
func (w *nativeWriter) WriteHeader(int)     {}
func (w *nativeWriter) Write(b []byte) (int, error) {
	w.body = append(w.body, b...)
	return len(b), nil
}

// finish turns the collected answer into the call's header metadata,
// trailers, status and message.
func (w *nativeWriter) finish(ctx context.Context) (any, error) {
	var header, trailer metadata.MD
	code, msg, details, sawStatus := codes.Unknown, "", "", false
	for k, vs := range w.h {
		name, isTrailer := strings.CutPrefix(k, http.TrailerPrefix)
		key := lowerKey(name)
		switch {
		case len(vs) == 0:
		case key == "grpc-status":
			n, err := strconv.Atoi(vs[0])
			code, sawStatus = codes.Code(n), err == nil
		case key == "grpc-message":
			msg = pb.DecodeMessage(vs[0])
		case key == "grpc-status-details-bin":
			details = vs[0]
		case key == "content-type", key == "content-length", key == "trailer", key == "te", strings.HasPrefix(key, "grpc-"):
			// the transport's own
		case isTrailer:
			trailer = appendMD(trailer, key, vs)
		default:
			header = appendMD(header, key, vs)
		}
	}
	if header != nil {
		if err := grpc.SetHeader(ctx, header); err != nil {
			return nil, err
		}
	}
	if trailer != nil {
		if err := grpc.SetTrailer(ctx, trailer); err != nil {
			return nil, err
		}
	}
	if !sawStatus {
		return nil, status.Error(codes.Internal, "the instance's answer carried no grpc-status")
	}
	if code != codes.OK {
		st := &spb.Status{Code: int32(code), Message: msg}
		if b, err := decodeBin(details); err == nil && len(b) > 0 {
			if d := new(spb.Status); proto.Unmarshal(b, d) == nil {
				st.Details = d.Details
			}
		}
		return nil, status.FromProto(st).Err()
	}
	if len(w.body) < pb.FrameHeaderBytes {
		return nil, status.Error(codes.Internal, "the instance answered OK without a message")
	}
	compressed, n := pb.ParseFrameHeader(w.body)
	if compressed || len(w.body) != pb.FrameHeaderBytes+int(n) {
		return nil, status.Errorf(codes.Internal, "the instance's answer is not one uncompressed message (%d bytes, prefix says %d, compressed %v)", len(w.body)-pb.FrameHeaderBytes, n, compressed)
	}
	return &rawMessage{b: w.body[pb.FrameHeaderBytes:]}, nil
}

// lowerKeys are the lower-case forms of the header names every answer
// carries, so finish does not allocate them per call.
var lowerKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"Grpc-Status", "Grpc-Message", "Grpc-Status-Details-Bin", "Content-Type", "Content-Length", "Trailer", "Te", HeaderRevision, HeaderColdStart} {
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

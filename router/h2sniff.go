package router

import (
	"io"
	"net"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Which server takes an HTTP/2 connection: grpc-go's transport when the
// connection's first request is a gRPC call (grpcnative.go), net/http
// otherwise. The front door reads the client's frames up to its first
// HEADERS and looks at the content type, as cmux does for etcd; the bytes
// read are replayed to the server chosen.
//
// Many clients (grpc-go's among them) send no request before the server's
// SETTINGS frame, so the front door sends an empty one (every setting at
// its default) before it reads; the server chosen sends its own. The
// client acknowledges both, and the first acknowledgement, which answers
// the front door's, is taken out of the stream: net/http counts
// acknowledgements and would end the connection on one it did not ask for.

// h2SniffLimit bounds what the front door reads before deciding.
const h2SniffLimit = 64 << 10

// emptySettings is a SETTINGS frame with no parameters (RFC 9113 §6.5).
var emptySettings = []byte{0, 0, 0, byte(http2.FrameSettings), 0, 0, 0, 0, 0}

// sniffH2 reads c (its preface already in prefix) up to the first request
// and returns the connection to serve, and whether that request is gRPC.
// On anything unexpected it answers false: net/http then meets the same
// bytes and answers them as HTTP/2 requires.
func sniffH2(c net.Conn, prefix []byte, deadline time.Time) (net.Conn, bool) {
	out := &h2Conn{Conn: c, left: len(http2Preface)}
	if _, err := c.Write(emptySettings); err != nil {
		out.prefix = prefix
		return out, false
	}
	rec := &recorder{r: c, b: append(make([]byte, 0, 512), prefix...)}
	_ = c.SetReadDeadline(deadline)
	grpc := sniffFrames(rec, len(prefix))
	_ = c.SetReadDeadline(time.Time{})
	out.prefix = rec.b
	return out, grpc
}

// sniffFrames reads frames from rec (the first skip bytes are the
// preface, already recorded) until the first header block.
func sniffFrames(rec *recorder, skip int) bool {
	rec.pos = skip
	if skip < len(http2Preface) { // under TLS: the preface is still to come
		var pre [len(http2Preface)]byte
		if _, err := io.ReadFull(rec, pre[skip:]); err != nil || string(pre[skip:]) != http2Preface[skip:] {
			return false
		}
	}
	fr := http2.NewFramer(nil, rec)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = h2SniffLimit
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return false
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			for _, hf := range f.RegularFields() {
				if hf.Name == "content-type" {
					return isGRPCContentType(hf.Value)
				}
			}
			return false
		case *http2.SettingsFrame, *http2.WindowUpdateFrame, *http2.PriorityFrame, *http2.PingFrame:
			// what a client sends before its first request
		default:
			return false
		}
	}
}

// isGRPCContentType is application/grpc, or application/grpc+<codec> or ;<params>.
func isGRPCContentType(ct string) bool {
	rest, ok := strings.CutPrefix(ct, "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// recorder reads through to r, keeping every byte it returns (at most
// h2SniffLimit): the replay.
type recorder struct {
	r   io.Reader
	b   []byte
	pos int // bytes of b already returned to the reader
}

func (r *recorder) Read(p []byte) (int, error) {
	if r.pos < len(r.b) { // the prefix read before sniffing started
		n := copy(p, r.b[r.pos:])
		r.pos += n
		return n, nil
	}
	if len(r.b) >= h2SniffLimit {
		return 0, io.ErrShortBuffer
	}
	p = p[:min(len(p), h2SniffLimit-len(r.b))]
	n, err := r.r.Read(p)
	r.b = append(r.b, p[:n]...)
	r.pos += n
	return n, err
}

// h2Conn replays the bytes read while sniffing, then reads the connection,
// dropping the client's first SETTINGS acknowledgement (the answer to the
// front door's SETTINGS). It parses frame headers only until then.
type h2Conn struct {
	net.Conn
	prefix  []byte
	left    int // bytes of the current frame (or the preface) still to pass on
	hdr     [9]byte
	pending []byte // a frame header read and not yet passed on
	dropped bool
}

func (c *h2Conn) read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *h2Conn) Read(p []byte) (int, error) {
	for {
		switch {
		case len(c.pending) > 0:
			n := copy(p, c.pending)
			c.pending = c.pending[n:]
			return n, nil
		case c.dropped:
			return c.read(p)
		case c.left > 0:
			n, err := c.read(p[:min(len(p), c.left)])
			c.left -= n
			return n, err
		}
		// At a frame's start: its header says whether it is the one to drop.
		if _, err := io.ReadFull(readFunc(c.read), c.hdr[:]); err != nil {
			return 0, err
		}
		length := int(c.hdr[0])<<16 | int(c.hdr[1])<<8 | int(c.hdr[2])
		if http2.FrameType(c.hdr[3]) == http2.FrameSettings && http2.Flags(c.hdr[4]).Has(http2.FlagSettingsAck) && length == 0 {
			c.dropped = true
			continue
		}
		c.left = length
		c.pending = c.hdr[:]
	}
}

// NetConn is the connection itself.
func (c *h2Conn) NetConn() net.Conn { return c.Conn }

type readFunc func([]byte) (int, error)

func (f readFunc) Read(p []byte) (int, error) { return f(p) }

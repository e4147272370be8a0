// Package frame is the framed protocol between the router and the local
// engine's instances, over a Unix socket each instance opens beside its
// HTTP port: one HTTP exchange per frame pair, with the request line and
// headers already split, so neither side formats or parses HTTP text and
// no TCP stack sits between two processes on one machine. HTTP on $PORT
// stays for Knative, health checks and direct callers; an instance serves
// a frame with the same handler chain as an HTTP request.
//
// A frame is a 4-byte little-endian length and that many bytes:
//
//	request:  'P' version(3) | u64 timeout ns | u32 len, revision | u32 len, method | u32 len, request URI | u32 count, headers | body
//	response: u16 status | u32 count, headers | body
//	header:   u32 len, name | u32 len, value
//
// The timeout is how long the router still waits for the answer (0: no
// bound). The instance ends the request's context when it passes, as
// net/http's server does when a proxy closes the connection: a request
// the router has given up on leaves the batch queue instead of running.
//
// The revision names the revision the request is for: empty means the
// instance's one revision; an instance that does not serve the named one
// answers 404 with {"error": "..."} (a process serving several revisions
// picks the sessions by it).
//
// gRPC rides the same frames, so the router terminates HTTP/2 once: a
// request whose Content-Type is application/grpc is a unary gRPC call,
// its URI the method's path, its headers the call's metadata, its body
// the length-prefixed request message; the instance sees it as the
// HTTP/2 request it stands for. A response header whose name starts with
// "Trailer:" (net/http's TrailerPrefix) is a trailer: grpc-status and
// grpc-message come back that way, whether the instance declared them as
// trailers or set them with the prefix.
//
// The body is what is left of the frame. A reader refuses a frame longer
// than its limit, and the connection is closed after any error: a frame
// stream cannot resynchronise.
package frame

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

const (
	magic   = 'P'
	version = 3
)

// TrailerPrefix starts the name of a response header that is a trailer
// (the same prefix net/http's ResponseWriter takes).
const TrailerPrefix = "Trailer:"

// ErrTooLarge is a frame longer than the reader's limit.
var ErrTooLarge = errors.New("frame: frame larger than the limit")

// Header is one header line of a frame.
type Header struct{ Name, Value []byte }

// Request is a decoded request frame; its slices alias the reader's buffer
// and are valid until the next read.
type Request struct {
	Timeout     time.Duration // how long the router still waits (0: no bound)
	Revision    []byte        // the revision the request is for (empty: the instance's one)
	Method, URI []byte
	Headers     []Header
	Body        []byte
	length      [4]byte // scratch: a heap field, so reading into it allocates nothing
}

// Encoder writes frames into a reusable buffer.
type Encoder struct {
	b       []byte
	countAt int // where the current frame's header count sits
}

// StartRequest begins a request frame for revision ("": the instance's
// one); timeout is how long the sender will wait for the answer (0: no
// bound; a negative one is sent as 1 ns, already over).
func (e *Encoder) StartRequest(revision string, method, uri []byte, timeout time.Duration) {
	if timeout < 0 {
		timeout = 1
	}
	e.b = append(e.b[:0], 0, 0, 0, 0, magic, version)
	e.b = binary.LittleEndian.AppendUint64(e.b, uint64(timeout))
	e.b = binary.LittleEndian.AppendUint32(e.b, uint32(len(revision)))
	e.b = append(e.b, revision...)
	e.b = appendBytes(e.b, method)
	e.b = appendBytes(e.b, uri)
	e.countAt = len(e.b)
	e.b = append(e.b, 0, 0, 0, 0)
}

// StartResponse begins a response frame.
func (e *Encoder) StartResponse(status int) {
	e.b = append(e.b[:0], 0, 0, 0, 0)
	e.b = binary.LittleEndian.AppendUint16(e.b, uint16(status))
	e.countAt = len(e.b)
	e.b = append(e.b, 0, 0, 0, 0)
}

// Header adds a header between Start* and Head or Finish.
func (e *Encoder) Header(name, value []byte) {
	e.b = appendBytes(appendBytes(e.b, name), value)
	binary.LittleEndian.PutUint32(e.b[e.countAt:], binary.LittleEndian.Uint32(e.b[e.countAt:])+1)
}

// HeaderString is Header for a name and value held as strings (no copy
// to []byte first).
func (e *Encoder) HeaderString(name, value string) {
	e.b = binary.LittleEndian.AppendUint32(e.b, uint32(len(name)))
	e.b = append(e.b, name...)
	e.b = binary.LittleEndian.AppendUint32(e.b, uint32(len(value)))
	e.b = append(e.b, value...)
	binary.LittleEndian.PutUint32(e.b[e.countAt:], binary.LittleEndian.Uint32(e.b[e.countAt:])+1)
}

// appendBytes appends p with its length before it.
func appendBytes(b, p []byte) []byte {
	return append(binary.LittleEndian.AppendUint32(b, uint32(len(p))), p...)
}

// Head sets the length for a body of n bytes and returns the frame without
// it, for a caller that writes the body itself (a large body is not
// copied); it is valid until the next Start*.
func (e *Encoder) Head(n int) ([]byte, error) {
	if uint64(len(e.b)-4+n) > 1<<32-1 {
		return nil, ErrTooLarge
	}
	binary.LittleEndian.PutUint32(e.b, uint32(len(e.b)-4+n))
	return e.b, nil
}

// Finish appends the body, sets the length and returns the frame; it is
// valid until the next Start*.
func (e *Encoder) Finish(body []byte) ([]byte, error) {
	if uint64(len(e.b)-4+len(body)) > 1<<32-1 {
		return nil, ErrTooLarge
	}
	e.b = append(e.b, body...)
	binary.LittleEndian.PutUint32(e.b, uint32(len(e.b)-4))
	return e.b, nil
}

// ReadRequest reads one request frame of at most limit bytes into *buf
// (grown as needed) and decodes it.
func ReadRequest(r *bufio.Reader, buf *[]byte, limit int, req *Request) error {
	b, err := readFrame(r, req.length[:], buf, limit)
	if err != nil {
		return err
	}
	d := decoder{b: b}
	if d.u8() != magic || d.u8() != version {
		return errors.New("frame: not a Pilotlight request frame (bad magic or version)")
	}
	req.Timeout = time.Duration(min(d.u64(), 1<<63-1))
	req.Revision = d.take(int(d.u32()))
	req.Method = d.take(int(d.u32()))
	req.URI = d.take(int(d.u32()))
	req.Headers = d.headers(req.Headers[:0])
	req.Body = d.b
	return d.err
}

// ResponseHead is a response frame's status and headers; Body bytes of
// body follow on the reader.
type ResponseHead struct {
	Status  int
	Headers []Header
	Body    int
	spans   []span   // scratch, kept between reads
	fixed   [10]byte // scratch: a heap field, so reading into it allocates nothing
}

// span locates one header's name and value in the read buffer.
type span struct{ k, v, end int }

// ReadResponseHead reads a response frame's status and headers (at most
// limit bytes of them) into *buf, leaving the body on r for the caller to
// read whole or stream.
func ReadResponseHead(r *bufio.Reader, buf *[]byte, limit int, h *ResponseHead) error {
	fixed := h.fixed[:]
	if _, err := io.ReadFull(r, fixed); err != nil {
		return err // io.EOF before a frame: the peer closed
	}
	n := int(binary.LittleEndian.Uint32(fixed)) - (len(fixed) - 4)
	if n < 0 {
		return errors.New("frame: response frame too short")
	}
	h.Status = int(binary.LittleEndian.Uint16(fixed[4:]))
	count := int(binary.LittleEndian.Uint32(fixed[6:]))
	// Read the header block field by field into b, then slice it.
	b := (*buf)[:0]
	sp := h.spans[:0]
	var err error
	for i := 0; i < count; i++ {
		if b, err = appendN(r, b, 4, limit); err != nil {
			return err
		}
		k := int(binary.LittleEndian.Uint32(b[len(b)-4:]))
		if b, err = appendN(r, b, k+4, limit); err != nil {
			return err
		}
		v := int(binary.LittleEndian.Uint32(b[len(b)-4:]))
		kStart := len(b) - 4 - k
		if b, err = appendN(r, b, v, limit); err != nil {
			return err
		}
		sp = append(sp, span{k: kStart, v: len(b) - v, end: len(b)})
	}
	*buf, h.spans = b, sp
	h.Headers = h.Headers[:0]
	for _, s := range sp {
		h.Headers = append(h.Headers, Header{Name: b[s.k : s.v-4 : s.v-4], Value: b[s.v:s.end:s.end]})
	}
	if h.Body = n - len(b); h.Body < 0 {
		return errors.New("frame: response headers longer than the frame")
	}
	return nil
}

// WriteResponse writes a whole response frame and flushes w; headers adds
// the headers (and the trailers, named with TrailerPrefix).
func WriteResponse(w *bufio.Writer, e *Encoder, status int, headers func(e *Encoder), body []byte) error {
	e.StartResponse(status)
	headers(e)
	f, err := e.Finish(body)
	if err != nil {
		return err
	}
	if _, err := w.Write(f); err != nil {
		return err
	}
	return w.Flush()
}

func readFrame(r *bufio.Reader, lb []byte, buf *[]byte, limit int) ([]byte, error) {
	if _, err := io.ReadFull(r, lb); err != nil {
		return nil, err // io.EOF between frames: the peer closed
	}
	n := int(binary.LittleEndian.Uint32(lb))
	if n > limit {
		return nil, fmt.Errorf("%w (%d > %d bytes)", ErrTooLarge, n, limit)
	}
	b, err := appendN(r, (*buf)[:0], n, limit)
	*buf = b
	return b, err
}

// appendN appends n bytes read from r to b, refusing to grow b past limit.
func appendN(r io.Reader, b []byte, n, limit int) ([]byte, error) {
	if len(b)+n > limit {
		return b, fmt.Errorf("%w (%d > %d bytes)", ErrTooLarge, len(b)+n, limit)
	}
	if cap(b)-len(b) < n {
		nb := make([]byte, len(b), len(b)+n)
		copy(nb, b)
		b = nb
	}
	start := len(b)
	b = b[:start+n]
	if _, err := io.ReadFull(r, b[start:]); err != nil {
		return b[:start], unexpected(err)
	}
	return b, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

type decoder struct {
	b   []byte
	err error
}

// take consumes n bytes, or records a truncated frame and returns nil.
func (d *decoder) take(n int) []byte {
	if d.err == nil && len(d.b) < n {
		d.err = errors.New("frame: truncated request frame")
	}
	if d.err != nil {
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() byte {
	if v := d.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if v := d.take(4); v != nil {
		return binary.LittleEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if v := d.take(8); v != nil {
		return binary.LittleEndian.Uint64(v)
	}
	return 0
}

func (d *decoder) headers(hs []Header) []Header {
	count := int(d.u32())
	for i := 0; i < count && d.err == nil; i++ {
		k := d.take(int(d.u32()))
		v := d.take(int(d.u32()))
		hs = append(hs, Header{Name: k, Value: v})
	}
	return hs
}

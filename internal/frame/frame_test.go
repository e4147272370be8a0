package frame

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func TestRequestRoundTrip(t *testing.T) {
	var e Encoder
	var stream bytes.Buffer
	bodies := [][]byte{[]byte(`{"inputs":[]}`), nil, bytes.Repeat([]byte("x"), 200<<10)}
	timeouts := []time.Duration{0, 1500 * time.Millisecond, -time.Second} // none, a bound, already over
	wantTimeouts := []time.Duration{0, 1500 * time.Millisecond, 1}
	revisions := []string{"", "fraud-00002", "r"}
	for i, body := range bodies {
		e.StartRequest(revisions[i], []byte("POST"), []byte("/v2/models/fraud/infer?x=1"), timeouts[i])
		e.Header([]byte("Content-Type"), []byte("application/json"))
		e.Header([]byte("Traceparent"), []byte(strings.Repeat("0", i)))
		if i%2 == 0 {
			f, err := e.Finish(body)
			if err != nil {
				t.Fatal(err)
			}
			stream.Write(f)
		} else { // the head, then the body written by the caller
			h, err := e.Head(len(body))
			if err != nil {
				t.Fatal(err)
			}
			stream.Write(h)
			stream.Write(body)
		}
	}
	r := bufio.NewReader(&stream)
	var buf []byte
	var req Request
	for i, body := range bodies {
		if err := ReadRequest(r, &buf, 1<<20, &req); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if string(req.Method) != "POST" || string(req.URI) != "/v2/models/fraud/infer?x=1" || !bytes.Equal(req.Body, body) {
			t.Fatalf("frame %d: got %s %s body %d bytes", i, req.Method, req.URI, len(req.Body))
		}
		if string(req.Revision) != revisions[i] {
			t.Fatalf("frame %d: revision %q, want %q", i, req.Revision, revisions[i])
		}
		if req.Timeout != wantTimeouts[i] {
			t.Fatalf("frame %d: timeout %v, want %v", i, req.Timeout, wantTimeouts[i])
		}
		if len(req.Headers) != 2 || string(req.Headers[0].Name) != "Content-Type" || string(req.Headers[0].Value) != "application/json" ||
			string(req.Headers[1].Value) != strings.Repeat("0", i) {
			t.Fatalf("frame %d: headers %q", i, req.Headers)
		}
	}
	if err := ReadRequest(r, &buf, 1<<20, &req); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
}

func TestResponseRoundTrip(t *testing.T) {
	var e Encoder
	var stream bytes.Buffer
	w := bufio.NewWriter(&stream)
	headers := [][2]string{{"Content-Type", "application/json"}, {"X-Long", strings.Repeat("v", 5000)}}
	for i := 0; i < 20; i++ { // more headers than the reader's fixed scratch
		headers = append(headers, [2]string{"X-N", strings.Repeat("n", i)})
	}
	add := func(e *Encoder) {
		for i, h := range headers {
			if i%2 == 0 {
				e.Header([]byte(h[0]), []byte(h[1]))
			} else {
				e.HeaderString(h[0], h[1])
			}
		}
	}
	if err := WriteResponse(w, &e, 201, add, []byte("answer")); err != nil {
		t.Fatal(err)
	}
	if err := WriteResponse(w, &e, 404, func(*Encoder) {}, nil); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReaderSize(&stream, 16)
	var buf []byte
	var h ResponseHead
	if err := ReadResponseHead(r, &buf, 64<<10, &h); err != nil {
		t.Fatal(err)
	}
	if h.Status != 201 || h.Body != len("answer") || len(h.Headers) != len(headers) {
		t.Fatalf("head: status %d body %d headers %d", h.Status, h.Body, len(h.Headers))
	}
	for i, hd := range h.Headers {
		if string(hd.Name) != headers[i][0] || string(hd.Value) != headers[i][1] {
			t.Fatalf("header %d: %q: %q, want %q", i, hd.Name, hd.Value, headers[i])
		}
	}
	body := make([]byte, h.Body)
	if _, err := io.ReadFull(r, body); err != nil || string(body) != "answer" {
		t.Fatalf("body %q, %v", body, err)
	}
	if err := ReadResponseHead(r, &buf, 64<<10, &h); err != nil || h.Status != 404 || h.Body != 0 || len(h.Headers) != 0 {
		t.Fatalf("second frame: %+v, %v", h, err)
	}
}

func TestLimitsAndDamage(t *testing.T) {
	var e Encoder
	e.StartRequest("rev", []byte("POST"), []byte("/"), 0)
	f, _ := e.Finish(make([]byte, 1000))
	var buf []byte
	var req Request
	err := ReadRequest(bufio.NewReader(bytes.NewReader(f)), &buf, 500, &req)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized frame: %v, want ErrTooLarge", err)
	}
	if err := ReadRequest(bufio.NewReader(bytes.NewReader(f[:100])), &buf, 1<<20, &req); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut frame: %v, want io.ErrUnexpectedEOF", err)
	}
	bad := append([]byte(nil), f...)
	bad[4] = 'X'
	if err := ReadRequest(bufio.NewReader(bytes.NewReader(bad)), &buf, 1<<20, &req); err == nil || !strings.Contains(err.Error(), "magic") {
		t.Fatalf("bad magic: %v", err)
	}
	// A version 2 frame (no revision field) from an older router.
	old := append([]byte(nil), f...)
	old[5] = 2
	if err := ReadRequest(bufio.NewReader(bytes.NewReader(old)), &buf, 1<<20, &req); err == nil || !strings.Contains(err.Error(), "version") {
		t.Fatalf("version 2 frame: %v", err)
	}
	// A header count that promises more than the frame holds.
	// length | 'P' 3 | timeout | 4 "rev" | 4 "POST" | 1 "/" | header count: claim 9 headers, send none.
	countAt := 4 + 2 + 8 + 4 + len("rev") + 4 + len("POST") + 4 + len("/")
	lying := append([]byte(nil), f[:countAt+4]...)
	lying[countAt] = 9
	lying[0], lying[1], lying[2], lying[3] = byte(len(lying)-4), 0, 0, 0
	if err := ReadRequest(bufio.NewReader(bytes.NewReader(lying)), &buf, 1<<20, &req); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("lying header count: %v", err)
	}
	var h ResponseHead
	var w bytes.Buffer
	bw := bufio.NewWriter(&w)
	WriteResponse(bw, &e, 200, func(e *Encoder) { e.Header([]byte("X-Big"), make([]byte, 2000)) }, nil)
	if err := ReadResponseHead(bufio.NewReader(&w), &buf, 1000, &h); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized response head: %v, want ErrTooLarge", err)
	}
}

package inference

import (
	"encoding/binary"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"
)

// Wire helpers for the places that answer or route gRPC over HTTP/2 before
// grpc-go sees a call (the instance's size check, the router's proxy): one
// owner of the framing, the status trailers and the status mapping.

// FrameHeaderBytes is the length prefix of every gRPC message: one byte
// compressed flag, four bytes big-endian length.
const FrameHeaderBytes = 5

// ParseFrameHeader reads a gRPC message prefix (len(h) >= FrameHeaderBytes).
func ParseFrameHeader(h []byte) (compressed bool, length uint32) {
	return h[0] != 0, binary.BigEndian.Uint32(h[1:5])
}

// IsGRPC reports whether r is a gRPC call: HTTP/2 with an application/grpc content type.
func IsGRPC(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	return r.ProtoMajor == 2 && strings.HasPrefix(ct, "application/grpc") &&
		(len(ct) == len("application/grpc") || ct[len("application/grpc")] == '+' || ct[len("application/grpc")] == ';')
}

// WriteStatus ends a gRPC call that sent no message with code and msg, as a
// gRPC server does: HTTP 200, application/grpc, grpc-status and
// grpc-message in the trailers. Headers already set on w (say
// x-pilotlight-revision) go out with it.
func WriteStatus(w http.ResponseWriter, code codes.Code, msg string) {
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Del("Content-Length")
	w.WriteHeader(http.StatusOK)
	h.Set(http.TrailerPrefix+"Grpc-Status", strconv.Itoa(int(code)))
	if msg != "" {
		h.Set(http.TrailerPrefix+"Grpc-Message", encodeMessage(msg))
	}
}

// encodeMessage percent-encodes grpc-message as the gRPC HTTP/2 spec asks:
// every byte outside printable ASCII, and '%' itself.
func encodeMessage(msg string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// DecodeMessage undoes grpc-message's percent-encoding (encodeMessage's,
// or any sender's); a '%' not followed by two hex digits stays as it is,
// as the gRPC spec asks of a receiver.
func DecodeMessage(v string) string {
	if !strings.Contains(v, "%") {
		return v
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '%' && i+2 < len(v) {
			if n, err := strconv.ParseUint(v[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(n))
				i += 2
				continue
			}
		}
		b.WriteByte(v[i])
	}
	return b.String()
}

// CodeForHTTP is the gRPC code for an HTTP status the platform answers REST
// calls with, so a refusal means the same on both protocols.
func CodeForHTTP(status int) codes.Code {
	switch {
	case status < 300:
		return codes.OK
	case status == http.StatusBadRequest, status == http.StatusUnprocessableEntity:
		return codes.InvalidArgument
	case status == http.StatusUnauthorized:
		return codes.Unauthenticated
	case status == http.StatusForbidden:
		return codes.PermissionDenied
	case status == http.StatusNotFound:
		return codes.NotFound
	case status == http.StatusConflict:
		return codes.FailedPrecondition
	case status == http.StatusRequestEntityTooLarge, status == http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case status == 499:
		return codes.Canceled
	case status == http.StatusBadGateway, status == http.StatusServiceUnavailable:
		return codes.Unavailable
	case status == http.StatusGatewayTimeout:
		return codes.DeadlineExceeded
	case status < 500:
		return codes.InvalidArgument
	}
	return codes.Internal
}

// HTTPStatusFor is the HTTP status a gRPC code corresponds to, for metrics
// whose code label holds HTTP statuses (so one error-rate query covers both
// protocols). The mapping is grpc-gateway's.
func HTTPStatusFor(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.Canceled:
		return 499
	case codes.InvalidArgument, codes.OutOfRange, codes.FailedPrecondition:
		return http.StatusBadRequest
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// ParseTimeout reads a grpc-timeout header value ("100m", "5S": at most 8
// digits and a unit of H, M, S, m, u or n); ok is false when v is empty or malformed.
func ParseTimeout(v string) (d time.Duration, ok bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	unit := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}[v[len(v)-1]]
	if unit == 0 {
		return 0, false
	}
	if n > int64(math.MaxInt64/unit) {
		return math.MaxInt64, true
	}
	return time.Duration(n) * unit, true
}

// WriteMessage answers a unary gRPC call with one message and status OK.
func WriteMessage(w http.ResponseWriter, msg []byte) error {
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Del("Content-Length")
	w.WriteHeader(http.StatusOK)
	var prefix [FrameHeaderBytes]byte
	binary.BigEndian.PutUint32(prefix[1:], uint32(len(msg)))
	if _, err := w.Write(prefix[:]); err != nil {
		return err
	}
	_, err := w.Write(msg)
	h.Set(http.TrailerPrefix+"Grpc-Status", "0")
	return err
}

// ModelCall is what routing needs from a request message that names a
// model (ModelInferRequest, ModelMetadataRequest, ModelReadyRequest).
type ModelCall struct {
	Name, Version, UserID string
}

// ReadModelCall walks the top level of the message: fields 1 and 2 (the
// model's name and version in ModelInferRequest, ModelMetadataRequest and
// ModelReadyRequest alike) and, in field 4 (ModelInferRequest.parameters),
// the entry "user_id". Tensors (fields 5-7) are skipped, not decoded.
func ReadModelCall(b []byte) (ModelCall, error) {
	var c ModelCall
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return c, protowire.ParseError(n)
		}
		b = b[n:]
		if typ == protowire.BytesType && (num == 1 || num == 2 || num == 4) {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return c, fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
			}
			b = b[n:]
			switch num {
			case 1:
				c.Name = string(v)
			case 2:
				c.Version = string(v)
			case 4:
				key, val, err := readParameter(v)
				if err != nil {
					return c, fmt.Errorf("parameters: %w", err)
				}
				if key == "user_id" && val != "" {
					c.UserID = val
				}
			}
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return c, fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
	}
	return c, nil
}

// readParameter reads one map<string, InferParameter> entry: the key, and
// the value when it is a string_param (3) or an int64_param (2).
func readParameter(b []byte) (key, val string, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", "", protowire.ParseError(n)
		}
		b = b[n:]
		if typ == protowire.BytesType && (num == 1 || num == 2) {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return "", "", protowire.ParseError(n)
			}
			b = b[n:]
			if num == 1 {
				key = string(v)
				continue
			}
			if val, err = readParameterValue(v); err != nil {
				return "", "", err
			}
			continue
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return "", "", protowire.ParseError(n)
		}
		b = b[n:]
	}
	return key, val, nil
}

func readParameterValue(b []byte) (string, error) {
	val := ""
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case num == 3 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return "", protowire.ParseError(n)
			}
			val, b = string(v), b[n:]
		case num == 2 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return "", protowire.ParseError(n)
			}
			val, b = strconv.FormatInt(int64(v), 10), b[n:]
		default:
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return "", protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	return val, nil
}

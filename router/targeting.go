package router

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"strings"

	"github.com/valyala/fasthttp"
)

// Where a request's targeting key comes from, in order. A user keeps the
// same key for the whole rollout, so a sticky split keeps them on one revision.
const (
	UserIDHeader = "X-User-ID"
	UserCookie   = "pl_uid"
)

// bodyKeyFields are the top-level JSON fields that identify a user, in order.
var bodyKeyFields = []string{"user_id", "card_id"}

func targetingKey(r RequestView, body []byte) (key string, random bool) {
	if v := strings.TrimSpace(r.Header(UserIDHeader)); v != "" {
		return v, false
	}
	if v := r.Cookie(UserCookie); v != "" {
		return v, false
	}
	if k := bodyKey(body); k != "" {
		return k, false
	}
	// Not a secret, only a spread: math/rand spares a getrandom syscall per request.
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	return hex.EncodeToString(b[:]), true
}

// RequestView is what picking a revision reads of a request, whatever the
// protocol: net/http's request (HTTP/2, tests), the fast path's fasthttp
// header, read in place rather than copied into a net/http request, or a
// gRPC call's metadata. A Picker gets one per request.
type RequestView interface {
	Header(name string) string // first value, "" when absent
	Cookie(name string) string
	EachHeader(f func(name, value string)) // every header line (a repeated name may come again)
}

type httpView struct{ r *http.Request }

func (v httpView) Header(name string) string { return v.r.Header.Get(name) }

func (v httpView) Cookie(name string) string {
	if c, err := v.r.Cookie(name); err == nil {
		return c.Value
	}
	return ""
}

func (v httpView) EachHeader(f func(name, value string)) {
	for k, vs := range v.r.Header {
		if len(vs) > 0 {
			f(k, vs[0])
		}
	}
}

type fastView struct{ h *fasthttp.RequestHeader }

func (v fastView) Header(name string) string { return string(v.h.Peek(name)) }

func (v fastView) Cookie(name string) string { return string(v.h.Cookie(name)) }

func (v fastView) EachHeader(f func(name, value string)) {
	for k, val := range v.h.All() {
		f(string(k), string(val))
	}
}

// bodyKey reads the top-level user_id or card_id of a JSON object in one
// pass over the bytes, without decoding anything else (a V2 body's data can
// be large): a number is used as written (42 and "42" are the same user).
func bodyKey(body []byte) string {
	if !bytes.Contains(body, []byte(`"user_id"`)) && !bytes.Contains(body, []byte(`"card_id"`)) {
		return ""
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 || body[0] != '{' {
		return ""
	}
	found := map[string]string{}
	depth := 0
	expectKey := false
	for i := 0; i < len(body); i++ {
		switch body[i] {
		case '{', '[':
			depth++
			expectKey = body[i] == '{' && depth == 1
		case '}', ']':
			depth--
		case ',':
			expectKey = depth == 1
		case '"':
			start := i + 1
			for i++; i < len(body) && body[i] != '"'; i++ {
				if body[i] == '\\' {
					i++
				}
			}
			if i >= len(body) {
				return ""
			}
			if !expectKey {
				continue
			}
			expectKey = false
			name := string(body[start:i])
			if name != "user_id" && name != "card_id" {
				continue
			}
			// The value: skip ':' and spaces, then a string or a bare token.
			j := i + 1
			for j < len(body) && (body[j] == ' ' || body[j] == ':' || body[j] == '\t' || body[j] == '\n' || body[j] == '\r') {
				j++
			}
			if j < len(body) && body[j] == '"' {
				k := j + 1
				for k < len(body) && body[k] != '"' && body[k] != '\\' {
					k++
				}
				if k < len(body) && body[k] == '"' {
					found[name] = string(body[j+1 : k])
				}
			} else {
				k := j
				for k < len(body) && (body[k] == '-' || body[k] == '.' || body[k] == '+' || body[k] == 'e' || body[k] == 'E' || (body[k] >= '0' && body[k] <= '9')) {
					k++
				}
				if k > j {
					found[name] = string(body[j:k])
				}
			}
		}
	}
	for _, f := range bodyKeyFields {
		if v := found[f]; v != "" {
			return v
		}
	}
	return ""
}

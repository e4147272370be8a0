package router

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
)

// Where a request's targeting key comes from, in order. A user keeps the
// same key for the whole rollout, so a sticky split keeps them on one revision.
const (
	UserIDHeader = "X-User-ID"
	UserCookie   = "pl_uid"
)

// bodyKeyFields are the top-level JSON fields that identify a user, in order.
var bodyKeyFields = []string{"user_id", "card_id"}

// TargetingKey finds the request's targeting key: the X-User-ID header, else
// the pl_uid cookie, else the JSON body's top-level user_id or card_id. With
// none, it returns a fresh random key (random is true): such a request is
// split by the flag's weights but is not sticky.
func TargetingKey(r *http.Request, body []byte) (key string, random bool) {
	if v := strings.TrimSpace(r.Header.Get(UserIDHeader)); v != "" {
		return v, false
	}
	if c, err := r.Cookie(UserCookie); err == nil && c.Value != "" {
		return c.Value, false
	}
	if k := bodyKey(body); k != "" {
		return k, false
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:]), true
}

// bodyKey reads top-level fields of a JSON object without decoding the rest
// of the body; a number is used as written (42 and "42" are the same user).
func bodyKey(body []byte) string {
	body = bytes.TrimSpace(body)
	if len(body) == 0 || body[0] != '{' {
		return ""
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	found := map[string]string{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return ""
		}
		name, _ := t.(string)
		var v any
		if err := dec.Decode(&v); err != nil {
			return ""
		}
		for _, f := range bodyKeyFields {
			if name != f {
				continue
			}
			switch x := v.(type) {
			case string:
				found[f] = x
			case json.Number:
				found[f] = x.String()
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

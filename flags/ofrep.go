package flags

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// OFREP: the OpenFeature Remote Evaluation Protocol's answers, computed
// from a Set with Evaluate, so an application asking over OFREP gets what
// the router's own evaluation gets for the same context. The HTTP routes
// (keys, which flags a key may see) are the router's; the shapes and
// status codes are here, where the format is owned.
// Spec: open-feature/protocol service/openapi.yaml and its ADRs (0005 ETag
// polling for bulk, 0006 a success without "value" defers to the code
// default).

// ErrInvalidContext is OFREP's code for a request whose context cannot be
// read (beyond the evaluation's own codes, evaluate.go).
const ErrInvalidContext = "INVALID_CONTEXT"

// OFREPEvaluation is one flag's OFREP answer: a success (Value, Reason,
// Variant, Metadata; Value left out when the caller's code default applies:
// DISABLED, or no default variant) or a failure (ErrorCode, ErrorDetails).
// Error repeats ErrorDetails as the platform's {"error": ...} so a person
// reading the body sees the problem whichever convention they know.
type OFREPEvaluation struct {
	Key          string         `json:"key"`
	Value        any            `json:"value,omitempty"` // a false, 0 or "" value is kept: only a nil interface is left out
	Reason       string         `json:"reason,omitempty"`
	Variant      string         `json:"variant,omitempty"`
	Metadata     map[string]any `json:"metadata,omitempty"`
	ErrorCode    string         `json:"errorCode,omitempty"`
	ErrorDetails string         `json:"errorDetails,omitempty"`
	Error        string         `json:"error,omitempty"`
}

// OFREPBulk is the bulk endpoint's 200 body.
type OFREPBulk struct {
	Flags []OFREPEvaluation `json:"flags"`
}

// OFREPFailure is a request-level failure (a context that is not a JSON
// object, for one flag or the bulk endpoint).
type OFREPFailure struct {
	Key          string `json:"key,omitempty"`
	ErrorCode    string `json:"errorCode"`
	ErrorDetails string `json:"errorDetails"`
	Error        string `json:"error"`
}

// ParseOFREPRequest reads an OFREP evaluation request body,
// {"context": {...}}, into an evaluation context. An empty body or a
// missing context is an empty context. A body that is not a JSON object, a
// context that is not one, or a targetingKey that is not a string is an
// INVALID_CONTEXT error (the OpenFeature SDKs send the key as a string).
func ParseOFREPRequest(body []byte) (map[string]any, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return map[string]any{}, nil
	}
	var req map[string]json.RawMessage
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, fmt.Errorf("the request body is not a JSON object ({\"context\": {...}}): %v", err)
	}
	raw, ok := req["context"]
	if !ok || string(raw) == "null" {
		return map[string]any{}, nil
	}
	var ctx map[string]any
	if err := json.Unmarshal(raw, &ctx); err != nil || ctx == nil {
		return nil, errors.New("\"context\" must be a JSON object of attributes")
	}
	if k, ok := ctx["targetingKey"]; ok {
		if _, ok := k.(string); !ok {
			return nil, fmt.Errorf("\"context.targetingKey\" must be a string, not %s", kindOf(k))
		}
	}
	return ctx, nil
}

// OFREP evaluates one flag for an OFREP request and returns the HTTP
// status with it: 200 for a success (DISABLED and code defaults included),
// 404 FLAG_NOT_FOUND, and 400 for an evaluation that failed (PARSE_ERROR,
// GENERAL: the targeting could not run or named no variant), as the spec
// lists them.
func (s *Set) OFREP(key string, ctx map[string]any) (OFREPEvaluation, int) {
	r := s.Evaluate(key, ctx)
	e := OFREPEvaluation{Key: key, Reason: r.Reason, Variant: r.Variant, Metadata: ofrepMetadata(r.Metadata), Value: r.Value}
	if r.ErrorCode == "" {
		return e, http.StatusOK
	}
	e = OFREPEvaluation{Key: key, ErrorCode: r.ErrorCode, ErrorDetails: r.ErrorMessage, Error: r.ErrorMessage}
	if r.ErrorCode == ErrFlagNotFound {
		return e, http.StatusNotFound
	}
	return e, http.StatusBadRequest
}

// OFREPNotFound is the 404 answer for a flag the caller may not see or
// that does not exist: the two are answered alike.
func OFREPNotFound(key string) OFREPEvaluation {
	msg := fmt.Sprintf("flag %q not found", key)
	return OFREPEvaluation{Key: key, ErrorCode: ErrFlagNotFound, ErrorDetails: msg, Error: msg}
}

// OFREPBulkBody evaluates the flags keys (in order) and returns the bulk
// endpoint's body and its ETag: a strong tag of the body's bytes, so a
// provider polling with If-None-Match gets 304 until either the flags or
// what they answer for its context change (ADR 0005).
func (s *Set) OFREPBulkBody(keys []string, ctx map[string]any) (body []byte, etag string, err error) {
	out := OFREPBulk{Flags: make([]OFREPEvaluation, 0, len(keys))}
	for _, k := range keys {
		e, _ := s.OFREP(k, ctx)
		out.Flags = append(out.Flags, e)
	}
	body, err = json.Marshal(out)
	if err != nil {
		return nil, "", fmt.Errorf("encode the bulk evaluation: %w", err)
	}
	sum := sha256.Sum256(body)
	return body, `"` + hex.EncodeToString(sum[:16]) + `"`, nil
}

// ETagMatches reports whether an If-None-Match header value names etag
// (a list, weak tags compared weakly as RFC 9110 says for If-None-Match, or *).
func ETagMatches(ifNoneMatch, etag string) bool {
	for _, t := range strings.Split(ifNoneMatch, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t == etag {
			return true
		}
	}
	return false
}

// ofrepMetadata keeps the metadata values OFREP allows (boolean, string,
// number); flagd's metadata holds no others, so this only guards.
func ofrepMetadata(m map[string]any) map[string]any {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		switch v.(type) {
		case bool, string, float64:
			out[k] = v
		}
	}
	return out
}

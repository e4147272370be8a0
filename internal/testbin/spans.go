package testbin

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
)

// Span is a span as telemetry's console exporter writes it (one JSON
// object after another), with the fields tests read.
type Span struct {
	Name        string
	SpanContext struct{ TraceID, SpanID string }
	Parent      struct{ TraceID, SpanID string }
	Attributes  []struct {
		Key   string
		Value struct{ Value any }
	}
	Links []struct {
		SpanContext struct{ TraceID, SpanID string }
	}
	Events []struct{ Name string }
}

// Attr is the value of the attribute key (JSON numbers are float64), nil
// when the span has none.
func (s Span) Attr(key string) any {
	for _, a := range s.Attributes {
		if a.Key == key {
			return a.Value.Value
		}
	}
	return nil
}

// DecodeSpans reads everything the console exporter wrote to raw.
func DecodeSpans(t testing.TB, raw []byte) []Span {
	t.Helper()
	var out []Span
	dec := json.NewDecoder(bytes.NewReader(raw))
	for {
		var s Span
		if err := dec.Decode(&s); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("decoding the console exporter's output: %v", err)
		}
		out = append(out, s)
	}
}

package flags

import "testing"

func TestETagMatches(t *testing.T) {
	for _, c := range []struct {
		header string
		want   bool
	}{
		{`"abc"`, true},
		{`W/"abc"`, true},
		{`"x", "abc"`, true},
		{`*`, true},
		{`"abcd"`, false},
		{`abc`, false},
		{``, false},
	} {
		if got := ETagMatches(c.header, `"abc"`); got != c.want {
			t.Errorf("ETagMatches(%q) = %v, want %v", c.header, got, c.want)
		}
	}
}

func TestOFREPStatusAndValue(t *testing.T) {
	s, err := Parse([]byte(`{"flags": {
	  "off": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"},
	  "zero": {"state": "ENABLED", "variants": {"z": 0}, "defaultVariant": "z"},
	  "bad": {"state": "ENABLED", "variants": {"a": "a"}, "defaultVariant": "a", "targeting": {"if": [true, "nope"]}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	// A false or 0 value is a value, not a code default.
	if e, st := s.OFREP("off", nil); st != 200 || e.Value != false {
		t.Fatalf("off: %d %+v", st, e)
	}
	if e, st := s.OFREP("zero", nil); st != 200 || e.Value != float64(0) {
		t.Fatalf("zero: %d %+v", st, e)
	}
	// Targeting naming no variant: 400 GENERAL, no value.
	if e, st := s.OFREP("bad", nil); st != 400 || e.ErrorCode != ErrGeneral || e.Value != nil || e.Error == "" {
		t.Fatalf("bad: %d %+v", st, e)
	}
	body, _, err := s.OFREPBulkBody([]string{"off", "zero"}, nil)
	if err != nil || string(body) != `{"flags":[{"key":"off","value":false,"reason":"STATIC","variant":"off"},{"key":"zero","value":0,"reason":"STATIC","variant":"z"}]}` {
		t.Fatalf("bulk %s %v", body, err)
	}
}

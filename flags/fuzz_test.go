package flags

import (
	"os"
	"testing"
)

// FuzzParse: Parse and Validate never panic, agree with each other (Parse
// refuses exactly the files with an error-severity problem), and a
// set that parses evaluates every flag without panicking.
func FuzzParse(f *testing.F) {
	if raw, err := os.ReadFile("../config/flags/flags.json"); err == nil {
		f.Add(raw)
	}
	f.Add([]byte(canaryFile))
	f.Fuzz(func(t *testing.T, raw []byte) {
		problems := Validate(raw)
		s, err := Parse(raw)
		if errs := Errors(problems); (err == nil) != (len(errs) == 0) {
			t.Fatalf("Parse error %v but Validate found %d errors", err, len(errs))
		}
		if s != nil && len(s.Warnings()) != len(problems) {
			t.Fatalf("Set.Warnings() has %d, Validate %d", len(s.Warnings()), len(problems))
		}
		for _, p := range problems {
			if p.Path == "" || p.Path[0] != '$' || p.Msg == "" || (p.Severity != SeverityError && p.Severity != SeverityWarning) {
				t.Fatalf("problem without a path or message: %+v", p)
			}
		}
		if s == nil {
			return
		}
		for _, key := range s.Keys() {
			for _, ctx := range []map[string]any{nil, {"targetingKey": "user-1", "email": "a@pilotlight.dev", "version": "1.2.3", "n": 3}} {
				r := s.Evaluate(key, ctx)
				if r.Reason == "" {
					t.Fatalf("flag %s: no reason", key)
				}
			}
		}
	})
}

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runFlags runs `pilotlight flags ARGS...` in process and returns its
// output and whether it failed (exit status 1).
func runFlags(t *testing.T, args ...string) (string, bool) {
	t.Helper()
	cmd := newFlagsCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	if err != nil {
		out.WriteString(err.Error())
	}
	return out.String(), err != nil
}

func TestFlagsValidateWarnsErrsAndStrict(t *testing.T) {
	dir := t.TempDir()
	write := func(name, doc string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	clean := write("clean.json", `{"flags": {"f": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a"}}}`)
	odd := write("odd.json", `{"flags": {"f": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "a",
		"targeting": {"if": [{"starts_with": [{"var": "email"}]}, "b", {"fractional": [["a", -1], ["b", 1]]}]}}}}`)
	refused := write("refused.json", `{"flags": {"f": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "nope",
		"targeting": {"sem_ver": [1]}}}}`)
	tests := []struct {
		name   string
		args   []string
		failed bool
		lines  []string
	}{
		{"clean", []string{"validate", clean}, false, []string{"ok"}},
		{"warnings exit 0", []string{"validate", odd}, false, []string{
			"warning: $.flags.f.targeting.if[0].starts_with: starts_with takes [value, prefix]",
			"warning: $.flags.f.targeting.if[2].fractional[0][1]: weight -1 is negative: flagd counts it as 0",
			"ok: 2 warning(s)"}},
		{"strict refuses warnings", []string{"validate", "--strict", odd}, true, []string{
			"warning: $.flags.f.targeting.if[0].starts_with:", "2 warning(s), refused by --strict"}},
		{"errors exit 1", []string{"validate", refused}, true, []string{
			`error: $.flags.f.defaultVariant: defaultVariant "nope" is not one of the variants (a)`,
			"warning: $.flags.f.targeting.sem_ver: sem_ver takes [version, operator, version]",
			"1 error(s), 1 warning(s)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, failed := runFlags(t, tt.args...)
			if failed != tt.failed {
				t.Errorf("failed = %v, want %v:\n%s", failed, tt.failed, out)
			}
			for _, l := range tt.lines {
				if !strings.Contains(out, l) {
					t.Errorf("output lacks %q:\n%s", l, out)
				}
			}
		})
	}
	// eval serves the ordinary evaluation of an odd file instead of a PARSE_ERROR.
	out, failed := runFlags(t, "eval", "--file", odd, "--flag", "f", "--context", `{"targetingKey": "u1"}`)
	if failed || !strings.Contains(out, `"value":"B"`) || !strings.Contains(out, `"reason":"TARGETING_MATCH"`) {
		t.Errorf("eval of a tolerated file: %s", out)
	}
}

package loadtest

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/internal/testbin"
)

// TestShortSuite is the CI version of `make loadtest`: every phase, one
// and a half seconds each, and the same verdict.
func TestShortSuite(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault suite starts real processes for ~15 s; skipped with -short")
	}
	// The flags phase is part of the suite: a missing flag file or a serve
	// without --flags fails the run instead of skipping the phase.
	cfg := Config{Bin: testbin.Pilotlight(t), Functions: filepath.Join(testbin.Root(), "functions"), Phase: 1500 * time.Millisecond, Clients: 2,
		FlagsFile: filepath.Join(testbin.Root(), "config", "flags", "flags.json")}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep.Print(&out)
	t.Log("\n" + out.String())
	if !rep.OK() {
		t.Fatal("requests were lost or answered with unexpected 5xx")
	}
	flagPhase := false
	for _, p := range rep.Phases {
		if strings.HasPrefix(p.Name, "flag file rewritten") {
			flagPhase = true
			if strings.HasPrefix(p.Note, "0 ") {
				t.Errorf("the flags phase rewrote nothing: %s", p.Note)
			}
		}
		if p.Result.Sent == 0 || p.Result.Succeeded == 0 {
			t.Errorf("phase %q sent %d, succeeded %d", p.Name, p.Result.Sent, p.Result.Succeeded)
		}
		if strings.HasPrefix(p.Name, "SIGKILL") && strings.HasPrefix(p.Note, "0 ") {
			t.Errorf("the kill phase killed nothing: %s", p.Note)
		}
		if strings.HasPrefix(p.Name, "scale from zero") && !strings.HasPrefix(p.Note, "every revision was at zero") {
			t.Errorf("scale-from-zero phase: %s", p.Note)
		}
	}
	if !flagPhase {
		t.Error("the flags phase did not run")
	}
	if rep.MaxRSS <= 0 || rep.MaxRSS > 2<<30 {
		t.Errorf("max RSS %d bytes is implausible or unbounded", rep.MaxRSS)
	}
}

func TestRunRefusesAFlagsPhaseItCannotRun(t *testing.T) {
	// A binary whose serve has no --flags (here: /bin/true prints no help).
	_, err := Run(context.Background(), Config{Bin: "/bin/true", FlagsFile: "flags.json"})
	if err == nil || !strings.Contains(err.Error(), "--flags") {
		t.Fatalf("Run with a serve lacking --flags: %v; want an error naming --flags", err)
	}
}

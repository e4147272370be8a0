package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pilotlight/pilotlight/functions/fraud"
	"github.com/pilotlight/pilotlight/internal/testbin"
)

// TestRolloutCLIAsAUserRunsIt runs the real binary as the README tells a
// user to: serve (on a copy of the committed flags), live traffic, then
// `rollout start` following its progress to the verdict, `status` as a
// table and as JSON, `abort`, a blue-green rollout with shadow traffic and
// gates, and `undo`.
func TestRolloutCLIAsAUserRunsIt(t *testing.T) {
	bin := testbin.Pilotlight(t)
	root, _ := filepath.Abs("../..")
	committed, err := os.ReadFile(filepath.Join(root, "config", "flags", "flags.json"))
	if err != nil {
		t.Fatal(err)
	}
	flagsPath := filepath.Join(t.TempDir(), "flags.json")
	if err := os.WriteFile(flagsPath, committed, 0o644); err != nil {
		t.Fatal(err)
	}
	_, url := startServe(t, bin, "--pool-size", "1", "--flags", flagsPath)

	// Live traffic: real transactions from a few clients until the test ends.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	txs := fraud.Generate(fraud.HoldoutSeed, 200)
	for c := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; ; i += 3 {
				select {
				case <-stop:
					return
				default:
				}
				body, _ := json.Marshal(txs[i%len(txs)].Tx)
				req, _ := http.NewRequest("POST", url+"/functions/fraud", strings.NewReader(string(body)))
				req.Header.Set("X-User-ID", "user-"+string(rune('a'+i%26)))
				if resp, err := http.DefaultClient.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	t.Cleanup(func() { close(stop); wg.Wait() })

	run := func(args ...string) (string, error) {
		t.Helper()
		cmd := exec.Command(bin, append(args, "--router", url)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	mustContain := func(what, out string, wants ...string) {
		t.Helper()
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", what, w, out)
			}
		}
	}

	// A mistake is an error naming the problem, exit status 1.
	out, err := run("rollout", "start", "fraud", "--to", "fraud-00009")
	if err == nil {
		t.Errorf("start to a missing revision succeeded:\n%s", out)
	}
	mustContain("bad start", out, `function fraud has no revision "fraud-00009"`)

	// Canary: start and follow to the verdict (the README's command).
	out, err = run("rollout", "start", "fraud", "--to", "fraud-00002", "--steps", "50,100", "--interval", "1s", "--min-requests", "5", "--max-p99", "5s")
	if err != nil {
		t.Fatalf("rollout start: %v\n%s", err, out)
	}
	mustContain("start", out, "fraud → fraud-00002  canary", "step 2/2", "VERDICT", "advance", "promote", "fraud promoted: fraud-00002 serves")

	out, err = run("rollout", "status", "fraud")
	if err != nil {
		t.Fatal(err)
	}
	mustContain("status table", out, "FUNCTION  STRATEGY  FROM", "fraud     canary    fraud-00001  fraud-00002  promoted", "ERROR RATE", "healthy at 50%")
	out, err = run("rollout", "status", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Rollouts []struct {
			State string `json:"state"`
			Spec  struct {
				Interval string `json:"interval"`
			} `json:"spec"`
		} `json:"rollouts"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Rollouts) != 1 || list.Rollouts[0].State != "promoted" || list.Rollouts[0].Spec.Interval != "1s" {
		t.Errorf("status -o json: %v\n%s", err, out)
	}
	out, _ = run("rollout", "undo", "fraud")
	mustContain("undo of a canary without --keep-previous", out, "no longer kept warm", "pilotlight rollout start fraud --to fraud-00001")

	// Abort: a rollout back, detached, then aborted mid-step.
	out, err = run("rollout", "start", "fraud", "--to", "fraud-00001", "--interval", "1h", "--detach")
	if err != nil {
		t.Fatalf("detached start: %v\n%s", err, out)
	}
	mustContain("detach", out, "rollout of fraud to fraud-00001 started (canary)")
	out, err = run("rollout", "abort", "fraud")
	if err != nil {
		t.Fatalf("abort: %v\n%s", err, out)
	}
	mustContain("abort", out, "rollout of fraud to fraud-00001: aborted; fraud-00002 serves")

	// Blue-green with shadow traffic and gates, then undo.
	out, err = run("rollout", "start", "fraud", "--to", "fraud-00001", "--strategy", "bluegreen", "--shadow", "50",
		"--min-agreement", "0.5", "--interval", "1s", "--min-requests", "5", "--keep-previous", "10m")
	if err != nil {
		t.Fatalf("blue-green: %v\n%s", err, out)
	}
	mustContain("blue-green", out, "bluegreen", "shadow", "compared", "fraud promoted: fraud-00001 serves; fraud-00002 kept warm until")
	out, err = run("rollout", "undo", "fraud")
	if err != nil {
		t.Fatalf("undo: %v\n%s", err, out)
	}
	mustContain("undo", out, "fraud: fraud-00002 serves again; fraud-00001 is undone (undo by request")
	raw, _ := os.ReadFile(flagsPath)
	if !strings.Contains(string(raw), `"defaultVariant": "canary"`) {
		t.Errorf("after undo the flag file does not default to fraud-00002's variant:\n%s", raw)
	}
}

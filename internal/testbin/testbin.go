// Package testbin holds what tests in several packages share: it builds the
// real pilotlight binary once per test process (so engine and router tests
// start real child runtime processes), starts the real servers tests talk to,
// waits on conditions, and reads metrics and exported spans.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/listener"
)

var (
	once sync.Once
	path string
	err  error
	out  []byte
)

// Root is the repository root.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// BinEnv names a directory holding pilotlight and pilotlight-runtime built
// from this tree: make test builds them once into bin/ and sets it, so the
// test processes of every package share one copy instead of each linking
// its own (120 MiB a copy).
const BinEnv = "PILOTLIGHT_TEST_BIN"

// binDirPrefix names the directory a test process builds into without
// BinEnv; its pid follows, so a later process removes the copies of
// processes that have ended (a test binary has no exit hook).
const binDirPrefix = "pilotlight-bin-"

// Pilotlight returns the path of a freshly built bin/pilotlight, with
// pilotlight-runtime beside it as make build leaves them (cached per
// process).
func Pilotlight(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		if dir := os.Getenv(BinEnv); dir != "" {
			path = filepath.Join(dir, "pilotlight")
			if _, err = os.Stat(filepath.Join(dir, listener.RuntimeBinary)); err != nil {
				err = fmt.Errorf("%s=%s: %w (make build puts both binaries there)", BinEnv, dir, err)
			}
			return
		}
		removeEndedBuilds()
		dir, e := os.MkdirTemp("", binDirPrefix+strconv.Itoa(os.Getpid())+"-")
		if e != nil {
			err = e
			return
		}
		path = filepath.Join(dir, "pilotlight")
		cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/pilotlight", "./cmd/pilotlight-runtime")
		cmd.Dir = Root()
		out, err = cmd.CombinedOutput()
	})
	if err != nil {
		t.Fatalf("build pilotlight and pilotlight-runtime: %v\n%s", err, out)
	}
	return path
}

// removeEndedBuilds removes the binaries other test processes built and
// left behind when they ended.
func removeEndedBuilds() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), binDirPrefix+"*-*"))
	for _, d := range dirs {
		pid, _, ok := strings.Cut(strings.TrimPrefix(filepath.Base(d), binDirPrefix), "-")
		if n, err := strconv.Atoi(pid); !ok || err != nil || n <= 0 {
			continue
		} else if _, err := os.Stat(filepath.Join("/proc", pid)); os.IsNotExist(err) {
			os.RemoveAll(d)
		}
	}
}

// Runtime returns the path of a freshly built pilotlight-runtime, the
// executable the engine runs instances with.
func Runtime(t testing.TB) string {
	t.Helper()
	return filepath.Join(filepath.Dir(Pilotlight(t)), listener.RuntimeBinary)
}

// Functions loads the named functions shipped in functions/ (their handlers
// must be registered: import functions/all).
func Functions(t testing.TB, names ...string) []*functions.Manifest {
	t.Helper()
	out := make([]*functions.Manifest, 0, len(names))
	for _, name := range names {
		m, err := functions.LoadDir(filepath.Join(Root(), "functions", name))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// WaitFor polls cond every 5ms until it holds: tests wait on what they
// expect, never on a fixed sleep. within only turns a hang into a failure
// naming what.
func WaitFor(t testing.TB, what string, within time.Duration, cond func() bool) {
	t.Helper()
	Poll(t, what, within, 5*time.Millisecond, cond)
}

// Poll is WaitFor with a slower pace, for a cond that asks another process
// (a Prometheus query) and should not be asked 200 times a second.
func Poll(t testing.TB, what string, within, every time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(every)
	}
}

// WriteFunction writes raw as dir's function.yaml and parses it: a function
// made for one test (the child runtime reads the file itself).
func WriteFunction(t testing.TB, dir, raw string) *functions.Manifest {
	t.Helper()
	path := filepath.Join(dir, functions.ManifestFile)
	if err := os.WriteFile(path, []byte(raw), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := functions.Parse(path, []byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// ExpectError checks err against a table case's wanted error: when want is
// not empty err must mention it, and ExpectError returns true (the case
// ends there); when want is empty err must be nil.
func ExpectError(t testing.TB, err error, want string) bool {
	t.Helper()
	if want != "" {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("err %v, want one mentioning %q", err, want)
		}
		return true
	}
	if err != nil {
		t.Fatal(err)
	}
	return false
}

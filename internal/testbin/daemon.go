package testbin

import (
	"bytes"
	"context"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/internal/bench"
)

// FreeAddr is a loopback address (127.0.0.1:port) free at the time of the
// call, for a child process that must be told its port before it starts.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// FreePort is FreeAddr's port alone.
func FreePort(t testing.TB) string {
	t.Helper()
	_, port, _ := net.SplitHostPort(FreeAddr(t))
	return port
}

// StartDaemon starts cmd, a server the test talks to (Prometheus, Jaeger),
// kills it when the test ends, and waits up to within until readyURL
// answers 200. Its output (stdout and stderr) is in the returned buffer, for
// failure messages; start failures name what to build via hint.
func StartDaemon(t testing.TB, cmd *exec.Cmd, readyURL string, within time.Duration, hint string) *bytes.Buffer {
	t.Helper()
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v (%s)", cmd.Path, err, hint)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := bench.WaitReady(ctx, readyURL); err != nil {
		t.Fatalf("%s: %v\n%s", cmd.Path, err, log.String())
	}
	return &log
}

// Package listener is how every Pilotlight HTTP listener is set up, stated
// once: the limits that protect it from slow or oversized clients (the
// router's listeners and every instance share the defaults SECURITY.md lists),
// and the runtime process's contract with whoever starts it: its executable's
// name, its start gate, and the line it prints once it accepts connections,
// from which the local engine learns its address. It imports nothing of Pilotlight.
package listener

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"time"
)

// ReadyPrefix starts the line pilotlight-runtime prints on stdout once its
// listener accepts: ReadyPrefix + "127.0.0.1:PORT".
const ReadyPrefix = "PILOTLIGHT_LISTENING "

// StartGateEnv names, in a runtime child's environment, the file
// descriptor of its start gate: the child reads one byte from it before
// anything else (the engine writes it once the eBPF probes track the
// child's pid, so none of the child's model reads escape them).
const StartGateEnv = "PILOTLIGHT_START_GATE_FD"

// WaitStartGate blocks until the start gate StartGateEnv names opens (a
// byte, or the writer closing it), and closes it; without the variable it
// returns at once.
func WaitStartGate() error {
	v := os.Getenv(StartGateEnv)
	if v == "" {
		return nil
	}
	os.Unsetenv(StartGateEnv) // not inherited by anything this process starts
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return fmt.Errorf("%s=%q is not a file descriptor", StartGateEnv, v)
	}
	f := os.NewFile(uintptr(fd), "start-gate")
	defer f.Close()
	var b [1]byte
	if _, err := f.Read(b[:]); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("start gate: %w", err)
	}
	return nil
}

// RuntimeBinary is the name of the runtime's executable (cmd/pilotlight-runtime):
// what make build puts in bin/, the engine execs, the image's entrypoint,
// and what the eBPF agent looks for on a node.
const RuntimeBinary = "pilotlight-runtime"

// The socket priorities (SO_PRIORITY) a runtime in a Knative pod gives two
// connections of its cold start, for the node agent's eBPF probes
// (bpf.Config.ReadyPriority, RequestPriority): the connection of its first
// answer saying it is ready, and of its first request, each just before
// the answer is written. A readiness probe's connection and a request's
// look the same to the kernel; the runtime knows which is which. Both are
// within 0..6, which needs no capability, and neither changes anything on
// the pod's loopback (no queueing discipline reads it).
const (
	ReadyPriority   = 5
	RequestPriority = 6
)

// Limits are a listener's protections against slow or oversized clients.
type Limits struct {
	ReadHeaderTimeout time.Duration // slowloris headers
	ReadTimeout       time.Duration // slow bodies: the whole request must arrive within this
	WriteTimeout      time.Duration // must exceed the request timeout, cold starts included
	IdleTimeout       time.Duration // keep-alive connections with no request
	MaxHeaderBytes    int
}

// DefaultLimits are the defaults documented in SECURITY.md.
func DefaultLimits() Limits {
	return Limits{ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 60 * time.Second,
		IdleTimeout: 120 * time.Second, MaxHeaderBytes: 64 << 10}
}

// Server is an http.Server for h with these limits; its own errors (TLS
// handshakes, hijacked connections) go to log at debug level when log is set.
func (l Limits) Server(h http.Handler, log *slog.Logger) *http.Server {
	s := &http.Server{Handler: h, ReadHeaderTimeout: l.ReadHeaderTimeout, ReadTimeout: l.ReadTimeout,
		WriteTimeout: l.WriteTimeout, IdleTimeout: l.IdleTimeout, MaxHeaderBytes: l.MaxHeaderBytes}
	if log != nil {
		s.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	}
	return s
}

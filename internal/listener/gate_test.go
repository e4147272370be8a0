package listener

import (
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// The gate holds until its byte comes (or its writer goes), and a bad
// variable is an error rather than a hang.
func TestWaitStartGate(t *testing.T) {
	t.Setenv(StartGateEnv, "")
	if err := WaitStartGate(); err != nil {
		t.Fatalf("no gate: %v", err)
	}
	for _, open := range []func(w *os.File){
		func(w *os.File) { w.Write([]byte{1}) },
		func(w *os.File) { w.Close() },
	} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		fd, err := syscall.Dup(int(r.Fd())) // the gate closes its own descriptor
		if err != nil {
			t.Fatal(err)
		}
		r.Close()
		t.Setenv(StartGateEnv, strconv.Itoa(fd))
		done := make(chan error, 1)
		go func() { done <- WaitStartGate() }()
		select {
		case err := <-done:
			t.Fatalf("passed a closed gate: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		open(w)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if os.Getenv(StartGateEnv) != "" {
			t.Fatal("the gate's variable is left for children to inherit")
		}
		w.Close()
	}
	t.Setenv(StartGateEnv, "stdin")
	if err := WaitStartGate(); err == nil {
		t.Fatal("a gate that is not a descriptor was accepted")
	}
}

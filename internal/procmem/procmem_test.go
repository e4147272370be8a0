package procmem_test

import (
	"os"
	"runtime/debug"
	"testing"

	"github.com/pilotlight/pilotlight/internal/procmem"
)

// TestRSS: this process's RSS, by pid and as self, is positive and grows
// when memory is touched; a pid that does not exist has none.
func TestRSS(t *testing.T) {
	debug.FreeOSMemory() // an earlier run's (-count) buffer, kept by the Go heap, would be reused unfaulted
	before := procmem.RSS(0)
	if before <= 0 || procmem.RSS(os.Getpid()) <= 0 {
		t.Fatalf("RSS of this process: %d (self), %d (pid)", before, procmem.RSS(os.Getpid()))
	}
	b := make([]byte, 64<<20)
	for i := range b {
		b[i] = 1
	}
	if grew := procmem.RSS(0) - before; grew < 32<<20 {
		t.Errorf("touching 64 MiB grew RSS by %d bytes", grew)
	}
	_ = b[len(b)-1]
	if got := procmem.RSS(1 << 30); got != 0 {
		t.Errorf("RSS of a pid that does not exist: %d", got)
	}
}

package atomicfile_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/pilotlight/pilotlight/internal/atomicfile"
)

func TestWriteReplacesWithModeAndLeavesNoTemporary(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.yaml")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.Write(path, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != "new" {
		t.Fatalf("content %q, %v; want \"new\"", got, err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries after the write, want only the file: %v", len(entries), entries)
	}
}

func TestWriteFailureLeavesNoTemporary(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "flags.json")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	// A file cannot be renamed over a directory: the write must fail, the
	// directory stay, and the temporary beside it be gone.
	if err := atomicfile.Write(target, []byte("new"), 0o644); err == nil {
		t.Fatal("write over a directory succeeded")
	}
	if st, err := os.Stat(target); err != nil || !st.IsDir() {
		t.Fatalf("target changed after a failed write: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary file left behind: %v", entries)
	}
}

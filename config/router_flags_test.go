package config

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/flags"
)

// kubeletVolume lays out a ConfigMap volume the way the kubelet's
// AtomicWriter does: the files live in a timestamped directory, "..data"
// links to it, and each key is a link through "..data".
type kubeletVolume struct {
	t   *testing.T
	dir string
	gen int
	cur string
}

func newKubeletVolume(t *testing.T, files map[string][]byte) *kubeletVolume {
	v := &kubeletVolume{t: t, dir: t.TempDir()}
	v.write(files)
	for name := range files {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(v.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

// write is one update: a new timestamped directory, a "..data_tmp" link to
// it renamed over "..data", then the old directory removed.
func (v *kubeletVolume) write(files map[string][]byte) {
	v.gen++
	ts := filepath.Join(v.dir, "..2026_11_29_09_00_00."+strings.Repeat("0", 8)+string(rune('0'+v.gen)))
	if err := os.Mkdir(ts, 0o755); err != nil {
		v.t.Fatal(err)
	}
	for name, raw := range files {
		if err := os.WriteFile(filepath.Join(ts, name), raw, 0o644); err != nil {
			v.t.Fatal(err)
		}
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		v.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		v.t.Fatal(err)
	}
	if v.cur != "" {
		if err := os.RemoveAll(v.cur); err != nil {
			v.t.Fatal(err)
		}
	}
	v.cur = ts
}

// TestFlagFileFollowsConfigMapSymlinkSwap: the router Deployment mounts the
// flag file from a ConfigMap; a `kubectl apply` of a new ConfigMap reaches
// the pod as the kubelet's ..data swap, never as a write to flags.json.
// The watcher must reload on it, and on each later swap.
func TestFlagFileFollowsConfigMapSymlinkSwap(t *testing.T) {
	orig, err := os.ReadFile("flags/flags.json")
	if err != nil {
		t.Fatal(err)
	}
	vol := newKubeletVolume(t, map[string][]byte{"flags.json": orig})
	changed := make(chan *flags.Set, 4)
	w, err := flags.NewWatcher(flags.WatcherConfig{
		Path:     filepath.Join(vol.dir, "flags.json"),
		Debounce: 10 * time.Millisecond,
		OnChange: func(s *flags.Set, _ []string) { changed <- s },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	for i, split := range [][2]string{{"75", "25"}, {"0", "100"}} {
		next := strings.Replace(string(orig), `["stable", 90],`, `["stable", `+split[0]+`],`, 1)
		next = strings.Replace(next, `["canary", 10]`, `["canary", `+split[1]+`]`, 1)
		if next == string(orig) {
			t.Fatal("config/flags/flags.json no longer holds the 90/10 split this test edits")
		}
		vol.write(map[string][]byte{"flags.json": []byte(next)})
		select {
		case s := <-changed:
			want, err := flags.Parse([]byte(next))
			if err != nil {
				t.Fatal(err)
			}
			if s.Version() != want.Version() {
				t.Fatalf("swap %d: watcher reloaded version %s, want %s", i+1, s.Version(), want.Version())
			}
		case err := <-done:
			t.Fatalf("watcher stopped: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatalf("swap %d: the watcher never reloaded after the kubelet's ..data swap (serving version %s)", i+1, w.Set().Version())
		}
	}
}

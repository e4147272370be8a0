package flags

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultReloadDebounce is how long the watcher waits after the last change
// to the file before reading it: editors and atomic replacements produce a
// burst of events (write, chmod, rename) for one change.
const DefaultReloadDebounce = 75 * time.Millisecond

// Reload results, the "result" label of pilotlight_flags_reload_total.
const (
	ReloadSuccess = "success"
	ReloadError   = "error"
	ReloadMissing = "missing"
)

// WatcherConfig configures a Watcher.
type WatcherConfig struct {
	// Path is the flag file.
	Path string
	// Registerer receives pilotlight_flags_reload_total{result}; nil: none.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Debounce overrides DefaultReloadDebounce.
	Debounce time.Duration
	// OnChange, when set, is called from the watcher's goroutine after each
	// reload that changed the set, with the flags that changed.
	OnChange func(s *Set, changed []string)
	// FileFallback, when set, makes the file a fallback: while it reports
	// false, another source is in force (the ConfigMap followed through
	// the Kubernetes API, applied with Apply) and file changes are not
	// applied, so a kubelet's late sync of an older version never replaces
	// a newer one; when it reports true (the API is unreachable), the file
	// serves as it does alone.
	FileFallback func() bool
}

// Watcher keeps a Provider's flag set in step with a file. It watches the
// file's directory, so a write in place, an atomic rename over the file, an
// editor's save dance and a Kubernetes ConfigMap's ..data swap are all seen.
// A file that fails to parse, or disappears, leaves the last good set in
// place.
type Watcher struct {
	cfg      WatcherConfig
	log      *slog.Logger
	path     string
	provider *Provider
	reloads  *prometheus.CounterVec
	reloadMu sync.Mutex
	// warnedVersion is the last version whose warnings were logged (under reloadMu).
	warnedVersion string
	// watching is closed once Run watches the directory (tests wait on it).
	watching     chan struct{}
	watchingOnce sync.Once
}

// NewWatcher reads the file (it must exist and be valid) and returns a
// watcher serving it; call Run to follow changes.
func NewWatcher(cfg WatcherConfig) (*Watcher, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultReloadDebounce
	}
	path, err := filepath.Abs(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("flag file %s: %w", cfg.Path, err)
	}
	w := &Watcher{cfg: cfg, log: cfg.Logger.With("flags", path), path: path, watching: make(chan struct{})}
	w.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pilotlight_flags_reload_total",
		Help: "Reloads of the flag file by result: success (parsed and served), error (rejected; the last good flags stay), missing (file gone; the last good flags stay).",
	}, []string{"result"})
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(w.reloads); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, fmt.Errorf("register flag reload metric: %w", err)
			}
			w.reloads = are.ExistingCollector.(*prometheus.CounterVec)
		}
	}
	for _, r := range []string{ReloadSuccess, ReloadError, ReloadMissing} {
		w.reloads.WithLabelValues(r)
	}
	s, err := Load(path)
	if err != nil {
		w.reloads.WithLabelValues(ReloadError).Inc()
		return nil, err
	}
	w.reloads.WithLabelValues(ReloadSuccess).Inc()
	w.provider = NewProvider(s)
	w.log.Info("flags loaded", "version", short(s.version), "flags", len(s.flags), "warnings", len(s.warnings))
	w.logWarnings(s)
	return w, nil
}

// Load reads and parses a flag file.
func Load(path string) (*Set, error) {
	_, s, err := read(path)
	return s, err
}

// read reads and parses a flag file, keeping its bytes for those that
// edit it.
func read(path string) ([]byte, *Set, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read flag file: %w", err)
	}
	s, err := Parse(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("flag file %s: %w", path, err)
	}
	return raw, s, nil
}

// Provider is the OpenFeature provider the watcher keeps up to date.
func (w *Watcher) Provider() *Provider { return w.provider }

// Set is the flag set in force.
func (w *Watcher) Set() *Set { return w.provider.Set() }

// Run follows the file until ctx ends. It returns an error only when the
// directory cannot be watched.
func (w *Watcher) Run(ctx context.Context) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch flag file: %w", err)
	}
	defer fw.Close()
	dir := filepath.Dir(w.path)
	if err := fw.Add(dir); err != nil {
		return fmt.Errorf("watch flag file directory %s: %w", dir, err)
	}
	// Catch a change made between NewWatcher and now.
	w.reload(true)
	w.watchingOnce.Do(func() { close(w.watching) })

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	base := filepath.Base(w.path)
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return nil
			}
			name := filepath.Base(ev.Name)
			// ..data is how a ConfigMap volume swaps its files.
			if name != base && !strings.HasPrefix(name, "..") {
				continue
			}
			timer.Reset(w.cfg.Debounce)
		case err, ok := <-fw.Errors:
			if !ok {
				return nil
			}
			w.log.Warn("flag file watch error", "err", err)
		case <-timer.C:
			w.reload(false)
		}
	}
}

// ReloadNow re-reads the file at once, without waiting for the file
// event and the debounce: whoever just wrote the file (the rollout
// controller's atomic flag write) has the change served when this returns.
// The watcher's own reload of the same bytes then changes nothing.
func (w *Watcher) ReloadNow() { w.reload(true) }

// reload re-reads the file and swaps the set when it parses. A quiet
// reload counts nothing when the file is as it was loaded. Reloads are
// serialised: Run's and ReloadNow's.
func (w *Watcher) reload(quiet bool) {
	w.reloadMu.Lock()
	defer w.reloadMu.Unlock()
	if w.cfg.FileFallback != nil && !w.cfg.FileFallback() {
		return
	}
	raw, err := os.ReadFile(w.path)
	if errors.Is(err, fs.ErrNotExist) {
		w.reloads.WithLabelValues(ReloadMissing).Inc()
		w.log.Warn("flag file is gone; keeping the last good flags", "version", short(w.Set().version))
		return
	}
	if err != nil {
		w.reloads.WithLabelValues(ReloadError).Inc()
		w.log.Error("flag file unreadable; keeping the last good flags", "err", err)
		return
	}
	_ = w.apply(raw, "flag file", quiet)
}

// Apply serves raw, a flag document from another source than the file
// (the ConfigMap through the Kubernetes API; source names it in logs),
// when it parses and differs from the set in force. A document that does
// not parse leaves the last good flags and is returned as the error.
func (w *Watcher) Apply(raw []byte, source string) error {
	w.reloadMu.Lock()
	defer w.reloadMu.Unlock()
	return w.apply(raw, source, true)
}

// apply parses raw and swaps it in (under reloadMu). A quiet apply counts
// nothing when raw is the version in force.
func (w *Watcher) apply(raw []byte, source string, quiet bool) error {
	s, err := Parse(raw)
	if quiet && err == nil && s.version == w.Set().version {
		return nil
	}
	if err != nil {
		w.reloads.WithLabelValues(ReloadError).Inc()
		w.log.Error(source+" rejected; keeping the last good flags", "err", err, "version", short(w.Set().version))
		return fmt.Errorf("%s: %w", source, err)
	}
	w.reloads.WithLabelValues(ReloadSuccess).Inc()
	if s.version == w.Set().version {
		return nil
	}
	changed := w.provider.Swap(s)
	w.log.Info("flags reloaded", "source", source, "version", short(s.version), "changed", changed, "warnings", len(s.warnings))
	w.logWarnings(s)
	if w.cfg.OnChange != nil {
		w.cfg.OnChange(s, changed)
	}
	return nil
}

// logWarnings logs each of a set's warnings once per file version: a
// reload of the same bytes (an editor's save dance, a touch) repeats none.
func (w *Watcher) logWarnings(s *Set) {
	if s.version == w.warnedVersion {
		return
	}
	w.warnedVersion = s.version
	for _, p := range s.warnings {
		w.log.Warn("flag file: "+p.Msg, "path", p.Path, "version", short(s.version))
	}
}

func short(v string) string {
	if len(v) > 12 {
		return v[:12]
	}
	return v
}

// Package functions is the function contract: the function.yaml manifest that
// describes a function and its revisions, the Handler that turns a client's JSON
// into model inputs and model outputs back into JSON, and the registry of
// handlers by name. The runtime, the local engine and the Knative manifests all
// read the same Manifest: one file, one source of truth.
package functions

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pilotlight/pilotlight/functions/tensor"
)

// ManifestFile is the name of a function's manifest inside its directory.
const ManifestFile = "function.yaml"

// Defaults applied to a manifest's omitted fields.
const (
	DefaultSessions          = 2
	DefaultProvider          = "auto"
	DefaultIntraOpThreads    = 1
	DefaultMaxBatch          = 32
	DefaultMaxDelay          = time.Millisecond
	DefaultTargetConcurrency = 16
	DefaultMaxScale          = 4
	DefaultScaleToZeroAfter  = 30 * time.Second
	DefaultMaxBodyBytes      = 1 << 20
	DefaultMaxRequestRows    = 256
	// SharedModelMaxBytes is the largest model file a revision without an
	// isolation setting is shared with: small models cost little in a shared
	// process and much (a whole runtime process each) alone; a large one
	// gains little from sharing and would crowd the others out.
	SharedModelMaxBytes = 64 << 20
	// Outcomes (recording on): a prediction waits a day for its label;
	// 0.5 is a probability's neutral cut; users look at the first ten items.
	DefaultOutcomeWindow    = 24 * time.Hour
	DefaultOutcomeThreshold = 0.5
	DefaultOutcomeK         = 10
	// MaxOutcomePredictions bounds a function's window (memory: a few hundred
	// bytes a prediction, so 10^6 is a few hundred MB).
	MaxOutcomePredictions = 1_000_000
)

// Handler names a manifest may use.
const (
	HandlerTensor = "tensor" // bring-your-own ONNX model, V2 only
)

// Manifest is a function.yaml, decoded and defaulted.
type Manifest struct {
	Name      string     `yaml:"name"`
	Handler   string     `yaml:"handler"`
	Flag      string     `yaml:"flag,omitempty"`
	Revisions []Revision `yaml:"revisions"`
	Runtime   Runtime    `yaml:"runtime"`
	Batching  Batching   `yaml:"batching"`
	Scaling   Scaling    `yaml:"scaling"`
	Outcomes  Outcomes   `yaml:"outcomes"`
	// Isolation is how the local engine runs the function's revisions:
	// shared (many revisions' sessions in one runtime process, unloaded at
	// zero) or dedicated (a process per revision); "" chooses by model size
	// (IsolationOf).
	Isolation string `yaml:"isolation,omitempty"`
	// Warmup names a V2 infer request file (relative to the manifest) that
	// warms each session before the instance is ready, as Triton's
	// model_warmup does. Empty: the runtime synthesises zeros.
	Warmup string `yaml:"warmup,omitempty"`

	// Dir is the directory the manifest was read from; model paths are relative to it.
	Dir string `yaml:"-"`
}

// Revision is one immutable version of a function: a name and a model file.
type Revision struct {
	Name  string `yaml:"name"`
	Model string `yaml:"model"`
	// Tag is the Knative traffic tag for this revision (stable, canary), optional.
	Tag string `yaml:"tag,omitempty"`
}

// Runtime configures the session pool inside one instance.
type Runtime struct {
	Sessions       int    `yaml:"sessions"`
	Provider       string `yaml:"provider"` // auto | cpu | cuda
	IntraOpThreads int    `yaml:"intraOpThreads"`
	MaxBodyBytes   int64  `yaml:"maxBodyBytes"`
	// MaxRequestRows bounds the rows (transactions, users, V2 first dimension) of one request.
	MaxRequestRows int `yaml:"maxRequestRows"`
}

// Batching configures the dynamic batcher. Whether requests may share a
// call at all is decided at load from the model (see runtime/instance);
// `batching: none` turns it off whatever the model allows.
type Batching struct {
	MaxBatch int           `yaml:"maxBatch"`
	MaxDelay time.Duration `yaml:"maxDelay"`
	// None is `batching: none`: every request runs alone.
	None bool `yaml:"-"`
}

// BatchingNone is the scalar form of batching that turns it off.
const BatchingNone = "none"

// UnmarshalYAML reads `batching: none` or the mapping {maxBatch, maxDelay};
// unknown keys are errors, as everywhere in function.yaml.
func (b *Batching) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		if n.Value != BatchingNone {
			return fmt.Errorf("line %d: batching: %q: want %q or a mapping (maxBatch, maxDelay)", n.Line, n.Value, BatchingNone)
		}
		*b = Batching{None: true}
		return nil
	}
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i].Value; k != "maxBatch" && k != "maxDelay" {
				return fmt.Errorf("line %d: field %s not found in type functions.Batching", n.Content[i].Line, k)
			}
		}
	}
	type plain Batching // without this method
	return n.Decode((*plain)(b))
}

// MarshalYAML writes `none` for batching turned off, so a written manifest reads back the same.
func (b Batching) MarshalYAML() (any, error) {
	if b.None {
		return BatchingNone, nil
	}
	type plain Batching
	return plain(b), nil
}

// Scaling configures the autoscaler (locally) and Knative's KPA (in a cluster).
type Scaling struct {
	MinScale             int           `yaml:"minScale"`
	MaxScale             int           `yaml:"maxScale"`
	InitialScale         int           `yaml:"initialScale"`
	TargetConcurrency    int           `yaml:"targetConcurrency"`
	ContainerConcurrency int           `yaml:"containerConcurrency"`
	ScaleToZeroAfter     time.Duration `yaml:"scaleToZeroAfter"`
}

// Outcomes configures the recording of predictions for outcomes posted
// later (labels: a chargeback, a click) and how they are scored. Recording
// is off unless MaxPredictions is set.
type Outcomes struct {
	// MaxPredictions bounds the recorded predictions (the window's size); a
	// full window evicts the oldest first and counts what it evicted.
	MaxPredictions int `yaml:"maxPredictions"`
	// Window is how long a prediction waits for its outcome (default DefaultOutcomeWindow).
	Window time.Duration `yaml:"window"`
	// Threshold is the decision threshold of a scored function (fraud): a
	// score at or above it is a positive prediction, for precision and
	// recall (default DefaultOutcomeThreshold).
	Threshold float64 `yaml:"threshold"`
	// K is the cut-off of a ranking function's hit rate (recommend: hit
	// rate at k; default DefaultOutcomeK).
	K int `yaml:"k"`
}

// Records reports whether predictions are recorded for outcomes.
func (o Outcomes) Records() bool { return o.MaxPredictions > 0 }

// FieldError names the file and field a manifest problem is in.
type FieldError struct {
	File  string
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return fmt.Sprintf("%s: %s: %s", e.File, e.Field, e.Msg) }

// revisionName is what Knative accepts as a revision name: a DNS-1035 label
// of at most 63 characters.
var revisionName = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)

// LoadDir reads dir/function.yaml.
func LoadDir(dir string) (*Manifest, error) {
	return Load(filepath.Join(dir, ManifestFile))
}

// Load reads, strictly decodes (unknown keys are errors), defaults and
// validates a function.yaml.
func Load(path string) (*Manifest, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read function manifest: %w", err)
	}
	m, err := Parse(path, raw)
	if err != nil {
		return nil, err
	}
	if err := m.CheckModels(); err != nil {
		return nil, err
	}
	return m, nil
}

// Parse decodes and validates a manifest without touching the file system;
// file names only the source in errors.
func Parse(file string, raw []byte) (*Manifest, error) {
	var m Manifest
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	m.Dir = filepath.Dir(file)
	m.applyDefaults()
	if err := m.Validate(file); err != nil {
		return nil, err
	}
	return &m, nil
}

// DefaultFlagKey is the flag that picks a function's revision when its
// manifest names none: "<function>-revision". The one place this default
// is computed.
func DefaultFlagKey(function string) string { return function + "-revision" }

// DefaultRevision is the revision that serves a request when the
// function's flag gives no usable revision (the flag is missing, DISABLED,
// has no defaultVariant, fails to evaluate, or names a revision the
// function does not have): the revision tagged stable, else the newest
// (the last listed). The local router and the generated Knative traffic
// block both use it, so they agree in every state of the flag.
func (m *Manifest) DefaultRevision() string {
	for _, r := range m.Revisions {
		if r.Tag == "stable" {
			return r.Name
		}
	}
	return m.Revisions[len(m.Revisions)-1].Name
}

// applyDefaults sets each omitted (zero) field to its default.
func (m *Manifest) applyDefaults() {
	if m.Flag == "" && m.Name != "" {
		m.Flag = DefaultFlagKey(m.Name)
	}
	m.Runtime.Sessions = cmp.Or(m.Runtime.Sessions, DefaultSessions)
	m.Runtime.Provider = cmp.Or(m.Runtime.Provider, DefaultProvider)
	m.Runtime.IntraOpThreads = cmp.Or(m.Runtime.IntraOpThreads, DefaultIntraOpThreads)
	m.Runtime.MaxBodyBytes = cmp.Or(m.Runtime.MaxBodyBytes, DefaultMaxBodyBytes)
	m.Runtime.MaxRequestRows = cmp.Or(m.Runtime.MaxRequestRows, DefaultMaxRequestRows)
	if m.Batching.None {
		m.Batching.MaxBatch = 1
	}
	m.Batching.MaxBatch = cmp.Or(m.Batching.MaxBatch, DefaultMaxBatch)
	m.Batching.MaxDelay = cmp.Or(m.Batching.MaxDelay, DefaultMaxDelay)
	m.Scaling.MaxScale = cmp.Or(m.Scaling.MaxScale, DefaultMaxScale)
	m.Scaling.TargetConcurrency = cmp.Or(m.Scaling.TargetConcurrency, DefaultTargetConcurrency)
	m.Scaling.ScaleToZeroAfter = cmp.Or(m.Scaling.ScaleToZeroAfter, DefaultScaleToZeroAfter)
	if m.Outcomes.Records() {
		m.Outcomes.Window = cmp.Or(m.Outcomes.Window, DefaultOutcomeWindow)
		m.Outcomes.Threshold = cmp.Or(m.Outcomes.Threshold, DefaultOutcomeThreshold)
		m.Outcomes.K = cmp.Or(m.Outcomes.K, DefaultOutcomeK)
	}
}

// Validate reports every problem in the manifest, each naming file and field.
func (m *Manifest) Validate(file string) error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{File: file, Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if m.Name == "" {
		bad("name", "is required")
	} else if !revisionName.MatchString(m.Name) || len(m.Name) > 40 {
		bad("name", "%q must be a lower-case DNS label of at most 40 characters (Knative names revisions after it)", m.Name)
	}
	if m.Handler == "" {
		bad("handler", "is required (one of %s)", strings.Join(HandlerNames(), ", "))
	} else if !HasHandler(m.Handler) {
		bad("handler", "unknown handler %q (known: %s)", m.Handler, strings.Join(HandlerNames(), ", "))
	}
	if len(m.Revisions) == 0 {
		bad("revisions", "at least one revision is required")
	}
	seen := map[string]bool{}
	for i, r := range m.Revisions {
		f := fmt.Sprintf("revisions[%d]", i)
		switch {
		case r.Name == "":
			bad(f+".name", "is required")
		case len(r.Name) > 63 || !revisionName.MatchString(r.Name):
			bad(f+".name", "%q is not a valid Knative revision name (lower-case letters, digits and '-', at most 63)", r.Name)
		case m.Name != "" && !strings.HasPrefix(r.Name, m.Name+"-"):
			bad(f+".name", "%q must start with %q (Knative requires revision names prefixed by the service name)", r.Name, m.Name+"-")
		case seen[r.Name]:
			bad(f+".name", "duplicate revision %q", r.Name)
		}
		seen[r.Name] = true
		if r.Model == "" {
			bad(f+".model", "is required")
		}
		if r.Tag != "" && !revisionName.MatchString(r.Tag) {
			bad(f+".tag", "%q is not a valid traffic tag", r.Tag)
		}
	}
	switch m.Isolation {
	case "", IsolationShared, IsolationDedicated:
	default:
		bad("isolation", "%q must be shared or dedicated (or omitted: shared for models up to %d MiB)", m.Isolation, SharedModelMaxBytes>>20)
	}
	if m.Runtime.Sessions < 1 || m.Runtime.Sessions > 64 {
		bad("runtime.sessions", "%d out of range [1, 64]", m.Runtime.Sessions)
	}
	switch m.Runtime.Provider {
	case "auto", "cpu", "cuda":
	default:
		bad("runtime.provider", "%q must be auto, cpu or cuda", m.Runtime.Provider)
	}
	if m.Runtime.IntraOpThreads < 1 || m.Runtime.IntraOpThreads > 256 {
		bad("runtime.intraOpThreads", "%d out of range [1, 256]", m.Runtime.IntraOpThreads)
	}
	if m.Runtime.MaxBodyBytes < 1 {
		bad("runtime.maxBodyBytes", "%d must be positive", m.Runtime.MaxBodyBytes)
	}
	if m.Runtime.MaxRequestRows < 1 || m.Runtime.MaxRequestRows > 1<<20 {
		bad("runtime.maxRequestRows", "%d out of range [1, 1048576]", m.Runtime.MaxRequestRows)
	}
	if m.Batching.MaxBatch < 1 || m.Batching.MaxBatch > 4096 {
		bad("batching.maxBatch", "%d out of range [1, 4096]", m.Batching.MaxBatch)
	}
	if m.Batching.MaxDelay < 0 || m.Batching.MaxDelay > time.Second {
		bad("batching.maxDelay", "%s out of range [0, 1s]", m.Batching.MaxDelay)
	}
	s := m.Scaling
	if s.MinScale < 0 {
		bad("scaling.minScale", "%d must be >= 0", s.MinScale)
	}
	if s.MaxScale < 1 {
		bad("scaling.maxScale", "%d must be >= 1", s.MaxScale)
	}
	if s.MinScale > s.MaxScale && s.MaxScale >= 1 {
		bad("scaling.minScale", "%d is greater than scaling.maxScale %d", s.MinScale, s.MaxScale)
	}
	if s.InitialScale < 0 || (s.InitialScale > s.MaxScale && s.MaxScale >= 1) {
		bad("scaling.initialScale", "%d out of range [0, maxScale]", s.InitialScale)
	}
	if s.TargetConcurrency < 1 {
		bad("scaling.targetConcurrency", "%d must be >= 1", s.TargetConcurrency)
	}
	if s.ContainerConcurrency < 0 || s.ContainerConcurrency > 1000 {
		bad("scaling.containerConcurrency", "%d out of range [0, 1000] (0 means unlimited)", s.ContainerConcurrency)
	}
	if s.ScaleToZeroAfter < 0 {
		bad("scaling.scaleToZeroAfter", "%s must be >= 0", s.ScaleToZeroAfter)
	}
	o := m.Outcomes
	if o.MaxPredictions < 0 || o.MaxPredictions > MaxOutcomePredictions {
		bad("outcomes.maxPredictions", "%d out of range [0, %d] (0: not recorded)", o.MaxPredictions, MaxOutcomePredictions)
	}
	if o.Window < 0 {
		bad("outcomes.window", "%s must be >= 0", o.Window)
	}
	if o.Threshold < 0 || o.Threshold >= 1 {
		bad("outcomes.threshold", "%g out of range (0, 1)", o.Threshold)
	}
	if o.K < 0 {
		bad("outcomes.k", "%d must be >= 1", o.K)
	}
	return errors.Join(errs...)
}

// CheckModels reports revisions whose model file does not exist, and a
// warm-up file that does not.
func (m *Manifest) CheckModels() error {
	var errs []error
	if m.Warmup != "" {
		if _, err := os.Stat(m.WarmupPath()); err != nil {
			errs = append(errs, &FieldError{File: filepath.Join(m.Dir, ManifestFile), Field: "warmup",
				Msg: fmt.Sprintf("warm-up request %s: %v", m.WarmupPath(), errors.Unwrap(err))})
		}
	}
	for i, r := range m.Revisions {
		if _, err := os.Stat(m.ModelPath(r)); err != nil {
			errs = append(errs, &FieldError{File: filepath.Join(m.Dir, ManifestFile), Field: fmt.Sprintf("revisions[%d].model", i),
				Msg: fmt.Sprintf("model file %s: %v (run `make models` to train it)", m.ModelPath(r), errors.Unwrap(err))})
		}
	}
	return errors.Join(errs...)
}

// ModelPath resolves a revision's model file against the manifest's directory.
func (m *Manifest) ModelPath(r Revision) string {
	if filepath.IsAbs(r.Model) {
		return r.Model
	}
	return filepath.Join(m.Dir, r.Model)
}

// Isolation values (function.yaml's isolation).
const (
	IsolationShared    = "shared"
	IsolationDedicated = "dedicated"
)

// IsolationOf is how a revision runs on one machine: function.yaml's
// isolation when set, else shared when its model file is at most
// SharedModelMaxBytes (an unreadable one is dedicated: it fails to load
// alone rather than beside others).
func (m *Manifest) IsolationOf(r Revision) string {
	if m.Isolation != "" {
		return m.Isolation
	}
	if fi, err := os.Stat(m.ModelPath(r)); err == nil && fi.Size() <= SharedModelMaxBytes {
		return IsolationShared
	}
	return IsolationDedicated
}

// WarmupPath resolves the warm-up request file against the manifest's directory ("" when none).
func (m *Manifest) WarmupPath() string {
	if m.Warmup == "" || filepath.IsAbs(m.Warmup) {
		return m.Warmup
	}
	return filepath.Join(m.Dir, m.Warmup)
}

// Revision finds a revision by name.
func (m *Manifest) Revision(name string) (Revision, bool) {
	for _, r := range m.Revisions {
		if r.Name == name {
			return r, true
		}
	}
	return Revision{}, false
}

// LoadAll reads every dir/*/function.yaml below root, sorted by name.
func LoadAll(root string) ([]*Manifest, error) {
	paths, err := filepath.Glob(filepath.Join(root, "*", ManifestFile))
	if err != nil {
		return nil, err
	}
	var out []*Manifest
	var errs []error
	for _, p := range paths {
		m, err := Load(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, errors.Join(errs...)
}

// Invocation is one decoded function call: model inputs with Rows rows each
// (first dimension), and how to turn this call's rows of the outputs into the
// response body.
type Invocation struct {
	Inputs []*tensor.Tensor
	Rows   int
	// Encode receives this invocation's rows of every model output, by name.
	Encode func(outputs map[string]*tensor.Tensor) (any, error)
}

// Handler turns a function's own JSON into an Invocation. It must reject bad
// input with a *BadRequest error so the caller gets a 4xx naming the problem.
type Handler interface {
	Decode(body []byte) (*Invocation, error)
}

// BadRequest is a client mistake; the runtime answers it with 400 and Msg.
type BadRequest struct{ Msg string }

func (e *BadRequest) Error() string { return e.Msg }

// Badf builds a *BadRequest.
func Badf(format string, args ...any) error { return &BadRequest{Msg: fmt.Sprintf(format, args...)} }

// HandlerFactory builds a function's handler from its manifest. A nil Handler
// with a nil error means the function is served through V2 only.
type HandlerFactory func(m *Manifest) (Handler, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]HandlerFactory{HandlerTensor: func(*Manifest) (Handler, error) { return nil, nil }}
)

// Register makes a handler available by name; function packages call it from init.
func Register(name string, f HandlerFactory) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[name]; dup {
		panic("functions: handler registered twice: " + name)
	}
	registry[name] = f
}

// HasHandler reports whether a handler name is registered.
func HasHandler(name string) bool {
	registryMu.RLock()
	defer registryMu.RUnlock()
	_, ok := registry[name]
	return ok
}

// HandlerNames lists registered handlers, sorted.
func HandlerNames() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// NewHandler builds the handler a manifest names.
func NewHandler(m *Manifest) (Handler, error) {
	registryMu.RLock()
	f, ok := registry[m.Handler]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("function %s: unknown handler %q", m.Name, m.Handler)
	}
	return f(m)
}

// RevisionNames lists the names of rs in order, for messages and checks.
func RevisionNames(rs []Revision) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Name
	}
	return out
}

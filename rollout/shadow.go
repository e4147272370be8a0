package rollout

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/frame"
	"github.com/pilotlight/pilotlight/router"
)

// Defaults for ShadowConfig's zero fields.
const (
	DefaultShadowQueue   = 256
	DefaultShadowWorkers = 4
	// DefaultShadowTimeout bounds one shadow request, a cold start included.
	DefaultShadowTimeout = 30 * time.Second
	// DefaultShadowWindow is how many recent comparisons
	// pilotlight_shadow_agreement_ratio averages.
	DefaultShadowWindow = 500
	// maxShadowBytes bounds a primary or candidate answer kept for comparing.
	maxShadowBytes = 1 << 20
)

// Shadow results, the result label of pilotlight_shadow_requests_total.
const (
	ShadowCompared     = "compared"
	ShadowDropped      = "dropped"
	ShadowFailed       = "failed"
	ShadowIncomparable = "incomparable" // both answered, but an answer could not be read: the platform's fault, not the candidate's
)

// ShadowConfig configures a Shadower.
type ShadowConfig struct {
	Functions  []*functions.Manifest
	Backend    router.Backend // the router's: candidates scale from zero like any revision
	QueueSize  int
	Workers    int
	Timeout    time.Duration
	Window     int
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Shadower copies a share of a serving revision's live requests to a
// candidate revision and compares the answers, off the client's path: the
// copy waits in a bounded queue (dropped and counted when it is full) and
// a few workers send it once the client has its answer. The router calls
// it through its Shadow hook; the rollout controller starts and stops
// mirroring and reads the totals (it satisfies rollout.Shadow).
type Shadower struct {
	cfg       ShadowConfig
	log       *slog.Logger
	fns       map[string]*functions.Manifest
	cmps      map[string]functions.Comparer // function → its handler's
	transport *http.Transport               // REST copies, HTTP/1.1
	h2c       *http.Transport               // gRPC copies, HTTP/2 with prior knowledge as instances and Knative's h2c port speak it
	queue     chan shadowJob
	targets   atomic.Pointer[map[string]shadowTarget] // function -> target
	targetsMu sync.Mutex                              // serialises writers of targets

	statsMu sync.Mutex
	stats   map[string]*shadowStats // "function/revision"

	requests  *prometheus.CounterVec
	agreement *prometheus.GaugeVec
	agreed    *prometheus.CounterVec
	delta     *prometheus.HistogramVec

	ctx  context.Context // ends on Close: in-flight copies are abandoned
	stop context.CancelFunc
	wg   sync.WaitGroup
}

type shadowTarget struct {
	from, to string
	percent  int
}

type shadowJob struct {
	fn       *functions.Manifest
	to       string
	path     string
	protocol protocol
	body     []byte
	response []byte
}

type shadowStats struct {
	totals ShadowTotals
	window []float64 // ring of recent agreements
	next   int
	sum    float64
}

var (
	_ Shadow        = (*Shadower)(nil)
	_ router.Shadow = (*Shadower)(nil)
)

// NewShadower builds a Shadower and starts its workers; Close stops them.
func NewShadower(cfg ShadowConfig) (*Shadower, error) {
	if cfg.Backend == nil {
		return nil, errors.New("shadower needs the router's backend")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultShadowQueue
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultShadowWorkers
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultShadowTimeout
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultShadowWindow
	}
	s := &Shadower{cfg: cfg, log: cfg.Logger, fns: map[string]*functions.Manifest{}, cmps: map[string]functions.Comparer{}, queue: make(chan shadowJob, cfg.QueueSize),
		stats: map[string]*shadowStats{},
		transport: &http.Transport{Proxy: nil, DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			MaxIdleConnsPerHost: cfg.Workers, IdleConnTimeout: 90 * time.Second, DisableCompression: true},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_shadow_requests_total",
			Help: "Copies of live requests sent to a candidate revision, by result: compared (both answered), dropped (the shadow queue was full), failed (the candidate did not answer 200), incomparable (both answered, but an answer could not be read for comparing: a platform problem, never held against the candidate)."},
			[]string{"function", "revision", "result"}),
		agreement: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pilotlight_shadow_agreement_ratio",
			Help: "Mean agreement of a candidate's answers with the serving revision's over the last comparisons (fraud: decisions, recommend: top-k overlap, tensor: outputs within tolerance)."},
			[]string{"function", "revision"}),
		agreed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilotlight_shadow_agreement_total",
			Help: "Summed agreement of a candidate's compared answers with the serving revision's; divided by the compared count it is the mean over any range, summed over router replicas it is the fleet's (what a rollout in a cluster judges)."},
			[]string{"function", "revision"}),
		delta: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pilotlight_shadow_score_delta",
			Help:    "Score difference per compared request (fraud: mean |Δ probability|, recommend: 1 - top-k overlap, tensor: max |Δ output|).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}, []string{"function", "revision"}),
	}
	var protocols http.Protocols
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(true)
	s.h2c = &http.Transport{Proxy: nil, DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		IdleConnTimeout: 90 * time.Second, DisableCompression: true, Protocols: &protocols}
	s.ctx, s.stop = context.WithCancel(context.Background())
	empty := map[string]shadowTarget{}
	s.targets.Store(&empty)
	for _, fn := range cfg.Functions {
		s.fns[fn.Name] = fn
		s.cmps[fn.Name] = functions.ComparerFor(fn)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.requests, s.agreement, s.agreed, s.delta} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register shadow metrics: %w", err)
			}
		}
	}
	for range cfg.Workers {
		s.wg.Add(1)
		go s.work()
	}
	return s, nil
}

// Close stops the workers; copies queued or in flight are abandoned.
func (s *Shadower) Close() {
	s.stop()
	s.wg.Wait()
	s.transport.CloseIdleConnections()
	s.h2c.CloseIdleConnections()
}

// Mirror implements rollout.Shadow.
func (s *Shadower) Mirror(function, from, to string, percent int) {
	s.setTarget(function, &shadowTarget{from: from, to: to, percent: percent})
	s.log.Info("shadow traffic on", "function", function, "from", from, "revision", to, "percent", percent)
}

// StopMirror implements rollout.Shadow.
func (s *Shadower) StopMirror(function string) {
	if _, on := (*s.targets.Load())[function]; on {
		s.setTarget(function, nil)
		s.log.Info("shadow traffic off", "function", function)
	}
}

func (s *Shadower) setTarget(function string, t *shadowTarget) {
	s.targetsMu.Lock()
	defer s.targetsMu.Unlock()
	next := map[string]shadowTarget{}
	for k, v := range *s.targets.Load() {
		next[k] = v
	}
	if t == nil {
		delete(next, function)
	} else {
		next[function] = *t
	}
	s.targets.Store(&next)
}

// Totals implements rollout.Shadow.
func (s *Shadower) Totals(function, revision string) ShadowTotals {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	if st, ok := s.stats[function+"/"+revision]; ok {
		return st.totals
	}
	return ShadowTotals{}
}

// Mirroring says, without sampling, whether function's requests served by
// revision are being copied: a router that must buffer an answer to show
// it to Shadow asks first.
func (s *Shadower) Mirroring(function, revision string) bool {
	t, ok := (*s.targets.Load())[function]
	return ok && t.from == revision
}

// Shadow implements Shadow: while function is mirrored, it samples the
// target's share of the serving revision's answered (200) requests and
// queues a copy for the candidate, returning at once; a full queue drops
// the copy and counts it. No lock: one atomic load and one random draw.
func (s *Shadower) Shadow(_ context.Context, call router.ShadowCall) {
	t, ok := (*s.targets.Load())[call.Function]
	if !ok || t.from != call.Revision || call.Method != http.MethodPost || call.Status != http.StatusOK || rand.IntN(100) >= t.percent {
		return
	}
	fn := s.fns[call.Function]
	path, proto, ok := candidatePath(fn, call.Path)
	if !ok || len(call.Response) > maxShadowBytes {
		return
	}
	if call.Query != "" {
		path += "?" + call.Query
	}
	job := shadowJob{fn: fn, to: t.to, path: path, protocol: proto, body: bytes.Clone(call.Body), response: bytes.Clone(call.Response)}
	select {
	case s.queue <- job:
	default:
		s.count(call.Function, t.to, ShadowDropped)
	}
}

// candidatePath is where a copy of a request goes on a candidate's
// instance: a function call to POST / (Knative style), a V2 infer to the
// same path; a request pinned to a version is not copied. The protocol
// says how the answers compare.
func candidatePath(fn *functions.Manifest, path string) (string, protocol, bool) {
	switch {
	case fn == nil:
		return "", 0, false
	case path == "/" || path == "/functions/"+fn.Name:
		return "/", protocolFunction, true
	case path == "/v2/models/"+fn.Name+"/infer":
		return path, protocolV2REST, true
	case path == grpcInferPath: // the router copies only calls not pinned to a version
		return path, protocolV2GRPC, true
	}
	return "", 0, false
}

func (s *Shadower) work() {
	defer s.wg.Done()
	for {
		select {
		case <-s.ctx.Done():
			return
		case job := <-s.queue:
			s.send(job)
		}
	}
}

// send runs one copy: acquire a candidate instance (starting one if need
// be, as for any request), send, compare.
func (s *Shadower) send(job shadowJob) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Timeout)
	defer cancel()
	fn, to := job.fn.Name, job.to
	answer, err := s.ask(ctx, job)
	if err != nil {
		s.count(fn, to, ShadowFailed)
		s.log.Debug("shadow request failed", "function", fn, "revision", to, "err", err)
		return
	}
	c, err := compare(s.cmps[fn], job.protocol, job.response, answer)
	if err != nil {
		s.count(fn, to, ShadowIncomparable)
		s.log.Warn("shadow answers could not be compared; not counted against the candidate", "function", fn, "revision", to, "err", err)
		return
	}
	s.count(fn, to, ShadowCompared)
	s.delta.WithLabelValues(fn, to).Observe(c.Delta)
	s.agreed.WithLabelValues(fn, to).Add(c.Agreement)
	s.statsMu.Lock()
	st := s.statsOf(fn, to)
	st.totals.Compared++
	st.totals.Agreed += c.Agreement
	st.totals.DeltaSum += c.Delta
	if len(st.window) < s.cfg.Window {
		st.window = append(st.window, c.Agreement)
	} else {
		st.sum -= st.window[st.next]
		st.window[st.next] = c.Agreement
		st.next = (st.next + 1) % s.cfg.Window
	}
	st.sum += c.Agreement
	ratio := st.sum / float64(len(st.window))
	s.statsMu.Unlock()
	s.agreement.WithLabelValues(fn, to).Set(ratio)
}

func (s *Shadower) ask(ctx context.Context, job shadowJob) ([]byte, error) {
	t, err := s.cfg.Backend.Acquire(ctx, job.fn.Name, job.to)
	if err != nil {
		return nil, fmt.Errorf("acquire %s/%s: %w", job.fn.Name, job.to, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.BaseURL+job.path, bytes.NewReader(job.body))
	if err != nil {
		t.Release(false)
		return nil, err
	}
	req.Header.Set(frame.RevisionHeader, job.to) // a shared process serves several revisions
	transport := s.transport
	if job.protocol == protocolV2GRPC {
		transport = s.h2c
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Te", "trailers")
	} else {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := transport.RoundTrip(req)
	if err != nil {
		t.Release(ctx.Err() == nil)
		return nil, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxShadowBytes+1))
	t.Release(false)
	switch {
	case err != nil:
		return nil, err
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("candidate answered %d", resp.StatusCode)
	case len(answer) > maxShadowBytes:
		return nil, fmt.Errorf("candidate answer larger than %d bytes", maxShadowBytes)
	}
	if job.protocol == protocolV2GRPC {
		if st := resp.Trailer.Get("Grpc-Status"); st != "0" && resp.Header.Get("Grpc-Status") != "0" {
			return nil, fmt.Errorf("candidate ended the call with grpc-status %q: %s", st+resp.Header.Get("Grpc-Status"), resp.Trailer.Get("Grpc-Message")+resp.Header.Get("Grpc-Message"))
		}
	}
	return answer, nil
}

func (s *Shadower) statsOf(function, revision string) *shadowStats {
	key := function + "/" + revision
	st, ok := s.stats[key]
	if !ok {
		st = &shadowStats{}
		s.stats[key] = st
	}
	return st
}

func (s *Shadower) count(function, revision, result string) {
	s.requests.WithLabelValues(function, revision, result).Inc()
	if result == ShadowCompared {
		return
	}
	s.statsMu.Lock()
	st := s.statsOf(function, revision)
	switch result {
	case ShadowFailed:
		st.totals.Failed++
	case ShadowIncomparable:
		st.totals.Incomparable++
	default:
		st.totals.Dropped++
	}
	s.statsMu.Unlock()
}

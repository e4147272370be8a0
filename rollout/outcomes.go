package rollout

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/router"
	rauth "github.com/pilotlight/pilotlight/router/auth"
)

// Outcomes are labels that arrive after a prediction: a chargeback days
// after a transaction was scored, a click after items were recommended.
// The router hands every answer of a function that records (function.yaml
// outcomes.maxPredictions) to the store (router.Recorder), which keeps it
// for outcomes.window under its id (the V2 "id", or X-Request-Id) and the
// request's targeting key; a client posts outcomes in OpenFeature's
// tracking shape (POST /v2/models/{name}/outcomes), the store joins each to
// its prediction and scores the revision that made it: precision, recall
// and log loss at the function's decision threshold for a scored function
// (fraud), hit rate at k for a ranking one (recommend). The rollout
// gates on these (Judge: MinPrecision, MaxLogLossDelta).

// Eviction reasons (pilotlight_predictions_evicted_total{reason}).
const (
	evictedFull    = "full"
	evictedExpired = "expired"
)

// Unmatched reasons (pilotlight_outcomes_unmatched_total{reason}).
const (
	unmatchedUnknown   = "unknown"   // no prediction with that id or key in the window (never made, evicted or expired)
	unmatchedDuplicate = "duplicate" // the prediction already has its outcome: the first one counts
)

// maxOutcomeBatch bounds one POST's outcomes.
const maxOutcomeBatch = 10_000

// logLossEpsilon clamps probabilities away from 0 and 1, as scikit-learn's
// log_loss does, so one confident mistake costs about 34.5 nats, not +Inf.
const logLossEpsilon = 1e-15

// OutcomeTotals are a revision's cumulative labelled outcomes. For a
// scored function, TP/FP/FN/TN are the confusion counts at the decision
// threshold and LogLossSum the summed log loss (nats); for a ranking
// function, Hits are the outcomes whose item was in the first k.
type OutcomeTotals struct {
	Labelled, TP, FP, FN, TN, LogLossSum, Hits float64
}

// Precision is TP / (TP + FP): 0 when the revision predicted no positive.
func (t OutcomeTotals) Precision() float64 { return ratio(t.TP, t.TP+t.FP) }

// Recall is TP / (TP + FN): 0 when no labelled outcome was positive.
func (t OutcomeTotals) Recall() float64 { return ratio(t.TP, t.TP+t.FN) }

// LogLoss is the mean log loss over the labelled outcomes.
func (t OutcomeTotals) LogLoss() float64 { return ratio(t.LogLossSum, t.Labelled) }

// HitRate is the share of labelled outcomes whose item was in the first k.
func (t OutcomeTotals) HitRate() float64 { return ratio(t.Hits, t.Labelled) }

// Sub is what happened between an earlier reading b and t.
func (t OutcomeTotals) Sub(b OutcomeTotals) OutcomeTotals {
	return OutcomeTotals{t.Labelled - b.Labelled, t.TP - b.TP, t.FP - b.FP, t.FN - b.FN, t.TN - b.TN, t.LogLossSum - b.LogLossSum, t.Hits - b.Hits}
}

// add sums two readings (two replicas').
func (t OutcomeTotals) add(b OutcomeTotals) OutcomeTotals {
	return OutcomeTotals{t.Labelled + b.Labelled, t.TP + b.TP, t.FP + b.FP, t.FN + b.FN, t.TN + b.TN, t.LogLossSum + b.LogLossSum, t.Hits + b.Hits}
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// OutcomesConfig configures an Outcomes store.
type OutcomesConfig struct {
	Functions  []*functions.Manifest // those with outcomes.maxPredictions > 0 record
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Now is the clock (nil: time.Now); tests pass a fake one.
	Now func() time.Time
	// Peers, in a cluster, are the other router replicas: outcomes whose
	// prediction this replica does not hold are forwarded to them (nil:
	// this replica holds every prediction).
	Peers *OutcomePeers
}

// Outcomes is the prediction window and outcome join of every function
// that records. It is a router.Recorder.
type Outcomes struct {
	log   *slog.Logger
	now   func() time.Time
	books map[string]*book
	peers *OutcomePeers
}

var _ router.Recorder = (*Outcomes)(nil)

// book is one function's window: predictions in arrival order (a queue;
// expiry and eviction take from the front), found by id and by targeting
// key (the latest prediction for the key).
type book struct {
	fn     *functions.Manifest
	pred   functions.Predictor
	mu     sync.Mutex
	queue  []*prediction
	head   int
	byID   map[string]*prediction
	byKey  map[string]*prediction
	totals map[string]*OutcomeTotals // by revision
	// counters for the metrics
	recorded   map[string]float64 // by revision
	evicted    map[string]float64 // by reason
	unmatched  map[string]float64 // by reason
	unreadable float64            // answers the predictor could not read, or with neither id nor key
}

// prediction is one recorded answer: one Prediction per row, and which
// rows already have their outcome.
type prediction struct {
	id, key, revision string
	at                time.Time
	rows              []functions.Prediction
	labelled          []bool
}

// NewOutcomes builds the store for the functions that record and whose
// handler can say what an answer predicted (functions.Predictor).
func NewOutcomes(cfg OutcomesConfig) (*Outcomes, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	o := &Outcomes{log: cfg.Logger, now: cfg.Now, books: map[string]*book{}, peers: cfg.Peers}
	for _, fn := range cfg.Functions {
		if !fn.Outcomes.Records() {
			continue
		}
		p := functions.PredictorFor(fn)
		if p == nil {
			return nil, fmt.Errorf("function %s: outcomes.maxPredictions is set, but handler %q cannot say what an answer predicted (no functions.Predictor)", fn.Name, fn.Handler)
		}
		o.books[fn.Name] = &book{fn: fn, pred: p, byID: map[string]*prediction{}, byKey: map[string]*prediction{},
			totals: map[string]*OutcomeTotals{}, recorded: map[string]float64{}, evicted: map[string]float64{}, unmatched: map[string]float64{}}
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(outcomeCollector{o}); err != nil {
			return nil, fmt.Errorf("register the outcome metrics: %w", err)
		}
	}
	return o, nil
}

// Records implements router.Recorder.
func (o *Outcomes) Records(function string) bool { return o.books[function] != nil }

// Record implements router.Recorder: the answer's predictions, under the
// V2 body's "id" (V2 routes) or the X-Request-Id header, and the targeting
// key. An answer with neither, or that the function's predictor cannot
// read, is counted and dropped.
func (o *Outcomes) Record(call router.PredictionCall) {
	b := o.books[call.Function]
	if b == nil {
		return
	}
	var rows []functions.Prediction
	var err error
	id := call.RequestID
	if call.V2 {
		var outs []functions.Output
		if outs, err = v2Outputs(call.Response); err == nil {
			rows, err = b.pred.PredictOutputs(outs)
		}
		if v := v2ID(call.Body); v != "" {
			id = v
		}
	} else {
		rows, err = b.pred.PredictJSON(call.Response)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil || len(rows) == 0 || (id == "" && call.TargetingKey == "") {
		b.unreadable++
		if err != nil {
			o.log.Debug("prediction not recorded", "function", call.Function, "revision", call.Revision, "err", err)
		}
		return
	}
	now := o.now()
	b.expire(now)
	if len(b.queue)-b.head >= b.fn.Outcomes.MaxPredictions {
		b.drop(evictedFull)
	}
	p := &prediction{id: id, key: call.TargetingKey, revision: call.Revision, at: now, rows: rows, labelled: make([]bool, len(rows))}
	b.queue = append(b.queue, p)
	if id != "" {
		b.byID[id] = p // a reused id names its latest prediction
	}
	if p.key != "" {
		b.byKey[p.key] = p
	}
	b.recorded[call.Revision]++
}

// v2ID is a V2 request's top-level "id" ("" when absent or not a string).
func v2ID(body []byte) string {
	if !bytes.Contains(body, []byte(`"id"`)) {
		return ""
	}
	var doc struct {
		ID any `json:"id"`
	}
	if json.Unmarshal(body, &doc) != nil {
		return ""
	}
	s, _ := doc.ID.(string)
	return s
}

// expire drops predictions older than the window (under b.mu).
func (b *book) expire(now time.Time) {
	cutoff := now.Add(-b.fn.Outcomes.Window)
	for b.head < len(b.queue) && b.queue[b.head].at.Before(cutoff) {
		b.drop(evictedExpired)
	}
}

// drop removes the oldest prediction (under b.mu).
func (b *book) drop(reason string) {
	p := b.queue[b.head]
	b.queue[b.head] = nil
	b.head++
	if b.byID[p.id] == p {
		delete(b.byID, p.id)
	}
	if b.byKey[p.key] == p {
		delete(b.byKey, p.key)
	}
	b.evicted[reason]++
	// Compact once the dead front is half the queue, so memory follows the window.
	if b.head > 1024 && b.head*2 > len(b.queue) {
		n := copy(b.queue, b.queue[b.head:])
		clear(b.queue[n:])
		b.queue, b.head = b.queue[:n], 0
	}
}

// Outcome is one posted outcome, in OpenFeature's tracking shape
// (Tracking API: a tracking event name, the evaluation context, and
// details with a numeric value and custom fields): the prediction is named
// by details.predictionId or, without one, context.targetingKey (its
// latest prediction); details.index picks a row of a batch answer
// (default 0). details.value is the label: for a scored function 1 (the
// event happened: the default) or 0, for a ranking function the item id
// the user took.
type Outcome struct {
	TrackingEventName string         `json:"trackingEventName"`
	Context           map[string]any `json:"context"`
	Details           map[string]any `json:"details"`
}

// JoinResult is what a batch of outcomes did.
type JoinResult struct {
	Received  int `json:"received"`
	Joined    int `json:"joined"`
	Unknown   int `json:"unknown"`   // no prediction with that id or key in the window
	Duplicate int `json:"duplicate"` // the prediction already had its outcome
	// Forwarded are the joined outcomes whose prediction another router
	// replica held (OutcomePeers): counted in Joined too.
	Forwarded int `json:"forwarded,omitempty"`
}

// ErrNotRecorded is returned for a function that records no predictions.
var ErrNotRecorded = errors.New("records no predictions")

// outcomeRef is one outcome, validated and resolved.
type outcomeRef struct {
	p        *prediction
	row      int
	value    float64
	hasValue bool
}

// Join joins a batch of outcomes to function's predictions. The batch is
// all or nothing: an outcome that cannot be read (no event name, neither
// prediction id nor targeting key, a value that is not a label for the
// function) fails the whole batch with an error naming it, and nothing is
// counted. Outcomes whose prediction is not in the window, or already has
// its outcome, are counted and reported, not errors: labels arrive late.
func (o *Outcomes) Join(function string, batch []Outcome) (JoinResult, error) {
	st, err := o.apply(function, batch, applyOptions{commit: true, countUnknown: true})
	if err != nil {
		return JoinResult{}, err
	}
	return tally(st), nil
}

// joinFleet joins a batch posted by a client: what this replica holds
// here, the rest at the replicas that recorded it (OutcomePeers). The
// batch is validated here first, then forwarded, then joined here, so an
// outcome a peer refuses leaves nothing joined on this replica or that
// peer (with more than two replicas, another peer may have joined its
// share: each peer's part is all or nothing). auth is the client's key,
// presented again to the peer.
func (o *Outcomes) joinFleet(ctx context.Context, function string, batch []Outcome, auth http.Header) (JoinResult, error) {
	if o.peers == nil {
		return o.Join(function, batch)
	}
	st, err := o.apply(function, batch, applyOptions{})
	if err != nil {
		return JoinResult{}, err
	}
	var (
		idx []int
		fwd []Outcome
	)
	for i, s := range st {
		if s == statusUnknown {
			idx, fwd = append(idx, i), append(fwd, batch[i])
		}
	}
	if len(idx) == 0 {
		return o.Join(function, batch)
	}
	peerSt, unreachable, err := o.peers.forward(ctx, function, fwd, idx, auth)
	if err != nil {
		return JoinResult{}, err
	}
	if len(unreachable) > 0 {
		o.log.Warn("outcomes not forwarded to every router replica; theirs count as unknown", "function", function, "outcomes", len(fwd), "unreached", unreachable)
	}
	skip := map[int]bool{}
	forwarded := 0
	for j, s := range peerSt {
		if s != statusUnknown {
			skip[idx[j]] = true
		}
		if s == statusJoined {
			forwarded++
		}
	}
	if st, err = o.apply(function, batch, applyOptions{commit: true, countUnknown: true, skip: skip}); err != nil {
		return JoinResult{}, err
	}
	for j, s := range peerSt {
		if skip[idx[j]] {
			st[idx[j]] = s
		}
	}
	res := tally(st)
	res.Forwarded = forwarded
	return res, nil
}

// What became of one outcome of a batch.
const (
	statusJoined    = "joined"
	statusDuplicate = "duplicate"
	statusUnknown   = "unknown" // not held here
)

func tally(statuses []string) JoinResult {
	res := JoinResult{Received: len(statuses)}
	for _, s := range statuses {
		switch s {
		case statusJoined:
			res.Joined++
		case statusDuplicate:
			res.Duplicate++
		case statusUnknown:
			res.Unknown++
		}
	}
	return res
}

// applyOptions say how apply treats a batch.
type applyOptions struct {
	commit       bool         // false: validate and report, change nothing
	countUnknown bool         // count outcomes not held here as unmatched (false on a peer: the replica that received them counts)
	skip         map[int]bool // outcomes another replica joined: not this one's
	positions    []int        // each outcome's position in the batch as its client posted it (errors name it)
}

// apply validates a batch and, when asked, joins it, under the book's
// lock: each outcome's status, or an error naming the first outcome that
// cannot be read (nothing joined).
func (o *Outcomes) apply(function string, batch []Outcome, opt applyOptions) ([]string, error) {
	b := o.books[function]
	if b == nil {
		return nil, ErrNotRecorded
	}
	if len(batch) > maxOutcomeBatch {
		return nil, fmt.Errorf("%d outcomes in one batch, at most %d", len(batch), maxOutcomeBatch)
	}
	refs := make([]outcomeRef, len(batch))
	b.mu.Lock()
	defer b.mu.Unlock()
	b.expire(o.now())
	for i, oc := range batch {
		ref, err := b.resolve(oc)
		if err != nil {
			pos := i
			if opt.positions != nil {
				pos = opt.positions[i]
			}
			return nil, fmt.Errorf("outcomes[%d]: %w", pos, err)
		}
		refs[i] = ref
	}
	statuses := make([]string, len(batch))
	for i, r := range refs {
		switch {
		case opt.skip[i]:
			continue
		case r.p == nil:
			statuses[i] = statusUnknown
			if opt.commit && opt.countUnknown {
				b.unmatched[unmatchedUnknown]++
			}
			continue
		case r.p.labelled[r.row]:
			statuses[i] = statusDuplicate
			if opt.commit {
				b.unmatched[unmatchedDuplicate]++
			}
			continue
		}
		statuses[i] = statusJoined
		if opt.commit {
			b.label(r)
		}
	}
	return statuses, nil
}

// label joins one resolved outcome to its prediction (under b.mu).
func (b *book) label(r outcomeRef) {
	r.p.labelled[r.row] = true
	t := b.totals[r.p.revision]
	if t == nil {
		t = &OutcomeTotals{}
		b.totals[r.p.revision] = t
	}
	t.Labelled++
	pred := r.p.rows[r.row]
	if pred.Items != nil {
		for _, it := range pred.Items[:min(b.fn.Outcomes.K, len(pred.Items))] {
			if float64(it) == r.value {
				t.Hits++
				break
			}
		}
		return
	}
	positive := r.value == 1
	predicted := pred.Score >= b.fn.Outcomes.Threshold
	switch {
	case positive && predicted:
		t.TP++
	case predicted:
		t.FP++
	case positive:
		t.FN++
	default:
		t.TN++
	}
	p := min(max(pred.Score, logLossEpsilon), 1-logLossEpsilon)
	if positive {
		t.LogLossSum -= math.Log(p)
	} else {
		t.LogLossSum -= math.Log(1 - p)
	}
}

// resolve reads one outcome and finds its prediction (nil when it is not
// in the window), under b.mu.
func (b *book) resolve(oc Outcome) (outcomeRef, error) {
	if oc.TrackingEventName == "" {
		return outcomeRef{}, errors.New("trackingEventName is required (the event: chargeback, click)")
	}
	var id, key string
	if v, ok := oc.Details["predictionId"]; ok {
		s, isStr := v.(string)
		if !isStr || s == "" {
			return outcomeRef{}, errors.New("details.predictionId must be a non-empty string (the prediction's V2 id or X-Request-Id)")
		}
		id = s
	}
	if v, ok := oc.Context["targetingKey"]; ok {
		s, isStr := v.(string)
		if !isStr {
			return outcomeRef{}, errors.New("context.targetingKey must be a string")
		}
		key = s
	}
	if id == "" && key == "" {
		return outcomeRef{}, errors.New("name the prediction: details.predictionId, or context.targetingKey for the key's latest prediction")
	}
	ref := outcomeRef{}
	if v, ok := oc.Details["index"]; ok {
		f, isNum := v.(float64)
		if !isNum || f < 0 || f != math.Trunc(f) {
			return outcomeRef{}, errors.New("details.index must be a whole number >= 0 (the row of a batch answer)")
		}
		ref.row = int(f)
	}
	if v, ok := oc.Details["value"]; ok {
		f, isNum := v.(float64)
		if !isNum {
			return outcomeRef{}, errors.New("details.value must be a number")
		}
		ref.value, ref.hasValue = f, true
	}
	if id != "" {
		ref.p = b.byID[id]
	} else {
		ref.p = b.byKey[key]
	}
	if ref.p == nil {
		return ref, nil
	}
	if ref.row >= len(ref.p.rows) {
		return outcomeRef{}, fmt.Errorf("details.index %d: the prediction has %d rows", ref.row, len(ref.p.rows))
	}
	if ref.p.rows[ref.row].Items != nil {
		if !ref.hasValue || ref.value != math.Trunc(ref.value) {
			return outcomeRef{}, fmt.Errorf("details.value must be the item id the user took (function %s ranks items)", b.fn.Name)
		}
		return ref, nil
	}
	if !ref.hasValue {
		ref.value = 1 // the event happened: a chargeback is a fraud label
	}
	if ref.value != 0 && ref.value != 1 {
		return outcomeRef{}, fmt.Errorf("details.value %g: function %s scores a probability, its label is 1 (the event, e.g. a chargeback: the default) or 0", ref.value, b.fn.Name)
	}
	return ref, nil
}

// Totals are function's revision's labelled outcomes so far (zero when
// none, or when the function records none).
func (o *Outcomes) Totals(function, revision string) OutcomeTotals {
	b := o.books[function]
	if b == nil {
		return OutcomeTotals{}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if t := b.totals[revision]; t != nil {
		return *t
	}
	return OutcomeTotals{}
}

// outcomeCollector exports the store at scrape time, from the same totals
// the rollout judges.
type outcomeCollector struct{ o *Outcomes }

var (
	descRecorded = prometheus.NewDesc("pilotlight_predictions_recorded_total", "Predictions recorded for outcomes, by revision.", []string{"function", "revision"}, nil)
	descWindow   = prometheus.NewDesc("pilotlight_predictions_window", "Predictions in the window, waiting for their outcome.", []string{"function"}, nil)
	descEvicted  = prometheus.NewDesc("pilotlight_predictions_evicted_total", "Predictions dropped from the window: full (the oldest made room) or expired (older than outcomes.window).", []string{"function", "reason"}, nil)
	descUnread   = prometheus.NewDesc("pilotlight_predictions_unrecorded_total", "Answers not recorded: unreadable by the function's predictor, or with neither id nor targeting key.", []string{"function"}, nil)
	descUnmatch  = prometheus.NewDesc("pilotlight_outcomes_unmatched_total", "Outcomes not joined: unknown (no prediction in the window) or duplicate (the prediction had its outcome).", []string{"function", "reason"}, nil)
	descLabelled = prometheus.NewDesc("pilotlight_outcomes_labelled_total", "Predictions joined to an outcome, by revision.", []string{"function", "revision"}, nil)
	descConfuse  = prometheus.NewDesc("pilotlight_outcomes_confusion_total", "Labelled predictions of a scored function by cell (tp, fp, fn, tn) at its decision threshold.", []string{"function", "revision", "cell"}, nil)
	descLogLoss  = prometheus.NewDesc("pilotlight_outcomes_log_loss_total", "Summed log loss (nats) of a scored function's labelled predictions; divide by labelled for the mean.", []string{"function", "revision"}, nil)
	descHits     = prometheus.NewDesc("pilotlight_outcomes_hits_total", "Labelled predictions of a ranking function whose item was in the first k.", []string{"function", "revision"}, nil)
	descPrec     = prometheus.NewDesc("pilotlight_outcomes_precision", "Precision at the decision threshold over every labelled prediction so far.", []string{"function", "revision"}, nil)
	descRecall   = prometheus.NewDesc("pilotlight_outcomes_recall", "Recall at the decision threshold over every labelled prediction so far.", []string{"function", "revision"}, nil)
	descMeanLoss = prometheus.NewDesc("pilotlight_outcomes_log_loss", "Mean log loss over every labelled prediction so far.", []string{"function", "revision"}, nil)
	descHitRate  = prometheus.NewDesc("pilotlight_outcomes_hit_rate", "Hit rate at k over every labelled prediction so far.", []string{"function", "revision"}, nil)
)

func (outcomeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRecorded, descWindow, descEvicted, descUnread, descUnmatch, descLabelled, descConfuse, descLogLoss, descHits, descPrec, descRecall, descMeanLoss, descHitRate} {
		ch <- d
	}
}

func (c outcomeCollector) Collect(ch chan<- prometheus.Metric) {
	names := make([]string, 0, len(c.o.books))
	for n := range c.o.books {
		names = append(names, n)
	}
	sort.Strings(names)
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, fn := range names {
		b := c.o.books[fn]
		b.mu.Lock()
		gauge(descWindow, float64(len(b.queue)-b.head), fn)
		counter(descUnread, b.unreadable, fn)
		for _, r := range []string{evictedFull, evictedExpired} {
			counter(descEvicted, b.evicted[r], fn, r)
		}
		for _, r := range []string{unmatchedUnknown, unmatchedDuplicate} {
			counter(descUnmatch, b.unmatched[r], fn, r)
		}
		for rev, n := range b.recorded {
			counter(descRecorded, n, fn, rev)
		}
		for rev, t := range b.totals {
			counter(descLabelled, t.Labelled, fn, rev)
			if t.TP+t.FP+t.FN+t.TN == 0 { // labelled, with no confusion cell: a ranking function
				counter(descHits, t.Hits, fn, rev)
				gauge(descHitRate, t.HitRate(), fn, rev)
				continue
			}
			for cell, v := range map[string]float64{"tp": t.TP, "fp": t.FP, "fn": t.FN, "tn": t.TN} {
				counter(descConfuse, v, fn, rev, cell)
			}
			counter(descLogLoss, t.LogLossSum, fn, rev)
			gauge(descPrec, t.Precision(), fn, rev)
			gauge(descRecall, t.Recall(), fn, rev)
			gauge(descMeanLoss, t.LogLoss(), fn, rev)
		}
		b.mu.Unlock()
	}
}

// maxOutcomeBodyBytes bounds a POST of outcomes (about 100 bytes an outcome).
const maxOutcomeBodyBytes = 4 << 20

// MountOutcomes serves POST /v2/models/{name}/outcomes on the router's
// data listener, behind the data path's key rules (a key that may call the
// function). The body is {"outcomes": [Outcome, ...]}; the answer is a
// JoinResult.
func MountOutcomes(rt *router.Router, fns []*functions.Manifest, o *Outcomes) {
	known := map[string]bool{}
	for _, fn := range fns {
		known[fn.Name] = true
	}
	rt.DataRoute(http.MethodPost, "/v2/models/:model/outcomes", func(c echo.Context) error {
		name := c.Param("model")
		switch {
		case !known[name]:
			return echo.NewHTTPError(http.StatusNotFound, fmt.Sprintf("unknown function %q", name))
		case !o.Records(name):
			return echo.NewHTTPError(http.StatusNotFound, fmt.Sprintf("function %s records no predictions, so it takes no outcomes: set outcomes.maxPredictions in its function.yaml", name))
		}
		raw, err := io.ReadAll(io.LimitReader(c.Request().Body, maxOutcomeBodyBytes+1))
		switch {
		case err != nil:
			return echo.NewHTTPError(http.StatusBadRequest, "reading the request body: "+err.Error())
		case len(raw) > maxOutcomeBodyBytes:
			return echo.NewHTTPError(http.StatusRequestEntityTooLarge, fmt.Sprintf("outcomes body larger than %d bytes: post smaller batches", maxOutcomeBodyBytes))
		}
		var doc forwardedBatch
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&doc); err != nil {
			return echo.NewHTTPError(http.StatusBadRequest, `the body must be {"outcomes": [{"trackingEventName": ..., "context": {...}, "details": {...}}, ...]}: `+err.Error())
		}
		if doc.Outcomes == nil {
			return echo.NewHTTPError(http.StatusBadRequest, `the body must be {"outcomes": [...]}: "outcomes" is missing`)
		}
		if replica := c.Request().Header.Get(HeaderOutcomesForwarded); replica != "" {
			// Another replica's forward: join what this one holds, forward nothing.
			if o.peers == nil {
				return echo.NewHTTPError(http.StatusForbidden, HeaderOutcomesForwarded+" is for batches one router replica forwards to another, and this router has no replicas: post without it")
			}
			ok, err := o.peers.fromPeer(c.Request().Context(), replica, c.Request().RemoteAddr)
			switch {
			case err != nil:
				return echo.NewHTTPError(http.StatusServiceUnavailable, "checking that a forwarded batch comes from a router replica: "+err.Error())
			case !ok:
				return echo.NewHTTPError(http.StatusForbidden, fmt.Sprintf("%s names %q, which is not another ready replica of the router sending from its own address: post without it", HeaderOutcomesForwarded, replica))
			}
			if len(doc.Positions) != len(doc.Outcomes) {
				return echo.NewHTTPError(http.StatusBadRequest, fmt.Sprintf("a forwarded batch names the position of each outcome: %d outcomes, %d positions", len(doc.Outcomes), len(doc.Positions)))
			}
			st, err := o.apply(name, doc.Outcomes, applyOptions{commit: true, positions: doc.Positions})
			if err != nil {
				return echo.NewHTTPError(http.StatusBadRequest, err.Error())
			}
			return c.JSON(http.StatusOK, forwardedAnswer{Statuses: st})
		}
		if doc.Positions != nil {
			return echo.NewHTTPError(http.StatusBadRequest, `"positions" is for batches one router replica forwards to another`)
		}
		auth := http.Header{}
		for _, h := range []string{echo.HeaderAuthorization, rauth.HeaderAPIKey} {
			if v := c.Request().Header.Values(h); len(v) > 0 {
				auth[http.CanonicalHeaderKey(h)] = v
			}
		}
		res, err := o.joinFleet(c.Request().Context(), name, doc.Outcomes, auth)
		if err != nil { // an outcome that does not read, here or at the peer holding its prediction
			return echo.NewHTTPError(http.StatusBadRequest, err.Error())
		}
		return c.JSON(http.StatusOK, res)
	})
}

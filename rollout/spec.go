package rollout

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Strategies.
const (
	// StrategyCanary moves the flag step by step (Spec.Steps), judging each step.
	StrategyCanary = "canary"
	// StrategyBlueGreen pre-scales the candidate, judges it on shadow
	// traffic, then gives it 100% in one flag write; the previous revision
	// stays warm for Spec.KeepPrevious so Undo is instant.
	StrategyBlueGreen = "bluegreen"
)

// Defaults for a Spec's zero fields.
const (
	DefaultInterval     = 30 * time.Second
	DefaultMaxErrorRate = 0.01
	DefaultMaxP99       = 500 * time.Millisecond
	DefaultMinRequests  = 20
	// DefaultKeepPrevious is how long a blue-green rollout keeps the
	// previous revision warm for an undo.
	DefaultKeepPrevious = 10 * time.Minute
	// DefaultGateShadowPercent is the share of stable traffic copied to the
	// canary during canary steps when prediction gates are set without --shadow.
	DefaultGateShadowPercent = 20
	// DefaultMinLabelled is how many labelled outcomes an outcome gate
	// waits for: precision over fewer swings by tenths with one label.
	DefaultMinLabelled = 50
	// minInterval is the shortest analysis interval that can judge anything.
	minInterval = 100 * time.Millisecond
)

// DefaultSteps are the canary weights, in percent.
var DefaultSteps = []int{5, 25, 50, 100}

// Spec asks for one rollout. Its JSON form is the body of
// POST /admin/rollouts: durations are Go duration strings ("30s").
type Spec struct {
	Function     string        `json:"function"`
	To           string        `json:"to"`
	Strategy     string        `json:"strategy"`
	Steps        []int         `json:"steps"`
	Interval     time.Duration `json:"interval"`
	MaxErrorRate float64       `json:"max_error_rate"`
	MaxP99       time.Duration `json:"max_p99"`
	MinRequests  int           `json:"min_requests"`
	// Shadow is the percent of the serving revision's requests copied to
	// the candidate before any live traffic moves (0: no shadow phase).
	Shadow int `json:"shadow"`
	// MinAgreement is the lowest share of compared answers that must agree
	// (0: gate off). MaxScoreDelta is the highest mean |Δ score| (0: off).
	MinAgreement  float64 `json:"min_agreement"`
	MaxScoreDelta float64 `json:"max_score_delta"`
	// KeepPrevious keeps the previous revision warm after promotion, for Undo.
	KeepPrevious time.Duration `json:"keep_previous"`
	// Outcome gates (outcomes.go), judged on the candidate's labelled live
	// predictions since the rollout started: MinPrecision is the lowest
	// precision at the function's decision threshold (0: off);
	// MaxLogLossDelta the most the candidate's mean log loss may exceed
	// the serving revision's (0: off). Neither judges before MinLabelled
	// outcomes were joined (default DefaultMinLabelled), the serving
	// revision's too for the log loss.
	MinPrecision    float64 `json:"min_precision"`
	MaxLogLossDelta float64 `json:"max_log_loss_delta"`
	MinLabelled     int     `json:"min_labelled"`
}

// specJSON is Spec on the wire.
type specJSON struct {
	Function      string  `json:"function"`
	To            string  `json:"to"`
	Strategy      string  `json:"strategy,omitempty"`
	Steps         []int   `json:"steps"`
	Interval      jsonDur `json:"interval"`
	MaxErrorRate  float64 `json:"max_error_rate"`
	MaxP99        jsonDur `json:"max_p99"`
	MinRequests   int     `json:"min_requests"`
	Shadow        int     `json:"shadow"`
	MinAgreement  float64 `json:"min_agreement"`
	MaxScoreDelta float64 `json:"max_score_delta"`
	KeepPrevious  jsonDur `json:"keep_previous"`
	// omitempty: a client that knows no outcome gates sends none.
	MinPrecision    float64 `json:"min_precision,omitempty"`
	MaxLogLossDelta float64 `json:"max_log_loss_delta,omitempty"`
	MinLabelled     int     `json:"min_labelled,omitempty"`
}

// jsonDur is a duration written as a Go duration string and read from one
// (or from a number of nanoseconds, as older clients sent).
type jsonDur time.Duration

func (d jsonDur) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *jsonDur) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, []byte("null")) {
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		if s == "" {
			*d = 0
			return nil
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration such as 30s or 500ms", s)
		}
		*d = jsonDur(v)
		return nil
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("%s is not a duration such as \"30s\"", b)
	}
	*d = jsonDur(n)
	return nil
}

// MarshalJSON writes durations as Go duration strings ("30s").
func (s Spec) MarshalJSON() ([]byte, error) {
	return json.Marshal(specJSON{s.Function, s.To, s.Strategy, s.Steps, jsonDur(s.Interval), s.MaxErrorRate, jsonDur(s.MaxP99),
		s.MinRequests, s.Shadow, s.MinAgreement, s.MaxScoreDelta, jsonDur(s.KeepPrevious), s.MinPrecision, s.MaxLogLossDelta, s.MinLabelled})
}

// UnmarshalJSON reads what MarshalJSON writes; unknown fields are refused,
// so a misspelt option is an error rather than a silent default.
func (s *Spec) UnmarshalJSON(b []byte) error {
	var j specJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return err
	}
	*s = Spec{j.Function, j.To, j.Strategy, j.Steps, time.Duration(j.Interval), j.MaxErrorRate, time.Duration(j.MaxP99),
		j.MinRequests, j.Shadow, j.MinAgreement, j.MaxScoreDelta, time.Duration(j.KeepPrevious), j.MinPrecision, j.MaxLogLossDelta, j.MinLabelled}
	return nil
}

// gated says whether a prediction gate is set.
func (s Spec) gated() bool { return s.MinAgreement > 0 || s.MaxScoreDelta > 0 }

// outcomeGated says whether an outcome gate is set.
func (s Spec) outcomeGated() bool { return s.MinPrecision > 0 || s.MaxLogLossDelta > 0 }

// ParseSteps reads "5,25,50,100".
func ParseSteps(s string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(s, ",") {
		w, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil {
			return nil, fmt.Errorf("steps %q: %q is not a whole percent", s, part)
		}
		out = append(out, w)
	}
	return out, nil
}

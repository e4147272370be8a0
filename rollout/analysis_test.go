package rollout

import (
	"strings"
	"testing"
	"time"
)

// TestJudge: the decision is a pure function of one interval's numbers.
func TestJudge(t *testing.T) {
	spec := Spec{MaxErrorRate: 0.01, MaxP99: 200 * time.Millisecond, MinRequests: 10}
	gated := spec
	gated.MinAgreement, gated.MaxScoreDelta = 0.95, 0.05
	live := func(req, errs float64, p99 time.Duration) Interval {
		return Interval{window: window{Requests: req, Errors: errs, P99: p99}}
	}
	withShadow := func(in Interval, compared, agreed, delta, failed, incomparable float64) Interval {
		in.Compared, in.Agreed, in.DeltaSum, in.ShadowFailed, in.ShadowIncomparable = compared, agreed, delta, failed, incomparable
		return in
	}
	tests := []struct {
		name     string
		spec     Spec
		in       Interval
		onShadow bool
		weight   int
		verdict  string
		check    string
		says     string
	}{
		{"healthy canary", spec, live(40, 0, 50*time.Millisecond), false, 10, VerdictAdvance, CheckHealthy, "p99 50.0 ms ≤ 200 ms"},
		{"errors", spec, live(40, 2, 50*time.Millisecond), false, 10, VerdictRollback, CheckErrorRate, "error rate 0.0500"},
		{"slow", spec, live(40, 0, 300*time.Millisecond), false, 10, VerdictRollback, CheckP99, "p99 300 ms exceeds 200 ms"},
		{"too few requests", spec, live(3, 0, 0), false, 10, VerdictHold, CheckTraffic, "3 candidate requests, need 10"},
		{"shadow copies failing", spec, withShadow(Interval{}, 10, 10, 0, 5, 0), true, 0, VerdictRollback, CheckShadow, "5 of 15 shadow requests failed"},
		{"disagreeing", gated, withShadow(Interval{}, 20, 2, 0, 0, 0), true, 0, VerdictRollback, CheckAgreement, "agreement 0.1000"},
		{"scores drift", gated, withShadow(Interval{}, 20, 20, 4, 0, 0), true, 0, VerdictRollback, CheckScoreDelta, "mean |Δ score| 0.2000"},
		{"agreeing on shadow", gated, withShadow(Interval{}, 20, 20, 0, 0, 0), true, 0, VerdictAdvance, CheckHealthy, "20 compared"},
		{"few compared", gated, withShadow(Interval{}, 4, 4, 0, 0, 0), true, 0, VerdictHold, CheckTraffic, "4 compared shadow answers, need 10"},
		{"incomparable copies hold, never roll back", gated, withShadow(Interval{}, 0, 0, 0, 0, 30), true, 0, VerdictHold, CheckTraffic, "30 answered copies could not be compared"},
		{"gated canary step judges its copies", gated, withShadow(live(40, 0, 0), 2, 2, 0, 0, 0), false, 50, VerdictHold, CheckTraffic, "2 compared shadow answers"},
		// At 100% no serving traffic is left to copy: the gates judged the earlier steps.
		{"gated canary at 100%", gated, live(40, 0, 0), false, 100, VerdictAdvance, CheckHealthy, "healthy at 100%"},
	}
	for _, tt := range tests {
		verdict, check, reason := Judge(tt.spec, tt.in, tt.onShadow, tt.weight)
		if verdict != tt.verdict || check != tt.check || !strings.Contains(reason, tt.says) {
			t.Errorf("%s: %s %s %q, want %s %s saying %q", tt.name, verdict, check, reason, tt.verdict, tt.check, tt.says)
		}
	}
}

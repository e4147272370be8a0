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
	// The 100% step's reason does not claim an agreement it did not judge.
	if _, _, reason := Judge(gated, live(40, 0, 0), false, 100); strings.Contains(reason, "agreement") {
		t.Errorf("at 100%% the reason speaks of agreement: %q", reason)
	}
	for _, tt := range tests {
		verdict, check, reason := Judge(tt.spec, tt.in, tt.onShadow, tt.weight)
		if verdict != tt.verdict || check != tt.check || !strings.Contains(reason, tt.says) {
			t.Errorf("%s: %s %s %q, want %s %s saying %q", tt.name, verdict, check, reason, tt.verdict, tt.check, tt.says)
		}
	}
}

// TestJudgeOutcomeGates is Judge's table for the outcome gates: a pure
// function of the numbers, so each row is one situation.
func TestJudgeOutcomeGates(t *testing.T) {
	healthy := window{Requests: 100, P99: 10 * time.Millisecond}
	base := Spec{MaxErrorRate: 0.01, MaxP99: time.Second, MinRequests: 20, MinLabelled: 50}
	// good: 40 tp, 5 fp, 5 fn, 50 tn; mean log loss 0.2.
	good := OutcomeTotals{Labelled: 100, TP: 40, FP: 5, FN: 5, TN: 50, LogLossSum: 20}
	// worse: same count, precision 0.5, mean log loss 0.6.
	worse := OutcomeTotals{Labelled: 100, TP: 30, FP: 30, FN: 15, TN: 25, LogLossSum: 60}
	few := OutcomeTotals{Labelled: 49, TP: 0, FP: 49, LogLossSum: 100}
	withP := func(s Spec, p float64) Spec { s.MinPrecision = p; return s }
	withL := func(s Spec, d float64) Spec { s.MaxLogLossDelta = d; return s }
	for _, c := range []struct {
		name          string
		spec          Spec
		in            Interval
		onShadow      bool
		verdict, want string // want: a substring of the reason
		check         string
	}{
		{"precision above the floor advances", withP(base, 0.8), Interval{window: healthy, Outcomes: good}, false,
			VerdictAdvance, "precision 0.8889 ≥ 0.8000 over 100 labelled", CheckHealthy},
		{"precision below the floor rolls back", withP(base, 0.8), Interval{window: healthy, Outcomes: worse}, false,
			VerdictRollback, "precision 0.5000 over 100 labelled outcomes is below 0.8000", CheckPrecision},
		{"no positive predicted is precision 0", withP(base, 0.1), Interval{window: healthy, Outcomes: OutcomeTotals{Labelled: 60, FN: 10, TN: 50}}, false,
			VerdictRollback, "precision 0.0000", CheckPrecision},
		{"too few labels holds, however bad", withP(base, 0.8), Interval{window: healthy, Outcomes: few}, false,
			VerdictHold, "49 labelled outcomes of the candidate, need 50", CheckTraffic},
		{"log loss worse than serving by more than the delta rolls back", withL(base, 0.1), Interval{window: healthy, Outcomes: worse, ServingOutcomes: good}, false,
			VerdictRollback, "log loss 0.6000 over 100 labelled outcomes exceeds the serving revision's 0.2000 (over 100) by 0.4000 > 0.1000", CheckLogLoss},
		{"log loss within the delta advances", withL(base, 0.5), Interval{window: healthy, Outcomes: worse, ServingOutcomes: good}, false,
			VerdictAdvance, "log loss 0.6000 vs serving 0.2000", CheckHealthy},
		{"a better candidate advances", withL(base, 0.01), Interval{window: healthy, Outcomes: good, ServingOutcomes: worse}, false,
			VerdictAdvance, "", CheckHealthy},
		{"too few serving labels holds the log loss gate", withL(base, 0.1), Interval{window: healthy, Outcomes: worse, ServingOutcomes: few}, false,
			VerdictHold, "49 labelled outcomes of the serving revision, need 50 to compare log loss", CheckTraffic},
		{"precision still judged while serving labels are few", withL(withP(base, 0.8), 0.1), Interval{window: healthy, Outcomes: worse, ServingOutcomes: few}, false,
			VerdictRollback, "precision 0.5000", CheckPrecision},
		{"errors decide before outcomes", withP(base, 0.8), Interval{window: window{Requests: 100, Errors: 50}, Outcomes: good}, false,
			VerdictRollback, "error rate 0.5000", CheckErrorRate},
		{"shadow phase: outcome gates wait for live traffic", withP(withL(base, 0.1), 0.8), Interval{Compared: 100, Agreed: 100, Outcomes: worse, ServingOutcomes: good}, true,
			VerdictAdvance, "healthy on shadow traffic", CheckHealthy},
		{"gates off: bad outcomes are not looked at", base, Interval{window: healthy, Outcomes: worse, ServingOutcomes: good}, false,
			VerdictAdvance, "", CheckHealthy},
	} {
		t.Run(c.name, func(t *testing.T) {
			verdict, check, reason := Judge(c.spec, c.in, c.onShadow, 25)
			if verdict != c.verdict || check != c.check || !strings.Contains(reason, c.want) {
				t.Fatalf("Judge = %s/%s %q, want %s/%s containing %q", verdict, check, reason, c.verdict, c.check, c.want)
			}
		})
	}
}

func TestOutcomeTotalsArithmetic(t *testing.T) {
	a := OutcomeTotals{Labelled: 10, TP: 3, FP: 1, FN: 2, TN: 4, LogLossSum: 5}
	b := OutcomeTotals{Labelled: 4, TP: 1, FP: 1, FN: 0, TN: 2, LogLossSum: 1}
	d := a.Sub(b)
	if d != (OutcomeTotals{Labelled: 6, TP: 2, FN: 2, TN: 2, LogLossSum: 4}) {
		t.Fatalf("Sub = %+v", d)
	}
	if d.Precision() != 1 || d.Recall() != 0.5 || d.LogLoss() != 4.0/6 {
		t.Fatalf("precision %v recall %v log loss %v", d.Precision(), d.Recall(), d.LogLoss())
	}
	if (OutcomeTotals{}).Precision() != 0 || (OutcomeTotals{}).HitRate() != 0 {
		t.Fatal("empty totals must give 0, not NaN")
	}
}

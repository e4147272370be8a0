package autoscaler

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// t0 is the fake clock's origin; every test time is t0 plus an offset.
var t0 = time.Unix(1_700_000_000, 0)

func at(d time.Duration) time.Time { return t0.Add(d) }

// feed records v once per step from `from` (inclusive) to `to` (exclusive).
func feed(a *Autoscaler, from, to, step time.Duration, v float64) {
	for d := from; d < to; d += step {
		a.Record(at(d), v)
	}
}

const never = time.Duration(math.MinInt64) // lastActive offset meaning "zero time"

func lastActiveAt(d time.Duration) time.Time {
	if d == never {
		return time.Time{}
	}
	return at(d)
}

func TestScale(t *testing.T) {
	sec := time.Second
	tests := []struct {
		name       string
		cfg        Config
		history    func(a *Autoscaler)
		now        time.Duration
		current    int
		lastActive time.Duration
		want       int
		wantPanic  bool
		wantStable float64 // checked when >= 0
		wantPanicC float64 // checked when >= 0
	}{
		{
			name:    "steady load keeps the count",
			cfg:     Config{TargetConcurrency: 10},
			history: func(a *Autoscaler) { feed(a, 0, 120*sec, sec, 30) },
			now:     119 * sec, current: 3, lastActive: 119 * sec,
			want: 3, wantStable: 30, wantPanicC: 30,
		},
		{
			name:    "steady load with fractional target rounds up",
			cfg:     Config{TargetConcurrency: 10},
			history: func(a *Autoscaler) { feed(a, 0, 120*sec, 100*time.Millisecond, 31) },
			now:     119 * sec, current: 4, lastActive: 119 * sec,
			want: 4, wantStable: 31, wantPanicC: 31,
		},
		{
			name:    "stable scale down is limited by MaxScaleDownRate",
			cfg:     Config{TargetConcurrency: 1},
			history: func(a *Autoscaler) { feed(a, 0, 120*sec, sec, 1) },
			now:     119 * sec, current: 10, lastActive: 119 * sec,
			want: 5, wantStable: 1, wantPanicC: 1,
		},
		{
			name:    "stable scale down with a faster MaxScaleDownRate",
			cfg:     Config{TargetConcurrency: 1, MaxScaleDownRate: 4},
			history: func(a *Autoscaler) { feed(a, 0, 120*sec, sec, 1) },
			now:     119 * sec, current: 10, lastActive: 119 * sec,
			want: 2, wantStable: 1, wantPanicC: 1,
		},
		{
			name:    "stable scale up limited by MaxScaleUpRate",
			cfg:     Config{TargetConcurrency: 1, MaxScaleUpRate: 1.5, PanicThreshold: 100},
			history: func(a *Autoscaler) { feed(a, 0, 120*sec, sec, 40) },
			now:     119 * sec, current: 4, lastActive: 119 * sec,
			want: 6, wantStable: 40, wantPanicC: 40,
		},
		{
			name:    "idle past grace with MinScale 0 goes to zero",
			cfg:     Config{TargetConcurrency: 1, ScaleToZeroAfter: 30 * sec},
			history: func(a *Autoscaler) { feed(a, 0, 10*sec, sec, 5); feed(a, 10*sec, 41*sec, sec, 0) },
			now:     40 * sec, current: 5, lastActive: 10 * sec,
			want: 0, wantStable: -1, wantPanicC: 0,
		},
		{
			name: "idle past grace goes to zero even though the stable window still remembers load",
			cfg:  Config{TargetConcurrency: 1, ScaleToZeroAfter: 5 * sec},
			history: func(a *Autoscaler) {
				feed(a, 0, 50*sec, sec, 20)
				feed(a, 50*sec, 56*sec, sec, 0)
			},
			now: 55 * sec, current: 20, lastActive: 50 * sec,
			want: 0, wantStable: -1, wantPanicC: 0,
		},
		{
			// The stable window has averaged down to zero, but the grace has not passed.
			name:    "idle within grace keeps at least one instance",
			cfg:     Config{TargetConcurrency: 1, ScaleToZeroAfter: 90 * sec},
			history: func(a *Autoscaler) { feed(a, 0, 10*sec, sec, 5); feed(a, 10*sec, 80*sec, sec, 0) },
			now:     79 * sec, current: 2, lastActive: 10 * sec,
			want: 1, wantStable: 0, wantPanicC: 0,
		},
		{
			name:    "idle past grace with MinScale 1 stays at one",
			cfg:     Config{TargetConcurrency: 1, MinScale: 1, ScaleToZeroAfter: 30 * sec},
			history: func(a *Autoscaler) { feed(a, 0, 10*sec, sec, 5); feed(a, 10*sec, 100*sec, sec, 0) },
			now:     99 * sec, current: 3, lastActive: 10 * sec,
			want: 1, wantStable: 0, wantPanicC: 0,
		},
		{
			name:    "never active and no instances stays at zero",
			cfg:     Config{},
			history: func(a *Autoscaler) {},
			now:     0, current: 0, lastActive: never,
			want: 0, wantStable: 0, wantPanicC: 0,
		},
		{
			name:    "request in flight is never scaled to zero even with a stale lastActive",
			cfg:     Config{TargetConcurrency: 100, ScaleToZeroAfter: sec},
			history: func(a *Autoscaler) { feed(a, 0, 60*sec, sec, 0); a.Record(at(60*sec), 0.01) },
			now:     60 * sec, current: 1, lastActive: never,
			want: 1, wantStable: -1, wantPanicC: -1,
		},
		{
			name:    "request in flight at zero instances asks for one",
			cfg:     Config{TargetConcurrency: 10},
			history: func(a *Autoscaler) { feed(a, 0, 60*sec, sec, 0); a.Record(at(60*sec), 1) },
			now:     60 * sec, current: 0, lastActive: 60 * sec,
			want: 1, wantStable: -1, wantPanicC: -1,
		},
		{
			name:    "burst from zero at startup jumps to its size",
			cfg:     Config{TargetConcurrency: 1},
			history: func(a *Autoscaler) { a.Record(at(0), 64) },
			now:     0, current: 0, lastActive: 0,
			want: 64, wantPanic: true, wantStable: 64, wantPanicC: 64,
		},
		{
			name:    "MaxScale caps a burst",
			cfg:     Config{TargetConcurrency: 1, MaxScale: 8},
			history: func(a *Autoscaler) { feed(a, 0, 10*sec, sec, 1000) },
			now:     9 * sec, current: 5, lastActive: 9 * sec,
			want: 8, wantPanic: true, wantStable: 1000, wantPanicC: 1000,
		},
		{
			name:    "MinScale floors a quiet revision",
			cfg:     Config{TargetConcurrency: 10, MinScale: 3},
			history: func(a *Autoscaler) { feed(a, 0, 60*sec, sec, 1) },
			now:     59 * sec, current: 3, lastActive: 59 * sec,
			want: 3, wantStable: 1, wantPanicC: 1,
		},
		{
			name:    "windows shorter than their length average over the data that exists",
			cfg:     Config{TargetConcurrency: 5, PanicThreshold: 100},
			history: func(a *Autoscaler) { feed(a, 0, 3*sec, sec, 10) },
			now:     2 * sec, current: 2, lastActive: 2 * sec,
			want: 2, wantStable: 10, wantPanicC: 10,
		},
		{
			name: "panic window sees only its last seconds",
			cfg:  Config{TargetConcurrency: 1, PanicThreshold: 100, ScaleToZeroAfter: time.Hour},
			history: func(a *Autoscaler) {
				feed(a, 0, 10*sec, sec, 100)
				feed(a, 10*sec, 20*sec, sec, 0)
			},
			now: 19 * sec, current: 100, lastActive: 9 * sec,
			want: 50, wantStable: 50, wantPanicC: 0,
		},
		{
			name: "stable window forgets data older than its length",
			cfg:  Config{TargetConcurrency: 1, StableWindow: 10 * sec, PanicWindow: 2 * sec},
			history: func(a *Autoscaler) {
				feed(a, 0, 10*sec, sec, 100)
				feed(a, 10*sec, 20*sec, sec, 4)
			},
			now: 19 * sec, current: 4, lastActive: 19 * sec,
			want: 4, wantStable: 4, wantPanicC: 4,
		},
		{
			name: "a second without a sample is skipped, not counted as zero",
			cfg:  Config{TargetConcurrency: 1},
			history: func(a *Autoscaler) {
				for _, d := range []time.Duration{0, 990 * time.Millisecond, 2010 * time.Millisecond, 3 * sec, 5 * sec} {
					a.Record(at(d), 6)
				}
			},
			now: 5 * sec, current: 6, lastActive: 5 * sec,
			want: 6, wantStable: 6, wantPanicC: 6,
		},
		{
			name: "samples within one second are averaged",
			cfg:  Config{TargetConcurrency: 1},
			history: func(a *Autoscaler) {
				a.Record(at(0), 2)
				a.Record(at(500*time.Millisecond), 6)
			},
			now: 900 * time.Millisecond, current: 4, lastActive: 0,
			want: 4, wantStable: 4, wantPanicC: 4,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := New(tt.cfg)
			tt.history(a)
			d := a.Scale(at(tt.now), tt.current, lastActiveAt(tt.lastActive))
			if d.Desired != tt.want || d.Panic != tt.wantPanic {
				t.Errorf("Scale = desired %d panic %v, want %d %v (%s)", d.Desired, d.Panic, tt.want, tt.wantPanic, d.Reason)
			}
			if tt.wantStable >= 0 && !near(d.StableConcurrency, tt.wantStable) {
				t.Errorf("StableConcurrency = %v, want %v", d.StableConcurrency, tt.wantStable)
			}
			if tt.wantPanicC >= 0 && !near(d.PanicConcurrency, tt.wantPanicC) {
				t.Errorf("PanicConcurrency = %v, want %v", d.PanicConcurrency, tt.wantPanicC)
			}
			if d.Reason == "" {
				t.Error("Reason is empty")
			}
		})
	}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// TestPanicLifecycle drives one revision tick by tick through a burst: steady
// load of 1, a step to 64 concurrent requests, then back to 1. The engine is
// simulated as obeying every decision at once.
func TestPanicLifecycle(t *testing.T) {
	const sec = time.Second
	a := New(Config{TargetConcurrency: 1, ScaleToZeroAfter: time.Hour})
	current := 1
	lastTrigger := -1 // last second whose panic-window count was >= 2x current
	tick := func(s int, load float64) Decision {
		t.Helper()
		now := time.Duration(s) * sec
		// Ten samples per second, as an engine sampling every 100ms would.
		for d := now; d < now+sec; d += 100 * time.Millisecond {
			a.Record(at(d), load)
		}
		d := a.Scale(at(now+900*time.Millisecond), current, at(now+900*time.Millisecond))
		if math.Ceil(d.PanicConcurrency)/float64(max(current, 1)) >= 2 {
			lastTrigger = s
		}
		current = d.Desired
		return d
	}

	for s := range 60 {
		if d := tick(s, 1); d.Desired != 1 || d.Panic {
			t.Fatalf("steady t=%ds: %+v, want 1 instance and no panic", s, d)
		}
	}

	// Step up: the very first tick of the burst panics and jumps.
	// Panic window: five seconds at 1 and one at 64 -> 69/6 = 11.5 -> 12.
	if d := tick(60, 64); !d.Panic || d.Desired != 12 {
		t.Fatalf("first burst tick: %+v, want panic with 12 instances", d)
	}
	reached := -1
	for s := 61; s < 70; s++ {
		d := tick(s, 64)
		if !d.Panic {
			t.Fatalf("t=%ds: left panic during the burst: %+v", s, d)
		}
		if d.Desired == 64 && reached < 0 {
			reached = s
		}
	}
	if reached < 0 || reached > 65 {
		t.Fatalf("burst reached 64 instances at t=%ds, want within the 6s panic window (by t=65s)", reached)
	}

	// Load drops back to 1. While panicking the count never goes down, and
	// panic ends on the first tick a stable window after the last trigger.
	exited := -1
	for s := 70; s < 300 && exited < 0; s++ {
		prev := current
		d := tick(s, 1)
		switch {
		case d.Panic && d.Desired < prev:
			t.Fatalf("t=%ds: scaled down from %d to %d while panicking", s, prev, d.Desired)
		case d.Panic && s-lastTrigger > 60:
			t.Fatalf("t=%ds: still panicking %ds after the last trigger at t=%ds", s, s-lastTrigger, lastTrigger)
		case !d.Panic && s-lastTrigger < 60:
			t.Fatalf("t=%ds: left panic only %ds after the last trigger at t=%ds", s, s-lastTrigger, lastTrigger)
		case !d.Panic:
			if d.Desired > prev || d.Desired < prev/2 {
				t.Fatalf("t=%ds: after panic desired %d from %d, want a rate-limited scale down", s, d.Desired, prev)
			}
			exited = s
		}
	}
	if exited < 0 {
		t.Fatal("never left panic")
	}
	// After panic the stable window governs and brings the count back to 1.
	for s := exited + 1; s < exited+120; s++ {
		if d := tick(s, 1); d.Panic {
			t.Fatalf("t=%ds: panicked again on steady load 1: %+v", s, d)
		}
	}
	if current != 1 {
		t.Fatalf("after the burst settled: %d instances, want 1", current)
	}
}

// TestPanicExitTiming checks the exact rule: panic ends on the first tick at
// least StableWindow after the last tick that crossed the threshold.
func TestPanicExitTiming(t *testing.T) {
	const sec = time.Second
	a := New(Config{TargetConcurrency: 1, StableWindow: 10 * sec, PanicWindow: sec, ScaleToZeroAfter: time.Hour})
	a.Record(at(0), 10)
	if d := a.Scale(at(0), 1, at(0)); !d.Panic || d.Desired != 10 {
		t.Fatalf("trigger: %+v, want panic with 10", d)
	}
	for s := 1; s <= 10; s++ {
		a.Record(at(time.Duration(s)*sec), 1)
		d := a.Scale(at(time.Duration(s)*sec), 10, at(time.Duration(s)*sec))
		wantPanic := s < 10
		if d.Panic != wantPanic {
			t.Fatalf("t=%ds: panic %v, want %v (%s)", s, d.Panic, wantPanic, d.Reason)
		}
		if wantPanic && d.Desired != 10 {
			t.Fatalf("t=%ds: desired %d during panic, want 10 (no scale down)", s, d.Desired)
		}
		if !wantPanic && d.Desired != 5 {
			t.Fatalf("t=%ds: desired %d after panic, want 5 (floor(10/2))", s, d.Desired)
		}
	}
}

func TestDefaults(t *testing.T) {
	want := Config{
		TargetConcurrency: 100,
		StableWindow:      60 * time.Second,
		PanicWindow:       6 * time.Second,
		PanicThreshold:    2,
		ScaleToZeroAfter:  30 * time.Second,
		MaxScaleUpRate:    1000,
		MaxScaleDownRate:  2,
	}
	if got := (Config{}).WithDefaults(); got != want {
		t.Errorf("Config{}.WithDefaults() = %+v, want %+v", got, want)
	}
	if got := New(Config{}).Config(); got != want {
		t.Errorf("New(Config{}).Config() = %+v, want %+v", got, want)
	}
	if err := want.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
	custom := Config{TargetConcurrency: 7, MinScale: 1, MaxScale: 9, StableWindow: time.Minute, PanicWindow: time.Second,
		PanicThreshold: 3, ScaleToZeroAfter: time.Second, MaxScaleUpRate: 10, MaxScaleDownRate: 3}
	if got := custom.WithDefaults(); got != custom {
		t.Errorf("WithDefaults changed set fields: %+v", got)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		field string
	}{
		{"negative target", Config{TargetConcurrency: -1}, "TargetConcurrency"},
		{"NaN target", Config{TargetConcurrency: math.NaN()}, "TargetConcurrency"},
		{"negative min", Config{MinScale: -1}, "MinScale"},
		{"negative max", Config{MaxScale: -1}, "MaxScale"},
		{"min above max", Config{MinScale: 5, MaxScale: 2}, "MinScale: 5"},
		{"tiny stable window", Config{StableWindow: time.Millisecond, PanicWindow: time.Millisecond}, "StableWindow"},
		{"panic window longer than stable", Config{StableWindow: 10 * time.Second, PanicWindow: 20 * time.Second}, "PanicWindow"},
		{"threshold at most 1", Config{PanicThreshold: 0.5}, "PanicThreshold"},
		{"negative grace", Config{ScaleToZeroAfter: -time.Second}, "ScaleToZeroAfter"},
		{"up rate at most 1", Config{MaxScaleUpRate: 1}, "MaxScaleUpRate"},
		{"down rate at most 1", Config{MaxScaleDownRate: 0.5}, "MaxScaleDownRate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.WithDefaults().Validate()
			if err == nil || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("Validate() = %v, want an error naming %q", err, tt.field)
			}
		})
	}
}

// checkInvariants drives an autoscaler with ops derived from data and checks
// that every decision is within [MinScale, MaxScale] and at least 1 whenever
// the latest observation is positive.
func checkInvariants(t *testing.T, cfg Config, data []byte) {
	t.Helper()
	a := New(cfg)
	c := a.Config()
	now := t0
	current := 0
	var lastActive time.Time
	for i := 0; i+2 < len(data); i += 3 {
		now = now.Add(time.Duration(data[i]) * 50 * time.Millisecond)
		load := float64(data[i+1]) * float64(data[i+2]%8) / 2
		if data[i+2]&0x80 != 0 {
			load = 0
		}
		a.Record(now, load)
		if load > 0 {
			lastActive = now
		}
		d := a.Scale(now, current, lastActive)
		if d.Desired < c.MinScale || (c.MaxScale > 0 && d.Desired > c.MaxScale) {
			t.Fatalf("op %d: desired %d outside [%d, %d] (%s)", i/3, d.Desired, c.MinScale, c.MaxScale, d.Reason)
		}
		if load > 0 && d.Desired < 1 {
			t.Fatalf("op %d: desired %d with concurrency %v in flight (%s)", i/3, d.Desired, load, d.Reason)
		}
		if math.IsNaN(d.StableConcurrency) || math.IsNaN(d.PanicConcurrency) {
			t.Fatalf("op %d: NaN average: %+v", i/3, d)
		}
		// The engine follows the decision only sometimes, as real starts lag.
		if data[i]%3 != 0 {
			current = d.Desired
		}
	}
}

func configFrom(minScale, span, target, grace, rate uint8) Config {
	maxScale := 0
	if span > 0 {
		maxScale = int(minScale%8) + int(span%16)
	}
	if maxScale == 0 && minScale%8 > 0 && span > 0 {
		maxScale = int(minScale % 8)
	}
	return Config{
		TargetConcurrency: float64(target%20) + 0.5,
		MinScale:          int(minScale % 8),
		MaxScale:          maxScale,
		StableWindow:      time.Duration(grace%60+6) * time.Second,
		PanicWindow:       time.Duration(grace%6+1) * time.Second,
		ScaleToZeroAfter:  time.Duration(grace%40) * 100 * time.Millisecond,
		MaxScaleUpRate:    float64(rate%10) + 1.5,
		MaxScaleDownRate:  float64(rate%4) + 1.5,
	}
}

func FuzzScale(f *testing.F) {
	f.Add(uint8(0), uint8(0), uint8(1), uint8(30), uint8(0), []byte{10, 64, 1, 10, 0, 0x80, 200, 3, 3})
	f.Add(uint8(1), uint8(3), uint8(0), uint8(0), uint8(3), []byte{1, 255, 7, 1, 255, 7, 255, 0, 0x80})
	f.Fuzz(func(t *testing.T, minScale, span, target, grace, rate uint8, data []byte) {
		checkInvariants(t, configFrom(minScale, span, target, grace, rate), data)
	})
}

// TestInvariantsRandom runs the fuzz property over seeded random inputs so a
// plain `go test` exercises more than the fuzz seeds.
func TestInvariantsRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		cfg := configFrom(uint8(r.UintN(256)), uint8(r.UintN(256)), uint8(r.UintN(256)), uint8(r.UintN(256)), uint8(r.UintN(256)))
		data := make([]byte, 3*int(r.UintN(200)))
		for i := range data {
			data[i] = byte(r.UintN(256))
		}
		checkInvariants(t, cfg, data)
	}
}

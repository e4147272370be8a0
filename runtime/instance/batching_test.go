package instance

import (
	"strings"
	"testing"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/runtime/ort"
)

func TestDecideBatching(t *testing.T) {
	io := func(name string, shape ...int64) ort.IO { return ort.IO{Name: name, Datatype: "FP32", Shape: shape} }
	on := functions.Batching{MaxBatch: 32}
	for _, tc := range []struct {
		name    string
		b       functions.Batching
		in, out []ort.IO
		want    int    // MaxBatch decided
		reason  string // in the reason when off
	}{
		{"every first dimension dynamic", on, []ort.IO{io("x", -1, 10)}, []ort.IO{io("y", -1)}, 32, ""},
		{"batching: none", functions.Batching{None: true, MaxBatch: 1}, []ort.IO{io("x", -1, 10)}, []ort.IO{io("y", -1)}, 1, "batching: none"},
		{"maxBatch 1", functions.Batching{MaxBatch: 1}, []ort.IO{io("x", -1, 10)}, []ort.IO{io("y", -1)}, 1, "maxBatch is 1"},
		// Silero VAD: the state's batch axis is the second; concatenating
		// along the first would merge two requests' state into one wrong tensor.
		{"state batched on axis 1", on, []ort.IO{io("input", -1, -1), io("h", 2, -1, 64)}, []ort.IO{io("output", -1, 1)}, 1, `input "h" has a fixed first dimension`},
		{"only other dimensions vary", on, []ort.IO{io("x", -1, -1)}, []ort.IO{io("y", -1, 1)}, 1, `input "x" has a dynamic dimension 1`},
		{"scalar input", on, []ort.IO{io("x", -1, 3), io("sr")}, []ort.IO{io("y", -1)}, 1, `input "sr" is a scalar`},
		{"fixed-size model", on, []ort.IO{io("x", 1, 25, 96)}, []ort.IO{io("y", 1, 1)}, 1, `input "x" has a fixed first dimension`},
		{"output reduced over the batch", on, []ort.IO{io("x", -1, 3)}, []ort.IO{io("sum", 3)}, 1, `output "sum" has a fixed first dimension`},
		{"scalar output", on, []ort.IO{io("x", -1, 3)}, []ort.IO{io("total")}, 1, `output "total" is a scalar`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := decideBatching(tc.b, tc.in, tc.out)
			if got.MaxBatch != tc.want || got.On != (tc.want > 1) {
				t.Fatalf("decision %+v, want max batch %d", got, tc.want)
			}
			if tc.reason == "" && got.Reason != "" || !strings.Contains(got.Reason, tc.reason) {
				t.Errorf("reason %q, want it to contain %q", got.Reason, tc.reason)
			}
		})
	}
}

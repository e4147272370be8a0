package engine

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

// Each folded line names its function and revision once: the line's own
// when the child wrote them (a shared process, about one of its
// revisions), else the process's; a line about a shared or warm-pool
// process itself names none, rather than empty ones.
func TestFoldLabelsEachLineOnce(t *testing.T) {
	dedicated := &Process{pid: 11}
	dedicated.labels.Store(&[2]string{"fraud", "fraud-00001"})
	shared := &Process{pid: 12} // a shared process: no labels of its own
	for _, c := range []struct {
		name, line string
		in         *Process
		fn, rev    string // "" : no such attribute
	}{
		{"shared, about a revision", `{"level":"INFO","msg":"revision loaded","function":"recommend","revision":"recommend-00001","sessions":2}`, shared, "recommend", "recommend-00001"},
		{"shared, about itself", `{"level":"INFO","msg":"ONNX Runtime initialised"}`, shared, "", ""},
		{"dedicated, unlabelled line", `{"level":"WARN","msg":"slow"}`, dedicated, "fraud", "fraud-00001"},
		{"dedicated, labelled line", `{"level":"INFO","msg":"revision loaded","function":"fraud","revision":"fraud-00001"}`, dedicated, "fraud", "fraud-00001"},
		{"a plain print", `onnxruntime says hello`, shared, "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			e := &Engine{log: slog.New(slog.NewJSONHandler(&out, nil))}
			e.fold(c.in, strings.NewReader(c.line+"\n"), nil)
			line := strings.TrimSpace(out.String())
			for _, key := range []string{`"function":`, `"revision":`, `"pid":`} {
				want := 1
				if key != `"pid":` && c.fn == "" {
					want = 0
				}
				if n := strings.Count(line, key); n != want {
					t.Errorf("%s appears %d times, want %d: %s", key, n, want, line)
				}
			}
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatal(err)
			}
			if c.fn != "" && (rec["function"] != c.fn || rec["revision"] != c.rev) {
				t.Errorf("labelled %v/%v, want %s/%s: %s", rec["function"], rec["revision"], c.fn, c.rev, line)
			}
		})
	}
}

package server

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/pilotlight/pilotlight/functions"
)

func TestCheckJSON(t *testing.T) {
	cases := []struct {
		name, body string
		bad        string
	}{
		{"plain", `{"a": 1, "b": [1, 2, {"a": 3}], "c": {"a": "x,y\"z"}}`, ""},
		{"same key in sibling objects", `[{"a":1},{"a":2}]`, ""},
		{"duplicate key", `{"amount": 1, "amount": 2}`, "duplicate key"},
		{"duplicate nested", `{"x": {"k": 1, "k": 2}}`, "duplicate key"},
		{"value equal to key is fine", `{"a": "a"}`, ""},
		{"invalid UTF-8", "{\"a\": \"\xff\xfe\"}", "UTF-8"},
		{"deep", strings.Repeat("[", 65) + strings.Repeat("]", 65), "nested"},
		{"not deep enough to refuse", strings.Repeat("[", 64) + strings.Repeat("]", 64), ""},
		{"escaped quote in key", `{"a\"b": 1, "c": 2}`, ""},
		{"key repeated after a nested object", `{"a": {"a": 1}, "a": 2}`, "duplicate key"},
		{"inner keys are not the outer object's", `{"a": {"b": 1}, "b": 2}`, ""},
		{"many distinct keys", manyKeys(40, ""), ""},
		{"duplicate past the one-by-one comparison", manyKeys(40, "k3"), "duplicate key"},
		{"duplicate at the comparison's edge", manyKeys(smallObject, "k0"), "duplicate key"},
		{"deep objects, same key at each level", strings.Repeat(`{"k": `, 30) + "1" + strings.Repeat("}", 30), ""},
		{"duplicate deep down", strings.Repeat(`{"k": `, 30) + `{"x": 1, "x": 2}` + strings.Repeat("}", 30), "duplicate key"},
	}
	for _, tc := range cases {
		err := checkJSON([]byte(tc.body))
		var br *functions.BadRequest
		switch {
		case tc.bad == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.bad != "" && (err == nil || !errors.As(err, &br) || !strings.Contains(err.Error(), tc.bad)):
			t.Errorf("%s: %v, want a BadRequest mentioning %q", tc.name, err, tc.bad)
		}
	}
}

// manyKeys is an object with n distinct keys k0..k(n-1), then dup as one
// more key when it is not "".
func manyKeys(n int, dup string) string {
	var b strings.Builder
	b.WriteString("{")
	for i := range n {
		fmt.Fprintf(&b, `"k%d": %d, `, i, i)
	}
	if dup != "" {
		fmt.Fprintf(&b, `%q: 0, `, dup)
	}
	b.WriteString(`"end": 0}`)
	return b.String()
}

// An ordinary request body is checked without allocating.
func TestCheckJSONAllocatesNothing(t *testing.T) {
	body := []byte(`{"id": "r1", "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}], "parameters": {"a": 1}}`)
	if n := testing.AllocsPerRun(100, func() { _ = checkJSON(body) }); n != 0 {
		t.Fatalf("checkJSON allocates %v times per body; want 0", n)
	}
}

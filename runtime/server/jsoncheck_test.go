package server

import (
	"errors"
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

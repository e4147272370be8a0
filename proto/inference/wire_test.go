package inference

import (
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

func TestParseTimeout(t *testing.T) {
	for v, want := range map[string]time.Duration{"100m": 100 * time.Millisecond, "5S": 5 * time.Second, "1H": time.Hour, "7u": 7 * time.Microsecond, "99999999n": 99999999} {
		if d, ok := ParseTimeout(v); !ok || d != want {
			t.Errorf("ParseTimeout(%q) = %v %v, want %v", v, d, ok, want)
		}
	}
	for _, v := range []string{"", "5", "S", "5s", "-1S", "123456789S", "1.5S"} {
		if d, ok := ParseTimeout(v); ok {
			t.Errorf("ParseTimeout(%q) = %v, want refused", v, d)
		}
	}
}

func TestWriteStatusEncodesTheMessage(t *testing.T) {
	w := httptest.NewRecorder()
	WriteStatus(w, codes.InvalidArgument, "input \"x\": 100% wrong\n")
	res := w.Result()
	if got := res.Trailer.Get("Grpc-Status"); got != "3" {
		t.Errorf("grpc-status trailer = %q", got)
	}
	if got := res.Trailer.Get("Grpc-Message"); got != `input "x": 100%25 wrong%0A` {
		t.Errorf("grpc-message = %q", got)
	}
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/grpc" {
		t.Errorf("status %d, content-type %q", w.Code, w.Header().Get("Content-Type"))
	}
}

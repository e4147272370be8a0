package functionstest

import (
	"errors"
	"strings"
	"testing"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/functions/tensor"
)

// Runner runs a model: an ONNX Runtime session (runtime/ort.Session).
type Runner interface {
	Run(inputs []*tensor.Tensor) (map[string]*tensor.Tensor, error)
}

// Invoke is a request's whole way through a function, as the runtime
// takes it: h decodes body, s runs the model, the invocation encodes the
// answer, which Invoke returns.
func Invoke(t testing.TB, h functions.Handler, s Runner, body string) any {
	t.Helper()
	inv, err := h.Decode([]byte(body))
	if err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	out, err := s.Run(inv.Inputs)
	if err != nil {
		t.Fatalf("run %s: %v", body, err)
	}
	resp, err := inv.Encode(out)
	if err != nil {
		t.Fatalf("encode %s: %v", body, err)
	}
	return resp
}

// RejectsBadRequest fails unless h refuses body with a *functions.BadRequest
// whose message contains want (the runtime answers it with 400 and that
// message).
func RejectsBadRequest(t testing.TB, h functions.Handler, body, want string) {
	t.Helper()
	inv, err := h.Decode([]byte(body))
	var bad *functions.BadRequest
	if !errors.As(err, &bad) {
		t.Fatalf("Decode(%s) = %v, %v; want *functions.BadRequest", body, inv, err)
	}
	if !strings.Contains(bad.Msg, want) {
		t.Fatalf("error %q does not mention %q", bad.Msg, want)
	}
}

// DecodeOrBadRequest is Decode as a fuzz target sees it: the invocation
// when h accepts body, nil when h refuses it with a *functions.BadRequest
// that says why; any other error fails the test.
func DecodeOrBadRequest(t testing.TB, h functions.Handler, body []byte) *functions.Invocation {
	t.Helper()
	inv, err := h.Decode(body)
	if err != nil {
		var bad *functions.BadRequest
		if !errors.As(err, &bad) || bad.Msg == "" {
			t.Fatalf("Decode error %T %v is not a *functions.BadRequest", err, err)
		}
		return nil
	}
	return inv
}

// LoadManifest loads the function in dir with its models, as the runtime
// does, and builds its handler (the function's package must be imported so
// its handler is registered).
func LoadManifest(t testing.TB, dir string) *functions.Manifest {
	t.Helper()
	m, err := functions.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if h, err := functions.NewHandler(m); err != nil || h == nil {
		t.Fatalf("NewHandler: %v, %v", h, err)
	}
	return m
}

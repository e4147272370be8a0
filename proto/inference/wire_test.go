package inference

import (
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
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

// TestReadModelCall reads the name, version and user_id parameter of a
// request message without decoding its tensors, as protobuf itself would.
func TestReadModelCall(t *testing.T) {
	for _, tt := range []struct {
		req  *ModelInferRequest
		want ModelCall
	}{
		{&ModelInferRequest{ModelName: "fraud", ModelVersion: "fraud-00002", Parameters: map[string]*InferParameter{
			"user_id": {ParameterChoice: &InferParameter_StringParam{StringParam: "u-7"}}}}, ModelCall{"fraud", "fraud-00002", "u-7"}},
		{&ModelInferRequest{ModelName: "recommend", Parameters: map[string]*InferParameter{
			"user_id": {ParameterChoice: &InferParameter_Int64Param{Int64Param: 42}}, "other": {ParameterChoice: &InferParameter_StringParam{StringParam: "x"}}},
			RawInputContents: [][]byte{make([]byte, 64)}}, ModelCall{"recommend", "", "42"}},
		{&ModelInferRequest{}, ModelCall{}},
	} {
		b, err := proto.Marshal(tt.req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ReadModelCall(b)
		if err != nil || got != tt.want {
			t.Errorf("ReadModelCall = %+v, %v; want %+v", got, err, tt.want)
		}
	}
	if _, err := ReadModelCall([]byte{0x0a, 0x05, 'a'}); err == nil {
		t.Error("a truncated name was read")
	}
}

// TestDecodeMessageUndoesWriteStatus: what WriteStatus percent-encodes
// comes back whole, and a stray '%' stays as it is.
func TestDecodeMessageUndoesWriteStatus(t *testing.T) {
	for _, msg := range []string{"plain", "100% sure", "naïve\nline", "%zz", "ends with %", "%4"} {
		if got := DecodeMessage(encodeMessage(msg)); got != msg {
			t.Errorf("DecodeMessage(encodeMessage(%q)) = %q", msg, got)
		}
	}
	if got := DecodeMessage("50%zz%2"); got != "50%zz%2" {
		t.Errorf("stray percent signs: %q", got)
	}
}

package rollout

import (
	"encoding/binary"
	"math"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pilotlight/pilotlight/functions"
	_ "github.com/pilotlight/pilotlight/functions/all"
	pb "github.com/pilotlight/pilotlight/proto/inference"
)

// TestCompare: each handler's answers compare in the protocol they were
// sent in; an answer that cannot be read is an error (incomparable), never
// a disagreement.
func TestCompare(t *testing.T) {
	const (
		serving  = `{"results":[{"fraud_probability":0.91,"decision":"block","top_features":[]}]}`
		inverted = `{"results":[{"fraud_probability":0.09,"decision":"approve","top_features":[]}]}`
	)
	tests := []struct {
		handler string
		proto   protocol
		a, b    string
		agree   float64
		delta   float64
		err     bool
	}{
		{"fraud", protocolFunction, serving, serving, 1, 0, false},
		{"fraud", protocolFunction, serving, inverted, 0, 0.82, false},
		{"fraud", protocolFunction, `{"results":[{"fraud_probability":0.5,"decision":"review"},{"fraud_probability":0.1,"decision":"approve"}]}`,
			`{"results":[{"fraud_probability":0.6,"decision":"review"},{"fraud_probability":0.9,"decision":"block"}]}`, 0.5, 0.45, false},
		{"fraud", protocolFunction, serving, `{"results":[]}`, 0, 0, true},
		{"fraud", protocolFunction, `{"fraud_probability":0.2,"decision":"approve","top_features":[]}`, `{"fraud_probability":0.85,"decision":"block"}`, 0, 0.65, false},
		{"fraud", protocolFunction, `{"fraud_probability":0.2,"decision":"approve"}`, `{"decision":"approve"}`, 0, 0, true},
		// V2 answers: the decision at the handler's thresholds on "probability".
		{"fraud", protocolV2REST, `{"model_name":"fraud","outputs":[{"name":"probability","datatype":"FP32","shape":[2,1],"data":[0.91,0.2]},{"name":"contributions","datatype":"FP32","shape":[2,1],"data":[1,2]}]}`,
			`{"model_name":"fraud","outputs":[{"name":"probability","datatype":"FP32","shape":[2,1],"data":[0.85,0.35]}]}`, 0.5, 0.105, false},
		{"fraud", protocolV2REST, `{"outputs":[{"name":"probability","datatype":"FP32","shape":[1,1],"data":[[0.91]]}]}`,
			`{"outputs":[{"name":"probability","datatype":"FP32","shape":[1,1],"data":[[0.09]]}]}`, 0, 0.82, false},
		{"fraud", protocolV2REST, `{"outputs":[{"name":"probability","datatype":"FP32","shape":[1,1],"data":[0.91]}]}`, `{"error":"oops"}`, 0, 0, true},
		{"fraud", protocolV2REST, `{"outputs":[{"name":"probability","datatype":"FP32","shape":[1,1],"data":[0.91]}]}`, `{"outputs":[{"name":"logit","datatype":"FP32","shape":[1,1],"data":[0.91]}]}`, 0, 0, true},
		{"recommend", protocolFunction, `{"user_id":1,"items":[{"item_id":1},{"item_id":2},{"item_id":3},{"item_id":4}]}`,
			`{"user_id":1,"items":[{"item_id":4},{"item_id":2},{"item_id":9},{"item_id":8}]}`, 0.5, 0.5, false},
		{"recommend", protocolV2REST, `{"outputs":[{"name":"items","datatype":"INT64","shape":[1,4],"data":[1,2,3,4]},{"name":"scores","datatype":"FP32","shape":[1,4],"data":[4,3,2,1]}]}`,
			`{"outputs":[{"name":"items","datatype":"INT64","shape":[1,4],"data":[4,2,9,8]},{"name":"scores","datatype":"FP32","shape":[1,4],"data":[4,3,2,1]}]}`, 0.5, 0.5, false},
		{"tensor", protocolV2REST, `{"outputs":[{"name":"y","shape":[1,2],"data":[0.5,1.5]}]}`, `{"outputs":[{"name":"y","shape":[1,2],"data":[0.50001,1.5]}]}`, 1, 0.00001, false},
		{"tensor", protocolV2REST, `{"outputs":[{"name":"y","shape":[1,2],"data":[0.5,1.5]}]}`, `{"outputs":[{"name":"y","shape":[1,2],"data":[0.5,2.25]}]}`, 0, 0.75, false},
		{"tensor", protocolV2REST, `{"outputs":[{"name":"y","shape":[1,2],"data":[true,false]}]}`, `{"outputs":[{"name":"y","shape":[1,2],"data":[true,false]}]}`, 1, 0, false},
		{"tensor", protocolV2REST, `{"outputs":[{"name":"y","shape":[1,2],"data":[0.5,1.5]}]}`, `not json`, 0, 0, true},
		{"tensor", protocolFunction, `{"a":1}`, `{"a":1}`, 1, 0, false},
	}
	for _, tt := range tests {
		m := &functions.Manifest{Name: tt.handler, Handler: tt.handler}
		c, err := compare(functions.ComparerFor(m), tt.proto, []byte(tt.a), []byte(tt.b))
		if (err != nil) != tt.err {
			t.Errorf("%s %s: err %v", tt.handler, tt.proto, err)
			continue
		}
		if !tt.err && (math.Abs(c.Agreement-tt.agree) > 1e-6 || math.Abs(c.Delta-tt.delta) > 1e-6) {
			t.Errorf("%s %s: %s vs %s: %+v, want agreement %v delta %v", tt.handler, tt.proto, tt.a, tt.b, c, tt.agree, tt.delta)
		}
	}
}

// TestMillis: latencies in decisions read as a person would write them.
func TestMillis(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{
		{24349999 * time.Nanosecond, "24.3 ms"},
		{500 * time.Millisecond, "500 ms"},
		{1250 * time.Millisecond, "1250 ms"},
		{3 * time.Millisecond, "3.00 ms"},
		{512 * time.Microsecond, "0.512 ms"},
		{0, "0.000 ms"},
	} {
		if got := Millis(tt.d); got != tt.want {
			t.Errorf("Millis(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

// TestCompareGRPC: gRPC answers compare by their outputs, typed contents or
// raw little-endian bytes alike; a message that is not a ModelInferResponse
// is incomparable.
func TestCompareGRPC(t *testing.T) {
	frame := func(m *pb.ModelInferResponse) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		hdr := make([]byte, pb.FrameHeaderBytes)
		binary.BigEndian.PutUint32(hdr[1:], uint32(len(b)))
		return append(hdr, b...)
	}
	typed := func(ps ...float32) []byte {
		return frame(&pb.ModelInferResponse{Outputs: []*pb.ModelInferResponse_InferOutputTensor{{Name: "probability", Datatype: "FP32",
			Shape: []int64{int64(len(ps)), 1}, Contents: &pb.InferTensorContents{Fp32Contents: ps}}}})
	}
	raw := func(ps ...float32) []byte {
		b := make([]byte, 4*len(ps))
		for i, p := range ps {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(p))
		}
		return frame(&pb.ModelInferResponse{Outputs: []*pb.ModelInferResponse_InferOutputTensor{{Name: "probability", Datatype: "FP32",
			Shape: []int64{int64(len(ps)), 1}}}, RawOutputContents: [][]byte{b}})
	}
	fraudC := functions.ComparerFor(&functions.Manifest{Name: "fraud", Handler: "fraud"})
	for _, tt := range []struct {
		name         string
		a, b         []byte
		agree, delta float64
		err          bool
	}{
		{"typed, equal", typed(0.91, 0.2), typed(0.91, 0.2), 1, 0, false},
		{"raw against typed, one decision flipped", raw(0.91, 0.2), typed(0.91, 0.85), 0.5, 0.325, false},
		{"inverted", raw(0.91), raw(0.09), 0, 0.82, false},
		{"not a message", typed(0.5), []byte("{}"), 0, 0, true},
		{"no outputs", typed(0.5), frame(&pb.ModelInferResponse{}), 0, 0, true},
	} {
		c, err := compare(fraudC, protocolV2GRPC, tt.a, tt.b)
		if (err != nil) != tt.err {
			t.Errorf("%s: err %v", tt.name, err)
			continue
		}
		if !tt.err && (math.Abs(c.Agreement-tt.agree) > 1e-6 || math.Abs(c.Delta-tt.delta) > 1e-6) {
			t.Errorf("%s: %+v, want agreement %v delta %v", tt.name, c, tt.agree, tt.delta)
		}
	}
}

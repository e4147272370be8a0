package server

import (
	"reflect"
	"testing"

	"github.com/pilotlight/pilotlight/functions/tensor"
)

// FuzzDataRoundTrip feeds arbitrary V2 "data" to the decoder of every
// datatype: it must never panic, and whatever it accepts must survive the
// trip the runtime makes with an answer (written as JSON, read back) with
// the same values, and the same bytes through gRPC's raw layout.
func FuzzDataRoundTrip(f *testing.F) {
	for _, seed := range []struct {
		dt   uint8
		n    uint8
		data string
	}{
		{0, 2, `[0.5, -1]`}, {1, 2, `[3.140625, 1e38]`}, {2, 1, `16000`}, {4, 3, `[-128, 0, 127]`},
		{5, 2, `[[-32768], [32767]]`}, {8, 2, `[0, 255]`}, {11, 1, `[18446744073709551615]`},
		{12, 2, `[true, false]`}, {13, 2, `["héllo", ""]`}, {0, 1, `[65504]`}, {0, 1, `[70000]`},
		{1, 1, `[1e39]`}, {4, 1, `[1.0]`}, {8, 1, `[-1]`},
	} {
		f.Add(seed.dt, seed.n, []byte(seed.data))
	}
	f.Fuzz(func(t *testing.T, dtIndex, n uint8, raw []byte) {
		dt := tensor.Datatypes[int(dtIndex)%len(tensor.Datatypes)]
		want := int(n % 16)
		data, err := decodeData(raw, dt, want)
		if err != nil {
			return
		}
		shape := []int64{int64(want)}
		if want == 1 {
			shape = []int64{} // a scalar
		}
		in := &tensor.Tensor{Name: "x", Datatype: dt, Shape: shape, Data: data}
		if err := in.Validate(); err != nil {
			t.Fatalf("%s %s accepted but invalid: %v", dt, raw, err)
		}
		enc := appendTensorJSON(nil, in)
		p := &v2parser{b: enc}
		var back []byte
		err = p.object(func(key string) error {
			if key == "data" {
				var err error
				back, err = p.span()
				return err
			}
			return p.skip(1)
		})
		if err != nil {
			t.Fatalf("%s: the answer %s does not parse: %v", dt, enc, err)
		}
		again, err := decodeData(back, dt, want)
		if err != nil || !reflect.DeepEqual(again, data) {
			t.Fatalf("%s %s: written as %s, read back as %v (%v), want %v", dt, raw, back, again, err, data)
		}
		if size := rawElementBytes(dt); size > 0 || dt == tensor.BYTES {
			fromRaw, err := decodeRaw(encodeRaw(in), dt, want)
			if err != nil || !reflect.DeepEqual(fromRaw, data) {
				t.Fatalf("%s %s: raw round trip gave %v (%v), want %v", dt, raw, fromRaw, err, data)
			}
		}
	})
}

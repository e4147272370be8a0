package tensor

import (
	"reflect"
	"testing"
)

// TestEveryDatatypeConcatsAndSplits: the batcher's two moves work on each
// datatype's Go slice, and Validate ties each slice to its datatype only.
func TestEveryDatatypeConcatsAndSplits(t *testing.T) {
	for _, dt := range Datatypes {
		a := &Tensor{Name: "x", Datatype: dt, Shape: []int64{1, 2}, Data: Zeros(dt, 2)}
		b := &Tensor{Name: "x", Datatype: dt, Shape: []int64{2, 2}, Data: Zeros(dt, 4)}
		if DatatypeOf(a.Data) != dt {
			t.Fatalf("%s: Zeros gave %T", dt, a.Data)
		}
		if err := a.Validate(); err != nil {
			t.Errorf("%s: %v", dt, err)
		}
		c, err := Concat([]*Tensor{a, b})
		if err != nil || c.Len() != 6 || !reflect.DeepEqual(c.Shape, []int64{3, 2}) || c.Validate() != nil {
			t.Errorf("%s: concat %+v, %v", dt, c, err)
			continue
		}
		if r := c.Rows(1, 3); r.Len() != 4 || !reflect.DeepEqual(r.Shape, []int64{2, 2}) || r.Validate() != nil {
			t.Errorf("%s: rows %+v", dt, r)
		}
		for _, other := range Datatypes {
			if other != dt {
				if err := (&Tensor{Name: "x", Datatype: other, Shape: []int64{1, 2}, Data: a.Data}).Validate(); err == nil {
					t.Errorf("%T validated as %s", a.Data, other)
				}
			}
		}
	}
	scalar := &Tensor{Name: "sr", Datatype: INT64, Shape: []int64{}, Data: []int64{16000}}
	if err := scalar.Validate(); err != nil {
		t.Errorf("a scalar holds one value: %v", err)
	}
	if _, err := Concat([]*Tensor{scalar, scalar}); err == nil {
		t.Error("scalars concatenated: they have no batch dimension")
	}
}

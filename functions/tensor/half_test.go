package tensor

import (
	"math"
	"testing"
)

func TestFloat16(t *testing.T) {
	for _, tc := range []struct {
		in   float32
		bits uint16
		back float32
	}{
		{0, 0x0000, 0},
		{1, 0x3c00, 1},
		{-2, 0xc000, -2},
		{0.5, 0x3800, 0.5},
		{65504, 0x7bff, 65504},
		{65520, 0x7c00, float32(math.Inf(1))}, // rounds past the largest half
		{1e-8, 0x0000, 0},                     // below half the smallest subnormal
		{5.960464477539063e-08, 0x0001, 5.960464477539063e-08}, // the smallest subnormal
		{6.103515625e-05, 0x0400, 6.103515625e-05},             // the smallest normal
		{1.0009765625, 0x3c01, 1.0009765625},
		{1.00048828125, 0x3c00, 1},           // a tie rounds to even (down)
		{1.00146484375, 0x3c02, 1.001953125}, // a tie rounds to even (up)
		{0.1, 0x2e66, 0.0999755859375},
	} {
		h := Float16From(tc.in)
		if uint16(h) != tc.bits {
			t.Errorf("Float16From(%v) = %#04x, want %#04x", tc.in, uint16(h), tc.bits)
		}
		if got := h.Float32(); got != tc.back {
			t.Errorf("Float16(%#04x).Float32() = %v, want %v", tc.bits, got, tc.back)
		}
	}
	if f := Float16From(float32(math.NaN())).Float32(); !math.IsNaN(float64(f)) {
		t.Errorf("NaN became %v", f)
	}
	// Every half value survives a round trip through float32.
	for b := range uint32(1 << 16) {
		h := Float16(b)
		f := h.Float32()
		if math.IsNaN(float64(f)) {
			continue
		}
		if back := Float16From(f); back != h {
			t.Fatalf("%#04x -> %v -> %#04x", b, f, uint16(back))
		}
	}
}

func TestBFloat16(t *testing.T) {
	for _, tc := range []struct {
		in   float32
		bits uint16
	}{{1, 0x3f80}, {-2, 0xc000}, {3.140625, 0x4049}, {1.00390625, 0x3f80}, {1.01171875, 0x3f82}} {
		if got := BFloat16From(tc.in); uint16(got) != tc.bits {
			t.Errorf("BFloat16From(%v) = %#04x, want %#04x", tc.in, uint16(got), tc.bits)
		}
	}
	for b := range uint32(1 << 16) {
		h := BFloat16(b)
		f := h.Float32()
		if math.IsNaN(float64(f)) {
			continue
		}
		if back := BFloat16From(f); back != h {
			t.Fatalf("%#04x -> %v -> %#04x", b, f, uint16(back))
		}
	}
}

package tensor

import "math"

// Float16 is an IEEE 754 half-precision number (ONNX FLOAT16, V2 FP16),
// held as its bits: ONNX Runtime reads and writes it as two little-endian bytes.
type Float16 uint16

// BFloat16 is a bfloat16 number (ONNX BFLOAT16, V2 BF16): the top half of a
// float32's bits.
type BFloat16 uint16

// Float16From rounds f to the nearest half-precision value (ties to even);
// beyond ±65504 it becomes ±Inf, as a cast in ONNX Runtime does.
func Float16From(f float32) Float16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant != 0 {
			return Float16(sign | 0x7e00) // NaN stays NaN
		}
		return Float16(sign | 0x7c00)
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return Float16(sign | 0x7c00)
	}
	if e <= 0 {
		// A subnormal half: value = m × 2^-24, with the implicit leading bit made explicit.
		shift := uint(14 - e)
		if shift > 24 {
			return Float16(sign)
		}
		m := mant | 0x800000
		r := m >> shift
		rem, half := m&(1<<shift-1), uint32(1)<<(shift-1)
		if rem > half || (rem == half && r&1 == 1) {
			r++
		}
		return Float16(sign | uint16(r))
	}
	r := mant >> 13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && r&1 == 1) {
		r++ // a carry into the exponent is still the right value (up to Inf)
	}
	return Float16(uint32(sign) | uint32(e)<<10 + r)
}

// Float32 is h exactly.
func (h Float16) Float32() float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp == 0:
		f := float32(mant) / (1 << 24)
		if sign != 0 {
			f = -f
		}
		return f
	}
	return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
}

// BFloat16From rounds f to the nearest bfloat16 (ties to even).
func BFloat16From(f float32) BFloat16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		return BFloat16(b>>16 | 0x40) // NaN stays NaN
	}
	return BFloat16((b + 0x7fff + (b>>16)&1) >> 16)
}

// Float32 is b exactly.
func (b BFloat16) Float32() float32 { return math.Float32frombits(uint32(b) << 16) }

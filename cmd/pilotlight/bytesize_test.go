package main

import "testing"

func TestByteSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{"512Mi", 512 << 20, false}, {"2Gi", 2 << 30, false}, {"300MiB", 300 << 20, false}, {"1G", 1e9, false},
		{"1.5Gi", 3 << 29, false}, {"4096", 4096, false}, {"0", 0, false}, {"lots", 0, true}, {"-1Gi", 0, true}, {"Mi", 0, true},
	} {
		var b byteSize
		err := b.Set(tc.in)
		if (err != nil) != tc.bad || (!tc.bad && int64(b) != tc.want) {
			t.Errorf("Set(%q) = %d, %v; want %d (error: %v)", tc.in, b, err, tc.want, tc.bad)
		}
	}
}

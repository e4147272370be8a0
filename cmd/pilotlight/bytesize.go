package main

import (
	"fmt"
	"strconv"
	"strings"
)

// byteSize is a flag holding a size in bytes, written with a unit as
// Kubernetes writes memory: 512Mi, 2Gi, 1G, 300MiB, or plain bytes; 0
// means the default.
type byteSize int64

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12},
}

func (b *byteSize) Set(s string) error {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range byteUnits {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 {
		return fmt.Errorf("%q is not a size: write bytes, or a number with Ki, Mi, Gi (or K, M, G), e.g. 512Mi", s)
	}
	*b = byteSize(v * float64(mult))
	return nil
}

func (b *byteSize) String() string {
	if *b == 0 {
		return "0"
	}
	return fmt.Sprintf("%dMi", int64(*b)>>20)
}

func (b *byteSize) Type() string { return "size" }

package ort

import (
	"strings"
	"testing"
)

// The reason for a provider names what decided it.
func TestProviderReason(t *testing.T) {
	for _, c := range []struct{ requested, got, fallback, want string }{
		{ProviderCUDA, ProviderCUDA, "", "provider cuda: the CUDA provider loaded"},
		{"", ProviderCUDA, "", "provider auto: the CUDA provider loaded"},
		{ProviderCPU, ProviderCPU, "", "provider cpu in function.yaml"},
		{ProviderAuto, ProviderCPU, "cuda unavailable: no library", "cuda unavailable"},
	} {
		if got := ProviderReason(c.requested, c.got, c.fallback); !strings.Contains(got, c.want) {
			t.Errorf("ProviderReason(%q, %q, %q) = %q, want it to say %q", c.requested, c.got, c.fallback, got, c.want)
		}
	}
}

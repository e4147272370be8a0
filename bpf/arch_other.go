//go:build !386 && !amd64

package bpf

import (
	"errors"

	"github.com/cilium/ebpf"
)

// loadProbes stands in for the bpf2go loader on architectures the C program
// is not compiled for (it reads x86-64 syscall numbers and registers).
func loadProbes() (*ebpf.CollectionSpec, error) {
	return nil, errors.New("the probes are compiled for amd64 only")
}

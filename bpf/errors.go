package bpf

import (
	"errors"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// LoadError says why the probes could not be loaded, as one sentence a
// person can act on; Unwrap gives the underlying error.
type LoadError struct {
	Reason string
	Err    error
}

func (e *LoadError) Error() string { return e.Reason }
func (e *LoadError) Unwrap() error { return e.Err }

const (
	reasonPrivilege = "eBPF probes disabled: loading needs CAP_BPF and CAP_PERFMON (run as root or grant them)"
	reasonBTF       = "eBPF probes disabled: the kernel exposes no readable BTF at /sys/kernel/btf/vmlinux (use a kernel built with CONFIG_DEBUG_INFO_BTF=y)"
	reasonFeature   = "eBPF probes disabled: the kernel lacks a tracepoint or feature the probes need (use Linux 6.3 or newer with BTF, tp_btf and ring buffers)"
	reasonVerifier  = "eBPF probes disabled: the kernel's verifier rejected the probes (use Linux 6.3 or newer; the error log says which program)"
)

// loadError classifies err, raised while doing what, into a LoadError.
func loadError(what string, err error) error {
	reason := "eBPF probes disabled: " + what + " failed (" + firstLine(err) + ")"
	var ve *ebpf.VerifierError
	switch {
	// The verifier's rejections come as EACCES too: they are not a privilege problem.
	case errors.As(err, &ve):
		reason = reasonVerifier
	case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES):
		reason = reasonPrivilege
	case errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH):
		reason = reasonFeature
	}
	return &LoadError{Reason: reason, Err: err}
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

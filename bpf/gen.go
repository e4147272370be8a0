package bpf

// The C program is compiled by bpf2go into probes_x86_bpfel.o and its
// loader probes_x86_bpfel.go, both committed so `go build` needs no clang.
// Regenerate with ./hack/bpf-gen.sh (installs clang, llvm, libbpf-dev and
// bpftool when missing); ./hack/bpf-check.sh fails when they are stale.

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target amd64 -no-global-types probes probes.bpf.c -- -mcpu=v3 -Wall -Werror -Wno-unused-function

package bpf

// The C program is compiled by bpf2go into probes_x86_bpfel.o and its
// loader probes_x86_bpfel.go, both committed so `go build` needs no clang.
// bpf2go is pinned by its tool directive in go.mod (cilium/ebpf's version).
// Regenerate with ./hack/bpf-gen.sh (needs clang, llvm, libbpf-dev and
// bpftool: make deps); ./hack/bpf-check.sh fails when they are stale.

//go:generate go tool bpf2go -target amd64 -no-global-types probes probes.bpf.c -- -mcpu=v3 -Wall -Werror -Wno-unused-function

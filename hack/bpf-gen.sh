#!/usr/bin/env bash
# Regenerate the eBPF objects and Go bindings: bpf/*.bpf.c -> bpf2go ->
# bpf/*_bpfel.o and bpf/*_bpfel.go (committed, so `go build` needs no clang).
#
#   ./hack/bpf-gen.sh             regenerate the objects and bindings
#   ./hack/bpf-gen.sh --vmlinux   also regenerate bpf/vmlinux.h from this kernel's BTF
#   ./hack/bpf-gen.sh --deps      only check that the tools are there
#
# Needs Debian's clang, llvm (llvm-strip), libbpf-dev and bpftool (listed in
# hack/deps/bpf.apt; `make deps` installs them); when one is missing it says
# which and stops. The committed objects are built with Debian 12's clang 14;
# another clang produces different bytes (./hack/bpf-check.sh would say so).
set -euo pipefail
cd "$(dirname "$0")/.."

check_deps() {
	local need=()
	command -v clang >/dev/null || need+=(clang)
	command -v llvm-strip >/dev/null || need+=(llvm)
	[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
	command -v bpftool >/dev/null || [ -x /usr/sbin/bpftool ] || need+=(bpftool)
	[ ${#need[@]} -eq 0 ] && return 0
	echo "bpf-gen: missing ${need[*]}: run 'apt-get install ${need[*]}' (or ./hack/install-deps.sh, which installs everything in hack/deps/*.apt)" >&2
	exit 1
}

check_deps
case "${1:-}" in
--deps) exit 0 ;;
--vmlinux)
	bpftool=$(command -v bpftool || echo /usr/sbin/bpftool)
	"$bpftool" btf dump file /sys/kernel/btf/vmlinux format c >bpf/vmlinux.h.tmp
	mv bpf/vmlinux.h.tmp bpf/vmlinux.h
	echo "bpf-gen: bpf/vmlinux.h regenerated from $(uname -r)" >&2
	;;
"") ;;
*)
	echo "usage: $0 [--vmlinux|--deps]" >&2
	exit 2
	;;
esac

go generate ./bpf/
echo "bpf-gen: regenerated $(cd bpf && ls *_bpfel.o | tr '\n' ' ')" >&2

package server

import "syscall"

func setPriority(fd uintptr, prio int) {
	_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PRIORITY, prio)
}

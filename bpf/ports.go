package bpf

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// listeningPorts returns the TCP ports pid listens on, read from /proc: the
// socket inodes among its fds, matched against the LISTEN rows of its
// network namespace's tcp and tcp6 tables. Track uses it for instances
// that were already listening when they were tracked (BPF sees the
// listen(2) only of processes it already follows).
func listeningPorts(pid int) ([]uint32, error) {
	dir := fmt.Sprintf("/proc/%d", pid)
	fds, err := os.ReadDir(filepath.Join(dir, "fd"))
	if err != nil {
		return nil, fmt.Errorf("list fds of pid %d: %w", pid, err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if ino, ok := strings.CutPrefix(target, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	var ports []uint32
	for _, table := range []string{"tcp", "tcp6"} {
		found, err := listenRows(filepath.Join(dir, "net", table), inodes)
		if err != nil && !os.IsNotExist(err) {
			return ports, err
		}
		ports = append(ports, found...)
	}
	return ports, nil
}

// tcpListen is the st column of a LISTEN row in /proc/net/tcp.
const tcpListen = "0A"

func listenRows(path string, inodes map[string]bool) ([]uint32, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ports []uint32
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		cols := strings.Fields(sc.Text())
		if len(cols) < 10 || cols[3] != tcpListen || !inodes[cols[9]] {
			continue
		}
		_, portHex, ok := strings.Cut(cols[1], ":")
		if !ok {
			continue
		}
		port, err := strconv.ParseUint(portHex, 16, 16)
		if err != nil {
			return ports, fmt.Errorf("%s: bad local address %q", path, cols[1])
		}
		ports = append(ports, uint32(port))
	}
	return ports, sc.Err()
}

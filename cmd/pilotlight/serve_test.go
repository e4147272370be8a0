package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/internal/bench"
	"github.com/pilotlight/pilotlight/internal/testbin"
)

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+2:])[0] != "Z"
}

// startServe runs `pilotlight serve` on a free port and returns it once it listens.
func startServe(t *testing.T, bin string, args ...string) (*exec.Cmd, string) {
	t.Helper()
	root, _ := filepath.Abs("../..")
	cmd := exec.Command(bin, append([]string{"serve", "--dev", "--addr", "127.0.0.1:0", "--functions", filepath.Join(root, "functions")}, args...)...)
	cmd.Dir = root
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = io.Discard
	if testing.Verbose() {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("serve printed no listening line: %v", err)
	}
	go io.Copy(io.Discard, stdout)
	f := strings.Fields(line)
	for _, w := range f {
		if strings.HasPrefix(w, "http://") {
			return cmd, w
		}
	}
	t.Fatalf("no address in %q", line)
	return nil, ""
}

func TestServeLeavesNoOrphans(t *testing.T) {
	bin := testbin.Pilotlight(t)
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
	}{{"SIGTERM", syscall.SIGTERM}, {"SIGINT", syscall.SIGINT}, {"SIGKILL", syscall.SIGKILL}} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, url := startServe(t, bin, "--pool-size", "2")
			body := `{"inputs":[{"name":"input_vectors","shape":[1,10],"datatype":"FP32","data":[1,2,3,4,5,6,7,8,9,10]}]}`
			resp, err := http.Post(url+"/v2/models/example-tensor/infer", "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("infer through serve: %d", resp.StatusCode)
			}
			// One specialised instance plus the refilled pool of two.
			deadline := time.Now().Add(20 * time.Second)
			var kids []int
			for time.Now().Before(deadline) {
				if kids = bench.Children(cmd.Process.Pid); len(kids) >= 3 {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if len(kids) < 3 {
				t.Fatalf("serve has %d children, want an instance and 2 pool processes", len(kids))
			}
			if err := cmd.Process.Signal(tc.sig); err != nil {
				t.Fatal(err)
			}
			waited := make(chan error, 1)
			go func() { waited <- cmd.Wait() }()
			select {
			case err := <-waited:
				if tc.sig != syscall.SIGKILL && err != nil {
					t.Errorf("serve exited with %v after %s, want a clean exit", err, tc.name)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("serve did not exit within 30 s of %s", tc.name)
			}
			deadline = time.Now().Add(10 * time.Second)
			for _, pid := range kids {
				for alive(pid) && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond)
				}
				if alive(pid) {
					t.Errorf("child %d outlived serve after %s", pid, tc.name)
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		})
	}
}

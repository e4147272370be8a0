// Package bench measures the platform as a user would see it: real
// `pilotlight serve` and pilotlight-runtime processes on loopback, driven
// by the loadgen package, with the figures README quotes (instance
// throughput, start time, scale-from-zero latency, router hop, load-step
// reaction, memory). `make bench` runs it through `pilotlight bench`.
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pilotlight/pilotlight/internal/listener"
	"github.com/pilotlight/pilotlight/internal/procmem"
)

// Proc is a pilotlight child process started by a benchmark.
type Proc struct {
	Cmd  *exec.Cmd
	Addr string // host:port it listens on
	// Started is when the process was started (before exec).
	Started time.Time
}

// Stop sends SIGTERM and waits (SIGKILL after 10 s).
func (p *Proc) Stop() {
	if p == nil || p.Cmd.Process == nil {
		return
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.Cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.Cmd.Process.Kill()
		<-done
	}
}

// Pid of the process.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// start runs bin with args and waits for a line starting with prefix, whose
// next field is the address.
func start(bin string, args []string, prefix string, logTo io.Writer) (*Proc, error) {
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = logTo
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p := &Proc{Cmd: cmd, Started: time.Now()}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, prefix); i >= 0 {
			f := strings.Fields(line[i+len(prefix):])
			if len(f) > 0 {
				p.Addr = strings.TrimSuffix(strings.TrimPrefix(f[0], "http://"), "/")
			}
			go io.Copy(io.Discard, out)
			return p, nil
		}
	}
	p.Stop()
	return nil, fmt.Errorf("%s %v exited before printing %q", bin, args, prefix)
}

// RuntimeBeside is the pilotlight-runtime executable beside the pilotlight
// binary bin (make build puts them in one folder).
func RuntimeBeside(bin string) string {
	return filepath.Join(filepath.Dir(bin), listener.RuntimeBinary)
}

// StartRuntime runs one instance of a revision on a free loopback port;
// bin is the pilotlight-runtime executable.
func StartRuntime(bin, fnDir, revision string, logTo io.Writer) (*Proc, error) {
	return start(bin, []string{"--function", fnDir, "--revision", revision, "--listen", "127.0.0.1", "--port", "0"}, listener.ReadyPrefix, logTo)
}

// StartServe runs the platform on a free loopback port.
func StartServe(bin string, args []string, logTo io.Writer) (*Proc, error) {
	return start(bin, append([]string{"serve", "--dev", "--addr", "127.0.0.1:0"}, args...), "listening on ", logTo)
}

// WaitReady polls url until it answers 200.
func WaitReady(ctx context.Context, url string) error {
	c := &http.Client{Timeout: time.Second}
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w", url, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// Children lists the live (not zombie) child pids of pid from /proc: any of
// its threads may have forked them, so /proc/pid/task/*/children would miss some.
func Children(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the command name (which may hold spaces) start after ") ".
		s := string(b)
		rest := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(rest) > 1 && rest[1] == strconv.Itoa(pid) && rest[0] != "Z" {
			out = append(out, child)
		}
	}
	return out
}

// RSS is a process's resident set size in bytes (from /proc; 0 for no pid).
func RSS(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	return procmem.RSS(pid)
}

// Admin is the part of GET /admin/functions the benchmarks read.
type Admin struct {
	Functions []struct {
		Name      string `json:"name"`
		Revisions []struct {
			Name      string `json:"name"`
			Queued    int    `json:"queued"`
			Instances []struct {
				PID      int    `json:"pid"`
				Port     int    `json:"port"`
				State    string `json:"state"`
				Inflight int    `json:"inflight"`
			} `json:"instances"`
			LastCold *struct {
				PID     int    `json:"pid"`
				Preload string `json:"preload"`
			} `json:"last_cold_start"`
		} `json:"revisions"`
	} `json:"functions"`
	WarmPool []struct {
		PID     int `json:"pid"`
		Preload *struct {
			Revision string `json:"revision"`
			State    string `json:"state"`
		} `json:"preload"`
	} `json:"warm_pool"`
}

// lastPreload is how the revision's latest cold start used the warm
// pool's pre-load ("" when it had none) and that start's pid.
func (a *Admin) lastPreload(function, revision string) (string, int) {
	for _, f := range a.Functions {
		for _, r := range f.Revisions {
			if f.Name == function && r.Name == revision && r.LastCold != nil {
				return r.LastCold.Preload, r.LastCold.PID
			}
		}
	}
	return "", 0
}

// preloaded says an idle pool process holds revision's sessions, built.
func (a *Admin) preloaded(revision string) bool {
	for _, p := range a.WarmPool {
		if p.Preload != nil && p.Preload.Revision == revision && p.Preload.State == "ready" {
			return true
		}
	}
	return false
}

// GetAdmin reads the router's admin view.
func GetAdmin(base string) (*Admin, error) {
	resp, err := http.Get(base + "/admin/functions")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var a Admin
	return &a, json.NewDecoder(resp.Body).Decode(&a)
}

// OneInstance waits (up to 30 s) until the router's admin view lists
// exactly one instance of the revision, ready, and returns its pid and
// port. A figure pinned to one instance measures that one; a start that
// failed and was replaced leaves the failed one listed until it exits.
func OneInstance(ctx context.Context, base, function, revision string) (pid, port int, err error) {
	var pids, ports []int
	var ready int
	err = waitFor(ctx, fmt.Sprintf("one ready instance of %s", revision), func() (bool, error) {
		a, err := GetAdmin(base)
		if err != nil {
			return false, err
		}
		pids, ports, ready = a.Instances(function, revision)
		return len(pids) == 1 && ready == 1, nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("%w (admin lists %v, %d ready)", err, pids, ready)
	}
	return pids[0], ports[0], nil
}

// Instances lists (pid, port, state) of a revision's instances.
func (a *Admin) Instances(function, revision string) (pids, ports []int, ready int) {
	for _, f := range a.Functions {
		if f.Name != function {
			continue
		}
		for _, r := range f.Revisions {
			if r.Name != revision {
				continue
			}
			for _, in := range r.Instances {
				pids = append(pids, in.PID)
				ports = append(ports, in.Port)
				if in.State == "ready" {
					ready++
				}
			}
		}
	}
	return
}

// V2Body builds a valid V2 infer request for a model from its metadata:
// rows rows of small deterministic values (for INT64 inputs, zeros, which
// every embedding table accepts).
func V2Body(base, model string, rows int) ([]byte, error) {
	resp, err := http.Get(base + "/v2/models/" + model)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("metadata of %s: %s %s", model, resp.Status, b)
	}
	var md struct {
		Inputs []struct {
			Name     string  `json:"name"`
			Datatype string  `json:"datatype"`
			Shape    []int64 `json:"shape"`
		} `json:"inputs"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&md); err != nil {
		return nil, err
	}
	type input struct {
		Name     string  `json:"name"`
		Datatype string  `json:"datatype"`
		Shape    []int64 `json:"shape"`
		Data     []any   `json:"data"`
	}
	var req struct {
		Inputs []input `json:"inputs"`
	}
	for _, in := range md.Inputs {
		shape := append([]int64(nil), in.Shape...)
		n := 1
		for i, d := range shape {
			if d < 0 {
				if i == 0 {
					d = int64(rows)
				} else {
					d = 1
				}
				shape[i] = d
			}
			n *= int(d)
		}
		data := make([]any, n)
		for i := range data {
			switch in.Datatype {
			case "FP32", "FP64":
				data[i] = float64(i%7) * 0.25
			case "BOOL":
				data[i] = false
			case "BYTES":
				data[i] = ""
			default:
				data[i] = 0
			}
		}
		req.Inputs = append(req.Inputs, input{in.Name, in.Datatype, shape, data})
	}
	return json.Marshal(req)
}

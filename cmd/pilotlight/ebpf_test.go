package main

import (
	"bufio"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/internal/testbin"
)

// startServeAs runs serve --dev --ebpf, optionally as another user, and
// returns its URL and a copy of its log.
// syncLog collects a process's log lines as they come.
type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func startServeAs(t *testing.T, bin string, cred *syscall.Credential) (string, *syncLog) {
	t.Helper()
	root, _ := filepath.Abs("../..")
	cmd := exec.Command(bin, "serve", "--dev", "--ebpf", "--addr", "127.0.0.1:0", "--functions", filepath.Join(root, "functions"), "--pool-size", "1")
	cmd.Dir = root
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	log := &syncLog{}
	stderr, _ := cmd.StderrPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			log.mu.Lock()
			log.b.WriteString(sc.Text() + "\n")
			log.mu.Unlock()
		}
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-done
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("serve did not start: %v", err)
	}
	go io.Copy(io.Discard, stdout)
	for _, w := range strings.Fields(line) {
		if strings.HasPrefix(w, "http://") {
			return w, log
		}
	}
	t.Fatalf("no URL in %q", line)
	return "", nil
}

const fraudTx = `{"amount": 912.40, "avg_amount_30d": 85.0, "merchant_category": "electronics", "country": "BR", "home_country": "US", "hour": 3, "device_new": true, "tx_last_24h": 7}`

// TestServeWithEBPF scales fraud from zero through the real platform with
// the probes attached and finds the cold-start timeline and the kernel
// latency histograms for that revision.
func TestServeWithEBPF(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("eBPF probes need root (CAP_BPF and CAP_PERFMON); this test process is not root")
	}
	bin := testbin.Pilotlight(t)
	url, log := startServeAs(t, bin, nil)
	for i := 0; i < 20; i++ {
		req, _ := http.NewRequest(http.MethodPost, url+"/functions/fraud", strings.NewReader(fraudTx))
		req.Header.Set("Content-Type", "application/json")
		testbin.DoOK(t, nil, req)
	}
	var admin struct {
		Functions []struct {
			Name      string
			Revisions []struct {
				Name     string
				Timeline *struct {
					PID    int    `json:"pid"`
					Source string `json:"source"`
					Events []struct {
						Name     string  `json:"name"`
						OffsetMS float64 `json:"offset_ms"`
					} `json:"events"`
					Anatomy []struct {
						Phase      string             `json:"phase"`
						WallMS     float64            `json:"wall_ms"`
						StatesMS   map[string]float64 `json:"states_ms"`
						ModelBytes int64              `json:"model_bytes"`
					} `json:"anatomy"`
				} `json:"cold_start_timeline"`
				Instances []struct{ PID int }
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(url + "/admin/functions")
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(resp.Body).Decode(&admin)
		resp.Body.Close()
		var found bool
		for _, f := range admin.Functions {
			for _, r := range f.Revisions {
				if f.Name == "fraud" && r.Timeline != nil && len(r.Instances) > 0 {
					if r.Timeline.PID != r.Instances[0].PID {
						t.Fatalf("timeline pid %d, instance pid %d", r.Timeline.PID, r.Instances[0].PID)
					}
					// Kernel events follow exec in order; the request that
					// caused an exec start may arrive before the exec itself.
					names := map[string]bool{}
					prev := 0.0
					for _, e := range r.Timeline.Events {
						names[e.Name] = true
						if e.Name == "request_arrival" {
							continue
						}
						if e.OffsetMS < prev {
							t.Errorf("event %s at %v ms comes before an earlier event at %v ms", e.Name, e.OffsetMS, prev)
						}
						prev = e.OffsetMS
					}
					// The request reached the instance over its framed
					// socket (--ebpf changes no transport), and the
					// timeline still has its connection and answer.
					cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(r.Instances[0].PID) + "/cmdline")
					if err != nil || !strings.Contains(string(cmdline), "--socket") {
						t.Errorf("instance %d was not started with its framed socket (cmdline %q, %v)", r.Instances[0].PID, cmdline, err)
					}
					for _, want := range []string{"exec", "listen", "ready", "accept", "first_write"} {
						if !names[want] {
							t.Errorf("timeline lacks %s: %+v", want, r.Timeline.Events)
						}
					}
					// The anatomy adds up to the cold start, from exec (or
					// the warm-pool process's specialisation) to the
					// response, and saw the revision's model file read.
					at := map[string]float64{}
					for _, e := range r.Timeline.Events {
						at[e.Name] = e.OffsetMS
					}
					from := "exec"
					if r.Timeline.Source == "pool" {
						from = "specialise_start"
					}
					wall := at["first_write"] - at[from]
					var sum float64
					var modelBytes int64
					for _, ph := range r.Timeline.Anatomy {
						for _, v := range ph.StatesMS {
							sum += v
						}
						modelBytes += ph.ModelBytes
						t.Logf("%s %s %-22s wall %8.3f ms %v model bytes %d", r.Name, r.Timeline.Source, ph.Phase, ph.WallMS, ph.StatesMS, ph.ModelBytes)
					}
					if len(r.Timeline.Anatomy) == 0 || math.Abs(sum-wall) > 0.1*wall {
						t.Errorf("anatomy of %s adds up to %.3f ms, its cold start took %.3f ms: %+v", r.Name, sum, wall, r.Timeline.Anatomy)
					}
					model, err := os.Stat(filepath.Join("../../functions/fraud/models", r.Name+".onnx"))
					if err != nil {
						t.Fatal(err)
					}
					if modelBytes < model.Size() {
						t.Errorf("%s: %d bytes read from *.onnx during its cold start, the model has %d", r.Name, modelBytes, model.Size())
					}
					found = true
				}
			}
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no cold-start timeline for fraud in /admin/functions:\n%+v\nlog:\n%s", admin, log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	m := testbin.Scrape(t, url)
	for _, want := range []string{"pilotlight_bpf_enabled 1", `pilotlight_bpf_runqueue_delay_seconds_count{function="fraud"`,
		`pilotlight_bpf_socket_receive_queue_seconds_count{function="fraud"`, `pilotlight_bpf_cold_start_phase_seconds_count{function="fraud"`,
		`pilotlight_bpf_cold_start_time_seconds_count{function="fraud"`, `pilotlight_bpf_connections_total{direction="inbound",function="fraud",peer_class="router"`} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestServeWithoutBPFPrivilegeKeepsServing runs serve --ebpf as an
// unprivileged user: the probes cannot load, one line says why, the gauge
// says 0, and functions are served as usual.
func TestServeWithoutBPFPrivilegeKeepsServing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start serve as an unprivileged user")
	}
	bin := testbin.Pilotlight(t)
	// The test binaries' folder (testbin's, under the temporary directory)
	// must be reachable by the unprivileged user; its parent is /tmp.
	if err := os.Chmod(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	url, log := startServeAs(t, bin, &syscall.Credential{Uid: 65534, Gid: 65534})
	resp, err := http.Post(url+"/functions/fraud", "application/json", strings.NewReader(fraudTx))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("fraud without eBPF privilege: %d %s\n%s", resp.StatusCode, body, log.String())
	}
	if m := testbin.Scrape(t, url); !strings.Contains(m, "pilotlight_bpf_enabled 0") {
		t.Error("pilotlight_bpf_enabled is not 0")
	}
	// serve logs why before it listens; the log is read concurrently.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(log.String(), "eBPF probes disabled") {
		if time.Now().After(deadline) {
			t.Fatalf("no line saying why the probes are off:\n%s", log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

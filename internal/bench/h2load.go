package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	pb "github.com/pilotlight/pilotlight/proto/inference"
)

// h2load is the gRPC load generator: nghttp2's HTTP/2 benchmark, a C
// event loop, so the client takes little of the two cores and the path
// under test gets the rest (grpc-go's client took as much CPU as the
// router). Debian package nghttp2-client (hack/deps/bench.apt). A unary
// call is one POST with the length-prefixed message as its body; h2load
// sees only HTTP statuses, so a call answered with a gRPC error is told
// apart by its answer carrying no message: every successful answer to the
// same request has the same message length.
type h2load struct {
	bin string
	log io.Writer // h2load's output of a load with failures
}

func newH2load(log io.Writer) (*h2load, error) {
	bin, err := exec.LookPath("h2load")
	if err != nil {
		return nil, fmt.Errorf("h2load is not installed (Debian package nghttp2-client, listed in hack/deps/bench.apt; run hack/install-deps.sh)")
	}
	return &h2load{bin: bin, log: log}, nil
}

// h2loadConns and h2loadStreams make 32 calls in flight: 4 HTTP/2
// connections of 8 concurrent streams each, as a gRPC client multiplexes.
const (
	h2loadConns   = 4
	h2loadStreams = 8
)

// grpcCall is one unary call h2load repeats: the method's URL, the
// request message file, and the length of a successful answer's message.
type grpcCall struct {
	url       string
	file      string
	replySize int // bytes of DATA in one successful answer (prefix included)
}

// writeGRPCCall writes msg, length-prefixed, into dir for h2load -d.
func writeGRPCCall(dir, name string, msg []byte) (string, error) {
	b := make([]byte, pb.FrameHeaderBytes, pb.FrameHeaderBytes+len(msg))
	b[1], b[2], b[3], b[4] = byte(len(msg)>>24), byte(len(msg)>>16), byte(len(msg)>>8), byte(len(msg))
	f := filepath.Join(dir, name)
	return f, os.WriteFile(f, append(b, msg...), 0o644)
}

// h2loadResult is one load's outcome.
type h2loadResult struct {
	ok, failed int
	elapsed    time.Duration
	mean       time.Duration // mean time per call
}

func (r *h2loadResult) merge(o h2loadResult) {
	r.ok += o.ok
	r.failed += o.failed
	r.elapsed += o.elapsed
	r.mean += o.mean // summed over rounds; String divides
}

func (r *h2loadResult) rps() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.ok) / r.elapsed.Seconds()
}

var (
	h2loadFinished = regexp.MustCompile(`finished in ([0-9.]+)(s|ms)`)
	h2loadRequests = regexp.MustCompile(`requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	h2loadData     = regexp.MustCompile(`traffic: .*?, .*? headers .*?, [0-9.]+[KMG]?B \((\d+)\) data`)
	h2loadTime     = regexp.MustCompile(`time for request:\s+\S+\s+\S+\s+([0-9.]+)(us|ms|s)`)
)

// run repeats call for d at 32 in flight.
func (h *h2load) run(ctx context.Context, call grpcCall, d time.Duration) (h2loadResult, error) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	out, err := exec.CommandContext(ctx, h.bin, "-t1", "-c"+strconv.Itoa(h2loadConns), "-m"+strconv.Itoa(h2loadStreams),
		"-D", strconv.Itoa(secs), "-d", call.file,
		"-H", "content-type: application/grpc", "-H", "te: trailers", call.url).CombinedOutput()
	if err != nil {
		return h2loadResult{}, fmt.Errorf("h2load %s: %v: %s", call.url, err, out)
	}
	fin, req, data, tm := h2loadFinished.FindSubmatch(out), h2loadRequests.FindSubmatch(out), h2loadData.FindSubmatch(out), h2loadTime.FindSubmatch(out)
	if fin == nil || req == nil || data == nil || tm == nil {
		return h2loadResult{}, fmt.Errorf("h2load %s: unexpected output %q", call.url, out)
	}
	atoi := func(b []byte) int { n, _ := strconv.Atoi(string(b)); return n }
	unit := map[string]time.Duration{"s": time.Second, "ms": time.Millisecond, "us": time.Microsecond}
	f, _ := strconv.ParseFloat(string(fin[1]), 64)
	t, _ := strconv.ParseFloat(string(tm[1]), 64)
	succeeded := atoi(req[2])
	answered := atoi(data[1]) / call.replySize // calls that carried a message back: the rest were gRPC errors
	r := h2loadResult{ok: min(succeeded, answered), elapsed: time.Duration(f * float64(unit[string(fin[2])])), mean: time.Duration(t * float64(unit[string(tm[2])]))}
	r.failed = atoi(req[1]) - r.ok
	if r.failed > 0 {
		fmt.Fprintf(h.log, "bench grpc: %d of %d calls to %s failed (%d bytes of messages, %d per answer):\n%s\n", r.failed, atoi(req[1]), call.url, atoi(data[1]), call.replySize, out)
	}
	return r, nil
}

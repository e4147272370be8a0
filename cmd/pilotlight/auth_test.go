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
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/router/auth"
)

// TestServeAuthenticatesOutsideDevelopment runs serve without --dev: every
// function call needs a key allowed for that function, keys are rate
// limited, and /metrics and /admin are only on the admin listener.
func TestServeAuthenticatesOutsideDevelopment(t *testing.T) {
	bin := testbin.Pilotlight(t)
	client, _ := auth.NewKey()
	ops, _ := auth.NewKey()
	keysFile := filepath.Join(t.TempDir(), "keys.yaml")
	doc := fmt.Sprintf("keys:\n  - id: client\n    hash: %s\n    functions: [example-tensor]\n    rate: {rps: 0.001, burst: 3}\n  - id: ops\n    hash: %s\n    admin: true\n", auth.Sum(client), auth.Sum(ops))
	if err := os.WriteFile(keysFile, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	root, _ := filepath.Abs("../..")
	adminAddr := testbin.FreeAddr(t)
	cmd := exec.Command(bin, "serve", "--addr", "127.0.0.1:0", "--keys-file", keysFile, "--admin-addr", adminAddr, "--functions", filepath.Join(root, "functions"))
	cmd.Dir = root
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.Contains(line, "authentication on: 2 API keys") {
		t.Fatalf("serve without --dev: %q %v", line, err)
	}
	go io.Copy(io.Discard, stdout)
	base := ""
	for _, w := range strings.Fields(line) {
		if strings.HasPrefix(w, "http://") {
			base = w
		}
	}
	body := `{"inputs":[{"name":"input_vectors","shape":[1,10],"datatype":"FP32","data":[1,2,3,4,5,6,7,8,9,10]}]}`
	send := func(url, key string) (int, http.Header) {
		req, _ := http.NewRequest("POST", url, strings.NewReader(body))
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header
	}
	infer := base + "/v2/models/example-tensor/infer"
	if code, h := send(infer, ""); code != 401 || h.Get("WWW-Authenticate") == "" {
		t.Errorf("no key: %d, want 401 with WWW-Authenticate", code)
	}
	if code, _ := send(infer, "pl_not-a-real-key-but-long-enough-000000000000"); code != 401 {
		t.Errorf("wrong key: %d, want 401", code)
	}
	// More refusals than the burst: a 403 must not spend the key's tokens.
	for i := 0; i < 4; i++ {
		if code, _ := send(base+"/functions/fraud", client); code != 403 {
			t.Fatalf("key without fraud: %d, want 403", code)
		}
	}
	if code, _ := send(infer, ops); code != 403 {
		t.Errorf("admin key on a function it does not list: %d, want 403", code)
	}
	// rps 0.001 refills one token in 1000 s: exactly the burst of 3 passes,
	// then 429 with Retry-After.
	for i := 0; i < 3; i++ {
		if code, _ := send(infer, client); code != 200 {
			t.Fatalf("allowed key, request %d of its burst of 3: %d, want 200", i+1, code)
		}
	}
	if code, h := send(infer, client); code != 429 || h.Get("Retry-After") == "" {
		t.Errorf("a key past its burst of 3: %d (Retry-After %q), want 429 with Retry-After", code, h.Get("Retry-After"))
	}
	get := func(url, key string) int {
		req, _ := http.NewRequest("GET", url, nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(base+"/metrics", ops); code == 200 {
		t.Error("/metrics answered on the public listener")
	}
	deadline := time.Now().Add(5 * time.Second)
	for get("http://"+adminAddr+"/metrics", "") != 200 {
		if time.Now().After(deadline) {
			t.Fatal("/metrics not served on the admin listener")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code := get("http://"+adminAddr+"/admin/functions", ""); code != 401 {
		t.Errorf("admin listener /admin/functions without a key: %d, want 401", code)
	}
	if code := get("http://"+adminAddr+"/admin/functions", client); code != 403 {
		t.Errorf("admin listener /admin/functions with a non-admin key: %d, want 403", code)
	}
	if code := get("http://"+adminAddr+"/admin/functions", ops); code != 200 {
		t.Errorf("admin listener /admin/functions with the admin key: %d, want 200", code)
	}
	if code := get(base+"/healthz", ""); code != 200 {
		t.Errorf("/healthz must stay public for probes: %d", code)
	}
}

package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestDeployDryRunWithoutACluster: with no cluster configured anywhere, a
// dry run prints the steps an empty cluster would need and says so first,
// instead of client-go's "no configuration has been provided".
func TestDeployDryRunWithoutACluster(t *testing.T) {
	t.Setenv("KUBECONFIG", "")
	t.Setenv("HOME", t.TempDir())
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := newDeployCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs([]string{"fraud", "--dry-run",
		"--functions-dir", filepath.Join(root, "functions"), "--flags", filepath.Join(root, "config", "flags", "flags.json")})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("dry run without a cluster: %v", err)
	}
	first, rest, _ := strings.Cut(out.String(), "\n")
	if !strings.HasPrefix(first, "# dry run without a cluster") || !strings.Contains(first, "EMPTY cluster") {
		t.Errorf("first line %q does not say the plan is for an empty cluster", first)
	}
	for _, want := range []string{"# step: create fraud-00001 (dry run)", "# step: update fraud-00002 (dry run)", "kind: Service"} {
		if !strings.Contains(rest, want) {
			t.Errorf("dry run output lacks %q", want)
		}
	}

	// Without --dry-run the missing cluster is still an error.
	cmd = newDeployCmd()
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs([]string{"fraud", "--functions-dir", filepath.Join(root, "functions"), "--flags", filepath.Join(root, "config", "flags", "flags.json")})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "no cluster configured") {
		t.Errorf("deploy without a cluster: %v, want it refused naming the missing cluster", err)
	}
}

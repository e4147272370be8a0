package config

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"sigs.k8s.io/yaml"
)

const alertTestsFile = "monitoring/alerts.test.yaml"

// tool finds a Prometheus binary; CI installs it from hack/deps/monitoring.apt.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: install Debian's prometheus package (hack/deps/monitoring.apt; hack/install-deps.sh does it)", name)
	}
	return p
}

// writeRuleFile writes the PrometheusRule's groups as a plain Prometheus
// rule file, the format promtool and prometheus read.
func writeRuleFile(t *testing.T, dir string) (string, *prometheusRule) {
	t.Helper()
	rules := objectsOf[*prometheusRule](loadDocuments(t))
	if len(rules) != 1 {
		t.Fatalf("%d PrometheusRules; want 1", len(rules))
	}
	raw, err := yaml.Marshal(map[string]any{"groups": rules[0].Spec.Groups})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, rules[0]
}

// TestAlertsWithPromtool runs promtool's own checker and unit tests over
// every alert: each must have a case where it fires and one where it is silent.
func TestAlertsWithPromtool(t *testing.T) {
	promtool := tool(t, "promtool")
	dir := t.TempDir()
	rulesPath, pr := writeRuleFile(t, dir)
	if out, err := exec.Command(promtool, "check", "rules", rulesPath).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(alertTestsFile)
	if err != nil {
		t.Fatal(err)
	}
	var suite struct {
		Tests []struct {
			Name          string `json:"name"`
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(raw, &suite); err != nil {
		t.Fatal(err)
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range suite.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" && (!fires[r.Alert] || !silent[r.Alert]) {
				t.Errorf("alert %s: %s needs a case where it fires and one where it stays silent", r.Alert, alertTestsFile)
			}
		}
	}
	testPath := filepath.Join(dir, "alerts.test.yaml")
	if err := os.WriteFile(testPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(promtool, "test", "rules", "alerts.test.yaml")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

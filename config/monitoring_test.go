package config

import (
	"regexp"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Minimal Prometheus Operator types (monitoring.coreos.com/v1): only the
// fields this repository uses, so strict decoding rejects anything else. The
// operator's Go module is not a dependency; these follow its CRDs' field names.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector namespaceSelector    `json:"namespaceSelector"`
		Endpoints         []scrapeEndpoint     `json:"endpoints"`
	} `json:"spec"`
}

type podMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector            metav1.LabelSelector `json:"selector"`
		NamespaceSelector   namespaceSelector    `json:"namespaceSelector"`
		PodMetricsEndpoints []scrapeEndpoint     `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

type namespaceSelector struct {
	Any        bool     `json:"any,omitempty"`
	MatchNames []string `json:"matchNames,omitempty"`
}

type scrapeEndpoint struct {
	Port          string `json:"port"`
	Path          string `json:"path"`
	Interval      string `json:"interval"`
	ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
}

type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Groups []struct {
			Name     string `json:"name"`
			Interval string `json:"interval,omitempty"`
			Rules    []rule `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

type rule struct {
	Record      string            `json:"record,omitempty"`
	Alert       string            `json:"alert,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

var (
	promDuration = regexp.MustCompile(`^([0-9]+(ms|s|m|h|d|w|y))+$`)
	metricName   = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	// Identifiers in an expression that are metric or recorded-rule names.
	exprNames = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
)

func TestMonitoringScrapesTheRouter(t *testing.T) {
	docs := loadDocuments(t)
	sms := objectsOf[*serviceMonitor](docs)
	if len(sms) == 0 {
		t.Fatal("no ServiceMonitor")
	}
	for _, sm := range sms {
		if len(sm.Spec.Selector.MatchLabels) == 0 || len(sm.Spec.Endpoints) == 0 {
			t.Errorf("ServiceMonitor %s selects nothing or scrapes nothing", sm.Name)
		}
		for _, e := range append(sm.Spec.Endpoints, podEndpoints(objectsOf[*podMonitor](docs))...) {
			if e.Port == "" || !strings.HasPrefix(e.Path, "/") || !promDuration.MatchString(e.Interval) {
				t.Errorf("endpoint %+v: want a port name, an absolute path and a Prometheus duration", e)
			}
		}
	}
	if sms[0].Spec.Selector.MatchLabels["app.kubernetes.io/component"] != "router" {
		t.Errorf("ServiceMonitor %s does not select the router", sms[0].Name)
	}
}

func podEndpoints(pms []*podMonitor) []scrapeEndpoint {
	var out []scrapeEndpoint
	for _, p := range pms {
		out = append(out, p.Spec.PodMetricsEndpoints...)
	}
	return out
}

// TestPrometheusRulesCoverTheSLOs checks the SLO rules are well formed and
// built on the metrics the router exports.
func TestPrometheusRulesCoverTheSLOs(t *testing.T) {
	rules := objectsOf[*prometheusRule](loadDocuments(t))
	if len(rules) == 0 {
		t.Fatal("no PrometheusRule")
	}
	recorded := map[string]bool{}
	var all []rule
	for _, pr := range rules {
		for _, g := range pr.Spec.Groups {
			if g.Name == "" || (g.Interval != "" && !promDuration.MatchString(g.Interval)) {
				t.Errorf("%s: group %q: bad name or interval %q", pr.Name, g.Name, g.Interval)
			}
			for _, r := range g.Rules {
				all = append(all, r)
				if r.Record != "" {
					recorded[r.Record] = true
				}
			}
		}
	}
	usedMetrics := map[string]bool{}
	alerts := 0
	for _, r := range all {
		name := r.Record + r.Alert
		if (r.Record == "") == (r.Alert == "") {
			t.Errorf("rule %q: exactly one of record and alert", name)
		}
		if r.Record != "" && !metricName.MatchString(r.Record) {
			t.Errorf("record %q is not a valid metric name", r.Record)
		}
		if r.For != "" && !promDuration.MatchString(r.For) {
			t.Errorf("%s: for %q is not a Prometheus duration", name, r.For)
		}
		if err := balanced(r.Expr); err != "" {
			t.Errorf("%s: expr %s: %s", name, r.Expr, err)
		}
		for _, id := range exprNames.FindAllString(stripStrings(r.Expr), -1) {
			if strings.HasPrefix(id, "pilotlight_") {
				usedMetrics[strings.TrimSuffix(id, "_bucket")] = true
			}
			if strings.Contains(id, ":") && !recorded[id] {
				t.Errorf("%s uses %s, which no rule records", name, id)
			}
		}
		if r.Alert != "" {
			alerts++
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("alert %s: needs a severity label and a summary", r.Alert)
			}
		}
	}
	for _, m := range []string{"pilotlight_requests_total", "pilotlight_request_duration_seconds", "pilotlight_cold_start_duration_seconds"} {
		if !usedMetrics[m] {
			t.Errorf("no rule uses %s", m)
		}
	}
	if alerts < 3 {
		t.Errorf("%d alerts; want availability, latency and cold-start alerts", alerts)
	}
}

// balanced reports unbalanced brackets outside string literals.
func balanced(expr string) string {
	pairs := map[rune]rune{')': '(', ']': '[', '}': '{'}
	var stack []rune
	for _, c := range stripStrings(expr) {
		switch c {
		case '(', '[', '{':
			stack = append(stack, c)
		case ')', ']', '}':
			if len(stack) == 0 || stack[len(stack)-1] != pairs[c] {
				return "unbalanced " + string(c)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if len(stack) > 0 {
		return "unclosed " + string(stack)
	}
	return ""
}

var stringLiteral = regexp.MustCompile(`"(\\.|[^"\\])*"`)

func stripStrings(expr string) string { return stringLiteral.ReplaceAllString(expr, `""`) }

package engine_test

import (
	"os"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func readFile(p string) ([]byte, error) { return os.ReadFile(p) }
func itoa(i int) string                 { return strconv.Itoa(i) }

// counter finds the series of name whose labels include want.
func counter(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				if label(m, k) != v {
					continue metrics
				}
			}
			return constCounter(m.GetCounter().GetValue())
		}
	}
	return constCounter(0)
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func constCounter(v float64) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "value", Help: "test"}, func() float64 { return v })
}

func testLogOut() *os.File {
	if os.Getenv("ENGINE_TEST_LOG") != "" {
		return os.Stderr
	}
	f, _ := os.Open(os.DevNull)
	return f
}

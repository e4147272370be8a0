package bench

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestMetricValue(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("# HELP pilotlight_flags_cache_entries x\n# TYPE pilotlight_flags_cache_entries gauge\n" +
			"pilotlight_flags_cache_entries 42\npilotlight_flags_cache_entries_extra 7\n" +
			"pilotlight_flags_fallback_total{function=\"a\",reason=\"x\"} 2\npilotlight_flags_fallback_total{function=\"b\",reason=\"x\"} 3\n"))
	}))
	defer ts.Close()
	for name, want := range map[string]float64{"pilotlight_flags_cache_entries": 42, "pilotlight_flags_fallback_total": 5} {
		if got, err := metricValue(ts.URL, name); err != nil || got != want {
			t.Errorf("%s: got %v, %v; want %v", name, got, err, want)
		}
	}
	if _, err := metricValue(ts.URL, "pilotlight_flags_cache"); err == nil {
		t.Error("a name that is only a prefix was found")
	}
}

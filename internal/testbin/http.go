package testbin

import (
	"io"
	"net/http"
	"testing"
)

// DoOK sends req with client (http.DefaultClient when nil), reads and
// closes the body, and fails the test unless the answer is 200. The
// response's status and headers stay readable.
func DoOK(t testing.TB, client *http.Client, req *http.Request) *http.Response {
	t.Helper()
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s (traceparent %q): status %d", req.Method, req.URL, req.Header.Get("traceparent"), resp.StatusCode)
	}
	return resp
}

// Scrape is the text of base's /metrics, as Prometheus would read it.
func Scrape(t testing.TB, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s/metrics: %v", base, err)
	}
	return string(raw)
}

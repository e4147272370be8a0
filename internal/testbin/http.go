package testbin

import (
	"io"
	"log/slog"
	"net/http"
	"os"
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

// QuietLogger is the logger tests hand the platform's pieces: silent,
// unless TEST_LOG is set (then text on stderr).
func QuietLogger() *slog.Logger {
	if os.Getenv("TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

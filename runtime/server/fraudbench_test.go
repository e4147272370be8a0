package server_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pilotlight/pilotlight/functions"
	_ "github.com/pilotlight/pilotlight/functions/all"
	"github.com/pilotlight/pilotlight/runtime/server"
)

// BenchmarkFraudV2 drives V2 infer for fraud-00001 with the committed example
// request through the real server (profile the instance with -cpuprofile).
func BenchmarkFraudV2(b *testing.B) {
	m, err := functions.LoadDir(filepath.Join(repoRoot(b), "functions", "fraud"))
	if err != nil {
		b.Fatal(err)
	}
	s := server.New(server.Config{Registry: prometheus.NewRegistry()})
	if err := s.Load(context.Background(), m, "fraud-00001"); err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	body, err := os.ReadFile(filepath.Join(repoRoot(b), "functions", "fraud", "testdata", "infer.json"))
	if err != nil {
		b.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Post(ts.URL+"/v2/models/fraud/infer", "application/json", bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

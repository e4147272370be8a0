package router_test

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/functions"
)

// BenchmarkRouterHop sends V2 infer through the router to one warm instance
// (a real child process) from parallel keep-alive clients. Profile the
// router with -cpuprofile; `pilotlight bench hop` compares with direct calls.
func BenchmarkRouterHop(b *testing.B) {
	p := startPlatformB(b, func(m *functions.Manifest) { m.Scaling.MinScale = 1; m.Scaling.MaxScale = 1 })
	url := p.url + "/v2/models/example-tensor/infer"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	warm := func() error {
		resp, err := client.Post(url, "application/json", bytes.NewReader([]byte(inferBody)))
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return nil
	}
	deadline := time.Now().Add(20 * time.Second)
	for warm() != nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Post(url, "application/json", bytes.NewReader([]byte(inferBody)))
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatal(resp.Status)
			}
		}
	})
}

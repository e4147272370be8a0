package router_test

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/functions"
	"github.com/pilotlight/pilotlight/internal/testbin"
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
	testbin.PostParallel(b, client, url, []byte(inferBody))
}

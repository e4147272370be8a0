package testbin

import (
	"bytes"
	"io"
	"net/http"
	"testing"
)

// PostParallel is a throughput benchmark's timed loop: b.N POSTs of the
// JSON body to url from 16 goroutines per GOMAXPROCS over client's
// keep-alive connections; any answer but 200 fails the benchmark.
func PostParallel(b *testing.B, client *http.Client, url string, body []byte) {
	b.Helper()
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Post(url, "application/json", bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatal(resp.Status)
			}
		}
	})
}

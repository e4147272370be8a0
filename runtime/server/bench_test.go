package server_test

import (
	"bytes"
	"io"
	"net/http"
	"testing"
)

// BenchmarkInferParallel drives V2 infer through the real HTTP server with
// parallel keep-alive clients (profile with -cpuprofile).
func BenchmarkInferParallel(b *testing.B) {
	_, ts, _ := loaded(b, nil)
	body := []byte(`{"inputs":[{"name":"input_vectors","shape":[1,10],"datatype":"FP32","data":` + vec(1, 0.5) + `}]}`)
	url := ts.URL + "/v2/models/example-tensor/infer"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
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
			if resp.StatusCode != 200 {
				b.Fatal(resp.Status)
			}
		}
	})
}

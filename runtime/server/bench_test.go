package server_test

import (
	"net/http"
	"testing"

	"github.com/pilotlight/pilotlight/internal/testbin"
)

// BenchmarkInferParallel drives V2 infer through the real HTTP server with
// parallel keep-alive clients (profile with -cpuprofile).
func BenchmarkInferParallel(b *testing.B) {
	_, ts, _ := loaded(b, nil)
	body := []byte(`{"inputs":[{"name":"input_vectors","shape":[1,10],"datatype":"FP32","data":` + vec(1, 0.5) + `}]}`)
	url := ts.URL + "/v2/models/example-tensor/infer"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	testbin.PostParallel(b, client, url, body)
}

package router_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pilotlight/pilotlight/engine"
	_ "github.com/pilotlight/pilotlight/functions/all"
	"github.com/pilotlight/pilotlight/internal/testbin"
)

const goodTx = `{"amount": 912.40, "avg_amount_30d": 85.0, "merchant_category": "electronics", "country": "BR", "home_country": "US", "hour": 3, "device_new": true, "tx_last_24h": 7}`

func v2(shape, data string) string {
	return `{"inputs":[{"name":"input_vectors","shape":` + shape + `,"datatype":"FP32","data":` + data + `}]}`
}

// TestHostileInput sends malformed and oversized requests through the
// whole platform (router and real instances): each gets a 4xx naming the
// problem, memory stays bounded, and the platform serves afterwards.
func TestHostileInput(t *testing.T) {
	fns := testbin.Functions(t, "fraud", "example-tensor")
	p := startPlatformWith(t, engine.Config{PoolSize: 1}, 20*time.Second, fns)
	if code, _, out := post(t, p.url+"/functions/fraud", goodTx); code != 200 {
		t.Fatalf("a good transaction: %d %v", code, out)
	}
	if code, _, out := post(t, p.url+"/v2/models/example-tensor/infer", inferBody); code != 200 {
		t.Fatalf("a good V2 request: %d %v", code, out)
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	manyTx := "[" + strings.TrimSuffix(strings.Repeat(goodTx+",", 257), ",") + "]"
	hugeArray := "[" + strings.TrimSuffix(strings.Repeat("1.5,", 300000), ",") + "]"
	cases := []struct {
		name, path, body string
		code             int
		mentions         string
	}{
		{"deep nesting", "/functions/fraud", strings.Repeat("[", 10000) + strings.Repeat("]", 10000), 400, "nested"},
		{"huge array over the body limit", "/v2/models/example-tensor/infer", v2("[30000,10]", hugeArray), 413, "larger than"},
		{"too many transactions", "/functions/fraud", `{"transactions": ` + manyTx + `}`, 400, "256"},
		{"wrong type", "/functions/fraud", strings.Replace(goodTx, "912.40", `"912.40"`, 1), 400, "amount"},
		{"invalid UTF-8", "/functions/fraud", strings.Replace(goodTx, "BR", "B\xffR", 1), 400, "UTF-8"},
		{"negative shape", "/v2/models/example-tensor/infer", v2("[-3,10]", "[1]"), 400, ">= 0"},
		{"zero rows", "/v2/models/example-tensor/infer", v2("[0,10]", "[]"), 400, "0 rows"},
		{"huge shape", "/v2/models/example-tensor/infer", v2("[4000000000000,10]", "[1]"), 400, "too large"},
		{"NaN literal", "/functions/fraud", strings.Replace(goodTx, "912.40", "NaN", 1), 400, ""},
		{"Inf by overflow", "/functions/fraud", strings.Replace(goodTx, "912.40", "1e999", 1), 400, "amount"},
		{"NaN in V2 data", "/v2/models/example-tensor/infer", v2("[1,10]", `["NaN",1,1,1,1,1,1,1,1,1]`), 400, "finite"},
		{"duplicate keys", "/functions/fraud", strings.Replace(goodTx, `"hour": 3`, `"hour": 3, "hour": 4`, 1), 400, "duplicate key"},
		{"not JSON", "/functions/fraud", "amount=1", 400, ""},
		{"empty body", "/functions/fraud", "", 400, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := postForError(t, p.url+tc.path, tc.body)
			if code != tc.code || strings.TrimSpace(msg) == "" || !strings.Contains(msg, tc.mentions) {
				t.Fatalf("status %d error %q, want %d with a non-empty JSON error mentioning %q", code, msg, tc.code, tc.mentions)
			}
		})
	}
	t.Run("oversized headers", func(t *testing.T) {
		req, _ := http.NewRequest("POST", p.url+"/functions/fraud", strings.NewReader(goodTx))
		req.Header.Set("X-Junk", strings.Repeat("x", 100<<10))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("100 KiB of headers: %d, want 431", resp.StatusCode)
		}
	})
	t.Run("slowloris body", func(t *testing.T) {
		conn, err := net.Dial("tcp", strings.TrimPrefix(p.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "POST /functions/fraud HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(goodTx))
		begin := time.Now()
		done := make(chan string, 1)
		go func() {
			line, _ := bufio.NewReader(conn).ReadString('\n')
			done <- line
		}()
		for i := 0; i < len(goodTx); i++ {
			if _, err := conn.Write([]byte{goodTx[i]}); err != nil {
				break // the server hung up on us: good
			}
			select {
			case line := <-done:
				if strings.Contains(line, " 200 ") {
					t.Fatalf("a body trickled over %s was served: %q", time.Since(begin), line)
				}
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
		// Every byte went out, one per 200 ms, and the server neither hung
		// up nor answered: it waited for the whole trickle instead of
		// cutting it off at the read timeout.
		t.Fatalf("the server kept a body trickled over %s open to its end (read timeout is 2 s)", time.Since(begin))
	})
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 32<<20 {
		t.Errorf("router heap grew %d MiB over the hostile requests", grew>>20)
	}
	if code, _, out := post(t, p.url+"/functions/fraud", goodTx); code != 200 {
		t.Fatalf("after hostile input: %d %v", code, out)
	}
}

// postForError posts body and decodes the answer as the error contract
// {"error": "..."}: a body that is not exactly that object fails the test.
func postForError(t *testing.T, url, body string) (int, string) {
	t.Helper()
	code, _, raw := postRaw(t, url, body)
	var e struct {
		Error string `json:"error"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("status %d: body %q is not the {\"error\": \"...\"} contract: %v", code, raw, err)
	}
	return code, e.Error
}

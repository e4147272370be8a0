package auth_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/router/auth"
)

const (
	fraudKey  = "pl_test-fraud-key-0123456789abcdefghijklmnopq"
	allKey    = "pl_test-all-functions-key-0123456789abcdefghij"
	adminKey  = "pl_test-admin-key-0123456789abcdefghijklmnopqr"
	noPathKey = "pl_test-key-that-is-not-in-the-file-0123456789"
)

func testKeys(t *testing.T) *auth.Keys {
	t.Helper()
	doc := map[string]any{"keys": []map[string]any{
		{"id": "team-fraud", "hash": auth.Sum(fraudKey), "functions": []string{"fraud"}, "rate": map[string]any{"rps": 5, "burst": 7}},
		{"id": "team-all", "hash": auth.Sum(allKey), "functions": []string{"*"}},
		{"id": "ops", "hash": auth.Sum(adminKey), "admin": true},
	}}
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "keys.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := auth.Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return k
}

// newApp mirrors the router's routes and its HTTPErrorHandler (JSON
// {"error": ...} from *echo.HTTPError), with auth registered by e.Use.
func newApp(k *auth.Keys) *echo.Echo {
	e := echo.New()
	e.HTTPErrorHandler = func(err error, c echo.Context) {
		code, msg := http.StatusInternalServerError, err.Error()
		var he *echo.HTTPError
		if errors.As(err, &he) {
			code = he.Code
			if m, ok := he.Message.(string); ok {
				msg = m
			}
		}
		_ = c.JSON(code, map[string]string{"error": msg})
	}
	e.Use(k.Middleware(auth.FunctionParam))
	ok := func(c echo.Context) error {
		key := ""
		if id, ok := auth.IdentityOf(c); ok {
			key = id.ID
		}
		return c.JSON(http.StatusOK, map[string]string{"key": key})
	}
	e.GET("/healthz", ok)
	e.GET("/v2/health/ready", ok)
	e.GET("/metrics", ok)
	e.GET("/admin/functions", ok)
	e.POST("/functions/:function", ok)
	e.GET("/v2/models/:model", ok)
	e.POST("/v2/models/:model/infer", ok)
	return e
}

func TestMiddleware(t *testing.T) {
	e := newApp(testKeys(t))
	tests := []struct {
		name     string
		method   string
		path     string
		header   map[string]string
		want     int
		wantKey  string // id echoed by the handler on 200
		wantErr  string // substring of {"error": ...}
		wantAuth string // prefix of WWW-Authenticate
	}{
		{"no key", "POST", "/functions/fraud", nil, 401, "", "missing API key", `Bearer realm="pilotlight"`},
		{"wrong key", "POST", "/functions/fraud", map[string]string{"Authorization": "Bearer " + noPathKey}, 401, "", "invalid API key", `Bearer realm="pilotlight"`},
		{"wrong key x-api-key", "POST", "/functions/fraud", map[string]string{"X-API-Key": "pl_nope"}, 401, "", "invalid API key", `Bearer realm="pilotlight"`},
		{"basic scheme", "POST", "/functions/fraud", map[string]string{"Authorization": "Basic Zm9vOmJhcg=="}, 401, "", "Bearer <key>", `Bearer realm="pilotlight"`},
		{"empty bearer", "POST", "/functions/fraud", map[string]string{"Authorization": "Bearer "}, 401, "", "Bearer <key>", `Bearer realm="pilotlight"`},
		{"conflicting headers", "POST", "/functions/fraud", map[string]string{"Authorization": "Bearer " + fraudKey, "X-API-Key": allKey}, 401, "", "different keys", `Bearer realm="pilotlight"`},
		{"too long", "POST", "/functions/fraud", map[string]string{"X-API-Key": strings.Repeat("a", auth.MaxKeyBytes+1)}, 401, "", "longer than", `Bearer realm="pilotlight"`},
		{"allowed bearer", "POST", "/functions/fraud", map[string]string{"Authorization": "Bearer " + fraudKey}, 200, "team-fraud", "", ""},
		{"allowed lowercase scheme", "POST", "/functions/fraud", map[string]string{"Authorization": "bearer " + fraudKey}, 200, "team-fraud", "", ""},
		{"allowed x-api-key", "POST", "/functions/fraud", map[string]string{"X-API-Key": fraudKey}, 200, "team-fraud", "", ""},
		{"both headers agree", "POST", "/functions/fraud", map[string]string{"Authorization": "Bearer " + fraudKey, "X-API-Key": fraudKey}, 200, "team-fraud", "", ""},
		{"not allowed function", "POST", "/functions/recommend", map[string]string{"X-API-Key": fraudKey}, 403, "", `may not call function "recommend"`, ""},
		{"not allowed v2 infer", "POST", "/v2/models/recommend/infer", map[string]string{"X-API-Key": fraudKey}, 403, "", `function "recommend"`, ""},
		{"not allowed v2 metadata", "GET", "/v2/models/recommend", map[string]string{"X-API-Key": fraudKey}, 403, "", `function "recommend"`, ""},
		{"allowed v2 infer", "POST", "/v2/models/fraud/infer", map[string]string{"X-API-Key": fraudKey}, 200, "team-fraud", "", ""},
		{"wildcard", "POST", "/functions/recommend", map[string]string{"X-API-Key": allKey}, 200, "team-all", "", ""},
		{"admin key has no function rights", "POST", "/functions/fraud", map[string]string{"X-API-Key": adminKey}, 403, "", `"ops" may not call function "fraud"`, ""},
		{"metrics no key", "GET", "/metrics", nil, 401, "", "missing API key", `Bearer realm="pilotlight"`},
		{"metrics non-admin", "GET", "/metrics", map[string]string{"X-API-Key": allKey}, 403, "", "not an admin key", ""},
		{"metrics admin", "GET", "/metrics", map[string]string{"X-API-Key": adminKey}, 200, "ops", "", ""},
		{"admin non-admin", "GET", "/admin/functions", map[string]string{"Authorization": "Bearer " + fraudKey}, 403, "", "admin: true", ""},
		{"admin admin", "GET", "/admin/functions", map[string]string{"Authorization": "Bearer " + adminKey}, 200, "ops", "", ""},
		{"admin unknown subpath non-admin", "GET", "/admin/secret", map[string]string{"X-API-Key": allKey}, 403, "", "not an admin key", ""},
		{"admin dot-dot non-admin", "GET", "/functions/../admin/functions", map[string]string{"X-API-Key": allKey}, 403, "", "not an admin key", ""},
		{"admin double slash non-admin", "GET", "//admin/functions", map[string]string{"X-API-Key": allKey}, 403, "", "not an admin key", ""},
		{"admin encoded non-admin", "GET", "/%61dmin/functions", map[string]string{"X-API-Key": allKey}, 403, "", "not an admin key", ""},
		{"healthz public", "GET", "/healthz", nil, 200, "", "", ""},
		{"v2 ready public", "GET", "/v2/health/ready", nil, 200, "", "", ""},
		{"unknown path needs a key", "GET", "/nope", nil, 401, "", "missing API key", `Bearer realm="pilotlight"`},
		{"unknown path with key is 404", "GET", "/nope", map[string]string{"X-API-Key": fraudKey}, 404, "", "Not Found", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, tt.path, strings.NewReader("{}"))
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			e.ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Fatalf("status %d, want %d; body %s", rec.Code, tt.want, rec.Body)
			}
			var body map[string]string
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body is not JSON: %q", rec.Body)
			}
			if tt.want == 200 && body["key"] != tt.wantKey {
				t.Errorf("handler saw key %q, want %q", body["key"], tt.wantKey)
			}
			if tt.wantErr != "" && !strings.Contains(body["error"], tt.wantErr) {
				t.Errorf("error %q, want it to contain %q", body["error"], tt.wantErr)
			}
			got := rec.Header().Get("WWW-Authenticate")
			if tt.wantAuth != "" && !strings.HasPrefix(got, tt.wantAuth) {
				t.Errorf("WWW-Authenticate %q, want prefix %q", got, tt.wantAuth)
			}
			if tt.wantAuth == "" && got != "" {
				t.Errorf("WWW-Authenticate %q on a %d", got, rec.Code)
			}
		})
	}
}

func TestRateAndIdentity(t *testing.T) {
	k := testKeys(t)
	e := echo.New()
	e.Use(k.Middleware(nil))
	var rps float64
	var burst int
	e.POST("/functions/:function", func(c echo.Context) error {
		rps, burst = 0, 0
		if id, ok := auth.IdentityOf(c); ok && id.Rate != nil {
			rps, burst = id.Rate.RPS, id.Rate.Burst
		}
		return c.NoContent(http.StatusOK)
	})
	for _, tc := range []struct {
		key       string
		rps       float64
		burst     int
		functions string
	}{
		{fraudKey, 5, 7, "fraud"},
		{allKey, 0, 0, "*"},
	} {
		req := httptest.NewRequest("POST", "/functions/fraud", nil)
		req.Header.Set("X-API-Key", tc.key)
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		if rec.Code != 200 || rps != tc.rps || burst != tc.burst {
			t.Errorf("key %s: status %d rate (%v, %d), want 200 (%v, %d)", tc.key[:12], rec.Code, rps, burst, tc.rps, tc.burst)
		}
		id := k.Identify(tc.key)
		if id == nil || strings.Join(id.Functions, ",") != tc.functions {
			t.Errorf("Identify(%s) = %+v", tc.key[:12], id)
		}
	}
	if k.Identify("") != nil || k.Identify(noPathKey) != nil {
		t.Error("Identify accepted an empty or unknown key")
	}
}

func TestParseErrors(t *testing.T) {
	good := auth.Sum(fraudKey)
	tests := []struct {
		name, doc, want string
	}{
		{"plaintext pl_ in hash", `{"keys":[{"id":"a","hash":"` + fraudKey + `","functions":["*"]}]}`, `keys[0] (id "a"): "hash" looks like a plaintext key`},
		{"plaintext in hash without prefix", "keys:\n  - id: ok\n    hash: " + good + "\n    functions: ['*']\n  - id: b\n    hash: hunter2hunter2\n    functions: ['*']\n", `keys[1] (id "b"): "hash" must start with "sha256:"`},
		{"plaintext key field", `{"keys":[{"id":"a","key":"secret","hash":"` + good + `","functions":["*"]}]}`, `keys[0] (id "a"): "key" holds a plaintext key`},
		{"short hex", `{"keys":[{"id":"a","hash":"sha256:abcd","functions":["*"]}]}`, `keys[0] (id "a"): "hash" must be "sha256:" followed by 64 lowercase hex digits`},
		{"uppercase hex", `{"keys":[{"id":"a","hash":"` + strings.ToUpper(good) + `","functions":["*"]}]}`, `keys[0] (id "a"): "hash" must start with "sha256:"`},
		{"other scheme", `{"keys":[{"id":"a","hash":"bcrypt:$2a$10$abc","functions":["*"]}]}`, `keys[0] (id "a"): "hash" must start with "sha256:"`},
		{"missing hash", `{"keys":[{"id":"a","functions":["*"]}]}`, `keys[0] (id "a"): missing "hash"`},
		{"missing id", `{"keys":[{"hash":"` + good + `","functions":["*"]}]}`, `keys[0]: id "" must be`},
		{"bad id", `{"keys":[{"id":"a b","hash":"` + good + `","functions":["*"]}]}`, `keys[0] (id "a b"): id "a b" must be`},
		{"duplicate id", `{"keys":[{"id":"a","hash":"` + good + `","functions":["*"]},{"id":"a","hash":"` + auth.Sum(allKey) + `","functions":["*"]}]}`, `keys[1] (id "a"): id already used by keys[0]`},
		{"duplicate hash", `{"keys":[{"id":"a","hash":"` + good + `","functions":["*"]},{"id":"b","hash":"` + good + `","functions":["*"]}]}`, `keys[1] (id "b"): same hash as keys[0]`},
		{"no rights", `{"keys":[{"id":"a","hash":"` + good + `"}]}`, `keys[0] (id "a"): no "functions" and not "admin"`},
		{"bad function", `{"keys":[{"id":"a","hash":"` + good + `","functions":["fr aud"]}]}`, `keys[0] (id "a"): functions[0] "fr aud"`},
		{"bad rps", `{"keys":[{"id":"a","hash":"` + good + `","functions":["*"],"rate":{"rps":0}}]}`, `keys[0] (id "a"): rate.rps must be a positive number`},
		{"bad burst", `{"keys":[{"id":"a","hash":"` + good + `","functions":["*"],"rate":{"rps":1,"burst":-1}}]}`, `keys[0] (id "a"): rate.burst must not be negative`},
		{"unknown field", `{"keys":[{"id":"a","hash":"` + good + `","functions":["*"],"admn":true}]}`, `field admn not found`},
		{"duplicate field", `{"keys":[{"id":"a","id":"b","hash":"` + good + `","functions":["*"]}]}`, `"id" already defined`},
		{"empty", ``, `empty keys file`},
		{"not a mapping", `[1,2]`, `cannot unmarshal`},
		{"two documents", "keys: []\n---\nkeys: []\n", `more than one document`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "keys.yaml")
			if err := os.WriteFile(path, []byte(tt.doc), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := auth.Load(path)
			if err == nil {
				t.Fatalf("Load accepted %s", tt.doc)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), path) {
				t.Errorf("error %q, want prefix %s and %q", err, path, tt.want)
			}
		})
	}
}

func TestParseDefaultsBurst(t *testing.T) {
	k, err := auth.Parse([]byte("keys:\n  - id: a\n    hash: "+auth.Sum(fraudKey)+"\n    functions: [fraud]\n    rate: {rps: 2.5}\n"), "k.yaml")
	if err != nil {
		t.Fatal(err)
	}
	id := k.Identify(fraudKey)
	if id == nil || id.Rate == nil || id.Rate.RPS != 2.5 || id.Rate.Burst != 5 {
		t.Fatalf("identity %+v, want rate 2.5 rps burst 5", id)
	}
}

func TestLoadSources(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "keys.yaml")
	if err := os.WriteFile(file, []byte("keys:\n  - id: file-key\n    hash: "+auth.Sum(fraudKey)+"\n    functions: [fraud]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := `{"keys":[{"id":"env-key","hash":"` + auth.Sum(allKey) + `","functions":["*"]}]}`
	envDupID := `{"keys":[{"id":"file-key","hash":"` + auth.Sum(allKey) + `","functions":["*"]}]}`
	envDupHash := `{"keys":[{"id":"other","hash":"` + auth.Sum(fraudKey) + `","functions":["*"]}]}`
	tests := []struct {
		name, path, env string
		wantLen         int
		wantErr         string
	}{
		{"file only", file, "", 1, ""},
		{"env only", "", env, 1, ""},
		{"both", file, env, 2, ""},
		{"neither", "", "", 0, "no API keys"},
		{"missing file", filepath.Join(dir, "nope.yaml"), "", 0, "read keys file"},
		{"bad env", "", `{"keys":[{"id":"x","hash":"pl_x"}]}`, 0, "$PILOTLIGHT_API_KEYS: keys[0]"},
		{"dup id across", file, envDupID, 0, `"file-key" is defined both`},
		{"dup hash across", file, envDupHash, 0, "same hash"},
		{"empty lists", "", `{"keys":[]}`, 0, "list none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := auth.LoadSources(tt.path, tt.env)
			if testbin.ExpectError(t, err, tt.wantErr) {
				return
			}
			if k.Len() != tt.wantLen {
				t.Errorf("%d keys, want %d", k.Len(), tt.wantLen)
			}
		})
	}
}

// TestExampleFile keeps config/auth/keys.example.yaml loadable and its
// documented fake keys matching their hashes.
func TestExampleFile(t *testing.T) {
	path := filepath.Join("..", "..", "config", "auth", "keys.example.yaml")
	k, err := auth.Load(path)
	if err != nil {
		t.Fatalf("example keys file: %v", err)
	}
	for key, want := range map[string]string{
		"pl_EXAMPLE-fraud-team-key-not-secret-do-not-deploy-0000": "team-fraud",
		"pl_EXAMPLE-recsys-team-key-not-secret-do-not-deploy-000": "team-recsys",
		"pl_EXAMPLE-ops-admin-key-not-secret-do-not-deploy-00000": "ops",
	} {
		if id := k.Identify(key); id == nil || id.ID != want {
			t.Errorf("example key for %s does not match its hash (got %+v)", want, id)
		}
	}
}

// BenchmarkMiddleware is the cost auth adds to a request with 100 keys on
// file (hash once, 100 constant-time compares).
func BenchmarkMiddleware(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("keys:\n")
	for i := 0; i < 99; i++ {
		sb.WriteString("  - {id: k" + strconv.Itoa(i) + ", hash: " + auth.Sum(fraudKey+strconv.Itoa(i)) + ", functions: [fraud]}\n")
	}
	sb.WriteString("  - {id: last, hash: " + auth.Sum(fraudKey) + ", functions: [fraud]}\n")
	k, err := auth.Parse([]byte(sb.String()), "bench")
	if err != nil {
		b.Fatal(err)
	}
	e := echo.New()
	e.Use(k.Middleware(nil))
	e.POST("/functions/:function", func(c echo.Context) error { return c.NoContent(http.StatusNoContent) })
	req := httptest.NewRequest("POST", "/functions/fraud", nil)
	req.Header.Set("Authorization", "Bearer "+fraudKey)
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		if rec.Code != http.StatusNoContent {
			b.Fatal(rec.Code)
		}
	}
}

package auth_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pilotlight/pilotlight/internal/testbin"
	"github.com/pilotlight/pilotlight/router/auth"
)

func TestNewKey(t *testing.T) {
	a, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := auth.NewKey()
	if a == b || !strings.HasPrefix(a, "pl_") || len(a) != 3+43 {
		t.Fatalf("keys %q %q: want distinct pl_ + 43 base64url characters", a, b)
	}
	if err := auth.CheckStrength(a); err != nil {
		t.Fatalf("a generated key fails CheckStrength: %v", err)
	}
}

func TestCheckStrength(t *testing.T) {
	for _, tt := range []struct{ key, want string }{
		{"", "empty"},
		{"hunter2", "fewer than 32"},
		{strings.Repeat("x", 31), "fewer than 32"},
		{strings.Repeat("x", 16) + " " + strings.Repeat("x", 16), "whitespace"},
		{strings.Repeat("x", auth.MaxKeyBytes+1), "longer than"},
		{strings.Repeat("x", 32), ""},
	} {
		err := auth.CheckStrength(tt.key)
		if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("CheckStrength(%.10q...) = %v, want %q", tt.key, err, tt.want)
		}
	}
}

func TestAppendEntry(t *testing.T) {
	first := auth.Entry{ID: "team-fraud", Hash: auth.Sum(fraudKey), Functions: []string{"fraud"}, Rate: &auth.Rate{RPS: 100, Burst: 200}}
	second := auth.Entry{ID: "ops", Hash: auth.Sum(adminKey), Admin: true}
	tests := []struct {
		name     string
		file     string
		existing string // "" : no file
		add      []auth.Entry
		wantIDs  []string
		wantErr  string
		wantKeep string // text of the existing file that must survive
	}{
		{"new yaml", "keys.yaml", "", []auth.Entry{first, second}, []string{"team-fraud", "ops"}, "", ""},
		{"new json", "keys.json", "", []auth.Entry{first, second}, []string{"team-fraud", "ops"}, "", ""},
		{"yaml keeps comments", "keys.yaml", "# our keys\nkeys:\n  # fraud team\n  - id: team-fraud\n    hash: " + auth.Sum(fraudKey) + "\n    functions: [fraud]\n", []auth.Entry{second}, []string{"team-fraud", "ops"}, "", "# fraud team"},
		{"yaml empty list", "keys.yaml", "keys: []\n", []auth.Entry{second}, []string{"ops"}, "", ""},
		{"yaml null list", "keys.yaml", "keys:\n", []auth.Entry{second}, []string{"ops"}, "", ""},
		{"duplicate id", "keys.yaml", "", []auth.Entry{first, {ID: "team-fraud", Hash: auth.Sum(allKey), Functions: []string{"*"}}}, nil, "id already used", ""},
		{"invalid entry", "keys.yaml", "", []auth.Entry{{ID: "x", Hash: auth.Sum(allKey)}}, nil, `no "functions"`, ""},
		{"existing not a mapping", "keys.yaml", "- a\n- b\n", []auth.Entry{second}, nil, "not a", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), tt.file)
			if tt.existing != "" {
				if err := os.WriteFile(path, []byte(tt.existing), 0o640); err != nil {
					t.Fatal(err)
				}
			}
			var err error
			for _, e := range tt.add {
				if err = auth.AppendEntry(path, e); err != nil {
					break
				}
			}
			if testbin.ExpectError(t, err, tt.wantErr) {
				return
			}
			k, err := auth.Load(path)
			if err != nil {
				t.Fatalf("appended file does not load: %v", err)
			}
			if got := strings.Join(k.IDs(), ","); got != strings.Join(tt.wantIDs, ",") {
				t.Errorf("ids %s, want %v", got, tt.wantIDs)
			}
			if id := k.Identify(adminKey); id == nil || !id.Admin {
				t.Errorf("ops key not identified as admin: %+v", id)
			}
			st, _ := os.Stat(path)
			wantMode := os.FileMode(0o600)
			if tt.existing != "" {
				wantMode = 0o640
			}
			if st.Mode().Perm() != wantMode {
				t.Errorf("mode %v, want %v", st.Mode().Perm(), wantMode)
			}
			data, _ := os.ReadFile(path)
			if tt.wantKeep != "" && !strings.Contains(string(data), tt.wantKeep) {
				t.Errorf("lost %q:\n%s", tt.wantKeep, data)
			}
			if strings.HasSuffix(path, ".json") && !json.Valid(data) {
				t.Errorf("not JSON:\n%s", data)
			}
			entries, _ := os.ReadDir(filepath.Dir(path))
			if len(entries) != 1 {
				t.Errorf("temporary files left behind: %v", entries)
			}
		})
	}
}

func TestAppendEntryFailureKeepsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.yaml")
	orig := "keys:\n  - id: a\n    hash: " + auth.Sum(fraudKey) + "\n    functions: [fraud]\n"
	if err := os.WriteFile(path, []byte(orig), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := auth.AppendEntry(path, auth.Entry{ID: "b", Hash: auth.Sum(fraudKey), Functions: []string{"*"}}); err == nil {
		t.Fatal("appending a duplicate hash succeeded")
	}
	if data, _ := os.ReadFile(path); string(data) != orig {
		t.Fatalf("file changed after a failed append:\n%s", data)
	}
}

func TestEntryYAML(t *testing.T) {
	s, err := auth.EntryYAML(auth.Entry{ID: "a", Hash: auth.Sum(fraudKey), Functions: []string{"fraud"}})
	if err != nil {
		t.Fatal(err)
	}
	indented := "keys:\n" + "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ") + "\n"
	k, err := auth.Parse([]byte(indented), "pasted")
	if err != nil || k.Identify(fraudKey) == nil {
		t.Fatalf("EntryYAML output pasted under keys: does not load (%v):\n%s", err, indented)
	}
}

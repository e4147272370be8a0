package auth_test

import (
	"strings"
	"testing"

	"github.com/pilotlight/pilotlight/router/auth"
)

// FuzzLoad feeds arbitrary bytes to the keys-file parser: it must never
// panic, and whatever it accepts must hold only well-formed entries whose
// errors name the source.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"keys":[{"id":"a","hash":"` + auth.Sum(fraudKey) + `","functions":["*"],"rate":{"rps":1}}]}`))
	f.Add([]byte("keys:\n  - id: a\n    hash: " + auth.Sum(fraudKey) + "\n    admin: true\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := auth.Parse(data, "fuzz.yaml")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error does not name its source: %v", err)
			}
			return
		}
		if k.Identify("") != nil {
			t.Fatal("empty key identified")
		}
		seen := map[string]bool{}
		for _, id := range k.IDs() {
			if id == "" || seen[id] || strings.ContainsAny(id, " \t\n\"") {
				t.Fatalf("accepted bad or duplicate id %q", id)
			}
			seen[id] = true
		}
	})
}

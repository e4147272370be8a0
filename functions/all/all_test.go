package all_test

import (
	"path/filepath"
	"testing"

	"github.com/pilotlight/pilotlight/functions"
	_ "github.com/pilotlight/pilotlight/functions/all"
)

// TestBuiltinManifestsLoad parses every function.yaml under functions/ with
// the handlers this package registers, and builds each handler.
func TestBuiltinManifestsLoad(t *testing.T) {
	for _, name := range []string{"fraud", "recommend"} {
		if !functions.HasHandler(name) {
			t.Errorf("handler %q not registered", name)
		}
	}
	ms, err := functions.LoadAll(filepath.Join(".."))
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, m := range ms {
		found[m.Name] = true
		if _, err := functions.NewHandler(m); err != nil {
			t.Errorf("%s: %v", m.Name, err)
		}
	}
	for _, name := range []string{"fraud", "recommend"} {
		if !found[name] {
			t.Errorf("function %q not loaded from functions/*/function.yaml", name)
		}
	}
}

package flags

import (
	"encoding/json"
	"fmt"

	"github.com/pilotlight/pilotlight/internal/atomicfile"
)

// FlagEdit edits one flag of a flagd-format file, keeping everything else
// as it was, and writes it back atomically (write a temporary file in the
// same directory, fsync, rename), so a watcher never reads half a file.
// It reads the file with this package's own decoder and parser: a file
// flagd refuses cannot be opened, and an edit that would produce one is
// not written.
type FlagEdit struct {
	path string
	key  string
	set  *Set
	doc  map[string]any
	flag map[string]any
}

// OpenFlagEdit reads path for an edit of flag key.
func OpenFlagEdit(path, key string) (*FlagEdit, error) {
	raw, set, err := read(path)
	if err != nil {
		return nil, err
	}
	f, err := edit(raw, set, path, key)
	if err != nil {
		return nil, err
	}
	f.path = path
	return f, nil
}

// EditBytes reads a flag document held elsewhere than a file (a
// ConfigMap's data; source names it in errors) for an edit of flag key:
// Bytes gives the edited document, Write is not for it.
func EditBytes(raw []byte, source, key string) (*FlagEdit, error) {
	set, err := Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("flags in %s: %w", source, err)
	}
	return edit(raw, set, source, key)
}

func edit(raw []byte, set *Set, source, key string) (*FlagEdit, error) {
	if _, ok := set.flags[key]; !ok {
		return nil, fmt.Errorf("flags in %s have no flag %q", source, key)
	}
	doc, _ := decode(raw) // Parse succeeded, so decode does
	flags, isMap := doc["flags"].(map[string]any)
	if !isMap {
		return nil, fmt.Errorf("flags in %s are listed as an array; rollouts edit the object form only", source)
	}
	return &FlagEdit{key: key, set: set, doc: doc, flag: flags[key].(map[string]any)}, nil
}

// Variants maps variant name to its value when that is a string (a
// revision name), as the file had it when opened.
func (f *FlagEdit) Variants() map[string]string {
	out := map[string]string{}
	for name, v := range f.set.flags[f.key].variants {
		if s, ok := v.(string); ok {
			out[name] = s
		}
	}
	return out
}

// DefaultVariant is the flag's defaultVariant as the file had it when
// opened ("" when absent or null).
func (f *FlagEdit) DefaultVariant() string { return f.set.flags[f.key].defVariant }

// VariantFor returns the variant whose value is revision, adding one named
// after the revision when the flag has none.
func (f *FlagEdit) VariantFor(revision string) string {
	if v := f.set.variantOf(f.key, revision); v != "" {
		return v
	}
	m, _ := f.flag["variants"].(map[string]any)
	if m == nil {
		m = map[string]any{}
		f.flag["variants"] = m
	}
	m[revision] = revision
	return revision
}

// SetSplit routes weight percent of the fractional split to canary and
// the rest to stable: the flag's existing fractional is replaced where it
// stands (targeted rules before it keep working); without one, the else
// branch of a top-level "if" gets it; otherwise it becomes the targeting.
func (f *FlagEdit) SetSplit(stable, canary string, weight int) {
	split := map[string]any{"fractional": []any{[]any{stable, 100 - weight}, []any{canary, weight}}}
	t, _ := f.flag["targeting"].(map[string]any)
	if replaceFractional(t, split) {
		return
	}
	if args, ok := t["if"].([]any); ok && len(args) >= 2 {
		if len(args)%2 == 0 {
			args = append(args, split)
		} else {
			args[len(args)-1] = split
		}
		t["if"] = args
		return
	}
	f.flag["targeting"] = split
}

func replaceFractional(node any, split map[string]any) bool {
	switch n := node.(type) {
	case map[string]any:
		if _, ok := n["fractional"]; ok {
			n["fractional"] = split["fractional"]
			return true
		}
		for _, v := range n {
			if replaceFractional(v, split) {
				return true
			}
		}
	case []any:
		for _, v := range n {
			if replaceFractional(v, split) {
				return true
			}
		}
	}
	return false
}

// SetStatic makes variant the flag's only answer: no targeting.
func (f *FlagEdit) SetStatic(variant string) {
	f.flag["defaultVariant"] = variant
	f.flag["targeting"] = map[string]any{}
	f.flag["state"] = StateEnabled
}

// Bytes is the edited document, checked to be one flagd would load.
func (f *FlagEdit) Bytes() ([]byte, error) {
	raw, err := json.MarshalIndent(f.doc, "", "  ")
	if err != nil {
		return nil, err
	}
	raw = append(raw, '\n')
	if _, err := Parse(raw); err != nil {
		return nil, fmt.Errorf("edit of flag %s would make a file flagd refuses, not written: %w", f.key, err)
	}
	return raw, nil
}

// Write replaces the file with the edited document in one rename, after
// checking that flagd would load the result.
func (f *FlagEdit) Write() error {
	if f.path == "" {
		return fmt.Errorf("flag %s was not opened from a file: use Bytes", f.key)
	}
	raw, err := f.Bytes()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(f.path, raw, 0o644); err != nil {
		return fmt.Errorf("write flag file: %w", err)
	}
	return nil
}

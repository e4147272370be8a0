package flags

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/pilotlight/pilotlight/atomicfile"
)

// FlagEdit edits one flag of a flagd-format file, keeping everything else
// as it was, and writes it back atomically (write a temporary file in the
// same directory, fsync, rename), so a watcher never reads half a file.
type FlagEdit struct {
	path string
	doc  map[string]any
	flag map[string]any
}

func OpenFlagEdit(path, key string) (*FlagEdit, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read flag file: %w", err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("flag file %s: %w", path, err)
	}
	flags, _ := doc["flags"].(map[string]any)
	flag, ok := flags[key].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("flag file %s has no flag %q", path, key)
	}
	return &FlagEdit{path: path, doc: doc, flag: flag}, nil
}

// variants maps variant name to its value (revision names are strings).
func (f *FlagEdit) Variants() map[string]string {
	out := map[string]string{}
	vs, _ := f.flag["variants"].(map[string]any)
	for name, v := range vs {
		if s, ok := v.(string); ok {
			out[name] = s
		}
	}
	return out
}

// variantFor returns the variant whose value is revision, adding one named
// after the revision when the flag has none.
func (f *FlagEdit) VariantFor(revision string) string {
	vs := f.Variants()
	names := make([]string, 0, len(vs))
	for n := range vs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if vs[n] == revision {
			return n
		}
	}
	m, _ := f.flag["variants"].(map[string]any)
	if m == nil {
		m = map[string]any{}
		f.flag["variants"] = m
	}
	m[revision] = revision
	return revision
}

// defaultVariant is the flag's defaultVariant ("" when absent or null).
func (f *FlagEdit) DefaultVariant() string {
	s, _ := f.flag["defaultVariant"].(string)
	return s
}

// setSplit routes weight percent of the fractional split to canary and
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

// setStatic makes variant the flag's only answer: no targeting.
func (f *FlagEdit) SetStatic(variant string) {
	f.flag["defaultVariant"] = variant
	f.flag["targeting"] = map[string]any{}
	f.flag["state"] = "ENABLED"
}

func (f *FlagEdit) Write() error {
	raw, err := json.MarshalIndent(f.doc, "", "  ")
	if err != nil {
		return err
	}
	raw = append(raw, '\n')
	if err := atomicfile.Write(f.path, raw, 0o644); err != nil {
		return fmt.Errorf("write flag file: %w", err)
	}
	return nil
}

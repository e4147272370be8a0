package auth

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/pilotlight/pilotlight/internal/atomicfile"
)

// KeyPrefix starts every generated key, so a leaked key is recognisable
// (secret scanners, and Parse refusing one pasted into "hash").
const KeyPrefix = "pl_"

// MinKeyChars is the shortest key `pilotlight keys hash` accepts: SHA-256 at
// rest is only safe for keys with enough entropy (see HashPrefix).
const MinKeyChars = 32

// NewKey returns a fresh key: "pl_" and 32 random bytes in base64url.
func NewKey() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("read random bytes for a key: %w", err)
	}
	return KeyPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// CheckStrength refuses keys too short to be stored as a plain SHA-256.
func CheckStrength(key string) error {
	switch {
	case key == "":
		return errors.New("empty key")
	case len(key) < MinKeyChars:
		return fmt.Errorf("key has %d characters, fewer than %d: SHA-256 at rest is only safe for high-entropy keys; make one with `pilotlight keys new`", len(key), MinKeyChars)
	case len(key) > MaxKeyBytes:
		return fmt.Errorf("key longer than %d bytes; the router would refuse it", MaxKeyBytes)
	case strings.ContainsAny(key, " \t\r\n"):
		return errors.New("key contains whitespace; the router trims header values, so it could never match")
	}
	return nil
}

// EntryYAML renders one entry as a YAML list item to paste under "keys:".
func EntryYAML(e Entry) (string, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode([]Entry{e}); err != nil {
		return "", fmt.Errorf("encode key entry: %w", err)
	}
	return buf.String(), nil
}

const newFileHeader = `# Pilotlight API keys: hashed at rest, see config/auth/keys.example.yaml.
# Add keys with "pilotlight keys new --file THIS_FILE".
`

// AppendEntry adds e to the keys file at path (YAML, or JSON when the name
// ends in .json), creating the file with mode 0600 when it does not exist.
// The result is validated with Parse before anything is written, and it is
// written to a temporary file renamed over the old one, so a failure leaves
// the old file intact. YAML comments in an existing file are kept.
func AppendEntry(path string, e Entry) error {
	old, err := os.ReadFile(path)
	mode := fs.FileMode(0o600)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		old = nil
	case err != nil:
		return fmt.Errorf("read keys file: %w", err)
	default:
		if st, err := os.Stat(path); err == nil {
			mode = st.Mode().Perm()
		}
	}
	var out []byte
	if strings.EqualFold(filepath.Ext(path), ".json") {
		out, err = appendJSON(old, e)
	} else {
		out, err = appendYAML(old, e)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if _, err := Parse(out, path); err != nil {
		return fmt.Errorf("adding key %q would make an invalid keys file: %w", e.ID, err)
	}
	return atomicfile.Write(path, out, mode)
}

func appendJSON(old []byte, e Entry) ([]byte, error) {
	var f File
	if len(bytes.TrimSpace(old)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(old))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			return nil, fmt.Errorf("parse existing keys file: %w", err)
		}
	}
	f.Keys = append(f.Keys, e)
	out, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode keys file: %w", err)
	}
	return append(out, '\n'), nil
}

func appendYAML(old []byte, e Entry) ([]byte, error) {
	var entry yaml.Node
	if err := entry.Encode(e); err != nil {
		return nil, fmt.Errorf("encode key entry: %w", err)
	}
	if len(bytes.TrimSpace(old)) == 0 {
		var doc yaml.Node
		if err := doc.Encode(File{Keys: []Entry{e}}); err != nil {
			return nil, fmt.Errorf("encode keys file: %w", err)
		}
		body, err := encodeYAML(&doc)
		if err != nil {
			return nil, err
		}
		return append([]byte(newFileHeader), body...), nil
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(old, &doc); err != nil {
		return nil, fmt.Errorf("parse existing keys file: %w", err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New(`existing keys file is not a {"keys": [...]} mapping`)
	}
	root := doc.Content[0]
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value != "keys" {
			continue
		}
		seq := root.Content[i+1]
		switch {
		case seq.Kind == yaml.SequenceNode:
		case seq.Kind == yaml.ScalarNode && (seq.Tag == "!!null" || seq.Value == ""):
			seq.Kind, seq.Tag, seq.Value = yaml.SequenceNode, "!!seq", ""
		default:
			return nil, fmt.Errorf(`"keys" at line %d is not a list`, seq.Line)
		}
		seq.Style = 0 // block style, even if the file had keys: []
		seq.Content = append(seq.Content, &entry)
		return encodeYAML(&doc)
	}
	root.Content = append(root.Content,
		&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "keys"},
		&yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Content: []*yaml.Node{&entry}})
	return encodeYAML(&doc)
}

func encodeYAML(n *yaml.Node) ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(n); err != nil {
		return nil, fmt.Errorf("encode keys file: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode keys file: %w", err)
	}
	return buf.Bytes(), nil
}

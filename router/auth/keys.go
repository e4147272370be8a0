// Package auth is the router's first gate after recovery: it authenticates a
// request by API key, decides whether that key may call the function (or the
// admin endpoint) the request targets, and leaves the key's identity in the
// echo.Context for the rate limiter and the logs. Keys are stored hashed at
// rest in a keys file (YAML or JSON) or the PILOTLIGHT_API_KEYS variable.
package auth

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// EnvVar holds keys in the keys-file format, in addition to (or instead of) a file.
const EnvVar = "PILOTLIGHT_API_KEYS"

// HashPrefix names the only hash scheme accepted at rest.
//
// Why SHA-256 and not argon2id/bcrypt: the keys are 32 random bytes made by
// `pilotlight keys new` (256 bits of entropy), so a stolen keys file cannot be
// brute-forced whatever the hash speed; slow password hashes only help
// low-entropy secrets, and they would cost milliseconds of CPU on every
// request. `pilotlight keys hash` refuses short keys for the same reason.
const HashPrefix = "sha256:"

// MaxKeyBytes bounds a presented key; longer values are rejected unhashed.
const MaxKeyBytes = 512

// File is the keys file: {"keys": [ ... ]} in JSON or the same shape in YAML.
type File struct {
	Keys []Entry `json:"keys" yaml:"keys"`
}

// Entry is one API key as stored at rest.
type Entry struct {
	// ID names the key's holder in logs, metrics and errors (team-fraud).
	ID string `json:"id" yaml:"id"`
	// Hash is "sha256:<64 lowercase hex>" of the key's exact text.
	Hash string `json:"hash" yaml:"hash"`
	// Functions the key may call by name; "*" allows every function.
	Functions []string `json:"functions,omitempty" yaml:"functions,omitempty"`
	// Admin allows /admin/* and /metrics.
	Admin bool `json:"admin,omitempty" yaml:"admin,omitempty"`
	// Rate overrides the limiter's default for this key.
	Rate *Rate `json:"rate,omitempty" yaml:"rate,omitempty"`
	// Key is never accepted: it exists so a plaintext key put in the file by
	// mistake is reported as such instead of as an unknown field.
	Key string `json:"key,omitempty" yaml:"key,omitempty"`
}

// Rate is a token bucket: RPS tokens per second, at most Burst stored.
type Rate struct {
	RPS   float64 `json:"rps" yaml:"rps"`
	Burst int     `json:"burst,omitempty" yaml:"burst,omitempty"`
}

// Identity is an authenticated key as the rest of the request sees it.
type Identity struct {
	ID        string
	Admin     bool
	Functions []string // as configured; "*" means all
	Rate      *Rate    // nil: the limiter's default

	all   bool
	allow map[string]bool
}

// Allows reports whether the key may call function fn.
func (id *Identity) Allows(fn string) bool { return id.all || id.allow[fn] }

// Keys is a loaded, validated set of API keys.
type Keys struct {
	ids  []*Identity
	sums [][sha256.Size]byte // sums[i] belongs to ids[i]
}

// Len is the number of keys.
func (k *Keys) Len() int { return len(k.ids) }

// IDs lists the key ids in file order (for a startup log line).
func (k *Keys) IDs() []string {
	out := make([]string, len(k.ids))
	for i, id := range k.ids {
		out[i] = id.ID
	}
	return out
}

// Load reads and validates a keys file (YAML or JSON; JSON is valid YAML).
func Load(path string) (*Keys, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read keys file: %w", err)
	}
	return Parse(data, path)
}

// LoadSources loads the keys file at path (skipped when path is "") and the
// keys in envValue (the value of EnvVar; skipped when empty), and merges
// them. Key ids and hashes must be unique across both. It is an error if
// neither source is given or together they hold no key.
func LoadSources(path, envValue string) (*Keys, error) {
	var files []*Keys
	if path != "" {
		k, err := Load(path)
		if err != nil {
			return nil, err
		}
		files = append(files, k)
	}
	if strings.TrimSpace(envValue) != "" {
		k, err := Parse([]byte(envValue), "$"+EnvVar)
		if err != nil {
			return nil, err
		}
		files = append(files, k)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no API keys: give a keys file or set %s", EnvVar)
	}
	out := &Keys{}
	seenID := map[string]bool{}
	seenSum := map[[sha256.Size]byte]string{}
	for _, k := range files {
		for i, id := range k.ids {
			if seenID[id.ID] {
				return nil, fmt.Errorf("key id %q is defined both in the keys file and in $%s", id.ID, EnvVar)
			}
			if other, dup := seenSum[k.sums[i]]; dup {
				return nil, fmt.Errorf("keys %q and %q have the same hash (one key, two identities)", other, id.ID)
			}
			seenID[id.ID], seenSum[k.sums[i]] = true, id.ID
			out.ids, out.sums = append(out.ids, id), append(out.sums, k.sums[i])
		}
	}
	if len(out.ids) == 0 {
		return nil, errors.New("no API keys: the keys file and $" + EnvVar + " list none")
	}
	return out, nil
}

var (
	idPattern   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	hexPattern  = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Parse validates keys-file bytes; source names them in errors.
// Unknown fields, duplicate mapping keys, duplicate ids and hashes, and
// anything that is not a well-formed sha256 hash are errors naming the entry.
func Parse(data []byte, source string) (*Keys, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: empty keys file (want {\"keys\": [...]})", source)
		}
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: more than one document; the keys file is one {\"keys\": [...]} document", source)
	}
	k := &Keys{}
	seenID := map[string]int{}
	seenSum := map[[sha256.Size]byte]int{}
	for i, e := range f.Keys {
		where := fmt.Sprintf("%s: keys[%d]", source, i)
		if e.ID != "" {
			where += fmt.Sprintf(" (id %q)", e.ID)
		}
		id, sum, err := validate(e)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if j, dup := seenID[id.ID]; dup {
			return nil, fmt.Errorf("%s: id already used by keys[%d]", where, j)
		}
		if j, dup := seenSum[sum]; dup {
			return nil, fmt.Errorf("%s: same hash as keys[%d] (one key, two identities)", where, j)
		}
		seenID[id.ID], seenSum[sum] = i, i
		k.ids, k.sums = append(k.ids, id), append(k.sums, sum)
	}
	return k, nil
}

func validate(e Entry) (*Identity, [sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	if e.Key != "" {
		return nil, sum, errors.New(`"key" holds a plaintext key; keys are stored hashed: put the output of "pilotlight keys hash" in "hash" and delete "key"`)
	}
	if !idPattern.MatchString(e.ID) {
		return nil, sum, fmt.Errorf("id %q must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit", e.ID)
	}
	h := e.Hash
	switch {
	case h == "":
		return nil, sum, errors.New(`missing "hash" (want "sha256:<64 hex digits>", from "pilotlight keys hash")`)
	case strings.HasPrefix(h, "pl_"):
		return nil, sum, errors.New(`"hash" looks like a plaintext key (starts with "pl_"); store its hash instead: echo -n KEY | pilotlight keys hash`)
	case !strings.HasPrefix(h, HashPrefix):
		return nil, sum, fmt.Errorf(`"hash" must start with %q (looks like a plaintext key or another scheme); store the output of "pilotlight keys hash"`, HashPrefix)
	case !hexPattern.MatchString(h[len(HashPrefix):]):
		return nil, sum, fmt.Errorf(`"hash" must be %q followed by 64 lowercase hex digits, got %d characters after the prefix`, HashPrefix, len(h)-len(HashPrefix))
	}
	if _, err := hex.Decode(sum[:], []byte(h[len(HashPrefix):])); err != nil {
		return nil, sum, fmt.Errorf(`"hash": %w`, err)
	}
	id := &Identity{ID: e.ID, Admin: e.Admin, Functions: e.Functions, allow: map[string]bool{}}
	for j, fn := range e.Functions {
		switch {
		case fn == "*":
			id.all = true
		case namePattern.MatchString(fn):
			id.allow[fn] = true
		default:
			return nil, sum, fmt.Errorf(`functions[%d] %q is neither "*" nor a function name`, j, fn)
		}
	}
	if len(e.Functions) == 0 && !e.Admin {
		return nil, sum, errors.New(`no "functions" and not "admin": the key could call nothing (use ["*"] for every function)`)
	}
	if e.Rate != nil {
		r := *e.Rate
		if math.IsNaN(r.RPS) || math.IsInf(r.RPS, 0) || r.RPS <= 0 {
			return nil, sum, fmt.Errorf(`rate.rps must be a positive number, got %v`, r.RPS)
		}
		if r.Burst < 0 {
			return nil, sum, fmt.Errorf(`rate.burst must not be negative, got %d`, r.Burst)
		}
		if r.Burst == 0 {
			// Same shape as the platform default (100 rps, burst 200).
			r.Burst = int(math.Min(math.Ceil(2*r.RPS), math.MaxInt32))
		}
		id.Rate = &r
	}
	return id, sum, nil
}

// Sum is the at-rest form of a key: "sha256:<hex>".
func Sum(key string) string {
	s := sha256.Sum256([]byte(key))
	return HashPrefix + hex.EncodeToString(s[:])
}

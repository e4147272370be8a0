package router

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/pilotlight/pilotlight/flags"
	"github.com/pilotlight/pilotlight/functions"
)

// cacheProbe holds flags the cache must leave alone (a clock, every
// header, a missing) beside ones it keeps, one per attribute the router
// supplies.
const cacheProbe = `{"flags": {
  "clock-revision": {"state": "ENABLED", "variants": {"stable": "demo-00001", "canary": "demo-00002"}, "defaultVariant": "stable",
    "targeting": {"if": [{">": [{"var": "$flagd.timestamp"}, 0]}, {"fractional": [["stable", 50], ["canary", 50]]}, null]}},
  "header-revision": {"state": "ENABLED", "variants": {"stable": "demo-00001", "canary": "demo-00002"}, "defaultVariant": "stable",
    "targeting": {"if": [{"==": [{"var": "headers.x-beta"}, "yes"]}, "canary", null]}},
  "missing-revision": {"state": "ENABLED", "variants": {"stable": "demo-00001", "canary": "demo-00002"}, "defaultVariant": "stable",
    "targeting": {"if": [{"missing": ["email"]}, "stable", "canary"]}},
  "region-revision": {"state": "ENABLED", "variants": {"stable": "demo-00001", "canary": "demo-00002", "ghost": "demo-00009"}, "defaultVariant": "stable",
    "targeting": {"if": [{"==": [{"var": "region"}, "eu"]}, "canary", {"==": [{"var": "region"}, ""]}, "ghost", {"==": [{"var": "function"}, "demo"]}, null, "nope"]}},
  "user-revision": {"state": "ENABLED", "variants": {"stable": "demo-00001", "canary": "demo-00002"}, "defaultVariant": "stable",
    "targeting": {"if": [{"ends_with": [{"var": "email"}, "@pilotlight.dev"]}, "canary", {"fractional": [["stable", 70], ["canary", 30]]}]}},
  "typed-revision": {"state": "ENABLED", "variants": {"on": true, "canary": "demo-00002"}, "defaultVariant": "on",
    "targeting": {"if": [{"var": "email"}, "canary", null]}},
  "key-revision": {"state": "ENABLED", "variants": {"stable": "demo-00001", "canary": "demo-00002"}, "defaultVariant": "stable",
    "targeting": {"if": [{"starts_with": [{"var": "targetingKey"}, "user-9"]}, "canary", {"fractional": [["stable", 50], ["canary", 50]]}]}}
}}`

// flagFilesForCache are the files the cache is held against: the shipped
// one, flags' fuzz corpus (every flagd oddity it keeps), and cacheProbe.
func flagFilesForCache(t *testing.T) map[string][]byte {
	t.Helper()
	out := map[string][]byte{"probe": []byte(cacheProbe)}
	raw, err := os.ReadFile("../config/flags/flags.json")
	if err != nil {
		t.Fatal(err)
	}
	out["config/flags/flags.json"] = raw
	corpus, _ := filepath.Glob("../flags/testdata/fuzz/FuzzParse/*")
	if len(corpus) == 0 {
		t.Fatal("no fuzz corpus under ../flags/testdata")
	}
	for _, path := range corpus {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		_, lit, _ := strings.Cut(string(b), "\n")
		text, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(lit), "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if _, err := flags.Parse([]byte(text)); err == nil {
			out[path] = []byte(text)
		}
	}
	return out
}

func newPicker(t testing.TB, path string) *FlagPicker {
	t.Helper()
	w, err := flags.NewWatcher(flags.WatcherConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewFlagPicker(w, path, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// randomRequest draws a request from small pools, so users come back (the
// cache answers) and every source of the targeting key is used, a random
// one included.
func randomRequest(rng *rand.Rand) (hdrs map[string]string, body []byte) {
	hdrs = map[string]string{}
	switch rng.IntN(6) {
	case 0: // no key: a random one
	case 1:
		hdrs["Cookie"] = fmt.Sprintf("pl_uid=cookie-%d", rng.IntN(20))
	case 2:
		body = fmt.Appendf(nil, `{"user_id": %d}`, rng.IntN(20))
	default:
		hdrs["X-User-ID"] = fmt.Sprintf("user-%d", rng.IntN(40))
	}
	if rng.IntN(3) == 0 {
		hdrs["X-User-Email"] = []string{"ada@pilotlight.dev", "bob@example.com", "x"}[rng.IntN(3)]
	}
	if rng.IntN(3) == 0 {
		hdrs["X-Region"] = []string{"eu", "us"}[rng.IntN(2)]
	}
	if rng.IntN(3) == 0 {
		hdrs["X-Beta"] = []string{"yes", "no"}[rng.IntN(2)]
	}
	return hdrs, body
}

// The cache answers exactly as running the rule does: every flag of every
// file, many random requests, the evaluation, the revision and the
// fallback counter compared with a picker that has no cache.
func TestFlagCacheAgreesWithEvaluation(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 2))
	var hits int64
	cachedFlags := 0
	for name, raw := range flagFilesForCache(t) {
		path := filepath.Join(t.TempDir(), "flags.json")
		if err := os.WriteFile(path, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		cached, plain := newPicker(t, path), newPicker(t, path)
		plain.cache = nil
		set := cached.watcher.Set()
		for _, key := range append(set.Keys(), "absent-revision") {
			in, ok := set.Inputs(key)
			if ok && !set.ContextFree(key) && !slices.Contains(in, "headers") {
				cachedFlags++
			}
			fns := []*functions.Manifest{
				{Name: "demo", Flag: key, Revisions: []functions.Revision{{Name: "demo-00001", Tag: "stable"}, {Name: "demo-00002"}}},
				{Name: "other", Flag: key, Revisions: []functions.Revision{{Name: "demo-00002", Tag: "stable"}}},
			}
			for i := range 300 {
				fn := fns[i%2]
				hdrs, body := randomRequest(rng)
				var fh fasthttp.RequestHeader
				fh.SetMethod("POST")
				fh.SetRequestURI("/functions/demo")
				for k, v := range hdrs {
					fh.Set(k, v)
				}
				view := fastView{&fh}
				if _, random := targetingKey(view, body); random && (!ok || slices.Contains(in, "targetingKey")) {
					continue // a random key may give a random answer either way
				}
				a, b := cached.evaluate(set, fn, view, body), plain.evaluate(set, fn, view, body)
				if a != b {
					t.Fatalf("%s: flag %s, %s %v %s: cached %+v, evaluated %+v", name, key, fn.Name, hdrs, body, a, b)
				}
				if x, y := cached.pick(context.Background(), fn, view, body), plain.pick(context.Background(), fn, view, body); x != y {
					t.Fatalf("%s: flag %s, %s %v: cached picks %s, evaluated %s", name, key, fn.Name, hdrs, x, y)
				}
			}
		}
		if c, p := values(t, cached.fallbacks), values(t, plain.fallbacks); fmt.Sprint(c) != fmt.Sprint(p) {
			t.Errorf("%s: fallbacks cached %v, evaluated %v", name, c, p)
		}
		hits += cached.cache.hits.Load()
		if plain.cache != nil {
			t.Fatal("the plain picker grew a cache")
		}
	}
	if hits == 0 || cachedFlags < 5 {
		t.Fatalf("%d cache hits over %d cacheable flags: the test compared nothing", hits, cachedFlags)
	}
}

// What must never be cached is not: a rule reading the clock, every
// header, missing; and, for a rule that reads the key other than to split
// by it, a request with no key of its own. A rule that reads the key only
// to split by it is remembered without the key: one entry serves every
// user with the same attributes. The OpenFeature path (tracing's hook)
// never uses the cache, so hooks see every call.
func TestFlagCacheLeavesAlone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flags.json")
	if err := os.WriteFile(path, []byte(cacheProbe), 0o644); err != nil {
		t.Fatal(err)
	}
	p := newPicker(t, path)
	pick := func(flag string, hdrs map[string]string) string {
		var fh fasthttp.RequestHeader
		for k, v := range hdrs {
			fh.Set(k, v)
		}
		fn := &functions.Manifest{Name: "demo", Flag: flag, Revisions: []functions.Revision{{Name: "demo-00001", Tag: "stable"}, {Name: "demo-00002"}}}
		return p.pick(context.Background(), fn, fastView{&fh}, nil)
	}
	counts := func() (int64, int64) { return p.cache.hits.Load(), p.cache.misses.Load() }
	for i := range 50 {
		user := map[string]string{"X-User-ID": "user-1", "X-User-Email": "a@b", "X-Beta": "yes"}
		pick("clock-revision", user)
		pick("header-revision", user)
		pick("missing-revision", user)
		pick("key-revision", map[string]string{"X-Region": strconv.Itoa(i)}) // no key: random
	}
	if h, m := counts(); h+m != 0 {
		t.Fatalf("cache consulted: %d hits, %d misses", h, m)
	}
	// Kept on its second miss (the doorkeeper), answered on the third.
	for range 3 {
		pick("key-revision", map[string]string{"X-User-ID": "user-1"})
	}
	if h, m := counts(); h != 1 || m != 2 {
		t.Fatalf("a returning user: %d hits, %d misses; want 1, 2", h, m)
	}
	// A split on the key: a new user every time, one entry for them all,
	// each user still in their own bucket.
	got := map[string]int{}
	for i := range 200 {
		got[pick("user-revision", map[string]string{"X-User-ID": "new-" + strconv.Itoa(i)})]++
	}
	if h, m := counts(); h != 1+198 || m != 2+2 {
		t.Fatalf("200 new users of a split: %d hits, %d misses; want 199, 4", h, m)
	}
	if n, _ := p.cache.stats(); n != 2 {
		t.Fatalf("%d entries; want 2 (the returning user's and the split's)", n)
	}
	if got["demo-00001"] < 100 || got["demo-00002"] < 30 {
		t.Fatalf("200 new users on a 70/30 split went %v", got)
	}
	p.hooked.Store(true)
	for range 10 {
		pick("user-revision", map[string]string{"X-User-ID": "user-1"})
	}
	if h, m := counts(); h != 199 || m != 4 {
		t.Fatalf("hooked picks used the cache: %d hits, %d misses", h, m)
	}
}

// A new version of the flag file answers at once (from a new, empty
// generation: the doorkeeper, which knows the user, keeps its first miss);
// the same bytes loaded again keep what was learnt.
func TestFlagCacheFollowsTheVersion(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "flags.json")
	file := func(variant string) []byte {
		return fmt.Appendf(nil, `{"flags": {"demo-revision": {"state": "ENABLED", "variants": {"stable": "demo-00001", "canary": "demo-00002"},
		  "defaultVariant": "stable", "targeting": {"if": [{"ends_with": [{"var": "email"}, "@pilotlight.dev"]}, %q, null]}}}}`, variant)
	}
	if err := os.WriteFile(path, file("canary"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := newPicker(t, path)
	fn := &functions.Manifest{Name: "demo", Flag: "demo-revision", Revisions: []functions.Revision{{Name: "demo-00001", Tag: "stable"}, {Name: "demo-00002"}}}
	var fh fasthttp.RequestHeader
	fh.Set("X-User-Email", "ada@pilotlight.dev")
	pick := func() string { return p.pick(context.Background(), fn, fastView{&fh}, nil) }
	for range 2 { // the second miss is kept
		if got := pick(); got != "demo-00002" {
			t.Fatalf("first picks %s", got)
		}
	}
	if n, _ := p.cache.stats(); n != 1 {
		t.Fatalf("%d entries after two picks", n)
	}
	for _, step := range []struct {
		variant, want string
		entries       int64
	}{{"stable", "demo-00001", 1}, {"stable", "demo-00001", 1}, {"canary", "demo-00002", 1}} {
		if err := os.WriteFile(path, file(step.variant), 0o644); err != nil {
			t.Fatal(err)
		}
		p.watcher.ReloadNow()
		if got := pick(); got != step.want {
			t.Fatalf("after writing %s: picked %s, want %s", step.variant, got, step.want)
		}
		if n, _ := p.cache.stats(); n != step.entries {
			t.Fatalf("after writing %s: %d entries", step.variant, n)
		}
	}
	// The same bytes again: a new Set, the same version, the entry kept.
	hits := p.cache.hits.Load()
	p.watcher.ReloadNow()
	pick()
	if p.cache.hits.Load() != hits+1 {
		t.Fatal("reloading identical bytes dropped the cache")
	}
}

// However many users come, the cache stays within its entries and bytes.
func TestFlagCacheBounded(t *testing.T) {
	c := newFlagCache()
	s, err := flags.Parse([]byte(`{"flags": {}}`))
	if err != nil {
		t.Fatal(err)
	}
	g := c.generation(s)
	long := strings.Repeat("u", 1000)
	for i := range 3 * flagCacheMaxEntries {
		id := strconv.Itoa(i)
		if i%2 == 0 {
			id += long // half the keys are big: the byte bound must bite too
		}
		key := appendInput(nil, id, true)
		c.put(g, key, c.hash(key), cached{e: evaluation{value: "demo-00002", reason: "TARGETING_MATCH"}})
		if i%1024 == 0 {
			n, b := c.stats()
			if n > flagCacheMaxEntries || b > flagCacheMaxBytes {
				t.Fatalf("after %d users: %d entries, %d bytes", i, n, b)
			}
		}
	}
	n, b := c.stats()
	var count, bytes int
	for i := range g.shards {
		count += len(g.shards[i].m)
		bytes += g.shards[i].bytes
		for k, e := range g.shards[i].m {
			bytes -= entryBytes(k, e)
		}
	}
	if int64(count) != n || bytes != 0 || n < flagCacheMaxEntries/8 || b > flagCacheMaxBytes {
		t.Fatalf("stats %d entries %d bytes; maps hold %d, byte drift %d", n, b, count, bytes)
	}
	t.Logf("%d entries, %d bytes", n, b)
}

// processCPU is the process's user+system time so far, in nanoseconds.
func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// BenchmarkFlagPick is one pick of the shipped fraud flag (a targeted
// rule, then a 90/10 split) from the fast path's header: without the
// cache, with 10,000 users drawn from a Zipf distribution, and with a new
// user every time (every pick a miss, so the cache's own cost).
func BenchmarkFlagPick(b *testing.B) {
	fn := &functions.Manifest{Name: "fraud", Flag: "fraud-revision", Revisions: []functions.Revision{{Name: "fraud-00001", Tag: "stable"}, {Name: "fraud-00002"}}}
	zipf := rand.NewZipf(rand.New(rand.NewPCG(1, 2)), 1.1, 1, 9999)
	draws := make([][]byte, 1<<16)
	for i := range draws {
		draws[i] = strconv.AppendUint([]byte("user-"), zipf.Uint64(), 10)
	}
	for _, mode := range []struct {
		name   string
		cached bool
		user   func(i int, buf []byte) []byte
	}{
		{"uncached/zipf-10k", false, func(i int, _ []byte) []byte { return draws[i&(1<<16-1)] }},
		{"cached/zipf-10k", true, func(i int, _ []byte) []byte { return draws[i&(1<<16-1)] }},
		{"uncached/new-user", false, func(i int, buf []byte) []byte { return strconv.AppendInt(append(buf[:0], "new-"...), int64(i), 10) }},
		{"cached/new-user", true, func(i int, buf []byte) []byte { return strconv.AppendInt(append(buf[:0], "new-"...), int64(i), 10) }},
	} {
		b.Run(mode.name, func(b *testing.B) {
			p := newPicker(b, "../config/flags/flags.json")
			if !mode.cached {
				p.cache = nil
			}
			var fh fasthttp.RequestHeader
			fh.SetMethod("POST")
			fh.SetRequestURI("/v2/models/fraud/infer")
			fh.Set("Content-Type", "application/json")
			view := fastView{&fh}
			ctx := context.Background()
			buf := make([]byte, 0, 32)
			b.ReportAllocs()
			cpu0 := processCPU()
			i := 0
			for b.Loop() {
				fh.SetBytesV(UserIDHeader, mode.user(i, buf))
				if p.pick(ctx, fn, view, nil) == "" {
					b.Fatal("no revision")
				}
				i++
			}
			// On a shared, loaded machine wall time per op is mostly
			// waiting: the process's CPU time per op is the figure to read.
			b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
			if p.cache != nil {
				n, size := p.cache.stats()
				b.ReportMetric(float64(n), "entries")
				b.ReportMetric(float64(size)/(1<<20), "MiB")
			}
		})
	}
}

package router

import (
	"encoding/binary"
	"hash/maphash"
	"sync"
	"sync/atomic"

	"github.com/pilotlight/pilotlight/flags"
)

// Bounds of the flag evaluation cache. A user's answer is a few strings;
// 64k users in at most 16 MiB keeps a router's memory flat under any
// number of distinct users, and a full shard makes room at random (no
// bookkeeping on the hit path), which under a skewed population keeps the
// frequent users mostly resident.
const (
	flagCacheMaxEntries = 1 << 16
	flagCacheMaxBytes   = 16 << 20
	flagCacheShards     = 32
	// flagCacheEntryOverheadBytes is what an entry costs besides its key
	// and strings: the map slot, two string headers and the result's.
	flagCacheEntryOverheadBytes = 96
	// flagCacheSplitOverheadBytes is what each bucket of a remembered split
	// costs besides its strings: its Result and its evaluation.
	flagCacheSplitOverheadBytes = 160
	// flagCacheDoorkeeperSlots remember the hash of keys seen once (8 bytes
	// each, 256 KiB): a key is kept only when it comes a second time, so a
	// stream of one-time users (each request a new user) costs a lookup and
	// no insertion or eviction, as TinyLFU's doorkeeper does.
	flagCacheDoorkeeperSlots = 1 << 15
)

// evaluation is what the picker keeps of one flag evaluation: exactly the
// fields it reads of the provider's answer.
type evaluation struct {
	value, reason, code string
}

// cached is one remembered answer: an evaluation, or for a flag that
// reads the targeting key only to split by it (flags.Set.DeferredInputs),
// remembered without the key, one evaluation per bucket, which the
// request's key picks.
type cached struct {
	e     evaluation
	split *flags.Deferred // nil: e is the answer
	evals []evaluation    // with split: evals[split.Index(key)]
}

// answer is the evaluation for targeting key tk.
func (c cached) answer(tk string) evaluation {
	if c.split == nil {
		return c.e
	}
	return c.evals[c.split.Index(tk)]
}

// flagCache remembers flag evaluations for one version of the flag file,
// keyed by the flag and the values of exactly the attributes its rule can
// read (flags.Set.Inputs). A new version starts an empty generation; an
// entry computed from the old one can only land in the old one.
type flagCache struct {
	gen          atomic.Pointer[cacheGen]
	seed         maphash.Seed
	hits, misses atomic.Int64
	seen         [flagCacheDoorkeeperSlots]atomic.Uint64
}

type cacheGen struct {
	version        string
	set            atomic.Pointer[flags.Set] // the last Set seen with this version
	entries, bytes atomic.Int64
	shards         [flagCacheShards]cacheShard
}

type cacheShard struct {
	mu    sync.RWMutex
	m     map[string]cached
	bytes int
	_     [40]byte // keep shards' locks off each other's cache lines
}

func newFlagCache() *flagCache { return &flagCache{seed: maphash.MakeSeed()} }

// generation is the cache for set: the current one when set has its
// version (the same file loaded again keeps its answers), else a new one.
func (c *flagCache) generation(set *flags.Set) *cacheGen {
	for {
		g := c.gen.Load()
		if g != nil {
			if g.set.Load() == set {
				return g
			}
			if g.version == set.Version() {
				g.set.Store(set)
				return g
			}
		}
		ng := &cacheGen{version: set.Version()}
		ng.set.Store(set)
		for i := range ng.shards {
			ng.shards[i].m = map[string]cached{}
		}
		if c.gen.CompareAndSwap(g, ng) {
			return ng
		}
	}
}

// hash places a key: its shard and its doorkeeper slot.
func (c *flagCache) hash(key []byte) uint64 { return maphash.Bytes(c.seed, key) }

func (c *flagCache) get(g *cacheGen, key []byte, h uint64) (cached, bool) {
	s := &g.shards[h%flagCacheShards]
	s.mu.RLock()
	e, ok := s.m[string(key)]
	s.mu.RUnlock()
	if ok {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
	return e, ok
}

// admit reports whether a missed key has been missed before (recently:
// a slot holds one hash), and remembers it otherwise.
func (c *flagCache) admit(h uint64) bool {
	slot := &c.seen[(h>>32)%flagCacheDoorkeeperSlots]
	if slot.Load() == h {
		return true
	}
	slot.Store(h)
	return false
}

func entryBytes(key string, c cached) int {
	n := flagCacheEntryOverheadBytes + len(key) + evalBytes(c.e)
	if c.split != nil {
		n += flagCacheSplitOverheadBytes * (len(c.evals) + 1) // the Results and their evaluations
		for _, e := range c.evals {
			n += evalBytes(e)
		}
	}
	return n
}

func evalBytes(e evaluation) int { return len(e.value) + len(e.reason) + len(e.code) }

func (c *flagCache) put(g *cacheGen, key []byte, h uint64, e cached) {
	size := entryBytes(string(key), e)
	const maxEntries, maxBytes = flagCacheMaxEntries / flagCacheShards, flagCacheMaxBytes / flagCacheShards
	if size > maxBytes {
		return
	}
	s := &g.shards[h%flagCacheShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[string(key)]; ok {
		return // another request got there first, with the same answer
	}
	if len(s.m) >= maxEntries || s.bytes+size > maxBytes {
		for k, old := range s.m { // map order is random: evict at random
			n := entryBytes(k, old)
			delete(s.m, k)
			s.bytes -= n
			g.entries.Add(-1)
			g.bytes.Add(-int64(n))
			if len(s.m) < maxEntries && s.bytes+size <= maxBytes {
				break
			}
		}
	}
	s.m[string(key)] = e
	s.bytes += size
	g.entries.Add(1)
	g.bytes.Add(int64(size))
}

// stats is the current generation's size.
func (c *flagCache) stats() (entries, bytes int64) {
	g := c.gen.Load()
	if g == nil {
		return 0, 0
	}
	return g.entries.Load(), g.bytes.Load()
}

// appendInput appends one attribute to a cache key: absent and present
// (even empty) differ, and a length prefix keeps values from running into
// each other.
func appendInput(key []byte, v string, present bool) []byte {
	if !present {
		return append(key, 0)
	}
	key = append(key, 1)
	key = binary.AppendUvarint(key, uint64(len(v)))
	return append(key, v...)
}

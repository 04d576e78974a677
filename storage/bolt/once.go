package bolt

import (
	"errors"
	"sync"
)

// DefaultMaxOnce bounds the single-use record: at most this many signed
// requests are remembered at once. At the default auth_skew of 60 s (kept
// for up to twice that) it allows thousands of authenticated requests per
// second; beyond it Once refuses (ErrOnceFull, a 503) rather than grow.
const DefaultMaxOnce = 1 << 20

// ErrOnceFull means the single-use record is at its bound: the request
// cannot be checked for reuse, so it must be refused (try again shortly).
var ErrOnceFull = errors.New("too many signed requests in flight to check them for reuse")

// onceShards spreads the record over locks; keys are hashes, so evenly.
const onceShards = 16

// onceSet is the single-use record: per shard, a map from key to the time
// it is kept until, and a min-heap of the same entries by that time, so
// sweeping what has expired costs O(log n) per entry and never a scan.
type onceSet struct {
	shards [onceShards]onceShard
}

type onceShard struct {
	mu   sync.Mutex
	max  int
	m    map[[32]byte]int64 // key → until (unix ns)
	heap []onceEntry        // the same entries, earliest until first
	peak int                // largest len(m) since m was made
}

type onceEntry struct {
	until int64
	key   [32]byte
}

func (o *onceSet) init(max int) {
	if max <= 0 {
		max = DefaultMaxOnce
	}
	per := max / onceShards
	if max%onceShards != 0 {
		per++
	}
	for i := range o.shards {
		o.shards[i].max = per
		o.shards[i].m = map[[32]byte]int64{}
	}
}

// use records key until until (unix ns) and reports whether it was new.
func (o *onceSet) use(key [32]byte, until, now int64) (bool, error) {
	sh := &o.shards[key[0]%onceShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.sweep(now)
	if u, ok := sh.m[key]; ok && u > now {
		return false, nil
	}
	if until <= now {
		return true, nil // already past: nothing to remember
	}
	if len(sh.m) >= sh.max {
		return false, ErrOnceFull
	}
	sh.m[key] = until
	sh.peak = max(sh.peak, len(sh.m))
	sh.push(onceEntry{until, key})
	return true, nil
}

// sweep forgets every entry kept until now or earlier.
func (sh *onceShard) sweep(now int64) {
	for len(sh.heap) > 0 && sh.heap[0].until <= now {
		e := sh.pop()
		if sh.m[e.key] == e.until {
			delete(sh.m, e.key)
		}
	}
	// A map never shrinks: after a burst, start a small one again.
	if len(sh.m) == 0 && sh.peak > 1024 {
		sh.m, sh.peak = map[[32]byte]int64{}, 0
		sh.heap = nil
	}
}

func (sh *onceShard) push(e onceEntry) {
	h := append(sh.heap, e)
	for i := len(h) - 1; i > 0; {
		p := (i - 1) / 2
		if h[p].until <= h[i].until {
			break
		}
		h[p], h[i] = h[i], h[p]
		i = p
	}
	sh.heap = h
}

func (sh *onceShard) pop() onceEntry {
	h := sh.heap
	top := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(h) && h[l].until < h[m].until {
			m = l
		}
		if r < len(h) && h[r].until < h[m].until {
			m = r
		}
		if m == i {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	sh.heap = h
	return top
}

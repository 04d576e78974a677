package bolt

import (
	"sync"

	"github.com/kezchat/kez/storage"
)

// recordCacheMax bounds the records kept decoded (each a few hundred bytes
// with its registration): the active senders and recipients of a busy
// server, not every user.
const recordCacheMax = 8192

// recordCache keeps decoded records by handle and the handle of each
// primary, so the two lookups of every send skip a bbolt read transaction
// and a json.Unmarshal of the record.
//
// A record changes only by Rotate or Delete, which call invalidate after
// their commit and before they return. A lookup that read the database
// must not put back what it read if a change committed meanwhile: it takes
// the generation before its read and put refuses it once the generation
// moved. A lookup that starts after invalidate reads the committed change.
// Only records found are kept (a handle registered later is found by the
// next lookup).
type recordCache struct {
	mu        sync.Mutex
	gen       uint64
	byHandle  map[string]storage.Record
	byPrimary map[string]string
}

func newRecordCache() *recordCache {
	return &recordCache{byHandle: map[string]storage.Record{}, byPrimary: map[string]string{}}
}

// generation is the value to hand to put after reading the database.
func (c *recordCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func (c *recordCache) record(handle string) (storage.Record, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rec, ok := c.byHandle[handle]
	return rec, ok
}

func (c *recordCache) handleOf(primary string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.byPrimary[primary]
	return h, ok
}

// put keeps rec, read from the database at generation gen, unless a change
// committed since.
func (c *recordCache) put(gen uint64, rec storage.Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if len(c.byHandle) >= recordCacheMax {
		evictOne(c.byHandle)
	}
	if len(c.byPrimary) >= recordCacheMax {
		evictOne(c.byPrimary)
	}
	c.byHandle[rec.Handle] = rec
	c.byPrimary[rec.Primary] = rec.Handle
}

// evictOne drops an arbitrary entry (map iteration starts at random).
func evictOne[V any](m map[string]V) {
	for k := range m {
		delete(m, k)
		return
	}
}

// invalidate forgets every record: rotations and deletions are rare, and
// forgetting all of them needs no reasoning about which entries a change
// touched (the old primary, the handle, a primary registered again).
func (c *recordCache) invalidate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	clear(c.byHandle)
	clear(c.byPrimary)
}

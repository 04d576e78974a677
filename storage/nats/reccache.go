package nats

import (
	"time"

	"github.com/kezchat/kez/storage"
)

// The record cache: handles' records (and primaries' handles) read here,
// so that a send's two lookups (recipient, sender) cost no round trip.
//
// What keeps it true, with rotations and deletions made through any
// server:
//
//   - every write to h.<handle> (registration, rotation, deletion, log
//     migration), made here or seen by the bindings watch, drops the
//     handle's entry and raises changed[handle] to its seq (noteChanged);
//   - an entry is stored only if the record read is at least that seq,
//     checked under s.mu with the drop: a read that raced a change (an old
//     replica's answer, or the watch's message arriving meanwhile) is
//     never stored;
//   - an entry is served for recordCacheTTL at most, and the cache is
//     emptied when the connection is lost or the watch reports an error.
//
// Staleness: a change made through this server is seen at once (its entry
// is dropped before Rotate or Delete returns). One made through another
// server is seen here once the watch delivers it: the watch's delivery
// lag (milliseconds; TestRecordCacheSeesOtherServersChanges), and never
// more than recordCacheTTL. That is the same order as an uncached direct
// get, which any replica answers, one that may not have the change yet.
// A primary's entry is only a pointer to a handle: the handle's record,
// cached under the rules above, must still hold that primary.
const (
	recordCacheTTL = time.Second
	// recordCacheMax bounds the entries; past it the cache starts over.
	recordCacheMax = 1 << 16
)

type cachedRecord struct {
	rec storage.Record
	at  time.Time
}

type cachedHandle struct {
	handle string
	at     time.Time
}

// cachedLookup returns handle's cached record, if fresh.
func (s *Store) cachedLookup(handle string) (storage.Record, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.recCache[handle]
	if !ok || s.recordCacheOff || time.Since(e.at) > recordCacheTTL {
		return storage.Record{}, false
	}
	return e.rec, true
}

// cacheRecord stores rec, read at seq, unless a change of its handle at a
// later seq is known here.
func (s *Store) cacheRecord(rec storage.Record, seq uint64, readAt time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq < s.changed[rec.Handle] {
		return
	}
	if len(s.recCache) >= recordCacheMax {
		clear(s.recCache)
	}
	s.recCache[rec.Handle] = cachedRecord{rec: rec, at: readAt}
}

// cachedPrimary returns the handle primary was last seen bound to, if fresh.
func (s *Store) cachedPrimary(primary string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.primCache[primary]
	if !ok || s.recordCacheOff || time.Since(e.at) > recordCacheTTL {
		return "", false
	}
	return e.handle, true
}

func (s *Store) cachePrimary(primary, handle string, readAt time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.primCache) >= recordCacheMax {
		clear(s.primCache)
	}
	s.primCache[primary] = cachedHandle{handle: handle, at: readAt}
}

// forgetRecords empties the record cache.
func (s *Store) forgetRecords() {
	s.mu.Lock()
	clear(s.recCache)
	clear(s.primCache)
	clear(s.pushCache)
	s.mu.Unlock()
}

// Push lists (push.s.<handle>) are cached by the same rules, "none"
// included (most handles have none, and every send looks): the bindings
// watch also delivers their writes. A list served late only sends a
// notification to an endpoint just removed, or skips one just added, for
// as long as the watch takes (recordCacheTTL at most).
type cachedPush struct {
	list []storage.PushSubscription
	at   time.Time
}

func (s *Store) cachedPushList(handle string) ([]storage.PushSubscription, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.pushCache[handle]
	if !ok || s.recordCacheOff || time.Since(e.at) > recordCacheTTL {
		return nil, false
	}
	return e.list, true
}

// cachePushList stores handle's list read at seq (0: none ever written),
// unless a later write of it is known here.
func (s *Store) cachePushList(handle string, list []storage.PushSubscription, seq uint64, readAt time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq < s.pushChanged[handle] {
		return
	}
	if len(s.pushCache) >= recordCacheMax {
		clear(s.pushCache)
	}
	s.pushCache[handle] = cachedPush{list: list, at: readAt}
}

// pushWritten records a write of handle's list at seq, made here or seen
// by the watch.
func (s *Store) pushWritten(handle string, seq uint64) {
	s.mu.Lock()
	s.pushChanged[handle] = max(s.pushChanged[handle], seq)
	delete(s.pushCache, handle)
	s.mu.Unlock()
}

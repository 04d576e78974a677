package nats

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/nats/natstest"
	"github.com/kezchat/kez/storage/storagetest"
)

// sentBy counts what s sends to NATS while f runs.
func sentBy(s *Store, f func()) uint64 {
	before := s.nc.Stats().OutMsgs
	f()
	return s.nc.Stats().OutMsgs - before
}

// lookups checks what s answers for handle, its old primary and its new
// one (new "": deleted).
func lookups(t *testing.T, s *Store, handle, old, new string) {
	t.Helper()
	ctx := context.Background()
	if _, err := s.LookupPrimary(ctx, old); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the replaced primary still finds a record: %v", err)
	}
	rec, err := s.Lookup(ctx, handle)
	if new == "" {
		if !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("lookup of a deleted handle: %+v %v", rec, err)
		}
		return
	}
	if err != nil || rec.Primary != new {
		t.Fatalf("lookup: %+v %v, want primary %s", rec, err, new)
	}
	if rec, err := s.LookupPrimary(ctx, new); err != nil || rec.Handle != handle {
		t.Fatalf("lookup of the new primary: %+v %v", rec, err)
	}
}

// Two servers on a 3-node cluster: lookups are served from the cache (no
// message to NATS) until the handle changes; a rotation or deletion made
// through one server is seen at once by it, and by the other as soon as
// its bindings watch has the change, even with the old record cached.
func TestRecordCacheSeesOtherServersChanges(t *testing.T) {
	c := natstest.RunCluster(t, 3)
	ctx := context.Background()
	a, b := pair(t, c, "rc", Options{}, nil, nil)
	alice := storagetest.Register(t, a, "alice", 1)
	storagetest.Register(t, a, "bob", 2)
	warm := func(s *Store, primary string) {
		if _, err := s.Lookup(ctx, "alice"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.LookupPrimary(ctx, primary); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []*Store{a, b} {
		warm(s, alice.Primary)
		if n := sentBy(s, func() { warm(s, alice.Primary) }); n != 0 {
			t.Fatalf("cached lookups sent %d messages to NATS", n)
		}
	}

	// Rotation through a, with both caches holding alice's old record.
	newKey := storagetest.Primary(7)
	seen := b.changedAt("alice")
	if _, err := a.Rotate(ctx, "alice", alice.Primary, newKey, rotation("alice", alice.Primary, newKey)); err != nil {
		t.Fatal(err)
	}
	lookups(t, a, "alice", alice.Primary, newKey) // through a: at once
	waitFor(t, 5*time.Second, "b's bindings watch to deliver the rotation", func() bool { return b.changedAt("alice") > seen })
	lookups(t, b, "alice", alice.Primary, newKey)

	// Deletion through b, with a's cache holding the new record.
	warm(a, newKey)
	seen = a.changedAt("alice")
	if _, err := b.Delete(ctx, "alice", newKey, []byte(`{"d":1}`), time.Now()); err != nil {
		t.Fatal(err)
	}
	lookups(t, b, "alice", newKey, "")
	waitFor(t, 5*time.Second, "a's bindings watch to deliver the deletion", func() bool { return a.changedAt("alice") > seen })
	lookups(t, a, "alice", newKey, "")
}

// A read that raced a change is not cached: a record read at a seq below
// a change known here (a lagging replica's answer, or one read before the
// watch delivered the change) is dropped, not served.
func TestRecordCacheRefusesReadsOlderThanAChange(t *testing.T) {
	c := natstest.Run(t)
	s := open(t, Options{URLs: []string{c.URL(0)}, Prefix: "rcg"})
	ctx := context.Background()
	storagetest.Register(t, s, "alice", 1)
	rec, err := s.Lookup(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	_, seq, err := s.getKeySeq(ctx, handleKey("alice"), true)
	if err != nil {
		t.Fatal(err)
	}
	s.noteChanged("alice", seq+1) // as the watch does for a later write
	if _, ok := s.cachedLookup("alice"); ok {
		t.Fatal("a change left the old record cached")
	}
	s.cacheRecord(rec, seq, time.Now())
	if _, ok := s.cachedLookup("alice"); ok {
		t.Fatal("a record older than a known change was cached")
	}
	s.cacheRecord(rec, seq+1, time.Now())
	if got, ok := s.cachedLookup("alice"); !ok || got.Primary != rec.Primary {
		t.Fatal("a record as new as the change was not cached")
	}
	// Entries end with their TTL, watch or not.
	s.cacheRecord(rec, seq+1, time.Now().Add(-recordCacheTTL-time.Millisecond))
	if _, ok := s.cachedLookup("alice"); ok {
		t.Fatal("an entry older than the TTL was served")
	}
}

// Push lists, "none" included, are cached the same way: a change made
// through one server is seen at once by it and by the other once its
// watch has it; cached reads send nothing.
func TestPushCacheSeesOtherServersChanges(t *testing.T) {
	c := natstest.RunCluster(t, 3)
	ctx := context.Background()
	a, b := pair(t, c, "pc", Options{}, nil, nil)
	storagetest.Register(t, a, "alice", 1)
	endpoints := func(s *Store) string { // "" for none
		t.Helper()
		list, err := s.PushSubscriptions(ctx, "alice")
		if err != nil || len(list) > 1 {
			t.Fatalf("alice's push list: %+v %v", list, err)
		}
		if len(list) == 0 {
			return ""
		}
		return list[0].Endpoint
	}
	for _, s := range []*Store{a, b} {
		if got := endpoints(s); got != "" {
			t.Fatalf("a list before any subscription: %v", got)
		}
		if n := sentBy(s, func() { endpoints(s) }); n != 0 {
			t.Fatalf("a cached empty list sent %d messages to NATS", n)
		}
	}
	pushSeen := func(s *Store) uint64 { // the last write of alice's list s knows of
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.pushChanged["alice"]
	}
	sub := storagetest.PushSub(1, 1)
	seen := pushSeen(b)
	if err := a.PutPush(ctx, "alice", sub, 10); err != nil {
		t.Fatal(err)
	}
	if got := endpoints(a); got != sub.Endpoint {
		t.Fatalf("through a, at once: %q", got)
	}
	waitFor(t, 5*time.Second, "b's watch to deliver the subscription", func() bool { return pushSeen(b) > seen })
	if got := endpoints(b); got != sub.Endpoint {
		t.Fatalf("through b: %q", got)
	}
	if n := sentBy(b, func() { endpoints(b) }); n != 0 {
		t.Fatalf("a cached list sent %d messages to NATS", n)
	}
	seen = pushSeen(a)
	if found, err := b.DeletePush(ctx, "alice", sub.Endpoint); err != nil || !found {
		t.Fatalf("delete: %v %v", found, err)
	}
	if got := endpoints(b); got != "" {
		t.Fatalf("through b after its deletion: %q", got)
	}
	waitFor(t, 5*time.Second, "a's watch to deliver the deletion", func() bool { return pushSeen(a) > seen })
	if got := endpoints(a); got != "" {
		t.Fatalf("through a after b's deletion: %q", got)
	}
}

package bolt

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/storagetest"
)

// lookupBoth checks that handle is bound to primary through both lookups.
func lookupBoth(t *testing.T, s *Store, handle, primary string) {
	t.Helper()
	ctx := context.Background()
	if rec, err := s.Lookup(ctx, handle); err != nil || rec.Primary != primary {
		t.Fatalf("Lookup(%s) = %q, %v; want %q", handle, rec.Primary, err, primary)
	}
	if rec, err := s.LookupPrimary(ctx, primary); err != nil || rec.Handle != handle {
		t.Fatalf("LookupPrimary(%s) = %q, %v; want %q", primary, rec.Handle, err, handle)
	}
}

func wantNotFound(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("%s: %v, want ErrNotFound", what, err)
	}
}

// Records served from the cache follow every change: a rotation, a
// deletion and a registration of the deleted handle with another key, each
// after both lookups have cached the record.
func TestRecordCacheFollowsChanges(t *testing.T) {
	ctx := context.Background()
	s := openPath(t, filepath.Join(t.TempDir(), "chat.db"))
	defer s.Close()
	storagetest.Register(t, s, "alice", 1)
	storagetest.Register(t, s, "bob", 2)
	lookupBoth(t, s, "alice", storagetest.Primary(1))
	lookupBoth(t, s, "bob", storagetest.Primary(2))

	rec, err := s.Rotate(ctx, "bob", storagetest.Primary(2), storagetest.Primary(20), []byte(`{"rotation":1}`))
	if err != nil {
		t.Fatal(err)
	}
	lookupBoth(t, s, "bob", storagetest.Primary(20))
	_, err = s.LookupPrimary(ctx, storagetest.Primary(2))
	wantNotFound(t, "the rotated-away key", err)
	if got, _ := s.Lookup(ctx, "bob"); string(got.Rotation) != `{"rotation":1}` || got.LogIndex != rec.LogIndex {
		t.Fatalf("bob after rotation: rotation %s, log index %d; want the rotation's (%d)", got.Rotation, got.LogIndex, rec.LogIndex)
	}

	if _, err := s.Delete(ctx, "alice", storagetest.Primary(1), []byte(`{"deletion":1}`), time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}
	_, err = s.Lookup(ctx, "alice")
	wantNotFound(t, "a deleted handle", err)
	_, err = s.LookupPrimary(ctx, storagetest.Primary(1))
	wantNotFound(t, "a deleted handle's key", err)

	storagetest.Register(t, s, "alice", 3) // the cooldown has passed
	lookupBoth(t, s, "alice", storagetest.Primary(3))
	_, err = s.LookupPrimary(ctx, storagetest.Primary(1))
	wantNotFound(t, "the old key of a handle registered again", err)
}

// A lookup that read the database before a change committed must not put
// what it read back into the cache after the change.
func TestRecordCacheRefusesAReadFromBeforeAChange(t *testing.T) {
	c := newRecordCache()
	gen := c.generation()
	c.invalidate() // a rotation commits while the lookup reads
	c.put(gen, storage.Record{Handle: "bob", Primary: storagetest.Primary(2)})
	if rec, ok := c.record("bob"); ok {
		t.Fatalf("a record read before the change was kept: %+v", rec)
	}
	if h, ok := c.handleOf(storagetest.Primary(2)); ok {
		t.Fatalf("a primary read before the change was kept: %s", h)
	}
	c.put(c.generation(), storage.Record{Handle: "bob", Primary: storagetest.Primary(20)})
	if rec, ok := c.record("bob"); !ok || rec.Primary != storagetest.Primary(20) {
		t.Fatalf("a read after the change was not kept: %+v %v", rec, ok)
	}
}

func TestRecordCacheIsBounded(t *testing.T) {
	c := newRecordCache()
	for i := range recordCacheMax + 100 {
		c.put(c.generation(), storage.Record{Handle: storagetest.Primary(i)[8:20], Primary: storagetest.Primary(i)})
	}
	if len(c.byHandle) > recordCacheMax || len(c.byPrimary) > recordCacheMax {
		t.Fatalf("cache holds %d records and %d primaries, bound %d", len(c.byHandle), len(c.byPrimary), recordCacheMax)
	}
}

// Lookups running while a handle rotates again and again never see a
// binding that was already replaced when the lookup started, and never a
// record whose handle or primary is not the one asked for.
func TestRecordCacheUnderConcurrentRotations(t *testing.T) {
	ctx := context.Background()
	s := openPath(t, filepath.Join(t.TempDir(), "chat.db"))
	defer s.Close()
	storagetest.Register(t, s, "bob", 0)
	const rotations = 200
	var mu sync.Mutex
	current := 0 // the index of bob's key since the last Rotate returned
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				mu.Lock()
				floor := current
				mu.Unlock()
				rec, err := s.Lookup(ctx, "bob")
				if err != nil || rec.Handle != "bob" || keyIndex(rec.Primary) < floor {
					errs <- errors.New("Lookup(bob) = " + rec.Primary + " after key " + storagetest.Primary(floor) + " was current")
					return
				}
				prec, err := s.LookupPrimary(ctx, storagetest.Primary(floor))
				if err == nil && (prec.Handle != "bob" || prec.Primary != storagetest.Primary(floor)) {
					errs <- errors.New("LookupPrimary answered another record: " + prec.Primary)
					return
				}
				if err != nil && !errors.Is(err, storage.ErrNotFound) {
					errs <- err
					return
				}
			}
		})
	}
	for i := range rotations {
		if _, err := s.Rotate(ctx, "bob", storagetest.Primary(i), storagetest.Primary(i+1), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		current = i + 1
		mu.Unlock()
		// Right after Rotate returns, the old key is gone and the new one served.
		if _, err := s.LookupPrimary(ctx, storagetest.Primary(i)); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("rotation %d: the old key still answers: %v", i, err)
		}
		lookupBoth(t, s, "bob", storagetest.Primary(i+1))
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
}

// keyIndex inverts storagetest.Primary for the small indexes used here.
func keyIndex(primary string) int {
	for i := range 1000 {
		if storagetest.Primary(i) == primary {
			return i
		}
	}
	return -1
}

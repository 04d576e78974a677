package bolt

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/storagetest"
)

// A handle that never accepted, blocked or got a request keeps its state
// inline in a shared page (sub.go); its lists appear when first written,
// and work as before.
func TestStateListsMadeWhenFirstWritten(t *testing.T) {
	ctx := context.Background()
	s := openPath(t, filepath.Join(t.TempDir(), "chat.db"))
	defer s.Close()
	for i := range 50 {
		storagetest.Register(t, s, "user"+strconv.Itoa(i), i)
	}
	stats := func() bbolt.BucketStats {
		var st bbolt.BucketStats
		if err := s.db.View(func(tx *bbolt.Tx) error { st = tx.Bucket(bucketState).Stats(); return nil }); err != nil {
			t.Fatal(err)
		}
		return st
	}
	if st := stats(); st.BucketN != 51 || st.InlineBucketN != 50 {
		t.Fatalf("50 new inboxes: %d state buckets, %d inline; want 51 (with the parent), 50 inline", st.BucketN, st.InlineBucketN)
	}
	if err := s.SetContact(ctx, "user0", storagetest.Primary(1), storage.Accept); err != nil {
		t.Fatal(err)
	}
	// A stranger's message is a request: user2 gets its requests lists.
	if _, _, err := s.Append(ctx, storage.Delivery{To: "user2", From: storagetest.Primary(3), Sig: storagetest.Sig(), Envelope: []byte(`{}`)},
		storage.Limits{RequestLimit: 3}); err != nil {
		t.Fatal(err)
	}
	if st := stats(); st.BucketN != 51+3 || st.InlineBucketN != 48+3 {
		t.Fatalf("after an acceptance and a request: %d state buckets, %d inline; want 54, 51", st.BucketN, st.InlineBucketN)
	}
	c, err := s.Contacts(ctx, "user0")
	if err != nil || len(c.Accepted) != 1 || c.Accepted[0] != storagetest.Primary(1) {
		t.Fatalf("contacts of user0: %+v, %v", c, err)
	}
	msgs, _, err := s.Read(ctx, "user2", 0, 10)
	if err != nil || len(msgs) != 1 || !msgs[0].Request {
		t.Fatalf("user2's inbox: %+v, %v", msgs, err)
	}
	// Unaccepting and unblocking where no list exists is no error.
	if err := s.SetContact(ctx, "user5", storagetest.Primary(1), storage.Unaccept); err != nil {
		t.Fatal(err)
	}
	if err := s.SetContact(ctx, "user5", storagetest.Primary(1), storage.Unblock); err != nil {
		t.Fatal(err)
	}
	checkState(t, s)
}

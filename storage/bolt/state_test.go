package bolt

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/storagetest"
)

// checkState recomputes every inbox's bookkeeping from its messages and
// fails the test where a stored count or index disagrees.
func checkState(t *testing.T, s *Store) {
	t.Helper()
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketInboxes).ForEachBucket(func(name []byte) error {
			msgs := tx.Bucket(bucketInboxes).Bucket(name)
			st := tx.Bucket(bucketState).Bucket(name)
			if st == nil {
				return fmt.Errorf("%s: no state bucket", name)
			}
			accepted, blocked := st.Bucket(stAccepted), st.Bucket(stBlocked)
			ordinary, requests := uint64(0), uint64(0)
			senders := map[string]uint64{}
			index := map[string]bool{}
			c := msgs.Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				h, err := decodeMessage(messageValue(msgs, k, v))
				if err != nil {
					return fmt.Errorf("%s seq %d: %v", name, u64(k), err)
				}
				if !h.request() {
					ordinary++
					continue
				}
				requests++
				senders[string(h.from)]++
				index[string(h.from)+string(k)] = true
				if accepted.Get(h.from) != nil || blocked.Get(h.from) != nil {
					return fmt.Errorf("%s seq %d: a request from an accepted or blocked sender", name, u64(k))
				}
			}
			if n := u64(tx.Bucket(bucketCounts).Get(name)); n != ordinary {
				return fmt.Errorf("%s: count %d, %d ordinary messages stored", name, n, ordinary)
			}
			if n := u64(st.Get(stNRequests)); n != requests {
				return fmt.Errorf("%s: nrequests %d, %d requests stored", name, n, requests)
			}
			got := map[string]uint64{}
			if err := st.Bucket(stSenders).ForEach(func(k, v []byte) error { got[string(k)] = u64(v); return nil }); err != nil {
				return err
			}
			if fmt.Sprint(got) != fmt.Sprint(senders) {
				return fmt.Errorf("%s: per-sender counts %v, stored %v", name, got, senders)
			}
			gotIndex := map[string]bool{}
			if err := st.Bucket(stRequests).ForEach(func(k, _ []byte) error { gotIndex[string(k)] = true; return nil }); err != nil {
				return err
			}
			if fmt.Sprint(gotIndex) != fmt.Sprint(index) {
				return fmt.Errorf("%s: request index has %d entries, %d requests stored", name, len(gotIndex), len(index))
			}
			if err := accepted.ForEach(func(k, _ []byte) error {
				if blocked.Get(k) != nil {
					return fmt.Errorf("%s: %x both accepted and blocked", name, k)
				}
				return nil
			}); err != nil {
				return err
			}
			return nil
		})
	})
	if err == nil {
		err = s.db.View(func(tx *bolt.Tx) error {
			// Idempotency keys and their time index point at each other.
			idem, times := tx.Bucket(bucketIdem), tx.Bucket(bucketIdemTimes)
			if idem.Stats().KeyN != times.Stats().KeyN {
				return fmt.Errorf("%d idempotency keys, %d by time", idem.Stats().KeyN, times.Stats().KeyN)
			}
			return times.ForEach(func(k, _ []byte) error {
				if v := idem.Get(k[8:]); len(v) != 16 || !bytes.Equal(v[8:], k[:8]) {
					return fmt.Errorf("time entry %x does not match its key", k)
				}
				return nil
			})
		})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// Random sends, resends, contact changes, acknowledgements and retention,
// concurrent and through reopens, never leave a count or index wrong.
func TestStateStaysConsistent(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "chat.db")
	s, err := Open(path, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	handles := []string{"a", "b", "c"}
	for i, h := range handles {
		storagetest.Register(t, s, h, i)
	}
	var mu sync.Mutex
	var sent []storage.Delivery
	for round := range 6 {
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(round), uint64(g)))
				for range 150 {
					to := r.IntN(len(handles))
					switch op := r.IntN(20); {
					case op < 12: // a send, from a local or a remote sender
						from := r.IntN(7)
						d := storagetest.Delivery(handles[to], from)
						if from < len(handles) {
							d.SenderHandle, d.ToPrimary = handles[from], storagetest.Primary(to)
						}
						if r.IntN(4) == 0 {
							d.Envelope = bytes.Repeat([]byte("x"), outOfLineFrom+10)
						}
						lim := storage.Limits{MaxInbox: 20 + r.IntN(20), RequestLimit: 1 + r.IntN(4), MaxRequests: 5 + r.IntN(10)}
						if _, _, err := s.Append(ctx, d, lim); err != nil && !expected(err) {
							t.Error(err)
						}
						mu.Lock()
						sent = append(sent, d)
						mu.Unlock()
					case op < 14: // a resend
						mu.Lock()
						var d storage.Delivery
						if len(sent) > 0 {
							d = sent[r.IntN(len(sent))]
						}
						mu.Unlock()
						if d.To != "" {
							if _, _, err := s.Append(ctx, d, storage.Limits{RequestLimit: 2, MaxRequests: 10}); err != nil && !expected(err) {
								t.Error(err)
							}
						}
					case op < 18:
						state := storage.ContactState(1 + r.IntN(4))
						if err := s.SetContact(ctx, handles[to], storagetest.Primary(r.IntN(7)), state); err != nil {
							t.Error(err)
						}
					case op < 19:
						msgs, _, err := s.Read(ctx, handles[to], 0, 100)
						if err == nil && len(msgs) > 0 {
							_, err = s.Ack(ctx, handles[to], msgs[r.IntN(len(msgs))].Seq)
						}
						if err != nil {
							t.Error(err)
						}
					default:
						if _, err := s.Expire(ctx, time.Now().Add(-time.Duration(r.IntN(50))*time.Millisecond)); err != nil {
							t.Error(err)
						}
					}
				}
			})
		}
		wg.Wait()
		checkState(t, s)
		if round%2 == 1 {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if s, err = Open(path, Options{Timeout: time.Second}); err != nil {
				t.Fatal(err)
			}
			checkState(t, s)
		}
	}
	if _, err := s.Expire(ctx, time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	checkState(t, s)
	err = s.db.View(func(tx *bolt.Tx) error {
		if n := tx.Bucket(bucketIdem).Stats().KeyN; n != 0 {
			return fmt.Errorf("%d idempotency keys after retention", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func expected(err error) bool {
	for _, e := range []error{storage.ErrBlocked, storage.ErrRequestLimit, storage.ErrInboxFull} {
		if err == e {
			return true
		}
	}
	return false
}

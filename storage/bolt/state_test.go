package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/storagetest"
)

// checkState recomputes every inbox's bookkeeping from its messages and
// fails the test where a stored count or index disagrees.
func checkState(t *testing.T, s *Store) {
	t.Helper()
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketInboxes).ForEachBucket(func(name []byte) error {
			msgs := tx.Bucket(bucketInboxes).Bucket(name)
			st := tx.Bucket(bucketState).Bucket(name)
			if st == nil {
				return fmt.Errorf("%s: no state bucket", name)
			}
			// A list that was never written does not exist (sub.go).
			accepted, blocked := openSub(st, stAccepted), openSub(st, stBlocked)
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
			if err := openSub(st, stSenders).ForEach(func(k, v []byte) error { got[string(k)] = u64(v); return nil }); err != nil {
				return err
			}
			if fmt.Sprint(got) != fmt.Sprint(senders) {
				return fmt.Errorf("%s: per-sender counts %v, stored %v", name, got, senders)
			}
			gotIndex := map[string]bool{}
			if err := openSub(st, stRequests).ForEach(func(k, _ []byte) error { gotIndex[string(k)] = true; return nil }); err != nil {
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
		err = s.db.View(func(tx *bbolt.Tx) error {
			// Every idempotency key is on disk once, with a seq, and the
			// index in memory finds each and holds nothing else.
			seen := map[[32]byte]bool{}
			err := tx.Bucket(bucketIdemTimes).ForEach(func(k, v []byte) error {
				if len(k) != 8+32 || len(v) != 8 {
					return fmt.Errorf("idempotency entry %x → %x is malformed", k, v)
				}
				idem := [32]byte(k[8:])
				if seen[idem] {
					return fmt.Errorf("idempotency key %x is on disk twice", idem)
				}
				seen[idem] = true
				if at, ok := s.index.lookup(idem); !ok || at != int64(u64(k[:8])) {
					return fmt.Errorf("the index has idempotency key %x at %d (%t), the disk at %d", idem, at, ok, u64(k[:8]))
				}
				return nil
			})
			if err == nil && s.index.size() != len(seen) {
				err = fmt.Errorf("the index holds %d idempotency keys, the disk %d", s.index.size(), len(seen))
			}
			if err == nil && tx.Bucket(bucketIdem) != nil {
				err = errors.New("the schema 3 idem bucket is still there")
			}
			return err
		})
	}
	if err == nil {
		err = s.db.View(func(tx *bbolt.Tx) error { return checkTrust(tx, s.logSize.Load()) })
	}
	if err != nil {
		t.Fatal(err)
	}
}

// checkTrust checks the bindings, the listers index and the log against
// each other: every handle has its primary, its inbox and its leaf; every
// inbox belongs to a handle; the index is exactly the lists; the log's
// leaves are numbered without a gap, its stored hashes are the tree of
// those leaves, and LogSize says how many there are.
func checkTrust(tx *bbolt.Tx, size int64) error {
	handles, primaries := tx.Bucket(bucketHandles), tx.Bucket(bucketPrimaries)
	if h, p := handles.Stats().KeyN, primaries.Stats().KeyN; h != p {
		return fmt.Errorf("%d handles, %d primaries", h, p)
	}
	err := handles.ForEach(func(k, v []byte) error {
		var rec storage.Record
		if err := json.Unmarshal(v, &rec); err != nil {
			return err
		}
		if h := primaries.Get([]byte(rec.Primary)); string(h) != string(k) {
			return fmt.Errorf("%s's primary is bound to %q", k, h)
		}
		if tx.Bucket(bucketInboxes).Bucket(k) == nil || tx.Bucket(bucketState).Bucket(k) == nil {
			return fmt.Errorf("%s has no inbox", k)
		}
		if tx.Bucket(bucketCooldown).Get(k) != nil {
			return fmt.Errorf("%s is bound and cooling down", k)
		}
		if !logged(tx, rec) {
			return fmt.Errorf("%s: leaf %d is not what made its binding", k, rec.LogIndex)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, b := range [][]byte{bucketInboxes, bucketState} {
		err := tx.Bucket(b).ForEachBucket(func(k []byte) error {
			if handles.Get(k) == nil {
				return fmt.Errorf("%s: %s of a handle that is not bound", b, k)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	lists := map[string]bool{}
	err = tx.Bucket(bucketState).ForEachBucket(func(name []byte) error {
		st := tx.Bucket(bucketState).Bucket(name)
		for _, l := range [][]byte{stAccepted, stBlocked} {
			if err := openSub(st, l).ForEach(func(k, _ []byte) error { lists[string(k)+string(name)] = true; return nil }); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	index := map[string]bool{}
	if err := tx.Bucket(bucketListers).ForEach(func(k, _ []byte) error { index[string(k)] = true; return nil }); err != nil {
		return err
	}
	if fmt.Sprint(index) != fmt.Sprint(lists) {
		return fmt.Errorf("listers index has %d entries, the lists %d", len(index), len(lists))
	}

	n := logSize(tx)
	if n != size {
		return fmt.Errorf("LogSize %d, %d leaves stored", size, n)
	}
	var own []tlog.Hash
	r := tlog.HashReaderFunc(func(ix []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(ix))
		for i, x := range ix {
			out[i] = own[x]
		}
		return out, nil
	})
	i := int64(0)
	err = tx.Bucket(bucketLogData).ForEach(func(k, v []byte) error {
		if u64(k) != uint64(i) {
			return fmt.Errorf("leaf %d where %d should be", u64(k), i)
		}
		hs, err := tlog.StoredHashes(i, v, r)
		own = append(own, hs...)
		i++
		return err
	})
	if err != nil {
		return err
	}
	stored := tx.Bucket(bucketLogHashes)
	if c := int64(stored.Stats().KeyN); c != tlog.StoredHashCount(n) {
		return fmt.Errorf("%d stored hashes for %d leaves, want %d", c, n, tlog.StoredHashCount(n))
	}
	for x, h := range own {
		if v := stored.Get(seqKey(uint64(x))); !bytes.Equal(v, h[:]) {
			return fmt.Errorf("stored hash %d is not the tree's", x)
		}
	}
	return nil
}

// Random sends, resends, contact changes, acknowledgements, retention,
// rotations and deletions (each handle registered again at once),
// concurrent and through reopens, never leave a count, an index or the log
// wrong.
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
	var mu sync.Mutex // guards sent, keys and next; held across rotations and deletions
	var sent []storage.Delivery
	keys := []int{0, 1, 2} // each handle's current key
	next := 100            // the next fresh key
	key := func(i int) int {
		mu.Lock()
		defer mu.Unlock()
		return keys[i]
	}
	for round := range 6 {
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(round), uint64(g)))
				for range 150 {
					to := r.IntN(len(handles))
					switch op := r.IntN(22); {
					case op < 12: // a send, from a local or a remote sender
						from := r.IntN(7)
						fromKey := from
						if from < len(handles) {
							fromKey = key(from)
						}
						d := storagetest.Delivery(handles[to], fromKey)
						if from < len(handles) {
							d.SenderHandle, d.ToPrimary = handles[from], storagetest.Primary(key(to))
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
						k := r.IntN(7)
						if r.IntN(2) == 0 {
							k = key(r.IntN(len(handles)))
						}
						if err := s.SetContact(ctx, handles[to], storagetest.Primary(k), state); err != nil && !expected(err) {
							t.Error(err)
						}
					case op < 19:
						msgs, _, err := s.Read(ctx, handles[to], 0, 100)
						if err == nil && len(msgs) > 0 {
							_, err = s.Ack(ctx, handles[to], msgs[r.IntN(len(msgs))].Seq)
						}
						if err != nil && !expected(err) {
							t.Error(err)
						}
					case op < 20:
						if _, err := s.Expire(ctx, time.Now().Add(-time.Duration(r.IntN(50))*time.Millisecond)); err != nil {
							t.Error(err)
						}
					case op < 21:
						mu.Lock()
						old, new := storagetest.Primary(keys[to]), storagetest.Primary(next)
						if _, err := s.Rotate(ctx, handles[to], old, new, fmt.Appendf(nil, `{"rotate":%d}`, next)); err != nil {
							t.Error(err)
						}
						keys[to] = next
						next++
						mu.Unlock()
					default:
						mu.Lock()
						h := handles[to]
						if _, err := s.Delete(ctx, h, storagetest.Primary(keys[to]), fmt.Appendf(nil, `{"delete":%d}`, next), time.Now().Add(-time.Second)); err != nil {
							t.Error(err)
						}
						if _, _, err := s.Register(ctx, storage.Record{Handle: h, Primary: storagetest.Primary(next), RegisteredAt: time.Now().Unix(),
							Registration: fmt.Appendf(nil, `{"register":%d}`, next)}, ""); err != nil {
							t.Error(err)
						}
						keys[to] = next
						next++
						mu.Unlock()
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
	err = s.db.View(func(tx *bbolt.Tx) error {
		if n := tx.Bucket(bucketIdemTimes).Stats().KeyN; n != 0 {
			return fmt.Errorf("%d idempotency keys after retention", n)
		}
		if n := s.index.size(); n != 0 {
			return fmt.Errorf("%d idempotency keys in the index after retention", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// expected: refusals, and an inbox deleted (and not yet registered again)
// by another goroutine.
func expected(err error) bool {
	for _, e := range []error{storage.ErrBlocked, storage.ErrRequestLimit, storage.ErrInboxFull, storage.ErrNotFound} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

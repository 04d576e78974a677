package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/storagetest"
)

// v1Message is a message as the v1 layout stored it.
type v1Message struct {
	seq        uint64
	receivedAt int64
	envelope   []byte
	outOfLine  bool // in a bucket of its own (v1 did so from outOfLineFrom bytes on, later on)
}

// v1Envelope is a v1 envelope from Primary(from) with the given sig and
// ciphertext of size bytes.
func v1Envelope(from, to int, sig string, size int) []byte {
	return fmt.Appendf(nil, `{"v":1,"from":%q,"to":%q,"nonce":"bm9uY2U","ct":%q,"sig":%q}`,
		storagetest.Primary(from), storagetest.Primary(to), strings.Repeat("A", size), sig)
}

// writeV1 builds a database file in the v1 layout, with bbolt directly:
// handles, primaries, invites, inboxes of seq → received_at + envelope (or
// a bucket holding that under "m"), counts; no meta bucket.
func writeV1(t *testing.T, path string, inboxes map[string][]v1Message, primaries map[string]int) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bbolt.Tx) error {
		bs := map[string]*bbolt.Bucket{}
		for _, name := range []string{"handles", "primaries", "inboxes", "counts", "invites"} {
			b, err := tx.CreateBucket([]byte(name))
			if err != nil {
				return err
			}
			bs[name] = b
		}
		if err := bs["invites"].Put([]byte("used-invite"), []byte("alice")); err != nil {
			return err
		}
		for handle, msgs := range inboxes {
			rec, _ := json.Marshal(storage.Record{Handle: handle, Primary: storagetest.Primary(primaries[handle]), RegisteredAt: 1764115200,
				Registration: json.RawMessage(`{"payload":{"handle":"` + handle + `"}}`)})
			if err := bs["handles"].Put([]byte(handle), rec); err != nil {
				return err
			}
			if err := bs["primaries"].Put([]byte(storagetest.Primary(primaries[handle])), []byte(handle)); err != nil {
				return err
			}
			ib, err := bs["inboxes"].CreateBucket([]byte(handle))
			if err != nil {
				return err
			}
			last := uint64(0)
			for _, m := range msgs {
				val := binary.BigEndian.AppendUint64(nil, uint64(m.receivedAt))
				val = append(val, m.envelope...)
				if m.outOfLine {
					mb, cerr := ib.CreateBucket(seqKey(m.seq))
					if cerr != nil {
						return cerr
					}
					err = mb.Put([]byte("m"), val)
				} else {
					err = ib.Put(seqKey(m.seq), val)
				}
				if err != nil {
					return err
				}
				last = max(last, m.seq)
			}
			// Acknowledged messages leave the sequence ahead of what is stored.
			if err := ib.SetSequence(last + 5); err != nil {
				return err
			}
			// Off by 3, as a v1 bug could have left it: migration counts again.
			if err := bs["counts"].Put([]byte(handle), seqKey(uint64(len(msgs)+3))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A v1 file opens as v2, once: every message gets From from its envelope,
// no FromAddr, Request=false and its idempotency key; counts, seqs,
// records and invites carry over.
func TestMigrateV1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "chat.db")
	recv := time.Now().Add(-time.Hour).UnixMilli()
	sig := func(i int) string { return fmt.Sprintf("%0128x", 0xf00d00+i) }
	alice := []v1Message{
		{3, recv, v1Envelope(2, 1, sig(1), 10), false},
		{4, recv + 1, v1Envelope(3, 1, sig(2), 64<<10), false}, // large, inline (the first v1)
		{7, recv + 2, v1Envelope(2, 1, sig(3), 100<<10), true}, // large, out of line (later v1)
		{8, recv + 3, v1Envelope(2, 1, sig(1), 10), false},     // a resend v1 stored again
		{9, recv + 4, []byte(`{"not":"an envelope"}`), false},  // unreadable from: kept
	}
	writeV1(t, path, map[string][]v1Message{"alice": alice, "bob": nil}, map[string]int{"alice": 1, "bob": 4})

	s, err := Open(path, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	check := func(s *Store, extra int) {
		t.Helper()
		got, more, err := s.Read(ctx, "alice", 0, 100)
		if err != nil || more || len(got) != len(alice)+extra {
			t.Fatalf("read %d messages, more=%v, %v", len(got), more, err)
		}
		for i, m := range got[:len(alice)] {
			want := storage.Message{Seq: alice[i].seq, ReceivedAt: alice[i].receivedAt, Envelope: alice[i].envelope}
			var env struct{ From string }
			if json.Unmarshal(alice[i].envelope, &env) == nil {
				want.From = env.From
			}
			if m.Seq != want.Seq || m.ReceivedAt != want.ReceivedAt || m.From != want.From || m.FromAddr != "" ||
				m.Request || !bytes.Equal(m.Envelope, want.Envelope) {
				t.Fatalf("message %d: seq %d at %d from %q %q request=%v, %d bytes; want seq %d at %d from %q, %d bytes",
					i, m.Seq, m.ReceivedAt, m.From, m.FromAddr, m.Request, len(m.Envelope), want.Seq, want.ReceivedAt, want.From, len(want.Envelope))
			}
		}
	}
	check(s, 0)
	if rec, err := s.LookupPrimary(ctx, storagetest.Primary(1)); err != nil || rec.Handle != "alice" {
		t.Fatalf("record after migration: %+v %v", rec, err)
	}
	if _, _, err := s.Register(ctx, storage.Record{Handle: "carol", Primary: storagetest.Primary(9)}, "used-invite"); !errors.Is(err, storage.ErrInviteUsed) {
		t.Fatalf("a used v1 invite: %v", err)
	}
	if c, err := s.Contacts(ctx, "alice"); err != nil || len(c.Accepted)+len(c.Blocked) != 0 {
		t.Fatalf("contacts after migration: %+v %v", c, err)
	}
	// Both bindings are logged, same registered_at: in handle order.
	if data, err := s.LogEntries(ctx, 0, 10); err != nil || len(data) != 2 ||
		string(data[0]) != `{"payload":{"handle":"alice"}}` || string(data[1]) != `{"payload":{"handle":"bob"}}` {
		t.Fatalf("log after migration: %q %v", data, err)
	}
	if rec, err := s.Lookup(ctx, "bob"); err != nil || rec.LogIndex != 1 {
		t.Fatalf("bob after migration: %+v %v", rec, err)
	}
	checkState(t, s)
	// Resends of v1 messages get their original receipt (the first one's).
	for _, m := range []v1Message{alice[0], alice[2], alice[3]} {
		d := storage.Delivery{To: "alice", From: storagetest.Primary(2), Sig: sig(1), Envelope: m.envelope}
		if m.seq == 7 {
			d.Sig = sig(3)
		}
		want := alice[0]
		if m.seq == 7 {
			want = m
		}
		got, fresh, err := s.Append(ctx, d, storage.Limits{})
		if err != nil || fresh || got.Seq != want.seq || got.ReceivedAt != want.receivedAt {
			t.Fatalf("resend of v1 seq %d: seq %d at %d fresh=%v %v", m.seq, got.Seq, got.ReceivedAt, fresh, err)
		}
	}
	// The v1 messages count as messages, not requests; seqs go on.
	full := storagetest.Delivery("alice", 5)
	if err := s.SetContact(ctx, "alice", full.From, storage.Accept); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Append(ctx, full, storage.Limits{MaxInbox: len(alice)}); !errors.Is(err, storage.ErrInboxFull) {
		t.Fatalf("append to an inbox full of v1 messages: %v", err)
	}
	m, fresh, err := s.Append(ctx, storagetest.Delivery("alice", 2), storage.Limits{MaxInbox: len(alice)})
	if err != nil || !fresh || !m.Request || m.Seq != 15 {
		t.Fatalf("a stranger's request after migration: seq %d (want 15) request=%v fresh=%v %v", m.Seq, m.Request, fresh, err)
	}
	if _, fresh, err := s.Append(ctx, full, storage.Limits{MaxInbox: len(alice) + 1}); err != nil || !fresh {
		t.Fatalf("append to an inbox one short of full: fresh=%v %v (the count was not redone)", fresh, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := Check(path, time.Second); err != nil {
		t.Fatal(err)
	}

	// Cut short: the schema not yet written and one message still in the
	// v1 layout. Opening again finishes the job without changing the rest.
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		if err := tx.Bucket(bucketMeta).Delete(metaSchema); err != nil {
			return err
		}
		val := binary.BigEndian.AppendUint64(nil, uint64(alice[0].receivedAt))
		return tx.Bucket(bucketInboxes).Bucket([]byte("alice")).Put(seqKey(alice[0].seq), append(val, alice[0].envelope...))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// alice's messages are as before, and the two sent since.
	check(s, 2)
	got, fresh, err := s.Append(ctx, storage.Delivery{To: "alice", From: storagetest.Primary(2), Sig: sig(1), Envelope: alice[0].envelope}, storage.Limits{})
	if err != nil || fresh || got.Seq != alice[0].seq {
		t.Fatalf("resend after a resumed migration: seq %d fresh=%v %v", got.Seq, fresh, err)
	}
	// Retention forgets the migrated messages and their keys.
	if n, err := s.Expire(ctx, time.Now().Add(time.Second)); err != nil || n != len(alice)+2 {
		t.Fatalf("expire: %d, %v", n, err)
	}
	if _, fresh, err := s.Append(ctx, storage.Delivery{To: "alice", From: storagetest.Primary(2), Sig: sig(1), Envelope: alice[0].envelope}, storage.Limits{}); err != nil || !fresh {
		t.Fatalf("resend after retention: fresh=%v %v", fresh, err)
	}
}

// A file from a later schema is refused, not misread.
func TestNewerSchemaRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "chat.db")
	s, err := Open(path, Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bucketMeta).Put(metaSchema, seqKey(schemaVersion+1)) })
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	if s, err := Open(path, Options{Timeout: time.Second}); err == nil || !strings.Contains(err.Error(), "newer") {
		if s != nil {
			s.Close()
		}
		t.Fatalf("open of a newer schema: %v", err)
	}
}

// toSchema3 rewrites a schema 4 file's idempotency keys as schema 3 kept
// them: idem (idem → seq + received_at) besides idem_times (→ 1), plus
// a stale time entry whose idem entry holds another time.
func toSchema3(t *testing.T, path string) (stale []byte) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bbolt.Tx) error {
		idem, err := tx.CreateBucket(bucketIdem)
		if err != nil {
			return err
		}
		times := tx.Bucket(bucketIdemTimes)
		var keys [][]byte
		if err := times.ForEach(func(k, v []byte) error {
			keys = append(keys, bytes.Clone(k))
			return idem.Put(k[8:], cat(v, k[:8]))
		}); err != nil {
			return err
		}
		for _, k := range keys {
			if err := times.Put(k, present); err != nil {
				return err
			}
		}
		stale = cat(seqKey(1), keys[0][8:]) // the first key, at another time
		if err := times.Put(stale, present); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(metaSchema, seqKey(3))
	})
	if err != nil {
		t.Fatal(err)
	}
	return stale
}

// A schema 3 file moves its idempotency keys into idem_times and drops
// idem, also when a first try was cut short; resends keep their receipts.
func TestMigrateV3(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "chat.db")
	s := openPath(t, path)
	storagetest.Register(t, s, "alice", 1)
	sent, receipts := appendFresh(t, s, 2*migrateChunk+10)
	if _, err := s.Ack(ctx, "alice", receipts[10].Seq); err != nil { // acknowledged keys stay
		t.Fatal(err)
	}
	s.Close()

	resends := func(s *Store) {
		t.Helper()
		for _, i := range []int{0, 10, migrateChunk, len(sent) - 1} {
			m, fresh, err := s.Append(ctx, sent[i], storage.Limits{})
			if err != nil || fresh || m.Seq != receipts[i].Seq || m.ReceivedAt != receipts[i].ReceivedAt {
				t.Fatalf("resend %d after the migration: seq %d at %d fresh=%v %v; want seq %d at %d",
					i, m.Seq, m.ReceivedAt, fresh, err, receipts[i].Seq, receipts[i].ReceivedAt)
			}
		}
	}
	for _, cut := range []bool{false, true} {
		stale := toSchema3(t, path)
		if cut { // a first try that migrated one chunk, then crashed
			db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			index := newIdemIndex()
			if err := db.View(index.load); err != nil {
				t.Fatal(err)
			}
			_, err = writeIn(db, index, func(w *writeTx) error {
				n := 0
				c := w.idemTimes.Cursor()
				for k, _ := c.First(); k != nil && n < migrateChunk; k, _ = c.Next() {
					if v := w.tx.Bucket(bucketIdem).Get(k[8:]); len(v) == 16 && bytes.Equal(v[8:], k[:8]) {
						if err := w.idemTimes.Put(bytes.Clone(k), bytes.Clone(v[:8])); err != nil {
							return err
						}
						n++
					}
				}
				return nil
			})
			db.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
		s := openPath(t, path)
		checkState(t, s) // also: idem is gone, every entry has its seq, the index matches
		_ = s.db.View(func(tx *bbolt.Tx) error {
			if tx.Bucket(bucketIdemTimes).Get(stale) != nil {
				t.Errorf("the stale time entry %x survived the migration", stale)
			}
			return nil
		})
		resends(s)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := Check(path, time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

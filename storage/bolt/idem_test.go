package bolt

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/storagetest"
)

// Keys whose first 8 bytes are the same (a sender can grind for that) are
// each found, forgotten and found again after a restart on their own.
func TestIdemIndexSharedPrefix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "chat.db")
	s := openPath(t, path)
	var a, b, c [32]byte
	for i := range 8 {
		a[i], b[i], c[i] = 0xab, 0xab, 0xab
	}
	a[31], b[31], c[31] = 1, 2, 3
	want := func(s *Store, idem [32]byte, at int64, seq uint64) {
		t.Helper()
		err := s.update(func(w *writeTx) error {
			gotAt, gotSeq, ok := w.keyAt(idem)
			if seq == 0 && ok {
				t.Errorf("key %x: found at %d seq %d, want none", idem[31], gotAt, u64(gotSeq))
			} else if seq != 0 && (!ok || gotAt != at || u64(gotSeq) != seq) {
				t.Errorf("key %x: at %d seq %d found=%v, want at %d seq %d", idem[31], gotAt, u64(gotSeq), ok, at, seq)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	err := s.update(func(w *writeTx) error {
		if err := w.remember(a, seqKey(1), 100); err != nil {
			return err
		}
		if err := w.remember(b, seqKey(2), 200); err != nil {
			return err
		}
		// Seen within the transaction that made them.
		if _, seq, ok := w.keyAt(b); !ok || u64(seq) != 2 {
			t.Errorf("key b within its transaction: seq %d found=%v", u64(seq), ok)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want(s, a, 100, 1)
	want(s, b, 200, 2)
	want(s, c, 0, 0) // shares the prefix, has no entry
	// A failed transaction changes nothing in the index.
	_ = s.update(func(w *writeTx) error {
		_ = w.remember(c, seqKey(3), 300)
		return errors.New("rolled back")
	})
	want(s, c, 0, 0)
	if err := s.update(func(w *writeTx) error { return w.forget(100, a) }); err != nil {
		t.Fatal(err)
	}
	want(s, a, 0, 0)
	want(s, b, 200, 2)
	if n := s.index.size(); n != 1 { // b only: not a, nor c of the failed transaction
		t.Errorf("index holds %d keys, want 1", n)
	}
	if err := s.update(func(w *writeTx) error { return w.remember(a, seqKey(4), 400) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openPath(t, path)
	defer s.Close()
	want(s, a, 400, 4)
	want(s, b, 200, 2)
	want(s, c, 0, 0)
	if n := s.index.size(); n != 2 {
		t.Errorf("index holds %d keys after a restart, want 2", n)
	}
}

// BenchmarkOpenWithKeys: what the index of idempotency keys costs when a
// file with a million of them opens (the keys are made directly, as a year
// of sends would leave them), in time and in memory.
func BenchmarkOpenWithKeys(b *testing.B) {
	const keys = 1_000_000
	path := filepath.Join(b.TempDir(), "chat.db")
	s, err := Open(path, Options{Timeout: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	at := time.Now().UnixMilli()
	for done := 0; done < keys; done += 100_000 {
		err := s.update(func(w *writeTx) error {
			for i := done; i < done+100_000; i++ {
				var idem [32]byte
				binary.BigEndian.PutUint64(idem[:], uint64(i)*0x9e3779b97f4a7c15)
				binary.BigEndian.PutUint64(idem[24:], uint64(i))
				if err := w.remember(idem, seqKey(uint64(i+1)), at+int64(i/100)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	s.Close()
	var heap float64
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		s, err := Open(path, Options{Timeout: time.Second})
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if n := s.index.size(); n != keys {
			b.Fatalf("index holds %d keys, want %d", n, keys)
		}
		heap = float64(after.HeapAlloc) - float64(before.HeapAlloc)
		s.Close()
	}
	b.ReportMetric(heap/keys, "heap-bytes/key")
}

// Beyond MaxKeys, Expire forgets the oldest keys before their time: the
// newest still answer resends with their receipt, the oldest are stored
// again, and disk and index agree.
func TestMaxKeys(t *testing.T) {
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "chat.db"), Options{Timeout: time.Second, MaxKeys: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	storagetest.Register(t, s, "alice", 1)
	sent, receipts := appendFresh(t, s, 2*expireChunk+25)                // more than one chunk to forget
	if _, err := s.Expire(ctx, time.Now().Add(-time.Hour)); err != nil { // nothing is old
		t.Fatal(err)
	}
	if n := s.index.size(); n != 10 {
		t.Fatalf("%d keys after Expire, want MaxKeys = 10", n)
	}
	checkState(t, s)
	last := len(sent) - 1
	if m, fresh, err := s.Append(ctx, sent[last], storage.Limits{}); err != nil || fresh || m.Seq != receipts[last].Seq {
		t.Errorf("resend of the newest: seq %d fresh=%v %v, want its receipt seq %d", m.Seq, fresh, err, receipts[last].Seq)
	}
	if m, fresh, err := s.Append(ctx, sent[0], storage.Limits{}); err != nil || !fresh || m.Seq == receipts[0].Seq {
		t.Errorf("resend of the oldest, whose key was forgotten: seq %d fresh=%v %v, want stored again", m.Seq, fresh, err)
	}
}

// Two keys with the same first 8 bytes received in the same millisecond
// share one place in the index: forgetting one (here beyond MaxKeys; also
// when a void key is replaced) must keep the other found, or its resend
// would be stored twice. (Found in review; a sender can grind for such a
// pair.)
func TestSamePrefixSameMillisecond(t *testing.T) {
	s := openPath(t, filepath.Join(t.TempDir(), "chat.db"))
	defer s.Close()
	storagetest.Register(t, s, "alice", 1)
	request := func(idem [32]byte) *appendReq {
		d := storagetest.Delivery("alice", 2)
		r := &appendReq{d: d, idem: idem, ready: make(chan struct{})}
		var err error
		if r.from, err = packPrimary(d.From); err != nil {
			t.Fatal(err)
		}
		return r
	}
	var a, b, c [32]byte
	for i := range 8 {
		a[i], b[i] = 0xab, 0xab
	}
	a[31], b[31], c[31] = 1, 2, 3
	ra, rb := request(a), request(b)
	s.commit([]*appendReq{ra, rb}) // one commit: one received_at
	if !ra.fresh || !rb.fresh || ra.msg.ReceivedAt != rb.msg.ReceivedAt {
		t.Fatalf("a and b: fresh %v %v, at %d %d", ra.fresh, rb.fresh, ra.msg.ReceivedAt, rb.msg.ReceivedAt)
	}
	time.Sleep(2 * time.Millisecond)
	s.commit([]*appendReq{request(c)})
	s.maxKeys = 2 // forget the oldest one: a (a before b in idem_times)
	if _, err := s.Expire(context.Background(), time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	checkState(t, s) // the index holds b and c, as the disk does
	again := request(b)
	s.commit([]*appendReq{again})
	if again.err != nil || again.fresh || again.msg.Seq != rb.msg.Seq {
		t.Errorf("resend of b: seq %d fresh=%v %v, want its receipt seq %d", again.msg.Seq, again.fresh, again.err, rb.msg.Seq)
	}
}

// appendFresh appends n messages with distinct sigs from Primary(2) to
// alice, checking each is stored, and returns them and their receipts.
func appendFresh(t *testing.T, s *Store, n int) ([]storage.Delivery, []storage.Message) {
	t.Helper()
	var sent []storage.Delivery
	var receipts []storage.Message
	for i := range n {
		d := storagetest.Delivery("alice", 2)
		d.Sig = fmt.Sprintf("%0128x", i)
		m, fresh, err := s.Append(context.Background(), d, storage.Limits{})
		if err != nil || !fresh {
			t.Fatalf("append %d: fresh=%v %v", i, fresh, err)
		}
		sent, receipts = append(sent, d), append(receipts, m)
	}
	return sent, receipts
}

// Package bolt is the default KEZ chat backend: one bbolt file, durable
// appends through a single group-committing writer.
package bolt

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/kezchat/kez/storage"
)

var (
	bucketHandles   = []byte("handles")   // handle → Record JSON
	bucketPrimaries = []byte("primaries") // primary → handle
	bucketInboxes   = []byte("inboxes")   // handle → bucket of seq (8 bytes BE) → received_at (8 bytes BE) + envelope
	bucketCounts    = []byte("counts")    // handle → number of stored messages (8 bytes BE)
	bucketInvites   = []byte("invites")   // used invite → handle it registered
)

// maxBatch bounds how many appends share one commit, so one fsync never
// carries an unbounded amount of data.
const maxBatch = 512

// maxLinger bounds how long a commit waits for more appends under load,
// and lingerFrom is how many appends must have been in flight for it to wait.
const (
	maxLinger  = 2 * time.Millisecond
	lingerFrom = 8
)

// expireChunk bounds the deletions per retention transaction, so retention
// never holds the write lock long enough to stall sends.
const expireChunk = 1000

// ErrLocked means another process holds the database file.
var ErrLocked = errors.New("database file is locked by another process")

// Options configure Open.
type Options struct {
	// Timeout bounds the wait for the file lock held by another process.
	Timeout time.Duration
	// Notify is called after each durable append, in commit order.
	Notify storage.Notify
	// OneCommitPerMessage disables group commit: every append gets its own
	// transaction and fsync. Only for measuring the naive baseline.
	OneCommitPerMessage bool
}

// Store is a bbolt-backed storage.Store.
type Store struct {
	db     *bolt.DB
	notify storage.Notify
	batch  int

	mu     sync.RWMutex // guards closed and sending on queue
	closed bool
	queue  chan *appendReq
	done   chan struct{} // closed when the writer has finished
}

type appendReq struct {
	handle   string
	envelope []byte
	maxInbox int
	msg      storage.Message
	err      error
	ready    chan struct{}
}

// initialMmapSize is 1 GiB where address space is plentiful (64-bit).
const initialMmapSize = 1 << 30 * (strconv.IntSize / 64)

// Open opens (creating if needed) the database at path.
func Open(path string, opts Options) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout: opts.Timeout,
		// The freelist is rebuilt on open instead of written on every commit:
		// cheaper commits for an append-heavy workload.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
		// Map address space for a 1 GiB file up front (it costs no memory):
		// growing the map means unmapping first, and if mapping again then
		// fails (ext4 refuses mmap once an error made it read-only) bbolt is
		// left unmapped and even reads fail until a restart. A fixed map
		// also spares commits from waiting for open reads to remap.
		InitialMmapSize: initialMmapSize,
	})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("open %s: %w (waited %s)", path, ErrLocked, opts.Timeout)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketHandles, bucketPrimaries, bucketInboxes, bucketCounts, bucketInvites} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("initialize %s: %w", path, err)
	}
	s := &Store{db: db, notify: opts.Notify, batch: maxBatch,
		queue: make(chan *appendReq, maxBatch), done: make(chan struct{})}
	if opts.OneCommitPerMessage {
		s.batch = 1
	}
	go s.writer()
	return s, nil
}

// Path is the database file's path.
func (s *Store) Path() string { return s.db.Path() }

// Close lets the writer commit what is queued, then closes the file.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.queue)
	s.mu.Unlock()
	<-s.done
	return s.db.Close()
}

func seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}

func u64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// mapErr turns bbolt's "database not open" into storage.ErrClosed.
func mapErr(err error) error {
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return storage.ErrClosed
	}
	return err
}

// Register binds a handle and a primary in one transaction.
func (s *Store) Register(_ context.Context, rec storage.Record, invite string) (storage.Record, bool, error) {
	var stored storage.Record
	created := false
	err := s.db.Update(func(tx *bolt.Tx) error {
		handles, primaries := tx.Bucket(bucketHandles), tx.Bucket(bucketPrimaries)
		if existing := handles.Get([]byte(rec.Handle)); existing != nil {
			if err := json.Unmarshal(existing, &stored); err != nil {
				return fmt.Errorf("decode record %q: %w", rec.Handle, err)
			}
			if stored.Primary == rec.Primary {
				return nil // an idempotent retry
			}
			return storage.ErrHandleTaken
		}
		if primaries.Get([]byte(rec.Primary)) != nil {
			return storage.ErrPrimaryTaken
		}
		if invite != "" {
			invites := tx.Bucket(bucketInvites)
			if invites.Get([]byte(invite)) != nil {
				return storage.ErrInviteUsed
			}
			if err := invites.Put([]byte(invite), []byte(rec.Handle)); err != nil {
				return err
			}
		}
		raw, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		if err := handles.Put([]byte(rec.Handle), raw); err != nil {
			return err
		}
		if err := primaries.Put([]byte(rec.Primary), []byte(rec.Handle)); err != nil {
			return err
		}
		// Seqs come from the inbox bucket's own sequence, which survives
		// deletions, so the bucket is created once and never removed.
		if _, err := tx.Bucket(bucketInboxes).CreateBucketIfNotExists([]byte(rec.Handle)); err != nil {
			return err
		}
		stored, created = rec, true
		return nil
	})
	if err != nil {
		return storage.Record{}, false, mapErr(err)
	}
	return stored, created, nil
}

// Lookup returns a handle's record.
func (s *Store) Lookup(_ context.Context, handle string) (storage.Record, error) {
	var rec storage.Record
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketHandles).Get([]byte(handle))
		if raw == nil {
			return storage.ErrNotFound
		}
		return json.Unmarshal(raw, &rec)
	})
	return rec, mapErr(err)
}

// LookupPrimary returns the record bound to a primary.
func (s *Store) LookupPrimary(ctx context.Context, primary string) (storage.Record, error) {
	var handle string
	err := s.db.View(func(tx *bolt.Tx) error {
		h := tx.Bucket(bucketPrimaries).Get([]byte(primary))
		if h == nil {
			return storage.ErrNotFound
		}
		handle = string(h)
		return nil
	})
	if err != nil {
		return storage.Record{}, mapErr(err)
	}
	return s.Lookup(ctx, handle)
}

// Append queues the envelope for the writer and waits until it is durable.
func (s *Store) Append(_ context.Context, handle string, envelope []byte, maxInbox int) (storage.Message, error) {
	req := &appendReq{handle: handle, envelope: envelope, maxInbox: maxInbox, ready: make(chan struct{})}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return storage.Message{}, storage.ErrClosed
	}
	s.queue <- req
	s.mu.RUnlock()
	<-req.ready
	return req.msg, req.err
}

// writer is the only goroutine that appends. It commits whatever queued up
// while the previous fsync ran in one transaction: one fsync for many sends,
// and no added delay when the queue is empty.
//
// Under load it lingers a little before committing. Many busy senders would
// otherwise split into two groups that take turns, each waiting out the
// other's commit; the senders answered by the last commit are about to send
// again, so waiting briefly for them (until as many appends are in the batch
// as were in flight at the end of the last commit, at most half that
// commit's time and never longer than maxLinger) doubles the batch for the
// same fsyncs. With fewer than lingerFrom appends in flight nothing waits.
func (s *Store) writer() {
	defer close(s.done)
	batch := make([]*appendReq, 0, s.batch)
	active := 0            // appends in flight at the end of the last commit
	var took time.Duration // how long the last commit took
	for req := range s.queue {
		batch = append(batch[:0], req)
		if !s.fill(&batch, nil) && active >= lingerFrom && len(batch) < active {
			t := time.NewTimer(min(took/2, maxLinger))
			for len(batch) < active && s.fill(&batch, t.C) {
			}
			t.Stop()
		}
		start := time.Now()
		s.commit(batch)
		took = time.Since(start)
		active = min(len(batch)+len(s.queue), s.batch)
	}
}

// fill adds queued appends to the batch until it is full, the queue is empty
// (wait == nil) or wait fires. It reports false when it stopped for one of
// those reasons or the queue was closed, true when it added one and may go on.
func (s *Store) fill(batch *[]*appendReq, wait <-chan time.Time) bool {
	for len(*batch) < s.batch {
		if wait == nil {
			select {
			case more, ok := <-s.queue:
				if !ok {
					return false
				}
				*batch = append(*batch, more)
				continue
			default:
				return false
			}
		}
		select {
		case more, ok := <-s.queue:
			if !ok {
				return false
			}
			*batch = append(*batch, more)
			return true
		case <-wait:
			return false
		}
	}
	return false
}

func (s *Store) commit(batch []*appendReq) {
	now := time.Now().UnixMilli()
	err := s.db.Update(func(tx *bolt.Tx) error {
		inboxes, counts := tx.Bucket(bucketInboxes), tx.Bucket(bucketCounts)
		for _, r := range batch {
			r.err = nil
			b := inboxes.Bucket([]byte(r.handle))
			if b == nil {
				r.err = storage.ErrNotFound
				continue
			}
			n := u64(counts.Get([]byte(r.handle)))
			if r.maxInbox > 0 && n >= uint64(r.maxInbox) {
				r.err = storage.ErrInboxFull
				continue
			}
			seq, err := b.NextSequence()
			if err != nil {
				return err
			}
			val := make([]byte, 8+len(r.envelope))
			binary.BigEndian.PutUint64(val, uint64(now))
			copy(val[8:], r.envelope)
			if err := putMessage(b, seq, val); err != nil {
				return err
			}
			if err := counts.Put([]byte(r.handle), seqKey(n+1)); err != nil {
				return err
			}
			r.msg = storage.Message{Seq: seq, ReceivedAt: now, Envelope: r.envelope}
		}
		return nil
	})
	for _, r := range batch {
		if err != nil {
			r.msg, r.err = storage.Message{}, mapErr(err)
		}
		close(r.ready)
	}
	if err != nil || s.notify == nil {
		return
	}
	for _, r := range batch {
		if r.err == nil {
			s.notify(r.handle, r.msg)
		}
	}
}

// Read returns messages with seq > since, ascending: a seek, never a scan.
func (s *Store) Read(_ context.Context, handle string, since uint64, limit int) ([]storage.Message, bool, error) {
	var msgs []storage.Message
	more := false
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketInboxes).Bucket([]byte(handle))
		if b == nil {
			return storage.ErrNotFound
		}
		c := b.Cursor()
		k, v := c.Seek(seqKey(since + 1))
		for ; k != nil && len(msgs) < limit; k, v = c.Next() {
			v = messageValue(b, k, v)
			if len(v) < 8 {
				return fmt.Errorf("corrupt message %x in inbox %q", k, handle)
			}
			msgs = append(msgs, storage.Message{
				Seq:        u64(k),
				ReceivedAt: int64(binary.BigEndian.Uint64(v)),
				Envelope:   append([]byte(nil), v[8:]...), // bolt's bytes die with the tx
			})
		}
		more = k != nil
		return nil
	})
	if err != nil {
		return nil, false, mapErr(err)
	}
	return msgs, more, nil
}

// Ack deletes every message with seq <= upto.
func (s *Store) Ack(_ context.Context, handle string, upto uint64) (int, error) {
	deleted := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketInboxes).Bucket([]byte(handle))
		if b == nil {
			return storage.ErrNotFound
		}
		n, err := deleteFront(b, func(k, _ []byte) bool { return u64(k) <= upto }, -1)
		if err != nil {
			return err
		}
		deleted = n
		return adjustCount(tx, handle, n)
	})
	return deleted, mapErr(err)
}

// deleteFront deletes messages from the oldest while del says so, at most
// max of them (max < 0: no bound).
func deleteFront(b *bolt.Bucket, del func(k, v []byte) bool, max int) (int, error) {
	type stored struct {
		key       []byte
		outOfLine bool
	}
	var doomed []stored
	c := b.Cursor()
	for k, v := c.First(); k != nil && (max < 0 || len(doomed) < max) && del(k, messageValue(b, k, v)); k, v = c.Next() {
		doomed = append(doomed, stored{append([]byte(nil), k...), v == nil})
	}
	for _, d := range doomed {
		remove := b.Delete
		if d.outOfLine {
			remove = b.DeleteBucket
		}
		if err := remove(d.key); err != nil {
			return 0, err
		}
	}
	return len(doomed), nil
}

// outOfLineFrom is the envelope size from which a message is stored in a
// bucket of its own. A message is stored under its seq in the inbox bucket
// as received_at (8 bytes, big-endian) followed by the envelope; a large one
// instead as a bucket under its seq holding that same value under msgKey.
// bbolt writes a leaf again, with every value on it, whenever a key is added
// to it, and a leaf holds at least two values: large envelopes kept in the
// inbox were written again with later messages (4.4 times their size on
// average for 256 KiB envelopes), while a bucket of their own is written
// once. Small ones stay inline, where a bucket would waste most of a page.
const outOfLineFrom = 4096

var msgKey = []byte("m")

// putMessage stores a message's value (received_at + envelope) under seq.
func putMessage(b *bolt.Bucket, seq uint64, val []byte) error {
	if len(val)-8 < outOfLineFrom {
		return b.Put(seqKey(seq), val)
	}
	mb, err := b.CreateBucket(seqKey(seq))
	if err != nil {
		return err
	}
	return mb.Put(msgKey, val)
}

// messageValue is the value of the message a cursor of an inbox stands on:
// v itself, or for a message stored out of line (v == nil), its bucket's.
func messageValue(b *bolt.Bucket, k, v []byte) []byte {
	if v != nil {
		return v
	}
	if mb := b.Bucket(k); mb != nil {
		return mb.Get(msgKey)
	}
	return nil
}

func adjustCount(tx *bolt.Tx, handle string, deleted int) error {
	if deleted == 0 {
		return nil
	}
	counts := tx.Bucket(bucketCounts)
	n := u64(counts.Get([]byte(handle)))
	if uint64(deleted) > n {
		n = uint64(deleted) // the count can only be behind after a bug; never wrap
	}
	return counts.Put([]byte(handle), seqKey(n-uint64(deleted)))
}

// Expire deletes messages received before cutoff, in transactions of at most
// expireChunk deletions so that sends wait for at most one small commit.
func (s *Store) Expire(ctx context.Context, cutoff time.Time) (int, error) {
	limit := uint64(cutoff.UnixMilli())
	old := func(_, v []byte) bool { return len(v) >= 8 && binary.BigEndian.Uint64(v) < limit }
	var stale []string
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketInboxes).ForEachBucket(func(name []byte) error {
			b := tx.Bucket(bucketInboxes).Bucket(name)
			k, v := b.Cursor().First()
			if k != nil && old(k, messageValue(b, k, v)) {
				stale = append(stale, string(name))
			}
			return nil
		})
	})
	if err != nil {
		return 0, mapErr(err)
	}
	total := 0
	for _, handle := range stale {
		for {
			if err := ctx.Err(); err != nil {
				return total, err
			}
			n := 0
			err := s.db.Update(func(tx *bolt.Tx) error {
				b := tx.Bucket(bucketInboxes).Bucket([]byte(handle))
				var err error
				if n, err = deleteFront(b, old, expireChunk); err != nil {
					return err
				}
				return adjustCount(tx, handle, n)
			})
			if err != nil {
				return total, mapErr(err)
			}
			total += n
			if n < expireChunk {
				break
			}
		}
	}
	return total, nil
}

// Ping reads the database.
func (s *Store) Ping(context.Context) error {
	return mapErr(s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketHandles) == nil {
			return errors.New("handles bucket missing")
		}
		return nil
	}))
}

var _ storage.Store = (*Store)(nil)

// Check opens the file at path read-only and verifies bbolt's invariants
// (page references, freelist, ordering). For tests and operators after a crash.
func Check(path string, timeout time.Duration) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: timeout})
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		var first error
		for err := range tx.Check() { // drain: the checker stops only at the end
			if first == nil {
				first = err
			}
		}
		return first
	})
}

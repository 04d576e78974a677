// Package bolt is the default KEZ chat backend: one bbolt file, durable
// appends through a single group-committing writer.
//
// # Layout (schema 3)
//
//	meta       "schema" → 3 (8 bytes BE); absent or 1: the v1 layout, 2: v2 without the log
//	           (both migrated on Open, migrate.go); "log_key" → the log's note signer key;
//	           "server" → the server name the handles belong to (Options.Server)
//	handles    handle → Record JSON
//	primaries  primary → handle
//	invites    used invite → handle it registered
//	inboxes    handle → bucket of seq (8 bytes BE) → message value (message.go);
//	           a large one as a bucket under its seq holding the value under "m"
//	counts     handle → stored messages that are not requests (8 bytes BE)
//	state      handle → bucket of the inbox's policy (each list made when first written, sub.go):
//	  accepted   key → 1          senders the owner accepted (explicitly or by writing to them)
//	  blocked    key → 1          senders the owner blocked
//	  requests   key+seq → 1      the stored requests, by sender
//	  senders    key → n          unacknowledged requests from that sender (absent: 0)
//	  nrequests  (a value)        unacknowledged requests in the inbox
//	  floor      (a value)        the inbox's sequence when it was made again after a
//	                              deletion: idempotency keys of seqs up to it are void
//	listers    key+handle → 1     handle's inbox accepts or blocks key (the reverse of
//	                              accepted and blocked, so a rotation finds them, §2.9)
//	idem_times received_at + idem → seq   idempotency keys (SPEC §2.5) of messages stored or
//	                              acknowledged, by age; found through an index in memory (idem.go)
//	cooldown   handle → until (unix ms) + seq   a deleted handle (SPEC §2.10): held until
//	                              then, and its inbox's sequence, so a seq is never reused
//	log_data   leaf index → data               the binding log (SPEC §5, log.go)
//	log_hashes tlog.StoredHashIndex → hash     its tree
//	push       handle → JSON list of Web Push subscriptions (push.go; made on first use);
//	           meta "push_key" → the VAPID private key
//
// A key is a primary's 32 raw bytes; idem is sha256(handle, key, sig).
// Schema 3 also had idem (idem → seq + received_at), which schema 4 does
// without (idem.go).
// Every count changes in the transaction that changes what it counts, so a
// crash never leaves one wrong; every binding changes in the transaction
// that appends its log leaf.
//
// The idempotency keys are one bucket for all inboxes, ordered by time, so
// a batch writes its last leaf or two once (idem.go). An inbox's keys
// cannot be found to delete them with the inbox: the floor voids them
// instead, and retention removes them like any other.
//
// # Rotation and deletion (SPEC §2.9, §2.10)
//
// Rotate moves the record, the primaries entry and every inbox's
// acceptance or block of the old key (found through listers, which accept,
// block, unaccept, unblock and implicit acceptance keep exact) in one
// transaction with the log leaf. An inbox that had both keys listed ends
// with the new key blocked if either was blocked, else accepted.
// Requests the old key left in inboxes that neither accept nor block it
// are not moved: a stored message keeps the sender it was authenticated
// as, so they stay requests from the old key, counted against its
// per-sender limit until acknowledged or expired; the new key starts with
// its own request_limit there (max_requests still bounds the inbox). An
// implicit acceptance whose ToPrimary is no longer the recipient's key when
// it commits (the recipient rotated meanwhile) is skipped.
//
// Delete removes the record, the primaries entry, the inbox bucket, its
// state bucket (contacts, request bookkeeping), its count and its listers
// entries; other inboxes' lists of the deleted key stay theirs. The
// cooldown record holds the handle until cooldownUntil, compared with the
// registration's RegisteredAt (the server's clock); it also keeps the inbox's sequence, so a
// new registration of the handle goes on from it (a seq is never reused)
// and sets the floor that voids the old idempotency keys.
package bolt

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/kezchat/kez/storage"
)

var (
	bucketMeta      = []byte("meta")
	bucketHandles   = []byte("handles")
	bucketPrimaries = []byte("primaries")
	bucketInboxes   = []byte("inboxes")
	bucketCounts    = []byte("counts")
	bucketInvites   = []byte("invites")
	bucketState     = []byte("state")
	bucketIdem      = []byte("idem") // schema 3 only
	bucketIdemTimes = []byte("idem_times")
	bucketListers   = []byte("listers")
	bucketCooldown  = []byte("cooldown")

	stAccepted  = []byte("accepted")
	stBlocked   = []byte("blocked")
	stRequests  = []byte("requests")
	stSenders   = []byte("senders")
	stNRequests = []byte("nrequests")
	stFloor     = []byte("floor")

	present = []byte{1} // the value of a set member; never modified
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

// ErrOtherServer means the database belongs to another server name.
var ErrOtherServer = errors.New("database belongs to another server name")

var metaServer = []byte("server")

// Options configure Open.
type Options struct {
	// Timeout bounds the wait for the file lock held by another process.
	Timeout time.Duration
	// Notify is called after each durable append, in commit order.
	Notify storage.Notify
	// OneCommitPerMessage disables group commit: every append gets its own
	// transaction and fsync. Only for measuring the naive baseline.
	OneCommitPerMessage bool
	// MaxOnce bounds the single-use record kept by Once (0: DefaultMaxOnce).
	MaxOnce int
	// MaxKeys bounds the idempotency keys kept (0: DefaultMaxKeys); Expire
	// forgets the oldest beyond it (idem.go).
	MaxKeys int
	// Server is the server name the handles belong to (alice@Server). The
	// first Open that names one records it in the file; an Open naming
	// another fails with ErrOtherServer, so two servers never mix their
	// handles in one file. Empty: not checked.
	Server string
}

// Store is a bbolt-backed storage.Store.
type Store struct {
	db     *bbolt.DB
	notify storage.Notify
	batch  int
	once   onceSet

	mu     sync.RWMutex // guards closed and sending on queue
	closed bool
	queue  chan *appendReq
	done   chan struct{} // closed when the writer has finished

	logSize atomic.Int64 // leaves known durable (log.go)
	cache   logCache
	records *recordCache // decoded records for Lookup (records.go)
	index   *idemIndex   // where each idempotency key is in idem_times (idem.go)
	maxKeys int          // Options.MaxKeys
	keyMu   sync.Mutex   // guards logKey
	logKey  string
}

type appendReq struct {
	d     storage.Delivery
	lim   storage.Limits
	from  [keyLen]byte // d.From packed
	to    [keyLen]byte // d.ToPrimary packed, if hasTo
	hasTo bool
	idem  [sha256.Size]byte // the idempotency key (idemKey)

	msg   storage.Message
	fresh bool
	err   error
	ready chan struct{}
}

// pageSize is the page size of a new database file (a file keeps the size
// it was made with). 8 KiB instead of the usual 4: an inbox's leaf holds
// seven 1 KiB messages instead of three, so its tree has half the leaves
// and a branch above them half the keys, which bbolt reads into memory and
// writes again on every commit that adds to the inbox. Per append, in
// BenchmarkAppendConcurrent: 64 inboxes 3.26 -> 2.60 pages written and 50
// -> 44 µs of CPU; one inbox 0.50 -> 0.29 pages, 13 -> 10 µs.
const pageSize = 8192

// initialMmapSize is 1 GiB where address space is plentiful (64-bit).
const initialMmapSize = 1 << 30 * (strconv.IntSize / 64)

// Open opens (creating if needed) the database at path. A file written by
// the v1 layout is migrated before Open returns (migrate.go).
func Open(path string, opts Options) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout: opts.Timeout,
		// The freelist is rebuilt on open instead of written on every commit:
		// cheaper commits for an append-heavy workload.
		NoFreelistSync: true,
		FreelistType:   bbolt.FreelistMapType,
		// Map address space for a 1 GiB file up front (it costs no memory):
		// growing the map means unmapping first, and if mapping again then
		// fails (ext4 refuses mmap once an error made it read-only) bbolt is
		// left unmapped and even reads fail until a restart. A fixed map
		// also spares commits from waiting for open reads to remap.
		InitialMmapSize: initialMmapSize,
		PageSize:        pageSize,
	})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("open %s: %w (waited %s)", path, ErrLocked, opts.Timeout)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketMeta, bucketHandles, bucketPrimaries, bucketInboxes, bucketCounts, bucketInvites,
			bucketState, bucketIdemTimes, bucketListers, bucketCooldown, bucketLogData, bucketLogHashes} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return checkServer(tx.Bucket(bucketMeta), opts.Server)
	})
	index := newIdemIndex()
	if err == nil {
		err = db.View(index.load)
	}
	if err == nil {
		err = migrate(db, index)
	}
	var size int64
	if err == nil {
		err = db.View(func(tx *bbolt.Tx) error { size = logSize(tx); return nil })
	}
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("initialize %s: %w", path, err)
	}
	s := &Store{db: db, notify: opts.Notify, batch: maxBatch,
		queue: make(chan *appendReq, maxBatch), done: make(chan struct{}), records: newRecordCache(), index: index}
	s.logSize.Store(size)
	s.once.init(opts.MaxOnce)
	s.maxKeys = cmp.Or(max(opts.MaxKeys, 0), DefaultMaxKeys)
	if opts.OneCommitPerMessage {
		s.batch = 1
	}
	go s.writer()
	return s, nil
}

// checkServer records server as the database's server name, or checks it
// against the one recorded.
func checkServer(meta *bbolt.Bucket, server string) error {
	if server == "" {
		return nil
	}
	if had := meta.Get(metaServer); had != nil {
		if string(had) != server {
			return fmt.Errorf("%w: it holds the handles of %q, not %q", ErrOtherServer, had, server)
		}
		return nil
	}
	return meta.Put(metaServer, []byte(server))
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

// cat concatenates parts into a new slice (bolt keeps values by reference
// until the transaction ends, so a value is never a reused buffer).
func cat(parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	b := make([]byte, 0, n)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// idemKey is the idempotency key of a delivery: its inbox, its sender and
// its sig.
func idemKey(handle string, from [keyLen]byte, sig string) [sha256.Size]byte {
	h := sha256.New()
	h.Write(binary.AppendUvarint(nil, uint64(len(handle))))
	h.Write([]byte(handle))
	h.Write(from[:])
	h.Write([]byte(sig))
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// mapErr turns bbolt's "database not open" into storage.ErrClosed.
func mapErr(err error) error {
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return storage.ErrClosed
	}
	return err
}

// marshalRecord encodes a record as stored. Its raw members (registration,
// rotation) are kept byte for byte: no HTML escaping, as they are logged.
func marshalRecord(rec storage.Record) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(rec); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

func getRecord(handles *bbolt.Bucket, handle string) (storage.Record, bool, error) {
	var rec storage.Record
	raw := handles.Get([]byte(handle))
	if raw == nil {
		return rec, false, nil
	}
	if err := json.Unmarshal(raw, &rec); err != nil {
		return rec, false, fmt.Errorf("decode record %q: %w", handle, err)
	}
	return rec, true, nil
}

// update runs fn in a write transaction and, once it is durable, makes
// the leaves it appended visible to LogSize and its idempotency keys to
// the index.
func (s *Store) update(fn func(w *writeTx) error) error {
	w, err := writeIn(s.db, s.index, fn)
	if err != nil {
		return mapErr(err)
	}
	if w.logSize > 0 {
		s.noteSize(w.logSize)
	}
	return nil
}

// writeIn runs fn in a write transaction of db and applies its changes to
// the key index once it has committed, before any other transaction that
// goes through writeIn can begin (bbolt lets one writer in at a time, but
// releases it before Update returns).
func writeIn(db *bbolt.DB, index *idemIndex, fn func(w *writeTx) error) (*writeTx, error) {
	index.commits.Lock()
	defer index.commits.Unlock()
	var w *writeTx
	err := db.Update(func(tx *bbolt.Tx) error {
		w = newWriteTx(tx, index)
		return fn(w)
	})
	if err != nil {
		return nil, err
	}
	index.apply(&w.keys)
	return w, nil
}

// Register binds a handle and a primary and appends the registration to
// the log, in one transaction.
func (s *Store) Register(_ context.Context, rec storage.Record, invite string) (storage.Record, bool, error) {
	var stored storage.Record
	created := false
	err := s.update(func(w *writeTx) error {
		tx := w.tx
		handles, primaries := tx.Bucket(bucketHandles), tx.Bucket(bucketPrimaries)
		existing, ok, err := getRecord(handles, rec.Handle)
		if err != nil {
			return err
		}
		if ok {
			if existing.Primary == rec.Primary {
				stored = existing
				return nil // an idempotent retry: nothing appended
			}
			return storage.ErrHandleTaken
		}
		var cooldown []byte // until + seq of a deleted handle
		if v := tx.Bucket(bucketCooldown).Get([]byte(rec.Handle)); len(v) == 16 {
			// The server's time of this registration, its clock (which tests pin).
			if int64(u64(v[:8])) > rec.RegisteredAt*1000 {
				return storage.ErrCoolingDown
			}
			cooldown = v
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
		rec.Rotation = nil
		if rec.LogIndex, err = w.logAppend(rec.Registration); err != nil {
			return err
		}
		raw, err := marshalRecord(rec)
		if err != nil {
			return err
		}
		if err := handles.Put([]byte(rec.Handle), raw); err != nil {
			return err
		}
		if err := primaries.Put([]byte(rec.Primary), []byte(rec.Handle)); err != nil {
			return err
		}
		// Seqs come from the inbox bucket's own sequence. A deleted inbox's
		// sequence waited in its cooldown record: the new inbox goes on from
		// it, and the old inbox's idempotency keys (all at seqs up to it)
		// are void.
		ib, err := tx.Bucket(bucketInboxes).CreateBucketIfNotExists([]byte(rec.Handle))
		if err != nil {
			return err
		}
		ix, err := w.inbox(rec.Handle) // its state buckets
		if err != nil {
			return err
		}
		if cooldown != nil {
			seq := u64(cooldown[8:])
			if err := ib.SetSequence(max(seq, ib.Sequence())); err != nil {
				return err
			}
			if err := ix.state.Put(stFloor, seqKey(seq)); err != nil {
				return err
			}
			ix.floor = seq
			if err := tx.Bucket(bucketCooldown).Delete([]byte(rec.Handle)); err != nil {
				return err
			}
		}
		stored, created = rec, true
		return nil
	})
	if err != nil {
		return storage.Record{}, false, err
	}
	return stored, created, nil
}

// Rotate moves handle from old to new (SPEC §2.10) and appends the
// rotation to the log, in one transaction. Every inbox that accepts or
// blocks old (found by the listers index, never by a scan) treats new the
// same way from then on (§2.9): see moveListing.
func (s *Store) Rotate(_ context.Context, handle, old, new string, rotation []byte) (storage.Record, error) {
	oldKey, err := packPrimary(old)
	if err != nil {
		return storage.Record{}, err
	}
	newKey, err := packPrimary(new)
	if err != nil {
		return storage.Record{}, err
	}
	var rec storage.Record
	defer s.records.invalidate() // after the commit, before returning
	err = s.update(func(w *writeTx) error {
		tx := w.tx
		handles, primaries := tx.Bucket(bucketHandles), tx.Bucket(bucketPrimaries)
		cur, ok, err := getRecord(handles, handle)
		if err != nil {
			return err
		}
		if !ok || cur.Primary != old {
			return storage.ErrNotFound
		}
		if primaries.Get([]byte(new)) != nil {
			return storage.ErrPrimaryTaken
		}
		cur.Primary = new
		cur.Rotation = append(json.RawMessage(nil), rotation...)
		if cur.LogIndex, err = w.logAppend(rotation); err != nil {
			return err
		}
		raw, err := marshalRecord(cur)
		if err != nil {
			return err
		}
		if err := handles.Put([]byte(handle), raw); err != nil {
			return err
		}
		if err := primaries.Delete([]byte(old)); err != nil {
			return err
		}
		if err := primaries.Put([]byte(new), []byte(handle)); err != nil {
			return err
		}
		// Who lists old: collected first, as moving changes the index.
		var listers []string
		c := w.listers.Cursor()
		for k, _ := c.Seek(oldKey[:]); k != nil && bytes.HasPrefix(k, oldKey[:]); k, _ = c.Next() {
			listers = append(listers, string(k[keyLen:]))
		}
		for _, h := range listers {
			if err := w.moveListing(h, oldKey[:], newKey[:]); err != nil {
				return err
			}
		}
		rec = cur
		return nil
	})
	if err != nil {
		return storage.Record{}, err
	}
	return rec, nil
}

// moveListing moves handle's acceptance or block of old to new. A block
// wins: if the inbox blocked either key, new ends up blocked (its stored
// requests deleted); otherwise new ends up accepted (its stored requests,
// if it had sent any as a stranger, become messages). old has no stored
// requests there (acceptance and blocks leave none); requests that old
// left in inboxes that neither accept nor block it stay what they are,
// messages from old, counted against old (see the package doc).
func (w *writeTx) moveListing(handle string, old, new []byte) error {
	ix, err := w.inbox(handle)
	if err != nil {
		return err
	}
	if ix == nil { // a stale entry; Delete removes them, so never expected
		return w.listers.Delete(cat(old, []byte(handle)))
	}
	blocked := ix.blocked.Get(old) != nil || ix.blocked.Get(new) != nil
	accepted := ix.accepted.Get(old) != nil
	if err := ix.accepted.Delete(old); err != nil {
		return err
	}
	if err := ix.blocked.Delete(old); err != nil {
		return err
	}
	if err := w.listers.Delete(cat(old, ix.name)); err != nil {
		return err
	}
	switch {
	case blocked:
		return w.block(ix, new)
	case accepted && ix.accepted.Get(new) == nil:
		return w.accept(ix, new)
	}
	return nil
}

// Delete ends handle's binding to primary (SPEC §2.10): its record, inbox,
// counts and contact lists go, the handle is held until cooldownUntil (the
// record keeping the inbox's sequence too), and the deletion is appended
// to the log, in one transaction.
func (s *Store) Delete(_ context.Context, handle, primary string, deletion []byte, cooldownUntil time.Time) (int64, error) {
	var index int64
	defer s.records.invalidate() // after the commit, before returning
	err := s.update(func(w *writeTx) error {
		tx := w.tx
		handles := tx.Bucket(bucketHandles)
		cur, ok, err := getRecord(handles, handle)
		if err != nil {
			return err
		}
		if !ok || cur.Primary != primary {
			return storage.ErrNotFound
		}
		if err := handles.Delete([]byte(handle)); err != nil {
			return err
		}
		if err := tx.Bucket(bucketPrimaries).Delete([]byte(primary)); err != nil {
			return err
		}
		name := []byte(handle)
		seq := uint64(0)
		ix, err := w.inbox(handle)
		if err != nil {
			return err
		}
		if ix != nil {
			seq = ix.msgs.Sequence()
			for _, list := range []*sub{ix.accepted, ix.blocked} {
				if err := list.ForEach(func(k, _ []byte) error { return w.listers.Delete(cat(k, name)) }); err != nil {
					return err
				}
			}
			if err := tx.Bucket(bucketInboxes).DeleteBucket(name); err != nil {
				return err
			}
			if err := tx.Bucket(bucketState).DeleteBucket(name); err != nil {
				return err
			}
			delete(w.inboxes, handle)
		}
		if err := w.counts.Delete(name); err != nil {
			return err
		}
		if err := deletePush(tx, name); err != nil {
			return err
		}
		until := max(cooldownUntil.UnixMilli(), 0)
		if err := tx.Bucket(bucketCooldown).Put(name, cat(seqKey(uint64(until)), seqKey(seq))); err != nil {
			return err
		}
		index, err = w.logAppend(deletion)
		return err
	})
	if err != nil {
		return 0, err
	}
	return index, nil
}

// Lookup returns a handle's record. Records are kept decoded (records.go);
// the returned record's byte slices may be shared: callers only read them.
func (s *Store) Lookup(_ context.Context, handle string) (storage.Record, error) {
	if rec, ok := s.records.record(handle); ok {
		return rec, nil
	}
	gen := s.records.generation()
	var rec storage.Record
	err := s.db.View(func(tx *bbolt.Tx) error {
		raw := tx.Bucket(bucketHandles).Get([]byte(handle))
		if raw == nil {
			return storage.ErrNotFound
		}
		return json.Unmarshal(raw, &rec)
	})
	if err != nil {
		return storage.Record{}, mapErr(err)
	}
	s.records.put(gen, rec)
	return rec, nil
}

// LookupPrimary returns the record bound to a primary.
func (s *Store) LookupPrimary(ctx context.Context, primary string) (storage.Record, error) {
	if h, ok := s.records.handleOf(primary); ok {
		// Both entries come from one record read in one generation; the
		// check costs nothing and keeps a mismatch from ever being served.
		if rec, ok := s.records.record(h); ok && rec.Primary == primary {
			return rec, nil
		}
	}
	var handle string
	err := s.db.View(func(tx *bbolt.Tx) error {
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
	rec, err := s.Lookup(ctx, handle)
	if err == nil && rec.Primary != primary {
		// A rotation committed between the two reads.
		return storage.Record{}, storage.ErrNotFound
	}
	return rec, err
}

// Append checks the delivery, queues it for the writer and waits until it
// is durable (or refused). What can be worked out without the database
// (packing keys, hashing the idempotency key) is done here, by the caller's
// goroutine, so the single writer does only the transaction.
func (s *Store) Append(_ context.Context, d storage.Delivery, lim storage.Limits) (storage.Message, bool, error) {
	req := &appendReq{d: d, lim: lim, ready: make(chan struct{})}
	var err error
	if req.from, err = packPrimary(d.From); err != nil {
		return storage.Message{}, false, fmt.Errorf("delivery from: %w", err)
	}
	if d.ToPrimary != "" {
		if req.to, err = packPrimary(d.ToPrimary); err != nil {
			return storage.Message{}, false, fmt.Errorf("delivery to: %w", err)
		}
		req.hasTo = true
	}
	if d.Sig == "" {
		return storage.Message{}, false, errors.New("delivery without sig (the idempotency key)")
	}
	req.idem = idemKey(d.To, req.from, d.Sig)
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return storage.Message{}, false, storage.ErrClosed
	}
	s.queue <- req
	s.mu.RUnlock()
	<-req.ready
	return req.msg, req.fresh, req.err
}

// writer is the only goroutine that appends. It commits whatever queued up
// while the previous fsync ran in one transaction: one fsync for many sends,
// and no added delay when the queue is empty.
//
// Under load it lingers a little before committing. Many busy senders would
// otherwise split into two groups that take turns, each waiting out the
// other's commit; the senders answered by the last commit are about to send
// again, so waiting briefly for them (until as many appends are in the batch
// as were in flight at the end of the last commit, at most a quarter of that
// commit's time and never longer than maxLinger) makes larger batches for the
// same fsyncs. With fewer than lingerFrom appends in flight nothing waits.
// A quarter, not half: in scenario 1 of BENCHMARKS.md (v2, whose senders'
// signatures wait for batch mates before they queue here) half waited out
// senders that came too late anyway, 0.94 of the rate of a quarter; not
// waiting at all made 0.94 of it too.
func (s *Store) writer() {
	defer close(s.done)
	batch := make([]*appendReq, 0, s.batch)
	active := 0            // appends in flight at the end of the last commit
	var took time.Duration // how long the last commit took
	for req := range s.queue {
		batch = append(batch[:0], req)
		if !s.fill(&batch, nil) && active >= lingerFrom && len(batch) < active {
			t := time.NewTimer(min(took/4, maxLinger))
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

// commit applies a batch in one transaction, in queue order: each append
// sees the effects of those before it (counts, idempotency keys,
// acceptance). A refused append (r.err) does not abort the others; a
// failing transaction fails them all.
func (s *Store) commit(batch []*appendReq) {
	now := time.Now().UnixMilli()
	_, err := writeIn(s.db, s.index, func(w *writeTx) error {
		for _, r := range batch {
			r.msg, r.fresh, r.err = storage.Message{}, false, nil
			if err := w.append(r, now); err != nil {
				return err
			}
		}
		return nil
	})
	for _, r := range batch {
		if err != nil {
			r.msg, r.fresh, r.err = storage.Message{}, false, mapErr(err)
		}
		close(r.ready)
	}
	if err != nil || s.notify == nil {
		return
	}
	for _, r := range batch {
		if r.fresh {
			s.notify(r.d.To, r.msg)
		}
	}
}

// writeTx is a write transaction with the buckets of the inboxes it has
// touched at hand.
type writeTx struct {
	tx        *bbolt.Tx
	counts    *bbolt.Bucket
	idemTimes *bbolt.Bucket
	listers   *bbolt.Bucket
	inboxes   map[string]*inbox
	logSize   int64      // after the last leaf appended in this transaction; 0: none
	index     *idemIndex // read only: changes go to keys
	keys      keyChanges // this transaction's changes to index
}

// inbox is an inbox's buckets within one transaction.
type inbox struct {
	name     []byte
	msgs     *bbolt.Bucket
	state    *bbolt.Bucket
	accepted *sub
	blocked  *sub
	requests *sub
	senders  *sub
	floor    uint64 // idempotency keys of seqs up to it belong to a deleted inbox
}

// appendOnly is the FillPercent of buckets whose keys only ever grow
// (messages by seq, idempotency keys by time): a split leaves the left page
// full instead of half empty, as nothing will be inserted into it again.
// Half the pages for the same messages, so half the pages written per commit.
const appendOnly = 1.0

func newWriteTx(tx *bbolt.Tx, index *idemIndex) *writeTx {
	w := &writeTx{tx: tx, counts: tx.Bucket(bucketCounts), idemTimes: tx.Bucket(bucketIdemTimes),
		listers: tx.Bucket(bucketListers), inboxes: map[string]*inbox{}, index: index}
	w.idemTimes.FillPercent = appendOnly
	return w
}

// inbox returns handle's buckets, creating its state buckets if they are
// missing, or nil for an unknown handle.
func (w *writeTx) inbox(handle string) (*inbox, error) {
	if ix, ok := w.inboxes[handle]; ok {
		return ix, nil
	}
	name := []byte(handle)
	msgs := w.tx.Bucket(bucketInboxes).Bucket(name)
	if msgs == nil {
		w.inboxes[handle] = nil
		return nil, nil
	}
	msgs.FillPercent = appendOnly
	ix := &inbox{name: name, msgs: msgs}
	var err error
	if ix.state, err = bucket(w.tx.Bucket(bucketState), name); err != nil {
		return nil, err
	}
	ix.accepted, ix.blocked = openSub(ix.state, stAccepted), openSub(ix.state, stBlocked)
	ix.requests, ix.senders = openSub(ix.state, stRequests), openSub(ix.state, stSenders)
	ix.floor = u64(ix.state.Get(stFloor))
	w.inboxes[handle] = ix
	return ix, nil
}

// bucket returns the named child of parent, creating it if needed.
func bucket(parent *bbolt.Bucket, name []byte) (*bbolt.Bucket, error) {
	if b := parent.Bucket(name); b != nil {
		return b, nil
	}
	return parent.CreateBucket(name)
}

// add adds delta to the counter under key, saturating at 0 (a count can
// only be off after a bug; it never wraps). A zero counter is deleted when
// drop is set.
func add(b kv, key []byte, delta int64, drop bool) error {
	if delta == 0 {
		return nil
	}
	n := int64(u64(b.Get(key))) + delta
	if n <= 0 && drop {
		return b.Delete(key)
	}
	return b.Put(key, seqKey(uint64(max(n, 0))))
}

// append applies one delivery (SPEC §2.5), in the order the contract gives:
// unknown inbox, duplicate, blocked, request limits or inbox cap, store,
// then the sender's implicit acceptance of the recipient (§2.9).
func (w *writeTx) append(r *appendReq, now int64) error {
	d := &r.d
	ix, err := w.inbox(d.To)
	if err != nil {
		return err
	}
	if ix == nil {
		r.err = storage.ErrNotFound
		return nil
	}
	from := r.from[:]
	// A key of a deleted inbox's message (seq up to the floor) is void: it
	// is replaced if this one is stored.
	keyAt, keySeq, found := w.keyAt(r.idem)
	if found && u64(keySeq) > ix.floor {
		r.msg = storage.Message{Seq: u64(keySeq), ReceivedAt: keyAt, From: d.From, FromAddr: d.FromAddr,
			Request: ix.requests.Get(cat(from, keySeq)) != nil, Envelope: d.Envelope}
		return nil
	}
	// The owner writing to its own inbox (a copy for its other devices,
	// SPEC §3) is never a stranger to itself.
	self := r.hasTo && r.to == r.from
	if !self && ix.blocked.Get(from) != nil {
		r.err = storage.ErrBlocked
		return nil
	}
	request := !self && ix.accepted.Get(from) == nil
	if request {
		if r.lim.RequestLimit > 0 && u64(ix.senders.Get(from)) >= uint64(r.lim.RequestLimit) {
			r.err = storage.ErrRequestLimit
			return nil
		}
		if r.lim.MaxRequests > 0 && u64(ix.state.Get(stNRequests)) >= uint64(r.lim.MaxRequests) {
			r.err = storage.ErrRequestLimit
			return nil
		}
	} else if r.lim.MaxInbox > 0 && u64(w.counts.Get(ix.name)) >= uint64(r.lim.MaxInbox) {
		r.err = storage.ErrInboxFull
		return nil
	}

	seq, err := ix.msgs.NextSequence()
	if err != nil {
		return err
	}
	var flags byte
	if request {
		flags = flagRequest
	}
	val := encodeMessage(now, flags, from, d.FromAddr, d.Envelope)
	if err := putMessage(ix.msgs, seq, val, len(d.Envelope)); err != nil {
		return err
	}
	sk := seqKey(seq)
	if found { // void: replaced by this one
		if err := w.forget(keyAt, r.idem); err != nil {
			return err
		}
	}
	if err := w.remember(r.idem, sk, now); err != nil {
		return err
	}
	if request {
		if err := ix.requests.Put(cat(from, sk), present); err != nil {
			return err
		}
		if err := add(ix.senders, from, 1, true); err != nil {
			return err
		}
		err = add(ix.state, stNRequests, 1, false)
	} else {
		err = add(w.counts, ix.name, 1, false)
	}
	if err != nil {
		return err
	}
	r.fresh = true
	r.msg = storage.Message{Seq: seq, ReceivedAt: now, From: d.From, FromAddr: d.FromAddr, Request: request, Envelope: d.Envelope}

	// Writing to someone accepts them in one's own inbox, unless blocked.
	if d.SenderHandle == "" || !r.hasTo || self {
		return nil
	}
	own, err := w.inbox(d.SenderHandle)
	if err != nil || own == nil {
		return err
	}
	if own.accepted.Get(r.to[:]) != nil || own.blocked.Get(r.to[:]) != nil {
		return nil
	}
	// ToPrimary was looked up before this commit: if the recipient has
	// rotated (or been deleted) since, its old key is not accepted, as the
	// rotation has already moved the lists and would miss this entry.
	if h := w.tx.Bucket(bucketPrimaries).Get([]byte(d.ToPrimary)); string(h) != d.To {
		return nil
	}
	return w.accept(own, r.to[:])
}

// requestSeqs returns the seqs of the requests from key stored in ix.
func (ix *inbox) requestSeqs(key []byte) [][]byte {
	var seqs [][]byte
	c := ix.requests.Cursor()
	if c == nil {
		return nil
	}
	for k, _ := c.Seek(key); k != nil && bytes.HasPrefix(k, key); k, _ = c.Next() {
		seqs = append(seqs, append([]byte(nil), k[len(key):]...))
	}
	return seqs
}

// accept makes key a contact of ix's owner: no longer blocked, and its
// stored requests become ordinary messages (counted against MaxInbox).
func (w *writeTx) accept(ix *inbox, key []byte) error {
	return w.settle(ix, key, ix.accepted, ix.blocked, func(sk []byte) error { return rewriteFlags(ix.msgs, sk, 0) })
}

// block refuses key in ix: no longer accepted, and its stored requests are
// deleted (its ordinary messages stay).
func (w *writeTx) block(ix *inbox, key []byte) error {
	return w.settle(ix, key, ix.blocked, ix.accepted, func(sk []byte) error { return deleteMessage(ix.msgs, sk) })
}

// settle moves key onto the list on and off the list off, and ends its
// stored requests: each goes through request (made an ordinary message by
// an acceptance, deleted by a block) and leaves the request bookkeeping.
func (w *writeTx) settle(ix *inbox, key []byte, on, off *sub, request func(seqKey []byte) error) error {
	if err := off.Delete(key); err != nil {
		return err
	}
	if err := on.Put(key, present); err != nil {
		return err
	}
	if err := w.listers.Put(cat(key, ix.name), present); err != nil {
		return err
	}
	seqs := ix.requestSeqs(key)
	for _, sk := range seqs {
		if err := request(sk); err != nil {
			return err
		}
		if err := ix.requests.Delete(cat(key, sk)); err != nil {
			return err
		}
	}
	return w.dropRequests(ix, key, len(seqs), on == ix.accepted)
}

// dropRequests takes n requests from key off ix's request counts; kept
// means they stay stored as ordinary messages.
func (w *writeTx) dropRequests(ix *inbox, key []byte, n int, kept bool) error {
	if n == 0 {
		return nil
	}
	if err := ix.senders.Delete(key); err != nil {
		return err
	}
	if err := add(ix.state, stNRequests, -int64(n), false); err != nil {
		return err
	}
	if kept {
		return add(w.counts, ix.name, int64(n), false)
	}
	return nil
}

// unlist takes key off one of ix's lists (accepted or blocked), and off the
// listers index unless the other list still has it.
func (w *writeTx) unlist(ix *inbox, list *sub, key []byte) error {
	if list.Get(key) == nil {
		return nil
	}
	if err := list.Delete(key); err != nil {
		return err
	}
	if ix.accepted.Get(key) != nil || ix.blocked.Get(key) != nil {
		return nil
	}
	return w.listers.Delete(cat(key, ix.name))
}

// SetContact changes how handle's inbox treats primary (SPEC §2.9).
func (s *Store) SetContact(_ context.Context, handle, primary string, state storage.ContactState) error {
	key, err := packPrimary(primary)
	if err != nil {
		return err
	}
	_, err = writeIn(s.db, s.index, func(w *writeTx) error {
		ix, err := w.inbox(handle)
		if err != nil {
			return err
		}
		if ix == nil {
			return storage.ErrNotFound
		}
		switch state {
		case storage.Accept:
			return w.accept(ix, key[:])
		case storage.Unaccept:
			return w.unlist(ix, ix.accepted, key[:])
		case storage.Block:
			return w.block(ix, key[:])
		case storage.Unblock:
			return w.unlist(ix, ix.blocked, key[:])
		}
		return fmt.Errorf("unknown contact state %d", state)
	})
	return mapErr(err)
}

// Contacts returns handle's accepted and blocked senders, each sorted.
func (s *Store) Contacts(_ context.Context, handle string) (storage.Contacts, error) {
	c := storage.Contacts{Accepted: []string{}, Blocked: []string{}}
	err := s.db.View(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketInboxes).Bucket([]byte(handle)) == nil {
			return storage.ErrNotFound
		}
		st := tx.Bucket(bucketState).Bucket([]byte(handle))
		if st == nil {
			return nil
		}
		list := func(name []byte, dst *[]string) error {
			b := st.Bucket(name)
			if b == nil {
				return nil
			}
			// Bucket order is the raw keys' order, which their lowercase hex keeps.
			return b.ForEach(func(k, _ []byte) error {
				*dst = append(*dst, unpackPrimary(k))
				return nil
			})
		}
		if err := list(stAccepted, &c.Accepted); err != nil {
			return err
		}
		return list(stBlocked, &c.Blocked)
	})
	if err != nil {
		return storage.Contacts{}, mapErr(err)
	}
	return c, nil
}

// Read returns messages with seq > since, ascending: a seek, never a scan.
func (s *Store) Read(_ context.Context, handle string, since uint64, limit int) ([]storage.Message, bool, error) {
	var msgs []storage.Message
	more := false
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketInboxes).Bucket([]byte(handle))
		if b == nil {
			return storage.ErrNotFound
		}
		c := b.Cursor()
		k, v := c.Seek(seqKey(since + 1))
		for ; k != nil && len(msgs) < limit; k, v = c.Next() {
			h, err := decodeMessage(messageValue(b, k, v))
			if err != nil {
				return fmt.Errorf("corrupt message %x in inbox %q: %w", k, handle, err)
			}
			msgs = append(msgs, h.message(u64(k)))
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
	_, err := writeIn(s.db, s.index, func(w *writeTx) error {
		ix, err := w.inbox(handle)
		if err != nil {
			return err
		}
		if ix == nil {
			return storage.ErrNotFound
		}
		deleted, err = w.deleteFront(ix, func(seq uint64, _ header, _ bool) bool { return seq <= upto }, -1)
		return err
	})
	return deleted, mapErr(err)
}

// deleteFront deletes messages from the oldest while del says so (given
// the seq and the value's header, if it could be decoded), at most max of
// them (max < 0: no bound), and takes them off the inbox's counts.
func (w *writeTx) deleteFront(ix *inbox, del func(seq uint64, h header, ok bool) bool, max int) (int, error) {
	type doomed struct {
		key       []byte
		outOfLine bool
		from      []byte // of a request
	}
	var gone []doomed
	c := ix.msgs.Cursor()
	for k, v := c.First(); k != nil && (max < 0 || len(gone) < max); k, v = c.Next() {
		h, err := decodeMessage(messageValue(ix.msgs, k, v))
		if !del(u64(k), h, err == nil) {
			break
		}
		d := doomed{key: append([]byte(nil), k...), outOfLine: v == nil}
		if err == nil && h.request() && h.flags&flagNoFrom == 0 {
			d.from = append([]byte(nil), h.from...)
		}
		gone = append(gone, d)
	}
	ordinary := int64(0)
	senders := map[string]int64{}
	for _, d := range gone {
		remove := ix.msgs.Delete
		if d.outOfLine {
			remove = ix.msgs.DeleteBucket
		}
		if err := remove(d.key); err != nil {
			return 0, err
		}
		if d.from == nil {
			ordinary++
			continue
		}
		if err := ix.requests.Delete(cat(d.from, d.key)); err != nil {
			return 0, err
		}
		senders[string(d.from)]++
	}
	requests := int64(0)
	for from, n := range senders {
		if err := add(ix.senders, []byte(from), -n, true); err != nil {
			return 0, err
		}
		requests += n
	}
	if err := add(ix.state, stNRequests, -requests, false); err != nil {
		return 0, err
	}
	return len(gone), add(w.counts, ix.name, -ordinary, false)
}

// outOfLineFrom is the envelope size from which a message is stored in a
// bucket of its own. A message is stored under its seq in the inbox bucket
// as its value (message.go); a large one instead as a bucket under its seq
// holding that same value under msgKey. bbolt writes a leaf again, with
// every value on it, whenever a key is added to it, and a leaf holds at
// least two values: large envelopes kept in the inbox were written again
// with later messages (4.4 times their size on average for 256 KiB
// envelopes), while a bucket of their own is written once. Small ones stay
// inline, where a bucket would waste most of a page.
const outOfLineFrom = 4096

var msgKey = []byte("m")

// putMessage stores a message's value under seq.
func putMessage(b *bbolt.Bucket, seq uint64, val []byte, envelopeLen int) error {
	if envelopeLen < outOfLineFrom {
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
func messageValue(b *bbolt.Bucket, k, v []byte) []byte {
	if v != nil {
		return v
	}
	if mb := b.Bucket(k); mb != nil {
		return mb.Get(msgKey)
	}
	return nil
}

// deleteMessage deletes the message under seq key sk, wherever it is kept.
func deleteMessage(b *bbolt.Bucket, sk []byte) error {
	if b.Bucket(sk) != nil {
		return b.DeleteBucket(sk)
	}
	return b.Delete(sk)
}

// rewriteFlags stores the message under seq key sk again with its flags
// (but flagV2) replaced by flags. A missing message is left alone.
func rewriteFlags(b *bbolt.Bucket, sk []byte, flags byte) error {
	dst := b
	if mb := b.Bucket(sk); mb != nil {
		dst, sk = mb, msgKey
	}
	v := dst.Get(sk)
	if len(v) < headerMin || v[8]&flagV2 == 0 {
		return nil
	}
	val := append([]byte(nil), v...) // bolt's bytes are read-only
	val[8] = flagV2 | flags | val[8]&flagNoFrom
	return dst.Put(sk, val)
}

// Expire deletes messages received before cutoff, then forgets the
// idempotency keys of messages received before it, in transactions of at
// most expireChunk deletions so that sends wait for at most one small
// commit. What to delete is found from the front: the first message of
// each inbox (by seq), the first idempotency keys by time; what stays is
// never scanned.
func (s *Store) Expire(ctx context.Context, cutoff time.Time) (int, error) {
	ms := cutoff.UnixMilli()
	if ms <= 0 {
		return 0, nil
	}
	limit := uint64(ms)
	old := func(_ uint64, h header, ok bool) bool { return ok && h.receivedAt >= 0 && uint64(h.receivedAt) < limit }
	var stale []string
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketInboxes).ForEachBucket(func(name []byte) error {
			b := tx.Bucket(bucketInboxes).Bucket(name)
			k, v := b.Cursor().First()
			if k != nil {
				h, err := decodeMessage(messageValue(b, k, v))
				if old(0, h, err == nil) {
					stale = append(stale, string(name))
				}
			}
			return nil
		})
	})
	if err != nil {
		return 0, mapErr(err)
	}
	total := 0
	// step deletes up to expireChunk things in one transaction and says how many.
	chunks := func(step func(w *writeTx) (int, error)) error {
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := 0
			_, err := writeIn(s.db, s.index, func(w *writeTx) error {
				var err error
				n, err = step(w)
				return err
			})
			if err != nil {
				return mapErr(err)
			}
			if n < expireChunk {
				return nil
			}
		}
	}
	for _, handle := range stale {
		err := chunks(func(w *writeTx) (int, error) {
			ix, err := w.inbox(handle)
			if err != nil || ix == nil {
				return 0, err
			}
			n, err := w.deleteFront(ix, old, expireChunk)
			if err == nil {
				total += n
			}
			return n, err
		})
		if err != nil {
			return total, err
		}
	}
	if err := chunks(func(w *writeTx) (int, error) { return w.forgetKeys(seqKey(limit), expireChunk) }); err != nil {
		return total, err
	}
	// Beyond MaxKeys, the oldest keys go too, whatever their age. The index
	// counts what has committed: each chunk sees the ones before it.
	return total, chunks(func(w *writeTx) (int, error) {
		over := s.index.size() - s.maxKeys
		if over <= 0 {
			return 0, nil
		}
		return w.forgetKeys(seqKey(math.MaxUint64), min(over, expireChunk))
	})
}

// forgetKeys deletes up to max idempotency keys received before limitKey
// (8 bytes, unix ms), oldest first.
func (w *writeTx) forgetKeys(limitKey []byte, max int) (int, error) {
	var doomed [][]byte
	c := w.idemTimes.Cursor()
	for k, _ := c.First(); k != nil && len(doomed) < max && bytes.Compare(k[:min(8, len(k))], limitKey) < 0; k, _ = c.Next() {
		doomed = append(doomed, append([]byte(nil), k...))
	}
	for _, k := range doomed {
		var err error
		if len(k) == 8+sha256.Size {
			err = w.forget(int64(u64(k[:8])), [sha256.Size]byte(k[8:]))
		} else {
			err = w.idemTimes.Delete(k)
		}
		if err != nil {
			return 0, err
		}
	}
	return len(doomed), nil
}

// Once records key as used until the given time (SPEC §2.0 "Single use").
// The record is kept in this process's memory (once.go): one process owns
// a bolt file, and the store outlives Caddy reloads, but a restart forgets
// it. That reopens a window of auth_skew (60 s) for replaying a request
// signed before the restart.
func (s *Store) Once(_ context.Context, key [32]byte, until time.Time) (bool, error) {
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return false, storage.ErrClosed
	}
	return s.once.use(key, until.UnixNano(), time.Now().UnixNano())
}

// Ping reads the database.
func (s *Store) Ping(context.Context) error {
	return mapErr(s.db.View(func(tx *bbolt.Tx) error {
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
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: timeout})
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *bbolt.Tx) error {
		var first error
		for err := range tx.Check() { // drain: the checker stops only at the end
			if first == nil {
				first = err
			}
		}
		return first
	})
}

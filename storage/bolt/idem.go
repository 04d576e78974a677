package bolt

import (
	"crypto/sha256"
	"encoding/binary"
	"sync"

	"go.etcd.io/bbolt"
)

// The idempotency keys (SPEC §2.5) are kept on disk in one bucket ordered
// by time, idem_times: received_at (8 bytes, unix ms) + idem → seq. New
// keys are appended at its end, so a commit of many sends writes one or
// two of its leaves, where a bucket keyed by the hash itself would take a
// leaf at random per send (schema 3 had one: a page and a half more per
// message, a sixth of scenario 1's server CPU).
//
// To find a key's entry without that bucket, idemIndex remembers in memory
// when each key was received: the first 8 bytes of idem → received_at, built
// from idem_times on Open and kept in step with every commit. That is
// 20-40 bytes of memory per key kept (a message stored or acknowledged
// within retention; Go's map grows by doubling), against about 70 bytes
// per key on disk: a million messages within retention take at most 40 MB,
// and 0.36 s to load on Open (BenchmarkOpenWithKeys).

// DefaultMaxKeys bounds the idempotency keys kept: 8 million, at most
// 320 MB of index and some 550 MB on disk. Within retention a server keeps
// a key per message stored or acknowledged, so the bound is what stops
// senders who acknowledge and send again (to themselves, say) from growing
// the index without end. Beyond it the oldest keys are forgotten before
// their time: a resend of such an old message is stored again, and clients
// drop it by its id (SPEC §3).
const DefaultMaxKeys = 8 << 20

// MinMaxKeys is the smallest MaxKeys a config may ask for: fewer keys
// would forget resends within seconds on a busy server.
const MinMaxKeys = 1000

// idemEntry is idem_times' key: received_at + idem.
func idemEntry(at int64, idem [sha256.Size]byte) []byte {
	k := make([]byte, 8+sha256.Size)
	binary.BigEndian.PutUint64(k, uint64(at))
	copy(k[8:], idem[:])
	return k
}

// idemIndex maps idempotency keys to their received_at. A map hit is only a
// place to look: the entry in idem_times (at + the whole key) decides.
type idemIndex struct {
	// commits is held by writeIn across a write transaction and the
	// application of its changes, so that the index takes the changes of
	// transactions in the order they committed.
	commits sync.Mutex

	mu sync.Mutex
	at map[uint64]int64 // idem's first 8 bytes → received_at
	// clash holds the keys whose first 8 bytes another key in at already
	// has: a chance of about n²/2⁶⁵, but a sender can grind for one.
	clash map[[sha256.Size]byte]int64
}

func newIdemIndex() *idemIndex {
	return &idemIndex{at: map[uint64]int64{}, clash: map[[sha256.Size]byte]int64{}}
}

func prefix(idem [sha256.Size]byte) uint64 { return binary.BigEndian.Uint64(idem[:8]) }

// load fills the index from idem_times (on Open, before anything else
// writes). Keys of any other length are not idempotency keys and skipped.
func (x *idemIndex) load(tx *bbolt.Tx) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return tx.Bucket(bucketIdemTimes).ForEach(func(k, _ []byte) error {
		if len(k) == 8+sha256.Size {
			x.add(int64(binary.BigEndian.Uint64(k)), [sha256.Size]byte(k[8:]))
		}
		return nil
	})
}

// lookup returns where idem may have an entry.
func (x *idemIndex) lookup(idem [sha256.Size]byte) (int64, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if at, ok := x.clash[idem]; ok {
		return at, true
	}
	at, ok := x.at[prefix(idem)]
	return at, ok
}

// add records that idem's entry is at at. idem must not be in the index
// already (a key replaced is removed first, see apply). Called with mu held.
func (x *idemIndex) add(at int64, idem [sha256.Size]byte) {
	p := prefix(idem)
	if _, ok := x.clash[idem]; ok {
		x.clash[idem] = at
		return
	}
	if _, taken := x.at[p]; !taken {
		x.at[p] = at
		return
	}
	// Another key's entry has the place, even at the same time: each key
	// has one place of its own, so that removing one never loses another
	// and size counts every key.
	x.clash[idem] = at
}

// remove forgets idem's entry at at, if the index still points there.
// Called with mu held.
func (x *idemIndex) remove(at int64, idem [sha256.Size]byte) {
	if a, ok := x.clash[idem]; ok && a == at {
		delete(x.clash, idem)
		return
	}
	if p := prefix(idem); x.at[p] == at {
		delete(x.at, p)
	}
}

// size is how many keys the index holds.
func (x *idemIndex) size() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.at) + len(x.clash)
}

// keyChanges are a transaction's changes to the index, applied once it
// has committed (a transaction that fails changes nothing), and seen by
// the transaction's own later lookups meanwhile.
type keyChanges struct {
	added   map[[sha256.Size]byte]int64
	removed []keyEntry
}

type keyEntry struct {
	at   int64
	idem [sha256.Size]byte
}

// apply makes committed changes visible. A key removed and added again in
// one transaction (a void key replaced) ends at its new place.
func (x *idemIndex) apply(c *keyChanges) {
	if len(c.added) == 0 && len(c.removed) == 0 {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, e := range c.removed {
		x.remove(e.at, e.idem)
	}
	for idem, at := range c.added {
		x.add(at, idem)
	}
}

// keyAt returns where idem's entry is, as this transaction sees it, and the
// seq stored there; ok is false when idem has no entry.
func (w *writeTx) keyAt(idem [sha256.Size]byte) (at int64, seq []byte, ok bool) {
	at, ok = w.keys.added[idem]
	if !ok {
		if at, ok = w.index.lookup(idem); !ok {
			return 0, nil, false
		}
	}
	v := w.idemTimes.Get(idemEntry(at, idem))
	if len(v) != 8 {
		return 0, nil, false // the index pointed at another key's entry, or at one removed in this transaction
	}
	return at, v, true
}

// remember records idem for the message seq sk received at at.
func (w *writeTx) remember(idem [sha256.Size]byte, sk []byte, at int64) error {
	if err := w.idemTimes.Put(idemEntry(at, idem), sk); err != nil {
		return err
	}
	if w.keys.added == nil {
		w.keys.added = map[[sha256.Size]byte]int64{}
	}
	w.keys.added[idem] = at
	return nil
}

// forget deletes idem's entry at at.
func (w *writeTx) forget(at int64, idem [sha256.Size]byte) error {
	if err := w.idemTimes.Delete(idemEntry(at, idem)); err != nil {
		return err
	}
	if a, ok := w.keys.added[idem]; ok && a == at {
		delete(w.keys.added, idem)
	}
	w.keys.removed = append(w.keys.removed, keyEntry{at, idem})
	return nil
}

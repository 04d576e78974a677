package bolt

// The binding log (SPEC §5), as Go's checksum database keeps its tree: the
// leaves' data by index and the tree as the hashes tlog stores, addressed by
// tlog.StoredHashIndex. Appending leaf n writes its data and
// tlog.StoredHashes(n, data, …) (one to 1+log₂ n hashes, just under two on
// average) in the write transaction that changes the binding, so a binding
// is never durable without its leaf nor a leaf without its binding. Nothing
// in either bucket is ever rewritten.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"

	"go.etcd.io/bbolt"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/kezchat/kez/storage"
)

var (
	bucketLogData   = []byte("log_data")   // leaf index (8 bytes BE) → leaf data
	bucketLogHashes = []byte("log_hashes") // tlog.StoredHashIndex (8 bytes BE) → 32-byte hash

	metaLogKey = []byte("log_key") // the note signer key (note.GenerateKey form)
)

// logSize is the number of leaves in tx: one past the last leaf's index, so
// the size can never disagree with the leaves (and no counter page is
// written per append).
func logSize(tx *bbolt.Tx) int64 {
	k, _ := tx.Bucket(bucketLogData).Cursor().Last()
	if k == nil {
		return 0
	}
	return int64(u64(k)) + 1
}

// txHashes reads stored hashes within one transaction.
type txHashes struct{ b *bbolt.Bucket }

func (r txHashes) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		v := r.b.Get(seqKey(uint64(x)))
		if len(v) != tlog.HashSize {
			return nil, fmt.Errorf("binding log: stored hash %d missing", x)
		}
		copy(out[i][:], v)
	}
	return out, nil
}

// logAppend appends data as the next leaf of the log in the transaction
// and returns its index. Only the write transactions that change a binding
// call it.
func (w *writeTx) logAppend(data []byte) (int64, error) {
	n := logSize(w.tx)
	hb := w.tx.Bucket(bucketLogHashes)
	hb.FillPercent = appendOnly
	hashes, err := tlog.StoredHashes(n, data, txHashes{hb})
	if err != nil {
		return 0, err
	}
	// StoredHashes(n) are stored from StoredHashIndex(0, n) on, consecutively:
	// the bucket only grows at its end.
	base := tlog.StoredHashIndex(0, n)
	for i, h := range hashes {
		if err := hb.Put(seqKey(uint64(base+int64(i))), append([]byte(nil), h[:]...)); err != nil {
			return 0, err
		}
	}
	db := w.tx.Bucket(bucketLogData)
	db.FillPercent = appendOnly
	if err := db.Put(seqKey(uint64(n)), append([]byte{}, data...)); err != nil {
		return 0, err
	}
	w.logSize = n + 1
	return n, nil
}

// logCache keeps what has been read of the log: its hashes and leaves are
// immutable once durable, and only durable ones (read by a read
// transaction, which sees committed state only) are ever put in it. Each
// part is bounded; a full one drops an arbitrary entry for each new one.
type logCache struct {
	mu         sync.Mutex
	hashes     map[int64]tlog.Hash
	entries    map[int64][]byte
	entryBytes int
}

const (
	maxCachedHashes     = 1 << 16 // ~4 MiB with the map's overhead
	maxCachedEntryBytes = 8 << 20
)

func (c *logCache) hash(i int64) (tlog.Hash, bool) {
	h, ok := c.hashes[i]
	return h, ok
}

func (c *logCache) putHash(i int64, h tlog.Hash) {
	if c.hashes == nil {
		c.hashes = map[int64]tlog.Hash{}
	}
	if len(c.hashes) >= maxCachedHashes {
		for k := range c.hashes {
			delete(c.hashes, k)
			break
		}
	}
	c.hashes[i] = h
}

func (c *logCache) putEntry(i int64, data []byte) {
	if len(data) > maxCachedEntryBytes/16 {
		return
	}
	if c.entries == nil {
		c.entries = map[int64][]byte{}
	}
	for k, v := range c.entries {
		if c.entryBytes+len(data) <= maxCachedEntryBytes {
			break
		}
		delete(c.entries, k)
		c.entryBytes -= len(v)
	}
	c.entries[i] = data
	c.entryBytes += len(data)
}

// noteSize raises the durable size known to this process. Called after a
// commit that appended (and at Open), so it never exceeds what is durable;
// commits finishing out of order only make it lag for a moment.
func (s *Store) noteSize(n int64) {
	for {
		cur := s.logSize.Load()
		if n <= cur || s.logSize.CompareAndSwap(cur, n) {
			return
		}
	}
}

func (s *Store) checkOpen() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return storage.ErrClosed
	}
	return nil
}

// LogSize is the number of durable leaves.
func (s *Store) LogSize(context.Context) (int64, error) {
	if err := s.checkOpen(); err != nil {
		return 0, err
	}
	return s.logSize.Load(), nil
}

// LogHashes returns stored hashes (a tlog.HashReader), from memory when
// they were read before.
func (s *Store) LogHashes(_ context.Context, indexes []int64) ([]tlog.Hash, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	limit := tlog.StoredHashCount(s.logSize.Load())
	out := make([]tlog.Hash, len(indexes))
	var missing []int
	s.cache.mu.Lock()
	for i, x := range indexes {
		if x < 0 || x >= limit {
			s.cache.mu.Unlock()
			return nil, fmt.Errorf("binding log: stored hash %d is beyond the tree of %d leaves", x, s.logSize.Load())
		}
		if h, ok := s.cache.hash(x); ok {
			out[i] = h
		} else {
			missing = append(missing, i)
		}
	}
	s.cache.mu.Unlock()
	if len(missing) == 0 {
		return out, nil
	}
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketLogHashes)
		for _, i := range missing {
			v := b.Get(seqKey(uint64(indexes[i])))
			if len(v) != tlog.HashSize {
				return fmt.Errorf("binding log: stored hash %d missing", indexes[i])
			}
			copy(out[i][:], v)
		}
		return nil
	})
	if err != nil {
		return nil, mapErr(err)
	}
	s.cache.mu.Lock()
	for _, i := range missing {
		s.cache.putHash(indexes[i], out[i])
	}
	s.cache.mu.Unlock()
	return out, nil
}

// LogEntries returns the data of up to n durable leaves from start.
func (s *Store) LogEntries(_ context.Context, start int64, n int) ([][]byte, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	if start < 0 || n < 0 {
		return nil, fmt.Errorf("binding log: bad range start=%d n=%d", start, n)
	}
	end := min(start+int64(n), s.logSize.Load())
	if end <= start {
		return [][]byte{}, nil
	}
	out := make([][]byte, end-start)
	first := int64(-1) // the first leaf not in memory
	s.cache.mu.Lock()
	for i := start; i < end; i++ {
		if d, ok := s.cache.entries[i]; ok {
			out[i-start] = d
		} else if first < 0 {
			first = i
		}
	}
	s.cache.mu.Unlock()
	if first < 0 {
		return out, nil
	}
	var read []int64
	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketLogData).Cursor()
		i := first
		for k, v := c.Seek(seqKey(uint64(first))); i < end; k, v = c.Next() {
			if k == nil || int64(u64(k)) != i {
				return fmt.Errorf("binding log: leaf %d missing", i)
			}
			if out[i-start] == nil {
				out[i-start] = append([]byte{}, v...)
				read = append(read, i)
			}
			i++
		}
		return nil
	})
	if err != nil {
		return nil, mapErr(err)
	}
	s.cache.mu.Lock()
	for _, i := range read {
		s.cache.putEntry(i, out[i-start])
	}
	s.cache.mu.Unlock()
	return out, nil
}

// LogKey returns the log's note signer key, generating and storing it on
// first use. A stored key of another name is an error: the server was
// renamed, and its log (and every client's pin) belong to the old name.
func (s *Store) LogKey(_ context.Context, name string) (string, error) {
	if err := s.checkOpen(); err != nil {
		return "", err
	}
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	if s.logKey == "" {
		err := s.db.View(func(tx *bbolt.Tx) error {
			s.logKey = string(tx.Bucket(bucketMeta).Get(metaLogKey))
			return nil
		})
		if err != nil {
			return "", mapErr(err)
		}
	}
	if s.logKey == "" {
		skey, _, err := note.GenerateKey(rand.Reader, name)
		if err != nil {
			return "", err
		}
		err = s.db.Update(func(tx *bbolt.Tx) error {
			meta := tx.Bucket(bucketMeta)
			if v := meta.Get(metaLogKey); v != nil { // only this process writes; still, never replace one
				s.logKey = string(v)
				return nil
			}
			s.logKey = skey
			return meta.Put(metaLogKey, []byte(skey))
		})
		if err != nil {
			s.logKey = ""
			return "", mapErr(err)
		}
	}
	signer, err := note.NewSigner(s.logKey)
	if err != nil {
		return "", fmt.Errorf("the log key stored in %s is unreadable: %w", s.db.Path(), err)
	}
	if signer.Name() != name {
		return "", fmt.Errorf("%w: the log key stored in %s is named %q, not %q (was the server renamed?)",
			errLogKeyName, s.db.Path(), signer.Name(), name)
	}
	return s.logKey, nil
}

var errLogKeyName = errors.New("log key name mismatch")

package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/kezchat/kez/handlers"
	"github.com/kezchat/kez/hub"
	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/bolt"
)

// backends holds one open database and its hub per absolute file path. Caddy
// provisions a new config before it cleans up the old one, and bbolt locks
// its file, so configs share the database through this pool; a reload never
// reopens it, and old streams keep receiving messages until they end.
var backends = caddy.NewUsagePool()

const (
	// firstOpenTimeout is how long Provision waits for a locked file.
	firstOpenTimeout = time.Second
	// retryOpenTimeout and retryEvery bound later attempts made by requests.
	retryOpenTimeout = 100 * time.Millisecond
	retryEvery       = time.Second
)

// backend is a pooled database and hub. When the file is locked by another
// process (say, `caddy validate` next to a running server) it is opened
// lazily: requests get 503 unavailable until the lock is free.
type backend struct {
	path string
	opts bolt.Options // Timeout and Notify are set by open
	hub  *hub.Hub
	log  *slog.Logger

	mu          sync.Mutex
	db          *bolt.Store
	lastAttempt time.Time
	destructed  bool
}

func openBackend(path string, opts bolt.Options, log *slog.Logger) (*backend, error) {
	val, _, err := backends.LoadOrNew(path, func() (caddy.Destructor, error) {
		b := &backend{path: path, opts: opts, hub: hub.New(), log: log}
		_, err := b.open(firstOpenTimeout)
		if errors.Is(err, bolt.ErrLocked) {
			log.Warn("chat database is locked by another process; will retry on use", "path", path)
			return b, nil
		}
		if err != nil {
			b.hub.Close()
			return nil, fmt.Errorf("kez_chat storage: %w", err)
		}
		return b, nil
	})
	if err != nil {
		return nil, err
	}
	return val.(*backend), nil
}

// open returns the database, opening it if needed.
func (b *backend) open(timeout time.Duration) (*bolt.Store, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.db != nil {
		return b.db, nil
	}
	if b.destructed {
		return nil, storage.ErrClosed
	}
	if !b.lastAttempt.IsZero() && time.Since(b.lastAttempt) < retryEvery {
		return nil, fmt.Errorf("chat database %s is not open (locked by another process?)", b.path)
	}
	b.lastAttempt = time.Now()
	opts := b.opts
	opts.Timeout, opts.Notify = timeout, handlers.HubNotifier(b.hub)
	db, err := bolt.Open(b.path, opts)
	if err != nil {
		return nil, err
	}
	b.db = db
	if opts.OneCommitPerMessage {
		b.log.Warn("chat database commits one message per transaction (one_commit_per_message): for benchmarks only", "path", b.path)
	}
	b.log.Info("chat database open", "path", b.path)
	return db, nil
}

func (b *backend) release() error {
	_, err := backends.Delete(b.path)
	return err
}

// Destruct closes the hub (ending every stream) and the database; the pool
// calls it when the last config using this file is cleaned up.
func (b *backend) Destruct() error {
	b.hub.Close()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.destructed = true
	if b.db == nil {
		return nil
	}
	err := b.db.Close()
	b.db = nil
	return err
}

// store is the backend as a storage.Store that opens on first use.
func (b *backend) store() storage.Store { return lazyStore{b} }

type lazyStore struct{ b *backend }

func (l lazyStore) get() (*bolt.Store, error) { return l.b.open(retryOpenTimeout) }

func (l lazyStore) Register(ctx context.Context, rec storage.Record, invite string) (storage.Record, bool, error) {
	s, err := l.get()
	if err != nil {
		return storage.Record{}, false, err
	}
	return s.Register(ctx, rec, invite)
}

func (l lazyStore) Rotate(ctx context.Context, handle, old, new string, rotation []byte) (storage.Record, error) {
	s, err := l.get()
	if err != nil {
		return storage.Record{}, err
	}
	return s.Rotate(ctx, handle, old, new, rotation)
}

func (l lazyStore) Delete(ctx context.Context, handle, primary string, deletion []byte, cooldownUntil time.Time) (int64, error) {
	s, err := l.get()
	if err != nil {
		return 0, err
	}
	return s.Delete(ctx, handle, primary, deletion, cooldownUntil)
}

func (l lazyStore) LogSize(ctx context.Context) (int64, error) {
	s, err := l.get()
	if err != nil {
		return 0, err
	}
	return s.LogSize(ctx)
}

func (l lazyStore) LogHashes(ctx context.Context, indexes []int64) ([]tlog.Hash, error) {
	s, err := l.get()
	if err != nil {
		return nil, err
	}
	return s.LogHashes(ctx, indexes)
}

func (l lazyStore) LogEntries(ctx context.Context, start int64, n int) ([][]byte, error) {
	s, err := l.get()
	if err != nil {
		return nil, err
	}
	return s.LogEntries(ctx, start, n)
}

func (l lazyStore) LogKey(ctx context.Context, name string) (string, error) {
	s, err := l.get()
	if err != nil {
		return "", err
	}
	return s.LogKey(ctx, name)
}

func (l lazyStore) Lookup(ctx context.Context, handle string) (storage.Record, error) {
	s, err := l.get()
	if err != nil {
		return storage.Record{}, err
	}
	return s.Lookup(ctx, handle)
}

func (l lazyStore) LookupPrimary(ctx context.Context, primary string) (storage.Record, error) {
	s, err := l.get()
	if err != nil {
		return storage.Record{}, err
	}
	return s.LookupPrimary(ctx, primary)
}

func (l lazyStore) Append(ctx context.Context, d storage.Delivery, lim storage.Limits) (storage.Message, bool, error) {
	s, err := l.get()
	if err != nil {
		return storage.Message{}, false, err
	}
	return s.Append(ctx, d, lim)
}

func (l lazyStore) SetContact(ctx context.Context, handle, primary string, state storage.ContactState) error {
	s, err := l.get()
	if err != nil {
		return err
	}
	return s.SetContact(ctx, handle, primary, state)
}

func (l lazyStore) Contacts(ctx context.Context, handle string) (storage.Contacts, error) {
	s, err := l.get()
	if err != nil {
		return storage.Contacts{}, err
	}
	return s.Contacts(ctx, handle)
}

func (l lazyStore) Once(ctx context.Context, key [32]byte, until time.Time) (bool, error) {
	s, err := l.get()
	if err != nil {
		return false, err
	}
	return s.Once(ctx, key, until)
}

func (l lazyStore) Read(ctx context.Context, handle string, since uint64, limit int) ([]storage.Message, bool, error) {
	s, err := l.get()
	if err != nil {
		return nil, false, err
	}
	return s.Read(ctx, handle, since, limit)
}

func (l lazyStore) Ack(ctx context.Context, handle string, upto uint64) (int, error) {
	s, err := l.get()
	if err != nil {
		return 0, err
	}
	return s.Ack(ctx, handle, upto)
}

func (l lazyStore) Expire(ctx context.Context, cutoff time.Time) (int, error) {
	s, err := l.get()
	if err != nil {
		return 0, err
	}
	return s.Expire(ctx, cutoff)
}

func (l lazyStore) Ping(ctx context.Context) error {
	s, err := l.get()
	if err != nil {
		return err
	}
	return s.Ping(ctx)
}

// Close is a no-op: the pool owns the database.
func (l lazyStore) Close() error { return nil }

var (
	_ storage.Store    = lazyStore{}
	_ caddy.Destructor = (*backend)(nil)
)

package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/kezchat/kez/handlers"
	"github.com/kezchat/kez/hub"
	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/bolt"
)

// backends holds one database and its hub per absolute file path. Caddy
// provisions a new config before it cleans up the old one, and bbolt locks
// its file, so configs share the database through this pool; a reload never
// reopens it, and old streams keep receiving messages until they end.
var backends = caddy.NewUsagePool()

const (
	// startOpenTimeout is how long starting a config waits for the file
	// lock: long enough for a process that is exiting to let go of it,
	// short enough that a second `caddy run` on the same file fails fast.
	startOpenTimeout = time.Second
	// useOpenTimeout bounds an open made by a request that comes before
	// the config has started (the HTTP app may start first).
	useOpenTimeout = 100 * time.Millisecond
)

// backend is a pooled database and hub. Provisioning only reserves it: the
// file is opened when a config using it starts (App.Start), which `caddy
// validate` and `caddy adapt --validate` never do. So validating next to a
// running server neither waits on its lock nor fails, and validating a new
// config creates no file; while `caddy run` (and a reload) fails at once,
// with the reason, when another process holds the file.
type backend struct {
	path   string
	server string       // the server name the file belongs to
	opts   bolt.Options // Timeout, Notify and Server are set by open
	hub    *hub.Hub
	log    *slog.Logger

	mu         sync.Mutex
	db         *bolt.Store
	destructed bool
}

// openBackend reserves the pooled backend of path for a config of server
// and has ctx's config open it when it starts. Nothing is opened or
// created here; a path that can never be a file fails now.
func openBackend(ctx caddy.Context, path, server string, opts bolt.Options, log *slog.Logger) (*backend, error) {
	if err := checkBoltPath(path); err != nil {
		return nil, fmt.Errorf("kez_chat storage: %w", err)
	}
	app, err := ctx.App(appID)
	if err != nil {
		return nil, fmt.Errorf("kez_chat: %w", err)
	}
	val, _, err := backends.LoadOrNew(path, func() (caddy.Destructor, error) {
		return &backend{path: path, server: server, opts: opts, hub: hub.New(), log: log}, nil
	})
	if err != nil {
		return nil, err
	}
	b := val.(*backend)
	if b.server != server {
		_, _ = backends.Delete(path)
		return nil, fmt.Errorf("kez_chat storage: %s is the database of server %s, so server %s cannot use it too: one file holds the handles of one server name (give each server its own storage bolt <path>)", path, b.server, server)
	}
	app.(*App).add(b)
	return b, nil
}

// checkBoltPath fails for a path that cannot be looked up (a parent that is
// a file, no permission), or that exists but is not a regular file or
// cannot be opened for writing (a read-only file system). It neither
// creates, writes nor locks anything: `caddy validate` runs it.
func checkBoltPath(path string) error {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil // made when the config starts
	case err != nil:
		return err
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file", path)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	return f.Close()
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
	opts := b.opts
	opts.Timeout, opts.Notify, opts.Server = timeout, handlers.HubNotifier(b.hub), b.server
	db, err := bolt.Open(b.path, opts)
	switch {
	case errors.Is(err, bolt.ErrLocked):
		return nil, fmt.Errorf("%w: is another Caddy running with this database? Stop it, or give this server its own file (storage bolt <path>)", err)
	case errors.Is(err, bolt.ErrOtherServer):
		return nil, fmt.Errorf("%w: give each server name its own file (storage bolt <path>)", err)
	case err != nil:
		return nil, err
	}
	b.db = db
	if opts.OneCommitPerMessage {
		b.log.Warn("chat database commits one message per transaction (one_commit_per_message): for benchmarks only", "path", b.path)
	}
	b.log.Info("chat database open", "path", b.path, "server", b.server)
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

// store is the backend as a storage.Store. Its database is open once the
// config has started; a request that comes earlier opens it.
func (b *backend) store() storage.Store { return lazyStore{b} }

type lazyStore struct{ b *backend }

func (l lazyStore) get() (*bolt.Store, error) { return l.b.open(useOpenTimeout) }

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

func (l lazyStore) RemoteLog(ctx context.Context, server string) (storage.RemoteLog, error) {
	s, err := l.get()
	if err != nil {
		return storage.RemoteLog{}, err
	}
	return s.RemoteLog(ctx, server)
}

func (l lazyStore) UpdateRemoteLog(ctx context.Context, server string, fn func(storage.RemoteLog, bool) (storage.RemoteLog, error)) (storage.RemoteLog, error) {
	s, err := l.get()
	if err != nil {
		return storage.RemoteLog{}, err
	}
	return s.UpdateRemoteLog(ctx, server, fn)
}

func (l lazyStore) ForgetRemoteLog(ctx context.Context, server string) error {
	s, err := l.get()
	if err != nil {
		return err
	}
	return s.ForgetRemoteLog(ctx, server)
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

// The bbolt backend's configuration, Caddyfile syntax and database path.

// BoltConfig configures the bbolt backend.
type BoltConfig struct {
	// Path of the database file. Default: <caddy data dir>/kez/<server>/chat.db.
	Path string `json:"path,omitempty"`
	// Commit every message in its own transaction (one fsync each) instead
	// of grouping concurrent sends. Only for measuring the naive baseline in
	// benchmarks: it is much slower. Read when the file is first opened; a
	// reload that only changes this keeps the running setting.
	OneCommitPerMessage bool `json:"one_commit_per_message,omitempty"`
	// MaxKeys bounds the idempotency keys kept (with an index in memory of
	// 20-40 bytes each); beyond it the oldest are forgotten before
	// retention ends. Default: 8,388,608 (bolt.DefaultMaxKeys). Read when
	// the file is first opened, as OneCommitPerMessage is.
	MaxKeys int `json:"max_keys,omitempty"`
}

// parseBoltStorage reads the rest of
//
//	storage bolt [<path>] {
//		max_keys <n>             # idempotency keys kept (default 8388608)
//		one_commit_per_message   # the naive baseline, for benchmarks only
//	}
func parseBoltStorage(d *caddyfile.Dispenser) (*BoltConfig, error) {
	cfg := new(BoltConfig)
	if d.NextArg() {
		cfg.Path = d.Val()
	}
	if d.NextArg() {
		return nil, d.Errf("storage bolt takes one path, got extra %q", d.Val())
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "one_commit_per_message":
			if d.NextArg() {
				return nil, d.Errf("one_commit_per_message takes no value")
			}
			cfg.OneCommitPerMessage = true
		case "max_keys":
			var n string
			if !d.Args(&n) || d.NextArg() {
				return nil, d.Errf("max_keys takes one number")
			}
			v, err := strconv.Atoi(n)
			if err != nil || v < bolt.MinMaxKeys {
				return nil, d.Errf("max_keys %q must be a whole number of at least %d", n, bolt.MinMaxKeys)
			}
			cfg.MaxKeys = v
		default:
			return nil, d.Errf("unknown storage bolt option %q (known: max_keys, one_commit_per_message)", d.Val())
		}
	}
	return cfg, nil
}

// defaultBoltPath is the database of a config that names none: one file
// per server name, since two sites with different names must not share
// handles and inboxes.
func defaultBoltPath(server string) string {
	return filepath.Join(caddy.AppDataDir(), "kez", server, "chat.db")
}

// boltPath is the absolute database path: the pool key, so that every
// config naming the same file shares one open database.
func (h *Handler) boltPath() (string, error) {
	path := defaultBoltPath(h.Server)
	if h.Storage != nil && h.Storage.Bolt != nil && h.Storage.Bolt.Path != "" {
		path = h.Storage.Bolt.Path
	}
	return filepath.Abs(path)
}

// boltOptions are the bbolt settings of the config (beyond its path).
func (h *Handler) boltOptions() bolt.Options {
	if h.Storage != nil && h.Storage.Bolt != nil {
		return bolt.Options{OneCommitPerMessage: h.Storage.Bolt.OneCommitPerMessage, MaxKeys: h.Storage.Bolt.MaxKeys}
	}
	return bolt.Options{}
}

package caddymodule

import (
	"path/filepath"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/kezchat/kez/storage/bolt"
)

// The bbolt backend, the default: its configuration, Caddyfile syntax and
// database path. The pooled database itself (shared across reloads, opened
// when the config starts) is the backend type of backend.go.

// BoltConfig configures the bbolt backend.
type BoltConfig struct {
	// Path of the database file. Default: <caddy data dir>/kez/<server>/chat.db.
	Path string `json:"path,omitempty"`
	// Commit every message in its own transaction (one fsync each) instead
	// of grouping concurrent sends. Only for measuring the naive baseline in
	// benchmarks: it is much slower. Read when the file is first opened; a
	// reload that only changes this keeps the running setting.
	OneCommitPerMessage bool `json:"one_commit_per_message,omitempty"`
}

// parseBoltStorage reads the rest of
//
//	storage bolt [<path>] {
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
		default:
			return nil, d.Errf("unknown storage bolt option %q (known: one_commit_per_message)", d.Val())
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
		return bolt.Options{OneCommitPerMessage: h.Storage.Bolt.OneCommitPerMessage}
	}
	return bolt.Options{}
}

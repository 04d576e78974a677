package caddymodule

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/kezchat/kez/hub"
	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/bolt"
)

// StorageConfig selects the storage backend.
type StorageConfig struct {
	// A bbolt database file on local disk (the default backend).
	Bolt *BoltConfig `json:"bolt,omitempty"`
	// A NATS JetStream cluster shared by several Caddy instances.
	Nats *NatsConfig `json:"nats,omitempty"`
}

// sharedStorage is a backend from the usage pool: its store and its hub
// outlive the config that opened them, until the last one releases them.
type sharedStorage interface {
	store() storage.Store
	liveHub() *hub.Hub
	release() error
}

func (b *backend) liveHub() *hub.Hub { return b.hub }

// openStorage opens (or shares) the backend the config names, its defaults
// filled in: a bbolt file by default, or a NATS JetStream cluster. A bbolt file is opened when the
// config starts (see App), not here.
func (h *Handler) openStorage(ctx caddy.Context) (sharedStorage, error) {
	if h.Storage != nil && h.Storage.Nats != nil {
		return openNatsBackend(h.Storage.Nats, limits{
			replicas:    h.Storage.Nats.Replicas,
			retention:   time.Duration(h.Retention),
			maxInbox:    h.MaxInbox,
			maxEnvelope: h.MaxEnvelope,
		}, h.log)
	}
	path, err := h.boltPath()
	if err != nil {
		return nil, err
	}
	b, err := openBackend(ctx, path, h.Server, h.boltOptions(), h.log)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// validate checks the storage choice.
func (c *StorageConfig) validate() error {
	if c == nil {
		return nil
	}
	if c.Bolt != nil && c.Nats != nil {
		return fmt.Errorf("kez_chat: storage: choose bolt or nats, not both")
	}
	if c.Nats != nil {
		return c.Nats.validate()
	}
	if c.Bolt != nil && c.Bolt.MaxKeys != 0 && c.Bolt.MaxKeys < bolt.MinMaxKeys {
		return fmt.Errorf("kez_chat: storage bolt: max_keys %d must be at least %d", c.Bolt.MaxKeys, bolt.MinMaxKeys)
	}
	return nil
}

var _ sharedStorage = (*backend)(nil)

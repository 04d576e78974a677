package caddymodule

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/kezchat/kez/handlers"
	"github.com/kezchat/kez/hub"
	"github.com/kezchat/kez/storage"
	natsstore "github.com/kezchat/kez/storage/nats"
)

// NatsConfig configures the NATS JetStream backend, for several Caddy
// instances sharing one cluster (nats-server 2.12 or newer).
type NatsConfig struct {
	// Server URLs, e.g. nats://a:4222 (tls:// for TLS). Required.
	URLs []string `json:"urls,omitempty"`
	// A NATS credentials file (user JWT and NKey seed).
	Creds string `json:"creds,omitempty"`
	// A PEM file of the CAs that sign the NATS servers' certificates.
	TLSCA string `json:"tls_ca,omitempty"`
	// Replicas of each stream, 1 to 5 (odd counts survive the loss of a
	// minority: 3 on a 3-node cluster). Default: 1. Streams are never
	// scaled down by a configuration asking for fewer.
	Replicas int `json:"replicas,omitempty"`
	// Prefix of the streams and subjects: <stream>_inbox over
	// <stream>.inbox.<handle>, and the KV bucket <stream>_registry.
	// Default: kez. Sites with different servers need different prefixes.
	Stream string `json:"stream,omitempty"`
	// Bound on every call to the cluster. Default: 10s
	// (natsstore.DefaultTimeout: it outlasts a leader election).
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// DefaultNatsReplicas is the replicas of a config that sets none.
const DefaultNatsReplicas = 1

// setDefaults gives every option left unset its default.
func (c *NatsConfig) setDefaults() {
	c.Replicas = cmp.Or(c.Replicas, DefaultNatsReplicas)
	c.Stream = cmp.Or(c.Stream, natsstore.DefaultPrefix)
	c.Timeout = cmp.Or(c.Timeout, caddy.Duration(natsstore.DefaultTimeout))
}

// parseNatsStorage reads the rest of
//
//	storage nats <url>... {
//		creds    <file>
//		tls_ca   <file>
//		replicas <n>
//		stream   <prefix>
//		timeout  <duration>
//	}
func parseNatsStorage(d *caddyfile.Dispenser) (*NatsConfig, error) {
	cfg := &NatsConfig{URLs: d.RemainingArgs()}
	if len(cfg.URLs) == 0 {
		return nil, d.Errf("storage nats needs at least one server URL, e.g. storage nats nats://127.0.0.1:4222")
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		val, err := oneArg(d)
		if err != nil {
			return nil, err
		}
		switch opt {
		case "creds":
			cfg.Creds = val
		case "tls_ca":
			cfg.TLSCA = val
		case "stream":
			if !natsstore.ValidPrefix(val) {
				return nil, d.Errf("stream: %q must be 1-32 letters, digits, '_' or '-'", val)
			}
			cfg.Stream = val
		case "replicas":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > 5 {
				return nil, d.Errf("replicas: %q is not a number from 1 to 5", val)
			}
			cfg.Replicas = n
		case "timeout":
			dur, err := caddy.ParseDuration(val)
			if err != nil || dur <= 0 {
				return nil, d.Errf("timeout: %q is not a positive duration such as 5s", val)
			}
			cfg.Timeout = caddy.Duration(dur)
		default:
			return nil, d.Errf("unknown storage nats option %q (known: creds, tls_ca, replicas, stream, timeout)", opt)
		}
	}
	return cfg, nil
}

// validate checks what Provision would otherwise trip over.
func (c *NatsConfig) validate() error {
	if len(c.URLs) == 0 {
		return fmt.Errorf("kez_chat: storage nats needs at least one server URL")
	}
	for _, u := range c.URLs {
		if strings.ContainsAny(u, " ,") {
			return fmt.Errorf("kez_chat: storage nats: %q: give each server URL as its own argument", u)
		}
	}
	if c.Stream != "" && !natsstore.ValidPrefix(c.Stream) {
		return fmt.Errorf("kez_chat: storage nats: stream %q must be 1-32 letters, digits, '_' or '-'", c.Stream)
	}
	if c.Replicas < 0 || c.Replicas > 5 {
		return fmt.Errorf("kez_chat: storage nats: replicas %d: use 1 to 5", c.Replicas)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("kez_chat: storage nats: timeout must not be negative")
	}
	return nil
}

// poolKey names one connection in the usage pool: what the connection and
// the streams' names depend on. Configs that differ only in stream limits
// (replicas, retention, max_inbox) share it; Provision applies their limits
// to the shared streams, which only ever grow.
func (c *NatsConfig) poolKey() string {
	d := *c // the same key whether or not the defaults are filled in yet
	d.setDefaults()
	return "nats\x00" + strings.Join(d.URLs, " ") + "\x00" + d.Creds + "\x00" + d.TLSCA + "\x00" + d.Stream + "\x00" + time.Duration(d.Timeout).String()
}

// natsBackend is a pooled NATS connection with its hub. Like the bolt
// backend it outlives reloads, so open streams keep their events.
type natsBackend struct {
	key string
	hub *hub.Hub
	db  *natsstore.Store
}

// limits are the stream limits a config asks for.
type limits struct {
	replicas  int
	retention time.Duration
	maxInbox  int
	// maxEnvelope is only checked against the servers' max_payload.
	maxEnvelope int64
}

func openNatsBackend(cfg *NatsConfig, lim limits, log *slog.Logger) (*natsBackend, error) {
	key := cfg.poolKey()
	val, loaded, err := backends.LoadOrNew(key, func() (caddy.Destructor, error) {
		b := &natsBackend{key: key, hub: hub.New()}
		db, err := natsstore.Open(natsstore.Options{
			URLs:        cfg.URLs,
			CredsFile:   cfg.Creds,
			TLSCA:       cfg.TLSCA,
			Prefix:      cfg.Stream,
			Replicas:    lim.replicas,
			Retention:   lim.retention,
			MaxInbox:    lim.maxInbox,
			MaxEnvelope: lim.maxEnvelope,
			Timeout:     time.Duration(cfg.Timeout),
			Name:        connName(),
			Notify:      handlers.HubNotifier(b.hub),
			// Events stop while the connection is down: end the streams,
			// their clients come back (here or elsewhere) and resume from
			// storage with Last-Event-ID once it answers again.
			Disconnected: func(error) { b.hub.EndAll() },
			Logger:       log,
		})
		if err != nil {
			b.hub.Close()
			return nil, fmt.Errorf("kez_chat storage: %w", err)
		}
		b.db = db
		return b, nil
	})
	if err != nil {
		return nil, err
	}
	b := val.(*natsBackend)
	if loaded {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := b.db.Reconfigure(ctx, lim.replicas, lim.retention, lim.maxInbox); err != nil {
			log.Warn("could not apply stream limits to NATS now; they apply on the next setup", "error", err)
		}
	}
	return b, nil
}

// connName names the connection in the servers' monitoring (connz).
func connName() string {
	if id, err := caddy.InstanceID(); err == nil {
		return "kez_chat caddy " + id.String()
	}
	return "kez_chat"
}

func (b *natsBackend) store() storage.Store { return pooledNats{b.db} }
func (b *natsBackend) liveHub() *hub.Hub    { return b.hub }

func (b *natsBackend) release() error {
	_, err := backends.Delete(b.key)
	return err
}

// Destruct ends every stream and closes the connection, when the last
// config using it is cleaned up.
func (b *natsBackend) Destruct() error {
	b.hub.Close()
	return b.db.Close()
}

// pooledNats is the store handed to a config: the pool closes it.
type pooledNats struct{ *natsstore.Store }

func (pooledNats) Close() error { return nil }

var (
	_ caddy.Destructor = (*natsBackend)(nil)
	_ sharedStorage    = (*natsBackend)(nil)
)

package caddymodule

import (
	"cmp"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kezchat/kez/push"
	"github.com/kezchat/kez/storage"
)

// Web Push options (SPEC §7) and their defaults.
const (
	PushOn  = "on"
	PushOff = "off"
	// DefaultPushInterval is push_interval's default.
	DefaultPushInterval = push.DefaultInterval
)

// defaultPushContact is push_contact's default for a server.
func defaultPushContact(server string) string { return "mailto:postmaster@" + server }

func (h *Handler) pushDefaults() {
	h.Push = cmp.Or(h.Push, PushOn)
	h.PushContact = cmp.Or(h.PushContact, defaultPushContact(h.Server))
	h.PushInterval = cmp.Or(h.PushInterval, caddy.Duration(DefaultPushInterval))
}

func (h *Handler) validatePush() error {
	switch h.Push {
	case "", PushOn, PushOff:
	default:
		return fmt.Errorf("kez_chat: push %q must be on or off", h.Push)
	}
	if h.PushContact != "" {
		if err := checkPushContact(h.PushContact); err != nil {
			return fmt.Errorf("kez_chat: push_contact: %w", err)
		}
	}
	if h.PushInterval < 0 {
		return fmt.Errorf("kez_chat: push_interval must not be negative")
	}
	return nil
}

// checkPushContact accepts what RFC 8292 §2.1 asks of "sub": a mailto: or
// https: URI where the push service's operator can reach this one's.
func checkPushContact(c string) error {
	u, err := url.Parse(c)
	switch {
	case err != nil:
		return err
	case u.Scheme == "mailto" && strings.Contains(u.Opaque, "@"):
		return nil
	case u.Scheme == "https" && u.Host != "":
		return nil
	}
	return fmt.Errorf("%q must be a mailto: address or an https: URL, e.g. mailto:ops@example.com", c)
}

// pushSenders keeps each server's push sender across reloads, as
// rateStates keeps the rate limits: Caddy provisions the new config before
// it cleans up the old one, so the sender passes from one to the next with
// its queued and planned pushes and each device's interval, and the new
// config's options apply at once. A sender belongs to a server name on one
// storage backend.
var pushSenders = caddy.NewUsagePool()

type pooledSender struct{ *push.Sender }

func (p pooledSender) Destruct() error {
	p.Close()
	return nil
}

// pushSender is the config's share of its push sender, or nil with push
// off; Cleanup gives it back.
func (h *Handler) pushSender(store storage.Store) *push.Sender {
	if h.Push == PushOff {
		return nil
	}
	if h.PushAllowPrivateEndpoints {
		h.log.Warn("push_allow_private_endpoints is set: push subscriptions may point into private networks (for tests only)")
	}
	opts := push.Options{
		Contact:      h.PushContact,
		Interval:     time.Duration(h.PushInterval),
		AllowPrivate: h.PushAllowPrivateEndpoints,
		Log:          h.log,
		Counted:      pushMetric.count,
	}
	key := h.Server + "\x00" + h.storageKey()
	val, loaded, _ := pushSenders.LoadOrNew(key, func() (caddy.Destructor, error) {
		return pooledSender{push.New(store, opts)}, nil
	})
	h.pushKey = key
	sender := val.(pooledSender).Sender
	if loaded {
		sender.Configure(opts)
	}
	return sender
}

// releasePush gives back the config's share of its sender.
func (h *Handler) releasePush() {
	if h.pushKey != "" {
		_, _ = pushSenders.Delete(h.pushKey)
		h.pushKey = ""
	}
}

// storageKey names the backend the defaults filled in: a bolt file or a
// NATS connection.
func (h *Handler) storageKey() string {
	if h.Storage.Nats != nil {
		return h.Storage.Nats.poolKey()
	}
	return "bolt\x00" + h.Storage.Bolt.Path
}

// pushCaddyfileOptions are the Caddyfile's push options.
func (h *Handler) pushCaddyfileOptions() map[string]func(*caddyfile.Dispenser) error {
	return map[string]func(*caddyfile.Dispenser) error{
		"push": func(d *caddyfile.Dispenser) error {
			v, err := oneArg(d)
			if err == nil && v != PushOn && v != PushOff {
				err = d.Errf("push takes on or off, not %q", v)
			}
			h.Push = v
			return err
		},
		"push_contact": func(d *caddyfile.Dispenser) error {
			v, err := oneArg(d)
			if err == nil {
				if cerr := checkPushContact(v); cerr != nil {
					err = d.Errf("push_contact: %v", cerr)
				}
			}
			h.PushContact = v
			return err
		},
		"push_interval": durationOption(&h.PushInterval),
		"push_allow_private_endpoints": func(d *caddyfile.Dispenser) error {
			if d.NextArg() {
				return d.Errf("push_allow_private_endpoints takes no value")
			}
			h.PushAllowPrivateEndpoints = true
			return nil
		},
	}
}

// pushCounter counts push outcomes (sent, failed, removed, dropped),
// process-wide like the other metrics, registered in each config's registry.
type pushCounter struct {
	once sync.Once
	vec  *prometheus.CounterVec
}

var pushMetric pushCounter

func (p *pushCounter) collector() *prometheus.CounterVec {
	p.once.Do(func() {
		p.vec = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "caddy", Subsystem: "kez_chat",
			Name: "pushes_total", Help: "Web Push notifications by outcome: sent, failed, removed (the push service answered 404/410), dropped (queue full)."},
			[]string{"outcome"})
	})
	return p.vec
}

func (p *pushCounter) count(outcome string) { p.collector().WithLabelValues(outcome).Inc() }

// register adds the counter to a config's registry.
func (p *pushCounter) register(registry *prometheus.Registry) error {
	if registry == nil {
		return nil
	}
	if err := registry.Register(p.collector()); err != nil && !errors.As(err, &prometheus.AlreadyRegisteredError{}) {
		return err
	}
	return nil
}

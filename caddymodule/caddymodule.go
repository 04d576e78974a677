// Package caddymodule is the Caddy glue of KEZ chat: the http.handlers.kez_chat
// module, its Caddyfile directive, and the storage kept open across reloads.
// The API itself is in package handlers.
package caddymodule

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/kezchat/kez/federation"
	"github.com/kezchat/kez/handlers"
	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler is the kez_chat HTTP handler: end-to-end-encrypted 1:1 chat. It
// answers the KEZ chat API paths (/v1/... and /.well-known/webfinger) and
// passes every other request to the next handler.
//
// Every option left out (in JSON, also 0 or "") takes its default, which
// Provision fills in from the Default* constants (the SPEC §4 ones are
// package handlers'), as Caddy's own modules do: each default is written
// once, and the provisioned handler holds the values in force.
type Handler struct {
	// The domain in users' addresses (handle@server), e.g. "kez.lat". Required.
	Server string `json:"server,omitempty"`
	// The public base URL used in WebFinger links. Default: https://<server>.
	PublicURL string `json:"public_url,omitempty"`
	// Where messages and the handle registry are kept. Default: a bbolt
	// file in Caddy's data directory, kez/<server>/chat.db.
	Storage *StorageConfig `json:"storage,omitempty"`
	// The largest envelope accepted, in bytes. Default: 262144 (256 KiB).
	MaxEnvelope int64 `json:"max_envelope,omitempty"`
	// Allowed clock difference for request signatures. Default: 60s.
	AuthSkew caddy.Duration `json:"auth_skew,omitempty"`
	// Allowed clock difference for registrations. Default: 5m.
	RegisterSkew caddy.Duration `json:"register_skew,omitempty"`
	// Interval of keep-alive comments on open streams. Default: 15s.
	Keepalive caddy.Duration `json:"keepalive,omitempty"`
	// How long an unacknowledged message is kept. Default: 720h (30 days).
	Retention caddy.Duration `json:"retention,omitempty"`
	// How many messages one inbox may hold; a full inbox refuses new ones
	// with 507 inbox_full. Default: 10000 (there is no "no cap").
	MaxInbox int `json:"max_inbox,omitempty"`
	// Handles nobody may register, besides the built-in list (admin, root, ...).
	Reserved []string `json:"reserved,omitempty"`
	// Who may register: "open" (default), "closed", or "invite" (each
	// registration needs a one-use token from invite_file).
	Registration string `json:"registration,omitempty"`
	// File of invite tokens, one per line, read on every invite
	// registration (so adding a line needs no reload).
	InviteFile string `json:"invite_file,omitempty"`
	// Registration attempts per client IP, as "<n>/<duration>" or "off".
	// Default: 30/1h.
	RegisterRate string `json:"register_rate,omitempty"`
	// Messages sent per client IP, as "<n>/<duration>" or "off". Default: 20/1s.
	SendRate string `json:"send_rate,omitempty"`
	// Messages sent per sender key, as "<n>/<duration>" or "off".
	// Default: 20/1s.
	SenderRate string `json:"sender_rate,omitempty"`
	// Unacknowledged message requests one stranger may have in an inbox;
	// more get 429 request_limit. Default: 3.
	RequestLimit int `json:"request_limit,omitempty"`
	// Unacknowledged message requests one inbox may hold. Default: 100.
	MaxRequests int `json:"max_requests,omitempty"`
	// Time allowed to receive a whole request body; a slower one gets 408
	// body_timeout. Default: 10s.
	BodyTimeout caddy.Duration `json:"body_timeout,omitempty"`
	// How long one stream lives (±10 %) before its client reconnects with
	// a fresh signature. Default: 1h.
	StreamMaxAge caddy.Duration `json:"stream_max_age,omitempty"`
	// How long a deleted handle cannot be registered again, so nobody
	// steps into a name that contacts still trust. Default: 720h (30 days).
	HandleCooldown caddy.Duration `json:"handle_cooldown,omitempty"`
	// Open streams per handle (devices of one user). Default: 16.
	MaxStreamsPerHandle int `json:"max_streams_per_handle,omitempty"`
	// Open streams in total. Default: 50000.
	MaxStreams int `json:"max_streams,omitempty"`
	// Web Push (SPEC §7): "on" (default) or "off".
	Push string `json:"push,omitempty"`
	// Where push services can reach the operator (the VAPID "sub"): a
	// mailto: or https: URI. Default: mailto:postmaster@<server>.
	PushContact string `json:"push_contact,omitempty"`
	// The least time between two pushes to one device. Default: 5s.
	PushInterval caddy.Duration `json:"push_interval,omitempty"`
	// For tests only: also push to http and to private, loopback and
	// link-local addresses.
	PushAllowPrivateEndpoints bool `json:"push_allow_private_endpoints,omitempty"`

	// Which other servers' users may write here (SPEC §8): "open"
	// (default), "off", "allow" (only federation_servers) or "deny" (all
	// but federation_servers).
	Federation        string   `json:"federation,omitempty"`
	FederationServers []string `json:"federation_servers,omitempty"`
	// Server names mapped to API base URLs, used instead of WebFinger and
	// trusted as they are (http and private addresses allowed): for tests
	// and private networks. Given to the web client by GET /v1/federation.
	FederationResolve map[string]string `json:"federation_resolve,omitempty"`
	// Messages from the users of one other server, as "<n>/<duration>" or
	// "off". Default: 100/1m.
	FederationRate string `json:"federation_rate,omitempty"`
	// How long a verified remote sender's binding is trusted. Default: 10m.
	FederationCache caddy.Duration `json:"federation_cache,omitempty"`
	// Fetch from any address, over http too (tests only).
	FederationAllowPrivate bool `json:"federation_allow_private,omitempty"`
	// Servers whose pinned log key and checkpoint are forgotten when this
	// config starts, so that they are pinned afresh: how an operator
	// clears a server caught forking its log. Remove the line afterwards.
	FederationRepin []string `json:"federation_repin,omitempty"`

	api     *handlers.Handler
	pushKey string // key of this config's share of pushSenders, once taken
	backend sharedStorage
	rates   string // key of this config's share of rateStates, once taken
	log     *slog.Logger
	stop    context.CancelFunc
	stopped chan struct{} // closed when the janitor has returned
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.kez_chat",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision opens (or shares) the storage and builds the API handler. It
// stays quick even when another process holds the database, so `caddy
// validate` next to a running server works.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.log = ctx.Slogger()
	// Caddy validates after provisioning, but the server name is part of
	// the default database path: check the config first.
	if err := h.Validate(); err != nil {
		return err
	}
	if err := h.setDefaults(); err != nil {
		return err
	}
	b, err := h.openStorage(ctx)
	if err != nil {
		return err
	}
	h.backend = b
	reserved := map[string]bool{}
	for _, r := range h.Reserved {
		reserved[strings.ToLower(r)] = true
	}
	rates := map[string]handlers.Rate{}
	for name, s := range h.rateOptions() {
		if rates[name], err = handlers.ParseRate(s); err != nil {
			return fmt.Errorf("kez_chat: %s: %w", name, err)
		}
	}
	counters, err := initMetrics(ctx.GetMetricsRegistry())
	if err == nil {
		err = pushMetric.register(ctx.GetMetricsRegistry())
	}
	if err != nil {
		return fmt.Errorf("kez_chat: metrics: %w", err)
	}
	pusher := h.pushSender(b.store())
	h.api = handlers.New(handlers.Config{
		Server:         h.Server,
		PublicURL:      h.PublicURL,
		MaxEnvelope:    h.MaxEnvelope,
		AuthSkew:       time.Duration(h.AuthSkew),
		RegisterSkew:   time.Duration(h.RegisterSkew),
		Keepalive:      time.Duration(h.Keepalive),
		BodyTimeout:    time.Duration(h.BodyTimeout),
		StreamMaxAge:   time.Duration(h.StreamMaxAge),
		HandleCooldown: time.Duration(h.HandleCooldown),
		MaxInbox:       h.MaxInbox,
		Reserved:       reserved,
		Version:        moduleVersion(),

		RegisterRate:        rates["register_rate"],
		SendRate:            rates["send_rate"],
		SenderRate:          rates["sender_rate"],
		RateState:           h.rateState(),
		RequestLimit:        h.RequestLimit,
		MaxRequests:         h.MaxRequests,
		MaxStreamsPerHandle: h.MaxStreamsPerHandle,
		MaxStreams:          h.MaxStreams,
		ClientIP:            clientIP,
		Registration:        h.Registration,
		InviteFile:          h.InviteFile,
		Counters:            counters,
		Federation:          h.federationVerifier(b.store()),
		FederationRate:      rates["federation_rate"],
		Push:                pusher,
	}, b.store(), b.liveHub(), h.log)

	// Caddy emits "stopping" before it shuts its servers down, on reload
	// and on exit. Ending streams then keeps a graceful shutdown (eternal by
	// default) from waiting on them.
	eventsApp, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("kez_chat: loading the events app: %w", err)
	}
	if err := eventsApp.(*caddyevents.App).On("stopping", onEvent(h.api.Close)); err != nil {
		return fmt.Errorf("kez_chat: subscribing to the stopping event: %w", err)
	}

	janitorCtx, cancel := context.WithCancel(context.Background())
	h.stop, h.stopped = cancel, make(chan struct{})
	go h.janitor(janitorCtx, b.store())
	return nil
}

// MaxEnvelopeLimit caps max_envelope: clients read a stream line by line
// and hold a whole envelope in memory.
const MaxEnvelopeLimit = 16 << 20

// Defaults of the options that package handlers leaves off when zero: the
// abuse limits and storage bounds. (The protocol parameters' defaults are
// handlers.Default*; the NATS ones are in nats.go.)
const (
	DefaultRetention           = 30 * 24 * time.Hour
	DefaultMaxInbox            = 10000
	DefaultRegisterRate        = "30/1h"
	DefaultSendRate            = "20/1s"
	DefaultSenderRate          = "20/1s"
	DefaultRequestLimit        = 3
	DefaultMaxRequests         = 100
	DefaultMaxStreamsPerHandle = 16
	DefaultMaxStreams          = 50000
	DefaultFederationRate      = "100/1m"
)

// setDefaults gives every option left unset its default, as Caddy's own
// modules do in Provision (reverse_proxy, file_server): each default is
// written once, and what follows sees the values in force.
func (h *Handler) setDefaults() error {
	if h.PublicURL == "" {
		h.PublicURL = handlers.DefaultPublicURL(h.Server)
	}
	if h.Storage == nil {
		h.Storage = new(StorageConfig)
	}
	if h.Storage.Nats != nil {
		h.Storage.Nats.setDefaults()
	} else {
		if h.Storage.Bolt == nil {
			h.Storage.Bolt = new(BoltConfig)
		}
		path, err := h.boltPath()
		if err != nil {
			return fmt.Errorf("kez_chat: storage bolt: %w", err)
		}
		h.Storage.Bolt.Path = path
	}
	h.MaxEnvelope = cmp.Or(h.MaxEnvelope, handlers.DefaultMaxEnvelope)
	h.AuthSkew = cmp.Or(h.AuthSkew, caddy.Duration(handlers.DefaultAuthSkew))
	h.RegisterSkew = cmp.Or(h.RegisterSkew, caddy.Duration(handlers.DefaultRegisterSkew))
	h.Keepalive = cmp.Or(h.Keepalive, caddy.Duration(handlers.DefaultKeepalive))
	h.Retention = cmp.Or(h.Retention, caddy.Duration(DefaultRetention))
	h.MaxInbox = cmp.Or(h.MaxInbox, DefaultMaxInbox)
	h.Registration = cmp.Or(h.Registration, handlers.RegistrationOpen)
	h.RegisterRate = cmp.Or(h.RegisterRate, DefaultRegisterRate)
	h.SendRate = cmp.Or(h.SendRate, DefaultSendRate)
	h.SenderRate = cmp.Or(h.SenderRate, DefaultSenderRate)
	h.RequestLimit = cmp.Or(h.RequestLimit, DefaultRequestLimit)
	h.MaxRequests = cmp.Or(h.MaxRequests, DefaultMaxRequests)
	h.BodyTimeout = cmp.Or(h.BodyTimeout, caddy.Duration(handlers.DefaultBodyTimeout))
	h.StreamMaxAge = cmp.Or(h.StreamMaxAge, caddy.Duration(handlers.DefaultStreamMaxAge))
	h.HandleCooldown = cmp.Or(h.HandleCooldown, caddy.Duration(handlers.DefaultHandleCooldown))
	h.MaxStreamsPerHandle = cmp.Or(h.MaxStreamsPerHandle, DefaultMaxStreamsPerHandle)
	h.MaxStreams = cmp.Or(h.MaxStreams, DefaultMaxStreams)
	h.Federation = cmp.Or(h.Federation, federation.Open)
	h.FederationRate = cmp.Or(h.FederationRate, DefaultFederationRate)
	h.FederationCache = cmp.Or(h.FederationCache, caddy.Duration(federation.DefaultCacheTTL))
	h.pushDefaults()
	return nil
}

// rateStates holds each server's rate-limit buckets, as caddy-ratelimit
// holds its zones: Caddy provisions a new config before it cleans up the
// old one, so the buckets pass from one to the next and `caddy reload`
// does not refill every client's register_rate. The new config's rates
// apply to them at once.
var rateStates = caddy.NewUsagePool()

type pooledRateState struct{ *handlers.RateState }

func (pooledRateState) Destruct() error { return nil }

// rateState is this config's share of the server's rate-limit state;
// Cleanup gives it back.
func (h *Handler) rateState() *handlers.RateState {
	key := h.Server
	val, _, _ := rateStates.LoadOrNew(key, func() (caddy.Destructor, error) {
		return pooledRateState{handlers.NewRateState()}, nil
	})
	h.rates = key
	return val.(pooledRateState).RateState
}

// clientIP is the client address as Caddy determined it, which honours the
// server's trusted_proxies; the peer address otherwise.
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	return handlers.RemoteIP(r)
}

// onEvent adapts a function to a Caddy event handler.
type onEvent func()

func (f onEvent) Handle(context.Context, caddy.Event) error {
	f()
	return nil
}

// janitor enforces retention in the background, a small transaction at a time.
func (h *Handler) janitor(ctx context.Context, store storage.Store) {
	defer close(h.stopped)
	retention := time.Duration(h.Retention)
	every := min(max(retention/4, time.Second), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		// The first pass waits one interval: Provision also runs under
		// `caddy validate`, which must not write to the database.
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := store.Expire(ctx, time.Now().Add(-retention))
		if err != nil && ctx.Err() == nil {
			h.log.Warn("retention pass failed", "error", err)
		} else if n > 0 {
			h.log.Info("retention removed old messages", "count", n, "retention", retention.String())
		}
	}
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if err := h.Storage.validate(); err != nil {
		return err
	}
	if h.Server == "" {
		return fmt.Errorf("kez_chat: server is required (the domain in addresses, e.g. chat.example.com)")
	}
	if strings.ContainsAny(h.Server, "/@: \t") || strings.ToLower(h.Server) != h.Server {
		return fmt.Errorf("kez_chat: server %q must be a lowercase host name such as chat.example.com, without scheme, port or path", h.Server)
	}
	if h.PublicURL != "" {
		u, err := url.Parse(h.PublicURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("kez_chat: public_url %q must be an absolute http(s) URL such as https://%s", h.PublicURL, h.Server)
		}
	}
	if h.MaxEnvelope > MaxEnvelopeLimit {
		return fmt.Errorf("kez_chat: max_envelope %d is above the limit of %s (each send and each stream event holds one envelope in memory)", h.MaxEnvelope, formatSize(MaxEnvelopeLimit))
	}
	if h.MaxEnvelope < 0 || h.MaxInbox < 0 || h.AuthSkew < 0 || h.RegisterSkew < 0 || h.Keepalive < 0 || h.Retention < 0 ||
		h.RequestLimit < 0 || h.MaxRequests < 0 || h.BodyTimeout < 0 || h.StreamMaxAge < 0 || h.HandleCooldown < 0 {
		return fmt.Errorf("kez_chat: sizes, counts and durations must not be negative")
	}
	for _, r := range h.Reserved {
		if !kez.ValidHandle(strings.ToLower(r)) {
			return fmt.Errorf("kez_chat: reserved handle %q is not a valid handle", r)
		}
	}
	switch h.Registration {
	case "", handlers.RegistrationOpen, handlers.RegistrationClosed:
		if h.InviteFile != "" {
			return fmt.Errorf("kez_chat: invite_file is only used with registration invite")
		}
	case handlers.RegistrationInvite:
		if h.InviteFile == "" {
			return fmt.Errorf("kez_chat: registration invite needs an invite file: registration invite /etc/kez/invites")
		}
	default:
		return fmt.Errorf("kez_chat: registration %q must be open, closed or invite", h.Registration)
	}
	if err := h.validateFederation(); err != nil {
		return err
	}
	for name, rate := range h.rateOptions() {
		if rate != "" {
			if _, err := handlers.ParseRate(rate); err != nil {
				return fmt.Errorf("kez_chat: %s: %w", name, err)
			}
		}
	}
	if h.MaxStreams < 0 || h.MaxStreamsPerHandle < 0 {
		return fmt.Errorf("kez_chat: stream limits must not be negative")
	}
	return h.validatePush()
}

// ServeHTTP answers the API paths and passes everything else on.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if route := h.api.Route(r); route != nil {
		route.ServeHTTP(w, r)
		return nil
	}
	return next.ServeHTTP(w, r)
}

// Cleanup ends this config's streams and releases its share of the storage.
// The database and hub stay open while a newer config still uses them.
func (h *Handler) Cleanup() error {
	if h.api != nil {
		h.api.Close()
	}
	h.releasePush()
	if h.stop != nil {
		h.stop()
		<-h.stopped
	}
	if h.rates != "" {
		_, _ = rateStates.Delete(h.rates)
	}
	if h.backend != nil {
		return h.backend.release()
	}
	return nil
}

// moduleVersion is this module's version as built into the binary.
func moduleVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	const path = "github.com/kezchat/kez"
	if info.Main.Path == path && info.Main.Version != "" && info.Main.Version != "(devel)" {
		return info.Main.Version
	}
	for _, dep := range info.Deps {
		if dep.Path == path {
			if dep.Replace != nil { // a local checkout (xcaddy --with path=dir) has no version
				if dep.Replace.Version == "" {
					return "devel"
				}
				return dep.Replace.Version
			}
			return dep.Version
		}
	}
	return "devel"
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)

// Package handlers serves KEZ chat's HTTP API (SPEC §2) with plain net/http:
// routing, validation, request auth and the error model. Storage and live
// delivery come in through storage.Store and hub.Hub; nothing here knows Caddy.
package handlers

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/kezchat/kez/federation"
	"github.com/kezchat/kez/hub"
	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/push"
	"github.com/kezchat/kez/storage"
)

// Config is the server's protocol configuration (SPEC §4).
//
// Zero values: a zero limit (MaxInbox, RequestLimit, MaxRequests,
// MaxStreamsPerHandle, MaxStreams and the three Rates) is off, no bound at
// all. A zero protocol parameter (MaxEnvelope, AuthSkew, RegisterSkew,
// Keepalive, BodyTimeout, StreamMaxAge, HandleCooldown) takes its SPEC §4
// default, the Default* constants: none of them is ever off. The Caddy
// module fills in its own defaults for the limits (package caddymodule)
// and passes every value explicitly.
type Config struct {
	Server       string        // the domain in addresses, e.g. kez.lat
	PublicURL    string        // base of links in WebFinger answers; default DefaultPublicURL(Server)
	MaxEnvelope  int64         // largest envelope accepted, in bytes
	AuthSkew     time.Duration // allowed clock difference for X-KEZ-Auth
	RegisterSkew time.Duration // allowed clock difference for registrations
	Keepalive    time.Duration // interval of ": ping" comments on streams
	BodyTimeout  time.Duration // time allowed to receive a whole request body
	StreamMaxAge time.Duration // a stream ends after this (±10 %); clients reconnect
	// HandleCooldown is how long a deleted handle stays unregistrable.
	HandleCooldown time.Duration
	MaxInbox       int              // messages an inbox may hold (0 = no cap)
	Reserved       map[string]bool  // handles nobody may register
	Version        string           // reported by /v1/healthz
	Now            func() time.Time // the clock; default time.Now (tests pin it)

	// Abuse limits; the zero values mean no limit.
	RegisterRate        Rate                         // registration attempts per client IP
	SendRate            Rate                         // sends per client IP
	SenderRate          Rate                         // sends per sender key (SPEC §2.5)
	RequestLimit        int                          // unacknowledged requests per stranger
	MaxRequests         int                          // unacknowledged requests per inbox
	MaxStreamsPerHandle int                          // open streams per handle
	MaxStreams          int                          // open streams in total
	ClientIP            func(r *http.Request) string // the client's address; default RemoteIP

	// Federation verifies senders of other servers (SPEC §8); nil admits
	// none (federation off).
	Federation *federation.Verifier
	// FederationRate bounds sends from the users of each other server.
	FederationRate Rate

	// RateState keeps the rate limits' buckets; nil: a new one. Pass the
	// same one to the Handler that replaces this one on a reload, so the
	// reload does not refill every client's allowance.
	RateState *RateState

	// Registration is "open" (default), "closed", or "invite": then each
	// registration needs a one-use token listed in InviteFile.
	Registration string
	InviteFile   string

	// Counters reports activity to a monitoring system (Caddy's Prometheus
	// metrics, in the module).
	Counters Counters

	// Push sends Web Push notifications (SPEC §7); nil: push is off, and
	// its paths are unknown.
	Push *push.Sender
}

// Counters are called as the API works; any of them may be nil.
type Counters struct {
	MessageAccepted  func(envelopeBytes int) // a message is durable
	Registered       func()                  // a new handle is bound
	StreamOpened     func()
	StreamClosed     func()
	StreamOverflowed func()             // a stream ended because its client read too slowly
	RateLimited      func(limit string) // "register", "send", "sender", "federation" or "streams"
}

func (c Counters) messageAccepted(n int) {
	if c.MessageAccepted != nil {
		c.MessageAccepted(n)
	}
}

func (c Counters) registered() {
	if c.Registered != nil {
		c.Registered()
	}
}

func (c Counters) streamOpened() {
	if c.StreamOpened != nil {
		c.StreamOpened()
	}
}

func (c Counters) streamClosed() {
	if c.StreamClosed != nil {
		c.StreamClosed()
	}
}

func (c Counters) rateLimited(limit string) {
	if c.RateLimited != nil {
		c.RateLimited(limit)
	}
}

// Registration modes.
const (
	RegistrationOpen   = "open"
	RegistrationClosed = "closed"
	RegistrationInvite = "invite"
)

// Defaults of SPEC §4, applied by WithDefaults to zero fields. (The abuse
// limits' defaults, retention and max_inbox, belong to the Caddy module:
// here a zero limit is no limit.)
const (
	DefaultMaxEnvelope  = 256 << 10
	DefaultAuthSkew     = 60 * time.Second
	DefaultRegisterSkew = 5 * time.Minute
	DefaultKeepalive    = 15 * time.Second
	DefaultBodyTimeout  = 10 * time.Second
	DefaultStreamMaxAge = time.Hour
	// DefaultHandleCooldown keeps a deleted handle from a newcomer while
	// contacts may still trust it (SPEC §1).
	DefaultHandleCooldown = 30 * 24 * time.Hour
)

// DefaultPublicURL is the PublicURL of a server that sets none.
func DefaultPublicURL(server string) string { return "https://" + server }

// WithDefaults fills unset fields.
func (c Config) WithDefaults() Config {
	c.Server = kez.ASCIILower(c.Server)
	if c.PublicURL == "" {
		c.PublicURL = DefaultPublicURL(c.Server)
	}
	c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.MaxEnvelope <= 0 {
		c.MaxEnvelope = DefaultMaxEnvelope
	}
	if c.AuthSkew <= 0 {
		c.AuthSkew = DefaultAuthSkew
	}
	if c.RegisterSkew <= 0 {
		c.RegisterSkew = DefaultRegisterSkew
	}
	if c.Keepalive <= 0 {
		c.Keepalive = DefaultKeepalive
	}
	if c.BodyTimeout <= 0 {
		c.BodyTimeout = DefaultBodyTimeout
	}
	if c.StreamMaxAge <= 0 {
		c.StreamMaxAge = DefaultStreamMaxAge
	}
	if c.HandleCooldown <= 0 {
		c.HandleCooldown = DefaultHandleCooldown
	}
	c.RequestLimit = max(c.RequestLimit, 0)
	c.MaxRequests = max(c.MaxRequests, 0)
	reserved := map[string]bool{}
	for _, h := range kez.DefaultReserved {
		reserved[h] = true
	}
	for h := range c.Reserved {
		reserved[strings.ToLower(h)] = true
	}
	c.Reserved = reserved
	if c.MaxInbox < 0 {
		c.MaxInbox = 0
	}
	if c.ClientIP == nil {
		c.ClientIP = RemoteIP
	}
	if c.Registration == "" {
		c.Registration = RegistrationOpen
	}
	if c.Version == "" {
		c.Version = "devel"
	}
	if c.RateState == nil {
		c.RateState = NewRateState()
	}
	return c
}

// Handler serves the API. Create it with New; Close ends its open streams.
type Handler struct {
	cfg   Config
	store storage.Store
	hub   *hub.Hub
	log   *slog.Logger

	stopped context.Context // done once Close is called
	stop    context.CancelFunc

	binlog transparency // signs and proves the binding log

	registerLimit *limiter
	sendLimit     *limiter
	senderLimit   *limiter
	// federationLimit is keyed by the remote server's name.
	federationLimit *limiter
	streams         streamSlots

	// auth checks request signatures, keeping senders' keys expanded and
	// batching the checks under load.
	auth *kez.AuthVerifier

	mu      sync.Mutex
	servers map[*http.Server]context.Context // done when that server begins to shut down
}

// New returns a Handler. log may be nil.
func New(cfg Config, store storage.Store, h *hub.Hub, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.WithDefaults()
	stopped, stop := context.WithCancel(context.Background())
	return &Handler{stopped: stopped, stop: stop, cfg: cfg, store: store, hub: h, log: log,
		servers:         map[*http.Server]context.Context{},
		registerLimit:   newLimiter(cfg.RegisterRate, &cfg.RateState.register),
		sendLimit:       newLimiter(cfg.SendRate, &cfg.RateState.send),
		senderLimit:     newLimiter(cfg.SenderRate, &cfg.RateState.sender),
		federationLimit: newLimiter(cfg.FederationRate, &cfg.RateState.federation),
		streams:         streamSlots{perHandle: map[string]int{}}, auth: kez.NewAuthVerifier(0, kez.DefaultAuthLinger)}
}

// Close ends every open stream of this handler; the store and hub stay open.
func (h *Handler) Close() { h.stop() }

// ServeHTTP answers API paths and 404s everything else (standalone use).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if route := h.Route(r); route != nil {
		route.ServeHTTP(w, r)
		return
	}
	writeError(w, http.StatusNotFound, "not_found", "no such endpoint")
}

// Route returns the handler for r, or nil when the path is not part of the
// API, so that a host server can pass the request on. Every path under
// /v1/ is ours: one we do not serve gets a JSON 404 with CORS headers.
func (h *Handler) Route(r *http.Request) http.Handler {
	p := r.URL.Path
	switch p {
	case "/v1/healthz":
		return h.methods(map[string]http.HandlerFunc{"GET": h.serve(h.healthz)})
	case "/v1/register":
		return h.methods(map[string]http.HandlerFunc{"POST": h.serve(h.register)})
	case "/v1/messages":
		return h.methods(map[string]http.HandlerFunc{"POST": h.serve(h.send)})
	case "/.well-known/webfinger":
		return h.methods(map[string]http.HandlerFunc{"GET": h.serve(h.webfinger)})
	case "/v1/rotate":
		return h.methods(map[string]http.HandlerFunc{"POST": h.serve(h.rotate)})
	case "/v1/delete":
		return h.methods(map[string]http.HandlerFunc{"POST": h.serve(h.deleteAccount)})
	case "/v1/federation":
		return h.methods(map[string]http.HandlerFunc{"GET": h.serve(h.federationInfo)})
	case "/v1/log/key":
		return h.methods(map[string]http.HandlerFunc{"GET": h.serve(h.logKey)})
	case "/v1/log/checkpoint":
		return h.methods(map[string]http.HandlerFunc{"GET": h.serve(h.logCheckpoint)})
	case "/v1/log/entries":
		return h.methods(map[string]http.HandlerFunc{"GET": h.serve(h.logEntries)})
	case "/v1/log/consistency":
		return h.methods(map[string]http.HandlerFunc{"GET": h.serve(h.logConsistency)})
	}
	if rest, ok := strings.CutPrefix(p, "/v1/u/"); ok && isSegment(rest) {
		return h.methods(map[string]http.HandlerFunc{"GET": h.serveArg(rest, h.lookup)})
	}
	if rest, ok := strings.CutPrefix(p, "/v1/by-primary/"); ok && isSegment(rest) {
		return h.methods(map[string]http.HandlerFunc{"GET": h.serveArg(rest, h.lookupPrimary)})
	}
	if route := h.pushRoute(p); route != nil {
		return route
	}
	if rest, ok := strings.CutPrefix(p, "/v1/inbox/"); ok {
		if route := h.inboxRoute(rest); route != nil {
			return route
		}
	}
	if strings.HasPrefix(p, "/v1/") {
		return h.methods(map[string]http.HandlerFunc{})
	}
	return nil
}

// inboxRoute routes what follows /v1/inbox/: <handle>, <handle>/stream,
// <handle>/contacts and <handle>/contacts|blocked/<primary>.
func (h *Handler) inboxRoute(rest string) http.Handler {
	parts := strings.Split(rest, "/")
	if parts[0] == "" {
		return nil
	}
	handle := parts[0]
	switch {
	case len(parts) == 1:
		return h.methods(map[string]http.HandlerFunc{
			"GET":    h.serveArg(handle, h.inbox),
			"DELETE": h.serveArg(handle, h.ack),
		})
	case len(parts) == 2 && parts[1] == "stream":
		return h.methods(map[string]http.HandlerFunc{"GET": h.serveArg(handle, h.stream)})
	case len(parts) == 2 && parts[1] == "contacts":
		return h.methods(map[string]http.HandlerFunc{"GET": h.serveArg(handle, h.contacts)})
	case len(parts) == 3 && (parts[1] == "contacts" || parts[1] == "blocked") && parts[2] != "":
		on, off := storage.Accept, storage.Unaccept
		if parts[1] == "blocked" {
			on, off = storage.Block, storage.Unblock
		}
		return h.methods(map[string]http.HandlerFunc{
			"PUT":    h.serve(h.setContact(handle, parts[1], parts[2], on)),
			"DELETE": h.serve(h.setContact(handle, parts[1], parts[2], off)),
		})
	}
	return nil
}

func isSegment(s string) bool { return s != "" && !strings.Contains(s, "/") }

// allMethods are the methods the API uses, in the order Allow lists them.
var allMethods = []string{"GET", "POST", "PUT", "DELETE"}

// methods answers CORS preflights and wrong methods, and dispatches the
// rest. With no methods at all it is the JSON 404 of an unknown /v1/ path.
func (h *Handler) methods(byMethod map[string]http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hdr := w.Header()
		hdr.Set("Access-Control-Allow-Origin", "*")
		hdr.Set("Access-Control-Expose-Headers", "Retry-After")
		if len(byMethod) == 0 {
			writeError(w, http.StatusNotFound, kez.CodeNotFound, "no such endpoint: "+r.URL.Path)
			return
		}
		if fn := byMethod[r.Method]; fn != nil {
			fn(w, r)
			return
		}
		allowed := make([]string, 0, len(allMethods))
		for _, m := range allMethods {
			if byMethod[m] != nil {
				allowed = append(allowed, m)
			}
		}
		hdr.Set("Allow", strings.Join(append(allowed, "OPTIONS"), ", "))
		if r.Method == http.MethodOptions {
			hdr.Set("Access-Control-Allow-Methods", strings.Join(allMethods, ", "))
			hdr.Set("Access-Control-Allow-Headers", "Content-Type, X-KEZ-Auth")
			hdr.Set("Access-Control-Max-Age", "86400")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed",
			r.Method+" is not allowed here; use "+strings.Join(allowed, " or "))
	})
}

package caddymodule

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/kezchat/kez/handlers"
)

// Two kez_chat handlers in one route are not refused here: Caddy shows a
// directive neither its route's other handlers nor its site block (the
// adapter's State is shared by all sites), so a check would be a guess.
// The harm is small: the first handler answers every API path and the
// second is never reached; two with different server names on one
// database fail at provision (storage.go).
func init() {
	httpcaddyfile.RegisterHandlerDirective("kez_chat", parseCaddyfile)
	// Early, right after encode: a catch-all reverse_proxy, handle or
	// file_server in the same site must not swallow the API paths. Every
	// other path is passed on, so going first costs the rest of the site nothing.
	httpcaddyfile.RegisterDirectiveOrder("kez_chat", httpcaddyfile.After, "encode")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	kez_chat {
//		server        kez.lat
//		public_url    https://kez.lat
//		storage bolt  /var/lib/kez/chat.db  # optional block: { one_commit_per_message } (benchmarks only)
//		# or: storage nats nats://a:4222 nats://b:4222 { creds <file>; tls_ca <file>; replicas 3; stream kez; timeout 10s }
//		max_envelope  256KiB
//		auth_skew     60s
//		register_skew 5m
//		keepalive     15s
//		retention     720h
//		max_inbox     10000
//		reserved      alice-admin ops
//		registration  open               # or closed, or invite <file>
//		register_rate 30/1h              # per client IP, or off
//		send_rate     20/1s              # per client IP, or off
//		sender_rate   20/1s              # per sender key, or off
//		request_limit 3                  # unacknowledged requests per stranger
//		max_requests  100                # unacknowledged requests per inbox
//		body_timeout  10s
//		stream_max_age 1h
//		handle_cooldown 720h             # a deleted handle stays unregistrable
//		max_streams_per_handle 16
//		max_streams   50000
//		federation    open               # or off, allow <server…>, deny <server…>
//		federation_resolve one.example http://10.0.0.7:8080  # repeatable; tests, private networks
//		federation_rate 100/1m           # per remote server, or off
//		federation_cache 10m
//		federation_allow_private         # tests only
//		federation_repin one.example     # forget a server's pinned log (after a fork)
//		push          on                 # Web Push (SPEC §7), or off
//		push_contact  mailto:ops@kez.lat # default mailto:postmaster@<server>
//		push_interval 5s
//		push_allow_private_endpoints     # tests only
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.Errf("kez_chat takes no arguments on its line; put options in a block, e.g. kez_chat { server %s }", d.Val())
	}
	options := h.caddyfileOptions()
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		parse, ok := options[opt]
		if !ok {
			return d.Errf("unknown kez_chat option %q (known: %s)", opt, strings.Join(optionNames(options), ", "))
		}
		// A repeated option would silently override the first (storage
		// bolt, then storage nats): refuse it, as Caddy's own directives do.
		if seen[opt] && !repeatable[opt] {
			return d.Errf("%s already specified", opt)
		}
		seen[opt] = true
		if err := parse(d); err != nil {
			return err
		}
		if d.NextBlock(nesting + 1) {
			return d.Errf("option %s takes no block", opt)
		}
	}
	return nil
}

// repeatable options add to what the earlier lines gave.
var repeatable = map[string]bool{"reserved": true, "federation_resolve": true, "federation_repin": true}

// caddyfileOptions maps each option of the kez_chat block to the function
// that reads its arguments (the dispenser on the option's name) into h.
func (h *Handler) caddyfileOptions() map[string]func(*caddyfile.Dispenser) error {
	options := map[string]func(*caddyfile.Dispenser) error{
		"server":                   stringOption(&h.Server),
		"public_url":               stringOption(&h.PublicURL),
		"storage":                  h.parseStorage,
		"max_envelope":             sizeOption(&h.MaxEnvelope, MaxEnvelopeLimit, "each send and each stream event holds one envelope in memory"),
		"auth_skew":                durationOption(&h.AuthSkew),
		"register_skew":            durationOption(&h.RegisterSkew),
		"keepalive":                durationOption(&h.Keepalive),
		"retention":                durationOption(&h.Retention),
		"body_timeout":             durationOption(&h.BodyTimeout),
		"stream_max_age":           durationOption(&h.StreamMaxAge),
		"handle_cooldown":          durationOption(&h.HandleCooldown),
		"max_inbox":                countOption(&h.MaxInbox, "messages"),
		"request_limit":            countOption(&h.RequestLimit, "messages"),
		"max_requests":             countOption(&h.MaxRequests, "messages"),
		"max_streams_per_handle":   countOption(&h.MaxStreamsPerHandle, "streams"),
		"max_streams":              countOption(&h.MaxStreams, "streams"),
		"register_rate":            rateOption(&h.RegisterRate),
		"send_rate":                rateOption(&h.SendRate),
		"sender_rate":              rateOption(&h.SenderRate),
		"registration":             h.parseRegistration,
		"reserved":                 h.parseReserved,
		"federation":               h.parseFederation,
		"federation_resolve":       h.parseFederationResolve,
		"federation_rate":          rateOption(&h.FederationRate),
		"federation_cache":         durationOption(&h.FederationCache),
		"federation_allow_private": h.parseFederationAllowPrivate,
		"federation_repin":         h.parseFederationRepin,
	}
	maps.Copy(options, h.pushCaddyfileOptions())
	return options
}

func optionNames(options map[string]func(*caddyfile.Dispenser) error) []string {
	names := make([]string, 0, len(options))
	for n := range options {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func stringOption(dst *string) func(*caddyfile.Dispenser) error {
	return func(d *caddyfile.Dispenser) (err error) {
		*dst, err = oneArg(d)
		return err
	}
}

// sizeOption reads a size of at most limit bytes; why says why there is a
// limit.
func sizeOption(dst *int64, limit int64, why string) func(*caddyfile.Dispenser) error {
	return func(d *caddyfile.Dispenser) error {
		opt := d.Val()
		val, err := oneArg(d)
		if err != nil {
			return err
		}
		n, err := parseSize(val)
		if err != nil {
			return d.Errf("%s: %v", opt, err)
		}
		if n > limit {
			return d.Errf("%s: %s is above the limit of %s (%s)", opt, val, formatSize(limit), why)
		}
		*dst = n
		return nil
	}
}

func durationOption(dst *caddy.Duration) func(*caddyfile.Dispenser) error {
	return func(d *caddyfile.Dispenser) error {
		opt := d.Val()
		val, err := oneArg(d)
		if err != nil {
			return err
		}
		dur, err := caddy.ParseDuration(val)
		if err != nil || dur <= 0 {
			return d.Errf("%s: %q is not a positive duration such as 60s, 5m or 30d", opt, val)
		}
		*dst = caddy.Duration(dur)
		return nil
	}
}

func countOption(dst *int, what string) func(*caddyfile.Dispenser) error {
	return func(d *caddyfile.Dispenser) error {
		opt := d.Val()
		val, err := oneArg(d)
		if err != nil {
			return err
		}
		n, err := strconv.Atoi(val)
		if err != nil || n <= 0 {
			return d.Errf("%s: %q is not a positive number of %s", opt, val, what)
		}
		*dst = n
		return nil
	}
}

func rateOption(dst *string) func(*caddyfile.Dispenser) error {
	return func(d *caddyfile.Dispenser) error {
		opt := d.Val()
		val, err := oneArg(d)
		if err != nil {
			return err
		}
		if _, err := handlers.ParseRate(val); err != nil {
			return d.Errf("%s: %v", opt, err)
		}
		*dst = val
		return nil
	}
}

// parseStorage reads storage bolt [<path>] [{ one_commit_per_message }] or
// storage nats <url>... { ... }.
func (h *Handler) parseStorage(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.Errf("storage needs a backend: storage bolt <path>, or storage nats <url>...")
	}
	switch d.Val() {
	case "bolt":
		cfg, err := parseBoltStorage(d)
		if err != nil {
			return err
		}
		h.Storage = &StorageConfig{Bolt: cfg}
	case "nats":
		cfg, err := parseNatsStorage(d)
		if err != nil {
			return err
		}
		h.Storage = &StorageConfig{Nats: cfg}
	default:
		return d.Errf("unknown storage backend %q (supported: bolt, nats)", d.Val())
	}
	return nil
}

// parseRegistration reads registration open|closed|invite <file>.
func (h *Handler) parseRegistration(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	switch {
	case len(args) == 1 && (args[0] == handlers.RegistrationOpen || args[0] == handlers.RegistrationClosed):
		h.Registration, h.InviteFile = args[0], ""
	case len(args) == 2 && args[0] == handlers.RegistrationInvite:
		h.Registration, h.InviteFile = args[0], args[1]
	default:
		return d.Errf("registration takes open, closed, or invite <file of tokens>")
	}
	return nil
}

// parseReserved reads reserved <handle>...; it may be given more than once.
func (h *Handler) parseReserved(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.Errf("reserved needs at least one handle")
	}
	h.Reserved = append(h.Reserved, args...)
	return nil
}

func oneArg(d *caddyfile.Dispenser) (string, error) {
	opt := d.Val()
	if !d.NextArg() {
		return "", d.Errf("%s needs a value", opt)
	}
	val := d.Val()
	if d.NextArg() {
		return "", d.Errf("%s takes one value, got extra %q", opt, d.Val())
	}
	return val, nil
}

// sizeUnits are the suffixes parseSize knows, longest first.
var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1},
}

// parseSize reads a byte count such as 262144, 256KiB, 256KB or 1MiB
// (units in any case). Whether the size is too large for its option is
// the caller's to say.
func parseSize(s string) (int64, error) {
	num, mult := s, int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(strings.ToLower(s), strings.ToLower(u.suffix)) {
			num, mult = strings.TrimSpace(s[:len(s)-len(u.suffix)]), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size such as 256KiB, 1MiB or 262144", s)
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n * mult, nil
}

// formatSize writes n bytes in the largest binary unit that divides it.
func formatSize(n int64) string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.mult && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

var _ caddyfile.Unmarshaler = (*Handler)(nil)

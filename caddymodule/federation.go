package caddymodule

import (
	"fmt"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/kezchat/kez/federation"
	"github.com/kezchat/kez/storage"
)

// The federation options (SPEC §8): their Caddyfile syntax, checks and the
// Verifier they make.

// parseFederation reads federation open|off|allow <server…>|deny <server…>.
func (h *Handler) parseFederation(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.Errf("federation needs a mode: open, off, allow <server…> or deny <server…>")
	}
	if _, err := federation.ParsePolicy(args[0], args[1:]); err != nil {
		return d.Err(err.Error())
	}
	h.Federation = args[0]
	if len(args) > 1 {
		h.FederationServers = args[1:]
	}
	return nil
}

// parseFederationResolve reads federation_resolve <server> <base URL>; it
// may be given once per server.
func (h *Handler) parseFederationResolve(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) != 2 {
		return d.Errf("federation_resolve takes a server name and its API base URL: federation_resolve chat.example.org http://10.0.0.7:8080")
	}
	if _, dup := h.FederationResolve[args[0]]; dup {
		return d.Errf("federation_resolve %s already specified", args[0])
	}
	if h.FederationResolve == nil {
		h.FederationResolve = map[string]string{}
	}
	h.FederationResolve[args[0]] = args[1]
	return nil
}

// parseFederationRepin reads federation_repin <server…>.
func (h *Handler) parseFederationRepin(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.Errf("federation_repin needs at least one server name")
	}
	h.FederationRepin = append(h.FederationRepin, args...)
	return nil
}

func (h *Handler) parseFederationAllowPrivate(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.Errf("federation_allow_private takes no value")
	}
	h.FederationAllowPrivate = true
	return nil
}

// validateFederation checks the federation options.
func (h *Handler) validateFederation() error {
	if h.Federation != "" {
		if _, err := federation.ParsePolicy(h.Federation, h.FederationServers); err != nil {
			return fmt.Errorf("kez_chat: %w", err)
		}
	} else if len(h.FederationServers) > 0 {
		return fmt.Errorf("kez_chat: federation_servers needs federation allow or deny")
	}
	for server, base := range h.FederationResolve {
		if !federation.ValidServerName(server) {
			return fmt.Errorf("kez_chat: federation_resolve: %q is not a lower-case server name", server)
		}
		u, err := url.Parse(base)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return fmt.Errorf("kez_chat: federation_resolve %s: %q must be an absolute http(s) URL such as https://%s", server, base, server)
		}
	}
	for _, server := range h.FederationRepin {
		if !federation.ValidServerName(server) {
			return fmt.Errorf("kez_chat: federation_repin: %q is not a lower-case server name", server)
		}
	}
	if h.FederationCache < 0 {
		return fmt.Errorf("kez_chat: federation_cache must not be negative")
	}
	return nil
}

// federationVerifier is the Verifier of the provisioned options; nil when
// federation is off (every remote sender is refused).
func (h *Handler) federationVerifier(store storage.Store) *federation.Verifier {
	policy, _ := federation.ParsePolicy(h.Federation, h.FederationServers) // validated
	if policy.Mode == federation.Off {
		return nil
	}
	return federation.New(federation.Config{
		Server: h.Server, Policy: policy, Resolve: h.FederationResolve, AllowPrivate: h.FederationAllowPrivate,
		CacheTTL: time.Duration(h.FederationCache), Repin: h.FederationRepin, Logs: store, Log: h.log,
	})
}

// rateOptions are the rate-limit options by name.
func (h *Handler) rateOptions() map[string]string {
	return map[string]string{"register_rate": h.RegisterRate, "send_rate": h.SendRate, "sender_rate": h.SenderRate,
		"federation_rate": h.FederationRate}
}

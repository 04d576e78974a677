// Package federation lets users of other KEZ servers write to users of this
// one (SPEC §8): which servers are admitted (Policy), how another server's
// API is found and fetched without letting a hostile peer make this server
// scan or hang (fetch rules), and the check that a remote sender's address
// is bound to the key that signed its message, proven in that server's
// binding log (Verifier). It knows nothing of Caddy or of the API's routes.
package federation

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/kezchat/kez/kez"
)

// Policy modes (SPEC §8).
const (
	Open  = "open"  // every server (the default)
	Off   = "off"   // no server
	Allow = "allow" // only the servers named
	Deny  = "deny"  // every server but those named
)

// Policy says which other servers' users may write here.
type Policy struct {
	Mode    string          // Open, Off, Allow or Deny; "" is Open
	Servers map[string]bool // for Allow and Deny: lower-case server names
}

// Admits reports whether users of server may write here.
func (p Policy) Admits(server string) bool {
	switch p.Mode {
	case Off:
		return false
	case Allow:
		return p.Servers[server]
	case Deny:
		return !p.Servers[server]
	}
	return true
}

// Name is the mode as GET /v1/federation reports it.
func (p Policy) Name() string {
	if p.Mode == "" {
		return Open
	}
	return p.Mode
}

// ParsePolicy reads "open", "off", or "allow"/"deny" followed by server names.
func ParsePolicy(mode string, servers []string) (Policy, error) {
	p := Policy{Mode: mode}
	switch mode {
	case Open, Off:
		if len(servers) > 0 {
			return Policy{}, fmt.Errorf("federation %s takes no server names", mode)
		}
		return p, nil
	case Allow, Deny:
		if len(servers) == 0 {
			return Policy{}, fmt.Errorf("federation %s needs at least one server name", mode)
		}
	default:
		return Policy{}, fmt.Errorf("federation must be open, off, allow <server…> or deny <server…>, not %q", mode)
	}
	p.Servers = map[string]bool{}
	for _, s := range servers {
		name := kez.ASCIILower(s)
		if !ValidServerName(name) {
			return Policy{}, fmt.Errorf("federation %s: %q is not a server name", mode, s)
		}
		p.Servers[name] = true
	}
	return p, nil
}

// List is the policy's server names, sorted (for config round trips).
func (p Policy) List() []string {
	names := make([]string, 0, len(p.Servers))
	for s := range p.Servers {
		names = append(names, s)
	}
	sort.Strings(names)
	return names
}

// ValidServerName reports whether s can be the server part of an address:
// a lower-case DNS name (labels of a-z, 0-9 and inner hyphens, at most 253
// bytes) or an IPv4 address. Nothing else is ever resolved or fetched, so
// a from_addr cannot smuggle a port, a path, userinfo or an IPv6 zone.
func ValidServerName(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Is4()
	}
	for _, label := range strings.Split(s, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

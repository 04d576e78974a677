// Package netguard decides which addresses the server may connect to on a
// stranger's behalf: other KEZ servers named in a from_addr (SPEC §8) and
// push services named in a subscription (SPEC §7). Both are URLs anyone
// can hand the server; neither may make it reach into its own network.
package netguard

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
)

// nonPublic are ranges that Go's netip predicates do not name but that
// reach no public server, or may lead back into a private network: shared
// (CGNAT), benchmarking, reserved, IETF protocol assignments,
// documentation, discard, and NAT64 and 6to4, which embed IPv4 addresses.
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("64:ff9b::/96"),
	netip.MustParsePrefix("64:ff9b:1::/48"),
	netip.MustParsePrefix("2001:db8::/32"),
	netip.MustParsePrefix("2002::/16"),
	netip.MustParsePrefix("100::/64"),
}

// Public reports whether a is a public unicast address: not private,
// loopback, link-local, multicast, unspecified or one of nonPublic (an
// IPv4-mapped IPv6 address counts as its IPv4 address).
func Public(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsValid() || !a.IsGlobalUnicast() || a.IsPrivate() || a.IsLoopback() ||
		a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsUnspecified() {
		return false
	}
	for _, p := range nonPublic {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// ErrNotPublic is the refusal of a connection to an address that is not Public.
var ErrNotPublic = errors.New("not a public address")

// Control is a net.Dialer Control function that refuses every connection
// to an address that is not Public. It runs after DNS, on the address
// actually dialed, so a name that resolved to a public address a moment
// ago cannot rebind to a private one.
func Control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil || !Public(ap.Addr()) {
		return fmt.Errorf("refusing to connect to %s: %w", address, ErrNotPublic)
	}
	return nil
}

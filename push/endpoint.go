package push

import (
	"crypto/ecdh"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"

	"github.com/kezchat/kez/storage"

	"github.com/kezchat/kez/internal/netguard"
)

// MaxEndpoint bounds an endpoint URL's length; real ones are ~200 bytes.
const MaxEndpoint = 1024

// CheckSubscription refuses a subscription the server would never push to
// (SPEC §7): an endpoint that is not an https URL on the default port, or
// that names a non-public address; keys that are not a P-256 point and a
// 16-byte secret. allowPrivate (tests only) also admits http and private,
// loopback and link-local targets. Host names are checked again when
// connecting (dial.go): what a name resolves to can change.
func CheckSubscription(sub storage.PushSubscription, allowPrivate bool) error {
	if err := checkEndpoint(sub.Endpoint, allowPrivate); err != nil {
		return err
	}
	p256dh, err := decodeKey(sub.P256dh)
	if err != nil {
		return fmt.Errorf("keys.p256dh: %w", err)
	}
	if _, err := ecdh.P256().NewPublicKey(p256dh); err != nil {
		return errors.New("keys.p256dh is not an uncompressed P-256 point")
	}
	auth, err := decodeKey(sub.Auth)
	if err != nil {
		return fmt.Errorf("keys.auth: %w", err)
	}
	if len(auth) != 16 {
		return fmt.Errorf("keys.auth must be 16 bytes, not %d", len(auth))
	}
	return nil
}

func checkEndpoint(endpoint string, allowPrivate bool) error {
	if len(endpoint) > MaxEndpoint {
		return fmt.Errorf("endpoint is longer than %d bytes", MaxEndpoint)
	}
	u, err := url.Parse(endpoint)
	if err != nil || !u.IsAbs() || u.Host == "" || u.Opaque != "" {
		return errors.New("endpoint must be an absolute https URL")
	}
	if u.User != nil || u.Fragment != "" || strings.ContainsAny(endpoint, " \t\r\n\\") {
		return errors.New("endpoint must not carry credentials, a fragment, spaces or backslashes")
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && allowPrivate:
	default:
		return errors.New("endpoint must be an https URL")
	}
	if allowPrivate {
		return nil
	}
	if port := u.Port(); port != "" && port != "443" {
		return errors.New("endpoint must use https's default port")
	}
	if ip, err := netip.ParseAddr(strings.Trim(u.Hostname(), "[]")); err == nil && !netguard.Public(ip) {
		return errors.New("endpoint must not name a private, loopback or link-local address")
	}
	if h := strings.TrimSuffix(strings.ToLower(u.Hostname()), "."); h == "localhost" || strings.HasSuffix(h, ".localhost") || net.ParseIP(h) == nil && !strings.Contains(h, ".") {
		return errors.New("endpoint must name a public host")
	}
	return nil
}

// decodeKey reads base64url, with or without padding, as browsers send it.
func decodeKey(s string) ([]byte, error) {
	if len(s) > 200 {
		return nil, errors.New("too long")
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return nil, errors.New("not base64url")
	}
	return b, nil
}

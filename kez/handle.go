package kez

import (
	"strings"
)

// DefaultReserved are the handles nobody may register (SPEC §1); operators add more.
var DefaultReserved = []string{
	"admin", "administrator", "root", "system", "support", "help", "api", "www",
	"mail", "postmaster", "abuse", "security", "noreply", "webmaster", "hostmaster",
	"kez", "server", "null", "undefined", "me", "you",
}

// ValidHandle reports whether h matches ^[a-z0-9][a-z0-9_-]{1,31}$. It is a
// byte-wise check, so look-alike Unicode letters never pass.
func ValidHandle(h string) bool {
	if len(h) < 2 || len(h) > 32 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '_' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// SplitAddress splits "alice" or "alice@kez.lat" into a lower-cased handle and
// a server name ("" when absent). Syntax is not checked here.
func SplitAddress(s string) (handle, server string) {
	if i := strings.LastIndexByte(s, '@'); i >= 0 {
		return ASCIILower(s[:i]), ASCIILower(s[i+1:])
	}
	return ASCIILower(s), ""
}

// ASCIILower lower-cases A-Z only. Unicode case mapping would turn look-alikes
// such as the Kelvin sign (U+212A) into a plain "k", so "Kez.lat" would
// name kez.lat; handles and server names are ASCII, so nothing else changes.
func ASCIILower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// Address formats handle@server.
func Address(handle, server string) string { return handle + "@" + server }

// ParseAcct splits a WebFinger resource "acct:user@host" (RFC 7565) into a
// lower-cased user and host; ok is false when it has no such shape.
func ParseAcct(resource string) (user, host string, ok bool) {
	acct, isAcct := strings.CutPrefix(resource, "acct:")
	user, host, hasAt := strings.Cut(acct, "@")
	if !isAcct || !hasAt || user == "" || host == "" || strings.ContainsAny(host, "@/?#") {
		return "", "", false
	}
	return ASCIILower(user), ASCIILower(host), true
}

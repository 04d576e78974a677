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
		return strings.ToLower(s[:i]), strings.ToLower(s[i+1:])
	}
	return strings.ToLower(s), ""
}

// Address formats handle@server.
func Address(handle, server string) string { return handle + "@" + server }

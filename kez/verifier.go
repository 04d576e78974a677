package kez

import (
	"crypto/ed25519"
	"sync"

	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// stdlibRules are curve25519-voi's verification rules that reproduce
// crypto/ed25519.Verify: the cofactorless equation [S]B - [k]A == R checked
// on R's encoding (so a non-canonical R is refused), S below the group
// order, and A decoded as Go decodes it (non-canonical and small-order
// encodings are read, not refused). Batch verification cannot follow these
// rules (it needs the cofactored equation), which is why a KeyVerifier checks
// signatures one at a time; X-KEZ-Auth, which only servers check, uses
// AuthVerifier and ZIP-215's rules instead.
var stdlibRules = &voi.Options{Verify: voi.VerifyOptionsStdLib}

// DefaultKeyVerifierKeys bounds the keys a KeyVerifier keeps expanded: about
// 1.5 KiB each.
const DefaultKeyVerifierKeys = 1024

// KeyVerifier checks Ed25519 signatures with exactly the rules of
// crypto/ed25519.Verify, in about half its time: it uses curve25519-voi
// (vectorized point arithmetic) and keeps the public keys it has seen
// recently in expanded form (decoded, with their table of multiples), so a
// key that signs many requests is decoded once. A key is pure data: an
// expanded key never goes stale, whatever happens to the user who holds it.
// It is safe for concurrent use.
type KeyVerifier struct {
	mu   sync.Mutex
	keys map[string]*voi.ExpandedPublicKey // by the 32 key bytes
	max  int
}

// NewKeyVerifier returns a KeyVerifier that keeps at most maxKeys expanded keys
// (DefaultKeyVerifierKeys when maxKeys <= 0).
func NewKeyVerifier(maxKeys int) *KeyVerifier {
	if maxKeys <= 0 {
		maxKeys = DefaultKeyVerifierKeys
	}
	return &KeyVerifier{keys: make(map[string]*voi.ExpandedPublicKey), max: maxKeys}
}

// Verify reports whether sig is a valid signature of msg by pub, exactly as
// ed25519.Verify(pub, msg, sig) would (a key of the wrong length is false
// here, where ed25519.Verify panics).
func (v *KeyVerifier) Verify(pub ed25519.PublicKey, msg, sig []byte) bool {
	if len(pub) != ed25519.PublicKeySize {
		return false
	}
	k := v.expanded(pub)
	if k == nil {
		// Not a curve point: refused by every rule set. Asked of the
		// standard library all the same, so that nothing depends on it.
		return ed25519.Verify(pub, msg, sig)
	}
	return voi.VerifyExpandedWithOptions(k, msg, sig, stdlibRules)
}

// expanded returns pub's expanded key, from the cache or made and kept;
// nil when pub is not a point.
func (v *KeyVerifier) expanded(pub ed25519.PublicKey) *voi.ExpandedPublicKey {
	v.mu.Lock()
	k := v.keys[string(pub)]
	v.mu.Unlock()
	if k != nil {
		return k
	}
	k, err := voi.NewExpandedPublicKey(voi.PublicKey(pub))
	if err != nil {
		return nil
	}
	v.mu.Lock()
	if len(v.keys) >= v.max {
		// Full: forget some key (map order is random enough; a hot key
		// that goes is expanded again on its next request).
		for old := range v.keys {
			delete(v.keys, old)
			break
		}
	}
	v.keys[string(pub)] = k
	v.mu.Unlock()
	return k
}

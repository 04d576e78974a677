package kez

import (
	"crypto/ed25519"
	"sync"

	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// DefaultAuthKeys bounds the keys an AuthVerifier keeps expanded: about
// 1.5 KiB each.
const DefaultAuthKeys = 1024

// keyCache keeps the public keys that signed recently in expanded form
// (decoded, with their table of multiples), so that a key that signs many
// requests is decoded once. A key is pure data: an expanded key never goes
// stale, whatever happens to the user who holds it. Safe for concurrent use.
type keyCache struct {
	mu   sync.Mutex
	keys map[string]*voi.ExpandedPublicKey // by the 32 key bytes
	max  int
}

// newKeyCache returns a cache of at most maxKeys keys (DefaultAuthKeys
// when maxKeys <= 0).
func newKeyCache(maxKeys int) *keyCache {
	if maxKeys <= 0 {
		maxKeys = DefaultAuthKeys
	}
	return &keyCache{keys: make(map[string]*voi.ExpandedPublicKey), max: maxKeys}
}

// expanded returns pub's expanded key, from the cache or made and kept;
// nil when pub is not a point.
func (c *keyCache) expanded(pub ed25519.PublicKey) *voi.ExpandedPublicKey {
	c.mu.Lock()
	k := c.keys[string(pub)]
	c.mu.Unlock()
	if k != nil {
		return k
	}
	k, err := voi.NewExpandedPublicKey(voi.PublicKey(pub))
	if err != nil {
		return nil
	}
	c.mu.Lock()
	if len(c.keys) >= c.max {
		// Full: forget some key (map order is random enough; a hot key
		// that goes is expanded again on its next request).
		for old := range c.keys {
			delete(c.keys, old)
			break
		}
	}
	c.keys[string(pub)] = k
	c.mu.Unlock()
	return k
}

package kez

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"strings"

	"filippo.io/edwards25519"
	"filippo.io/edwards25519/field"
)

// PrimaryPrefix starts every primary: "ed25519:" followed by 64 lowercase hex digits.
const PrimaryPrefix = "ed25519:"

// ErrInvalidKey is returned for a public key that is not a usable Ed25519 point.
var ErrInvalidKey = errors.New("not a valid ed25519 public key")

// ParsePrimary checks that s is "ed25519:<64 lowercase hex>" naming a valid
// curve point that is not of small order, and returns the key.
func ParsePrimary(s string) (ed25519.PublicKey, error) {
	hexPart, ok := strings.CutPrefix(s, PrimaryPrefix)
	if !ok || len(hexPart) != 64 || !isLowerHex(hexPart) {
		return nil, Errorf(CodeInvalidKey, "primary must be %q followed by 64 lowercase hex digits", PrimaryPrefix)
	}
	pub, _ := hex.DecodeString(hexPart)
	if _, err := EdwardsToMontgomery(pub); err != nil {
		return nil, Errorf(CodeInvalidKey, "primary is not a valid ed25519 point of large order")
	}
	return ed25519.PublicKey(pub), nil
}

// FormatPrimary writes a public key as a primary.
func FormatPrimary(pub ed25519.PublicKey) string { return PrimaryPrefix + hex.EncodeToString(pub) }

// WellFormedPrimary reports whether s has the primary syntax, without the
// (costlier) curve checks. Lookups use it: a stored primary was checked at registration.
func WellFormedPrimary(s string) bool {
	h, ok := strings.CutPrefix(s, PrimaryPrefix)
	return ok && len(h) == 64 && isLowerHex(h)
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// EdwardsToMontgomery converts an Ed25519 public key to its X25519 form,
// u = (1+y)/(1-y) mod p. It rejects encodings that are not canonical, that do
// not decode to a curve point, and points of small order.
func EdwardsToMontgomery(pub []byte) ([]byte, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, ErrInvalidKey
	}
	var pt edwards25519.Point
	if _, err := pt.SetBytes(pub); err != nil || !canonicalY(pub) {
		return nil, ErrInvalidKey
	}
	// Small order (1, 2, 4 or 8): eight times the point is the identity.
	// This also refuses x = 0 with the sign bit set, which SetBytes
	// accepts: x = 0 only at the identity and the point of order 2.
	var p8 edwards25519.Point
	if p8.MultByCofactor(&pt).Equal(identity) == 1 {
		return nil, ErrInvalidKey
	}
	return pt.BytesMontgomery(), nil
}

var identity = edwards25519.NewIdentityPoint()

// canonicalY reports whether the y in pub is below p: it is when y
// re-encodes to itself (SetBytes reduces y ≥ p, and ignores the sign bit).
func canonicalY(pub []byte) bool {
	var y field.Element
	if _, err := y.SetBytes(pub); err != nil {
		return false
	}
	enc := y.Bytes()
	return bytes.Equal(enc[:31], pub[:31]) && enc[31] == pub[31]&0x7f
}

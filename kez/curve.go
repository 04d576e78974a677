package kez

import (
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"math/big"
	"strings"
)

// PrimaryPrefix starts every primary: "ed25519:" followed by 64 lowercase hex digits.
const PrimaryPrefix = "ed25519:"

var (
	fieldP = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
	// edwardsD is -121665/121666 mod p, the twisted Edwards curve constant.
	edwardsD = func() *big.Int {
		num := new(big.Int).Sub(fieldP, big.NewInt(121665))
		den := new(big.Int).ModInverse(big.NewInt(121666), fieldP)
		return num.Mul(num, den).Mod(num, fieldP)
	}()
	// smallOrderU are the Montgomery u-coordinates of the points of order 2, 4
	// and 8 (the identity has no u-coordinate and is caught before).
	smallOrderU = []*big.Int{
		big.NewInt(0),
		big.NewInt(1),
		mustBig("325606250916557431795983626356110631294008115727848805560023387167927233504"),
		mustBig("39382357235489614581723060781553021112529911719440698176882885853963445705823"),
	}
)

func mustBig(s string) *big.Int {
	n, ok := new(big.Int).SetString(s, 10)
	if !ok {
		panic("kez: bad constant " + s)
	}
	return n
}

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
	le := make([]byte, 32)
	copy(le, pub)
	sign := le[31] >> 7
	le[31] &= 0x7f
	y := new(big.Int).SetBytes(reverse(le))
	if y.Cmp(fieldP) >= 0 {
		return nil, ErrInvalidKey // non-canonical y
	}
	// x² = (y² − 1) / (d·y² + 1); the point exists only if that is a square.
	y2 := new(big.Int).Mul(y, y)
	y2.Mod(y2, fieldP)
	num := new(big.Int).Sub(y2, big.NewInt(1))
	num.Mod(num, fieldP)
	den := new(big.Int).Mul(edwardsD, y2)
	den.Add(den, big.NewInt(1)).Mod(den, fieldP)
	x2 := new(big.Int).Mul(num, new(big.Int).ModInverse(den, fieldP))
	x2.Mod(x2, fieldP)
	if x2.Sign() == 0 {
		if sign == 1 {
			return nil, ErrInvalidKey // x = 0 has no negative encoding
		}
	} else if new(big.Int).ModSqrt(x2, fieldP) == nil {
		return nil, ErrInvalidKey
	}
	one := big.NewInt(1)
	if y.Cmp(one) == 0 {
		return nil, ErrInvalidKey // the identity
	}
	u := new(big.Int).Add(one, y)
	oneMinusY := new(big.Int).Sub(one, y)
	oneMinusY.Mod(oneMinusY, fieldP)
	u.Mul(u, new(big.Int).ModInverse(oneMinusY, fieldP)).Mod(u, fieldP)
	for _, bad := range smallOrderU {
		if u.Cmp(bad) == 0 {
			return nil, ErrInvalidKey
		}
	}
	out := make([]byte, 32)
	u.FillBytes(out)
	return reverse(out), nil
}

func reverse(b []byte) []byte {
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return b
}

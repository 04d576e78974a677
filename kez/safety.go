package kez

import (
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"strings"
)

// SafetyIterations is how many times each key is hashed (SPEC §6).
const SafetyIterations = 5200

// SafetyDigits is the 30-digit half of a safety number that belongs to one
// key (SPEC §6): h = K, then SafetyIterations times h = SHA-512(h ‖ K); the
// first 30 bytes of h as six 5-byte big-endian integers, each mod 100000,
// written as 5 digits.
func SafetyDigits(pub ed25519.PublicKey) string {
	h := []byte(pub)
	buf := make([]byte, 0, sha512.Size+len(pub))
	for range SafetyIterations {
		buf = append(append(buf[:0], h...), pub...)
		sum := sha512.Sum512(buf)
		h = sum[:]
	}
	var b strings.Builder
	for i := range 6 {
		var chunk [8]byte
		copy(chunk[3:], h[5*i:5*i+5])
		fmt.Fprintf(&b, "%05d", binary.BigEndian.Uint64(chunk[:])%100000)
	}
	return b.String()
}

// SafetyNumber is the 60-digit safety number of two primaries (SPEC §6):
// the two halves in ascending order, so both users see the same number.
func SafetyNumber(a, b string) (string, error) {
	ka, err := ParsePrimary(a)
	if err != nil {
		return "", err
	}
	kb, err := ParsePrimary(b)
	if err != nil {
		return "", err
	}
	da, db := SafetyDigits(ka), SafetyDigits(kb)
	if db < da {
		da, db = db, da
	}
	return da + db, nil
}

// SafetyGroups splits a safety number into groups of 5 digits (12 for 60).
func SafetyGroups(number string) []string {
	groups := make([]string, 0, (len(number)+4)/5)
	for len(number) > 5 {
		groups = append(groups, number[:5])
		number = number[5:]
	}
	if number != "" {
		groups = append(groups, number)
	}
	return groups
}

package kez

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"math/big"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"

	"filippo.io/edwards25519"
)

// The math/big constants, as package variables so that the benchmark
// measures the old conversion as it ran.
var (
	bigP = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
	// bigD is -121665/121666 mod p, the twisted Edwards curve constant.
	bigD = func() *big.Int {
		num := new(big.Int).Sub(bigP, big.NewInt(121665))
		den := new(big.Int).ModInverse(big.NewInt(121666), bigP)
		return num.Mul(num, den).Mod(num, bigP)
	}()
	// bigSmallOrderU are the Montgomery u-coordinates of the points of order 2, 4 and 8.
	bigSmallOrderU = func() []*big.Int {
		u8a, _ := new(big.Int).SetString("325606250916557431795983626356110631294008115727848805560023387167927233504", 10)
		u8b, _ := new(big.Int).SetString("39382357235489614581723060781553021112529911719440698176882885853963445705823", 10)
		return []*big.Int{big.NewInt(0), big.NewInt(1), u8a, u8b}
	}()
)

// edwardsToMontgomeryBig is the math/big conversion EdwardsToMontgomery
// used before it was built on filippo.io/edwards25519, kept as the oracle
// of TestEdwardsToMontgomeryMatchesBig: u = (1+y)/(1−y) mod p after
// rejecting a non-canonical y, a y with no x, x = 0 with the sign bit set,
// and the points of order 1, 2, 4 and 8.
func edwardsToMontgomeryBig(pub []byte) ([]byte, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, ErrInvalidKey
	}
	p, d, smallOrderU := bigP, bigD, bigSmallOrderU
	le := bytes.Clone(pub)
	sign := le[31] >> 7
	le[31] &= 0x7f
	y := new(big.Int).SetBytes(reverseBytes(le))
	if y.Cmp(p) >= 0 {
		return nil, ErrInvalidKey
	}
	y2 := new(big.Int).Mul(y, y)
	y2.Mod(y2, p)
	num := new(big.Int).Sub(y2, big.NewInt(1))
	num.Mod(num, p)
	den := new(big.Int).Mul(d, y2)
	den.Add(den, big.NewInt(1)).Mod(den, p)
	x2 := new(big.Int).Mul(num, new(big.Int).ModInverse(den, p))
	x2.Mod(x2, p)
	if x2.Sign() == 0 {
		if sign == 1 {
			return nil, ErrInvalidKey
		}
	} else if new(big.Int).ModSqrt(x2, p) == nil {
		return nil, ErrInvalidKey
	}
	one := big.NewInt(1)
	if y.Cmp(one) == 0 {
		return nil, ErrInvalidKey
	}
	u := new(big.Int).Add(one, y)
	oneMinusY := new(big.Int).Sub(one, y)
	oneMinusY.Mod(oneMinusY, p)
	u.Mul(u, new(big.Int).ModInverse(oneMinusY, p)).Mod(u, p)
	for _, bad := range smallOrderU {
		if u.Cmp(bad) == 0 {
			return nil, ErrInvalidKey
		}
	}
	out := make([]byte, 32)
	u.FillBytes(out)
	return reverseBytes(out), nil
}

func reverseBytes(b []byte) []byte {
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return b
}

// torsionPoints are the eight points of order dividing 8, from a point of
// order 8 (RFC 8032's small-order list) and its multiples.
func torsionPoints(t testing.TB) []*edwards25519.Point {
	t.Helper()
	enc, _ := hex.DecodeString("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
	g, err := new(edwards25519.Point).SetBytes(enc)
	if err != nil {
		t.Fatal(err)
	}
	pts := []*edwards25519.Point{edwards25519.NewIdentityPoint()}
	for i := 1; i < 8; i++ {
		pts = append(pts, new(edwards25519.Point).Add(pts[i-1], g))
	}
	if new(edwards25519.Point).Add(pts[7], g).Equal(edwards25519.NewIdentityPoint()) != 1 {
		t.Fatal("the order-8 point is not of order 8")
	}
	return pts
}

// curveEdgeEncodings are the encodings where a conversion is most likely to
// go wrong: y near 0, 1, p−1 and p, every non-canonical y (p … 2^255−1),
// the small-order points and their non-canonical forms, each with both sign bits.
func curveEdgeEncodings(t testing.TB) [][]byte {
	p := bigP
	var ys []*big.Int
	for i := int64(0); i < 64; i++ {
		ys = append(ys, big.NewInt(i), new(big.Int).Sub(p, big.NewInt(i+1)))
	}
	for i := int64(0); i < 19; i++ {
		ys = append(ys, new(big.Int).Add(p, big.NewInt(i))) // y ≥ p: not canonical
	}
	for _, tp := range torsionPoints(t) {
		enc := tp.Bytes()
		enc[31] &= 0x7f
		y := new(big.Int).SetBytes(reverseBytes(enc))
		ys = append(ys, y, new(big.Int).Sub(p, y), new(big.Int).Add(y, big.NewInt(1)))
		if alt := new(big.Int).Add(y, p); alt.BitLen() <= 255 {
			ys = append(ys, alt)
		}
	}
	var out [][]byte
	for _, y := range ys {
		enc := make([]byte, 32)
		y.FillBytes(enc)
		reverseBytes(enc)
		neg := bytes.Clone(enc)
		neg[31] |= 0x80
		out = append(out, enc, neg)
	}
	return out
}

// randomEncoding returns random bytes (about half are points), a random
// point of large order, or one plus a torsion point (mixed order, accepted).
func randomEncoding(r *rand.Rand, torsion []*edwards25519.Point) []byte {
	var b [64]byte
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	switch r.IntN(4) {
	case 0, 1:
		return b[:32]
	default:
		s, _ := edwards25519.NewScalar().SetUniformBytes(b[:])
		pt := new(edwards25519.Point).ScalarBaseMult(s)
		if b[0]&1 == 1 {
			pt.Add(pt, torsion[r.IntN(len(torsion))])
		}
		return pt.Bytes()
	}
}

// TestEdwardsToMontgomeryMatchesBig checks the conversion against the
// math/big one it replaced on the edge encodings and on random ones:
// 1,000 by default, KEZ_CURVE_DIFF=200000 for the full run.
func TestEdwardsToMontgomeryMatchesBig(t *testing.T) {
	n := 1000
	if s := os.Getenv("KEZ_CURVE_DIFF"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			t.Fatal(err)
		}
	}
	torsion := torsionPoints(t)
	inputs := curveEdgeEncodings(t)
	edges := len(inputs)
	r := rand.New(rand.NewPCG(1, 2))
	for range n {
		inputs = append(inputs, randomEncoding(r, torsion))
	}
	inputs = append(inputs, nil, make([]byte, 31), make([]byte, 33))
	var accepted, refused int
	for _, in := range inputs {
		want, wantErr := edwardsToMontgomeryBig(in)
		got, err := EdwardsToMontgomery(in)
		if (err == nil) != (wantErr == nil) || !bytes.Equal(got, want) {
			t.Fatalf("EdwardsToMontgomery(%x) = %x, %v; the math/big one gives %x, %v", in, got, err, want, wantErr)
		}
		if err == nil {
			accepted++
		} else {
			refused++
		}
	}
	t.Logf("%d edge + %d random encodings: %d accepted, %d refused, all as the math/big conversion", edges, n, accepted, refused)
}

func BenchmarkEdwardsToMontgomery(b *testing.B) {
	pub := loadVectors(b).Alice.Public
	in, _ := hex.DecodeString(pub)
	b.Run("edwards25519", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := EdwardsToMontgomery(in); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("math-big", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := edwardsToMontgomeryBig(in); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// FuzzEdwardsToMontgomery compares the conversion with the math/big one on
// any 32 bytes (go test -fuzz=FuzzEdwardsToMontgomery ./kez).
func FuzzEdwardsToMontgomery(f *testing.F) {
	for _, in := range curveEdgeEncodings(f) {
		f.Add(in)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		want, wantErr := edwardsToMontgomeryBig(in)
		got, err := EdwardsToMontgomery(in)
		if (err == nil) != (wantErr == nil) || !bytes.Equal(got, want) {
			t.Fatalf("EdwardsToMontgomery(%x) = %x, %v; the math/big one gives %x, %v", in, got, err, want, wantErr)
		}
	})
}

package kez

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"fmt"
	"math/big"
	"sync"
	"testing"

	"filippo.io/edwards25519"
)

// A corpus of hostile signatures, each with crypto/ed25519's answer, for
// the AuthVerifier's tests (authverify_test.go). The points and signatures
// are built with filippo.io/edwards25519, independently of the library the
// AuthVerifier uses.

// groupOrder is L = 2^252 + 27742317777372353535851937790883648493.
var groupOrder, _ = new(big.Int).SetString("7237005577332262213973186563042994240857116359379907606001950938285454250989", 10)

func leBytes(n *big.Int) []byte {
	be := n.FillBytes(make([]byte, 32))
	for i, j := 0, 31; i < j; i, j = i+1, j-1 {
		be[i], be[j] = be[j], be[i]
	}
	return be
}

func leInt(b []byte) *big.Int {
	be := bytes.Clone(b)
	for i, j := 0, len(be)-1; i < j; i, j = i+1, j-1 {
		be[i], be[j] = be[j], be[i]
	}
	return new(big.Int).SetBytes(be)
}

func randScalar(t testing.TB) *edwards25519.Scalar {
	var b [64]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	s, _ := edwards25519.NewScalar().SetUniformBytes(b[:])
	return s
}

// challenge is k = SHA-512(R || A || msg) mod L.
func challenge(r, a, msg []byte) *edwards25519.Scalar {
	h := sha512.New()
	h.Write(r)
	h.Write(a)
	h.Write(msg)
	k, _ := edwards25519.NewScalar().SetUniformBytes(h.Sum(nil))
	return k
}

// torsion returns the 8 points of small order, T[j] = [j]T8 for a point T8
// of order 8.
func torsion(t *testing.T) []*edwards25519.Point {
	lMinus1 := leBytes(new(big.Int).Sub(groupOrder, big.NewInt(1)))
	lm1, err := edwards25519.NewScalar().SetCanonicalBytes(lMinus1)
	if err != nil {
		t.Fatal(err)
	}
	for {
		var enc [32]byte
		if _, err := rand.Read(enc[:]); err != nil {
			t.Fatal(err)
		}
		p, err := new(edwards25519.Point).SetBytes(enc[:])
		if err != nil {
			continue
		}
		// [L]P keeps only P's torsion part.
		t8 := new(edwards25519.Point).ScalarMult(lm1, p)
		t8.Add(t8, p)
		four := new(edwards25519.Point).Add(t8, t8)
		four.Add(four, four)
		if four.Equal(edwards25519.NewIdentityPoint()) == 1 {
			continue // order below 8
		}
		out := []*edwards25519.Point{edwards25519.NewIdentityPoint()}
		for j := 1; j < 8; j++ {
			out = append(out, new(edwards25519.Point).Add(out[j-1], t8))
		}
		return out
	}
}

// encodings returns the canonical encoding of p and every non-canonical
// one: y + p for y < 19 and the sign bit set for x = 0, each with both
// sign bits.
func encodings(p *edwards25519.Point) [][]byte {
	c := p.Bytes()
	out := [][]byte{c}
	flipped := bytes.Clone(c)
	flipped[31] ^= 0x80
	out = append(out, flipped) // the other sign: non-canonical when x = 0, else another point
	y := leInt(append(bytes.Clone(c[:31]), c[31]&0x7f))
	if y.Cmp(big.NewInt(19)) < 0 {
		fieldP := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
		alt := leBytes(new(big.Int).Add(y, fieldP))
		for _, sign := range []byte{0, 0x80} {
			e := bytes.Clone(alt)
			e[31] |= sign
			out = append(out, e)
		}
	}
	return out
}

// nonCanonicalY are the 38 encodings whose y is p + 0 … p + 18, both signs,
// whether or not they decode.
func nonCanonicalY() [][]byte {
	fieldP := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
	var out [][]byte
	for y := int64(0); y < 19; y++ {
		e := leBytes(new(big.Int).Add(fieldP, big.NewInt(y)))
		out = append(out, e)
		neg := bytes.Clone(e)
		neg[31] |= 0x80
		out = append(out, neg)
	}
	return out
}

type diffTest struct {
	t        *testing.T
	accepted map[string]int
	refused  map[string]int
	cases    []sigCase // every case checked
}

type sigCase struct {
	category      string
	pub, msg, sig []byte
	stdlib        bool // crypto/ed25519's answer
}

func (d *diffTest) check(category string, pub, msg, sig []byte) {
	d.t.Helper()
	want := len(pub) == ed25519.PublicKeySize && ed25519.Verify(pub, msg, sig)
	d.cases = append(d.cases, sigCase{category, pub, msg, sig, want})
	if want {
		d.accepted[category]++
	} else {
		d.refused[category]++
	}
}

func (d *diffTest) expect(category string, accepted, refused bool) {
	d.t.Helper()
	if accepted && d.accepted[category] == 0 {
		d.t.Errorf("%s: no case was accepted (the test does not test what it says)", category)
	}
	if refused && d.refused[category] == 0 {
		d.t.Errorf("%s: no case was refused (the test does not test what it says)", category)
	}
}

// TestSignatureCorpus: the corpus has, in every category, the answers of
// crypto/ed25519 it is meant to have (signatureCases checks them).
func TestSignatureCorpus(t *testing.T) {
	d := signatureCases(t)
	t.Logf("accepted %v", d.accepted)
	t.Logf("refused %v", d.refused)
}

// signatureCases builds the corpus with crypto/ed25519's answers and checks
// that each category is accepted and refused where it should be.
func signatureCases(t *testing.T) *diffTest {
	d := &diffTest{t: t, accepted: map[string]int{}, refused: map[string]int{}}
	T := torsion(t)
	msgs := make([][]byte, 24)
	for i := range msgs {
		msgs[i] = fmt.Appendf(nil, "kez-auth-v2\nkez.test\nPOST\n/v1/messages\n\n%064x\n%d", i, 1764115200+i)
	}

	// Honest keys and signatures, and every single-bit change of them.
	for i := range 16 {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		msg := msgs[i%len(msgs)]
		sig := ed25519.Sign(priv, msg)
		d.check("valid", pub, msg, sig)
		for bit := range 8 * len(sig) {
			if i > 1 && bit%7 != 0 {
				continue
			}
			bad := bytes.Clone(sig)
			bad[bit/8] ^= 1 << (bit % 8)
			d.check("flipped signature bit", pub, msg, bad)
		}
		for bit := range 8 * len(pub) {
			if i > 1 && bit%7 != 0 {
				continue
			}
			bad := bytes.Clone(pub)
			bad[bit/8] ^= 1 << (bit % 8)
			d.check("flipped key bit", bad, msg, sig)
		}
		d.check("other message", pub, msgs[(i+1)%len(msgs)], sig)
		d.check("truncated signature", pub, msg, sig[:63])
		d.check("long signature", pub, msg, append(bytes.Clone(sig), 0))
		d.check("empty signature", pub, msg, nil)

		// Non-canonical S: S + nL, up to the top bits.
		s := leInt(sig[32:])
		for n := int64(1); n < 16; n++ {
			sn := new(big.Int).Add(s, new(big.Int).Mul(groupOrder, big.NewInt(n)))
			if sn.BitLen() > 256 {
				break
			}
			bad := append(bytes.Clone(sig[:32]), leBytes(sn)...)
			d.check("non-canonical S (S+nL)", pub, msg, bad)
		}
		bad := bytes.Clone(sig)
		bad[63] |= 0xe0
		d.check("S with top bits set", pub, msg, bad)
	}
	d.expect("valid", true, false)
	d.expect("flipped signature bit", false, true)
	d.expect("non-canonical S (S+nL)", false, true)

	// A key with a small-order part, A = aB + T: the standard library
	// accepts S = r + k·a only when [k]T = 0.
	for j := 1; j < 8; j++ {
		for m := range 12 {
			a := randScalar(t)
			A := new(edwards25519.Point).ScalarBaseMult(a)
			A.Add(A, T[j])
			r := randScalar(t)
			R := new(edwards25519.Point).ScalarBaseMult(r)
			k := challenge(R.Bytes(), A.Bytes(), msgs[m])
			S := edwards25519.NewScalar().MultiplyAdd(k, a, r)
			d.check("mixed-order A", A.Bytes(), msgs[m], append(R.Bytes(), S.Bytes()...))
		}
	}
	d.expect("mixed-order A", true, true)

	// R with a small-order part, R = rB + T, S = r + k·a: valid under the
	// cofactored equation (what batch verification checks), refused by the
	// standard library (ZIP-215, the AuthVerifier's rule, accepts it).
	for j := 1; j < 8; j++ {
		for m := range 4 {
			a := randScalar(t)
			A := new(edwards25519.Point).ScalarBaseMult(a)
			r := randScalar(t)
			R := new(edwards25519.Point).ScalarBaseMult(r)
			R.Add(R, T[j])
			k := challenge(R.Bytes(), A.Bytes(), msgs[m])
			S := edwards25519.NewScalar().MultiplyAdd(k, a, r)
			d.check("mixed-order R", A.Bytes(), msgs[m], append(R.Bytes(), S.Bytes()...))
		}
	}
	d.expect("mixed-order R", false, true)

	// Small-order A in every encoding: with R = sB and S = s the equation
	// holds when [k]A = 0, so some are accepted. Small-order R with S = 0
	// and every small-order A: R must be the encoding of -[k]A.
	var smallEnc [][]byte
	for _, p := range T {
		smallEnc = append(smallEnc, encodings(p)...)
	}
	for _, aEnc := range smallEnc {
		for m := range 6 {
			s := randScalar(t)
			R := new(edwards25519.Point).ScalarBaseMult(s).Bytes()
			d.check("small-order A", aEnc, msgs[m], append(R, s.Bytes()...))
		}
		for _, rEnc := range smallEnc {
			d.check("small-order A and R, S = 0", aEnc, msgs[0], append(bytes.Clone(rEnc), make([]byte, 32)...))
		}
	}
	d.expect("small-order A", true, true)
	d.expect("small-order A and R, S = 0", true, true)

	// Small-order R with an honest key: S = k·a makes [S]B - [k]A the
	// identity, so only the identity's canonical encoding is accepted; its
	// non-canonical encodings and the other small points are refused.
	for _, rEnc := range smallEnc {
		a := randScalar(t)
		A := new(edwards25519.Point).ScalarBaseMult(a).Bytes()
		k := challenge(rEnc, A, msgs[1])
		S := edwards25519.NewScalar().Multiply(k, a)
		d.check("small-order R", A, msgs[1], append(bytes.Clone(rEnc), S.Bytes()...))
	}
	d.expect("small-order R", true, true)

	// Encodings with y >= p, as keys and as R.
	for _, enc := range nonCanonicalY() {
		s := randScalar(t)
		R := new(edwards25519.Point).ScalarBaseMult(s).Bytes()
		d.check("non-canonical A", enc, msgs[2], append(R, s.Bytes()...))
		a := randScalar(t)
		A := new(edwards25519.Point).ScalarBaseMult(a).Bytes()
		k := challenge(enc, A, msgs[2])
		S := edwards25519.NewScalar().Multiply(k, a)
		d.check("non-canonical R", A, msgs[2], append(bytes.Clone(enc), S.Bytes()...))
	}
	d.expect("non-canonical R", false, true)

	// Keys that are not points.
	notPoints := 0
	for notPoints < 16 {
		var enc [32]byte
		if _, err := rand.Read(enc[:]); err != nil {
			t.Fatal(err)
		}
		if _, err := new(edwards25519.Point).SetBytes(enc[:]); err == nil {
			continue
		}
		notPoints++
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		d.check("key not a point", enc[:], msgs[4], ed25519.Sign(priv, msgs[4]))
	}
	d.expect("key not a point", false, true)
	return d
}

// TestKeyCacheConcurrent checks keys being expanded, used and evicted by
// many goroutines at once (run with -race).
func TestKeyCacheConcurrent(t *testing.T) {
	a := NewAuthVerifier(3, 0)
	type signed struct{ pub, msg, sig []byte }
	var all []signed
	for i := range 8 {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		msg := fmt.Appendf(nil, "message %d", i)
		all = append(all, signed{pub, msg, ed25519.Sign(priv, msg)})
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 40 {
				s := all[(g+i)%len(all)]
				if !a.Verify(s.pub, s.msg, s.sig) {
					t.Errorf("valid signature %d refused", (g+i)%len(all))
				}
				if a.Verify(s.pub, append(bytes.Clone(s.msg), '!'), s.sig) {
					t.Errorf("signature %d accepted for another message", (g+i)%len(all))
				}
			}
		})
	}
	wg.Wait()
	if n := len(a.keys.keys); n > 3 {
		t.Errorf("%d keys kept, want at most 3", n)
	}
	if a.Verify(all[0].pub[:31], all[0].msg, all[0].sig) {
		t.Error("a 31-byte key verified")
	}
}

package kez

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/edwards25519"
)

// zip215Reference is ZIP-215's rule written with filippo.io/edwards25519,
// independently of the library AuthVerifier uses: A and R decoded even
// from non-canonical encodings, S canonical, [8]([S]B - R - [k]A) = 0 with
// k hashed from the encodings as sent.
func zip215Reference(pub, msg, sig []byte) bool {
	if len(pub) != 32 || len(sig) != 64 {
		return false
	}
	A, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil {
		return false
	}
	R, err := new(edwards25519.Point).SetBytes(sig[:32])
	if err != nil {
		return false
	}
	S, err := edwards25519.NewScalar().SetCanonicalBytes(sig[32:])
	if err != nil {
		return false
	}
	negK := edwards25519.NewScalar().Negate(challenge(sig[:32], pub, msg))
	P := new(edwards25519.Point).VarTimeDoubleScalarBaseMult(negK, A, S)
	P.Subtract(P, R)
	P.MultByCofactor(P)
	return P.Equal(edwards25519.NewIdentityPoint()) == 1
}

// AuthVerifier answers as ZIP-215 on every case of the signature
// corpus (signatureCases), each checked in batches with random others (good and bad), so an
// answer never depends on its batch mates. ZIP-215 accepts everything
// crypto/ed25519 accepts; what it accepts beyond that has a small-order
// component or a non-canonical encoding (which only exist for y < 19,
// where the small-order points are).
func TestAuthVerifierIsZIP215(t *testing.T) {
	cases := signatureCases(t).cases
	beyond := map[string]int{}
	for _, c := range cases {
		want := zip215Reference(c.pub, c.msg, c.sig)
		if c.stdlib && !want {
			t.Errorf("%s: crypto/ed25519 accepts, ZIP-215 refuses\npub %x\nsig %x", c.category, c.pub, c.sig)
		}
		if want && !c.stdlib {
			beyond[c.category]++
		}
	}
	for category := range beyond {
		switch category {
		case "mixed-order A", "mixed-order R", "small-order A", "small-order A and R, S = 0", "small-order R", "non-canonical R", "non-canonical A":
		default:
			t.Errorf("ZIP-215 accepts %q cases that crypto/ed25519 refuses", category)
		}
	}
	if beyond["mixed-order R"] == 0 {
		t.Error("no mixed-order R was accepted: the test does not test what it says")
	}
	t.Logf("accepted beyond crypto/ed25519: %v", beyond)

	a := NewAuthVerifier(8, 2*time.Millisecond)
	a.BatchAlways()
	for round := range 2 {
		order := mrand.Perm(len(cases))
		var wg sync.WaitGroup
		for i := 0; i < len(order); {
			n := min(1+mrand.IntN(24), len(order)-i) // a group checked at once
			for _, ci := range order[i : i+n] {
				wg.Go(func() {
					c := cases[ci]
					if got, want := a.Verify(c.pub, c.msg, c.sig), zip215Reference(c.pub, c.msg, c.sig); got != want {
						t.Errorf("round %d, %s: AuthVerifier says %v, ZIP-215 %v\npub %x\nsig %x", round, c.category, got, want, c.pub, c.sig)
					}
				})
			}
			wg.Wait()
			i += n
		}
	}
	if a.batches.Load() == 0 {
		t.Error("nothing was checked in a batch")
	}
	t.Logf("%d cases × 2 in %d batches", len(cases), a.batches.Load())
}

// A batch with one forgery in it: the forgery is refused, the others
// accepted; and a quiet AuthVerifier checks at once, without waiting.
func TestAuthVerifierBatchWithForgery(t *testing.T) {
	a := NewAuthVerifier(0, time.Hour) // a batch starts when full
	a.alwaysBatch = true               // but a failed one pauses batching
	type sig struct {
		pub, msg, sig []byte
		good          bool
	}
	var sigs []sig
	for i := range authBatchTarget {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		msg := fmt.Appendf(nil, "message %d", i)
		s := ed25519.Sign(priv, msg)
		good := i != 5
		if !good {
			s[10] ^= 1
		}
		sigs = append(sigs, sig{pub, msg, s, good})
	}
	var wg sync.WaitGroup
	for _, s := range sigs {
		wg.Go(func() {
			if got := a.Verify(s.pub, s.msg, s.sig); got != s.good {
				t.Errorf("%q: %v, want %v", s.msg, got, s.good)
			}
		})
	}
	wg.Wait()
	if a.batches.Load() != 1 {
		t.Errorf("%d batches, want 1", a.batches.Load())
	}
	// That batch failed: for a while, each signature is checked at once
	// (with a linger of an hour, waiting would hang the test).
	answersAtOnce(t, a, sigs[0].pub, sigs[0].msg, sigs[0].sig, "after a failed batch")

	quiet := NewAuthVerifier(0, time.Hour)
	answersAtOnce(t, quiet, sigs[0].pub, sigs[0].msg, sigs[0].sig, "on a quiet verifier")
	if quiet.Verify(sigs[0].pub[:31], sigs[0].msg, sigs[0].sig) || quiet.Verify(sigs[0].pub, sigs[0].msg, sigs[0].sig[:63]) {
		t.Error("a short key or signature verified")
	}
}

// answersAtOnce checks that a accepts a valid signature without waiting
// for batch mates (a's linger is an hour).
func answersAtOnce(t *testing.T, a *AuthVerifier, pub, msg, sig []byte, when string) {
	t.Helper()
	done := make(chan bool)
	go func() { done <- a.Verify(pub, msg, sig) }()
	select {
	case ok := <-done:
		if !ok {
			t.Errorf("a valid signature refused %s", when)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s, a signature still waited for batch mates", when)
	}
}

// TestVerifyWithMatchesVerify: Request.VerifyWith gives Request.Verify's
// answers and errors.
func TestVerifyWithMatchesVerify(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Unix(1764115200, 0)
	req := Request{Server: "kez.test", Method: "POST", Path: "/v1/messages", Body: []byte(`{"to":"bob"}`)}
	good := req.Sign(priv, now)
	ts, sigHex, _ := strings.Cut(good, ":")
	v := NewAuthVerifier(0, DefaultAuthLinger)
	for _, c := range []struct {
		name, value string
		key         ed25519.PublicKey
		at          time.Time
	}{
		{"good", good, pub, now},
		{"skew edge", good, pub, now.Add(60 * time.Second)},
		{"stale", good, pub, now.Add(61 * time.Second)},
		{"other key", good, other, now},
		{"short key", good, pub[:31], now},
		{"malformed", "x", pub, now},
		{"upper-case hex", ts + ":" + strings.ToUpper(sigHex), pub, now},
		{"wrong signature", ts + ":" + hex.EncodeToString(make([]byte, 64)), pub, now},
	} {
		ts1, msg1, err1 := req.Verify(c.key, c.value, c.at, 60*time.Second)
		ts2, msg2, err2 := req.VerifyWith(v, c.key, c.value, c.at, 60*time.Second)
		if ts1 != ts2 || !bytes.Equal(msg1, msg2) || fmt.Sprint(err1) != fmt.Sprint(err2) {
			t.Errorf("%s: Verify = %d, %q, %v; VerifyWith = %d, %q, %v", c.name, ts1, msg1, err1, ts2, msg2, err2)
		}
		if (err1 == nil) != (c.name == "good" || c.name == "skew edge") {
			t.Errorf("%s: %v", c.name, err1)
		}
	}
}

// BenchmarkAuthVerifier: the cost per signature of checking n at once
// (n = 1: one at a time), the waiting for batch mates left out.
func BenchmarkAuthVerifier(b *testing.B) {
	keys := newKeyCache(0)
	var jobs []*authJob
	for i := range authBatchTarget {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		msg := fmt.Appendf(nil, "kez-auth-v2\nkez.test\nPOST\n/v1/messages\n\n%064x\n%d", i, 1764115200+i)
		jobs = append(jobs, &authJob{key: keys.expanded(pub), msg: msg, sig: ed25519.Sign(priv, msg)})
	}
	for _, n := range []int{1, 4, 8, 16} {
		b.Run(fmt.Sprintf("batch-%d", n), func(b *testing.B) {
			for b.Loop() {
				checkBatch(jobs[:n])
				for _, j := range jobs[:n] {
					if !j.ok {
						b.Fatal("refused")
					}
					j.ok = false
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n)/1000, "µs/sig")
		})
	}
	// A forgery in every batch: what an attacker makes the honest pay.
	forged := *jobs[0]
	forged.sig = bytes.Clone(forged.sig)
	forged.sig[3] ^= 1
	b.Run("batch-8-one-forged", func(b *testing.B) {
		batch := append([]*authJob{&forged}, jobs[1:8]...)
		for b.Loop() {
			checkBatch(batch)
			if batch[0].ok || !batch[1].ok {
				b.Fatal("wrong answers")
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*8)/1000, "µs/sig")
	})
}

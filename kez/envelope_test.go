package kez

import (
	"bytes"
	"crypto/ecdh"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/gowebpki/jcs"
)

func vectorKeys(t *testing.T, k vectorKey) *Keys {
	t.Helper()
	keys, err := NewKeys(mustHex(t, k.Seed))
	if err != nil {
		t.Fatal(err)
	}
	if keys.Primary() != k.Primary {
		t.Fatalf("primary = %s, want %s", keys.Primary(), k.Primary)
	}
	return keys
}

func vectorEnvelope(t *testing.T, v *vectors) *Envelope {
	t.Helper()
	var env Envelope
	if err := json.Unmarshal(v.Envelope.Envelope, &env); err != nil {
		t.Fatal(err)
	}
	return &env
}

func TestX25519KeyVectors(t *testing.T) {
	v := loadVectors(t)
	for _, k := range []vectorKey{v.Alice, v.Bob} {
		if got := hex.EncodeToString(X25519Secret(mustHex(t, k.Seed))); got != k.X25519Secret {
			t.Errorf("X25519Secret(%s) = %s, want %s", k.Seed, got, k.X25519Secret)
		}
		keys := vectorKeys(t, k)
		if got := hex.EncodeToString(keys.x25519.PublicKey().Bytes()); got != k.X25519Public {
			t.Errorf("X25519 public from secret = %s, want %s", got, k.X25519Public)
		}
		pub, err := x25519Public(k.Primary)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(pub.Bytes()); got != k.X25519Public {
			t.Errorf("X25519 public from primary = %s, want %s", got, k.X25519Public)
		}
	}
}

func TestSharedSecretAndKeyVectors(t *testing.T) {
	v := loadVectors(t)
	alice, bob := vectorKeys(t, v.Alice), vectorKeys(t, v.Bob)
	link, err := alice.LinkTo(v.Bob.Primary)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(link.shared); got != v.Envelope.SharedSecret {
		t.Errorf("alice->bob shared = %s, want %s", got, v.Envelope.SharedSecret)
	}
	back, err := bob.LinkTo(v.Alice.Primary)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back.shared, link.shared) {
		t.Error("bob->alice shared secret differs from alice->bob")
	}
	if string(link.aad) != v.Envelope.AAD {
		t.Errorf("aad = %q, want %q", link.aad, v.Envelope.AAD)
	}
	if v.Envelope.HKDFInfo != EnvelopeInfo {
		t.Errorf("vector hkdf info %q, ours %q", v.Envelope.HKDFInfo, EnvelopeInfo)
	}
	key, err := MessageKey(link.shared, mustHex(t, v.Envelope.NonceHex))
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(key); got != v.Envelope.AESKey {
		t.Errorf("aes key = %s, want %s", got, v.Envelope.AESKey)
	}
}

func TestSealVector(t *testing.T) {
	v := loadVectors(t)
	alice := vectorKeys(t, v.Alice)
	link, err := alice.LinkTo(v.Bob.Primary)
	if err != nil {
		t.Fatal(err)
	}
	env, err := link.SealWithNonce([]byte(v.Envelope.Plaintext), mustHex(t, v.Envelope.NonceHex))
	if err != nil {
		t.Fatal(err)
	}
	ct, err := base64.RawURLEncoding.DecodeString(env.CT)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(ct); got != v.Envelope.CiphertextHex {
		t.Errorf("ciphertext = %s, want %s", got, v.Envelope.CiphertextHex)
	}
	if got := string(env.SignedBytes()); got != v.Envelope.SignedBytesJCS {
		t.Errorf("signed bytes = %s, want %s", got, v.Envelope.SignedBytesJCS)
	}
	if want := vectorEnvelope(t, v); *env != *want {
		t.Errorf("envelope = %+v, want %+v", env, want)
	}
	// The hand-written JSON must be what encoding/json would write, and
	// must parse back to the vector.
	fast := env.AppendJSON(nil)
	slow, _ := json.Marshal(env)
	if !bytes.Equal(fast, slow) {
		t.Errorf("AppendJSON = %s, json.Marshal = %s", fast, slow)
	}
	var got, want map[string]any
	if err := json.Unmarshal(fast, &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(v.Envelope.Envelope, &want); err != nil {
		t.Fatal(err)
	}
	gotJSON, _ := json.Marshal(got)
	wantJSON, _ := json.Marshal(want)
	if !bytes.Equal(gotJSON, wantJSON) {
		t.Errorf("envelope JSON = %s, want %s", gotJSON, wantJSON)
	}
}

func TestSignedBytesAreJCS(t *testing.T) {
	v := loadVectors(t)
	env := vectorEnvelope(t, v)
	unsigned, _ := json.Marshal(map[string]any{"v": env.V, "from": env.From, "to": env.To, "nonce": env.Nonce, "ct": env.CT})
	canonical, err := jcs.Transform(unsigned)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(canonical, env.SignedBytes()) {
		t.Errorf("SignedBytes = %s, JCS = %s", env.SignedBytes(), canonical)
	}
}

func TestOpenVector(t *testing.T) {
	v := loadVectors(t)
	bob := vectorKeys(t, v.Bob)
	env, plain, err := bob.OpenJSON(v.Envelope.Envelope)
	if err != nil {
		t.Fatal(err)
	}
	if env.From != v.Alice.Primary {
		t.Errorf("from = %s, want alice", env.From)
	}
	if string(plain) != v.Envelope.Plaintext {
		t.Fatalf("plaintext = %s, want %s", plain, v.Envelope.Plaintext)
	}
	p, err := ParsePlaintext(plain)
	if err != nil {
		t.Fatal(err)
	}
	want := Plaintext{FromAddr: "alice@kez.example", ID: "m-0001", SentAt: 1764115200123, Text: "hello bob", Type: PlaintextText}
	if p != want {
		t.Errorf("plaintext = %+v, want %+v", p, want)
	}
	if string(p.Marshal()) != v.Envelope.Plaintext {
		t.Errorf("Marshal = %s, want %s", p.Marshal(), v.Envelope.Plaintext)
	}
	// Alice cannot open what she sent: it is addressed to bob.
	if _, _, err := vectorKeys(t, v.Alice).OpenJSON(v.Envelope.Envelope); !errors.Is(err, ErrUndecryptable) {
		t.Errorf("alice opened bob's envelope: %v", err)
	}
}

func TestSealOpenRoundTrip(t *testing.T) {
	alice, bob := GenerateKeys(), GenerateKeys()
	link, err := alice.LinkTo(bob.Primary())
	if err != nil {
		t.Fatal(err)
	}
	msg := NewTextMessage("alice@kez.example", "héllo <b>&\u2028 \"bob\"", 1764115200123)
	a, err := link.Seal(msg.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := link.Seal(msg.Marshal())
	if a.Nonce == b.Nonce || a.CT == b.CT {
		t.Error("two seals share a nonce or ciphertext")
	}
	_, plain, err := bob.OpenJSON(a.AppendJSON(nil))
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParsePlaintext(plain)
	if err != nil || got != msg {
		t.Errorf("round trip = %+v, %v; want %+v", got, err, msg)
	}
	if other := NewTextMessage("a@b", "x", 1); other.ID == msg.ID || len(msg.ID) < 16 {
		t.Errorf("message ids %q and %q are not unique enough", msg.ID, other.ID)
	}
}

// TestOpenRejectsTampering changes each field of the vector envelope and
// expects bob to refuse every variant.
func TestOpenRejectsTampering(t *testing.T) {
	v := loadVectors(t)
	bob := vectorKeys(t, v.Bob)
	carol := GenerateKeys()
	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
	flipCT := func(i int) func(e *Envelope) {
		return func(e *Envelope) {
			ct, _ := b64.DecodeString(e.CT)
			ct[(i+len(ct))%len(ct)] ^= 1
			e.CT = b64.EncodeToString(ct)
		}
	}
	resign := func(k *Keys) func(e *Envelope) {
		return func(e *Envelope) {
			e.Sig = hex.EncodeToString(ed25519Sign(k, e.SignedBytes()))
		}
	}
	cases := map[string]func(e *Envelope){
		"version 2":               func(e *Envelope) { e.V = 2 },
		"version 0":               func(e *Envelope) { e.V = 0 },
		"from carol":              func(e *Envelope) { e.From = carol.Primary() },
		"from carol, re-signed":   func(e *Envelope) { e.From = carol.Primary(); resign(carol)(e) },
		"from not a primary":      func(e *Envelope) { e.From = strings.TrimPrefix(e.From, PrimaryPrefix) },
		"from uppercase":          func(e *Envelope) { e.From = strings.ToUpper(e.From) },
		"to alice":                func(e *Envelope) { e.To = v.Alice.Primary },
		"to carol, re-signed":     func(e *Envelope) { e.To = carol.Primary(); resign(vectorKeys(t, v.Alice))(e) },
		"to with a quote":         func(e *Envelope) { e.To += `"` },
		"nonce changed":           func(e *Envelope) { e.Nonce = flip(e.Nonce, 0) },
		"nonce too short":         func(e *Envelope) { e.Nonce = e.Nonce[:8] },
		"nonce padded":            func(e *Envelope) { e.Nonce += "==" },
		"nonce standard base64":   func(e *Envelope) { e.Nonce = "AAECAwQFBgcICQo+" },
		"ct first bit":            flipCT(0),
		"ct middle bit":           flipCT(40),
		"ct tag bit":              flipCT(-1),
		"ct truncated":            func(e *Envelope) { e.CT = e.CT[:len(e.CT)-4] },
		"ct empty":                func(e *Envelope) { e.CT = "" },
		"ct not base64url":        func(e *Envelope) { e.CT = e.CT[:10] + "+" + e.CT[11:] },
		"sig changed":             func(e *Envelope) { e.Sig = strings.Replace(e.Sig, e.Sig[:2], "00", 1) },
		"sig uppercase":           func(e *Envelope) { e.Sig = strings.ToUpper(e.Sig) },
		"sig short":               func(e *Envelope) { e.Sig = e.Sig[:126] },
		"sig empty":               func(e *Envelope) { e.Sig = "" },
		"re-signed by carol only": resign(carol),
		// Signed with a line break inside: Go's base64 would skip it, the browser refuses it.
		"ct with a newline, signed": func(e *Envelope) { e.CT = e.CT[:10] + "\n" + e.CT[10:]; resign(vectorKeys(t, v.Alice))(e) },
		"nonce with CRLF, signed":   func(e *Envelope) { e.Nonce = e.Nonce[:8] + "\r\n" + e.Nonce[8:]; resign(vectorKeys(t, v.Alice))(e) },
	}
	for _, bad := range v.ConversionMustFail {
		cases["from small order "+bad[:4]] = func(e *Envelope) { e.From = PrimaryPrefix + bad }
	}
	for name, mutate := range cases {
		env := vectorEnvelope(t, v)
		mutate(env)
		if _, err := bob.Open(env); !errors.Is(err, ErrUndecryptable) {
			t.Errorf("%s: Open = %v, want ErrUndecryptable", name, err)
		}
	}
	for _, raw := range []string{`[]`, `{"v":"1"}`, `not json`, `{}`} {
		if _, _, err := bob.OpenJSON([]byte(raw)); !errors.Is(err, ErrUndecryptable) {
			t.Errorf("OpenJSON(%s) = %v", raw, err)
		}
	}
}

func ed25519Sign(k *Keys, msg []byte) []byte { return edSign(k.Private(), msg) }

func TestLinkRejectsBadRecipients(t *testing.T) {
	v := loadVectors(t)
	alice := vectorKeys(t, v.Alice)
	bad := []string{"", v.Bob.Public, "ed25519:" + strings.ToUpper(v.Bob.Public)}
	for _, k := range v.ConversionMustFail {
		bad = append(bad, PrimaryPrefix+k)
	}
	for _, p := range bad {
		if _, err := alice.LinkTo(p); err == nil {
			t.Errorf("LinkTo(%q) succeeded", p)
		}
	}
}

func TestSharedSecretRejectsAllZero(t *testing.T) {
	alice := GenerateKeys()
	// u = 0 and u = 1 are low-order points: X25519 with them is all zero.
	for _, u := range []byte{0, 1} {
		raw := make([]byte, 32)
		raw[0] = u
		pub, err := ecdh.X25519().NewPublicKey(raw)
		if err != nil {
			t.Fatal(err)
		}
		if s, err := alice.sharedSecret(pub); err == nil {
			t.Errorf("u=%d: shared secret %x accepted", u, s)
		}
	}
}

func TestKeysFromSeed(t *testing.T) {
	if _, err := NewKeys(make([]byte, 31)); err == nil {
		t.Error("31-byte seed accepted")
	}
	k := GenerateKeys()
	again, err := NewKeys(k.Seed())
	if err != nil || again.Primary() != k.Primary() {
		t.Errorf("keys from the same seed differ: %v", err)
	}
}

func TestAppendJSONEscapesOddValues(t *testing.T) {
	env := Envelope{V: 1, From: "a\"b", To: "\x01", Nonce: "é", CT: `\`, Sig: "s"}
	var back Envelope
	if err := json.Unmarshal(env.AppendJSON(nil), &back); err != nil || back != env {
		t.Errorf("odd envelope round trip = %+v, %v", back, err)
	}
}

func TestParsePlaintextRejects(t *testing.T) {
	for _, s := range []string{``, `[]`, `{}`, `{"type":"text"}`, `{"id":"x"}`, `"text"`} {
		if _, err := ParsePlaintext([]byte(s)); err == nil {
			t.Errorf("ParsePlaintext(%s) accepted", s)
		}
	}
}

// BenchmarkSeal is the per-message cost of a send once the recipient is
// looked up: HKDF, AES-GCM, Ed25519 and the JSON of the envelope.
func BenchmarkSeal(b *testing.B) {
	alice, bob := GenerateKeys(), GenerateKeys()
	link, err := alice.LinkTo(bob.Primary())
	if err != nil {
		b.Fatal(err)
	}
	plain := NewTextMessage("alice@kez.example", "hello bob, how are you today?", 1764115200123).Marshal()
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		env, err := link.Seal(plain)
		if err != nil {
			b.Fatal(err)
		}
		buf = env.AppendJSON(buf[:0])
	}
}

func BenchmarkOpen(b *testing.B) {
	alice, bob := GenerateKeys(), GenerateKeys()
	link, _ := alice.LinkTo(bob.Primary())
	env, _ := link.Seal([]byte(`{"type":"text","text":"hi","id":"x","sent_at":1,"from_addr":"a@b"}`))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := bob.Open(env); err != nil {
			b.Fatal(err)
		}
	}
}

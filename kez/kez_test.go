package kez

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidHandle(t *testing.T) {
	good := []string{"al", "alice", "a1", "0x", "bob_smith", "bob-smith", strings.Repeat("a", 32)}
	bad := []string{"", "a", "_alice", "-alice", "Alice", "al ice", "alice!", strings.Repeat("a", 33),
		"аlice" /* Cyrillic а */, "alice\x00", "../x", "a/b", "a.b", "alice@kez"}
	for _, h := range good {
		if !ValidHandle(h) {
			t.Errorf("ValidHandle(%q) = false, want true", h)
		}
	}
	for _, h := range bad {
		if ValidHandle(h) {
			t.Errorf("ValidHandle(%q) = true, want false", h)
		}
	}
}

func TestSplitAddress(t *testing.T) {
	for in, want := range map[string][2]string{
		"alice":             {"alice", ""},
		"Alice@KEZ.lat":     {"alice", "kez.lat"},
		"a@b@kez.lat":       {"a@b", "kez.lat"},
		"bob@":              {"bob", ""},
		"carol@example.com": {"carol", "example.com"},
		"alice@Kez.lat":     {"alice", "Kez.lat"}, // Kelvin sign: not folded to k
	} {
		h, s := SplitAddress(in)
		if h != want[0] || s != want[1] {
			t.Errorf("SplitAddress(%q) = %q, %q; want %q, %q", in, h, s, want[0], want[1])
		}
	}
}

func TestMontgomeryConversionVectors(t *testing.T) {
	v := loadVectors(t)
	cases := map[string]string{
		v.Alice.Public: v.Alice.X25519Public,
		v.Bob.Public:   v.Bob.X25519Public,
	}
	for _, c := range v.ConversionExtra {
		cases[c.Ed25519Public] = c.X25519Public
	}
	for ed, want := range cases {
		got, err := EdwardsToMontgomery(mustHex(t, ed))
		if err != nil {
			t.Fatalf("convert %s: %v", ed, err)
		}
		if hex.EncodeToString(got) != want {
			t.Errorf("convert %s = %x, want %s", ed, got, want)
		}
	}
	for _, bad := range v.ConversionMustFail {
		if _, err := EdwardsToMontgomery(mustHex(t, bad)); err == nil {
			t.Errorf("convert %s succeeded, want failure", bad)
		}
		if _, err := ParsePrimary(PrimaryPrefix + bad); err == nil {
			t.Errorf("ParsePrimary(%s) succeeded, want invalid_key", bad)
		}
	}
}

func TestParsePrimary(t *testing.T) {
	v := loadVectors(t)
	pub, err := ParsePrimary(v.Alice.Primary)
	if err != nil {
		t.Fatal(err)
	}
	if FormatPrimary(pub) != v.Alice.Primary {
		t.Errorf("round trip = %s", FormatPrimary(pub))
	}
	// p itself (non-canonical y = p ≡ 0) and the all-ones y must fail, as must bad syntax.
	for _, s := range []string{
		"ed25519:edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
		"ed25519:ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // y = -1: order 2
		"ed25519:" + strings.ToUpper(v.Alice.Public),
		"ed25519:" + v.Alice.Public[:62],
		"x25519:" + v.Alice.Public,
		v.Alice.Public,
	} {
		if _, err := ParsePrimary(s); err == nil {
			t.Errorf("ParsePrimary(%q) succeeded", s)
		} else if c := codeOf(err); c != CodeInvalidKey {
			t.Errorf("ParsePrimary(%q) code = %q", s, c)
		}
	}
}

func codeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

func TestRegistrationVector(t *testing.T) {
	v := loadVectors(t)
	pol := RegistrationPolicy{Server: v.Registration.Server, Now: time.Unix(v.Registration.Now, 0),
		Skew: 5 * time.Minute, Reserved: map[string]bool{"admin": true}}
	reg, p, err := VerifyRegistration(v.Registration.Body, pol)
	if err != nil {
		t.Fatal(err)
	}
	if string(reg.Payload) != v.Registration.SignedBytesJCS {
		t.Errorf("canonical payload = %s", reg.Payload)
	}
	if p.Handle != "alice" || p.Primary != v.Alice.Primary {
		t.Errorf("payload = %+v", p)
	}
	// Signing is deterministic, so our signer must reproduce the vector's bytes.
	mine, err := SignRegistration(v.Alice.private(t), "alice", v.Registration.Server, time.Unix(v.Registration.Now, 0))
	if err != nil {
		t.Fatal(err)
	}
	var want SignedRegistration
	if err := json.Unmarshal(v.Registration.Body, &want); err != nil {
		t.Fatal(err)
	}
	if mine.Signature != want.Signature || string(mine.Payload) != v.Registration.SignedBytesJCS {
		t.Errorf("SignRegistration = %s %+v, want %+v", mine.Payload, mine.Signature, want.Signature)
	}
}

// regBody builds a registration body from a payload map, signed by alice unless sig is given.
func regBody(t *testing.T, v *vectors, payload map[string]any, alg, sig string) []byte {
	t.Helper()
	raw, _ := json.Marshal(payload)
	if sig == "" {
		c, err := jcsTransform(raw)
		if err != nil {
			t.Fatal(err)
		}
		sig = hex.EncodeToString(edSign(v.Alice.private(t), c))
	}
	body, _ := json.Marshal(map[string]any{"payload": json.RawMessage(raw), "signature": map[string]string{"alg": alg, "sig": sig}})
	return body
}

func TestRegistrationErrors(t *testing.T) {
	v := loadVectors(t)
	now := time.Unix(v.Registration.Now, 0)
	pol := RegistrationPolicy{Server: "kez.example", Now: now, Skew: 5 * time.Minute,
		Reserved: map[string]bool{"admin": true}}
	base := func() map[string]any {
		return map[string]any{"v": 1, "type": RegisterType, "handle": "alice", "server": "kez.example",
			"primary": v.Alice.Primary, "ts": now.Unix()}
	}
	with := func(k string, val any) map[string]any { p := base(); p[k] = val; return p }
	cases := []struct {
		name string
		body []byte
		code string
	}{
		{"not json", []byte("{"), CodeBadRequest},
		{"array", []byte("[]"), CodeBadRequest},
		{"payload not object", []byte(`{"payload":"x","signature":{"alg":"ed25519","sig":""}}`), CodeBadRequest},
		{"unknown top-level field", []byte(`{"payload":{},"signature":{},"extra":1}`), CodeBadRequest},
		{"trailing", append(regBody(t, v, base(), "ed25519", ""), []byte(" {}")...), CodeBadRequest},
		{"invalid utf8", []byte("{\"payload\":{\"handle\":\"\xff\"}}"), CodeBadRequest},
		{"v", regBody(t, v, with("v", 2), "ed25519", ""), CodeBadRequest},
		{"v string", regBody(t, v, with("v", "1"), "ed25519", ""), CodeBadRequest},
		{"type", regBody(t, v, with("type", "other"), "ed25519", ""), CodeBadRequest},
		{"ts float", regBody(t, v, with("ts", 1.5), "ed25519", ""), CodeBadRequest},
		{"handle upper", regBody(t, v, with("handle", "Alice"), "ed25519", ""), CodeInvalidHandle},
		{"handle short", regBody(t, v, with("handle", "a"), "ed25519", ""), CodeInvalidHandle},
		{"reserved", regBody(t, v, with("handle", "admin"), "ed25519", ""), CodeReservedHandle},
		{"server", regBody(t, v, with("server", "evil.example"), "ed25519", ""), CodeWrongServer},
		{"stale", regBody(t, v, with("ts", now.Unix()-301), "ed25519", ""), CodeStaleTimestamp},
		{"future", regBody(t, v, with("ts", now.Unix()+301), "ed25519", ""), CodeStaleTimestamp},
		{"far future", regBody(t, v, with("ts", int64(9e18)), "ed25519", ""), CodeStaleTimestamp},
		{"negative ts", regBody(t, v, with("ts", -5), "ed25519", ""), CodeStaleTimestamp},
		{"bad primary", regBody(t, v, with("primary", "ed25519:"+strings.Repeat("0", 64)), "ed25519", ""), CodeInvalidKey},
		{"alg", regBody(t, v, base(), "rsa", ""), CodeUnsupportedAlg},
		{"sig short", regBody(t, v, base(), "ed25519", "abcd"), CodeBadSignature},
		{"sig not hex", regBody(t, v, base(), "ed25519", strings.Repeat("zz", 64)), CodeBadSignature},
		{"sig by bob", regBody(t, v, base(), "ed25519",
			hex.EncodeToString(edSign(v.Bob.private(t), []byte(v.Registration.SignedBytesJCS)))), CodeBadSignature},
		{"duplicate key", []byte(`{"payload":{"handle":"alice","handle":"mallory","v":1},"signature":{"alg":"ed25519","sig":""}}`), CodeBadRequest},
	}
	for _, c := range cases {
		_, _, err := VerifyRegistration(c.body, pol)
		if got := codeOf(err); got != c.code {
			t.Errorf("%s: code %q (%v), want %q", c.name, got, err, c.code)
		}
	}
	// A changed value no longer matches the signature; an added field is refused outright.
	tampered := bytes.Replace(v.Registration.Body, []byte(`1764115200`), []byte(`1764115201`), 1)
	if _, _, err := VerifyRegistration(tampered, pol); codeOf(err) != CodeBadSignature {
		t.Errorf("tampered payload: %v", err)
	}
	extra := regBody(t, v, with("x", 2), "ed25519", "")
	if _, _, err := VerifyRegistration(extra, pol); codeOf(err) != CodeBadRequest {
		t.Errorf("unknown payload field: %v", err)
	}
	// Correctly signed but stale: both the registration and the error come back.
	late := pol
	late.Now = now.Add(time.Hour)
	reg, p, err := VerifyRegistration(regBody(t, v, base(), "ed25519", ""), late)
	if codeOf(err) != CodeStaleTimestamp || reg == nil || p.Handle != "alice" {
		t.Errorf("stale but signed: %v %v", reg, err)
	}
	if reg, _, err := VerifyRegistration(regBody(t, v, base(), "ed25519", strings.Repeat("00", 64)), late); codeOf(err) != CodeStaleTimestamp || reg != nil {
		t.Errorf("stale and badly signed: %v %v", reg, err)
	}
}

func TestStoredRegistration(t *testing.T) {
	v := loadVectors(t)
	reg, _, err := VerifyRegistration(v.Registration.Body, RegistrationPolicy{Server: v.Registration.Server,
		Now: time.Unix(v.Registration.Now, 0), Skew: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	reg.Invite = "secret-token"
	want := `{"payload":` + v.Registration.SignedBytesJCS + `,"signature":{"alg":"ed25519","sig":"` + reg.Signature.Sig + `"}}`
	if got := string(reg.Stored()); got != want {
		t.Fatalf("Stored() = %s\nwant       %s", got, want)
	}
}

func TestCheckStrictJSON(t *testing.T) {
	ok := []string{`{}`, `{"a":1,"b":{"a":2}}`, `[{"a":1},{"a":2}]`, `{"a":[1,{"b":2}]}`, `{"n":-1.5e300}`, `"s"`,
		strings.Repeat("[", MaxJSONDepth) + strings.Repeat("]", MaxJSONDepth)}
	bad := []string{`{"a":1,"a":2}`, `{"x":{"a":1,"a":1}}`, `[{"a":1,"a":2}]`, `{"a":1} x`, `{"a":`,
		`{"n":1e999999}`, `[-1e400]`, strings.Repeat("[", MaxJSONDepth+1) + strings.Repeat("]", MaxJSONDepth+1)}
	for _, s := range ok {
		if err := CheckStrictJSON([]byte(s)); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	for _, s := range bad {
		if CheckStrictJSON([]byte(s)) == nil {
			t.Errorf("%s: accepted", s)
		}
	}
}

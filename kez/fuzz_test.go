package kez

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Fuzz targets for everything the server parses from a client, and for
// envelope opening in clients. CI runs each for a few seconds
// (scripts/test.sh); seeds live in f.Add calls and testdata/fuzz.

var handlePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{1,31}$`)

// ValidHandle agrees with the SPEC's regular expression on every input.
func FuzzValidHandle(f *testing.F) {
	for _, s := range []string{"alice", "a", "_x", "Alice", "аlice", strings.Repeat("z", 33), "a\x00b", "al-ice_9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := ValidHandle(s), handlePattern.MatchString(s); got != want {
			t.Fatalf("ValidHandle(%q) = %v, the SPEC's pattern says %v", s, got, want)
		}
		h, _ := SplitAddress(s)
		if ValidHandle(h) && strings.ToLower(h) != h {
			t.Fatalf("SplitAddress(%q) kept upper case", s)
		}
	})
}

func FuzzParsePrimary(f *testing.F) {
	v := loadVectors(f)
	f.Add(v.Alice.Primary)
	f.Add(v.Bob.Primary)
	for _, bad := range v.ConversionMustFail {
		f.Add(PrimaryPrefix + bad)
	}
	f.Add("ed25519:" + strings.Repeat("f", 64))
	f.Fuzz(func(t *testing.T, s string) {
		pub, err := ParsePrimary(s)
		if err != nil {
			return
		}
		if FormatPrimary(pub) != s || !WellFormedPrimary(s) {
			t.Fatalf("accepted %q, which does not round-trip", s)
		}
		if _, err := EdwardsToMontgomery(pub); err != nil {
			t.Fatalf("accepted %q, which does not convert: %v", s, err)
		}
	})
}

func FuzzParseAuth(f *testing.F) {
	v := loadVectorsV2(f)
	for _, a := range v.Auth {
		f.Add(a.Header)
	}
	f.Add("1:")
	f.Add("-5:" + strings.Repeat("0", 128))
	f.Add("99999999999999999999:" + strings.Repeat("a", 128))
	pub, _ := ParsePrimary(v.Keys["alice"].Primary)
	now := time.Unix(1764115200, 0)
	stream := v.Auth["stream"]
	req := Request{Server: v.Server, Method: stream.Method, Path: stream.Path, Query: stream.Query}
	f.Fuzz(func(t *testing.T, s string) {
		ts, sig, err := ParseAuth(s)
		if err != nil {
			return
		}
		if ts <= 0 || len(sig) != ed25519.SignatureSize {
			t.Fatalf("ParseAuth(%q) = %d, %d bytes", s, ts, len(sig))
		}
		// Only the vector's own header may verify for its request.
		if _, _, err := req.Verify(pub, s, now, time.Minute); err == nil && s != stream.Header {
			t.Fatalf("%q verified as alice's stream auth", s)
		}
	})
}

func FuzzParseAcct(f *testing.F) {
	for _, s := range []string{"acct:alice@kez.lat", "acct:ALICE@KEZ.lat", "acct:@x", "alice@kez.lat", "acct:a@b@c", "acct:a@b/c", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		user, host, ok := ParseAcct(s)
		if !ok {
			return
		}
		if user == "" || host == "" || strings.ContainsAny(host, "@/") || ASCIILower(user) != user {
			t.Fatalf("ParseAcct(%q) = %q, %q", s, user, host)
		}
		if "acct:"+user+"@"+host != ASCIILower(s) {
			t.Fatalf("ParseAcct(%q) lost data: %q @ %q", s, user, host)
		}
	})
}

func FuzzCheckStrictJSON(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1,"a":2}`, `[[[[]]]]`, `{"n":1e999}`, `{"s":"\u0000"}`, `[1,2`, `"x"`, `nul`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if CheckStrictJSON(data) == nil && !json.Valid(data) {
			t.Fatalf("accepted invalid JSON %q", data)
		}
	})
}

// VerifyRegistration never panics, and whatever it accepts is canonical,
// verifies, and passes its own checks again.
func FuzzVerifyRegistration(f *testing.F) {
	v := loadVectors(f)
	f.Add([]byte(v.Registration.Body))
	f.Add([]byte(`{"payload":{"v":1},"signature":{"alg":"ed25519","sig":""}}`))
	f.Add([]byte(`{"payload":{"handle":"a","handle":"b"},"signature":{}}`))
	f.Add([]byte(`{"payload":[],"signature":{"alg":"x"}}`))
	pol := RegistrationPolicy{Server: v.Registration.Server, Now: time.Unix(v.Registration.Now, 0), Skew: 5 * time.Minute}
	f.Fuzz(func(t *testing.T, body []byte) {
		reg, p, err := VerifyRegistration(body, pol)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		pub, err := ParsePrimary(p.Primary)
		if err != nil || !ValidHandle(p.Handle) || p.Server != pol.Server {
			t.Fatalf("accepted %+v", p)
		}
		sig, _ := hex.DecodeString(reg.Signature.Sig)
		if !ed25519.Verify(pub, reg.Payload, sig) {
			t.Fatal("stored payload is not what the signature covers")
		}
		again, _ := json.Marshal(reg)
		if _, _, err := VerifyRegistration(again, pol); err != nil {
			t.Fatalf("the stored form does not verify again: %v", err)
		}
	})
}

// Opening never panics, and only the untouched vector envelope opens.
func FuzzOpenEnvelope(f *testing.F) {
	v := loadVectors(f)
	f.Add([]byte(v.Envelope.Envelope))
	f.Add([]byte(`{"v":1,"from":"","to":"","nonce":"","ct":"","sig":""}`))
	f.Add([]byte(`{"v":2}`))
	bob, err := NewKeys(mustHex(f, v.Bob.Seed))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		_, plain, err := bob.OpenJSON(raw)
		if err != nil {
			return
		}
		if string(plain) != v.Envelope.Plaintext {
			t.Fatalf("opened a forged envelope %q to %q", raw, plain)
		}
	})
}

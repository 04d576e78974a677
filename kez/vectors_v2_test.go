package kez

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	v2vectors "github.com/kezchat/kez/internal/vectors"
)

type vectorsV2 = v2vectors.V2

func loadVectorsV2(t testing.TB) *vectorsV2 { return v2vectors.LoadV2(t) }

// allowedQuery lists the query parameters of the endpoints in the vectors.
func allowedQuery(method, path string) []string {
	switch {
	case strings.HasSuffix(path, "/stream"):
		return []string{"since"}
	case method == "GET" && strings.HasPrefix(path, "/v1/inbox/") && strings.Count(path, "/") == 3:
		return []string{"since", "limit"}
	case method == "DELETE" && strings.Count(path, "/") == 3:
		return []string{"upto"}
	}
	return nil
}

func TestAuthVectorsV2(t *testing.T) {
	v := loadVectorsV2(t)
	if len(v.Auth) < 7 {
		t.Fatalf("expected the 7 auth vectors, got %d", len(v.Auth))
	}
	now := time.Unix(1764115200, 0)
	for name, a := range v.Auth {
		keys := v.Keys[a.Signer]
		priv := NewKeysOrFail(t, keys.Seed).Private()
		pub, err := ParsePrimary(keys.Primary)
		if err != nil {
			t.Fatal(err)
		}
		// The server's view: the canonical query from the URL as sent.
		u, err := url.Parse(a.URL)
		if err != nil {
			t.Fatal(err)
		}
		_, query, _, err := ParseQuery(u.RawQuery, false, allowedQuery(a.Method, a.Path)...)
		if err != nil || query != a.Query || u.Path != a.Path {
			t.Fatalf("%s: query %q (%v), path %q; want %q, %q", name, query, err, u.Path, a.Query, a.Path)
		}
		if got := BodySHA256([]byte(a.Body)); got != a.BodySHA256 {
			t.Errorf("%s body hash = %q, want %q", name, got, a.BodySHA256)
		}
		req := Request{Server: v.Server, Method: a.Method, Path: a.Path, Query: query, Body: []byte(a.Body)}
		if got := string(req.Message(a.TS)); got != a.Message {
			t.Errorf("%s message = %q, want %q", name, got, a.Message)
		}
		if got := req.Sign(priv, now); got != a.Header {
			t.Errorf("%s header = %s, want %s", name, got, a.Header)
		}
		if _, msg, err := req.Verify(pub, a.Header, now.Add(60*time.Second), time.Minute); err != nil || string(msg) != a.Message {
			t.Errorf("%s: %v", name, err)
		}
		if _, _, err := req.Verify(pub, a.Header, now.Add(61*time.Second), time.Minute); codeOf(err) != CodeUnauthorized {
			t.Errorf("%s stale: %v", name, err)
		}
		// Bound to the server: the same request for another server fails.
		other := req
		other.Server = "evil.example"
		if _, _, err := other.Verify(pub, a.Header, now, time.Minute); err == nil {
			t.Errorf("%s verifies for another server", name)
		}
		// Bound to the body and the query.
		tampered := req
		tampered.Body = append([]byte(a.Body), ' ')
		if _, _, err := tampered.Verify(pub, a.Header, now, time.Minute); err == nil {
			t.Errorf("%s verifies with another body", name)
		}
		for other, b := range v.Auth {
			if other == name || b.Signer != a.Signer {
				continue
			}
			oreq := Request{Server: v.Server, Method: b.Method, Path: b.Path, Query: b.Query, Body: []byte(b.Body)}
			if _, _, err := oreq.Verify(pub, a.Header, now, time.Minute); err == nil {
				t.Errorf("signature for %s verifies as %s", name, other)
			}
		}
		if a.URLWithAuth != "" {
			u, _ := url.Parse(a.URLWithAuth)
			_, q, auth, err := ParseQuery(u.RawQuery, true, allowedQuery(a.Method, a.Path)...)
			if err != nil || q != a.Query || auth != a.Header {
				t.Errorf("%s url_with_auth: query %q auth %q err %v", name, q, auth, err)
			}
		}
	}
	stream := v.Auth["stream"]
	for _, bad := range []string{"", "1764115200", "x:" + stream.Sig, "1764115200:abc",
		"-1:" + stream.Sig, "+1764115200:" + stream.Sig, "01764115200:" + stream.Sig,
		"1764115200:" + strings.ToUpper(stream.Sig)} {
		if _, _, err := ParseAuth(bad); codeOf(err) != CodeUnauthorized {
			t.Errorf("auth %q: %v", bad, err)
		}
	}
}

func NewKeysOrFail(t testing.TB, seedHex string) *Keys {
	t.Helper()
	k, err := NewKeys(mustHex(t, seedHex))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestParseQueryRefusesWhatIsNotSigned(t *testing.T) {
	good := map[string]string{"": "", "since=5": "since=5", "since=0&limit=50": "limit=50&since=0", "limit=1&since=9223372036854775807": "limit=1&since=9223372036854775807"}
	for raw, want := range good {
		_, got, _, err := ParseQuery(raw, false, "since", "limit")
		if err != nil || got != want {
			t.Errorf("ParseQuery(%q) = %q, %v; want %q", raw, got, err, want)
		}
	}
	for _, raw := range []string{"since=05", "since=+5", "since=-1", "since=", "since", "since=1&since=1", "Since=1",
		"foo=1", "since=1&x=", "since=9223372036854775808", "since=1e3", "since=%2B5", "auth=1:2", "since=%zz", "since=1.0", "since= 1"} {
		if _, _, _, err := ParseQuery(raw, false, "since", "limit"); codeOf(err) != CodeBadRequest {
			t.Errorf("ParseQuery(%q) accepted: %v", raw, err)
		}
	}
	if _, _, _, err := ParseQuery("auth=a&auth=b", true, "since"); codeOf(err) != CodeBadRequest {
		t.Errorf("a repeated auth was accepted: %v", err)
	}
	if _, _, _, err := ParseQuery("since=1", false); codeOf(err) != CodeBadRequest {
		t.Errorf("a parameter on an endpoint without any was accepted: %v", err)
	}
}

func TestExactMembers(t *testing.T) {
	req, opt := []string{"to", "envelope"}, []string{"from_addr"}
	if m, err := ExactMembers([]byte(`{"to":"bob","envelope":{"A":1,"a":2}}`), req, opt); err != nil || string(m["to"]) != `"bob"` {
		t.Fatalf("ok object: %v %v", m, err)
	}
	for _, bad := range []string{`{"to":"bob"}`, `{"to":"bob","envelope":{},"To":"x"}`, `{"TO":"bob","envelope":{}}`,
		`{"to":"bob","envelope":{},"x":1}`, `{"to":"bob","to":"carol","envelope":{}}`, `{"to":"bob","\u0074o":"carol","envelope":{}}`,
		`{"to":"bob","envelope":{},"from_Addr":"a"}`, `[]`, `{"to":"bob","envelope":{}} x`} {
		if _, err := ExactMembers([]byte(bad), req, opt); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
	// Unicode folding: Go's encoding/json would read "ſig" as "sig" and
	// the Kelvin sign as k.
	if _, err := ExactMembers([]byte(`{"ſig":"x"}`), []string{}, []string{"sig"}); err == nil {
		t.Error("a long-s variant of sig was accepted")
	}
}

func TestReadEnvelopeHeader(t *testing.T) {
	h, err := ReadEnvelopeHeader([]byte(`{"v":1,"from":"a","to":"b","sig":"s","extra":[1]}`))
	if err != nil || h.From != "a" || h.To != "b" || h.Sig != "s" {
		t.Fatalf("%+v %v", h, err)
	}
	for _, bad := range []string{`{"from":"a"}`, `{"to":"b"}`, `{"from":"a","to":"b","From":"c"}`, `{"from":"a","to":"b","ct":"x","CT":"y"}`,
		`{"From":"a","to":"b"}`, `{"from":1,"to":"b"}`, `{"from":"a","to":"b","from":"c"}`, `{"from":"a","to":"b","sig":5}`,
		`{"from":"a","to":"b","ſig":"x","sig":"y"}`, `"x"`} {
		if _, err := ReadEnvelopeHeader([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

// One envelope, two readings (issue: v1 stored an envelope that said one
// thing in kez and another in the browser): every case variant is refused.
func TestCaseVariantsAreRefused(t *testing.T) {
	v := loadVectors(t)
	bob := vectorKeys(t, v.Bob)
	if _, _, err := bob.OpenJSON(v.Envelope.Envelope); err != nil {
		t.Fatalf("the vector envelope: %v", err)
	}
	env := string(v.Envelope.Envelope)
	for _, variant := range []string{
		strings.Replace(env, `"ct":`, `"CT":`, 1),
		strings.Replace(env, `{`, `{"Ct":"AAAA",`, 1),
		strings.Replace(env, `"sig":`, `"ſig":`, 1),
		strings.Replace(env, `{`, `{"extra":1,`, 1),
	} {
		if _, _, err := bob.OpenJSON([]byte(variant)); err == nil {
			t.Errorf("opened %s", variant)
		}
	}
	for _, pt := range []string{
		`{"type":"text","id":"x","sent_at":1,"text":"nothing","Text":"$100"}`,
		`{"type":"text","id":"x","sent_at":1,"TEXT":"$100"}`,
		`{"type":"text","id":"x","sent_at":1,"text":"a","text":"b"}`,
		`{"type":"text","id":"x","sent_at":1,"text":"a","Type":"receipt"}`,
		`{"type":"receipt","id":"x","of":[],"OF":[]}`,
		`{"type":"text","id":"x","sent_at":1,"text":"a","unknown":1}`,
	} {
		if _, err := ParsePlaintext([]byte(pt)); err == nil {
			t.Errorf("parsed %s", pt)
		}
	}
	if p, err := ParsePlaintext([]byte(`{"type":"receipt","id":"x","sent_at":1,"of":["a"],"state":"read"}`)); err != nil || p.Type != "receipt" || p.Text != "" {
		t.Errorf("an unknown type: %+v %v", p, err)
	}
	reg := string(v.Registration.Body)
	for _, variant := range []string{
		strings.Replace(reg, `"handle"`, `"HANDLE"`, 1),
		strings.Replace(reg, `"primary"`, `"Primary"`, 1),
		strings.Replace(reg, `"signature"`, `"Signature"`, 1),
		strings.Replace(reg, `"alg"`, `"ALG"`, 1),
		strings.Replace(reg, `"handle"`, `"handle": "alice", "handle"`, 1),
	} {
		_, _, err := VerifyRegistration([]byte(variant), RegistrationPolicy{Server: v.Registration.Server,
			Now: time.Unix(v.Registration.Now, 0), Skew: time.Minute})
		if codeOf(err) != CodeBadRequest {
			t.Errorf("registration %s: %v", variant, err)
		}
	}
}

// An envelope of many members is read in linear time and still refuses a
// case variant far from its twin.
func TestReadEnvelopeHeaderManyMembers(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"from":"a","to":"b"`)
	for i := range 30000 {
		fmt.Fprintf(&b, `,"m%d":0`, i)
	}
	ok := b.String() + `}`
	if h, err := ReadEnvelopeHeader([]byte(ok)); err != nil || h.From != "a" || h.To != "b" {
		t.Fatalf("30,000 distinct members: %+v %v", h, err)
	}
	for _, tail := range []string{`,"M5":1}`, `,"M29999":1}`, `,"FROM":"c"}`, `,"ſig":"x","sig":"y"}`} {
		if _, err := ReadEnvelopeHeader([]byte(b.String() + tail)); err == nil {
			t.Errorf("a case variant after 30,000 members (%s) was accepted", tail)
		}
	}
}

// BenchmarkExactMembers: a stream message as the client reads it.
func BenchmarkExactMembers(b *testing.B) {
	msg := []byte(`{"seq":12345,"from":"ed25519:` + strings.Repeat("ab", 32) + `","from_addr":"bob@kez.test","request":false,"received_at":1764547200000,"envelope":{"v":2,"from":"x","to":"y","body":"` + strings.Repeat("A", 900) + `"}}`)
	req, opt := []string{"seq", "from", "request", "envelope", "received_at"}, []string{"from_addr"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ExactMembers(msg, req, opt); err != nil {
			b.Fatal(err)
		}
	}
}

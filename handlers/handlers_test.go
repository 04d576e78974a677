package handlers

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/hub"
	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage/bolt"
)

const serverName = "kez.test"

// RFC 8032 §7.1 TEST 1 and TEST 2, as in testdata/kez-v1.json.
var (
	aliceKey = seedKey("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
	bobKey   = seedKey("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
)

func seedKey(h string) ed25519.PrivateKey {
	seed, err := hex.DecodeString(h)
	if err != nil {
		panic(err)
	}
	return ed25519.NewKeyFromSeed(seed)
}

type env struct {
	t     *testing.T
	h     *Handler
	store *bolt.Store
	hub   *hub.Hub
	srv   *httptest.Server
}

func newEnv(t *testing.T, mutate func(*Config)) *env {
	t.Helper()
	hb := hub.New()
	store, err := bolt.Open(filepath.Join(t.TempDir(), "chat.db"), bolt.Options{Timeout: time.Second, Notify: HubNotifier(hb)})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Server: serverName, Reserved: map[string]bool{"admin": true}, Keepalive: time.Hour}
	if mutate != nil {
		mutate(&cfg)
	}
	h := New(cfg, store, hb, nil)
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		h.Close()
		srv.Close()
		hb.Close()
		_ = store.Close()
	})
	return &env{t: t, h: h, store: store, hub: hb, srv: srv}
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) code() string {
	var e errorBody
	_ = json.Unmarshal(r.body, &e)
	return e.Error.Code
}

func (r resp) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body %q: %v", r.body, err)
	}
	return m
}

func (e *env) do(method, path string, body io.Reader, headers ...string) resp {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{status: res.StatusCode, header: res.Header, body: b}
}

func (e *env) register(key ed25519.PrivateKey, handle string) resp {
	e.t.Helper()
	reg, err := kez.SignRegistration(key, handle, serverName, time.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	b, _ := json.Marshal(reg)
	return e.do("POST", "/v1/register", strings.NewReader(string(b)))
}

func (e *env) send(to string, envelope string) resp {
	e.t.Helper()
	return e.do("POST", "/v1/messages", strings.NewReader(`{"to":"`+to+`","envelope":`+envelope+`}`))
}

func expect(t *testing.T, what string, r resp, status int, code string) {
	t.Helper()
	if r.status != status || (code != "" && r.code() != code) {
		t.Fatalf("%s: %d %s, want %d %s", what, r.status, r.body, status, code)
	}
	if r.header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("%s: no CORS header", what)
	}
}

func TestHealthz(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Version = "1.2.3" })
	r := e.do("GET", "/v1/healthz", nil)
	expect(t, "healthz", r, 200, "")
	if m := r.json(t); m["server"] != serverName || m["status"] != "ok" || m["version"] != "1.2.3" {
		t.Fatalf("healthz = %s", r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Fatalf("content type %q", ct)
	}
	_ = e.store.Close()
	r = e.do("GET", "/v1/healthz", nil)
	expect(t, "healthz on closed store", r, 503, "")
	if r.json(t)["status"] != "unavailable" {
		t.Fatalf("healthz = %s", r.body)
	}
}

func TestRoutingCORSAndMethods(t *testing.T) {
	e := newEnv(t, nil)
	for _, p := range []string{"/", "/index.html", "/v1", "/v1/", "/v1/nothing", "/v1/u/", "/v1/u/a/b",
		"/v1/inbox/", "/v1/inbox/alice/other", "/v1/by-primary/", "/.well-known/other", "/v1/healthz/x"} {
		if e.h.Route(httptest.NewRequest("GET", p, nil)) != nil {
			t.Errorf("%s is routed, want pass-through", p)
		}
	}
	r := e.do("OPTIONS", "/v1/messages", nil, "Origin", "https://elsewhere.example",
		"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "content-type")
	expect(t, "preflight", r, 204, "")
	if r.header.Get("Access-Control-Allow-Headers") != "Content-Type, X-KEZ-Auth" ||
		r.header.Get("Access-Control-Allow-Methods") != "GET, POST, DELETE" {
		t.Fatalf("preflight headers %v", r.header)
	}
	r = e.do("PUT", "/v1/register", nil)
	expect(t, "PUT /v1/register", r, 405, "method_not_allowed")
	if r.header.Get("Allow") != "POST, OPTIONS" {
		t.Fatalf("Allow = %q", r.header.Get("Allow"))
	}
	r = e.do("POST", "/v1/inbox/alice", nil)
	expect(t, "POST inbox", r, 405, "method_not_allowed")
	if r.header.Get("Allow") != "GET, DELETE, OPTIONS" {
		t.Fatalf("Allow = %q", r.header.Get("Allow"))
	}
	expect(t, "GET /v1/messages", e.do("GET", "/v1/messages", nil), 405, "method_not_allowed")
}

func TestRegisterAndLookup(t *testing.T) {
	e := newEnv(t, nil)
	alicePrimary := kez.FormatPrimary(aliceKey.Public().(ed25519.PublicKey))
	r := e.register(aliceKey, "alice")
	expect(t, "register", r, 201, "")
	m := r.json(t)
	if m["handle"] != "alice" || m["address"] != "alice@"+serverName || m["server"] != serverName || m["primary"] != alicePrimary {
		t.Fatalf("record = %s", r.body)
	}
	if at := int64(m["registered_at"].(float64)); at < time.Now().Unix()-5 || at > time.Now().Unix()+5 {
		t.Fatalf("registered_at = %d", at)
	}
	// The stored registration verifies by itself: clients can check the binding.
	var reg kez.SignedRegistration
	raw, _ := json.Marshal(m["registration"])
	if err := json.Unmarshal(raw, &reg); err != nil {
		t.Fatal(err)
	}
	sig, _ := hex.DecodeString(reg.Signature.Sig)
	if !ed25519.Verify(aliceKey.Public().(ed25519.PublicKey), reg.Payload, sig) {
		t.Fatal("stored registration does not verify")
	}

	expect(t, "retry", e.register(aliceKey, "alice"), 200, "")
	// A signed retry that arrives after register_skew is still a retry...
	late, _ := kez.SignRegistration(aliceKey, "alice", serverName, time.Now().Add(-time.Hour))
	lb, _ := json.Marshal(late)
	expect(t, "late retry", e.do("POST", "/v1/register", strings.NewReader(string(lb))), 200, "")
	// ...but not a late new registration.
	lateBob, _ := kez.SignRegistration(bobKey, "bob", serverName, time.Now().Add(-time.Hour))
	lb, _ = json.Marshal(lateBob)
	expect(t, "late new registration", e.do("POST", "/v1/register", strings.NewReader(string(lb))), 400, "stale_timestamp")
	expect(t, "bob takes alice", e.register(bobKey, "alice"), 409, "handle_taken")
	expect(t, "alice takes a second handle", e.register(aliceKey, "alice2"), 409, "primary_taken")
	expect(t, "reserved", e.register(bobKey, "admin"), 400, "reserved_handle")
	expect(t, "reserved default", e.register(bobKey, "postmaster"), 400, "reserved_handle")
	expect(t, "uppercase", e.register(bobKey, "Bob"), 400, "invalid_handle")
	expect(t, "too big", e.do("POST", "/v1/register", strings.NewReader(strings.Repeat(" ", 20<<10)+"{}")), 400, "bad_request")
	expect(t, "garbage", e.do("POST", "/v1/register", strings.NewReader("hello")), 400, "bad_request")
	stale, _ := kez.SignRegistration(bobKey, "bob", serverName, time.Now().Add(-6*time.Minute))
	b, _ := json.Marshal(stale)
	expect(t, "stale", e.do("POST", "/v1/register", strings.NewReader(string(b))), 400, "stale_timestamp")
	wrong, _ := kez.SignRegistration(bobKey, "bob", "other.example", time.Now())
	b, _ = json.Marshal(wrong)
	expect(t, "wrong server", e.do("POST", "/v1/register", strings.NewReader(string(b))), 400, "wrong_server")
	good, _ := kez.SignRegistration(bobKey, "bob", serverName, time.Now())
	good.Signature.Alg = "ed448"
	b, _ = json.Marshal(good)
	expect(t, "alg", e.do("POST", "/v1/register", strings.NewReader(string(b))), 400, "unsupported_alg")
	good.Signature.Alg = "ed25519"
	good.Signature.Sig = strings.Repeat("00", 64)
	b, _ = json.Marshal(good)
	expect(t, "bad sig", e.do("POST", "/v1/register", strings.NewReader(string(b))), 400, "bad_signature")

	for _, p := range []string{"/v1/u/alice", "/v1/u/ALICE", "/v1/u/alice@kez.test", "/v1/u/Alice@KEZ.TEST"} {
		r := e.do("GET", p, nil)
		expect(t, p, r, 200, "")
		if r.json(t)["primary"] != alicePrimary {
			t.Fatalf("%s = %s", p, r.body)
		}
	}
	expect(t, "unknown", e.do("GET", "/v1/u/nobody", nil), 404, "not_found")
	expect(t, "other server", e.do("GET", "/v1/u/alice@elsewhere.example", nil), 404, "not_found")
	expect(t, "bad handle", e.do("GET", "/v1/u/a", nil), 400, "invalid_handle")
	expect(t, "Cyrillic look-alike", e.do("GET", "/v1/u/\u0430lice", nil), 400, "invalid_handle")
	expect(t, "Kelvin-sign server", e.do("GET", "/v1/u/alice@\u212aez.test", nil), 404, "not_found")
	if e.h.Route(httptest.NewRequest("GET", "/v1/u/..%2Falice", nil)) != nil {
		t.Fatal("an escaped slash in a handle is routed")
	}
	expect(t, "webfinger Kelvin-sign host", e.do("GET", "/.well-known/webfinger?resource=acct:alice@%E2%84%AAez.test", nil), 404, "not_found")

	r = e.do("GET", "/v1/by-primary/"+alicePrimary, nil)
	expect(t, "by-primary", r, 200, "")
	if r.json(t)["handle"] != "alice" {
		t.Fatalf("by-primary = %s", r.body)
	}
	expect(t, "by-primary unbound", e.do("GET", "/v1/by-primary/"+kez.FormatPrimary(bobKey.Public().(ed25519.PublicKey)), nil), 404, "not_found")
	expect(t, "by-primary garbage", e.do("GET", "/v1/by-primary/alice", nil), 400, "bad_request")
	expect(t, "by-primary upper", e.do("GET", "/v1/by-primary/"+strings.ToUpper(alicePrimary), nil), 400, "bad_request")
}

func TestWebFinger(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.PublicURL = "https://chat.kez.test/" })
	expect(t, "register", e.register(aliceKey, "alice"), 201, "")
	r := e.do("GET", "/.well-known/webfinger?resource=acct:alice@kez.test", nil)
	expect(t, "webfinger", r, 200, "")
	if ct := r.header.Get("Content-Type"); ct != "application/jrd+json" {
		t.Fatalf("content type %q", ct)
	}
	want := `{"aliases":["https://chat.kez.test/v1/u/alice"],"links":[{"href":"https://chat.kez.test/v1/u/alice","rel":"urn:kez:chat","type":"application/json"}],"properties":{"urn:kez:primary":"` +
		kez.FormatPrimary(aliceKey.Public().(ed25519.PublicKey)) + `"},"subject":"acct:alice@kez.test"}`
	if string(r.body) != want {
		t.Fatalf("webfinger = %s\nwant        %s", r.body, want)
	}
	expect(t, "upper", e.do("GET", "/.well-known/webfinger?resource=acct:ALICE@KEZ.TEST", nil), 200, "")
	for _, q := range []string{"", "?resource=", "?resource=alice@kez.test", "?resource=acct:alice", "?resource=acct:@kez.test", "?resource=acct:alice@"} {
		expect(t, "webfinger"+q, e.do("GET", "/.well-known/webfinger"+q, nil), 400, "bad_request")
	}
	expect(t, "other host", e.do("GET", "/.well-known/webfinger?resource=acct:alice@elsewhere.example", nil), 404, "not_found")
	expect(t, "unknown", e.do("GET", "/.well-known/webfinger?resource=acct:bob@kez.test", nil), 404, "not_found")
}

func TestSendAndInbox(t *testing.T) {
	// The server's clock is pinned so the skew checks below test the exact
	// boundary instead of racing the wall clock across a second.
	pinned := time.Now().Truncate(time.Second)
	e := newEnv(t, func(c *Config) {
		c.MaxEnvelope = 1024
		c.MaxInbox = 30
		c.Now = func() time.Time { return pinned }
	})
	expect(t, "register", e.register(aliceKey, "alice"), 201, "")
	expect(t, "register bob", e.register(bobKey, "bob"), 201, "")
	var seqs []uint64
	for i := range 12 {
		r := e.send("alice", fmt.Sprintf(`{ "n" : %d,
			"pretty": [1, 2] }`, i))
		expect(t, "send", r, 201, "")
		var out struct {
			Seq        uint64 `json:"seq"`
			To         string `json:"to"`
			ReceivedAt int64  `json:"received_at"`
		}
		if err := json.Unmarshal(r.body, &out); err != nil || out.To != "alice" || out.Seq == 0 || out.ReceivedAt < time.Now().Add(-time.Minute).UnixMilli() {
			t.Fatalf("send = %s", r.body)
		}
		seqs = append(seqs, out.Seq)
	}
	expect(t, "send to address", e.send("alice@kez.test", `{}`), 201, "")
	expect(t, "unknown recipient", e.send("carol", `{}`), 404, "unknown_recipient")
	expect(t, "other server", e.send("alice@elsewhere.example", `{}`), 404, "unknown_recipient")
	expect(t, "bad handle", e.send("a", `{}`), 400, "invalid_handle")
	expect(t, "no to", e.do("POST", "/v1/messages", strings.NewReader(`{"envelope":{}}`)), 400, "bad_request")
	expect(t, "not object", e.send("alice", `"hello"`), 400, "bad_request")
	expect(t, "array", e.send("alice", `[1]`), 400, "bad_request")
	expect(t, "missing envelope", e.do("POST", "/v1/messages", strings.NewReader(`{"to":"alice"}`)), 400, "bad_request")
	expect(t, "unknown field", e.do("POST", "/v1/messages", strings.NewReader(`{"to":"alice","envelope":{},"x":1}`)), 400, "bad_request")
	expect(t, "trailing", e.do("POST", "/v1/messages", strings.NewReader(`{"to":"alice","envelope":{}} {}`)), 400, "bad_request")
	expect(t, "invalid utf8", e.send("alice", "{\"x\":\"\xff\"}"), 400, "bad_request")
	expect(t, "deep nesting", e.send("alice", strings.Repeat(`{"a":`, 100)+"1"+strings.Repeat("}", 100)), 400, "bad_request")
	expect(t, "deeper than the decoder allows", e.do("POST", "/v1/messages", strings.NewReader(`{"to":"alice","envelope":`+strings.Repeat(`[`, 300)+strings.Repeat(`]`, 300)+`}`)), 400, "bad_request")
	expect(t, "duplicate keys", e.send("alice", `{"to":"a","to":"b"}`), 400, "bad_request")
	expect(t, "too large", e.send("alice", `{"x":"`+strings.Repeat("a", 1100)+`"}`), 413, "envelope_too_large")
	expect(t, "huge number", e.send("alice", `{"n":1e999999}`), 400, "bad_request")
	expect(t, "escaped to", e.do("POST", "/v1/messages", strings.NewReader(`{"to":"\u0062ob","envelope":{}}`)), 201, "")
	expect(t, "to not a string", e.do("POST", "/v1/messages", strings.NewReader(`{"to":1,"envelope":{}}`)), 400, "bad_request")
	expect(t, "to null", e.do("POST", "/v1/messages", strings.NewReader(`{"to":null,"envelope":{}}`)), 400, "bad_request")
	expect(t, "to twice", e.do("POST", "/v1/messages", strings.NewReader(`{"to":"alice","envelope":{},"to":"bob"}`)), 400, "bad_request")
	expect(t, "envelope null", e.send("alice", `null`), 400, "bad_request")
	expect(t, "not an object", e.do("POST", "/v1/messages", strings.NewReader(`["alice",{}]`)), 400, "bad_request")
	expect(t, "invalid utf8 outside the envelope", e.do("POST", "/v1/messages", strings.NewReader("{\"to\":\"alice\xff\",\"envelope\":{}}")), 400, "bad_request")

	// The reader: every auth failure first.
	path := "/v1/inbox/alice"
	authFor := func(key ed25519.PrivateKey, msg string, ts int64) string { return kez.SignAuth(key, msg, ts) }
	now := pinned.Unix()
	expect(t, "no auth", e.do("GET", path, nil), 401, "unauthorized")
	expect(t, "malformed", e.do("GET", path, nil, "X-KEZ-Auth", "hello"), 401, "unauthorized")
	expect(t, "stale", e.do("GET", path, nil, "X-KEZ-Auth", authFor(aliceKey, kez.InboxAuthMessage("alice", 0, now-61), now-61)), 401, "unauthorized")
	expect(t, "future", e.do("GET", path, nil, "X-KEZ-Auth", authFor(aliceKey, kez.InboxAuthMessage("alice", 0, now+61), now+61)), 401, "unauthorized")
	expect(t, "oldest accepted", e.do("GET", path+"?limit=1", nil, "X-KEZ-Auth", authFor(aliceKey, kez.InboxAuthMessage("alice", 0, now-60), now-60)), 200, "")
	expect(t, "newest accepted", e.do("GET", path+"?limit=1", nil, "X-KEZ-Auth", authFor(aliceKey, kez.InboxAuthMessage("alice", 0, now+60), now+60)), 200, "")
	expect(t, "wrong key", e.do("GET", path, nil, "X-KEZ-Auth", authFor(bobKey, kez.InboxAuthMessage("alice", 0, now), now)), 401, "unauthorized")
	expect(t, "wrong cursor", e.do("GET", path+"?since=1", nil, "X-KEZ-Auth", authFor(aliceKey, kez.InboxAuthMessage("alice", 0, now), now)), 401, "unauthorized")
	expect(t, "stream signature replayed", e.do("GET", path, nil, "X-KEZ-Auth", authFor(aliceKey, kez.StreamAuthMessage("alice", now), now)), 401, "unauthorized")
	expect(t, "bob's signature for bob's inbox on alice's", e.do("GET", path, nil, "X-KEZ-Auth", authFor(bobKey, kez.InboxAuthMessage("bob", 0, now), now)), 401, "unauthorized")
	expect(t, "unknown inbox", e.do("GET", "/v1/inbox/carol", nil, "X-KEZ-Auth", authFor(aliceKey, kez.InboxAuthMessage("carol", 0, now), now)), 404, "not_found")
	for _, q := range []string{"?since=-1", "?since=x", "?since=99999999999999999999", "?since=%2B1", "?limit=0", "?limit=-5", "?limit=x"} {
		expect(t, "query "+q, e.do("GET", path+q, nil, "X-KEZ-Auth", authFor(aliceKey, kez.InboxAuthMessage("alice", 0, now), now)), 400, "bad_request")
	}

	page := func(since uint64, limit string) (msgs []map[string]any, next uint64, more bool) {
		q := fmt.Sprintf("?since=%d", since)
		if limit != "" {
			q += "&limit=" + limit
		}
		ts := now
		r := e.do("GET", "/v1/inbox/ALICE"+q, nil, "X-KEZ-Auth", authFor(aliceKey, kez.InboxAuthMessage("alice", since, ts), ts))
		expect(t, "inbox"+q, r, 200, "")
		var out struct {
			Messages  []map[string]any `json:"messages"`
			NextSince uint64           `json:"next_since"`
			More      bool             `json:"more"`
		}
		if err := json.Unmarshal(r.body, &out); err != nil {
			t.Fatal(err)
		}
		return out.Messages, out.NextSince, out.More
	}
	msgs, next, more := page(0, "5")
	if len(msgs) != 5 || !more || next != seqs[4] {
		t.Fatalf("first page: %d messages next=%d more=%v", len(msgs), next, more)
	}
	env0, _ := json.Marshal(msgs[0]["envelope"])
	if string(env0) != `{"n":0,"pretty":[1,2]}` || uint64(msgs[0]["seq"].(float64)) != seqs[0] {
		t.Fatalf("first message = %v", msgs[0])
	}
	msgs, next, more = page(next, "1000") // clamped to 500
	if len(msgs) != 8 || more || next != seqs[11]+1 {
		t.Fatalf("second page: %d messages next=%d more=%v", len(msgs), next, more)
	}
	if _, n2, more := page(next, ""); n2 != next || more {
		t.Fatal("empty page must keep next_since")
	}

	// Acknowledge.
	ack := func(upto uint64, key ed25519.PrivateKey) resp {
		ts := now
		return e.do("DELETE", fmt.Sprintf("/v1/inbox/alice?upto=%d", upto), nil, "X-KEZ-Auth", authFor(key, kez.AckAuthMessage("alice", upto, ts), ts))
	}
	expect(t, "ack by bob", ack(seqs[4], bobKey), 401, "unauthorized")
	expect(t, "ack without upto", e.do("DELETE", "/v1/inbox/alice", nil), 400, "bad_request")
	ts := now
	expect(t, "inbox signature as ack", e.do("DELETE", "/v1/inbox/alice?upto=0", nil, "X-KEZ-Auth", authFor(aliceKey, kez.InboxAuthMessage("alice", 0, ts), ts)), 401, "unauthorized")
	r := ack(seqs[4], aliceKey)
	expect(t, "ack", r, 200, "")
	if string(r.body) != `{"deleted":5}` {
		t.Fatalf("ack = %s", r.body)
	}
	if msgs, _, _ := page(0, ""); len(msgs) != 8 || uint64(msgs[0]["seq"].(float64)) != seqs[5] {
		t.Fatalf("after ack: %d messages", len(msgs))
	}

	// The cap: 30 messages, 8 stored.
	for range 22 {
		expect(t, "fill", e.send("alice", `{}`), 201, "")
	}
	expect(t, "full", e.send("alice", `{}`), 507, "inbox_full")
	expect(t, "bob unaffected", e.send("bob", `{}`), 201, "")
}

// A body far over the limit is refused without being read to its end.
func TestSendBodyIsBounded(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxEnvelope = 1024 })
	expect(t, "register", e.register(aliceKey, "alice"), 201, "")
	counter := &countingReader{left: 64 << 20}
	req := httptest.NewRequest("POST", "/v1/messages", counter)
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, req)
	if w.Code != 413 {
		t.Fatalf("status %d %s", w.Code, w.Body)
	}
	if counter.read > 1024+sendOverhead+64<<10 {
		t.Fatalf("read %d bytes of a 64 MiB body", counter.read)
	}
}

type countingReader struct{ left, read int }

func (c *countingReader) Read(p []byte) (int, error) {
	if c.left == 0 {
		return 0, io.EOF
	}
	n := min(len(p), c.left)
	for i := range n {
		p[i] = ' '
	}
	c.left -= n
	c.read += n
	return n, nil
}

// sseClient reads events from a stream response.
type sseClient struct {
	res *http.Response
	sc  *bufio.Scanner
}

type sseEvent struct {
	id, event, data string
}

func (e *env) openStream(t *testing.T, handle string, since string, headers ...string) (*sseClient, resp) {
	t.Helper()
	ts := time.Now().Unix()
	u := e.srv.URL + "/v1/inbox/" + handle + "/stream?auth=" + kez.SignAuth(aliceKey, kez.StreamAuthMessage(handle, ts), ts)
	if since != "" {
		u += "&since=" + since
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 {
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		return nil, resp{status: res.StatusCode, header: res.Header, body: b}
	}
	t.Cleanup(func() { res.Body.Close() })
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	return &sseClient{res: res, sc: sc}, resp{status: 200, header: res.Header}
}

// next returns the next event or comment (event "comment"); ok=false at EOF.
func (c *sseClient) next() (ev sseEvent, ok bool) {
	for c.sc.Scan() {
		line := c.sc.Text()
		switch {
		case line == "":
			if ev != (sseEvent{}) {
				return ev, true
			}
		case strings.HasPrefix(line, ":"):
			return sseEvent{event: "comment", data: line}, true
		case strings.HasPrefix(line, "id: "):
			ev.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			ev.data = line[6:]
		case strings.HasPrefix(line, "retry: "):
			ev.event, ev.data = "retry", line[7:]
		}
	}
	return ev, false
}

func TestStream(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Keepalive = 50 * time.Millisecond })
	expect(t, "register", e.register(aliceKey, "alice"), 201, "")
	ts := time.Now().Unix()
	expect(t, "no auth", e.do("GET", "/v1/inbox/alice/stream", nil), 400, "missing_auth")
	expect(t, "bad auth", e.do("GET", "/v1/inbox/alice/stream?auth=1:2", nil), 401, "unauthorized")
	expect(t, "inbox signature replayed", e.do("GET", "/v1/inbox/alice/stream?auth="+kez.SignAuth(aliceKey, kez.InboxAuthMessage("alice", 0, ts), ts), nil), 401, "unauthorized")
	expect(t, "bob's key", e.do("GET", "/v1/inbox/alice/stream", nil, "X-KEZ-Auth", kez.SignAuth(bobKey, kez.StreamAuthMessage("alice", ts), ts)), 401, "unauthorized")
	expect(t, "unknown", e.do("GET", "/v1/inbox/carol/stream?auth="+kez.SignAuth(aliceKey, kez.StreamAuthMessage("carol", ts), ts), nil), 404, "not_found")

	for range 3 {
		expect(t, "send", e.send("alice", `{"stored":true}`), 201, "")
	}
	c, r := e.openStream(t, "alice", "1")
	if r.status != 200 {
		t.Fatalf("stream: %d %s", r.status, r.body)
	}
	if ct := c.res.Header.Get("Content-Type"); ct != "text/event-stream" || c.res.Header.Get("Cache-Control") != "no-cache" || c.res.Header.Get("X-Accel-Buffering") != "no" {
		t.Fatalf("headers %v", c.res.Header)
	}
	if ev, _ := c.next(); ev.event != "retry" || ev.data != "3000" {
		t.Fatalf("first = %+v", ev)
	}
	// since=1: seqs 2 and 3 from storage, then live ones.
	want := []string{"2", "3"}
	got := []string{}
	for len(got) < len(want) {
		ev, ok := c.next()
		if !ok {
			t.Fatal("stream ended")
		}
		if ev.event == "message" {
			got = append(got, ev.id)
			var m struct {
				Seq      uint64          `json:"seq"`
				Envelope json.RawMessage `json:"envelope"`
			}
			if err := json.Unmarshal([]byte(ev.data), &m); err != nil || fmt.Sprint(m.Seq) != ev.id || string(m.Envelope) != `{"stored":true}` {
				t.Fatalf("data %q", ev.data)
			}
		}
	}
	if strings.Join(got, ",") != "2,3" {
		t.Fatalf("backlog ids %v", got)
	}
	expect(t, "send live", e.send("alice", `{"live":true}`), 201, "")
	sawPing := false
	for {
		ev, ok := c.next()
		if !ok {
			t.Fatal("stream ended")
		}
		if ev.event == "comment" && ev.data == ": ping" {
			sawPing = true
			continue
		}
		if ev.event == "message" {
			if ev.id != "4" || !strings.Contains(ev.data, `"live":true`) {
				t.Fatalf("live event %+v", ev)
			}
			break
		}
	}
	// Keepalive is 50 ms here; wait for one.
	for !sawPing {
		ev, ok := c.next()
		if !ok {
			t.Fatal("stream ended before a ping")
		}
		sawPing = ev.event == "comment" && ev.data == ": ping"
	}

	// Last-Event-ID beats an older since; a second stream for the same handle gets the same events.
	c2, _ := e.openStream(t, "alice", "0", "Last-Event-ID", "3")
	c2.next() // retry
	if ev, _ := c2.next(); ev.id != "4" {
		t.Fatalf("resume after Last-Event-ID 3 got %+v", ev)
	}
	expect(t, "send", e.send("alice", `{}`), 201, "")
	for _, cl := range []*sseClient{c, c2} {
		for {
			ev, ok := cl.next()
			if !ok {
				t.Fatal("stream ended")
			}
			if ev.event == "message" {
				if ev.id != "5" {
					t.Fatalf("got %+v", ev)
				}
				break
			}
		}
	}

	// Close (Caddy cleanup) ends open streams.
	e.h.Close()
	done := make(chan struct{})
	go func() {
		for {
			if _, ok := c.next(); !ok {
				close(done)
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("stream still open after Close")
	}
}

// A graceful shutdown of the http.Server ends streams instead of waiting for them.
func TestStreamEndsOnServerShutdown(t *testing.T) {
	e := newEnv(t, nil)
	expect(t, "register", e.register(aliceKey, "alice"), 201, "")
	c, _ := e.openStream(t, "alice", "")
	c.next()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.srv.Config.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown waited for the stream: %v", err)
	}
}

func TestEncodeMessage(t *testing.T) {
	var m map[string]any
	b := EncodeMessage(struct2msg(7, 1764115200123, `{"v":1}`))
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"seq":7,"envelope":{"v":1},"received_at":1764115200123}` {
		t.Fatalf("%s", b)
	}
}

// A closed store (the moment of shutdown, or a storage failure) gives 503
// unavailable on every endpoint that needs it: never a panic or a 500.
func TestClosedStoreIsUnavailable(t *testing.T) {
	e := newEnv(t, nil)
	expect(t, "register", e.register(aliceKey, "alice"), 201, "")
	_ = e.store.Close()
	ts := time.Now().Unix()
	auth := func(msg string) string { return kez.SignAuth(aliceKey, msg, ts) }
	cases := map[string]resp{
		"register":   e.register(bobKey, "bob"),
		"lookup":     e.do("GET", "/v1/u/alice", nil),
		"by-primary": e.do("GET", "/v1/by-primary/"+kez.FormatPrimary(aliceKey.Public().(ed25519.PublicKey)), nil),
		"webfinger":  e.do("GET", "/.well-known/webfinger?resource=acct:alice@kez.test", nil),
		"send":       e.send("alice", `{}`),
		"inbox":      e.do("GET", "/v1/inbox/alice", nil, "X-KEZ-Auth", auth(kez.InboxAuthMessage("alice", 0, ts))),
		"ack":        e.do("DELETE", "/v1/inbox/alice?upto=1", nil, "X-KEZ-Auth", auth(kez.AckAuthMessage("alice", 1, ts))),
		"stream":     e.do("GET", "/v1/inbox/alice/stream?auth="+auth(kez.StreamAuthMessage("alice", ts)), nil),
	}
	for name, r := range cases {
		expect(t, name, r, 503, "unavailable")
	}
}

func TestCursorBounds(t *testing.T) {
	e := newEnv(t, nil)
	expect(t, "register", e.register(aliceKey, "alice"), 201, "")
	ts := time.Now().Unix()
	for _, upto := range []string{"-1", "x", "99999999999999999999", "9223372036854775808", "1.5", "%2B1"} {
		r := e.do("DELETE", "/v1/inbox/alice?upto="+upto, nil, "X-KEZ-Auth", kez.SignAuth(aliceKey, kez.AckAuthMessage("alice", 0, ts), ts))
		expect(t, "upto="+upto, r, 400, "bad_request")
	}
	// The largest cursor is fine and finds nothing.
	max := "9223372036854775807"
	r := e.do("GET", "/v1/inbox/alice?since="+max, nil, "X-KEZ-Auth", kez.SignAuth(aliceKey, "GET\n/v1/inbox/alice\nsince="+max+"\n"+fmt.Sprint(ts), ts))
	expect(t, "since=max", r, 200, "")
	if !strings.Contains(string(r.body), `"messages":[]`) {
		t.Fatalf("since=max: %s", r.body)
	}
	expect(t, "stream since=-1", e.do("GET", "/v1/inbox/alice/stream?since=-1&auth="+kez.SignAuth(aliceKey, kez.StreamAuthMessage("alice", ts), ts), nil), 400, "bad_request")
}

// Inbox pages stop at pageBytes of envelopes (with more=true), so a page of
// large envelopes costs a few MiB, not limit × max_envelope.
func TestInboxPageIsBoundedInBytes(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxEnvelope = 1 << 20 })
	expect(t, "register", e.register(aliceKey, "alice"), 201, "")
	big := `{"ct":"` + strings.Repeat("A", 900<<10) + `"}`
	for range 10 {
		expect(t, "send", e.send("alice", big), 201, "")
	}
	var total int
	since := uint64(0)
	for pages := 1; ; pages++ {
		ts := time.Now().Unix()
		r := e.do("GET", fmt.Sprintf("/v1/inbox/alice?since=%d&limit=500", since), nil,
			"X-KEZ-Auth", kez.SignAuth(aliceKey, kez.InboxAuthMessage("alice", since, ts), ts))
		expect(t, "inbox", r, 200, "")
		var out struct {
			Messages  []json.RawMessage `json:"messages"`
			NextSince uint64            `json:"next_since"`
			More      bool              `json:"more"`
		}
		if err := json.Unmarshal(r.body, &out); err != nil {
			t.Fatal(err)
		}
		if len(r.body) > pageBytes+1<<20+64<<10 {
			t.Fatalf("page of %d bytes", len(r.body))
		}
		total += len(out.Messages)
		since = out.NextSince
		if !out.More {
			if pages < 2 {
				t.Fatalf("9 MB of envelopes came in %d page", pages)
			}
			break
		}
	}
	if total != 10 {
		t.Fatalf("paged through %d messages, want 10", total)
	}
}

// A stream stuck on a reader that does not read, with a long backlog, still
// ends at once when the handler closes (a Caddy reload or stop).
func TestSlowReaderDoesNotHoldUpClose(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxEnvelope = 1 << 20 })
	expect(t, "register", e.register(aliceKey, "alice"), 201, "")
	big := `{"ct":"` + strings.Repeat("A", 900<<10) + `"}`
	for range 40 {
		expect(t, "send", e.send("alice", big), 201, "")
	}
	c, _ := e.openStream(t, "alice", "0")
	time.Sleep(300 * time.Millisecond) // the handler fills the socket buffers and blocks
	start := time.Now()
	e.h.Close()
	// Drain: the response must end well before the 15 s write timeout.
	done := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, c.res.Body)
		done <- n
	}()
	select {
	case n := <-done:
		if n >= 40*900<<10 {
			t.Fatalf("the whole backlog (%d bytes) was written: the stream was never blocked", n)
		}
		t.Logf("stream ended %s after Close, %d bytes delivered", time.Since(start), n)
	case <-time.After(5 * time.Second):
		t.Fatal("stream still open 5 s after Close")
	}
}

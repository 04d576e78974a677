package handlers

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kezchat/kez/hub"
	"github.com/kezchat/kez/internal/testwait"
	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/bolt"
)

const serverName = "kez.test"

// RFC 8032 §7.1 TEST 1 and TEST 2, as in testdata/kez-v2.json; the others
// are derived from their names.
var (
	alice = seedKeys("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
	bob   = seedKeys("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
	carol = namedKeys("carol")
	dave  = namedKeys("dave")
	eve   = namedKeys("eve")
)

func seedKeys(h string) *kez.Keys {
	seed, err := hex.DecodeString(h)
	if err != nil {
		panic(err)
	}
	k, err := kez.NewKeys(seed)
	if err != nil {
		panic(err)
	}
	return k
}

func namedKeys(name string) *kez.Keys {
	seed := sha256.Sum256([]byte("kez handlers test key " + name))
	return seedKeys(hex.EncodeToString(seed[:]))
}

type env struct {
	t     *testing.T
	h     *Handler
	store *bolt.Store
	hub   *hub.Hub
	srv   *httptest.Server

	mu     sync.Mutex
	signed map[string]bool // signed strings handed out by sign
}

func newEnv(t *testing.T, mutate func(*Config)) *env { return newEnvWith(t, mutate, nil) }

// newEnvWith serves the bolt store through wrap (when not nil), a test's
// hook into a real store.
func newEnvWith(t *testing.T, mutate func(*Config), wrap func(*bolt.Store) storage.Store) *env {
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
	var served storage.Store = store
	if wrap != nil {
		served = wrap(store)
	}
	h := New(cfg, served, hb, nil)
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		h.Close()
		srv.Close()
		hb.Close()
		_ = store.Close()
	})
	return &env{t: t, h: h, store: store, hub: hb, srv: srv, signed: map[string]bool{}}
}

type resp struct {
	status int
	header http.Header
	body   []byte
	close  bool // the server ends the connection after this answer
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

// request makes one request; safe from any goroutine. A body goes as
// application/json unless the headers set Content-Type ("" removes it).
func (e *env) request(method, path string, body io.Reader, headers ...string) (resp, error) {
	req, err := http.NewRequest(method, e.srv.URL+path, body)
	if err != nil {
		return resp{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" {
			req.Header.Del(headers[i])
			continue
		}
		req.Header.Set(headers[i], headers[i+1])
	}
	// A bound, so that a stream opened where a refusal was expected fails
	// the test instead of hanging it.
	client := *e.srv.Client()
	client.Timeout = time.Minute
	res, err := client.Do(req)
	if err != nil {
		return resp{}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return resp{status: res.StatusCode, header: res.Header, body: b, close: res.Close}, err
}

func (e *env) do(method, path string, body io.Reader, headers ...string) resp {
	e.t.Helper()
	r, err := e.request(method, path, body, headers...)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// signAt is the X-KEZ-Auth value for a request signed by k at ts (SPEC §2.0).
func signAt(k *kez.Keys, server, method, path, query string, body []byte, ts time.Time) string {
	r := kez.Request{Server: server, Method: method, Path: path, Query: query, Body: body}
	return r.Sign(k.Private(), ts)
}

// sign signs a request for this server as a client does: afresh for every
// attempt. The timestamp is the handler's clock, stepped back a second at a
// time when this very string was signed before, so that repeated identical
// requests (polls, retries) are new strings within the skew.
func (e *env) sign(k *kez.Keys, method, path, query string, body []byte) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := kez.Request{Server: e.h.cfg.Server, Method: method, Path: path, Query: query, Body: body}
	now := e.h.cfg.Now()
	for back := range 55 {
		ts := now.Add(-time.Duration(back) * time.Second)
		if m := string(r.Message(ts.Unix())); !e.signed[m] {
			e.signed[m] = true
			return r.Sign(k.Private(), ts)
		}
	}
	panic("the same request signed 55 times within a second")
}

// owner makes a request signed by k, whose signed path is path (as routed)
// and signed query the URL's query, which must then be canonical.
func (e *env) owner(k *kez.Keys, method, path, query string, headers ...string) resp {
	e.t.Helper()
	u := path
	if query != "" {
		u += "?" + query
	}
	return e.do(method, u, nil, append([]string{"X-KEZ-Auth", e.sign(k, method, strings.ToLower(path), query, nil)}, headers...)...)
}

func (e *env) register(k *kez.Keys, handle string) resp {
	e.t.Helper()
	reg, err := kez.SignRegistration(k.Private(), handle, e.h.cfg.Server, e.h.cfg.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	b, _ := json.Marshal(reg)
	return e.do("POST", "/v1/register", strings.NewReader(string(b)))
}

// users registers each handle with its key.
func (e *env) users(pairs ...any) {
	e.t.Helper()
	for i := 0; i+1 < len(pairs); i += 2 {
		expect(e.t, "register "+pairs[i+1].(string), e.register(pairs[i].(*kez.Keys), pairs[i+1].(string)), 201, "")
	}
}

var envelopeCount atomic.Uint64

// envl is a minimal envelope from → to, with the extra members given
// (`"n":1`) and a unique sig: all the server reads of one.
func envl(from, to *kez.Keys, extra ...string) string {
	b := `{"v":1,"from":"` + from.Primary() + `","to":"` + to.Primary() + `"`
	for _, x := range extra {
		b += "," + x
	}
	return b + fmt.Sprintf(`,"sig":"%0128x"}`, envelopeCount.Add(1))
}

// post sends a raw POST /v1/messages body signed by k.
func (e *env) post(k *kez.Keys, body string, headers ...string) resp {
	e.t.Helper()
	auth := e.sign(k, "POST", "/v1/messages", "", []byte(body))
	return e.do("POST", "/v1/messages", strings.NewReader(body), append([]string{"X-KEZ-Auth", auth}, headers...)...)
}

// send sends envelope to the handle (or address) to, signed by from.
func (e *env) send(from *kez.Keys, to string, envelope string) resp {
	e.t.Helper()
	return e.post(from, `{"to":"`+to+`","envelope":`+envelope+`}`)
}

// msg sends a minimal envelope from → handle (whose key is toKey) and
// returns its receipt, checking for status.
func (e *env) msg(from, toKey *kez.Keys, to string, status int) receipt {
	e.t.Helper()
	r := e.send(from, to, envl(from, toKey))
	expect(e.t, "send to "+to, r, status, "")
	return r.receipt(e.t)
}

type receipt struct {
	Seq        uint64 `json:"seq"`
	To         string `json:"to"`
	ReceivedAt int64  `json:"received_at"`
}

func (r resp) receipt(t *testing.T) receipt {
	t.Helper()
	var out receipt
	if err := json.Unmarshal(r.body, &out); err != nil || out.Seq == 0 || out.ReceivedAt == 0 {
		t.Fatalf("receipt %s: %v", r.body, err)
	}
	return out
}

// message is the message object of SPEC §2.5.
type message struct {
	Seq        uint64          `json:"seq"`
	From       string          `json:"from"`
	FromAddr   string          `json:"from_addr"`
	Request    *bool           `json:"request"`
	Envelope   json.RawMessage `json:"envelope"`
	ReceivedAt int64           `json:"received_at"`
}

func (m message) request() bool { return m.Request != nil && *m.Request }

type page struct {
	Messages  []message `json:"messages"`
	NextSince uint64    `json:"next_since"`
	More      bool      `json:"more"`
}

// inbox reads one page of handle's inbox as k; query must be canonical.
func (e *env) inbox(k *kez.Keys, handle, query string) page {
	e.t.Helper()
	r := e.owner(k, "GET", "/v1/inbox/"+handle, query)
	expect(e.t, "inbox "+handle+"?"+query, r, 200, "")
	var p page
	if err := json.Unmarshal(r.body, &p); err != nil {
		e.t.Fatalf("inbox %s: %v", r.body, err)
	}
	for _, m := range p.Messages {
		if m.Request == nil || m.From == "" || m.ReceivedAt == 0 {
			e.t.Fatalf("message object without from, request or received_at: %s", r.body)
		}
	}
	return p
}

// all reads handle's whole inbox as k.
func (e *env) all(k *kez.Keys, handle string) []message {
	e.t.Helper()
	var out []message
	since := uint64(0)
	for {
		p := e.inbox(k, handle, fmt.Sprintf("limit=500&since=%d", since))
		out = append(out, p.Messages...)
		since = p.NextSince
		if !p.More {
			return out
		}
	}
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
	if m := r.json(t); m["server"] != serverName || m["status"] != "ok" || m["version"] != "1.2.3" || m["protocol"] != 2.0 {
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
	// Outside /v1/ the request passes on to the next handler.
	for _, p := range []string{"/", "/index.html", "/v1", "/v1x/inbox", "/.well-known/other", "/V1/healthz"} {
		if e.h.Route(httptest.NewRequest("GET", p, nil)) != nil {
			t.Errorf("%s is routed, want pass-through", p)
		}
	}
	// Under /v1/, a path we do not serve is a JSON 404 with CORS headers,
	// whatever the method.
	for _, p := range []string{"/v1/", "/v1/nothing", "/v1/u/", "/v1/u/a/b", "/v1/inbox/", "/v1/inbox/alice/other",
		"/v1/inbox/alice/contacts/", "/v1/inbox/alice/blocked", "/v1/inbox/alice/stream/x", "/v1/by-primary/", "/v1/healthz/x"} {
		for _, m := range []string{"GET", "POST", "OPTIONS"} {
			if e.h.Route(httptest.NewRequest(m, p, nil)) == nil {
				t.Fatalf("%s %s passes through, want our 404", m, p)
			}
			r := e.do(m, p, nil)
			expect(t, m+" "+p, r, 404, "not_found")
			if ct := r.header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
				t.Fatalf("%s %s: content type %q", m, p, ct)
			}
		}
	}
	for _, p := range []string{"/v1/messages", "/v1/inbox/alice/contacts/" + alice.Primary(), "/v1/inbox/alice/blocked/" + alice.Primary()} {
		r := e.do("OPTIONS", p, nil, "Origin", "https://elsewhere.example",
			"Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "content-type,x-kez-auth")
		expect(t, "preflight "+p, r, 204, "")
		if r.header.Get("Access-Control-Allow-Headers") != "Content-Type, X-KEZ-Auth" ||
			r.header.Get("Access-Control-Allow-Methods") != "GET, POST, PUT, DELETE" {
			t.Fatalf("preflight headers %v", r.header)
		}
	}
	r := e.do("PUT", "/v1/register", strings.NewReader("{}"))
	expect(t, "PUT /v1/register", r, 405, "method_not_allowed")
	if r.header.Get("Allow") != "POST, OPTIONS" {
		t.Fatalf("Allow = %q", r.header.Get("Allow"))
	}
	r = e.do("POST", "/v1/inbox/alice", nil)
	expect(t, "POST inbox", r, 405, "method_not_allowed")
	if r.header.Get("Allow") != "GET, DELETE, OPTIONS" {
		t.Fatalf("Allow = %q", r.header.Get("Allow"))
	}
	r = e.do("GET", "/v1/inbox/alice/contacts/"+alice.Primary(), nil)
	expect(t, "GET one contact", r, 405, "method_not_allowed")
	if r.header.Get("Allow") != "PUT, DELETE, OPTIONS" {
		t.Fatalf("Allow = %q", r.header.Get("Allow"))
	}
	r = e.do("PUT", "/v1/inbox/alice/contacts", nil)
	expect(t, "PUT the contact list", r, 405, "method_not_allowed")
	if r.header.Get("Allow") != "GET, OPTIONS" {
		t.Fatalf("Allow = %q", r.header.Get("Allow"))
	}
	expect(t, "GET /v1/messages", e.do("GET", "/v1/messages", nil), 405, "method_not_allowed")
}

func TestRegisterAndLookup(t *testing.T) {
	e := newEnv(t, nil)
	r := e.register(alice, "alice")
	expect(t, "register", r, 201, "")
	m := r.json(t)
	if m["handle"] != "alice" || m["address"] != "alice@"+serverName || m["server"] != serverName || m["primary"] != alice.Primary() {
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
	if !ed25519.Verify(alice.Private().Public().(ed25519.PublicKey), reg.Payload, sig) {
		t.Fatal("stored registration does not verify")
	}

	regBody := func(k *kez.Keys, handle, server string, ts time.Time) string {
		reg, err := kez.SignRegistration(k.Private(), handle, server, ts)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(reg)
		return string(b)
	}
	post := func(body string) resp { return e.do("POST", "/v1/register", strings.NewReader(body)) }
	expect(t, "retry", e.register(alice, "alice"), 200, "")
	// A signed retry that arrives after register_skew is still a retry...
	expect(t, "late retry", post(regBody(alice, "alice", serverName, time.Now().Add(-time.Hour))), 200, "")
	// ...but not a late new registration.
	expect(t, "late new registration", post(regBody(bob, "bob", serverName, time.Now().Add(-time.Hour))), 400, "stale_timestamp")
	expect(t, "bob takes alice", e.register(bob, "alice"), 409, "handle_taken")
	expect(t, "alice takes a second handle", e.register(alice, "alice2"), 409, "primary_taken")
	expect(t, "reserved", e.register(bob, "admin"), 400, "reserved_handle")
	expect(t, "reserved default", e.register(bob, "postmaster"), 400, "reserved_handle")
	expect(t, "uppercase", e.register(bob, "Bob"), 400, "invalid_handle")
	expect(t, "too big", post(strings.Repeat(" ", 20<<10)+"{}"), 400, "bad_request")
	expect(t, "garbage", post("hello"), 400, "bad_request")
	expect(t, "stale", post(regBody(bob, "bob", serverName, time.Now().Add(-6*time.Minute))), 400, "stale_timestamp")
	expect(t, "wrong server", post(regBody(bob, "bob", "other.example", time.Now())), 400, "wrong_server")
	good, _ := kez.SignRegistration(bob.Private(), "bob", serverName, time.Now())
	good.Signature.Alg = "ed448"
	b, _ := json.Marshal(good)
	expect(t, "alg", post(string(b)), 400, "unsupported_alg")
	good.Signature.Alg = "ed25519"
	good.Signature.Sig = strings.Repeat("00", 64)
	b, _ = json.Marshal(good)
	expect(t, "bad sig", post(string(b)), 400, "bad_signature")
	// Exact member names (SPEC §1): a case variant of a known member is refused.
	fine := regBody(bob, "bob", serverName, time.Now())
	expect(t, "Payload", post(strings.Replace(fine, `"payload"`, `"Payload"`, 1)), 400, "bad_request")
	expect(t, "text/plain", e.do("POST", "/v1/register", strings.NewReader(fine), "Content-Type", "text/plain"), 415, "bad_request")

	for _, p := range []string{"/v1/u/alice", "/v1/u/ALICE", "/v1/u/alice@kez.test", "/v1/u/Alice@KEZ.TEST"} {
		r := e.do("GET", p, nil)
		expect(t, p, r, 200, "")
		if r.json(t)["primary"] != alice.Primary() {
			t.Fatalf("%s = %s", p, r.body)
		}
	}
	expect(t, "unknown", e.do("GET", "/v1/u/nobody", nil), 404, "not_found")
	expect(t, "other server", e.do("GET", "/v1/u/alice@elsewhere.example", nil), 404, "not_found")
	expect(t, "bad handle", e.do("GET", "/v1/u/a", nil), 400, "invalid_handle")
	expect(t, "Cyrillic look-alike", e.do("GET", "/v1/u/\u0430lice", nil), 400, "invalid_handle")
	expect(t, "Kelvin-sign server", e.do("GET", "/v1/u/alice@\u212aez.test", nil), 404, "not_found")
	expect(t, "an escaped slash in a handle", e.do("GET", "/v1/u/..%2Falice", nil), 404, "not_found")
	expect(t, "webfinger Kelvin-sign host", e.do("GET", "/.well-known/webfinger?resource=acct:alice@%E2%84%AAez.test", nil), 404, "not_found")

	r = e.do("GET", "/v1/by-primary/"+alice.Primary(), nil)
	expect(t, "by-primary", r, 200, "")
	if r.json(t)["handle"] != "alice" {
		t.Fatalf("by-primary = %s", r.body)
	}
	expect(t, "by-primary unbound", e.do("GET", "/v1/by-primary/"+bob.Primary(), nil), 404, "not_found")
	expect(t, "by-primary garbage", e.do("GET", "/v1/by-primary/alice", nil), 400, "bad_request")
	expect(t, "by-primary upper", e.do("GET", "/v1/by-primary/"+strings.ToUpper(alice.Primary()), nil), 400, "bad_request")
}

func TestWebFinger(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.PublicURL = "https://chat.kez.test/" })
	e.users(alice, "alice")
	r := e.do("GET", "/.well-known/webfinger?resource=acct:alice@kez.test", nil)
	expect(t, "webfinger", r, 200, "")
	if ct := r.header.Get("Content-Type"); ct != "application/jrd+json" {
		t.Fatalf("content type %q", ct)
	}
	want := `{"aliases":["https://chat.kez.test/v1/u/alice"],"links":[{"href":"https://chat.kez.test/v1/u/alice","rel":"urn:kez:chat","type":"application/json"},{"href":"https://chat.kez.test","rel":"urn:kez:api"}],"properties":{"urn:kez:primary":"` +
		alice.Primary() + `"},"subject":"acct:alice@kez.test"}`
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
	e := newEnv(t, func(c *Config) {
		c.MaxEnvelope = 1024
		c.MaxInbox = 30
	})
	e.users(alice, "alice", bob, "bob", carol, "carol")
	// alice accepts bob: his messages are ordinary ones and count against max_inbox.
	expect(t, "alice accepts bob", e.owner(alice, "PUT", "/v1/inbox/alice/contacts/"+bob.Primary(), ""), 204, "")
	var seqs []uint64
	for i := range 12 {
		env := fmt.Sprintf(`{ "v" : 1, "from" : %q,
			"to": %q, "n" : %d, "pretty": [1, 2], "sig": "s%d" }`, bob.Primary(), alice.Primary(), i, i)
		r := e.send(bob, "alice", env)
		expect(t, "send", r, 201, "")
		rc := r.receipt(t)
		if rc.To != "alice" || rc.ReceivedAt < time.Now().Add(-time.Minute).UnixMilli() || rc.ReceivedAt > time.Now().Add(time.Minute).UnixMilli() {
			t.Fatalf("send = %s", r.body)
		}
		if len(seqs) > 0 && rc.Seq <= seqs[len(seqs)-1] {
			t.Fatalf("seq %d after %d", rc.Seq, seqs[len(seqs)-1])
		}
		seqs = append(seqs, rc.Seq)
	}
	expect(t, "send to address", e.send(bob, "alice@kez.test", envl(bob, alice)), 201, "")
	expect(t, "unknown recipient", e.send(bob, "dave", envl(bob, alice)), 404, "unknown_recipient")
	expect(t, "other server", e.send(bob, "alice@elsewhere.example", envl(bob, alice)), 404, "unknown_recipient")
	expect(t, "bad handle", e.send(bob, "a", envl(bob, alice)), 400, "invalid_handle")
	bad := map[string]string{
		"no to":                             `{"envelope":` + envl(bob, alice) + `}`,
		"not an object":                     `["alice",{}]`,
		"missing envelope":                  `{"to":"alice"}`,
		"unknown field":                     `{"to":"alice","envelope":` + envl(bob, alice) + `,"x":1}`,
		"trailing":                          `{"to":"alice","envelope":` + envl(bob, alice) + `} {}`,
		"to not a string":                   `{"to":1,"envelope":` + envl(bob, alice) + `}`,
		"to null":                           `{"to":null,"envelope":` + envl(bob, alice) + `}`,
		"to twice":                          `{"to":"alice","envelope":` + envl(bob, alice) + `,"to":"carol"}`,
		"invalid utf8 outside the envelope": "{\"to\":\"alice\xff\",\"envelope\":" + envl(bob, alice) + "}",
		"deeper than the decoder allows":    `{"to":"alice","envelope":` + strings.Repeat(`[`, 300) + strings.Repeat(`]`, 300) + `}`,
		"envelope a string":                 `{"to":"alice","envelope":"hello"}`,
		"envelope an array":                 `{"to":"alice","envelope":[1]}`,
		"envelope null":                     `{"to":"alice","envelope":null}`,
		"envelope without from":             `{"to":"alice","envelope":{"to":"` + alice.Primary() + `"}}`,
		"envelope without to":               `{"to":"alice","envelope":{"from":"` + bob.Primary() + `"}}`,
		"from not a string":                 `{"to":"alice","envelope":{"from":1,"to":"` + alice.Primary() + `"}}`,
		"from not a primary":                `{"to":"alice","envelope":{"from":"bob","to":"` + alice.Primary() + `"}}`,
		"from in upper case":                `{"to":"alice","envelope":{"from":"` + strings.ToUpper(bob.Primary()) + `","to":"` + alice.Primary() + `"}}`,
		"invalid utf8":                      `{"to":"alice","envelope":` + envl(bob, alice, "\"x\":\"\xff\"") + `}`,
		"deep nesting":                      `{"to":"alice","envelope":` + envl(bob, alice, `"d":`+strings.Repeat(`{"a":`, 100)+"1"+strings.Repeat("}", 100)) + `}`,
		"duplicate keys":                    `{"to":"alice","envelope":` + envl(bob, alice, `"n":1,"n":2`) + `}`,
		"huge number":                       `{"to":"alice","envelope":` + envl(bob, alice, `"n":1e999999`) + `}`,
	}
	for name, body := range bad {
		expect(t, name, e.post(bob, body), 400, "")
	}
	expect(t, "too large", e.send(bob, "alice", envl(bob, alice, `"x":"`+strings.Repeat("a", 1100)+`"`)), 413, "envelope_too_large")
	expect(t, "far too large", e.send(bob, "alice", envl(bob, alice, `"x":"`+strings.Repeat("a", 8<<10)+`"`)), 413, "envelope_too_large")
	expect(t, "escaped to", e.post(alice, `{"to":"\u0062ob","envelope":`+envl(alice, bob)+`}`), 201, "")

	// The reader: every auth failure first.
	path := "/v1/inbox/alice"
	now := time.Now()
	expect(t, "no auth", e.do("GET", path, nil), 401, "unauthorized")
	expect(t, "malformed", e.do("GET", path, nil, "X-KEZ-Auth", "hello"), 401, "unauthorized")
	expect(t, "upper-case hex", e.do("GET", path, nil, "X-KEZ-Auth", strings.ToUpper(signAt(alice, serverName, "GET", path, "", nil, now))), 401, "unauthorized")
	expect(t, "wrong key", e.do("GET", path, nil, "X-KEZ-Auth", signAt(bob, serverName, "GET", path, "", nil, now)), 401, "unauthorized")
	expect(t, "wrong cursor", e.do("GET", path+"?since=1", nil, "X-KEZ-Auth", signAt(alice, serverName, "GET", path, "since=0", nil, now)), 401, "unauthorized")
	expect(t, "stream signature on the inbox", e.do("GET", path, nil, "X-KEZ-Auth", signAt(alice, serverName, "GET", path+"/stream", "", nil, now)), 401, "unauthorized")
	expect(t, "bob's signature for bob's inbox on alice's", e.do("GET", path, nil, "X-KEZ-Auth", signAt(bob, serverName, "GET", "/v1/inbox/bob", "", nil, now)), 401, "unauthorized")
	expect(t, "unknown inbox", e.do("GET", "/v1/inbox/dave", nil, "X-KEZ-Auth", signAt(alice, serverName, "GET", "/v1/inbox/dave", "", nil, now)), 404, "not_found")
	for _, q := range []string{"since=-1", "since=x", "since=99999999999999999999", "since=%2B1", "since=01", "since=", "limit=0", "limit=-5", "limit=x", "since=1&since=1", "after=1", "since=1;limit=2"} {
		expect(t, "query "+q, e.do("GET", path+"?"+q, nil, "X-KEZ-Auth", e.sign(alice, "GET", path, q, nil)), 400, "bad_request")
	}

	p := e.inbox(alice, "ALICE", "limit=5&since=0") // the signed path is lower-cased
	if len(p.Messages) != 5 || !p.More || p.NextSince != seqs[4] {
		t.Fatalf("first page: %d messages next=%d more=%v", len(p.Messages), p.NextSince, p.More)
	}
	m0 := p.Messages[0]
	want := `{"v":1,"from":"` + bob.Primary() + `","to":"` + alice.Primary() + `","n":0,"pretty":[1,2],"sig":"s0"}`
	if string(m0.Envelope) != want || m0.Seq != seqs[0] || m0.From != bob.Primary() || m0.FromAddr != "bob@kez.test" || m0.request() {
		t.Fatalf("first message = %+v %s\nwant envelope %s", m0, m0.Envelope, want)
	}
	p = e.inbox(alice, "alice", fmt.Sprintf("limit=1000&since=%d", p.NextSince)) // clamped to 500
	if len(p.Messages) != 8 || p.More || p.NextSince <= seqs[11] {
		t.Fatalf("second page: %d messages next=%d more=%v", len(p.Messages), p.NextSince, p.More)
	}
	if p2 := e.inbox(alice, "alice", fmt.Sprintf("since=%d", p.NextSince)); p2.NextSince != p.NextSince || p2.More || len(p2.Messages) != 0 {
		t.Fatal("an empty page must keep next_since")
	}

	// Acknowledge.
	ackPath := func(upto uint64) string { return fmt.Sprintf("upto=%d", upto) }
	expect(t, "ack by bob", e.owner(bob, "DELETE", "/v1/inbox/alice", ackPath(seqs[4])), 401, "unauthorized")
	expect(t, "ack without upto", e.owner(alice, "DELETE", "/v1/inbox/alice", ""), 400, "bad_request")
	expect(t, "inbox signature as ack", e.do("DELETE", "/v1/inbox/alice?upto=0", nil, "X-KEZ-Auth", e.sign(alice, "GET", "/v1/inbox/alice", "upto=0", nil)), 401, "unauthorized")
	r := e.owner(alice, "DELETE", "/v1/inbox/alice", ackPath(seqs[4]))
	expect(t, "ack", r, 200, "")
	if string(r.body) != `{"deleted":5}` {
		t.Fatalf("ack = %s", r.body)
	}
	if msgs := e.all(alice, "alice"); len(msgs) != 8 || msgs[0].Seq != seqs[5] {
		t.Fatalf("after ack: %d messages", len(msgs))
	}
	// A seq is never reused, not even after acknowledgement.
	if rc := e.msg(bob, alice, "alice", 201); rc.Seq <= seqs[11] {
		t.Fatalf("seq %d after ack reuses one", rc.Seq)
	}

	// The cap: 30 messages from accepted senders, 9 stored.
	for range 21 {
		e.msg(bob, alice, "alice", 201)
	}
	expect(t, "full", e.send(bob, "alice", envl(bob, alice)), 507, "inbox_full")
	expect(t, "bob unaffected", e.send(alice, "bob", envl(alice, bob)), 201, "")
	// Requests never count against max_inbox (SPEC §2.5).
	e.msg(carol, alice, "alice", 201)
}

// A body far over the limit is refused without being read to its end.
func TestSendBodyIsBounded(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxEnvelope = 1024 })
	e.users(alice, "alice")
	counter := &countingReader{left: 64 << 20}
	req := httptest.NewRequest("POST", "/v1/messages", counter)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-KEZ-Auth", signAt(alice, serverName, "POST", "/v1/messages", "", []byte("whatever"), time.Now()))
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, req)
	if w.Code != 413 {
		t.Fatalf("status %d %s", w.Code, w.Body)
	}
	if counter.read > 1024+sendOverhead+64<<10 {
		t.Fatalf("read %d bytes of a 64 MiB body", counter.read)
	}
	// So is one announced over the limit: read up to the limit (so that
	// a client still sending can read the answer), not further.
	counter = &countingReader{left: 64 << 20}
	req = httptest.NewRequest("POST", "/v1/messages", counter)
	req.ContentLength = 64 << 20
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-KEZ-Auth", signAt(alice, serverName, "POST", "/v1/messages", "", []byte("whatever"), time.Now()))
	w = httptest.NewRecorder()
	e.h.ServeHTTP(w, req)
	if w.Code != 413 || counter.read > 1024+sendOverhead+64<<10 || w.Header().Get("Connection") != "close" {
		t.Fatalf("status %d, %d bytes read, Connection %q", w.Code, counter.read, w.Header().Get("Connection"))
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

// streamURL is the URL (and headers) of a stream request for handle signed
// by k, with the signature in ?auth= (viaURL) or in X-KEZ-Auth; query must
// be canonical.
func (e *env) streamURL(k *kez.Keys, handle, query string, viaURL bool) (string, []string) {
	path := "/v1/inbox/" + handle + "/stream"
	auth := e.sign(k, "GET", strings.ToLower(path), query, nil)
	u := path
	if query != "" {
		u += "?" + query
	}
	if !viaURL {
		return u, []string{"X-KEZ-Auth", auth}
	}
	if query != "" {
		return u + "&auth=" + auth, nil
	}
	return u + "?auth=" + auth, nil
}

// openStream opens a stream signed by k (in the header); query must be
// canonical. It returns nil and the answer when the status is not 200.
func (e *env) openStream(t *testing.T, k *kez.Keys, handle, query string, headers ...string) (*sseClient, resp) {
	t.Helper()
	u, auth := e.streamURL(k, handle, query, false)
	return e.openURL(t, u, append(auth, headers...)...)
}

func (e *env) openURL(t *testing.T, u string, headers ...string) (*sseClient, resp) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+u, nil)
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

// message returns the next message event, skipping comments; it fails the
// test when the stream ends first.
func (c *sseClient) message(t *testing.T) message {
	t.Helper()
	// A bound on the wait for a message that never comes, not a speed check.
	timer := time.AfterFunc(30*time.Second, func() { c.res.Body.Close() })
	defer timer.Stop()
	for {
		ev, ok := c.next()
		if !ok {
			t.Fatal("stream ended")
		}
		if ev.event != "message" {
			continue
		}
		var m message
		if err := json.Unmarshal([]byte(ev.data), &m); err != nil || fmt.Sprint(m.Seq) != ev.id || m.Request == nil || m.From == "" {
			t.Fatalf("event %+v: %v", ev, err)
		}
		return m
	}
}

// start reads the retry line that opens every stream.
func (c *sseClient) start(t *testing.T) {
	t.Helper()
	timer := time.AfterFunc(30*time.Second, func() { c.res.Body.Close() })
	defer timer.Stop()
	if ev, _ := c.next(); ev.event != "retry" || ev.data != "3000" {
		t.Fatalf("first = %+v", ev)
	}
}

// ended reports whether the stream reaches its end within d.
func (c *sseClient) ended(d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, ok := c.next(); !ok {
				return
			}
		}
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		c.res.Body.Close()
		<-done
		return false
	}
}

func TestStream(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Keepalive = 50 * time.Millisecond })
	e.users(alice, "alice", bob, "bob", carol, "carol")
	expect(t, "alice accepts bob", e.owner(alice, "PUT", "/v1/inbox/alice/contacts/"+bob.Primary(), ""), 204, "")
	now := time.Now()
	expect(t, "no auth", e.do("GET", "/v1/inbox/alice/stream", nil), 400, "missing_auth")
	expect(t, "no auth, with since", e.do("GET", "/v1/inbox/alice/stream?since=0", nil), 400, "missing_auth")
	expect(t, "bad auth", e.do("GET", "/v1/inbox/alice/stream?auth=1:2", nil), 401, "unauthorized")
	expect(t, "inbox signature on the stream", e.do("GET", "/v1/inbox/alice/stream?auth="+signAt(alice, serverName, "GET", "/v1/inbox/alice", "", nil, now), nil), 401, "unauthorized")
	expect(t, "bob's key", e.do("GET", "/v1/inbox/alice/stream", nil, "X-KEZ-Auth", signAt(bob, serverName, "GET", "/v1/inbox/alice/stream", "", nil, now)), 401, "unauthorized")
	expect(t, "unsigned since", e.do("GET", "/v1/inbox/alice/stream?since=1", nil, "X-KEZ-Auth", signAt(alice, serverName, "GET", "/v1/inbox/alice/stream", "", nil, now)), 401, "unauthorized")
	expect(t, "unknown", e.do("GET", "/v1/inbox/dave/stream?auth="+signAt(alice, serverName, "GET", "/v1/inbox/dave/stream", "", nil, now), nil), 404, "not_found")

	var seqs []uint64
	for range 3 {
		seqs = append(seqs, e.send(bob, "alice", envl(bob, alice, `"stored":true`)).receipt(t).Seq)
	}
	c, r := e.openStream(t, alice, "alice", fmt.Sprintf("since=%d", seqs[0]))
	if r.status != 200 {
		t.Fatalf("stream: %d %s", r.status, r.body)
	}
	if ct := c.res.Header.Get("Content-Type"); ct != "text/event-stream" || c.res.Header.Get("Cache-Control") != "no-cache" ||
		c.res.Header.Get("X-Accel-Buffering") != "no" || c.res.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("headers %v", c.res.Header)
	}
	c.start(t)
	// since=seqs[0]: the other two from storage, then live ones.
	for _, want := range seqs[1:] {
		m := c.message(t)
		if m.Seq != want || m.From != bob.Primary() || m.FromAddr != "bob@kez.test" || m.request() || !strings.Contains(string(m.Envelope), `"stored":true`) {
			t.Fatalf("backlog message %+v, want seq %d from bob", m, want)
		}
	}
	live := e.send(bob, "alice", envl(bob, alice, `"live":true`)).receipt(t).Seq
	if m := c.message(t); m.Seq != live || !strings.Contains(string(m.Envelope), `"live":true`) || m.request() {
		t.Fatalf("live event %+v", m)
	}
	// A stranger's message arrives live too, marked as a request.
	req := e.send(carol, "alice", envl(carol, alice)).receipt(t).Seq
	if m := c.message(t); m.Seq != req || m.From != carol.Primary() || m.FromAddr != "carol@kez.test" || !m.request() {
		t.Fatalf("request event %+v", m)
	}
	// Keepalive is 50 ms here; wait for one (at most 30 s).
	timer := time.AfterFunc(30*time.Second, func() { c.res.Body.Close() })
	for {
		ev, ok := c.next()
		if !ok {
			t.Fatal("stream ended before a ping")
		}
		if ev.event == "comment" && ev.data == ": ping" {
			break
		}
	}
	timer.Stop()

	// A second stream for the same handle gets the same events.
	c2, _ := e.openStream(t, alice, "alice", fmt.Sprintf("since=%d", req))
	c2.start(t)
	last := e.send(bob, "alice", envl(bob, alice)).receipt(t).Seq
	for _, cl := range []*sseClient{c, c2} {
		if m := cl.message(t); m.Seq != last {
			t.Fatalf("got %+v, want seq %d", m, last)
		}
	}

	// Close (Caddy cleanup) ends open streams.
	e.h.Close()
	if !c.ended(5 * time.Second) {
		t.Fatal("stream still open after Close")
	}
}

// Stream auth (SPEC §2.7): in the header or once in ?auth=.
func TestStreamAuth(t *testing.T) {
	e := newEnv(t, nil)
	e.users(alice, "alice", bob, "bob")
	e.msg(bob, alice, "alice", 201)

	u, hdr := e.streamURL(alice, "alice", "", false)
	c, r := e.openURL(t, u, hdr...)
	if c == nil {
		t.Fatalf("stream with X-KEZ-Auth: %d %s", r.status, r.body)
	}
	c.start(t)
	c.message(t)
	c.res.Body.Close()
	_, r = e.openURL(t, u, hdr...)
	expect(t, "the same header again", r, 401, "unauthorized")
	if !strings.Contains(string(r.body), "already used") {
		t.Fatalf("reuse: %s", r.body)
	}

	u, _ = e.streamURL(alice, "alice", "since=0", true)
	c, r = e.openURL(t, u)
	if c == nil {
		t.Fatalf("stream with ?auth=: %d %s", r.status, r.body)
	}
	c.start(t)
	c.message(t)
	c.res.Body.Close()
	_, r = e.openURL(t, u)
	expect(t, "the same ?auth= URL again", r, 401, "unauthorized")
	if !strings.Contains(string(r.body), "already used") {
		t.Fatalf("reuse: %s", r.body)
	}
	// ?auth= is the signature's only place: it is not itself signed, and
	// it may come percent-encoded, but only once.
	auth := e.sign(alice, "GET", "/v1/inbox/alice/stream", "", nil)
	expect(t, "auth twice", e.do("GET", "/v1/inbox/alice/stream?auth="+auth+"&auth="+auth, nil), 400, "bad_request")
	c, r = e.openURL(t, "/v1/inbox/alice/stream?auth="+strings.Replace(auth, ":", "%3A", 1))
	if c == nil {
		t.Fatalf("percent-encoded ?auth=: %d %s", r.status, r.body)
	}
	c.res.Body.Close()
	// An inbox GET does not take ?auth=.
	expect(t, "?auth= on the inbox", e.do("GET", "/v1/inbox/alice?auth="+e.sign(alice, "GET", "/v1/inbox/alice", "", nil), nil), 400, "bad_request")
}

// Last-Event-ID is not signed: it counts only when the signed query has
// no since (SPEC §2.7).
func TestStreamLastEventID(t *testing.T) {
	e := newEnv(t, nil)
	e.users(alice, "alice", bob, "bob")
	var seqs []uint64
	for range 5 {
		seqs = append(seqs, e.msg(bob, alice, "alice", 201).Seq)
	}
	c, _ := e.openStream(t, alice, "alice", fmt.Sprintf("since=%d", seqs[0]), "Last-Event-ID", fmt.Sprint(seqs[2]))
	c.start(t)
	if m := c.message(t); m.Seq != seqs[1] {
		t.Fatalf("signed since=%d with Last-Event-ID %d starts at %d, want %d", seqs[0], seqs[2], m.Seq, seqs[1])
	}
	c.res.Body.Close()
	c, _ = e.openStream(t, alice, "alice", "", "Last-Event-ID", fmt.Sprint(seqs[2]))
	c.start(t)
	if m := c.message(t); m.Seq != seqs[3] {
		t.Fatalf("Last-Event-ID %d without since starts at %d, want %d", seqs[2], m.Seq, seqs[3])
	}
	c.res.Body.Close()
	// A Last-Event-ID that is not a number is ignored: the stream starts at 0.
	c, _ = e.openStream(t, alice, "alice", "", "Last-Event-ID", "x")
	c.start(t)
	if m := c.message(t); m.Seq != seqs[0] {
		t.Fatalf("Last-Event-ID x starts at %d", m.Seq)
	}
}

// openStreams is how many streams hold a slot.
func (e *env) openStreams() int {
	e.h.streams.mu.Lock()
	defer e.h.streams.mu.Unlock()
	return e.h.streams.total
}

// A stream ends by itself after stream_max_age: one credential is worth
// one stream for a bounded time (SPEC §2.7).
func TestStreamMaxAge(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.StreamMaxAge = 300 * time.Millisecond })
	e.users(alice, "alice")
	c, r := e.openStream(t, alice, "alice", "")
	if c == nil {
		t.Fatalf("stream: %d %s", r.status, r.body)
	}
	c.start(t)
	if !c.ended(10 * time.Second) {
		t.Fatal("stream still open 10 s after a stream_max_age of 300 ms")
	}
	// The slot is given back.
	testwait.For(t, 5*time.Second, "the ended stream to give back its slot and subscription", func() bool {
		return e.openStreams() == 0 && e.hub.Subscribers("alice") == 0
	})
}

// A stream opened with since=N while messages are being sent delivers every
// message with seq > N exactly once, in order: the backlog and the live
// messages meet without a gap or a duplicate.
func TestStreamResumesWithoutGapsOrDuplicates(t *testing.T) {
	e := newEnv(t, nil)
	e.users(alice, "alice", bob, "bob")
	var before []uint64
	for range 5 {
		before = append(before, e.msg(bob, alice, "alice", 201).Seq)
	}
	since := before[2]
	const during = 40
	var (
		mu   sync.Mutex
		sent = slices.Clone(before[3:])
		errs = make(chan error, 1)
	)
	go func() {
		defer close(errs)
		for range during {
			body := `{"to":"alice","envelope":` + envl(bob, alice) + `}`
			r, err := e.request("POST", "/v1/messages", strings.NewReader(body), "X-KEZ-Auth", e.sign(bob, "POST", "/v1/messages", "", []byte(body)))
			if err == nil && r.status != 201 {
				err = fmt.Errorf("send: %d %s", r.status, r.body)
			}
			if err != nil {
				errs <- err
				return
			}
			var rc receipt
			_ = json.Unmarshal(r.body, &rc)
			mu.Lock()
			sent = append(sent, rc.Seq)
			mu.Unlock()
		}
	}()
	c, r := e.openStream(t, alice, "alice", fmt.Sprintf("since=%d", since))
	if c == nil {
		t.Fatalf("stream: %d %s", r.status, r.body)
	}
	c.start(t)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	slices.Sort(sent)
	var got []uint64
	for len(got) < len(sent) {
		got = append(got, c.message(t).Seq)
	}
	if !slices.Equal(got, sent) {
		t.Fatalf("stream since=%d delivered %v\nwant %v", since, got, sent)
	}
}

// readHook is the bolt store with a hook around one Read: the place where
// a stream switches from storage to live events.
type readHook struct {
	*bolt.Store
	armed         atomic.Bool
	before, after func()
}

func (s *readHook) Read(ctx context.Context, handle string, since uint64, limit int) ([]storage.Message, bool, error) {
	if !s.armed.CompareAndSwap(true, false) {
		return s.Store.Read(ctx, handle, since, limit)
	}
	s.before()
	msgs, more, err := s.Store.Read(ctx, handle, since, limit)
	s.after()
	return msgs, more, err
}

// A message committed while a stream reads its backlog is delivered once:
// one that commits after the stream subscribed but before its backlog read
// is in both (the duplicate must be dropped), one that commits after the
// backlog read is only live (it must not be lost).
func TestStreamBacklogMeetsLive(t *testing.T) {
	var hook *readHook
	e := newEnvWith(t, nil, func(s *bolt.Store) storage.Store {
		hook = &readHook{Store: s}
		return hook
	})
	e.users(alice, "alice", bob, "bob")
	stored := e.msg(bob, alice, "alice", 201).Seq
	var during []uint64 // written by the stream's handler, read after hooked
	hooked := make(chan struct{})
	appendNow := func() {
		m, fresh, err := e.store.Append(context.Background(), storage.Delivery{To: "alice", From: bob.Primary(), FromAddr: "bob@kez.test",
			Sig: fmt.Sprint("hook", len(during)), Envelope: []byte(envl(bob, alice)), SenderHandle: "bob", ToPrimary: alice.Primary()}, storage.Limits{})
		if err != nil || !fresh {
			panic(fmt.Sprint("append in the hook: ", err, fresh))
		}
		during = append(during, m.Seq)
	}
	hook.before = appendNow
	hook.after = func() { appendNow(); close(hooked) }
	hook.armed.Store(true)
	c, r := e.openStream(t, alice, "alice", "")
	if c == nil {
		t.Fatalf("stream: %d %s", r.status, r.body)
	}
	c.start(t)
	select {
	case <-hooked:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream did not read its backlog through the store")
	}
	want := append([]uint64{stored}, during...)
	var got []uint64
	for range want {
		got = append(got, c.message(t).Seq)
	}
	// Then one more live message: nothing else may come before it.
	last := e.msg(bob, alice, "alice", 201).Seq
	got = append(got, c.message(t).Seq)
	want = append(want, last)
	if !slices.Equal(got, want) {
		t.Fatalf("stream delivered %v, want %v", got, want)
	}
}

// A graceful shutdown of the http.Server ends streams instead of waiting for them.
func TestStreamEndsOnServerShutdown(t *testing.T) {
	e := newEnv(t, nil)
	e.users(alice, "alice")
	c, _ := e.openStream(t, alice, "alice", "")
	c.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.srv.Config.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown waited for the stream: %v", err)
	}
}

func TestEncodeMessage(t *testing.T) {
	m := struct2msg(7, 1764115200123, `{"v":1}`)
	m.From, m.FromAddr, m.Request = alice.Primary(), "alice@kez.test", true
	b := EncodeMessage(m)
	want := `{"seq":7,"from":"` + alice.Primary() + `","from_addr":"alice@kez.test","request":true,"envelope":{"v":1},"received_at":1764115200123}`
	if string(b) != want {
		t.Fatalf("%s\nwant %s", b, want)
	}
	var out message
	if err := json.Unmarshal(b, &out); err != nil || out.Seq != 7 || !out.request() {
		t.Fatalf("%s: %v", b, err)
	}
	m.FromAddr, m.Request = "", false
	if b := EncodeMessage(m); string(b) != `{"seq":7,"from":"`+alice.Primary()+`","request":false,"envelope":{"v":1},"received_at":1764115200123}` {
		t.Fatalf("without from_addr: %s", b)
	}
}

// A closed store (the moment of shutdown, or a storage failure) gives 503
// unavailable on every endpoint that needs it: never a panic or a 500.
func TestClosedStoreIsUnavailable(t *testing.T) {
	e := newEnv(t, nil)
	e.users(alice, "alice", bob, "bob")
	_ = e.store.Close()
	su, sh := e.streamURL(alice, "alice", "", false)
	cases := map[string]resp{
		"register":   e.register(carol, "carol"),
		"lookup":     e.do("GET", "/v1/u/alice", nil),
		"by-primary": e.do("GET", "/v1/by-primary/"+alice.Primary(), nil),
		"webfinger":  e.do("GET", "/.well-known/webfinger?resource=acct:alice@kez.test", nil),
		"send":       e.send(bob, "alice", envl(bob, alice)),
		"inbox":      e.owner(alice, "GET", "/v1/inbox/alice", ""),
		"ack":        e.owner(alice, "DELETE", "/v1/inbox/alice", "upto=1"),
		"stream":     e.do("GET", su, nil, sh...),
		"contacts":   e.owner(alice, "GET", "/v1/inbox/alice/contacts", ""),
		"accept":     e.owner(alice, "PUT", "/v1/inbox/alice/contacts/"+bob.Primary(), ""),
		"block":      e.owner(alice, "PUT", "/v1/inbox/alice/blocked/"+bob.Primary(), ""),
	}
	for name, r := range cases {
		expect(t, name, r, 503, "unavailable")
	}
}

func TestCursorBounds(t *testing.T) {
	e := newEnv(t, nil)
	e.users(alice, "alice")
	for _, upto := range []string{"-1", "x", "99999999999999999999", "9223372036854775808", "1.5", "%2B1", "+1", "01", "", "0x10"} {
		q := "upto=" + upto
		r := e.do("DELETE", "/v1/inbox/alice?"+q, nil, "X-KEZ-Auth", e.sign(alice, "DELETE", "/v1/inbox/alice", q, nil))
		expect(t, q, r, 400, "bad_request")
	}
	// The largest cursor is fine and finds nothing.
	max := "9223372036854775807"
	if p := e.inbox(alice, "alice", "since="+max); len(p.Messages) != 0 || p.NextSince != 9223372036854775807 {
		t.Fatalf("since=max: %+v", p)
	}
	expect(t, "ack upto=max", e.owner(alice, "DELETE", "/v1/inbox/alice", "upto="+max), 200, "")
	for _, s := range []string{"-1", "01", "9223372036854775808"} {
		u, h := e.streamURL(alice, "alice", "since="+s, false)
		expect(t, "stream since="+s, e.do("GET", u, nil, h...), 400, "bad_request")
	}
}

// Inbox pages stop at pageBytes of envelopes (with more=true), so a page of
// large envelopes costs a few MiB, not limit × max_envelope.
func TestInboxPageIsBoundedInBytes(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxEnvelope = 1 << 20 })
	e.users(alice, "alice", bob, "bob")
	for range 10 {
		expect(t, "send", e.send(bob, "alice", envl(bob, alice, `"ct":"`+strings.Repeat("A", 900<<10)+`"`)), 201, "")
	}
	var total int
	since := uint64(0)
	for pages := 1; ; pages++ {
		q := fmt.Sprintf("limit=500&since=%d", since)
		r := e.owner(alice, "GET", "/v1/inbox/alice", q)
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
	e.users(alice, "alice", bob, "bob")
	for range 40 {
		expect(t, "send", e.send(bob, "alice", envl(bob, alice, `"ct":"`+strings.Repeat("A", 900<<10)+`"`)), 201, "")
	}
	c, _ := e.openStream(t, alice, "alice", "since=0")
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

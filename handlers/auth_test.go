package handlers

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/vectors"
	"github.com/kezchat/kez/kez"
)

// The handler accepts the requests of testdata/kez-v2.json as they are,
// at the vectors' time on the vectors' server: the server builds the same
// signed string as every client (SPEC §2.0).
func TestAuthVectorsV2(t *testing.T) {
	v := vectors.LoadV2(t)
	at := time.Unix(v.Auth["inbox"].TS, 0)
	e := newEnv(t, func(c *Config) { c.Server = v.Server; c.Now = func() time.Time { return at } })
	e.users(alice, "alice", bob, "bob")
	want := map[string]int{"send": 201, "inbox": 200, "inbox_no_query": 200, "ack": 200, "contacts_get": 200, "contacts_put": 204, "stream": 200}
	if len(v.Auth) != len(want) {
		t.Fatalf("%d auth vectors, this test knows %d", len(v.Auth), len(want))
	}
	// The send first, so that bob's inbox holds its envelope.
	for _, name := range []string{"send", "inbox", "inbox_no_query", "ack", "contacts_get", "contacts_put", "stream"} {
		a := v.Auth[name]
		if a.TS != at.Unix() {
			t.Fatalf("%s: ts %d", name, a.TS)
		}
		var r resp
		switch {
		case name == "stream": // EventSource's way: the signature in the URL
			var c *sseClient
			if c, r = e.openURL(t, a.URLWithAuth); c != nil {
				c.start(t)
				c.res.Body.Close()
			}
		case a.Body != "":
			r = e.do(a.Method, a.URL, strings.NewReader(a.Body), "X-KEZ-Auth", a.Header)
		default:
			r = e.do(a.Method, a.URL, nil, "X-KEZ-Auth", a.Header)
		}
		expect(t, "vector "+name, r, want[name], "")
	}
	// What alice sent is what bob reads, and it opens with his key.
	msgs := e.all(bob, "bob")
	if len(msgs) != 1 || msgs[0].From != alice.Primary() || msgs[0].FromAddr != "alice@"+v.Server {
		t.Fatalf("bob's inbox: %+v", msgs)
	}
	if _, plain, err := bob.OpenJSON(msgs[0].Envelope); err != nil || len(plain) == 0 {
		t.Fatalf("the vector envelope does not open after the relay: %v", err)
	}
	// contacts_put accepted alice: the stored request became a message.
	if msgs[0].request() {
		t.Fatal("alice is accepted, but her message is still a request")
	}
}

// A signature names the server: one made for another server is void here,
// even by a user with the same key and handle there (SPEC §2.0).
func TestAuthBoundToServer(t *testing.T) {
	e := newEnv(t, nil)
	e.users(alice, "alice", bob, "bob")
	now := time.Now()
	other := func(method, path, query string, body []byte) string {
		return signAt(alice, "other.example", method, path, query, body, now)
	}
	expect(t, "inbox", e.do("GET", "/v1/inbox/alice", nil, "X-KEZ-Auth", other("GET", "/v1/inbox/alice", "", nil)), 401, "unauthorized")
	expect(t, "ack", e.do("DELETE", "/v1/inbox/alice?upto=1", nil, "X-KEZ-Auth", other("DELETE", "/v1/inbox/alice", "upto=1", nil)), 401, "unauthorized")
	expect(t, "stream", e.do("GET", "/v1/inbox/alice/stream?auth="+other("GET", "/v1/inbox/alice/stream", "", nil), nil), 401, "unauthorized")
	expect(t, "contacts", e.do("GET", "/v1/inbox/alice/contacts", nil, "X-KEZ-Auth", other("GET", "/v1/inbox/alice/contacts", "", nil)), 401, "unauthorized")
	p := "/v1/inbox/alice/contacts/" + bob.Primary()
	expect(t, "accept", e.do("PUT", p, nil, "X-KEZ-Auth", other("PUT", p, "", nil)), 401, "unauthorized")
	body := `{"to":"bob","envelope":` + envl(alice, bob) + `}`
	expect(t, "send", e.do("POST", "/v1/messages", strings.NewReader(body), "X-KEZ-Auth", other("POST", "/v1/messages", "", []byte(body))), 401, "unauthorized")
	// The server name is compared as configured (lower case).
	expect(t, "upper-case server name", e.do("GET", "/v1/inbox/alice", nil, "X-KEZ-Auth",
		signAt(alice, strings.ToUpper(serverName), "GET", "/v1/inbox/alice", "", nil, now)), 401, "unauthorized")
	if got := e.all(bob, "bob"); len(got) != 0 {
		t.Fatalf("a send signed for another server was stored: %+v", got)
	}
	// The same requests signed for this server pass.
	expect(t, "inbox signed here", e.owner(alice, "GET", "/v1/inbox/alice", ""), 200, "")
	expect(t, "send signed here", e.post(alice, body), 201, "")
}

// A signature covers method, path, query and body: it fits no other request.
func TestAuthBoundToRequest(t *testing.T) {
	e := newEnv(t, nil)
	e.users(alice, "alice", bob, "bob", carol, "carol")
	now := time.Now()
	sig := func(method, path, query string, body []byte) string {
		return signAt(alice, serverName, method, path, query, body, now)
	}
	cases := []struct {
		name, method, url string
		body              string
		auth              string
	}{
		{"GET signature on DELETE", "DELETE", "/v1/inbox/alice?upto=1", "", sig("GET", "/v1/inbox/alice", "upto=1", nil)},
		{"DELETE signature on GET", "GET", "/v1/inbox/alice", "", sig("DELETE", "/v1/inbox/alice", "", nil)},
		{"contacts signature on the inbox", "GET", "/v1/inbox/alice", "", sig("GET", "/v1/inbox/alice/contacts", "", nil)},
		{"path not lower-cased", "GET", "/v1/inbox/alice", "", sig("GET", "/v1/inbox/ALICE", "", nil)},
		{"other query value", "GET", "/v1/inbox/alice?since=2", "", sig("GET", "/v1/inbox/alice", "since=1", nil)},
		{"query signed out of order", "GET", "/v1/inbox/alice?since=5&limit=50", "", sig("GET", "/v1/inbox/alice", "since=5&limit=50", nil)},
		{"query not signed", "GET", "/v1/inbox/alice?limit=5", "", sig("GET", "/v1/inbox/alice", "", nil)},
		{"accept signed as block", "PUT", "/v1/inbox/alice/blocked/" + carol.Primary(), "", sig("PUT", "/v1/inbox/alice/contacts/"+carol.Primary(), "", nil)},
		{"accept carol signed, dave sent", "PUT", "/v1/inbox/alice/contacts/" + dave.Primary(), "", sig("PUT", "/v1/inbox/alice/contacts/"+carol.Primary(), "", nil)},
		{"PUT signed, DELETE sent", "DELETE", "/v1/inbox/alice/contacts/" + carol.Primary(), "", sig("PUT", "/v1/inbox/alice/contacts/"+carol.Primary(), "", nil)},
		{"ack signed with a body hash", "DELETE", "/v1/inbox/alice?upto=1", "", sig("DELETE", "/v1/inbox/alice", "upto=1", []byte("{}"))},
	}
	for _, c := range cases {
		expect(t, c.name, e.do(c.method, c.url, nil, "X-KEZ-Auth", c.auth), 401, "unauthorized")
	}
	// The canonical form of the same query verifies whatever the URL's order.
	expect(t, "query in canonical order", e.do("GET", "/v1/inbox/alice?since=5&limit=50", nil, "X-KEZ-Auth", sig("GET", "/v1/inbox/alice", "limit=50&since=5", nil)), 200, "")

	// A tampered body: alice signed one envelope, another one arrives.
	signed := `{"to":"bob","envelope":` + envl(alice, bob, `"n":1`) + `}`
	sent := strings.Replace(signed, `"n":1`, `"n":2`, 1)
	auth := sig("POST", "/v1/messages", "", []byte(signed))
	expect(t, "tampered body", e.do("POST", "/v1/messages", strings.NewReader(sent), "X-KEZ-Auth", auth), 401, "unauthorized")
	expect(t, "whitespace added", e.do("POST", "/v1/messages", strings.NewReader(signed+" "), "X-KEZ-Auth", auth), 401, "unauthorized")
	expect(t, "signed without the body", e.do("POST", "/v1/messages", strings.NewReader(signed), "X-KEZ-Auth", sig("POST", "/v1/messages", "", nil)), 401, "unauthorized")
	if got := e.all(bob, "bob"); len(got) != 0 {
		t.Fatalf("a tampered send was stored: %+v", got)
	}
	expect(t, "the body as signed", e.do("POST", "/v1/messages", strings.NewReader(signed), "X-KEZ-Auth", auth), 201, "")
}

// |ts − now| ≤ 60 s passes, 61 s does not, on every signed endpoint; the
// handler's clock is pinned so that the boundary is exact.
func TestAuthSkew(t *testing.T) {
	pinned := time.Now().Truncate(time.Second)
	e := newEnv(t, func(c *Config) { c.Now = func() time.Time { return pinned } })
	e.users(alice, "alice", bob, "bob")
	type request struct {
		method, path, query, body string
		ok                        int
	}
	reqs := map[string]request{
		"inbox":    {"GET", "/v1/inbox/alice", "", "", 200},
		"ack":      {"DELETE", "/v1/inbox/alice", "upto=1", "", 200},
		"contacts": {"GET", "/v1/inbox/alice/contacts", "", "", 200},
		"accept":   {"PUT", "/v1/inbox/alice/contacts/" + bob.Primary(), "", "", 204},
		"stream":   {"GET", "/v1/inbox/alice/stream", "", "", 200},
		"send":     {"POST", "/v1/messages", "", "", 201},
	}
	for name, q := range reqs {
		for _, d := range []int{-61, 61, -60, 60} {
			body := q.body
			if name == "send" {
				body = `{"to":"bob","envelope":` + envl(alice, bob) + `}` // a new envelope each time
			}
			auth := signAt(alice, serverName, q.method, q.path, q.query, []byte(body), pinned.Add(time.Duration(d)*time.Second))
			u := q.path
			if q.query != "" {
				u += "?" + q.query
			}
			what := fmt.Sprintf("%s at %+d s", name, d)
			if name == "stream" {
				c, r := e.openURL(t, u, "X-KEZ-Auth", auth)
				if c != nil {
					c.res.Body.Close()
				}
				if d == 60 || d == -60 {
					expect(t, what, r, 200, "")
				} else {
					expect(t, what, r, 401, "unauthorized")
				}
				continue
			}
			var r resp
			if body != "" {
				r = e.do(q.method, u, strings.NewReader(body), "X-KEZ-Auth", auth)
			} else {
				r = e.do(q.method, u, nil, "X-KEZ-Auth", auth)
			}
			if d == 60 || d == -60 {
				expect(t, what, r, q.ok, "")
			} else {
				expect(t, what, r, 401, "unauthorized")
			}
		}
	}
	sig := strings.Repeat("00", 64)
	ts := fmt.Sprint(pinned.Unix())
	for _, bad := range []string{"0:" + sig, "-5:" + sig, "0" + ts + ":" + sig, "+" + ts + ":" + sig, ts + ":" + sig[2:], ts + sig, ts + ":" + sig + "00", " " + ts + ":" + sig} {
		expect(t, "auth "+bad, e.do("GET", "/v1/inbox/alice", nil, "X-KEZ-Auth", bad), 401, "unauthorized")
	}
}

// Every signed string is accepted once (SPEC §2.0): the same request again
// is 401 "signature already used", and the retry a client makes, signed
// with a later ts, passes.
func TestAuthSingleUse(t *testing.T) {
	pinned := time.Now().Truncate(time.Second)
	var offset atomic.Int64 // seconds the handler's clock is ahead of pinned
	e := newEnv(t, func(c *Config) {
		c.Now = func() time.Time { return pinned.Add(time.Duration(offset.Load()) * time.Second) }
	})
	e.users(alice, "alice", bob, "bob")
	e.msg(bob, alice, "alice", 201)
	reused := func(what string, r resp) {
		t.Helper()
		expect(t, what, r, 401, "unauthorized")
		if !strings.Contains(string(r.body), "signature already used") {
			t.Fatalf("%s: %s", what, r.body)
		}
	}
	type request struct{ method, path, query string }
	reqs := map[string]request{
		"inbox":    {"GET", "/v1/inbox/alice", ""},
		"ack":      {"DELETE", "/v1/inbox/alice", "upto=1"},
		"contacts": {"GET", "/v1/inbox/alice/contacts", ""},
		"accept":   {"PUT", "/v1/inbox/alice/contacts/" + bob.Primary(), ""},
		"unblock":  {"DELETE", "/v1/inbox/alice/blocked/" + carol.Primary(), ""},
		"stream":   {"GET", "/v1/inbox/alice/stream", "since=0"},
	}
	for name, q := range reqs {
		u := q.path
		if q.query != "" {
			u += "?" + q.query
		}
		first := signAt(alice, serverName, q.method, q.path, q.query, nil, pinned)
		later := signAt(alice, serverName, q.method, q.path, q.query, nil, pinned.Add(time.Second))
		if name == "stream" {
			for i, auth := range []string{first, first, later} {
				c, r := e.openURL(t, u, "X-KEZ-Auth", auth)
				if (c != nil) != (i != 1) {
					t.Fatalf("stream use %d: %d %s", i, r.status, r.body)
				}
				if c != nil {
					c.start(t)
					c.res.Body.Close()
				} else {
					reused("stream again", r)
				}
			}
			// The header and ?auth= are one signature: used once in all.
			reused("stream header reused in ?auth=", e.do("GET", u+"&auth="+first, nil))
			continue
		}
		r := e.do(q.method, u, nil, "X-KEZ-Auth", first)
		if r.status >= 300 {
			t.Fatalf("%s: %d %s", name, r.status, r.body)
		}
		reused(name+" again", e.do(q.method, u, nil, "X-KEZ-Auth", first))
		// Still refused a little later, while the ts is within the skew.
		offset.Store(30)
		reused(name+" 30 s later", e.do(q.method, u, nil, "X-KEZ-Auth", first))
		offset.Store(0)
		if r := e.do(q.method, u, nil, "X-KEZ-Auth", later); r.status >= 300 {
			t.Fatalf("%s retried with a later ts: %d %s", name, r.status, r.body)
		}
	}
	// Several instances on one store share the record of used signatures.
	auth := signAt(alice, serverName, "GET", "/v1/inbox/alice", "limit=1", nil, pinned)
	expect(t, "instance 1", e.do("GET", "/v1/inbox/alice?limit=1", nil, "X-KEZ-Auth", auth), 200, "")
	other := New(Config{Server: serverName, Now: func() time.Time { return pinned }}, e.store, e.hub, nil)
	defer other.Close()
	req := httptest.NewRequest("GET", "/v1/inbox/alice?limit=1", nil)
	req.Header.Set("X-KEZ-Auth", auth)
	w := httptest.NewRecorder()
	other.ServeHTTP(w, req)
	if w.Code != 401 || !strings.Contains(w.Body.String(), "already used") {
		t.Fatalf("instance 2 took a used signature: %d %s", w.Code, w.Body)
	}
	// A signature that does not verify spends nothing: the signed string is
	// the single-use key, and a forger who sends it with a wrong signature
	// must not burn the user's request with it.
	bad := signAt(bob, serverName, "GET", "/v1/inbox/alice", "limit=2", nil, pinned)
	expect(t, "bob's signature", e.do("GET", "/v1/inbox/alice?limit=2", nil, "X-KEZ-Auth", bad), 401, "unauthorized")
	expect(t, "alice's", e.do("GET", "/v1/inbox/alice?limit=2", nil, "X-KEZ-Auth", signAt(alice, serverName, "GET", "/v1/inbox/alice", "limit=2", nil, pinned)), 200, "")
}

// Query rules (SPEC §2.0): a parameter the endpoint does not define, a
// repeated one or a non-canonical value is 400 bad_request, even with a
// valid signature over what was sent, so that nothing unsigned rides along.
func TestQueryRules(t *testing.T) {
	e := newEnv(t, nil)
	e.users(alice, "alice", bob, "bob")
	type endpoint struct {
		method, path string
		params       []string
	}
	endpoints := []endpoint{
		{"GET", "/v1/inbox/alice", []string{"since", "limit"}},
		{"DELETE", "/v1/inbox/alice", []string{"upto"}},
		{"GET", "/v1/inbox/alice/stream", []string{"since"}},
		{"GET", "/v1/inbox/alice/contacts", nil},
		{"PUT", "/v1/inbox/alice/contacts/" + bob.Primary(), nil},
		{"DELETE", "/v1/inbox/alice/blocked/" + bob.Primary(), nil},
		{"POST", "/v1/messages", nil},
	}
	for _, ep := range endpoints {
		var bad []string
		bad = append(bad, "x=1", "auth2=1", "Since=1", "since%00=1")
		if ep.path != "/v1/inbox/alice/stream" {
			bad = append(bad, "auth=1")
		}
		for _, p := range ep.params {
			bad = append(bad, p+"=1&"+p+"=1", p+"=1&"+p+"=2", p+"=05", p+"=+5", p+"=%2B5", p+"=-0", p+"=1e3", p+"=%201", p+"=0x1", p+"=")
		}
		for _, q := range bad {
			var body []byte
			if ep.method == "POST" {
				body = []byte(`{"to":"bob","envelope":` + envl(alice, bob) + `}`)
			}
			auth := e.sign(alice, ep.method, ep.path, q, body)
			var r resp
			if body != nil {
				r = e.do(ep.method, ep.path+"?"+q, strings.NewReader(string(body)), "X-KEZ-Auth", auth)
			} else {
				r = e.do(ep.method, ep.path+"?"+q, nil, "X-KEZ-Auth", auth)
			}
			expect(t, ep.method+" "+ep.path+"?"+q, r, 400, "bad_request")
		}
	}
	if got := e.all(bob, "bob"); len(got) != 0 {
		t.Fatalf("sends with a query were stored: %+v", got)
	}
}

// POST and PUT bodies must be application/json (415 otherwise, so that a
// browser cannot send them without a preflight); bodies where none belongs
// are refused.
func TestBodyContentType(t *testing.T) {
	e := newEnv(t, nil)
	e.users(alice, "alice", bob, "bob")
	send := func(ct string) resp {
		body := `{"to":"bob","envelope":` + envl(alice, bob) + `}`
		return e.do("POST", "/v1/messages", strings.NewReader(body), "Content-Type", ct,
			"X-KEZ-Auth", e.sign(alice, "POST", "/v1/messages", "", []byte(body)))
	}
	for _, ct := range []string{"", "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx", "application/json-seq", "json"} {
		r := send(ct)
		expect(t, "Content-Type "+ct, r, 415, "bad_request")
	}
	if got := e.all(bob, "bob"); len(got) != 0 {
		t.Fatalf("a send with the wrong type was stored: %+v", got)
	}
	for _, ct := range []string{"application/json", "application/json; charset=utf-8", "Application/JSON"} {
		expect(t, "Content-Type "+ct, send(ct), 201, "")
	}
	// PUT and DELETE name everything in the path: a JSON body is a bad
	// request, any other one is of the wrong type, and the contact is not
	// changed.
	p := "/v1/inbox/alice/contacts/" + carol.Primary()
	for ct, status := range map[string]int{"application/json": 400, "text/plain": 415, "": 415} {
		for _, body := range []string{"{}", `{"accept":true}`} {
			r := e.do("PUT", p, strings.NewReader(body), "Content-Type", ct, "X-KEZ-Auth", e.sign(alice, "PUT", p, "", []byte(body)))
			expect(t, "PUT contacts with a body ("+ct+")", r, status, "bad_request")
		}
	}
	ack := "/v1/inbox/alice"
	expect(t, "DELETE with a body", e.do("DELETE", ack+"?upto=1", strings.NewReader("{}"), "X-KEZ-Auth", e.sign(alice, "DELETE", ack, "upto=1", []byte("{}"))), 400, "bad_request")
	r := e.owner(alice, "GET", "/v1/inbox/alice/contacts", "")
	expect(t, "contacts", r, 200, "")
	if want := contactsJSON([]*kez.Keys{bob}, nil); string(r.body) != want { // bob by alice's sends
		t.Fatalf("a refused PUT changed the contacts: %s", r.body)
	}
	// Without a body, no type is needed.
	expect(t, "PUT without a body", e.owner(alice, "PUT", p, ""), 204, "")
	// Registration takes JSON only, too.
	reg, _ := kez.SignRegistration(carol.Private(), "carol", serverName, time.Now())
	b, _ := json.Marshal(reg)
	expect(t, "register as text/plain", e.do("POST", "/v1/register", strings.NewReader(string(b)), "Content-Type", "text/plain"), 415, "bad_request")
	expect(t, "register without a type", e.do("POST", "/v1/register", strings.NewReader(string(b)), "Content-Type", ""), 415, "bad_request")
	expect(t, "register", e.do("POST", "/v1/register", strings.NewReader(string(b))), 201, "")
}

// Sends checked in batches (AuthVerifier), forgeries among them: each
// forgery is refused and every honest send stored, whatever its batch
// mates, and a forgery's envelope is not stored.
func TestAuthBatchedWithForgeries(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.SenderRate = Rate{} })
	e.users(alice, "alice", bob, "bob")
	e.h.auth = kez.NewAuthVerifier(0, 20*time.Millisecond)
	e.h.auth.BatchAlways()
	expect(t, "bob accepts alice", e.owner(bob, "PUT", "/v1/inbox/bob/contacts/"+alice.Primary(), ""), 204, "")
	type result struct {
		forged bool
		status int
		body   string
	}
	const waves, perWave = 4, 24
	results := make(chan result, waves*perWave)
	for range waves {
		var wg sync.WaitGroup
		for i := range perWave {
			body := `{"to":"bob","envelope":` + envl(alice, bob) + `}`
			auth := e.sign(alice, "POST", "/v1/messages", "", []byte(body))
			forged := i%5 == 2
			if forged { // one hex digit of S changed
				b := []byte(auth)
				if b[len(b)-3] == '0' {
					b[len(b)-3] = '1'
				} else {
					b[len(b)-3] = '0'
				}
				auth = string(b)
			}
			wg.Go(func() {
				r, err := e.request("POST", "/v1/messages", strings.NewReader(body), "X-KEZ-Auth", auth)
				if err != nil {
					r.status, r.body = -1, []byte(err.Error())
				}
				results <- result{forged, r.status, string(r.body)}
			})
		}
		wg.Wait()
	}
	close(results)
	stored, forgeries := 0, 0
	for r := range results {
		switch {
		case r.forged && r.status != 401:
			t.Errorf("a forged send: %d %s, want 401", r.status, r.body)
		case r.forged:
			forgeries++
		case r.status != 201:
			t.Errorf("an honest send batched with forgeries: %d %s, want 201", r.status, r.body)
		default:
			stored++
		}
	}
	if n := len(e.all(bob, "bob")); n != stored || forgeries == 0 {
		t.Errorf("bob holds %d messages, %d honest sends were stored, %d forgeries refused", n, stored, forgeries)
	}
	if e.h.auth.Batches() == 0 {
		t.Error("no batch was checked as one")
	}
}

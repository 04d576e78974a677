package e2e

import (
	"bufio"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/internal/testwait"
	"github.com/kezchat/kez/kez"
)

// Every endpoint and error code of SPEC §2.1–2.4 through a real Caddy.
func TestRegistryEndpoints(t *testing.T) {
	t.Parallel()
	srv := testcaddy.Start(t, testcaddy.Options{KezOptions: "reserved ops"})
	alice, bob := newUser("alice"), newUser("bob")
	alicePrimary := alice.primary()

	r := do(t, "GET", srv.URL+"/v1/healthz", "")
	want(t, "healthz", r, 200, "")
	var health map[string]string
	_ = json.Unmarshal(r.body, &health)
	if health["server"] != testcaddy.ServerName || health["status"] != "ok" || health["version"] == "" {
		t.Fatalf("healthz %s", r.body)
	}
	if r.header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatal("no CORS header through Caddy")
	}

	want(t, "register", register(t, srv, alice), 201, "")
	want(t, "idempotent retry", register(t, srv, alice), 200, "")
	want(t, "handle taken", register(t, srv, user{"alice", bob.key}), 409, "handle_taken")
	want(t, "primary taken", register(t, srv, user{"alice2", alice.key}), 409, "primary_taken")
	want(t, "reserved from config", register(t, srv, user{"ops", bob.key}), 400, "reserved_handle")
	want(t, "reserved built in", register(t, srv, user{"root", bob.key}), 400, "reserved_handle")
	want(t, "invalid handle", register(t, srv, user{"b", bob.key}), 400, "invalid_handle")

	post := func(what string, mutate func(p map[string]any, sig *kez.Signature), code string, status int) {
		t.Helper()
		reg, _ := kez.SignRegistration(bob.key, "bob", testcaddy.ServerName, time.Now())
		var p map[string]any
		_ = json.Unmarshal(reg.Payload, &p)
		mutate(p, &reg.Signature)
		raw, _ := json.Marshal(p)
		if code != "bad_signature" && code != "unsupported_alg" {
			// Re-sign what was changed so only the intended check fails.
			canon, _ := json.Marshal(p)
			c, err := jcs(canon)
			if err != nil {
				t.Fatal(err)
			}
			reg.Signature.Sig = fmt.Sprintf("%x", ed25519.Sign(bob.key, c))
		}
		body, _ := json.Marshal(map[string]any{"payload": json.RawMessage(raw), "signature": reg.Signature})
		want(t, what, do(t, "POST", srv.URL+"/v1/register", string(body)), status, code)
	}
	post("wrong server", func(p map[string]any, _ *kez.Signature) { p["server"] = "elsewhere.example" }, "wrong_server", 400)
	post("stale", func(p map[string]any, _ *kez.Signature) { p["ts"] = time.Now().Add(-10 * time.Minute).Unix() }, "stale_timestamp", 400)
	post("future", func(p map[string]any, _ *kez.Signature) { p["ts"] = time.Now().Add(10 * time.Minute).Unix() }, "stale_timestamp", 400)
	post("small-order key", func(p map[string]any, _ *kez.Signature) {
		p["primary"] = "ed25519:0100000000000000000000000000000000000000000000000000000000000000"
	}, "invalid_key", 400)
	post("type", func(p map[string]any, _ *kez.Signature) { p["type"] = "other" }, "bad_request", 400)
	post("alg", func(_ map[string]any, s *kez.Signature) { s.Alg = "rsa-pss" }, "unsupported_alg", 400)
	post("signature", func(p map[string]any, _ *kez.Signature) { p["ts"] = time.Now().Unix() - 1 }, "bad_signature", 400)
	want(t, "not json", do(t, "POST", srv.URL+"/v1/register", "nope"), 400, "bad_request")
	want(t, "wrong method", do(t, "GET", srv.URL+"/v1/register", ""), 405, "method_not_allowed")

	r = do(t, "GET", srv.URL+"/v1/u/Alice@kez.test", "")
	want(t, "lookup", r, 200, "")
	var rec map[string]any
	_ = json.Unmarshal(r.body, &rec)
	if rec["address"] != "alice@kez.test" || rec["primary"] != alicePrimary || rec["registration"] == nil {
		t.Fatalf("record %s", r.body)
	}
	want(t, "lookup unknown", do(t, "GET", srv.URL+"/v1/u/nobody", ""), 404, "not_found")
	want(t, "lookup other server", do(t, "GET", srv.URL+"/v1/u/alice@elsewhere.example", ""), 404, "not_found")
	want(t, "by-primary", do(t, "GET", srv.URL+"/v1/by-primary/"+alicePrimary, ""), 200, "")
	want(t, "by-primary unknown", do(t, "GET", srv.URL+"/v1/by-primary/"+kez.FormatPrimary(bob.key.Public().(ed25519.PublicKey)), ""), 404, "not_found")
	want(t, "by-primary malformed", do(t, "GET", srv.URL+"/v1/by-primary/xyz", ""), 400, "bad_request")

	r = do(t, "GET", srv.URL+"/.well-known/webfinger?resource=acct:alice@kez.test", "")
	want(t, "webfinger", r, 200, "")
	if r.header.Get("Content-Type") != "application/jrd+json" || !strings.Contains(string(r.body), `"href":"`+srv.URL+`/v1/u/alice"`) {
		t.Fatalf("webfinger %v %s", r.header, r.body)
	}
	want(t, "webfinger missing", do(t, "GET", srv.URL+"/.well-known/webfinger", ""), 400, "bad_request")
	want(t, "webfinger other host", do(t, "GET", srv.URL+"/.well-known/webfinger?resource=acct:alice@elsewhere.example", ""), 404, "not_found")
	want(t, "webfinger unknown", do(t, "GET", srv.URL+"/.well-known/webfinger?resource=acct:zed@kez.test", ""), 404, "not_found")

	r = do(t, "OPTIONS", srv.URL+"/v1/inbox/alice", "", "Origin", "https://x.example", "Access-Control-Request-Method", "DELETE")
	if r.status != 204 || r.header.Get("Access-Control-Allow-Headers") != "Content-Type, X-KEZ-Auth" ||
		r.header.Get("Access-Control-Allow-Methods") != "GET, POST, PUT, DELETE" {
		t.Fatalf("preflight %d %v", r.status, r.header)
	}
	// Not ours: the next handler (file_server with the embedded web client) answers.
	r = do(t, "GET", srv.URL+"/", "")
	if r.status != 200 || !strings.Contains(strings.ToLower(string(r.body)), "<html") {
		t.Fatalf("site root: %d %.200s", r.status, r.body)
	}
	// Under /v1/ everything is the API's: an unknown path is a JSON 404 with CORS (SPEC §2).
	if r := do(t, "GET", srv.URL+"/v1/unknown", ""); r.status != 404 || r.code() != "not_found" || r.header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("unknown /v1 path: %d %v %s", r.status, r.header, r.body)
	}
}

// Two registrations racing for one handle: exactly one wins.
func TestConcurrentRegistrationRace(t *testing.T) {
	t.Parallel()
	srv := testcaddy.Start(t, testcaddy.Options{})
	const n = 12
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = register(t, srv, newUser("contested")).status
		}()
	}
	wg.Wait()
	created, taken := 0, 0
	for _, s := range statuses {
		switch s {
		case 201:
			created++
		case 409:
			taken++
		}
	}
	if created != 1 || taken != n-1 {
		t.Fatalf("statuses %v: %d created, %d taken", statuses, created, taken)
	}
}

// The relay over a real Caddy: send, page, every auth failure, ack, cap.
func TestRelayEndpoints(t *testing.T) {
	t.Parallel()
	srv := testcaddy.Start(t, testcaddy.Options{KezOptions: "max_inbox 50\nmax_envelope 4KiB"})
	alice, bob := newUser("alice"), newUser("bob")
	want(t, "register alice", register(t, srv, alice), 201, "")
	want(t, "register bob", register(t, srv, bob), 201, "")
	var seqs []uint64
	for i := range 30 {
		seqs = append(seqs, send(t, srv, "alice", fmt.Sprintf(`{"n":%d}`, i)))
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("seqs not increasing: %v", seqs)
		}
	}
	sender := defaultSender(t, srv.URL)
	post := func(body string) result { return signed(t, srv.URL, sender, "POST", "/v1/messages", body) }
	aliceEnv := sealFor(sender, alice.primary(), `{}`)
	want(t, "unknown recipient", post(`{"to":"carol","envelope":`+aliceEnv+`}`), 404, "unknown_recipient")
	want(t, "other server", post(`{"to":"alice@elsewhere.example","envelope":`+aliceEnv+`}`), 404, "unknown_recipient")
	want(t, "not an object", post(`{"to":"alice","envelope":"x"}`), 400, "bad_request")
	want(t, "envelope.to is bob", post(`{"to":"alice","envelope":`+sealFor(sender, bob.primary(), `{}`)+`}`), 400, "bad_request")
	want(t, "too large", post(`{"to":"alice","envelope":`+sealFor(sender, alice.primary(), `{"ct":"`+strings.Repeat("A", 5000)+`"}`)+`}`), 413, "envelope_too_large")
	// A body far over the limit: the server answers 413 once it has read
	// up to the limit and reads no more. (A client still sending may see
	// its connection reset before it reads the answer, so this one stops
	// writing after 300 KB and reads.)
	far := `{"to":"alice","envelope":{"ct":"` + strings.Repeat("A", 1<<20) + `"}}`
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/messages HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nX-KEZ-Auth: %s\r\nContent-Length: %d\r\n\r\n%s",
		strings.TrimPrefix(srv.URL, "http://"), sign(t, srv.URL, sender, "POST", "/v1/messages", "", far, time.Now().Unix()), len(far), far[:300<<10])
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	answer, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || answer.StatusCode != 413 {
		t.Fatalf("far too large: %v %v", answer, err)
	}
	want(t, "unsigned", do(t, "POST", srv.URL+"/v1/messages", `{"to":"alice","envelope":`+aliceEnv+`}`), 401, "unauthorized")
	want(t, "signed by someone else", signed(t, srv.URL, bob, "POST", "/v1/messages", `{"to":"alice","envelope":`+aliceEnv+`}`), 401, "unauthorized")
	want(t, "text/plain", do(t, "POST", srv.URL+"/v1/messages", `{"to":"alice","envelope":`+aliceEnv+`}`, "Content-Type", "text/plain"), 415, "bad_request")

	msgs, next, more := inbox(t, srv, alice, 0, 10)
	if len(msgs) != 10 || !more || next != seqs[9] || !strings.HasSuffix(string(msgs[3].Envelope), `,"n":3}`) ||
		msgs[3].From != sender.primary() || msgs[3].FromAddr != sender.handle+"@"+testcaddy.ServerName || msgs[3].Request {
		t.Fatalf("page 1: %d more=%v next=%d %+v", len(msgs), more, next, msgs[3])
	}
	if all := allInbox(t, srv, alice); len(all) != 30 || all[29].Seq != seqs[29] {
		t.Fatalf("all: %d", len(all))
	}

	url := "/v1/inbox/alice"
	now := time.Now().Unix()
	auth := func(u user, method, query string, ts int64) string {
		return sign(t, srv.URL, u, method, url, query, "", ts)
	}
	want(t, "missing auth", do(t, "GET", srv.URL+url, ""), 401, "unauthorized")
	want(t, "stale", do(t, "GET", srv.URL+url, "", "X-KEZ-Auth", auth(alice, "GET", "", now-120)), 401, "unauthorized")
	want(t, "wrong key", do(t, "GET", srv.URL+url, "", "X-KEZ-Auth", auth(bob, "GET", "", now)), 401, "unauthorized")
	want(t, "wrong cursor", do(t, "GET", srv.URL+url+"?since=5", "", "X-KEZ-Auth", auth(alice, "GET", "", now)), 401, "unauthorized")
	want(t, "another server's signature", do(t, "GET", srv.URL+url, "", "X-KEZ-Auth",
		(&kez.Request{Server: "other.example", Method: "GET", Path: url}).Sign(alice.key, time.Now())), 401, "unauthorized")
	want(t, "bad limit", do(t, "GET", srv.URL+url+"?limit=0", "", "X-KEZ-Auth", auth(alice, "GET", "limit=0", now)), 400, "bad_request")
	want(t, "unsigned parameter", do(t, "GET", srv.URL+url+"?since=0&extra=1", "", "X-KEZ-Auth", auth(alice, "GET", "since=0", now)), 400, "bad_request")
	want(t, "non-canonical", do(t, "GET", srv.URL+url+"?since=05", "", "X-KEZ-Auth", auth(alice, "GET", "since=5", now)), 400, "bad_request")
	want(t, "unknown inbox", signed(t, srv.URL, alice, "GET", "/v1/inbox/carol", ""), 404, "not_found")
	once := auth(alice, "GET", "since=3", now)
	want(t, "a signed read", do(t, "GET", srv.URL+url+"?since=3", "", "X-KEZ-Auth", once), 200, "")
	want(t, "the same signature again", do(t, "GET", srv.URL+url+"?since=3", "", "X-KEZ-Auth", once), 401, "unauthorized")

	ack := signed(t, srv.URL, alice, "DELETE", fmt.Sprintf("%s?upto=%d", url, seqs[19]), "")
	want(t, "ack", ack, 200, "")
	if string(ack.body) != `{"deleted":20}` {
		t.Fatalf("ack %s", ack.body)
	}
	want(t, "ack wrong key", signed(t, srv.URL, bob, "DELETE", url+"?upto=1", ""), 401, "unauthorized")
	if rest := allInbox(t, srv, alice); len(rest) != 10 || rest[0].Seq != seqs[20] {
		t.Fatalf("after ack: %d", len(rest))
	}
	for range 40 {
		send(t, srv, "alice", `{}`)
	}
	want(t, "inbox full", post(`{"to":"alice","envelope":`+sealFor(sender, alice.primary(), `{}`)+`}`), 507, "inbox_full")
	// A seq is never reused: the next one after an ack is above everything seen.
	if s := send(t, srv, "bob", `{}`); s == 0 {
		t.Fatal("bob's inbox unaffected by alice's cap")
	}
}

// Retention removes old messages in the background.
func TestRetention(t *testing.T) {
	t.Parallel()
	srv := testcaddy.Start(t, testcaddy.Options{KezOptions: "retention 1s"})
	alice := newUser("alice")
	want(t, "register", register(t, srv, alice), 201, "")
	send(t, srv, "alice", `{"old":true}`)
	testwait.Every(t, 200*time.Millisecond, 10*time.Second, "a 1s retention to remove the message", func() bool { return len(allInbox(t, srv, alice)) == 0 })
	// The seq is not reused; the new message may itself expire before the read.
	s := send(t, srv, "alice", `{"new":true}`)
	if got := allInbox(t, srv, alice); s < 2 || len(got) > 1 || (len(got) == 1 && got[0].Seq != s) {
		t.Fatalf("after retention: seq %d, inbox %+v", s, got)
	}
}

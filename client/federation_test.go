package client_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/client/clienttest"
	"github.com/kezchat/kez/kez"
)

// The federation tests (SPEC §8) run against two fakes with logs of their
// own: alice is on one.example, bob on two.example.

// federated is alice, registered on one, with a resolver for both fakes.
func federated(t *testing.T, one, two *clienttest.Fake, store client.TrustStore) *client.Client {
	t.Helper()
	if store == nil {
		store = client.MemoryTrust()
	}
	alice, err := client.New(one.URL, client.Options{Keys: kez.GenerateKeys(), Handle: "alice", Trust: store,
		Resolve: map[string]string{one.Name: one.URL, two.Name: two.URL}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Register(context.Background(), "alice"); err != nil {
		t.Fatal(err)
	}
	return alice
}

// twoFakes are one.example and two.example, with bob registered on two.
func twoFakes(t *testing.T) (one, two *clienttest.Fake, bob *kez.Keys) {
	one, two = clienttest.NewFake(t, "one.example"), clienttest.NewFake(t, "two.example")
	bob = kez.GenerateKeys()
	two.Register(bob, "bob")
	return one, two, bob
}

func TestValidServerName(t *testing.T) {
	for _, ok := range []string{"two.example", "localhost", "127.0.0.1:8080", "a-b.c0", "xn--bcher-kva.example"} {
		if !client.ValidServerName(ok) {
			t.Errorf("ValidServerName(%q) = false", ok)
		}
	}
	for _, bad := range []string{"", "Two.example", "two.example/", "evil@two", "two.example#x", "two.example?x", "two..example",
		".two", "two.", "-two", "two example", "two.example:", "two.example:0", "two.example:123456", "two.example:8x",
		"169.254.169.254/latest", "two%2eexample", "[::1]", strings.Repeat("a", 300)} {
		if client.ValidServerName(bad) {
			t.Errorf("ValidServerName(%q) = true", bad)
		}
	}
}

func TestResolveServer(t *testing.T) {
	ctx := context.Background()
	// A server reachable over https (as https://<server> would be), whose
	// WebFinger answer is set per test.
	var mu sync.Mutex
	answer := func(w http.ResponseWriter, r *http.Request) {}
	tls := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		a := answer
		mu.Unlock()
		a(w, r)
	}))
	defer tls.Close()
	// example.com is a name in the test server's certificate; every
	// connection to it goes to the test server, to anything else nowhere.
	const server = "example.com"
	httpClient := tls.Client()
	var strayDials atomic.Int32
	transport := httpClient.Transport.(*http.Transport).Clone()
	transport.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr != server+":443" {
			strayDials.Add(1)
			return nil, errors.New("no route to " + addr)
		}
		return (&net.Dialer{}).DialContext(ctx, network, tls.Listener.Addr().String())
	}
	httpClient.Transport = transport
	set := func(status int, body string) {
		mu.Lock()
		defer mu.Unlock()
		answer = func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/.well-known/webfinger" || r.URL.Query().Get("resource") != "acct:bob@"+server {
				http.Error(w, "unexpected "+r.URL.String(), 500)
				return
			}
			w.Header().Set("Content-Type", "application/jrd+json")
			w.WriteHeader(status)
			io.WriteString(w, body)
		}
	}
	c, err := client.New("http://127.0.0.1:1", client.Options{HTTPClient: httpClient, ServerName: "one.example",
		Resolve: map[string]string{"mapped.example": "http://127.0.0.1:9/"}})
	if err != nil {
		t.Fatal(err)
	}

	if base, err := c.ResolveServer(ctx, "mapped.example", "bob"); err != nil || base != "http://127.0.0.1:9" {
		t.Errorf("mapped: %q, %v; want the resolver's base", base, err)
	}
	set(200, `{"subject":"acct:bob@`+server+`","links":[{"rel":"urn:kez:chat","href":"x"},{"rel":"urn:kez:api","href":"https://api.two.example/kez/"}]}`)
	if base, err := c.ResolveServer(ctx, server, "bob"); err != nil || base != "https://api.two.example/kez" {
		t.Errorf("webfinger link: %q, %v", base, err)
	}
	set(200, `{"subject":"acct:bob@`+server+`","links":[]}`)
	if base, err := c.ResolveServer(ctx, server, "bob"); err != nil || base != "https://"+server {
		t.Errorf("no link: %q, %v; want https://<server>", base, err)
	}
	set(404, `{"error":{"code":"not_found","message":"no"}}`)
	if base, err := c.ResolveServer(ctx, server, "bob"); err != nil || base != "https://"+server {
		t.Errorf("404: %q, %v; want https://<server>", base, err)
	}
	// A link to plain http, or to something that is not a base URL, is a
	// lie about where the API is, not a base to use.
	for _, href := range []string{"http://api.two.example", "https://api.two.example/?q=1", "https://user@api.two.example", "javascript:alert(1)", "//api.two.example"} {
		set(200, `{"links":[{"rel":"urn:kez:api","href":`+strings.TrimSpace(mustJSON(href))+`}]}`)
		var pe *client.ProtocolError
		if base, err := c.ResolveServer(ctx, server, "bob"); !errors.As(err, &pe) {
			t.Errorf("link %q: %q, %v; want a ProtocolError", href, base, err)
		}
	}
	// Unreachable: the default, to try (and fail) later.
	if base, err := c.ResolveServer(ctx, "unreachable.example", "bob"); err != nil || base != "https://unreachable.example" {
		t.Errorf("unreachable: %q, %v", base, err)
	}
	// Addresses in messages name servers: none may send the client to
	// its own machine or network unless the user mapped it.
	for _, bad := range []string{"two.example/x", "a@b", "", "two.example#", "127.0.0.1:22", "10.0.0.1", "169.254.169.254", "localhost", "db.localhost:5432"} {
		if _, err := c.ResolveServer(ctx, bad, "bob"); err == nil {
			t.Errorf("server name %q accepted", bad)
		}
	}
	if n := strayDials.Load(); n != 1 {
		t.Errorf("%d connections to servers other than example.com; want only the one to unreachable.example", n)
	}
	if _, err := client.New("http://127.0.0.1:1", client.Options{Resolve: map[string]string{"x.example": "ftp://x"}}); err == nil {
		t.Error("a resolver base that is not http(s) was accepted")
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestRemoteContactPinnedPerServer(t *testing.T) {
	ctx := context.Background()
	one, two := clienttest.NewFake(t, "one.example"), clienttest.NewFake(t, "two.example")
	bob := kez.GenerateKeys()
	two.Register(kez.GenerateKeys(), "carol")
	two.Register(bob, "bob")
	store := client.MemoryTrust()
	alice := federated(t, one, two, store)

	ct, err := alice.Contact(ctx, "Bob@Two.Example")
	if err != nil {
		t.Fatal(err)
	}
	if ct.Status != client.ContactNew || !ct.Remote || ct.Who() != "bob@two.example" || ct.Primary != bob.Primary() || ct.Verified() {
		t.Fatalf("remote contact = %+v (who %s)", ct, ct.Who())
	}
	st, _ := store.Load()
	remote := st.Remotes["two.example"]
	if st.LogKey != one.LogKey || remote == nil || remote.LogKey != two.LogKey || remote.Server != "two.example" {
		t.Fatalf("log keys: home %q, remotes %+v; want each server's own", st.LogKey, st.Remotes)
	}
	if st.Contacts["bob"] != nil || remote.Contacts["bob"] == nil || remote.Contacts["bob"].Primary != bob.Primary() {
		t.Fatalf("bob's pin is not kept under two.example: home %v, remote %v", st.Contacts, remote.Contacts)
	}
	// A local user of the same handle is another person with a pin of their own.
	localBob := kez.GenerateKeys()
	one.Register(localBob, "bob")
	if lct, err := alice.Contact(ctx, "bob"); err != nil || lct.Primary != localBob.Primary() || lct.Remote || lct.Who() != "bob" {
		t.Fatalf("local bob = %+v, %v", lct, err)
	}
	if again, err := alice.Contact(ctx, "bob@two.example"); err != nil || again.Status != client.ContactPinned {
		t.Fatalf("remote bob again = %+v, %v", again, err)
	}
	if h, how := alice.PinnedHandle(bob.Primary()); h != "bob@two.example" || how != "pinned" {
		t.Errorf("PinnedHandle(remote bob) = %q %q", h, how)
	}
	if _, err := alice.MarkVerified("bob@two.example", bob.Primary()); err != nil {
		t.Fatal(err)
	}
	if ct, _ := alice.Contact(ctx, "bob@two.example"); !ct.Verified() {
		t.Error("verification of bob@two.example did not stick")
	}
	if ct, _ := alice.Contact(ctx, "bob"); ct.Verified() {
		t.Error("verifying bob@two.example verified the local bob")
	}

	// A record two.example serves but never logged (a changed key without
	// a log entry) is refused, and said to be about bob@two.example.
	mallory := kez.GenerateKeys()
	two.Serve(mallory, "bob")
	_, err = alice.Contact(ctx, "bob@two.example")
	var le *client.LogError
	if !errors.As(err, &le) || !strings.Contains(le.What, "bob@two.example") {
		t.Fatalf("unlogged remote key: %v; want a LogError about bob@two.example", err)
	}
	if _, err := alice.Recipient(ctx, "bob@two.example"); !client.IsTrustFailure(err) {
		t.Fatalf("sending to the unlogged key: %v", err)
	}
	st, _ = store.Load()
	if len(st.Remotes["two.example"].Warnings) == 0 || len(st.Warnings) != 0 {
		t.Errorf("the warning belongs to two.example: home %v, remote %v", st.Warnings, st.Remotes["two.example"].Warnings)
	}
}

func TestRemoteKeyChangeAndFork(t *testing.T) {
	ctx := context.Background()
	one, two, bob := twoFakes(t)
	alice := federated(t, one, two, nil)
	if _, err := alice.Contact(ctx, "bob@two.example"); err != nil {
		t.Fatal(err)
	}
	// bob's handle deleted and registered again by another key: in the
	// log, but not a rotation by the pinned key.
	two.Delete(bob, "bob")
	other := kez.GenerateKeys()
	two.Register(other, "bob")
	_, err := alice.Recipient(ctx, "bob@two.example")
	var kc *client.KeyChangedError
	if !errors.As(err, &kc) || kc.Handle != "bob@two.example" || kc.New != other.Primary() {
		t.Fatalf("changed remote key: %v; want KeyChangedError for bob@two.example", err)
	}
	if _, err := alice.PinnedRecipient("bob@two.example"); !errors.As(err, &kc) {
		t.Fatalf("pinned recipient of a changed key: %v", err)
	}
	if p, err := alice.AcceptKey("bob@two.example"); err != nil || p.Primary != other.Primary() {
		t.Fatalf("AcceptKey(bob@two.example) = %+v, %v", p, err)
	}
	if _, err := alice.Recipient(ctx, "bob@two.example"); err != nil {
		t.Fatalf("after accepting: %v", err)
	}

	// two.example rewrites its log: a forked checkpoint. Refused, kept,
	// and named as two.example's; alice's own server is not concerned.
	two.Truncate(1)
	two.Register(kez.GenerateKeys(), "dave")
	two.Register(kez.GenerateKeys(), "erin")
	_, err = alice.Contact(ctx, "dave@two.example")
	var fe *client.ForkError
	if !errors.As(err, &fe) || fe.Server != "two.example" || !strings.Contains(fe.Error(), "two.example") {
		t.Fatalf("forked remote log: %v; want a ForkError of two.example", err)
	}
	if _, err := alice.Contact(ctx, "bob@two.example"); !errors.As(err, &fe) {
		t.Fatalf("the fork is not kept: %v", err)
	}
	if _, err := alice.Monitor(ctx); err != nil {
		t.Fatalf("alice's own server is not forked: %v", err)
	}
	// The user resets two.example's log: its key is pinned again.
	rc, err := alice.Remote(ctx, "@two.example")
	if err != nil || !rc.IsRemote() {
		t.Fatal(rc, err)
	}
	if err := rc.ResetLog(); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Contact(ctx, "dave@two.example"); err != nil {
		t.Fatalf("after reset: %v", err)
	}
}

func TestOldTrustStateReadsAsIs(t *testing.T) {
	// A state saved before federation: no "remotes".
	old := `{"server":"one.example","log_key":"k","scan":{"size":0},"contacts":{"bob":{"handle":"bob","primary":"ed25519:00","index":3,"pinned_at":1}}}`
	var st client.TrustState
	if err := json.Unmarshal([]byte(old), &st); err != nil {
		t.Fatal(err)
	}
	if st.Remotes != nil || st.Contacts["bob"].Primary != "ed25519:00" || st.LogKey != "k" {
		t.Fatalf("old state read as %+v", st)
	}
	out, _ := json.Marshal(&st)
	if strings.Contains(string(out), "remotes") {
		t.Errorf("a state without remote servers gained a member: %s", out)
	}
}

func TestDeliverToRemoteServer(t *testing.T) {
	ctx := context.Background()
	one, two, bob := twoFakes(t)
	var mu sync.Mutex
	var bodies [][]byte
	var auths []string
	two.Intercept = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/v1/messages" {
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			bodies, auths = append(bodies, b), append(auths, r.Header.Get("X-KEZ-Auth"))
			mu.Unlock()
			r.Body = io.NopCloser(strings.NewReader(string(b)))
		}
		return false
	}
	alice := federated(t, one, two, nil)
	r, err := alice.Recipient(ctx, "bob@two.example")
	if err != nil {
		t.Fatal(err)
	}
	out, err := alice.Seal(ctx, r, "hi bob")
	if err != nil || out.To != "bob@two.example" {
		t.Fatalf("seal: %+v, %v", out, err)
	}
	for range 2 { // the second is the outbox's resend: same envelope, new signature
		if _, err := alice.Deliver(ctx, out); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bodies) != 2 || string(bodies[0]) != string(bodies[1]) || auths[0] == auths[1] {
		t.Fatalf("two deliveries: bodies equal %v, signatures differ %v", string(bodies[0]) == string(bodies[1]), auths[0] != auths[1])
	}
	f, err := kez.ExactMembers(bodies[0], []string{"to", "from_addr", "envelope"}, nil)
	if err != nil || string(f["to"]) != `"bob"` || string(f["from_addr"]) != `"alice@one.example"` || string(f["envelope"]) != string(out.Envelope) {
		t.Fatalf("body %s: %v", bodies[0], err)
	}
	// Signed by alice's key for two.example, and void for one.example.
	for server, want := range map[string]bool{"two.example": true, "one.example": false} {
		req := kez.Request{Server: server, Method: "POST", Path: "/v1/messages", BodyHash: kez.BodySHA256(bodies[0])}
		_, _, err := req.Verify(alice.Keys().Private().Public().(ed25519.PublicKey), auths[0], time.Now(), time.Minute)
		if (err == nil) != want {
			t.Errorf("signature for %s verifies: %v, want %v", server, err == nil, want)
		}
	}
	// bob is accepted in alice's own inbox once, so his answers are not requests.
	if got := one.Accepted("alice"); len(got) != 1 || got[0] != bob.Primary() {
		t.Errorf("accepted at home: %v, want bob's key once", got)
	}
	if n := len(two.Inbox("bob")); n != 2 {
		t.Errorf("the fake stores each post (the real server stores it once); got %d", n)
	}
}

func TestSenderVerifiedAtItsServer(t *testing.T) {
	ctx := context.Background()
	one, two, bob := twoFakes(t)
	alice := federated(t, one, two, nil)

	ct, err := alice.Sender(ctx, bob.Primary(), "bob@two.example", true)
	if err != nil || !ct.Remote || ct.Address != "bob@two.example" || ct.Status != client.ContactNew {
		t.Fatalf("remote sender: %+v, %v", ct, err)
	}
	// Signed by a key that two.example does not bind to bob: not bob.
	mallory := kez.GenerateKeys()
	_, err = alice.Sender(ctx, mallory.Primary(), "bob@two.example", true)
	var se *client.SenderError
	if !errors.As(err, &se) || se.Previous || se.Bound != bob.Primary() || !client.IsTrustFailure(err) {
		t.Fatalf("forged remote sender: %v", err)
	}
	// bob rotates: his older messages come from an earlier key of his.
	newBob := kez.GenerateKeys()
	two.Rotate(bob, newBob, "bob")
	if _, err = alice.Sender(ctx, bob.Primary(), "bob@two.example", true); !errors.As(err, &se) || !se.Previous {
		t.Fatalf("earlier key: %v", err)
	}
	if ct, err := alice.Sender(ctx, newBob.Primary(), "bob@two.example", true); err != nil || ct.Status != client.ContactPinned {
		t.Fatalf("rotated sender: %+v, %v", ct, err)
	}
	for _, addr := range []string{"bob@two.example/x", "bob@evil@two.example", "b@two.example", "bob@169.254.169.254:80/", "bob@127.0.0.1:22", "bob@localhost"} {
		if _, err := alice.Sender(ctx, newBob.Primary(), addr, false); err == nil {
			t.Errorf("from_addr %q accepted", addr)
		}
	}
	// Unreachable: an error, never a verified sender.
	dead, err := client.New(one.URL, client.Options{Keys: alice.Keys(), Handle: "alice", ServerName: "one.example",
		Resolve: map[string]string{"three.example": "http://127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dead.Sender(ctx, newBob.Primary(), "bob@three.example", true); err == nil || !client.IsTemporary(err) {
		t.Errorf("unreachable sender's server: %v", err)
	}
}

func TestIsTemporary(t *testing.T) {
	for err, want := range map[error]bool{
		&client.NetworkError{URL: "x", Err: io.EOF}:                     true,
		&client.APIError{Status: 503, Code: kez.CodeSenderUnverifiable}: true,
		&client.APIError{Status: 502}:                                   true,
		&client.APIError{Status: 429, Code: kez.CodeRateLimited}:        true,
		&client.APIError{Status: 408, Code: kez.CodeBodyTimeout}:        true,
		context.DeadlineExceeded:                                        true,
		&client.APIError{Status: 429, Code: kez.CodeRequestLimit}:       false,
		&client.APIError{Status: 403, Code: kez.CodeFederationRefused}:  false,
		&client.APIError{Status: 403, Code: kez.CodeSenderUnverified}:   false,
		&client.APIError{Status: 400, Code: kez.CodeBadRequest}:         false,
		&client.ProtocolError{URL: "x", Reason: "y"}:                    false,
		errors.New("other"): false,
	} {
		if got := client.IsTemporary(err); got != want {
			t.Errorf("IsTemporary(%v) = %v", err, got)
		}
	}
}

// TestRemoteAnswersAreBounded: another server's answers are read up to
// 16 MiB, not the 512 MiB an inbox page of one's own server may take.
func TestRemoteAnswersAreBounded(t *testing.T) {
	one, two, _ := twoFakes(t)
	chunk := strings.Repeat(" ", 1<<20)
	two.Intercept = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/v1/u/bob" {
			return false
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"handle":"bob"`)
		for range 17 {
			if _, err := io.WriteString(w, chunk); err != nil {
				return true
			}
		}
		io.WriteString(w, `}`)
		return true
	}
	alice := federated(t, one, two, nil)
	var pe *client.ProtocolError
	if _, err := alice.Lookup(context.Background(), "bob@two.example"); !errors.As(err, &pe) || !strings.Contains(pe.Reason, "larger than 16 MiB") {
		t.Errorf("a 17 MiB record: %v", err)
	}
}

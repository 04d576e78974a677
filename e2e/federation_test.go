package e2e

// Federation (SPEC §8) between real Caddy processes on loopback, named
// one.test and two.test, each resolving the other with federation_resolve:
// users of one write to users of the other, are message requests until
// accepted, are verified at their own server (and refused when it lies
// or forks its log), and hostile from_addr values are refused within the
// fetch rules' bounds.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/kez"
)

// remoteSend posts envelope fields from sender (fromAddr, a user of another
// server) to the handle to on base, signed for base's server name.
func remoteSend(t testing.TB, base string, sender user, fromAddr, to, fields string) result {
	t.Helper()
	body := `{"to":"` + to + `","from_addr":"` + fromAddr + `","envelope":` + sealFor(sender, lookupPrimary(t, base, to), fields) + `}`
	return remoteSendBody(t, base, sender, body)
}

func remoteSendBody(t testing.TB, base string, sender user, body string) result {
	t.Helper()
	req, err := http.NewRequest("POST", base+"/v1/messages", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-KEZ-Auth", sign(t, base, sender, "POST", "/v1/messages", "", body, time.Now().Unix()))
	return doRequest(t, req)
}

func federated(t *testing.T, extraOne, extraTwo string) (one, two *testcaddy.Server) {
	t.Helper()
	s := testcaddy.StartFederation(t,
		testcaddy.Options{ServerName: "one.test", KezOptions: extraOne},
		testcaddy.Options{ServerName: "two.test", KezOptions: extraTwo})
	return s[0], s[1]
}

func TestFederationChatBothWays(t *testing.T) {
	t.Parallel()
	one, two := federated(t, "", "")
	alice, bob := newUser("alice"), newUser("bob")
	want(t, "register alice@one", register(t, one, alice), 201, "")
	want(t, "register bob@two", register(t, two, bob), 201, "")

	// Discovery: the API base in WebFinger, the resolve map for clients.
	r := do(t, "GET", two.URL+"/.well-known/webfinger?resource=acct:bob@two.test", "")
	want(t, "webfinger", r, 200, "")
	if !strings.Contains(string(r.body), `{"href":"`+two.URL+`","rel":"urn:kez:api"}`) {
		t.Fatalf("webfinger has no urn:kez:api link: %s", r.body)
	}
	r = do(t, "GET", one.URL+"/v1/federation", "")
	want(t, "federation info", r, 200, "")
	if got, w := string(r.body), `{"policy":"open","resolve":{"two.test":"`+two.URL+`"}}`; got != w {
		t.Fatalf("GET /v1/federation = %s, want %s", got, w)
	}

	// alice@one writes to bob@two: a message request, from her verified address.
	r = remoteSend(t, two.URL, alice, "alice@one.test", "bob", `{"n":1}`)
	want(t, "alice@one → bob@two", r, 201, "")
	msgs := allInbox(t, two, bob)
	if len(msgs) != 1 || msgs[0].FromAddr != "alice@one.test" || msgs[0].From != alice.primary() || !msgs[0].Request {
		t.Fatalf("bob's inbox: %+v", msgs)
	}
	// The same envelope again is the same message (a client's resend).
	body := `{"to":"bob","from_addr":"alice@one.test","envelope":` + string(msgs[0].Envelope) + `}`
	r2 := remoteSendBody(t, two.URL, alice, body)
	want(t, "resend", r2, 200, "")
	if !strings.Contains(string(r2.body), fmt.Sprintf(`"seq":%d,`, msgs[0].Seq)) {
		t.Fatalf("resend receipt %s, want seq %d", r2.body, msgs[0].Seq)
	}

	// bob accepts alice at home; alice accepts bob at hers (her client
	// does, since her server never sees her send): both ways are chats.
	want(t, "bob accepts alice", signed(t, two.URL, bob, "PUT", "/v1/inbox/bob/contacts/"+alice.primary(), ""), 204, "")
	want(t, "alice accepts bob", signed(t, one.URL, alice, "PUT", "/v1/inbox/alice/contacts/"+bob.primary(), ""), 204, "")
	want(t, "bob@two → alice@one", remoteSend(t, one.URL, bob, "bob@two.test", "alice", `{"n":2}`), 201, "")
	want(t, "alice@one → bob@two again", remoteSend(t, two.URL, alice, "alice@one.test", "bob", `{"n":3}`), 201, "")
	if msgs := allInbox(t, one, alice); len(msgs) != 1 || msgs[0].FromAddr != "bob@two.test" || msgs[0].Request {
		t.Fatalf("alice's inbox: %+v", msgs)
	}
	if msgs := allInbox(t, two, bob); len(msgs) != 2 || msgs[0].Request || msgs[1].Request {
		t.Fatalf("bob's inbox after accepting: %+v", msgs)
	}

	// Someone else's key cannot borrow alice's address, nor bob's own
	// server's users another server's.
	mallory := newUser("mallory")
	want(t, "a key not bound to alice@one", remoteSend(t, two.URL, mallory, "alice@one.test", "bob", `{}`), 403, "sender_unverified")
	want(t, "an address one does not hold", remoteSend(t, two.URL, mallory, "nobody@one.test", "bob", `{}`), 403, "sender_unverified")
	want(t, "a local sender naming another address", remoteSend(t, two.URL, bob, "carol@two.test", "bob", `{}`), 400, "bad_request")
	// Signed for one.test, posted to two.test: not this server's signature.
	body = `{"to":"bob","from_addr":"alice@one.test","envelope":` + sealFor(alice, bob.primary(), `{}`) + `}`
	req, _ := http.NewRequest("POST", two.URL+"/v1/messages", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-KEZ-Auth", sign(t, one.URL, alice, "POST", "/v1/messages", "", body, time.Now().Unix()))
	want(t, "signed for the sender's own server", doRequest(t, req), 401, "")
}

func TestFederationPolicyAndLimits(t *testing.T) {
	t.Parallel()
	one, two := federated(t, "", "request_limit 2\nfederation_rate 4/1m")
	alice, bob := newUser("alice"), newUser("bob")
	register(t, one, alice)
	register(t, two, bob)
	want(t, "first request", remoteSend(t, two.URL, alice, "alice@one.test", "bob", `{}`), 201, "")
	want(t, "second request", remoteSend(t, two.URL, alice, "alice@one.test", "bob", `{}`), 201, "")
	want(t, "third request from a stranger", remoteSend(t, two.URL, alice, "alice@one.test", "bob", `{}`), 429, "request_limit")
	carol := newUser("carol")
	register(t, one, carol)
	want(t, "carol's first", remoteSend(t, two.URL, carol, "carol@one.test", "bob", `{}`), 201, "")
	r := remoteSend(t, two.URL, carol, "carol@one.test", "bob", `{}`)
	want(t, "over federation_rate for one.test", r, 429, "rate_limited")
	if r.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}

	base := two.Opts
	base.KezOptions = strings.Replace(base.KezOptions, "federation_rate 4/1m", "", 1)
	for _, policy := range []string{"federation deny one.test", "federation allow three.test", "federation off"} {
		opts := base
		opts.KezOptions += "\n" + policy
		two.Reload(t, opts)
		want(t, policy, remoteSend(t, two.URL, alice, "alice@one.test", "bob", `{}`), 403, "federation_refused")
	}
	r = do(t, "GET", two.URL+"/v1/federation", "")
	if !strings.HasPrefix(string(r.body), `{"policy":"off",`) {
		t.Fatalf("GET /v1/federation with federation off: %s", r.body)
	}
}

// switchProxy forwards to one of several Caddys, or lets a test rewrite
// answers: a server that lies about its users.
type switchProxy struct {
	target  atomic.Pointer[url.URL]
	rewrite atomic.Pointer[func(path string, body []byte) []byte]
	srv     *httptest.Server
}

func newSwitchProxy(t *testing.T, target string) *switchProxy {
	p := &switchProxy{}
	p.point(t, target)
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(p.target.Load()) },
		ModifyResponse: func(resp *http.Response) error {
			fn := p.rewrite.Load()
			if fn == nil {
				return nil
			}
			body, err := readAll(resp)
			if err != nil {
				return err
			}
			body = (*fn)(resp.Request.URL.Path, body)
			resp.Body = ioNopCloser(body)
			resp.ContentLength = int64(len(body))
			resp.Header.Set("Content-Length", fmt.Sprint(len(body)))
			return nil
		},
	}
	p.srv = httptest.NewServer(rp)
	t.Cleanup(p.srv.Close)
	return p
}

func (p *switchProxy) point(t *testing.T, target string) {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p.target.Store(u)
}

func TestFederationLyingServer(t *testing.T) {
	t.Parallel()
	one, two := federated(t, "", "federation_cache 1s")
	alice, bob, mallory := newUser("alice"), newUser("bob"), newUser("mallory")
	register(t, one, alice)
	register(t, two, bob)
	// two reaches one.test only through a proxy the test controls.
	proxy := newSwitchProxy(t, one.URL)
	opts := two.Opts
	opts.KezOptions = strings.Replace(opts.KezOptions, "federation_resolve one.test "+one.URL, "federation_resolve one.test "+proxy.srv.URL, 1)
	two.Reload(t, opts)
	want(t, "honest", remoteSend(t, two.URL, alice, "alice@one.test", "bob", `{}`), 201, "")

	// one claims mallory's key is alice's: a registration signed by
	// mallory for alice@one.test, which is not the leaf the log holds.
	reg := registrationJSON(t, mallory, "alice", "one.test")
	lie := func(path string, body []byte) []byte {
		if path != "/v1/u/alice" {
			return body
		}
		var rec map[string]json.RawMessage
		_ = json.Unmarshal(body, &rec)
		rec["primary"], _ = json.Marshal(mallory.primary())
		rec["registration"] = reg
		out, _ := json.Marshal(rec)
		return out
	}
	proxy.rewrite.Store(&lie)
	time.Sleep(1100 * time.Millisecond) // past federation_cache
	r := remoteSend(t, two.URL, mallory, "alice@one.test", "bob", `{}`)
	want(t, "a key changed without a log entry", r, 403, "sender_unverified")
	if !strings.Contains(string(r.body), "is not in one.test's binding log") {
		t.Errorf("refusal of the changed key: %s", r.body)
	}
	proxy.rewrite.Store(nil)

	// A fork: a copy of one's database (same log key) grows another way,
	// and two is shown its checkpoint after one's.
	one.Stop(t, 30*time.Second)
	forkDir := t.TempDir()
	copyFile(t, one.DBPath, filepath.Join(forkDir, "chat.db"))
	one.Start(t, one.Opts)
	fork := testcaddy.Start(t, testcaddy.Options{ServerName: "one.test", Storage: "storage bolt " + filepath.Join(forkDir, "chat.db")})
	register(t, one, newUser("dave"))
	register(t, fork, newUser("erin"))
	time.Sleep(1100 * time.Millisecond)
	want(t, "one after dave", remoteSend(t, two.URL, alice, "alice@one.test", "bob", `{}`), 201, "")
	proxy.point(t, fork.URL)
	time.Sleep(1100 * time.Millisecond)
	r = remoteSend(t, two.URL, alice, "alice@one.test", "bob", `{}`)
	want(t, "the fork", r, 403, "sender_unverified")
	if !strings.Contains(string(r.body), "inconsistent with what it showed before") {
		t.Errorf("refusal of the fork: %s", r.body)
	}
	if !strings.Contains(two.Logs(), "inconsistent with the one it showed before") {
		t.Error("no warning about the fork in two's log")
	}
	// Caught once, refused for good: even back on the honest server, and
	// after a restart.
	proxy.point(t, one.URL)
	want(t, "after the fork", remoteSend(t, two.URL, alice, "alice@one.test", "bob", `{}`), 403, "sender_unverified")
	two.Stop(t, 30*time.Second)
	two.Start(t, two.Opts)
	want(t, "after a restart", remoteSend(t, two.URL, alice, "alice@one.test", "bob", `{}`), 403, "sender_unverified")
	// The operator clears the pin, as the README says.
	opts = two.Opts
	opts.KezOptions += "\nfederation_repin one.test"
	two.Reload(t, opts)
	want(t, "after federation_repin", remoteSend(t, two.URL, alice, "alice@one.test", "bob", `{}`), 201, "")
}

func TestFederationHostileFromAddr(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	loopTarget := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer loopTarget.Close()
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, loopTarget.URL+r.URL.Path, http.StatusFound)
	}))
	defer redirect.Close()
	endless := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		chunk := []byte(strings.Repeat("x", 32<<10))
		for i := 0; i < 4096 && r.Context().Err() == nil; i++ { // bounded: 128 MiB at most
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	defer endless.Close()
	stall := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-stall:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(stall)

	srv := testcaddy.Start(t, testcaddy.Options{ServerName: "two.test", KezOptions: strings.Join([]string{
		"federation_resolve redirect.test " + redirect.URL,
		"federation_resolve endless.test " + endless.URL,
		"federation_resolve slow.test " + slow.URL,
	}, "\n")})
	bob, mallory := newUser("bob"), newUser("mallory")
	register(t, srv, bob)

	// Servers the fetch rules forbid are refused without a connection.
	for _, addr := range []string{"alice@127.0.0.1", "alice@10.0.0.1", "alice@169.254.169.254", "alice@localhost", "alice@0.0.0.0"} {
		want(t, addr, remoteSend(t, srv.URL, mallory, addr, "bob", `{}`), 403, "federation_refused")
	}
	// Not addresses at all, or twisted: 400.
	for _, addr := range []string{"alice@one.test:8080", "alice@http://one.test", "ALICE@one.test", "alice@ONE.test", "alice@one.test/x", "alice@[::1]", "@one.test", "alice@one..test"} {
		want(t, addr, remoteSend(t, srv.URL, mallory, addr, "bob", `{}`), 400, "bad_request")
	}
	// A redirect (to loopback) is not followed.
	want(t, "redirect", remoteSend(t, srv.URL, mallory, "alice@redirect.test", "bob", `{}`), 403, "sender_unverified")
	if hits.Load() != 0 {
		t.Fatalf("the redirect's target was fetched %d times", hits.Load())
	}
	// An endless answer and a server that never answers end within the
	// 5 s bound, as 503 (the client retries later).
	for _, addr := range []string{"alice@endless.test", "alice@slow.test"} {
		start := time.Now()
		r := remoteSend(t, srv.URL, mallory, addr, "bob", `{}`)
		want(t, addr, r, 503, "sender_unverifiable")
		if r.header.Get("Retry-After") == "" {
			t.Errorf("%s: 503 without Retry-After", addr)
		}
		t.Logf("%s refused after %s", addr, time.Since(start).Round(time.Millisecond))
	}
	// The server is still well.
	want(t, "healthz", do(t, "GET", srv.URL+"/v1/healthz", ""), 200, "")
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// registrationJSON is u's signed registration of handle@server, as a record holds it.
func registrationJSON(t *testing.T, u user, handle, server string) json.RawMessage {
	t.Helper()
	reg, err := kez.SignRegistration(u.key, handle, server, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return reg.Stored()
}

func readAll(resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

func ioNopCloser(b []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(b)) }

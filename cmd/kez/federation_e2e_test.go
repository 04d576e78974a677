package main

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/client/clienttest"
	"github.com/kezchat/kez/internal/testcaddy"
)

// Federation from the terminal (SPEC §8) between real Caddys on loopback:
// alice on one.test, bob on two.test, each kez told where the other server
// is with KEZ_RESOLVE (the servers with federation_resolve).

// federatedUsers starts one.test and two.test and registers alice on one
// and bob on two.
func federatedUsers(t *testing.T) (one, two *testcaddy.Server, alice, bob *user) {
	t.Helper()
	s := testcaddy.StartFederation(t, testcaddy.Options{ServerName: "one.test"}, testcaddy.Options{ServerName: "two.test"})
	one, two = s[0], s[1]
	resolve := "KEZ_RESOLVE=one.test=" + one.URL + ",two.test=" + two.URL
	alice, bob = newUser(t), newUser(t)
	alice.env, bob.env = []string{resolve}, []string{resolve}
	alice.must("primary:", "init")
	bob.must("primary:", "init")
	alice.must("registered alice@one.test", "register", "alice", "--server", one.URL)
	bob.must("registered bob@two.test", "register", "bob", "--server", two.URL)
	return one, two, alice, bob
}

// inboxParts splits kez inbox output into contacts' messages and requests.
func inboxParts(out string) (messages, requests string) {
	messages, requests, _ = strings.Cut(out, "message requests:")
	return messages, requests
}

func TestCLIFederationChat(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("uses os.Interrupt on a child process")
	}
	_, _, alice, bob := federatedUsers(t)

	// alice@one writes to bob@two: looked up and verified at two, and a
	// message request there.
	r := alice.run("", "send", "bob@two.test", "hello", "bob")
	if r.code != 0 || r.stdout != "sent to bob@two.test\n" || !strings.Contains(r.stderr, "first message to bob@two.test") {
		t.Fatalf("alice → bob@two.test = %+v", r)
	}
	msgs, reqs := inboxParts(bob.must("message requests: 1", "inbox"))
	if strings.Contains(msgs, "hello bob") || !strings.Contains(reqs, " alice@one.test: hello bob") {
		t.Fatalf("bob's inbox: messages %q, requests %q", msgs, reqs)
	}
	bob.must("alice@one.test: 1 request(s)", "requests")
	bob.must("accepted alice@one.test", "accept", "alice@one.test")

	// bob answers: alice had accepted him at home when she wrote, so it
	// is not a request for her.
	bob.must("sent to alice@one.test", "send", "alice@one.test", "hi", "alice")
	out := alice.must("bob@two.test: hi alice", "inbox")
	if strings.Contains(out, "message requests") {
		t.Errorf("bob's answer is a request for alice:\n%s", out)
	}
	bob.must("alice@one.test: hello bob", "inbox")
	bob.must("no message requests", "requests")
	if out := bob.must("accepted (their messages are not requests): 1", "contacts"); !strings.Contains(out, "alice@one.test (pinned)") {
		t.Errorf("bob's contacts:\n%s", out)
	}

	// Live, both ways.
	l := bob.listen()
	alice.must("sent to bob@two.test", "send", "bob@two.test", "live", "from", "one")
	if got := l.expect(l.stdout, "live from one"); !strings.HasSuffix(got, " alice@one.test: live from one") {
		t.Errorf("bob's listen shows %q", got)
	}
	l.stop()

	// Keys of the other server: pinned under its own log key, the same
	// safety number on both sides, verified only when said so.
	whois := alice.must("address     bob@two.test", "whois", "bob@two.test")
	if !strings.Contains(whois, "the log key pinned for two.test") || !strings.Contains(whois, "NOT verified") {
		t.Errorf("whois bob@two.test:\n%s", whois)
	}
	aliceSees := alice.must("safety number of you (alice@one.test) and bob@two.test", "verify", "bob@two.test")
	bobSees := bob.must("safety number of you (bob@two.test) and alice@one.test", "verify", "alice@one.test")
	if numberOf(t, aliceSees) != numberOf(t, bobSees) {
		t.Fatal("alice and bob see different safety numbers")
	}
	alice.must("bob@two.test is verified", "verify", "bob@two.test", "--yes")
	alice.must("trust       verified", "whois", "bob@two.test")
	status := alice.must("remote      two.test: log key two.test/kez-log+", "log", "status")
	if !strings.Contains(status, "1 contact(s) pinned; ok") {
		t.Errorf("log status:\n%s", status)
	}
	alice.must("ok: the entries hash to the checkpoint's root", "log", "verify", "--remote", "two.test")
	alice.must("registered  ", "log", "handle", "bob", "--remote", "two.test")
	// A bob of alice's own server is someone else.
	if r := alice.run("", "whois", "bob"); r.code != 1 || !strings.Contains(r.stderr, `no user "bob"`) {
		t.Errorf("whois bob (local) = %+v", r)
	}
}

// TestCLIFederationLyingServer: bob's kez reaches one.test through a proxy
// that lies about alice's key (a record that is not in one's log), then
// through a copy of one's database grown apart (a fork under the same log
// key). Both are refused by bob's client, which never shows alice's
// messages as hers meanwhile.
func TestCLIFederationLyingServer(t *testing.T) {
	one, two, alice, bob := federatedUsers(t)
	alice.must("sent to bob@two.test", "send", "bob@two.test", "honest", "hello")
	bob.must("alice@one.test: honest hello", "inbox")

	proxy := clienttest.SubstituteKey(t, &clienttest.Server{URL: one.URL, Name: "one.test"}, "alice")
	proxy.Substitute.Store(true)
	viaProxy := []string{"--resolve", "one.test=" + proxy.URL}
	r := bob.run("", append([]string{"whois", "alice@one.test"}, viaProxy...)...)
	if r.code != 1 || !strings.Contains(r.stderr, "alice@one.test's record") {
		t.Errorf("whois through the lying proxy = %+v", r)
	}
	r = bob.run("", append([]string{"send", "alice@one.test", "to mallory?"}, viaProxy...)...)
	if r.code != 1 || strings.Contains(r.stdout, "sent") {
		t.Errorf("send through the lying proxy = %+v", r)
	}
	r = bob.run("", append([]string{"inbox"}, viaProxy...)...)
	if r.code != 0 || strings.Contains(r.stdout, " alice@one.test: honest hello") || !strings.Contains(r.stdout, `(the server says "alice@one.test")`) {
		t.Errorf("inbox through the lying proxy:\n%s", r.stdout)
	}
	if !strings.Contains(r.stderr, "warning about one.test") {
		t.Errorf("no warning about one.test: %s", r.stderr)
	}
	bob.must("warnings dismissed", "log", "dismiss")

	// A fork: a copy of one's database, same log key, grown another way.
	one.Stop(t, 30*time.Second)
	forkDir := t.TempDir()
	data, err := os.ReadFile(one.DBPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(forkDir, "chat.db"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	one.Start(t, one.Opts)
	fork := testcaddy.Start(t, testcaddy.Options{ServerName: "one.test", Storage: "storage bolt " + filepath.Join(forkDir, "chat.db")})
	dave, erin := newUser(t), newUser(t)
	dave.must("primary:", "init")
	erin.must("primary:", "init")
	dave.must("registered", "register", "dave", "--server", one.URL)
	erin.must("registered", "register", "erin", "--server", fork.URL)
	bob.must("address     dave@one.test", "whois", "dave@one.test") // bob keeps one's checkpoint with dave
	viaFork := []string{"--resolve", "one.test=" + fork.URL}
	r = bob.run("", append([]string{"whois", "erin@one.test"}, viaFork...)...)
	if r.code != 1 || !strings.Contains(r.stderr, "the server one.test showed two histories") {
		t.Fatalf("whois through the fork = %+v", r)
	}
	// Kept: one.test is refused, even honest again, until bob resets it.
	r = bob.run("", "send", "alice@one.test", "still there?")
	if r.code != 1 || !strings.Contains(r.stderr, "showed two histories") {
		t.Errorf("send after the fork = %+v", r)
	}
	if r := bob.run("", "inbox"); !strings.Contains(r.stderr, "WARNING: the server one.test showed two histories") {
		t.Errorf("no fork warning: %+v", r)
	}
	bob.must("FORK", "log", "status", "--remote", "one.test")
	bob.must("forgot the log of one.test", "log", "reset", "--yes", "--remote", "one.test")
	bob.must("sent to alice@one.test", "send", "alice@one.test", "back", "again")
	alice.must("bob@two.test: back again", "inbox")
	_ = two
}

// TestCLIFederationServerDown: a message to a server that is down is
// queued in kez's outbox and delivered once when it is back.
func TestCLIFederationServerDown(t *testing.T) {
	_, two, alice, bob := federatedUsers(t)
	alice.must("sent to bob@two.test", "send", "bob@two.test", "first")
	bob.must("accepted alice@one.test", "accept", "alice@one.test")

	two.Stop(t, 30*time.Second)
	r := alice.run("", "send", "bob@two.test", "while", "you", "were", "away")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "queued for bob@two.test: ") {
		t.Fatalf("send while two is down = %+v", r)
	}
	if _, err := os.Stat(filepath.Join(alice.dir, outboxFile)); err != nil {
		t.Fatalf("the outbox is not on disk: %v", err)
	}
	if r := alice.run("", "outbox", "--retry"); !strings.Contains(r.stderr, "still waiting") || !strings.Contains(r.stdout, "to bob@two.test") {
		t.Errorf("retry while down = %+v", r)
	}

	two.Start(t, two.Opts)
	r = alice.run("", "outbox", "--retry")
	if r.code != 0 || !strings.Contains(r.stderr, "delivered your message to bob@two.test") || !strings.Contains(r.stdout, "outbox is empty") {
		t.Fatalf("retry when back = %+v", r)
	}
	alice.must("outbox is empty", "outbox", "--retry")
	out := bob.must("while you were away", "inbox")
	if n := strings.Count(out, "while you were away"); n != 1 {
		t.Errorf("the queued message is shown %d times:\n%s", n, out)
	}
	// Stored once, too (kez would hide a second copy with the same id).
	keys, err := loadKey(bob.dir)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(two.URL, client.Options{Keys: keys, Handle: "bob", ServerName: "two.test"})
	if err != nil {
		t.Fatal(err)
	}
	page, err := c.Inbox(context.Background(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Messages) != 2 {
		t.Fatalf("bob's inbox holds %d messages; want the first and the queued one", len(page.Messages))
	}
}

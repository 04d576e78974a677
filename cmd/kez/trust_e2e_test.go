package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/client/clienttest"
	"github.com/kezchat/kez/internal/testwait"
)

// Trust from the terminal against a real Caddy (SPEC §2.10, §5, §6).

var safetyGroups = regexp.MustCompile(`(?m)^    (\d{5}) (\d{5}) (\d{5}) (\d{5})$`)

// numberOf is the 60 digits kez verify printed.
func numberOf(t *testing.T, out string) string {
	t.Helper()
	var digits string
	for _, m := range safetyGroups.FindAllStringSubmatch(out, -1) {
		digits += strings.Join(m[1:], "")
	}
	if len(digits) != 60 {
		t.Fatalf("no 60-digit safety number in:\n%s", out)
	}
	return digits
}

// TestCLITrust: pinning on first use, safety numbers and verification,
// whois that never says verified unless it is, a rotation followed with a
// notice (old messages still read), the whole log and a handle's history,
// a deletion that says what it does, and a handle registered again by
// someone else: sending blocked, their messages marked, until accepted.
func TestCLITrust(t *testing.T) {
	srv := clienttest.Start(t, "handle_cooldown 1s")
	alice, bob, carol, eve := newUser(t), newUser(t), newUser(t), newUser(t)
	for _, u := range []*user{alice, bob, carol, eve} {
		u.must("", "init")
	}
	out := alice.must("registered", "register", "alice", "--server", srv.URL)
	if !strings.Contains(out, "log key kez.test/kez-log+") {
		t.Errorf("register printed %q", out)
	}
	bob.must("registered", "register", "bob", "--server", srv.URL)
	carol.must("registered", "register", "carol", "--server", srv.URL)

	if out := alice.must("trust       not pinned yet", "whois", "bob"); strings.Contains(out, "trust       verified") {
		t.Errorf("whois before any message:\n%s", out)
	}
	r := alice.run("", "send", "bob", "to bob's first key")
	if r.code != 0 || !strings.Contains(r.stderr, "first message to bob@kez.test: key ed25519:") {
		t.Fatalf("first send = %+v", r)
	}
	if out := alice.must("pinned on first use", "whois", "bob"); !strings.Contains(out, "NOT verified") || !strings.Contains(out, "log         entry 1 of ") {
		t.Errorf("whois after the first message:\n%s", out)
	}

	// Safety numbers: the same 60 digits on both sides.
	aliceSees := alice.must("safety number of you (alice@kez.test) and bob@kez.test", "verify", "bob")
	bobSees := bob.must("safety number of you (bob@kez.test) and alice@kez.test", "verify", "alice")
	if numberOf(t, aliceSees) != numberOf(t, bobSees) || !strings.Contains(aliceSees, "not marked verified") {
		t.Fatalf("numbers differ:\n%s\n%s", aliceSees, bobSees)
	}
	alice.must("bob@kez.test is verified", "verify", "bob", "--yes")
	alice.must("trust       verified: you compared", "whois", "bob")

	// bob rotates; alice follows with a notice; bob still reads the first message.
	out = bob.must("rotated bob@kez.test to the new key", "rotate")
	if !strings.Contains(out, "old-keys.json") {
		t.Errorf("rotate printed %q", out)
	}
	r = alice.run("", "send", "bob", "to bob's new key")
	if r.code != 0 || !strings.Contains(r.stderr, "notice: bob rotated to a new key") || !strings.Contains(r.stderr, "signed by the key you had pinned") {
		t.Fatalf("send after bob's rotation = %+v", r)
	}
	if out := alice.must("you verified an earlier key", "whois", "bob"); strings.Contains(out, "trust       verified") {
		t.Errorf("whois after the rotation claims verified:\n%s", out)
	}
	if out := bob.must("", "inbox"); !strings.Contains(out, "alice@kez.test: to bob's first key") || !strings.Contains(out, "alice@kez.test: to bob's new key") {
		t.Errorf("bob's inbox after rotating:\n%s", out)
	}
	if r := bob.run("", "inbox"); strings.Contains(r.stderr, "warning") {
		t.Errorf("bob's own rotation reported: %q", r.stderr)
	}
	bob.must("old keys deleted", "rotate", "--forget-old")

	// carol deletes her account; it says what that means first.
	if r := carol.run("", "delete"); r.code != 1 || !strings.Contains(r.stderr, "for good") || !strings.Contains(r.stderr, "kez delete --yes") {
		t.Errorf("delete without --yes = %+v", r)
	}
	alice.must("sent", "send", "carol", "hello carol") // pins carol
	carol.must("deleted carol@kez.test (log entry ", "delete", "--yes")
	if r := carol.run("", "inbox"); r.code != 1 || !strings.Contains(r.stderr, "not registered yet") {
		t.Errorf("inbox after deleting = %+v", r)
	}
	// Someone else takes "carol" after the cooldown.
	testwait.Every(t, 200*time.Millisecond, 5*time.Second, "the cooldown to let eve register carol", func() bool {
		r := eve.run("", "register", "carol", "--server", srv.URL)
		if r.code != 0 && !strings.Contains(r.stderr, "handle_cooling_down") {
			t.Fatalf("eve registering carol = %+v", r)
		}
		return r.code == 0
	})
	r = alice.run("", "send", "carol", "are you still carol?")
	if r.code != 1 || !strings.Contains(r.stderr, "carol's key changed from") || !strings.Contains(r.stderr, "kez accept-key carol") ||
		!strings.Contains(r.stderr, "registered again by another key") {
		t.Fatalf("send to the new carol = %+v", r)
	}
	eve.must("sent", "send", "alice", "hi, it's carol")
	if out := alice.must("", "inbox"); !strings.Contains(out, "carol@kez.test [NEW KEY, not accepted") {
		t.Errorf("alice's inbox does not mark the new key:\n%s", out)
	}
	alice.must("KEY CHANGED", "whois", "carol")
	alice.must("accepted carol@kez.test's new key", "accept-key", "carol")
	alice.must("sent", "send", "carol", "welcome")
	if r := alice.run("", "accept-key", "carol"); r.code != 1 || !strings.Contains(r.stderr, "has not changed") {
		t.Errorf("accept-key again = %+v", r)
	}

	// The whole log, and carol's history.
	out = alice.must("ok: the entries hash to the checkpoint's root", "log", "verify")
	if !strings.Contains(out, "4 registrations, 1 rotations, 1 deletions; 3 handles bound now") {
		t.Errorf("log verify:\n%s", out)
	}
	out = alice.must("registered", "log", "handle", "carol")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 4 || !strings.Contains(lines[0], "registered") ||
		!strings.Contains(lines[1], "deleted") || !strings.Contains(lines[2], "registered") {
		t.Errorf("log handle carol:\n%s", out)
	}
	out = alice.must("rotated", "log", "handle", "bob")
	if !strings.HasPrefix(out, "#1  ") {
		t.Errorf("log handle bob:\n%s", out)
	}
	// Someone without an account can read a log too.
	stranger := newUser(t)
	stranger.must("ok:", "log", "verify", "--server", srv.URL)
	out = alice.must("log key     kez.test/kez-log+", "log", "status")
	if !strings.Contains(out, "contacts    2 pinned, 0 verified, 0 with a changed key not accepted") {
		t.Errorf("log status:\n%s", out)
	}
}

// TestCLIProxySubstitutesKey is issue 12's attack from the terminal: a
// proxy in front of the server answers /v1/u/bob with its own key. kez
// whois no longer says "verified", and kez send refuses, naming the
// failed proof; the warning stays on later commands until dismissed.
func TestCLIProxySubstitutesKey(t *testing.T) {
	srv := clienttest.Start(t, "")
	front := clienttest.SubstituteKey(t, srv, "bob")

	alice, bob := newUser(t), newUser(t)
	alice.must("", "init")
	bob.must("", "init")
	bob.must("registered", "register", "bob", "--server", srv.URL)
	alice.must("registered", "register", "alice", "--server", front.URL)
	front.Substitute.Store(true)
	for _, args := range [][]string{{"whois", "bob"}, {"send", "bob", "the vault code is 4711"}} {
		r := alice.run("", args...)
		if r.code != 1 || !strings.Contains(r.stderr, "does not back bob's record") || !strings.Contains(r.stderr, "inclusion proof") ||
			strings.Contains(r.stdout, "verified") {
			t.Errorf("kez %s through the proxy = %+v", strings.Join(args, " "), r)
		}
	}
	front.Substitute.Store(false)
	r := alice.run("", "send", "bob", "hello")
	if r.code != 0 || !strings.Contains(r.stderr, "kez: warning: the server's binding log does not back bob's record") {
		t.Errorf("the next send = %+v", r)
	}
	alice.must("warnings dismissed", "log", "dismiss")
	if r := alice.run("", "send", "bob", "again"); r.code != 0 || strings.Contains(r.stderr, "warning") {
		t.Errorf("after dismissing = %+v", r)
	}
	if out := bob.must("", "inbox"); strings.Contains(out, "4711") || !strings.Contains(out, "hello") {
		t.Errorf("bob's inbox:\n%s", out)
	}
}

package handlers

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/testwait"
	"github.com/kezchat/kez/kez"
)

func TestParseRate(t *testing.T) {
	for in, want := range map[string]Rate{"20/1m": {20, time.Minute}, "5/1h30m": {5, 90 * time.Minute}, "off": {}} {
		if got, err := ParseRate(in); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v", in, got, err)
		}
		got, _ := ParseRate(in)
		if again, err := ParseRate(got.String()); err != nil || again != got {
			t.Errorf("ParseRate(%q.String()) = %v, %v", got, again, err)
		}
	}
	for _, in := range []string{"", "20", "0/1m", "-1/1m", "x/1m", "20/", "20/0s", "20/-1m", "20/soon"} {
		if _, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) succeeded", in)
		}
	}
}

func TestLimiterBurstAndRefill(t *testing.T) {
	l := newLimiter(Rate{N: 3, Per: 3 * time.Second}, new(buckets))
	now := time.Unix(1000, 0)
	for i := range 3 {
		if ok, _ := l.allow("a", now); !ok {
			t.Fatalf("burst request %d refused", i)
		}
	}
	ok, wait := l.allow("a", now)
	if ok || wait <= 0 || wait > time.Second {
		t.Fatalf("4th: ok=%v wait=%s, want refused with wait ≤ 1s", ok, wait)
	}
	if ok, _ := l.allow("b", now); !ok {
		t.Fatal("another key shares a's bucket")
	}
	if ok, _ := l.allow("a", now.Add(time.Second)); !ok {
		t.Fatal("no token after one refill period")
	}
	// Long idle: buckets are swept, and a swept key starts full again.
	later := now.Add(time.Hour)
	l.allow("c", later)
	if _, kept := l.b.m["a"]; kept {
		t.Fatal("idle bucket not swept")
	}
	var nilLimiter *limiter
	if ok, _ := nilLimiter.allow("x", now); !ok {
		t.Fatal("nil limiter must allow")
	}
}

// A RateState passed to the next Handler (a reload) keeps each client's
// bucket: a reload does not refill it, and the new rate applies to it.
func TestRateStateOutlivesHandler(t *testing.T) {
	state := NewRateState()
	now := time.Unix(1000, 0)
	old := newLimiter(Rate{N: 2, Per: time.Hour}, &state.register)
	for range 2 {
		if ok, _ := old.allow("a", now); !ok {
			t.Fatal("burst refused")
		}
	}
	same := newLimiter(Rate{N: 2, Per: time.Hour}, &state.register)
	if ok, _ := same.allow("a", now); ok {
		t.Fatal("the next configuration's limiter refilled the bucket")
	}
	// A higher rate adds nothing at once; a lower one caps what is kept.
	higher := newLimiter(Rate{N: 10, Per: time.Hour}, &state.register)
	if ok, _ := higher.allow("a", now); ok {
		t.Fatal("a higher rate refilled the bucket")
	}
	if ok, _ := higher.allow("b", now); !ok {
		t.Fatal("a new client is refused")
	}
	lower := newLimiter(Rate{N: 1, Per: time.Hour}, &state.register)
	lower.allow("b", now) // b had 9 tokens left: capped to 1, and taken
	if ok, _ := lower.allow("b", now); ok {
		t.Fatal("a lower rate kept more than its burst")
	}
	// The limits' buckets are separate.
	if ok, _ := newLimiter(Rate{N: 1, Per: time.Hour}, &state.send).allow("a", now); !ok {
		t.Fatal("the send limit shares the register limit's buckets")
	}
}

func TestLimitKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":            "192.0.2.7",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1": "2001:db8:1:2::/64",
		"::ffff:192.0.2.7":     "::ffff:192.0.2.7",
		"not an ip":            "not an ip",
		"2001:db8:1:3:3:4:5:6": "2001:db8:1:3::/64",
	} {
		if got := limitKey(in); got != want {
			t.Errorf("limitKey(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRateLimitsAnswer429(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.RegisterRate = Rate{N: 2, Per: time.Hour}
		c.SendRate = Rate{N: 3, Per: time.Hour}
		c.ClientIP = func(r *http.Request) string { return r.Header.Get("X-Test-Client") }
	})
	expect(t, "register 1", e.register(alice, "alice"), 201, "")
	expect(t, "register 2 (a failure still counts)", e.register(alice, "Bad"), 400, "invalid_handle")
	r := e.register(bob, "bob")
	expect(t, "register 3", r, 429, "rate_limited")
	if ra := r.header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Fatalf("Retry-After = %q", ra)
	}
	// Another client address has its own budget.
	reg, _ := kez.SignRegistration(bob.Private(), "bob", serverName, time.Now())
	b, _ := json.Marshal(reg)
	expect(t, "register from elsewhere", e.do("POST", "/v1/register", strings.NewReader(string(b)), "X-Test-Client", "10.0.0.2"), 201, "")

	for range 3 {
		expect(t, "send", e.send(bob, "alice", envl(bob, alice)), 201, "")
	}
	r = e.send(bob, "alice", envl(bob, alice))
	expect(t, "4th send", r, 429, "rate_limited")
	if r.header.Get("Retry-After") == "" || r.header.Get("Access-Control-Expose-Headers") != "Retry-After" {
		t.Fatalf("headers %v", r.header)
	}
	// The per-IP limit counts attempts, signed or not: alice from the same
	// address is refused too, and from another address she is not.
	expect(t, "alice, same address", e.send(alice, "bob", envl(alice, bob)), 429, "rate_limited")
	expect(t, "alice, other address", e.post(alice, `{"to":"bob","envelope":`+envl(alice, bob)+`}`, "X-Test-Client", "10.0.0.9"), 201, "")
}

func TestStreamLimits(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxStreamsPerHandle = 2; c.MaxStreams = 3 })
	e.users(alice, "alice", bob, "bob")
	a1, _ := e.openStream(t, alice, "alice", "")
	if a1 == nil {
		t.Fatal("first stream refused")
	}
	a1.start(t)
	a2, _ := e.openStream(t, alice, "alice", "")
	a2.start(t)
	_, r := e.openStream(t, alice, "alice", "")
	expect(t, "third stream for alice", r, 429, "rate_limited")
	if r.header.Get("Retry-After") == "" {
		t.Fatal("no Retry-After")
	}

	// bob's first stream is the third in total.
	b1, r := e.openStream(t, bob, "bob", "")
	if b1 == nil {
		t.Fatalf("bob's stream: %d %s", r.status, r.body)
	}
	b1.start(t)
	_, r = e.openStream(t, bob, "bob", "")
	expect(t, "fourth in total", r, 429, "rate_limited")
	// Closing one of alice's frees a slot.
	a1.res.Body.Close()
	testwait.For(t, 5*time.Second, "a stream slot freed by the closed one", func() bool {
		c, r := e.openStream(t, alice, "alice", "")
		if c == nil && r.status != 429 {
			t.Fatalf("after closing a stream: %d %s", r.status, r.body)
		}
		return c != nil
	})
}

func TestRegistrationModes(t *testing.T) {
	closed := newEnv(t, func(c *Config) { c.Registration = RegistrationClosed })
	expect(t, "closed", closed.register(alice, "alice"), 403, "registration_closed")

	invites := filepath.Join(t.TempDir(), "invites")
	if err := os.WriteFile(invites, []byte("# one token per line\ntoken-one-aaaaaaaaaaaa\n\n  token-two-bbbbbbbbbbbb  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *Config) { c.Registration = RegistrationInvite; c.InviteFile = invites })
	withInvite := func(key ed25519.PrivateKey, handle, invite string) resp {
		reg, _ := kez.SignRegistration(key, handle, serverName, time.Now())
		reg.Invite = invite
		b, _ := json.Marshal(reg)
		return e.do("POST", "/v1/register", strings.NewReader(string(b)))
	}
	expect(t, "no invite", withInvite(alice.Private(), "alice", ""), 403, "invalid_invite")
	expect(t, "unknown invite", withInvite(alice.Private(), "alice", "token-three"), 403, "invalid_invite")
	expect(t, "comment is not an invite", withInvite(alice.Private(), "alice", "# one token per line"), 403, "invalid_invite")
	r := withInvite(alice.Private(), "alice", "token-one-aaaaaaaaaaaa")
	expect(t, "valid invite", r, 201, "")
	if strings.Contains(string(r.body), "token-one") {
		t.Fatalf("the invite is stored in the record: %s", r.body)
	}
	expect(t, "idempotent retry", withInvite(alice.Private(), "alice", "token-one-aaaaaaaaaaaa"), 200, "")
	expect(t, "used invite", withInvite(bob.Private(), "bob", "token-one-aaaaaaaaaaaa"), 403, "invalid_invite")
	expect(t, "second token (spaces trimmed)", withInvite(bob.Private(), "bob", "token-two-bbbbbbbbbbbb"), 201, "")
	// Invites added to the file work at once, without a restart.
	_, carol, _ := ed25519.GenerateKey(rand.Reader)
	f, _ := os.OpenFile(invites, os.O_APPEND|os.O_WRONLY, 0)
	_, _ = f.WriteString("token-new-cccccccccccc\n")
	f.Close()
	expect(t, "new invite", withInvite(carol, "carol", "token-new-cccccccccccc"), 201, "")
	// A missing file is the server's problem: 503, not "invalid invite".
	os.Remove(invites)
	_, dave, _ := ed25519.GenerateKey(rand.Reader)
	expect(t, "invite file gone", withInvite(dave, "dave", "token-new-cccccccccccc"), 503, "unavailable")
}

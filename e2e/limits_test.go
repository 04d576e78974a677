package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/kez"
)

// Abuse limits configured in the Caddyfile answer 429 rate_limited with
// Retry-After; invite-only registration takes each token once.
func TestAbuseLimitsThroughCaddy(t *testing.T) {
	t.Parallel()
	invites := filepath.Join(t.TempDir(), "invites")
	if err := os.WriteFile(invites, []byte("invite-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := testcaddy.Start(t, testcaddy.Options{KezOptions: "register_rate 3/1h\nsend_rate 2/1h\nmax_streams_per_handle 1\nregistration invite " + invites})
	alice, bob := newUser("alice"), newUser("bob")
	withInvite := func(u user, invite string) result {
		reg, _ := kez.SignRegistration(u.key, u.handle, testcaddy.ServerName, time.Now())
		reg.Invite = invite
		b, _ := json.Marshal(reg)
		return do(t, "POST", srv.URL+"/v1/register", string(b))
	}
	want(t, "no invite", withInvite(alice, ""), 403, "invalid_invite")
	want(t, "invited", withInvite(alice, "invite-0123456789abcdef"), 201, "")
	want(t, "invite reused", withInvite(bob, "invite-0123456789abcdef"), 403, "invalid_invite")
	r := withInvite(bob, "invite-0123456789abcdef")
	want(t, "fourth attempt from one address", r, 429, "rate_limited")
	if r.header.Get("Retry-After") == "" {
		t.Fatal("no Retry-After")
	}

	openStream(t, srv, alice, -1)
	if _, r := tryStream(t, srv.URL, alice, -1); r.status != 429 || r.code() != "rate_limited" || r.header.Get("Retry-After") == "" {
		t.Fatalf("second stream: %d %s %v", r.status, r.body, r.header)
	}

	// Sends per client address (the registrations above used up this
	// address's register_rate, so on a server of their own).
	srv = testcaddy.Start(t, testcaddy.Options{KezOptions: "send_rate 2/1h"})
	want(t, "register", register(t, srv, alice), 201, "")
	send(t, srv, "alice", `{}`)
	send(t, srv, "alice", `{}`)
	r = sendAs(t, srv.URL, defaultSender(t, srv.URL), "alice", `{}`)
	want(t, "third send", r, 429, "rate_limited")
	if r.header.Get("Retry-After") == "" {
		t.Fatal("no Retry-After")
	}
}

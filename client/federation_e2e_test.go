package client_test

import (
	"errors"
	"testing"

	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/kez"
)

// fedUser registers handle on srv (named name) with a resolver for every
// server of the federation.
func fedUser(t *testing.T, srv *testcaddy.Server, name, handle string, resolve map[string]string) *client.Client {
	t.Helper()
	c, err := client.New(srv.URL, client.Options{Keys: kez.GenerateKeys(), Handle: handle, ServerName: name, Resolve: resolve})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Register(ctxFor(t), handle); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestFederatedClients: the Go client against two real servers (SPEC §8):
// alice@one.test writes to bob@two.test; bob verifies her at one.test and
// answers, which is not a request for alice; a key that is not bound to
// the address a message names is refused by bob's client.
func TestFederatedClients(t *testing.T) {
	s := testcaddy.StartFederation(t, testcaddy.Options{ServerName: "one.test"}, testcaddy.Options{ServerName: "two.test"})
	one, two := s[0], s[1]
	resolve := map[string]string{"one.test": one.URL, "two.test": two.URL}
	alice := fedUser(t, one, "one.test", "alice", resolve)
	bob := fedUser(t, two, "two.test", "bob", resolve)
	ctx := ctxFor(t)

	rcpt, err := alice.Send(ctx, "bob@two.test", "hi bob")
	if err != nil {
		t.Fatal(err)
	}
	page, err := bob.Inbox(ctx, 0, 0)
	if err != nil || len(page.Messages) != 1 {
		t.Fatalf("bob's inbox: %+v, %v", page, err)
	}
	m := page.Messages[0]
	if m.FromAddr != "alice@one.test" || !m.Request || m.Seq != rcpt.Seq {
		t.Fatalf("bob got %+v", m)
	}
	got, err := bob.Open(m)
	if err != nil || got.Plaintext.Text != "hi bob" || got.Plaintext.ID != rcpt.ID {
		t.Fatalf("open: %+v, %v", got, err)
	}
	ct, err := bob.Sender(ctx, m.From, m.FromAddr, true)
	if err != nil || !ct.Remote || ct.Who() != "alice@one.test" || ct.Status != client.ContactNew {
		t.Fatalf("bob checks alice at one.test: %+v, %v", ct, err)
	}
	if err := bob.Accept(ctx, m.From); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Send(ctx, "alice@one.test", "hi alice"); err != nil {
		t.Fatal(err)
	}
	page, err = alice.Inbox(ctx, 0, 0)
	if err != nil || len(page.Messages) != 1 || page.Messages[0].Request || page.Messages[0].FromAddr != "bob@two.test" {
		t.Fatalf("alice's inbox: %+v, %v; want bob's answer, not a request", page, err)
	}

	// mallory of one.test claims to be alice when writing to bob.
	mallory := fedUser(t, one, "one.test", "mallory", resolve)
	r, err := mallory.Recipient(ctx, "bob@two.test")
	if err != nil {
		t.Fatal(err)
	}
	out, err := mallory.Seal(ctx, r, "it's alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mallory.Deliver(ctx, out); err != nil {
		t.Fatalf("mallory as herself: %v", err)
	}
	var se *client.SenderError
	if _, err := bob.Sender(ctx, mallory.Keys().Primary(), "alice@one.test", true); !errors.As(err, &se) {
		t.Errorf("bob's client takes mallory's key for alice's: %v", err)
	}
	// Nor can alice's client carry mallory's envelope under alice's address:
	// the server wants the envelope's signer to sign the request.
	if _, err := alice.Deliver(ctx, out); !errors.Is(err, client.ErrUnauthorized) {
		t.Errorf("alice posting mallory's envelope: %v; want 401", err)
	}
}

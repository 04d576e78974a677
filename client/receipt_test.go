package client_test

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/kezchat/kez/client/clienttest"
	"github.com/kezchat/kez/kez"
)

// A receipt reaches the sender of the messages, sealed to their key, with
// SPEC §3's members exactly; one for a key that did not write, or with a
// state or ids that SPEC §3 does not allow, is not sent.
func TestSendReceipt(t *testing.T) {
	srv := clienttest.Start(t, "")
	ctx := ctxFor(t)
	alice, bob := user(t, srv, "alice", nil), user(t, srv, "bob", nil)
	sent, err := alice.Send(ctx, "bob@"+srv.Name, "hello bob")
	if err != nil {
		t.Fatal(err)
	}
	alicePrimary := mustLookup(t, alice).Primary
	if err := bob.SendReceipt(ctx, "alice@"+srv.Name, alicePrimary, "delivered", []string{sent.ID}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct {
		from, state string
		ids         []string
	}{
		{alicePrimary, "seen", []string{sent.ID}},
		{alicePrimary, "Delivered", []string{sent.ID}},
		{alicePrimary, "read", nil},
		{alicePrimary, "read", make([]string, 501)},
		{kez.GenerateKeys().Primary(), "read", []string{sent.ID}}, // not the key that wrote
	} {
		if err := bob.SendReceipt(ctx, "alice@"+srv.Name, bad.from, bad.state, bad.ids); err == nil {
			t.Errorf("receipt %q of %d ids from %s was sent", bad.state, len(bad.ids), bad.from[:16])
		}
	}

	got := openAll(t, alice)
	if len(got) != 1 {
		t.Fatalf("alice has %d messages, want the one receipt", len(got))
	}
	if got[0].From != mustLookup(t, bob).Primary {
		t.Errorf("receipt from %s, not bob", got[0].From)
	}
	f, err := kez.ExactMembers(got[0].PlaintextJSON, []string{"type", "id", "sent_at", "of", "state"}, nil)
	if err != nil {
		t.Fatalf("receipt %s: %v", got[0].PlaintextJSON, err)
	}
	var typ, state string
	var of []string
	if json.Unmarshal(f["type"], &typ) != nil || json.Unmarshal(f["state"], &state) != nil || json.Unmarshal(f["of"], &of) != nil {
		t.Fatalf("receipt %s", got[0].PlaintextJSON)
	}
	if typ != "receipt" || state != "delivered" || !slices.Equal(of, []string{sent.ID}) {
		t.Errorf("receipt %s", got[0].PlaintextJSON)
	}
}

package client_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/client/clienttest"
	"github.com/kezchat/kez/internal/testwait"
	"github.com/kezchat/kez/kez"
)

// Trust against a real Caddy (SPEC §2.10, §5, §6).

// TestTrustE2ERotateDeleteReRegister: bob rotates (alice follows with a
// notice, bob still reads what was sealed to his old key), carol deletes
// her account and "carol" is registered again by someone else after the
// cooldown (alice is blocked until she accepts), and every log the server
// made verifies whole.
func TestTrustE2ERotateDeleteReRegister(t *testing.T) {
	srv := clienttest.Start(t, "handle_cooldown 1s")
	ctx := ctxFor(t)
	aliceTrust := client.MemoryTrust()
	alice := userWith(t, srv, "alice", nil, aliceTrust)
	bob := userWith(t, srv, "bob", nil, nil)
	carol := userWith(t, srv, "carol", nil, nil)

	if _, err := alice.Send(ctx, "bob", "to bob's first key"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Send(ctx, "carol", "hello carol"); err != nil {
		t.Fatal(err)
	}
	if st := state(t, alice); st.LogKey == "" || st.Contacts["bob"] == nil || st.Contacts["carol"] == nil {
		t.Fatalf("alice's state: %+v", st)
	}
	h, err := alice.Health(ctx)
	if err != nil || h.LogKey != state(t, alice).LogKey {
		t.Fatalf("healthz log_key %q, pinned %q (%v)", h.LogKey, state(t, alice).LogKey, err)
	}

	// bob rotates.
	oldBob := bob.Keys()
	newBob := kez.GenerateKeys()
	rec, err := bob.Rotate(ctx, newBob)
	if err != nil || rec.Primary != newBob.Primary() || len(rec.Rotation) == 0 {
		t.Fatalf("rotate: %+v, %v", rec, err)
	}
	r, err := alice.Recipient(ctx, "bob")
	if err != nil || r.Primary != newBob.Primary() || len(r.Contact.Notices) != 1 || r.Contact.Notices[0].Old != oldBob.Primary() {
		t.Fatalf("alice after bob's rotation: %+v, %v", r, err)
	}
	if _, err := alice.SendTo(ctx, r, "to bob's new key"); err != nil {
		t.Fatal(err)
	}
	got := openAll(t, bob)
	if len(got) != 2 || got[0].Plaintext.Text != "to bob's first key" || got[1].Plaintext.Text != "to bob's new key" {
		t.Fatalf("bob reads %+v", got)
	}
	// A later run of bob's, with only the new key and the old kept aside.
	later, _ := client.New(srv.URL, client.Options{Keys: newBob, Handle: "bob", OldKeys: []*kez.Keys{oldBob}})
	if got := openAll(t, later); len(got) != 2 {
		t.Fatalf("bob's later run reads %d", len(got))
	}
	if rep, err := bob.Monitor(ctx); err != nil || len(rep.Warnings) != 0 {
		t.Fatalf("bob's monitor: %+v, %v", rep, err)
	}
	// The old key signs nothing any more.
	stale, _ := client.New(srv.URL, client.Options{Keys: oldBob, Handle: "bob"})
	if _, err := stale.Inbox(ctx, 0, 0); !errors.Is(err, client.ErrUnauthorized) {
		t.Fatalf("inbox with the replaced key: %v", err)
	}

	// carol deletes; "carol" is taken again after the cooldown.
	d, err := carol.DeleteAccount(ctx)
	if err != nil || d.Handle != "carol" {
		t.Fatalf("delete: %+v, %v", d, err)
	}
	if _, err := alice.Lookup(ctx, "carol"); !client.IsUnknownUser(err) {
		t.Fatalf("lookup of the deleted carol: %v", err)
	}
	newCarol := kez.GenerateKeys()
	nc, _ := client.New(srv.URL, client.Options{Keys: newCarol, Handle: "carol"})
	if _, err := nc.Register(ctx, "carol"); !errors.Is(err, &client.APIError{Code: kez.CodeHandleCoolingDown}) {
		t.Fatalf("registering during the cooldown: %v", err)
	}
	// The cooldown is compared with the registration's time in seconds.
	testwait.Every(t, 200*time.Millisecond, 5*time.Second, "the cooldown to let the new carol register", func() bool {
		_, err := nc.Register(ctx, "carol")
		if err != nil && !errors.Is(err, &client.APIError{Code: kez.CodeHandleCoolingDown}) {
			t.Fatal(err)
		}
		return err == nil
	})
	_, err = alice.Recipient(ctx, "carol")
	var kc *client.KeyChangedError
	if !errors.As(err, &kc) || kc.New != newCarol.Primary() || !strings.Contains(kc.How, "deleted at log entry") || !strings.Contains(kc.How, "registered again by another key") {
		t.Fatalf("alice writing to the new carol: %v", err)
	}
	// The next run of alice's: still blocked; carol's message is marked.
	if _, err := nc.Send(ctx, "alice", "it's me, carol"); err != nil {
		t.Fatal(err)
	}
	alice2 := again(t, alice, aliceTrust)
	if _, err := alice2.Recipient(ctx, "carol"); !errors.As(err, &kc) {
		t.Fatalf("next run: %v", err)
	}
	if ct, err := alice2.ContactByPrimary(ctx, newCarol.Primary(), true); err != nil || ct.Status != client.ContactChanged {
		t.Fatalf("the new carol as a sender: %+v, %v", ct, err)
	}
	if _, err := alice2.AcceptKey("carol"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice2.Send(ctx, "carol", "welcome, new carol"); err != nil {
		t.Fatal(err)
	}

	// Every log verifies whole; carol's history is all there.
	hist, rep, err := alice2.HandleHistory(ctx, "carol")
	if err != nil || len(rep.Invalid)+len(rep.Violations) != 0 || len(hist) != 3 ||
		hist[0].Kind != kez.RegisterType || hist[1].Kind != kez.DeleteType || hist[2].Kind != kez.RegisterType {
		t.Fatalf("carol's history: %+v %+v, %v", hist, rep, err)
	}
	if rep.Registrations != 4 || rep.Rotations != 1 || rep.Deletion != 1 || rep.Bound != 3 {
		t.Fatalf("log: %+v", rep)
	}
	if w := state(t, alice2).Warnings; len(w) != 0 {
		t.Fatalf("alice's warnings: %+v", w)
	}
}

// TestTrustE2EProxySubstitutesKey is issue 12's attack against a real
// server: a proxy answers /v1/u/bob with its own key in a record that key
// signed (and bob's real log proof). alice's client refuses to send, and
// keeps the finding.
func TestTrustE2EProxySubstitutesKey(t *testing.T) {
	srv := clienttest.Start(t, "")
	ctx := ctxFor(t)
	userWith(t, srv, "bob", nil, nil)
	front := clienttest.SubstituteKey(t, srv, "bob")

	aliceKeys := kez.GenerateKeys()
	store := client.MemoryTrust()
	alice, _ := client.New(front.URL, client.Options{Keys: aliceKeys, Handle: "alice", Trust: store})
	if _, err := alice.Register(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	// A first-time lookup through the proxy: nothing is pinned yet, and
	// still the substituted key is refused.
	front.Substitute.Store(true)
	_, err := alice.Recipient(ctx, "bob")
	var le *client.LogError
	if !errors.As(err, &le) || !strings.Contains(err.Error(), "inclusion proof") {
		t.Fatalf("substituted key: %v", err)
	}
	if _, err := alice.Send(ctx, "bob", "the vault code is 4711"); err == nil {
		t.Fatal("sent to the proxy's key")
	}
	if w := warningsOf(t, again(t, alice, store), client.WarnProof); len(w) != 1 {
		t.Fatalf("kept warnings: %q", w)
	}
	front.Substitute.Store(false)
	if _, err := alice.Send(ctx, "bob", "hello bob"); err != nil {
		t.Fatalf("through the honest proxy: %v", err)
	}
}

// TestTrustE2EServerRestoredFromBackup: the operator restores an older
// database and the server goes on from there. Its log is no longer the
// one clients saw: the same size with another root, a fork that alice's
// client keeps and names until she resets it.
func TestTrustE2EServerRestoredFromBackup(t *testing.T) {
	srv := clienttest.Start(t, "")
	ctx := ctxFor(t)
	store := client.MemoryTrust()
	alice := userWith(t, srv, "alice", nil, store)
	userWith(t, srv, "bob", nil, nil)
	srv.Crash()
	backup, err := os.ReadFile(srv.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	srv.Restart(t)
	userWith(t, srv, "carol", nil, nil)
	if rep, err := alice.Monitor(ctx); err != nil || rep.Checkpoint.Size != 3 {
		t.Fatalf("monitor: %+v, %v", rep, err)
	}
	srv.Crash()
	if err := os.WriteFile(srv.DBPath(), backup, 0o600); err != nil {
		t.Fatal(err)
	}
	srv.Restart(t)
	userWith(t, srv, "dave", nil, nil) // leaf 2 again, another one
	_, err = alice.Monitor(ctx)
	var fe *client.ForkError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "the server showed two histories: checkpoint 3 (root") {
		t.Fatalf("restored server: %v", err)
	}
	if _, err := again(t, alice, store).Recipient(ctx, "bob"); !errors.As(err, &fe) {
		t.Fatalf("after the fork: %v", err)
	}
	if err := alice.ResetLog(); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Recipient(ctx, "bob"); err != nil {
		t.Fatalf("after the reset: %v", err)
	}
}

// userWith registers handle on a real server with keys (fresh when nil)
// and a trust store (in memory when nil).
func userWith(t *testing.T, srv *clienttest.Server, handle string, keys *kez.Keys, store client.TrustStore) *client.Client {
	t.Helper()
	return registered(t, ctxFor(t), srv.URL, handle, keys, store)
}

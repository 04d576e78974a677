package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/client/clienttest"
	"github.com/kezchat/kez/kez"
)

// The trust tests run against clienttest.Fake: a server with a real
// binding log that the test makes lie.

const fakeName = "kez.test"

// fakeUser registers handle on f through the client and returns it, with
// its trust kept in store (fresh when nil).
func fakeUser(t *testing.T, f *clienttest.Fake, handle string, keys *kez.Keys, store client.TrustStore) *client.Client {
	t.Helper()
	return registered(t, context.Background(), f.URL, handle, keys, store)
}

// registered is a client of url with keys (fresh when nil) and a trust
// store (in memory when nil), registered as handle.
func registered(t *testing.T, ctx context.Context, url, handle string, keys *kez.Keys, store client.TrustStore) *client.Client {
	t.Helper()
	if keys == nil {
		keys = kez.GenerateKeys()
	}
	if store == nil {
		store = client.MemoryTrust()
	}
	c, err := client.New(url, client.Options{Keys: keys, Handle: handle, Trust: store})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Register(ctx, handle); err != nil {
		t.Fatalf("register %s: %v", handle, err)
	}
	return c
}

// again is a new client for the same user and state: the next run.
func again(t *testing.T, c *client.Client, store client.TrustStore) *client.Client {
	t.Helper()
	n, err := client.New(c.BaseURL(), client.Options{Keys: c.Keys(), Handle: c.Handle(), Trust: store})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func state(t *testing.T, c *client.Client) *client.TrustState {
	t.Helper()
	st, err := c.TrustState()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func warningsOf(t *testing.T, c *client.Client, kind string) []string {
	t.Helper()
	var out []string
	for _, w := range state(t, c).Warnings {
		if w.Kind == kind {
			out = append(out, w.Text)
		}
	}
	return out
}

// TestTrustHonestServer: first contact pins the log key, records are
// proven, contacts are pinned on first use and the monitor finds nothing.
func TestTrustHonestServer(t *testing.T) {
	ctx := context.Background()
	f := clienttest.NewFake(t, fakeName)
	bob := kez.GenerateKeys()
	f.Register(kez.GenerateKeys(), "carol")
	f.Register(bob, "bob")
	alice := fakeUser(t, f, "alice", nil, nil)

	st := state(t, alice)
	if st.LogKey != f.LogKey || st.Server != fakeName || st.Checkpoint == "" || st.Self == nil || st.Self.Handle != "alice" || st.Self.Since != 2 {
		t.Fatalf("state after registering: %+v", st)
	}
	ct, err := alice.Contact(ctx, "bob")
	if err != nil || ct.Status != client.ContactNew || ct.Primary != bob.Primary() || ct.LogIndex != 1 || ct.Checkpoint.Size != 3 {
		t.Fatalf("first contact: %+v, %v", ct, err)
	}
	ct, err = alice.Contact(ctx, "bob@"+fakeName)
	if err != nil || ct.Status != client.ContactPinned || ct.Verified() {
		t.Fatalf("second contact: %+v, %v", ct, err)
	}
	if ct, err := alice.PeekContact(ctx, "carol"); err != nil || ct.Status != client.ContactUnpinned {
		t.Fatalf("peek carol: %+v, %v", ct, err)
	}
	if _, err := alice.Recipient(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	rep, err := alice.Monitor(ctx)
	if err != nil || len(rep.Warnings) != 0 || rep.Checkpoint.Size != 3 {
		t.Fatalf("monitor: %+v, %v", rep, err)
	}
	st = state(t, alice)
	if st.Scan.Size != 3 || st.Bindings["bob"].Primary != bob.Primary() || len(st.Warnings) != 0 {
		t.Fatalf("state after monitor: scan %d, bindings %+v, warnings %v", st.Scan.Size, st.Bindings, st.Warnings)
	}
	// A user who got the log key elsewhere and gave it: the same key is fine.
	c, _ := client.New(f.URL, client.Options{LogKey: f.LogKey})
	if _, err := c.Lookup(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	// The state survives JSON (what file stores keep).
	b, _ := json.Marshal(state(t, alice))
	var back client.TrustState
	if err := json.Unmarshal(b, &back); err != nil || back.Scan.Size != 3 || back.Contacts["bob"].Primary != bob.Primary() {
		t.Fatalf("state through JSON: %v", err)
	}
}

// TestTrustSubstitutedKey is the attack of issue 12: the server (or a
// proxy) answers /v1/u/bob with a key of its own, in a record signed by
// that key. No inclusion proof places it in the log: refused, and the
// finding is kept.
func TestTrustSubstitutedKey(t *testing.T) {
	ctx := context.Background()
	f := clienttest.NewFake(t, fakeName)
	f.Register(kez.GenerateKeys(), "bob")
	mallory := kez.GenerateKeys()
	for _, pinned := range []bool{false, true} {
		store := client.MemoryTrust()
		alice := fakeUser(t, f, map[bool]string{false: "alice", true: "alice2"}[pinned], nil, store)
		if pinned {
			if _, err := alice.Contact(ctx, "bob"); err != nil {
				t.Fatal(err)
			}
		}
		f.Serve(mallory, "bob")
		_, err := alice.Recipient(ctx, "bob")
		var le *client.LogError
		if !errors.As(err, &le) || !strings.Contains(err.Error(), "inclusion proof") || !client.IsTrustFailure(err) {
			t.Fatalf("pinned=%v: substituted key: %v", pinned, err)
		}
		if _, err := alice.Lookup(ctx, "bob"); !errors.As(err, &le) {
			t.Fatalf("lookup of the substituted key: %v", err)
		}
		if w := warningsOf(t, again(t, alice, store), client.WarnProof); len(w) != 1 || !strings.Contains(w[0], "bob's record") {
			t.Fatalf("kept warnings: %q", w)
		}
		f.Unserve("bob")
	}
	// The same record with a proof of the right size but the wrong leaf:
	// a proxy that copies bob's real "log" member.
	real := f.Record("bob")
	f.Serve(mallory, "bob")
	forged := f.Record("bob")
	forged["log"] = real["log"]
	alice := fakeUser(t, f, "alice3", nil, nil)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/u/bob" {
			json.NewEncoder(w).Encode(forged)
			return
		}
		f.ServeHTTP(w, r)
	}))
	defer proxy.Close()
	viaProxy, _ := client.New(proxy.URL, client.Options{Keys: alice.Keys(), Handle: "alice3"})
	if _, err := viaProxy.Recipient(ctx, "bob"); !client.IsTrustFailure(err) || !strings.Contains(err.Error(), "inclusion proof") {
		t.Fatalf("copied proof: %v", err)
	}
}

// TestTrustForkSameSize: two checkpoints of one size with two roots.
func TestTrustForkSameSize(t *testing.T) {
	ctx := context.Background()
	f := clienttest.NewFake(t, fakeName)
	f.Register(kez.GenerateKeys(), "bob")
	store := client.MemoryTrust()
	alice := fakeUser(t, f, "alice", nil, store)
	if _, err := alice.Contact(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	size := f.Size()
	f.Truncate(size - 1)
	f.Register(kez.GenerateKeys(), "eve") // another leaf in alice's place
	if f.Size() != size {
		t.Fatal("sizes")
	}
	_, err := alice.Monitor(ctx)
	var fe *client.ForkError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "the server showed two histories: checkpoint 2 (root") {
		t.Fatalf("same size, two roots: %v", err)
	}
	// Persistent: the next run, and every lookup, says it again.
	next := again(t, alice, store)
	if _, err := next.Lookup(ctx, "bob"); !errors.As(err, &fe) {
		t.Fatalf("after the fork, lookup: %v", err)
	}
	if _, err := next.Recipient(ctx, "bob"); !errors.As(err, &fe) {
		t.Fatalf("after the fork, send: %v", err)
	}
	st := state(t, next)
	if st.Fork == nil || st.Fork.Kept == st.Fork.Other || !strings.Contains(st.Fork.Reason, "different roots") {
		t.Fatalf("fork kept: %+v", st.Fork)
	}
	// The user's decision clears it: the log is read again from the start.
	if err := next.ResetLog(); err != nil {
		t.Fatal(err)
	}
	if _, err := next.Recipient(ctx, "bob"); err != nil {
		t.Fatalf("after reset: %v", err)
	}
}

// TestTrustForkInconsistent: a newer checkpoint that does not extend the
// one kept (the log was rewritten below it).
func TestTrustForkInconsistent(t *testing.T) {
	ctx := context.Background()
	f := clienttest.NewFake(t, fakeName)
	f.Register(kez.GenerateKeys(), "bob")
	f.Register(kez.GenerateKeys(), "carol")
	alice := fakeUser(t, f, "alice", nil, nil)
	if _, err := alice.Monitor(ctx); err != nil {
		t.Fatal(err)
	}
	f.Truncate(1)
	f.Register(kez.GenerateKeys(), "carol")
	f.Register(kez.GenerateKeys(), "dave")
	f.Register(kez.GenerateKeys(), "erin")
	_, err := alice.Lookup(ctx, "bob")
	var fe *client.ForkError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "checkpoint 3 (root") || !strings.Contains(err.Error(), "vs 4 (root") {
		t.Fatalf("inconsistent newer checkpoint: %v", err)
	}
	if _, err := alice.Monitor(ctx); !errors.As(err, &fe) {
		t.Fatalf("monitor after the fork: %v", err)
	}
}

// TestTrustEntriesLie: entries that do not hash to the checkpoint they
// are read for are a fork too.
func TestTrustEntriesLie(t *testing.T) {
	ctx := context.Background()
	f := clienttest.NewFake(t, fakeName)
	f.Register(kez.GenerateKeys(), "bob")
	alice := fakeUser(t, f, "alice", nil, nil)
	other := kez.GenerateKeys()
	reg, _ := kez.SignRegistration(other.Private(), "bob", fakeName, time.Now())
	f.Intercept = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/v1/log/entries" {
			return false
		}
		rec := httptest.NewRecorder()
		f.Intercept = nil
		f.ServeHTTP(rec, r)
		f.Intercept = func(http.ResponseWriter, *http.Request) bool { return false }
		body := bytes.Replace(rec.Body.Bytes(), []byte(b64(f.Leaf(0))), []byte(b64(reg.Stored())), 1)
		w.Write(body)
		return true
	}
	_, err := alice.Contact(ctx, "bob")
	var fe *client.ForkError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "hash to root") {
		t.Fatalf("lying entries: %v", err)
	}
}

// TestTrustReRegistered: bob deleted and "bob" registered again with
// another key. Sending is blocked until alice accepts the new key; his
// messages from it are marked; a verified contact must be verified again.
func TestTrustReRegistered(t *testing.T) {
	ctx := context.Background()
	f := clienttest.NewFake(t, fakeName)
	bob, newBob := kez.GenerateKeys(), kez.GenerateKeys()
	f.Register(bob, "bob")
	store := client.MemoryTrust()
	alice := fakeUser(t, f, "alice", nil, store)
	if _, err := alice.Recipient(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	del := f.Delete(bob, "bob")
	reg := f.Register(newBob, "bob")

	_, err := alice.Recipient(ctx, "bob")
	var kc *client.KeyChangedError
	if !errors.As(err, &kc) || kc.Pinned != bob.Primary() || kc.New != newBob.Primary() || kc.Verified ||
		!strings.Contains(kc.How, "deleted at log entry 2") || !strings.Contains(kc.How, "registered again by another key at log entry 3") {
		t.Fatalf("re-registered bob: %v", err)
	}
	_ = del
	_ = reg
	// Still blocked on the next run; his messages come from a new key.
	next := again(t, alice, store)
	if _, err := next.Recipient(ctx, "bob"); !errors.As(err, &kc) {
		t.Fatalf("next run: %v", err)
	}
	ct, err := next.ContactByPrimary(ctx, newBob.Primary(), true)
	if err != nil || ct.Status != client.ContactChanged || ct.Pin.Changed.Primary != newBob.Primary() {
		t.Fatalf("sender with the new key: %+v, %v", ct, err)
	}
	if h, how := next.PinnedHandle(newBob.Primary()); h != "bob" || how != "changed" {
		t.Fatalf("PinnedHandle(new) = %s %s", h, how)
	}
	if h, how := next.PinnedHandle(bob.Primary()); h != "bob" || how != "pinned" {
		t.Fatalf("PinnedHandle(old) = %s %s", h, how)
	}
	pin, err := next.AcceptKey("bob")
	if err != nil || pin.Primary != newBob.Primary() || len(pin.Previous) != 1 {
		t.Fatalf("accept: %+v, %v", pin, err)
	}
	if _, err := next.Recipient(ctx, "bob"); err != nil {
		t.Fatalf("after accepting: %v", err)
	}
	if _, err := next.AcceptKey("bob"); !errors.Is(err, client.ErrNoPendingKey) {
		t.Fatalf("nothing to accept: %v", err)
	}

	// Verified, then changed again: AcceptKey refuses, verifying again works.
	number, err := next.SafetyNumber(newBob.Primary())
	if err != nil || len(number) != 60 {
		t.Fatal(number, err)
	}
	if _, err := next.MarkVerified("bob", newBob.Primary()); err != nil {
		t.Fatal(err)
	}
	if ct, err := next.Contact(ctx, "bob"); err != nil || !ct.Verified() {
		t.Fatalf("verified: %+v, %v", ct, err)
	}
	third := kez.GenerateKeys()
	f.Delete(newBob, "bob")
	f.Register(third, "bob")
	if _, err := next.Recipient(ctx, "bob"); !errors.As(err, &kc) || !kc.Verified || !strings.Contains(err.Error(), "kez verify bob") {
		t.Fatalf("verified contact changed: %v", err)
	}
	if _, err := next.AcceptKey("bob"); !errors.As(err, &kc) {
		t.Fatalf("accepting a verified contact's new key: %v", err)
	}
	if _, err := next.MarkVerified("bob", kez.GenerateKeys().Primary()); err == nil {
		t.Fatal("verified a key that is not bob's")
	}
	if _, err := next.MarkVerified("bob", third.Primary()); err != nil {
		t.Fatal(err)
	}
	if ct, err := next.Contact(ctx, "bob"); err != nil || !ct.Verified() || ct.Primary != third.Primary() {
		t.Fatalf("verified again: %+v, %v", ct, err)
	}
}

// TestTrustRotationFollowed: rotations signed by the pinned key are
// followed, one after another, with a notice each.
func TestTrustRotationFollowed(t *testing.T) {
	ctx := context.Background()
	f := clienttest.NewFake(t, fakeName)
	b1, b2, b3 := kez.GenerateKeys(), kez.GenerateKeys(), kez.GenerateKeys()
	f.Register(b1, "bob")
	alice := fakeUser(t, f, "alice", nil, nil)
	if _, err := alice.Contact(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.MarkVerified("bob", b1.Primary()); err != nil {
		t.Fatal(err)
	}
	r1 := f.Rotate(b1, b2, "bob")
	r2 := f.Rotate(b2, b3, "bob")
	r, err := alice.Recipient(ctx, "bob")
	if err != nil || r.Primary != b3.Primary() || r.Contact.Status != client.ContactPinned {
		t.Fatalf("after two rotations: %+v, %v", r, err)
	}
	n := r.Contact.Notices
	if len(n) != 2 || n[0].Old != b1.Primary() || n[0].New != b2.Primary() || n[0].Index != r1 || n[1].New != b3.Primary() || n[1].Index != r2 ||
		!strings.Contains(n[1].String(), "signed by the key you had pinned") {
		t.Fatalf("notices: %+v", n)
	}
	if again, _ := alice.Contact(ctx, "bob"); len(again.Notices) != 0 {
		t.Fatal("notices shown twice")
	}
	// Verified was b1: the chain is signed by it, but the number changed.
	if r.Contact.Verified() || r.Contact.Pin.Verified != b1.Primary() || len(r.Contact.Pin.Previous) != 2 {
		t.Fatalf("pin after rotations: %+v", r.Contact.Pin)
	}
	if h, how := alice.PinnedHandle(b1.Primary()); h != "bob" || how != "previous" {
		t.Fatalf("PinnedHandle(b1) = %s %s", h, how)
	}
	if w := state(t, alice).Warnings; len(w) != 0 {
		t.Fatalf("warnings: %v", w)
	}
}

// TestTrustRotationNotByPinnedKey: a rotation in the log from a key that
// is not the pinned one (the server made both keys) is blocked.
func TestTrustRotationNotByPinnedKey(t *testing.T) {
	ctx := context.Background()
	f := clienttest.NewFake(t, fakeName)
	bob := kez.GenerateKeys()
	f.Register(bob, "bob")
	alice := fakeUser(t, f, "alice", nil, nil)
	if _, err := alice.Contact(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	x, y := kez.GenerateKeys(), kez.GenerateKeys()
	f.ForceRotate(x, y, "bob") // bob is bound to bob's key, not x
	_, err := alice.Recipient(ctx, "bob")
	var kc *client.KeyChangedError
	if !errors.As(err, &kc) || kc.New != y.Primary() || !strings.Contains(kc.How, "not the key you had pinned") {
		t.Fatalf("rotation by another key: %v", err)
	}
	if w := warningsOf(t, alice, client.WarnLog); len(w) != 1 || !strings.Contains(w[0], "which the log does not bind to it") {
		t.Fatalf("log warnings: %q", w)
	}
}

// TestTrustStaleRecord: the server answers with bob's first binding after
// he rotated: its proof is valid, but the log has a later change.
func TestTrustStaleRecord(t *testing.T) {
	ctx := context.Background()
	f := clienttest.NewFake(t, fakeName)
	b1, b2 := kez.GenerateKeys(), kez.GenerateKeys()
	f.Register(b1, "bob")
	old := f.Binding("bob")
	f.Rotate(b1, b2, "bob")
	alice := fakeUser(t, f, "alice", nil, nil)
	f.ServeBinding("bob", old)
	_, err := alice.Recipient(ctx, "bob")
	if !client.IsTrustFailure(err) || !strings.Contains(err.Error(), "latest change of bob is entry 1") {
		t.Fatalf("stale record: %v", err)
	}
}

// TestTrustMonitorSelf: the server binds alice's handle to another key
// behind her back; her client reports it at its next start.
func TestTrustMonitorSelf(t *testing.T) {
	ctx := context.Background()
	f := clienttest.NewFake(t, fakeName)
	store := client.MemoryTrust()
	alice := fakeUser(t, f, "alice", nil, store)
	if rep, err := alice.Monitor(ctx); err != nil || len(rep.Warnings) != 0 {
		t.Fatalf("monitor: %+v, %v", rep, err)
	}
	f.Register(kez.GenerateKeys(), "bob")
	mallory := kez.GenerateKeys()
	f.Register(mallory, "alice") // logged, no deletion, not alice's key
	rep, err := again(t, alice, store).Monitor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	for _, w := range rep.Warnings {
		texts = append(texts, w.Kind+": "+w.Text)
	}
	all := strings.Join(texts, "\n")
	if !strings.Contains(all, "monitor: log entry 2 binds your handle alice to key") ||
		!strings.Contains(all, "monitor: the server binds your handle alice to key") ||
		!strings.Contains(all, "log: log entry 2 registers alice") {
		t.Fatalf("monitor warnings:\n%s", all)
	}
	// Kept until dismissed.
	if len(state(t, alice).Warnings) != len(rep.Warnings) {
		t.Fatal("warnings not kept")
	}
	if err := alice.DismissWarnings(); err != nil || len(state(t, alice).Warnings) != 0 {
		t.Fatal("warnings not dismissed")
	}
}

// TestTrustOwnRotationAndDeletion: the client rotates its own key (the
// monitor stays quiet, a contact follows with a notice, messages sealed
// to the old key still open) and deletes its account.
func TestTrustOwnRotationAndDeletion(t *testing.T) {
	ctx := context.Background()
	f := clienttest.NewFake(t, fakeName)
	alice := fakeUser(t, f, "alice", nil, nil)
	bob := fakeUser(t, f, "bob", nil, nil)
	carol := fakeUser(t, f, "carol", nil, nil)
	if _, err := carol.Contact(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Send(ctx, "alice", "before the rotation"); err != nil {
		t.Fatal(err)
	}
	oldKey := alice.Keys().Primary()
	newKeys := kez.GenerateKeys()
	rec, err := alice.Rotate(ctx, newKeys)
	if err != nil || rec.Primary != newKeys.Primary() || alice.Keys() != newKeys || rec.LogIndex != 3 {
		t.Fatalf("rotate: %+v, %v", rec, err)
	}
	if _, err := alice.Rotate(ctx, newKeys); err == nil {
		t.Fatal("rotating to the current key")
	}
	r, err := bob.Recipient(ctx, "alice")
	if err != nil || r.Primary != newKeys.Primary() || len(r.Contact.Notices) != 1 || r.Contact.Notices[0].New != newKeys.Primary() {
		t.Fatalf("bob follows alice's rotation: %+v, %v", r, err)
	}
	if _, err := bob.SendTo(ctx, r, "after the rotation"); err != nil {
		t.Fatal(err)
	}
	page, err := alice.Inbox(ctx, 0, 0)
	if err != nil || len(page.Messages) != 2 {
		t.Fatal(err)
	}
	for i, m := range page.Messages {
		got, err := alice.Open(m)
		if err != nil || got.Plaintext.Text != []string{"before the rotation", "after the rotation"}[i] {
			t.Fatalf("message %d: %+v, %v", i, got, err)
		}
	}
	rep, err := alice.Monitor(ctx)
	if err != nil || len(rep.Warnings) != 0 {
		t.Fatalf("monitor after rotating: %+v, %v", rep, err)
	}
	st := state(t, alice)
	if st.Self == nil || len(st.Self.Keys) != 2 || st.Self.Keys[0] != oldKey {
		t.Fatalf("self: %+v", st.Self)
	}
	if notices, err := bob.TakeNotices(); err != nil || len(notices) != 0 {
		t.Fatalf("bob's notices were handed out with the contact: %+v", notices)
	}
	// carol pinned alice's old key and reads the log later: a notice waits.
	if rep, err := carol.Monitor(ctx); err != nil || len(rep.Notices) != 1 {
		t.Fatalf("carol's monitor: %+v, %v", rep, err)
	}
	if notices, _ := carol.TakeNotices(); len(notices) != 1 || notices[0].Handle != "alice" || notices[0].New != newKeys.Primary() || notices[0].Index != 3 {
		t.Fatalf("carol's notices: %+v", notices)
	}
	if notices, _ := carol.TakeNotices(); len(notices) != 0 {
		t.Fatal("notices taken twice")
	}

	d, err := alice.DeleteAccount(ctx)
	if err != nil || d.Handle != "alice" || d.LogIndex != 4 {
		t.Fatalf("delete: %+v, %v", d, err)
	}
	if _, err := bob.Lookup(ctx, "alice"); !client.IsUnknownUser(err) {
		t.Fatalf("lookup after deletion: %v", err)
	}
	if rep, err := alice.Monitor(ctx); err != nil || len(rep.Warnings) != 0 {
		t.Fatalf("monitor after deleting: %+v, %v", rep, err)
	}
	if _, err := bob.Monitor(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Recipient(ctx, "alice"); !client.IsUnknownUser(err) {
		t.Fatalf("sending to the deleted alice: %v", err)
	}
	if st := state(t, bob); st.Contacts["alice"] == nil || st.Contacts["alice"].Changed == nil || st.Contacts["alice"].Changed.Primary != "" {
		t.Fatalf("bob's pin of alice: %+v", st.Contacts["alice"])
	}
}

// TestTrustLogKey: a key given by the user that the server does not sign
// with refuses everything; a server whose key changed is refused.
func TestTrustLogKey(t *testing.T) {
	ctx := context.Background()
	f := clienttest.NewFake(t, fakeName)
	f.Register(kez.GenerateKeys(), "bob")
	other := clienttest.NewFake(t, fakeName)
	c, _ := client.New(f.URL, client.Options{LogKey: other.LogKey})
	if _, err := c.Lookup(ctx, "bob"); !client.IsTrustFailure(err) || !strings.Contains(err.Error(), "not signed by the pinned log key") {
		t.Fatalf("wrong log key: %v", err)
	}
	if _, err := client.New(f.URL, client.Options{LogKey: "kez.other/kez-log+00000000+AAAA"}); err != nil {
		t.Fatal(err)
	}
	c, _ = client.New(f.URL, client.Options{LogKey: strings.Replace(other.LogKey, fakeName, "kez.other", 1)})
	if _, err := c.Lookup(ctx, "bob"); err == nil {
		t.Fatal("a key named for another server accepted")
	}
	// Pinned at first contact, then the server signs with a new key.
	store := client.MemoryTrust()
	c, _ = client.New(f.URL, client.Options{Trust: store})
	if _, err := c.Lookup(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	c, _ = client.New(f.URL, client.Options{Trust: store, LogKey: other.LogKey})
	if _, err := c.Lookup(ctx, "bob"); err == nil || !strings.Contains(err.Error(), "not the one pinned") {
		t.Fatalf("a given key that differs from the pinned one: %v", err)
	}
}

// TestReadLog: the whole log checked, with a handle's history, and a log
// whose changes its own history does not allow.
func TestReadLog(t *testing.T) {
	ctx := context.Background()
	f := clienttest.NewFake(t, fakeName)
	b1, b2, b3 := kez.GenerateKeys(), kez.GenerateKeys(), kez.GenerateKeys()
	f.Register(b1, "bob")
	f.Register(kez.GenerateKeys(), "carol")
	f.Rotate(b1, b2, "bob")
	f.Delete(b2, "bob")
	f.Register(b3, "bob")
	c, _ := client.New(f.URL, client.Options{})
	hist, rep, err := c.HandleHistory(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	if rep.Registrations != 3 || rep.Rotations != 1 || rep.Deletion != 1 || rep.Bound != 2 || len(rep.Invalid)+len(rep.Violations) != 0 || rep.Checkpoint.Size != 5 {
		t.Fatalf("report: %+v", rep)
	}
	kinds := []string{}
	for _, e := range hist {
		kinds = append(kinds, e.Kind)
	}
	if strings.Join(kinds, ",") != "kez.chat.register,kez.chat.rotate,kez.chat.delete,kez.chat.register" || hist[3].Index != 4 {
		t.Fatalf("history: %v", kinds)
	}
	f.Append([]byte(`{"not":"a change"}`))
	f.Register(kez.GenerateKeys(), "carol")
	rep, err = c.ReadLog(ctx, nil)
	if err != nil || len(rep.Invalid) != 1 || len(rep.Violations) != 1 || !strings.Contains(rep.Violations[0], "entry 6 registers carol") {
		t.Fatalf("hostile log: %+v, %v", rep, err)
	}
}

func b64(b []byte) string { return clienttest.B64(b) }

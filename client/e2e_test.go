package client_test

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/kezchat/kez/client"
	"github.com/kezchat/kez/client/clienttest"
	"github.com/kezchat/kez/internal/testcaddy"
	"github.com/kezchat/kez/kez"
)

func TestMain(m *testing.M) { testcaddy.Main(m) }

func keysFromSeed(t *testing.T, seedHex string) *kez.Keys {
	t.Helper()
	seed, err := hex.DecodeString(seedHex)
	if err != nil {
		t.Fatal(err)
	}
	k, err := kez.NewKeys(seed)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// user registers handle with keys (fresh keys when nil) and returns its client.
func user(t *testing.T, srv *clienttest.Server, handle string, keys *kez.Keys) *client.Client {
	t.Helper()
	if keys == nil {
		keys = kez.GenerateKeys()
	}
	c, err := client.New(srv.URL, client.Options{Keys: keys, Handle: handle})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := c.Register(ctxFor(t), handle)
	if err != nil {
		t.Fatalf("register %s: %v", handle, err)
	}
	if rec.Address != handle+"@"+srv.Name || rec.Primary != keys.Primary() {
		t.Fatalf("register %s = %+v", handle, rec)
	}
	return c
}

// openAll reads the whole inbox and opens every message.
func openAll(t *testing.T, c *client.Client) []*client.Received {
	t.Helper()
	var out []*client.Received
	since := uint64(0)
	for {
		page, err := c.Inbox(ctxFor(t), since, 0)
		if err != nil {
			t.Fatalf("inbox of %s: %v", c.Handle(), err)
		}
		for _, m := range page.Messages {
			got, err := c.Open(m)
			if err != nil {
				t.Fatalf("open #%d: %v", m.Seq, err)
			}
			out = append(out, got)
		}
		if !page.More {
			return out
		}
		since = page.NextSince
	}
}

func TestRegisterAndLookups(t *testing.T) {
	srv := clienttest.Start(t, "")
	ctx := ctxFor(t)
	alice := user(t, srv, "alice", nil)
	anon, _ := client.New(srv.URL, client.Options{})

	aliceRec, err := anon.Lookup(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	for _, who := range []string{"alice@" + srv.Name, "ALICE"} {
		rec, err := anon.Lookup(ctx, who)
		if err != nil || rec.Primary != aliceRec.Primary {
			t.Errorf("Lookup(%s) = %+v, %v", who, rec, err)
		}
	}
	byKey, err := anon.LookupPrimary(ctx, aliceRec.Primary)
	if err != nil || byKey.Handle != "alice" {
		t.Errorf("LookupPrimary = %+v, %v", byKey, err)
	}
	jrd, err := anon.WebFinger(ctx, "alice")
	if err != nil || jrd.Subject != "acct:alice@"+srv.Name || jrd.Properties[client.PrimaryProperty] != aliceRec.Primary {
		t.Errorf("WebFinger = %+v, %v", jrd, err)
	}

	// Registering again with the same key is an idempotent retry.
	if again, err := alice.Register(ctx, "alice"); err != nil || again.Primary != aliceRec.Primary {
		t.Errorf("second register = %+v, %v", again, err)
	}
	thief, _ := client.New(srv.URL, client.Options{Keys: kez.GenerateKeys()})
	if _, err := thief.Register(ctx, "alice"); !errors.Is(err, client.ErrHandleTaken) {
		t.Errorf("taken handle: %v", err)
	}
	if _, err := alice.Register(ctx, "alice2"); !errors.Is(err, client.ErrPrimaryTaken) {
		t.Errorf("second handle for one key: %v", err)
	}
	if _, err := thief.Register(ctx, "admin"); !errors.Is(err, client.ErrReservedHandle) {
		t.Errorf("reserved: %v", err)
	}
	for _, who := range []string{"nobody", "alice@elsewhere.example"} {
		if _, err := anon.Lookup(ctx, who); !client.IsUnknownUser(err) {
			t.Errorf("Lookup(%s): %v", who, err)
		}
	}
	if _, err := anon.LookupPrimary(ctx, kez.GenerateKeys().Primary()); !client.IsUnknownUser(err) {
		t.Errorf("LookupPrimary(unknown): %v", err)
	}
}

func TestChatBothWaysAndAck(t *testing.T) {
	srv := clienttest.Start(t, "")
	ctx := ctxFor(t)
	alice, bob := user(t, srv, "alice", nil), user(t, srv, "bob", nil)

	toBob, err := alice.Recipient(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		rcpt, err := alice.SendTo(ctx, toBob, fmt.Sprintf("hello bob %d", i))
		if err != nil || rcpt.Seq == 0 || rcpt.ID == "" {
			t.Fatalf("send: %+v, %v", rcpt, err)
		}
	}
	if _, err := bob.Send(ctx, "alice@"+srv.Name, "hi alice"); err != nil {
		t.Fatal(err)
	}

	got := openAll(t, bob)
	if len(got) != 3 {
		t.Fatalf("bob has %d messages, want 3", len(got))
	}
	ids := map[string]bool{}
	for i, r := range got {
		p := r.Plaintext
		if p.Text != fmt.Sprintf("hello bob %d", i) || p.FromAddr != "alice@"+srv.Name {
			t.Errorf("message %d = %+v", i, r)
		}
		if r.From != mustLookup(t, alice).Primary {
			t.Errorf("message %d from %s, not alice's primary", i, r.From)
		}
		ids[p.ID] = true
		if i > 0 && r.Seq <= got[i-1].Seq {
			t.Errorf("seqs not increasing: %d after %d", r.Seq, got[i-1].Seq)
		}
		if p.SentAt == 0 || r.ReceivedAt.IsZero() {
			t.Errorf("message %d has no times: %+v", i, r)
		}
	}
	if len(ids) != 3 {
		t.Errorf("message ids are not unique: %v", ids)
	}
	if back := openAll(t, alice); len(back) != 1 || back[0].Plaintext.Text != "hi alice" || back[0].Plaintext.FromAddr != "bob@"+srv.Name {
		t.Errorf("alice's inbox = %+v", back)
	}

	// Paging: one message per page.
	page, err := bob.Inbox(ctx, 0, 1)
	if err != nil || len(page.Messages) != 1 || !page.More || page.NextSince != got[0].Seq {
		t.Fatalf("first page = %+v, %v", page, err)
	}

	// Acknowledge the first two: only the third stays.
	n, err := bob.Ack(ctx, got[1].Seq)
	if err != nil || n != 2 {
		t.Fatalf("ack = %d, %v", n, err)
	}
	if left := openAll(t, bob); len(left) != 1 || left[0].Seq != got[2].Seq {
		t.Errorf("after ack: %+v", left)
	}
}

func mustLookup(t *testing.T, c *client.Client) *client.Record {
	t.Helper()
	rec, err := c.Lookup(ctxFor(t), c.Handle())
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestStreamLiveAndAcrossReload(t *testing.T) {
	srv := clienttest.Start(t, "")
	alice, bob := user(t, srv, "alice", nil), user(t, srv, "bob", nil)
	toBob, err := alice.Recipient(ctxFor(t), "bob")
	if err != nil {
		t.Fatal(err)
	}
	// One stored before the stream opens, the rest while it runs.
	if _, err := alice.SendTo(ctxFor(t), toBob, "stored"); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	texts := make(chan string, 10)
	var mu sync.Mutex
	connects := 0
	connected := make(chan struct{}, 10)
	done := make(chan error, 1)
	go func() {
		done <- bob.Stream(ctx, client.StreamOptions{OnConnect: func() {
			mu.Lock()
			connects++
			mu.Unlock()
			connected <- struct{}{}
		}}, func(m client.Message) error {
			r, err := bob.Open(m)
			if err != nil {
				return err
			}
			texts <- r.Plaintext.Text
			return nil
		})
	}()
	expect := func(want string) {
		t.Helper()
		select {
		case got := <-texts:
			if got != want {
				t.Fatalf("stream gave %q, want %q", got, want)
			}
		case <-ctx.Done():
			t.Fatalf("waiting for %q: %v", want, ctx.Err())
		}
	}
	<-connected
	expect("stored")
	if _, err := alice.SendTo(ctx, toBob, "live"); err != nil {
		t.Fatal(err)
	}
	expect("live")

	srv.Reload(t)
	<-connected // the stream came back on its own
	if _, err := alice.SendTo(ctx, toBob, "after reload"); err != nil {
		t.Fatal(err)
	}
	expect("after reload")
	select {
	case extra := <-texts:
		t.Errorf("duplicate or extra message %q", extra)
	case <-time.After(200 * time.Millisecond):
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Stream ended with %v", err)
	}
}

// TestBrowserEnvelopeDecrypts relays the vector envelope, as the browser
// client produces it, and opens it with bob's vector key.
func TestBrowserEnvelopeDecrypts(t *testing.T) {
	v := clienttest.LoadVectors(t)
	srv := clienttest.Start(t, "")
	bob := user(t, srv, "bob", keysFromSeed(t, v.Bob.Seed))
	anon, _ := client.New(srv.URL, client.Options{})
	if _, err := anon.PostEnvelope(ctxFor(t), "bob", v.Envelope.Envelope); err != nil {
		t.Fatal(err)
	}
	got := openAll(t, bob)
	if len(got) != 1 || got[0].From != v.Alice.Primary || got[0].Plaintext.Text != "hello bob" {
		t.Fatalf("opened %+v", got)
	}
}

// TestForgedEnvelopesAreRejected relays tampered envelopes through the real
// server; the recipient must refuse each.
func TestForgedEnvelopesAreRejected(t *testing.T) {
	v := clienttest.LoadVectors(t)
	srv := clienttest.Start(t, "")
	ctx := ctxFor(t)
	bob := user(t, srv, "bob", keysFromSeed(t, v.Bob.Seed))
	carol := user(t, srv, "carol", nil)
	mallory := kez.GenerateKeys()

	var original kez.Envelope
	if err := json.Unmarshal(v.Envelope.Envelope, &original); err != nil {
		t.Fatal(err)
	}
	forged := original
	forged.From = mallory.Primary()
	forged.Sig = hex.EncodeToString(ed25519.Sign(mallory.Private(), forged.SignedBytes()))
	tampered := original
	tampered.CT = "A" + tampered.CT[1:]
	anon, _ := client.New(srv.URL, client.Options{})
	for name, env := range map[string]kez.Envelope{"forged sender": forged, "tampered ct": tampered} {
		if _, err := anon.PostEnvelope(ctx, "bob", env.AppendJSON(nil)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// Re-addressed: alice's envelope for bob, relayed to carol.
	if _, err := anon.PostEnvelope(ctx, "carol", v.Envelope.Envelope); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client.Client{bob, carol} {
		page, err := c.Inbox(ctx, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Messages) == 0 {
			t.Fatalf("%s got nothing", c.Handle())
		}
		for _, m := range page.Messages {
			if r, err := c.Open(m); !errors.Is(err, kez.ErrUndecryptable) {
				t.Errorf("%s opened forged #%d: %+v, %v", c.Handle(), m.Seq, r, err)
			}
		}
	}
}

func TestServerErrors(t *testing.T) {
	srv := clienttest.Start(t, "max_envelope 1KiB")
	ctx := ctxFor(t)
	alice := user(t, srv, "alice", nil)
	user(t, srv, "bob", nil)

	if _, err := alice.Send(ctx, "nobody", "hi"); !client.IsUnknownUser(err) {
		t.Errorf("send to nobody: %v", err)
	}
	big := make([]byte, 2048)
	for i := range big {
		big[i] = 'x'
	}
	if _, err := alice.Send(ctx, "bob", string(big)); !errors.Is(err, client.ErrEnvelopeTooLarge) {
		t.Errorf("big send: %v", err)
	}
	// Someone else's key cannot read alice's inbox.
	impostor, _ := client.New(srv.URL, client.Options{Keys: kez.GenerateKeys(), Handle: "alice"})
	if _, err := impostor.Inbox(ctx, 0, 0); !errors.Is(err, client.ErrUnauthorized) {
		t.Errorf("impostor inbox: %v", err)
	}
	if _, err := impostor.Ack(ctx, 10); !errors.Is(err, client.ErrUnauthorized) {
		t.Errorf("impostor ack: %v", err)
	}
	err := impostor.Stream(ctx, client.StreamOptions{}, func(client.Message) error { return nil })
	if !errors.Is(err, client.ErrUnauthorized) {
		t.Errorf("impostor stream: %v", err)
	}
	// A clock an hour off makes every signature stale.
	skewed, _ := client.New(srv.URL, client.Options{Keys: kez.GenerateKeys(), Handle: "carol",
		Now: func() time.Time { return time.Now().Add(time.Hour) }})
	if _, err := skewed.Register(ctx, "carol"); !errors.Is(err, client.ErrStaleTimestamp) {
		t.Errorf("skewed register: %v", err)
	}
	var apiErr *client.APIError
	if _, err := alice.Send(ctx, "nobody", "x"); !errors.As(err, &apiErr) || apiErr.Status != 404 {
		t.Errorf("status of unknown recipient: %v", err)
	}
}

// TestStreamAcrossServerCrash kills Caddy under an open stream and starts it
// again on the same data: the stream comes back by itself, without losing
// or repeating a message.
func TestStreamAcrossServerCrash(t *testing.T) {
	srv := clienttest.Start(t, "")
	alice, bob := user(t, srv, "alice", nil), user(t, srv, "bob", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	texts := make(chan string, 10)
	connected := make(chan struct{}, 10)
	done := make(chan error, 1)
	go func() {
		// A short MaxBackoff keeps the test quick; the default is 30 s.
		opts := client.StreamOptions{MaxBackoff: 500 * time.Millisecond, OnConnect: func() { connected <- struct{}{} }}
		done <- bob.Stream(ctx, opts, func(m client.Message) error {
			r, err := bob.Open(m)
			if err != nil {
				return err
			}
			texts <- r.Plaintext.Text
			return nil
		})
	}()
	<-connected
	if _, err := alice.Send(ctx, "bob", "before"); err != nil {
		t.Fatal(err)
	}
	if got := <-texts; got != "before" {
		t.Fatalf("got %q", got)
	}
	srv.Crash()
	srv.Restart(t)
	if _, err := alice.Send(ctx, "bob", "after"); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-texts:
		if got != "after" {
			t.Errorf("after the restart the stream gave %q, want \"after\"", got)
		}
	case <-ctx.Done():
		t.Fatal("the stream did not come back after the restart")
	}
	<-connected
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Stream ended with %v", err)
	}
}

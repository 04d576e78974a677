package client_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
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
	if _, err := anon.Lookup(ctx, "nobody"); !client.IsUnknownUser(err) {
		t.Errorf("Lookup(nobody): %v", err)
	}
	// Another server's user is looked up at that server (SPEC §8), here
	// one that does not answer: never this server's answer instead.
	far, _ := client.New(srv.URL, client.Options{Resolve: map[string]string{"elsewhere.example": "http://127.0.0.1:1"}})
	var netErr *client.NetworkError
	if _, err := far.Lookup(ctx, "alice@elsewhere.example"); !errors.As(err, &netErr) || !strings.Contains(netErr.URL, "127.0.0.1:1") {
		t.Errorf("Lookup(alice@elsewhere.example): %v; want it asked at elsewhere.example", err)
	}
	if _, err := anon.LookupPrimary(ctx, kez.GenerateKeys().Primary()); !client.IsUnknownUser(err) {
		t.Errorf("LookupPrimary(unknown): %v", err)
	}
}

func TestChatBothWaysAndAck(t *testing.T) {
	srv := clienttest.Start(t, "")
	ctx := ctxFor(t)
	alice, bob := user(t, srv, "alice", nil), user(t, srv, "bob", nil)
	if err := bob.Accept(ctx, mustLookup(t, alice).Primary); err != nil { // no requests here
		t.Fatal(err)
	}

	toBob, err := alice.Recipient(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		rcpt, err := alice.SendTo(ctx, toBob, fmt.Sprintf("hello bob %d", i))
		if err != nil || rcpt.Seq == 0 || rcpt.ID == "" || rcpt.AlreadyStored {
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
		if p.Text != fmt.Sprintf("hello bob %d", i) || p.FromAddr != "alice@"+srv.Name || r.FromAddr != "alice@"+srv.Name || r.Request {
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
	// bob is not alice's contact, but he answers her: not a request.
	if back := openAll(t, alice); len(back) != 1 || back[0].Plaintext.Text != "hi alice" || back[0].Plaintext.FromAddr != "bob@"+srv.Name || back[0].Request {
		t.Errorf("alice's inbox = %+v", back)
	}

	// Paging: one message per page. The same request again at once is
	// signed anew (the server takes a signature once).
	for range 3 {
		page, err := bob.Inbox(ctx, 0, 1)
		if err != nil || len(page.Messages) != 1 || !page.More || page.NextSince != got[0].Seq {
			t.Fatalf("first page = %+v, %v", page, err)
		}
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

// TestRequestsAcceptAndBlock: a stranger's messages are requests, capped at
// request_limit, until accepted; a blocked sender is refused (SPEC §2.9).
func TestRequestsAcceptAndBlock(t *testing.T) {
	srv := clienttest.Start(t, "")
	ctx := ctxFor(t)
	alice, bob, carol := user(t, srv, "alice", nil), user(t, srv, "bob", nil), user(t, srv, "carol", nil)
	alicePrimary, carolPrimary := mustLookup(t, alice).Primary, mustLookup(t, carol).Primary

	for i := range 3 {
		if _, err := alice.Send(ctx, "bob", fmt.Sprint("request ", i)); err != nil {
			t.Fatal(err)
		}
	}
	_, err := alice.Send(ctx, "bob", "one too many")
	var apiErr *client.APIError
	if !errors.Is(err, client.ErrRequestLimit) || !errors.As(err, &apiErr) || apiErr.Status != 429 || apiErr.RetryAfter <= 0 {
		t.Errorf("4th request: %v", err)
	}
	for _, r := range openAll(t, bob) {
		if !r.Request || r.From != alicePrimary {
			t.Errorf("a stranger's message not marked as a request: %+v", r)
		}
	}
	if err := bob.Accept(ctx, alicePrimary); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Send(ctx, "bob", "now a contact"); err != nil {
		t.Fatal(err)
	}
	all := openAll(t, bob)
	if len(all) != 4 {
		t.Fatalf("bob has %d messages, want 4", len(all))
	}
	for _, r := range all {
		if r.Request {
			t.Errorf("after accepting, still a request: %+v", r)
		}
	}

	if _, err := carol.Send(ctx, "bob", "hi from carol"); err != nil {
		t.Fatal(err)
	}
	if err := bob.Block(ctx, carolPrimary); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.Send(ctx, "bob", "let me in"); !errors.Is(err, client.ErrBlocked) {
		t.Errorf("blocked send: %v", err)
	}
	if n := len(openAll(t, bob)); n != 4 {
		t.Errorf("carol's request was not deleted by the block: %d messages", n)
	}
	contacts, err := bob.Contacts(ctx)
	if err != nil || fmt.Sprint(contacts.Accepted) != fmt.Sprint([]string{alicePrimary}) || fmt.Sprint(contacts.Blocked) != fmt.Sprint([]string{carolPrimary}) {
		t.Errorf("contacts = %+v, %v", contacts, err)
	}
	if err := bob.Unblock(ctx, carolPrimary); err != nil {
		t.Fatal(err)
	}
	if err := bob.Unaccept(ctx, alicePrimary); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client.Client{alice, carol} {
		rcpt, err := c.Send(ctx, "bob", "strangers again")
		if err != nil {
			t.Fatal(err)
		}
		page, err := bob.Inbox(ctx, rcpt.Seq-1, 1)
		if err != nil || len(page.Messages) != 1 || !page.Messages[0].Request {
			t.Errorf("%s after unaccept/unblock: %+v, %v", c.Handle(), page, err)
		}
	}
	// Alice wrote to bob, so bob's answers are never requests for her.
	if contacts, err := alice.Contacts(ctx); err != nil || len(contacts.Accepted) != 1 || contacts.Accepted[0] != mustLookup(t, bob).Primary {
		t.Errorf("alice's contacts = %+v, %v", contacts, err)
	}

	// A key that is nobody on this server cannot send.
	nobody, _ := client.New(srv.URL, client.Options{Keys: kez.GenerateKeys(), Handle: "nobody"})
	r, err := nobody.Recipient(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nobody.PostEnvelope(ctx, "bob", sealTo(t, nobody, r, "hi")); !errors.Is(err, client.ErrUnknownSender) {
		t.Errorf("unknown sender: %v", err)
	}
}

// sealTo seals a text message from c's keys to r.
func sealTo(t *testing.T, c *client.Client, r *client.Recipient, text string) json.RawMessage {
	t.Helper()
	keys := c.Keys()
	link, err := keys.LinkTo(r.Primary)
	if err != nil {
		t.Fatal(err)
	}
	env, err := link.Seal(kez.NewTextMessage("", text, time.Now().UnixMilli()).Marshal())
	if err != nil {
		t.Fatal(err)
	}
	return env.AppendJSON(nil)
}

// TestSameRequestFromTwoProcesses: two clients of one user (two kez
// processes) sign the same request in the same second; the server takes the
// first signature, and the second client, refused, signs again.
func TestSameRequestFromTwoProcesses(t *testing.T) {
	srv := clienttest.Start(t, "")
	keys := kez.GenerateKeys()
	user(t, srv, "dave", keys)
	now := time.Now()
	clock := func() time.Time { return now }
	ctx := ctxFor(t)
	for range 2 {
		c, _ := client.New(srv.URL, client.Options{Keys: keys, Handle: "dave", Now: clock})
		if _, err := c.Inbox(ctx, 0, 0); err != nil {
			t.Fatal(err)
		}
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
// client produces it, signed by alice's vector key, and opens it with bob's.
func TestBrowserEnvelopeDecrypts(t *testing.T) {
	v := clienttest.LoadVectors(t)
	srv := clienttest.Start(t, "")
	bob := user(t, srv, "bob", keysFromSeed(t, v.Bob.Seed))
	alice := user(t, srv, "alice", keysFromSeed(t, v.Alice.Seed))
	rcpt, err := alice.PostEnvelope(ctxFor(t), "bob", v.Envelope.Envelope)
	if err != nil {
		t.Fatal(err)
	}
	// The same envelope again (a resend after a lost answer): its receipt.
	again, err := alice.PostEnvelope(ctxFor(t), "bob", v.Envelope.Envelope)
	if err != nil || again.Seq != rcpt.Seq || !again.AlreadyStored {
		t.Errorf("resend = %+v, %v; want seq %d, already stored", again, err, rcpt.Seq)
	}
	got := openAll(t, bob)
	if len(got) != 1 || got[0].From != v.Alice.Primary || got[0].Plaintext.Text != "hello bob" ||
		got[0].FromAddr != "alice@"+srv.Name || !got[0].Request {
		t.Fatalf("opened %+v", got)
	}
}

// TestForgedEnvelopesAreRejected: what the server refuses (a sender that
// is not the signer, an envelope for someone else) and what it relays but
// the recipient must refuse (tampered, case-variant members).
func TestForgedEnvelopesAreRejected(t *testing.T) {
	v := clienttest.LoadVectors(t)
	srv := clienttest.Start(t, "")
	ctx := ctxFor(t)
	bob := user(t, srv, "bob", keysFromSeed(t, v.Bob.Seed))
	alice := user(t, srv, "alice", keysFromSeed(t, v.Alice.Seed))
	user(t, srv, "carol", nil)
	mallory := user(t, srv, "mallory", nil)

	var original kez.Envelope
	if err := json.Unmarshal(v.Envelope.Envelope, &original); err != nil {
		t.Fatal(err)
	}
	// mallory relays alice's envelope as her own send: the server wants
	// the signature of envelope.from.
	if _, err := mallory.PostEnvelope(ctx, "bob", v.Envelope.Envelope); !errors.Is(err, client.ErrUnauthorized) {
		t.Errorf("relayed by another key: %v", err)
	}
	// Re-addressed: alice's envelope for bob, sent to carol.
	if _, err := alice.PostEnvelope(ctx, "carol", v.Envelope.Envelope); !errors.Is(err, client.ErrBadRequest) {
		t.Errorf("re-addressed: %v", err)
	}
	tampered := original
	tampered.CT = "A" + tampered.CT[1:]
	// (A fresh envelope: the server knows a resend by its sig.)
	r, err := alice.Recipient(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	variant := strings.Replace(string(sealTo(t, alice, r, "case")), `"nonce"`, `"Nonce"`, 1)
	for name, env := range map[string][]byte{"tampered ct": tampered.AppendJSON(nil), "case-variant member": []byte(variant)} {
		if _, err := alice.PostEnvelope(ctx, "bob", env); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	page, err := bob.Inbox(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Messages) != 2 {
		t.Fatalf("bob got %d messages, want 2", len(page.Messages))
	}
	for _, m := range page.Messages {
		if r, err := bob.Open(m); !errors.Is(err, kez.ErrUndecryptable) {
			t.Errorf("opened forged #%d: %+v, %v", m.Seq, r, err)
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
	// A signature for another server is void here.
	elsewhere, _ := client.New(srv.URL, client.Options{Keys: alice.Keys(), Handle: "alice", ServerName: "evil.example"})
	if _, err := elsewhere.Inbox(ctx, 0, 0); !errors.Is(err, client.ErrUnauthorized) {
		t.Errorf("signed for another server: %v", err)
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
	late, _ := client.New(srv.URL, client.Options{Keys: alice.Keys(), Handle: "alice",
		Now: func() time.Time { return time.Now().Add(-2 * time.Minute) }})
	if _, err := late.Inbox(ctx, 0, 0); !errors.Is(err, client.ErrUnauthorized) {
		t.Errorf("stale signature: %v", err)
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

// TestStreamOutlivesMaxAge: the server ends every stream after
// stream_max_age (SPEC §2.7); Stream reconnects with a new signature and
// since, and delivers every message once, in order.
func TestStreamOutlivesMaxAge(t *testing.T) {
	srv := clienttest.Start(t, "stream_max_age 1s")
	alice, bob := user(t, srv, "alice", nil), user(t, srv, "bob", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bob.Accept(ctx, alice.Keys().Primary()); err != nil {
		t.Fatal(err)
	}
	texts := make(chan string, 20)
	var mu sync.Mutex
	var connects int
	var reasons []error
	done := make(chan error, 1)
	go func() {
		done <- bob.Stream(ctx, client.StreamOptions{
			OnConnect: func() { mu.Lock(); connects++; mu.Unlock() },
			OnDisconnect: func(err error, _ time.Duration) {
				mu.Lock()
				reasons = append(reasons, err)
				mu.Unlock()
			},
		}, func(m client.Message) error {
			r, err := bob.Open(m)
			if err != nil {
				return err
			}
			texts <- r.Plaintext.Text
			return nil
		})
	}()
	const n = 6
	for i := range n {
		if _, err := alice.Send(ctx, "bob", fmt.Sprint("tick ", i)); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-texts:
			if got != fmt.Sprint("tick ", i) {
				t.Fatalf("got %q, want tick %d", got, i)
			}
		case <-ctx.Done():
			t.Fatalf("tick %d never came", i)
		}
		time.Sleep(500 * time.Millisecond)
	}
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if connects < 2 {
		t.Errorf("%d connections in %d s of 1 s streams", connects, n/2)
	}
	for _, err := range reasons {
		if !errors.Is(err, client.ErrStreamEnded) {
			t.Errorf("a stream ended by %v", err)
		}
	}
}

// TestSendsAcrossReloads: sends keep going while Caddy reloads. Each
// attempt is signed afresh; a send whose connection the reload closes is
// sent again (by Go's transport, or by the client after a network error)
// and stored once: the server answers a known envelope with its receipt.
func TestSendsAcrossReloads(t *testing.T) {
	srv := clienttest.Start(t, "sender_rate off")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bob := user(t, srv, "bob", nil)
	const senders, each = 4, 30
	var wg sync.WaitGroup
	var mu sync.Mutex
	seqs := map[uint64]bool{}
	resent := 0
	for i := range senders {
		c := user(t, srv, fmt.Sprint("sender", i), nil)
		if err := bob.Accept(ctx, c.Keys().Primary()); err != nil {
			t.Fatal(err)
		}
		r, err := c.Recipient(ctx, "bob")
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			for k := range each {
				rcpt, err := c.SendTo(ctx, r, fmt.Sprint(i, "/", k))
				if err != nil {
					t.Errorf("sender %d, message %d: %v", i, k, err)
					return
				}
				mu.Lock()
				if seqs[rcpt.Seq] {
					t.Errorf("seq %d given twice", rcpt.Seq)
				}
				seqs[rcpt.Seq] = true
				if rcpt.AlreadyStored {
					resent++
				}
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	for range 3 {
		time.Sleep(300 * time.Millisecond)
		srv.Reload(t)
	}
	wg.Wait()
	if got := openAll(t, bob); len(got) != senders*each {
		t.Errorf("bob has %d messages, want %d", len(got), senders*each)
	}
	t.Logf("%d sends answered with an earlier receipt", resent)
}

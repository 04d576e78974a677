package storagetest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kezchat/kez/storage"
)

// The v2 rules (SPEC §2.0 single use, §2.5, §2.8, §2.9): authenticated
// senders, idempotent deliveries, message requests and their limits,
// contact lists.

// notifications records what a store notifies, by handle.
type notifications struct {
	mu   sync.Mutex
	seen map[string][]storage.Message
}

func (n *notifications) notify(handle string, m storage.Message) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.seen == nil {
		n.seen = map[string][]storage.Message{}
	}
	n.seen[handle] = append(n.seen[handle], m)
}

func (n *notifications) of(handle string) []storage.Message {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.seen[handle])
}

// sameMessage fails the test unless got and want agree on every field.
func sameMessage(t testing.TB, what string, got, want storage.Message) {
	t.Helper()
	if got.Seq != want.Seq || got.ReceivedAt != want.ReceivedAt || got.From != want.From ||
		got.FromAddr != want.FromAddr || got.Request != want.Request || string(got.Envelope) != string(want.Envelope) {
		t.Fatalf("%s: got seq %d at %d from %s %q request=%v %s\nwant seq %d at %d from %s %q request=%v %s", what,
			got.Seq, got.ReceivedAt, got.From, got.FromAddr, got.Request, got.Envelope,
			want.Seq, want.ReceivedAt, want.From, want.FromAddr, want.Request, want.Envelope)
	}
}

// requestFlags returns the Request flag of every stored message of handle
// by sender primary, in seq order.
func requestFlags(t testing.TB, s storage.Store, handle string) map[string][]bool {
	t.Helper()
	flags := map[string][]bool{}
	for _, m := range readAll(t, s, handle) {
		flags[m.From] = append(flags[m.From], m.Request)
	}
	return flags
}

func contactsOf(t testing.TB, s storage.Store, handle string) storage.Contacts {
	t.Helper()
	c, err := s.Contacts(context.Background(), handle)
	if err != nil {
		t.Fatalf("Contacts(%s): %v", handle, err)
	}
	return c
}

// primaries returns Primary(i) for each i, sorted.
func primaries(is ...int) []string {
	ps := make([]string, 0, len(is))
	for _, i := range is {
		ps = append(ps, Primary(i))
	}
	slices.Sort(ps)
	return ps
}

func sameList(got, want []string) bool { return len(got) == len(want) && slices.Equal(got, want) }

// From, FromAddr and Request come back as stored from Append, Read and Notify.
func testMessageFields(t *testing.T, open Opener) {
	var n notifications
	s := open(t, n.notify)
	Register(t, s, "alice", 1)
	setContact(t, s, "alice", 3, storage.Accept)
	stranger := Delivery("alice", 2)
	stranger.FromAddr = "bob@example.net"
	contact := Delivery("alice", 3)
	contact.FromAddr = "carol@kez.test"
	var sent []storage.Message
	for _, d := range []storage.Delivery{stranger, contact} {
		m := send(t, s, d, storage.Limits{})
		want := storage.Message{Seq: m.Seq, ReceivedAt: m.ReceivedAt, From: d.From, FromAddr: d.FromAddr,
			Request: d.From == stranger.From, Envelope: d.Envelope}
		sameMessage(t, "append", m, want)
		sent = append(sent, want)
	}
	got := readAll(t, s, "alice")
	if len(got) != len(sent) {
		t.Fatalf("read %d messages, want %d", len(got), len(sent))
	}
	for i := range got {
		sameMessage(t, "read", got[i], sent[i])
	}
	if !waitFor(func() bool { return len(n.of("alice")) == len(sent) }) {
		t.Fatalf("%d of %d notified", len(n.of("alice")), len(sent))
	}
	for i, m := range n.of("alice") {
		sameMessage(t, "notify", m, sent[i])
	}
}

// SPEC §2.5: the same (From, Sig) stored or acknowledged in this inbox gets
// the original receipt and is not stored again, before any other check.
func testDuplicate(t *testing.T, open Opener) {
	ctx := context.Background()
	var n notifications
	s := open(t, n.notify)
	Register(t, s, "alice", 1)
	Register(t, s, "bob", 2)
	setContact(t, s, "alice", 3, storage.Accept)
	d := Delivery("alice", 3)
	first := send(t, s, d, storage.Limits{})
	again := func(what string, d storage.Delivery, lim storage.Limits, orig storage.Message) {
		t.Helper()
		m, fresh, err := s.Append(ctx, d, lim)
		if err != nil || fresh || m.Seq != orig.Seq || m.ReceivedAt != orig.ReceivedAt {
			t.Fatalf("%s: seq %d at %d fresh=%v err=%v, want the receipt seq %d at %d fresh=false",
				what, m.Seq, m.ReceivedAt, fresh, err, orig.Seq, orig.ReceivedAt)
		}
	}
	again("resend", d, storage.Limits{}, first)
	if got := readAll(t, s, "alice"); len(got) != 1 {
		t.Fatalf("after a resend, %d messages stored", len(got))
	}
	// A full inbox does not turn a resend into inbox_full.
	again("resend to a full inbox", d, storage.Limits{MaxInbox: 1}, first)

	// The same sig from another sender, and another sig from the same
	// sender, are new; so is the same delivery to another inbox.
	other := d
	other.From = Primary(4)
	if m := send(t, s, other, storage.Limits{}); m.Seq == first.Seq {
		t.Fatal("the same sig from another sender got the first receipt")
	}
	if m := send(t, s, Delivery("alice", 3), storage.Limits{}); m.Seq == first.Seq {
		t.Fatal("another sig got the first receipt")
	}
	toBob := d
	toBob.To = "bob"
	send(t, s, toBob, storage.Limits{})

	// Acknowledged: still known.
	if _, err := s.Ack(ctx, "alice", first.Seq); err != nil {
		t.Fatal(err)
	}
	again("resend after ack", d, storage.Limits{}, first)
	for _, m := range readAll(t, s, "alice") {
		if m.Seq == first.Seq {
			t.Fatal("a resend after ack stored the message again")
		}
	}

	// A request: its resend is not refused by the limits it filled, nor
	// by a block that deleted it.
	req := Delivery("alice", 5)
	lim := storage.Limits{RequestLimit: 1, MaxRequests: 2}
	r := send(t, s, req, lim)
	again("resend of a request at request_limit", req, lim, r)
	setContact(t, s, "alice", 5, storage.Block)
	again("resend of a request deleted by a block", req, lim, r)
	refused(t, s, Delivery("alice", 5), lim, storage.ErrBlocked)

	// Resends are never notified: alice got first, other, the second sig and the request.
	const want = 4
	time.Sleep(50 * time.Millisecond)
	if !waitFor(func() bool { return len(n.of("alice")) >= want }) || len(n.of("alice")) != want {
		t.Fatalf("alice notified %d times, want %d", len(n.of("alice")), want)
	}
}

// SPEC §2.5, §2.8: idempotency keys are kept for retention, then forgotten.
func testExpireForgetsKeys(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	Register(t, s, "alice", 1)
	acked, stored := Delivery("alice", 2), Delivery("alice", 3)
	a, b := send(t, s, acked, storage.Limits{}), send(t, s, stored, storage.Limits{})
	if _, err := s.Ack(ctx, "alice", a.Seq); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Expire(ctx, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, d := range []storage.Delivery{acked, stored} {
		if _, fresh, err := s.Append(ctx, d, storage.Limits{}); err != nil || fresh {
			t.Fatalf("resend within retention: fresh=%v %v", fresh, err)
		}
	}
	if n, err := s.Expire(ctx, time.Now().Add(time.Second)); err != nil || n != 1 {
		t.Fatalf("expire(+1s) = %d, %v", n, err)
	}
	for _, d := range []storage.Delivery{acked, stored} {
		m, fresh, err := s.Append(ctx, d, storage.Limits{})
		if err != nil || !fresh || m.Seq <= b.Seq {
			t.Fatalf("resend after retention: seq %d fresh=%v %v", m.Seq, fresh, err)
		}
	}
	if got := readAll(t, s, "alice"); len(got) != 2 {
		t.Fatalf("%d messages stored, want the 2 resends", len(got))
	}
}

// SPEC §2.5, §2.9: a blocked sender is refused; blocking withdraws an
// acceptance; unblocking makes a stranger.
func testBlocked(t *testing.T, open Opener) {
	var n notifications
	s := open(t, n.notify)
	Register(t, s, "alice", 1)
	setContact(t, s, "alice", 2, storage.Accept)
	setContact(t, s, "alice", 2, storage.Block)
	if c := contactsOf(t, s, "alice"); len(c.Accepted) != 0 || !sameList(c.Blocked, primaries(2)) {
		t.Fatalf("after accept then block: %+v", c)
	}
	refused(t, s, Delivery("alice", 2), storage.Limits{}, storage.ErrBlocked)
	if got := readAll(t, s, "alice"); len(got) != 0 {
		t.Fatalf("a blocked sender's message was stored: %+v", got)
	}
	// Blocking one sender refuses no other.
	send(t, s, Delivery("alice", 3), storage.Limits{})
	setContact(t, s, "alice", 2, storage.Unblock)
	if m := send(t, s, Delivery("alice", 2), storage.Limits{}); !m.Request {
		t.Fatal("after unblock, the sender is not a stranger")
	}
	if c := contactsOf(t, s, "alice"); len(c.Accepted) != 0 || len(c.Blocked) != 0 {
		t.Fatalf("after unblock: %+v", c)
	}
	time.Sleep(20 * time.Millisecond)
	if !waitFor(func() bool { return len(n.of("alice")) >= 2 }) || len(n.of("alice")) != 2 {
		t.Fatalf("%d notifications, want 2", len(n.of("alice")))
	}
}

// SPEC §2.5: at most RequestLimit unacknowledged requests per stranger.
func testRequestLimit(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	Register(t, s, "alice", 1)
	Register(t, s, "bob", 2)
	lim := storage.Limits{RequestLimit: 2}
	r1 := send(t, s, Delivery("alice", 3), lim)
	send(t, s, Delivery("alice", 3), lim)
	refused(t, s, Delivery("alice", 3), lim, storage.ErrRequestLimit)
	// Per sender, per inbox.
	send(t, s, Delivery("alice", 4), lim)
	send(t, s, Delivery("bob", 3), lim)
	// Acknowledging one frees one.
	if _, err := s.Ack(ctx, "alice", r1.Seq); err != nil {
		t.Fatal(err)
	}
	send(t, s, Delivery("alice", 3), lim)
	refused(t, s, Delivery("alice", 3), lim, storage.ErrRequestLimit)
	// 0 is no bound.
	for range 5 {
		send(t, s, Delivery("alice", 3), storage.Limits{})
	}
	for _, m := range readAll(t, s, "alice") {
		if !m.Request {
			t.Fatalf("a stranger's message seq %d is not a request", m.Seq)
		}
	}
}

// SPEC §2.5: at most MaxRequests unacknowledged requests per inbox.
func testMaxRequests(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	Register(t, s, "alice", 1)
	Register(t, s, "bob", 2)
	lim := storage.Limits{RequestLimit: 2, MaxRequests: 3}
	first := send(t, s, Delivery("alice", 3), lim)
	send(t, s, Delivery("alice", 3), lim)
	send(t, s, Delivery("alice", 4), lim)
	refused(t, s, Delivery("alice", 4), lim, storage.ErrRequestLimit)
	refused(t, s, Delivery("alice", 5), lim, storage.ErrRequestLimit)
	send(t, s, Delivery("bob", 5), lim) // another inbox
	if _, err := s.Ack(ctx, "alice", first.Seq); err != nil {
		t.Fatal(err)
	}
	send(t, s, Delivery("alice", 5), lim)
	refused(t, s, Delivery("alice", 6), lim, storage.ErrRequestLimit)
	// Contacts are not requests.
	setContact(t, s, "alice", 7, storage.Accept)
	send(t, s, Delivery("alice", 7), lim)
}

// The headline case (SPEC §2.5): strangers flooding an inbox end in
// request_limit, never filling it, while a contact still gets stored; the
// contact alone fills it up to MaxInbox.
func testStrangerFlood(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	Register(t, s, "alice", 1)
	setContact(t, s, "alice", 2, storage.Accept)
	lim := storage.Limits{MaxInbox: 3, RequestLimit: 3, MaxRequests: 10}
	const strangers, each = 6, 5
	var mu sync.Mutex
	stored := map[string]int{}
	var wg sync.WaitGroup
	for i := range strangers {
		for range each {
			wg.Go(func() {
				m, fresh, err := s.Append(ctx, Delivery("alice", 10+i), lim)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil && fresh && m.Request:
					stored[Primary(10+i)]++
				case errors.Is(err, storage.ErrRequestLimit):
				default:
					t.Errorf("stranger %d: fresh=%v request=%v %v", i, fresh, m.Request, err)
				}
			})
		}
	}
	wg.Wait()
	total := 0
	for from, n := range stored {
		if n > lim.RequestLimit {
			t.Errorf("%s stored %d requests, limit %d", from, n, lim.RequestLimit)
		}
		total += n
	}
	if total != lim.MaxRequests {
		t.Fatalf("%d requests stored, want max_requests %d", total, lim.MaxRequests)
	}
	// The inbox holds more than MaxInbox requests; the contact gets in.
	for range lim.MaxInbox {
		if m := send(t, s, Delivery("alice", 2), lim); m.Request {
			t.Fatal("a contact's message is a request")
		}
	}
	refused(t, s, Delivery("alice", 2), lim, storage.ErrInboxFull)
	refused(t, s, Delivery("alice", 99), lim, storage.ErrRequestLimit)
	if got := readAll(t, s, "alice"); len(got) != lim.MaxRequests+lim.MaxInbox {
		t.Fatalf("%d messages stored, want %d", len(got), lim.MaxRequests+lim.MaxInbox)
	}
}

// SPEC §2.9: writing to someone accepts them in one's own inbox (their
// stored requests included), unless one has blocked them.
func testImplicitAcceptance(t *testing.T, open Opener) {
	s := open(t, nil)
	Register(t, s, "alice", 1)
	Register(t, s, "bob", 2)
	Register(t, s, "carol", 3)
	Register(t, s, "dave", 4)
	lim := storage.Limits{RequestLimit: 1}
	// bob writes to alice first: a request.
	if m := send(t, s, Delivery("alice", 2), lim); !m.Request {
		t.Fatal("bob's first message is not a request")
	}
	refused(t, s, Delivery("alice", 2), lim, storage.ErrRequestLimit)
	// alice answers: a request in bob's inbox, and bob is accepted in hers.
	d := Delivery("bob", 1)
	d.SenderHandle, d.ToPrimary = "alice", Primary(2)
	if m := send(t, s, d, lim); !m.Request {
		t.Fatal("alice's message to a stranger is not a request")
	}
	if c := contactsOf(t, s, "alice"); !sameList(c.Accepted, primaries(2)) || len(c.Blocked) != 0 {
		t.Fatalf("alice's contacts after writing to bob: %+v", c)
	}
	if c := contactsOf(t, s, "bob"); len(c.Accepted) != 0 {
		t.Fatalf("bob's contacts after alice wrote to him: %+v", c)
	}
	if f := requestFlags(t, s, "alice")[Primary(2)]; !slices.Equal(f, []bool{false}) {
		t.Fatalf("bob's stored request after alice wrote to him: request flags %v", f)
	}
	for range 3 {
		if m := send(t, s, Delivery("alice", 2), lim); m.Request {
			t.Fatal("bob's answer is a request")
		}
	}
	// A block is not overridden by writing.
	setContact(t, s, "alice", 3, storage.Block)
	d = Delivery("carol", 1)
	d.SenderHandle, d.ToPrimary = "alice", Primary(3)
	send(t, s, d, lim)
	if c := contactsOf(t, s, "alice"); !sameList(c.Accepted, primaries(2)) || !sameList(c.Blocked, primaries(3)) {
		t.Fatalf("alice's contacts after writing to carol, blocked: %+v", c)
	}
	refused(t, s, Delivery("alice", 3), lim, storage.ErrBlocked)
	// A message that is not stored accepts nobody.
	setContact(t, s, "dave", 1, storage.Block)
	d = Delivery("dave", 1)
	d.SenderHandle, d.ToPrimary = "alice", Primary(4)
	refused(t, s, d, lim, storage.ErrBlocked)
	if c := contactsOf(t, s, "alice"); slices.Contains(c.Accepted, Primary(4)) {
		t.Fatalf("a refused message accepted its recipient: %+v", c)
	}
	// A remote sender (no SenderHandle) or an unknown one changes nothing.
	d = Delivery("bob", 5)
	d.ToPrimary = Primary(2)
	send(t, s, d, lim)
	d = Delivery("bob", 6)
	d.SenderHandle, d.ToPrimary = "ghost", Primary(2)
	send(t, s, d, lim)
	if c := contactsOf(t, s, "bob"); len(c.Accepted) != 0 {
		t.Fatalf("bob's contacts: %+v", c)
	}
}

// An inbox owner writing to its own inbox (a copy for its other devices,
// SPEC §3) is never a stranger there, and is not put on its own lists.
func testOwnCopies(t *testing.T, open Opener) {
	s := open(t, nil)
	Register(t, s, "alice", 1)
	lim := storage.Limits{RequestLimit: 1, MaxRequests: 1}
	for range 3 {
		d := Delivery("alice", 1)
		d.SenderHandle, d.ToPrimary = "alice", Primary(1)
		if m := send(t, s, d, lim); m.Request {
			t.Fatal("alice's copy to herself is a request")
		}
	}
	if c := contactsOf(t, s, "alice"); len(c.Accepted) != 0 || len(c.Blocked) != 0 {
		t.Fatalf("alice's contacts after writing to herself: %+v", c)
	}
}

// SPEC §2.9: accepting a sender turns its stored requests into ordinary
// messages: Read shows them so, they free their request slots and count
// against MaxInbox.
func testAccept(t *testing.T, open Opener) {
	s := open(t, nil)
	Register(t, s, "alice", 1)
	lim := storage.Limits{MaxInbox: 3, RequestLimit: 2, MaxRequests: 2}
	send(t, s, Delivery("alice", 2), lim)
	send(t, s, Delivery("alice", 2), lim)
	refused(t, s, Delivery("alice", 2), lim, storage.ErrRequestLimit)
	refused(t, s, Delivery("alice", 3), lim, storage.ErrRequestLimit)
	setContact(t, s, "alice", 2, storage.Accept)
	if f := requestFlags(t, s, "alice")[Primary(2)]; !slices.Equal(f, []bool{false, false}) {
		t.Fatalf("after accept, request flags %v", f)
	}
	// The request slots are free again...
	send(t, s, Delivery("alice", 3), lim)
	send(t, s, Delivery("alice", 3), lim)
	refused(t, s, Delivery("alice", 4), lim, storage.ErrRequestLimit)
	// ...and the accepted messages count as messages: one more fits.
	if m := send(t, s, Delivery("alice", 2), lim); m.Request {
		t.Fatal("an accepted sender's message is a request")
	}
	refused(t, s, Delivery("alice", 2), lim, storage.ErrInboxFull)
	if c := contactsOf(t, s, "alice"); !sameList(c.Accepted, primaries(2)) {
		t.Fatalf("contacts: %+v", c)
	}
	// Accepting again changes nothing.
	setContact(t, s, "alice", 2, storage.Accept)
	refused(t, s, Delivery("alice", 2), lim, storage.ErrInboxFull)
}

// SPEC §2.9: a block deletes the sender's stored requests, not its
// ordinary messages (which still count against MaxInbox).
func testBlockDeletesRequests(t *testing.T, open Opener) {
	s := open(t, nil)
	Register(t, s, "alice", 1)
	lim := storage.Limits{MaxInbox: 2, RequestLimit: 2, MaxRequests: 3}
	setContact(t, s, "alice", 2, storage.Accept)
	send(t, s, Delivery("alice", 2), lim)
	send(t, s, Delivery("alice", 2), lim)
	setContact(t, s, "alice", 2, storage.Unaccept)
	send(t, s, Delivery("alice", 2), lim)
	send(t, s, Delivery("alice", 2), lim)
	send(t, s, Delivery("alice", 3), lim)
	refused(t, s, Delivery("alice", 4), lim, storage.ErrRequestLimit)
	setContact(t, s, "alice", 2, storage.Block)
	flags := requestFlags(t, s, "alice")
	if !slices.Equal(flags[Primary(2)], []bool{false, false}) || !slices.Equal(flags[Primary(3)], []bool{true}) {
		t.Fatalf("after block, request flags %v", flags)
	}
	// Two request slots are free; the blocked sender's messages still fill the inbox.
	send(t, s, Delivery("alice", 4), lim)
	send(t, s, Delivery("alice", 4), lim)
	setContact(t, s, "alice", 5, storage.Accept)
	refused(t, s, Delivery("alice", 5), lim, storage.ErrInboxFull)
	if c := contactsOf(t, s, "alice"); !sameList(c.Accepted, primaries(5)) || !sameList(c.Blocked, primaries(2)) {
		t.Fatalf("contacts: %+v", c)
	}
}

// SPEC §2.9: withdrawing an acceptance or a block makes a stranger again;
// messages already ordinary stay so.
func testUnacceptUnblock(t *testing.T, open Opener) {
	s := open(t, nil)
	Register(t, s, "alice", 1)
	lim := storage.Limits{MaxInbox: 1, RequestLimit: 5}
	send(t, s, Delivery("alice", 2), lim) // a request
	setContact(t, s, "alice", 2, storage.Accept)
	setContact(t, s, "alice", 2, storage.Unaccept)
	if m := send(t, s, Delivery("alice", 2), lim); !m.Request {
		t.Fatal("after unaccept, the sender is not a stranger")
	}
	if f := requestFlags(t, s, "alice")[Primary(2)]; !slices.Equal(f, []bool{false, true}) {
		t.Fatalf("after accept and unaccept, request flags %v", f)
	}
	// The message accepted before still counts against MaxInbox.
	setContact(t, s, "alice", 3, storage.Accept)
	refused(t, s, Delivery("alice", 3), lim, storage.ErrInboxFull)
	// Unaccepting a stranger is a no-op.
	setContact(t, s, "alice", 9, storage.Unaccept)
	// Accept, block, unblock: a stranger, not a contact.
	setContact(t, s, "alice", 4, storage.Accept)
	setContact(t, s, "alice", 4, storage.Block)
	setContact(t, s, "alice", 4, storage.Unblock)
	if m := send(t, s, Delivery("alice", 4), lim); !m.Request {
		t.Fatal("after accept, block and unblock, the sender is not a stranger")
	}
	// Block, then accept: accepted, no longer blocked.
	setContact(t, s, "alice", 5, storage.Block)
	setContact(t, s, "alice", 5, storage.Accept)
	if c := contactsOf(t, s, "alice"); !sameList(c.Accepted, primaries(3, 5)) || len(c.Blocked) != 0 {
		t.Fatalf("contacts: %+v", c)
	}
}

// SPEC §2.9: both lists come sorted; they belong to one inbox; an unknown
// handle has none.
func testContacts(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	Register(t, s, "alice", 1)
	Register(t, s, "bob", 2)
	if c := contactsOf(t, s, "alice"); len(c.Accepted) != 0 || len(c.Blocked) != 0 {
		t.Fatalf("new inbox's contacts: %+v", c)
	}
	for _, i := range []int{0x7f00, 3, 0xff, 12, 0x100, 7} {
		setContact(t, s, "alice", i, storage.Accept)
	}
	for _, i := range []int{0xabc, 40, 5} {
		setContact(t, s, "alice", i, storage.Block)
	}
	setContact(t, s, "alice", 12, storage.Block)
	c := contactsOf(t, s, "alice")
	if !sameList(c.Accepted, primaries(0x7f00, 3, 0xff, 0x100, 7)) || !sameList(c.Blocked, primaries(0xabc, 40, 5, 12)) {
		t.Fatalf("contacts: %+v", c)
	}
	if !slices.IsSorted(c.Accepted) || !slices.IsSorted(c.Blocked) {
		t.Fatalf("not sorted: %+v", c)
	}
	if c := contactsOf(t, s, "bob"); len(c.Accepted) != 0 || len(c.Blocked) != 0 {
		t.Fatalf("bob's contacts: %+v", c)
	}
	if err := s.SetContact(ctx, "ghost", Primary(3), storage.Accept); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("SetContact(ghost) = %v", err)
	}
	if _, err := s.Contacts(ctx, "ghost"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Contacts(ghost) = %v", err)
	}
}

// SPEC §2.5, §2.8: requests leave their slots when acknowledged or expired.
func testAckExpireFreeRequests(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	Register(t, s, "alice", 1)
	lim := storage.Limits{RequestLimit: 1, MaxRequests: 1}
	r := send(t, s, Delivery("alice", 2), lim)
	refused(t, s, Delivery("alice", 3), lim, storage.ErrRequestLimit)
	if n, err := s.Ack(ctx, "alice", r.Seq); err != nil || n != 1 {
		t.Fatalf("ack = %d, %v", n, err)
	}
	send(t, s, Delivery("alice", 3), lim)
	refused(t, s, Delivery("alice", 2), lim, storage.ErrRequestLimit)
	if n, err := s.Expire(ctx, time.Now().Add(time.Second)); err != nil || n != 1 {
		t.Fatalf("expire = %d, %v", n, err)
	}
	send(t, s, Delivery("alice", 2), lim)
	// Acknowledging a mix of requests and messages frees each kind.
	setContact(t, s, "alice", 4, storage.Accept)
	last := send(t, s, Delivery("alice", 4), storage.Limits{MaxInbox: 1})
	refused(t, s, Delivery("alice", 4), storage.Limits{MaxInbox: 1}, storage.ErrInboxFull)
	if n, err := s.Ack(ctx, "alice", last.Seq); err != nil || n != 2 {
		t.Fatalf("ack = %d, %v", n, err)
	}
	send(t, s, Delivery("alice", 4), storage.Limits{MaxInbox: 1})
	send(t, s, Delivery("alice", 3), lim)
}

// Concurrent appends within (or across) one commit see each other: the
// limits hold exactly.
func testConcurrentLimits(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	Register(t, s, "alice", 1)
	setContact(t, s, "alice", 2, storage.Accept)
	count := func(d func() storage.Delivery, lim storage.Limits, want error) int {
		var wg sync.WaitGroup
		var mu sync.Mutex
		stored := 0
		for range 32 {
			wg.Go(func() {
				_, fresh, err := s.Append(ctx, d(), lim)
				mu.Lock()
				defer mu.Unlock()
				if err == nil && fresh {
					stored++
				} else if !errors.Is(err, want) {
					t.Errorf("append: fresh=%v %v", fresh, err)
				}
			})
		}
		wg.Wait()
		return stored
	}
	if n := count(func() storage.Delivery { return Delivery("alice", 3) }, storage.Limits{RequestLimit: 3}, storage.ErrRequestLimit); n != 3 {
		t.Fatalf("%d requests stored by one stranger, limit 3", n)
	}
	if n := count(func() storage.Delivery { return Delivery("alice", 2) }, storage.Limits{MaxInbox: 5}, storage.ErrInboxFull); n != 5 {
		t.Fatalf("%d messages stored, max_inbox 5", n)
	}
}

// Racing resends of one delivery: exactly one is stored and notified, all
// get its receipt.
func testConcurrentDuplicates(t *testing.T, open Opener) {
	ctx := context.Background()
	var n notifications
	s := open(t, n.notify)
	Register(t, s, "alice", 1)
	d := Delivery("alice", 2)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var receipts []storage.Message
	fresh := 0
	for range 32 {
		wg.Go(func() {
			m, f, err := s.Append(ctx, d, storage.Limits{RequestLimit: 1})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("append: %v", err)
				return
			}
			if f {
				fresh++
			}
			receipts = append(receipts, m)
		})
	}
	wg.Wait()
	if fresh != 1 {
		t.Fatalf("%d of 32 identical appends were fresh", fresh)
	}
	for _, m := range receipts {
		if m.Seq != receipts[0].Seq || m.ReceivedAt != receipts[0].ReceivedAt {
			t.Fatalf("receipts differ: %d at %d, %d at %d", m.Seq, m.ReceivedAt, receipts[0].Seq, receipts[0].ReceivedAt)
		}
	}
	if got := readAll(t, s, "alice"); len(got) != 1 {
		t.Fatalf("%d messages stored", len(got))
	}
	time.Sleep(20 * time.Millisecond)
	if !waitFor(func() bool { return len(n.of("alice")) >= 1 }) || len(n.of("alice")) != 1 {
		t.Fatalf("%d notifications", len(n.of("alice")))
	}
}

func onceKey(what string) [32]byte { return sha256.Sum256([]byte(what)) }

// SPEC §2.0 "Single use": a key is fresh once until its time has passed.
func testOnce(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	use := func(key [32]byte, until time.Time, want bool) {
		t.Helper()
		if fresh, err := s.Once(ctx, key, until); err != nil || fresh != want {
			t.Fatalf("Once(%x) = %v, %v; want %v", key[:4], fresh, err, want)
		}
	}
	a, b := onceKey(fmt.Sprint("a", time.Now().UnixNano())), onceKey(fmt.Sprint("b", time.Now().UnixNano()))
	later := time.Now().Add(2 * time.Minute)
	use(a, later, true)
	use(a, later, false)
	use(a, later.Add(time.Hour), false)
	use(b, later, true)
	// A short until: used, then fresh again once it has passed.
	c := onceKey(fmt.Sprint("c", time.Now().UnixNano()))
	soon := time.Now().Add(time.Second)
	use(c, soon, true)
	use(c, soon, false)
	time.Sleep(time.Until(soon) + 100*time.Millisecond)
	use(c, time.Now().Add(time.Minute), true)
	use(c, time.Now().Add(time.Minute), false)
	use(a, later, false)
}

// Racing uses of one key: exactly one is fresh.
func testOnceConcurrent(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	for round := range 4 {
		key := onceKey(fmt.Sprint("race", round, time.Now().UnixNano()))
		until := time.Now().Add(time.Minute)
		var wg sync.WaitGroup
		var mu sync.Mutex
		fresh := 0
		for range 32 {
			wg.Go(func() {
				f, err := s.Once(ctx, key, until)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					t.Errorf("Once: %v", err)
				}
				if f {
					fresh++
				}
			})
		}
		wg.Wait()
		if fresh != 1 {
			t.Fatalf("round %d: %d of 32 were fresh", round, fresh)
		}
	}
}

// Package storagetest is the conformance suite every storage.Store backend
// must pass: what SPEC §2 requires of the registry and the inboxes, and
// the v2 rules (v2.go): idempotent deliveries, message requests and their
// limits, contact lists, single-use signatures; and the trust rules
// (trust.go): the binding log, rotation, deletion and the handle cooldown. It uses nothing but the
// storage.Store interface, so every backend runs the same cases.
package storagetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kezchat/kez/storage"
)

// Opener opens a fresh, empty store whose appends are reported to notify.
type Opener func(t *testing.T, notify storage.Notify) storage.Store

// Run runs every conformance test against stores from open.
func Run(t *testing.T, open Opener) {
	tests := map[string]func(*testing.T, Opener){
		"RegisterAndLookup":          testRegisterAndLookup,
		"InvitesAreUsedOnce":         testInvites,
		"ConcurrentRegistration":     testConcurrentRegistration,
		"AppendReadPaging":           testAppendReadPaging,
		"SeqNeverReused":             testSeqNeverReused,
		"InboxCap":                   testInboxCap,
		"AckAndExpire":               testAckAndExpire,
		"NotifyInCommitOrder":        testNotifyInCommitOrder,
		"UnknownInbox":               testUnknownInbox,
		"ClosedStoreRefusesRequests": testClosed,
		"LargeEnvelopes":             testLargeEnvelopes,

		// v2 (v2.go)
		"MessageFieldsRoundTrip":          testMessageFields,
		"DuplicateReturnsOriginalReceipt": testDuplicate,
		"ExpireForgetsIdempotencyKeys":    testExpireForgetsKeys,
		"Blocked":                         testBlocked,
		"RequestLimitPerSender":           testRequestLimit,
		"MaxRequestsPerInbox":             testMaxRequests,
		"StrangerFloodEndsInRequestLimitWhileContactGetsStored": testStrangerFlood,
		"ImplicitAcceptanceBySending":                           testImplicitAcceptance,
		"OwnCopiesAreNotRequests":                               testOwnCopies,
		"AcceptTurnsRequestsIntoMessages":                       testAccept,
		"BlockDeletesStoredRequestsOnly":                        testBlockDeletesRequests,
		"UnacceptAndUnblock":                                    testUnacceptUnblock,
		"ContactsSorted":                                        testContacts,
		"AckAndExpireFreeRequestSlots":                          testAckExpireFreeRequests,
		"ConcurrentAppendsRespectLimits":                        testConcurrentLimits,
		"ConcurrentDuplicateAppends":                            testConcurrentDuplicates,
		"OnceSingleUse":                                         testOnce,
		"OnceConcurrent":                                        testOnceConcurrent,
	}
	for name, fn := range trustTests() {
		tests[name] = fn
	}
	tests["RemoteLogs"] = testRemoteLogs
	tests["RemoteLogsConcurrentUpdates"] = testRemoteLogsConcurrent
	for name, fn := range pushTests() {
		tests[name] = fn
	}
	for name, fn := range tests {
		t.Run(name, func(t *testing.T) { fn(t, open) })
	}
}

// Primary builds a distinct, well-formed primary for test records (the store
// does not check curves; the kez package does that before storing).
func Primary(i int) string { return fmt.Sprintf("ed25519:%064x", i+1) }

// Register stores a record for handle with Primary(i), failing the test on error.
func Register(t testing.TB, s storage.Store, handle string, i int) storage.Record {
	t.Helper()
	rec := storage.Record{Handle: handle, Primary: Primary(i), RegisteredAt: 1764115200,
		Registration: []byte(`{"payload":{"handle":"` + handle + `"},"signature":{"alg":"ed25519","sig":"00"}}`)}
	got, created, err := s.Register(context.Background(), rec, "")
	if err != nil || !created {
		t.Fatalf("register %s: created=%v err=%v", handle, created, err)
	}
	return got
}

// FillSender is the index of the primary Fill sends from (Primary(FillSender)).
const FillSender = 9999

var sigs atomic.Uint64

// Sig returns a fresh envelope sig (128 hex digits), never returned before
// in this process.
func Sig() string { return fmt.Sprintf("%0128x", sigs.Add(1)) }

// Delivery builds a delivery to handle from Primary(from) with a fresh sig
// and a small envelope naming both (the store does not read it).
func Delivery(to string, from int) storage.Delivery {
	sig := Sig()
	return storage.Delivery{To: to, From: Primary(from), Sig: sig,
		Envelope: fmt.Appendf(nil, `{"from":%q,"sig":%q}`, Primary(from), sig)}
}

// Fill accepts Primary(FillSender) in handle's inbox, appends n messages
// from it (MaxInbox maxInbox) and returns their seqs, failing the test on
// any error.
func Fill(t testing.TB, s storage.Store, handle string, n, maxInbox int) []uint64 {
	t.Helper()
	ctx := context.Background()
	if err := s.SetContact(ctx, handle, Primary(FillSender), storage.Accept); err != nil {
		t.Fatalf("accept the fill sender in %s: %v", handle, err)
	}
	seqs := make([]uint64, 0, n)
	for range n {
		m, fresh, err := s.Append(ctx, Delivery(handle, FillSender), storage.Limits{MaxInbox: maxInbox})
		if err != nil || !fresh || m.Request {
			t.Fatalf("append to %s: fresh=%v request=%v %v", handle, fresh, m.Request, err)
		}
		seqs = append(seqs, m.Seq)
	}
	return seqs
}

// send appends d, failing the test unless it is stored anew.
func send(t testing.TB, s storage.Store, d storage.Delivery, lim storage.Limits) storage.Message {
	t.Helper()
	m, fresh, err := s.Append(context.Background(), d, lim)
	if err != nil || !fresh {
		t.Fatalf("append to %s from %s: fresh=%v %v", d.To, d.From, fresh, err)
	}
	return m
}

// refused appends d, failing the test unless it is refused with want.
func refused(t testing.TB, s storage.Store, d storage.Delivery, lim storage.Limits, want error) {
	t.Helper()
	if m, fresh, err := s.Append(context.Background(), d, lim); !errors.Is(err, want) {
		t.Fatalf("append to %s from %s: seq %d fresh=%v err=%v, want %v", d.To, d.From, m.Seq, fresh, err, want)
	}
}

// setContact changes a contact list, failing the test on error.
func setContact(t testing.TB, s storage.Store, handle string, i int, state storage.ContactState) {
	t.Helper()
	if err := s.SetContact(context.Background(), handle, Primary(i), state); err != nil {
		t.Fatalf("SetContact(%s, %d, %d): %v", handle, i, state, err)
	}
}

// readAll returns every message in handle's inbox.
func readAll(t testing.TB, s storage.Store, handle string) []storage.Message {
	t.Helper()
	var all []storage.Message
	for since := uint64(0); ; {
		page, more, err := s.Read(context.Background(), handle, since, 100)
		if err != nil {
			t.Fatalf("read %s: %v", handle, err)
		}
		all = append(all, page...)
		if !more || len(page) == 0 {
			return all
		}
		since = page[len(page)-1].Seq
	}
}

// waitFor polls cond for up to 30 s.
func waitFor(cond func() bool) bool {
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

func testRegisterAndLookup(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	alice := Register(t, s, "alice", 1)
	got, err := s.Lookup(ctx, "alice")
	if err != nil || got.Primary != alice.Primary || string(got.Registration) != string(alice.Registration) || got.RegisteredAt != alice.RegisteredAt {
		t.Fatalf("Lookup = %+v, %v", got, err)
	}
	if got, err := s.LookupPrimary(ctx, Primary(1)); err != nil || got.Handle != "alice" {
		t.Fatalf("LookupPrimary = %+v, %v", got, err)
	}
	// Same handle, same primary: an idempotent retry returning the first record.
	again, created, err := s.Register(ctx, storage.Record{Handle: "alice", Primary: Primary(1), RegisteredAt: 99}, "")
	if err != nil || created || again.RegisteredAt != alice.RegisteredAt {
		t.Fatalf("retry = %+v created=%v err=%v", again, created, err)
	}
	if _, _, err := s.Register(ctx, storage.Record{Handle: "alice", Primary: Primary(2)}, ""); !errors.Is(err, storage.ErrHandleTaken) {
		t.Fatalf("other primary for alice: %v", err)
	}
	if _, _, err := s.Register(ctx, storage.Record{Handle: "alice2", Primary: Primary(1)}, ""); !errors.Is(err, storage.ErrPrimaryTaken) {
		t.Fatalf("alice's primary for alice2: %v", err)
	}
	if _, err := s.Lookup(ctx, "alice2"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("failed registration left a record: %v", err)
	}
	if _, err := s.Lookup(ctx, "nobody"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Lookup(nobody) = %v", err)
	}
	if _, err := s.LookupPrimary(ctx, Primary(7)); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("LookupPrimary(unbound) = %v", err)
	}
}

func testInvites(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	if _, created, err := s.Register(ctx, storage.Record{Handle: "alice", Primary: Primary(1)}, "invite-1"); err != nil || !created {
		t.Fatalf("first use: created=%v err=%v", created, err)
	}
	if _, _, err := s.Register(ctx, storage.Record{Handle: "bob", Primary: Primary(2)}, "invite-1"); !errors.Is(err, storage.ErrInviteUsed) {
		t.Fatalf("second use: %v", err)
	}
	if _, err := s.Lookup(ctx, "bob"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("refused registration left a record: %v", err)
	}
	// A registration refused for another reason does not use up the invite.
	if _, _, err := s.Register(ctx, storage.Record{Handle: "alice", Primary: Primary(3)}, "invite-2"); !errors.Is(err, storage.ErrHandleTaken) {
		t.Fatalf("taken handle: %v", err)
	}
	if _, created, err := s.Register(ctx, storage.Record{Handle: "carol", Primary: Primary(3)}, "invite-2"); err != nil || !created {
		t.Fatalf("invite after a failed attempt: created=%v err=%v", created, err)
	}
	// Racing for one invite: exactly one wins.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, created, err := s.Register(ctx, storage.Record{Handle: fmt.Sprintf("racer%d", i), Primary: Primary(10 + i)}, "invite-3")
			mu.Lock()
			defer mu.Unlock()
			if err == nil && created {
				wins++
			} else if !errors.Is(err, storage.ErrInviteUsed) {
				t.Errorf("racer %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d registrations used one invite", wins)
	}
}

func testConcurrentRegistration(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	const n = 16
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, taken := 0, 0
	// n different primaries race for one handle; then n handles race for one primary.
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, created, err := s.Register(ctx, storage.Record{Handle: "contested", Primary: Primary(100 + i)}, "")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && created:
				wins++
			case errors.Is(err, storage.ErrHandleTaken):
				taken++
			default:
				t.Errorf("register: created=%v err=%v", created, err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || taken != n-1 {
		t.Fatalf("handle race: %d wins, %d taken", wins, taken)
	}
	wins, taken = 0, 0
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, created, err := s.Register(ctx, storage.Record{Handle: fmt.Sprintf("h%02d", i), Primary: Primary(500)}, "")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && created:
				wins++
			case errors.Is(err, storage.ErrPrimaryTaken):
				taken++
			default:
				t.Errorf("register: created=%v err=%v", created, err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || taken != n-1 {
		t.Fatalf("primary race: %d wins, %d taken", wins, taken)
	}
}

func testAppendReadPaging(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	Register(t, s, "alice", 1)
	Register(t, s, "bob", 2)
	const n = 25
	var seqs []uint64
	before := time.Now().UnixMilli()
	for i := range n {
		d := Delivery("alice", 2)
		d.Envelope = fmt.Appendf(nil, `{"i":%d}`, i)
		m := send(t, s, d, storage.Limits{})
		if m.Seq == 0 || (len(seqs) > 0 && m.Seq <= seqs[len(seqs)-1]) {
			t.Fatalf("seq %d after %v", m.Seq, seqs)
		}
		if m.ReceivedAt < before-1000 || m.ReceivedAt > time.Now().UnixMilli()+1000 {
			t.Fatalf("received_at %d not now", m.ReceivedAt)
		}
		seqs = append(seqs, m.Seq)
	}
	d := Delivery("bob", 1)
	d.Envelope = []byte(`{"for":"bob"}`)
	send(t, s, d, storage.Limits{})
	var got []storage.Message
	since := uint64(0)
	for pages := 0; ; pages++ {
		page, more, err := s.Read(ctx, "alice", since, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 10 || pages > 3 {
			t.Fatalf("page of %d, page %d", len(page), pages)
		}
		got = append(got, page...)
		if len(page) > 0 {
			since = page[len(page)-1].Seq
		}
		if !more {
			break
		}
	}
	if len(got) != n {
		t.Fatalf("read %d messages, want %d", len(got), n)
	}
	for i, m := range got {
		if m.Seq != seqs[i] || string(m.Envelope) != fmt.Sprintf(`{"i":%d}`, i) {
			t.Fatalf("message %d = %d %s", i, m.Seq, m.Envelope)
		}
	}
	// since in the middle, and past the end.
	if page, more, _ := s.Read(ctx, "alice", seqs[19], 100); len(page) != 5 || more || page[0].Seq != seqs[20] {
		t.Fatalf("since %d: %d messages more=%v", seqs[19], len(page), more)
	}
	if page, more, _ := s.Read(ctx, "alice", seqs[n-1]+100, 100); len(page) != 0 || more {
		t.Fatalf("past the end: %d messages more=%v", len(page), more)
	}
	if page, _, _ := s.Read(ctx, "bob", 0, 100); len(page) != 1 || string(page[0].Envelope) != `{"for":"bob"}` {
		t.Fatalf("bob's inbox = %+v", page)
	}
}

func testSeqNeverReused(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	Register(t, s, "alice", 1)
	last := Fill(t, s, "alice", 3, 0)[2]
	if n, err := s.Ack(ctx, "alice", last); err != nil || n != 3 {
		t.Fatalf("ack = %d, %v", n, err)
	}
	if m := send(t, s, Delivery("alice", 2), storage.Limits{}); m.Seq <= last {
		t.Fatalf("after ack, seq %d (last was %d)", m.Seq, last)
	}
}

func testInboxCap(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	Register(t, s, "alice", 1)
	last := Fill(t, s, "alice", 3, 3)[2]
	refused(t, s, Delivery("alice", FillSender), storage.Limits{MaxInbox: 3}, storage.ErrInboxFull)
	if page, _, _ := s.Read(ctx, "alice", 0, 10); len(page) != 3 {
		t.Fatalf("full inbox holds %d", len(page))
	}
	if _, err := s.Ack(ctx, "alice", last-2); err != nil {
		t.Fatal(err)
	}
	send(t, s, Delivery("alice", FillSender), storage.Limits{MaxInbox: 3})
}

func testAckAndExpire(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	Register(t, s, "alice", 1)
	Register(t, s, "bob", 2)
	seqs := Fill(t, s, "alice", 5, 0)
	if n, err := s.Ack(ctx, "alice", seqs[1]); err != nil || n != 2 {
		t.Fatalf("ack upto %d = %d, %v", seqs[1], n, err)
	}
	if n, err := s.Ack(ctx, "alice", seqs[1]); err != nil || n != 0 {
		t.Fatalf("repeated ack = %d, %v", n, err)
	}
	if page, _, _ := s.Read(ctx, "alice", 0, 10); len(page) != 3 || page[0].Seq != seqs[2] {
		t.Fatalf("after ack: %+v", page)
	}
	send(t, s, Delivery("bob", 1), storage.Limits{})
	// Nothing is older than an hour ago; everything is older than a second from now.
	if n, err := s.Expire(ctx, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("expire(-1h) = %d, %v", n, err)
	}
	if n, err := s.Expire(ctx, time.Now().Add(time.Second)); err != nil || n != 4 {
		t.Fatalf("expire(+1s) = %d, %v", n, err)
	}
	if page, _, _ := s.Read(ctx, "alice", 0, 10); len(page) != 0 {
		t.Fatalf("after expire: %d messages", len(page))
	}
	m, fresh, err := s.Append(ctx, Delivery("alice", FillSender), storage.Limits{MaxInbox: 1})
	if err != nil || !fresh || m.Seq <= seqs[4] {
		t.Fatalf("append after expire: seq %d, %v (cap 1 must count only what is stored)", m.Seq, err)
	}
}

func testNotifyInCommitOrder(t *testing.T, open Opener) {
	ctx := context.Background()
	var mu sync.Mutex
	seen := map[string][]uint64{}
	s := open(t, func(handle string, m storage.Message) {
		mu.Lock()
		seen[handle] = append(seen[handle], m.Seq)
		mu.Unlock()
	})
	Register(t, s, "alice", 1)
	Register(t, s, "bob", 2)
	var wg sync.WaitGroup
	const senders, each = 8, 25
	for i := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			to := []string{"alice", "bob"}[i%2]
			for range each {
				if _, _, err := s.Append(ctx, Delivery(to, 10+i), storage.Limits{}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		total := len(seen["alice"]) + len(seen["bob"])
		mu.Unlock()
		if total == senders*each || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for handle, seqs := range seen {
		if len(seqs) != senders/2*each {
			t.Errorf("%s notified %d times, want %d", handle, len(seqs), senders/2*each)
		}
		for i := 1; i < len(seqs); i++ {
			if seqs[i] <= seqs[i-1] {
				t.Fatalf("%s notified out of order: %d after %d", handle, seqs[i], seqs[i-1])
			}
		}
	}
}

func testUnknownInbox(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	if _, _, err := s.Append(ctx, Delivery("ghost", 1), storage.Limits{}); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Append(ghost) = %v", err)
	}
	if _, _, err := s.Read(ctx, "ghost", 0, 10); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Read(ghost) = %v", err)
	}
	if _, err := s.Ack(ctx, "ghost", 10); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Ack(ghost) = %v", err)
	}
	if err := s.SetContact(ctx, "ghost", Primary(1), storage.Block); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("SetContact(ghost) = %v", err)
	}
	if _, err := s.Contacts(ctx, "ghost"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Contacts(ghost) = %v", err)
	}
}

func testClosed(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	Register(t, s, "alice", 1)
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping on open store: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(ctx); !errors.Is(err, storage.ErrClosed) {
		t.Errorf("Ping after close = %v", err)
	}
	if _, _, err := s.Append(ctx, Delivery("alice", 2), storage.Limits{}); !errors.Is(err, storage.ErrClosed) {
		t.Errorf("Append after close = %v", err)
	}
	if _, err := s.Lookup(ctx, "alice"); !errors.Is(err, storage.ErrClosed) {
		t.Errorf("Lookup after close = %v", err)
	}
	if err := s.SetContact(ctx, "alice", Primary(2), storage.Accept); !errors.Is(err, storage.ErrClosed) {
		t.Errorf("SetContact after close = %v", err)
	}
	if _, err := s.Contacts(ctx, "alice"); !errors.Is(err, storage.ErrClosed) {
		t.Errorf("Contacts after close = %v", err)
	}
	if _, err := s.Once(ctx, [32]byte{1}, time.Now().Add(time.Minute)); !errors.Is(err, storage.ErrClosed) {
		t.Errorf("Once after close = %v", err)
	}
	closedTrust(t, s)
}

// envelopeOf builds a compact JSON object of exactly size bytes.
func envelopeOf(i, size int) []byte {
	head := fmt.Sprintf(`{"i":%d,"x":"`, i)
	b := make([]byte, 0, size)
	b = append(b, head...)
	for len(b) < size-2 {
		b = append(b, byte('a'+(len(b)+i)%26))
	}
	return append(b, '"', '}')
}

// SPEC §2.5: envelopes of up to 256 KiB (the default max_envelope) are
// stored, read back in pages and notified byte for byte, with the
// received_at the send was answered with.
func testLargeEnvelopes(t *testing.T, open Opener) {
	ctx := context.Background()
	var mu sync.Mutex
	notified := map[uint64]storage.Message{}
	s := open(t, func(_ string, m storage.Message) {
		mu.Lock()
		notified[m.Seq] = m
		mu.Unlock()
	})
	Register(t, s, "alice", 1)
	const n, size = 6, 256 << 10
	sent := map[uint64]storage.Message{}
	for i := range n {
		env := envelopeOf(i, size)
		d := Delivery("alice", 2+i%2)
		d.Envelope, d.FromAddr = env, fmt.Sprintf("sender%d@example.net", i%2)
		m, fresh, err := s.Append(ctx, d, storage.Limits{})
		if err != nil || !fresh {
			t.Fatalf("append %d bytes: fresh=%v %v", len(env), fresh, err)
		}
		if m.From != d.From || m.FromAddr != d.FromAddr || !m.Request || string(m.Envelope) != string(env) {
			t.Fatalf("append returned %s %q request=%v", m.From, m.FromAddr, m.Request)
		}
		sent[m.Seq] = m
	}
	page, more, err := s.Read(ctx, "alice", 0, 100)
	if err != nil || more || len(page) != n {
		t.Fatalf("read %d messages, more=%v, %v", len(page), more, err)
	}
	same := func(what string, got, want storage.Message) {
		t.Helper()
		if string(got.Envelope) != string(want.Envelope) || got.ReceivedAt != want.ReceivedAt ||
			got.From != want.From || got.FromAddr != want.FromAddr || got.Request != want.Request {
			t.Fatalf("%s seq %d: %d bytes at %d, sent %d bytes at %d", what, got.Seq, len(got.Envelope), got.ReceivedAt, len(want.Envelope), want.ReceivedAt)
		}
	}
	for _, m := range page {
		same("read", m, sent[m.Seq])
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		done := len(notified) == n
		mu.Unlock()
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(notified) != n {
		t.Fatalf("%d of %d notified", len(notified), n)
	}
	for seq, m := range notified {
		same("notified", m, sent[seq])
	}
}

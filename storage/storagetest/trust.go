package storagetest

// The trust rules (SPEC §1, §2.9, §2.10, §5): the binding log appended with
// every registration, rotation and deletion, Rotate and Delete, the handle
// cooldown and the log key.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/kezchat/kez/internal/vectors"
	"github.com/kezchat/kez/storage"
)

func trustTests() map[string]func(*testing.T, Opener) {
	return map[string]func(*testing.T, Opener){
		"LogEmpty":                              testLogEmpty,
		"LogVectors":                            testLogVectors,
		"LogRegistrationRetryAddsNoLeaf":        testLogRetry,
		"Rotate":                                testRotate,
		"RotateMovesAcceptancesAndBlocks":       testRotateLists,
		"Delete":                                testDelete,
		"DeleteCooldownThenRegisterKeepsSeqs":   testDeleteCooldown,
		"LogKeyStable":                          testLogKey,
		"ConcurrentChangesLogWithoutGapsOrFork": testConcurrentLog,
	}
}

// HashReader reads s's log hashes for tlog.
func HashReader(s storage.Store) tlog.HashReader {
	return tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		return s.LogHashes(context.Background(), indexes)
	})
}

// registration is a test registration body for handle (any JSON: the
// store logs it as given).
func registration(handle string, i int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"payload":{"handle":%q,"primary":%q},"signature":{"alg":"ed25519","sig":"%02x"}}`, handle, Primary(i), i))
}

// rotation is a test rotation body.
func rotation(handle, old, new string) []byte {
	return fmt.Appendf(nil, `{"payload":{"handle":%q,"new":%q,"old":%q,"type":"kez.chat.rotate","v":2},"signatures":{"new":{"alg":"ed25519","sig":"01"},"old":{"alg":"ed25519","sig":"02"}}}`, handle, new, old)
}

// deletion is a test deletion body.
func deletion(handle, primary string) []byte {
	return fmt.Appendf(nil, `{"payload":{"handle":%q,"primary":%q,"type":"kez.chat.delete","v":2},"signature":{"alg":"ed25519","sig":"03"}}`, handle, primary)
}

func logSize(t testing.TB, s storage.Store) int64 {
	t.Helper()
	n, err := s.LogSize(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func entries(t testing.TB, s storage.Store, start int64, n int) []string {
	t.Helper()
	data, err := s.LogEntries(context.Background(), start, n)
	if err != nil {
		t.Fatalf("LogEntries(%d, %d): %v", start, n, err)
	}
	out := make([]string, len(data))
	for i, d := range data {
		out[i] = string(d)
	}
	return out
}

func registerRecord(t testing.TB, s storage.Store, handle string, i int) storage.Record {
	t.Helper()
	rec := storage.Record{Handle: handle, Primary: Primary(i), RegisteredAt: 1764115200, Registration: registration(handle, i)}
	got, created, err := s.Register(context.Background(), rec, "")
	if err != nil || !created {
		t.Fatalf("register %s: created=%v err=%v", handle, created, err)
	}
	return got
}

func testLogEmpty(t *testing.T, open Opener) {
	s := open(t, nil)
	if n := logSize(t, s); n != 0 {
		t.Fatalf("a new store's log has %d leaves", n)
	}
	root, err := tlog.TreeHash(0, HashReader(s))
	if want := vectors.LoadV2(t).Log.Roots["0"]; err != nil || root.String() != want {
		t.Fatalf("root of the empty log %v (%v), want %s", root, err, want)
	}
	if e := entries(t, s, 0, 10); len(e) != 0 {
		t.Fatalf("entries of the empty log: %q", e)
	}
}

// The vector log: alice and bob register, alice rotates.
func testLogVectors(t *testing.T, open Opener) {
	ctx := context.Background()
	v := vectors.LoadV2(t)
	s := open(t, nil)
	leaf := func(i int) string { return v.Log.Leaves[i].DataJCS }
	for i, who := range []string{"alice", "bob"} {
		rec, created, err := s.Register(ctx, storage.Record{Handle: who, Primary: v.Keys[who].Primary,
			RegisteredAt: 1764115200, Registration: json.RawMessage(leaf(i))}, "")
		if err != nil || !created || rec.LogIndex != int64(i) || string(rec.Registration) != leaf(i) {
			t.Fatalf("register %s: log index %d created=%v %v", who, rec.LogIndex, created, err)
		}
	}
	rec, err := s.Rotate(ctx, "alice", v.Rotation.Old, v.Rotation.New, []byte(leaf(2)))
	if err != nil {
		t.Fatal(err)
	}
	if rec.LogIndex != 2 || rec.Primary != v.Rotation.New || string(rec.Rotation) != leaf(2) ||
		string(rec.Registration) != leaf(0) || rec.RegisteredAt != 1764115200 || rec.Handle != "alice" {
		t.Fatalf("rotated record: %+v", rec)
	}
	if n := logSize(t, s); n != 3 {
		t.Fatalf("log size %d, want 3", n)
	}
	r := HashReader(s)
	for n := int64(0); n <= 3; n++ {
		root, err := tlog.TreeHash(n, r)
		if want := v.Log.Roots[fmt.Sprint(n)]; err != nil || root.String() != want {
			t.Fatalf("root at size %d: %v (%v), want %s", n, root, err, want)
		}
	}
	if got := entries(t, s, 0, 10); !slices.Equal(got, []string{leaf(0), leaf(1), leaf(2)}) {
		t.Fatalf("entries: %q", got)
	}
	if got := entries(t, s, 1, 1); !slices.Equal(got, []string{leaf(1)}) {
		t.Fatalf("entries(1, 1): %q", got)
	}
	if got := entries(t, s, 3, 5); len(got) != 0 {
		t.Fatalf("entries past the end: %q", got)
	}
	root3, _ := tlog.ParseHash(v.Log.Roots["3"])
	for _, inc := range v.Log.Inclusion {
		p, err := tlog.ProveRecord(inc.TreeSize, inc.Index, r)
		if err != nil || !slices.Equal(hashStrings(p), inc.Proof) {
			t.Fatalf("inclusion of %d in %d: %v (%v), want %v", inc.Index, inc.TreeSize, hashStrings(p), err, inc.Proof)
		}
		if err := tlog.CheckRecord(p, inc.TreeSize, root3, inc.Index, tlog.RecordHash([]byte(leaf(int(inc.Index))))); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range v.Log.Consistency {
		p, err := tlog.ProveTree(c.New, c.Old, r)
		if err != nil || !slices.Equal(hashStrings(p), c.Proof) {
			t.Fatalf("consistency %d→%d: %v (%v), want %v", c.Old, c.New, hashStrings(p), err, c.Proof)
		}
	}
	if got, err := s.Lookup(ctx, "alice"); err != nil || got.LogIndex != 2 || string(got.Rotation) != leaf(2) || got.Primary != v.Rotation.New {
		t.Fatalf("Lookup(alice) = %+v, %v", got, err)
	}
	if got, err := s.Lookup(ctx, "bob"); err != nil || got.LogIndex != 1 || got.Rotation != nil {
		t.Fatalf("Lookup(bob) = %+v, %v", got, err)
	}
}

func hashStrings(hs []tlog.Hash) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.String()
	}
	return out
}

// An idempotent retry, and every refused registration, adds no leaf.
func testLogRetry(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	alice := registerRecord(t, s, "alice", 1)
	if _, created, err := s.Register(ctx, storage.Record{Handle: "bob", Primary: Primary(2), Registration: registration("bob", 2)}, "inv"); err != nil || !created {
		t.Fatal(created, err)
	}
	again, created, err := s.Register(ctx, storage.Record{Handle: "alice", Primary: Primary(1), RegisteredAt: 99, Registration: registration("alice", 1)}, "")
	if err != nil || created || again.LogIndex != alice.LogIndex || string(again.Registration) != string(alice.Registration) {
		t.Fatalf("retry = %+v created=%v err=%v", again, created, err)
	}
	for _, try := range []struct {
		rec    storage.Record
		invite string
		want   error
	}{
		{storage.Record{Handle: "alice", Primary: Primary(3)}, "", storage.ErrHandleTaken},
		{storage.Record{Handle: "carol", Primary: Primary(1)}, "", storage.ErrPrimaryTaken},
		{storage.Record{Handle: "carol", Primary: Primary(3)}, "inv", storage.ErrInviteUsed},
	} {
		try.rec.Registration = registration(try.rec.Handle, 3)
		if _, _, err := s.Register(ctx, try.rec, try.invite); !errors.Is(err, try.want) {
			t.Fatalf("register %+v: %v, want %v", try.rec, err, try.want)
		}
	}
	if n := logSize(t, s); n != 2 {
		t.Fatalf("log size %d after two registrations, a retry and refusals", n)
	}
	if got := entries(t, s, 0, 10); !slices.Equal(got, []string{string(registration("alice", 1)), string(registration("bob", 2))}) {
		t.Fatalf("entries: %q", got)
	}
}

func testRotate(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	alice := registerRecord(t, s, "alice", 1)
	registerRecord(t, s, "bob", 2)
	seqs := Fill(t, s, "alice", 2, 0)
	size := logSize(t, s)
	for _, try := range []struct {
		handle   string
		old, new int
		want     error
	}{
		{"nobody", 1, 20, storage.ErrNotFound},
		{"alice", 3, 20, storage.ErrNotFound}, // not alice's key
		{"alice", 2, 20, storage.ErrNotFound}, // bob's key
		{"alice", 1, 2, storage.ErrPrimaryTaken},
		{"alice", 1, 1, storage.ErrPrimaryTaken},
	} {
		if _, err := s.Rotate(ctx, try.handle, Primary(try.old), Primary(try.new), rotation(try.handle, Primary(try.old), Primary(try.new))); !errors.Is(err, try.want) {
			t.Fatalf("Rotate(%s, %d→%d): %v, want %v", try.handle, try.old, try.new, err, try.want)
		}
	}
	if n := logSize(t, s); n != size {
		t.Fatalf("refused rotations appended: size %d, was %d", n, size)
	}
	rot := rotation("alice", Primary(1), Primary(20))
	rec, err := s.Rotate(ctx, "alice", Primary(1), Primary(20), rot)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Handle != "alice" || rec.Primary != Primary(20) || string(rec.Rotation) != string(rot) || rec.LogIndex != size ||
		string(rec.Registration) != string(alice.Registration) || rec.RegisteredAt != alice.RegisteredAt {
		t.Fatalf("rotated record %+v (log size was %d)", rec, size)
	}
	if n := logSize(t, s); n != size+1 {
		t.Fatalf("log size %d after a rotation, was %d", n, size)
	}
	if got := entries(t, s, size, 1); !slices.Equal(got, []string{string(rot)}) {
		t.Fatalf("rotation leaf: %q", got)
	}
	if got, err := s.Lookup(ctx, "alice"); err != nil || got.Primary != Primary(20) || string(got.Rotation) != string(rot) ||
		got.LogIndex != size || string(got.Registration) != string(alice.Registration) {
		t.Fatalf("Lookup(alice) = %+v, %v", got, err)
	}
	if _, err := s.LookupPrimary(ctx, Primary(1)); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("LookupPrimary(old) = %v", err)
	}
	if got, err := s.LookupPrimary(ctx, Primary(20)); err != nil || got.Handle != "alice" || got.LogIndex != size {
		t.Fatalf("LookupPrimary(new) = %+v, %v", got, err)
	}
	// The original registration is no longer a retry.
	if _, _, err := s.Register(ctx, storage.Record{Handle: "alice", Primary: Primary(1), Registration: alice.Registration}, ""); !errors.Is(err, storage.ErrHandleTaken) {
		t.Fatalf("alice's registration again after her rotation: %v", err)
	}
	// The inbox stays, with its contacts, and its seqs go on.
	msgs := readAll(t, s, "alice")
	if len(msgs) != 2 || msgs[0].Seq != seqs[0] || msgs[1].Seq != seqs[1] {
		t.Fatalf("alice's inbox after her rotation: %+v", msgs)
	}
	if c := contactsOf(t, s, "alice"); !sameList(c.Accepted, primaries(FillSender)) {
		t.Fatalf("alice's contacts after her rotation: %+v", c)
	}
	if m := send(t, s, Delivery("alice", FillSender), storage.Limits{}); m.Seq <= seqs[1] || m.Request {
		t.Fatalf("after the rotation: seq %d (last %d) request=%v", m.Seq, seqs[1], m.Request)
	}
	// A rotation again from the old key: not alice's key any more.
	if _, err := s.Rotate(ctx, "alice", Primary(1), Primary(21), rotation("alice", Primary(1), Primary(21))); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("rotation from the old key: %v", err)
	}
	rot2 := rotation("alice", Primary(20), Primary(21))
	rec2, err := s.Rotate(ctx, "alice", Primary(20), Primary(21), rot2)
	if err != nil || rec2.LogIndex != size+1 || string(rec2.Rotation) != string(rot2) || string(rec2.Registration) != string(alice.Registration) {
		t.Fatalf("second rotation: %+v, %v", rec2, err)
	}
}

// Acceptances and blocks of the old key, in every inbox, follow the
// rotation (SPEC §2.9); requests the old key left as a stranger stay its
// own.
func testRotateLists(t *testing.T, open Opener) {
	s := open(t, nil)
	for i, h := range []string{"alice", "bob", "carol", "dave", "erin", "frank"} {
		Register(t, s, h, i+1)
	}
	lim := storage.Limits{RequestLimit: 5}
	// alice writes to bob: she accepts him (her own list, unchanged).
	d := Delivery("bob", 1)
	d.SenderHandle, d.ToPrimary = "alice", Primary(2)
	send(t, s, d, lim)
	// bob writes to alice: he accepts her, implicitly.
	d = Delivery("alice", 2)
	d.SenderHandle, d.ToPrimary = "bob", Primary(1)
	send(t, s, d, lim)
	setContact(t, s, "carol", 1, storage.Block)
	send(t, s, Delivery("dave", 1), lim) // a request, alice a stranger to dave
	setContact(t, s, "erin", 1, storage.Accept)
	setContact(t, s, "erin", 20, storage.Block) // erin blocked the new key before
	setContact(t, s, "frank", 1, storage.Accept)
	if m := send(t, s, Delivery("frank", 20), lim); !m.Request { // the new key wrote to frank as a stranger
		t.Fatal("not a request")
	}

	if _, err := s.Rotate(context.Background(), "alice", Primary(1), Primary(20), rotation("alice", Primary(1), Primary(20))); err != nil {
		t.Fatal(err)
	}
	want := map[string]storage.Contacts{
		"alice": {Accepted: primaries(2), Blocked: nil},
		"bob":   {Accepted: primaries(20)},
		"carol": {Blocked: primaries(20)},
		"dave":  {},
		"erin":  {Blocked: primaries(20)}, // a block of either key wins
		"frank": {Accepted: primaries(20)},
	}
	for h, w := range want {
		if c := contactsOf(t, s, h); !sameList(c.Accepted, w.Accepted) || !sameList(c.Blocked, w.Blocked) {
			t.Fatalf("%s's contacts after alice's rotation: %+v, want %+v", h, c, w)
		}
	}
	if f := requestFlags(t, s, "frank")[Primary(20)]; !slices.Equal(f, []bool{false}) {
		t.Fatalf("the new key's request to frank, who accepted the old one: request flags %v", f)
	}
	if f := requestFlags(t, s, "dave")[Primary(1)]; !slices.Equal(f, []bool{true}) {
		t.Fatalf("the old key's request to dave: request flags %v", f)
	}
	if m := send(t, s, Delivery("bob", 20), lim); m.Request {
		t.Fatal("alice's new key is a stranger to bob")
	}
	refused(t, s, Delivery("carol", 20), lim, storage.ErrBlocked)
	refused(t, s, Delivery("erin", 20), lim, storage.ErrBlocked)

	// Again: the lists follow every rotation; a withdrawn acceptance does not.
	setContact(t, s, "frank", 20, storage.Unaccept)
	if _, err := s.Rotate(context.Background(), "alice", Primary(20), Primary(21), rotation("alice", Primary(20), Primary(21))); err != nil {
		t.Fatal(err)
	}
	want = map[string]storage.Contacts{
		"bob":   {Accepted: primaries(21)},
		"carol": {Blocked: primaries(21)},
		"erin":  {Blocked: primaries(21)},
		"frank": {},
	}
	for h, w := range want {
		if c := contactsOf(t, s, h); !sameList(c.Accepted, w.Accepted) || !sameList(c.Blocked, w.Blocked) {
			t.Fatalf("%s's contacts after alice's second rotation: %+v, want %+v", h, c, w)
		}
	}
}

func testDelete(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	registerRecord(t, s, "alice", 1)
	registerRecord(t, s, "bob", 2)
	Fill(t, s, "alice", 3, 0)
	setContact(t, s, "alice", 3, storage.Block)
	send(t, s, Delivery("alice", 4), storage.Limits{}) // a request
	setContact(t, s, "bob", 1, storage.Accept)
	size := logSize(t, s)
	later := time.Now().Add(time.Hour)
	for _, try := range []struct {
		handle string
		key    int
	}{{"alice", 2}, {"alice", 5}, {"nobody", 1}} {
		if _, err := s.Delete(ctx, try.handle, Primary(try.key), deletion(try.handle, Primary(try.key)), later); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("Delete(%s, %d): %v", try.handle, try.key, err)
		}
	}
	if n := logSize(t, s); n != size {
		t.Fatalf("refused deletions appended: size %d, was %d", n, size)
	}
	del := deletion("alice", Primary(1))
	index, err := s.Delete(ctx, "alice", Primary(1), del, later)
	if err != nil || index != size {
		t.Fatalf("Delete: index %d (size was %d), %v", index, size, err)
	}
	if n := logSize(t, s); n != size+1 {
		t.Fatalf("log size %d after a deletion, was %d", n, size)
	}
	if got := entries(t, s, index, 1); !slices.Equal(got, []string{string(del)}) {
		t.Fatalf("deletion leaf: %q", got)
	}
	gone := map[string]error{}
	_, gone["Lookup"] = s.Lookup(ctx, "alice")
	_, gone["LookupPrimary"] = s.LookupPrimary(ctx, Primary(1))
	_, _, gone["Read"] = s.Read(ctx, "alice", 0, 10)
	_, gone["Contacts"] = s.Contacts(ctx, "alice")
	_, _, gone["Append"] = s.Append(ctx, Delivery("alice", FillSender), storage.Limits{})
	gone["SetContact"] = s.SetContact(ctx, "alice", Primary(2), storage.Accept)
	_, gone["Ack"] = s.Ack(ctx, "alice", 100)
	_, gone["Rotate"] = s.Rotate(ctx, "alice", Primary(1), Primary(30), rotation("alice", Primary(1), Primary(30)))
	_, gone["Delete"] = s.Delete(ctx, "alice", Primary(1), del, later)
	for op, err := range gone {
		if !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("%s after the deletion: %v, want ErrNotFound", op, err)
		}
	}
	// Other inboxes' lists are their owners'.
	if c := contactsOf(t, s, "bob"); !sameList(c.Accepted, primaries(1)) {
		t.Fatalf("bob's contacts after alice's deletion: %+v", c)
	}
	for _, key := range []int{1, 5} {
		if _, _, err := s.Register(ctx, storage.Record{Handle: "alice", Primary: Primary(key), Registration: registration("alice", key)}, ""); !errors.Is(err, storage.ErrCoolingDown) {
			t.Fatalf("register alice (key %d) during the cooldown: %v", key, err)
		}
	}
	if n := logSize(t, s); n != size+1 {
		t.Fatalf("refused registrations appended: size %d", n)
	}
	if _, err := s.Lookup(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
}

// After the cooldown the handle is free again; its new inbox is empty,
// has no lists, forgets the old idempotency keys and never reuses a seq.
func testDeleteCooldown(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	registerRecord(t, s, "alice", 1)
	seqs := Fill(t, s, "alice", 3, 0)
	old := Delivery("alice", FillSender)
	first := send(t, s, old, storage.Limits{})
	if _, err := s.Ack(ctx, "alice", first.Seq); err != nil { // a key with no message left
		t.Fatal(err)
	}
	kept := Delivery("alice", FillSender)
	last := send(t, s, kept, storage.Limits{}).Seq
	// The cooldown is compared with the registration's RegisteredAt: the
	// server's clock.
	const deletedAt = 1764200000
	if _, err := s.Delete(ctx, "alice", Primary(1), deletion("alice", Primary(1)), time.Unix(deletedAt+3600, 0)); err != nil {
		t.Fatal(err)
	}
	rec := storage.Record{Handle: "alice", Primary: Primary(5), RegisteredAt: deletedAt + 3599, Registration: registration("alice", 5)}
	if _, _, err := s.Register(ctx, rec, ""); !errors.Is(err, storage.ErrCoolingDown) {
		t.Fatalf("register during the cooldown: %v", err)
	}
	size := logSize(t, s)
	rec.RegisteredAt = deletedAt + 3601
	got, created, err := s.Register(ctx, rec, "")
	if err != nil || !created || got.LogIndex != size {
		t.Fatalf("register after the cooldown: %+v created=%v %v (log size %d)", got, created, err, size)
	}
	if msgs := readAll(t, s, "alice"); len(msgs) != 0 {
		t.Fatalf("the new alice's inbox holds %d messages", len(msgs))
	}
	if c := contactsOf(t, s, "alice"); len(c.Accepted)+len(c.Blocked) != 0 {
		t.Fatalf("the new alice's contacts: %+v", c)
	}
	// The old inbox's idempotency keys are gone: the same envelopes are new
	// messages (requests: the fill sender was the old alice's contact).
	for _, d := range []storage.Delivery{old, kept} {
		m, fresh, err := s.Append(ctx, d, storage.Limits{})
		if err != nil || !fresh || m.Seq <= last || !m.Request {
			t.Fatalf("the old alice's envelope to the new one: seq %d (old last %d) fresh=%v request=%v %v", m.Seq, last, fresh, m.Request, err)
		}
		last = m.Seq
	}
	if _, created, err := s.Register(ctx, rec, ""); err != nil || created {
		t.Fatalf("retry of the new registration: created=%v %v", created, err)
	}
	// A cooldown already over: registrable at once, and seqs still go on.
	if _, err := s.Delete(ctx, "alice", Primary(5), deletion("alice", Primary(5)), time.Unix(1764115200-1, 0)); err != nil {
		t.Fatal(err)
	}
	registerRecord(t, s, "alice", 6)
	m := send(t, s, Delivery("alice", 7), storage.Limits{})
	if m.Seq <= last || m.Seq <= seqs[2] {
		t.Fatalf("seq %d after two deletions, last was %d", m.Seq, last)
	}
}

func testLogKey(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	const name = "kez.example/kez-log"
	k1, err := s.LogKey(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := note.NewSigner(k1)
	if err != nil || signer.Name() != name {
		t.Fatalf("log key %q: %v", k1, err)
	}
	if _, err := s.LogKey(ctx, "other.example/kez-log"); err == nil {
		t.Fatal("the log key under another name")
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if k, err := s.LogKey(ctx, name); err != nil || k != k1 {
				t.Errorf("log key again: %v (same: %v)", err, k == k1)
			}
		})
	}
	wg.Wait()
}

// Registrations and rotations from many goroutines number their leaves 0..n-1
// without a gap, each record pointing at its own leaf, and every checkpoint
// taken meanwhile is consistent with the final tree.
func testConcurrentLog(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, nil)
	const workers, each = 6, 4
	type cp struct {
		size int64
		root tlog.Hash
	}
	var (
		mu     sync.Mutex
		cps    []cp
		stop   = make(chan struct{})
		seen   sync.WaitGroup
		writes sync.WaitGroup
	)
	for range 2 {
		seen.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				n, err := s.LogSize(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				root, err := tlog.TreeHash(n, HashReader(s))
				if err != nil {
					t.Errorf("checkpoint at %d: %v", n, err)
					return
				}
				mu.Lock()
				cps = append(cps, cp{n, root})
				mu.Unlock()
				time.Sleep(time.Millisecond)
			}
		})
	}
	for w := range workers {
		writes.Go(func() {
			for i := range each {
				k := 100 + w*each + i
				h := fmt.Sprintf("w%dr%d", w, i)
				rec := storage.Record{Handle: h, Primary: Primary(k), RegisteredAt: 1764115200, Registration: registration(h, k)}
				if _, created, err := s.Register(ctx, rec, ""); err != nil || !created {
					t.Errorf("register %s: %v", h, err)
					return
				}
				if i%2 == 1 {
					if _, err := s.Rotate(ctx, h, Primary(k), Primary(k+1000), rotation(h, Primary(k), Primary(k+1000))); err != nil {
						t.Errorf("rotate %s: %v", h, err)
					}
				}
			}
		})
	}
	writes.Wait()
	close(stop)
	seen.Wait()
	total := int64(workers * each * 3 / 2)
	if n := logSize(t, s); n != total {
		t.Fatalf("log size %d after %d changes", n, total)
	}
	data := entries(t, s, 0, int(total)+10)
	if int64(len(data)) != total {
		t.Fatalf("%d entries for size %d", len(data), total)
	}
	at := map[string]int64{}
	for i, d := range data {
		if _, dup := at[d]; dup || d == "" {
			t.Fatalf("leaf %d %q is empty or logged twice", i, d)
		}
		at[d] = int64(i)
	}
	for w := range workers {
		for i := range each {
			rec, err := s.Lookup(ctx, fmt.Sprintf("w%dr%d", w, i))
			if err != nil {
				t.Fatal(err)
			}
			made := rec.Registration
			if rec.Rotation != nil {
				made = rec.Rotation
			}
			if idx, ok := at[string(made)]; !ok || idx != rec.LogIndex {
				t.Fatalf("%s: log index %d, its leaf is at %d (logged: %v)", rec.Handle, rec.LogIndex, idx, ok)
			}
			if reg := at[string(rec.Registration)]; reg > rec.LogIndex {
				t.Fatalf("%s: registration at %d after its binding's leaf %d", rec.Handle, reg, rec.LogIndex)
			}
		}
	}
	// The stored hashes are the tree of these entries.
	var own []tlog.Hash
	r := tlog.HashReaderFunc(func(ix []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(ix))
		for i, x := range ix {
			out[i] = own[x]
		}
		return out, nil
	})
	for i, d := range data {
		hs, err := tlog.StoredHashes(int64(i), []byte(d), r)
		if err != nil {
			t.Fatal(err)
		}
		own = append(own, hs...)
	}
	want, _ := tlog.TreeHash(total, r)
	final, err := tlog.TreeHash(total, HashReader(s))
	if err != nil || final != want {
		t.Fatalf("final root %v (%v), recomputed from the entries %v", final, err, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(cps) == 0 {
		t.Fatal("no checkpoint taken")
	}
	for _, c := range cps {
		if c.size == 0 {
			continue
		}
		p, err := tlog.ProveTree(total, c.size, HashReader(s))
		if err == nil {
			err = tlog.CheckTree(p, total, final, c.size, c.root)
		}
		if err != nil {
			t.Fatalf("checkpoint at %d (root %v) and the final tree of %d: %v", c.size, c.root, total, err)
		}
	}
	t.Logf("%d checkpoints, sizes %d..%d, all consistent with the final tree", len(cps), cps[0].size, cps[len(cps)-1].size)
}

// closedTrust checks that the trust methods of a closed store (which had
// alice registered with Primary(1)) answer ErrClosed.
func closedTrust(t *testing.T, s storage.Store) {
	ctx := context.Background()
	errs := map[string]error{}
	_, errs["Rotate"] = s.Rotate(ctx, "alice", Primary(1), Primary(2), rotation("alice", Primary(1), Primary(2)))
	_, errs["Delete"] = s.Delete(ctx, "alice", Primary(1), deletion("alice", Primary(1)), time.Now())
	_, errs["LogSize"] = s.LogSize(ctx)
	_, errs["LogHashes"] = s.LogHashes(ctx, []int64{0})
	_, errs["LogEntries"] = s.LogEntries(ctx, 0, 1)
	_, errs["LogKey"] = s.LogKey(ctx, "kez.example/kez-log")
	_, _, errs["Register"] = s.Register(ctx, storage.Record{Handle: "bob", Primary: Primary(2), Registration: registration("bob", 2)}, "")
	for op, err := range errs {
		if !errors.Is(err, storage.ErrClosed) {
			t.Errorf("%s after close = %v", op, err)
		}
	}
}

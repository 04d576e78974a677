package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsio "github.com/nats-io/nats.go"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/kezchat/kez/internal/vectors"
	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/nats/natstest"
	"github.com/kezchat/kez/storage/storagetest"
)

func loadLogVectors(t *testing.T) *vectors.V2 { return vectors.LoadV2(t) }

// reader is a store's log as a tlog.HashReader.
func reader(ctx context.Context, s storage.Store) tlog.HashReader {
	return tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) { return s.LogHashes(ctx, idx) })
}

func b64s(hs []tlog.Hash) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.String()
	}
	return out
}

func logSize(t *testing.T, s storage.Store) int64 {
	t.Helper()
	n, err := s.LogSize(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The log of alice's and bob's registrations and alice's rotation, made
// through the store, is the vectors' log: leaf hashes, roots at every
// size, inclusion and consistency proofs, entries. Alice's record after
// the rotation; the deletion vector appended as leaf 3.
func TestLogVectors(t *testing.T) {
	v := loadLogVectors(t)
	c := natstest.Run(t)
	ctx := context.Background()
	s := open(t, Options{URLs: c.URLs(), Prefix: "vec"})
	if n := logSize(t, s); n != 0 {
		t.Fatalf("a new log has size %d", n)
	}
	if root, err := tlog.TreeHash(0, reader(ctx, s)); err != nil || root.String() != v.Log.Roots["0"] {
		t.Fatalf("empty root %v %v", root, err)
	}
	alice, aliceNew, bob := v.Keys["alice"].Primary, v.Keys["alice_new"].Primary, v.Keys["bob"].Primary
	for i, r := range []struct{ handle, primary string }{{"alice", alice}, {"bob", bob}} {
		rec, created, err := s.Register(ctx, storage.Record{Handle: r.handle, Primary: r.primary, RegisteredAt: 1764115200,
			Registration: json.RawMessage(v.Log.Leaves[i].DataJCS)}, "")
		if err != nil || !created || rec.LogIndex != int64(i) {
			t.Fatalf("register %s: %+v %v %v", r.handle, rec, created, err)
		}
	}
	// An idempotent retry appends nothing.
	if rec, created, err := s.Register(ctx, storage.Record{Handle: "bob", Primary: bob, RegisteredAt: 1764115999,
		Registration: json.RawMessage(v.Log.Leaves[1].DataJCS)}, ""); err != nil || created || rec.LogIndex != 1 || rec.RegisteredAt != 1764115200 {
		t.Fatalf("retry: %+v %v %v", rec, created, err)
	}
	rec, err := s.Rotate(ctx, "alice", alice, aliceNew, []byte(v.Rotation.LeafDataJCS))
	if err != nil || rec.LogIndex != 2 || rec.Primary != aliceNew || string(rec.Rotation) != v.Rotation.LeafDataJCS ||
		string(rec.Registration) != v.Log.Leaves[0].DataJCS || rec.RegisteredAt != 1764115200 {
		t.Fatalf("rotate: %+v %v", rec, err)
	}
	if v.Rotation.LeafDataJCS != v.Log.Leaves[2].DataJCS {
		t.Fatal("vectors: rotation leaf")
	}
	if n := logSize(t, s); n != 3 {
		t.Fatalf("size %d", n)
	}
	checkVectorLog(t, s, v)
	// A second store (another server, cold caches) reads the same.
	s2 := open(t, Options{URLs: c.URLs(), Prefix: "vec"})
	checkVectorLog(t, s2, v)
	for _, st := range []storage.Store{s, s2} {
		got, err := st.Lookup(ctx, "alice")
		if err != nil || got.Primary != aliceNew || got.LogIndex != 2 || string(got.Rotation) != v.Rotation.LeafDataJCS ||
			string(got.Registration) != v.Log.Leaves[0].DataJCS {
			t.Fatalf("lookup after rotation: %+v %v", got, err)
		}
		if got, err := st.LookupPrimary(ctx, aliceNew); err != nil || got.Handle != "alice" || got.LogIndex != 2 {
			t.Fatalf("by new primary: %+v %v", got, err)
		}
		if _, err := st.LookupPrimary(ctx, alice); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("by old primary: %v", err)
		}
		if got, err := st.Lookup(ctx, "bob"); err != nil || got.LogIndex != 1 || got.Rotation != nil {
			t.Fatalf("bob: %+v %v", got, err)
		}
	}
	n, err := s2.Delete(ctx, "alice", aliceNew, []byte(v.Deletion.LeafDataJCS), time.Now().Add(time.Hour))
	if err != nil || n != 3 {
		t.Fatalf("delete: %d %v", n, err)
	}
	hs, err := s.LogHashes(ctx, []int64{tlog.StoredHashIndex(0, 3)})
	if err != nil || hs[0].String() != v.Deletion.LeafHash {
		t.Fatalf("deletion leaf hash %v %v", hs, err)
	}
	if _, err := s.Lookup(ctx, "alice"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("lookup after deletion: %v", err)
	}
}

func checkVectorLog(t *testing.T, s storage.Store, v *vectors.V2) {
	t.Helper()
	ctx := context.Background()
	entries, err := s.LogEntries(ctx, 0, 10)
	if err != nil || len(entries) != 3 {
		t.Fatalf("entries: %d %v", len(entries), err)
	}
	for i, l := range v.Log.Leaves {
		if string(entries[i]) != l.DataJCS {
			t.Errorf("entry %d = %s", i, entries[i])
		}
		hs, err := s.LogHashes(ctx, []int64{tlog.StoredHashIndex(0, l.Index)})
		if err != nil || hs[0].String() != l.LeafHash {
			t.Errorf("leaf hash %d = %v %v", i, hs, err)
		}
	}
	if e, err := s.LogEntries(ctx, 1, 1); err != nil || len(e) != 1 || string(e[0]) != v.Log.Leaves[1].DataJCS {
		t.Errorf("entries(1,1) = %q %v", e, err)
	}
	if e, err := s.LogEntries(ctx, 3, 5); err != nil || len(e) != 0 {
		t.Errorf("entries past the end = %q %v", e, err)
	}
	for size, want := range v.Log.Roots {
		n, _ := strconv.ParseInt(size, 10, 64)
		if root, err := tlog.TreeHash(n, reader(ctx, s)); err != nil || root.String() != want {
			t.Errorf("root at %d = %v %v, want %s", n, root, err, want)
		}
	}
	for _, in := range v.Log.Inclusion {
		p, err := tlog.ProveRecord(in.TreeSize, in.Index, reader(ctx, s))
		if err != nil || !slices.Equal(b64s(p), in.Proof) {
			t.Errorf("inclusion of %d in %d = %v %v", in.Index, in.TreeSize, b64s(p), err)
		}
	}
	for _, co := range v.Log.Consistency {
		p, err := tlog.ProveTree(co.New, co.Old, reader(ctx, s))
		if err != nil || !slices.Equal(b64s(p), co.Proof) {
			t.Errorf("consistency %d→%d = %v %v", co.Old, co.New, b64s(p), err)
		}
	}
}

// record builds a registration whose leaf names the handle and the primary.
func record(handle string, i int) storage.Record {
	return storage.Record{Handle: handle, Primary: storagetest.Primary(i), RegisteredAt: 1764115200 + int64(i),
		Registration: fmt.Appendf(nil, `{"payload":{"handle":%q,"primary":%q},"signature":{"alg":"ed25519","sig":"00"}}`, handle, storagetest.Primary(i))}
}

func rotation(handle, old, new string) []byte {
	return fmt.Appendf(nil, `{"payload":{"handle":%q,"new":%q,"old":%q,"type":"kez.chat.rotate"}}`, handle, new, old)
}

type checkpoint struct {
	size int64
	root tlog.Hash
}

// Two servers on a 3-node cluster (R3) register and rotate at once, while
// a third takes checkpoints: one log, no gap, no fork. Every checkpoint
// seen is consistent with the final tree; every record's leaf is its
// registration or rotation, included in the final tree; the entries are
// exactly the changes made, each once.
func TestLogConcurrentServers(t *testing.T) {
	c := natstest.RunCluster(t, 3)
	ctx := context.Background()
	s1, s2 := pair(t, c, "conc", Options{}, nil, nil)
	s3 := open(t, Options{URLs: []string{c.URL(2)}, Prefix: "conc", Replicas: 3})
	const perServer, workers = 24, 4
	stop := make(chan struct{})
	var cps []checkpoint
	var wgc sync.WaitGroup
	wgc.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, err := s3.LogSize(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			root, err := tlog.TreeHash(n, reader(ctx, s3))
			if err != nil {
				t.Error(err)
				return
			}
			cps = append(cps, checkpoint{n, root})
			time.Sleep(2 * time.Millisecond)
		}
	})
	want := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for si, s := range []*Store{s1, s2} {
		for w := range workers {
			wg.Go(func() {
				for k := w; k < perServer; k += workers {
					i := 1 + si*1000 + k
					h := fmt.Sprintf("u%d_%d", si, k)
					rec := record(h, i)
					got, created, err := s.Register(ctx, rec, "")
					if err != nil || !created {
						t.Errorf("register %s: %v %v", h, created, err)
						return
					}
					mu.Lock()
					want[string(rec.Registration)] = true
					mu.Unlock()
					if got.LogIndex < 0 {
						t.Errorf("index %d", got.LogIndex)
					}
					if k%3 == 0 { // rotate a third of them, through the other server
						other := []*Store{s2, s1}[si]
						rot := rotation(h, rec.Primary, storagetest.Primary(i+500))
						if _, err := other.Rotate(ctx, h, rec.Primary, storagetest.Primary(i+500), rot); err != nil {
							t.Errorf("rotate %s: %v", h, err)
							return
						}
						mu.Lock()
						want[string(rot)] = true
						mu.Unlock()
					}
				}
			})
		}
	}
	wg.Wait()
	close(stop)
	wgc.Wait()
	if t.Failed() {
		return
	}
	size := logSize(t, s1)
	if size != int64(len(want)) {
		t.Fatalf("log size %d, %d changes made", size, len(want))
	}
	root, err := tlog.TreeHash(size, reader(ctx, s2))
	if err != nil {
		t.Fatal(err)
	}
	entries, err := s3.LogEntries(ctx, 0, int(size))
	if err != nil || int64(len(entries)) != size {
		t.Fatalf("entries: %d %v", len(entries), err)
	}
	seen := map[string]bool{}
	for i, e := range entries {
		if !want[string(e)] || seen[string(e)] {
			t.Fatalf("entry %d %s: unknown or twice", i, e)
		}
		seen[string(e)] = true
	}
	sizes := map[int64]tlog.Hash{}
	for _, cp := range cps {
		if prev, ok := sizes[cp.size]; ok && prev != cp.root {
			t.Fatalf("two roots at size %d", cp.size)
		}
		sizes[cp.size] = cp.root
		if cp.size == 0 {
			continue
		}
		p, err := tlog.ProveTree(size, cp.size, reader(ctx, s1))
		if err != nil {
			t.Fatal(err)
		}
		if err := tlog.CheckTree(p, size, root, cp.size, cp.root); err != nil {
			t.Fatalf("checkpoint at %d inconsistent with the final tree: %v", cp.size, err)
		}
	}
	t.Logf("%d checkpoints at %d sizes, final size %d", len(cps), len(sizes), size)
	// Every record's leaf is its latest change, included in the final tree.
	for si := range 2 {
		for k := range perServer {
			h := fmt.Sprintf("u%d_%d", si, k)
			rec, err := s2.Lookup(ctx, h)
			if err != nil {
				t.Fatal(err)
			}
			leaf := rec.Registration
			if rec.Rotation != nil {
				leaf = rec.Rotation
			}
			if string(entries[rec.LogIndex]) != string(leaf) {
				t.Fatalf("%s: leaf %d is %s", h, rec.LogIndex, entries[rec.LogIndex])
			}
			p, err := tlog.ProveRecord(size, rec.LogIndex, reader(ctx, s1))
			if err != nil {
				t.Fatal(err)
			}
			if err := tlog.CheckRecord(p, size, root, rec.LogIndex, tlog.RecordHash(leaf)); err != nil {
				t.Fatalf("%s: %v", h, err)
			}
		}
	}
}

// Rotation moves the binding, the acceptances and the blocks; deletion
// ends it, purges the inbox and the lists, and holds the handle until its
// cooldown ends; the log has each change.
func TestRotateDeleteCooldown(t *testing.T) {
	c := natstest.Run(t)
	ctx := context.Background()
	s1, s2 := pair(t, c, "rot", Options{}, nil, nil)
	alice := storagetest.Register(t, s1, "alice", 1)
	storagetest.Register(t, s1, "bob", 2)
	storagetest.Register(t, s1, "carol", 3)
	if err := s1.SetContact(ctx, "bob", alice.Primary, storage.Accept); err != nil {
		t.Fatal(err)
	}
	if err := s2.SetContact(ctx, "carol", alice.Primary, storage.Block); err != nil {
		t.Fatal(err)
	}
	// Something in alice's inbox, to check that it stays.
	if _, _, err := s1.Append(ctx, storagetest.Delivery("alice", 2), storage.Limits{}); err != nil {
		t.Fatal(err)
	}
	newKey := storagetest.Primary(4)
	if _, err := s1.Rotate(ctx, "alice", storagetest.Primary(9), newKey, rotation("alice", storagetest.Primary(9), newKey)); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("rotate from a key alice does not have: %v", err)
	}
	if _, err := s1.Rotate(ctx, "alice", alice.Primary, storagetest.Primary(2), rotation("alice", alice.Primary, storagetest.Primary(2))); !errors.Is(err, storage.ErrPrimaryTaken) {
		t.Fatalf("rotate to bob's key: %v", err)
	}
	if _, err := s1.Rotate(ctx, "nobody", alice.Primary, newKey, nil); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("rotate an unknown handle: %v", err)
	}
	if n := logSize(t, s1); n != 3 {
		t.Fatalf("refused rotations appended: size %d", n)
	}
	rot := rotation("alice", alice.Primary, newKey)
	rec, err := s2.Rotate(ctx, "alice", alice.Primary, newKey, rot)
	if err != nil || rec.LogIndex != 3 || rec.Primary != newKey {
		t.Fatalf("rotate: %+v %v", rec, err)
	}
	if _, err := s2.Rotate(ctx, "alice", alice.Primary, newKey, rot); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the same rotation again: %v", err)
	}
	for _, s := range []*Store{s1, s2} {
		if got, err := s.Lookup(ctx, "alice"); err != nil || got.Primary != newKey || got.LogIndex != 3 || string(got.Rotation) != string(rot) {
			t.Fatalf("lookup: %+v %v", got, err)
		}
		if _, err := s.LookupPrimary(ctx, alice.Primary); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("old primary: %v", err)
		}
		if got, err := s.Contacts(ctx, "bob"); err != nil || !slices.Equal(got.Accepted, []string{newKey}) || len(got.Blocked) != 0 {
			t.Fatalf("bob's lists: %+v %v", got, err)
		}
		if got, err := s.Contacts(ctx, "carol"); err != nil || !slices.Equal(got.Blocked, []string{newKey}) || len(got.Accepted) != 0 {
			t.Fatalf("carol's lists: %+v %v", got, err)
		}
	}
	// bob's acceptance works for the new key (a message, not a request);
	// carol's block too.
	if m, _, err := s1.Append(ctx, storage.Delivery{To: "bob", From: newKey, Sig: storagetest.Sig(), Envelope: []byte(`{}`)}, storage.Limits{}); err != nil || m.Request {
		t.Fatalf("to bob from the new key: %+v %v", m, err)
	}
	if _, _, err := s2.Append(ctx, storage.Delivery{To: "carol", From: newKey, Sig: storagetest.Sig(), Envelope: []byte(`{}`)}, storage.Limits{}); !errors.Is(err, storage.ErrBlocked) {
		t.Fatalf("to carol from the new key: %v", err)
	}
	// The inbox stayed.
	if msgs, _, err := s2.Read(ctx, "alice", 0, 10); err != nil || len(msgs) != 1 {
		t.Fatalf("alice's inbox after rotation: %d %v", len(msgs), err)
	}
	if _, _, err := s1.Register(ctx, record("dave", 4), ""); !errors.Is(err, storage.ErrPrimaryTaken) {
		t.Fatalf("register alice's new key: %v", err)
	}

	// Deletion.
	if err := s1.SetContact(ctx, "alice", storagetest.Primary(2), storage.Accept); err != nil {
		t.Fatal(err)
	}
	if _, err := s1.Delete(ctx, "alice", alice.Primary, []byte(`{"d":0}`), time.Now()); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("delete with the old key: %v", err)
	}
	// The cooldown ends a second after the registered_at of the
	// registration to come (the server's clock).
	again := record("alice", 5)
	cooldown := time.Unix(again.RegisteredAt+1, 0)
	n, err := s1.Delete(ctx, "alice", newKey, []byte(`{"d":1}`), cooldown)
	if err != nil || n != 4 {
		t.Fatalf("delete: %d %v", n, err)
	}
	if _, err := s1.Delete(ctx, "alice", newKey, []byte(`{"d":1}`), cooldown); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("delete again: %v", err)
	}
	// The server that deleted sees it at once; the other once its record
	// cache hears of it (reccache.go: the watch's lag, at most its TTL).
	if _, err := s1.Lookup(ctx, "alice"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("lookup after deletion: %v", err)
	}
	if _, err := s1.LookupPrimary(ctx, newKey); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("primary after deletion: %v", err)
	}
	waitFor(t, 2*time.Second, "the other server's lookups to see the deletion", func() bool {
		_, errHandle := s2.Lookup(ctx, "alice")
		_, errPrimary := s2.LookupPrimary(ctx, newKey)
		return errors.Is(errHandle, storage.ErrNotFound) && errors.Is(errPrimary, storage.ErrNotFound)
	})
	waitFor(t, 2*time.Second, "the other server to learn of the deletion", func() bool {
		_, _, err := s2.Append(ctx, storagetest.Delivery("alice", 2), storage.Limits{})
		return errors.Is(err, storage.ErrNotFound)
	})
	if _, _, err := s2.Register(ctx, again, ""); !errors.Is(err, storage.ErrCoolingDown) {
		t.Fatalf("register during the cooldown: %v", err)
	}
	again.RegisteredAt++ // when the cooldown ends: registrable

	if n := logSize(t, s1); n != 5 {
		t.Fatalf("size %d after the deletion", n)
	}
	// The deleted key is free again, like the handle.
	rec, created, err := s2.Register(ctx, again, "")
	if err != nil || !created || rec.LogIndex != 5 {
		t.Fatalf("register after the cooldown: %+v %v %v", rec, created, err)
	}
	if rec, created, err := s1.Register(ctx, storage.Record{Handle: "erin", Primary: newKey, Registration: []byte(`{"e":1}`)}, ""); err != nil || !created || rec.LogIndex != 6 {
		t.Fatalf("register the deleted key: %+v %v %v", rec, created, err)
	}
	for _, s := range []*Store{s1, s2} {
		if msgs, _, err := s.Read(ctx, "alice", 0, 10); err != nil || len(msgs) != 0 {
			t.Fatalf("the new alice's inbox: %d %v", len(msgs), err)
		}
		if got, err := s.Contacts(ctx, "alice"); err != nil || len(got.Accepted)+len(got.Blocked) != 0 {
			t.Fatalf("the new alice's lists: %+v %v", got, err)
		}
		if got, err := s.Lookup(ctx, "alice"); err != nil || got.Primary != storagetest.Primary(5) || got.Rotation != nil {
			t.Fatalf("the new alice: %+v %v", got, err)
		}
	}
	entries, err := s2.LogEntries(ctx, 0, 100)
	if err != nil || len(entries) != 7 || string(entries[3]) != string(rot) || string(entries[4]) != `{"d":1}` || string(entries[6]) != `{"e":1}` {
		t.Fatalf("entries %q %v", entries, err)
	}
	// No job is left.
	if err := s1.runJobs(ctx); err != nil {
		t.Fatal(err)
	}
	if msgs, _, err := s1.directBatch(ctx, s1.regName, fmt.Appendf(nil, `{"seq":1,"next_by_subj":%q,"batch":10}`, s1.regSubj+jobPrefix+">")); err != nil || len(msgs) != 0 {
		t.Fatalf("jobs left: %d %v", len(msgs), err)
	}
}

// A job left by a server that stopped after the atomic step (a rotation
// whose contact lists were not moved yet) is done by another server.
func TestLeftJobIsDone(t *testing.T) {
	c := natstest.Run(t)
	ctx := context.Background()
	s1 := open(t, Options{URLs: c.URLs(), Prefix: "job"})
	alice := storagetest.Register(t, s1, "alice", 1)
	storagetest.Register(t, s1, "bob", 2)
	if err := s1.SetContact(ctx, "bob", alice.Primary, storage.Accept); err != nil {
		t.Fatal(err)
	}
	// The rotation's batch, as Rotate writes it, without running its job.
	newKey := storagetest.Primary(4)
	h, err := s1.leaderKey(ctx, handleKey("alice"))
	if err != nil {
		t.Fatal(err)
	}
	job := jobDoc{Op: "rotate", Handle: "alice", Old: alice.Primary, New: newKey}
	n, _, err := s1.appendLog(ctx, rotation("alice", alice.Primary, newKey), func(n int64) ([]*natsio.Msg, error) {
		r := alice
		r.Primary, r.LogIndex = newKey, n
		raw, _ := encodeRecord(r, 0)
		jm, _ := s1.jobMsg(n, job)
		return []*natsio.Msg{s1.put(handleKey("alice"), raw, h.seq), s1.tombstone(primaryKey(alice.Primary)), s1.claim(primaryKey(newKey), []byte("alice")), jm}, nil
	})
	if err != nil || n != 2 {
		t.Fatalf("append: %d %v", n, err)
	}
	_ = s1.Close()
	s2 := open(t, Options{URLs: c.URLs(), Prefix: "job"})
	waitFor(t, 5*time.Second, "the job to be done", func() bool {
		got, err := s2.Contacts(ctx, "bob")
		return err == nil && slices.Equal(got.Accepted, []string{newKey})
	})
}

// The log's signer key is made once and shared by every server, across
// restarts; asked under another name, it is an error.
func TestLogKeyShared(t *testing.T) {
	c := natstest.RunCluster(t, 3)
	ctx := context.Background()
	s1, s2 := pair(t, c, "key", Options{}, nil, nil)
	var k1, k2 string
	var e1, e2 error
	var wg sync.WaitGroup
	wg.Go(func() { k1, e1 = s1.LogKey(ctx, "kez.example/kez-log") })
	wg.Go(func() { k2, e2 = s2.LogKey(ctx, "kez.example/kez-log") })
	wg.Wait()
	if e1 != nil || e2 != nil || k1 != k2 {
		t.Fatalf("keys differ: %v %v", e1, e2)
	}
	signer, err := note.NewSigner(k1)
	if err != nil || signer.Name() != "kez.example/kez-log" {
		t.Fatalf("signer %v", err)
	}
	if _, err := s2.LogKey(ctx, "other.example/kez-log"); err == nil {
		t.Fatal("the log key under another name")
	}
	_ = s1.Close()
	_ = s2.Close()
	s3 := open(t, Options{URLs: []string{c.URL(2)}, Prefix: "key", Replicas: 3})
	if k3, err := s3.LogKey(ctx, "kez.example/kez-log"); err != nil || k3 != k1 {
		t.Fatalf("after reopening: %v", err)
	}
}

// A restart of NATS and of the server keeps the log: the same size and
// root, and the next append is consistent with them.
func TestLogRestart(t *testing.T) {
	c := natstest.Run(t)
	ctx := context.Background()
	opts := Options{URLs: c.URLs(), Prefix: "lrestart"}
	s := open(t, opts)
	for i := range 5 {
		storagetest.Register(t, s, fmt.Sprintf("u%d", i), i)
	}
	if _, err := s.Rotate(ctx, "u1", storagetest.Primary(1), storagetest.Primary(11), rotation("u1", storagetest.Primary(1), storagetest.Primary(11))); err != nil {
		t.Fatal(err)
	}
	key, err := s.LogKey(ctx, "x/kez-log")
	if err != nil {
		t.Fatal(err)
	}
	root, err := tlog.TreeHash(6, reader(ctx, s))
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	c.Restart(t, 0)
	s = open(t, opts)
	if n := logSize(t, s); n != 6 {
		t.Fatalf("size %d after restart", n)
	}
	if got, err := tlog.TreeHash(6, reader(ctx, s)); err != nil || got != root {
		t.Fatalf("root after restart %v %v", got, err)
	}
	if k, err := s.LogKey(ctx, "x/kez-log"); err != nil || k != key {
		t.Fatalf("key after restart: %v", err)
	}
	if rec, err := s.Lookup(ctx, "u1"); err != nil || rec.LogIndex != 5 || rec.Primary != storagetest.Primary(11) {
		t.Fatalf("u1 after restart: %+v %v", rec, err)
	}
	rec := storagetest.Register(t, s, "u9", 9)
	if rec.LogIndex != 6 {
		t.Fatalf("next index %d", rec.LogIndex)
	}
	newRoot, err := tlog.TreeHash(7, reader(ctx, s))
	if err != nil {
		t.Fatal(err)
	}
	p, err := tlog.ProveTree(7, 6, reader(ctx, s))
	if err != nil || tlog.CheckTree(p, 7, newRoot, 6, root) != nil {
		t.Fatalf("consistency across the restart: %v", err)
	}
}

// Registrations stored before the log (records without log_index) get
// their leaves on first use, once, in order of registered_at then
// handle, even with two servers starting at once; later registrations
// follow them.
func TestLegacyRegistrations(t *testing.T) {
	c := natstest.Run(t)
	ctx := context.Background()
	// The streams as a server makes them; then the registry as a server
	// without the log left it: records and primary keys only.
	s0 := open(t, Options{URLs: c.URLs(), Prefix: "legacy"})
	if _, err := s0.LogSize(ctx); err != nil {
		t.Fatal(err)
	}
	_ = s0.Close()
	nc, err := natsio.Connect(c.URL(0))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	reg := "$KV.legacy_registry."
	var resp map[string]any
	if m, err := nc.Request("$JS.API.STREAM.PURGE.KV_legacy_registry", nil, 5*time.Second); err != nil || json.Unmarshal(m.Data, &resp) != nil || resp["success"] != true {
		t.Fatalf("purge: %v %s", err, m.Data)
	}
	type old struct {
		Handle       string          `json:"handle"`
		Primary      string          `json:"primary"`
		RegisteredAt int64           `json:"registered_at"`
		Registration json.RawMessage `json:"registration"`
	}
	legacy := []old{ // stored out of order
		{"zed", storagetest.Primary(1), 100, json.RawMessage(`{"payload":{"handle":"zed"},"signature":{"sig":"01"}}`)},
		{"amy", storagetest.Primary(2), 300, json.RawMessage(`{"payload":{"handle":"amy"},"signature":{"sig":"02"}}`)},
		{"bea", storagetest.Primary(3), 100, json.RawMessage(`{"payload":{"handle":"bea"},"signature":{"sig":"03"}}`)},
		{"cy", storagetest.Primary(4), 200, json.RawMessage(`{"payload":{"handle":"cy"},"signature":{"sig":"04"}}`)},
	}
	for _, r := range legacy {
		raw, _ := json.Marshal(r)
		for subj, data := range map[string][]byte{reg + "h." + r.Handle: raw, reg + primaryKey(r.Primary): []byte(r.Handle)} {
			if _, err := nc.Request(subj, data, 5*time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}
	order := []string{"bea", "zed", "cy", "amy"}
	s1, s2 := pair(t, c, "legacy", Options{}, nil, nil)
	var wg sync.WaitGroup
	for _, s := range []*Store{s1, s2} {
		wg.Go(func() {
			if _, err := s.LogSize(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := logSize(t, s1); n != 4 {
		t.Fatalf("size %d", n)
	}
	entries, err := s2.LogEntries(ctx, 0, 10)
	if err != nil || len(entries) != 4 {
		t.Fatalf("entries %d %v", len(entries), err)
	}
	for i, h := range order {
		var want json.RawMessage
		for _, r := range legacy {
			if r.Handle == h {
				want = r.Registration
			}
		}
		if string(entries[i]) != string(want) {
			t.Errorf("leaf %d = %s, want %s's", i, entries[i], h)
		}
		rec, err := s1.Lookup(ctx, h)
		if err != nil || rec.LogIndex != int64(i) || string(rec.Registration) != string(want) {
			t.Errorf("%s: %+v %v", h, rec, err)
		}
	}
	if rec := storagetest.Register(t, s2, "dan", 5); rec.LogIndex != 4 {
		t.Fatalf("a new registration at %d", rec.LogIndex)
	}
	// A restart does not log them again.
	_ = s1.Close()
	s3 := open(t, Options{URLs: c.URLs(), Prefix: "legacy"})
	if n := logSize(t, s3); n != 5 {
		t.Fatalf("size %d after another start", n)
	}
}

// TestRegisterCost measures registrations on a 3-node R3 cluster: one
// server registering in sequence, then with 8 callers, then two servers
// with 8 callers each; round trips are the answers a server waited for.
//
//	KEZ_NATS_BENCH=1 go test -run RegisterCost -v ./storage/nats/
func TestRegisterCost(t *testing.T) {
	if os.Getenv("KEZ_NATS_BENCH") == "" {
		t.Skip("set KEZ_NATS_BENCH=1 to measure")
	}
	c := natstest.RunCluster(t, 3)
	ctx := context.Background()
	var rows []string
	for round, r := range []struct{ servers, callers int }{{1, 1}, {1, 8}, {2, 8}} {
		callers := r.callers
		prefix := fmt.Sprintf("regcost%d", round)
		s1, s2 := pair(t, c, prefix, Options{}, nil, nil)
		servers := []*Store{s1, s2}[:r.servers]
		storagetest.Register(t, s1, "warm1", 900000)
		storagetest.Register(t, s2, "warm2", 900001)
		b1, b2 := s1.nc.Stats(), s2.nc.Stats()
		d := 3 * time.Second
		stop := time.Now().Add(d)
		var mu sync.Mutex
		var n int
		var wg sync.WaitGroup
		for si, s := range servers {
			for w := range callers {
				wg.Go(func() {
					for k := 0; time.Now().Before(stop); k++ {
						h := fmt.Sprintf("r%d_%d_%d", si, w, k)
						if _, _, err := s.Register(ctx, record(h, 1+si*100000+w*10000+k), ""); err != nil {
							t.Error(err)
							return
						}
						mu.Lock()
						n++
						mu.Unlock()
					}
				})
			}
		}
		wg.Wait()
		a1, a2 := s1.nc.Stats(), s2.nc.Stats()
		out := float64(a1.OutMsgs - b1.OutMsgs + a2.OutMsgs - b2.OutMsgs)
		waited := float64(a1.InMsgs - b1.InMsgs + a2.InMsgs - b2.InMsgs)
		// Both stores' bindings watches get each registration's record
		// (headers only): 2 answers that are no round trip.
		rows = append(rows, fmt.Sprintf("| %d server(s) × %d caller(s) | %.0f | %.2f | %.2f |", len(servers), callers,
			float64(n)/d.Seconds(), out/float64(n), waited/float64(n)-2))
		if size := logSize(t, s1); size != int64(n+2) {
			t.Fatalf("size %d after %d registrations", size, n+2)
		}
	}
	t.Logf("R3 on 3 in-process nodes\n| registering | registrations/s | messages to NATS per registration | round trips per registration |\n| --- | --- | --- | --- |\n%s",
		strings.Join(rows, "\n"))
}

// A batch whose answer is lost (stored, but the commit timed out) is
// recognised on the next round: Register, Rotate and Delete report what
// they did, run their jobs, and the log holds each change once.
func TestLostBatchAnswers(t *testing.T) {
	c := natstest.Run(t)
	ctx := context.Background()
	s := open(t, Options{URLs: c.URLs(), Prefix: "lost"})
	storagetest.Register(t, s, "bob", 2)
	var lose atomic.Int32
	s.batchFault = func(ack *pubAck, err error) (*pubAck, error) {
		if err == nil && lose.Add(-1) >= 0 {
			return nil, netErr(natsio.ErrTimeout)
		}
		return ack, err
	}
	lose.Store(1)
	rec, created, err := s.Register(ctx, record("alice", 1), "")
	if err != nil || !created || rec.LogIndex != 1 {
		t.Fatalf("register: %+v %v %v", rec, created, err)
	}
	if err := s.SetContact(ctx, "bob", storagetest.Primary(1), storage.Accept); err != nil {
		t.Fatal(err)
	}
	lose.Store(1)
	rot := rotation("alice", storagetest.Primary(1), storagetest.Primary(4))
	if rec, err = s.Rotate(ctx, "alice", storagetest.Primary(1), storagetest.Primary(4), rot); err != nil || rec.LogIndex != 2 || rec.Primary != storagetest.Primary(4) {
		t.Fatalf("rotate: %+v %v", rec, err)
	}
	if got, err := s.Contacts(ctx, "bob"); err != nil || !slices.Equal(got.Accepted, []string{storagetest.Primary(4)}) {
		t.Fatalf("bob's lists: %+v %v", got, err)
	}
	storagetest.Fill(t, s, "alice", 2, 0)
	lose.Store(1)
	if n, err := s.Delete(ctx, "alice", storagetest.Primary(4), []byte(`{"d":1}`), time.Now().Add(time.Hour)); err != nil || n != 3 {
		t.Fatalf("delete: %d %v", n, err)
	}
	if _, err := s.Lookup(ctx, "alice"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("lookup: %v", err)
	}
	if got := logSize(t, s); got != 4 {
		t.Fatalf("size %d", got)
	}
	if info, err := s.subjectCounts(ctx, s.inboxFilter("alice")); err != nil || len(info) != 0 {
		t.Fatalf("alice's inbox after the deletion: %v %v", info, err)
	}
	entries, err := s.LogEntries(ctx, 0, 10)
	if err != nil || len(entries) != 4 || string(entries[2]) != string(rot) || string(entries[3]) != `{"d":1}` {
		t.Fatalf("entries %q %v", entries, err)
	}
}

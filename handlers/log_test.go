package handlers

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage"
	"github.com/kezchat/kez/storage/bolt"

	"github.com/kezchat/kez/internal/vectors"
)

type logVectors = vectors.V2

func loadLogVectors(t testing.TB) *logVectors { return vectors.LoadV2(t) }

// fixedLogKey serves a real store with the vectors' log key, so that the
// checkpoints the handler signs are the vectors' byte for byte.
type fixedLogKey struct {
	storage.Store
	skey string
}

func (f fixedLogKey) LogKey(context.Context, string) (string, error) { return f.skey, nil }

// vectorLog is a handler on kez.example whose log holds the vectors' three
// leaves: alice's and bob's registrations and alice's rotation.
func vectorLog(t *testing.T) (*env, *logVectors, *time.Time) {
	v := loadLogVectors(t)
	clock := time.Unix(1764115200, 0)
	e := newEnvWith(t, func(c *Config) {
		c.Server = "kez.example"
		c.Now = func() time.Time { return clock }
	}, func(s *bolt.Store) storage.Store { return fixedLogKey{s, v.Checkpoint.SignerKey} })
	expect(t, "register alice", e.do("POST", "/v1/register", strings.NewReader(v.Log.Leaves[0].DataJCS)), 201, "")
	expect(t, "register bob", e.do("POST", "/v1/register", strings.NewReader(v.Log.Leaves[1].DataJCS)), 201, "")
	clock = time.Unix(v.Rotation.TS, 0)
	expect(t, "rotate alice", e.do("POST", "/v1/rotate", strings.NewReader(string(v.Rotation.Body))), 200, "")
	return e, v, &clock
}

func TestLogVectors(t *testing.T) {
	e, v, _ := vectorLog(t)
	r := e.do("GET", "/v1/log/checkpoint", nil)
	expect(t, "checkpoint", r, 200, "")
	if string(r.body) != v.Checkpoint.Note || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
		t.Fatalf("checkpoint = %q\nwant %q", r.body, v.Checkpoint.Note)
	}
	if r := e.do("GET", "/v1/log/key", nil); strings.TrimSpace(string(r.body)) != v.Checkpoint.VerifierKey {
		t.Fatalf("log key = %q, want %q", r.body, v.Checkpoint.VerifierKey)
	}
	if h := e.do("GET", "/v1/healthz", nil).json(t); h["log_key"] != v.Checkpoint.VerifierKey {
		t.Fatalf("healthz log_key = %v", h["log_key"])
	}
	if r := e.do("GET", "/v1/log/entries?limit=3&start=0", nil); !jsonEqual(t, r.body, v.Log.EntriesResponse) {
		t.Fatalf("entries = %s\nwant %s", r.body, v.Log.EntriesResponse)
	}
	for _, c := range v.Log.Consistency {
		r := e.do("GET", fmt.Sprintf("/v1/log/consistency?old=%d&new=%d", c.Old, c.New), nil)
		var got struct{ Proof []string }
		if err := json.Unmarshal(r.body, &got); err != nil || strings.Join(got.Proof, ",") != strings.Join(c.Proof, ",") {
			t.Fatalf("consistency %d→%d = %s", c.Old, c.New, r.body)
		}
	}
	// A lookup carries the inclusion proof of its own leaf in the checkpoint.
	var bob struct{ Log json.RawMessage }
	if err := json.Unmarshal(e.do("GET", "/v1/u/bob", nil).body, &bob); err != nil || !jsonEqual(t, bob.Log, v.Log.LookupLogBob) {
		t.Fatalf("bob's log member = %s\nwant %s", bob.Log, v.Log.LookupLogBob)
	}
	// alice's record names her rotation and its leaf.
	var rec struct {
		Primary  string
		Rotation json.RawMessage
		Log      struct{ Index int64 }
	}
	_ = json.Unmarshal(e.do("GET", "/v1/by-primary/"+kez.FormatPrimary(namedPub(t, "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025")), nil).body, &rec)
	if rec.Log.Index != 2 || string(rec.Rotation) != v.Log.Leaves[2].DataJCS {
		t.Fatalf("alice after rotation: %+v", rec)
	}
	expect(t, "old key gone", e.do("GET", "/v1/by-primary/"+alice.Primary(), nil), 404, "not_found")
}

func TestLogQueryBounds(t *testing.T) {
	e, _, _ := vectorLog(t)
	for _, q := range []string{"old=0&new=2", "old=3&new=2", "old=1&new=4", "old=1", "new=2", "old=1&new=2&x=1", "old=01&new=2"} {
		expect(t, "consistency "+q, e.do("GET", "/v1/log/consistency?"+q, nil), 400, "bad_request")
	}
	for _, q := range []string{"limit=0", "start=-1", "start=x", "limit=1&limit=2"} {
		expect(t, "entries "+q, e.do("GET", "/v1/log/entries?"+q, nil), 400, "bad_request")
	}
	var page struct{ Entries []struct{ Index int64 } }
	_ = json.Unmarshal(e.do("GET", "/v1/log/entries?start=1&limit=5000", nil).body, &page)
	if len(page.Entries) != 2 || page.Entries[0].Index != 1 {
		t.Fatalf("entries from 1: %+v", page)
	}
	_ = json.Unmarshal(e.do("GET", "/v1/log/entries?start=9", nil).body, &page)
	if len(page.Entries) != 0 {
		t.Fatalf("entries past the end: %+v", page)
	}
}

func TestEmptyLogCheckpoint(t *testing.T) {
	e := newEnv(t, nil)
	r := e.do("GET", "/v1/log/checkpoint", nil)
	// SHA-256 of nothing: the root of the empty tree.
	if !strings.HasPrefix(string(r.body), serverName+"/kez-log\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\n— "+serverName+"/kez-log ") {
		t.Fatalf("empty checkpoint %q", r.body)
	}
}

func TestRotation(t *testing.T) {
	e, v, clock := vectorLog(t)
	// The same rotation again (a lost answer): the record it made, no new leaf.
	r := e.do("POST", "/v1/rotate", strings.NewReader(string(v.Rotation.Body)))
	expect(t, "retry", r, 200, "")
	var size struct{ Entries []any }
	_ = json.Unmarshal(e.do("GET", "/v1/log/entries", nil).body, &size)
	if len(size.Entries) != 3 {
		t.Fatalf("a retried rotation added a leaf: %d", len(size.Entries))
	}
	aliceNew := seedKeys("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7")
	// A rotation from a key that is not alice's current one.
	rot, _ := kez.SignRotation(alice.Private(), carol.Private(), "alice", "kez.example", *clock)
	expect(t, "not the current key", e.do("POST", "/v1/rotate", strings.NewReader(string(rot.JCS()))), 404, "not_found")
	// Onto a key bound elsewhere.
	rot, _ = kez.SignRotation(aliceNew.Private(), bob.Private(), "alice", "kez.example", *clock)
	expect(t, "new key taken", e.do("POST", "/v1/rotate", strings.NewReader(string(rot.JCS()))), 409, "primary_taken")
	// Only the old key's signature.
	rot, _ = kez.SignRotation(aliceNew.Private(), dave.Private(), "alice", "kez.example", *clock)
	rot.New = rot.Old
	expect(t, "new key did not sign", e.do("POST", "/v1/rotate", strings.NewReader(string(rot.JCS()))), 400, "bad_signature")
	rot, _ = kez.SignRotation(aliceNew.Private(), dave.Private(), "alice", "other.example", *clock)
	expect(t, "other server", e.do("POST", "/v1/rotate", strings.NewReader(string(rot.JCS()))), 400, "wrong_server")
	rot, _ = kez.SignRotation(aliceNew.Private(), dave.Private(), "alice", "kez.example", clock.Add(-time.Hour))
	expect(t, "stale", e.do("POST", "/v1/rotate", strings.NewReader(string(rot.JCS()))), 400, "stale_timestamp")
	expect(t, "text/plain", e.do("POST", "/v1/rotate", strings.NewReader(string(v.Rotation.Body)), "Content-Type", "text/plain"), 415, "bad_request")
}

func TestRotationEndsStreamsAndOldKey(t *testing.T) {
	e := newEnv(t, nil)
	e.users(alice, "alice", bob, "bob")
	s, r := e.openStream(t, alice, "alice", "")
	if r.status != 200 {
		t.Fatalf("stream %d %s", r.status, r.body)
	}
	rot, _ := kez.SignRotation(alice.Private(), carol.Private(), "alice", serverName, time.Now())
	expect(t, "rotate", e.do("POST", "/v1/rotate", strings.NewReader(string(rot.JCS()))), 200, "")
	for {
		if _, ok := s.next(); !ok {
			break // the stream of the old key ended
		}
	}
	expect(t, "old key", e.owner(alice, "GET", "/v1/inbox/alice", ""), 401, "unauthorized")
	expect(t, "new key", e.owner(carol, "GET", "/v1/inbox/alice", ""), 200, "")
	expect(t, "old key sends", e.send(alice, "bob", envl(alice, bob)), 403, "unknown_sender")
}

func TestDeletion(t *testing.T) {
	e, v, clock := vectorLog(t)
	*clock = time.Unix(v.Deletion.TS, 0)
	r := e.do("POST", "/v1/delete", strings.NewReader(string(v.Deletion.Body)))
	expect(t, "delete", r, 200, "")
	var out struct {
		Handle  string
		Deleted bool
		Log     struct {
			Index      int64
			Checkpoint string
			Inclusion  []string
		}
	}
	if err := json.Unmarshal(r.body, &out); err != nil || out.Handle != "alice" || !out.Deleted || out.Log.Index != 3 ||
		!strings.HasPrefix(out.Log.Checkpoint, "kez.example/kez-log\n4\n") {
		t.Fatalf("delete = %s", r.body)
	}
	expect(t, "lookup after deletion", e.do("GET", "/v1/u/alice", nil), 404, "not_found")
	expect(t, "again", e.do("POST", "/v1/delete", strings.NewReader(string(v.Deletion.Body))), 404, "not_found")
	// The handle is held: the vector registration of alice (signed, fresh
	// at this clock) is refused until the cooldown has passed.
	reg, _ := kez.SignRegistration(dave.Private(), "alice", "kez.example", *clock)
	body, _ := json.Marshal(reg)
	expect(t, "cooling down", e.do("POST", "/v1/register", strings.NewReader(string(body))), 409, "handle_cooling_down")
	*clock = clock.Add(DefaultHandleCooldown + time.Hour)
	reg, _ = kez.SignRegistration(dave.Private(), "alice", "kez.example", *clock)
	body, _ = json.Marshal(reg)
	expect(t, "after the cooldown", e.do("POST", "/v1/register", strings.NewReader(string(body))), 201, "")
	// Someone else's signature on a deletion.
	del, _ := kez.SignDeletion(bob.Private(), "alice", "kez.example", *clock)
	expect(t, "bob deletes alice", e.do("POST", "/v1/delete", strings.NewReader(string(del.JCS()))), 404, "not_found")
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xs, _ := json.Marshal(x)
	ys, _ := json.Marshal(y)
	return string(xs) == string(ys)
}

func namedPub(t *testing.T, hexKey string) []byte {
	t.Helper()
	k, err := kez.ParsePrimary(kez.PrimaryPrefix + hexKey)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

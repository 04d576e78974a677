package kez

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	v2vectors "github.com/kezchat/kez/internal/vectors"
)

type logVectors = v2vectors.V2

func loadLogVectors(t testing.TB) *logVectors { return v2vectors.LoadV2(t) }

func mustHash(t testing.TB, s string) tlog.Hash {
	t.Helper()
	h, err := ParseHash(s)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func mustProof(t testing.TB, ss []string) []tlog.Hash {
	t.Helper()
	p, err := ParseProof(ss)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLogVectors reproduces every value of the "log" vectors: leaf data and
// hashes, the roots of sizes 0-3, each inclusion and consistency proof (made
// and checked), the entries answer and bob's lookup proof.
func TestLogVectors(t *testing.T) {
	v := loadLogVectors(t)
	if len(v.Log.Leaves) != 3 {
		t.Fatalf("want 3 leaves, got %d", len(v.Log.Leaves))
	}
	// A store of hashes built with tlog, as a server keeps them.
	var stored []tlog.Hash
	reader := tlog.HashReaderFunc(func(ix []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(ix))
		for i, x := range ix {
			out[i] = stored[x]
		}
		return out, nil
	})
	var frontier LogFrontier
	var leaves [][]byte
	for i, l := range v.Log.Leaves {
		data, err := base64.StdEncoding.DecodeString(l.DataBase64)
		if err != nil || string(data) != l.DataJCS || l.Index != int64(i) {
			t.Fatalf("leaf %d: base64 and JCS differ", i)
		}
		if got := LeafHash(data).String(); got != l.LeafHash {
			t.Errorf("leaf %d hash %s, want %s", i, got, l.LeafHash)
		}
		e, err := ParseLogEntry(int64(i), data, v.Server)
		if err != nil {
			t.Fatalf("leaf %d: %v", i, err)
		}
		want := []string{RegisterType, RegisterType, RotateType}[i]
		if e.Kind != want {
			t.Errorf("leaf %d kind %s, want %s", i, e.Kind, want)
		}
		hs, err := tlog.StoredHashes(int64(i), data, reader)
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, hs...)
		if err := frontier.Append(data); err != nil {
			t.Fatal(err)
		}
		frontier.Prune()
		leaves = append(leaves, data)
	}
	if e, _ := ParseLogEntry(2, leaves[2], v.Server); e.Handle != "alice" || e.Old != v.Rotation.Old || e.Primary != v.Rotation.New || e.TS != v.Rotation.TS {
		t.Errorf("rotation entry = %+v", e)
	}
	for size := int64(0); size <= 3; size++ {
		root, err := tlog.TreeHash(size, reader)
		if err != nil {
			t.Fatal(err)
		}
		if want := v.Log.Roots[strconv.FormatInt(size, 10)]; root.String() != want {
			t.Errorf("root of %d = %s, want %s", size, root, want)
		}
	}
	if root, err := frontier.Root(); err != nil || root.String() != v.Log.Roots["3"] {
		t.Errorf("frontier root %s, %v", root, err)
	}
	if len(frontier.Hashes) > 2 {
		t.Errorf("frontier of 3 keeps %d hashes, want 2", len(frontier.Hashes))
	}

	cp := &Checkpoint{Size: 3, Root: mustHash(t, v.Log.Roots["3"])}
	for _, inc := range v.Log.Inclusion {
		made, err := tlog.ProveRecord(inc.TreeSize, inc.Index, reader)
		if err != nil {
			t.Fatal(err)
		}
		if got := hashStrings(made); strings.Join(got, ",") != strings.Join(inc.Proof, ",") {
			t.Errorf("inclusion of %d: made %v, want %v", inc.Index, got, inc.Proof)
		}
		proof := mustProof(t, inc.Proof)
		if err := cp.VerifyInclusion(inc.Index, leaves[inc.Index], proof); err != nil {
			t.Errorf("inclusion of %d: %v", inc.Index, err)
		}
		// The same proof does not place another leaf there, nor this leaf elsewhere.
		other := leaves[(inc.Index+1)%3]
		if cp.VerifyInclusion(inc.Index, other, proof) == nil {
			t.Errorf("inclusion of %d verified another leaf", inc.Index)
		}
		if cp.VerifyInclusion((inc.Index+1)%3, leaves[inc.Index], proof) == nil {
			t.Errorf("inclusion of %d verified at another index", inc.Index)
		}
	}
	for _, c := range v.Log.Consistency {
		made, err := tlog.ProveTree(c.New, c.Old, reader)
		if err != nil {
			t.Fatal(err)
		}
		if got := hashStrings(made); strings.Join(got, ",") != strings.Join(c.Proof, ",") {
			t.Errorf("consistency %d→%d: made %v, want %v", c.Old, c.New, got, c.Proof)
		}
		older := &Checkpoint{Size: c.Old, Root: mustHash(t, v.Log.Roots[strconv.FormatInt(c.Old, 10)])}
		newer := &Checkpoint{Size: c.New, Root: mustHash(t, v.Log.Roots[strconv.FormatInt(c.New, 10)])}
		if err := VerifyConsistency(older, newer, mustProof(t, c.Proof)); err != nil {
			t.Errorf("consistency %d→%d: %v", c.Old, c.New, err)
		}
		forked := &Checkpoint{Size: c.New, Root: LeafHash([]byte("another history"))}
		if VerifyConsistency(older, forked, mustProof(t, c.Proof)) == nil {
			t.Errorf("consistency %d→%d verified a forked root", c.Old, c.New)
		}
	}

	// GET /v1/log/entries?start=0&limit=3.
	entries, err := ParseLogEntries(v.Log.EntriesResponse, 0)
	if err != nil || len(entries) != 3 {
		t.Fatalf("entries: %d, %v", len(entries), err)
	}
	for i, d := range entries {
		if !bytes.Equal(d, leaves[i]) {
			t.Errorf("entry %d differs", i)
		}
	}
	if _, err := ParseLogEntries(v.Log.EntriesResponse, 1); err == nil {
		t.Error("entries starting at 0 taken for entries from 1")
	}

	// bob's lookup: the checkpoint under the vector key and leaf 1's proof.
	lp, err := ParseLogProof(v.Log.LookupLogBob)
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := ParseLogKey(v.Checkpoint.VerifierKey, v.Server)
	if err != nil {
		t.Fatal(err)
	}
	got, err := OpenCheckpoint([]byte(lp.Checkpoint), verifier)
	if err != nil {
		t.Fatal(err)
	}
	if lp.Index != 1 || got.VerifyInclusion(lp.Index, leaves[1], lp.Inclusion) != nil {
		t.Errorf("bob's lookup proof does not verify")
	}
	if got.VerifyInclusion(lp.Index, leaves[0], lp.Inclusion) == nil {
		t.Errorf("bob's proof verified alice's leaf")
	}
}

// TestCheckpointVector: the log key from its seed, the note text and its
// signature, and everything a verifier must refuse.
func TestCheckpointVector(t *testing.T) {
	v := loadLogVectors(t)
	c := v.Checkpoint
	seed, _ := hex.DecodeString(c.LogKeySeed)
	skey, vkey, err := note.GenerateKey(bytes.NewReader(seed), c.Origin)
	if err != nil {
		t.Fatal(err)
	}
	if skey != c.SignerKey || vkey != c.VerifierKey {
		t.Errorf("keys from the seed:\n%s\n%s", skey, vkey)
	}
	if c.Origin != LogOrigin(v.Server) {
		t.Errorf("origin %s", c.Origin)
	}
	text := FormatCheckpoint(c.Origin, c.Size, mustHash(t, c.Root))
	if text != c.Text {
		t.Errorf("text %q, want %q", text, c.Text)
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := note.Sign(&note.Note{Text: text}, signer)
	if err != nil {
		t.Fatal(err)
	}
	if string(signed) != c.Note {
		t.Errorf("note %q, want %q", signed, c.Note)
	}
	verifier, err := ParseLogKey(c.VerifierKey+"\n", v.Server)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := OpenCheckpoint([]byte(c.Note), verifier)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Size != 3 || cp.Root.String() != c.Root || cp.Origin != c.Origin || cp.Note != c.Note {
		t.Errorf("checkpoint = %+v", cp)
	}

	// The key of another server's log, or no key at all.
	if _, err := ParseLogKey(c.VerifierKey, "kez.other"); err == nil {
		t.Error("a key named for kez.example accepted for kez.other")
	}
	if _, err := ParseLogKey("garbage", v.Server); err == nil {
		t.Error("garbage taken as a key")
	}
	// A note signed by another key of the same name.
	_, otherV, _ := note.GenerateKey(bytes.NewReader(bytes.Repeat([]byte{7}, 32)), c.Origin)
	otherSkey, _, _ := note.GenerateKey(bytes.NewReader(bytes.Repeat([]byte{7}, 32)), c.Origin)
	otherSigner, _ := note.NewSigner(otherSkey)
	forged, _ := note.Sign(&note.Note{Text: text}, otherSigner)
	if _, err := OpenCheckpoint(forged, verifier); err == nil || !strings.Contains(err.Error(), "not signed by the pinned log key") {
		t.Errorf("a note by another key: %v", err)
	}
	ov, _ := ParseLogKey(otherV, v.Server)
	if _, err := OpenCheckpoint([]byte(c.Note), ov); err == nil {
		t.Error("the vector note verified under another key")
	}
	// A changed text under the original signature.
	tampered := strings.Replace(c.Note, "\n3\n", "\n4\n", 1)
	if _, err := OpenCheckpoint([]byte(tampered), verifier); err == nil {
		t.Error("a tampered note verified")
	}
	// Texts that are not a checkpoint of this origin, each properly signed.
	for _, bad := range []string{
		"kez.other/kez-log\n3\n" + c.Root + "\n",
		c.Origin + "\n03\n" + c.Root + "\n",
		c.Origin + "\n-1\n" + c.Root + "\n",
		c.Origin + "\n3\n" + c.Root + "\nextension\n",
		c.Origin + "\n3\n" + strings.TrimSuffix(c.Root, "=") + "\n",
		c.Origin + "\n3\n",
	} {
		n, err := note.Sign(&note.Note{Text: bad}, signer)
		if err != nil {
			continue // not even a note
		}
		if _, err := OpenCheckpoint(n, verifier); err == nil {
			t.Errorf("checkpoint text %q accepted", bad)
		}
	}
	// A witness's cosignature beside the log's does not hurt.
	witnessSkey, _, _ := note.GenerateKey(bytes.NewReader(bytes.Repeat([]byte{9}, 32)), "witness.example")
	witness, _ := note.NewSigner(witnessSkey)
	cosigned, _ := note.Sign(&note.Note{Text: text}, signer, witness)
	if _, err := OpenCheckpoint(cosigned, verifier); err != nil {
		t.Errorf("cosigned checkpoint: %v", err)
	}
}

// TestRotationDeletionLeaves: the rotation and deletion vectors are leaves
// that ParseLogEntry reads and verifies, and a tampered one is refused.
func TestRotationDeletionLeaves(t *testing.T) {
	v := loadLogVectors(t)
	for _, c := range []struct {
		kind, data, hash string
	}{{RotateType, v.Rotation.LeafDataJCS, v.Rotation.LeafHash}, {DeleteType, v.Deletion.LeafDataJCS, v.Deletion.LeafHash}} {
		if got := LeafHash([]byte(c.data)).String(); got != c.hash {
			t.Errorf("%s leaf hash %s, want %s", c.kind, got, c.hash)
		}
		e, err := ParseLogEntry(7, []byte(c.data), v.Server)
		if err != nil || e.Kind != c.kind || e.Handle != "alice" || e.Index != 7 {
			t.Fatalf("%s: %+v, %v", c.kind, e, err)
		}
		if _, err := ParseLogEntry(7, []byte(c.data), "kez.other"); err == nil {
			t.Errorf("%s for kez.example taken as kez.other's", c.kind)
		}
		tampered := strings.Replace(c.data, `"alice"`, `"alicf"`, 1)
		if _, err := ParseLogEntry(7, []byte(tampered), v.Server); err == nil {
			t.Errorf("tampered %s accepted", c.kind)
		}
		spaced := strings.Replace(c.data, `{"payload":`, `{ "payload":`, 1)
		if _, err := ParseLogEntry(7, []byte(spaced), v.Server); err == nil {
			t.Errorf("%s not in JCS form accepted", c.kind)
		}
	}
	if e, _ := ParseLogEntry(0, []byte(v.Deletion.LeafDataJCS), v.Server); e.Primary != v.Deletion.Primary || e.TS != v.Deletion.TS {
		t.Errorf("deletion = %+v", e)
	}
	for _, bad := range []string{`{}`, `{"payload":{"type":"kez.chat.other"}}`, `not json`, `[]`} {
		if _, err := ParseLogEntry(0, []byte(bad), v.Server); err == nil {
			t.Errorf("%s accepted as a leaf", bad)
		}
	}
}

// TestLogFrontier: a frontier extended leaf by leaf and pruned has the
// root of the whole tree at every size, and keeps at most log2 hashes.
func TestLogFrontier(t *testing.T) {
	var stored []tlog.Hash
	reader := tlog.HashReaderFunc(func(ix []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(ix))
		for i, x := range ix {
			out[i] = stored[x]
		}
		return out, nil
	})
	var f LogFrontier
	for n := int64(0); n < 300; n++ {
		data := []byte(fmt.Sprintf("leaf %d", n))
		hs, _ := tlog.StoredHashes(n, data, reader)
		stored = append(stored, hs...)
		if err := f.Append(data); err != nil {
			t.Fatal(err)
		}
		if n%7 == 0 {
			f.Prune()
		}
		want, _ := tlog.TreeHash(n+1, reader)
		got, err := f.Root()
		if err != nil || got != want {
			t.Fatalf("size %d: root %s, %v; want %s", n+1, got, err, want)
		}
	}
	f.Prune()
	if len(f.Hashes) > 9 {
		t.Errorf("a frontier of 300 keeps %d hashes", len(f.Hashes))
	}
	b, _ := json.Marshal(&f)
	var back LogFrontier
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if r1, _ := f.Root(); func() bool { r2, _ := back.Root(); return r1 != r2 }() {
		t.Error("a frontier does not survive JSON")
	}
}

// TestParseProofs: hashes must be canonical standard base64 of 32 bytes.
func TestParseProofs(t *testing.T) {
	good := "UO6lGEVLNg1eHpRijda/AghCofGyZLX2dOmBWL3NjOc="
	for _, bad := range []string{"", "UO6lGEVLNg1eHpRijda_AghCofGyZLX2dOmBWL3NjOc=", "UO6lGEVLNg1eHpRijda/AghCofGyZLX2dOmBWL3NjOc",
		"UO6lGEVLNg1eHpRijda/\nAghCofGyZLX2dOmBWL3NjOc=", "AAAA"} {
		if _, err := ParseProof([]string{good, bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, err := ParseProof(make([]string, 129)); err == nil {
		t.Error("a proof of 129 hashes accepted")
	}
	for _, bad := range []string{`{"index":1,"checkpoint":"x"}`, `{"index":-1,"checkpoint":"x","inclusion":[]}`,
		`{"index":1,"checkpoint":"x","inclusion":null}`, `{"Index":1,"checkpoint":"x","inclusion":[]}`,
		`{"index":1,"checkpoint":"x","inclusion":[],"extra":1}`} {
		if _, err := ParseLogProof([]byte(bad)); err == nil {
			t.Errorf("log proof %s accepted", bad)
		}
	}
}

func hashStrings(hs []tlog.Hash) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.String()
	}
	return out
}

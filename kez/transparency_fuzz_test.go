package kez

import (
	"bytes"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

// Fuzz targets for what a client reads from a server's log (SPEC §5): the
// checkpoint note, the "log" member of a record, the entries and
// consistency answers and the leaves themselves. None may panic, and what
// they accept must be what they would write.

func FuzzOpenCheckpoint(f *testing.F) {
	v := loadLogVectors(f)
	verifier, err := ParseLogKey(v.Checkpoint.VerifierKey, v.Server)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(v.Checkpoint.Note))
	f.Add([]byte(strings.Replace(v.Checkpoint.Note, "\n3\n", "\n4\n", 1)))
	f.Add([]byte(v.Checkpoint.Text))
	f.Add([]byte("\n\n— kez.example/kez-log AAAA\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		cp, err := OpenCheckpoint(msg, verifier)
		if err != nil {
			return
		}
		// Only the vector's own text is signed by the vector key.
		n, _ := note.Open(msg, note.VerifierList(verifier))
		if n.Text != FormatCheckpoint(cp.Origin, cp.Size, cp.Root) || cp.Origin != LogOrigin(v.Server) {
			t.Fatalf("accepted %q as %+v", msg, cp)
		}
	})
}

func FuzzParseLogProof(f *testing.F) {
	v := loadLogVectors(f)
	f.Add([]byte(v.Log.LookupLogBob))
	f.Add([]byte(`{"index":0,"checkpoint":"","inclusion":[]}`))
	f.Add([]byte(`{"index":1,"checkpoint":"x","inclusion":["AAAA"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseLogProof(data)
		if err != nil {
			return
		}
		if p.Index < 0 || len(p.Inclusion) > maxProofHashes {
			t.Fatalf("accepted %+v", p)
		}
	})
}

func FuzzParseLogEntries(f *testing.F) {
	v := loadLogVectors(f)
	f.Add([]byte(v.Log.EntriesResponse), int64(0))
	f.Add([]byte(`{"entries":[]}`), int64(5))
	f.Add([]byte(`{"entries":[{"index":5,"data":"e30="}]}`), int64(5))
	f.Fuzz(func(t *testing.T, body []byte, start int64) {
		entries, err := ParseLogEntries(body, start)
		if err != nil {
			return
		}
		for i, d := range entries {
			// Whatever a leaf holds, reading it must not panic.
			_, _ = ParseLogEntry(start+int64(i), d, v.Server)
		}
	})
}

func FuzzParseLogEntry(f *testing.F) {
	v := loadLogVectors(f)
	for _, l := range v.Log.Leaves {
		f.Add([]byte(l.DataJCS))
	}
	f.Add([]byte(v.Deletion.LeafDataJCS))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := ParseLogEntry(0, data, v.Server)
		if err != nil {
			return
		}
		if e.Server != v.Server || !ValidHandle(e.Handle) || !WellFormedPrimary(e.Primary) || !bytes.Equal(e.Data, data) {
			t.Fatalf("accepted %q as %+v", data, e)
		}
	})
}

func FuzzParseConsistency(f *testing.F) {
	f.Add([]byte(`{"proof":["UO6lGEVLNg1eHpRijda/AghCofGyZLX2dOmBWL3NjOc="]}`))
	f.Add([]byte(`{"proof":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseConsistency(data)
		if err == nil && len(p) > maxProofHashes {
			t.Fatalf("accepted a proof of %d hashes", len(p))
		}
	})
}

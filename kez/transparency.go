package kez

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gowebpki/jcs"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Client-side checks of the binding log (SPEC §5): checkpoints are signed
// notes (golang.org/x/mod/sumdb/note) of a C2SP tlog-checkpoint text, and
// every hash, inclusion and consistency proof is computed and checked by
// golang.org/x/mod/sumdb/tlog (RFC 9162 hashing). Nothing here trusts the
// server: a checkpoint counts only under the pinned log key.

// LogOrigin is the checkpoint origin of a server's log, also the name of its
// log key: "<server>/kez-log".
func LogOrigin(server string) string { return server + "/kez-log" }

// maxProofHashes bounds an inclusion or consistency proof: a tree of 2^63
// leaves needs at most 2·63 hashes.
const maxProofHashes = 128

// maxNote bounds a checkpoint note; a real one is about 200 bytes.
const maxNote = 16 << 10

// ParseLogKey reads a log verifier key (note.NewVerifier form,
// <name>+<hash>+<base64>) and checks that it is named for server's log.
func ParseLogKey(vkey, server string) (note.Verifier, error) {
	vkey = strings.TrimSpace(vkey)
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("log key %.120q: %v", vkey, err)
	}
	if want := LogOrigin(server); v.Name() != want {
		return nil, fmt.Errorf("log key is named %.80q, not %q", v.Name(), want)
	}
	return v, nil
}

// Checkpoint is a verified checkpoint of a server's log.
type Checkpoint struct {
	Origin string
	Size   int64
	Root   tlog.Hash
	// Note is the signed note as received: text, blank line, signatures.
	Note string
}

// String names a checkpoint for people: "size 12, root D2tA…/w=".
func (c *Checkpoint) String() string {
	return fmt.Sprintf("size %d, root %s", c.Size, c.Root)
}

// FormatCheckpoint is the C2SP tlog-checkpoint text
// "<origin>\n<size>\n<base64 root>\n" (what the note signs).
func FormatCheckpoint(origin string, size int64, root tlog.Hash) string {
	return origin + "\n" + strconv.FormatInt(size, 10) + "\n" + root.String() + "\n"
}

// ParseCheckpointText reads a C2SP tlog-checkpoint text of exactly three
// lines: the origin, the size in canonical decimal, the root in standard
// base64. SPEC §5 defines no extension lines, so none are accepted: two
// notes with one size and root would otherwise differ in what they carry.
func ParseCheckpointText(text string) (origin string, size int64, root tlog.Hash, err error) {
	lines := strings.Split(text, "\n")
	if len(lines) != 4 || lines[3] != "" {
		return "", 0, root, errors.New("checkpoint text must be exactly three lines: origin, size, root")
	}
	origin = lines[0]
	if origin == "" || strings.TrimSpace(origin) != origin {
		return "", 0, root, errors.New("checkpoint origin is empty or padded")
	}
	size, err = strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		return "", 0, root, fmt.Errorf("checkpoint size %.40q is not a canonical non-negative number", lines[1])
	}
	root, err = ParseHash(lines[2])
	if err != nil {
		return "", 0, root, fmt.Errorf("checkpoint root: %v", err)
	}
	return origin, size, root, nil
}

// ParseHash reads one hash in canonical standard base64 with padding (as
// tlog.Hash.String writes it). Go's decoder would skip line breaks and
// take other spellings; those are refused so each hash has one form.
func ParseHash(s string) (tlog.Hash, error) {
	h, err := tlog.ParseHash(s)
	if err != nil || h.String() != s {
		return tlog.Hash{}, fmt.Errorf("%.60q is not a 32-byte hash in standard base64", s)
	}
	return h, nil
}

// ParseProof reads a proof: a list of hashes in standard base64.
func ParseProof(hashes []string) ([]tlog.Hash, error) {
	if len(hashes) > maxProofHashes {
		return nil, fmt.Errorf("a proof of %d hashes is longer than any log needs", len(hashes))
	}
	out := make([]tlog.Hash, len(hashes))
	for i, s := range hashes {
		h, err := ParseHash(s)
		if err != nil {
			return nil, fmt.Errorf("proof hash %d: %v", i, err)
		}
		out[i] = h
	}
	return out, nil
}

// OpenCheckpoint verifies a checkpoint note with the pinned log key v and
// parses its text. The note must carry a valid signature by v (others,
// such as witnesses' cosignatures, are ignored) and its origin must be the
// key's name, which ParseLogKey has tied to the server.
func OpenCheckpoint(msg []byte, v note.Verifier) (*Checkpoint, error) {
	if len(msg) > maxNote {
		return nil, fmt.Errorf("checkpoint note is larger than %d bytes", maxNote)
	}
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		var unverified *note.UnverifiedNoteError
		var invalid *note.InvalidSignatureError
		switch {
		case errors.As(err, &unverified):
			return nil, fmt.Errorf("checkpoint is not signed by the pinned log key %s", v.Name())
		case errors.As(err, &invalid):
			return nil, fmt.Errorf("checkpoint signature by the log key does not verify")
		}
		return nil, fmt.Errorf("checkpoint note: %v", err)
	}
	origin, size, root, err := ParseCheckpointText(n.Text)
	if err != nil {
		return nil, err
	}
	if origin != v.Name() {
		return nil, fmt.Errorf("checkpoint origin %.80q is not the log key's %q", origin, v.Name())
	}
	return &Checkpoint{Origin: origin, Size: size, Root: root, Note: string(msg)}, nil
}

// LeafHash is the RFC 9162 leaf hash of leaf data (tlog.RecordHash).
func LeafHash(data []byte) tlog.Hash { return tlog.RecordHash(data) }

// VerifyInclusion checks that leaf data is leaf number index of the tree
// the checkpoint signs, with an RFC 9162 inclusion proof.
func (c *Checkpoint) VerifyInclusion(index int64, data []byte, proof []tlog.Hash) error {
	if index < 0 || index >= c.Size {
		return fmt.Errorf("leaf %d is not in a log of %d leaves", index, c.Size)
	}
	if err := tlog.CheckRecord(proof, c.Size, c.Root, index, tlog.RecordHash(data)); err != nil {
		return fmt.Errorf("the inclusion proof of leaf %d in checkpoint %d does not verify", index, c.Size)
	}
	return nil
}

// VerifyConsistency checks that the tree of checkpoint newer extends the
// tree of older (RFC 9162 consistency proof from older.Size to
// newer.Size). Two checkpoints of one size must have one root (and need no
// proof); every tree extends the empty one.
func VerifyConsistency(older, newer *Checkpoint, proof []tlog.Hash) error {
	switch {
	case older.Size > newer.Size:
		return fmt.Errorf("checkpoint %d is not older than checkpoint %d", older.Size, newer.Size)
	case older.Size == newer.Size:
		if older.Root != newer.Root {
			return fmt.Errorf("two checkpoints of size %d with different roots", older.Size)
		}
		return nil
	case older.Size == 0:
		if empty, _ := tlog.TreeHash(0, nil); older.Root != empty {
			return errors.New("a checkpoint of size 0 whose root is not the empty tree's")
		}
		return nil
	}
	if err := tlog.CheckTree(proof, newer.Size, newer.Root, older.Size, older.Root); err != nil {
		return fmt.Errorf("the consistency proof from checkpoint %d to %d does not verify", older.Size, newer.Size)
	}
	return nil
}

// LogProof is the "log" member of a record or receipt (SPEC §5): the
// index of the record's leaf, a checkpoint note and the inclusion proof of
// the leaf in it.
type LogProof struct {
	Index      int64
	Checkpoint string
	Inclusion  []tlog.Hash
}

// ParseLogProof reads {"index":i,"checkpoint":"…","inclusion":["…",…]}
// with exact member names.
func ParseLogProof(data []byte) (*LogProof, error) {
	var p LogProof
	var inclusion []string
	if err := decodeExact(data, map[string]any{"index": &p.Index, "checkpoint": &p.Checkpoint, "inclusion": &inclusion}); err != nil {
		return nil, fmt.Errorf("log: %v", err)
	}
	if p.Index < 0 {
		return nil, errors.New("log: index is negative")
	}
	if inclusion == nil {
		return nil, errors.New("log: inclusion must be an array")
	}
	var err error
	if p.Inclusion, err = ParseProof(inclusion); err != nil {
		return nil, fmt.Errorf("log: inclusion: %v", err)
	}
	return &p, nil
}

// ParseConsistency reads {"proof":["…",…]} (GET /v1/log/consistency).
func ParseConsistency(data []byte) ([]tlog.Hash, error) {
	var proof []string
	if err := decodeExact(data, map[string]any{"proof": &proof}); err != nil || proof == nil {
		return nil, fmt.Errorf("consistency answer must be {\"proof\":[…]}: %v", err)
	}
	return ParseProof(proof)
}

// LogEntry is one leaf of the binding log, read and verified: a
// registration, a rotation or a deletion, each signed by its key(s).
type LogEntry struct {
	Index int64
	Kind  string // RegisterType, RotateType or DeleteType
	// Handle and Server are what the signed payload names.
	Handle, Server string
	// Primary is the key bound by a registration, the key whose binding a
	// deletion ends, or the new key of a rotation.
	Primary string
	// Old is the key a rotation moves the handle from ("" otherwise).
	Old string
	// TS is the signer's time (payload.ts, unix seconds).
	TS int64
	// Data is the leaf data, the JCS form of the signed object.
	Data []byte
}

// ParseLogEntry reads the data of leaf index and checks it as SPEC §5
// says leaves are: the JCS form of a signed registration, rotation or
// deletion for server, whose signatures verify. A server cannot make a
// leaf that passes without the keys it names.
func ParseLogEntry(index int64, data []byte, server string) (*LogEntry, error) {
	fail := func(format string, args ...any) (*LogEntry, error) {
		return nil, fmt.Errorf("log entry %d: %s", index, fmt.Sprintf(format, args...))
	}
	canonical, err := jcs.Transform(data)
	if err != nil {
		return fail("not JSON: %v", err)
	}
	if !bytes.Equal(canonical, data) {
		return fail("not in JCS form")
	}
	var head struct {
		Payload struct {
			Type string `json:"type"`
			TS   int64  `json:"ts"`
		} `json:"payload"`
	}
	// Only to choose the verifier; each verifier reads the object exactly.
	_ = json.Unmarshal(data, &head)
	e := &LogEntry{Index: index, Kind: head.Payload.Type, Data: data}
	switch head.Payload.Type {
	case RegisterType:
		// Checked as of its own time, so an old leaf still verifies.
		reg, p, err := VerifyRegistration(data, RegistrationPolicy{Server: server, Now: time.Unix(head.Payload.TS, 0)})
		if err != nil {
			return fail("registration: %v", err)
		}
		if !bytes.Equal(reg.Stored(), data) {
			return fail("registration is not in its stored form")
		}
		e.Handle, e.Server, e.Primary, e.TS = p.Handle, p.Server, p.Primary, p.TS
	case RotateType:
		r, p, err := VerifyRotation(data, ChangePolicy{})
		if err != nil {
			return fail("rotation: %v", err)
		}
		if !bytes.Equal(r.JCS(), data) {
			return fail("rotation is not in its logged form")
		}
		e.Handle, e.Server, e.Primary, e.Old, e.TS = p.Handle, p.Server, p.New, p.Old, p.TS
	case DeleteType:
		d, p, err := VerifyDeletion(data, ChangePolicy{})
		if err != nil {
			return fail("deletion: %v", err)
		}
		if !bytes.Equal(d.JCS(), data) {
			return fail("deletion is not in its logged form")
		}
		e.Handle, e.Server, e.Primary, e.TS = p.Handle, p.Server, p.Primary, p.TS
	default:
		return fail("payload.type %.40q is none of %s, %s, %s", head.Payload.Type, RegisterType, RotateType, DeleteType)
	}
	if e.Server != server {
		return fail("it is for server %.60q, not %q", e.Server, server)
	}
	return e, nil
}

// ParseLogEntries reads {"entries":[{"index":i,"data":"<base64>"},…]}
// (GET /v1/log/entries?start=…) and checks that the indexes run from
// start without a gap. The data is not checked here (ParseLogEntry).
func ParseLogEntries(body []byte, start int64) ([][]byte, error) {
	var raw []json.RawMessage
	if err := decodeExact(body, map[string]any{"entries": &raw}); err != nil || raw == nil {
		return nil, fmt.Errorf("entries answer must be {\"entries\":[…]}: %v", err)
	}
	out := make([][]byte, len(raw))
	for i, r := range raw {
		var index int64
		var data string
		if err := decodeExact(r, map[string]any{"index": &index, "data": &data}); err != nil {
			return nil, fmt.Errorf("entry %d: %v", i, err)
		}
		if index != start+int64(i) {
			return nil, fmt.Errorf("entry %d has index %d, not %d", i, index, start+int64(i))
		}
		b, err := base64.StdEncoding.Strict().DecodeString(data)
		if err != nil || base64.StdEncoding.EncodeToString(b) != data {
			return nil, fmt.Errorf("entry %d: data is not standard base64", index)
		}
		out[i] = b
	}
	return out, nil
}

// LogFrontier is a verified prefix of a log in compact form: its size and
// the stored hashes (tlog.StoredHashIndex → hash) of its maximal complete
// subtrees, which are all that tlog.StoredHashes needs to add the next leaf
// and tlog.TreeHash needs for the root. A client keeps one to check new
// entries against each newer checkpoint without downloading the log again.
type LogFrontier struct {
	Size   int64               `json:"size"`
	Hashes map[int64]tlog.Hash `json:"hashes,omitempty"`
}

// ReadHashes serves tlog from the frontier.
func (f *LogFrontier) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		h, ok := f.Hashes[x]
		if !ok {
			return nil, fmt.Errorf("log frontier of size %d lacks stored hash %d", f.Size, x)
		}
		out[i] = h
	}
	return out, nil
}

// Append adds the next leaf.
func (f *LogFrontier) Append(data []byte) error {
	hashes, err := tlog.StoredHashes(f.Size, data, f)
	if err != nil {
		return err
	}
	if f.Hashes == nil {
		f.Hashes = make(map[int64]tlog.Hash)
	}
	base := tlog.StoredHashIndex(0, f.Size)
	for i, h := range hashes {
		f.Hashes[base+int64(i)] = h
	}
	f.Size++
	return nil
}

// Root is the tree hash of the prefix.
func (f *LogFrontier) Root() (tlog.Hash, error) { return tlog.TreeHash(f.Size, f) }

// Prune forgets every hash that neither Root nor the next Append reads.
func (f *LogFrontier) Prune() {
	keep := map[int64]bool{}
	_, _ = tlog.TreeHash(f.Size, tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		for _, x := range indexes {
			keep[x] = true
		}
		return make([]tlog.Hash, len(indexes)), nil
	}))
	for x := range f.Hashes {
		if !keep[x] {
			delete(f.Hashes, x)
		}
	}
}

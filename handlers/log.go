package handlers

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage"
)

// The binding log (SPEC §5): the store keeps the tree; here it is signed
// and proven. Every checkpoint is made from the store's durable hashes.

// maxLogEntries bounds one GET /v1/log/entries.
const maxLogEntries = 1000

// transparency signs checkpoints with the log key, made once per backend.
type transparency struct {
	mu       sync.Mutex
	signer   note.Signer
	verifier string // the verifier key, <name>+<hash>+<base64>
	last     checkpoint
}

type checkpoint struct {
	size int64
	note []byte
}

// logOrigin is the checkpoint origin and note key name of this server.
func (h *Handler) logOrigin() string { return h.cfg.Server + "/kez-log" }

// logSigner loads (or has the store make) the log key.
func (h *Handler) logSigner(ctx context.Context) (note.Signer, string, error) {
	t := &h.binlog
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.signer != nil {
		return t.signer, t.verifier, nil
	}
	skey, err := h.store.LogKey(ctx, h.logOrigin())
	if err != nil {
		return nil, "", err
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		return nil, "", err
	}
	if signer.Name() != h.logOrigin() {
		return nil, "", errors.New("the stored log key is named " + signer.Name() + ", not " + h.logOrigin())
	}
	vkey, err := VerifierKey(skey)
	if err != nil {
		return nil, "", err
	}
	t.signer, t.verifier = signer, vkey
	return signer, vkey, nil
}

// VerifierKey derives the note verifier key of a signer key made by
// note.GenerateKey (PRIVATE+KEY+<name>+<hash>+<base64 of 0x01 ‖ seed>).
func VerifierKey(skey string) (string, error) {
	parts := strings.SplitN(skey, "+", 5) // base64 may hold "+" too
	if len(parts) != 5 || parts[0] != "PRIVATE" || parts[1] != "KEY" {
		return "", errors.New("malformed log signer key")
	}
	raw, err := base64.StdEncoding.DecodeString(parts[4])
	if err != nil || len(raw) != 1+ed25519.SeedSize || raw[0] != 1 {
		return "", errors.New("log signer key is not an Ed25519 note key")
	}
	pub := ed25519.NewKeyFromSeed(raw[1:]).Public().(ed25519.PublicKey)
	return note.NewEd25519VerifierKey(parts[2], pub)
}

// hashReader reads the store's tree hashes for tlog.
type hashReader struct {
	ctx   context.Context
	store storage.Store
}

func (r hashReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	return r.store.LogHashes(r.ctx, indexes)
}

// checkpointAt is the signed checkpoint note for a tree of size leaves,
// made once per size.
func (h *Handler) checkpointAt(ctx context.Context, size int64) ([]byte, error) {
	signer, _, err := h.logSigner(ctx)
	if err != nil {
		return nil, err
	}
	h.binlog.mu.Lock()
	last := h.binlog.last
	h.binlog.mu.Unlock()
	if last.note != nil && last.size == size {
		return last.note, nil
	}
	root, err := tlog.TreeHash(size, hashReader{ctx, h.store}) // size 0: SHA-256 of nothing
	if err != nil {
		return nil, err
	}
	text := h.logOrigin() + "\n" + strconv.FormatInt(size, 10) + "\n" + root.String() + "\n"
	signed, err := note.Sign(&note.Note{Text: text}, signer)
	if err != nil {
		return nil, err
	}
	h.binlog.mu.Lock()
	if size >= h.binlog.last.size {
		h.binlog.last = checkpoint{size, signed}
	}
	h.binlog.mu.Unlock()
	return signed, nil
}

// logProof is the "log" member of a record or receipt (SPEC §5).
type logProof struct {
	Index      int64    `json:"index"`
	Checkpoint string   `json:"checkpoint"`
	Inclusion  []string `json:"inclusion"`
}

// proveLeaf proves leaf index in the log as it is now.
func (h *Handler) proveLeaf(ctx context.Context, index int64) (*logProof, error) {
	size, err := h.store.LogSize(ctx)
	if err != nil {
		return nil, err
	}
	if index < 0 || index >= size {
		return nil, errors.New("leaf " + strconv.FormatInt(index, 10) + " is not in the log of " + strconv.FormatInt(size, 10))
	}
	proof, err := tlog.ProveRecord(size, index, hashReader{ctx, h.store})
	if err != nil {
		return nil, err
	}
	cp, err := h.checkpointAt(ctx, size)
	if err != nil {
		return nil, err
	}
	return &logProof{Index: index, Checkpoint: string(cp), Inclusion: hashStrings(proof)}, nil
}

func hashStrings(hs []tlog.Hash) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.String()
	}
	return out
}

// noQuery refuses a query on a path that takes none.
func noQuery(r *http.Request) error {
	_, _, _, err := kez.ParseQuery(r.URL.RawQuery, false)
	return err
}

func (h *Handler) logKey(w http.ResponseWriter, r *http.Request) error {
	if err := noQuery(r); err != nil {
		return err
	}
	_, vkey, err := h.logSigner(r.Context())
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusOK, "text/plain; charset=utf-8", []byte(vkey+"\n"))
	return nil
}

func (h *Handler) logCheckpoint(w http.ResponseWriter, r *http.Request) error {
	if err := noQuery(r); err != nil {
		return err
	}
	size, err := h.store.LogSize(r.Context())
	if err != nil {
		return err
	}
	cp, err := h.checkpointAt(r.Context(), size)
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-cache")
	writeRaw(w, http.StatusOK, "text/plain; charset=utf-8", cp)
	return nil
}

func (h *Handler) logEntries(w http.ResponseWriter, r *http.Request) error {
	q, _, _, err := kez.ParseQuery(r.URL.RawQuery, false, "start", "limit")
	if err != nil {
		return err
	}
	limit := uint64(maxLogEntries)
	if n, ok := q["limit"]; ok {
		if n == 0 {
			return kez.Errorf(kez.CodeBadRequest, "limit must be positive")
		}
		limit = min(n, maxLogEntries)
	}
	start := q["start"]
	size, err := h.store.LogSize(r.Context())
	if err != nil {
		return err
	}
	type entry struct {
		Index int64  `json:"index"`
		Data  []byte `json:"data"` // standard base64, as encoding/json writes []byte
	}
	out := struct {
		Entries []entry `json:"entries"`
	}{Entries: []entry{}}
	if start < uint64(size) {
		n := int(min(limit, uint64(size)-start))
		data, err := h.store.LogEntries(r.Context(), int64(start), n)
		if err != nil {
			return err
		}
		for i, d := range data {
			out.Entries = append(out.Entries, entry{Index: int64(start) + int64(i), Data: d})
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (h *Handler) logConsistency(w http.ResponseWriter, r *http.Request) error {
	q, _, _, err := kez.ParseQuery(r.URL.RawQuery, false, "old", "new")
	if err != nil {
		return err
	}
	size, err := h.store.LogSize(r.Context())
	if err != nil {
		return err
	}
	oldSize, okOld := q["old"]
	newSize, okNew := q["new"]
	if !okOld || !okNew || oldSize < 1 || oldSize > newSize || newSize > uint64(size) {
		return kez.Errorf(kez.CodeBadRequest, "consistency needs 1 <= old <= new <= %d (the log's size)", size)
	}
	proof, err := tlog.ProveTree(int64(newSize), int64(oldSize), hashReader{r.Context(), h.store})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string][]string{"proof": hashStrings(proof)})
	return nil
}

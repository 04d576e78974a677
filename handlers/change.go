package handlers

import (
	"bytes"
	"errors"
	"net/http"

	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage"
)

// maxChangeBody bounds POST /v1/rotate and /v1/delete; a real one is under 1 KiB.
const maxChangeBody = 16 << 10

func (h *Handler) readChange(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if _, _, _, err := kez.ParseQuery(r.URL.RawQuery, false); err != nil {
		h.fail(w, r, err)
		return nil, false
	}
	b, ok := h.readJSONBody(w, r, maxChangeBody, func() {
		closeAfter(w)
		writeError(w, http.StatusBadRequest, kez.CodeBadRequest, "body is larger than 16 KiB")
	})
	return b.data, ok
}

func (h *Handler) changePolicy() kez.ChangePolicy {
	return kez.ChangePolicy{Server: h.cfg.Server, Now: h.cfg.Now(), Skew: h.cfg.RegisterSkew}
}

// rotate serves POST /v1/rotate (SPEC §2.10): the handle moves to the new
// key at once, in one durable step with its log leaf; streams opened with
// the old key end.
func (h *Handler) rotate(w http.ResponseWriter, r *http.Request) {
	body, ok := h.readChange(w, r)
	if !ok {
		return
	}
	rot, p, err := kez.VerifyRotation(body, h.changePolicy())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	leaf := rot.JCS()
	rec, err := h.store.Rotate(r.Context(), p.Handle, p.Old, p.New, leaf)
	if errors.Is(err, storage.ErrNotFound) {
		// The same rotation again (a retry after a lost answer) is answered
		// with the record it made.
		if cur, lerr := h.store.Lookup(r.Context(), p.Handle); lerr == nil && bytes.Equal(cur.Rotation, leaf) {
			h.writeRecord(w, r, http.StatusOK, cur)
			return
		}
		writeError(w, http.StatusNotFound, kez.CodeNotFound, "\""+p.Handle+"\" is not bound to the old key on "+h.cfg.Server)
		return
	}
	if errors.Is(err, storage.ErrPrimaryTaken) {
		writeError(w, http.StatusConflict, kez.CodePrimaryTaken, "the new key is already bound to a handle")
		return
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.hub.End(p.Handle)
	h.writeRecord(w, r, http.StatusOK, rec)
}

// deleteAccount serves POST /v1/delete (SPEC §2.10): the binding ends, the
// inbox and contact lists go, and the handle is held for HandleCooldown.
func (h *Handler) deleteAccount(w http.ResponseWriter, r *http.Request) {
	body, ok := h.readChange(w, r)
	if !ok {
		return
	}
	del, p, err := kez.VerifyDeletion(body, h.changePolicy())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	index, err := h.store.Delete(r.Context(), p.Handle, p.Primary, del.JCS(), h.cfg.Now().Add(h.cfg.HandleCooldown))
	if errors.Is(err, storage.ErrNotFound) {
		writeError(w, http.StatusNotFound, kez.CodeNotFound, "\""+p.Handle+"\" is not bound to this key on "+h.cfg.Server)
		return
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.hub.End(p.Handle)
	proof, err := h.proveLeaf(r.Context(), index)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Handle  string    `json:"handle"`
		Deleted bool      `json:"deleted"`
		Log     *logProof `json:"log"`
	}{p.Handle, true, proof})
}

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

func (h *Handler) readChange(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if err := noQuery(r); err != nil {
		return nil, err
	}
	b, err := h.readBody(w, r, maxChangeBody, kez.Errorf(kez.CodeBadRequest, "body is larger than 16 KiB"))
	return b.data, err
}

func (h *Handler) changePolicy() kez.ChangePolicy {
	return kez.ChangePolicy{Server: h.cfg.Server, Now: h.cfg.Now(), Skew: h.cfg.RegisterSkew}
}

// rotate serves POST /v1/rotate (SPEC §2.10): the handle moves to the new
// key at once, in one durable step with its log leaf; streams opened with
// the old key end.
func (h *Handler) rotate(w http.ResponseWriter, r *http.Request) error {
	body, err := h.readChange(w, r)
	if err != nil {
		return err
	}
	rot, p, err := kez.VerifyRotation(body, h.changePolicy())
	if err != nil {
		return err
	}
	leaf := rot.JCS()
	rec, err := h.store.Rotate(r.Context(), p.Handle, p.Old, p.New, leaf)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		// The same rotation again (a retry after a lost answer) is answered
		// with the record it made.
		if cur, lerr := h.store.Lookup(r.Context(), p.Handle); lerr == nil && bytes.Equal(cur.Rotation, leaf) {
			return h.writeRecord(w, r, http.StatusOK, cur)
		}
		return kez.Errorf(kez.CodeNotFound, "\"%s\" is not bound to the old key on %s", p.Handle, h.cfg.Server)
	case errors.Is(err, storage.ErrPrimaryTaken):
		return kez.Errorf(kez.CodePrimaryTaken, "the new key is already bound to a handle")
	case err != nil:
		return err
	}
	h.hub.End(p.Handle)
	return h.writeRecord(w, r, http.StatusOK, rec)
}

// deleteAccount serves POST /v1/delete (SPEC §2.10): the binding ends, the
// inbox and contact lists go, and the handle is held for HandleCooldown.
func (h *Handler) deleteAccount(w http.ResponseWriter, r *http.Request) error {
	body, err := h.readChange(w, r)
	if err != nil {
		return err
	}
	del, p, err := kez.VerifyDeletion(body, h.changePolicy())
	if err != nil {
		return err
	}
	index, err := h.store.Delete(r.Context(), p.Handle, p.Primary, del.JCS(), h.cfg.Now().Add(h.cfg.HandleCooldown))
	if errors.Is(err, storage.ErrNotFound) {
		return kez.Errorf(kez.CodeNotFound, "\"%s\" is not bound to this key on %s", p.Handle, h.cfg.Server)
	}
	if err != nil {
		return err
	}
	h.hub.End(p.Handle)
	proof, err := h.proveLeaf(r.Context(), index)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct {
		Handle  string    `json:"handle"`
		Deleted bool      `json:"deleted"`
		Log     *logProof `json:"log"`
	}{p.Handle, true, proof})
	return nil
}

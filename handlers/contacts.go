package handlers

import (
	"encoding/json"
	"net/http"

	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage"
)

// contacts answers GET /v1/inbox/<handle>/contacts (SPEC §2.9).
func (h *Handler) contacts(w http.ResponseWriter, r *http.Request, arg string) {
	_, query, _, err := kez.ParseQuery(r.URL.RawQuery, false)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	rec, ok := h.authorizeOwner(w, r, arg, http.StatusUnauthorized, func(handle string) signedRequest {
		return ownerRequest(r, handle, "/contacts", query)
	})
	if !ok {
		return
	}
	c, err := h.store.Contacts(r.Context(), rec.Handle)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := struct {
		Accepted []string `json:"accepted"`
		Blocked  []string `json:"blocked"`
	}{c.Accepted, c.Blocked}
	if out.Accepted == nil {
		out.Accepted = []string{}
	}
	if out.Blocked == nil {
		out.Blocked = []string{}
	}
	body, _ := json.Marshal(out) // primaries: nothing to escape
	writeRaw(w, http.StatusOK, "application/json; charset=utf-8", body)
}

// setContact serves PUT and DELETE on /v1/inbox/<handle>/<list>/<primary>,
// list being "contacts" or "blocked" (SPEC §2.9).
func (h *Handler) setContact(arg, list, primary string, state storage.ContactState) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, query, _, err := kez.ParseQuery(r.URL.RawQuery, false)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		if !kez.WellFormedPrimary(primary) {
			writeError(w, http.StatusBadRequest, kez.CodeBadRequest, "the last path segment must be a primary (ed25519:<64 lowercase hex>)")
			return
		}
		if !h.readNoBody(w, r) {
			return
		}
		rec, ok := h.authorizeOwner(w, r, arg, http.StatusUnauthorized, func(handle string) signedRequest {
			return ownerRequest(r, handle, "/"+list+"/"+primary, query)
		})
		if !ok {
			return
		}
		if err := h.store.SetContact(r.Context(), rec.Handle, primary, state); err != nil {
			h.fail(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

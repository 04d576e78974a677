package handlers

import (
	"encoding/json"
	"net/http"

	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage"
)

// contacts answers GET /v1/inbox/<handle>/contacts (SPEC §2.9).
func (h *Handler) contacts(w http.ResponseWriter, r *http.Request, arg string) error {
	_, query, _, err := kez.ParseQuery(r.URL.RawQuery, false)
	if err != nil {
		return err
	}
	rec, err := h.authorizeOwner(r, arg, kez.CodeUnauthorized, func(handle string) signedRequest {
		return ownerRequest(r, handle, "/contacts", query)
	})
	if err != nil {
		return err
	}
	c, err := h.store.Contacts(r.Context(), rec.Handle)
	if err != nil {
		return err
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
	return nil
}

// setContact serves PUT and DELETE on /v1/inbox/<handle>/<list>/<primary>,
// list being "contacts" or "blocked" (SPEC §2.9).
func (h *Handler) setContact(arg, list, primary string, state storage.ContactState) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		_, query, _, err := kez.ParseQuery(r.URL.RawQuery, false)
		if err != nil {
			return err
		}
		if !kez.WellFormedPrimary(primary) {
			return kez.Errorf(kez.CodeBadRequest, "the last path segment must be a primary (ed25519:<64 lowercase hex>)")
		}
		if err := h.noBody(w, r); err != nil {
			return err
		}
		rec, err := h.authorizeOwner(r, arg, kez.CodeUnauthorized, func(handle string) signedRequest {
			return ownerRequest(r, handle, "/"+list+"/"+primary, query)
		})
		if err != nil {
			return err
		}
		if err := h.store.SetContact(r.Context(), rec.Handle, primary, state); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

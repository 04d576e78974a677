package handlers

import (
	"net/http"

	"github.com/kezchat/kez/federation"
)

// federationInfo answers GET /v1/federation (SPEC §8): the policy, and the
// map of server names to API bases the operator configured, which the web
// client needs to reach those servers as this one does.
func (h *Handler) federationInfo(w http.ResponseWriter, r *http.Request) error {
	if err := noQuery(r); err != nil {
		return err
	}
	policy, resolve := federation.Off, map[string]string{}
	if fed := h.cfg.Federation; fed != nil {
		policy, resolve = fed.Policy().Name(), fed.Resolve()
	}
	writeJSON(w, http.StatusOK, map[string]any{"policy": policy, "resolve": resolve})
	return nil
}

package handlers

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage"
)

// maxRegistrationBody bounds POST /v1/register; a real one is about 400 bytes.
const maxRegistrationBody = 16 << 10

// record is the handle record of SPEC §2.3 with the proof of its log leaf
// (§5) and, when the key came by rotation, the latest rotation (§2.10).
type record struct {
	Handle       string          `json:"handle"`
	Server       string          `json:"server"`
	Address      string          `json:"address"`
	Primary      string          `json:"primary"`
	RegisteredAt int64           `json:"registered_at"`
	Registration json.RawMessage `json:"registration"`
	Rotation     json.RawMessage `json:"rotation,omitempty"`
	Log          *logProof       `json:"log"`
}

// writeRecord answers with rec and the inclusion proof of its log leaf in
// the latest checkpoint.
func (h *Handler) writeRecord(w http.ResponseWriter, r *http.Request, status int, rec storage.Record) {
	proof, err := h.proveLeaf(r.Context(), rec.LogIndex)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, status, record{Handle: rec.Handle, Server: h.cfg.Server, Address: kez.Address(rec.Handle, h.cfg.Server),
		Primary: rec.Primary, RegisteredAt: rec.RegisteredAt, Registration: rec.Registration, Rotation: rec.Rotation, Log: proof})
}

func (h *Handler) healthz(w http.ResponseWriter, r *http.Request) {
	resp := map[string]any{"server": h.cfg.Server, "status": "ok", "version": h.cfg.Version, "protocol": 2}
	if _, vkey, err := h.logSigner(r.Context()); err == nil {
		resp["log_key"] = vkey
	}
	status := http.StatusOK
	if err := h.store.Ping(r.Context()); err != nil {
		h.log.Error("health check: storage unreadable", "error", err)
		resp["status"] = "unavailable"
		resp["error"] = errorDetail{Code: kez.CodeUnavailable, Message: "storage cannot be read"}
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, resp)
}

func (h *Handler) register(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Registration == RegistrationClosed {
		writeError(w, http.StatusForbidden, kez.CodeRegistrationClosed, "registration is closed on "+h.cfg.Server)
		return
	}
	if ok, wait := h.registerLimit.allow(limitKey(h.cfg.ClientIP(r)), h.cfg.Now()); !ok {
		h.cfg.Counters.rateLimited("register")
		rateLimited(w, wait, "too many registration attempts from your address")
		return
	}
	in, ok := h.readJSONBody(w, r, maxRegistrationBody, func() {
		closeAfter(w)
		writeError(w, http.StatusBadRequest, kez.CodeBadRequest, "registration body is larger than 16 KiB")
	})
	if !ok {
		return
	}
	body := in.data
	now := h.cfg.Now()
	reg, payload, err := kez.VerifyRegistration(body, kez.RegistrationPolicy{
		Server: h.cfg.Server, Now: now, Skew: h.cfg.RegisterSkew, Reserved: h.cfg.Reserved})
	if err != nil {
		// A correctly signed but stale body is still an idempotent retry
		// when exactly this binding exists (SPEC §2.2).
		if reg != nil {
			if rec, lerr := h.store.Lookup(r.Context(), payload.Handle); lerr == nil && rec.Primary == payload.Primary {
				h.writeRecord(w, r, http.StatusOK, rec)
				return
			}
		}
		h.fail(w, r, err)
		return
	}
	invite := ""
	if h.cfg.Registration == RegistrationInvite {
		if invite, err = h.checkInvite(reg.Invite); err != nil {
			h.fail(w, r, err)
			return
		}
	}
	stored, created, err := h.store.Register(r.Context(), storage.Record{
		Handle: payload.Handle, Primary: payload.Primary, RegisteredAt: now.Unix(), Registration: reg.Stored()}, invite)
	switch {
	case errors.Is(err, storage.ErrInviteUsed):
		writeError(w, http.StatusForbidden, kez.CodeInvalidInvite, "this invite has already been used")
	case errors.Is(err, storage.ErrHandleTaken):
		writeError(w, http.StatusConflict, kez.CodeHandleTaken, "handle \""+payload.Handle+"\" is already registered")
	case errors.Is(err, storage.ErrPrimaryTaken):
		writeError(w, http.StatusConflict, kez.CodePrimaryTaken, "this primary is already bound to another handle")
	case errors.Is(err, storage.ErrCoolingDown):
		writeError(w, http.StatusConflict, kez.CodeHandleCoolingDown, "handle \""+payload.Handle+"\" was deleted recently and cannot be registered again yet")
	case err != nil:
		h.fail(w, r, err)
	case created:
		h.cfg.Counters.registered()
		h.writeRecord(w, r, http.StatusCreated, stored)
	default:
		h.writeRecord(w, r, http.StatusOK, stored) // the same binding again: an idempotent retry
	}
}

// checkInvite looks token up in the invite file, read on every attempt so
// that an operator adds invites without a reload. It returns the key under
// which the store remembers the token as used: its hash, never the token.
func (h *Handler) checkInvite(token string) (string, error) {
	if token == "" {
		return "", kez.Errorf(kez.CodeInvalidInvite, "registration on %s needs an invite: add \"invite\": \"<token>\" to the body", h.cfg.Server)
	}
	data, err := os.ReadFile(h.cfg.InviteFile)
	if err != nil {
		return "", fmt.Errorf("reading the invite file: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") && subtle.ConstantTimeCompare([]byte(line), []byte(token)) == 1 {
			sum := sha256.Sum256([]byte(token))
			return "sha256:" + hex.EncodeToString(sum[:]), nil
		}
	}
	return "", kez.Errorf(kez.CodeInvalidInvite, "this invite is not valid on %s", h.cfg.Server)
}

// localHandle resolves "alice" or "alice@<this server>" to a valid handle.
// ok is false (with the error written) otherwise: a bad handle is a 400,
// another server is notFound.
func (h *Handler) localHandle(w http.ResponseWriter, s, notFoundCode string) (string, bool) {
	handle, server := kez.SplitAddress(s)
	if strings.Contains(s, "@") && server != h.cfg.Server {
		writeError(w, http.StatusNotFound, notFoundCode, "\""+s+"\" is not on this server ("+h.cfg.Server+")")
		return "", false
	}
	if !kez.ValidHandle(handle) {
		writeError(w, http.StatusBadRequest, kez.CodeInvalidHandle,
			"\""+s+"\" is not a valid handle: 2-32 characters of a-z, 0-9, _ and -, starting with a letter or digit")
		return "", false
	}
	return handle, true
}

func (h *Handler) lookup(w http.ResponseWriter, r *http.Request, arg string) {
	handle, ok := h.localHandle(w, arg, kez.CodeNotFound)
	if !ok {
		return
	}
	rec, err := h.store.Lookup(r.Context(), handle)
	if errors.Is(err, storage.ErrNotFound) {
		writeError(w, http.StatusNotFound, kez.CodeNotFound, "no handle \""+handle+"\" on "+h.cfg.Server)
		return
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.writeRecord(w, r, http.StatusOK, rec)
}

func (h *Handler) lookupPrimary(w http.ResponseWriter, r *http.Request, primary string) {
	if !kez.WellFormedPrimary(primary) {
		writeError(w, http.StatusBadRequest, kez.CodeBadRequest, "primary must be ed25519: followed by 64 lowercase hex digits")
		return
	}
	rec, err := h.store.LookupPrimary(r.Context(), primary)
	if errors.Is(err, storage.ErrNotFound) {
		writeError(w, http.StatusNotFound, kez.CodeNotFound, "no handle is bound to this primary")
		return
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.writeRecord(w, r, http.StatusOK, rec)
}

// webfinger answers RFC 7033 queries for acct:handle@server.
func (h *Handler) webfinger(w http.ResponseWriter, r *http.Request) {
	resource := r.URL.Query().Get("resource")
	handle, host, ok := kez.ParseAcct(resource)
	if !ok {
		writeError(w, http.StatusBadRequest, kez.CodeBadRequest, "resource must be acct:<handle>@<server>")
		return
	}
	if host != h.cfg.Server || !kez.ValidHandle(handle) {
		writeError(w, http.StatusNotFound, kez.CodeNotFound, "no account "+resource+" here")
		return
	}
	rec, err := h.store.Lookup(r.Context(), handle)
	if errors.Is(err, storage.ErrNotFound) {
		writeError(w, http.StatusNotFound, kez.CodeNotFound, "no account "+resource+" here")
		return
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	href := h.cfg.PublicURL + "/v1/u/" + rec.Handle
	jrd := map[string]any{
		"subject":    "acct:" + kez.Address(rec.Handle, h.cfg.Server),
		"aliases":    []string{href},
		"properties": map[string]string{"urn:kez:primary": rec.Primary},
		"links":      []map[string]string{{"rel": "urn:kez:chat", "type": "application/json", "href": href}},
	}
	body, _ := json.Marshal(jrd)
	writeRaw(w, http.StatusOK, "application/jrd+json", body)
}

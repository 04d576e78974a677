package handlers

import (
	"context"
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
func (h *Handler) writeRecord(w http.ResponseWriter, r *http.Request, status int, rec storage.Record) error {
	proof, err := h.proveLeaf(r.Context(), rec.LogIndex)
	if err != nil {
		return err
	}
	writeJSON(w, status, record{Handle: rec.Handle, Server: h.cfg.Server, Address: kez.Address(rec.Handle, h.cfg.Server),
		Primary: rec.Primary, RegisteredAt: rec.RegisteredAt, Registration: rec.Registration, Rotation: rec.Rotation, Log: proof})
	return nil
}

func (h *Handler) healthz(w http.ResponseWriter, r *http.Request) error {
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
	return nil
}

func (h *Handler) register(w http.ResponseWriter, r *http.Request) error {
	if h.cfg.Registration == RegistrationClosed {
		return kez.Errorf(kez.CodeRegistrationClosed, "registration is closed on %s", h.cfg.Server)
	}
	if ok, wait := h.registerLimit.allow(limitKey(h.cfg.ClientIP(r)), h.cfg.Now()); !ok {
		h.cfg.Counters.rateLimited("register")
		return tooMany(wait, "too many registration attempts from your address")
	}
	in, err := h.readBody(w, r, maxRegistrationBody, kez.Errorf(kez.CodeBadRequest, "registration body is larger than 16 KiB"))
	if err != nil {
		return err
	}
	now := h.cfg.Now()
	reg, payload, err := kez.VerifyRegistration(in.data, kez.RegistrationPolicy{
		Server: h.cfg.Server, Now: now, Skew: h.cfg.RegisterSkew, Reserved: h.cfg.Reserved})
	if err != nil {
		// A correctly signed but stale body is still an idempotent retry
		// when exactly this binding exists (SPEC §2.2).
		if reg != nil {
			if rec, lerr := h.store.Lookup(r.Context(), payload.Handle); lerr == nil && rec.Primary == payload.Primary {
				return h.writeRecord(w, r, http.StatusOK, rec)
			}
		}
		return err
	}
	invite := ""
	if h.cfg.Registration == RegistrationInvite {
		if invite, err = h.checkInvite(reg.Invite); err != nil {
			return err
		}
	}
	stored, created, err := h.store.Register(r.Context(), storage.Record{
		Handle: payload.Handle, Primary: payload.Primary, RegisteredAt: now.Unix(), Registration: reg.Stored()}, invite)
	switch {
	case errors.Is(err, storage.ErrHandleTaken):
		return kez.Errorf(kez.CodeHandleTaken, "handle \"%s\" is already registered", payload.Handle)
	case errors.Is(err, storage.ErrCoolingDown):
		return kez.Errorf(kez.CodeHandleCoolingDown, "handle \"%s\" was deleted recently and cannot be registered again yet", payload.Handle)
	case err != nil:
		return err
	case created:
		h.cfg.Counters.registered()
		return h.writeRecord(w, r, http.StatusCreated, stored)
	default:
		return h.writeRecord(w, r, http.StatusOK, stored) // the same binding again: an idempotent retry
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

// resolveHandle resolves "alice" or "alice@<this server>" to a valid
// handle. A bad handle is invalid_handle, another server's is
// notFoundCode (not_found or unknown_recipient).
func (h *Handler) resolveHandle(s, notFoundCode string) (string, error) {
	handle, server := kez.SplitAddress(s)
	if strings.Contains(s, "@") && server != h.cfg.Server {
		return "", kez.Errorf(notFoundCode, "\"%s\" is not on this server (%s)", s, h.cfg.Server)
	}
	if !kez.ValidHandle(handle) {
		return "", kez.Errorf(kez.CodeInvalidHandle,
			"\"%s\" is not a valid handle: 2-32 characters of a-z, 0-9, _ and -, starting with a letter or digit", s)
	}
	return handle, nil
}

// noHandle is the error for a handle nobody holds here: code is not_found,
// or unknown_recipient for a send.
func (h *Handler) noHandle(handle, code string) *kez.Error {
	return kez.Errorf(code, "no handle \"%s\" on %s", handle, h.cfg.Server)
}

// lookupHandle is the record of handle, or noHandle's error when there is none.
func (h *Handler) lookupHandle(ctx context.Context, handle, notFoundCode string) (storage.Record, error) {
	rec, err := h.store.Lookup(ctx, handle)
	if errors.Is(err, storage.ErrNotFound) {
		err = h.noHandle(handle, notFoundCode)
	}
	return rec, err
}

func (h *Handler) lookup(w http.ResponseWriter, r *http.Request, arg string) error {
	handle, err := h.resolveHandle(arg, kez.CodeNotFound)
	if err != nil {
		return err
	}
	rec, err := h.lookupHandle(r.Context(), handle, kez.CodeNotFound)
	if err != nil {
		return err
	}
	return h.writeRecord(w, r, http.StatusOK, rec)
}

func (h *Handler) lookupPrimary(w http.ResponseWriter, r *http.Request, primary string) error {
	if !kez.WellFormedPrimary(primary) {
		return kez.Errorf(kez.CodeBadRequest, "primary must be ed25519: followed by 64 lowercase hex digits")
	}
	rec, err := h.store.LookupPrimary(r.Context(), primary)
	if errors.Is(err, storage.ErrNotFound) {
		return kez.Errorf(kez.CodeNotFound, "no handle is bound to this primary")
	}
	if err != nil {
		return err
	}
	return h.writeRecord(w, r, http.StatusOK, rec)
}

// webfinger answers RFC 7033 queries for acct:handle@server.
func (h *Handler) webfinger(w http.ResponseWriter, r *http.Request) error {
	resource := r.URL.Query().Get("resource")
	handle, host, ok := kez.ParseAcct(resource)
	if !ok {
		return kez.Errorf(kez.CodeBadRequest, "resource must be acct:<handle>@<server>")
	}
	noAccount := kez.Errorf(kez.CodeNotFound, "no account %s here", resource)
	if host != h.cfg.Server || !kez.ValidHandle(handle) {
		return noAccount
	}
	rec, err := h.store.Lookup(r.Context(), handle)
	if errors.Is(err, storage.ErrNotFound) {
		return noAccount
	}
	if err != nil {
		return err
	}
	href := h.cfg.PublicURL + "/v1/u/" + rec.Handle
	jrd := map[string]any{
		"subject":    "acct:" + kez.Address(rec.Handle, h.cfg.Server),
		"aliases":    []string{href},
		"properties": map[string]string{"urn:kez:primary": rec.Primary},
		"links": []map[string]string{
			{"rel": "urn:kez:chat", "type": "application/json", "href": href},
			{"rel": "urn:kez:api", "href": h.cfg.PublicURL}, // the API base of SPEC §8
		},
	}
	body, _ := json.Marshal(jrd)
	writeRaw(w, http.StatusOK, "application/jrd+json", body)
	return nil
}

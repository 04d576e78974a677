package handlers

import (
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"net/http"
	"time"

	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage"
)

// errSignatureUsed answers a signature the server has accepted before.
var errSignatureUsed = kez.Errorf(kez.CodeUnauthorized, "signature already used: sign every request afresh (SPEC §2.0)")

// storedKey is the public key of a primary the store holds. It was checked
// as a curve point of large order when it was registered, so it is only
// decoded here, not validated again on every request.
func storedKey(primary string) (ed25519.PublicKey, error) {
	if !kez.WellFormedPrimary(primary) {
		return nil, errors.New("stored primary is malformed")
	}
	pub, err := hex.DecodeString(primary[len(kez.PrimaryPrefix):])
	return ed25519.PublicKey(pub), err
}

// signedRequest is a v2 request to authenticate: what the signature covers
// besides the server name (SPEC §2.0).
type signedRequest struct {
	method, path, query, bodyHash string
	auth                          string // the X-KEZ-Auth value (or a stream's ?auth=)
}

// verify checks req's signature by primary and, when once is set, records
// it as used: a second use is refused. Sends pass once=false, because a
// resent envelope is answered by its stored receipt instead (SPEC §2.5).
func (h *Handler) verify(r *http.Request, primary string, req signedRequest, once bool) error {
	pub, err := storedKey(primary)
	if err != nil {
		return err
	}
	kr := kez.Request{Server: h.cfg.Server, Method: req.method, Path: req.path, Query: req.query, BodyHash: req.bodyHash}
	ts, msg, err := kr.VerifyWith(h.auth, pub, req.auth, h.cfg.Now(), h.cfg.AuthSkew)
	if err != nil || !once {
		return err
	}
	// Remember it until its timestamp can no longer pass the skew check.
	until := time.Unix(ts, 0).Add(h.cfg.AuthSkew + time.Second)
	fresh, err := h.store.Once(r.Context(), kez.OnceKey(msg), until)
	if err != nil {
		return err
	}
	if !fresh {
		return errSignatureUsed
	}
	return nil
}

// authorizeOwner resolves the path handle to its record and checks that
// req is signed by its current primary, once. A missing signature is
// missingCode: unauthorized, or for streams missing_auth.
func (h *Handler) authorizeOwner(r *http.Request, arg, missingCode string, build func(handle string) signedRequest) (storage.Record, error) {
	handle, err := h.resolveHandle(arg, kez.CodeNotFound)
	if err != nil {
		return storage.Record{}, err
	}
	req := build(handle)
	if req.auth == "" {
		return storage.Record{}, kez.Errorf(missingCode, "authentication required: X-KEZ-Auth: <unix_ts>:<signature hex> (SPEC §2.0)")
	}
	rec, err := h.lookupHandle(r.Context(), handle, kez.CodeNotFound)
	if err != nil {
		return storage.Record{}, err
	}
	if err := h.verify(r, rec.Primary, req, true); err != nil {
		return storage.Record{}, err
	}
	return rec, nil
}

// ownerRequest builds the signedRequest of an inbox owner's request whose
// path is /v1/inbox/<handle><suffix>.
func ownerRequest(r *http.Request, handle, suffix, query string) signedRequest {
	return signedRequest{method: r.Method, path: "/v1/inbox/" + handle + suffix, query: query, auth: r.Header.Get("X-KEZ-Auth")}
}

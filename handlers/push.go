package handlers

import (
	"bytes"
	"errors"
	"net/http"
	"strings"

	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/push"
	"github.com/kezchat/kez/storage"
)

// maxPushBody bounds a subscription body: an endpoint of at most
// push.MaxEndpoint bytes and two short keys.
const maxPushBody = 4 << 10

// pushRoute routes the Web Push paths (SPEC §7): GET /v1/push/key and
// PUT or DELETE /v1/inbox/<handle>/push. With push off they are unknown
// paths (nil here).
func (h *Handler) pushRoute(p string) http.Handler {
	if h.cfg.Push == nil {
		return nil
	}
	if p == "/v1/push/key" {
		return h.methods(map[string]http.HandlerFunc{"GET": h.serve(h.pushKey)})
	}
	rest, ok := strings.CutPrefix(p, "/v1/inbox/")
	if !ok {
		return nil
	}
	handle, ok := strings.CutSuffix(rest, "/push")
	if !ok || !isSegment(handle) {
		return nil
	}
	return h.methods(map[string]http.HandlerFunc{
		"PUT":    h.serveArg(handle, h.putPush),
		"DELETE": h.serveArg(handle, h.deletePush),
	})
}

func (h *Handler) pushKey(w http.ResponseWriter, r *http.Request) error {
	if _, _, _, err := kez.ParseQuery(r.URL.RawQuery, false); err != nil {
		return err
	}
	key, err := h.cfg.Push.PublicKey(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"key": key})
	return nil
}

// putPush registers a browser's PushSubscription for the handle.
func (h *Handler) putPush(w http.ResponseWriter, r *http.Request, arg string) error {
	rec, data, err := h.pushRequest(w, r, arg)
	if err != nil {
		return err
	}
	sub, err := parseSubscription(data, h.cfg.Push.AllowPrivate())
	if err != nil {
		return err
	}
	sub.Created = h.cfg.Now().UnixMilli()
	if err := h.store.PutPush(r.Context(), rec.Handle, sub, push.MaxSubscriptions); err != nil {
		return h.pushStoreErr(rec.Handle, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// deletePush removes one subscription, by endpoint. Removing one that is
// not there is no error: the client's aim is reached.
func (h *Handler) deletePush(w http.ResponseWriter, r *http.Request, arg string) error {
	rec, data, err := h.pushRequest(w, r, arg)
	if err != nil {
		return err
	}
	members, err := kez.ExactMembers(data, []string{"endpoint"}, nil)
	if err != nil {
		return kez.Errorf(kez.CodeBadRequest, "body must be {\"endpoint\":\"…\"}: %v", err)
	}
	endpoint, err := jsonText(members["endpoint"], "endpoint")
	if err != nil {
		return err
	}
	if _, err := h.store.DeletePush(r.Context(), rec.Handle, endpoint); err != nil {
		return h.pushStoreErr(rec.Handle, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// pushRequest reads and authenticates a PUT or DELETE on …/push: no query,
// a JSON body of at most maxPushBody bytes, signed by the handle's key.
func (h *Handler) pushRequest(w http.ResponseWriter, r *http.Request, arg string) (storage.Record, []byte, error) {
	_, query, _, err := kez.ParseQuery(r.URL.RawQuery, false)
	if err != nil {
		return storage.Record{}, nil, err
	}
	b, err := h.readBody(w, r, maxPushBody, kez.Errorf(kez.CodeBadRequest, "body is larger than 4 KiB"))
	if err != nil {
		return storage.Record{}, nil, err
	}
	if len(b.data) == 0 {
		return storage.Record{}, nil, kez.Errorf(kez.CodeBadRequest, "a JSON body is required")
	}
	rec, err := h.authorizeOwner(r, arg, kez.CodeUnauthorized, func(handle string) signedRequest {
		req := ownerRequest(r, handle, "/push", query)
		req.bodyHash = b.hash
		return req
	})
	return rec, b.data, err
}

func (h *Handler) pushStoreErr(handle string, err error) error {
	if errors.Is(err, storage.ErrNotFound) {
		return h.noHandle(handle, kez.CodeNotFound)
	}
	return err
}

// parseSubscription reads a PushSubscription's JSON (SPEC §7) with exact
// member names; expirationTime may be there (a number or null) and is
// ignored.
func parseSubscription(data []byte, allowPrivate bool) (storage.PushSubscription, error) {
	bad := func(err error) error {
		return kez.Errorf(kez.CodeBadRequest, "body must be a PushSubscription {\"endpoint\":…,\"keys\":{\"p256dh\":…,\"auth\":…}}: %v", err)
	}
	members, err := kez.ExactMembers(data, []string{"endpoint", "keys"}, []string{"expirationTime"})
	if err != nil {
		return storage.PushSubscription{}, bad(err)
	}
	if exp, ok := members["expirationTime"]; ok && !isNumberOrNull(exp) {
		return storage.PushSubscription{}, bad(errors.New("expirationTime must be a number or null"))
	}
	keys, err := kez.ExactMembers(members["keys"], []string{"p256dh", "auth"}, nil)
	if err != nil {
		return storage.PushSubscription{}, bad(errors.New("keys: " + err.Error()))
	}
	var sub storage.PushSubscription
	for dst, v := range map[*string]struct {
		name string
		raw  []byte
	}{&sub.Endpoint: {"endpoint", members["endpoint"]}, &sub.P256dh: {"keys.p256dh", keys["p256dh"]}, &sub.Auth: {"keys.auth", keys["auth"]}} {
		if *dst, err = jsonText(v.raw, v.name); err != nil {
			return storage.PushSubscription{}, err
		}
	}
	if err := push.CheckSubscription(sub, allowPrivate); err != nil {
		return storage.PushSubscription{}, bad(err)
	}
	return sub, nil
}

// jsonText is a checked JSON string member's text.
func jsonText(raw []byte, name string) (string, error) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", kez.Errorf(kez.CodeBadRequest, "%s must be a string", name)
	}
	return jsonString(raw), nil
}

func isNumberOrNull(raw []byte) bool {
	raw = bytes.TrimSpace(raw)
	return string(raw) == "null" || len(raw) > 0 && (raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9')
}

// notifyPush tells the push sender of a message stored for handle, once
// its 201 is written; message requests do not push (SPEC §7: a stranger
// cannot wake your phone). Only the server that stored the message calls
// this, so with several servers on one backend each device gets one push.
func (h *Handler) notifyPush(handle string, m storage.Message, fresh bool) {
	if h.cfg.Push != nil && fresh && !m.Request {
		h.cfg.Push.Notify(handle, m.Seq)
	}
}

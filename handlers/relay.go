package handlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/kezchat/kez/hub"
	"github.com/kezchat/kez/kez"
	"github.com/kezchat/kez/storage"
)

// sendOverhead is what POST /v1/messages may carry besides the envelope.
const sendOverhead = 4 << 10

const (
	defaultPageLimit = 100
	maxPageLimit     = 500
)

// EncodeMessage renders the message object of SPEC §2.6 by hand: the stored
// envelope is already compact JSON, so it is copied, never re-parsed.
func EncodeMessage(m storage.Message) []byte {
	b := make([]byte, 0, len(m.Envelope)+64)
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, m.Seq, 10)
	b = append(b, `,"envelope":`...)
	b = append(b, m.Envelope...)
	b = append(b, `,"received_at":`...)
	b = strconv.AppendInt(b, m.ReceivedAt, 10)
	return append(b, '}')
}

// HubNotifier is the storage.Notify that feeds a hub: each durable append
// becomes an event, encoded once for all of the handle's subscribers.
func HubNotifier(hb *hub.Hub) storage.Notify {
	return func(handle string, m storage.Message) {
		if hb.Subscribers(handle) == 0 {
			return
		}
		hb.Publish(handle, hub.Event{Seq: m.Seq, Data: EncodeMessage(m)})
	}
}

// jsonString decodes a checked JSON string literal ("" when absent).
func jsonString(lit []byte) string {
	if len(lit) < 2 {
		return ""
	}
	if bytes.IndexByte(lit, '\\') < 0 {
		return string(lit[1 : len(lit)-1])
	}
	var s string
	_ = json.Unmarshal(lit, &s) // checked by the scan
	return s
}

func (h *Handler) send(w http.ResponseWriter, r *http.Request) {
	if ok, wait := h.sendLimit.allow(limitKey(h.cfg.ClientIP(r)), h.cfg.Now()); !ok {
		h.cfg.Counters.rateLimited("send")
		rateLimited(w, wait, "too many messages from your address")
		return
	}
	body, tooBig, err := readBody(w, r, h.cfg.MaxEnvelope+sendOverhead)
	if tooBig {
		writeError(w, http.StatusRequestEntityTooLarge, kez.CodeEnvelopeTooLarge,
			"envelope is larger than "+strconv.FormatInt(h.cfg.MaxEnvelope, 10)+" bytes")
		return
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, kez.CodeBadRequest, "could not read the body")
		return
	}
	// One strict pass over the body finds both members; nothing is decoded.
	var to, envelope []byte
	compact := false
	err = kez.ScanStrictObject(body, func(key string, value []byte, isCompact bool) error {
		switch key {
		case "to":
			if value[0] != '"' {
				return errors.New(`"to" must be a string`)
			}
			to = value
		case "envelope":
			envelope, compact = value, isCompact
		default:
			return fmt.Errorf("unknown field %q", key)
		}
		return nil
	})
	if err != nil {
		writeError(w, http.StatusBadRequest, kez.CodeBadRequest, "body must be {\"to\":..., \"envelope\":{...}}: "+err.Error())
		return
	}
	if len(envelope) == 0 || envelope[0] != '{' {
		writeError(w, http.StatusBadRequest, kez.CodeBadRequest, "envelope must be a JSON object")
		return
	}
	if int64(len(envelope)) > h.cfg.MaxEnvelope {
		writeError(w, http.StatusRequestEntityTooLarge, kez.CodeEnvelopeTooLarge,
			"envelope is larger than "+strconv.FormatInt(h.cfg.MaxEnvelope, 10)+" bytes")
		return
	}
	recipient := jsonString(to)
	if recipient == "" {
		writeError(w, http.StatusBadRequest, kez.CodeBadRequest, "\"to\" is required")
		return
	}
	handle, ok := h.localHandle(w, recipient, kez.CodeUnknownRecipient)
	if !ok {
		return
	}
	// Stored compact: one line, so it can go into an SSE data field as is.
	// Clients send it compact already; then it is stored as it came.
	if !compact {
		var buf bytes.Buffer
		buf.Grow(len(envelope))
		if err := json.Compact(&buf, envelope); err != nil {
			h.fail(w, r, err) // unreachable: the scan accepted it
			return
		}
		envelope = buf.Bytes()
	}
	m, err := h.store.Append(r.Context(), handle, envelope, h.cfg.MaxInbox)
	if errors.Is(err, storage.ErrNotFound) {
		writeError(w, http.StatusNotFound, kez.CodeUnknownRecipient, "no handle \""+handle+"\" on "+h.cfg.Server)
		return
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.cfg.Counters.messageAccepted(len(m.Envelope))
	out := make([]byte, 0, 96)
	out = append(out, `{"seq":`...)
	out = strconv.AppendUint(out, m.Seq, 10)
	out = append(out, `,"to":"`...)
	out = append(out, handle...) // a valid handle needs no escaping
	out = append(out, `","received_at":`...)
	out = strconv.AppendInt(out, m.ReceivedAt, 10)
	out = append(out, '}')
	writeRaw(w, http.StatusCreated, "application/json; charset=utf-8", out)
}

// parseCursor reads a non-negative decimal query parameter; absent means def.
func parseCursor(r *http.Request, name string, def uint64) (uint64, *kez.Error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.ParseUint(s, 10, 63)
	if err != nil || s[0] == '+' {
		return 0, kez.Errorf(kez.CodeBadRequest, "%s must be a non-negative integer below 2^63, got %q", name, s)
	}
	return n, nil
}

// authorize resolves the path handle and checks its request signature.
// msgFor builds the signed string for a timestamp. It writes the error and
// returns ok=false on failure.
func (h *Handler) authorize(w http.ResponseWriter, r *http.Request, arg, auth string, missingStatus int, msgFor func(handle string, ts int64) string) (string, bool) {
	handle, ok := h.localHandle(w, arg, kez.CodeNotFound)
	if !ok {
		return "", false
	}
	if auth == "" {
		code := kez.CodeUnauthorized
		if missingStatus == http.StatusBadRequest {
			code = kez.CodeMissingAuth
		}
		writeError(w, missingStatus, code, "authentication required: X-KEZ-Auth: <unix_ts>:<signature hex>")
		return "", false
	}
	rec, err := h.store.Lookup(r.Context(), handle)
	if errors.Is(err, storage.ErrNotFound) {
		writeError(w, http.StatusNotFound, kez.CodeNotFound, "no handle \""+handle+"\" on "+h.cfg.Server)
		return "", false
	}
	if err != nil {
		h.fail(w, r, err)
		return "", false
	}
	pub, err := kez.ParsePrimary(rec.Primary)
	if err != nil {
		h.fail(w, r, err)
		return "", false
	}
	msg := func(ts int64) string { return msgFor(handle, ts) }
	if err := kez.VerifyAuth(pub, auth, msg, h.cfg.Now(), h.cfg.AuthSkew); err != nil {
		h.fail(w, r, err)
		return "", false
	}
	return handle, true
}

func (h *Handler) inbox(w http.ResponseWriter, r *http.Request, arg string) {
	since, kerr := parseCursor(r, "since", 0)
	if kerr != nil {
		writeKezError(w, kerr)
		return
	}
	limit := defaultPageLimit
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			writeError(w, http.StatusBadRequest, kez.CodeBadRequest, "limit must be a positive integer, got \""+s+"\"")
			return
		}
		limit = min(n, maxPageLimit)
	}
	handle, ok := h.authorize(w, r, arg, r.Header.Get("X-KEZ-Auth"), http.StatusUnauthorized,
		func(handle string, ts int64) string { return kez.InboxAuthMessage(handle, since, ts) })
	if !ok {
		return
	}
	msgs, more, err := h.readPage(r, handle, since, limit)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	next := since
	size := 64
	for _, m := range msgs {
		size += len(m.Envelope) + 64
	}
	out := make([]byte, 0, size)
	out = append(out, `{"messages":[`...)
	for i, m := range msgs {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, EncodeMessage(m)...)
		next = m.Seq
	}
	out = append(out, `],"next_since":`...)
	out = strconv.AppendUint(out, next, 10)
	out = append(out, `,"more":`...)
	out = strconv.AppendBool(out, more)
	out = append(out, '}')
	writeRaw(w, http.StatusOK, "application/json; charset=utf-8", out)
}

// pageBytes bounds the envelope bytes one inbox page (or one backlog step
// of a stream) holds in memory; a page ends early with more=true.
const pageBytes = 4 << 20

// readPage reads up to limit messages after since, in small storage reads,
// stopping once pageBytes of envelopes are gathered (always at least one
// message), so a page of large envelopes never costs more than a few MiB.
func (h *Handler) readPage(r *http.Request, handle string, since uint64, limit int) ([]storage.Message, bool, error) {
	var msgs []storage.Message
	size := 0
	for len(msgs) < limit {
		// Read no more than the rest of the budget could hold at the largest
		// envelope size: a page ends within one envelope of pageBytes.
		chunk := int(max(1, min(16, int64(pageBytes-size)/h.cfg.MaxEnvelope)))
		got, more, err := h.store.Read(r.Context(), handle, since, min(chunk, limit-len(msgs)))
		if err != nil {
			return nil, false, err
		}
		msgs = append(msgs, got...)
		for _, m := range got {
			size += len(m.Envelope)
		}
		if !more || len(got) == 0 {
			return msgs, false, nil
		}
		since = got[len(got)-1].Seq
		if size >= pageBytes {
			break
		}
	}
	return msgs, true, nil
}

func (h *Handler) ack(w http.ResponseWriter, r *http.Request, arg string) {
	if r.URL.Query().Get("upto") == "" {
		writeError(w, http.StatusBadRequest, kez.CodeBadRequest, "upto is required: DELETE /v1/inbox/<handle>?upto=<seq>")
		return
	}
	upto, kerr := parseCursor(r, "upto", 0)
	if kerr != nil {
		writeKezError(w, kerr)
		return
	}
	handle, ok := h.authorize(w, r, arg, r.Header.Get("X-KEZ-Auth"), http.StatusUnauthorized,
		func(handle string, ts int64) string { return kez.AckAuthMessage(handle, upto, ts) })
	if !ok {
		return
	}
	n, err := h.store.Ack(r.Context(), handle, upto)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"deleted": n})
}

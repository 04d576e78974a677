package handlers

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/kezchat/kez/federation"
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

// EncodeMessage renders the message object of SPEC §2.5 by hand: the stored
// envelope is already compact JSON, so it is copied, never re-parsed.
// from is a primary and from_addr an address: neither needs escaping.
func EncodeMessage(m storage.Message) []byte {
	b := make([]byte, 0, len(m.Envelope)+len(m.From)+len(m.FromAddr)+96)
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, m.Seq, 10)
	b = append(b, `,"from":"`...)
	b = append(b, m.From...)
	b = append(b, '"')
	if m.FromAddr != "" {
		b = append(b, `,"from_addr":"`...)
		b = append(b, m.FromAddr...)
		b = append(b, '"')
	}
	b = append(b, `,"request":`...)
	b = strconv.AppendBool(b, m.Request)
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

func (h *Handler) send(w http.ResponseWriter, r *http.Request) error {
	if ok, wait := h.sendLimit.allow(limitKey(h.cfg.ClientIP(r)), h.cfg.Now()); !ok {
		h.cfg.Counters.rateLimited("send")
		return tooMany(wait, "too many messages from your address")
	}
	if r.URL.RawQuery != "" { // sends take no query; "" passes without building a map
		if _, _, _, err := kez.ParseQuery(r.URL.RawQuery, false); err != nil {
			return err
		}
	}
	if err := checkContentType(r); err != nil {
		return err
	}
	auth := r.Header.Get("X-KEZ-Auth")
	if auth == "" {
		return kez.Errorf(kez.CodeUnauthorized, "authentication required: sends are signed by the sender (X-KEZ-Auth, SPEC §2.0)")
	}
	b, err := h.readBody(w, r, h.cfg.MaxEnvelope+sendOverhead, h.errTooLarge())
	if err != nil {
		return err
	}
	in, err := parseSend(b.data, h.cfg.MaxEnvelope)
	if err != nil {
		return err
	}
	handle, err := h.resolveHandle(in.to, kez.CodeUnknownRecipient)
	if err != nil {
		return err
	}
	if !kez.WellFormedPrimary(in.header.From) {
		return kez.Errorf(kez.CodeBadRequest, "envelope.from must be a primary (ed25519:<64 lowercase hex>)")
	}
	// The recipient first: nothing is fetched for a message nobody here would get.
	recipient, err := h.lookupHandle(r.Context(), handle, kez.CodeUnknownRecipient)
	if err != nil {
		return err
	}
	if in.header.To != recipient.Primary {
		return kez.Errorf(kez.CodeBadRequest, "envelope.to is not %s's current primary; look it up again", handle)
	}
	signed := signedRequest{method: "POST", path: "/v1/messages", bodyHash: b.hash, auth: auth}
	var from sender
	if _, server := kez.SplitAddress(in.fromAddr); in.fromAddr != "" && server != h.cfg.Server {
		from, err = h.remoteSender(r, in, signed)
	} else {
		from, err = h.localSender(r, in, signed)
	}
	if err != nil {
		return err
	}
	m, fresh, err := h.store.Append(r.Context(), storage.Delivery{
		To: handle, From: from.primary, FromAddr: from.addr, Sig: in.idempotencyKey(), Envelope: in.envelope,
		SenderHandle: from.localHandle, ToPrimary: recipient.Primary,
	}, storage.Limits{MaxInbox: h.cfg.MaxInbox, RequestLimit: h.cfg.RequestLimit, MaxRequests: h.cfg.MaxRequests})
	if errors.Is(err, storage.ErrNotFound) {
		return h.noHandle(handle, kez.CodeUnknownRecipient)
	}
	if err != nil {
		return err
	}
	status := http.StatusOK // the same envelope again: its original receipt
	if fresh {
		status = http.StatusCreated
		h.cfg.Counters.messageAccepted(len(m.Envelope))
	}
	out := make([]byte, 0, 96)
	out = append(out, `{"seq":`...)
	out = strconv.AppendUint(out, m.Seq, 10)
	out = append(out, `,"to":"`...)
	out = append(out, handle...) // a valid handle needs no escaping
	out = append(out, `","received_at":`...)
	out = strconv.AppendInt(out, m.ReceivedAt, 10)
	out = append(out, '}')
	writeRaw(w, status, "application/json; charset=utf-8", out)
	h.notifyPush(handle, m, fresh)
	return nil
}

// sender is who a send comes from, as authenticated.
type sender struct {
	primary     string // envelope.from, the key that signed the request
	addr        string // handle@server, verified
	localHandle string // the sender's handle here; "" for a user of another server
}

// localSender authenticates a user of this server: envelope.from is
// registered here and signed this very request; from_addr, if given, is
// its own address.
func (h *Handler) localSender(r *http.Request, in *sendBody, signed signedRequest) (sender, error) {
	rec, err := h.store.LookupPrimary(r.Context(), in.header.From)
	if errors.Is(err, storage.ErrNotFound) {
		return sender{}, kez.Errorf(kez.CodeUnknownSender, "envelope.from is not a user of %s; a user of another server names itself in from_addr", h.cfg.Server)
	}
	if err != nil {
		return sender{}, err
	}
	if err := h.verify(r, rec.Primary, signed, false); err != nil {
		return sender{}, err
	}
	addr := kez.Address(rec.Handle, h.cfg.Server)
	if in.fromAddr != "" && in.fromAddr != addr {
		return sender{}, kez.Errorf(kez.CodeBadRequest, "from_addr must be your own address, %s", addr)
	}
	if ok, wait := h.senderLimit.allow(rec.Primary, h.cfg.Now()); !ok {
		h.cfg.Counters.rateLimited("sender")
		return sender{}, tooMany(wait, "you are sending too many messages")
	}
	return sender{primary: rec.Primary, addr: addr, localHandle: rec.Handle}, nil
}

// remoteSender authenticates a user of another server (SPEC §8): the
// policy and the fetch rules admit its server (no connection yet), the
// request is signed by envelope.from, the rate limits of the remote
// server and of the key allow it, and only then is the binding of
// from_addr to envelope.from fetched from its server and proven in that
// server's log.
func (h *Handler) remoteSender(r *http.Request, in *sendBody, signed signedRequest) (sender, error) {
	handle, server := kez.SplitAddress(in.fromAddr)
	if !kez.ValidHandle(handle) || !federation.ValidServerName(server) || in.fromAddr != kez.Address(handle, server) {
		return sender{}, kez.Errorf(kez.CodeBadRequest, "from_addr %.100q is not an address <handle>@<server> in lower case", in.fromAddr)
	}
	fed := h.cfg.Federation
	if fed == nil {
		return sender{}, kez.Errorf(kez.CodeFederationRefused, "%s does not accept users of other servers", h.cfg.Server)
	}
	if err := fed.Admit(r.Context(), server); err != nil {
		return sender{}, err
	}
	pub, err := kez.ParsePrimary(in.header.From) // a key no store vouches for: checked in full
	if err != nil {
		return sender{}, kez.Errorf(kez.CodeBadRequest, "envelope.from: %v", err)
	}
	kr := kez.Request{Server: h.cfg.Server, Method: signed.method, Path: signed.path, BodyHash: signed.bodyHash}
	if _, _, err := kr.VerifyWith(h.auth, pub, signed.auth, h.cfg.Now(), h.cfg.AuthSkew); err != nil {
		return sender{}, err
	}
	now := h.cfg.Now()
	if ok, wait := h.federationLimit.allow(server, now); !ok {
		h.cfg.Counters.rateLimited("federation")
		return sender{}, tooMany(wait, "too many messages from users of "+server)
	}
	if ok, wait := h.senderLimit.allow(in.header.From, now); !ok {
		h.cfg.Counters.rateLimited("sender")
		return sender{}, tooMany(wait, "you are sending too many messages")
	}
	if err := fed.VerifySender(r.Context(), handle, server, in.header.From); err != nil {
		var ke *kez.Error
		if errors.As(err, &ke) && ke.Code == kez.CodeSenderUnverifiable {
			return sender{}, &apiError{code: ke.Code, message: ke.Message, retryAfter: unverifiableRetry, cause: err}
		}
		return sender{}, err
	}
	return sender{primary: in.header.From, addr: in.fromAddr}, nil
}

// unverifiableRetry is the Retry-After of sender_unverifiable, in seconds:
// the sender's server may be back soon.
const unverifiableRetry = 30

// sendBody is a parsed POST /v1/messages body.
type sendBody struct {
	to, fromAddr string
	envelope     []byte // compact
	header       kez.EnvelopeHeader
}

// idempotencyKey is what identifies a resend of the same envelope: its
// signature, or for an envelope without one, the hash of its bytes.
func (s *sendBody) idempotencyKey() string {
	if s.header.Sig != "" {
		return s.header.Sig
	}
	sum := sha256.Sum256(s.envelope)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// sendMembers are the members of a send body, required first.
var sendMembers = [...]string{"to", "envelope", "from_addr"}

const requiredSendMembers = 2

// parseSend reads {"to":…,"envelope":{…},"from_addr":…} with exact member
// names (the rules of kez.ExactMembers, with its messages), in one strict
// pass that finds the members without decoding them, then reads the
// envelope's header (kez.ReadEnvelopeHeader's rules and messages). Neither
// allocates for member names that are lower-case ASCII, as they are.
func parseSend(data []byte, maxEnvelope int64) (*sendBody, error) {
	in := &sendBody{}
	var values [len(sendMembers)][]byte
	compact := true
	err := kez.ScanStrictObject(data, func(key string, value []byte, isCompact bool) error {
		i := slices.Index(sendMembers[:], key)
		if i < 0 {
			for _, name := range sendMembers {
				if sameFold(key, name) {
					return fmt.Errorf("member %.40q must be spelled %q", key, name)
				}
			}
			return fmt.Errorf("unknown member %.40q", key)
		}
		values[i] = value // the scan refuses duplicates
		if i == 1 {
			compact = isCompact
		}
		return nil
	})
	if err == nil {
		for i, name := range sendMembers[:requiredSendMembers] {
			if values[i] == nil {
				err = fmt.Errorf("member %q is missing", name)
				break
			}
		}
	}
	if err != nil {
		return nil, kez.Errorf(kez.CodeBadRequest, "body must be {\"to\":…, \"envelope\":{…}}: %v", err)
	}
	for i, dst := range [...]*string{&in.to, nil, &in.fromAddr} {
		if v := values[i]; dst != nil && v != nil {
			if v[0] != '"' {
				return nil, kez.Errorf(kez.CodeBadRequest, "%q must be a string", sendMembers[i])
			}
			*dst = jsonString(v)
		}
	}
	in.envelope = values[1]
	if in.to == "" {
		return nil, kez.Errorf(kez.CodeBadRequest, "\"to\" is required")
	}
	if in.envelope[0] != '{' {
		return nil, kez.Errorf(kez.CodeBadRequest, "envelope must be a JSON object")
	}
	if int64(len(in.envelope)) > maxEnvelope {
		return nil, kez.Errorf(kez.CodeEnvelopeTooLarge, "envelope is larger than %d bytes", maxEnvelope)
	}
	if in.header, err = kez.ReadEnvelopeHeader(in.envelope); err != nil {
		return nil, kez.Errorf(kez.CodeBadRequest, "envelope: %v", err)
	}
	// Stored compact: one line, so it can go into an SSE data field as is.
	// Clients send it compact already; then it is stored as it came.
	if !compact {
		var buf bytes.Buffer
		buf.Grow(len(in.envelope))
		if err := json.Compact(&buf, in.envelope); err != nil {
			return nil, kez.Errorf(kez.CodeBadRequest, "envelope: %v", err) // unreachable: the scan accepted it
		}
		in.envelope = buf.Bytes()
	}
	return in, nil
}

// foldKey is kez's folding of member names: names that Unicode case
// folding treats as equal ("Text", "TEXT", "text"; the Kelvin sign and
// "k"; "ſ" and "s"; "ı" and "i") map to one key. A lower-case ASCII name
// is its own key, with no allocation.
func foldKey(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= utf8.RuneSelf || 'A' <= c && c <= 'Z' {
			return strings.ToLower(strings.ToUpper(s))
		}
	}
	return s
}

// sameFold reports whether foldKey(key) == name, for a lower-case ASCII name.
func sameFold(key, name string) bool {
	if len(key) == len(name) {
		ascii := true
		for i := 0; i < len(key); i++ {
			c := key[i]
			if c >= utf8.RuneSelf {
				ascii = false
				break
			}
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != name[i] {
				return false
			}
		}
		if ascii {
			return true
		}
	}
	// A non-ASCII key may fold to an ASCII name ("ſ" to "s"), and need
	// not be as long.
	return foldKey(key) == name
}

func (h *Handler) inbox(w http.ResponseWriter, r *http.Request, arg string) error {
	q, query, _, err := kez.ParseQuery(r.URL.RawQuery, false, "since", "limit")
	if err != nil {
		return err
	}
	since := q["since"]
	limit := defaultPageLimit
	if n, ok := q["limit"]; ok {
		if n == 0 {
			return kez.Errorf(kez.CodeBadRequest, "limit must be a positive integer")
		}
		limit = int(min(n, maxPageLimit))
	}
	rec, err := h.authorizeOwner(r, arg, kez.CodeUnauthorized, func(handle string) signedRequest {
		return ownerRequest(r, handle, "", query)
	})
	if err != nil {
		return err
	}
	msgs, more, err := h.readPage(r, rec.Handle, since, limit)
	if err != nil {
		return err
	}
	next := since
	size := 64
	for _, m := range msgs {
		size += len(m.Envelope) + 200
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
	return nil
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

func (h *Handler) ack(w http.ResponseWriter, r *http.Request, arg string) error {
	q, query, _, err := kez.ParseQuery(r.URL.RawQuery, false, "upto")
	if err != nil {
		return err
	}
	upto, ok := q["upto"]
	if !ok {
		return kez.Errorf(kez.CodeBadRequest, "upto is required: DELETE /v1/inbox/<handle>?upto=<seq>")
	}
	if err := h.noBody(w, r); err != nil {
		return err
	}
	rec, err := h.authorizeOwner(r, arg, kez.CodeUnauthorized, func(handle string) signedRequest {
		return ownerRequest(r, handle, "", query)
	})
	if err != nil {
		return err
	}
	n, err := h.store.Ack(r.Context(), rec.Handle, upto)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]int{"deleted": n})
	return nil
}

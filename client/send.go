package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/kezchat/kez/kez"
)

// Recipient is a looked-up user, ready to be sent to. Keep it to send many
// messages: the lookup and the key agreement are done once.
type Recipient struct {
	Record
	// Contact is the trust in the key (set by Recipient, nil from
	// RecipientFor): its Status and the rotation Notices to show.
	Contact *Contact
	link    *kez.Link
}

// RecipientFor prepares encryption to an already looked-up record. It does
// not check the record against the contact's pinned key: Recipient does.
func (c *Client) RecipientFor(rec *Record) (*Recipient, error) {
	keys := c.Keys()
	if keys == nil {
		return nil, ErrNoIdentity
	}
	link, err := keys.LinkTo(rec.Primary)
	if err != nil {
		return nil, err
	}
	return &Recipient{Record: *rec, link: link}, nil
}

// Receipt is the server's answer to a send (SPEC §2.5), plus the id the
// message carries inside its envelope.
type Receipt struct {
	Seq        uint64
	To         string
	ReceivedAt int64 // unix milliseconds
	ID         string
	// AlreadyStored: the server had this very envelope already (an earlier
	// attempt whose answer was lost) and answered 200 with its original
	// receipt instead of 201. The message is stored once either way.
	AlreadyStored bool
}

// Send looks up the recipient and sends them a text message.
func (c *Client) Send(ctx context.Context, to, text string) (*Receipt, error) {
	r, err := c.Recipient(ctx, to)
	if err != nil {
		return nil, err
	}
	return c.SendTo(ctx, r, text)
}

// SendTo sends a text message to a looked-up recipient. The plaintext
// carries a fresh random id, the time in ms and the sender's address.
func (c *Client) SendTo(ctx context.Context, r *Recipient, text string) (*Receipt, error) {
	from, err := c.Address(ctx)
	if err != nil {
		return nil, err
	}
	msg := kez.NewTextMessage(from, text, c.now().UnixMilli())
	env, err := r.link.Seal(msg.Marshal())
	if err != nil {
		return nil, err
	}
	// The body is written by hand: the handle is [a-z0-9_-] and the
	// envelope's fields need no escaping, so no reflection on the hot path.
	body := make([]byte, 0, 256+len(r.Handle)+len(env.CT)+2*len(env.From))
	body = append(body, `{"to":"`...)
	body = append(body, r.Handle...)
	body = append(body, `","envelope":`...)
	body = env.AppendJSON(body)
	body = append(body, '}')
	rcpt, err := c.postMessage(ctx, body)
	if err != nil {
		return nil, err
	}
	rcpt.ID = msg.ID
	return rcpt, nil
}

// PostEnvelope relays an already sealed envelope (any JSON object) to "to",
// signed by the client's key, which the server requires to be the
// envelope's "from". It exists for tests and tools (kezbench posts with
// it); SendTo is the normal way. The envelope is checked for strict JSON,
// then sent as it is.
func (c *Client) PostEnvelope(ctx context.Context, to string, envelope json.RawMessage) (*Receipt, error) {
	body, err := envelopeBody(to, envelope)
	if err != nil {
		return nil, err
	}
	return c.postMessage(ctx, body)
}

// envelopeBody is {"to":to,"envelope":envelope} without reflection.
func envelopeBody(to string, envelope json.RawMessage) ([]byte, error) {
	if err := kez.CheckStrictJSON(envelope); err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	quotedTo, err := json.Marshal(to)
	if err != nil {
		return nil, err
	}
	body := make([]byte, 0, len(envelope)+len(quotedTo)+24)
	body = append(body, `{"to":`...)
	body = append(body, quotedTo...)
	body = append(body, `,"envelope":`...)
	body = append(body, envelope...)
	return append(body, '}'), nil
}

// postMessage sends POST /v1/messages signed by the sender (SPEC §2.5).
// Sending the same body again is safe: the server stores an envelope once
// and answers a repeat with its original receipt (200). So a lost answer,
// a connection closed by a reload, is met by sending again (see call.resend),
// each attempt with a signature of its own.
func (c *Client) postMessage(ctx context.Context, body []byte) (*Receipt, error) {
	var rcpt *Receipt
	status, err := c.do(ctx, &call{method: http.MethodPost, path: "/v1/messages", body: body, signed: true, resend: true},
		func(b []byte) (err error) { rcpt, err = parseReceipt(b); return err })
	if err != nil {
		return nil, err
	}
	rcpt.AlreadyStored = status == http.StatusOK
	return rcpt, nil
}

// PostSigned posts body, a whole POST /v1/messages body, with auth as its
// X-KEZ-Auth: a signature the caller made beforehand with kez.Request.Sign
// over this very body, whose timestamp must be within the server's
// auth_skew of the moment the request arrives. A send's signature may be
// presented again (a resent envelope gets its original receipt), so Go's
// transport may resend the request on a keep-alive connection that closed
// unanswered; nothing else is retried. It exists for load tools, which
// sign ahead so that their own signing is not part of what they measure;
// SendTo and PostEnvelope sign each attempt afresh.
func (c *Client) PostSigned(ctx context.Context, body []byte, auth string) (*Receipt, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/messages", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Content-Type", jsonType)
	req.Header.Set("X-KEZ-Auth", auth)
	req.Header.Set("Idempotency-Key", rand.Text())
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &NetworkError{URL: c.base, Err: unwrapURLError(err)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	switch {
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case err != nil:
		return nil, &NetworkError{URL: c.base, Err: unwrapURLError(err)}
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return nil, apiError(resp.StatusCode, resp.Header, b)
	}
	rcpt, err := parseReceipt(b)
	if err != nil {
		return nil, &ProtocolError{URL: c.base + "/v1/messages", Reason: err.Error()}
	}
	rcpt.AlreadyStored = resp.StatusCode == http.StatusOK
	return rcpt, nil
}

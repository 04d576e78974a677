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

// Recipient is a looked-up user, ready to be sent to (on this server or
// another one). Keep it to send many messages: the lookup and the key
// agreement are done once.
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
	out, err := c.Seal(ctx, r, text)
	if err != nil {
		return nil, err
	}
	return c.Deliver(ctx, out)
}

// Outgoing is a sealed message on its way: what an outbox keeps until the
// recipient's server has stored it. Delivering it again is safe: the
// server stores an envelope once and answers a repeat with its original
// receipt (SPEC §2.5); each attempt is signed afresh.
type Outgoing struct {
	To       string          `json:"to"`       // the recipient's address, handle@server
	Envelope json.RawMessage `json:"envelope"` // sealed and signed once, sent as it is
	ID       string          `json:"id"`       // the plaintext's id
}

// Seal encrypts a text message to r, ready for Deliver.
func (c *Client) Seal(ctx context.Context, r *Recipient, text string) (*Outgoing, error) {
	from, err := c.Address(ctx)
	if err != nil {
		return nil, err
	}
	msg := kez.NewTextMessage(from, text, c.now().UnixMilli())
	env, err := r.link.Seal(msg.Marshal())
	if err != nil {
		return nil, err
	}
	return &Outgoing{To: r.Address, Envelope: env.AppendJSON(nil), ID: msg.ID}, nil
}

// Deliver posts a sealed message to its recipient's server (SPEC §2.5): the
// user's own, or another one (SPEC §8), where it goes with the user's
// address as from_addr, signed for that server. For another server's user,
// the recipient is first accepted in the user's own inbox, since the home
// server never sees this send and would take the answers for requests.
func (c *Client) Deliver(ctx context.Context, out *Outgoing) (*Receipt, error) {
	rc, handle, err := c.route(ctx, out.To)
	if err != nil {
		return nil, err
	}
	if !kez.ValidHandle(handle) {
		return nil, fmt.Errorf("%.80q is not an address", out.To)
	}
	fromAddr := ""
	if rc != c {
		h, err := kez.ReadEnvelopeHeader(out.Envelope)
		if err != nil {
			return nil, fmt.Errorf("envelope: %w", err)
		}
		if err := c.acceptAtHome(ctx, h.To); err != nil {
			return nil, err
		}
		if fromAddr, err = c.Address(ctx); err != nil {
			return nil, err
		}
	} else if err := kez.CheckStrictJSON(out.Envelope); err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	rcpt, err := rc.postMessage(ctx, messageBody(handle, fromAddr, out.Envelope))
	if err != nil {
		return nil, err
	}
	rcpt.ID = out.ID
	return rcpt, nil
}

// acceptAtHome accepts primary in the user's own inbox, once per client.
func (c *Client) acceptAtHome(ctx context.Context, primary string) error {
	c.mu.Lock()
	done := c.accepted[primary]
	c.mu.Unlock()
	if done {
		return nil
	}
	if err := c.Accept(ctx, primary); err != nil {
		return err
	}
	c.mu.Lock()
	c.accepted[primary] = true
	c.mu.Unlock()
	return nil
}

// messageBody is {"to":handle[,"from_addr":fromAddr],"envelope":envelope},
// written by hand: the handle is [a-z0-9_-] and the envelope is strict
// JSON already, so no reflection runs on the hot path.
func messageBody(handle, fromAddr string, envelope []byte) []byte {
	body := make([]byte, 0, 48+len(handle)+len(fromAddr)+len(envelope))
	body = append(body, `{"to":"`...)
	body = append(body, handle...)
	body = append(body, '"')
	if fromAddr != "" {
		quoted, _ := json.Marshal(fromAddr) // a string always marshals
		body = append(body, `,"from_addr":`...)
		body = append(body, quoted...)
	}
	body = append(body, `,"envelope":`...)
	body = append(body, envelope...)
	return append(body, '}')
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

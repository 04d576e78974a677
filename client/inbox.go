package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/kezchat/kez/kez"
)

// Message is one stored message as the server relays it (SPEC §2.5); the
// envelope is still sealed.
type Message struct {
	Seq uint64
	// From is the sender the server authenticated (the key that signed the
	// send); Open checks that it is the key that signed the envelope.
	From string
	// FromAddr is the sender's address as the server verified it ("" when
	// the server did not say).
	FromAddr string
	// Request is true while the sender is not a contact of the inbox owner
	// (SPEC §2.9): a message request, to be shown apart from contacts'
	// messages until accepted.
	Request    bool
	Envelope   json.RawMessage
	ReceivedAt int64 // unix milliseconds
}

// InboxPage is one page of an inbox.
type InboxPage struct {
	Messages  []Message
	NextSince uint64 // pass as since for the next page
	More      bool
}

// Inbox reads messages with seq > since, oldest first, requests included
// (Message.Request). limit ≤ 0 leaves the page size to the server (100; at
// most 500).
func (c *Client) Inbox(ctx context.Context, since uint64, limit int) (*InboxPage, error) {
	if c.handle == "" {
		return nil, ErrNoIdentity
	}
	q := map[string]uint64{}
	if since > 0 {
		q["since"] = since
	}
	if limit > 0 {
		q["limit"] = uint64(limit)
	}
	var page *InboxPage
	_, err := c.do(ctx, &call{method: http.MethodGet, path: c.inboxPath(), query: q, signed: true},
		func(b []byte) (err error) { page, err = parseInboxPage(b); return err })
	if err != nil {
		return nil, err
	}
	return page, nil
}

// Ack deletes every message with seq ≤ upto and returns how many went.
func (c *Client) Ack(ctx context.Context, upto uint64) (int, error) {
	if c.handle == "" {
		return 0, ErrNoIdentity
	}
	var deleted uint64
	_, err := c.do(ctx, &call{method: http.MethodDelete, path: c.inboxPath(), query: map[string]uint64{"upto": upto}, signed: true},
		func(b []byte) error {
			f, err := members("ack", b, []string{"deleted"}, nil)
			if err == nil {
				deleted, err = jsonUint("deleted", f["deleted"])
			}
			return err
		})
	return int(deleted), err
}

func (c *Client) inboxPath() string { return "/v1/inbox/" + c.handle }

// Received is a message that opened: its sender's primary is proven by the
// envelope signature; Plaintext.FromAddr is only what the sender claims.
type Received struct {
	Seq        uint64
	ReceivedAt time.Time
	From       string // the sender's primary
	// FromAddr is the sender's address as the server verified it ("" when
	// not given). A client checks it against the record of From.
	FromAddr  string
	Request   bool // from a sender who is not a contact yet
	Plaintext kez.Plaintext
	// PlaintextJSON is the decrypted plaintext as it was sealed, for types
	// that kez.Plaintext does not carry (SPEC §3: copy, receipt).
	PlaintextJSON []byte
}

// Open verifies and decrypts a message addressed to this client. Every
// failure wraps kez.ErrUndecryptable: show it as such, never as text. That
// includes a message whose authenticated sender (Message.From) is not the
// key that signed the envelope: the server vouches for one sender and
// relays the words of another.
func (c *Client) Open(m Message) (*Received, error) {
	keys := c.keysFor(m.Envelope)
	if keys == nil {
		return nil, ErrNoIdentity
	}
	env, plain, err := keys.OpenJSON(m.Envelope)
	if err != nil {
		return nil, err
	}
	if m.From != env.From {
		return nil, fmt.Errorf("%w: the server says it is from %.80s, the envelope is signed by %s", kez.ErrUndecryptable, m.From, env.From)
	}
	p, err := kez.ParsePlaintext(plain)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", kez.ErrUndecryptable, err)
	}
	return &Received{Seq: m.Seq, ReceivedAt: time.UnixMilli(m.ReceivedAt), From: env.From, FromAddr: m.FromAddr,
		Request: m.Request, Plaintext: p, PlaintextJSON: plain}, nil
}

// keysFor picks the key an envelope is sealed to: the current one, or an
// earlier one (Options.OldKeys, or the key before Rotate) for messages sent
// before a rotation. Anything else is left to the current key to refuse.
func (c *Client) keysFor(envelope []byte) *kez.Keys {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h, err := kez.ReadEnvelopeHeader(envelope); err == nil && c.keys != nil && h.To != c.keys.Primary() {
		for _, k := range c.oldKeys {
			if k.Primary() == h.To {
				return k
			}
		}
	}
	return c.keys
}

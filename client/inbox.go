package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/kezchat/kez/kez"
)

// Message is one stored message as the server relays it (SPEC §2.6); the
// envelope is still sealed.
type Message struct {
	Seq        uint64          `json:"seq"`
	Envelope   json.RawMessage `json:"envelope"`
	ReceivedAt int64           `json:"received_at"` // unix milliseconds
}

// InboxPage is one page of an inbox.
type InboxPage struct {
	Messages  []Message `json:"messages"`
	NextSince uint64    `json:"next_since"` // pass as since for the next page
	More      bool      `json:"more"`
}

// Inbox reads messages with seq > since, oldest first. limit ≤ 0 leaves the
// page size to the server (100; at most 500).
func (c *Client) Inbox(ctx context.Context, since uint64, limit int) (*InboxPage, error) {
	auth, err := c.signed(func(h string, ts int64) string { return kez.InboxAuthMessage(h, since, ts) })
	if err != nil {
		return nil, err
	}
	q := url.Values{"since": {strconv.FormatUint(since, 10)}}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var page InboxPage
	if err := c.do(ctx, http.MethodGet, c.inboxPath()+"?"+q.Encode(), auth, nil, "", &page); err != nil {
		return nil, err
	}
	return &page, nil
}

// Ack deletes every message with seq ≤ upto and returns how many went.
func (c *Client) Ack(ctx context.Context, upto uint64) (int, error) {
	auth, err := c.signed(func(h string, ts int64) string { return kez.AckAuthMessage(h, upto, ts) })
	if err != nil {
		return 0, err
	}
	var out struct {
		Deleted int `json:"deleted"`
	}
	path := c.inboxPath() + "?upto=" + strconv.FormatUint(upto, 10)
	if err := c.do(ctx, http.MethodDelete, path, auth, nil, "", &out); err != nil {
		return 0, err
	}
	return out.Deleted, nil
}

func (c *Client) inboxPath() string { return "/v1/inbox/" + url.PathEscape(c.handle) }

// Received is a message that opened: its sender's primary is proven by the
// envelope signature; Plaintext.FromAddr is only what the sender claims.
type Received struct {
	Seq        uint64
	ReceivedAt time.Time
	From       string // the sender's primary
	Plaintext  kez.Plaintext
}

// Open verifies and decrypts a message addressed to this client. Every
// failure wraps kez.ErrUndecryptable: show it as such, never as text.
func (c *Client) Open(m Message) (*Received, error) {
	if c.keys == nil {
		return nil, ErrNoIdentity
	}
	env, plain, err := c.keys.OpenJSON(m.Envelope)
	if err != nil {
		return nil, err
	}
	p, err := kez.ParsePlaintext(plain)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", kez.ErrUndecryptable, err)
	}
	return &Received{Seq: m.Seq, ReceivedAt: time.UnixMilli(m.ReceivedAt), From: env.From, Plaintext: p}, nil
}
